/*
 * memdedup: noticing, between passes, guest memory that filled or emptied
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * A full pass hashes everything every rescan-interval (longer while
 * memory is quiet), and a guest that fills its memory -- booting,
 * starting a workload -- would wait that long for its new pages to be
 * registered.  So once a second, between passes, the scanner thread
 * looks at residency alone: how many small pages of every region of
 * every block with a policy map a frame (mincore: the page tables
 * alone, no content read, no page faulted in, no PFN needed), against
 * the same count taken when the region was last hashed
 * (MemdedupRegion.mapped).  A region whose count moved by
 * 1/MEMDEDUP_WATCH_REGION_DIV of its pages is marked
 * (MemdedupBlock.watched); once the marked regions hold enough of the
 * memory, a partial pass (pass.c) hashes only them -- registering at
 * once those that qualify by themselves -- and then counts and
 * registers everything against the rebuilt dup set, as a full pass
 * does.
 *
 * Residency does not show resident pages that the guest writes again:
 * those wait for the next full pass, as before.  Why this and not dirty
 * tracking or userfaultfd, and what it costs: docs/devel/memdedup.rst,
 * "Noticing change between passes".
 */

#include "qemu/osdep.h"
#include "qemu/atomic.h"
#include "qemu/bitmap.h"
#include "qemu/lockable.h"
#include "memdedup-internal.h"
#include "trace.h"

/* Regions counted at a time (memdedup_regions_mapped). */
#define MEMDEDUP_WATCH_STRIDE 256

/* Did @now of the region's @pages move enough from @then? */
static bool memdedup_watch_moved(uint32_t then, uint32_t now, uint64_t pages)
{
    uint64_t moved = now > then ? now - then : then - now;

    return moved && moved * MEMDEDUP_WATCH_REGION_DIV >= pages;
}

/*
 * Mark @blk's regions whose residency moved; returns the bytes marked,
 * and adds the bytes watched to *@watched.
 */
static uint64_t memdedup_watch_block(MemdedupEngine *engine,
                                     MemdedupBlock *blk, uint64_t *watched)
{
    const uint64_t small = blk->page_size / qemu_real_host_page_size();
    uint32_t counts[MEMDEDUP_WATCH_STRIDE];
    uint64_t region, marked = 0, i;

    bitmap_zero(blk->watched, blk->nr_regions);
    for (region = 0; region < blk->nr_regions;
         region += MEMDEDUP_WATCH_STRIDE) {
        uint64_t n = MIN(MEMDEDUP_WATCH_STRIDE, blk->nr_regions - region);

        if (!memdedup_regions_mapped(blk, region, n, counts) ||
            qatomic_read(&engine->paused)) {
            bitmap_zero(blk->watched, blk->nr_regions);
            return 0;
        }
        for (i = 0; i < n; i++) {
            uint64_t first = (region + i) * blk->pages_per_region;
            uint64_t pages = MIN(blk->pages_per_region, blk->nr_pages - first);

            if (memdedup_watch_moved(blk->regions[region + i].mapped,
                                     counts[i], pages * small)) {
                set_bit(region + i, blk->watched);
                marked += pages * blk->page_size;
            }
        }
    }
    *watched += blk->size;
    return marked;
}

bool memdedup_watch(MemdedupEngine *engine, uint64_t *cpu_ns)
{
    uint64_t cpu_start = memdedup_thread_cpu_ns();
    g_autofree MemdedupBlock **blocks = NULL;
    uint64_t marked = 0, watched = 0;
    size_t n = 0, b;
    bool worth;

    *cpu_ns = 0;
    WITH_QEMU_LOCK_GUARD(&engine->lock) {
        MemdedupBlock *blk;

        if (engine->paused || engine->quit) {
            return false;
        }
        QTAILQ_FOREACH(blk, &engine->blocks, next) {
            n++;
        }
        blocks = g_new(MemdedupBlock *, n);
        n = 0;
        QTAILQ_FOREACH(blk, &engine->blocks, next) {
            if (blk->params.policy != MEMDEDUP_POLICY_OFF) {
                memdedup_block_ref(blk);
                blocks[n++] = blk;
            }
        }
    }
    for (b = 0; b < n; b++) {
        marked += memdedup_watch_block(engine, blocks[b], &watched);
        memdedup_block_unref(blocks[b]);
    }

    worth = marked && !qatomic_read(&engine->paused) &&
            (marked * MEMDEDUP_WATCH_PASS_DIV >= watched ||
                       marked >= MEMDEDUP_WATCH_PASS_BYTES);
    trace_memdedup_watch(watched, marked, worth);
    WITH_QEMU_LOCK_GUARD(&engine->lock) {
        *cpu_ns = memdedup_thread_cpu_ns() - cpu_start;
        engine->watch_cpu_time += *cpu_ns;
        engine->scanner_cpu_time += *cpu_ns;
    }
    return worth;
}
