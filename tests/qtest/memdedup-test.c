/*
 * qtest for memory-backend-ksm and the memdedup engine
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * Guest RAM gets known content through qtest writes (zero, 4-way
 * duplicated and random regions); the engine's counts must match it
 * exactly, and the ranges it registers with KSM must be exactly the
 * qualifying regions, as the kernel's /proc/PID/smaps "mg" flags show.
 * ksmd is not needed here: registration is visible without merging.
 */

#include "qemu/osdep.h"
#include "qemu/units.h"
#include "libqtest.h"
#include "qapi/qmp/qdict.h"
#include "qapi/qmp/qlist.h"
#include "qapi/qmp/qjson.h"
#include "hw/acpi/pc-hotplug.h"

#define PAGE        4096
#define REGION      (2 * MiB)
#define RAM_SIZE    (64 * MiB)
#define PAGES_PER_REGION (REGION / PAGE)

/* Layout of the known content, in 2 MiB regions of guest RAM. */
#define ZERO_FIRST      1       /* regions 1-4: zero */
#define DUP_FIRST       5       /* regions 5-8: one 2 MiB block, 4 times */
#define UNIQUE_FIRST    9       /* regions 9-12: random */
#define SPARSE_REGION   13      /* 5% duplicate pages: below threshold */
#define DENSE_REGION    14      /* 20% duplicate pages: above threshold */
#define SPARSE_DUPS     26
#define DENSE_DUPS      103

typedef struct TestMachine {
    QTestState *qts;
    char *pidfile;
    pid_t pid;
} TestMachine;

static void machine_start_threads(TestMachine *m, const char *backend_opts,
                                  const char *extra, int threads)
{
    g_autofree char *pid_text = NULL;
    int fd;

    fd = g_file_open_tmp("memdedup-test-XXXXXX.pid", &m->pidfile, NULL);
    g_assert(fd >= 0);
    close(fd);
    unlink(m->pidfile);
    m->qts = qtest_initf("-machine pc,memory-backend=m0,mem-merge=off "
                         "-m %lluM -pidfile %s "
                         "-object memdedup,id=engine,rescan-interval=3600000,"
                         "scan-threads=%d "
                         "-object memory-backend-ksm,id=m0,size=%llu%s %s",
                         (unsigned long long)(RAM_SIZE / MiB), m->pidfile,
                         threads, (unsigned long long)RAM_SIZE,
                         backend_opts, extra ? extra : "");
    g_assert(g_file_get_contents(m->pidfile, &pid_text, NULL, NULL));
    m->pid = atoi(pid_text);
    g_assert_cmpint(m->pid, >, 0);
}

static void machine_start(TestMachine *m, const char *backend_opts,
                          const char *extra)
{
    machine_start_threads(m, backend_opts, extra, 1);
}

static void machine_stop(TestMachine *m)
{
    qtest_quit(m->qts);
    unlink(m->pidfile);
    g_free(m->pidfile);
}

static QDict *query_backend(QTestState *qts, QDict **info_out)
{
    QDict *resp = qtest_qmp(qts, "{ 'execute': 'query-memdedup' }");
    QDict *info = qdict_get_qdict(resp, "return");
    QList *backends;
    QDict *backend;

    g_assert(info);
    backends = qdict_get_qlist(info, "backends");
    g_assert_cmpint(qlist_size(backends), ==, 1);
    backend = qobject_to(QDict, qlist_peek(backends));
    qobject_ref(backend);
    if (info_out) {
        *info_out = info;
        qobject_ref(info);
    }
    qobject_unref(resp);
    return backend;
}

static uint64_t passes_completed(QTestState *qts, bool *scanning)
{
    QDict *resp = qtest_qmp(qts, "{ 'execute': 'query-memdedup' }");
    QDict *info = qdict_get_qdict(resp, "return");
    uint64_t passes = qdict_get_int(info, "passes-completed");

    *scanning = !strcmp(qdict_get_str(info, "state"), "scanning");
    qobject_unref(resp);
    return passes;
}

/*
 * Run a full pass that starts after everything written so far: a pass
 * already running may have missed it, so then wait for the next one.
 */
static void run_pass(QTestState *qts)
{
    bool scanning;
    uint64_t target = passes_completed(qts, &scanning) + (scanning ? 2 : 1);
    bool dummy;
    int i;

    qtest_qmp_assert_success(qts, "{ 'execute': 'memdedup-scan' }");
    for (i = 0; i < 3000; i++) {
        if (passes_completed(qts, &dummy) >= target) {
            return;
        }
        g_usleep(10 * 1000);
    }
    g_assert_not_reached();
}

/* Wait for a policy change to be applied (no rescan needed). */
static void wait_registered(QTestState *qts, uint64_t bytes)
{
    int i;

    for (i = 0; i < 3000; i++) {
        QDict *b = query_backend(qts, NULL);
        uint64_t registered = qdict_get_int(b, "registered-bytes");

        qobject_unref(b);
        if (registered == bytes) {
            return;
        }
        g_usleep(10 * 1000);
    }
    g_assert_not_reached();
}

static void fill_pattern(uint8_t *buf, size_t len, GRand *rand)
{
    size_t i;

    for (i = 0; i < len; i += 4) {
        uint32_t v = g_rand_int(rand);
        memcpy(buf + i, &v, 4);
    }
}

/* Write the known content; see the layout above. */
static void write_content(QTestState *qts)
{
    g_autoptr(GRand) rand = g_rand_new_with_seed(20261122);
    g_autofree uint8_t *dup = g_malloc(REGION);
    g_autofree uint8_t *buf = g_malloc(REGION);
    int r, p;

    qtest_memset(qts, ZERO_FIRST * REGION, 0, 4 * REGION);

    fill_pattern(dup, REGION, rand);
    for (r = DUP_FIRST; r < DUP_FIRST + 4; r++) {
        qtest_bufwrite(qts, r * REGION, dup, REGION);
    }
    for (r = UNIQUE_FIRST; r < UNIQUE_FIRST + 4; r++) {
        fill_pattern(buf, REGION, rand);
        qtest_bufwrite(qts, r * REGION, buf, REGION);
    }

    /* Regions whose first pages copy pages of the duplicated block. */
    fill_pattern(buf, REGION, rand);
    for (p = 0; p < SPARSE_DUPS; p++) {
        memcpy(buf + p * PAGE, dup + p * PAGE, PAGE);
    }
    qtest_bufwrite(qts, SPARSE_REGION * REGION, buf, REGION);
    fill_pattern(buf, REGION, rand);
    for (p = 0; p < DENSE_DUPS; p++) {
        memcpy(buf + p * PAGE, dup + p * PAGE, PAGE);
    }
    qtest_bufwrite(qts, DENSE_REGION * REGION, buf, REGION);
}

/*
 * Sum the sizes of QEMU's VMAs that carry the "mg" (VM_MERGEABLE) flag,
 * and count them.  mem-merge=off keeps QEMU's other RAM blocks out.
 */
