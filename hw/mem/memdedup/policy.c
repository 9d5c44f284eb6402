/*
 * memdedup: which regions to register with KSM
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * Pure decisions over region summaries; the engine applies them with
 * madvise.  Three rules:
 *  - a region is registered when the share of its resident pages that
 *    are duplicate (here or, through the cross-VM board, in another VM)
 *    or zero reaches the backend's threshold (targeted), or
 *    that are zero (zero-only); real guest memory is bimodal at 2 MiB, so
 *    a low threshold covers nearly every duplicate while skipping unique
 *    memory;
 *  - registered runs are coalesced so that a backend never has more than
 *    a bounded number of VMAs (every madvise boundary splits one, and
 *    vm.max_map_count is 65530 by default);
 *  - unmerging may be refused: it turns every merged page back into a
 *    private copy, so it must fit in the host's MemAvailable.
 */

#include "qemu/osdep.h"
#include "memdedup-core.h"

bool memdedup_policy_registers(MemdedupPolicy policy)
{
    switch (policy) {
    case MEMDEDUP_POLICY_TARGETED:
    case MEMDEDUP_POLICY_ALL:
    case MEMDEDUP_POLICY_ZERO_ONLY:
        return true;
    default:
        return false;
    }
}

/*
 * Publishing on the board only helps a VM that registers what others
 * hold: targeted (cross-VM duplicates count towards a region) and all.
 * The others publish nothing, so a peer learns nothing of their content.
 */
bool memdedup_policy_publishes(MemdedupPolicy policy)
{
    return policy == MEMDEDUP_POLICY_TARGETED ||
           policy == MEMDEDUP_POLICY_ALL;
}

bool memdedup_region_wanted(const MemdedupParams *params,
                            const MemdedupRegion *r)
{
    uint64_t candidates;

    switch (params->policy) {
    case MEMDEDUP_POLICY_ALL:
        return true;
    case MEMDEDUP_POLICY_TARGETED:
        candidates = (uint64_t)r->zero + r->duplicate + r->cross_vm;
        break;
    case MEMDEDUP_POLICY_ZERO_ONLY:
        candidates = r->zero;
        break;
    default:
        return false;
    }
    /*
     * Nothing resident now, but there was (swapped out, or merged into
     * the zero page by KSM's use_zero_pages): no evidence either way, so
     * keep the region as it is; unregistering it would make the kernel
     * unmerge what it merged.  Never resident: nothing to register.
     */
    if (!r->resident) {
        return r->seen_resident && r->registered;
    }
    if (!candidates) {
        return false;
    }
    return candidates * 100 >= (uint64_t)params->duplicate_threshold *
                               r->resident;
}

/* Is @r wanted only because of its cross-VM duplicates? */
bool memdedup_region_cross_only(const MemdedupParams *params,
                                const MemdedupRegion *r)
{
    MemdedupRegion alone = *r;

    if (!r->cross_vm) {
        return false;
    }
    alone.cross_vm = 0;
    return memdedup_region_wanted(params, r) &&
           !memdedup_region_wanted(params, &alone);
}

void memdedup_region_set_counts(MemdedupRegion *r, uint32_t resident,
                                uint32_t zero, uint32_t duplicate,
                                uint32_t cross_vm)
{
    assert((uint64_t)zero + duplicate + cross_vm <= resident);
    r->resident = resident;
    r->zero = zero;
    r->duplicate = duplicate;
    r->cross_vm = cross_vm;
    r->unique = resident - zero - duplicate - cross_vm;
}

bool memdedup_region_wants_thp(const MemdedupParams *params,
                               const MemdedupRegion *r,
                               uint64_t pages_per_region)
{
    if (!params->manage_thp || params->policy == MEMDEDUP_POLICY_ALL ||
        params->policy == MEMDEDUP_POLICY_OFF) {
        return false;
    }
    /*
     * Collapsing fills the holes of a partly resident range, which would
     * grow RSS: only fully resident, stable, unique regions qualify.
     */
    return r->resident == pages_per_region &&
           r->stable_passes >= MEMDEDUP_THP_STABLE_PASSES &&
           (uint64_t)r->unique * 100 >=
               (uint64_t)MEMDEDUP_THP_UNIQUE_PERCENT * pages_per_region;
}

size_t memdedup_count_runs(const bool *flags, size_t n)
{
    size_t i, runs = 0;

    for (i = 0; i < n; i++) {
        if (flags[i] && (i == 0 || !flags[i - 1])) {
            runs++;
        }
    }
    return runs;
}

