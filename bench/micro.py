"""Scanner micro-benchmark: how fast memdedup hashes resident guest RAM,
against the single-core read bandwidth measured in the same run.

QEMU (-accel qtest) gets one memory-backend-ksm holding the mixed
workload's first VM (loaded at start: 10 % zero pages, the rest non-zero)
with dedup-policy=estimate (nothing is registered) and an unlimited
scan-rate.  For 1 and 2 scanner threads, passes are started with
memdedup-scan: three (one with two threads) that are not measured -- the
first sees everything new, the next give the unique regions their huge
pages back -- then five measured ones.  Two throughputs per pass:

  pass GB/s      resident bytes / last-pass-duration: the whole pass
                 (hashing, sorting the fingerprints, region decisions,
                 and the exact KSM count through /proc/kpageflags when
                 QEMU has CAP_SYS_ADMIN)
  hash GB/s/CPU  resident bytes / scanner-cpu-time of the pass: the
                 hashing phase per CPU-second (what the engine reports
                 as its own CPU)

QEMU runs twice: as root (as the rest of the bench) and without
CAP_SYS_ADMIN (as under libvirt), where the exact count is skipped.

The read bandwidth comes from a C loop (XOR of 64-bit words, compiled
here with the system cc at -O3 -march=native, so SIMD loads).  The
machine's bandwidth drifts (here by 20 % within a minute, and two
readers at once got 19 and 35 GB/s each in runs minutes apart), so it
is measured around every measured pass: the loop runs beside QEMU, in
one and in two threads over buffers of the guest's size filled once (on
huge pages where the host allows, as the scanned memory is by then),
and sweeps three times right before and right after each pass; each
pass is compared with the best sweep around it.  A row gives the
medians over its five passes, each ratio the median of the passes' own
ratios.

Two threads share the memory bandwidth: per CPU, neither reading nor
hashing is as fast as alone.  So the scanner's hashing per CPU with two
threads is also given against what each of two readers reads at once
(around the same pass), and its throughput (the whole pass) against the
single core.  For reference, the start of the run measures the loop
alone (small pages, best of five sweeps), a scalar loop (one 64-bit
load at a time), and a plain XXH3 loop over 4 KiB pages (the scanner's
hash and prefetch, nothing else) in one and in two threads at once.
"""

import os
import subprocess
import tempfile

import probe
import qtestvm  # scripts/memdedup/qtestvm.py, on probe's path
import workloads as wl

LOOPS_C = r"""
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

static size_t size;
static int reps;
static const char *kind;
static pthread_barrier_t start;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* XXH3 of every 4 KiB page, the next page prefetched: the scanner's
 * inner loop without pagemap, dup set or QEMU. */
static uint64_t sweep_hash(const uint8_t *buf)
{
    uint64_t acc = 0;

    for (size_t off = 0; off < size; off += 4096) {
        if (off + 4096 < size) {
            for (int l = 0; l < 4096; l += 64) {
                __builtin_prefetch(buf + off + 4096 + l);
            }
        }
        acc += XXH3_64bits(buf + off, 4096);
    }
    return acc;
}

/* The read loop: XOR of 64-bit words, SIMD loads at -march=native. */
static uint64_t sweep_read(const uint64_t *buf)
{
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;

    for (size_t i = 0; i < size / 8; i += 4) {
        a0 ^= buf[i];
        a1 ^= buf[i + 1];
        a2 ^= buf[i + 2];
        a3 ^= buf[i + 3];
    }
    return a0 ^ a1 ^ a2 ^ a3;
}

/* The same sweep without SIMD, for reference. */
__attribute__((optimize("no-tree-vectorize")))
static uint64_t sweep_scalar(const uint64_t *buf)
{
    uint64_t a = 0;

    for (size_t i = 0; i < size / 8; i++) {
        a += buf[i];
    }
    return a;
}

typedef struct {
    uint8_t *buf;
    double best;
    uint64_t acc;
} Worker;

/* Every sweep starts with all threads at once, so that they overlap. */
static void *work(void *opaque)
{
    Worker *w = opaque;

    for (int r = 0; r < reps; r++) {
        double t0, t;

        pthread_barrier_wait(&start);
        t0 = now();
        if (!strcmp(kind, "xxh3")) {
            w->acc ^= sweep_hash(w->buf);
        } else if (!strcmp(kind, "scalar")) {
            w->acc ^= sweep_scalar((uint64_t *)w->buf);
        } else {
            w->acc ^= sweep_read((uint64_t *)w->buf);
        }
        t = now() - t0;
        if (size / t / 1e9 > w->best) {
            w->best = size / t / 1e9;
        }
    }
    return NULL;
}

/* @reps sweeps in each of @threads threads: best GB/s, per thread. */
static void measure(Worker *w, int threads)
{
    pthread_t tid[8];
    double sum = 0;
    uint64_t acc = 0;

    for (int t = 0; t < threads; t++) {
        w[t].best = 0;
        pthread_create(&tid[t], NULL, work, &w[t]);
    }
    for (int t = 0; t < threads; t++) {
        pthread_join(tid[t], NULL);
        sum += w[t].best;
        acc ^= w[t].acc;
    }
    printf("%.3f %llu\n", sum / threads, (unsigned long long)acc);
    fflush(stdout);
}

/*
 * loops KIND MiB REPS THREADS [serve] [huge]: with "serve", measure
 * again for every line read from stdin (the buffers stay), until end of
 * file; with "huge", the buffers are on huge pages (MADV_HUGEPAGE) where
 * the host allows, as the scanner's unique memory ends up.
 */
int main(int argc, char **argv)
{
    int threads = atoi(argv[4]);
    bool serve = false, huge = false;
    Worker w[8];
    char line[16];

    for (int a = 5; a < argc; a++) {
        serve |= !strcmp(argv[a], "serve");
        huge |= !strcmp(argv[a], "huge");
    }

    kind = argv[1];
    size = strtoull(argv[2], NULL, 0) << 20;
    reps = atoi(argv[3]);
    if (threads < 1 || threads > 8) {
        return 1;
    }
    pthread_barrier_init(&start, NULL, threads);
    for (int t = 0; t < threads; t++) {
        w[t].buf = mmap(NULL, size, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (w[t].buf == MAP_FAILED) {
            perror("mmap");
            return 1;
        }
        madvise(w[t].buf, size, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
        for (size_t i = 0; i < size / 8; i++) {
            ((uint64_t *)w[t].buf)[i] = (i + t) * 0x9e3779b97f4a7c15ull;
        }
        w[t].acc = 0;
    }
    if (!serve) {
        measure(w, threads);
        return 0;
    }
    while (fgets(line, sizeof(line), stdin)) {
        measure(w, threads);
    }
    return 0;
}
"""