static uint64_t smaps_mergeable(pid_t pid, uint64_t *vmas)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/smaps", pid);
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;
    uint64_t start = 0, end = 0, bytes = 0;
    int i;

    g_assert(g_file_get_contents(path, &text, NULL, NULL));
    lines = g_strsplit(text, "\n", -1);
    *vmas = 0;
    for (i = 0; lines[i]; i++) {
        unsigned long long s, e;

        if (sscanf(lines[i], "%llx-%llx ", &s, &e) == 2 &&
            strchr(lines[i], '-') < strchr(lines[i], ' ')) {
            start = s;
            end = e;
        } else if (g_str_has_prefix(lines[i], "VmFlags:")) {
            g_auto(GStrv) flags = g_strsplit(lines[i] + 8, " ", -1);
            int f;

            for (f = 0; flags[f]; f++) {
                if (!strcmp(flags[f], "mg")) {
                    bytes += end - start;
                    (*vmas)++;
                    break;
                }
            }
        }
    }
    return bytes;
}

static bool host_has_ksm(void)
{
    return access("/sys/kernel/mm/ksm/run", R_OK) == 0;
}

/*
 * QEMU arguments that log the passes which found nothing changed since
 * the last summary (and so kept its counts) to a new file, @*path.
 */
static char *trace_unchanged_args(char **path)
{
    int fd = g_file_open_tmp("memdedup-test-XXXXXX.trace", path, NULL);

    g_assert(fd >= 0);
    close(fd);
    return g_strdup_printf("-trace enable=memdedup_pass_unchanged,file=%s",
                           *path);
}

/* How many such passes the log at @path shows. */
static int unchanged_passes(const char *path)
{
    g_autofree char *text = NULL;
    const char *p;
    int n = 0;

    g_assert(g_file_get_contents(path, &text, NULL, NULL));
    for (p = text; (p = strstr(p, "memdedup_pass_unchanged ")); p++) {
        n++;
    }
    return n;
}

/* Every count query-memdedup reports for the backend, as one string. */
static char *backend_counts(QTestState *qts)
{
    static const char *const keys[] = {
        "resident-pages", "scanned-pages", "zero-pages", "duplicate-pages",
        "unique-pages", "volatile-pages", "candidate-regions",
        "estimated-saving", "registered-bytes", "registered-ranges",
    };
    QDict *b = query_backend(qts, NULL);
    GString *s = g_string_new("");
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(keys); i++) {
        g_string_append_printf(s, "%s=%" PRId64 " ", keys[i],
                               qdict_get_int(b, keys[i]));
    }
    qobject_unref(b);
    return g_string_free(s, false);
}

/* Exact counts, and registration of exactly the qualifying regions. */
static void test_counts_threads(int threads)
{
    TestMachine m;
    QDict *b;
    uint64_t vmas, mg;
    g_autofree char *trace = NULL;
    g_autofree char *trace_args = trace_unchanged_args(&trace);
    g_autofree char *counts = NULL;
    g_autofree char *counts_again = NULL;

    if (!host_has_ksm()) {
        g_test_skip("the host has no KSM");
        unlink(trace);
        return;
    }
    machine_start_threads(&m, "", trace_args, threads);
    write_content(m.qts);
    run_pass(m.qts);
    g_assert_cmpint(unchanged_passes(trace), ==, 0);

    b = query_backend(m.qts, NULL);
    g_assert_cmpstr(qdict_get_str(b, "policy"), ==, "targeted");
    g_assert_cmpint(qdict_get_int(b, "size"), ==, RAM_SIZE);
    g_assert_cmpint(qdict_get_int(b, "region-size"), ==, REGION);
    g_assert_cmpint(qdict_get_int(b, "zero-pages"), ==, 4 * PAGES_PER_REGION);
    g_assert_cmpint(qdict_get_int(b, "duplicate-pages"), ==,
                    4 * PAGES_PER_REGION + SPARSE_DUPS + DENSE_DUPS);
    g_assert_cmpint(qdict_get_int(b, "unique-pages"), ==,
                    4 * PAGES_PER_REGION + 2 * PAGES_PER_REGION -
                    SPARSE_DUPS - DENSE_DUPS);
    g_assert_cmpint(qdict_get_int(b, "resident-pages"), ==,
                    14 * PAGES_PER_REGION);
    g_assert_cmpint(qdict_get_int(b, "scanned-pages"), ==,
                    14 * PAGES_PER_REGION);
    /* Zero regions, the 4 duplicated ones and the dense one. */
    g_assert_cmpint(qdict_get_int(b, "candidate-regions"), ==, 9);
    g_assert_cmpint(qdict_get_int(b, "registered-bytes"), ==, 9 * REGION);
    g_assert_cmpint(qdict_get_int(b, "registered-ranges"), ==, 2);
    /*
     * Merging would free all zero pages, 3 of 4 copies of the block, and
     * the pages of regions 13 and 14 that copy it.
     */
    g_assert_cmpint(qdict_get_int(b, "estimated-saving"), ==,
                    (4 * PAGES_PER_REGION + 3 * PAGES_PER_REGION +
                     SPARSE_DUPS + DENSE_DUPS) * PAGE);
    qobject_unref(b);

    /* The kernel agrees on what is registered. */
    mg = smaps_mergeable(m.pid, &vmas);
    g_assert_cmpint(mg, ==, 9 * REGION);
    g_assert_cmpint(vmas, ==, 2);

    /*
     * A second pass sees nothing change.  Every region keeps the counts
     * the first pass gave it, without looking its pages up again.
     */
    counts = backend_counts(m.qts);
    run_pass(m.qts);
    b = query_backend(m.qts, NULL);
    g_assert_cmpint(qdict_get_int(b, "volatile-pages"), ==, 0);
    g_assert_cmpint(qdict_get_int(b, "registered-bytes"), ==, 9 * REGION);
    qobject_unref(b);
    counts_again = backend_counts(m.qts);
    g_assert_cmpstr(counts_again, ==, counts);
    g_assert_cmpint(unchanged_passes(trace), ==, 1);

    /* Rewrite one duplicated region with unique data: it is dropped. */
    {
        g_autoptr(GRand) rand = g_rand_new_with_seed(7);
        g_autofree uint8_t *buf = g_malloc(REGION);

        fill_pattern(buf, REGION, rand);
        qtest_bufwrite(m.qts, (DUP_FIRST + 3) * REGION, buf, REGION);
    }
    run_pass(m.qts);
    b = query_backend(m.qts, NULL);
    g_assert_cmpint(qdict_get_int(b, "volatile-pages"), ==, PAGES_PER_REGION);
    g_assert_cmpint(qdict_get_int(b, "duplicate-pages"), ==,
                    3 * PAGES_PER_REGION + SPARSE_DUPS + DENSE_DUPS);
    g_assert_cmpint(qdict_get_int(b, "registered-bytes"), ==, 8 * REGION);
    qobject_unref(b);
    mg = smaps_mergeable(m.pid, &vmas);
    g_assert_cmpint(mg, ==, 8 * REGION);
    /* That pass counted every page again. */
    g_assert_cmpint(unchanged_passes(trace), ==, 1);

    machine_stop(&m);
    unlink(trace);
}

