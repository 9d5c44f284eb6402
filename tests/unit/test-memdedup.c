/*
 * Unit tests for the memdedup core: fingerprints, the dup set, region
 * policy, coalescing, admission control and the kernel-file parsers.
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 */

#include "qemu/osdep.h"
#include "qemu/units.h"
#include "sysemu/memdedup.h"

#define PAGE 4096

static void test_fingerprint(void)
{
    g_autofree uint8_t *a = g_malloc0(PAGE);
    g_autofree uint8_t *b = g_malloc0(PAGE);
    uint32_t fa, fb;

    /* Zero pages are classified as such, whatever the seed. */
    g_assert_cmpuint(memdedup_page_classify(a, PAGE, 1), ==, MEMDEDUP_FP_ZERO);
    g_assert_cmpuint(memdedup_page_classify(a, PAGE, 2), ==, MEMDEDUP_FP_ZERO);

    /* One byte anywhere makes a page non-zero and changes the hash. */
    a[PAGE - 1] = 1;
    fa = memdedup_page_classify(a, PAGE, 42);
    g_assert_cmpuint(fa, >, MEMDEDUP_FP_ZERO);
    b[0] = 1;
    fb = memdedup_page_classify(b, PAGE, 42);
    g_assert_cmpuint(fb, >, MEMDEDUP_FP_ZERO);
    g_assert_cmpuint(fa, !=, fb);

    /* Equal pages, equal fingerprints; the seed changes them. */
    memcpy(b, a, PAGE);
    g_assert_cmpuint(memdedup_page_fingerprint(b, PAGE, 42), ==, fa);
    g_assert_cmpuint(memdedup_page_fingerprint(b, PAGE, 43), !=, fa);
}

static void test_fingerprint_reserved(void)
{
    g_autofree uint8_t *page = g_malloc0(PAGE);
    uint32_t i;

    /* No content ever maps to a reserved value. */
    for (i = 0; i < 100000; i++) {
        memcpy(page, &i, sizeof(i));
        g_assert_cmpuint(memdedup_page_fingerprint(page, PAGE, 7), >,
                         MEMDEDUP_FP_ZERO);
    }
}

static void test_sort(void)
{
    const size_t n = 100000;
    g_autofree uint32_t *v = g_new(uint32_t, n);
    g_autofree uint32_t *tmp = g_new(uint32_t, n);
    g_autofree uint32_t *ref = g_new(uint32_t, n);
    g_autoptr(GRand) rand = g_rand_new_with_seed(1);
    size_t i;

    for (i = 0; i < n; i++) {
        v[i] = g_rand_int(rand) >> (i % 3 ? 0 : 20);   /* many repeats */
    }
    memcpy(ref, v, n * sizeof(*v));
    memdedup_fp_sort(v, tmp, n);
    for (i = 1; i < n; i++) {
        g_assert_cmpuint(v[i - 1], <=, v[i]);
    }
    /* Same multiset: the sum and xor survive sorting. */
    {
        uint64_t sum_a = 0, sum_b = 0;
        uint32_t xor_a = 0, xor_b = 0;
        for (i = 0; i < n; i++) {
            sum_a += v[i];
            sum_b += ref[i];
            xor_a ^= v[i];
            xor_b ^= ref[i];
        }
        g_assert_cmpuint(sum_a, ==, sum_b);
        g_assert_cmpuint(xor_a, ==, xor_b);
    }
}

static void test_dupset(void)
{
    uint32_t fps[] = { 9, 5, 5, 7, 9, 9, 3, 11, 11 };
    uint32_t tmp[ARRAY_SIZE(fps)];
    MemdedupDupSet set = { 0 };

    memdedup_fp_sort(fps, tmp, ARRAY_SIZE(fps));
    memdedup_dupset_build(&set, fps, ARRAY_SIZE(fps));
    g_assert_cmpuint(set.len, ==, 3);
    g_assert_cmpuint(set.fps[0], ==, 5);
    g_assert_cmpuint(set.fps[1], ==, 9);
    g_assert_cmpuint(set.fps[2], ==, 11);
    g_assert_cmpint(memdedup_dupset_find(&set, 9), ==, 1);
    g_assert_cmpint(memdedup_dupset_find(&set, 7), ==, -1);
    g_assert_cmpint(memdedup_dupset_find(&set, 3), ==, -1);
    g_assert_cmpint(memdedup_dupset_find(&set, 12), ==, -1);
    g_assert_cmpint(memdedup_dupset_find(&set, 0), ==, -1);

    /* Rebuilding replaces; nothing duplicated leaves it empty. */
    memdedup_dupset_build(&set, (uint32_t[]){ 2, 3, 4 }, 3);
    g_assert_cmpuint(set.len, ==, 0);
    g_assert_cmpint(memdedup_dupset_find(&set, 3), ==, -1);
    memdedup_dupset_clear(&set);
}

