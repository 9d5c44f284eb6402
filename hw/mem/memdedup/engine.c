/*
 * memdedup: the engine
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * One engine per process manages the RAM of every memory-backend-ksm.
 * A scanner thread runs passes: it hashes every resident page of every
 * managed block (scan.c), rebuilds the duplicate set (index.c), judges
 * each region (policy.c) and madvises the regions that changed.  Between
 * passes it refreshes the kernel's view (kernel.c) once a second.
 *
 * Lifetime and locking:
 *  - Blocks join through memdedup_block_add (backend, BQL) and leave
 *    through the RAMBlockNotifier's ram_block_removed hook (BQL), which
 *    marks them removed before QEMU unmaps the RAM after an RCU grace
 *    period.  The scanner touches guest memory (reads and madvise) only
 *    inside an RCU read-side section in which it saw removed == false,
 *    so it never touches RAM after its removal.
 *  - Block metadata is reference counted: the engine's list, the backend
 *    and a running pass each hold a reference; the last one frees it.
 *  - MemdedupEngine.lock protects the block list, the settings and the
 *    published statistics.  It is never held while hashing, reading
 *    kernel files or calling madvise, so QMP never waits for a pass.
 *  - Registration (madvise) happens only in the scanner thread, outside
 *    the BQL.
 */

#include "qemu/osdep.h"
#include "qemu/atomic.h"
#include "qemu/error-report.h"
#include "qemu/guest-random.h"
#include "qemu/main-loop.h"
#include "qemu/module.h"
#include "qemu/rcu.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "qapi/visitor.h"
#include "qapi/qapi-events-memdedup.h"
#include "qom/object_interfaces.h"
#include "sysemu/sysemu.h"
#include "memdedup-internal.h"
#include "trace.h"

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

/* Engine defaults when no memdedup object exists. */
#define MEMDEDUP_SCAN_RATE_DEFAULT       (1 * GiB)   /* bytes/s */
#define MEMDEDUP_SCAN_RATE_MIN           (1 * MiB)   /* bytes/s */
/* More than any memory bandwidth; QMP wraps negative sizes above it. */
#define MEMDEDUP_SCAN_RATE_MAX           (1 * PiB)   /* bytes/s */
#define MEMDEDUP_SCAN_THREADS_DEFAULT    1
#define MEMDEDUP_SCAN_THREADS_MAX        8
#define MEMDEDUP_RESCAN_INTERVAL_DEFAULT 10000       /* ms */
#define MEMDEDUP_RESCAN_INTERVAL_MIN     100         /* ms */
#define MEMDEDUP_RESCAN_INTERVAL_MAX     86400000    /* ms, one day */
/*
 * Each quiet pass (MEMDEDUP_QUIET_PERCENT) doubles the wait before the
 * next, up to rescan-backoff times rescan-interval; any other pass goes
 * back to rescan-interval.
 */
#define MEMDEDUP_RESCAN_BACKOFF_DEFAULT  8
#define MEMDEDUP_RESCAN_BACKOFF_MAX      64
/* How often the kernel's merged counts are refreshed between passes. */
#define MEMDEDUP_KERNEL_REFRESH_MS       1000
/* MADV_COLLAPSE waits for ksmd's full scans at most this long. */
#define MEMDEDUP_COLLAPSE_MAX_WAIT_MS    (5 * 60 * 1000)
/* Pages merged outside the one block may differ by this between reads. */
#define MEMDEDUP_VIEW_OUTSIDE_SLACK      16
/*
 * Reading smaps walks every page table entry of the process (half of
 * the engine's CPU in a steady state when read every second): after a
 * pass the view is refreshed 1 s later, then at intervals that double,
 * up to this; a query finds it at most MEMDEDUP_KERNEL_QUERY_STALE_MS
 * old.  A refresh that ksm_stat can answer does not read smaps, but
 * smaps is read at least this often.
 */
#define MEMDEDUP_KERNEL_REFRESH_MAX_MS   16000
/*
 * ... and while reads at that age find nothing changed, the age doubles
 * up to this many times it; smaps reads also never take more than one
 * part in MEMDEDUP_KERNEL_READ_SHARE of the scanner thread's time (a
 * large guest: about 2 s of CPU per read for 64 GiB).
 */
#define MEMDEDUP_KERNEL_REFRESH_BACKOFF  8
#define MEMDEDUP_KERNEL_READ_SHARE       100
/* A query finding the view older than this has it read at once. */
#define MEMDEDUP_KERNEL_QUERY_STALE_MS   5000
/* How often a migration destination looks for the end of the incoming. */
#define MEMDEDUP_INCOMING_POLL_MS        100
/* Longest sleep of the rate limiter before it looks at quit again. */
#define MEMDEDUP_THROTTLE_SLICE_US       100000

MemdedupEngine memdedup_engine;
static bool memdedup_unmerge_warned;

static void memdedup_engine_init(void)
{
    MemdedupEngine *engine = &memdedup_engine;
    static bool done;

    if (done) {
        return;
    }
    done = true;
    qemu_mutex_init(&engine->lock);
    qemu_cond_init(&engine->wakeup);
    QTAILQ_INIT(&engine->blocks);
    engine->scan_rate = MEMDEDUP_SCAN_RATE_DEFAULT;
    engine->scan_threads = MEMDEDUP_SCAN_THREADS_DEFAULT;
    engine->rescan_interval = MEMDEDUP_RESCAN_INTERVAL_DEFAULT;
    engine->rescan_backoff = MEMDEDUP_RESCAN_BACKOFF_DEFAULT;
    engine->rescan_factor = 1;
    engine->collapse_after_scans = -1;
    engine->view_outside_pages = -1;
    engine->view_outside_last = -1;
    engine->view_block_pages = -1;
    engine->view_derived_merging = -1;
    engine->view_age_factor = 1;
    engine->view_max_age = MEMDEDUP_KERNEL_REFRESH_MAX_MS;
    engine->dupset_gen = 1;     /* a new block's judged_gen 0 never matches */
    engine->state = MEMDEDUP_STATE_DISABLED;
    qemu_guest_getrandom_nofail(&engine->seed, sizeof(engine->seed));
    engine->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    engine->pagemap_scan = engine->pagemap_fd >= 0;    /* until refused */
    engine->kpageflags_fd = open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);
    /* Opened but unreadable (another file mounted over it): none. */
    if (engine->kpageflags_fd >= 0) {
        uint64_t flags;

        if (pread(engine->kpageflags_fd, &flags, sizeof(flags), 0) !=
                sizeof(flags)) {
            close(engine->kpageflags_fd);
            engine->kpageflags_fd = -1;
        }
    }
    memdedup_learn_zero_pfns(engine);
    memdedup_migration_init(engine);
}

void memdedup_engine_pause(MemdedupEngine *engine, const char *reason,
                           bool incoming)
{
    qemu_mutex_lock(&engine->lock);
    g_free(engine->paused_reason);
    engine->paused_reason = g_strdup(reason);
    engine->incoming = incoming;
    qatomic_set(&engine->paused, true);
    qemu_cond_signal(&engine->wakeup);
    qemu_mutex_unlock(&engine->lock);
    trace_memdedup_pause(reason);
    qapi_event_send_memdedup_state_changed(MEMDEDUP_STATE_PAUSED, reason);
}

void memdedup_engine_resume(MemdedupEngine *engine, const char *reason)
{
    MemdedupState state;

    qemu_mutex_lock(&engine->lock);
    if (!engine->paused) {
        qemu_mutex_unlock(&engine->lock);
        return;
    }
    g_free(engine->paused_reason);
    engine->paused_reason = NULL;
    engine->incoming = false;
    qatomic_set(&engine->paused, false);
    engine->scan_requested = true;
    engine->params_dirty = true;
    state = engine->state;
    qemu_cond_signal(&engine->wakeup);
    qemu_mutex_unlock(&engine->lock);
    trace_memdedup_resume(reason);
    qapi_event_send_memdedup_state_changed(state, reason);
}

/* ------------------------------------------------------------------ */
/* Block lifetime                                                      */
/* ------------------------------------------------------------------ */

static void memdedup_block_ref(MemdedupBlock *blk)
{
    qatomic_inc(&blk->refcount);
}

static void memdedup_block_unref(MemdedupBlock *blk)
{
    if (qatomic_fetch_dec(&blk->refcount) == 1) {
        g_free(blk->fps);
        g_free(blk->nodes);
        g_free(blk->numa_stats);
        g_free(blk->regions);
        g_free(blk->hints);
        g_free(blk->discarded);
        g_free(blk->plugged);
        g_free(blk->id);
        g_free(blk);
    }
}

/*
 * Take @blk off the engine's list.  Engine lock held; BQL held.  The
 * caller emits MEMDEDUP_BACKEND_REMOVED with the returned id.
 */
static char *memdedup_block_detach_locked(MemdedupBlock *blk)
{
    char *id = g_strdup(blk->id);

    qatomic_store_release(&blk->removed, true);
    QTAILQ_REMOVE(&memdedup_engine.blocks, blk, next);
    memdedup_engine.blocks_gen++;
    trace_memdedup_block_removed(blk->id);
    memdedup_block_unref(blk);
    return id;
}

/* RAMBlockNotifier hook: BQL held, before the RAM is unmapped. */
static void memdedup_ram_block_removed(RAMBlockNotifier *n, void *host,
                                       size_t size, size_t max_size)
{
    MemdedupEngine *engine = &memdedup_engine;
    MemdedupBlock *blk, *next;
    g_autofree char *removed = NULL;

    qemu_mutex_lock(&engine->lock);
    QTAILQ_FOREACH_SAFE(blk, &engine->blocks, next, next) {
        if (blk->host == host) {
            removed = memdedup_block_detach_locked(blk);
            /* The next pass rebuilds the index without it. */
            engine->scan_requested = true;
            qemu_cond_signal(&engine->wakeup);
            break;
        }
    }
    qemu_mutex_unlock(&engine->lock);
    if (removed) {
        qapi_event_send_memdedup_backend_removed(removed);
    }
}

static void memdedup_ram_block_resized(RAMBlockNotifier *n, void *host,
                                       size_t old_size, size_t new_size)
{
    /*
     * memory-backend-ksm RAM is never resizable (only migration-resizable
     * firmware blocks are, and the engine does not manage them).
     */
}

static void *memdedup_thread(void *opaque);