static void test_counts(void)
{
    test_counts_threads(1);
}

/* Several scanner threads share a pass: the same exact counts. */
static void test_counts_three_threads(void)
{
    test_counts_threads(3);
}

/* dedup-policy changes at runtime, as qom-set does them. */
static void test_policy_runtime(void)
{
    TestMachine m;
    uint64_t vmas;

    if (!host_has_ksm()) {
        g_test_skip("the host has no KSM");
        return;
    }
    machine_start(&m, "", NULL);
    write_content(m.qts);
    run_pass(m.qts);
    wait_registered(m.qts, 9 * REGION);

    qtest_qmp_assert_success(m.qts, "{ 'execute': 'qom-set', 'arguments': "
                             "{ 'path': '/objects/m0', "
                             "'property': 'dedup-policy', "
                             "'value': 'all' } }");
    wait_registered(m.qts, RAM_SIZE);
    g_assert_cmpint(smaps_mergeable(m.pid, &vmas), ==, RAM_SIZE);
    g_assert_cmpint(vmas, ==, 1);

    qtest_qmp_assert_success(m.qts, "{ 'execute': 'qom-set', 'arguments': "
                             "{ 'path': '/objects/m0', "
                             "'property': 'dedup-policy', "
                             "'value': 'zero-only' } }");
    wait_registered(m.qts, 4 * REGION);
    g_assert_cmpint(smaps_mergeable(m.pid, &vmas), ==, 4 * REGION);

    qtest_qmp_assert_success(m.qts, "{ 'execute': 'qom-set', 'arguments': "
                             "{ 'path': '/objects/m0', "
                             "'property': 'dedup-policy', "
                             "'value': 'estimate' } }");
    wait_registered(m.qts, 0);
    g_assert_cmpint(smaps_mergeable(m.pid, &vmas), ==, 0);

    /* estimate still scans and counts. */
    run_pass(m.qts);
    {
        QDict *b = query_backend(m.qts, NULL);
        g_assert_cmpstr(qdict_get_str(b, "policy"), ==, "estimate");
        g_assert_cmpint(qdict_get_int(b, "zero-pages"), ==,
                        4 * PAGES_PER_REGION);
        g_assert_cmpint(qdict_get_int(b, "candidate-regions"), ==, 0);
        g_assert_cmpint(qdict_get_int(b, "registered-bytes"), ==, 0);
        qobject_unref(b);
    }

    /* Lower the threshold: the 5% region qualifies too. */
    qtest_qmp_assert_success(m.qts, "{ 'execute': 'qom-set', 'arguments': "
                             "{ 'path': '/objects/m0', "
                             "'property': 'duplicate-threshold', "
                             "'value': 5 } }");
    qtest_qmp_assert_success(m.qts, "{ 'execute': 'qom-set', 'arguments': "
                             "{ 'path': '/objects/m0', "
                             "'property': 'dedup-policy', "
                             "'value': 'targeted' } }");
    wait_registered(m.qts, 10 * REGION);
    g_assert_cmpint(smaps_mergeable(m.pid, &vmas), ==, 10 * REGION);
    g_assert_cmpint(vmas, ==, 2);

    /* off: nothing registered, nothing scanned. */
    qtest_qmp_assert_success(m.qts, "{ 'execute': 'qom-set', 'arguments': "
                             "{ 'path': '/objects/m0', "
                             "'property': 'dedup-policy', "
                             "'value': 'off' } }");
    wait_registered(m.qts, 0);
    run_pass(m.qts);
    {
        QDict *b = query_backend(m.qts, NULL);
        g_assert_cmpint(qdict_get_int(b, "scanned-pages"), ==, 0);
        qobject_unref(b);
    }
    machine_stop(&m);
}

static uint64_t next_rescan_interval(QTestState *qts)
{
    QDict *resp = qtest_qmp(qts, "{ 'execute': 'query-memdedup' }");
    uint64_t next = qdict_get_int(qdict_get_qdict(resp, "return"),
                                  "next-rescan-interval");

    qobject_unref(resp);
    return next;
}

/*
 * A machine whose passes come only through memdedup-scan (the interval
 * is an hour), rescan-backoff 4, the residency watch @watch.
 */
static QTestState *backoff_machine(const char *watch)
{
    return qtest_initf("-machine pc,memory-backend=m0,mem-merge=off "
                       "-m %lluM "
                       "-object memdedup,id=engine,rescan-interval=3600000,"
                       "rescan-backoff=4,residency-watch=%s "
                       "-object memory-backend-ksm,id=m0,size=%llu",
                       (unsigned long long)(RAM_SIZE / MiB), watch,
                       (unsigned long long)RAM_SIZE);
}

/*
 * Rewrite the region at REGION in place with new content from @rand
 * (512 pages changed, over 1 % of what is resident): the wait goes back
 * to the interval (@hour), then doubles after a quiet pass.
 */
static void backoff_rewrite_region(QTestState *qts, uint8_t *buf,
                                   GRand *rand, uint64_t hour)
{
    fill_pattern(buf, REGION, rand);
    qtest_bufwrite(qts, REGION, buf, REGION);
    run_pass(qts);
    g_assert_cmpuint(next_rescan_interval(qts), ==, hour);
    run_pass(qts);
    g_assert_cmpuint(next_rescan_interval(qts), ==, 2 * hour);
}

/*
 * Quiet passes (at most 1 % of the resident pages changed, appeared or
 * gone) double the wait before the next pass up to rescan-backoff times
 * rescan-interval; a busier pass or a settings change goes back.  The
 * interval is an hour, so that only memdedup-scan runs passes.  Without
 * the residency watch, pages that appeared count as changes; with it,
 * see test_rescan_backoff_watch.
 */
