/*
 * memdedup: the kernel's view of what it merged
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * What the kernel merged, per block: from /proc/self/smaps (one `KSM:`
 * line per VMA, readable without privileges; every registered range is
 * a VMA of its own) and, between smaps reads, from /proc/self/ksm_stat
 * when that is enough (see memdedup_view_from_ksm_stat); exactly from
 * pagemap and /proc/kpageflags (KPF_KSM) where QEMU may read PFNs, at
 * each pass -- which is also the merged count on kernels whose smaps has
 * no KSM: lines (Linux 6.1): there it is as old as the last pass, and
 * absent where PFNs are hidden.
 * MemdedupKernelView, MemdedupEngine.view, is this file's alone: only
 * the scanner thread writes it, under the engine lock, and QMP only
 * asks for a read (memdedup_kernel_view_note_query).  The one writer of
 * MemdedupBlock.merged.
 */

#include "qemu/osdep.h"
#include "qemu/atomic.h"
#include "qemu/lockable.h"
#include "qemu/rcu.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "memdedup-internal.h"
#include "trace.h"

/* Pages merged outside the one block may differ by this between reads. */
#define MEMDEDUP_VIEW_OUTSIDE_SLACK      16
/*
 * While reads at MEMDEDUP_KERNEL_REFRESH_MAX_MS age find nothing
 * changed, the age doubles up to this many times it; smaps reads also
 * never take more than one part in MEMDEDUP_KERNEL_READ_SHARE of the
 * scanner thread's time (a large guest: about 2 s of CPU per read for
 * 64 GiB).
 */
#define MEMDEDUP_KERNEL_REFRESH_BACKOFF  8
#define MEMDEDUP_KERNEL_READ_SHARE       100
/* A query finding the view older than this has it read at once. */
#define MEMDEDUP_KERNEL_QUERY_STALE_MS   5000

/*
 * Bring the kernel view up to date from /proc/self/ksm_stat alone, if
 * that is enough: true if so.  Only up to MEMDEDUP_KERNEL_REFRESH_MAX_MS
 * after the last smaps read, and with the same blocks as then.  It is
 * enough while ksm_stat shows the same merged and zero-page counts as
 * at that read: merging and unmerging move those counts, and the view
 * is then what smaps said.  With one block, it also is when the counts
 * moved, once two smaps reads found the same number of merged pages
 * outside the block (firmware, video RAM; a memory-backend-ram with
 * merge=on that ksmd is merging keeps failing that test): the block has
 * what the process has merged, less that.  A merged page the guest
 * wrote is discounted by ksm_stat only when ksmd next scans it, so the
 * view may count it until then -- or, written before an smaps read and
 * discounted after it, miss as many -- at most that long.
 */
static bool memdedup_view_from_ksm_stat(MemdedupEngine *engine,
                                        const MemdedupKsmStat *stat,
                                        int64_t now)
{
    MemdedupBlock *blk;

    QEMU_LOCK_GUARD(&engine->lock);
    if (!engine->view.read_time ||
        now - engine->view.read_time >= engine->view.max_age ||
        engine->view.blocks_gen != engine->blocks_gen) {
        return false;
    }
    blk = QTAILQ_FIRST(&engine->blocks);
    if (stat->merging_pages == engine->view.merging_pages &&
        stat->zero_pages == engine->view.zero_pages) {
        if (blk && engine->view.block_pages >= 0) {
            blk->merged.kernel_merged_pages = engine->view.block_pages;
        }
    } else if (blk && engine->view.outside_pages >= 0 &&
               stat->merging_pages != engine->view.derived_merging) {
        blk->merged.kernel_merged_pages =
            MAX(stat->merging_pages - engine->view.outside_pages, 0);
        engine->view.derived_merging = stat->merging_pages;
    } else {
        /*
         * Also when ksmd stopped moving the count since the last derived
         * refresh: the outside count is only as exact as the read that
         * measured it, so one more read makes the quiet view exact.
         */
        return false;
    }
    engine->view.time = now;
    engine->view.wanted = false;
    trace_memdedup_kernel_view(false, stat->merging_pages, stat->zero_pages,
                               engine->view.max_age);
    return true;
}

/*
 * Each block's kernel-merged pages from @smaps; *@nr_blocks the blocks,
 * *@block_pages the last one's merged base pages (-1: unknown).  True if
 * no block's count changed.  Engine lock held.
 */
