/*
 * memdedup: a pass
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * One scanner thread (and, during hashing, scan-threads - 1 workers)
 * runs passes.  A pass reads top to bottom as the data flows:
 *
 *   snapshot   the blocks and their parameters, under the engine lock
 *   apply      changed parameters on the summaries already known
 *   hash       every resident page (scan.c), each region judged at once
 *              against the last dup set and registered early if it
 *              qualifies (advise.c)
 *   count      the dup set rebuilt, each region counted against it and
 *              the board (summary.c); our fingerprints published
 *   register   registration brought in line with the summaries
 *              (advise.c), exact merged counts (kernel-view.c)
 *   finish     the summaries published, the next pass scheduled, the
 *              kernel view refreshed
 *
 * A pass without @rescan (only parameters, discards or peers changed)
 * skips hashing; a partial one (watch.c) hashes only the regions whose
 * residency moved since they were hashed.  The scanner thread
 * (thread.c) runs passes; it serves the board during a long hashing
 * phase too.  It never holds the engine lock while hashing, reading
 * kernel files or calling madvise.
 */

#include "qemu/osdep.h"
#include "qemu/atomic.h"
#include "qemu/bitmap.h"
#include "qemu/lockable.h"
#include "qemu/rcu.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "qapi/qapi-events-memdedup.h"
#include "memdedup-internal.h"
#include "trace.h"

/* Longest sleep of the rate limiter before it looks at quit again. */
#define MEMDEDUP_THROTTLE_SLICE_US       100000

/* Should scanner threads stop hashing? */
static bool memdedup_quitting(MemdedupEngine *engine)
{
    return qatomic_read(&engine->quit) || qatomic_read(&engine->paused);
}

/*
 * The scanner thread serves the board during a long hashing phase too,
 * as between passes, so that peers' connections are answered within
 * their board-timeout.  Nothing looks the board up while hashing.
 */
static void memdedup_pass_serve_board(MemdedupPass *pass)
{
    int64_t now = qemu_clock_get_ms(QEMU_CLOCK_REALTIME);

    if (pass->board && now >= pass->next_board_tick) {
        pass->next_board_tick = now + MEMDEDUP_BOARD_TICK_MS;
        memdedup_board_tick(pass->board);
    }
}

/* Sleep as long as the pass is ahead of its byte budget. */
static void memdedup_throttle(MemdedupPass *pass)
{
    for (;;) {
        uint64_t bytes = qatomic_read(&pass->bytes_hashed);
        int64_t due = pass->start_ns +
                      (int64_t)(bytes * (double)NANOSECONDS_PER_SECOND /
                                pass->scan_rate);
        int64_t now = qemu_clock_get_ns(QEMU_CLOCK_REALTIME);

        if (now >= due || memdedup_quitting(pass->engine)) {
            return;
        }
        g_usleep(MIN((due - now) / 1000, MEMDEDUP_THROTTLE_SLICE_US) + 1);
    }
}

/*
 * Hash regions until none is left.  Runs in every scanner thread;
 * @scanner: this is the engine's thread, which also serves the board.
 */
static void memdedup_pass_work(MemdedupPass *pass, bool scanner)
{
    MemdedupScanBuffers buf;
    uint64_t cpu_start = memdedup_thread_cpu_ns();
    size_t b = 0;

    memdedup_scan_buffers_init(&buf, pass->max_region_pages);
    buf.keep_merged = pass->keep_merged;
    for (;;) {
        uint64_t item = qatomic_fetch_inc(&pass->next_item);
        MemdedupPassBlock *pb;
        uint64_t region, hashed;

        if (item >= pass->nr_items || memdedup_quitting(pass->engine)) {
            break;
        }
        /* Items are handed out in order: find the block that owns it. */
        while (b + 1 < pass->nr_blocks &&
               pass->blocks[b + 1].first_item <= item) {
            b++;
        }
        while (b > 0 && pass->blocks[b].first_item > item) {
            b--;
        }
        pb = &pass->blocks[b];
        region = item - pb->first_item;
        if (pb->only && !test_bit(region, pb->only)) {
            continue;
        }
        if (memdedup_scan_region(pass->engine, pb->blk, region, &buf,
                                 &hashed)) {
            qatomic_add(&pass->bytes_hashed, hashed);
            if (pb->params.policy == MEMDEDUP_POLICY_TARGETED ||
                pb->params.policy == MEMDEDUP_POLICY_ZERO_ONLY) {
                memdedup_register_early(pb->blk, &pb->params, region);
            }
        }
        qatomic_add(&pass->engine->pass_pages_done,
                    pb->blk->pages_per_region);
        if (scanner) {
            memdedup_pass_serve_board(pass);
        }
        memdedup_throttle(pass);
    }
    qatomic_add(&pass->churn, buf.churn);
    qatomic_add(&pass->rewritten, buf.rewritten);
    qatomic_add(&pass->reused, buf.reused);
    memdedup_scan_buffers_free(&buf);
    qatomic_add(&pass->cpu_time, memdedup_thread_cpu_ns() - cpu_start);
}