static void test_rescan_backoff(void)
{
    g_autoptr(GRand) rand = g_rand_new_with_seed(7);
    g_autofree uint8_t *buf = g_malloc(4 * REGION);
    const uint64_t hour = 3600000;
    g_autofree char *hmp = NULL;
    QTestState *qts;

    qts = backoff_machine("off");
    fill_pattern(buf, 4 * REGION, rand);
    qtest_bufwrite(qts, REGION, buf, 4 * REGION);
    run_pass(qts);
    /* 2048 pages appeared since the start: not quiet. */
    g_assert_cmpuint(next_rescan_interval(qts), ==, hour);
    run_pass(qts);
    g_assert_cmpuint(next_rescan_interval(qts), ==, 2 * hour);
    hmp = qtest_hmp(qts, "info memdedup");
    g_assert(strstr(hmp, "rescan every 3600000 ms (next in 7200000 ms"));
    run_pass(qts);
    g_assert_cmpuint(next_rescan_interval(qts), ==, 4 * hour);
    run_pass(qts);
    g_assert_cmpuint(next_rescan_interval(qts), ==, 4 * hour);

    /* One page of 2048 and more resident changes: still quiet. */
    buf[0] ^= 0xff;
    qtest_bufwrite(qts, REGION, buf, PAGE);
    run_pass(qts);
    g_assert_cmpuint(next_rescan_interval(qts), ==, 4 * hour);

    /* A region rewritten: 512 pages changed, over 1 %. */
    backoff_rewrite_region(qts, buf, rand, hour);

    /* A settings change goes back to the interval; 1 keeps it fixed. */
    qtest_qmp_assert_success(qts, "{ 'execute': 'qom-set', 'arguments': "
                             "{ 'path': '/objects/engine', "
                             "'property': 'rescan-backoff', 'value': 1 } }");
    g_assert_cmpuint(next_rescan_interval(qts), ==, hour);
    run_pass(qts);
    g_assert_cmpuint(next_rescan_interval(qts), ==, hour);
    qtest_quit(qts);
}

/*
 * With the residency watch on (the default), memory that fills is the
 * watch's: pages that appeared leave a pass quiet, and only pages
 * rewritten in place (over 1 % of the resident ones) bring the wait
 * back to rescan-interval.
 */
static void test_rescan_backoff_watch(void)
{
    g_autoptr(GRand) rand = g_rand_new_with_seed(8);
    g_autofree uint8_t *buf = g_malloc(4 * REGION);
    const uint64_t hour = 3600000;
    QTestState *qts;

    qts = backoff_machine("on");
    run_pass(qts);
    fill_pattern(buf, 4 * REGION, rand);
    qtest_bufwrite(qts, REGION, buf, 4 * REGION);
    run_pass(qts);
    /* 2048 pages appeared, none rewritten: quiet all the same. */
    g_assert_cmpuint(next_rescan_interval(qts), >, hour);

    /* A region rewritten in place: 512 of 2048 pages, over 1 %. */
    backoff_rewrite_region(qts, buf, rand, hour);
    qtest_quit(qts);
}

/* Guest memory is never written by the engine. */
static void test_content_preserved(void)
{
    TestMachine m;
    g_autoptr(GRand) rand = g_rand_new_with_seed(99);
    g_autofree uint8_t *want = g_malloc(8 * REGION);
    g_autofree uint8_t *got = g_malloc(8 * REGION);
    int i;

    machine_start(&m, ",dedup-policy=estimate", NULL);
    fill_pattern(want, 8 * REGION, rand);
    /* Half the pages zero, some duplicated. */
    memset(want, 0, 2 * REGION);
    memcpy(want + 4 * REGION, want + 2 * REGION, REGION);
    qtest_bufwrite(m.qts, REGION, want, 8 * REGION);
    for (i = 0; i < 3; i++) {
        run_pass(m.qts);
    }
    qtest_bufread(m.qts, REGION, got, 8 * REGION);
    g_assert(memcmp(want, got, 8 * REGION) == 0);
    machine_stop(&m);
}

static void expect_error(QTestState *qts, const char *cmd, const char *text)
{
    QDict *resp, *error;

    qtest_qmp_send_raw(qts, "%s", cmd);
    resp = qtest_qmp_receive(qts);
    error = qdict_get_qdict(resp, "error");

    g_assert(error);
    if (g_test_verbose()) {
        g_test_message("  -> %s", qdict_get_str(error, "desc"));
    }
    if (text) {
        const char *desc = qdict_get_str(error, "desc");
        if (!strstr(desc, text)) {
            g_error("error '%s' does not mention '%s'", desc, text);
        }
    }
    qobject_unref(resp);
}

/*
 * Bad input at every entry point: each QMP command and argument, each
 * property of memory-backend-ksm and of the memdedup object, at creation
 * (object-add) and at runtime (qom-set).  Every row must be refused with
 * an error that names what was wrong, QEMU must survive it, and the
 * state must be unchanged afterwards (compared through query-memdedup,
 * qom-get of every property and the list of objects).
 */
typedef struct BadInput {
    const char *cmd;            /* a QMP command that must fail */
    const char *text;           /* the error must mention this */
} BadInput;

#define ADD_BACKEND(props) \
    "{ 'execute': 'object-add', 'arguments': { 'qom-type': " \
    "'memory-backend-ksm', 'id': 'bad', 'size': 16777216, " props " } }"
#define ADD_BACKEND_NOSIZE(props) \
    "{ 'execute': 'object-add', 'arguments': { 'qom-type': " \
    "'memory-backend-ksm', 'id': 'bad', " props " } }"
#define ADD_ENGINE(props) \
    "{ 'execute': 'object-add', 'arguments': { 'qom-type': " \
    "'memdedup', 'id': 'badengine', " props " } }"
#define SET(path, prop, value) \
    "{ 'execute': 'qom-set', 'arguments': { 'path': '" path "', " \
    "'property': '" prop "', 'value': " value " } }"

