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
#include "qemu/bitmap.h"
#include "qemu/host-utils.h"
#include <sys/resource.h>
#include "../../hw/mem/memdedup/memdedup-core.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

#define PAGE 4096

static void test_fingerprint(void)
{
    g_autofree uint8_t *a = g_malloc0(PAGE);
    g_autofree uint8_t *b = g_malloc0(PAGE);
    MemdedupFp fa, fb;

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

/*
 * The fingerprint is XXH3-64 with the seed, folded, on every instruction
 * set and however the seed's secret is kept: fingerprints must match
 * those of other QEMUs (the board, migration hints).
 */
static void test_fingerprint_is_xxh3(void)
{
    static const size_t sizes[] = { 64, 240, 241, 4096, 65536 };
    g_autofree uint8_t *page = g_malloc(65536);
    uint8_t secret[XXH3_SECRET_DEFAULT_SIZE];
    size_t i, s;
    uint64_t seed;

    g_test_message("page hash on %s", memdedup_hash_impl());
    for (i = 0; i < 65536; i++) {
        page[i] = i * 131 + (i >> 8);
    }
    for (seed = 0; seed < 4000000000ull; seed += 399999999) {
        XXH3_generateSecret_fromSeed(secret, seed);
        for (s = 0; s < ARRAY_SIZE(sizes); s++) {
            uint64_t h = XXH3_64bits_withSeed(page, sizes[s], seed);
            uint32_t lo = (uint32_t)(h ^ (h >> 32));
            MemdedupFp fp;

            /* Low 32 bits folded clear of the reserved values, top 8. */
            lo = lo <= MEMDEDUP_FP_ZERO ? lo + 2 : lo;
            fp = memdedup_fp_join(lo, h >> 56);
            g_assert_cmpuint(memdedup_page_fingerprint(page, sizes[s], seed),
                             ==, fp);
            /* Alternating seeds and sizes refresh the cached secret. */
            g_assert_cmpuint(memdedup_page_classify(page, sizes[s], seed),
                             ==, fp);
#ifdef CONFIG_AVX2_OPT
            if (__builtin_cpu_supports("avx2")) {
                g_assert_cmpuint(memdedup_xxh3_avx2(page, sizes[s], seed,
                                                    secret), ==, h);
            }
#endif
        }
    }
}

static void test_fingerprint_reserved(void)
{
    g_autofree uint8_t *page = g_malloc0(PAGE);
    uint32_t i;

    /* No content ever maps to a reserved value, in its low bits too. */
    for (i = 0; i < 100000; i++) {
        memcpy(page, &i, sizeof(i));
        g_assert_cmpuint(memdedup_fp_lo(memdedup_page_fingerprint(page, PAGE,
                                                                   7)), >,
                         MEMDEDUP_FP_ZERO);
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/*
 * Pages crafted to collide under an unseeded hash do not collide under
 * the engine's per-process seed.  The crafting is a birthday search: 2^19
 * pages that differ in their first 8 bytes give about 32 pairs whose
 * 32-bit fingerprints are equal under seed 0.  Under random seeds the
 * same pairs must all differ (the chance of one collision is 2^-27).
 */
static void test_hostile_collisions(void)
{
    const uint64_t n = 1 << 19;
    g_autofree uint8_t *page = g_malloc0(PAGE);
    g_autofree uint64_t *keys = g_new(uint64_t, n);
    g_autofree uint64_t *pairs = g_new(uint64_t, 2 * n);
    uint64_t i, npairs = 0, collide = 0;
    int s;

    memset(page, 0x5a, PAGE);
    for (i = 0; i < n; i++) {
        memcpy(page, &i, sizeof(i));
        keys[i] = (uint64_t)memdedup_fp_lo(
                      memdedup_page_fingerprint(page, PAGE, 0)) << 32 | i;
    }
    qsort(keys, n, sizeof(*keys), cmp_u64);
    for (i = 1; i < n; i++) {
        if (keys[i] >> 32 == keys[i - 1] >> 32) {
            pairs[2 * npairs] = (uint32_t)keys[i - 1];
            pairs[2 * npairs + 1] = (uint32_t)keys[i];
            npairs++;
        }
    }
    g_test_message("%" PRIu64 " pairs collide under seed 0", npairs);
    g_assert_cmpuint(npairs, >=, 8);

    for (s = 0; s < 4; s++) {
        uint64_t seed = (uint64_t)g_random_int() << 32 | g_random_int() | 1;

        for (i = 0; i < npairs; i++) {
            uint32_t fa, fb, fa0, fb0;

            memcpy(page, &pairs[2 * i], sizeof(uint64_t));
            fa = memdedup_fp_lo(memdedup_page_fingerprint(page, PAGE, seed));
            fa0 = memdedup_fp_lo(memdedup_page_fingerprint(page, PAGE, 0));
            memcpy(page, &pairs[2 * i + 1], sizeof(uint64_t));
            fb = memdedup_fp_lo(memdedup_page_fingerprint(page, PAGE, seed));
            fb0 = memdedup_fp_lo(memdedup_page_fingerprint(page, PAGE, 0));
            g_assert_cmpuint(fa0, ==, fb0);     /* crafted: they collide */
            collide += fa == fb;
        }
    }
    g_assert_cmpuint(collide, ==, 0);
}

/* Every copy of a repeated fingerprint counts; singles do not. */
static void test_count_repeats(void)
{
    MemdedupFp fps[] = { 7, 3, 9, 3, 7, 3, 11, 5, 1ull << 39, 1ull << 39 };

    g_assert_cmpuint(memdedup_count_repeats(fps, ARRAY_SIZE(fps)), ==, 7);
    g_assert_cmpuint(memdedup_count_repeats(fps, 1), ==, 0);
    g_assert_cmpuint(memdedup_count_repeats(fps, 0), ==, 0);
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

/* Build @set from @n 40-bit fingerprints, as a pass would. */
static bool dupset_build_from(MemdedupDupSet *set, const MemdedupFp *fps,
                              uint64_t n, uint64_t budget)
{
    g_autofree uint32_t *lo = g_new(uint32_t, MAX(n, 1));
    g_autofree uint8_t *hi = g_new(uint8_t, MAX(n, 1));
    MemdedupFpArray a = { .lo = lo, .hi = hi, .nr_pages = n };
    uint64_t i;

    for (i = 0; i < n; i++) {
        lo[i] = memdedup_fp_lo(fps[i]);
        hi[i] = memdedup_fp_hi(fps[i]);
    }
    return memdedup_dupset_build(set, &a, 1, budget, 0);
}

#define HI(h) ((MemdedupFp)(h) << 32)

static void test_dupset(void)
{
    static const MemdedupFp fps[] = {
        9, 5, 5, 7, 9, 9, 3, 11, 11, MEMDEDUP_FP_ZERO, MEMDEDUP_FP_ZERO,
        5 | HI(1), 7 | HI(3), 7 | HI(3), 2 | HI(255), 2 | HI(255),
    };
    MemdedupDupSet set = { 0 };

    g_assert_true(dupset_build_from(&set, fps, ARRAY_SIZE(fps), UINT64_MAX));
    /* In (high, low) order; zero pages are no duplicates. */
    g_assert_cmpuint(set.len, ==, 5);
    g_assert_cmpuint(set.dropped, ==, 0);
    g_assert_cmpint(memdedup_dupset_find(&set, 5), ==, 0);
    g_assert_cmpint(memdedup_dupset_find(&set, 9), ==, 1);
    g_assert_cmpint(memdedup_dupset_find(&set, 11), ==, 2);
    g_assert_cmpint(memdedup_dupset_find(&set, 7 | HI(3)), ==, 3);
    g_assert_cmpint(memdedup_dupset_find(&set, 2 | HI(255)), ==, 4);
    /* The high bits tell fingerprints apart. */
    g_assert_cmpint(memdedup_dupset_find(&set, 5 | HI(1)), ==, -1);
    g_assert_cmpint(memdedup_dupset_find(&set, 7), ==, -1);
    g_assert_cmpint(memdedup_dupset_find(&set, 9 | HI(3)), ==, -1);
    g_assert_cmpint(memdedup_dupset_find(&set, 3), ==, -1);
    g_assert_cmpint(memdedup_dupset_find(&set, 12), ==, -1);
    g_assert_cmpint(memdedup_dupset_find(&set, MEMDEDUP_FP_ZERO), ==, -1);
    g_assert_cmpint(memdedup_dupset_find(&set, 0), ==, -1);

    /* Rebuilding replaces; nothing duplicated leaves it empty. */
    g_assert_true(dupset_build_from(&set, (MemdedupFp[]){ 2, 3, 3 | HI(1) },
                                    3, UINT64_MAX));
    g_assert_cmpuint(set.len, ==, 0);
    g_assert_cmpint(memdedup_dupset_find(&set, 3), ==, -1);
    memdedup_dupset_clear(&set);
}

/*
 * Over the budget, the fingerprints with the most copies stay: groups of
 * 2, 3 and 4 copies, a budget for about 5/6 of them; every group of 4
 * and 3 is kept, the rest of the room goes to pairs, the others are
 * counted as dropped, and the set is within the budget.
 */
static void test_dupset_budget(void)
{
    const uint64_t groups = 30000;
    g_autofree MemdedupFp *fps = g_new(MemdedupFp, groups * 3);
    g_autoptr(GRand) rand = g_rand_new_with_seed(11);
    MemdedupDupSet set = { 0 };
    /* Room for every group of 4 and 3, and half the pairs. */
    uint64_t budget = (groups * 2 / 3 + groups / 6) * 4 + 16400;
    uint64_t n = 0, g, kept[5] = { 0 };

    for (g = 0; g < groups; g++) {
        /* 10000 groups each of 4, 3 and 2 copies (even low bits). */
        MemdedupFp fp = ((MemdedupFp)g_rand_int(rand) << 8 |
                         g_rand_int_range(rand, 0, 256)) & ~(MemdedupFp)1;
        unsigned copies = 2 + g % 3;

        fp |= fp < 4 ? 4 : 0;
        for (unsigned c = 0; c < copies && n < groups * 3; c++) {
            fps[n++] = fp;
        }
    }
    g_assert_true(dupset_build_from(&set, fps, n, budget));
    g_assert_cmpuint(memdedup_dupset_bytes(&set), <=, budget);
    g_assert_cmpuint(set.len, >=, groups * 5 / 6 * 95 / 100);
    g_assert_cmpuint(set.len + set.dropped, ==, groups);
    for (uint64_t i = 0; i < n;) {
        uint64_t j = i;
        while (j < n && fps[j] == fps[i]) {
            j++;
        }
        kept[j - i] += memdedup_dupset_find(&set, fps[i]) >= 0;
        i = j;
    }
    g_assert_cmpuint(kept[4], ==, groups / 3);
    g_assert_cmpuint(kept[3], ==, groups / 3);
    g_assert_cmpuint(kept[2], ==, set.len - 2 * (groups / 3));
    g_assert_cmpuint(kept[2], <, groups / 3);
    memdedup_dupset_clear(&set);
}

/*
 * False duplicates: of @n pages with distinct content (uniform random
 * fingerprints stand in for their hashes) and a known 1 % of them
 * copied once, the unique pages found in the set.  The theory is n /
 * 2^40 of them; up to 4 TiB of guest RAM (2^30 pages) that must stay
 * below 1 %.  Measured at 2^28 pages (1 TiB), where 32 bits gave 6 %.
 */
static void test_false_duplicates(void)
{
    const uint64_t n = 1ull << 28;
    const uint64_t copies = n / 100;
    g_autofree uint32_t *lo = g_new(uint32_t, n + copies);
    g_autofree uint8_t *hi = g_new(uint8_t, n + copies);
    MemdedupFpArray a = { .lo = lo, .hi = hi, .nr_pages = n + copies };
    MemdedupDupSet set = { 0 };
    uint64_t x = 0x9e3779b97f4a7c15ull, i, found = 0, missed = 0;
    double rate, theory = (double)n / (1ull << MEMDEDUP_FP_BITS);

    for (i = 0; i < n; i++) {
        /* splitmix64: uniform 40-bit fingerprints */
        uint64_t z = (x += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        lo[i] = (uint32_t)z;
        lo[i] += lo[i] <= MEMDEDUP_FP_ZERO ? 2 : 0;  /* as memdedup_fold */
        hi[i] = z >> 56;
    }
    /* Pages [0, copies) have a copy each. */
    memcpy(lo + n, lo, copies * sizeof(*lo));
    memcpy(hi + n, hi, copies);
    g_assert_true(memdedup_dupset_build(&set, &a, 1, UINT64_MAX, 0));
    for (i = 0; i < n; i++) {
        bool dup = memdedup_dupset_find(&set, memdedup_fp_at(&a, i)) >= 0;

        if (i < copies) {
            missed += !dup;
        } else {
            found += dup;
        }
    }
    rate = (double)found / (n - copies);
    g_test_message("%" PRIu64 " pages: %" PRIu64 " of the unique ones look "
                   "duplicated (%.4f %%, theory %.4f %%); at 2^30 pages "
                   "%.3f %%", n, found, rate * 100, theory * 100,
                   rate * 100 * (double)(1ull << 30) / n);
    g_assert_cmpuint(missed, ==, 0);
    g_assert_cmpfloat(rate, <, 2 * theory);
    g_assert_cmpfloat(rate * (double)(1ull << 30) / n, <, 0.01);
    memdedup_dupset_clear(&set);
}

/* Bytes of address space this process has mapped (/proc/self/status). */
static uint64_t vm_size(void)
{
    g_autofree char *status = NULL;
    const char *line;

    g_assert_true(g_file_get_contents("/proc/self/status", &status, NULL,
                                      NULL));
    line = strstr(status, "\nVmSize:");
    g_assert_nonnull(line);
    return g_ascii_strtoull(line + strlen("\nVmSize:"), NULL, 10) * KiB;
}

/*
 * No memory for the transient index: the build fails and the set stays
 * as it was.  The address space is limited (RLIMIT_AS) to what the
 * process maps now plus 16 MiB, and the index of 2^24 pages needs 64 MiB
 * at once, beyond malloc's largest mmap threshold (32 MiB): malloc must
 * map it, and cannot.
 */
static void test_dupset_no_memory(void)
{
    const uint64_t n = 1ull << 24;
    g_autofree uint32_t *lo = g_new(uint32_t, n);
    g_autofree uint8_t *hi = g_new0(uint8_t, n);
    MemdedupFpArray a = { .lo = lo, .hi = hi, .nr_pages = n };
    MemdedupDupSet set = { 0 };
    struct rlimit old, tight;
    uint64_t i;
    bool built;

    for (i = 0; i < n; i++) {
        lo[i] = i / 2 + 2;                      /* every page paired */
    }
    g_assert_true(dupset_build_from(&set, (MemdedupFp[]){ 7, 7, 9 }, 3,
                                    UINT64_MAX));
    g_assert_cmpuint(set.len, ==, 1);

    g_assert_cmpint(getrlimit(RLIMIT_AS, &old), ==, 0);
    tight = old;
    tight.rlim_cur = vm_size() + 16 * MiB;
    g_assert_cmpint(setrlimit(RLIMIT_AS, &tight), ==, 0);
    built = memdedup_dupset_build(&set, &a, 1, UINT64_MAX, 0);
    g_assert_cmpint(setrlimit(RLIMIT_AS, &old), ==, 0);

    g_assert_false(built);
    g_assert_cmpuint(set.len, ==, 1);
    g_assert_cmpint(memdedup_dupset_find(&set, 7), ==, 0);
    /* With the memory back, the same build succeeds. */
    g_assert_true(memdedup_dupset_build(&set, &a, 1, UINT64_MAX, 0));
    g_assert_cmpuint(set.len, ==, n / 2);
    memdedup_dupset_clear(&set);
}

/* A large set is indexed by top bits: every member found, no other. */
static void test_dupset_indexed(void)
{
    const size_t n = 20000;
    g_autofree MemdedupFp *fps = g_new(MemdedupFp, 2 * n);
    g_autoptr(GRand) rand = g_rand_new_with_seed(7);
    MemdedupDupSet set = { 0 };
    size_t i;

    for (i = 0; i < n; i++) {
        /* Even values twice (duplicates), plus odd extremes once. */
        fps[2 * i] = fps[2 * i + 1] =
            ((MemdedupFp)g_rand_int_range(rand, 0, 256) << 32 |
             g_rand_int(rand)) & ~(MemdedupFp)1;
        fps[2 * i] |= fps[2 * i] < 4 ? 4 : 0;
        fps[2 * i + 1] = fps[2 * i];
    }
    fps[0] = fps[1] = 2;
    fps[2] = fps[3] = (MemdedupFp)0xfffffffffeull;
    g_assert_true(dupset_build_from(&set, fps, 2 * n, UINT64_MAX));
    g_assert_nonnull(set.bucket);
    g_assert_cmpuint(set.bucket_bits, >=, 8);
    g_assert_cmpuint(set.bucket[(1u << set.bucket_bits)], ==, set.len);
    g_assert_cmpuint(memdedup_dupset_bytes(&set), <=,
                     set.len * sizeof(uint32_t) * 5 / 4 + 1028);
    for (i = 0; i < 2 * n; i++) {
        ssize_t idx = memdedup_dupset_find(&set, fps[i]);

        g_assert_cmpint(idx, >=, 0);
        g_assert_cmpuint(set.fps[idx], ==, memdedup_fp_lo(fps[i]));
        /* Odd values were never inserted. */
        g_assert_cmpint(memdedup_dupset_find(&set, fps[i] | 1), ==, -1);
    }
    g_assert_cmpint(memdedup_dupset_find(&set, 0xffffffffffull), ==, -1);
    memdedup_dupset_clear(&set);
    g_assert_null(set.bucket);
}

/*
 * The board's blocked Bloom filter: no false negatives, every bit of a
 * fingerprint in the one 64-byte line memdedup_bloom_line names, and at
 * 16 bits per fingerprint a false-positive rate near the 0.09 % the
 * devel notes state (expected: 180 of 200000).
 */
static void test_bloom(void)
{
    const uint64_t bits = 1 << 20, n = bits / 16, probes = 200000;
    g_autofree uint8_t *filter = g_malloc0(bits / 8);
    g_autofree uint8_t *before = g_malloc(bits / 8);
    g_autoptr(GRand) rand = g_rand_new_with_seed(11);
    uint8_t small[8] = { 0 };
    uint64_t i, j, fp_hits = 0;

    for (i = 0; i < n; i++) {
        uint32_t fp = g_rand_int(rand) & ~1u;
        const uint8_t *line = memdedup_bloom_line(filter, bits, fp);

        g_assert_cmpuint((uintptr_t)(line - filter) % 64, ==, 0);
        if (i >= 1000) {
            memdedup_bloom_add(filter, bits, fp);
            continue;
        }
        memcpy(before, filter, bits / 8);
        memdedup_bloom_add(filter, bits, fp);
        for (j = 0; j < bits / 8; j++) {
            if (filter[j] != before[j]) {
                g_assert_cmpuint(j / 64, ==, (uint64_t)(line - filter) / 64);
            }
        }
        if (i < 8) {
            /* Eight distinct bits per fingerprint, none of them shared. */
            uint64_t set = 0;
            for (j = 0; j < 64; j++) {
                set += ctpop8(line[j]);
            }
            g_assert_cmpuint(set, <=, MEMDEDUP_BLOOM_PROBES * (i + 1));
            g_assert_cmpuint(set, >=, MEMDEDUP_BLOOM_PROBES);
        }
    }
    g_rand_set_seed(rand, 11);
    for (i = 0; i < n; i++) {
        g_assert_true(memdedup_bloom_test(filter, bits, g_rand_int(rand) &
                                                        ~1u));
    }
    for (i = 0; i < probes; i++) {
        fp_hits += memdedup_bloom_test(filter, bits, g_rand_int(rand) | 1);
    }
    g_test_message("false positives: %" PRIu64 " of %" PRIu64, fp_hits,
                   probes);
    g_assert_cmpuint(fp_hits * 10000, <, probes * 15);

    /* A filter smaller than a line is one line. */
    memdedup_bloom_add(small, 64, 12345);
    g_assert_true(memdedup_bloom_test(small, 64, 12345));
    g_assert_true(memdedup_bloom_line(small, 64, 12345) == small);
}

/*
 * A peer's filter is used only if its page count can have set its bits
 * (memdedup_bloom_plausible): honest filters of any size pass, at 16 or
 * fewer bits per page, a multiple of 512 bits that is no power of two
 * included; all-ones, a filter filled beyond its count, bits in a
 * filter said to be empty, and the right number of bits packed into
 * some lines (matching far more than an honest filter) do not.
 */
static void test_bloom_plausible(void)
{
    static const uint64_t sizes[] = { 512, 512 * 3, 1 << 16, 512 * 1000 };
    g_autoptr(GRand) rand = g_rand_new_with_seed(5);
    size_t k;

    for (k = 0; k < ARRAY_SIZE(sizes); k++) {
        uint64_t bits = sizes[k], pages = bits / 16, i;
        g_autofree uint8_t *filter = g_malloc0(bits / 8);

        g_assert_true(memdedup_bloom_plausible(filter, bits, 0));
        for (i = 0; i < pages; i++) {
            memdedup_bloom_add(filter, bits, g_rand_int(rand));
        }
        g_assert_true(memdedup_bloom_plausible(filter, bits, pages));
        /* Said to hold a third of what it holds: too full. */
        g_assert_false(memdedup_bloom_plausible(filter, bits, pages / 3));
        g_assert_false(memdedup_bloom_plausible(filter, bits, 0));
        memset(filter, 0xff, bits / 8);
        g_assert_false(memdedup_bloom_plausible(filter, bits, pages));
        /*
         * As many bits as an honest filter sets, packed into whole
         * lines: a third of the fingerprints would match.
         */
        if (bits >= 3 * 512) {
            memset(filter, 0, bits / 8);
            memset(filter, 0xff, bits / 8 / 3 / 64 * 64);
            g_assert_false(memdedup_bloom_plausible(filter, bits, pages));
        }
        /* Every fingerprint's line is inside the filter. */
        for (i = 0; i < 1000; i++) {
            const uint8_t *line = memdedup_bloom_line(filter, bits,
                                                      g_rand_int(rand));

            g_assert_cmpuint(line - filter + 64, <=, bits / 8);
        }
    }
}

/*
 * What one page's board lookup costs against the number of peers: its
 * key once, then one Bloom test, one cache line, per peer's filter,
 * loaded MEMDEDUP_LOOKAHEAD pages ahead, as memdedup_board_lookup and
 * memdedup_board_prefetch do.
 * Each peer holds 1 GiB of guest RAM (a 512 KiB filter).  Timing only:
 * run with -m perf (docs/devel/memdedup.rst quotes it).
 */
static void test_bloom_lookup_cost(void)
{
    const uint64_t pages = 256 * 1024, bits = pages * 16;
    const uint64_t lookups = 1 << 21;
    static const unsigned peers[] = { 1, 2, 4, 8, 16 };
    g_autoptr(GRand) rand = g_rand_new_with_seed(9);
    g_autofree uint32_t *fps = g_new(uint32_t, lookups);
    uint8_t *filters[16];
    uint64_t i, hits = 0;
    size_t k, n;

    for (k = 0; k < ARRAY_SIZE(filters); k++) {
        filters[k] = g_malloc0(bits / 8);
        for (i = 0; i < pages; i++) {
            memdedup_bloom_add(filters[k], bits, g_rand_int(rand));
        }
    }
    for (i = 0; i < lookups; i++) {
        fps[i] = g_rand_int(rand);
    }
    for (n = 0; n < ARRAY_SIZE(peers); n++) {
        int64_t start = g_get_monotonic_time();

        for (i = 0; i < lookups; i++) {
            MemdedupBloomKey key = memdedup_bloom_key(fps[i]);

            if (i + MEMDEDUP_LOOKAHEAD < lookups) {
                MemdedupBloomKey ahead =
                    memdedup_bloom_key(fps[i + MEMDEDUP_LOOKAHEAD]);

                for (k = 0; k < peers[n]; k++) {
                    __builtin_prefetch(memdedup_bloom_line_key(filters[k],
                                                               bits, ahead));
                }
            }
            for (k = 0; k < peers[n]; k++) {
                if (memdedup_bloom_test_key(filters[k], bits, key)) {
                    hits++;
                    break;
                }
            }
        }
        g_test_message("board lookup, %u peers: %.1f ns per page",
                       peers[n], (g_get_monotonic_time() - start) * 1000.0 /
                       lookups);
    }
    g_test_message("false positives: %" PRIu64, hits);
    for (k = 0; k < ARRAY_SIZE(filters); k++) {
        g_free(filters[k]);
    }
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

/* One formula for a region's counts: the rest of the resident is unique. */
static void test_region_counts(void)
{
    MemdedupRegion r = { .stable_passes = 3, .registered = true };

    memdedup_region_set_counts(&r, 512, 10, 100, 40);
    g_assert_cmpuint(r.resident, ==, 512);
    g_assert_cmpuint(r.zero, ==, 10);
    g_assert_cmpuint(r.duplicate, ==, 100);
    g_assert_cmpuint(r.cross_vm, ==, 40);
    g_assert_cmpuint(r.unique, ==, 362);
    /* Only the counts: the rest of the region's state stays. */
    g_assert_cmpuint(r.stable_passes, ==, 3);
    g_assert_true(r.registered);
    /* Everything a candidate: nothing unique. */
    memdedup_region_set_counts(&r, 512, 256, 200, 56);
    g_assert_cmpuint(r.unique, ==, 0);
    memdedup_region_set_counts(&r, 0, 0, 0, 0);
    g_assert_cmpuint(r.unique, ==, 0);
}

/* Wanted only for the duplicates other VMs hold (the board). */
static void test_region_cross_only(void)
{
    MemdedupParams targeted = params_for(MEMDEDUP_POLICY_TARGETED, 10);
    MemdedupParams all = params_for(MEMDEDUP_POLICY_ALL, 10);
    MemdedupRegion r = { 0 };

    /* 60 cross-VM pages of 512 make it wanted; 0 here would not. */
    memdedup_region_set_counts(&r, 512, 0, 0, 60);
    g_assert_true(memdedup_region_cross_only(&targeted, &r));
    /* Wanted for its own duplicates too: not cross-only. */
    memdedup_region_set_counts(&r, 512, 0, 60, 60);
    g_assert_false(memdedup_region_cross_only(&targeted, &r));
    /* Not wanted at all. */
    memdedup_region_set_counts(&r, 512, 0, 0, 20);
    g_assert_false(memdedup_region_cross_only(&targeted, &r));
    /* No cross-VM duplicates, or a policy that takes everything anyway. */
    memdedup_region_set_counts(&r, 512, 0, 0, 0);
    g_assert_false(memdedup_region_cross_only(&targeted, &r));
    memdedup_region_set_counts(&r, 512, 0, 0, 60);
    g_assert_false(memdedup_region_cross_only(&all, &r));
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

/* Copy-on-write churn: the walk over pagemap entries, and the backoff. */
static void test_cow_walk(void)
{
    const uint64_t shared = MEMDEDUP_PM_PRESENT;
    const uint64_t alone = MEMDEDUP_PM_PRESENT | MEMDEDUP_PM_EXCLUSIVE;
    uint64_t entries[8] = { shared, shared, shared, shared, shared,
                            MEMDEDUP_PM_PRESENT | MEMDEDUP_PM_FILE, 0,
                            shared };
    bool nonzero[8] = { true, true, true, true, false, true, true, true };
    unsigned long bits[BITS_TO_LONGS(16)] = { 0 };
    uint32_t sharing;

    /* First walk: nothing was shared before; non-zero shared pages now. */
    g_assert_cmpuint(memdedup_cow_walk(entries, nonzero, 8, bits, 8,
                                       &sharing), ==, 0);
    g_assert_cmpuint(sharing, ==, 5);
    g_assert_true(test_bit(8, bits) && test_bit(15, bits));
    g_assert_false(test_bit(12, bits) || test_bit(13, bits) ||
                   test_bit(14, bits));

    /*
     * Written (alone now): pages 0 and 1.  Page 2 swapped out: not
     * broken.  Page 3 still shared.  Page 4 (was zero) alone: not
     * counted.  Page 7 still shared.
     */
    entries[0] = entries[1] = alone;
    entries[2] = MEMDEDUP_PM_SWAPPED;
    entries[4] = alone;
    g_assert_cmpuint(memdedup_cow_walk(entries, nonzero, 8, bits, 8,
                                       &sharing), ==, 2);
    g_assert_cmpuint(sharing, ==, 2);
    /* Once counted, never again. */
    g_assert_cmpuint(memdedup_cow_walk(entries, nonzero, 8, bits, 8,
                                       &sharing), ==, 0);
}

static void test_cow_backoff(void)
{
    MemdedupParams p = params_for(MEMDEDUP_POLICY_TARGETED, 10);
    MemdedupRegion r = { .resident = 512, .duplicate = 512, .shared = 100 };
    int64_t t = 1000000;

    p.cow_threshold = 50;
    p.cow_backoff = 1000;
    /* Under the threshold, or too few pages: no churn. */
    g_assert_false(memdedup_cow_judge(&p, &r, 49, t));
    r.shared = 10;
    g_assert_false(memdedup_cow_judge(&p, &r, MEMDEDUP_COW_MIN_PAGES - 1,
                                      t));
    g_assert_false(r.cow_off);
    r.shared = 100;
    g_assert_true(memdedup_cow_judge(&p, &r, 50, t));
    g_assert_true(r.cow_off);
    g_assert_cmpint(r.cow_level, ==, 1);
    g_assert_cmpint(r.cow_until, ==, t + 1000);

    /* Not before its time; written meanwhile, its time starts again. */
    g_assert_false(memdedup_cow_release(&p, &r, t + 999));
    r.volatile_pages = 1;
    g_assert_false(memdedup_cow_release(&p, &r, t + 5000));
    g_assert_cmpint(r.cow_until, ==, t + 6000);
    r.volatile_pages = 0;
    g_assert_false(memdedup_cow_release(&p, &r, t + 5999));
    g_assert_true(memdedup_cow_release(&p, &r, t + 6000));
    g_assert_false(r.cow_off);
    t += 6000;

    /* Churning again: twice as long, up to 64 times. */
    g_assert_true(memdedup_cow_judge(&p, &r, 100, t));
    g_assert_cmpint(r.cow_until, ==, t + 2000);
    g_assert_cmpint(memdedup_cow_backoff_ms(1000, MEMDEDUP_COW_LEVEL_MAX),
                    ==, 64000);
    g_assert_cmpint(memdedup_cow_backoff_ms(1000, 200), ==, 64000);
    g_assert_true(memdedup_cow_release(&p, &r, t + 2000));
    t += 2000;

    /* Registered without churn for its last time off: down a level. */
    g_assert_false(memdedup_cow_judge(&p, &r, 0, t + 1999));
    g_assert_cmpint(r.cow_level, ==, 2);
    g_assert_false(memdedup_cow_judge(&p, &r, 0, t + 2000));
    g_assert_cmpint(r.cow_level, ==, 1);

    /* Threshold 0: never off. */
    p.cow_threshold = 0;
    g_assert_false(memdedup_cow_judge(&p, &r, 100, t + 3000));
    g_assert_false(r.cow_off);
}

/* Pairs ksmd's smart scan keeps apart: judged once, off, back, retried. */
static void test_rearm(void)
{
    MemdedupRegion r = { .resident = 512, .duplicate = 200, .cross_vm = 56 };
    uint64_t s = 1000;
    int tries;

    /* Not registered: nothing; registered: the wait starts. */
    g_assert_cmpint(memdedup_rearm_due(&r, s), ==, MEMDEDUP_REARM_NOTHING);
    g_assert_cmpint(r.rearm, ==, MEMDEDUP_REARM_IDLE);
    r.registered = true;
    g_assert_cmpint(memdedup_rearm_due(&r, s), ==, MEMDEDUP_REARM_NOTHING);
    g_assert_cmpint(r.rearm, ==, MEMDEDUP_REARM_WAIT);
    g_assert_cmpint(memdedup_rearm_due(&r, s + MEMDEDUP_REARM_SCANS - 1), ==,
                    MEMDEDUP_REARM_NOTHING);
    s += MEMDEDUP_REARM_SCANS;
    g_assert_cmpint(memdedup_rearm_due(&r, s), ==, MEMDEDUP_REARM_JUDGE);
    /*
     * All but 16 of the 256 duplicates merged (one in 16 left): judged,
     * left alone.  Half merged (ksmd passed the region while it was
     * written, and half its pages are in another rhythm): taken off.
     */
    g_assert_false(memdedup_rearm_judge(&r, 240));
    g_assert_cmpint(r.rearm, ==, MEMDEDUP_REARM_DONE);
    r.rearm = MEMDEDUP_REARM_WAIT;
    g_assert_true(memdedup_rearm_judge(&r, 239));
    g_assert_true(memdedup_rearm_judge(&r, 128));
    /* More shared than counted (merged with an unknown twin): merged. */
    g_assert_false(memdedup_rearm_judge(&r, 300));
    g_assert_cmpint(r.rearm, ==, MEMDEDUP_REARM_DONE);
    g_assert_cmpint(memdedup_rearm_due(&r, s + 1000), ==,
                    MEMDEDUP_REARM_NOTHING);

    /* Its duplicates more than doubled: judged again, later. */
    r.duplicate = 600;
    g_assert_cmpint(memdedup_rearm_due(&r, s), ==, MEMDEDUP_REARM_NOTHING);
    g_assert_cmpint(r.rearm, ==, MEMDEDUP_REARM_WAIT);
    s += MEMDEDUP_REARM_SCANS;
    for (tries = 1; tries <= MEMDEDUP_REARM_TRIES; tries++) {
        g_assert_cmpint(memdedup_rearm_due(&r, s), ==, MEMDEDUP_REARM_JUDGE);
        g_assert_true(memdedup_rearm_judge(&r, 327));
        r.registered = false;
        memdedup_rearm_set(&r, true, s);
        g_assert_cmpint(r.rearm_tries, ==, tries);
        /* Off until ksmd passed it twice. */
        g_assert_cmpint(memdedup_rearm_due(&r, s + 1), ==,
                        MEMDEDUP_REARM_NOTHING);
        s += MEMDEDUP_REARM_GAP_SCANS;
        g_assert_cmpint(memdedup_rearm_due(&r, s), ==,
                        MEMDEDUP_REARM_REGISTER);
        r.registered = true;
        memdedup_rearm_set(&r, false, s);
        /* Each try waits twice as long. */
        s += (uint64_t)MEMDEDUP_REARM_SCANS << tries;
        g_assert_cmpint(memdedup_rearm_due(&r, s - 1), ==,
                        MEMDEDUP_REARM_NOTHING);
    }
    /* Enough tries: left as it is. */
    g_assert_cmpint(memdedup_rearm_due(&r, s), ==, MEMDEDUP_REARM_JUDGE);
    g_assert_false(memdedup_rearm_judge(&r, 0));
    g_assert_cmpint(r.rearm, ==, MEMDEDUP_REARM_DONE);

    /*
     * Too few duplicates, or too few unmerged, to judge; unregistered by
     * the policy: idle.
     */
    r = (MemdedupRegion) { .resident = 512, .duplicate = 15,
                           .registered = true };
    memdedup_rearm_due(&r, s);
    g_assert_false(memdedup_rearm_judge(&r, 0));
    r.duplicate = 512;
    g_assert_false(memdedup_rearm_judge(&r, 512 - 512 / 16));
    g_assert_true(memdedup_rearm_judge(&r, 512 - 512 / 16 - 1));
    r.registered = false;
    g_assert_cmpint(memdedup_rearm_due(&r, s), ==, MEMDEDUP_REARM_NOTHING);
    g_assert_cmpint(r.rearm, ==, MEMDEDUP_REARM_IDLE);
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

typedef size_t (*RunsFn)(bool *flags, size_t n, size_t max_runs);

/* @fn on the flags @in with @max: @out, and @runs returned. */
static void check_runs(RunsFn fn, const char *in, size_t max,
                       const char *out, size_t runs)
{
    size_t n;
    g_autofree bool *f = flags_from(in, &n);
    g_autofree char *got = NULL;

    g_assert_cmpuint(fn(f, n, max), ==, runs);
    got = flags_to(f, n);
    g_assert_cmpstr(got, ==, out);
}

static void check_coalesce(const char *in, size_t max, const char *out,
                           size_t runs)
{
    check_runs(memdedup_coalesce_ranges, in, max, out, runs);
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

static void check_keep_longest(const char *in, size_t max, const char *out,
                               size_t runs)
{
    check_runs(memdedup_keep_longest_runs, in, max, out, runs);
}

/* Huge page runs within a VMA budget: the longest stay. */
static void test_keep_longest_runs(void)
{
    check_keep_longest("#.###.##", 3, "#.###.##", 3);
    check_keep_longest("#.###.##", 2, "..###.##", 2);
    check_keep_longest("#.###.##", 1, "..###...", 1);
    check_keep_longest("#.###.##", 0, "........", 0);
    /* Ties go to the first run. */
    check_keep_longest("##.##.##", 2, "##.##...", 2);
    check_keep_longest("", 1, "", 0);
}

/* A VMA per run of regions with equal flags. */
static void test_count_vmas(void)
{
    size_t n;
    g_autofree bool *reg = flags_from("##....##", &n);
    g_autofree bool *huge = flags_from("...##...", &n);
    g_autofree bool *alt = flags_from("#.#.#.#.", &n);

    g_assert_cmpuint(memdedup_count_vmas(reg, NULL, n), ==, 3);
    g_assert_cmpuint(memdedup_count_vmas(reg, huge, n), ==, 5);
    g_assert_cmpuint(memdedup_count_vmas(alt, NULL, n), ==, 8);
    g_assert_cmpuint(memdedup_count_vmas(reg, NULL, 0), ==, 0);
    g_assert_cmpuint(memdedup_count_vmas(reg, NULL, 1), ==, 1);
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

static void test_parse_stat_fields(void)
{
    g_auto(GStrv) all = memdedup_parse_stat_fields(
        "ksm_rmap_items 400123\nksm_zero_pages 17\n"
        "ksm_merging_pages 216000\nksm_process_profit -4096\n"
        "ksm_merge_any: no\nksm_mergeable: yes\n");
    g_auto(GStrv) old = memdedup_parse_stat_fields("ksm_rmap_items 5\n");
    g_auto(GStrv) none = memdedup_parse_stat_fields("");
    g_auto(GStrv) junk = memdedup_parse_stat_fields(
        "Ksm 1\n name 2\nnovalue\nempty:\nx\ty\n");
    g_autofree char *many = NULL, *long_name = g_strnfill(65, 'a');
    g_autofree char *text = g_strdup_printf("%s 1\nok 2\n", long_name);
    g_auto(GStrv) longer = memdedup_parse_stat_fields(text);
    GString *lines = g_string_new(NULL);
    g_auto(GStrv) capped = NULL;
    int i;

    g_assert_cmpuint(g_strv_length(all), ==, 6);
    g_assert_cmpstr(all[1], ==, "ksm_zero_pages");
    g_assert_cmpstr(all[5], ==, "ksm_mergeable");
    g_assert_cmpuint(g_strv_length(old), ==, 1);
    g_assert_cmpstr(old[0], ==, "ksm_rmap_items");
    g_assert_cmpuint(g_strv_length(none), ==, 0);
    g_assert_cmpuint(g_strv_length(junk), ==, 1);
    g_assert_cmpstr(junk[0], ==, "x");
    g_assert_cmpuint(g_strv_length(longer), ==, 1);
    g_assert_cmpstr(longer[0], ==, "ok");
    for (i = 0; i < 100; i++) {
        g_string_append_printf(lines, "f%d %d\n", i, i);
    }
    many = g_string_free(lines, false);
    capped = memdedup_parse_stat_fields(many);
    g_assert_cmpuint(g_strv_length(capped), ==, MEMDEDUP_STAT_FIELDS_MAX);
}

static void test_parse_selected(void)
{
    g_autofree char *thp = memdedup_parse_selected("always [madvise] never\n");
    g_autofree char *advisor = memdedup_parse_selected("[none] scan-time\n");
    g_autofree char *last = memdedup_parse_selected("none [scan-time]");

    g_assert_cmpstr(thp, ==, "madvise");
    g_assert_cmpstr(advisor, ==, "none");
    g_assert_cmpstr(last, ==, "scan-time");
    g_assert_null(memdedup_parse_selected("always madvise never"));
    g_assert_null(memdedup_parse_selected("[]"));
    g_assert_null(memdedup_parse_selected("[mad vise]"));
    g_assert_null(memdedup_parse_selected("[madvise"));
    g_assert_null(memdedup_parse_selected(
        "[aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]"));
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
/*
 * The merged bytes of a range that cuts VMAs: at least what is merged,
 * at most what the VMAs overlapping it hold, never 0 when they hold some
 * (admission control relies on it).
 */
static void test_smaps_merged_bound(void)
{
    g_auto(MemdedupSmapsView) view = { 0 };

    memdedup_smaps_view_parse(&view,
        "7f0000000000-7f0000600000 rw-p 00000000 00:00 0\n"
        "KSM:                3072 kB\n"
        "VmFlags: rd wr mg\n"
        "7f0000600000-7f0000800000 rw-p 00000000 00:00 0\n"
        "KSM:                   8 kB\n"
        "VmFlags: rd wr mg\n");
    /* Inside one VMA: at most the overlap, at most its merged bytes. */
    g_assert_cmpuint(memdedup_smaps_view_merged_bound(&view,
                     0x7f0000200000ULL, 0x7f0000400000ULL), ==, 2 * MiB);
    g_assert_cmpuint(memdedup_smaps_view_merged_bound(&view,
                     0x7f0000000000ULL, 0x7f0000600000ULL), ==, 3 * MiB);
    /* Straddling both. */
    g_assert_cmpuint(memdedup_smaps_view_merged_bound(&view,
                     0x7f0000500000ULL, 0x7f0000700000ULL), ==,
                     1 * MiB + 8 * KiB);
    /* Before, after, between: nothing. */
    g_assert_cmpuint(memdedup_smaps_view_merged_bound(&view, 0x1000, 0x2000),
                     ==, 0);
    g_assert_cmpuint(memdedup_smaps_view_merged_bound(&view,
                     0x7f0000800000ULL, UINT64_MAX), ==, 0);
}

/* Which cgroups limit QEMU, from /proc/self/cgroup. */
static void test_parse_proc_cgroup(void)
{
    g_autofree char *v2 = NULL;
    g_autofree char *v1 = NULL;

    memdedup_parse_proc_cgroup("12:pids:/a\n4:memory:/machine/qemu-1\n"
                               "0::/machine.slice/x:y\n", &v2, &v1);
    g_assert_cmpstr(v2, ==, "/machine.slice/x:y");
    g_assert_cmpstr(v1, ==, "/machine/qemu-1");
    g_free(v2);
    g_free(v1);
    /* Co-mounted controllers; no unified line. */
    memdedup_parse_proc_cgroup("3:cpu,memory:/k8s/pod\n", &v2, &v1);
    g_assert_null(v2);
    g_assert_cmpstr(v1, ==, "/k8s/pod");
    g_free(v1);
    /* What cannot be joined to a mount point is ignored. */
    memdedup_parse_proc_cgroup("0::/../etc\n4:memory:relative\n", &v2,
                               &v1);
    g_assert_null(v2);
    g_assert_null(v1);
    memdedup_parse_proc_cgroup("", &v2, &v1);
    g_assert_null(v2);
    g_assert_null(v1);
}

static void test_admission_cgroup(void)
{
    /* A 1 GiB limit keeps 51.2 MiB free. */
    g_assert_true(memdedup_unmerge_admissible_cgroup(0, 0, GiB));
    g_assert_true(memdedup_unmerge_admissible_cgroup(100 * MiB, 200 * MiB,
                                                     GiB));
    g_assert_false(memdedup_unmerge_admissible_cgroup(150 * MiB, 200 * MiB,
                                                      GiB));
    g_assert_false(memdedup_unmerge_admissible_cgroup(1, 32 * MiB, GiB));
}

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
        if (n == 0) {
            MemdedupKsmShares shares = { 0 };
            int kpagecount = open("/proc/kpagecount", O_RDONLY);

            /* Nothing merged: no share, whatever the counts say. */
            g_assert_true(memdedup_count_ksm_shares(
                pagemap, kpageflags, kpagecount, (uintptr_t)mem, len,
                &shares));
            g_assert_cmpuint(shares.pages, ==, 0);
            g_assert_cmpuint(shares.attributed, ==, 0);
            if (kpagecount >= 0) {
                close(kpagecount);
            }
        }
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

/* ------------------------------------------------------------------ */
/* NUMA: placement, per-node index, re-homing                          */
/* ------------------------------------------------------------------ */

/* An injected placement: page i of the area at @base is on node[i]. */
typedef struct FakePlacement {
    uint8_t *base;
    int node[16];
    int calls;
    bool fail;
} FakePlacement;

static int fake_placement(void *opaque, unsigned long count, void **pages,
                          int *status)
{
    FakePlacement *fp = opaque;
    unsigned long i;

    fp->calls++;
    if (fp->fail) {
        errno = EPERM;
        return -1;
    }
    for (i = 0; i < count; i++) {
        size_t page = ((uint8_t *)pages[i] - fp->base) / PAGE;
        g_assert_cmpuint(page, <, ARRAY_SIZE(fp->node));
        status[i] = fp->node[page];
    }
    return 0;
}

static void test_numa_node_list(void)
{
    unsigned long nodes[BITS_TO_LONGS(MEMDEDUP_NUMA_NODES_MAX)];

    g_assert_true(memdedup_parse_node_list("0\n", nodes, 64));
    g_assert_cmpint(bitmap_count_one(nodes, 64), ==, 1);
    g_assert_true(test_bit(0, nodes));
    g_assert_true(memdedup_parse_node_list("0-3,8,10-11\n", nodes, 64));
    g_assert_cmpint(bitmap_count_one(nodes, 64), ==, 7);
    g_assert_true(test_bit(3, nodes) && test_bit(8, nodes) &&
                  test_bit(11, nodes) && !test_bit(9, nodes));
    g_assert_true(memdedup_parse_node_list("\n", nodes, 64));
    g_assert_cmpint(bitmap_count_one(nodes, 64), ==, 0);
    g_assert_false(memdedup_parse_node_list("3-1", nodes, 64));
    g_assert_false(memdedup_parse_node_list("0,", nodes, 64));
    g_assert_false(memdedup_parse_node_list("0-", nodes, 64));
    g_assert_false(memdedup_parse_node_list("-1", nodes, 64));
    g_assert_false(memdedup_parse_node_list("x", nodes, 64));
    g_assert_false(memdedup_parse_node_list("0 1", nodes, 64));
    g_assert_false(memdedup_parse_node_list("64", nodes, 64));
    g_assert_true(memdedup_parse_node_list("63", nodes, 64));
}

static void test_numa_place_pages(void)
{
    uint8_t area[8 * PAGE];
    FakePlacement fake = { .base = area, .node = { 0, 0, 1, 1, 0, 1, 0, 1 } };
    bool present[8] = { true, true, true, false, true, true, true, true };
    int8_t nodes[8];
    void *addrs[8];
    int status[8];
    int i;

    for (i = 0; i < 8; i++) {
        nodes[i] = MEMDEDUP_NODE_UNKNOWN;
    }
    /* First sight: nothing was re-homed; absent pages have no node. */
    g_assert_cmpuint(memdedup_numa_place_pages(fake_placement, &fake, area,
                                               PAGE, present, 8, nodes,
                                               addrs, status), ==, 0);
    g_assert_cmpint(fake.calls, ==, 1);
    g_assert_cmpint(nodes[0], ==, 0);
    g_assert_cmpint(nodes[2], ==, 1);
    g_assert_cmpint(nodes[3], ==, MEMDEDUP_NODE_UNKNOWN);
    g_assert_cmpint(nodes[5], ==, 1);

    /* Pages 0 and 5 move; page 6 goes away; page 3 comes back on 0. */
    fake.node[0] = 1;
    fake.node[5] = 0;
    fake.node[3] = 0;
    present[6] = false;
    present[3] = true;
    g_assert_cmpuint(memdedup_numa_place_pages(fake_placement, &fake, area,
                                               PAGE, present, 8, nodes,
                                               addrs, status), ==, 2);
    g_assert_cmpint(nodes[0], ==, 1);
    g_assert_cmpint(nodes[5], ==, 0);
    g_assert_cmpint(nodes[6], ==, MEMDEDUP_NODE_UNKNOWN);
    g_assert_cmpint(nodes[3], ==, 0);

    /* A per-page error (-EFAULT, -ENOENT) leaves that page unknown. */
    fake.node[1] = -EFAULT;
    memdedup_numa_place_pages(fake_placement, &fake, area, PAGE, present, 8,
                              nodes, addrs, status);
    g_assert_cmpint(nodes[1], ==, MEMDEDUP_NODE_UNKNOWN);
    g_assert_cmpint(nodes[2], ==, 1);

    /* The placement function failing as a whole: all unknown. */
    fake.fail = true;
    g_assert_cmpuint(memdedup_numa_place_pages(fake_placement, &fake, area,
                                               PAGE, present, 8, nodes,
                                               addrs, status), ==, 0);
    for (i = 0; i < 8; i++) {
        g_assert_cmpint(nodes[i], ==, MEMDEDUP_NODE_UNKNOWN);
    }

    /* No present page: the function is not called at all. */
    fake.fail = false;
    fake.calls = 0;
    memset(present, 0, sizeof(present));
    memdedup_numa_place_pages(fake_placement, &fake, area, PAGE, present, 8,
                              nodes, addrs, status);
    g_assert_cmpint(fake.calls, ==, 0);
}

/*
 * Two blocks of eight pages, placed by an injected function: block A
 * on host node 0, block B on host node 1 (page 7 of B on node 0).
 * Fingerprints (Z: zero, -: absent):
 *   A: X  Y  Y  V  V  Z  -  U
 *   B: X  W  W  V  V  Q  Q  U
 * X: one copy per node (cross-node only); Y, W: twins within a node;
 * V: twins within each node and across; U: A's on node 0, B's page 7 on
 * node 0 too, so a twin within node 0.  Q: twins within node 1.
 */
enum { FX = 100, FY, FW, FV, FU, FQ };

typedef struct NumaFixture {
    uint8_t area[2][8 * PAGE];
    uint32_t fps[2][8];
    uint8_t hi[2][8];           /* high fingerprint bits: all 0 here */
    int8_t nodes[2][8];
    FakePlacement fake[2];
    MemdedupDupSet global;
    MemdedupNumaIndex idx;
} NumaFixture;

/* Place both blocks' pages as a pass would; returns the re-homed. */
static uint64_t numa_fixture_place(NumaFixture *f)
{
    bool present[8];
    void *addrs[8];
    int status[8];
    uint64_t rehomed = 0;
    int b, i;

    for (b = 0; b < 2; b++) {
        for (i = 0; i < 8; i++) {
            present[i] = f->fps[b][i] != MEMDEDUP_FP_ABSENT;
        }
        rehomed += memdedup_numa_place_pages(fake_placement, &f->fake[b],
                                             f->area[b], PAGE, present, 8,
                                             f->nodes[b], addrs, status);
    }
    return rehomed;
}

/* The end of a pass: global dup set, then the per-node bits. */
static void numa_fixture_index(NumaFixture *f)
{
    MemdedupFpArray pages[2];
    unsigned nr_nodes;
    int b;

    for (b = 0; b < 2; b++) {
        pages[b] = (MemdedupFpArray) {
            .lo = f->fps[b], .hi = f->hi[b], .nodes = f->nodes[b],
            .nr_pages = 8,
        };
    }
    nr_nodes = memdedup_numa_nodes_in_use(pages, 2);
    g_assert_true(memdedup_dupset_build(&f->global, pages, 2, UINT64_MAX,
                                        nr_nodes));
    g_assert_true(memdedup_numa_index_build(&f->idx, &f->global, pages, 2,
                                            nr_nodes));
}

/* The next pass: place the pages, then rebuild the index; re-homed. */
static uint64_t numa_fixture_pass(NumaFixture *f)
{
    uint64_t rehomed = numa_fixture_place(f);

    numa_fixture_index(f);
    return rehomed;
}

static void numa_fixture_init(NumaFixture *f)
{
    static const uint32_t fps[2][8] = {
        { FX, FY, FY, FV, FV, MEMDEDUP_FP_ZERO, MEMDEDUP_FP_ABSENT, FU },
        { FX, FW, FW, FV, FV, FQ, FQ, FU },
    };
    int b, i;

    memset(f, 0, sizeof(*f));
    memcpy(f->fps, fps, sizeof(fps));
    for (b = 0; b < 2; b++) {
        f->fake[b].base = f->area[b];
        for (i = 0; i < 8; i++) {
            f->fake[b].node[i] = b;
            f->nodes[b][i] = MEMDEDUP_NODE_UNKNOWN;
        }
    }
    f->fake[1].node[7] = 0;
    numa_fixture_pass(f);
}

static void numa_fixture_free(NumaFixture *f)
{
    memdedup_dupset_clear(&f->global);
    memdedup_numa_index_clear(&f->idx);
}

static MemdedupDupKind numa_kind(NumaFixture *f, int b, int page)
{
    return memdedup_numa_classify(&f->idx, &f->global, f->fps[b][page],
                                  f->nodes[b][page], NULL);
}

/*
 * Per-node statistics of @pages, page by page as the engine's summary
 * loop counts them (memdedup_numa_find): classified, then counted.
 */
static void numa_count(const MemdedupNumaIndex *idx,
                       const MemdedupDupSet *global,
                       const MemdedupFpArray *pages,
                       MemdedupNumaStats *stats)
{
    uint64_t p;

    for (p = 0; p < pages->nr_pages; p++) {
        MemdedupFp fp = memdedup_fp_at(pages, p);
        int node = pages->nodes[p];
        MemdedupDupKind kind = MEMDEDUP_DUP_NONE;

        if (fp > MEMDEDUP_FP_ZERO && node >= 0 &&
            node < MEMDEDUP_NUMA_NODES_MAX) {
            kind = memdedup_numa_classify(idx, global, fp, node, NULL);
        }
        memdedup_numa_count_page(stats, fp, node, kind);
    }
}

static void test_numa_partition(void)
{
    NumaFixture f;
    MemdedupNumaStats st[2];
    MemdedupFpArray pages;
    ssize_t s0, s1;
    int b, candidates[2][2] = { { 0 } };

    numa_fixture_init(&f);
    g_assert_cmpuint(f.idx.nr_nodes, ==, 2);
    g_assert_cmpint(numa_kind(&f, 0, 0), ==, MEMDEDUP_DUP_CROSS_NODE);
    g_assert_cmpint(numa_kind(&f, 1, 0), ==, MEMDEDUP_DUP_CROSS_NODE);
    g_assert_cmpint(numa_kind(&f, 0, 1), ==, MEMDEDUP_DUP_WITHIN_NODE);
    g_assert_cmpint(numa_kind(&f, 1, 2), ==, MEMDEDUP_DUP_WITHIN_NODE);
    g_assert_cmpint(numa_kind(&f, 0, 3), ==, MEMDEDUP_DUP_WITHIN_NODE);
    g_assert_cmpint(numa_kind(&f, 1, 7), ==, MEMDEDUP_DUP_WITHIN_NODE);
    g_assert_cmpint(numa_kind(&f, 1, 5), ==, MEMDEDUP_DUP_WITHIN_NODE);

    /* Candidates per (partitioned, block): X counts only in one tree. */
    for (int part = 0; part < 2; part++) {
        f.idx.partitioned = part;
        for (b = 0; b < 2; b++) {
            for (int i = 0; i < 8; i++) {
                if (f.fps[b][i] > MEMDEDUP_FP_ZERO &&
                    memdedup_numa_candidate(&f.idx, numa_kind(&f, b, i))) {
                    candidates[part][b]++;
                }
            }
        }
    }
    g_assert_cmpint(candidates[0][0], ==, 6);   /* X Y Y V V U */
    g_assert_cmpint(candidates[0][1], ==, 8);
    g_assert_cmpint(candidates[1][0], ==, 5);   /* all but X */
    g_assert_cmpint(candidates[1][1], ==, 7);

    /* Slots: one per mergeable group; per node when partitioned. */
    f.idx.partitioned = true;
    memdedup_numa_classify(&f.idx, &f.global, FV, 0, &s0);
    memdedup_numa_classify(&f.idx, &f.global, FV, 1, &s1);
    g_assert_cmpint(s0, >=, 0);
    g_assert_cmpint(s1, >=, 0);
    g_assert_cmpint(s0, !=, s1);
    g_assert_cmpint(s0, <, memdedup_numa_slots(&f.idx, &f.global));
    g_assert_cmpint(s1, <, memdedup_numa_slots(&f.idx, &f.global));
    memdedup_numa_classify(&f.idx, &f.global, FX, 0, &s0);
    g_assert_cmpint(s0, ==, -1);
    f.idx.partitioned = false;
    memdedup_numa_classify(&f.idx, &f.global, FV, 0, &s0);
    memdedup_numa_classify(&f.idx, &f.global, FV, 1, &s1);
    g_assert_cmpint(s0, ==, s1);
    memdedup_numa_classify(&f.idx, &f.global, FX, 1, &s1);
    g_assert_cmpint(s1, >=, 0);

    /* Per-node statistics, whatever the partitioning. */
    for (b = 0; b < 2; b++) {
        memset(&st[b], 0, sizeof(st[b]));
        pages = (MemdedupFpArray) {
            .lo = f.fps[b], .hi = f.hi[b], .nodes = f.nodes[b],
            .nr_pages = 8,
        };
        numa_count(&f.idx, &f.global, &pages, &st[b]);
    }
    g_assert_cmpuint(st[0].node[0].resident, ==, 7);
    g_assert_cmpuint(st[0].node[0].duplicate, ==, 5);
    g_assert_cmpuint(st[0].node[0].cross_node, ==, 1);
    g_assert_cmpuint(st[0].node[1].resident, ==, 0);
    g_assert_cmpuint(st[1].node[1].resident, ==, 7);
    g_assert_cmpuint(st[1].node[1].duplicate, ==, 6);
    g_assert_cmpuint(st[1].node[1].cross_node, ==, 1);
    g_assert_cmpuint(st[1].node[0].resident, ==, 1);
    g_assert_cmpuint(st[1].node[0].duplicate, ==, 1);
    g_assert_cmpuint(st[0].unknown + st[1].unknown, ==, 0);
    numa_fixture_free(&f);
}

static void test_numa_rehome(void)
{
    NumaFixture f;
    int i;

    numa_fixture_init(&f);
    f.idx.partitioned = true;
    g_assert_false(memdedup_numa_candidate(&f.idx, numa_kind(&f, 1, 0)));

    /* B's X moves to node 0 (NUMA balancing): noticed, then re-homed. */
    f.fake[1].node[0] = 0;
    g_assert_cmpuint(numa_fixture_pass(&f), ==, 1);
    g_assert_cmpint(numa_kind(&f, 0, 0), ==, MEMDEDUP_DUP_WITHIN_NODE);
    g_assert_cmpint(numa_kind(&f, 1, 0), ==, MEMDEDUP_DUP_WITHIN_NODE);
    g_assert_true(memdedup_numa_candidate(&f.idx, numa_kind(&f, 1, 0)));

    /* U of B moves back to node 1: now U has twins only across. */
    f.fake[1].node[7] = 1;
    g_assert_cmpuint(numa_fixture_pass(&f), ==, 1);
    g_assert_cmpint(numa_kind(&f, 0, 7), ==, MEMDEDUP_DUP_CROSS_NODE);
    g_assert_cmpint(numa_kind(&f, 1, 7), ==, MEMDEDUP_DUP_CROSS_NODE);

    /* Everything on node 0: one domain again, no node sets. */
    for (i = 0; i < 8; i++) {
        f.fake[1].node[i] = 0;
    }
    g_assert_cmpuint(numa_fixture_pass(&f), ==, 7);   /* all but X */
    g_assert_cmpuint(f.idx.nr_nodes, ==, 0);
    for (i = 0; i < 8; i++) {
        if (f.fps[0][i] > MEMDEDUP_FP_ZERO) {
            g_assert_cmpint(numa_kind(&f, 0, i), ==,
                            MEMDEDUP_DUP_WITHIN_NODE);
        }
    }
    g_assert_cmpuint(memdedup_numa_slots(&f.idx, &f.global), ==,
                     f.global.len);
    numa_fixture_free(&f);
}

static void test_numa_unknown_node(void)
{
    NumaFixture f;
    ssize_t slot;

    numa_fixture_init(&f);
    f.idx.partitioned = true;
    /* A page whose node is unknown is judged by the global view. */
    g_assert_cmpint(memdedup_numa_classify(&f.idx, &f.global, FX,
                                           MEMDEDUP_NODE_UNKNOWN, &slot),
                    ==, MEMDEDUP_DUP_WITHIN_NODE);
    g_assert_cmpint(slot, >=, (ssize_t)(f.idx.len * f.idx.nr_nodes));
    g_assert_cmpint(slot, <, memdedup_numa_slots(&f.idx, &f.global));
    /* A node beyond those seen, likewise. */
    g_assert_cmpint(memdedup_numa_classify(&f.idx, &f.global, FX, 5, NULL),
                    ==, MEMDEDUP_DUP_WITHIN_NODE);
    /* Unique content is no duplicate on any node. */
    g_assert_cmpint(memdedup_numa_classify(&f.idx, &f.global, 12345, 0,
                                           &slot), ==, MEMDEDUP_DUP_NONE);
    g_assert_cmpint(slot, ==, -1);
    numa_fixture_free(&f);
}

/* The host's own move_pages: every touched page is on an online node. */
static void test_numa_move_pages(void)
{
    size_t n = 16, i;
    uint8_t *mem = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned long online[BITS_TO_LONGS(MEMDEDUP_NUMA_NODES_MAX)];
    bool present[16];
    int8_t nodes[16];
    void *addrs[16];
    int status[16];

    g_assert(mem != MAP_FAILED);
    /* Small pages: an mTHP write fault would make untouched ones present. */
    madvise(mem, n * PAGE, MADV_NOHUGEPAGE);
    g_assert_true(memdedup_read_host_nodes(online));
    for (i = 0; i < n; i++) {
        present[i] = i % 2 == 0;
        if (present[i]) {
            mem[i * PAGE] = 1;
        }
        nodes[i] = MEMDEDUP_NODE_UNKNOWN;
    }
    memdedup_numa_place_pages(memdedup_numa_move_pages, NULL, mem, PAGE,
                              present, n, nodes, addrs, status);
    for (i = 0; i < n; i++) {
        if (present[i]) {
            g_assert_cmpint(nodes[i], >=, 0);
            g_assert_true(test_bit(nodes[i], online));
        } else {
            g_assert_cmpint(nodes[i], ==, MEMDEDUP_NODE_UNKNOWN);
        }
    }
    /* Not resident: move_pages says -ENOENT for each. */
    addrs[0] = mem + PAGE;
    g_assert_cmpint(memdedup_numa_move_pages(NULL, 1, addrs, status), ==, 0);
    g_assert_cmpint(status[0], ==, -ENOENT);
    munmap(mem, n * PAGE);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/memdedup/fingerprint", test_fingerprint);
    g_test_add_func("/memdedup/fingerprint-is-xxh3",
                    test_fingerprint_is_xxh3);
    g_test_add_func("/memdedup/fingerprint-reserved",
                    test_fingerprint_reserved);
    g_test_add_func("/memdedup/hostile-collisions", test_hostile_collisions);
    g_test_add_func("/memdedup/sort", test_sort);
    g_test_add_func("/memdedup/count-repeats", test_count_repeats);
    g_test_add_func("/memdedup/rearm", test_rearm);
    g_test_add_func("/memdedup/dupset", test_dupset);
    g_test_add_func("/memdedup/dupset-indexed", test_dupset_indexed);
    g_test_add_func("/memdedup/dupset-budget", test_dupset_budget);
    g_test_add_func("/memdedup/dupset-no-memory", test_dupset_no_memory);
    g_test_add_func("/memdedup/false-duplicates", test_false_duplicates);
    g_test_add_func("/memdedup/board/bloom", test_bloom);
    g_test_add_func("/memdedup/board/bloom-plausible", test_bloom_plausible);
    if (g_test_perf()) {
        g_test_add_func("/memdedup/board/lookup-cost", test_bloom_lookup_cost);
    }
    g_test_add_func("/memdedup/region-wanted", test_region_wanted);
    g_test_add_func("/memdedup/region-counts", test_region_counts);
    g_test_add_func("/memdedup/region-cross-only", test_region_cross_only);
    g_test_add_func("/memdedup/region-thp", test_region_thp);
    g_test_add_func("/memdedup/coalesce", test_coalesce);
    g_test_add_func("/memdedup/keep-longest-runs", test_keep_longest_runs);
    g_test_add_func("/memdedup/count-vmas", test_count_vmas);
    g_test_add_func("/memdedup/admission", test_admission);
    g_test_add_func("/memdedup/parse-ksm-stat", test_parse_ksm_stat);
    g_test_add_func("/memdedup/parse-stat-fields", test_parse_stat_fields);
    g_test_add_func("/memdedup/parse-selected", test_parse_selected);
    g_test_add_func("/memdedup/parse-meminfo", test_parse_meminfo);
    g_test_add_func("/memdedup/parse-smaps", test_parse_smaps);
    g_test_add_func("/memdedup/count-ksm-pages", test_count_ksm_pages);
    g_test_add_func("/memdedup/smaps-merged-bound", test_smaps_merged_bound);
    g_test_add_func("/memdedup/parse-proc-cgroup", test_parse_proc_cgroup);
    g_test_add_func("/memdedup/admission-cgroup", test_admission_cgroup);
    g_test_add_func("/memdedup/policy-registers", test_policy_registers);
    g_test_add_func("/memdedup/cow/walk", test_cow_walk);
    g_test_add_func("/memdedup/cow/backoff", test_cow_backoff);
    g_test_add_func("/memdedup/numa/node-list", test_numa_node_list);
    g_test_add_func("/memdedup/numa/place-pages", test_numa_place_pages);
    g_test_add_func("/memdedup/numa/partition", test_numa_partition);
    g_test_add_func("/memdedup/numa/rehome", test_numa_rehome);
    g_test_add_func("/memdedup/numa/unknown-node", test_numa_unknown_node);
    g_test_add_func("/memdedup/numa/move-pages", test_numa_move_pages);
    return g_test_run();
}