static void *memdedup_worker_thread(void *opaque)
{
    rcu_register_thread();
    memdedup_pass_work(opaque, false);
    rcu_unregister_thread();
    return NULL;
}

/*
 * Would publishing after this pass write what the last publication
 * wrote?  Yes if it was published by a pass in which nothing changed,
 * and nothing changed since: no page changed, appeared or went (so no
 * region turned volatile or stable), no block came or went, no
 * parameter changed, and that publication completed.  Then the filter
 * is left as it is, and the peers need not look everything up again.
 */
static bool memdedup_pass_publication_current(MemdedupPass *pass)
{
    MemdedupEngine *engine = pass->engine;

    return !pass->churn && !pass->inputs_changed &&
           engine->board_published_quiet &&
           engine->board_published_gen == pass->blocks_gen &&
           memdedup_board_published(pass->board);
}

static void memdedup_pass_publish(MemdedupPass *pass)
{
    uint64_t n = 0;
    int round;

    for (round = 0; round < 2; round++) {
        size_t b;

        if (round == 1 && !memdedup_board_publish_begin(pass->board, n)) {
            return;             /* no memfd: the last publication stands */
        }
        for (b = 0; b < pass->nr_blocks; b++) {
            MemdedupBlock *blk = pass->blocks[b].blk;
            uint64_t i, p;

            if (!memdedup_policy_publishes(pass->blocks[b].params.policy) ||
                qatomic_read(&blk->removed)) {
                continue;
            }
            for (i = 0; i < blk->nr_regions; i++) {
                const MemdedupRegion *r = &blk->regions[i];
                uint64_t first = i * blk->pages_per_region;
                uint64_t last = MIN(first + blk->pages_per_region,
                                    blk->nr_pages);

                if ((uint64_t)r->volatile_pages * 4 > r->resident) {
                    continue;
                }
                for (p = first; p < last; p++) {
                    /* A random line of the filter each: load ahead. */
                    if (round && p + MEMDEDUP_LOOKAHEAD < last &&
                        blk->fps[p + MEMDEDUP_LOOKAHEAD] > MEMDEDUP_FP_ZERO) {
                        memdedup_board_publish_prefetch(
                            pass->board, blk->fps[p + MEMDEDUP_LOOKAHEAD]);
                    }
                    if (blk->fps[p] <= MEMDEDUP_FP_ZERO) {
                        continue;
                    }
                    if (round) {
                        memdedup_board_publish(pass->board, blk->fps[p]);
                    } else {
                        n++;
                    }
                }
            }
        }
    }
    memdedup_board_publish_end(pass->board);
    pass->engine->board_published_quiet = !pass->churn &&
                                          !pass->inputs_changed;
    pass->engine->board_published_gen = pass->blocks_gen;
}

/*
 * Phase snapshot: take a reference to every block and copy its
 * parameters, and what the registry queued for the scanner (changed
 * parameters, discarded regions, hinted registration).  Engine lock.
 */