static const BadInput bad_inputs[] = {
    /* memory-backend-ksm at creation: dedup-policy */
    { ADD_BACKEND("'dedup-policy': 'bogus'"), "bogus" },
    { ADD_BACKEND("'dedup-policy': ''"), "dedup-policy" },
    { ADD_BACKEND("'dedup-policy': 3"), "dedup-policy" },
    { ADD_BACKEND("'dedup-policy': true"), "dedup-policy" },
    { ADD_BACKEND("'dedup-policy': 'TARGETED'"), "TARGETED" },
    /* region-size: not a power of two, out of range, wrong type */
    { ADD_BACKEND("'region-size': 3145728"), "region-size" },
    { ADD_BACKEND("'region-size': 32768"), "region-size" },
    { ADD_BACKEND("'region-size': 0"), "region-size" },
    { ADD_BACKEND("'region-size': 2147483648"), "region-size" },
    { ADD_BACKEND("'region-size': 18446744073709551615"), "region-size" },
    { ADD_BACKEND("'region-size': -1"), "region-size" },
    { ADD_BACKEND("'region-size': 1.5"), "region-size" },
    { ADD_BACKEND("'region-size': '2M'"), "region-size" },
    { ADD_BACKEND("'region-size': ''"), "region-size" },
    /* duplicate-threshold: a percentage, 1-100 */
    { ADD_BACKEND("'duplicate-threshold': 0"), "duplicate-threshold" },
    { ADD_BACKEND("'duplicate-threshold': 101"), "duplicate-threshold" },
    { ADD_BACKEND("'duplicate-threshold': 255"), "duplicate-threshold" },
    { ADD_BACKEND("'duplicate-threshold': 300"), "duplicate-threshold" },
    { ADD_BACKEND("'duplicate-threshold': -1"), "duplicate-threshold" },
    { ADD_BACKEND("'duplicate-threshold': 4294967306"),
      "duplicate-threshold" },
    { ADD_BACKEND("'duplicate-threshold': 'ten'"), "duplicate-threshold" },
    { ADD_BACKEND("'duplicate-threshold': true"), "duplicate-threshold" },
    /* booleans */
    { ADD_BACKEND("'manage-thp': 'yes'"), "manage-thp" },
    { ADD_BACKEND("'manage-thp': 1"), "manage-thp" },
    { ADD_BACKEND("'force-unmerge': 'on'"), "force-unmerge" },
    /* the base type's properties that conflict with the engine */
    { ADD_BACKEND("'merge': true"), "merge" },
    { ADD_BACKEND("'share': true"), "share" },
    { ADD_BACKEND("'merge': true, 'share': true"), "must be off" },
    { ADD_BACKEND("'prealloc': true, 'reserve': false"), "reserve" },
    /* size: missing, zero, wrong type, more than can be described */
    { ADD_BACKEND_NOSIZE("'dedup-policy': 'estimate'"), "size" },
    { ADD_BACKEND_NOSIZE("'size': 0"), "size" },
    { ADD_BACKEND_NOSIZE("'size': -4096"), "size" },
    { ADD_BACKEND_NOSIZE("'size': 'huge'"), "size" },
    { ADD_BACKEND_NOSIZE("'size': 18446744073709551615"), "" },
    /* 32 TiB of unreserved RAM maps, but its metadata cannot exist */
    { ADD_BACKEND_NOSIZE("'size': 35184372088832, 'reserve': false"),
      "metadata" },
    /* unknown property, taken id */
    { ADD_BACKEND("'bogus': 1"), "bogus" },
    { "{ 'execute': 'object-add', 'arguments': { 'qom-type': "
      "'memory-backend-ksm', 'id': 'good', 'size': 16777216 } }", "good" },

    /* the memdedup object at creation (one exists already) */
    { "{ 'execute': 'object-add', 'arguments': { 'qom-type': 'memdedup', "
      "'id': 'badengine' } }", "only one" },
    { ADD_ENGINE("'scan-rate': 0"), "scan-rate" },
    { ADD_ENGINE("'scan-rate': 1048575"), "scan-rate" },
    { ADD_ENGINE("'scan-rate': -1"), "scan-rate" },
    { ADD_ENGINE("'scan-rate': 'fast'"), "scan-rate" },
    { ADD_ENGINE("'scan-threads': 0"), "scan-threads" },
    { ADD_ENGINE("'scan-threads': 9"), "scan-threads" },
    { ADD_ENGINE("'scan-threads': 4294967296"), "scan-threads" },
    { ADD_ENGINE("'scan-threads': 'two'"), "scan-threads" },
    { ADD_ENGINE("'rescan-interval': 10"), "rescan-interval" },
    { ADD_ENGINE("'rescan-interval': 99"), "rescan-interval" },
    { ADD_ENGINE("'rescan-interval': 86400001"), "rescan-interval" },
    { ADD_ENGINE("'rescan-interval': 4294967295"), "rescan-interval" },
    { ADD_ENGINE("'rescan-interval': -100"), "rescan-interval" },
    { ADD_ENGINE("'rescan-backoff': 0"), "rescan-backoff" },
    { ADD_ENGINE("'rescan-backoff': 65"), "rescan-backoff" },
    { ADD_ENGINE("'rescan-backoff': -1"), "rescan-backoff" },
    { ADD_ENGINE("'migrate-hints': 'yes'"), "migrate-hints" },
    { ADD_ENGINE("'bogus': 1"), "bogus" },
    /* test hooks check their input too */
    { ADD_ENGINE("'x-madvise-fault': 'EFOO'"), "x-madvise-fault" },
    { ADD_ENGINE("'x-madvise-fault': 'EINVAL:'"), "x-madvise-fault" },
    { ADD_ENGINE("'x-madvise-fault': 'EAGAIN:-1'"), "x-madvise-fault" },

    /* memory-backend-ksm at runtime */
    { SET("/objects/good", "dedup-policy", "'nope'"), "nope" },
    { SET("/objects/good", "dedup-policy", "''"), "dedup-policy" },
    { SET("/objects/good", "dedup-policy", "7"), "dedup-policy" },
    { SET("/objects/good", "duplicate-threshold", "0"),
      "duplicate-threshold" },
    { SET("/objects/good", "duplicate-threshold", "101"),
      "duplicate-threshold" },
    { SET("/objects/good", "duplicate-threshold", "256"),
      "duplicate-threshold" },
    { SET("/objects/good", "duplicate-threshold", "-5"),
      "duplicate-threshold" },
    { SET("/objects/good", "duplicate-threshold", "'x'"),
      "duplicate-threshold" },
    /* fixed once created */
    { SET("/objects/good", "region-size", "4194304"), "region-size" },
    { SET("/objects/good", "region-size", "'x'"), "region-size" },
    { SET("/objects/good", "manage-thp", "false"), "manage-thp" },
    { SET("/objects/good", "size", "33554432"), "size" },
    { SET("/objects/good", "share", "true"), "share" },
    /* would register everything behind the engine's back */
    { SET("/objects/good", "merge", "true"), "merge" },
    { SET("/objects/good", "force-unmerge", "'on'"), "force-unmerge" },
    { SET("/objects/good", "bogus", "1"), "bogus" },

    /* the memdedup object at runtime */
    { SET("/objects/engine", "x-ksm-sysfs", "'/tmp'"), "x-ksm-sysfs" },
    { SET("/objects/engine", "x-madvise-fault", "'ENOMEM:2x'"),
      "x-madvise-fault" },
    { SET("/objects/engine", "scan-threads", "100"), "scan-threads" },
    { SET("/objects/engine", "scan-threads", "0"), "scan-threads" },
    { SET("/objects/engine", "scan-rate", "0"), "scan-rate" },
    { SET("/objects/engine", "scan-rate", "'1G'"), "scan-rate" },
    { SET("/objects/engine", "rescan-interval", "0"), "rescan-interval" },
    { SET("/objects/engine", "rescan-interval", "-1"), "rescan-interval" },
    { SET("/objects/engine", "rescan-backoff", "0"), "rescan-backoff" },
    { SET("/objects/engine", "rescan-backoff", "65"), "rescan-backoff" },
    { SET("/objects/engine", "migrate-hints", "'x'"), "migrate-hints" },

    /* QMP commands and their arguments */
    { "{ 'execute': 'memdedup-scan', 'arguments': { 'now': true } }", "now" },
    { "{ 'execute': 'memdedup-scan', 'arguments': [] }", "arguments" },
    { "{ 'execute': 'memdedup-scan', 'arguments': 'all' }", "arguments" },
    { "{ 'execute': 'query-memdedup', 'arguments': { 'bogus': 1 } }",
      "bogus" },
    { "{ 'execute': 'query-memdedup', 'arguments': { 'id': 'good' } }",
      "id" },
    { "{ 'execute': 'query-memdedup', 'arguments': 1 }", "arguments" },
    { "{ 'execute': 'object-del', 'arguments': { 'id': 'nonexistent' } }",
      "nonexistent" },
    { SET("/objects/nonexistent", "dedup-policy", "'off'"), "nonexistent" },
};

