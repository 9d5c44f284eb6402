/*
 * memdedup: registration with KSM (madvise)
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * Everything the engine tells the kernel about guest RAM goes through
 * here: MADV_MERGEABLE and MADV_UNMERGEABLE (registration with KSM),
 * MADV_HUGEPAGE, MADV_NOHUGEPAGE and MADV_COLLAPSE (huge pages for the
 * regions KSM is not given).  A region's registered and huge flags are
 * set only after the kernel accepted the call, so what the engine
 * reports is what the kernel has; a refused run is advised again region
 * by region (every boundary the engine makes is a region boundary).
 * Unregistering is admission-controlled (memdedup_unmerge_check).
 * Only the scanner thread calls these; the registration it publishes
 * (MemdedupBlock.registration and .registered, under the engine lock)
 * is what QMP and migration read.
 */

#include "qemu/osdep.h"
#include "qemu/atomic.h"
#include "qemu/bitmap.h"
#include "qemu/error-report.h"
#include "qemu/lockable.h"
#include "qemu/rcu.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "memdedup-internal.h"
#include "trace.h"

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

/* MADV_COLLAPSE waits for ksmd's full scans at most this long. */
#define MEMDEDUP_COLLAPSE_MAX_WAIT_MS    (5 * 60 * 1000)

static bool memdedup_unmerge_warned;

static const char *memdedup_advice_name(int advice)
{
    switch (advice) {
    case MADV_MERGEABLE:
        return "MADV_MERGEABLE";
    case MADV_UNMERGEABLE:
        return "MADV_UNMERGEABLE";
    case MADV_HUGEPAGE:
        return "MADV_HUGEPAGE";
    case MADV_NOHUGEPAGE:
        return "MADV_NOHUGEPAGE";
    default:
        return "MADV_COLLAPSE";
    }
}

/* The VMAs @blk may be split into now.  Scanner threads. */
static uint32_t memdedup_vma_limit(MemdedupBlock *blk)
{
    return MIN(qatomic_read(&blk->vma_share), qatomic_read(&blk->vma_cap));
}

/*
 * The kernel refused advice for @blk with @err.  Counted and reported in
 * query-memdedup; warned about once per backend.  Out of VMAs
 * (vm.max_map_count reached, or no memory to split a VMA: madvise
 * reports EAGAIN, or ENOMEM on older kernels), the block's VMA cap is
 * halved from what the policy aimed at (never below
 * MEMDEDUP_VMA_SHARE_MIN: a block of a few VMAs is not what exhausts
 * the process), once per policy application however many regions were
 * refused, so that later passes coalesce into fewer VMAs.  Scanner
 * threads.
 */
static void memdedup_advise_failed(MemdedupBlock *blk, int advice, int err)
{
    bool thp = advice == MADV_HUGEPAGE || advice == MADV_NOHUGEPAGE;

    qatomic_inc(thp ? &blk->thp_advise_failures : &blk->advise_failures);
    if (!thp) {
        qatomic_set(&blk->advise_errno, err);
    }
    if ((err == EAGAIN || err == ENOMEM) &&
        !qatomic_xchg(&blk->vma_cut, true)) {
        uint32_t aimed = MIN(memdedup_vma_limit(blk),
                             MAX(qatomic_read(&blk->vma_target),
                                 qatomic_read(&blk->vmas)));

        qatomic_set(&blk->vma_cap, MAX(aimed / 2, MEMDEDUP_VMA_SHARE_MIN));
    }
    if (!qatomic_xchg(&blk->advise_warned, true)) {
        warn_report("memdedup: backend '%s': the kernel refused %s: %s%s",
                    blk->id, memdedup_advice_name(advice), strerror(err),
                    err == EAGAIN || err == ENOMEM ?
                    " (vm.max_map_count reached?); advising fewer, "
                    "larger ranges" : "");
    }
}

