#!/usr/bin/env python3
"""memdedup's figures on Prometheus, end to end, as an operator runs it.

The pieces of tests/memdedup/test_libvirt.py (a private libvirtd and
virtlogd in a mount namespace of their own, TCG domains running our
QEMU) with two domains on one cross-VM board: "prom-a" boots the test
guest, which fills its memory, "prom-b" stays paused.  Then the chain
the manual's "Prometheus setup step by step" describes, with Debian's
packages, all on loopback at free ports:

  memdedup-stat --prometheus --watch 1 --output DIR/memdedup.prom
  prometheus-node-exporter --collector.disable-defaults
      --collector.textfile --collector.textfile.directory=DIR
  prometheus (a private configuration and storage directory, scraping
      that node_exporter every second, with memdedup-rules.yml loaded)

and asks Prometheus's HTTP API (/api/v1/query, /rules, /alerts):

* every metric family memdedup-stat writes is in Prometheus, with the
  value the domains report: memdedup-stat --json (QEMU's whole
  query-memdedup reply and the host's KSM counters) before and after
  the query bracket each sample, and the engines and ksmd are quiet by
  then (no passes, ksmd stopped), so the brackets are tight;
* every rule of memdedup-rules.yml evaluates without error;
* ksmd stopped while memory is registered makes MemdedupKsmdStopped
  pending, and a peer that sends the board garbage makes
  MemdedupBoardPeerRejected fire for both domains;
* every panel expression of memdedup-dashboard.json parses and returns
  data.

Every process started ends by PID on every path (memdedup-stat,
node_exporter and Prometheus here; the domains and daemons by
test_libvirt's Libvirt), and none of their ports is left listening.
The KSM knobs are borrowed with host.KsmKnobs and restored.
"""

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from harness import MiB, PAGE, TOP, Skip, check, run_tests, wait_for
import host  # noqa: E402  (scripts/memdedup/host.py, on harness's path)
import boardpeer as bp
import test_libvirt as lvt

PROMDIR = os.path.join(TOP, "tools", "memdedup-stat", "prometheus")
RULES = os.path.join(PROMDIR, "memdedup-rules.yml")
DASHBOARD = os.path.join(PROMDIR, "memdedup-dashboard.json")
NODE_EXPORTER = "prometheus-node-exporter"     # Debian's name
PROMETHEUS = "prometheus"
START_TIMEOUT = 30          # seconds for an exporter or Prometheus to answer
SCRAPE = 1                  # seconds: memdedup-stat --watch, scrape, rules

PROMETHEUS_CONF = """\
global:
  scrape_interval: %(scrape)ds
  scrape_timeout: %(scrape)ds
  evaluation_interval: %(scrape)ds
rule_files:
  - %(rules)s
scrape_configs:
  - job_name: node
    static_configs:
      - targets: ['127.0.0.1:%(port)d']
"""

# Families memdedup-stat writes for these domains (ksmd running, a board,
# a booted guest).  The copy-on-write ones only where QEMU reports them.
FAMILIES = """memdedup_domain_enabled memdedup_passes_completed_total
memdedup_partial_passes_total
memdedup_scanner_cpu_seconds_total memdedup_metadata_bytes
memdedup_board_joined memdedup_board_peers
memdedup_board_rejected_peers_total memdedup_board_rejected_updates_total
memdedup_board_refused_connections_total memdedup_backend_size_bytes
memdedup_backend_resident_bytes memdedup_backend_zero_bytes
memdedup_backend_duplicate_bytes memdedup_backend_unique_bytes
memdedup_backend_volatile_bytes memdedup_backend_registered_bytes
memdedup_backend_kernel_merged_bytes
memdedup_backend_estimated_saving_bytes
memdedup_backend_actual_saving_bytes memdedup_backend_huge_regions
memdedup_backend_huge_bytes memdedup_backend_unmerge_refusals_total
memdedup_backend_registration_failures_total
memdedup_backend_attributed_saving_bytes memdedup_host_ksm_up
memdedup_host_ksm_run memdedup_host_ksm_pages_shared
memdedup_host_ksm_pages_sharing memdedup_host_ksm_pages_unshared
memdedup_host_ksm_pages_volatile memdedup_host_ksm_full_scans_total
memdedup_host_ksm_pages_to_scan memdedup_host_ksm_sleep_milliseconds
memdedup_host_ksm_merge_across_nodes""".split()
# Families of backend members an older QEMU does not report.
OPTIONAL_FAMILIES = {
    "cow-broken-pages": ["memdedup_backend_cow_broken_pages",
                         "memdedup_backend_cow_broken_pages_total"],
    "cow-backoff-regions": ["memdedup_backend_cow_backoff_regions"],
    "rearmed-regions": ["memdedup_backend_rearmed_regions_total"]}