/* Append qom-get of @prop of @path to @out. */
static void snapshot_prop(QTestState *qts, GString *out, const char *path,
                          const char *prop)
{
    QDict *resp = qtest_qmp(qts, "{ 'execute': 'qom-get', 'arguments': "
                            "{ 'path': %s, 'property': %s } }", path, prop);
    g_autoptr(GString) json = NULL;

    g_assert(qdict_haskey(resp, "return"));
    json = qobject_to_json(qdict_get(resp, "return"));
    g_string_append_printf(out, "%s.%s=%s\n", path, prop, json->str);
    qobject_unref(resp);
}

/* Everything the bad input must leave as it was, as text. */
static char *snapshot_state(QTestState *qts)
{
    static const char *const backend_props[] = {
        "dedup-policy", "region-size", "duplicate-threshold", "manage-thp",
        "force-unmerge", "merge", "share", "size", "prealloc",
    };
    static const char *const engine_props[] = {
        "scan-rate", "scan-threads", "rescan-interval", "rescan-backoff",
        "migrate-hints",
    };
    GString *out = g_string_new("");
    QDict *resp, *info;
    QList *list;
    QListEntry *e;
    size_t i;

    for (i = 0; i < ARRAY_SIZE(backend_props); i++) {
        snapshot_prop(qts, out, "/objects/good", backend_props[i]);
    }
    for (i = 0; i < ARRAY_SIZE(engine_props); i++) {
        snapshot_prop(qts, out, "/objects/engine", engine_props[i]);
    }

    resp = qtest_qmp(qts, "{ 'execute': 'qom-list', "
                     "'arguments': { 'path': '/objects' } }");
    list = qdict_get_qlist(resp, "return");
    QLIST_FOREACH_ENTRY(list, e) {
        QDict *prop = qobject_to(QDict, qlist_entry_obj(e));
        if (g_str_has_prefix(qdict_get_str(prop, "type"), "child<")) {
            g_string_append_printf(out, "object %s\n",
                                   qdict_get_str(prop, "name"));
        }
    }
    qobject_unref(resp);

    resp = qtest_qmp(qts, "{ 'execute': 'query-memdedup' }");
    info = qdict_get_qdict(resp, "return");
    g_string_append_printf(out, "scan-rate %" PRId64 " rescan %" PRId64 "\n",
                           qdict_get_int(info, "scan-rate"),
                           qdict_get_int(info, "rescan-interval"));
    list = qdict_get_qlist(info, "backends");
    QLIST_FOREACH_ENTRY(list, e) {
        QDict *b = qobject_to(QDict, qlist_entry_obj(e));
        g_string_append_printf(out, "backend %s %s size %" PRId64
                               " region %" PRId64 " threshold %" PRId64
                               " registered %" PRId64 "\n",
                               qdict_get_str(b, "id"),
                               qdict_get_str(b, "policy"),
                               qdict_get_int(b, "size"),
                               qdict_get_int(b, "region-size"),
                               qdict_get_int(b, "duplicate-threshold"),
                               qdict_get_int(b, "registered-bytes"));
    }
    qobject_unref(resp);
    return g_string_free(out, false);
}

static void test_bad_input(void)
{
    QTestState *qts;
    g_autofree char *before = NULL;
    size_t i;

    if (!host_has_ksm()) {
        g_test_skip("the host has no KSM");
        return;
    }
    qts = qtest_init("-machine none "
                     "-object memdedup,id=engine,scan-rate=256M,"
                     "rescan-interval=3600000 "
                     "-object memory-backend-ksm,id=good,size=16M,"
                     "dedup-policy=zero-only,duplicate-threshold=20");
    before = snapshot_state(qts);
    g_assert(strstr(before, "backend good zero-only size 16777216"));

    for (i = 0; i < ARRAY_SIZE(bad_inputs); i++) {
        g_autofree char *after = NULL;

        if (g_test_verbose()) {
            g_test_message("bad input %zu: %s", i, bad_inputs[i].cmd);
        }
        expect_error(qts, bad_inputs[i].cmd, bad_inputs[i].text);
        after = snapshot_state(qts);
        if (strcmp(before, after)) {
            g_error("state changed by %s:\n%s\nbecame\n%s",
                    bad_inputs[i].cmd, before, after);
        }
    }

    /* Still working: a pass, a valid change, a deletion. */
    run_pass(qts);
    qtest_qmp_assert_success(qts, SET("/objects/good", "merge", "false"));
    qtest_qmp_assert_success(qts, SET("/objects/good", "dedup-policy",
                                      "'estimate'"));
    qtest_qmp_assert_success(qts, SET("/objects/engine", "scan-threads",
                                      "2"));
    qtest_qmp_assert_success(qts, "{ 'execute': 'object-del',"
                             " 'arguments': { 'id': 'good' } }");
    qtest_qmp_assert_success(qts, "{ 'execute': 'object-del',"
                             " 'arguments': { 'id': 'engine' } }");
    /* No backend left. */
    expect_error(qts, "{ 'execute': 'memdedup-scan' }", "memory-backend-ksm");
    qtest_quit(qts);
}

/* A host without KSM: registering policies fail, estimate works. */
static void test_no_ksm(void)
{
    g_autofree char *dir = g_dir_make_tmp("memdedup-noksm-XXXXXX", NULL);
    g_autofree char *sysfs = g_build_filename(dir, "absent", NULL);
    g_autofree char *args = g_strdup_printf("-machine none -object "
                                            "memdedup,id=engine,"
                                            "x-ksm-sysfs=%s", sysfs);
    QTestState *qts;
    QDict *resp, *info;

    qts = qtest_init(args);

    expect_error(qts, "{ 'execute': 'object-add', 'arguments': {"
                 " 'qom-type': 'memory-backend-ksm', 'id': 'm1',"
                 " 'size': 16777216 } }", "needs KSM");
    qtest_qmp_assert_success(qts, "{ 'execute': 'object-add', 'arguments': {"
                             " 'qom-type': 'memory-backend-ksm', 'id': 'm2',"
                             " 'size': 16777216,"
                             " 'dedup-policy': 'estimate' } }");
    expect_error(qts, "{ 'execute': 'qom-set', 'arguments': {"
                 " 'path': '/objects/m2',"
                 " 'property': 'dedup-policy', 'value': 'targeted' } }",
                 "needs KSM");
    resp = qtest_qmp(qts, "{ 'execute': 'query-memdedup' }");
    info = qdict_get_qdict(resp, "return");
    g_assert(!qdict_haskey(info, "host-ksm"));
    g_assert(strstr(qdict_get_str(info, "warning"), "no KSM"));
    info = qdict_get_qdict(info, "kernel");
    g_assert(!qdict_get_bool(info, "ksm"));
    g_assert(!qdict_get_bool(info, "smart-scan"));
    g_assert(!qdict_get_bool(info, "advisor"));
    g_assert_cmpstr(qdict_get_str(info, "release"), !=, "");
    qobject_unref(resp);
    qtest_quit(qts);
    rmdir(dir);
}