/*
 * madvise regions [@first, @first + @count) of @blk a chunk at a time
 * (MEMDEDUP_RCU_CHUNK, or MEMDEDUP_COPY_CHUNK for advice that copies),
 * each inside an RCU read-side section that saw the block alive, so the
 * RAM stays mapped.  False if the kernel refused a chunk
 * (the ones before it may have changed), the block went away or the
 * engine is paused.
 */
static bool memdedup_advise(MemdedupBlock *blk, uint64_t first,
                            uint64_t count, int advice)
{
    uint64_t region_size = blk->pages_per_region * blk->page_size;
    uint64_t start = first * region_size;
    uint64_t len = MIN(count * region_size, blk->size - start), done;
    uint64_t chunk = MEMDEDUP_RCU_CHUNK;
    int ret = 0, err = 0;

    /* Collapse needs whole huge pages in a chunk (both powers of two). */
    if (advice == MADV_COLLAPSE) {
        chunk = MAX(MEMDEDUP_COPY_CHUNK, memdedup_engine.thp_size);
    } else if (advice == MADV_UNMERGEABLE) {
        chunk = MEMDEDUP_COPY_CHUNK;
    }
    /* Paused for an incoming migration, only hints are applied. */
    if (qatomic_read(&memdedup_engine.paused) &&
        !qatomic_read(&memdedup_engine.incoming)) {
        return false;
    }
    for (done = 0; done < len && !ret; done += chunk) {
        WITH_RCU_READ_LOCK_GUARD() {
            if (qatomic_load_acquire(&blk->removed)) {
                return false;
            }
            ret = memdedup_madvise(blk->host + start + done,
                                   MIN(len - done, chunk), advice);
            err = ret ? errno : 0;
        }
    }
    trace_memdedup_advise(blk->id, start, len, advice, err);
    /* MADV_COLLAPSE is best effort: no memory for a huge page is normal. */
    if (ret && advice != MADV_COLLAPSE) {
        memdedup_advise_failed(blk, advice, err);
    }
    return ret == 0;
}

/* Is the host's THP mode other than "never"?  Read, never written. */
static bool memdedup_host_thp_allowed(void)
{
    g_autofree char *mode = NULL;

    if (!g_file_get_contents("/sys/kernel/mm/transparent_hugepage/enabled",
                             &mode, NULL, NULL)) {
        return false;
    }
    return !strstr(mode, "[never]");
}

/* Register one region at once, as soon as it qualifies (scanner). */
void memdedup_register_early(MemdedupBlock *blk, const MemdedupParams *params,
                             uint64_t region)
{
    MemdedupRegion *r = &blk->regions[region];

    if (r->registered || r->cow_off || r->rearm == MEMDEDUP_REARM_OFF ||
        !memdedup_region_wanted(params, r)) {
        return;
    }
    /* One region alone splits its VMA in three; else wait for the pass. */
    if (qatomic_read(&blk->vmas) + 2 > memdedup_vma_limit(blk)) {
        return;
    }
    if (r->huge) {
        memdedup_advise(blk, region, 1, MADV_NOHUGEPAGE);
        r->huge = false;
    }
    r->registered = memdedup_advise(blk, region, 1, MADV_MERGEABLE);
    if (r->registered) {
        qatomic_set(&blk->vmas, qatomic_read(&blk->vmas) + 2);
    }
}

/*
 * A run of regions [@first, @end) was refused: madvise works VMA by VMA,
 * so the kernel may have changed part of it.  Advise each region alone
 * (one region never spans two VMAs: every boundary the engine makes is
 * a region boundary) so that each region's state is known again, and
 * what the engine reports is what the kernel has.  Scanner thread.
 */
static void memdedup_advise_regions(MemdedupBlock *blk, uint64_t first,
                                    uint64_t end, bool mergeable)
{
    uint64_t k;

    for (k = first; k < end; k++) {
        if (memdedup_advise(blk, k, 1, mergeable ? MADV_MERGEABLE :
                                                   MADV_UNMERGEABLE)) {
            blk->regions[k].registered = mergeable;
            blk->regions[k].huge &= !mergeable;
        }
    }
}