# query-memdedup backend member, in pages, and the metric in bytes.
BACKEND_PAGES = {"resident-pages": "resident", "zero-pages": "zero",
                 "duplicate-pages": "duplicate", "unique-pages": "unique",
                 "volatile-pages": "volatile",
                 "kernel-merged-pages": "kernel_merged"}
# Backend members reported as they are (an optional one where present).
BACKEND_AS_IS = {"size": "size_bytes", "registered-bytes": "registered_bytes",
                 "estimated-saving": "estimated_saving_bytes",
                 "huge-regions": "huge_regions",
                 "unmerge-refusals": "unmerge_refusals_total",
                 "registration-failures": "registration_failures_total",
                 "cow-broken-pages": "cow_broken_pages",
                 "cow-broken-pages-total": "cow_broken_pages_total",
                 "cow-backoff-regions": "cow_backoff_regions",
                 "rearmed-regions": "rearmed_regions_total"}
BOARD = {"peers": "peers", "rejected-peers": "rejected_peers_total",
         "rejected-updates": "rejected_updates_total",
         "refused-connections": "refused_connections_total"}
# memdedup-stat --json's host-ksm member and the metric.
HOST_KSM = {"run": "run", "pages-shared": "pages_shared",
            "pages-sharing": "pages_sharing",
            "pages-unshared": "pages_unshared",
            "pages-volatile": "pages_volatile", "full-scans": "full_scans_total",
            "pages-to-scan": "pages_to_scan",
            "sleep-millisecs": "sleep_milliseconds",
            "merge-across-nodes": "merge_across_nodes"}


def key(name, **labels):
    return (name, frozenset(labels.items()))


def expected_samples(js):
    """{(metric, labels): value}: what memdedup-stat's Prometheus output
    means, computed from its --json output (QEMU's query-memdedup as it
    answered, and libvirt's KSM counters)."""
    out = {}
    for d in js["domains"]:
        name = d["name"]
        out[key("memdedup_domain_enabled", domain=name,
                status=d["status"])] = int(d["memdedup"])
        if not d["memdedup"]:
            continue
        q = d["query-memdedup"]
        out[key("memdedup_passes_completed_total", domain=name)] = \
            q["passes-completed"]
        out[key("memdedup_partial_passes_total", domain=name)] = \
            q["partial-passes"]
        out[key("memdedup_scanner_cpu_seconds_total", domain=name)] = \
            q["scanner-cpu-time"] / 1e9
        out[key("memdedup_metadata_bytes", domain=name)] = \
            q["metadata-bytes"]
        if "board" in q:
            out[key("memdedup_board_joined", domain=name)] = \
                int(q["board"]["joined"])
            for member, metric in BOARD.items():
                out[key("memdedup_board_" + metric, domain=name)] = \
                    q["board"][member]
        for b in q["backends"]:
            labels = dict(domain=name, backend=b["id"])
            for member, metric in BACKEND_PAGES.items():
                if member in b:
                    out[key("memdedup_backend_%s_bytes" % metric,
                            **labels)] = b[member] * b["page-size"]
            for member, metric in BACKEND_AS_IS.items():
                if member in b:
                    out[key("memdedup_backend_" + metric, **labels)] = \
                        b[member]
            out[key("memdedup_backend_actual_saving_bytes", **labels)] = \
                b.get("actual-saving", 0)
            out[key("memdedup_backend_huge_bytes", **labels)] = \
                b["huge-regions"] * b["region-size"]
            if "attributed-saving" in b:
                out[key("memdedup_backend_attributed_saving_bytes",
                        accuracy=b["attributed-saving-accuracy"],
                        **labels)] = b["attributed-saving"]
    ksm = js["host-ksm"]
    out[key("memdedup_host_ksm_up")] = int(ksm["available"])
    for member, metric in HOST_KSM.items():
        if member in ksm:
            out[key("memdedup_host_ksm_" + metric)] = ksm[member]
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Daemon:
    """with Daemon(name, argv, workdir): a process in a session of its
    own, its output in workdir/NAME.log; ended by PID on exit (SIGTERM,
    then SIGKILL), on every path."""

    def __init__(self, name, argv, workdir):
        self.name = name
        self.argv = argv
        self.log = os.path.join(workdir, name + ".log")
        self.proc = None

    def __enter__(self):
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log,
                                         start_new_session=True)
        return self

    def alive(self):
        if self.proc.poll() is not None:
            raise AssertionError("%s exited with %d:\n%s" % (
                self.name, self.proc.returncode, self.output()))
        return True

    def output(self):
        return lvt.read_text(self.log)[-3000:]

    def __exit__(self, *exc):
        with host.shielded():
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if self.proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(15)
        return False