static MemdedupParams params_for(MemdedupPolicy policy, uint8_t threshold)
{
    MemdedupParams p = {
        .policy = policy,
        .region_size = 2 * MiB,
        .duplicate_threshold = threshold,
        .manage_thp = true,
    };
    return p;
}

static void test_region_wanted(void)
{
    MemdedupParams targeted = params_for(MEMDEDUP_POLICY_TARGETED, 10);
    MemdedupParams zero_only = params_for(MEMDEDUP_POLICY_ZERO_ONLY, 10);
    MemdedupParams all = params_for(MEMDEDUP_POLICY_ALL, 10);
    MemdedupParams estimate = params_for(MEMDEDUP_POLICY_ESTIMATE, 10);
    MemdedupParams off = params_for(MEMDEDUP_POLICY_OFF, 10);
    MemdedupRegion r = { .resident = 512, .duplicate = 51, .unique = 461 };

    /* 51/512 = 9.96%: just below 10%. */
    g_assert_false(memdedup_region_wanted(&targeted, &r));
    r.duplicate = 52;
    r.unique = 460;
    g_assert_true(memdedup_region_wanted(&targeted, &r));
    g_assert_false(memdedup_region_wanted(&zero_only, &r));
    g_assert_true(memdedup_region_wanted(&all, &r));
    g_assert_false(memdedup_region_wanted(&estimate, &r));
    g_assert_false(memdedup_region_wanted(&off, &r));

    /* Zero pages count for targeted and zero-only alike. */
    r = (MemdedupRegion) { .resident = 100, .zero = 10, .unique = 90 };
    g_assert_true(memdedup_region_wanted(&targeted, &r));
    g_assert_true(memdedup_region_wanted(&zero_only, &r));

    /* Share of resident pages, not of the region. */
    r = (MemdedupRegion) { .resident = 4, .duplicate = 1, .unique = 3 };
    g_assert_true(memdedup_region_wanted(&targeted, &r));

    /* Nothing resident: nothing to register (but all takes it anyway). */
    r = (MemdedupRegion) { 0 };
    g_assert_false(memdedup_region_wanted(&targeted, &r));
    g_assert_true(memdedup_region_wanted(&all, &r));
    /* Registered (say by 'all') but never resident: let it go. */
    r.registered = true;
    g_assert_false(memdedup_region_wanted(&targeted, &r));
    /*
     * A registered region whose pages all went (swapped, or merged into
     * the zero page) stays registered: no unmerge churn.
     */
    r.seen_resident = true;
    g_assert_true(memdedup_region_wanted(&targeted, &r));
    g_assert_true(memdedup_region_wanted(&zero_only, &r));
    g_assert_false(memdedup_region_wanted(&estimate, &r));

    /* Threshold 100: every resident page must be a candidate. */
    targeted.duplicate_threshold = 100;
    r = (MemdedupRegion) { .resident = 512, .zero = 10, .duplicate = 501,
                           .unique = 1 };
    g_assert_false(memdedup_region_wanted(&targeted, &r));
    r.duplicate = 502;
    r.unique = 0;
    g_assert_true(memdedup_region_wanted(&targeted, &r));
}

static void test_region_thp(void)
{
    MemdedupParams p = params_for(MEMDEDUP_POLICY_TARGETED, 10);
    MemdedupRegion r = { .resident = 512, .unique = 512, .stable_passes = 2 };

    g_assert_true(memdedup_region_wants_thp(&p, &r, 512));
    /* Not fully resident: collapsing would fault pages in. */
    r.resident = 511;
    r.unique = 511;
    g_assert_false(memdedup_region_wants_thp(&p, &r, 512));
    r.resident = 512;
    r.unique = 512;
    /* Not yet stable. */
    r.stable_passes = 1;
    g_assert_false(memdedup_region_wants_thp(&p, &r, 512));
    r.stable_passes = 2;
    /* Too many duplicates: 95% unique needed. */
    r.unique = 486;
    r.duplicate = 26;
    g_assert_false(memdedup_region_wants_thp(&p, &r, 512));
    r.unique = 487;
    r.duplicate = 25;
    g_assert_true(memdedup_region_wants_thp(&p, &r, 512));
    /* The backend opted out. */
    p.manage_thp = false;
    g_assert_false(memdedup_region_wants_thp(&p, &r, 512));
}

static bool *flags_from(const char *s, size_t *n)
{
    bool *f;
    size_t i;

    *n = strlen(s);
    f = g_new(bool, *n);
    for (i = 0; i < *n; i++) {
        f[i] = s[i] == '#';
    }
    return f;
}