/*
 * Register regions [@first, @end) with one call: small pages first, so
 * that KSM can merge them.  False (nothing marked) if the kernel refused.
 * Scanner thread.
 */
static bool memdedup_register_run(MemdedupBlock *blk, uint64_t first,
                                  uint64_t end)
{
    uint64_t k;

    memdedup_advise(blk, first, end - first, MADV_NOHUGEPAGE);
    if (!memdedup_advise(blk, first, end - first, MADV_MERGEABLE)) {
        return false;
    }
    for (k = first; k < end; k++) {
        blk->regions[k].registered = true;
        blk->regions[k].huge = false;
    }
    return true;
}

/*
 * Unregister regions [@first, @end) of @blk, if admission control lets
 * it unmerge them; else count a refusal.  True if it tried.
 */
static bool memdedup_unregister_run(MemdedupBlock *blk,
                                    const MemdedupParams *params,
                                    uint64_t first, uint64_t end,
                                    MemdedupSmapsView *smaps,
                                    uint64_t *refusals)
{
    uint64_t region_size = blk->pages_per_region * blk->page_size;
    uint64_t start = (uintptr_t)blk->host + first * region_size;
    uint64_t stop = MIN(start + (end - first) * region_size,
                        (uintptr_t)blk->host + blk->size);
    uint64_t merged, k;
    Error *local_err = NULL;

    if (!memdedup_unmerge_check(blk, start, stop, params->force_unmerge,
                                smaps, &merged, &local_err)) {
        /* Reported once per process; counted every time. */
        warn_report_once_cond(&memdedup_unmerge_warned, "%s",
                              error_get_pretty(local_err));
        error_free(local_err);
        (*refusals)++;
        return false;
    }
    if (memdedup_advise(blk, first, end - first, MADV_UNMERGEABLE)) {
        for (k = first; k < end; k++) {
            blk->regions[k].registered = false;
        }
        trace_memdedup_unmerge(blk->id, start, stop - start, merged);
    } else {
        memdedup_advise_regions(blk, first, end, false);
    }
    /* Unmerged by the kernel, not broken by the guest. */
    memdedup_cow_forget(blk, first, end);
    return true;
}

/*
 * Register and unregister @blk's regions as @wanted says, in runs of
 * equal changes.  True if some memory was unregistered.
 */
static bool memdedup_apply_registration(MemdedupBlock *blk,
                                        const MemdedupParams *params,
                                        const bool *wanted,
                                        uint64_t *refusals)
{
    g_auto(MemdedupSmapsView) smaps = { 0 };    /* read once, if needed */
    uint64_t failures = qatomic_read(&blk->advise_failures);
    uint64_t n = blk->nr_regions, i, j;
    bool unregistered = false;

    for (i = 0; i < n; i = j) {
        bool want = wanted[i];
        bool change = want != blk->regions[i].registered;

        for (j = i + 1; j < n && wanted[j] == want &&
             (want != blk->regions[j].registered) == change; j++) {
            /* extend the run */
        }
        if (!change) {
            continue;
        }
        if (!want) {
            unregistered |= memdedup_unregister_run(blk, params, i, j, &smaps,
                                                    refusals);
        } else if (!memdedup_register_run(blk, i, j)) {
            memdedup_advise_regions(blk, i, j, true);
        }
    }
    /* Everything applied: the last refusal is history. */
    if (qatomic_read(&blk->advise_failures) == failures) {
        qatomic_set(&blk->advise_errno, 0);
    }
    return unregistered;
}

/*
 * Huge pages as @huge says, in runs of equal changes: MADV_NOHUGEPAGE
 * for huge regions no longer meant to be (always: that also merges
 * VMAs), MADV_HUGEPAGE and MADV_COLLAPSE for new ones when @collapse.
 */