class PrometheusApi:
    def __init__(self, port):
        self.base = "http://127.0.0.1:%d" % port

    def get(self, path, **params):
        url = self.base + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            reply = json.load(r)
        check(reply.get("status") == "success", "%s: %r" % (url, reply))
        return reply["data"]

    def query(self, expr):
        """An instant query: [(labels without job and instance, value)]."""
        data = self.get("/api/v1/query", query=expr)
        check(data["resultType"] == "vector", "%s: %r" % (expr, data))
        out = []
        for r in data["result"]:
            labels = {k: v for k, v in r["metric"].items()
                      if k not in ("job", "instance")}
            out.append((labels, float(r["value"][1])))
        return out

    def ready(self):
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(self.base + "/-/ready",
                                        timeout=5) as r:
                return r.status == 200
        return False

    def alerts(self, name, state):
        return [a["labels"] for a in self.get("/api/v1/alerts")["alerts"]
                if a["labels"]["alertname"] == name and a["state"] == state]


def board_xml(workdir, name, board, keyfile):
    """test_libvirt's passthrough domain, its memdedup object on @board."""
    path = lvt.domain_xml(workdir, name, "passthrough")
    xml = lvt.read_text(path)
    old = "<qemu:arg value='memdedup,id=memdedup,rescan-interval=1000'/>"
    check(old in xml, "test_libvirt's domain XML changed:\n" + xml)
    xml = xml.replace(old, (
        "<qemu:arg value='secret,id=bk,file=%s'/>\n"
        "    <qemu:arg value='-object'/>\n"
        "    <qemu:arg value='memdedup,id=memdedup,rescan-interval=1000,"
        "board=%s,board-key=bk,board-timeout=1000'/>") % (keyfile, board))
    with open(path, "w") as f:
        f.write(xml)
    return path


def prometheus_samples(api):
    """Every memdedup_ sample in Prometheus now, as expected_samples."""
    return {(n, frozenset((k, v) for k, v in labels.items()
                          if k != "__name__")): value
            for labels, value in api.query('{__name__=~"memdedup_.+"}')
            for n in [labels["__name__"]]}


def test_prometheus(workdir):
    for tool in (NODE_EXPORTER, PROMETHEUS):
        if not shutil.which(tool):
            raise Skip("%s is missing (make deps installs Debian's "
                       "prometheus and prometheus-node-exporter)" % tool)
    if not os.path.exists(os.path.join(lvt.GUEST, "vmlinuz")):
        raise Skip("no guest image: run make guest")
    ports = []
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        ksm = stack.enter_context(host.KsmKnobs(
            run=1, pages_to_scan=2000, sleep_millisecs=10, use_zero_pages=0))
        if not ksm.active:
            raise Skip("cannot borrow the KSM knobs: %s" % ksm.reason)
        lv = stack.enter_context(lvt.Libvirt(workdir))
        # Left in this order: the daemons of the chain (last started,
        # first ended), the domains and libvirt, then the KSM knobs.
        procs = stack.enter_context(contextlib.ExitStack())
        try:
            run_chain(workdir, ksm, lv, procs, ports, t0)
        finally:
            ksm.set("run", 1)           # ksmd drops the QEMUs' pages
    for port in ports:
        check(not listening(port), "port %d still listening" % port)
    print("  all checks done, everything ended, after %.1f s"
          % (time.monotonic() - t0))