MemdedupBlock *memdedup_block_add(const char *id, void *host, uint64_t size,
                                  const MemdedupParams *params, Error **errp)
{
    MemdedupEngine *engine = &memdedup_engine;
    MemdedupBlock *blk;

    memdedup_engine_init();
    if (memdedup_policy_registers(params->policy) &&
        !memdedup_host_has_ksm()) {
        error_setg(errp, "dedup-policy '%s' needs KSM, but the host has none "
                   "(%s is missing); use dedup-policy=estimate or off",
                   MemdedupPolicy_str(params->policy),
                   memdedup_ksm_sysfs_dir());
        return NULL;
    }

    blk = g_new0(MemdedupBlock, 1);
    blk->id = g_strdup(id);
    blk->host = host;
    blk->size = size;
    blk->page_size = qemu_real_host_page_size();
    blk->nr_pages = DIV_ROUND_UP(size, blk->page_size);
    blk->pages_per_region = params->region_size / blk->page_size;
    blk->nr_regions = DIV_ROUND_UP(blk->nr_pages, blk->pages_per_region);
    /* A huge, sparse backend (reserve=off) may need more than exists. */
    blk->fps = g_try_new0(uint32_t, blk->nr_pages);
    blk->regions = g_try_new0(MemdedupRegion, blk->nr_regions);
    if (!blk->fps || !blk->regions || !memdedup_numa_block_init(blk)) {
        error_setg(errp, "memory-backend-ksm '%s': cannot allocate %" PRIu64
                   " MiB of memdedup metadata for its %" PRIu64 " GiB",
                   id, (blk->nr_pages * (sizeof(uint32_t) +
                                         sizeof(int8_t)) +
                        blk->nr_regions * sizeof(MemdedupRegion)) / MiB,
                   size / GiB);
        g_free(blk->fps);
        g_free(blk->nodes);
        g_free(blk->regions);
        g_free(blk->id);
        g_free(blk);
        return NULL;
    }
    blk->max_ranges = MEMDEDUP_MAX_RANGES_DEFAULT;
    blk->params = *params;
    blk->params_changed = true;
    blk->stats.kernel_merged_pages = -1;
    blk->stats.kernel_merged_pages_exact = -1;
    blk->refcount = 2;          /* the engine's list and the backend */

    /*
     * QEMU's ram_block_add() madvised the whole block MERGEABLE when the
     * machine's mem-merge is on; registration belongs to the engine, so
     * undo that.  Nothing can be merged yet, so this unmerges nothing.
     * Until the engine has judged a region it stays on small pages, so
     * that KSM can merge it quickly once registered.
     */
    if (memdedup_host_has_ksm()) {
        madvise(host, size, MADV_UNMERGEABLE);
    }
    if (params->manage_thp) {
        madvise(host, size, MADV_NOHUGEPAGE);
    }

    qemu_mutex_lock(&engine->lock);
    if (!engine->notifier.ram_block_removed) {
        engine->notifier.ram_block_removed = memdedup_ram_block_removed;
        engine->notifier.ram_block_resized = memdedup_ram_block_resized;
        ram_block_notifier_add(&engine->notifier);
    }
    QTAILQ_INSERT_TAIL(&engine->blocks, blk, next);
    engine->blocks_gen++;
    engine->params_dirty = true;
    if (engine->state == MEMDEDUP_STATE_DISABLED) {
        engine->state = MEMDEDUP_STATE_IDLE;
    }
    engine->scan_requested = true;
    if (!engine->thread_started) {
        engine->thread_started = true;
        qemu_thread_create(&engine->thread, "memdedup", memdedup_thread,
                           engine, QEMU_THREAD_DETACHED);
    }
    qemu_cond_signal(&engine->wakeup);
    qemu_mutex_unlock(&engine->lock);

    /* Follow virtio-mem's plugged parts, if it is used with one. */
    memdedup_discard_init();

    trace_memdedup_block_added(id, size, params->region_size);
    qapi_event_send_memdedup_backend_added(id, size);
    return blk;
}

void memdedup_block_release(MemdedupBlock *blk)
{
    MemdedupEngine *engine = &memdedup_engine;
    g_autofree char *removed = NULL;

    if (!blk) {
        return;
    }

    qemu_mutex_lock(&engine->lock);
    if (!qatomic_read(&blk->removed)) {
        removed = memdedup_block_detach_locked(blk);
    }
    qemu_mutex_unlock(&engine->lock);
    if (removed) {
        qapi_event_send_memdedup_backend_removed(removed);
    }
    memdedup_block_unref(blk);
}

MemdedupBlock *memdedup_block_find_host(void *host)
{
    MemdedupEngine *engine = &memdedup_engine;
    MemdedupBlock *blk;

    QEMU_LOCK_GUARD(&engine->lock);
    QTAILQ_FOREACH(blk, &engine->blocks, next) {
        if (blk->host == host && !qatomic_read(&blk->removed)) {
            memdedup_block_ref(blk);
            return blk;
        }
    }
    return NULL;
}

void memdedup_block_put(MemdedupBlock *blk)
{
    memdedup_block_unref(blk);
}

/* Queue regions [@first, @last] for the scanner to forget (lock held). */
static void memdedup_block_discarded_locked(MemdedupBlock *blk,
                                            uint64_t first, uint64_t last)
{
    if (!blk->discarded) {
        blk->discarded = bitmap_new(blk->nr_regions);
    }
    bitmap_set(blk->discarded, first, last - first + 1);
    memdedup_engine.discards_pending = true;
    qemu_cond_signal(&memdedup_engine.wakeup);
}

void memdedup_block_track_plugged(MemdedupBlock *blk)
{
    QEMU_LOCK_GUARD(&memdedup_engine.lock);
    if (!blk->plugged) {
        qatomic_store_release(&blk->plugged, bitmap_new(blk->nr_pages));
        /* What was scanned before is not plugged until reported so. */
        memdedup_block_discarded_locked(blk, 0, blk->nr_regions - 1);
    }
}

void memdedup_rescan_hurry_locked(MemdedupEngine *engine)
{
    engine->rescan_factor = 1;
    engine->rescan_hurry = true;
    qemu_cond_signal(&engine->wakeup);
}

void memdedup_block_plug(MemdedupBlock *blk, uint64_t first, uint64_t count,
                         bool plugged)
{
    QEMU_LOCK_GUARD(&memdedup_engine.lock);
    if (!blk->plugged || !count || first >= blk->nr_pages) {
        return;
    }
    count = MIN(count, blk->nr_pages - first);
    trace_memdedup_plug(blk->id, first * blk->page_size,
                        count * blk->page_size, plugged);
    if (plugged) {
        bitmap_set(blk->plugged, first, count);
        memdedup_rescan_hurry_locked(&memdedup_engine);
        return;
    }
    bitmap_clear(blk->plugged, first, count);
    memdedup_block_discarded_locked(blk, first / blk->pages_per_region,
                                    (first + count - 1) /
                                    blk->pages_per_region);
}

/*
 * Drop the fingerprints of the pages of @discarded regions that are no
 * longer plugged, and recount those regions.  Scanner thread, between
 * hashing phases.
 */
static void memdedup_forget_discarded(MemdedupBlock *blk,
                                      unsigned long *discarded)
{
    unsigned long *plugged = qatomic_load_acquire(&blk->plugged);
    uint64_t i, p;

    for (i = find_first_bit(discarded, blk->nr_regions); i < blk->nr_regions;
         i = find_next_bit(discarded, blk->nr_regions, i + 1)) {
        MemdedupRegion *r = &blk->regions[i];
        uint64_t first = i * blk->pages_per_region;
        uint64_t last = MIN(first + blk->pages_per_region, blk->nr_pages);
        uint32_t resident = 0, zero = 0;

        for (p = first; p < last; p++) {
            if (plugged && !test_bit(p, plugged)) {
                blk->fps[p] = MEMDEDUP_FP_ABSENT;
            }
            resident += blk->fps[p] != MEMDEDUP_FP_ABSENT;
            zero += blk->fps[p] == MEMDEDUP_FP_ZERO;
        }
        r->resident = resident;
        r->zero = zero;
        r->volatile_pages = MIN(r->volatile_pages, resident);
        r->duplicate = 0;       /* recounted by the summary */
        blk->judged_gen = 0;
        r->unique = resident - zero;
        if (!resident) {
            r->stable_passes = 0;
        }
    }
}

/*
 * Bytes in [@start, @end) that the kernel reports merged, from
 * /proc/self/smaps; -1 if unknown.  @smaps is read and parsed on first
 * use and kept for the caller's later calls (the caller clears it): one
 * parse however many ranges are looked up.
 */
static int64_t memdedup_merged_bytes(MemdedupSmapsView *smaps,
                                     uint64_t start, uint64_t end)
{
    uint64_t ksm_bytes, vmas, mergeable;

    if (!smaps->read) {
        memdedup_smaps_view_read_merged(smaps, NULL);
    }
    if (!smaps->has_ksm) {
        return -1;
    }
    memdedup_smaps_view_sum(smaps, start, end, &ksm_bytes, &vmas, &mergeable);
    return ksm_bytes;
}

/*
 * Would unregistering [@start, @end) of @blk fit in MemAvailable?  When
 * the merged amount is unknown, the whole range is assumed merged.
 * @smaps as for memdedup_merged_bytes.
 */
static bool memdedup_unmerge_check(MemdedupBlock *blk, uint64_t start,
                                   uint64_t end, bool force,
                                   MemdedupSmapsView *smaps,
                                   uint64_t *merged, Error **errp)
{
    uint64_t available, total;
    int64_t bytes = memdedup_merged_bytes(smaps, start, end);

    *merged = bytes < 0 ? end - start : bytes;
    if (force || !*merged) {
        return true;
    }
    if (!memdedup_read_meminfo(&available, &total)) {
        return true;            /* nothing to judge by: do not block */
    }
    if (memdedup_unmerge_admissible(*merged, available, total)) {
        return true;
    }
    error_setg(errp, "memory-backend-ksm '%s': unmerging %.1f MiB needs "
               "more than the host's MemAvailable (%.1f MiB, with %d%% of "
               "MemTotal kept in reserve); set force-unmerge=on to unmerge "
               "anyway", blk->id, (double)*merged / MiB,
               (double)available / MiB, MEMDEDUP_UNMERGE_RESERVE_PERCENT);
    return false;
}

bool memdedup_block_set_params(MemdedupBlock *blk, const MemdedupParams *params,
                               Error **errp)
{
    MemdedupEngine *engine = &memdedup_engine;
    MemdedupParams old;
    g_auto(MemdedupSmapsView) smaps = { 0 };
    uint64_t merged;

    qemu_mutex_lock(&engine->lock);
    old = blk->params;
    qemu_mutex_unlock(&engine->lock);

    if (memdedup_policy_registers(params->policy) &&
        !memdedup_host_has_ksm()) {
        error_setg(errp, "dedup-policy '%s' needs KSM, but the host has none",
                   MemdedupPolicy_str(params->policy));
        return false;
    }
    /* Leaving a registering policy for one that registers nothing. */
    if (memdedup_policy_registers(old.policy) &&
        !memdedup_policy_registers(params->policy) &&
        !qatomic_read(&blk->removed) &&
        !memdedup_unmerge_check(blk, (uintptr_t)blk->host,
                                (uintptr_t)blk->host + blk->size,
                                params->force_unmerge, &smaps, &merged,
                                errp)) {
        return false;
    }

    qemu_mutex_lock(&engine->lock);
    blk->params = *params;
    blk->params_changed = true;
    engine->params_dirty = true;
    qemu_cond_signal(&engine->wakeup);
    qemu_mutex_unlock(&engine->lock);
    trace_memdedup_block_params(blk->id, MemdedupPolicy_str(params->policy),
                                params->duplicate_threshold);
    return true;
}