/*
 * Which KSM files exist is what query-memdedup's kernel features and
 * host-ksm say: a sysfs directory with a newer kernel's files (and
 * hostile values in some), then one with only an old kernel's.
 */
static void test_kernel_features(void)
{
    static const char *const newer[][2] = {
        { "run", "1\n" }, { "pages_shared", "5\n" },
        { "smart_scan", "1\n" }, { "advisor_mode", "none [scan-time]\n" },
        { "general_profit", "-4096\n" }, { "ksm_zero_pages", "x\n" },
    };
    g_autofree char *dir = g_dir_make_tmp("memdedup-ksm-XXXXXX", NULL);
    g_autofree char *args = g_strdup_printf("-machine none -object "
                                            "memdedup,id=engine,"
                                            "x-ksm-sysfs=%s", dir);
    QDict *resp, *info, *host, *kernel;
    QTestState *qts;
    size_t i;

    for (i = 0; i < ARRAY_SIZE(newer); i++) {
        g_autofree char *path = g_build_filename(dir, newer[i][0], NULL);
        g_assert(g_file_set_contents(path, newer[i][1], -1, NULL));
    }
    qts = qtest_init(args);
    resp = qtest_qmp(qts, "{ 'execute': 'query-memdedup' }");
    info = qdict_get_qdict(resp, "return");
    host = qdict_get_qdict(info, "host-ksm");
    kernel = qdict_get_qdict(info, "kernel");
    g_assert_cmpint(qdict_get_int(host, "smart-scan"), ==, 1);
    g_assert_cmpstr(qdict_get_str(host, "advisor-mode"), ==, "scan-time");
    g_assert_cmpint(qdict_get_int(host, "general-profit"), ==, -4096);
    g_assert(!qdict_haskey(host, "ksm-zero-pages"));    /* not a number */
    g_assert(qdict_get_bool(kernel, "ksm"));
    g_assert(qdict_get_bool(kernel, "smart-scan"));
    g_assert(qdict_get_bool(kernel, "advisor"));
    g_assert(qdict_get_bool(kernel, "general-profit"));
    g_assert(qdict_get_bool(kernel, "ksm-zero-pages"));
    qobject_unref(resp);
    qtest_quit(qts);

    /* An old kernel's directory: the newer members are absent. */
    for (i = 2; i < ARRAY_SIZE(newer); i++) {
        g_autofree char *path = g_build_filename(dir, newer[i][0], NULL);
        g_assert_cmpint(unlink(path), ==, 0);
    }
    qts = qtest_init(args);
    resp = qtest_qmp(qts, "{ 'execute': 'query-memdedup' }");
    info = qdict_get_qdict(resp, "return");
    host = qdict_get_qdict(info, "host-ksm");
    kernel = qdict_get_qdict(info, "kernel");
    g_assert_cmpint(qdict_get_int(host, "pages-shared"), ==, 5);
    g_assert(!qdict_haskey(host, "smart-scan"));
    g_assert(!qdict_haskey(host, "advisor-mode"));
    g_assert(!qdict_haskey(host, "general-profit"));
    g_assert(!qdict_get_bool(kernel, "smart-scan"));
    g_assert(!qdict_get_bool(kernel, "advisor"));
    g_assert(!qdict_get_bool(kernel, "general-profit"));
    g_assert(!qdict_get_bool(kernel, "ksm-zero-pages"));
    qobject_unref(resp);
    qtest_quit(qts);
    for (i = 0; i < 2; i++) {
        g_autofree char *path = g_build_filename(dir, newer[i][0], NULL);
        unlink(path);
    }
    rmdir(dir);
}

/* HMP shows the same numbers; pc-dimm backends work too. */
static void test_hmp_and_dimm(void)
{
    QTestState *qts;
    g_autofree char *out = NULL;
    QDict *resp, *info;
    QList *backends;

    if (!host_has_ksm()) {
        g_test_skip("the host has no KSM");
        return;
    }
    qts = qtest_init("-machine pc -m 128M,slots=2,maxmem=1G "
                     "-object memory-backend-ksm,id=d0,size=64M "
                     "-device pc-dimm,id=dimm0,memdev=d0");
    qtest_memset(qts, 4 * GiB, 0, 4 * MiB);
    run_pass(qts);
    /* Every pass announces itself. */
    resp = qtest_qmp_eventwait_ref(qts, "MEMDEDUP_PASS_COMPLETED");
    info = qdict_get_qdict(resp, "data");
    g_assert_cmpint(qdict_get_int(info, "pass"), >=, 1);
    g_assert(qdict_haskey(info, "duration"));
    g_assert(qdict_haskey(info, "registered-bytes"));
    qobject_unref(resp);
    resp = qtest_qmp(qts, "{ 'execute': 'query-memdedup' }");
    info = qdict_get_qdict(resp, "return");
    backends = qdict_get_qlist(info, "backends");
    g_assert_cmpint(qlist_size(backends), ==, 1);
    g_assert_cmpint(qdict_get_int(qobject_to(QDict, qlist_peek(backends)),
                                  "zero-pages"), ==, 4 * MiB / PAGE);
    qobject_unref(resp);

    out = qtest_hmp(qts, "info memdedup");
    g_assert(strstr(out, "d0"));
    g_assert(strstr(out, "targeted"));
    g_assert(strstr(out, "host KSM: run"));
    g_free(out);
    out = qtest_hmp(qts, "memdedup_scan");
    g_assert_cmpstr(out, ==, "");
    qtest_quit(qts);
}

/* query-memdedup's @key for backend @id. */
static int64_t backend_int(QTestState *qts, const char *id, const char *key)
{
    QDict *resp = qtest_qmp(qts, "{ 'execute': 'query-memdedup' }");
    QList *backends = qdict_get_qlist(qdict_get_qdict(resp, "return"),
                                      "backends");
    QListEntry *e;
    int64_t value = -1;

    QLIST_FOREACH_ENTRY(backends, e) {
        QDict *b = qobject_to(QDict, qlist_entry_obj(e));

        if (!strcmp(qdict_get_str(b, "id"), id)) {
            value = qdict_get_int(b, key);
        }
    }
    qobject_unref(resp);
    g_assert_cmpint(value, >=, 0);
    return value;
}

/*
 * Pages are duplicates only of a DIMM's pages.  Passes in which nothing
 * changed keep their count; once the DIMM is unplugged and its backend
 * deleted, the next pass counts them again, as unique.
 */