static void memdedup_apply_thp(MemdedupBlock *blk, const bool *huge,
                               bool collapse)
{
    uint64_t n = blk->nr_regions, i, j, k;

    for (i = 0; i < n; i = j) {
        MemdedupRegion *r = &blk->regions[i];
        bool want = huge[i] && !r->registered;
        bool change = want != r->huge && (!want || collapse);

        for (j = i + 1; j < n && (huge[j] && !blk->regions[j].registered) ==
             want && (want != blk->regions[j].huge) == (want != r->huge);
             j++) {
            /* extend the run */
        }
        if (!change) {
            continue;
        }
        if (memdedup_advise(blk, i, j - i, want ? MADV_HUGEPAGE :
                                                  MADV_NOHUGEPAGE)) {
            /* Best effort: no memory for a huge page is normal. */
            if (want && memdedup_engine.features.madv_collapse) {
                memdedup_advise(blk, i, j - i, MADV_COLLAPSE);
            }
            for (k = i; k < j; k++) {
                blk->regions[k].huge = want;
            }
        }
    }
}

/* The VMAs the regions' advice makes now. */
static uint32_t memdedup_block_vmas(MemdedupBlock *blk)
{
    uint64_t n = blk->nr_regions, i;
    g_autofree bool *registered = g_new(bool, n);
    g_autofree bool *huge = g_new(bool, n);

    for (i = 0; i < n; i++) {
        registered[i] = blk->regions[i].registered;
        huge[i] = blk->regions[i].huge;
    }
    return MIN(memdedup_count_vmas(registered, huge, n), UINT32_MAX);
}

bool memdedup_rearm_advise(MemdedupBlock *blk, const MemdedupParams *params,
                           uint64_t i, bool on)
{
    g_auto(MemdedupSmapsView) smaps = { 0 };
    uint64_t refusals = 0;

    if (on) {
        blk->regions[i].registered = memdedup_advise(blk, i, 1,
                                                     MADV_MERGEABLE);
    } else if (qatomic_read(&blk->vmas) + 2 > memdedup_vma_limit(blk) ||
               !memdedup_unregister_run(blk, params, i, i + 1, &smaps,
                                        &refusals)) {
        return false;
    }
    qatomic_set(&blk->vmas, memdedup_block_vmas(blk));
    return blk->regions[i].registered == on;
}

/*
 * Which regions get huge pages, within what @wanted leaves of @limit
 * VMAs: those huge already and the stable unique ones, longest runs
 * first (each run costs at most two VMAs).  Only where THP is managed,
 * the host allows it and a region can hold a huge page at all.
 */
static void memdedup_choose_thp(MemdedupBlock *blk,
                                const MemdedupParams *params,
                                const bool *wanted, uint32_t limit,
                                bool *huge)
{
    uint64_t n = blk->nr_regions, i;
    size_t left;

    /* The sysfs read last: most applies stop at the cheaper checks. */
    if (!params->manage_thp ||
        blk->pages_per_region * blk->page_size < memdedup_engine.thp_size ||
        !memdedup_host_thp_allowed()) {
        return;
    }
    left = limit - MIN(memdedup_count_vmas(wanted, NULL, n), limit);
    for (i = 0; i < n; i++) {
        uint64_t pages = MIN(blk->pages_per_region,
                             blk->nr_pages - i * blk->pages_per_region);

        huge[i] = !wanted[i] &&
                  (blk->regions[i].huge ||
                   (pages == blk->pages_per_region &&
                    memdedup_region_wants_thp(params, &blk->regions[i],
                                              blk->pages_per_region)));
    }
    memdedup_keep_longest_runs(huge, n, left / 2);
}

/*
 * Bring the registration of @blk in line with @params and the region
 * summaries: register wanted regions, unregister unwanted ones (subject
 * to admission control), give stable unique regions THP back.  Runs of
 * equal decisions are advised with one call.  Within the block's VMA
 * limit: wanted ranges are coalesced so that they fit, and huge pages
 * get what the ranges leave.  True if some memory was unregistered (and
 * so unmerged).  Scanner thread only.
 */