bool memdedup_request_scan(Error **errp)
{
    MemdedupEngine *engine = &memdedup_engine;

    memdedup_engine_init();
    QEMU_LOCK_GUARD(&engine->lock);
    if (QTAILQ_EMPTY(&engine->blocks)) {
        error_setg(errp, "no memory-backend-ksm exists");
        return false;
    }
    if (engine->paused) {
        error_setg(errp, "the memdedup engine is paused (%s)",
                   engine->paused_reason);
        return false;
    }
    engine->scan_requested = true;
    qemu_cond_signal(&engine->wakeup);
    return true;
}

/* ------------------------------------------------------------------ */
/* Registration                                                        */
/* ------------------------------------------------------------------ */

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

/*
 * The kernel refused a registration change of @blk with @err.  Counted
 * and reported in query-memdedup; warned about once per backend.  Out of
 * VMAs (vm.max_map_count reached, or no memory to split a VMA), the
 * backend's range budget is halved, so that later passes coalesce into
 * fewer VMAs.  Scanner threads.
 */
static void memdedup_advise_failed(MemdedupBlock *blk, int advice, int err)
{
    uint32_t ranges = qatomic_read(&blk->max_ranges);

    qatomic_inc(&blk->advise_failures);
    qatomic_set(&blk->advise_errno, err);
    /*
     * Out of VMAs (madvise reports a failed split as EAGAIN, or ENOMEM
     * on older kernels): halve the range budget, once per policy
     * application however many regions were refused.
     */
    if ((err == EAGAIN || err == ENOMEM) && ranges > 1 &&
        !qatomic_xchg(&blk->budget_cut, true)) {
        ranges = MAX(ranges / 2, 1);
        qatomic_set(&blk->max_ranges, ranges);
    }
    if (!qatomic_xchg(&blk->advise_warned, true)) {
        warn_report("memdedup: backend '%s': the kernel refused %s: %s%s",
                    blk->id, memdedup_advice_name(advice), strerror(err),
                    err == EAGAIN || err == ENOMEM ?
                    " (vm.max_map_count reached?); registering fewer, "
                    "larger ranges" : "");
    }
}

/*
 * madvise regions [@first, @first + @count) of @blk.  Inside an RCU
 * read-side section that saw the block alive, so the RAM stays mapped.
 */
