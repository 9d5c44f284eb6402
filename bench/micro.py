"""Scanner micro-benchmark: how fast memdedup hashes resident guest RAM,
against the single-core read bandwidth measured in the same run.

QEMU (-accel qtest) gets one memory-backend-ksm holding the mixed
workload's first VM (loaded at start: 10 % zero pages, the rest non-zero)
with dedup-policy=estimate (nothing is registered) and an unlimited
scan-rate.  For 1 and 2 scanner threads, three passes are started with
memdedup-scan; the best one is kept.  Two throughputs per pass:

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
here with the system cc at -O3 -march=native, so SIMD loads) over a
buffer of the same size on small pages, best of five sweeps; a scalar
loop (one 64-bit load at a time) is reported beside it.

Two threads share the memory bandwidth: per CPU, neither reading nor
hashing is as fast as alone.  So the same read loop, and a plain XXH3
loop over 4 KiB pages (the scanner's hash and prefetch, nothing else),
also run in one and in two threads at once (each over its own buffer,
each sweep started on a barrier), and the scanner's hashing per CPU is
given as a ratio to both at the same number of threads.
"""

import os
import subprocess
import tempfile

import probe
import workloads as wl

LOOPS_C = r"""
#include <pthread.h>
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

int main(int argc, char **argv)
{
    int threads = atoi(argv[4]);
    pthread_t tid[8];
    Worker w[8];
    double sum = 0;
    uint64_t acc = 0;

    kind = argv[1];
    size = strtoull(argv[2], NULL, 0) << 20;
    reps = atoi(argv[3]);
    pthread_barrier_init(&start, NULL, threads);
    for (int t = 0; t < threads; t++) {
        w[t].buf = mmap(NULL, size, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (w[t].buf == MAP_FAILED) {
            perror("mmap");
            return 1;
        }
        madvise(w[t].buf, size, MADV_NOHUGEPAGE);
        for (size_t i = 0; i < size / 8; i++) {
            ((uint64_t *)w[t].buf)[i] = (i + t) * 0x9e3779b97f4a7c15ull;
        }
        w[t].best = 0;
        w[t].acc = 0;
    }
    for (int t = 0; t < threads; t++) {
        pthread_create(&tid[t], NULL, work, &w[t]);
    }
    for (int t = 0; t < threads; t++) {
        pthread_join(tid[t], NULL);
        sum += w[t].best;
        acc ^= w[t].acc;
    }
    printf("%.3f %llu\n", sum / threads, (unsigned long long)acc);
    return 0;
}
"""


def concurrent_loop(kind, size_mib, workdir, threads):
    """GB/s per thread of @threads threads sweeping their own buffer of
    @size_mib MiB at once (each sweep starts on a barrier), best of five:
    kind "read" is the read loop, "scalar" the same without SIMD, "xxh3"
    XXH3 over 4 KiB pages with the next one prefetched, as the scanner
    hashes (its AVX2 code when the CPU has it, as the scanner picks at
    run time)."""
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
    out = subprocess.run([exe, kind, str(size_mib), "5", str(threads)],
                         check=True, stdout=subprocess.PIPE,
                         universal_newlines=True).stdout
    return float(out.split()[0])


def read_bandwidth(size_mib, workdir):
    """Single-core read bandwidth in GB/s (1e9 bytes per second): the
    compiler's SIMD loop, and a scalar loop for reference."""
    return (concurrent_loop("read", size_mib, workdir, 1),
            concurrent_loop("scalar", size_mib, workdir, 1))


def _start(workdir, name, args, unprivileged):
    from harness import start_qtest_vm
    # Without CAP_SYS_ADMIN, pagemap hides PFNs: no exact KSM count.
    wrapper = ("setpriv", "--bounding-set", "-sys_admin", "--inh-caps",
               "-sys_admin") if unprivileged else ()
    return start_qtest_vm(workdir, name, args, wrapper)


def _pass(vm, timeout=300):
    from harness import run_pass
    cpu0 = vm.qmp.cmd("query-memdedup")["scanner-cpu-time"]
    info = run_pass(vm, timeout)
    resident = sum(b["resident-pages"] * b["page-size"]
                   for b in info["backends"])
    return (resident, info["last-pass-duration"] / 1e9,
            (info["scanner-cpu-time"] - cpu0) / 1e9)


def run(ctx, log, reps=3):
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
            vm, qt = _start(d, "micro", args, unpriv)
            try:
                for threads in (1, 2):
                    vm.qmp.cmd("qom-set", path="/objects/md",
                               property="scan-threads", value=threads)
                    best = None
                    for _ in range(reps):
                        resident, dur, cpu = _pass(vm)
                        if best is None or dur < best[1]:
                            best = (resident, dur, cpu)
                    resident, dur, cpu = best
                    row = {"threads": threads, "privilege": priv,
                           "resident_bytes": resident,
                           "pass_seconds": round(dur, 4),
                           "scanner_cpu_seconds": round(cpu, 4),
                           "pass_gbps": resident / dur / 1e9,
                           "hash_gbps_per_cpu": resident / cpu / 1e9
                           if cpu > 0 else 0.0}
                    row["pass_ratio"] = row["pass_gbps"] / bw
                    row["hash_ratio"] = row["hash_gbps_per_cpu"] / bw
                    # Per CPU against what a CPU reads, or hashes, while
                    # as many threads run.
                    row["hash_ratio_same_threads"] = (
                        row["hash_gbps_per_cpu"] /
                        out["read_gbps_per_thread"][threads])
                    row["hash_xxh3_ratio"] = (row["hash_gbps_per_cpu"] /
                                              out["xxh3_gbps"][threads])
                    out["rows"].append(row)
                    log("micro: %d thread(s), %s: pass %.3f s (%.2f GB/s, "
                        "%.2fx), hashing %.2f GB/s per CPU (%.2fx)"
                        % (threads, priv, dur, row["pass_gbps"],
                           row["pass_ratio"], row["hash_gbps_per_cpu"],
                           row["hash_ratio"]))
            finally:
                vm.stop()
                qt.close()
    return out
