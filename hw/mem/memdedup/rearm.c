/*
 * memdedup: registering again the pairs KSM's smart scan keeps apart
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * With smart_scan on (Linux 6.7 and later), ksmd settles each page that
 * has not merged into visiting it once every 9 full scans, in a rhythm
 * set by the scan that first saw it; two copies of a content, one seen
 * long before the other, may never be visited in the same scan, and so
 * never merge (memdedup_rearm_due in memdedup-core.h has the arithmetic).
 * Registration makes this common: a VM registers a cross-VM region as
 * soon as it learns of the peer's copy, the peer when it learns of
 * ours, seconds or passes later.
 *
 * So, once a second between passes, when ksmd's full_scans moved: each
 * registered region that KSM has had MEMDEDUP_REARM_SCANS full scans to
 * merge is judged once, from its pagemap entries (8 bytes a page, no
 * privilege: a page that shares its frame is not exclusively mapped),
 * against the duplicates its last hashing counted; a region that should
 * merge and does not is taken off KSM until ksmd has passed it, then
 * registered again.  Nothing happens while ksmd does not run or smart
 * scanning is off: then every pair meets in every scan.
 */

#include "qemu/osdep.h"
#include "qemu/atomic.h"
#include "qemu/lockable.h"
#include "memdedup-internal.h"
#include "trace.h"

/* Non-zero pages of region @i of @blk that share their frame now. */
static int64_t memdedup_rearm_sharing(MemdedupEngine *engine,
                                      MemdedupBlock *blk, uint64_t i,
                                      uint64_t *entries)
{
    uint64_t first = i * blk->pages_per_region;
    uint64_t pages = MIN(blk->pages_per_region, blk->nr_pages - first);
    uint32_t sharing = 0;
    uint64_t k;

    if (!memdedup_cow_read(engine, blk, i, pages, entries)) {
        return -1;
    }
    for (k = 0; k < pages; k++) {
        sharing += memdedup_pm_shares_frame(entries[k]) &&
                   memdedup_block_fp(blk, first + k) != MEMDEDUP_FP_ZERO;
    }
    return sharing;
}

/* One block's regions; returns how many went off KSM. */
static uint64_t memdedup_rearm_block(MemdedupEngine *engine,
                                     MemdedupBlock *blk,
                                     const MemdedupParams *params,
                                     uint64_t scans, uint64_t *entries,
                                     bool *changed)
{
    uint64_t i, off = 0;

    for (i = 0; i < blk->nr_regions; i++) {
        MemdedupRegion *r = &blk->regions[i];
        int64_t sharing;

        if (qatomic_read(&engine->paused)) {
            break;
        }
        switch (memdedup_rearm_due(r, scans)) {
        case MEMDEDUP_REARM_REGISTER:
            if (memdedup_region_wanted(params, r) &&
                memdedup_rearm_advise(blk, params, i, true)) {
                memdedup_rearm_set(r, false, scans);
                trace_memdedup_rearm_on(blk->id, i, r->rearm_tries);
                *changed = true;
            } else {
                /*
                 * Its counts changed meanwhile, or the kernel refused
                 * (counted as a registration failure): the policy
                 * decides at the next pass.
                 */
                r->rearm = MEMDEDUP_REARM_IDLE;
            }
            break;
        case MEMDEDUP_REARM_JUDGE:
            sharing = memdedup_rearm_sharing(engine, blk, i, entries);
            if (sharing < 0) {
                return off;
            }
            if (!memdedup_rearm_judge(r, sharing)) {
                trace_memdedup_rearm_kept(blk->id, i, sharing,
                                          r->rearm_expect, r->rearm_tries);
            } else if (memdedup_rearm_advise(blk, params, i, false)) {
                memdedup_rearm_set(r, true, scans);
                trace_memdedup_rearm_off(blk->id, i, sharing,
                                         r->rearm_expect, r->rearm_tries);
                *changed = true;
                off++;
            }
            break;
        default:
            break;
        }
    }
    return off;
}

void memdedup_rearm_tick(MemdedupEngine *engine)
{
    g_autofree MemdedupBlock **blocks = NULL;
    g_autofree MemdedupParams *params = NULL;
    g_autofree uint64_t *entries = NULL;
    uint64_t smart, run, scans, max_pages = 0;
    size_t n = 0, b;

    if (!qatomic_read(&engine->rearm) || engine->pagemap_fd < 0 ||
        !memdedup_read_ksm_knob("smart_scan", &smart) || !smart ||
        !memdedup_read_ksm_knob("run", &run) || run != 1 ||
        !memdedup_read_ksm_knob("full_scans", &scans) ||
        scans == engine->rearm_scans) {
        return;
    }
    engine->rearm_scans = scans;
    WITH_QEMU_LOCK_GUARD(&engine->lock) {
        MemdedupBlock *blk;

        if (engine->paused || engine->quit) {
            return;
        }
        QTAILQ_FOREACH(blk, &engine->blocks, next) {
            n++;
        }
        blocks = g_new(MemdedupBlock *, n);
        params = g_new(MemdedupParams, n);
        n = 0;
        QTAILQ_FOREACH(blk, &engine->blocks, next) {
            if (memdedup_policy_registers(blk->params.policy)) {
                memdedup_block_ref(blk);
                params[n] = blk->params;
                blocks[n++] = blk;
                max_pages = MAX(max_pages, blk->pages_per_region);
            }
        }
    }
    entries = g_new(uint64_t, MAX(max_pages, 1));
    for (b = 0; b < n; b++) {
        MemdedupBlock *blk = blocks[b];
        bool changed = false;
        uint64_t off = memdedup_rearm_block(engine, blk, &params[b], scans,
                                            entries, &changed);

        if (changed) {
            memdedup_publish_registration(engine, blk, 0, 0);
            WITH_QEMU_LOCK_GUARD(&engine->lock) {
                blk->registration.rearmed_regions += off;
            }
        }
        memdedup_block_unref(blk);
    }
}