size_t memdedup_count_vmas(const bool *registered, const bool *huge,
                           size_t n)
{
    size_t i, vmas = n ? 1 : 0;

    for (i = 1; i < n; i++) {
        if (registered[i] != registered[i - 1] ||
            (huge && huge[i] != huge[i - 1])) {
            vmas++;
        }
    }
    return vmas;
}

typedef struct MemdedupRun {
    size_t start;               /* first region of the run */
    size_t len;                 /* regions in the run */
} MemdedupRun;

/* Longest first; among equals, the first first. */
static int memdedup_run_cmp_longest(const void *a, const void *b)
{
    const MemdedupRun *ra = a, *rb = b;

    if (ra->len != rb->len) {
        return ra->len > rb->len ? -1 : 1;
    }
    return ra->start < rb->start ? -1 : ra->start > rb->start;
}

size_t memdedup_keep_longest_runs(bool *flags, size_t n, size_t max_runs)
{
    size_t runs = memdedup_count_runs(flags, n), nr = 0, i, j;
    g_autofree MemdedupRun *all = NULL;

    if (runs <= max_runs) {
        return runs;
    }
    all = g_new(MemdedupRun, runs);
    for (i = 0; i < n; i = j) {
        for (j = i; j < n && flags[j] == flags[i]; j++) {
            /* extend the run */
        }
        if (flags[i]) {
            all[nr].start = i;
            all[nr].len = j - i;
            nr++;
        }
    }
    qsort(all, nr, sizeof(*all), memdedup_run_cmp_longest);
    for (i = max_runs; i < nr; i++) {
        memset(&flags[all[i].start], false, all[i].len);
    }
    return max_runs;
}

typedef struct MemdedupGap {
    size_t start;               /* first region of the gap */
    size_t len;                 /* regions in the gap */
} MemdedupGap;

static int memdedup_gap_cmp(const void *a, const void *b)
{
    const MemdedupGap *ga = a, *gb = b;

    if (ga->len != gb->len) {
        return ga->len < gb->len ? -1 : 1;
    }
    return ga->start < gb->start ? -1 : ga->start > gb->start;
}

size_t memdedup_coalesce_ranges(bool *wanted, size_t n, size_t max_ranges)
{
    size_t runs = memdedup_count_runs(wanted, n);
    g_autofree MemdedupGap *gaps = NULL;
    size_t ngaps = 0, i, fill;

    if (runs <= max_ranges || runs < 2) {
        return runs;
    }
    max_ranges = MAX(max_ranges, 1);

    /* Gaps lie strictly between two wanted runs. */
    gaps = g_new(MemdedupGap, runs - 1);
    for (i = 1; i < n; i++) {
        if (!wanted[i] && wanted[i - 1]) {
            size_t j = i;
            while (j < n && !wanted[j]) {
                j++;
            }
            if (j < n) {
                gaps[ngaps].start = i;
                gaps[ngaps].len = j - i;
                ngaps++;
            }
            i = j;
        }
    }
    qsort(gaps, ngaps, sizeof(*gaps), memdedup_gap_cmp);

    /* Each filled gap joins two runs into one. */
    fill = runs - max_ranges;
    for (i = 0; i < fill && i < ngaps; i++) {
        memset(&wanted[gaps[i].start], true, gaps[i].len);
    }
    return runs - MIN(fill, ngaps);
}

bool memdedup_unmerge_admissible(uint64_t merged_bytes,
                                 uint64_t mem_available, uint64_t mem_total)
{
    /* Computed so that no MemTotal can overflow it. */
    uint64_t reserve = mem_total / 100 * MEMDEDUP_UNMERGE_RESERVE_PERCENT +
                       mem_total % 100 * MEMDEDUP_UNMERGE_RESERVE_PERCENT / 100;

    if (!merged_bytes) {
        return true;
    }
    return mem_available > reserve && merged_bytes <= mem_available - reserve;
}

bool memdedup_unmerge_admissible_cgroup(uint64_t merged_bytes,
                                        uint64_t headroom, uint64_t limit)
{
    uint64_t reserve = limit / 100 * MEMDEDUP_UNMERGE_RESERVE_PERCENT +
                       limit % 100 * MEMDEDUP_UNMERGE_RESERVE_PERCENT / 100;

    if (!merged_bytes) {
        return true;
    }
    return headroom > reserve && merged_bytes <= headroom - reserve;
}

