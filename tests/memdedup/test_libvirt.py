#!/usr/bin/env python3
"""memdedup under libvirt: a real libvirtd and virtlogd run our QEMU.

The daemons run with a private configuration in a mount namespace of
their own (unshare -m): the test's directories are bind-mounted over
/etc/libvirt, /run, /var/lib, /var/log and /var/cache, a copy of
/etc/passwd and /etc/group that adds the libvirt-qemu user and group
(libvirt's QEMU driver looks the user up at start, even when qemu.conf
runs QEMU as root) is bind-mounted over the host's if it lacks them.
Nothing on the host changes; the clients (virsh, memdedup-stat) reach
the daemon through the socket in the test's directory with
qemu:///system?socket=...  The domains are type='qemu' (TCG): vCPUs do
not run under KVM on these hosts.  /dev/kvm stays visible: masked with
/dev/null it is still accessible, so libvirt finds the cached
capabilities (probed without KVM) outdated and re-probes QEMU at every
lookup, about 2 s each, ten times per domain start.

Two TCG domains boot the test guest, which fills its memory:
  passthrough  memory-backend-ksm given through <qemu:commandline>
  adopt        libvirt's own memory-backend-ram objects (two guest NUMA
               cells, ram-node0 and ram-node1, <nosharepages/>) adopted
               with -object memdedup,adopt-ram=on
and a third one, "plain", runs paused without memdedup.  Statistics are
read through virsh qemu-monitor-command (QMP and --hmp) and through
memdedup-stat in its three formats, parsed, and compared.  Every process
started ends by PID (all processes of the namespace), on every path.

Without libvirt: memdedup-stat's errors, usage and man page.  (Adoption
without libvirt is tests/memdedup/test_adopt.py.)
"""

import contextlib
import json
import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time

from harness import (GUEST, MiB, PAGE, QEMU, TOP, Skip, check,
                     run_tests, wait_for)
import host  # noqa: E402  (scripts/memdedup/host.py, on harness's path)
import qtestvm  # noqa: E402  (scripts/memdedup/qtestvm.py, likewise)

STAT = os.path.join(TOP, "build", "tools", "memdedup-stat")
MEM = 384                      # MiB of guest RAM
ZERO, SHARED, COPIES, UNIQUE = 32, 16, 2, 32   # MiB, as the guest fills
BOOT_TIMEOUT = 240             # seconds, TCG on a loaded 2-core host
DAEMON_TIMEOUT = 60            # seconds for libvirtd to answer
# Directories libvirtd and QEMU write to, replaced in the namespace.
PRIVATE_DIRS = ("/run", "/var/lib", "/var/log", "/var/cache")
QEMU_USER = "libvirt-qemu"     # Debian's build-time default of the driver

LIBVIRTD_CONF = """\
auth_unix_ro = "none"
auth_unix_rw = "none"
log_filters = "1:qemu 2:daemon 3:rpc 3:object 3:event 3:util"
log_outputs = "1:file:/var/log/libvirt/libvirtd.log"
"""
VIRTLOGD_CONF = """\
log_outputs = "3:file:/var/log/libvirt/virtlogd.log"
"""
# QEMU as root without relabelling, cgroups or a private /dev: the
# test's files stay as they are and the host's cgroup tree is untouched.
QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "logd"
"""

# Runs in the new mount namespace: $1 is the private root, $2 "adduser"
# if passwd/group copies are to be mounted.
NAMESPACE_SCRIPT = r"""
set -e
root=$1
mount --make-rprivate /
mount --bind "$root/etc/libvirt" /etc/libvirt
for d in %s; do mount --bind "$root$d" "$d"; done
if [ "$2" = adduser ]; then
    mount --bind "$root/etc/passwd" /etc/passwd
    mount --bind "$root/etc/group" /etc/group