static void memdedup_pass_snapshot(MemdedupPass *pass)
{
    MemdedupEngine *engine = pass->engine;
    bool params_changed = false;
    uint64_t regions = 0;
    MemdedupBlock *blk;
    size_t b = 0;

    QEMU_LOCK_GUARD(&engine->lock);
    QTAILQ_FOREACH(blk, &engine->blocks, next) {
        pass->nr_blocks++;
        regions += blk->nr_regions;
    }
    pass->blocks = g_new0(MemdedupPassBlock, pass->nr_blocks);
    QTAILQ_FOREACH(blk, &engine->blocks, next) {
        MemdedupPassBlock *pb = &pass->blocks[b++];

        memdedup_block_ref(blk);
        pb->blk = blk;
        /* The VMA budget, shared out by size. */
        qatomic_set(&blk->vma_share,
                    MAX((uint64_t)engine->vma_budget * blk->nr_regions /
                        regions, MEMDEDUP_VMA_SHARE_MIN));
        pb->params = blk->params;
        pb->apply_only = blk->params_changed;
        blk->params_changed = false;
        pb->discarded = blk->discarded;
        blk->discarded = NULL;
        pass->summarize |= pb->discarded != NULL;
        pass->fps_changed |= pb->discarded != NULL;
        pass->inputs_changed |= pb->discarded || pb->apply_only;
        params_changed |= pb->apply_only;
        /* A hinted block is judged by the policy once it was scanned. */
        pb->hinted = blk->hinted;
        if (memdedup_pass_full(pass)) {
            blk->hinted = false;
        }
        pb->full = memdedup_pass_full(pass);
        /* The watched bits stay put until the next watch: ours. */
        pb->only = pass->partial ? blk->watched : NULL;
        pb->first_item = pass->nr_items;
        if (pass->rescan && pb->params.policy != MEMDEDUP_POLICY_OFF) {
            pass->nr_items += blk->nr_regions;
        }
        pass->max_region_pages = MAX(pass->max_region_pages,
                                     blk->pages_per_region);
    }
    engine->params_dirty = false;
    engine->discards_pending = false;
    pass->board = engine->board;
    pass->blocks_gen = engine->blocks_gen;
    if (engine->board_dirty && pass->board) {
        pass->board_eval = pass->summarize = true;
    }
    /*
     * A policy that changed may publish no more (or again): what the
     * peers hold must follow at once, not at the next rescan.
     */
    if (params_changed && pass->board) {
        pass->summarize = pass->fps_changed = true;
    }
    engine->board_dirty = false;
    pass->scan_rate = engine->scan_rate;
    pass->nr_threads = engine->scan_threads;
    pass->keep_merged = engine->pagemap_fd >= 0 &&
                        (pass->partial || (engine->passes_completed + 1) %
                                          MEMDEDUP_REHASH_PASSES);
    /*
     * A partial pass is not shown as scanning (nor its progress): a
     * client that asked for a pass waits for a full one.
     */
    if (memdedup_pass_full(pass)) {
        engine->state = MEMDEDUP_STATE_SCANNING;
        engine->scan_requested = false;
        engine->rescan_hurry = false;
    }
}

/*
 * Phase apply: changed parameters take effect on the summaries already
 * known, and the registration is shown at once, not at the end of a
 * long pass.
 */
static void memdedup_pass_apply_known(MemdedupPass *pass)
{
    bool collapse = memdedup_collapse_allowed(pass->engine, pass);
    size_t b;

    for (b = 0; b < pass->nr_blocks; b++) {
        MemdedupPassBlock *pb = &pass->blocks[b];
        uint64_t refusals = 0;

        if (pb->apply_only && !pb->hinted &&
            !qatomic_read(&pb->blk->removed)) {
            pass->unregistered |= memdedup_apply_policy(pb->blk, &pb->params,
                                                        collapse, &refusals);
        }
        memdedup_publish_registration(pass->engine, pb->blk, refusals, 0);
    }
}

/*
 * Phase hash: every region of every block with a policy, by this
 * thread and nr_threads - 1 workers.  False if the engine was paused
 * (migration) meanwhile: then the pass is dropped.
 */
static bool memdedup_pass_hash(MemdedupPass *pass)
{
    MemdedupEngine *engine = pass->engine;
    g_autofree QemuThread *workers = g_new0(QemuThread, pass->nr_threads);
    uint64_t total = 0;
    uint32_t t;
    size_t b;

    for (b = 0; b < pass->nr_blocks; b++) {
        if (pass->blocks[b].params.policy != MEMDEDUP_POLICY_OFF) {
            total += pass->blocks[b].blk->nr_regions *
                     pass->blocks[b].blk->pages_per_region;
        }
    }
    qatomic_set(&engine->pass_pages_done, 0);
    qatomic_set(&engine->pass_pages_total, pass->partial ? 0 : total);
    pass->start_ns = qemu_clock_get_ns(QEMU_CLOCK_REALTIME);
    /* merge_across_nodes decides how duplicates are judged. */
    memdedup_numa_pass_begin(engine);
    trace_memdedup_pass_start(pass->nr_blocks, pass->nr_items,
                              pass->nr_threads);

    for (t = 1; t < pass->nr_threads; t++) {
        qemu_thread_create(&workers[t], "memdedup-worker",
                           memdedup_worker_thread, pass,
                           QEMU_THREAD_JOINABLE);
    }
    memdedup_pass_work(pass, true);
    for (t = 1; t < pass->nr_threads; t++) {
        qemu_thread_join(&workers[t]);
    }
    return !qatomic_read(&engine->paused);
}