def run_chain(workdir, ksm, lv, procs, ports, t0):
    board = os.path.join(workdir, "board")
    keyfile = os.path.join(workdir, "board.key")
    with open(keyfile, "w") as f:
        f.write(base64.b64encode(os.urandom(32)).decode() + "\n")
    os.chmod(keyfile, 0o400)
    doms = ["prom-a", "prom-b"]
    lv.start(board_xml(workdir, "prom-a", board, keyfile))
    lv.start(board_xml(workdir, "prom-b", board, keyfile), paused=True)
    serial = os.path.join(workdir, "prom-a.serial.log")
    wait_for("prom-a to fill its memory", lambda: (
        "MEMDEDUP-GUEST-READY" in lvt.read_text(serial)), lvt.BOOT_TIMEOUT)
    print("  domains up, guest ready after %.1f s" % (time.monotonic() - t0))
    # One pass over the filled memory, then none: the engines' figures
    # stay put.
    for name in doms:
        lvt.run_pass(lv, name)
        lv.qmp(name, "qom-set", path="/objects/memdedup",
               property="rescan-interval", value=86400000)
        lvt.run_pass(lv, name)
    wait_for("both QEMUs on the board with each other", lambda: all(
        lv.qmp(n, "query-memdedup")["board"]["peers"] == 1 for n in doms),
        30)
    wait_for("ksmd to merge prom-a's registered pages", lambda: sum(
        b.get("kernel-merged-pages", 0) for b in
        lv.qmp("prom-a", "query-memdedup")["backends"]) >=
        lvt.SHARED * MiB // PAGE, 90)
    print("  merged after %.1f s" % (time.monotonic() - t0))

    # The chain: memdedup-stat -> textfile -> node_exporter -> Prometheus.
    textdir = os.path.join(workdir, "textfile")
    os.mkdir(textdir)
    prom_file = os.path.join(textdir, "memdedup.prom")
    stat = procs.enter_context(Daemon("memdedup-stat", [
        lvt.STAT, "-c", lv.uri, "--prometheus", "--watch", str(SCRAPE),
        "--output", prom_file], workdir))
    wait_for("memdedup-stat's file", lambda: stat.alive() and
             os.path.exists(prom_file), 30)
    node_port, prom_port = free_port(), free_port()
    ports += [node_port, prom_port]
    node = procs.enter_context(Daemon("node-exporter", [
        NODE_EXPORTER, "--web.listen-address=127.0.0.1:%d" % node_port,
        "--collector.disable-defaults", "--collector.textfile",
        "--collector.textfile.directory=" + textdir], workdir))
    wait_for("node_exporter", lambda: node.alive() and
             listening(node_port), START_TIMEOUT)
    conf = os.path.join(workdir, "prometheus.yml")
    with open(conf, "w") as f:
        f.write(PROMETHEUS_CONF % dict(scrape=SCRAPE, rules=RULES,
                                       port=node_port))
    prom = procs.enter_context(Daemon("prometheus", [
        PROMETHEUS, "--config.file=" + conf,
        "--storage.tsdb.path=" + os.path.join(workdir, "tsdb"),
        "--web.listen-address=127.0.0.1:%d" % prom_port], workdir))
    api = PrometheusApi(prom_port)
    wait_for("Prometheus ready", lambda: prom.alive() and api.ready(),
             START_TIMEOUT)
    # Two rounds of rule evaluation over scraped samples: rate() and
    # increase() have their two samples.
    wait_for("the first scrapes and rules", lambda: api.query(
        "memdedup:board_rejections:increase15m"), 30)
    print("  node_exporter and Prometheus up after %.1f s"
          % (time.monotonic() - t0))
    up = api.query('up{job="node"}')
    check([v for _, v in up] == [1], "node_exporter target: %r" % up)
    errors = api.query("node_textfile_scrape_error")
    check([v for _, v in errors] == [0], "textfile collector: %r" % errors)

    # ksmd stopped: nothing moves any more, and the alert's condition
    # holds (pending: it fires after 5 minutes).
    ksm.set("run", 0)
    wait_for("memdedup_host_ksm_run 0", lambda: [
        v for _, v in api.query("memdedup_host_ksm_run")] == [0], 30)
    pending = wait_for("MemdedupKsmdStopped pending", lambda: api.alerts(
        "MemdedupKsmdStopped", "pending"), 30)
    check(len(pending) == 1, "MemdedupKsmdStopped: %r" % pending)

    # Every family, with the domains' values: memdedup-stat --json (the
    # domains' query-memdedup) before and after the query brackets each
    # sample; Prometheus shows what was written at most two refreshes
    # before it answers.
    before = expected_samples(json.loads(lvt.stat(lv, "--json").stdout))
    time.sleep(4 * SCRAPE)
    seen = prometheus_samples(api)
    js = json.loads(lvt.stat(lv, "--json").stdout)
    after = expected_samples(js)
    families = set(FAMILIES)
    for member, names in OPTIONAL_FAMILIES.items():
        if any(member in b for d in js["domains"] if d["memdedup"]
               for b in d["query-memdedup"]["backends"]):
            families.update(names)
    written = set(re.findall(r"^# TYPE (\S+) ",
                             lvt.read_text(prom_file), re.M))
    check(families <= written, "memdedup-stat did not write %s"
          % sorted(families - written))
    in_prometheus = {n for n, _ in seen}
    check(written <= in_prometheus, "families missing in Prometheus: %s"
          % sorted(written - in_prometheus))
    check(set(seen) == set(before) == set(after),
          "series: Prometheus has %s more, %s fewer than memdedup-stat "
          "--json says" % (sorted(set(seen) - set(after)),
                           sorted(set(after) - set(seen))))
    moved = 0
    for k, value in sorted(seen.items()):
        lo, hi = sorted((before[k], after[k]))
        moved += lo != hi
        check(lo - 1e-9 <= value <= hi + 1e-9,
              "%s%s: Prometheus %r, memdedup-stat --json %r then %r"
              % (k[0], dict(k[1]), value, before[k], after[k]))
    print("  %d series in %d families match the domains' figures (%d "
          "moved between the two snapshots)" % (len(seen), len(written),
                                                moved))
    # A few that must not be trivially zero.
    for metric, labels in (("memdedup_backend_kernel_merged_bytes",
                            dict(domain="prom-a", backend="ram0")),
                           ("memdedup_board_peers", dict(domain="prom-a")),
                           ("memdedup_board_joined", dict(domain="prom-b")),
                           ("memdedup_scanner_cpu_seconds_total",
                            dict(domain="prom-a"))):
        check(seen[key(metric, **labels)] > 0, "%s %r is 0"
              % (metric, labels))

    # A peer that sends garbage: each QEMU closes the connection and
    # counts it; the board alert fires for both domains.
    for path in bp.vm_sockets(board):
        peer = bp.Peer(path)
        try:
            peer.send(bp.message(bp.HELLO, peer.nonce, magic=1))
        finally:
            peer.close()
    wait_for("the QEMUs to count the rejected peer", lambda: all(
        lv.qmp(n, "query-memdedup")["board"]["rejected-peers"] >= 1
        for n in doms), 30)
    firing = wait_for("MemdedupBoardPeerRejected firing", lambda: (
        lambda got: got if {a["domain"] for a in got} == set(doms) else None)(
        api.alerts("MemdedupBoardPeerRejected", "firing")), 30)
    print("  MemdedupKsmdStopped pending, MemdedupBoardPeerRejected firing "
          "for %s after %.1f s" % (sorted(a["domain"] for a in firing),
                                  time.monotonic() - t0))
    for name in ("MemdedupUnmergeRefused", "MemdedupRegistrationFailures",
                 "MemdedupEngineCpuOverBudget"):
        check(not api.alerts(name, "firing") and
              not api.alerts(name, "pending"), name + " active")

    # Every rule loaded and evaluated without error.
    rules = [r for g in api.get("/api/v1/rules")["groups"]
             for r in g["rules"]]
    in_file = lvt.read_text(RULES).count("- record:") + \
        lvt.read_text(RULES).count("- alert:")
    check(len(rules) == in_file, "Prometheus loaded %d rules of %d"
          % (len(rules), in_file))
    for r in rules:
        check(r["health"] == "ok", "rule %s: %s %s" % (
            r["name"], r["health"], r.get("lastError")))

    # The dashboard: every panel's expression parses and has data where
    # its series exist (the copy-on-write ones need a QEMU with them).
    with open(DASHBOARD) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    empty = []
    for e in exprs:
        if not api.query(e):
            empty.append(e)
    # A recorded series has data where its source has.
    source = {"memdedup:cow_broken_pages:rate5m":
              "memdedup_backend_cow_broken_pages_total"}
    expected_empty = [e for e in empty
                      if source.get(e, e).startswith("memdedup_backend_cow")
                      and source.get(e, e) not in in_prometheus]
    check(empty == expected_empty, "dashboard expressions without data: %s"
          % empty)
    print("  %d dashboard expressions answered (%d without copy-on-write "
          "figures in this QEMU)" % (len(exprs), len(empty)))


if __name__ == "__main__":
    sys.exit(run_tests([("prometheus/end-to-end", test_prometheus)]))