fi
# Our QEMU is this instance's default emulator (virsh version, capabilities).
export PATH="$root/bin:$PATH"
exec libvirtd -f /etc/libvirt/libvirtd.conf -p /run/libvirtd.pid
""" % " ".join(PRIVATE_DIRS)


def _user_exists():
    try:
        pwd.getpwnam(QEMU_USER)
        grp.getgrnam(QEMU_USER)
        return True
    except KeyError:
        return False


class Libvirt:
    """with Libvirt(workdir) as lv: lv.virsh(...); lv.uri

    Starts virtlogd and libvirtd in a private mount namespace (see the
    module's docstring) and, on exit, destroys the domains and ends every
    process of that namespace by PID, daemons last."""

    def __init__(self, workdir):
        self.root = os.path.join(workdir, "libvirt")
        self.sock = os.path.join(self.root, "run", "libvirt", "libvirt-sock")
        self.uri = "qemu:///system?socket=" + self.sock
        self.proc = None                # unshare, then libvirtd
        self.virtlogd = None
        self.mntns = None
        self.domains = []

    def _prepare(self):
        for d in ("etc/libvirt/qemu", "run/libvirt", "var/lib/libvirt/qemu",
                  "var/log/libvirt/qemu", "var/cache/libvirt/qemu"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        for d in PRIVATE_DIRS:
            os.makedirs(self.root + d, exist_ok=True)
        os.makedirs(os.path.join(self.root, "bin"), exist_ok=True)
        os.symlink(QEMU, os.path.join(self.root, "bin", "qemu-system-x86_64"))
        conf = os.path.join(self.root, "etc", "libvirt")
        for name, text in (("libvirtd.conf", LIBVIRTD_CONF),
                           ("virtlogd.conf", VIRTLOGD_CONF),
                           ("qemu.conf", QEMU_CONF)):
            with open(os.path.join(conf, name), "w") as f:
                f.write(text)
        if _user_exists():
            return False
        # Copies of the host's account files that add the user and group.
        for name, line in (("passwd", "%s:x:64055:64055:Libvirt Qemu:"
                            "/var/lib/libvirt:/usr/sbin/nologin\n"),
                           ("group", "%s:x:64055:\n")):
            with open("/etc/" + name) as f:
                text = f.read()
            if not re.search(r"^%s:" % QEMU_USER, text, re.M):
                text += line % QEMU_USER
            with open(os.path.join(self.root, "etc", name), "w") as f:
                f.write(text)
        return True

    def __enter__(self):
        if os.geteuid() != 0:
            raise Skip("libvirtd's system instance needs root")
        for tool in ("libvirtd", "virtlogd", "virsh", "unshare", "nsenter"):
            if not shutil.which(tool):
                raise Skip("%s is missing (make deps installs libvirt)" % tool)
        if not os.path.isdir("/etc/libvirt"):
            raise Skip("/etc/libvirt is missing (libvirt-clients)")
        if not os.path.exists(STAT):
            raise Skip("no %s: run make tools" % STAT)
        adduser = self._prepare()
        log = open(os.path.join(self.root, "daemons.log"), "wb")
        with log:
            self.proc = subprocess.Popen(
                ["unshare", "-m", "sh", "-c", NAMESPACE_SCRIPT, "sh",
                 self.root, "adduser" if adduser else ""],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        try:
            # unshare and sh exec: the process we started becomes libvirtd.
            self.mntns = wait_for("the daemons' mount namespace",
                                  self._namespace, 10)
            # libvirtd answering means the namespace's mounts are in place.
            wait_for("libvirtd", self._answers, DAEMON_TIMEOUT)
            # virtlogd joins the namespace as our child, so that we reap it;
            # domains start only once its socket is there.
            with open(os.path.join(self.root, "virtlogd.log"), "wb") as log:
                self.virtlogd = subprocess.Popen(
                    ["nsenter", "-m", "-t", str(self.proc.pid), "virtlogd",
                     "-f", "/etc/libvirt/virtlogd.conf",
                     "-p", "/run/virtlogd.pid"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True)
            wait_for("virtlogd's socket", self._virtlogd_ready,
                     DAEMON_TIMEOUT)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _namespace(self):
        with contextlib.suppress(OSError):
            ns = os.readlink("/proc/%d/ns/mnt" % self.proc.pid)
            if ns != os.readlink("/proc/self/ns/mnt"):
                return ns
        if self.proc.poll() is not None:
            raise AssertionError("libvirtd exited:\n" + self.daemon_log())
        return None

    def _virtlogd_ready(self):
        if self.virtlogd.poll() is not None:
            with open(os.path.join(self.root, "virtlogd.log"),
                      errors="replace") as f:
                raise AssertionError("virtlogd exited:\n" + f.read()[-3000:])
        # /run in the namespace is our directory run/.
        return os.path.exists(os.path.join(self.root, "run", "libvirt",
                                           "virtlogd-sock"))

    def _answers(self):
        if self.proc.poll() is not None:
            raise AssertionError("libvirtd exited:\n" + self.daemon_log())
        r = subprocess.run(["virsh", "-c", self.uri, "list"],
                           capture_output=True, text=True, timeout=30)
        return r.returncode == 0

    def daemon_log(self):
        out = ""
        for name in ("daemons.log", "var/log/libvirt/libvirtd.log"):
            with contextlib.suppress(OSError):
                with open(os.path.join(self.root, name),
                          errors="replace") as f:
                    out += "--- %s\n%s" % (name, f.read()[-3000:])
        return out

    def domain_log(self, name):
        with contextlib.suppress(OSError):
            with open(os.path.join(self.root, "var/log/libvirt/qemu",
                                   name + ".log"), errors="replace") as f:
                return f.read()
        return ""

    def virsh(self, *args, ok=True, timeout=60):
        r = subprocess.run(["virsh", "-c", self.uri] + list(args),
                           capture_output=True, text=True, timeout=timeout)
        if ok and r.returncode != 0:
            raise AssertionError("virsh %s failed (%d): %s%s" % (
                " ".join(args[:2]), r.returncode, r.stderr.strip(),
                "\n" + self.domain_log(args[1]) if len(args) > 1 else ""))
        return r

    def qmp(self, domain, command, **arguments):
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        reply = json.loads(self.virsh("qemu-monitor-command", domain,
                                      json.dumps(msg)).stdout)
        if "error" in reply:
            raise AssertionError("%s on %s: %s" % (command, domain,
                                                   reply["error"]))
        return reply["return"]

    def start(self, xml_path, paused=False):
        name = re.search(r"<name>([^<]+)</name>",
                         open(xml_path).read()).group(1)
        self.domains.append(name)
        args = ["create", xml_path] + (["--paused"] if paused else [])
        self.virsh(*args)
        return name

    def _namespace_pids(self):
        pids = []
        for p in os.listdir("/proc"):
            if p.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink("/proc/%s/ns/mnt" % p) == self.mntns:
                        pids.append(int(p))
        return pids

    def __exit__(self, *exc):
        if self.proc is None:
            return False
        with host.shielded():
            for name in self.domains:
                if self.proc.poll() is None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.virsh("destroy", name, ok=False, timeout=30)
            self._end_all()
        return False

    def _end_all(self):
        """SIGTERM, then SIGKILL, every process of the namespace: QEMUs
        first, the daemons last."""
        daemons = {self.proc.pid}
        if self.virtlogd:
            daemons.add(self.virtlogd.pid)
        for group in (False, True):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                pids = [p for p in (self._namespace_pids() if self.mntns
                                    else [self.proc.pid])
                        if (p in daemons) == group]
                for p in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p, sig)
                deadline = time.monotonic() + 10
                while pids and time.monotonic() < deadline:
                    for child in (self.proc, self.virtlogd):
                        if child:
                            child.poll()        # reap our own children
                    pids = [p for p in pids if os.path.exists("/proc/%d" % p)
                            and not _zombie(p)]
                    time.sleep(0.1)
                if not pids:
                    break
        for child in (self.proc, self.virtlogd):
            if child:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(10)


def _zombie(pid):
    with contextlib.suppress(OSError):
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    return True


def domain_xml(workdir, name, memdedup, paused=False):
    """A TCG domain that boots the test guest.  memdedup: 'passthrough',
    'adopt' or None."""
    kernel = os.path.join(GUEST, "vmlinuz")
    initrd = os.path.join(GUEST, "initramfs.cpio.gz")
    append = ("console=ttyS0 quiet panic=-1 memdedup.zero=%d "
              "memdedup.shared=%d memdedup.copies=%d memdedup.unique=%d"
              % (ZERO, SHARED, COPIES, UNIQUE))
    cpu = numatune = ""
    args = []
    if memdedup == "passthrough":
        args = ["-object", "memdedup,id=memdedup,rescan-interval=1000",
                "-object", "memory-backend-ksm,id=ram0,size=%dM" % MEM,
                "-machine", "memory-backend=ram0"]
    elif memdedup == "adopt":
        half = MEM // 2
        cpu = """
  <cpu>
    <numa>
      <cell id='0' cpus='0' memory='%d' unit='MiB'/>
      <cell id='1' memory='%d' unit='MiB'/>
    </numa>
  </cpu>""" % (half, MEM - half)
        numatune = """
  <numatune>
    <memnode cellid='0' mode='strict' nodeset='0'/>
  </numatune>"""
        args = ["-object",
                "memdedup,id=memdedup,adopt-ram=on,rescan-interval=1000"]
    commandline = "".join("\n    <qemu:arg value='%s'/>" % a for a in args)
    xml = """<domain type='qemu' xmlns:qemu='%(qemu_ns)s'>
  <name>%(name)s</name>
  <memory unit='MiB'>%(mem)d</memory>
  <vcpu>1</vcpu>%(cpu)s%(numatune)s
  <memoryBacking>
    <nosharepages/>
  </memoryBacking>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%(kernel)s</kernel>
    <initrd>%(initrd)s</initrd>
    <cmdline>%(append)s</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>%(qemu)s</emulator>
    <serial type='file'>
      <source path='%(serial)s'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>%(commandline)s
  </qemu:commandline>
</domain>
""" % dict(qemu_ns="http://libvirt.org/schemas/domain/qemu/1.0",
           name=name, mem=MEM, cpu=cpu, numatune=numatune, kernel=kernel,
           initrd=initrd, append=append, qemu=QEMU, commandline=commandline,
           serial=os.path.join(workdir, name + ".serial.log"))
    path = os.path.join(workdir, name + ".xml")
    with open(path, "w") as f:
        f.write(xml)
    return path


def read_text(path):
    with contextlib.suppress(OSError):
        with open(path, errors="replace") as f:
            return f.read()
    return ""


def run_pass(lv, domain, timeout=120):
    """A pass that starts after everything so far, over libvirt's QMP
    pass-through; query-memdedup then."""
    return qtestvm.complete_pass(lambda name: lv.qmp(domain, name), timeout)


def stat(lv, *args, ok=True):
    r = subprocess.run([STAT, "-c", lv.uri] + list(args),
                       capture_output=True, text=True, timeout=60)
    if ok:
        check(r.returncode == 0, "memdedup-stat %s: %d %s" % (
            " ".join(args), r.returncode, r.stderr))
    return r


def parse_prometheus(text):
    """{(name, frozenset(labels)): value}; checks HELP/TYPE precede."""
    samples, typed = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r'([a-z_]+)(?:\{(.*)\})? (\S+)', line)
        check(m, "bad Prometheus line %r" % line)
        name, labels, value = m.groups()
        check(name in typed, "%s has no TYPE line" % name)
        pairs = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"',
                                     labels or ""))
        samples[(name, pairs)] = float(value)
    return samples


def parse_table(text):
    """{domain: {backend: [MiB columns]}} and {domain: status text}."""
    rows, others, domain = {}, {}, None
    for line in text.splitlines()[2:]:
        # The lines under the table: "DOMAIN: engine ...", "DOMAIN:
        # board ...", "DOMAIN BACKEND: THP kept ...".
        if line.startswith(("TOTAL", "HOST", "host KSM", "* upper")) or \
                re.match(r"\S+( \S+)?: ", line):
            continue
        m = re.match(r"(\S+)\s+\((.*)\)$", line)
        if m:
            others[m.group(1)] = m.group(2)
            continue
        fields = line.split()
        if not line.startswith(" "):
            domain = fields.pop(0)
        rows.setdefault(domain, {})[fields[0]] = [
            None if f == "-" else float(f.rstrip("*")) for f in fields[2:]]
    return rows, others


def check_pages(b, what):
    pages = lambda mib: mib * MiB // PAGE   # noqa: E731
    check(b["zero-pages"] >= pages(ZERO) * 0.9,
          "%s: zero pages %d" % (what, b["zero-pages"]))
    check(b["duplicate-pages"] >= pages(SHARED * COPIES) * 0.9,
          "%s: duplicate pages %d" % (what, b["duplicate-pages"]))
    check(b["unique-pages"] >= pages(UNIQUE) * 0.9,
          "%s: unique pages %d" % (what, b["unique-pages"]))
    check(b["resident-pages"] >= pages(ZERO + SHARED * COPIES + UNIQUE),
          "%s: resident pages %d" % (what, b["resident-pages"]))
    check(b["registered-bytes"] >= (ZERO + SHARED * COPIES) * MiB * 0.9,
          "%s: registered %d" % (what, b["registered-bytes"]))


def summed(backends):
    keys = ("size", "resident-pages", "zero-pages", "duplicate-pages",
            "unique-pages", "registered-bytes", "estimated-saving")
    return {k: sum(b[k] for b in backends) for k in keys}


def test_libvirt(workdir):
    if not (os.path.exists(os.path.join(GUEST, "vmlinuz")) and
            os.path.exists(os.path.join(GUEST, "initramfs.cpio.gz"))):
        raise Skip("no guest image: run make guest")
    with host.KsmKnobs(run=1, pages_to_scan=2000, sleep_millisecs=10,
                      use_zero_pages=0) as ksm, \
            Libvirt(workdir) as lv:
        t0 = time.monotonic()
        doms = {}
        for name, how in (("md-passthrough", "passthrough"),
                          ("md-adopt", "adopt")):
            doms[name] = lv.start(domain_xml(workdir, name, how))
        lv.start(domain_xml(workdir, "plain", None), paused=True)
        print("  daemons up and 3 domains started in %.1f s"
              % (time.monotonic() - t0))

        # libvirt's command line: the adopted backends are its own.
        cmdline = lv.domain_log("md-adopt")
        for backend in ("ram-node0", "ram-node1"):
            check('"qom-type":"memory-backend-ram","id":"%s"' % backend
                  in cmdline, "libvirt did not create %s:\n%s"
                  % (backend, cmdline[-2000:]))
        check("mem-merge=off" in cmdline, "no mem-merge=off from "
              "<nosharepages/>")

        for name in doms:
            serial = os.path.join(workdir, name + ".serial.log")
            wait_for(name + " to fill its memory", lambda: (
                "MEMDEDUP-GUEST-READY" in read_text(serial)), BOOT_TIMEOUT)
        print("  guests ready after %.1f s" % (time.monotonic() - t0))

        # One pass over the filled memory, then no more: the numbers of
        # the comparisons below stay put (only the kernel's view moves).
        queried = {}
        for name in doms:
            run_pass(lv, name)
            lv.qmp(name, "qom-set", path="/objects/memdedup",
                   property="rescan-interval", value=86400000)
            queried[name] = run_pass(lv, name)
        by_id = lambda info: {b["id"]: b for b in info["backends"]}  # noqa

        # passthrough: one memory-backend-ksm holds all guest RAM.
        p = by_id(queried["md-passthrough"])
        check(set(p) == {"ram0"}, "passthrough backends %s" % sorted(p))
        check(p["ram0"]["size"] == MEM * MiB, "ram0 size")
        check_pages(p["ram0"], "passthrough")
        # adopt: libvirt's two NUMA cells, adopted, the guest's data in
        # them (where the guest kernel put it).
        a = by_id(queried["md-adopt"])
        check(set(a) == {"ram-node0", "ram-node1"},
              "adopted backends %s" % sorted(a))
        check(all(b["policy"] == "targeted" for b in a.values()),
              "adopted policy")
        check(sum(b["size"] for b in a.values()) == MEM * MiB, "sizes")
        total = dict(summed(a.values()), **{"id": "ram-node*"})
        check_pages(total, "adopt")
        for name, info in queried.items():
            for b in info["backends"]:
                print("  %s %s: resident %d zero %d duplicate %d unique %d "
                      "registered %.1f MiB" % (
                          name, b["id"], b["resident-pages"],
                          b["zero-pages"], b["duplicate-pages"],
                          b["unique-pages"], b["registered-bytes"] / MiB))

        # HMP through virsh.
        for name, ids in (("md-passthrough", ["ram0"]),
                          ("md-adopt", ["ram-node0", "ram-node1"])):
            hmp = lv.virsh("qemu-monitor-command", name, "--hmp",
                           "info memdedup").stdout
            check(hmp.startswith("memdedup: idle"), "HMP: " + hmp)
            for i in ids:
                m = re.search(r"^%s\s+targeted\s+([\d.]+)" % re.escape(i),
                              hmp, re.M)
                check(m and float(m.group(1)) == by_id(queried[name])[i][
                    "size"] / MiB, "HMP %s row: %s" % (i, hmp))

        # A domain without memdedup answers query-memdedup with no backend.
        check(lv.qmp("plain", "query-memdedup")["backends"] == [],
              "plain has backends")

        if ksm.active:
            merged = wait_for("ksmd to merge registered pages", lambda: sum(
                b.get("kernel-merged-pages", 0) for b in
                lv.qmp("md-passthrough", "query-memdedup")["backends"]) >=
                SHARED * MiB // PAGE, 90)
            print("  kernel merged pages in md-passthrough after %.1f s"
                  % (time.monotonic() - t0))

        # memdedup-stat, all three formats, against query-memdedup.
        js = json.loads(stat(lv, "--json").stdout)
        jd = {d["name"]: d for d in js["domains"]}
        check(set(jd) == {"md-passthrough", "md-adopt", "plain"},
              "memdedup-stat domains %s" % sorted(jd))
        check(jd["plain"]["memdedup"] is False and
              jd["plain"]["status"] == "no-backends", str(jd["plain"]))
        for name in doms:
            check(jd[name]["memdedup"] and jd[name]["status"] == "memdedup",
                  name)
            mine = by_id(jd[name]["query-memdedup"])
            for bid, b in by_id(queried[name]).items():
                for k in ("size", "resident-pages", "zero-pages",
                          "duplicate-pages", "unique-pages",
                          "registered-bytes", "estimated-saving"):
                    check(mine[bid][k] == b[k], "--json %s %s %s: %d != %d"
                          % (name, bid, k, mine[bid][k], b[k]))
        host_ksm = js["host-ksm"]
        check(host_ksm["available"] and host_ksm["page-size"] == PAGE,
              str(host_ksm))
        # The totals: the sum of the backends' attributed savings, and
        # what the host saved, from the same snapshot.
        # Exact where QEMU may read /proc/kpagecount, else an upper
        # bound (actual-saving) that says so.
        total = js["total"]
        backends = [b for d in js["domains"] if d["memdedup"]
                    for b in d["query-memdedup"]["backends"]]
        exact = all(b["attributed-saving-accuracy"] == "exact"
                    for b in backends)
        for b in backends:
            check(b["attributed-saving"] <= b["actual-saving"] if
                  b["attributed-saving-accuracy"] == "exact" else
                  b["attributed-saving"] == b["actual-saving"],
                  "attributed saving: %r" % b)
        check(total["attributed-saving"] ==
              sum(b["attributed-saving"] for b in backends) and
              total["attributed-saving-accuracy"] ==
              ("exact" if exact else "upper-bound") and
              total["host-saving"] == host_ksm["pages-sharing"] * PAGE,
              "--json total %r" % total)
        for member in ("unmerge-refusals", "registration-failures",
                       "rearmed-regions"):
            check(total[member] == sum(b[member] for b in backends),
                  "--json total %s: %r" % (member, total))

        # --sort attributed: the largest share first, plain last.
        js = json.loads(stat(lv, "--json", "--sort", "attributed").stdout)
        order = [d["name"] for d in js["domains"]]
        shares = {d["name"]: sum(b.get("attributed-saving", 0) for b in
                                 d["query-memdedup"]["backends"])
                  for d in js["domains"] if d["memdedup"]}
        check(order[-1] == "plain" and order[:-1] == sorted(
            shares, key=lambda n: (-shares[n], n)), "--sort attributed: "
            "%s, shares %s" % (order, shares))
        if ksm.active:
            check(host_ksm["pages-sharing"] > 0 and
                  host_ksm["pages-to-scan"] == 2000, "host KSM %s" % host_ksm)

        prom = parse_prometheus(stat(lv, "--prometheus").stdout)
        val = lambda n, **l: prom[(n, frozenset(l.items()))]  # noqa: E731
        check(val("memdedup_domain_enabled", domain="plain",
                  status="no-backends") == 0, "plain enabled")
        for name in doms:
            check(val("memdedup_domain_enabled", domain=name,
                      status="memdedup") == 1, name + " enabled")
            check(val("memdedup_passes_completed_total", domain=name) ==
                  queried[name]["passes-completed"], name + " passes")
            for bid, b in by_id(queried[name]).items():
                for metric, value in (
                        ("size_bytes", b["size"]),
                        ("resident_bytes", b["resident-pages"] * PAGE),
                        ("zero_bytes", b["zero-pages"] * PAGE),
                        ("duplicate_bytes", b["duplicate-pages"] * PAGE),
                        ("unique_bytes", b["unique-pages"] * PAGE),
                        ("registered_bytes", b["registered-bytes"])):
                    got = val("memdedup_backend_" + metric, domain=name,
                              backend=bid)
                    check(got == value, "prometheus %s %s %s: %d != %d"
                          % (name, bid, metric, got, value))
        for name in doms:
            for bid, b in by_id(queried[name]).items():
                got = val("memdedup_backend_attributed_saving_bytes",
                          domain=name, backend=bid,
                          accuracy=b["attributed-saving-accuracy"])
                check(0 <= got <= b["size"], "attributed %s %s: %d"
                      % (name, bid, got))
        check(val("memdedup_host_ksm_up") == 1, "host KSM up")
        if ksm.active:
            check(val("memdedup_host_ksm_pages_sharing") > 0,
                  "prometheus pages_sharing")
            merged = val("memdedup_backend_kernel_merged_bytes",
                         domain="md-passthrough", backend="ram0")
            check(merged >= SHARED * MiB, "prometheus merged %d" % merged)

        table = stat(lv).stdout
        print("\n".join("  | " + line for line in table.splitlines()))
        rows, others = parse_table(table)
        # The HOST row is the host KSM line's pages_sharing, in MiB.
        check(("* upper bound" in table) != exact, "upper-bound note")
        host_row = re.search(r"^HOST\s+pages_sharing\s+(\S+)$", table, re.M)
        sharing = re.search(r"pages_sharing (\d+)", table)
        check(host_row and sharing and abs(float(host_row.group(1)) -
              int(sharing.group(1)) * PAGE / MiB) <= 0.05 + 1e-9,
              "HOST row %r" % (host_row and host_row.group(0)))
        check(others.get("plain", "").startswith("no memdedup"),
              "table: plain is %r" % others.get("plain"))
        for name in doms:
            for bid, b in by_id(queried[name]).items():
                # Under the table: the backend's figures, with the times
                # its regions were registered again (ksmd may move it).
                figures = re.search(r"^%s %s: THP kept .*, registered "
                                    r"again (\d+) times$" % (
                                        re.escape(name), re.escape(bid)),
                                    table, re.M)
                check(figures and int(figures.group(1)) >=
                      b["rearmed-regions"], "table %s %s figures" % (
                          name, bid))
                cols = rows[name][bid]
                for col, value in ((0, b["size"]),
                                   (1, b["resident-pages"] * PAGE),
                                   (2, b["zero-pages"] * PAGE),
                                   (3, b["duplicate-pages"] * PAGE),
                                   (5, b["registered-bytes"])):
                    # The table rounds to 0.1 MiB: 24.75 prints as 24.8.
                    check(abs(cols[col] - value / MiB) <= 0.05 + 1e-9,
                          "table %s %s column %d: %s vs %.1f" % (
                              name, bid, col, cols[col], value / MiB))

        # --watch refreshes until interrupted.
        out = os.path.join(workdir, "memdedup.prom")
        w = subprocess.Popen([STAT, "-c", lv.uri, "--prometheus", "--watch",
                              "1", "--output", out],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            first = wait_for("--output file", lambda: os.path.exists(out)
                             and os.stat(out).st_mtime_ns, 20)
            wait_for("a refresh", lambda: os.stat(out).st_mtime_ns != first,
                     20)
        finally:
            w.send_signal(signal.SIGINT)
            rc = w.wait(20)
        check(rc == 0, "--watch ended with %d: %s" % (rc, w.stderr.read()))
        check(("memdedup_domain_enabled", frozenset(
            {("domain", "plain"), ("status", "no-backends")})) in
            parse_prometheus(read_text(out)), "--output file content")
        print("  all checks done after %.1f s" % (time.monotonic() - t0))


def test_stat_errors(workdir):
    if not os.path.exists(STAT):
        raise Skip("no %s: run make tools" % STAT)
    sock = os.path.join(workdir, "nothing-here")
    for uri in ("qemu:///system?socket=" + sock, "nosuchdriver:///x"):
        r = subprocess.run([STAT, "-c", uri], capture_output=True, text=True,
                           timeout=30)
        check(r.returncode == 1 and r.stdout == "", "%s: rc %d out %r" % (
            uri, r.returncode, r.stdout))
        check(r.stderr.startswith("memdedup-stat: cannot connect to libvirt "
                                  "at '%s': " % uri), r.stderr)
    # A domain that cannot be asked (the test driver has no QEMU monitor)
    # is listed with libvirt's error; it does not fail the whole listing.
    r = subprocess.run([STAT, "-c", "test:///default", "--json"],
                       capture_output=True, text=True, timeout=30)
    check(r.returncode == 0, "test:///default: %d %s" % (r.returncode,
                                                         r.stderr))
    doms = json.loads(r.stdout)["domains"]
    check([(d["name"], d["status"], d["memdedup"]) for d in doms] ==
          [("test", "error", False)] and doms[0]["error"], str(doms))
    for bad in (["--watch", "0"], ["--bogus"], ["extra"],
                ["--sort", "size"]):
        r = subprocess.run([STAT] + bad, capture_output=True, text=True,
                           timeout=30)
        check(r.returncode == 2 and r.stderr, "%s: rc %d" % (bad,
                                                             r.returncode))
    r = subprocess.run([STAT, "--help"], capture_output=True, text=True,
                       timeout=30)
    check(r.returncode == 0 and "--prometheus" in r.stdout, "--help")
    # --help and the man page name the same options.
    man = read_text(os.path.join(TOP, "tools", "memdedup-stat",
                                 "memdedup-stat.1"))
    in_help = set(re.findall(r"^\s+(-\w), (--[\w-]+)", r.stdout, re.M))
    in_man = {("-" + a, "--" + b) for a, b in re.findall(
        r"^\\fB\\-(\w)\\fR, \\fB\\-\\-([\w-]+)\\fR", man, re.M)}
    check(in_help and in_help == in_man, "--help %s, man page %s" % (
        sorted(in_help), sorted(in_man)))


if __name__ == "__main__":
    sys.exit(run_tests([("libvirt/stat-errors", test_stat_errors),
                        ("libvirt/domains", test_libvirt)]))