static bool memdedup_advise(MemdedupBlock *blk, uint64_t first,
                            uint64_t count, int advice)
{
    uint64_t region_size = blk->pages_per_region * blk->page_size;
    uint64_t start = first * region_size;
    uint64_t len = MIN(count * region_size, blk->size - start);
    int ret, err = 0;

    WITH_RCU_READ_LOCK_GUARD() {
        /* Paused for an incoming migration, only hints are applied. */
        if (qatomic_load_acquire(&blk->removed) ||
            (qatomic_read(&memdedup_engine.paused) &&
             !qatomic_read(&memdedup_engine.incoming))) {
            return false;
        }
        ret = memdedup_madvise(blk->host + start, len, advice);
        err = ret ? errno : 0;
    }
    trace_memdedup_advise(blk->id, start, len, advice, err);
    if (ret && (advice == MADV_MERGEABLE || advice == MADV_UNMERGEABLE)) {
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
static void memdedup_register_early(MemdedupBlock *blk,
                                    const MemdedupParams *params,
                                    uint64_t region)
{
    MemdedupRegion *r = &blk->regions[region];

    if (r->registered || !memdedup_region_wanted(params, r)) {
        return;
    }
    if (r->huge) {
        memdedup_advise(blk, region, 1, MADV_NOHUGEPAGE);
        r->huge = false;
    }
    r->registered = memdedup_advise(blk, region, 1, MADV_MERGEABLE);
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
 * Bring the registration of @blk in line with @params and the region
 * summaries: register wanted regions, unregister unwanted ones (subject
 * to admission control), give stable unique regions THP back.  Runs of
 * equal decisions are advised with one call.  True if some memory was
 * unregistered (and so unmerged).  Scanner thread only.
 */
static bool memdedup_apply_policy(MemdedupBlock *blk,
                                  const MemdedupParams *params,
                                  bool collapse, uint64_t *refusals)
{
    bool unregistered = false;
    uint64_t n = blk->nr_regions, i, j;
    g_autofree bool *wanted = g_new(bool, n);
    g_autofree bool *thp = g_new0(bool, n);
    /* Read once, if anything unmerges. */
    g_auto(MemdedupSmapsView) smaps = { 0 };
    uint64_t region_size = blk->pages_per_region * blk->page_size;
    uint64_t failures = qatomic_read(&blk->advise_failures);
    bool thp_allowed;

    for (i = 0; i < n; i++) {
        wanted[i] = memdedup_region_wanted(params, &blk->regions[i]);
    }
    qatomic_set(&blk->budget_cut, false);
    memdedup_coalesce_ranges(wanted, n, qatomic_read(&blk->max_ranges));
    for (i = 0; i < n; i++) {
        uint64_t pages = MIN(blk->pages_per_region,
                             blk->nr_pages - i * blk->pages_per_region);
        thp[i] = !wanted[i] && pages == blk->pages_per_region &&
                 memdedup_region_wants_thp(params, &blk->regions[i],
                                           blk->pages_per_region);
    }

    /* Registration changes, in runs. */
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
        if (want) {
            if (!memdedup_register_run(blk, i, j)) {
                memdedup_advise_regions(blk, i, j, true);
            }
        } else {
            uint64_t start = (uintptr_t)blk->host + i * region_size;
            uint64_t end = MIN(start + (j - i) * region_size,
                               (uintptr_t)blk->host + blk->size);
            uint64_t merged;
            Error *local_err = NULL;

            if (!memdedup_unmerge_check(blk, start, end,
                                        params->force_unmerge, &smaps,
                                        &merged, &local_err)) {
                /* Reported once per process; counted every time. */
                warn_report_once_cond(&memdedup_unmerge_warned, "%s",
                                      error_get_pretty(local_err));
                error_free(local_err);
                (*refusals)++;
                continue;
            }
            unregistered = true;
            if (memdedup_advise(blk, i, j - i, MADV_UNMERGEABLE)) {
                for (uint64_t k = i; k < j; k++) {
                    blk->regions[k].registered = false;
                }
                trace_memdedup_unmerge(blk->id, start, end - start, merged);
            } else {
                memdedup_advise_regions(blk, i, j, false);
            }
        }
    }

    /* Everything applied: the last refusal is history. */
    if (qatomic_read(&blk->advise_failures) == failures) {
        qatomic_set(&blk->advise_errno, 0);
    }

    /*
     * Transparent huge pages back for stable unique regions, in runs --
     * unless the host administrator turned THP off (MADV_COLLAPSE would
     * ignore that).
     */
    thp_allowed = collapse && memdedup_host_thp_allowed();
    for (i = 0; i < n && thp_allowed; i = j) {
        for (j = i; j < n && thp[j] && !blk->regions[j].huge &&
             !blk->regions[j].registered; j++) {
            /* extend the run */
        }
        if (j == i) {
            j = i + 1;
            continue;
        }
        if (memdedup_advise(blk, i, j - i, MADV_HUGEPAGE)) {
            /* Best effort: the kernel may lack MADV_COLLAPSE or memory. */
            memdedup_advise(blk, i, j - i, MADV_COLLAPSE);
            for (uint64_t k = i; k < j; k++) {
                blk->regions[k].huge = true;
            }
        }
    }
    return unregistered;
}

/* ------------------------------------------------------------------ */
/* Passes                                                              */
/* ------------------------------------------------------------------ */

/* One block of a pass, with the parameters the pass uses for it. */
typedef struct MemdedupPassBlock {
    MemdedupBlock *blk;
    MemdedupParams params;
    bool apply_only;            /* params changed; no need to rescan */
    bool hinted;                /* registered from hints, not yet scanned */
    bool indexed;               /* its pages are in this pass's dup set */
    uint32_t *cross_before;     /* regions' cross_vm before the lookups */
    unsigned long *discarded;   /* regions to forget pages of, or NULL */
    uint64_t first_item;        /* index of its region 0 in the item space */
} MemdedupPassBlock;

typedef struct MemdedupPass {
    MemdedupEngine *engine;
    MemdedupPassBlock *blocks;
    size_t nr_blocks;
    uint64_t nr_items;          /* regions to scan, over all blocks */
    uint64_t next_item;         /* atomic: next region to take */
    uint64_t bytes_hashed;      /* atomic */
    uint64_t churn;             /* atomic: see MemdedupScanBuffers */
    uint64_t reused;            /* atomic: see MemdedupScanBuffers */
    uint64_t scan_rate;         /* bytes per second */
    int64_t start_ns;           /* QEMU_CLOCK_REALTIME */
    uint64_t cpu_time;          /* atomic, ns */
    uint64_t max_region_pages;
    MemdedupBoard *board;       /* the cross-VM board, or NULL */
    uint64_t blocks_gen;        /* the engine's when the pass began */
    bool inputs_changed;        /* pages discarded, or parameters changed */
} MemdedupPass;

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
static bool memdedup_collapse_allowed(MemdedupEngine *engine,
                                      const MemdedupPass *pass)
{
    uint64_t run, scans;
    bool registered = false;
    size_t b;

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

static uint64_t memdedup_thread_cpu_ns(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)) {
        return 0;
    }
    return ts.tv_sec * NANOSECONDS_PER_SECOND + ts.tv_nsec;
}

/* Should scanner threads stop hashing? */
static bool memdedup_quitting(MemdedupEngine *engine)
{
    return qatomic_read(&engine->quit) || qatomic_read(&engine->paused);
}

/* Sleep as long as the pass is ahead of its byte budget. */
static void memdedup_throttle(MemdedupPass *pass)
{
    /* A long pass must not look like a dead publisher. */
    if (pass->board) {
        memdedup_board_touch(pass->board);
    }
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

/* Hash regions until none is left.  Runs in every scanner thread. */
static void memdedup_pass_work(MemdedupPass *pass)
{
    MemdedupScanBuffers buf;
    uint64_t cpu_start = memdedup_thread_cpu_ns();
    size_t b = 0;

    memdedup_scan_buffers_init(&buf, pass->max_region_pages);
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
        memdedup_throttle(pass);
    }
    qatomic_add(&pass->churn, buf.churn);
    qatomic_add(&pass->reused, buf.reused);
    memdedup_scan_buffers_free(&buf);
    qatomic_add(&pass->cpu_time, memdedup_thread_cpu_ns() - cpu_start);
}

static void *memdedup_worker_thread(void *opaque)
{
    rcu_register_thread();
    memdedup_pass_work(opaque);
    rcu_unregister_thread();
    return NULL;
}

/*
 * End of the hashing phase: rebuild the dup set from every fingerprint
 * and recount each region's duplicates against it.  Returns the number
 * of bytes this metadata needs between passes.
 */
static void memdedup_pass_index(MemdedupPass *pass)
{
    MemdedupEngine *engine = pass->engine;
    uint64_t total = 0, n = 0;
    g_autofree uint32_t *all = NULL;
    g_autofree uint32_t *tmp = NULL;
    g_autofree MemdedupBlock **indexed = g_new(MemdedupBlock *,
                                               MAX(pass->nr_blocks, 1));
    size_t b, nr_indexed = 0;

    for (b = 0; b < pass->nr_blocks; b++) {
        if (pass->blocks[b].params.policy != MEMDEDUP_POLICY_OFF) {
            total += pass->blocks[b].blk->nr_pages;
        }
    }
    all = g_new(uint32_t, MAX(total, 1));
    tmp = g_new(uint32_t, MAX(total, 1));
    for (b = 0; b < pass->nr_blocks; b++) {
        MemdedupBlock *blk = pass->blocks[b].blk;
        uint64_t p;

        if (pass->blocks[b].params.policy == MEMDEDUP_POLICY_OFF ||
            qatomic_read(&blk->removed)) {
            continue;           /* a removed block leaves the index */
        }
        pass->blocks[b].indexed = true;
        indexed[nr_indexed++] = blk;
        for (p = 0; p < blk->nr_pages; p++) {
            if (blk->fps[p] > MEMDEDUP_FP_ZERO) {
                all[n++] = blk->fps[p];
            }
        }
    }
    memdedup_fp_sort(all, tmp, n);
    memdedup_dupset_build(&engine->dupset, all, n);
    /* The per-node sets and per-node statistics (numa-engine.c). */
    memdedup_numa_pass_index(engine, indexed, nr_indexed);
    engine->dupset_gen++;
    engine->indexed_blocks_gen = pass->blocks_gen;
}

/*
 * After hashing: would indexing and summarizing again give what the last
 * summary gave?  They would when every region of every block was scanned
 * and none had a page change, appear, go or move node since the last
 * summary counted it against the current dup set (MemdedupScanBuffers
 * .reused), the blocks are those the dup set was built from, nothing
 * was discarded and no parameter changed, and no other VM published
 * since we last looked up the board.  A quiet guest's rescan then costs
 * its hashing and little more.
 */
static bool memdedup_pass_unchanged(MemdedupPass *pass, bool board_eval)
{
    MemdedupEngine *engine = pass->engine;
    size_t b;

    if (pass->reused != pass->nr_items || pass->churn ||
        pass->inputs_changed || board_eval ||
        engine->indexed_blocks_gen != pass->blocks_gen) {
        return false;
    }
    if (pass->board &&
        memdedup_board_version(pass->board) != engine->board_version) {
        return false;
    }
    for (b = 0; b < pass->nr_blocks; b++) {
        if (pass->blocks[b].hinted ||
            qatomic_read(&pass->blocks[b].blk->removed)) {
            return false;
        }
    }
    return true;
}

/* Is @r wanted only because of its cross-VM duplicates? */
static bool memdedup_region_cross_only(const MemdedupParams *params,
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

/* Sum the region counts of @pb's block into @st. */
static void memdedup_block_tally(MemdedupPassBlock *pb,
                                 MemdedupBlockStats *st)
{
    MemdedupBlock *blk = pb->blk;
    uint64_t i;

    st->resident_pages = st->zero_pages = st->duplicate_pages = 0;
    st->unique_pages = st->volatile_pages = st->candidate_regions = 0;
    st->cross_vm_pages = st->cross_vm_regions = 0;
    for (i = 0; i < blk->nr_regions; i++) {
        MemdedupRegion *r = &blk->regions[i];

        st->resident_pages += r->resident;
        st->zero_pages += r->zero;
        st->duplicate_pages += r->duplicate;
        st->unique_pages += r->unique;
        st->volatile_pages += r->volatile_pages;
        st->candidate_regions += memdedup_region_wanted(&pb->params, r);
        st->cross_vm_pages += r->cross_vm;
        st->cross_vm_regions += memdedup_region_cross_only(&pb->params, r);
    }
}

/*
 * The board lookups of this pass missed a peer that was publishing, or
 * read one that published again meanwhile: a fingerprint not found may
 * just have been missed.  On such a view no region loses cross-VM
 * duplicates -- it would be unregistered, unmerging what the kernel
 * merged, and registered again once the peer has published.  The peer's
 * new publication changes the board's version, and the engine looks
 * again then (memdedup_board_tick).  Returns the regions kept.
 */
static uint64_t memdedup_pass_keep_cross(MemdedupPassBlock *pb,
                                         MemdedupBlockStats *st)
{
    MemdedupBlock *blk = pb->blk;
    uint64_t i, kept = 0;

    if (!pb->cross_before) {
        return 0;
    }
    for (i = 0; i < blk->nr_regions; i++) {
        MemdedupRegion *r = &blk->regions[i];
        uint32_t room = r->resident - r->zero - r->duplicate;
        uint32_t before = MIN(pb->cross_before[i], room);

        if (before > r->cross_vm) {
            r->cross_vm = before;
            r->unique = room - before;
            kept++;
        }
    }
    memdedup_block_tally(pb, st);
    return kept;
}

/*
 * Count @pb's regions against the dup set (and the board), into @st.
 * Without @recount (memdedup_pass_unchanged), each region keeps the
 * counts of the last summary, as do the estimated saving and the
 * per-node statistics: only the sums, the regions' stability and what
 * the kernel merged move.
 */
static void memdedup_pass_summarize(MemdedupEngine *engine,
                                    MemdedupPassBlock *pb,
                                    MemdedupBoard *board,
                                    unsigned long *first_seen,
                                    bool recount,
                                    MemdedupBlockStats *st)
{
    MemdedupBlock *blk = pb->blk;
    MemdedupNumaStats *numa = NULL;
    uint64_t i, p;

    /*
     * The per-node statistics, from the same lookups (numa-engine.c);
     * the kernel's merged pages per node are counted again either way.
     */
    if (recount && pb->indexed) {
        numa = g_new0(MemdedupNumaStats, 1);
    } else if (!recount && pb->params.policy != MEMDEDUP_POLICY_OFF) {
        numa = memdedup_numa_block_stats(blk);
    }
    memset(st, 0, sizeof(*st));
    if (recount && board && pb->params.policy != MEMDEDUP_POLICY_OFF) {
        pb->cross_before = g_new(uint32_t, blk->nr_regions);
    }
    for (i = 0; i < blk->nr_regions; i++) {
        MemdedupRegion *r = &blk->regions[i];
        uint64_t first = i * blk->pages_per_region;
        uint64_t last = MIN(first + blk->pages_per_region, blk->nr_pages);
        uint32_t duplicate = r->duplicate, cross_vm = r->cross_vm;

        if (pb->params.policy != MEMDEDUP_POLICY_OFF) {
            if (pb->cross_before) {
                pb->cross_before[i] = cross_vm;
            }
            if (recount) {
                duplicate = cross_vm = 0;
            }
            for (p = first; recount && p < last; p++) {
                ssize_t idx;

                memdedup_dupset_prefetch(&engine->dupset, blk->fps, p,
                                         blk->nr_pages);
                if (board && p + MEMDEDUP_LOOKAHEAD < blk->nr_pages &&
                    blk->fps[p + MEMDEDUP_LOOKAHEAD] > MEMDEDUP_FP_ZERO) {
                    memdedup_board_prefetch(board,
                                            blk->fps[p + MEMDEDUP_LOOKAHEAD]);
                }
                if (blk->fps[p] <= MEMDEDUP_FP_ZERO) {
                    if (numa) {
                        memdedup_numa_count_page(numa, blk->fps[p],
                                                 blk->nodes[p],
                                                 MEMDEDUP_DUP_NONE);
                    }
                    continue;
                }
                idx = memdedup_numa_find(engine, blk, p, numa);
                if (idx < 0) {
                    /* Unique here; held by another VM? */
                    cross_vm += board &&
                                memdedup_board_lookup(board, blk->fps[p]);
                    continue;
                }
                duplicate++;
                /* Every copy but the first could be freed by merging. */
                if (test_and_set_bit(idx, first_seen)) {
                    st->estimated_saving += blk->page_size;
                }
            }
            r->duplicate = duplicate;
            r->cross_vm = cross_vm;
            r->unique = r->resident - r->zero - duplicate - cross_vm;
            /* Stable: resident and unchanged, pass after pass. */
            if (r->volatile_pages || !r->resident) {
                r->stable_passes = 0;
            } else if (r->stable_passes < UINT8_MAX) {
                r->stable_passes++;
            }
        }
    }
    memdedup_block_tally(pb, st);
    st->scanned_pages = pb->params.policy == MEMDEDUP_POLICY_OFF ? 0 :
                        st->resident_pages;
    /* Each region's duplicates are counted: the next scan may reuse them. */
    blk->judged_gen = pb->params.policy == MEMDEDUP_POLICY_OFF ? 0 :
                      engine->dupset_gen;
    if (recount) {
        st->estimated_saving += st->zero_pages * blk->page_size;
    } else {
        st->estimated_saving = blk->stats.estimated_saving;
    }
    if (numa) {
        memdedup_numa_block_publish(engine, blk, numa);
    }
}

/* Registered bytes, ranges and huge regions of @blk, from its regions. */
static void memdedup_count_registration(MemdedupBlock *blk,
                                        MemdedupBlockStats *st)
{
    uint64_t region_size = blk->pages_per_region * blk->page_size;
    uint64_t i;

    st->registered_bytes = 0;
    st->registered_ranges = 0;
    st->huge_regions = 0;
    for (i = 0; i < blk->nr_regions; i++) {
        if (blk->regions[i].registered) {
            st->registered_bytes += MIN(region_size,
                                        blk->size - i * region_size);
            if (i == 0 || !blk->regions[i - 1].registered) {
                st->registered_ranges++;
            }
        }
        st->huge_regions += blk->regions[i].huge;
    }
}

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
    if (!engine->view_read_time ||
        now - engine->view_read_time >= engine->view_max_age ||
        engine->view_blocks_gen != engine->blocks_gen) {
        return false;
    }
    blk = QTAILQ_FIRST(&engine->blocks);
    if (stat->merging_pages == engine->view_merging_pages &&
        stat->zero_pages == engine->view_zero_pages) {
        if (blk && engine->view_block_pages >= 0) {
            blk->stats.kernel_merged_pages = engine->view_block_pages;
        }
    } else if (blk && engine->view_outside_pages >= 0 &&
               stat->merging_pages != engine->view_derived_merging) {
        blk->stats.kernel_merged_pages =
            MAX(stat->merging_pages - engine->view_outside_pages, 0);
        engine->view_derived_merging = stat->merging_pages;
    } else {
        /*
         * Also when ksmd stopped moving the count since the last derived
         * refresh: the outside count is only as exact as the read that
         * measured it, so one more read makes the quiet view exact.
         */
        return false;
    }
    engine->view_time = now;
    engine->view_wanted = false;
    trace_memdedup_kernel_view(false, stat->merging_pages, stat->zero_pages,
                               engine->view_max_age);
    return true;
}

/*
 * Kernel-merged pages of every managed block, from one smaps read --
 * unless ksm_stat is enough (see above) and @force is false.  Passes
 * force the read when they unregistered memory: that unmerges at once,
 * but ksm_stat shows it only after ksmd's next scan.
 */
static void memdedup_refresh_kernel_view(MemdedupEngine *engine, bool force)
{
    g_auto(MemdedupSmapsView) smaps = { 0 };
    MemdedupKsmStat stat = { .merging_pages = -1, .zero_pages = -1 };
    MemdedupKsmStat after = { .merging_pages = -1 };
    bool have_stat = memdedup_read_ksm_stat(&stat) &&
                     stat.merging_pages >= 0;
    int64_t now = qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
    int64_t block_pages = -1, outside = -1, race = 0, cost_ms;
    uint64_t nr_blocks = 0, cpu0;
    bool same;
    MemdedupBlock *blk;

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
    same = !force && engine->view_read_time && have_stat &&
           stat.merging_pages == engine->view_merging_pages &&
           stat.zero_pages == engine->view_zero_pages &&
           engine->view_blocks_gen == engine->blocks_gen;
    QTAILQ_FOREACH(blk, &engine->blocks, next) {
        uint64_t start = (uintptr_t)blk->host, end = start + blk->size;
        uint64_t ksm_bytes, vmas, mergeable;
        int64_t before = blk->stats.kernel_merged_pages;

        nr_blocks++;
        blk->stats.kernel_merged_pages = -1;
        if (smaps.has_ksm) {
            memdedup_smaps_view_sum(&smaps, start, end, &ksm_bytes, &vmas,
                                    &mergeable);
            /* ksm_stat counts base pages, as smaps's KSM: lines do. */
            block_pages = blk->page_size == qemu_real_host_page_size() ?
                          (int64_t)(ksm_bytes / blk->page_size) : -1;
            blk->stats.kernel_merged_pages = ksm_bytes / blk->page_size;
        }
        same &= blk->stats.kernel_merged_pages == before;
    }
    /*
     * Merged outside the one block: ksm_stat before and after the walk
     * bracket what smaps saw, so take the middle; a previous read that
     * found as many (within both reads' uncertainty) makes it usable.
     */
    if (nr_blocks == 1 && block_pages >= 0 && have_stat &&
        memdedup_read_ksm_stat(&after) && after.merging_pages >= 0) {
        race = ABS(after.merging_pages - stat.merging_pages);
        outside = MAX((stat.merging_pages + after.merging_pages) / 2 -
                      block_pages, 0);
    }
    /*
     * Reads that find nothing changed come less often; any change, and
     * any read forced by a pass or a change of the blocks, starts over.
     */
    engine->view_age_factor = same ?
        MIN(engine->view_age_factor * 2, MEMDEDUP_KERNEL_REFRESH_BACKOFF) : 1;
    engine->view_max_age = MAX((int64_t)MEMDEDUP_KERNEL_REFRESH_MAX_MS *
                               engine->view_age_factor,
                               cost_ms * MEMDEDUP_KERNEL_READ_SHARE);
    engine->view_outside_pages =
        outside >= 0 && engine->view_outside_last >= 0 &&
        ABS(outside - engine->view_outside_last) <=
            race + engine->view_outside_race + MEMDEDUP_VIEW_OUTSIDE_SLACK ?
        outside : -1;
    engine->view_outside_last = outside;
    engine->view_outside_race = race;
    engine->view_block_pages = nr_blocks == 1 ? block_pages : -1;
    engine->view_derived_merging = -1;
    engine->view_time = now;
    engine->view_wanted = false;
    /* Read before smaps: a change meanwhile makes the next read happen. */
    engine->view_read_time = have_stat ? now : 0;
    engine->view_merging_pages = stat.merging_pages;
    engine->view_zero_pages = stat.zero_pages;
    engine->view_blocks_gen = engine->blocks_gen;
    trace_memdedup_kernel_view(true, have_stat ? stat.merging_pages : -1,
                               have_stat ? stat.zero_pages : -1,
                               engine->view_max_age);
}

/*
 * KSM pages, through kpageflags, in the runs of regions of @blk for which
 * @want says yes; -1 if unknown.  KSM pages exist only in registered
 * regions (unregistering unmerges), so nothing else needs looking at.
 * Scanner thread, lock not held.
 */
static int64_t memdedup_count_ksm_runs(MemdedupEngine *engine,
                                       MemdedupPassBlock *pb,
                                       bool (*want)(MemdedupPassBlock *pb,
                                                    uint64_t region))
{
    MemdedupBlock *blk = pb->blk;
    uint64_t region_size = blk->pages_per_region * blk->page_size;
    uint64_t i, j;
    int64_t total = 0;

    if (engine->pagemap_fd < 0 || engine->kpageflags_fd < 0) {
        return -1;
    }
    /* Nothing merged, and PFNs visible, so that a walk would say so. */
    if (engine->pfns_visible && !memdedup_process_has_merged_pages(NULL)) {
        return 0;
    }
    for (i = 0; i < blk->nr_regions && total >= 0; i = j) {
        for (j = i; j < blk->nr_regions && want(pb, j); j++) {
            /* extend the run */
        }
        if (j == i) {
            j = i + 1;
            continue;
        }
        WITH_RCU_READ_LOCK_GUARD() {
            int64_t n = -1;

            if (!qatomic_load_acquire(&blk->removed)) {
                n = memdedup_count_ksm_pages(
                    engine->pagemap_fd, engine->kpageflags_fd,
                    (uintptr_t)blk->host + i * region_size,
                    MIN((j - i) * region_size, blk->size - i * region_size));
            }
            total = n < 0 ? -1 : total + n;
        }
    }
    return total;
}

static bool memdedup_region_registered(MemdedupPassBlock *pb, uint64_t i)
{
    return pb->blk->regions[i].registered;
}

/* Exact KSM page counts through kpageflags; scanner, lock not held. */
static void memdedup_count_exact(MemdedupEngine *engine, MemdedupPass *pass,
                                 int64_t *exact)
{
    size_t b;

    for (b = 0; b < pass->nr_blocks; b++) {
        exact[b] = memdedup_count_ksm_runs(engine, &pass->blocks[b],
                                           memdedup_region_registered);
    }
}

/*
 * Register the regions the migration source had registered: madvise
 * only, nothing is read, so this also runs while the engine is paused
 * for an incoming migration, as soon as the hints arrive.  Until the
 * block's next scan, the policy leaves that registration alone (it has
 * no summaries to judge it by).  Scanner thread.
 */
static void memdedup_apply_pending_hints(MemdedupEngine *engine)
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
            MemdedupBlockStats st;

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
            blk->hinted = true;
            trace_memdedup_hints_applied(blk->id, hinted);

            /* Show that registration now. */
            memdedup_count_registration(blk, &st);
            qemu_mutex_lock(&engine->lock);
            blk->stats.registered_bytes = st.registered_bytes;
            blk->stats.registered_ranges = st.registered_ranges;
            blk->stats.huge_regions = st.huge_regions;
            blk->stats.hinted_regions += hinted;
            qemu_mutex_unlock(&engine->lock);
        }
        for (i = 0; i < todo->len; i++) {
            memdedup_block_unref(g_ptr_array_index(todo, i));
        }
        qemu_mutex_lock(&engine->lock);
    }
    qemu_mutex_unlock(&engine->lock);
}