bool memdedup_apply_policy(MemdedupBlock *blk, const MemdedupParams *params,
                           bool collapse, uint64_t *refusals)
{
    uint64_t n = blk->nr_regions, i;
    g_autofree bool *wanted = g_new(bool, n);
    g_autofree bool *huge = g_new0(bool, n);
    uint32_t limit = MAX(memdedup_vma_limit(blk), 3);
    bool unregistered;

    for (i = 0; i < n; i++) {
        wanted[i] = memdedup_region_wanted(params, &blk->regions[i]);
    }
    qatomic_set(&blk->vma_cut, false);
    /* Registration first: each range costs at most two VMAs. */
    memdedup_coalesce_ranges(wanted, n, (limit - 1) / 2);
    /*
     * Regions off KSM for their copy-on-write churn stay off, even in a
     * gap the coalescing filled (at most two VMAs more each).
     */
    for (i = 0; i < n && params->cow_threshold; i++) {
        wanted[i] &= !blk->regions[i].cow_off;
    }
    /* ... as do those waiting for ksmd to forget them (rearm.c). */
    for (i = 0; i < n; i++) {
        wanted[i] &= blk->regions[i].rearm != MEMDEDUP_REARM_OFF;
    }
    memdedup_choose_thp(blk, params, wanted, limit, huge);
    qatomic_set(&blk->vma_target,
                MIN(memdedup_count_vmas(wanted, huge, n), UINT32_MAX));
    unregistered = memdedup_apply_registration(blk, params, wanted, refusals);
    memdedup_apply_thp(blk, huge, collapse);
    qatomic_set(&blk->vmas, memdedup_block_vmas(blk));
    return unregistered;
}

/*
 * May stable unique regions get huge pages back in this pass?
 * MADV_COLLAPSE copies each of them into a new huge page: CPU time and
 * memory bandwidth taken from ksmd while it merges what the engine just
 * registered.  So collapsing waits until ksmd has completed
 * MEMDEDUP_COLLAPSE_AFTER_SCANS full scans (/sys/kernel/mm/ksm/full_scans)
 * since the engine's first registration: one to end the scan in
 * progress, one in which KSM records the new pages' checksums, one in
 * which it merges them.  After that, collapsing is never held back again.
 * Nothing to wait for while nothing is registered, ksmd is not running
 * (run is not 1) or its counters cannot be read; and never longer than
 * MEMDEDUP_COLLAPSE_MAX_WAIT_MS (full scans of a host with much more
 * mergeable memory, at a slow rate, can take hours).  Scanner thread.
 */
bool memdedup_collapse_allowed(MemdedupEngine *engine,
                               const MemdedupPass *pass)
{
    uint64_t run, scans;
    bool registered = false;
    size_t b;

    /*
     * A partial pass follows memory that is filling: collapsing, and
     * arming the wait for ksmd, is for full passes.
     */
    if (pass->partial) {
        return false;
    }
    if (engine->collapse_released) {
        return true;
    }
    for (b = 0; b < pass->nr_blocks && !registered; b++) {
        const MemdedupBlock *blk = pass->blocks[b].blk;

        for (uint64_t i = 0; i < blk->nr_regions && !registered; i++) {
            registered = blk->regions[i].registered;
        }
    }
    if (!registered || !memdedup_read_ksm_knob("run", &run) || run != 1 ||
        !memdedup_read_ksm_knob("full_scans", &scans)) {
        return true;
    }
    if (engine->collapse_after_scans < 0) {
        engine->collapse_after_scans = scans + MEMDEDUP_COLLAPSE_AFTER_SCANS;
        engine->collapse_wait_start = qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
    }
    if (scans < (uint64_t)engine->collapse_after_scans &&
        qemu_clock_get_ms(QEMU_CLOCK_REALTIME) - engine->collapse_wait_start <
        MEMDEDUP_COLLAPSE_MAX_WAIT_MS) {
        trace_memdedup_collapse_held(scans, engine->collapse_after_scans);
        return false;
    }
    engine->collapse_released = true;
    return true;
}