/* Drop the references and the pass's own allocations. */
static void memdedup_pass_release(MemdedupPass *pass)
{
    size_t b;

    for (b = 0; b < pass->nr_blocks; b++) {
        g_free(pass->blocks[b].discarded);
        memdedup_block_unref(pass->blocks[b].blk);
    }
    g_free(pass->blocks);
    g_free(pass->summaries);
}

/* Paused mid-pass: drop the pass and touch nothing more. */
static void memdedup_pass_abort(MemdedupPass *pass)
{
    MemdedupEngine *engine = pass->engine;
    size_t b;

    WITH_QEMU_LOCK_GUARD(&engine->lock) {
        engine->scanner_cpu_time += pass->cpu_time;
        engine->state = MEMDEDUP_STATE_IDLE;
        engine->scan_requested = true;
    }
    qatomic_set(&engine->pass_pages_total, 0);
    memdedup_pass_forget_discarded(pass);
    for (b = 0; b < pass->nr_blocks; b++) {
        /* Not scanned after all: keep hinted registration. */
        pass->blocks[b].blk->hinted |= pass->blocks[b].hinted;
    }
    memdedup_pass_release(pass);
    trace_memdedup_pass_aborted();
}

/*
 * Phase count: rebuild the dup set and count every region against it
 * and the board -- or, when nothing changed since the last count, keep
 * the regions' counts -- then publish our fingerprints.
 */
static void memdedup_pass_count(MemdedupPass *pass)
{
    MemdedupEngine *engine = pass->engine;
    g_autofree unsigned long *first_seen = NULL;
    bool recount, stale = false;
    size_t b;

    recount = !pass->rescan || !memdedup_pass_unchanged(pass,
                                                        pass->board_eval);
    if (recount) {
        size_t slots;
        bool rebuilt = memdedup_pass_index(pass);

        slots = MAX(memdedup_numa_slots(&engine->numa, &engine->dupset), 1);
        first_seen = bitmap_try_new(slots);
        if (!first_seen) {
            /*
             * No estimate without it: the last counts stand, and no
             * region's count may pass for one against the new set.
             */
            if (rebuilt) {
                memdedup_pass_index_failed(pass, "the saving estimate",
                                           BITS_TO_LONGS(slots) *
                                           sizeof(unsigned long));
            }
            recount = false;
            stale = true;
        }
    }
    if (recount) {
        if (pass->board) {
            /*
             * Take what peers sent while we hashed (a peer that ended
             * its pass a moment before ours), so that this count sees
             * it rather than a second evaluation after the pass.
             */
            memdedup_board_tick(pass->board);
            engine->board_version = memdedup_board_version(pass->board);
            memdedup_board_lookup_begin(pass->board);
        }
    } else {
        trace_memdedup_pass_unchanged(pass->nr_items);
    }
    for (b = 0; b < pass->nr_blocks; b++) {
        memdedup_pass_summarize(engine, &pass->blocks[b], pass->board,
                                first_seen, recount, &pass->summaries[b]);
        if (stale) {
            pass->blocks[b].blk->judged_gen = 0;
        }
    }
    if (pass->board && pass->fps_changed &&
        !memdedup_pass_publication_current(pass)) {
        memdedup_pass_publish(pass);
    }
}

/*
 * Phase register: after a rescan, judge the copy-on-write churn of what
 * is registered; bring registration in line with the summaries
 * (register, unregister, THP), then count what the kernel merged there.
 */
static void memdedup_pass_register(MemdedupPass *pass)
{
    MemdedupEngine *engine = pass->engine;
    bool collapse = memdedup_collapse_allowed(engine, pass);
    size_t b;

    for (b = 0; b < pass->nr_blocks; b++) {
        MemdedupPassBlock *pb = &pass->blocks[b];
        uint64_t refusals = 0;

        /* Churn is judged between full passes, a pass apart. */
        if (memdedup_pass_full(pass) &&
            !qatomic_read(&pb->blk->removed)) {
            memdedup_cow_pass(engine, pb);
        }
        /* A hinted block waits for a full pass to be judged. */
        if (!qatomic_read(&pb->blk->removed) &&
            (memdedup_pass_full(pass) ||
             ((pass->partial || pb->apply_only || pass->board_eval) &&
              !pb->hinted))) {
            pass->unregistered |= memdedup_apply_policy(pb->blk, &pb->params,
                                                        collapse, &refusals);
        }
        pass->registered += memdedup_publish_registration(engine, pb->blk,
                                                          refusals, 0);
        pass->metadata += memdedup_block_metadata_bytes(pb->blk);
    }
    pass->metadata += memdedup_dupset_bytes(&engine->dupset) +
                      memdedup_numa_index_bytes(&engine->numa);
    memdedup_kernel_view_count_pass(engine, pass, pass->rescan,
                                    pass->summarize && pass->board);
}