static bool memdedup_view_read_blocks_locked(MemdedupEngine *engine,
                                             MemdedupSmapsView *smaps,
                                             uint64_t *nr_blocks,
                                             int64_t *block_pages)
{
    MemdedupBlock *blk;
    bool same = true;

    QTAILQ_FOREACH(blk, &engine->blocks, next) {
        uint64_t start = (uintptr_t)blk->host, end = start + blk->size;
        uint64_t ksm_bytes, vmas, mergeable;
        int64_t before = blk->merged.kernel_merged_pages;

        (*nr_blocks)++;
        blk->merged.kernel_merged_pages = -1;
        if (smaps->has_ksm) {
            memdedup_smaps_view_sum(smaps, start, end, &ksm_bytes, &vmas,
                                    &mergeable);
            /* ksm_stat counts base pages, as smaps's KSM: lines do. */
            *block_pages = blk->page_size == qemu_real_host_page_size() ?
                           (int64_t)(ksm_bytes / blk->page_size) : -1;
            blk->merged.kernel_merged_pages = ksm_bytes / blk->page_size;
        } else {
            /* Kernels without KSM: lines: the last pass's exact count. */
            blk->merged.kernel_merged_pages =
                blk->merged.kernel_merged_pages_exact;
        }
        same &= blk->merged.kernel_merged_pages == before;
    }
    return same;
}

/*
 * Kernel-merged pages of every managed block, from one smaps read --
 * unless ksm_stat is enough (see above) and @force is false.  Passes
 * force the read when they unregistered memory: that unmerges at once,
 * but ksm_stat shows it only after ksmd's next scan.
 */
void memdedup_refresh_kernel_view(MemdedupEngine *engine, bool force)
{
    g_auto(MemdedupSmapsView) smaps = { 0 };
    MemdedupKsmStat stat = { .merging_pages = -1, .zero_pages = -1 };
    MemdedupKsmStat after = { .merging_pages = -1 };
    bool have_stat = memdedup_read_ksm_stat(&stat) &&
                     stat.merging_pages >= 0;
    int64_t now = qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
    int64_t block_pages = -1, outside = -1, cost_ms;
    uint64_t nr_blocks = 0, cpu0;
    bool same;

    if (!force && have_stat &&
        memdedup_view_from_ksm_stat(engine, &stat, now)) {
        return;
    }

    /* Parsed once, outside the lock; each block is a lookup. */
    cpu0 = memdedup_thread_cpu_ns();
    memdedup_smaps_view_read_merged(&smaps, have_stat ? &stat : NULL);
    cost_ms = (memdedup_thread_cpu_ns() - cpu0) / SCALE_MS;

    QEMU_LOCK_GUARD(&engine->lock);
    /* Nothing changed since the last read: ksm_stat, blocks, counts. */
    same = !force && engine->view.read_time && have_stat &&
           stat.merging_pages == engine->view.merging_pages &&
           stat.zero_pages == engine->view.zero_pages &&
           engine->view.blocks_gen == engine->blocks_gen;
    same &= memdedup_view_read_blocks_locked(engine, &smaps, &nr_blocks,
                                             &block_pages);
    /*
     * Merged outside the one block: ksm_stat before and after the walk
     * bracket what smaps saw.  Only a walk that ksmd did not race (the
     * two agree) tells it: ksmd at its fastest merges hundreds of pages
     * a millisecond, and a raced walk may have seen any count between --
     * the middle of one was 280 pages off (accounting/attributed, once
     * the residency watch's partial passes read the view while ksmd
     * merged).  A previous read that found as many makes it usable.
     */
    if (nr_blocks == 1 && block_pages >= 0 && have_stat &&
        memdedup_read_ksm_stat(&after) &&
        after.merging_pages == stat.merging_pages) {
        outside = MAX(stat.merging_pages - block_pages, 0);
    }
    /*
     * Reads that find nothing changed come less often; any change, and
     * any read forced by a pass or a change of the blocks, starts over.
     */
    engine->view.age_factor = same ?
        MIN(engine->view.age_factor * 2, MEMDEDUP_KERNEL_REFRESH_BACKOFF) : 1;
    engine->view.max_age = MAX((int64_t)MEMDEDUP_KERNEL_REFRESH_MAX_MS *
                               engine->view.age_factor,
                               cost_ms * MEMDEDUP_KERNEL_READ_SHARE);
    engine->view.outside_pages =
        outside >= 0 && engine->view.outside_last >= 0 &&
        ABS(outside - engine->view.outside_last) <=
            MEMDEDUP_VIEW_OUTSIDE_SLACK ? outside : -1;
    engine->view.outside_last = outside;
    engine->view.block_pages = nr_blocks == 1 ? block_pages : -1;
    engine->view.derived_merging = -1;
    engine->view.time = now;
    engine->view.wanted = false;
    /* Read before smaps: a change meanwhile makes the next read happen. */
    engine->view.read_time = have_stat ? now : 0;
    engine->view.merging_pages = stat.merging_pages;
    engine->view.zero_pages = stat.zero_pages;
    engine->view.blocks_gen = engine->blocks_gen;
    engine->view.smaps_ksm = smaps.has_ksm;
    trace_memdedup_kernel_view(true, have_stat ? stat.merging_pages : -1,
                               have_stat ? stat.zero_pages : -1,
                               engine->view.max_age);
}

