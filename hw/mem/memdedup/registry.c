/*
 * memdedup: the registry of managed blocks
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * The bottom floor of the engine: the engine singleton and its list of
 * managed blocks.  Blocks join through memdedup_registry_add (backend,
 * BQL) and leave through the RAMBlockNotifier's ram_block_removed hook
 * (BQL), which marks them removed before QEMU unmaps the RAM after an
 * RCU grace period; the scanner touches guest memory only inside an RCU
 * read-side section in which it saw removed == false, so it never
 * touches RAM after its removal.  Block metadata is reference counted:
 * the list, the backend and a running pass each hold a reference, and
 * the last one frees it.  The registry also takes what the layers above
 * hand to the scanner -- parameters (with unmerge admission), plugged
 * and discarded memory (discard.c), migration hints (migration.c),
 * pause and resume -- under MemdedupEngine.lock, and wakes the scanner.
 *
 * It calls nothing above it: no pass, no thread, no migration.
 */

#include "qemu/osdep.h"
#include "qemu/atomic.h"
#include "qemu/bitmap.h"
#include "qemu/error-report.h"
#include "qemu/guest-random.h"
#include "qemu/lockable.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "qapi/qapi-events-memdedup.h"
#include "memdedup-internal.h"
#include "trace.h"

MemdedupEngine memdedup_engine;

void memdedup_registry_init(void)
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
    engine->residency_watch = true;
    engine->rearm = true;
    engine->collapse_after_scans = -1;
    engine->dupset_gen = 1;     /* a new block's judged_gen 0 never matches */
    engine->state = MEMDEDUP_STATE_DISABLED;
    engine->pagemap_fd = -1;
    engine->kpageflags_fd = -1;
    engine->kpagecount_fd = -1;
    engine->vma_budget = memdedup_read_vma_budget();
    engine->thp_size = memdedup_read_thp_size();
    qemu_guest_getrandom_nofail(&engine->seed, sizeof(engine->seed));
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

void memdedup_block_ref(MemdedupBlock *blk)
{
    qatomic_inc(&blk->refcount);
}

uint64_t memdedup_block_metadata_bytes(const MemdedupBlock *blk)
{
    /* registered, discarded, hints and watched: a bit per region each. */
    uint64_t region_bits = 4 * BITS_TO_LONGS(blk->nr_regions) *
                           sizeof(unsigned long);

    return blk->nr_pages * (sizeof(*blk->fps) + sizeof(*blk->fp_hi) +
                            sizeof(*blk->nodes)) +
           BITS_TO_LONGS(blk->nr_pages) * sizeof(unsigned long) +
           blk->nr_regions * sizeof(MemdedupRegion) + region_bits +
           (blk->plugged ? BITS_TO_LONGS(blk->nr_pages) *
                           sizeof(unsigned long) : 0) +
           sizeof(*blk) + sizeof(MemdedupNumaStats);
}

static void memdedup_block_free(MemdedupBlock *blk)
{
    g_free(blk->fps);
    g_free(blk->fp_hi);
    g_free(blk->nodes);
    g_free(blk->shared);
    g_free(blk->watched);
    g_free(blk->numa_stats);
    g_free(blk->regions);
    g_free(blk->hints);
    g_free(blk->registered);
    g_free(blk->discarded);
    g_free(blk->plugged);
    g_free(blk->id);
    g_free(blk);
}