static char *flags_to(const bool *f, size_t n)
{
    char *s = g_malloc(n + 1);
    size_t i;

    for (i = 0; i < n; i++) {
        s[i] = f[i] ? '#' : '.';
    }
    s[n] = 0;
    return s;
}

static void check_coalesce(const char *in, size_t max, const char *out,
                           size_t runs)
{
    size_t n;
    g_autofree bool *f = flags_from(in, &n);
    g_autofree char *got = NULL;

    g_assert_cmpuint(memdedup_coalesce_ranges(f, n, max), ==, runs);
    got = flags_to(f, n);
    g_assert_cmpstr(got, ==, out);
}

static void test_coalesce(void)
{
    size_t n;
    g_autofree bool *f = flags_from("#.##...#", &n);

    g_assert_cmpuint(memdedup_count_runs(f, n), ==, 3);

    /* Under the cap: untouched. */
    check_coalesce("#.##...#", 3, "#.##...#", 3);
    /* Fill the smallest gap first. */
    check_coalesce("#.##...#", 2, "####...#", 2);
    check_coalesce("#.##...#", 1, "########", 1);
    /* Leading and trailing gaps are never filled. */
    check_coalesce("..#..#..", 1, "..####..", 1);
    /* Ties go to the lower gap. */
    check_coalesce("#..#..#", 2, "####..#", 2);
    check_coalesce("", 1, "", 0);
    check_coalesce("....", 1, "....", 0);
    /* A cap of 0 is treated as 1. */
    check_coalesce("#.#", 0, "###", 1);
}

static void test_admission(void)
{
    /* 16 GiB host, 5% (819 MiB) reserve. */
    uint64_t total = 16 * GiB;

    g_assert_true(memdedup_unmerge_admissible(0, 0, total));
    g_assert_true(memdedup_unmerge_admissible(1 * GiB, 4 * GiB, total));
    g_assert_false(memdedup_unmerge_admissible(4 * GiB, 4 * GiB, total));
    g_assert_true(memdedup_unmerge_admissible(4 * GiB - total / 20,
                                              4 * GiB, total));
    g_assert_false(memdedup_unmerge_admissible(4 * GiB - total / 20 + 1,
                                               4 * GiB, total));
    /* Less available than the reserve: only nothing may be unmerged. */
    g_assert_false(memdedup_unmerge_admissible(1, 100 * MiB, total));
}

static void test_parse_ksm_stat(void)
{
    MemdedupKsmStat st;

    g_assert_true(memdedup_parse_ksm_stat(
        "ksm_rmap_items 400123\nksm_zero_pages 17\n"
        "ksm_merging_pages 216000\nksm_process_profit -4096\n"
        "ksm_merge_any: no\nksm_mergeable: yes\n", &st));
    g_assert_cmpint(st.rmap_items, ==, 400123);
    g_assert_cmpint(st.zero_pages, ==, 17);
    g_assert_cmpint(st.merging_pages, ==, 216000);
    g_assert_true(st.has_process_profit);
    g_assert_cmpint(st.process_profit, ==, -4096);

    /* An older kernel: only rmap items. */
    g_assert_true(memdedup_parse_ksm_stat("ksm_rmap_items 5\n", &st));
    g_assert_cmpint(st.rmap_items, ==, 5);
    g_assert_cmpint(st.zero_pages, ==, -1);
    g_assert_cmpint(st.merging_pages, ==, -1);
    g_assert_false(st.has_process_profit);

    g_assert_false(memdedup_parse_ksm_stat("", &st));
    g_assert_false(memdedup_parse_ksm_stat("garbage\n", &st));
    /* A prefix of a field name is not the field. */
    g_assert_false(memdedup_parse_ksm_stat("ksm_rmap_items_x 5\n", &st));
}

static void test_parse_meminfo(void)
{
    uint64_t avail, total;

    g_assert_true(memdedup_parse_meminfo(
        "MemTotal:       24567890 kB\nMemFree:        1000 kB\n"
        "MemAvailable:   12345678 kB\nBuffers: 1 kB\n", &avail, &total));
    g_assert_cmpuint(total, ==, 24567890ULL * 1024);
    g_assert_cmpuint(avail, ==, 12345678ULL * 1024);
    g_assert_false(memdedup_parse_meminfo("MemTotal: 5 kB\n", &avail,
                                          &total));
}