int64_t memdedup_cow_backoff_ms(uint32_t backoff, uint8_t level)
{
    level = MIN(MAX(level, 1), MEMDEDUP_COW_LEVEL_MAX);
    return (int64_t)backoff << (level - 1);
}

bool memdedup_cow_judge(const MemdedupParams *params, MemdedupRegion *r,
                        uint32_t broken, int64_t now_ms)
{
    uint64_t shared = r->shared;

    if (params->cow_threshold && broken >= MEMDEDUP_COW_MIN_PAGES &&
        (uint64_t)broken * 100 >= (uint64_t)params->cow_threshold * shared) {
        r->cow_level = MIN(r->cow_level + 1, MEMDEDUP_COW_LEVEL_MAX);
        r->cow_until = now_ms + memdedup_cow_backoff_ms(params->cow_backoff,
                                                        r->cow_level);
        r->cow_off = true;
        return true;
    }
    /* Registered again for as long as it was last off, quietly: relax. */
    if (r->cow_level && !r->cow_off &&
        now_ms >= r->cow_until + memdedup_cow_backoff_ms(params->cow_backoff,
                                                         r->cow_level)) {
        r->cow_level--;
        r->cow_until = now_ms;
    }
    return false;
}

bool memdedup_cow_release(const MemdedupParams *params, MemdedupRegion *r,
                          int64_t now_ms)
{
    if (!r->cow_off) {
        return false;
    }
    if (r->volatile_pages) {
        /* Still written: its whole time off starts again. */
        r->cow_until = MAX(r->cow_until,
                           now_ms + memdedup_cow_backoff_ms(params->cow_backoff,
                                                            r->cow_level));
        return false;
    }
    if (now_ms < r->cow_until) {
        return false;
    }
    r->cow_off = false;
    r->cow_until = now_ms;      /* from now on, the time registered */
    return true;
}

MemdedupRearmAction memdedup_rearm_due(MemdedupRegion *r, uint64_t scans)
{
    uint32_t expect = r->duplicate + r->cross_vm;

    if (r->rearm == MEMDEDUP_REARM_OFF) {
        return scans >= r->rearm_scan + MEMDEDUP_REARM_GAP_SCANS ?
               MEMDEDUP_REARM_REGISTER : MEMDEDUP_REARM_NOTHING;
    }
    if (!r->registered) {
        /* The policy let it go: start again at its next registration. */
        r->rearm = MEMDEDUP_REARM_IDLE;
        r->rearm_tries = 0;
        return MEMDEDUP_REARM_NOTHING;
    }
    switch (r->rearm) {
    case MEMDEDUP_REARM_IDLE:
        r->rearm = MEMDEDUP_REARM_WAIT;
        r->rearm_scan = scans;
        return MEMDEDUP_REARM_NOTHING;
    case MEMDEDUP_REARM_DONE:
        /* New duplicates came: KSM saw those pages later. */
        if (expect >= MEMDEDUP_REARM_MIN_PAGES &&
            expect > 2 * (uint64_t)r->rearm_expect) {
            r->rearm = MEMDEDUP_REARM_WAIT;
            r->rearm_scan = scans;
            r->rearm_tries = 0;
        }
        return MEMDEDUP_REARM_NOTHING;
    default:
        break;
    }
    return scans >= r->rearm_scan +
                    ((uint64_t)MEMDEDUP_REARM_SCANS << r->rearm_tries) ?
           MEMDEDUP_REARM_JUDGE : MEMDEDUP_REARM_NOTHING;
}

bool memdedup_rearm_judge(MemdedupRegion *r, uint32_t sharing)
{
    uint32_t expect = r->duplicate + r->cross_vm;
    uint32_t unmerged = expect - MIN(sharing, expect);

    r->rearm_expect = expect;
    if (unmerged < MEMDEDUP_REARM_MIN_PAGES ||
        unmerged <= expect / MEMDEDUP_REARM_UNMERGED_PART ||
        r->rearm_tries >= MEMDEDUP_REARM_TRIES) {
        r->rearm = MEMDEDUP_REARM_DONE;
        return false;
    }
    return true;
}

void memdedup_rearm_set(MemdedupRegion *r, bool off, uint64_t scans)
{
    r->rearm = off ? MEMDEDUP_REARM_OFF : MEMDEDUP_REARM_WAIT;
    r->rearm_scan = scans;
    r->rearm_tries += off;
}