void memdedup_block_unref(MemdedupBlock *blk)
{
    if (qatomic_fetch_dec(&blk->refcount) == 1) {
        memdedup_block_free(blk);
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

/*
 * A new block for @size bytes at @host, with its metadata (5 bytes of
 * fingerprint, 1 of host node and a bit of sharing per page, a summary
 * per region); NULL
 * with @errp set if that cannot be allocated.
 */
static MemdedupBlock *memdedup_block_new(const char *id, void *host,
                                         uint64_t size,
                                         const MemdedupParams *params,
                                         Error **errp)
{
    MemdedupBlock *blk = g_new0(MemdedupBlock, 1);

    blk->id = g_strdup(id);
    blk->host = host;
    blk->size = size;
    blk->page_size = qemu_real_host_page_size();
    blk->nr_pages = DIV_ROUND_UP(size, blk->page_size);
    blk->pages_per_region = params->region_size / blk->page_size;
    blk->nr_regions = DIV_ROUND_UP(blk->nr_pages, blk->pages_per_region);
    /* A huge, sparse backend (reserve=off) may need more than exists. */
    blk->fps = g_try_new0(uint32_t, blk->nr_pages);
    blk->fp_hi = g_try_new0(uint8_t, blk->nr_pages);
    blk->regions = g_try_new0(MemdedupRegion, blk->nr_regions);
    blk->registered = bitmap_try_new(blk->nr_regions);
    /* Host node of each page (numa-engine.c), unknown until scanned. */
    blk->nodes = g_try_new(int8_t, blk->nr_pages);
    /* Pages that shared their frame at the last pass (cow.c). */
    blk->shared = bitmap_try_new(blk->nr_pages);
    /* Regions whose residency moved since they were hashed (watch.c). */
    blk->watched = bitmap_try_new(blk->nr_regions);
    if (!blk->fps || !blk->fp_hi || !blk->regions || !blk->registered ||
        !blk->nodes || !blk->shared || !blk->watched) {
        error_setg(errp, "memory-backend-ksm '%s': cannot allocate %" PRIu64
                   " MiB of memdedup metadata for its %" PRIu64 " GiB",
                   id, memdedup_block_metadata_bytes(blk) / MiB, size / GiB);
        memdedup_block_free(blk);
        return NULL;
    }
    memset(blk->nodes, MEMDEDUP_NODE_UNKNOWN, blk->nr_pages);
    /* One VMA; the first pass snapshot gives it its share. */
    blk->vmas = 1;
    blk->vma_share = memdedup_engine.vma_budget;
    blk->vma_cap = UINT32_MAX;
    blk->vma_target = 1;
    blk->params = *params;
    blk->params_changed = true;
    blk->merged.kernel_merged_pages = -1;
    blk->merged.kernel_merged_pages_exact = -1;
    blk->merged.attributed = -1;
    return blk;
}

MemdedupBlock *memdedup_registry_add(const char *id, void *host, uint64_t size,
                                     const MemdedupParams *params,
                                     Error **errp)
{
    MemdedupEngine *engine = &memdedup_engine;
    MemdedupBlock *blk;

    memdedup_registry_init();
    if (memdedup_policy_registers(params->policy) &&
        !memdedup_host_has_ksm()) {
        error_setg(errp, "dedup-policy '%s' needs KSM, but the host has none "
                   "(%s is missing); use dedup-policy=estimate or off",
                   MemdedupPolicy_str(params->policy),
                   memdedup_ksm_sysfs_dir());
        return NULL;
    }

    blk = memdedup_block_new(id, host, size, params, errp);
    if (!blk) {
        return NULL;
    }
    blk->refcount = 2;          /* the engine's list and the backend */

    /*
     * QEMU's ram_block_add() madvised the whole block MERGEABLE when the
     * machine's mem-merge is on; registration belongs to the engine, so
     * undo that.  Nothing can be merged yet, so this unmerges nothing.
     * Until the engine has judged a region it stays on small pages, so
     * that KSM can merge it quickly once registered.
     */
    if (memdedup_host_has_ksm()) {
        g_auto(MemdedupSmapsView) smaps = { 0 };
        uint64_t merged;

        /*
         * Adopted at runtime (object-add), the RAM may hold pages merged
         * under mem-merge: unmerging them is admitted like any other.
         */
        if (!memdedup_unmerge_check(blk, (uintptr_t)host,
                                    (uintptr_t)host + size,
                                    params->force_unmerge, &smaps, &merged,
                                    errp)) {
            memdedup_block_free(blk);
            return NULL;
        }
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
    qemu_cond_signal(&engine->wakeup);
    qemu_mutex_unlock(&engine->lock);

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

bool memdedup_manages(void *host)
{
    MemdedupBlock *blk = memdedup_block_find_host(host);

    if (blk) {
        memdedup_block_put(blk);
    }
    return blk != NULL;
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
 * Bytes in [@start, @end) that the kernel merged; -1 if unknown.  Exact
 * where PFNs are readable (pagemap and kpageflags); else an upper bound
 * from /proc/self/smaps, whose VMAs need not match the range: a VMA
 * partly inside counts as much of its merged bytes as the overlap can
 * hold, never 0 if it holds some.  @smaps is read and parsed on first
 * use and kept for the caller's later calls (the caller clears it): one
 * parse however many ranges are looked up.
 */
static int64_t memdedup_merged_bytes(MemdedupSmapsView *smaps,
                                     uint64_t start, uint64_t end)
{
    MemdedupEngine *engine = &memdedup_engine;
    uint64_t bound;
    int64_t pages;

    if (!smaps->read) {
        memdedup_smaps_view_read_merged(smaps, NULL);
    }
    if (!smaps->has_ksm) {
        return -1;
    }
    bound = memdedup_smaps_view_merged_bound(smaps, start, end);
    if (!bound || engine->pagemap_fd < 0 || engine->kpageflags_fd < 0) {
        return bound;
    }
    /* pagemap reads of a range being unmapped only find it absent. */
    pages = memdedup_count_ksm_pages(engine->pagemap_fd,
                                     engine->kpageflags_fd, start,
                                     end - start);
    return pages < 0 ? bound : MIN(pages * qemu_real_host_page_size(), bound);
}

/*
 * Would unregistering [@start, @end) of @blk fit in MemAvailable, and in
 * the headroom of QEMU's memory cgroup (which is what OOM-kills QEMU
 * under libvirt or a container runtime)?  When the merged amount is
 * unknown, the whole range is assumed merged.  @smaps as for
 * memdedup_merged_bytes.
 */
bool memdedup_unmerge_check(MemdedupBlock *blk, uint64_t start,
                            uint64_t end, bool force,
                            MemdedupSmapsView *smaps,
                            uint64_t *merged, Error **errp)
{
    g_autofree char *cgroup = NULL, *meminfo = NULL;
    uint64_t available, total, headroom, limit;
    int64_t bytes = memdedup_merged_bytes(smaps, start, end);

    *merged = bytes < 0 ? end - start : bytes;
    if (force || !*merged) {
        return true;
    }
    WITH_QEMU_LOCK_GUARD(&memdedup_engine.lock) {
        meminfo = g_strdup(memdedup_engine.x_meminfo);
    }
    if (memdedup_read_meminfo(meminfo, &available, &total) &&
        !memdedup_unmerge_admissible(*merged, available, total)) {
        error_setg(errp, "backend '%s': unmerging %.1f MiB needs more than "
                   "the host's MemAvailable (%.1f MiB, with %d%% of "
                   "MemTotal kept in reserve); set force-unmerge=on to "
                   "unmerge anyway", blk->id, (double)*merged / MiB,
                   (double)available / MiB,
                   MEMDEDUP_UNMERGE_RESERVE_PERCENT);
        return false;
    }
    if (memdedup_read_cgroup_headroom(&headroom, &limit, &cgroup) &&
        !memdedup_unmerge_admissible_cgroup(*merged, headroom, limit)) {
        error_setg(errp, "backend '%s': unmerging %.1f MiB needs more than "
                   "the headroom of QEMU's memory cgroup (%s: %.1f MiB "
                   "below its limit of %.1f MiB, with %d%% of it kept in "
                   "reserve); set force-unmerge=on to unmerge anyway",
                   blk->id, (double)*merged / MiB, cgroup,
                   (double)headroom / MiB, (double)limit / MiB,
                   MEMDEDUP_UNMERGE_RESERVE_PERCENT);
        return false;
    }
    return true;
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

    memdedup_registry_init();
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

bool memdedup_block_set_hints(MemdedupEngine *engine, const char *id,
                              uint64_t size, uint64_t region_size,
                              uint64_t nr_regions, const uint8_t *bits)
{
    MemdedupBlock *blk;
    uint64_t k;

    QEMU_LOCK_GUARD(&engine->lock);
    QTAILQ_FOREACH(blk, &engine->blocks, next) {
        if (!strcmp(blk->id, id)) {
            break;
        }
    }
    if (!blk) {
        warn_report("memdedup: ignoring migration hints for '%s': no "
                    "memory-backend-ksm with that id here", id);
        return false;
    }
    if (blk->size != size || blk->nr_regions != nr_regions ||
        blk->pages_per_region * blk->page_size != region_size) {
        warn_report("memdedup: ignoring migration hints for '%s': the "
                    "source had size %" PRIu64 " and region-size %"
                    PRIu64 ", this backend has %" PRIu64 " and %" PRIu64,
                    id, size, region_size, blk->size,
                    blk->pages_per_region * blk->page_size);
        return false;
    }
    g_free(blk->hints);
    blk->hints = bitmap_new(nr_regions);
    for (k = 0; k < nr_regions; k++) {
        if (bits[k / 8] & (1 << (k % 8))) {
            set_bit(k, blk->hints);
        }
    }
    engine->hints_pending = true;
    qemu_cond_signal(&engine->wakeup);
    trace_memdedup_hints_loaded(id, bitmap_count_one(blk->hints, nr_regions));
    return true;
}