/*
 * KSM pages, through kpageflags, in the runs of regions of @blk for which
 * @want says yes, and their share of the saving where @kpagecount_fd is
 * not -1 (memdedup_count_ksm_shares); false if unknown.  KSM pages exist
 * only in registered regions (unregistering unmerges), so nothing else
 * needs looking at.  Scanner thread, lock not held.
 */
static bool memdedup_count_ksm_runs(MemdedupEngine *engine,
                                    MemdedupPassBlock *pb,
                                    bool (*want)(MemdedupPassBlock *pb,
                                                 uint64_t region),
                                    int kpagecount_fd,
                                    MemdedupKsmShares *shares)
{
    MemdedupBlock *blk = pb->blk;
    uint64_t region_size = blk->pages_per_region * blk->page_size;
    uint64_t i, j;
    bool ok = true;

    *shares = (MemdedupKsmShares) { 0 };
    if (engine->pagemap_fd < 0 || engine->kpageflags_fd < 0) {
        return false;
    }
    /* Nothing merged, and PFNs visible, so that a walk would say so. */
    if (engine->pfns_visible && !memdedup_process_has_merged_pages(NULL)) {
        return true;
    }
    for (i = 0; i < blk->nr_regions && ok; i = j) {
        /* Runs of at most MEMDEDUP_RCU_CHUNK: one RCU section each. */
        for (j = i; j < blk->nr_regions && want(pb, j) &&
             (j - i) * region_size < MEMDEDUP_RCU_CHUNK; j++) {
            /* extend the run */
        }
        if (j == i) {
            j = i + 1;
            continue;
        }
        WITH_RCU_READ_LOCK_GUARD() {
            ok = !qatomic_load_acquire(&blk->removed) &&
                 memdedup_count_ksm_shares(
                     engine->pagemap_fd, engine->kpageflags_fd,
                     kpagecount_fd, (uintptr_t)blk->host + i * region_size,
                     MIN((j - i) * region_size,
                         blk->size - i * region_size), shares);
        }
    }
    return ok;
}

static bool memdedup_region_registered(MemdedupPassBlock *pb, uint64_t i)
{
    return pb->blk->regions[i].registered;
}

/*
 * KSM pages in the registered regions that are wanted only for their
 * cross-VM duplicates: what the board saved.
 */
static bool memdedup_region_registered_cross(MemdedupPassBlock *pb,
                                             uint64_t i)
{
    return pb->blk->regions[i].registered &&
           memdedup_region_cross_only(&pb->params, &pb->blk->regions[i]);
}

void memdedup_kernel_view_count_pass(MemdedupEngine *engine,
                                     MemdedupPass *pass, bool exact,
                                     bool cross)
{
    size_t b;

    for (b = 0; b < pass->nr_blocks && (exact || cross); b++) {
        MemdedupPassBlock *pb = &pass->blocks[b];
        MemdedupKsmShares all = { 0 }, board = { 0 };
        bool all_known = false, board_known = false;

        if (exact) {
            all_known = memdedup_count_ksm_runs(engine, pb,
                                                memdedup_region_registered,
                                                engine->kpagecount_fd, &all);
        }
        if (cross) {
            board_known = memdedup_count_ksm_runs(
                engine, pb, memdedup_region_registered_cross, -1, &board);
        }
        QEMU_LOCK_GUARD(&engine->lock);
        if (exact) {
            MemdedupMergedStats *merged = &pb->blk->merged;

            merged->kernel_merged_pages_exact = all_known ? all.pages : -1;
            merged->attributed = all_known && engine->kpagecount_fd >= 0 ?
                                 all.attributed : -1;
            if (!engine->view.smaps_ksm) {
                merged->kernel_merged_pages = all_known ? all.pages : -1;
            }
        }
        if (cross) {
            pb->blk->merged.cross_vm_merged_pages = board_known ?
                                                    board.pages : -1;
        }
    }
}

void memdedup_kernel_view_init(MemdedupKernelView *view)
{
    view->outside_pages = -1;
    view->outside_last = -1;
    view->block_pages = -1;
    view->derived_merging = -1;
    view->age_factor = 1;
    view->max_age = MEMDEDUP_KERNEL_REFRESH_MAX_MS;
}

void memdedup_kernel_view_note_query(MemdedupEngine *engine)
{
    /*
     * Someone is watching: if the kernel view is more than 5 s old (it
     * is read less often while nothing changes), have it read now, for
     * this caller's next query.
     */
    if (engine->thread_started && !engine->view.wanted &&
        qemu_clock_get_ms(QEMU_CLOCK_REALTIME) - engine->view.time >
        MEMDEDUP_KERNEL_QUERY_STALE_MS) {
        engine->view.wanted = true;
        qemu_cond_signal(&engine->wakeup);
    }
}