def _loops(workdir):
    """The loops program, built once per work directory."""
    src = os.path.join(workdir, "loops.c")
    exe = os.path.join(workdir, "loops")
    if not os.path.exists(exe):
        with open(src, "w") as f:
            f.write(LOOPS_C)
        with open("/proc/cpuinfo") as f:
            avx2 = " avx2" in f.read()
        flags = ["-DXXH_VECTOR=XXH_AVX2"] if avx2 else []
        subprocess.run(["cc", "-O3", "-march=native"] + flags +
                       ["-pthread", "-o", exe, src], check=True)
    return exe


def concurrent_loop(kind, size_mib, workdir, threads):
    """GB/s per thread of @threads threads sweeping their own buffer of
    @size_mib MiB at once (each sweep starts on a barrier), best of five:
    kind "read" is the read loop, "scalar" the same without SIMD, "xxh3"
    XXH3 over 4 KiB pages with the next one prefetched, as the scanner
    hashes (its AVX2 code when the CPU has it, as the scanner picks at
    run time)."""
    out = subprocess.run([_loops(workdir), kind, str(size_mib), "5",
                          str(threads)],
                         check=True, stdout=subprocess.PIPE,
                         universal_newlines=True).stdout
    return float(out.split()[0])


class ReadLoop:
    """The read loop in @threads threads, kept running over its buffers
    (filled once, on huge pages where the host allows: read a little
    faster than small pages, and what the scanner's memory is after its
    first passes): measure() sweeps three times now and returns the best
    GB/s per thread.  Used right before and after each scanner pass."""

    def __init__(self, size_mib, workdir, threads):
        self.proc = subprocess.Popen(
            [_loops(workdir), "read", str(size_mib), "3", str(threads),
             "serve", "huge"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, universal_newlines=True)

    def measure(self):
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the read loop ended")
        return float(line.split()[0])

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def read_bandwidth(size_mib, workdir):
    """Single-core read bandwidth in GB/s (1e9 bytes per second): the
    compiler's SIMD loop, and a scalar loop for reference."""
    return (concurrent_loop("read", size_mib, workdir, 1),
            concurrent_loop("scalar", size_mib, workdir, 1))


def _start(workdir, name, args, unprivileged):
    # Without CAP_SYS_ADMIN, pagemap hides PFNs: no exact KSM count.
    wrapper = ("setpriv", "--bounding-set", "-sys_admin", "--inh-caps",
               "-sys_admin") if unprivileged else ()
    return qtestvm.start_qtest_vm(wl.QEMU, workdir, name, args, wrapper)


def _pass(vm, timeout=300):
    cpu0 = vm.qmp.cmd("query-memdedup")["scanner-cpu-time"]
    info = qtestvm.run_pass(vm, timeout)
    resident = sum(b["resident-pages"] * b["page-size"]
                   for b in info["backends"])
    return (resident, info["last-pass-duration"] / 1e9,
            (info["scanner-cpu-time"] - cpu0) / 1e9)


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def _measured_passes(vm, loops, threads, reps):
    """@reps scanner passes, each between two measurements of the read
    loops: [(resident bytes, pass seconds, CPU seconds, single-core GB/s,
    GB/s per thread of @threads readers)], the bandwidths the higher of
    the two around the pass."""
    out = []
    for _ in range(reps):
        before = {n: loops[n].measure() for n in sorted(loops)}
        resident, dur, cpu = _pass(vm)
        after = {n: loops[n].measure() for n in sorted(loops)}
        bw = {n: max(before[n], after[n]) for n in loops}
        out.append((resident, dur, cpu, bw[1], bw[threads]))
    return out


def run(ctx, log, reps=5):
    layout = ctx.layout
    size_mib = layout.vm_mib          # the image holds one layout VM
    out = {"size_mib": size_mib, "rows": []}
    with probe.cpu_lock("scanner micro-benchmark"), \
            tempfile.TemporaryDirectory(dir=ctx.workdir) as d:
        log("micro: single-core read bandwidth over %d MiB" % size_mib)
        bw, scalar = read_bandwidth(size_mib, d)
        out["read_gbps"], out["read_scalar_gbps"] = bw, scalar
        log("micro: %.2f GB/s (scalar loop: %.2f GB/s)" % (bw, scalar))
        # Per thread, with one and with two threads at once.
        out["read_gbps_per_thread"], out["xxh3_gbps"] = {1: bw}, {}
        for threads in (1, 2):
            if threads > 1:
                out["read_gbps_per_thread"][threads] = concurrent_loop(
                    "read", size_mib, d, threads)
            out["xxh3_gbps"][threads] = concurrent_loop(
                "xxh3", size_mib, d, threads)
            log("micro: %d thread(s) at once, per thread: read %.2f GB/s, "
                "XXH3 %.2f GB/s" % (threads,
                                    out["read_gbps_per_thread"][threads],
                                    out["xxh3_gbps"][threads]))
        for unpriv in (False, True):
            priv = "no SYS_ADMIN" if unpriv else "root"
            args = ["-machine", "pc,memory-backend=m0",
                    "-m", "%dM" % size_mib,
                    "-object", "memdedup,id=md,rescan-interval=86400000,"
                               "scan-rate=1T",
                    "-object", "memory-backend-ksm,id=m0,size=%dM,"
                               "dedup-policy=estimate" % size_mib
                    ] + wl.loader_args(ctx.images[0], 0)
            loops = {}
            vm = qt = None
            try:
                for n in (1, 2):
                    loops[n] = ReadLoop(size_mib, d, n)
                vm, qt = _start(d, "micro", args, unpriv)
                for threads in (1, 2):
                    vm.qmp.cmd("qom-set", path="/objects/md",
                               property="scan-threads", value=threads)
                    # Not measured: the first pass sees everything new,
                    # and the next ones give unique regions their huge
                    # pages back.
                    for _ in range(3 if threads == 1 else 1):
                        _pass(vm)
                    passes = _measured_passes(
                        vm, {n: loops[n] for n in {1, threads}}, threads,
                        reps)
                    out["rows"].append(_row(threads, priv, passes, out))
                    row = out["rows"][-1]
                    log("micro: %d thread(s), %s: pass %.3f s (%.2f GB/s, "
                        "%.2fx), hashing %.2f GB/s per CPU (%.2fx), read "
                        "%.2f GB/s (medians of %d)"
                        % (threads, priv, row["pass_seconds"],
                           row["pass_gbps"], row["pass_ratio"],
                           row["hash_gbps_per_cpu"], row["hash_ratio"],
                           row["read_gbps"], reps))
            finally:
                if vm:
                    vm.stop()
                    qt.close()
                for loop in loops.values():
                    loop.close()
    return out


def _row(threads, priv, passes, out):
    """One table row from measured passes: each value the median over
    the passes, each ratio the median of the passes' own ratios."""
    def med(f):
        return _median([f(*p) for p in passes])

    def gbps(resident, seconds):
        return resident / seconds / 1e9 if seconds > 0 else 0.0
    row = {"threads": threads, "privilege": priv,
           "passes": len(passes),
           "resident_bytes": passes[0][0],
           "pass_seconds": round(med(lambda r, d, c, b1, bn: d), 4),
           "scanner_cpu_seconds": round(med(lambda r, d, c, b1, bn: c), 4),
           "pass_gbps": med(lambda r, d, c, b1, bn: gbps(r, d)),
           "hash_gbps_per_cpu": med(lambda r, d, c, b1, bn: gbps(r, c)),
           "read_gbps": med(lambda r, d, c, b1, bn: b1),
           "read_gbps_same_threads": med(lambda r, d, c, b1, bn: bn),
           "pass_ratio": med(lambda r, d, c, b1, bn: gbps(r, d) / b1),
           "pass_ratio_best": max(gbps(r, d) / b1
                                  for r, d, c, b1, bn in passes),
           "hash_ratio": med(lambda r, d, c, b1, bn: gbps(r, c) / b1),
           # Per CPU against what a CPU reads while as many threads read.
           "hash_ratio_same_threads": med(
               lambda r, d, c, b1, bn: gbps(r, c) / bn)}
    row["hash_xxh3_ratio"] = (row["hash_gbps_per_cpu"] /
                              out["xxh3_gbps"][threads])
    return row