/*
 * After a rescan: memory that hardly changes is rescanned less often.
 * With the residency watch on, memory that filled or emptied is the
 * watch's to find within a second: only pages rewritten in place, which
 * residency cannot show, bring the next full pass closer.  Engine lock
 * held.
 */
static void memdedup_pass_schedule_locked(MemdedupPass *pass,
                                          uint64_t resident)
{
    MemdedupEngine *engine = pass->engine;
    uint64_t busy = qatomic_read(&engine->residency_watch) ?
                    pass->rewritten : pass->churn;

    if (!engine->rescan_hurry &&
        busy * 100 <= resident * MEMDEDUP_QUIET_PERCENT) {
        engine->rescan_factor = MIN(engine->rescan_factor * 2,
                                    engine->rescan_backoff);
    } else {
        engine->rescan_factor = 1;
    }
    trace_memdedup_pass_churn(pass->churn, pass->rewritten, resident,
                              engine->rescan_factor);
}

/*
 * Phase finish: publish the summaries (the one writer of
 * MemdedupBlock.summary), schedule the next pass, refresh the kernel
 * view and tell the monitor.
 */
static void memdedup_pass_finish(MemdedupPass *pass)
{
    MemdedupEngine *engine = pass->engine;
    uint64_t duration = qemu_clock_get_ns(QEMU_CLOCK_REALTIME) -
                        pass->start_ns;
    uint64_t scanned = 0, zero = 0, duplicate = 0, resident = 0, pass_no;
    size_t b;

    WITH_QEMU_LOCK_GUARD(&engine->lock) {
        for (b = 0; b < pass->nr_blocks && pass->summarize; b++) {
            const MemdedupSummaryStats *st = &pass->summaries[b];

            pass->blocks[b].blk->summary = *st;
            scanned += st->scanned_pages;
            zero += st->zero_pages;
            duplicate += st->duplicate_pages;
            resident += st->resident_pages;
        }
        engine->metadata_bytes = pass->metadata;
        engine->scanner_cpu_time += pass->cpu_time;
        if (pass->partial) {
            engine->partial_passes++;
        } else if (pass->rescan) {
            memdedup_pass_schedule_locked(pass, resident);
            engine->passes_completed++;
            engine->last_pass_duration = duration;
            engine->state = QTAILQ_EMPTY(&engine->blocks) ?
                            MEMDEDUP_STATE_DISABLED : MEMDEDUP_STATE_IDLE;
        }
        pass_no = engine->passes_completed;
    }
    qatomic_set(&engine->pass_pages_total, 0);
    memdedup_pass_release(pass);

    memdedup_refresh_kernel_view(engine, pass->unregistered);
    if (pass->partial) {
        trace_memdedup_partial_pass_done(duration, pass->bytes_hashed,
                                         pass->registered);
    } else if (pass->rescan) {
        trace_memdedup_pass_done(pass_no, duration, scanned, zero, duplicate,
                                 pass->registered);
        qapi_event_send_memdedup_pass_completed(pass_no, duration, scanned,
                                                zero, duplicate,
                                                pass->registered);
    }
}

/*
 * One pass: hash everything when @rescan, else only apply what changed
 * (parameters, discards, the board).  Scanner thread (or the unit test,
 * which has no scanner thread).
 */
static void memdedup_pass_run(MemdedupEngine *engine, bool rescan,
                              bool partial)
{
    MemdedupPass pass = {
        .engine = engine,
        .rescan = rescan,
        .partial = partial,
        .summarize = rescan,
        .fps_changed = rescan,
    };

    /* Migration hints first: the source's registration, at once. */
    memdedup_apply_pending_hints(engine);
    memdedup_pass_snapshot(&pass);
    pass.summaries = g_new0(MemdedupSummaryStats, pass.nr_blocks);
    memdedup_pass_apply_known(&pass);
    if (rescan && !memdedup_pass_hash(&pass)) {
        memdedup_pass_abort(&pass);
        return;
    }
    memdedup_pass_forget_discarded(&pass);
    if (pass.summarize) {
        memdedup_pass_count(&pass);
    }
    memdedup_pass_register(&pass);
    memdedup_pass_finish(&pass);
}

void memdedup_run_pass(MemdedupEngine *engine, bool rescan)
{
    memdedup_pass_run(engine, rescan, false);
}

void memdedup_run_partial_pass(MemdedupEngine *engine)
{
    memdedup_pass_run(engine, true, true);
}
