/*
 * memdedup: start-up wiring
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * One engine per process manages the RAM of every memory-backend-ksm.
 * The engine's files are floors, each calling only those below it:
 *
 *   object.c, monitor.c      the memdedup object; QMP and HMP
 *   engine.c (this file)     start-up: what the first backend or the
 *                            memdedup object brings up
 *   adopt.c, discard.c,      backends adopted by the memdedup object;
 *   migration.c              virtio-mem; live migration
 *   pass.c                   the scanner thread and its passes
 *   summary.c, advise.c,     region counts; madvise; the kernel's merged
 *   kernel-view.c,           counts; which kernel interfaces exist
 *   features.c
 *   scan.c, numa-engine.c,   hashing one region; host NUMA placement;
 *   board.c, board-link.c,   the cross-VM board: directory and sockets,
 *   board-filter.c           links and proofs, filters
 *   registry.c               the engine singleton and its blocks
 *   index.c, policy.c,       the pure core, free of softmmu state
 *   kernel.c, kernel-pages.c,
 *   numa.c, bloom.c
 *
 * Start-up happens once, with the BQL held: the kernel files the
 * scanner reads are opened and probed, migration is hooked, and with
 * the first block the scanner thread starts.
 */

#include "qemu/osdep.h"
#include "qemu/lockable.h"
#include "qapi/error.h"
#include "memdedup-internal.h"

/* A /proc/kpage* file, or -1 where it cannot be opened or read. */
static int memdedup_open_page_file(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    uint64_t first;

    /* Opened but unreadable (another file mounted over it): none. */
    if (fd >= 0 && pread(fd, &first, sizeof(first), 0) != sizeof(first)) {
        close(fd);
        fd = -1;
    }
    return fd;
}

void memdedup_engine_start(void)
{
    MemdedupEngine *engine = &memdedup_engine;
    static bool done;

    memdedup_registry_init();
    if (done) {
        return;
    }
    done = true;
    memdedup_kernel_view_init(&engine->view);
    engine->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    engine->pagemap_scan = engine->pagemap_fd >= 0;    /* until refused */
    engine->kpageflags_fd = memdedup_open_page_file("/proc/kpageflags");
    engine->kpagecount_fd = memdedup_open_page_file("/proc/kpagecount");
    memdedup_learn_zero_pfns(engine);
    memdedup_features_probe(engine);
    memdedup_migration_init(engine);
}

MemdedupBlock *memdedup_block_add(const char *id, void *host, uint64_t size,
                                  const MemdedupParams *params, Error **errp)
{
    MemdedupEngine *engine = &memdedup_engine;
    MemdedupBlock *blk;

    memdedup_engine_start();
    blk = memdedup_registry_add(id, host, size, params, errp);
    if (!blk) {
        return NULL;
    }
    WITH_QEMU_LOCK_GUARD(&engine->lock) {
        if (!engine->thread_started) {
            engine->thread_started = true;
            qemu_thread_create(&engine->thread, "memdedup", memdedup_thread,
                               engine, QEMU_THREAD_DETACHED);
        }
    }
    /* Follow virtio-mem's plugged parts, if it is used with one. */
    memdedup_discard_init();
    return blk;
}
