/*
 * libFuzzer target: memdedup's policy and duplicate index
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * Region summaries come from guest-controlled memory, and nothing forces
 * them to be consistent (a torn read, a region resized between passes):
 * the policy must decide on any summary without crashing, coalescing must
 * keep its promises (never drop a wanted region, never exceed the range
 * budget when gaps remain), admission control must not overflow, and the
 * fingerprint sort and dup set must agree with a reference count.  Built
 * and run by scripts/memdedup/fuzz.sh.
 */

#include "qemu/osdep.h"
#include "qemu/units.h"
#include "../../../hw/mem/memdedup/memdedup-core.h"
#include "fuzz.h"

typedef struct FuzzInput {
    const uint8_t *data;
    size_t size;
} FuzzInput;

static uint64_t take(FuzzInput *in, size_t bytes)
{
    uint64_t v = 0;

    bytes = MIN(bytes, in->size);
    memcpy(&v, in->data, bytes);
    in->data += bytes;
    in->size -= bytes;
    return v;
}

#define REGION_BYTES 15         /* input bytes per region summary */

static void fuzz_regions(FuzzInput *in)
{
    MemdedupParams params = {
        .policy = take(in, 1) % MEMDEDUP_POLICY__MAX,
        .region_size = 2 * MiB,
        /* Any byte: the engine validates 1-100, the policy must cope. */
        .duplicate_threshold = take(in, 1),
    };
    uint64_t pages_per_region = take(in, 2) + 1;
    size_t max_ranges = take(in, 1);
    size_t n = MIN(in->size / REGION_BYTES, 4096), i;
    g_autofree MemdedupRegion *regions = g_new0(MemdedupRegion, n + 1);
    g_autofree bool *wanted = g_new0(bool, n + 1);
    g_autofree bool *before = g_new0(bool, n + 1);
    uint8_t flags;
    size_t runs;

    flags = take(in, 1);
    params.manage_thp = flags & 1;
    params.force_unmerge = flags & 2;
    for (i = 0; i < n; i++) {
        MemdedupRegion *r = &regions[i];

        r->resident = take(in, 4);
        r->zero = take(in, 3);
        r->duplicate = take(in, 3);
        r->unique = take(in, 2);
        r->volatile_pages = take(in, 1);
        r->stable_passes = take(in, 1);
        flags = take(in, 1);
        r->seen_resident = flags & 1;
        r->registered = flags & 2;
        r->huge = flags & 4;

        wanted[i] = memdedup_region_wanted(&params, r);
        if (!memdedup_policy_registers(params.policy)) {
            g_assert(!wanted[i]);
        } else if (params.policy == MEMDEDUP_POLICY_ALL) {
            g_assert(wanted[i]);
        } else if (!r->resident && !r->registered) {
            g_assert(!wanted[i]);
        }
        if (memdedup_region_wants_thp(&params, r, pages_per_region)) {
            g_assert(params.manage_thp);
            g_assert_cmpuint(r->resident, ==, pages_per_region);
        }
    }

    memcpy(before, wanted, n * sizeof(bool));
    runs = memdedup_coalesce_ranges(wanted, n, max_ranges);
    g_assert_cmpuint(runs, ==, memdedup_count_runs(wanted, n));
    g_assert_cmpuint(runs, <=, MAX(max_ranges, 1));
    g_assert_cmpuint(runs, <=, memdedup_count_runs(before, n));
    for (i = 0; i < n; i++) {
        /* Coalescing only ever adds regions. */
        g_assert(!before[i] || wanted[i]);
    }
}

static void fuzz_admission(FuzzInput *in)
{
    uint64_t merged = take(in, 8), available = take(in, 8);
    uint64_t total = take(in, 8);

    if (memdedup_unmerge_admissible(merged, available, total) && merged) {
        /* Admitted: it fits, and the reserve is still free afterwards. */
        g_assert_cmpuint(merged, <=, available);
        g_assert_cmpuint(available - merged, >=,
                         total / 100 * MEMDEDUP_UNMERGE_RESERVE_PERCENT);
    }
    g_assert(memdedup_unmerge_admissible(0, available, total));
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

    return x < y ? -1 : x > y;
}

/* The radix sort sorts as qsort does. */
static void fuzz_sort(const uint32_t *v, size_t n)
{
    g_autofree uint32_t *fps = g_new(uint32_t, n + 1);
    g_autofree uint32_t *tmp = g_new(uint32_t, n + 1);
    g_autofree uint32_t *ref = g_new(uint32_t, n + 1);

    memcpy(fps, v, n * sizeof(*v));
    memcpy(ref, v, n * sizeof(*v));
    qsort(ref, n, sizeof(uint32_t), cmp_u32);
    memdedup_fp_sort(fps, tmp, n);
    g_assert(!memcmp(fps, ref, n * sizeof(uint32_t)));
}

/*
 * The dup set of fingerprints read 5 bytes each (low 32 bits, high 8),
 * within a budget the first byte picks: in the set only what occurs at
 * least twice, all of it when the budget allows, never more bytes than
 * the budget, and no fingerprint left out that has more copies than one
 * kept.
 */
static void fuzz_index(const uint8_t *data, size_t size)
{
    size_t n = 0, i, j;
    g_autofree uint32_t *lo = g_new(uint32_t, size / 5 + 1);
    g_autofree uint8_t *hi = g_new(uint8_t, size / 5 + 1);
    g_autofree uint64_t *ref = g_new(uint64_t, size / 5 + 1);
    MemdedupFpArray arr = { .lo = lo, .hi = hi };
    MemdedupDupSet set = { 0 };
    uint64_t budget = UINT64_MAX, kept_min = UINT64_MAX, dropped_max = 0;

    if (size && data[0] & 1) {
        budget = 1024 + (uint64_t)data[0] * 16;
    }
    /* Few distinct values, so that duplicates are common. */
    for (i = 1; i + 5 <= size; i += 5) {
        uint32_t fp;

        memcpy(&fp, data + i, 4);
        if (fp & 0x80000000) {
            fp &= 0xff;
        }
        lo[n] = fp;
        hi[n] = data[i + 4] & 0x81;
        ref[n] = memdedup_fp_join(lo[n], hi[n]);
        n++;
    }
    arr.nr_pages = n;
    fuzz_sort(lo, n);
    g_assert_true(memdedup_dupset_build(&set, &arr, 1, budget, 0));
    g_assert_cmpuint(memdedup_dupset_bytes(&set), <=, budget);
    qsort(ref, n, sizeof(*ref), cmp_u64);
    for (i = 0; i < n; i = j) {
        bool found = memdedup_dupset_find(&set, ref[i]) >= 0;

        for (j = i + 1; j < n && ref[j] == ref[i]; j++) {
            /* count the group */
        }
        if (memdedup_fp_lo(ref[i]) <= MEMDEDUP_FP_ZERO || j - i == 1) {
            g_assert_false(found);
        } else if (found) {
            kept_min = MIN(kept_min, MIN(j - i, 64));
        } else {
            g_assert_cmpuint(budget, !=, UINT64_MAX);
            dropped_max = MAX(dropped_max, MIN(j - i, 64));
        }
    }
    g_assert_cmpuint(dropped_max, <=, kept_min);
    g_assert_cmpint(memdedup_dupset_find(&set, MEMDEDUP_FP_ZERO), ==, -1);
    g_assert_cmpuint(set.len * 2, <=, n);
    memdedup_dupset_clear(&set);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FuzzInput in = { data, size };

    fuzz_admission(&in);
    fuzz_regions(&in);
    fuzz_index(data, size);
    return 0;
}