/*
 * Publish @blk's registration as its regions have it -- registered
 * bytes, ranges, huge regions and the registered bitmap -- and add
 * @refusals unmerges refused and @hinted regions registered from
 * migration hints.  The one writer of MemdedupBlock.registration and
 * .registered.  Scanner thread; takes the engine lock.  Returns the
 * registered bytes.
 */
uint64_t memdedup_publish_registration(MemdedupEngine *engine,
                                       MemdedupBlock *blk, uint64_t refusals,
                                       uint64_t hinted)
{
    uint64_t region_size = blk->pages_per_region * blk->page_size;
    uint64_t bytes = 0, ranges = 0, huge = 0, i;

    QEMU_LOCK_GUARD(&engine->lock);
    for (i = 0; i < blk->nr_regions; i++) {
        if (blk->regions[i].registered) {
            bytes += MIN(region_size, blk->size - i * region_size);
            if (i == 0 || !blk->regions[i - 1].registered) {
                ranges++;
            }
            set_bit(i, blk->registered);
        } else {
            clear_bit(i, blk->registered);
        }
        huge += blk->regions[i].huge;
    }
    blk->registration.registered_bytes = bytes;
    blk->registration.registered_ranges = ranges;
    blk->registration.huge_regions = huge;
    blk->registration.unmerge_refusals += refusals;
    blk->registration.hinted_regions += hinted;
    return bytes;
}

/*
 * Register the regions the migration source had registered: madvise
 * only, nothing is read, so this also runs while the engine is paused
 * for an incoming migration, as soon as the hints arrive.  Until the
 * block's next scan, the policy leaves that registration alone (it has
 * no summaries to judge it by).  Scanner thread.
 */
void memdedup_apply_pending_hints(MemdedupEngine *engine)
{
    MemdedupBlock *blk;

    qemu_mutex_lock(&engine->lock);
    while (engine->hints_pending) {
        g_autoptr(GPtrArray) todo = g_ptr_array_new();
        g_autoptr(GPtrArray) hints = g_ptr_array_new();
        g_autoptr(GArray) policies = g_array_new(false, false,
                                                 sizeof(MemdedupPolicy));
        guint i;

        engine->hints_pending = false;
        QTAILQ_FOREACH(blk, &engine->blocks, next) {
            if (blk->hints) {
                memdedup_block_ref(blk);
                g_ptr_array_add(todo, blk);
                g_ptr_array_add(hints, blk->hints);
                g_array_append_val(policies, blk->params.policy);
                blk->hints = NULL;
            }
        }
        qemu_mutex_unlock(&engine->lock);

        for (i = 0; i < todo->len; i++) {
            unsigned long *bits = g_ptr_array_index(hints, i);
            uint64_t first, last, hinted = 0;

            blk = g_ptr_array_index(todo, i);
            if (!memdedup_policy_registers(g_array_index(policies,
                                                         MemdedupPolicy, i))) {
                g_free(bits);
                continue;
            }
            first = find_first_bit(bits, blk->nr_regions);
            while (first < blk->nr_regions) {
                last = find_next_zero_bit(bits, blk->nr_regions, first);
                if (memdedup_register_run(blk, first, last)) {
                    hinted += last - first;
                }
                first = find_next_bit(bits, blk->nr_regions, last);
            }
            g_free(bits);
            qatomic_set(&blk->vmas, memdedup_block_vmas(blk));
            blk->hinted = true;
            trace_memdedup_hints_applied(blk->id, hinted);
            /* Show that registration now. */
            memdedup_publish_registration(engine, blk, 0, hinted);
        }
        for (i = 0; i < todo->len; i++) {
            memdedup_block_unref(g_ptr_array_index(todo, i));
        }
        qemu_mutex_lock(&engine->lock);
    }
    qemu_mutex_unlock(&engine->lock);
}