static void test_unplug_after_quiet_pass(void)
{
    g_autofree char *trace = NULL;
    g_autofree char *trace_args = trace_unchanged_args(&trace);
    g_autoptr(GRand) rand = g_rand_new_with_seed(11);
    g_autofree uint8_t *buf = g_malloc(REGION);
    QTestState *qts;
    QDict *resp;

    if (!host_has_ksm()) {
        g_test_skip("the host has no KSM");
        unlink(trace);
        return;
    }
    qts = qtest_initf("-machine pc,memory-backend=m0,mem-merge=off "
                      "-m 64M,slots=2,maxmem=1G "
                      "-object memdedup,id=engine,rescan-interval=3600000 "
                      "-object memory-backend-ksm,id=m0,size=64M "
                      "-object memory-backend-ksm,id=d0,size=64M "
                      "-device pc-dimm,id=dimm0,memdev=d0 %s", trace_args);
    /* The same 2 MiB in RAM and at the start of the DIMM (4 GiB). */
    fill_pattern(buf, REGION, rand);
    qtest_bufwrite(qts, DUP_FIRST * REGION, buf, REGION);
    qtest_bufwrite(qts, 4 * GiB, buf, REGION);
    run_pass(qts);
    g_assert_cmpint(backend_int(qts, "m0", "duplicate-pages"), ==,
                    PAGES_PER_REGION);
    g_assert_cmpint(backend_int(qts, "d0", "duplicate-pages"), ==,
                    PAGES_PER_REGION);
    run_pass(qts);
    g_assert_cmpint(unchanged_passes(trace), ==, 1);
    g_assert_cmpint(backend_int(qts, "m0", "duplicate-pages"), ==,
                    PAGES_PER_REGION);

    /* Unplug, ejecting as the guest's ACPI code would (slot 0). */
    qtest_qmp_assert_success(qts, "{ 'execute': 'device_del', "
                             "'arguments': { 'id': 'dimm0' } }");
    qtest_outl(qts, ACPI_MEMORY_HOTPLUG_BASE, 0);
    qtest_outb(qts, ACPI_MEMORY_HOTPLUG_BASE + 0x14, 8);
    qtest_qmp_eventwait(qts, "DEVICE_DELETED");
    qtest_qmp_assert_success(qts, "{ 'execute': 'object-del', "
                             "'arguments': { 'id': 'd0' } }");
    resp = qtest_qmp_eventwait_ref(qts, "MEMDEDUP_BACKEND_REMOVED");
    qobject_unref(resp);

    /* (The removal may start a pass of its own: count no passes here.) */
    run_pass(qts);
    g_assert_cmpint(backend_int(qts, "m0", "duplicate-pages"), ==, 0);
    g_assert_cmpint(backend_int(qts, "m0", "unique-pages"), ==,
                    PAGES_PER_REGION);
    qtest_quit(qts);
    unlink(trace);
}

/*
 * Backends come and go at runtime, also while a pass hashes them: the
 * engine follows, and never touches RAM after its removal.  (Run the
 * AddressSanitizer build, make check-asan, to catch a use after free.)
 */
static void test_add_remove_during_pass(void)
{
    QTestState *qts;
    QDict *resp;
    int i;

    if (!host_has_ksm()) {
        g_test_skip("the host has no KSM");
        return;
    }
    /* 64 MiB/s: a pass over a preallocated 32 MiB backend takes 0.5 s. */
    qts = qtest_init("-machine none -object memdedup,id=engine,"
                     "scan-rate=64M,rescan-interval=3600000");
    for (i = 0; i < 20; i++) {
        g_autofree char *id = g_strdup_printf("hot%d", i);
        QDict *b;
        QList *backends;

        qtest_qmp_assert_success(qts, "{ 'execute': 'object-add', "
                                 "'arguments': { 'qom-type': "
                                 "'memory-backend-ksm', 'id': %s, "
                                 "'size': 33554432, 'prealloc': true } }",
                                 id);
        resp = qtest_qmp_eventwait_ref(qts, "MEMDEDUP_BACKEND_ADDED");
        g_assert_cmpstr(qdict_get_str(qdict_get_qdict(resp, "data"), "id"),
                        ==, id);
        qobject_unref(resp);
        qtest_qmp_assert_success(qts, "{ 'execute': 'memdedup-scan' }");
        /* Let the pass get into the block, at a different point each time. */
        g_usleep((i % 5) * 60 * 1000);
        if (i % 4 == 3) {
            /* Now and then let a whole pass see it. */
            run_pass(qts);
            resp = qtest_qmp(qts, "{ 'execute': 'query-memdedup' }");
            backends = qdict_get_qlist(qdict_get_qdict(resp, "return"),
                                       "backends");
            g_assert_cmpint(qlist_size(backends), ==, 1);
            b = qobject_to(QDict, qlist_peek(backends));
            /* prealloc wrote every page: all resident, all zero. */
            g_assert_cmpint(qdict_get_int(b, "zero-pages"), ==,
                            32 * MiB / PAGE);
            qobject_unref(resp);
        }
        qtest_qmp_assert_success(qts, "{ 'execute': 'object-del', "
                                 "'arguments': { 'id': %s } }", id);
        resp = qtest_qmp_eventwait_ref(qts, "MEMDEDUP_BACKEND_REMOVED");
        g_assert_cmpstr(qdict_get_str(qdict_get_qdict(resp, "data"), "id"),
                        ==, id);
        qobject_unref(resp);

        /* Gone from the report at once. */
        resp = qtest_qmp(qts, "{ 'execute': 'query-memdedup' }");
        backends = qdict_get_qlist(qdict_get_qdict(resp, "return"),
                                   "backends");
        g_assert_cmpint(qlist_size(backends), ==, 0);
        qobject_unref(resp);
    }
    qtest_quit(qts);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);

    qtest_add_func("/memdedup/counts", test_counts);
    qtest_add_func("/memdedup/counts-three-threads",
                   test_counts_three_threads);
    qtest_add_func("/memdedup/policy-runtime", test_policy_runtime);
    qtest_add_func("/memdedup/content-preserved", test_content_preserved);
    qtest_add_func("/memdedup/rescan-backoff", test_rescan_backoff);
    qtest_add_func("/memdedup/rescan-backoff-watch",
                   test_rescan_backoff_watch);
    qtest_add_func("/memdedup/bad-input", test_bad_input);
    qtest_add_func("/memdedup/no-ksm", test_no_ksm);
    qtest_add_func("/memdedup/kernel-features", test_kernel_features);
    qtest_add_func("/memdedup/hmp-and-dimm", test_hmp_and_dimm);
    qtest_add_func("/memdedup/unplug-after-quiet-pass",
                   test_unplug_after_quiet_pass);
    qtest_add_func("/memdedup/add-remove-during-pass",
                   test_add_remove_during_pass);

    return g_test_run();
}
