/*
 * memdedup: the scanner thread
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * One scanner thread per process runs the passes (pass.c): a full one
 * every rescan-interval (stretched while memory is quiet) or when
 * asked, one that only applies what changed (parameters, discards,
 * peers' filters), and a partial one when the residency watch (watch.c)
 * finds memory that filled or emptied.  Between passes it refreshes the
 * kernel view, follows NUMA placement and serves the board.
 */

#include "qemu/osdep.h"
#include "qemu/atomic.h"
#include "qemu/lockable.h"
#include "qemu/rcu.h"
#include "qemu/timer.h"
#include "memdedup-internal.h"

/* How often the kernel's merged counts are refreshed between passes. */
#define MEMDEDUP_KERNEL_REFRESH_MS       1000

/*
 * Every MEMDEDUP_BOARD_TICK_MS: close a board the memdedup object let
 * go, serve ours (memdedup_board_tick), and decide again when a peer's
 * filter changed since we last looked.  Scanner thread.  Returns
 * whether there is a board.
 */
static bool memdedup_thread_board(MemdedupEngine *engine)
{
    MemdedupBoard *board, *retired;

    qemu_mutex_lock(&engine->lock);
    board = engine->board;
    retired = engine->board_retired;
    engine->board_retired = NULL;
    qemu_mutex_unlock(&engine->lock);
    memdedup_board_close(retired);
    if (!board) {
        return false;
    }
    memdedup_board_tick(board);
    if (memdedup_board_version(board) != engine->board_version) {
        qemu_mutex_lock(&engine->lock);
        engine->board_dirty = true;
        qemu_mutex_unlock(&engine->lock);
    }
    return true;
}

/* What woke the scanner thread, and when it next has something to do. */
typedef struct MemdedupWakeup {
    int64_t last_pass;          /* ms (realtime) the last rescan ended */
    int64_t next_refresh;       /* ms: the next tick */
    int64_t next_second;        /* ms: the next once-a-second work */
    int64_t next_watch;         /* ms: the next residency watch */
    bool rescan;                /* a pass that hashes is due */
    bool apply;                 /* parameters, discards or peers changed */
    bool incoming;              /* paused for an incoming migration */
    bool view_wanted;           /* a query found the kernel view stale */
} MemdedupWakeup;

/*
 * Sleep until a pass is due, something changed, the next tick, or the
 * engine is paused for an incoming migration.  Returns the time (ms).
 */
static int64_t memdedup_thread_wait(MemdedupEngine *engine,
                                    MemdedupWakeup *w)
{
    int64_t now, next_pass;
    bool can_rescan;

    QEMU_LOCK_GUARD(&engine->lock);
    for (;;) {
        now = qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
        /* Read each time round: a hurry takes effect at once. */
        next_pass = w->last_pass + (int64_t)engine->rescan_interval *
                                   engine->rescan_factor;
        can_rescan = !engine->paused && !QTAILQ_EMPTY(&engine->blocks);
        w->rescan = can_rescan &&
                    (engine->scan_requested || now >= next_pass);
        w->apply = (engine->params_dirty || engine->discards_pending ||
                    engine->board_dirty) && !engine->paused;
        w->incoming = engine->paused && engine->incoming;
        w->view_wanted = engine->view.wanted;
        if (engine->quit || w->rescan || w->apply || w->incoming ||
            now >= w->next_refresh || w->view_wanted) {
            return now;
        }
        /*
         * Never a negative wait: qemu_cond_timedwait() would make an
         * invalid deadline of it.  A pass that cannot run (paused, no
         * backend) is no reason to wake up.
         */
        qemu_cond_timedwait(&engine->wakeup, &engine->lock,
                            MAX((can_rescan ? MIN(next_pass, w->next_refresh)
                                            : w->next_refresh) - now, 0));
    }
}

/*
 * Destination of a migration: no reading of RAM that has not arrived
 * (postcopy) until the incoming side completes (migration.c resumes
 * the engine then), but the source's hints are registered as soon as
 * they arrive, and the board is still served.
 */
static void memdedup_thread_incoming(MemdedupEngine *engine)
{
    memdedup_apply_pending_hints(engine);
    QEMU_LOCK_GUARD(&engine->lock);
    if (engine->paused && engine->incoming && !engine->hints_pending &&
        !engine->quit) {
        qemu_cond_timedwait(&engine->wakeup, &engine->lock,
                            MEMDEDUP_BOARD_TICK_MS);
    }
}

/*
 * The residency watch (watch.c), once every MEMDEDUP_WATCH_INTERVAL_MS
 * -- less often where looking took more than 1/MEMDEDUP_WATCH_CPU_DIV
 * of that (guests of hundreds of GiB).  True if a partial pass is due.
 */
static bool memdedup_thread_watch(MemdedupEngine *engine, MemdedupWakeup *w,
                                  int64_t now)
{
    uint64_t cpu_ns;
    bool due = memdedup_watch(engine, &cpu_ns);

    w->next_watch = now + MAX(MEMDEDUP_WATCH_INTERVAL_MS,
                              (int64_t)(cpu_ns / SCALE_MS) *
                              MEMDEDUP_WATCH_CPU_DIV);
    return due;
}

void *memdedup_thread(void *opaque)
{
    MemdedupEngine *engine = opaque;
    MemdedupWakeup w = { 0 };
    int64_t next_view = 0, view_interval = MEMDEDUP_KERNEL_REFRESH_MS;

    rcu_register_thread();
    for (;;) {
        int64_t now = memdedup_thread_wait(engine, &w);

        if (qatomic_read(&engine->quit)) {
            break;
        }
        if (w.incoming) {
            memdedup_thread_incoming(engine);
            memdedup_thread_board(engine);
            continue;
        }
        if (w.rescan || w.apply) {
            /* The pass ends with a fresh kernel view. */
            memdedup_run_pass(engine, w.rescan);
            now = qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
            if (w.rescan) {
                w.last_pass = now;
            }
            view_interval = MEMDEDUP_KERNEL_REFRESH_MS;
            next_view = now + view_interval;
        } else if (now >= w.next_watch &&
                   qatomic_read(&engine->residency_watch) &&
                   memdedup_thread_watch(engine, &w, now)) {
            /* Memory filled or emptied: hash that part now. */
            memdedup_run_partial_pass(engine);
            now = qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
            view_interval = MEMDEDUP_KERNEL_REFRESH_MS;
            next_view = now + view_interval;
            w.next_second = now + MEMDEDUP_KERNEL_REFRESH_MS;
        } else if (now >= w.next_second || w.view_wanted) {
            if (now >= next_view || w.view_wanted) {
                memdedup_refresh_kernel_view(engine, false);
                view_interval = MIN(view_interval * 2,
                                    MEMDEDUP_KERNEL_REFRESH_MAX_MS);
                next_view = now + view_interval;
            }
            memdedup_numa_watch(engine);
            memdedup_rearm_tick(engine);
            w.next_second = now + MEMDEDUP_KERNEL_REFRESH_MS;
        }
        /* A board is served more often: a peer's filter is taken soon. */
        w.next_refresh = now + (memdedup_thread_board(engine) ?
                                MEMDEDUP_BOARD_TICK_MS :
                                MEMDEDUP_KERNEL_REFRESH_MS);
    }
    rcu_unregister_thread();
    return NULL;
}