static void test_parse_smaps(void)
{
    const char *smaps =
        "7f0000000000-7f0000200000 rw-p 00000000 00:00 0\n"
        "Size:               2048 kB\n"
        "KSM:                1024 kB\n"
        "VmFlags: rd wr mr mw me ac sd mg\n"
        "7f0000200000-7f0000600000 rw-p 00000000 00:00 0\n"
        "Size:               4096 kB\n"
        "KSM:                   0 kB\n"
        "VmFlags: rd wr mr mw me ac sd nh\n"
        "7f0000600000-7f0000800000 rw-p 00000000 00:00 0\n"
        "Size:               2048 kB\n"
        "KSM:                  40 kB\n"
        "VmFlags: rd wr mg mr mw me ac sd\n"
        "7f0000800000-7f0000a00000 rw-p 00000000 00:00 0 [heap]\n"
        "KSM:                 400 kB\n"
        "VmFlags: rd wr mr mw me ac sd mg\n";
    uint64_t ksm, vmas, bytes;

    /* The first three VMAs make the range. */
    g_assert_true(memdedup_parse_smaps_ksm(smaps, 0x7f0000000000ULL,
                                           0x7f0000800000ULL, &ksm, &vmas,
                                           &bytes));
    g_assert_cmpuint(ksm, ==, 1064 * KiB);
    g_assert_cmpuint(vmas, ==, 2);
    g_assert_cmpuint(bytes, ==, 4 * MiB);

    /* A sub-range only counts VMAs entirely inside it. */
    g_assert_true(memdedup_parse_smaps_ksm(smaps, 0x7f0000200000ULL,
                                           0x7f0000800000ULL, &ksm, &vmas,
                                           &bytes));
    g_assert_cmpuint(ksm, ==, 40 * KiB);
    g_assert_cmpuint(vmas, ==, 1);

    /* A kernel without KSM lines. */
    g_assert_false(memdedup_parse_smaps_ksm(
        "7f0000000000-7f0000200000 rw-p 00000000 00:00 0\n"
        "VmFlags: rd wr mg\n", 0, UINT64_MAX, &ksm, &vmas, &bytes));
    g_assert_cmpuint(vmas, ==, 1);
}

/*
 * Exact KSM counting on this process's own memory: without ksmd nothing
 * is KSM, so the count is 0 when PFNs are visible, or -1 (unavailable)
 * when they are hidden from unprivileged readers.
 */
static void test_count_ksm_pages(void)
{
    size_t len = 64 * PAGE;
    uint8_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int pagemap = open("/proc/self/pagemap", O_RDONLY);
    int kpageflags = open("/proc/kpageflags", O_RDONLY);
    int64_t n;

    g_assert(mem != MAP_FAILED);
    if (pagemap < 0 || kpageflags < 0) {
        g_test_skip("pagemap or kpageflags not readable");
    } else {
        memset(mem, 0x5a, len);
        n = memdedup_count_ksm_pages(pagemap, kpageflags, (uintptr_t)mem,
                                     len);
        g_assert(n == 0 || n == -1);
        /* Invalid file descriptor: unavailable, not a crash. */
        g_assert_cmpint(memdedup_count_ksm_pages(-1, kpageflags,
                                                 (uintptr_t)mem, len),
                        ==, -1);
    }
    if (pagemap >= 0) {
        close(pagemap);
    }
    if (kpageflags >= 0) {
        close(kpageflags);
    }
    munmap(mem, len);
}

static void test_policy_registers(void)
{
    g_assert_true(memdedup_policy_registers(MEMDEDUP_POLICY_TARGETED));
    g_assert_true(memdedup_policy_registers(MEMDEDUP_POLICY_ALL));
    g_assert_true(memdedup_policy_registers(MEMDEDUP_POLICY_ZERO_ONLY));
    g_assert_false(memdedup_policy_registers(MEMDEDUP_POLICY_ESTIMATE));
    g_assert_false(memdedup_policy_registers(MEMDEDUP_POLICY_OFF));
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/memdedup/fingerprint", test_fingerprint);
    g_test_add_func("/memdedup/fingerprint-reserved",
                    test_fingerprint_reserved);
    g_test_add_func("/memdedup/sort", test_sort);
    g_test_add_func("/memdedup/dupset", test_dupset);
    g_test_add_func("/memdedup/region-wanted", test_region_wanted);
    g_test_add_func("/memdedup/region-thp", test_region_thp);
    g_test_add_func("/memdedup/coalesce", test_coalesce);
    g_test_add_func("/memdedup/admission", test_admission);
    g_test_add_func("/memdedup/parse-ksm-stat", test_parse_ksm_stat);
    g_test_add_func("/memdedup/parse-meminfo", test_parse_meminfo);
    g_test_add_func("/memdedup/parse-smaps", test_parse_smaps);
    g_test_add_func("/memdedup/count-ksm-pages", test_count_ksm_pages);
    g_test_add_func("/memdedup/policy-registers", test_policy_registers);
    return g_test_run();
}