/*
 * Publish the fingerprints of our resident, non-zero pages to the board,
 * leaving out volatile regions (a quarter or more of their pages changed
 * in the pass): counted first, so that the board can choose a subset if
 * they don't all fit.  Scanner thread, after the summaries.
 */
/*
 * Would publishing after this pass write what the last publication
 * wrote?  Yes if it was published by a pass in which nothing changed,
 * and nothing changed since: no page changed, appeared or went (so no
 * region turned volatile or stable), no block came or went, no
 * parameter changed, and our slot still holds it.  Then the filter is
 * left as it is, and the peers need not look everything up again.
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
            return;             /* not on the board (full) */
        }
        for (b = 0; b < pass->nr_blocks; b++) {
            MemdedupBlock *blk = pass->blocks[b].blk;
            uint64_t i, p;

            if (pass->blocks[b].params.policy == MEMDEDUP_POLICY_OFF ||
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
 * KSM pages in the registered regions that are wanted only for their
 * cross-VM duplicates: what the board saved.
 */
static bool memdedup_region_registered_cross(MemdedupPassBlock *pb,
                                             uint64_t i)
{
    return pb->blk->regions[i].registered &&
           memdedup_region_cross_only(&pb->params, &pb->blk->regions[i]);
}

static void memdedup_count_cross_merged(MemdedupEngine *engine,
                                        MemdedupPass *pass,
                                        MemdedupBlockStats *stats)
{
    size_t b;

    for (b = 0; b < pass->nr_blocks; b++) {
        stats[b].cross_vm_merged_pages = memdedup_count_ksm_runs(
            engine, &pass->blocks[b], memdedup_region_registered_cross);
    }
}

/*
 * Pages discarded (virtio-mem) leave the index when the pass gets to
 * them, also between passes: after hashing, which skipped them already.
 */
static void memdedup_pass_forget_discarded(MemdedupPass *pass)
{
    size_t b;

    for (b = 0; b < pass->nr_blocks; b++) {
        if (pass->blocks[b].discarded) {
            memdedup_forget_discarded(pass->blocks[b].blk,
                                      pass->blocks[b].discarded);
            g_free(pass->blocks[b].discarded);
            pass->blocks[b].discarded = NULL;
        }
    }
}

static void memdedup_run_pass(MemdedupEngine *engine, bool rescan)
{
    MemdedupPass pass = { .engine = engine };
    g_autofree unsigned long *first_seen = NULL;
    g_autofree MemdedupBlockStats *stats = NULL;
    g_autofree uint64_t *refusals = NULL;
    g_autofree int64_t *exact = NULL;
    g_autofree QemuThread *workers = NULL;
    uint64_t scanned = 0, zero = 0, duplicate = 0, registered = 0;
    uint64_t metadata = 0, pass_no, duration;
    uint32_t nr_threads, t;
    MemdedupBlock *blk;
    bool collapse;              /* huge pages back to unique regions */
    bool unregistered = false;  /* unmerged: ksm_stat lags behind */
    bool summarize = rescan;    /* recount statistics */
    bool fps_changed = rescan;  /* publish to the board */
    bool board_eval = false;    /* peers published: decide again */
    bool recount = true;        /* index and count every page again */
    size_t b;

    /* Migration hints first: the source's registration, at once. */
    memdedup_apply_pending_hints(engine);

    /* Snapshot the blocks and their parameters. */
    qemu_mutex_lock(&engine->lock);
    QTAILQ_FOREACH(blk, &engine->blocks, next) {
        pass.nr_blocks++;
    }
    pass.blocks = g_new0(MemdedupPassBlock, pass.nr_blocks);
    b = 0;
    QTAILQ_FOREACH(blk, &engine->blocks, next) {
        MemdedupPassBlock *pb = &pass.blocks[b++];

        memdedup_block_ref(blk);
        pb->blk = blk;
        pb->params = blk->params;
        pb->apply_only = blk->params_changed;
        blk->params_changed = false;
        pb->discarded = blk->discarded;
        blk->discarded = NULL;
        summarize |= pb->discarded != NULL;
        fps_changed |= pb->discarded != NULL;
        pass.inputs_changed |= pb->discarded || pb->apply_only;
        /* A hinted block is judged by the policy once it was scanned. */
        pb->hinted = blk->hinted;
        if (rescan) {
            blk->hinted = false;
        }
        pb->first_item = pass.nr_items;
        if (rescan && pb->params.policy != MEMDEDUP_POLICY_OFF) {
            pass.nr_items += blk->nr_regions;
        }
        pass.max_region_pages = MAX(pass.max_region_pages,
                                    blk->pages_per_region);
    }
    engine->params_dirty = false;
    engine->discards_pending = false;
    pass.board = engine->board;
    pass.blocks_gen = engine->blocks_gen;
    if (engine->board_dirty && pass.board) {
        board_eval = summarize = true;
    }
    engine->board_dirty = false;
    pass.scan_rate = engine->scan_rate;
    nr_threads = engine->scan_threads;
    if (rescan) {
        engine->state = MEMDEDUP_STATE_SCANNING;
        engine->scan_requested = false;
        engine->rescan_hurry = false;
    }
    qemu_mutex_unlock(&engine->lock);

    stats = g_new0(MemdedupBlockStats, pass.nr_blocks);
    refusals = g_new0(uint64_t, pass.nr_blocks);
    exact = g_new0(int64_t, pass.nr_blocks);

    /* Policy changes, on the summaries already known. */
    collapse = memdedup_collapse_allowed(engine, &pass);
    for (b = 0; b < pass.nr_blocks; b++) {
        MemdedupPassBlock *pb = &pass.blocks[b];

        if (pb->apply_only && !pb->hinted &&
            !qatomic_read(&pb->blk->removed)) {
            unregistered |= memdedup_apply_policy(pb->blk, &pb->params,
                                                  collapse, &refusals[b]);
        }
    }
    /* Show that registration now, not at the end of a long pass. */
    qemu_mutex_lock(&engine->lock);
    for (b = 0; b < pass.nr_blocks; b++) {
        MemdedupBlockStats *st = &pass.blocks[b].blk->stats;

        memdedup_count_registration(pass.blocks[b].blk, &stats[b]);
        st->registered_bytes = stats[b].registered_bytes;
        st->registered_ranges = stats[b].registered_ranges;
        st->huge_regions = stats[b].huge_regions;
        st->unmerge_refusals += refusals[b];
        refusals[b] = 0;
    }
    qemu_mutex_unlock(&engine->lock);

    if (rescan) {
        qatomic_set(&engine->pass_pages_done, 0);
        qatomic_set(&engine->pass_pages_total, 0);
        for (b = 0; b < pass.nr_blocks; b++) {
            if (pass.blocks[b].params.policy != MEMDEDUP_POLICY_OFF) {
                qatomic_add(&engine->pass_pages_total,
                            pass.blocks[b].blk->nr_regions *
                            pass.blocks[b].blk->pages_per_region);
            }
        }
        pass.start_ns = qemu_clock_get_ns(QEMU_CLOCK_REALTIME);
        /* merge_across_nodes decides how duplicates are judged. */
        memdedup_numa_pass_begin(engine);
        trace_memdedup_pass_start(pass.nr_blocks, pass.nr_items, nr_threads);

        /* Hash, with helper threads if configured. */
        workers = g_new0(QemuThread, nr_threads);
        for (t = 1; t < nr_threads; t++) {
            qemu_thread_create(&workers[t], "memdedup-worker",
                               memdedup_worker_thread, &pass,
                               QEMU_THREAD_JOINABLE);
        }
        memdedup_pass_work(&pass);
        for (t = 1; t < nr_threads; t++) {
            qemu_thread_join(&workers[t]);
        }

        /* Paused (migration) mid-pass: drop the pass, touch nothing more. */
        if (qatomic_read(&engine->paused)) {
            qemu_mutex_lock(&engine->lock);
            engine->scanner_cpu_time += pass.cpu_time;
            engine->state = MEMDEDUP_STATE_IDLE;
            engine->scan_requested = true;
            qemu_mutex_unlock(&engine->lock);
            qatomic_set(&engine->pass_pages_total, 0);
            memdedup_pass_forget_discarded(&pass);
            for (b = 0; b < pass.nr_blocks; b++) {
                /* Not scanned after all: keep hinted registration. */
                pass.blocks[b].blk->hinted |= pass.blocks[b].hinted;
                memdedup_block_unref(pass.blocks[b].blk);
            }
            g_free(pass.blocks);
            trace_memdedup_pass_aborted();
            return;
        }
    }

    /* Then index and summarize. */
    memdedup_pass_forget_discarded(&pass);
    if (summarize) {
        recount = !rescan || !memdedup_pass_unchanged(&pass, board_eval);
        if (recount) {
            memdedup_pass_index(&pass);
            first_seen = bitmap_new(MAX(memdedup_numa_slots(&engine->numa,
                                                            &engine->dupset),
                                        1));
            if (pass.board) {
                engine->board_version = memdedup_board_version(pass.board);
                memdedup_board_lookup_begin(pass.board);
            }
        } else {
            trace_memdedup_pass_unchanged(pass.nr_items);
        }
        for (b = 0; b < pass.nr_blocks; b++) {
            memdedup_pass_summarize(engine, &pass.blocks[b], pass.board,
                                    first_seen, recount, &stats[b]);
        }
        if (pass.board && recount) {
            bool partial;

            if (!memdedup_board_lookup_end(pass.board, &partial)) {
                /* A peer republished meanwhile: look again soon. */
                qemu_mutex_lock(&engine->lock);
                engine->board_dirty = true;
                qemu_mutex_unlock(&engine->lock);
                partial = true;
            }
            if (partial) {
                uint64_t kept = 0;

                for (b = 0; b < pass.nr_blocks; b++) {
                    kept += memdedup_pass_keep_cross(&pass.blocks[b],
                                                     &stats[b]);
                }
                trace_memdedup_board_view_partial(kept);
            }
        }
        if (pass.board) {
            if (fps_changed && !memdedup_pass_publication_current(&pass)) {
                memdedup_pass_publish(&pass);
            }
        }
    }

    /* Register, unregister, THP. */
    collapse = memdedup_collapse_allowed(engine, &pass);
    for (b = 0; b < pass.nr_blocks; b++) {
        MemdedupPassBlock *pb = &pass.blocks[b];
        if (!qatomic_read(&pb->blk->removed) &&
            (rescan || ((pb->apply_only || board_eval) && !pb->hinted))) {
            unregistered |= memdedup_apply_policy(pb->blk, &pb->params,
                                                  collapse, &refusals[b]);
        }
        memdedup_count_registration(pb->blk, &stats[b]);
        registered += stats[b].registered_bytes;
        metadata += pb->blk->nr_pages * (sizeof(uint32_t) +
                                         sizeof(int8_t)) +
                    pb->blk->nr_regions * sizeof(MemdedupRegion);
    }
    metadata += memdedup_dupset_bytes(&engine->dupset);
    if (rescan) {
        memdedup_count_exact(engine, &pass, exact);
    }
    if (summarize && pass.board) {
        memdedup_count_cross_merged(engine, &pass, stats);
    }

    /* Publish. */
    duration = qemu_clock_get_ns(QEMU_CLOCK_REALTIME) - pass.start_ns;
    qemu_mutex_lock(&engine->lock);
    for (b = 0; b < pass.nr_blocks; b++) {
        MemdedupBlock *blk = pass.blocks[b].blk;
        MemdedupBlockStats *st = &blk->stats;

        if (summarize) {
            uint64_t merged = st->kernel_merged_pages;
            uint64_t refused = st->unmerge_refusals;
            uint64_t hinted_before = st->hinted_regions;
            int64_t exact_before = st->kernel_merged_pages_exact;

            *st = stats[b];
            st->kernel_merged_pages = merged;
            st->unmerge_refusals = refused;
            st->hinted_regions = hinted_before;
            if (rescan) {
                st->kernel_merged_pages_exact = exact[b];
            } else {
                st->kernel_merged_pages_exact = exact_before;
            }
            scanned += stats[b].scanned_pages;
            zero += stats[b].zero_pages;
            duplicate += stats[b].duplicate_pages;
        } else {
            st->registered_bytes = stats[b].registered_bytes;
            st->registered_ranges = stats[b].registered_ranges;
            st->huge_regions = stats[b].huge_regions;
        }
        st->unmerge_refusals += refusals[b];
    }
    engine->metadata_bytes = metadata;
    engine->scanner_cpu_time += pass.cpu_time;
    if (rescan) {
        uint64_t resident = 0;

        for (b = 0; b < pass.nr_blocks; b++) {
            resident += stats[b].resident_pages;
        }
        /* Memory that hardly changes is rescanned less often. */
        if (!engine->rescan_hurry &&
            pass.churn * 100 <= resident * MEMDEDUP_QUIET_PERCENT) {
            engine->rescan_factor = MIN(engine->rescan_factor * 2,
                                        engine->rescan_backoff);
        } else {
            engine->rescan_factor = 1;
        }
        trace_memdedup_pass_churn(pass.churn, resident,
                                  engine->rescan_factor);
        engine->passes_completed++;
        engine->last_pass_duration = duration;
        engine->state = QTAILQ_EMPTY(&engine->blocks) ?
                        MEMDEDUP_STATE_DISABLED : MEMDEDUP_STATE_IDLE;
    }
    pass_no = engine->passes_completed;
    qemu_mutex_unlock(&engine->lock);
    qatomic_set(&engine->pass_pages_total, 0);

    for (b = 0; b < pass.nr_blocks; b++) {
        g_free(pass.blocks[b].cross_before);
        memdedup_block_unref(pass.blocks[b].blk);
    }
    g_free(pass.blocks);

    memdedup_refresh_kernel_view(engine, unregistered);
    if (rescan) {
        trace_memdedup_pass_done(pass_no, duration, scanned, zero, duplicate,
                                 registered);
        qapi_event_send_memdedup_pass_completed(pass_no, duration, scanned,
                                                zero, duplicate, registered);
    }
}

/*
 * Once a second: close a board the memdedup object let go, keep our
 * slot alive (or claim one if the board was full), and decide again when
 * other VMs published since we last looked.  Scanner thread.
 */
static void memdedup_board_tick(MemdedupEngine *engine)
{
    MemdedupBoard *board, *retired;

    qemu_mutex_lock(&engine->lock);
    board = engine->board;
    retired = engine->board_retired;
    engine->board_retired = NULL;
    qemu_mutex_unlock(&engine->lock);
    memdedup_board_close(retired);
    if (!board) {
        return;
    }
    memdedup_board_heartbeat(board);
    if (memdedup_board_version(board) != engine->board_version) {
        qemu_mutex_lock(&engine->lock);
        engine->board_dirty = true;
        qemu_mutex_unlock(&engine->lock);
    }
}

static void *memdedup_thread(void *opaque)
{
    MemdedupEngine *engine = opaque;
    int64_t last_pass = 0, next_pass, next_refresh = 0, next_view = 0;
    int64_t view_interval = MEMDEDUP_KERNEL_REFRESH_MS;

    rcu_register_thread();
    for (;;) {
        bool rescan = false, apply = false, can_rescan, incoming, view_wanted;
        int64_t now;

        qemu_mutex_lock(&engine->lock);
        for (;;) {
            now = qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
            if (engine->quit) {
                break;
            }
            /* Read each time round: a hurry takes effect at once. */
            next_pass = last_pass + (int64_t)engine->rescan_interval *
                                    engine->rescan_factor;
            can_rescan = !engine->paused && !QTAILQ_EMPTY(&engine->blocks);
            rescan = can_rescan &&
                     (engine->scan_requested || now >= next_pass);
            apply = (engine->params_dirty || engine->discards_pending ||
                     engine->board_dirty) && !engine->paused;
            if (rescan || apply || now >= next_refresh ||
                engine->view_wanted ||
                (engine->paused && engine->incoming)) {
                break;
            }
            /*
             * Never a negative wait: qemu_cond_timedwait() would make an
             * invalid deadline of it.  A pass that cannot run (paused, no
             * backend) is no reason to wake up.
             */
            qemu_cond_timedwait(&engine->wakeup, &engine->lock,
                                MAX((can_rescan ? MIN(next_pass, next_refresh)
                                                : next_refresh) - now, 0));
        }
        incoming = engine->paused && engine->incoming;
        view_wanted = engine->view_wanted;
        qemu_mutex_unlock(&engine->lock);
        if (qatomic_read(&engine->quit)) {
            break;
        }
        if (incoming) {
            /*
             * Destination of a migration: no reading of RAM that has not
             * arrived (postcopy) until the incoming side completes, but
             * the source's hints are registered as soon as they arrive.
             */
            memdedup_apply_pending_hints(engine);
            if (memdedup_migration_incoming_done()) {
                memdedup_engine_resume(engine, "incoming migration completed");
                continue;
            }
            qemu_mutex_lock(&engine->lock);
            if (!engine->hints_pending && !engine->quit) {
                qemu_cond_timedwait(&engine->wakeup, &engine->lock,
                                    MEMDEDUP_INCOMING_POLL_MS);
            }
            qemu_mutex_unlock(&engine->lock);
            continue;
        }

        if (rescan || apply) {
            /* The pass ends with a fresh kernel view. */
            memdedup_run_pass(engine, rescan);
            now = qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
            if (rescan) {
                last_pass = now;
            }
            view_interval = MEMDEDUP_KERNEL_REFRESH_MS;
            next_view = now + view_interval;
        } else {
            if (now >= next_view || view_wanted) {
                memdedup_refresh_kernel_view(engine, false);
                view_interval = MIN(view_interval * 2,
                                    MEMDEDUP_KERNEL_REFRESH_MAX_MS);
                next_view = now + view_interval;
            }
            memdedup_numa_watch(engine);
        }
        memdedup_board_tick(engine);
        next_refresh = now + MEMDEDUP_KERNEL_REFRESH_MS;
    }
    rcu_unregister_thread();
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Statistics for the monitor                                          */
/* ------------------------------------------------------------------ */

static MemdedupHostKsm *memdedup_query_host_ksm(void)
{
    MemdedupHostKsm *host = g_new0(MemdedupHostKsm, 1);
    static const struct {
        const char *name;
        size_t has_off, val_off;
    } knobs[] = {
#define KNOB(file, field) \
        { file, offsetof(MemdedupHostKsm, has_##field), \
          offsetof(MemdedupHostKsm, field) }
        KNOB("run", run),
        KNOB("pages_to_scan", pages_to_scan),
        KNOB("sleep_millisecs", sleep_millisecs),
        KNOB("merge_across_nodes", merge_across_nodes),
        KNOB("use_zero_pages", use_zero_pages),
        KNOB("max_page_sharing", max_page_sharing),
        KNOB("pages_shared", pages_shared),
        KNOB("pages_sharing", pages_sharing),
        KNOB("full_scans", full_scans),
#undef KNOB
    };
    size_t i;

    for (i = 0; i < ARRAY_SIZE(knobs); i++) {
        uint64_t value;

        if (memdedup_read_ksm_knob(knobs[i].name, &value)) {
            *(bool *)((char *)host + knobs[i].has_off) = true;
            *(uint64_t *)((char *)host + knobs[i].val_off) = value;
        }
    }
    return host;
}

MemdedupInfo *memdedup_query(Error **errp)
{
    MemdedupEngine *engine = &memdedup_engine;
    MemdedupInfo *info = g_new0(MemdedupInfo, 1);
    MemdedupBackendInfoList **tail = &info->backends;
    MemdedupKsmStat ksm;
    MemdedupBlock *blk;
    uint64_t total, done;
    g_autofree char *refused = NULL;

    memdedup_engine_init();
    qemu_mutex_lock(&engine->lock);
    /*
     * Someone is watching: if the kernel view is more than 5 s old (it
     * is read less often while nothing changes), have it read now, for
     * this caller's next query.
     */
    if (engine->thread_started && !engine->view_wanted &&
        qemu_clock_get_ms(QEMU_CLOCK_REALTIME) - engine->view_time >
        MEMDEDUP_KERNEL_QUERY_STALE_MS) {
        engine->view_wanted = true;
        qemu_cond_signal(&engine->wakeup);
    }
    info->state = engine->paused ? MEMDEDUP_STATE_PAUSED : engine->state;
    if (engine->paused) {
        info->has_paused_reason = true;
        info->paused_reason = g_strdup(engine->paused_reason);
    }
    info->passes_completed = engine->passes_completed;
    info->last_pass_duration = engine->last_pass_duration;
    info->scanner_cpu_time = engine->scanner_cpu_time;
    info->metadata_bytes = engine->metadata_bytes;
    info->scan_rate = engine->scan_rate;
    info->rescan_interval = engine->rescan_interval;
    info->rescan_backoff = engine->rescan_backoff;
    info->next_rescan_interval = (uint64_t)engine->rescan_interval *
                                 engine->rescan_factor;
    total = qatomic_read(&engine->pass_pages_total);
    done = qatomic_read(&engine->pass_pages_done);
    info->pass_progress = (engine->state == MEMDEDUP_STATE_SCANNING && total) ?
                          MIN(done * 100 / total, 100) : 0;
    QTAILQ_FOREACH(blk, &engine->blocks, next) {
        MemdedupBackendInfo *bi = g_new0(MemdedupBackendInfo, 1);
        const MemdedupBlockStats *st = &blk->stats;

        bi->id = g_strdup(blk->id);
        bi->policy = blk->params.policy;
        bi->size = blk->size;
        bi->page_size = blk->page_size;
        bi->region_size = blk->params.region_size;
        bi->duplicate_threshold = blk->params.duplicate_threshold;
        bi->resident_pages = st->resident_pages;
        bi->scanned_pages = st->scanned_pages;
        bi->zero_pages = st->zero_pages;
        bi->duplicate_pages = st->duplicate_pages;
        bi->unique_pages = st->unique_pages;
        bi->volatile_pages = st->volatile_pages;
        bi->candidate_regions = st->candidate_regions;
        bi->registered_bytes = st->registered_bytes;
        bi->registered_ranges = st->registered_ranges;
        bi->huge_regions = st->huge_regions;
        bi->has_kernel_merged_pages = st->kernel_merged_pages >= 0;
        bi->kernel_merged_pages = MAX(st->kernel_merged_pages, 0);
        bi->has_kernel_merged_pages_exact =
            st->kernel_merged_pages_exact >= 0;
        bi->kernel_merged_pages_exact = MAX(st->kernel_merged_pages_exact, 0);
        bi->estimated_saving = st->estimated_saving;
        bi->has_actual_saving = bi->has_kernel_merged_pages;
        bi->actual_saving = bi->kernel_merged_pages * blk->page_size;
        bi->unmerge_refusals = st->unmerge_refusals;
        bi->registration_failures = qatomic_read(&blk->advise_failures);
        if (qatomic_read(&blk->advise_errno) && !refused) {
            refused = g_strdup_printf("the kernel refused to change the KSM "
                                      "registration of backend '%s' (%s); "
                                      "registered-bytes shows what it "
                                      "accepted", blk->id,
                                      strerror(qatomic_read(
                                          &blk->advise_errno)));
        }
        bi->hinted_regions = st->hinted_regions;
        memdedup_numa_query_backend(blk, bi);
        bi->cross_vm_pages = st->cross_vm_pages;
        bi->cross_vm_regions = st->cross_vm_regions;
        bi->has_cross_vm_merged_pages = engine->board &&
                                        st->cross_vm_merged_pages >= 0;
        bi->cross_vm_merged_pages = MAX(st->cross_vm_merged_pages, 0);
        QAPI_LIST_APPEND(tail, bi);
    }
    if (engine->board) {
        info->has_board = true;
        info->board = memdedup_board_info(engine->board);
    }
    qemu_mutex_unlock(&engine->lock);
    memdedup_numa_query(engine, info);

    if (memdedup_read_ksm_stat(&ksm)) {
        info->has_process_ksm = true;
        info->process_ksm = g_new0(MemdedupProcessKsm, 1);
        info->process_ksm->has_rmap_items = ksm.rmap_items >= 0;
        info->process_ksm->rmap_items = MAX(ksm.rmap_items, 0);
        info->process_ksm->has_zero_pages = ksm.zero_pages >= 0;
        info->process_ksm->zero_pages = MAX(ksm.zero_pages, 0);
        info->process_ksm->has_merging_pages = ksm.merging_pages >= 0;
        info->process_ksm->merging_pages = MAX(ksm.merging_pages, 0);
        info->process_ksm->has_process_profit = ksm.has_process_profit;
        info->process_ksm->process_profit = ksm.process_profit;
    }
    if (memdedup_host_has_ksm()) {
        info->has_host_ksm = true;
        info->host_ksm = memdedup_query_host_ksm();
        if (info->host_ksm->has_run && info->host_ksm->run != 1) {
            info->has_warning = true;
            info->warning = g_strdup("ksmd is not running "
                                     "(/sys/kernel/mm/ksm/run is not 1): "
                                     "registered memory is not merged");
        }
    } else {
        info->has_warning = true;
        info->warning = g_strdup("the host has no KSM: the engine can only "
                                 "estimate");
    }
    if (refused) {
        char *other = info->warning;

        info->has_warning = true;
        info->warning = other ? g_strdup_printf("%s; %s", refused, other) :
                                g_steal_pointer(&refused);
        g_free(other);
    }
    return info;
}

/* ------------------------------------------------------------------ */
/* The memdedup object: engine-wide settings                           */
/* ------------------------------------------------------------------ */

OBJECT_DECLARE_SIMPLE_TYPE(MemdedupSettings, MEMDEDUP)

struct MemdedupSettings {
    Object parent_obj;
    bool complete;              /* this object owns the engine settings */
    uint64_t scan_rate;         /* bytes per second */
    uint32_t scan_threads;
    uint32_t rescan_interval;   /* milliseconds */
    uint32_t rescan_backoff;    /* factor, 1-64 */
    bool migrate_hints;         /* send registered regions when migrating */
    MemdedupAdopt *adopt;       /* adopt, adopt-ram (adopt.c), or NULL */
    MemdedupBoardConfig *board; /* board* properties (board.c), or NULL */
};

/* Push the object's settings to the engine; BQL held. */
static void memdedup_settings_apply(MemdedupSettings *s)
{
    MemdedupEngine *engine = &memdedup_engine;

    if (!s->complete) {
        return;
    }
    QEMU_LOCK_GUARD(&engine->lock);
    engine->scan_rate = s->scan_rate;
    engine->scan_threads = s->scan_threads;
    engine->send_hints = s->migrate_hints;
    qatomic_set(&engine->rescan_interval, s->rescan_interval);
    engine->rescan_backoff = s->rescan_backoff;
    memdedup_rescan_hurry_locked(engine);
}

static bool memdedup_settings_get_migrate_hints(Object *obj, Error **errp)
{
    return MEMDEDUP(obj)->migrate_hints;
}

static void memdedup_settings_set_migrate_hints(Object *obj, bool value,
                                                Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);

    s->migrate_hints = value;
    memdedup_settings_apply(s);
}

static void memdedup_settings_get_scan_rate(Object *obj, Visitor *v,
                                            const char *name, void *opaque,
                                            Error **errp)
{
    visit_type_size(v, name, &MEMDEDUP(obj)->scan_rate, errp);
}

static void memdedup_settings_set_scan_rate(Object *obj, Visitor *v,
                                            const char *name, void *opaque,
                                            Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);
    uint64_t value;

    if (!visit_type_size(v, name, &value, errp)) {
        return;
    }
    if (value < MEMDEDUP_SCAN_RATE_MIN || value > MEMDEDUP_SCAN_RATE_MAX) {
        error_setg(errp, "property '%s' of %s must be between %d MiB/s "
                   "and %d PiB/s, not %" PRIu64, name, TYPE_MEMDEDUP,
                   (int)(MEMDEDUP_SCAN_RATE_MIN / MiB),
                   (int)(MEMDEDUP_SCAN_RATE_MAX / PiB), value);
        return;
    }
    s->scan_rate = value;
    memdedup_settings_apply(s);
}

static void memdedup_settings_get_u32(Object *obj, Visitor *v,
                                      const char *name, void *opaque,
                                      Error **errp)
{
    uint32_t *field = (uint32_t *)((char *)obj + (uintptr_t)opaque);

    visit_type_uint32(v, name, field, errp);
}

static void memdedup_settings_set_u32(Object *obj, Visitor *v,
                                      const char *name, void *opaque,
                                      Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);
    uint32_t *field = (uint32_t *)((char *)obj + (uintptr_t)opaque);
    uint32_t value, min, max;

    if (!visit_type_uint32(v, name, &value, errp)) {
        return;
    }
    if (field == &s->scan_threads) {
        min = 1;
        max = MEMDEDUP_SCAN_THREADS_MAX;
    } else if (field == &s->rescan_backoff) {
        min = 1;
        max = MEMDEDUP_RESCAN_BACKOFF_MAX;
    } else {
        min = MEMDEDUP_RESCAN_INTERVAL_MIN;
        max = MEMDEDUP_RESCAN_INTERVAL_MAX;
    }
    if (value < min || value > max) {
        error_setg(errp, "property '%s' of %s must be between %" PRIu32
                   " and %" PRIu32 ", not %" PRIu32, name, TYPE_MEMDEDUP,
                   min, max, value);
        return;
    }
    *field = value;
    memdedup_settings_apply(s);
}

/* A clean exit gives the board slot back at once (no need to age out). */
static void memdedup_board_exit(Notifier *n, void *data)
{
    MemdedupEngine *engine = &memdedup_engine;

    if (engine->board) {
        memdedup_board_release(engine->board);
    }
}

static Notifier memdedup_board_exit_notifier = {
    .notify = memdedup_board_exit,
};

/*
 * Open the cross-VM board, if configured.  Its key seeds the
 * fingerprints, so this must happen before the first pass: on the
 * command line, or with object-add before any backend was scanned.
 */
static bool memdedup_settings_join_board(MemdedupSettings *s, Error **errp)
{
    MemdedupEngine *engine = &memdedup_engine;
    MemdedupBoard *board;
    Error *local_err = NULL;

    board = memdedup_board_complete(s->board, &local_err);
    if (local_err) {
        error_propagate(errp, local_err);
        return false;
    }
    if (!board) {
        return true;
    }
    qemu_mutex_lock(&engine->lock);
    if (engine->passes_completed || engine->state == MEMDEDUP_STATE_SCANNING) {
        qemu_mutex_unlock(&engine->lock);
        memdedup_board_close(board);
        error_setg(errp, "property 'board' of %s: the board must be joined "
                   "before the first scan pass (create the %s object on "
                   "the command line)", TYPE_MEMDEDUP, TYPE_MEMDEDUP);
        return false;
    }
    engine->board = board;
    engine->seed = memdedup_board_seed(board);
    engine->board_dirty = true;
    qemu_mutex_unlock(&engine->lock);
    qemu_add_exit_notifier(&memdedup_board_exit_notifier);
    return true;
}

static void memdedup_settings_complete(UserCreatable *uc, Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(uc);
    MemdedupEngine *engine = &memdedup_engine;

    memdedup_engine_init();
    qemu_mutex_lock(&engine->lock);
    if (engine->settings_object) {
        qemu_mutex_unlock(&engine->lock);
        error_setg(errp, "only one %s object may exist", TYPE_MEMDEDUP);
        return;
    }
    engine->settings_object = true;
    qemu_mutex_unlock(&engine->lock);
    if (!memdedup_settings_join_board(s, errp)) {
        qemu_mutex_lock(&engine->lock);
        engine->settings_object = false;
        qemu_mutex_unlock(&engine->lock);
        return;
    }
    s->complete = true;
    memdedup_settings_apply(s);
    /* On failure, finalize puts the engine back to its defaults. */
    memdedup_adopt_complete(s->adopt, errp);
}

static void memdedup_settings_init(Object *obj)
{
    MemdedupSettings *s = MEMDEDUP(obj);

    s->scan_rate = MEMDEDUP_SCAN_RATE_DEFAULT;
    s->scan_threads = MEMDEDUP_SCAN_THREADS_DEFAULT;
    s->rescan_interval = MEMDEDUP_RESCAN_INTERVAL_DEFAULT;
    s->rescan_backoff = MEMDEDUP_RESCAN_BACKOFF_DEFAULT;
}

static void memdedup_settings_finalize(Object *obj)
{
    MemdedupSettings *s = MEMDEDUP(obj);
    MemdedupEngine *engine = &memdedup_engine;

    memdedup_adopt_free(s->adopt);
    memdedup_board_free(s->board);
    if (!s->complete) {
        return;
    }
    /* Back to the defaults. */
    QEMU_LOCK_GUARD(&engine->lock);
    if (engine->board) {
        /*
         * Give the slot back now (QEMU deletes objects on exit, before
         * the exit notifiers run).  The scanner may still be using the
         * mapping: it closes it between passes.
         */
        memdedup_board_release(engine->board);
        if (engine->thread_started) {
            engine->board_retired = engine->board;
        } else {
            memdedup_board_close(engine->board);
        }
        engine->board = NULL;
        notifier_remove(&memdedup_board_exit_notifier);
    }
    engine->settings_object = false;
    engine->send_hints = false;
    engine->scan_rate = MEMDEDUP_SCAN_RATE_DEFAULT;
    engine->scan_threads = MEMDEDUP_SCAN_THREADS_DEFAULT;
    qatomic_set(&engine->rescan_interval, MEMDEDUP_RESCAN_INTERVAL_DEFAULT);
    engine->rescan_backoff = MEMDEDUP_RESCAN_BACKOFF_DEFAULT;
    memdedup_rescan_hurry_locked(engine);
}

/* A uint32 property of the memdedup object, in MemdedupSettings. */
static void memdedup_settings_add_u32(ObjectClass *oc, const char *name,
                                      size_t offset, const char *description)
{
    object_class_property_add(oc, name, "uint32", memdedup_settings_get_u32,
                              memdedup_settings_set_u32, NULL,
                              (void *)offset);
    object_class_property_set_description(oc, name, description);
}

static void memdedup_settings_class_init(ObjectClass *oc, void *data)
{
    UserCreatableClass *ucc = USER_CREATABLE_CLASS(oc);

    ucc->complete = memdedup_settings_complete;

    object_class_property_add(oc, "scan-rate", "size",
                              memdedup_settings_get_scan_rate,
                              memdedup_settings_set_scan_rate, NULL, NULL);
    object_class_property_set_description(oc, "scan-rate",
        "Scan budget in bytes of guest memory per second (default 1G)");
    memdedup_settings_add_u32(oc, "scan-threads",
                              offsetof(MemdedupSettings, scan_threads),
                              "Number of scanner threads, 1-8 (default 1)");
    memdedup_settings_add_u32(oc, "rescan-interval",
                              offsetof(MemdedupSettings, rescan_interval),
                              "Milliseconds between the end of a scan pass "
                              "and the next, 100-86400000 (default 10000)");
    memdedup_settings_add_u32(oc, "rescan-backoff",
                              offsetof(MemdedupSettings, rescan_backoff),
                              "Most times rescan-interval the wait may grow "
                              "to while passes find guest memory quiet, "
                              "1-64; each quiet pass doubles it (default 8, "
                              "1: a fixed interval)");
    object_class_property_add_bool(oc, "migrate-hints",
                                   memdedup_settings_get_migrate_hints,
                                   memdedup_settings_set_migrate_hints);
    object_class_property_set_description(oc, "migrate-hints",
        "Send the registered regions in the migration stream; the "
        "destination must run memdedup too (default off)");
    memdedup_adopt_class_init(oc, offsetof(MemdedupSettings, adopt));
    memdedup_board_class_init(oc, offsetof(MemdedupSettings, board));
}

static const TypeInfo memdedup_settings_info = {
    .name = TYPE_MEMDEDUP,
    .parent = TYPE_OBJECT,
    .instance_size = sizeof(MemdedupSettings),
    .instance_init = memdedup_settings_init,
    .instance_finalize = memdedup_settings_finalize,
    .class_init = memdedup_settings_class_init,
    .interfaces = (InterfaceInfo[]) {
        { TYPE_USER_CREATABLE },
        { }
    },
};

static void memdedup_register_types(void)
{
    type_register_static(&memdedup_settings_info);
}

type_init(memdedup_register_types);
