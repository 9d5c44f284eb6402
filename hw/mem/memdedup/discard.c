/*
 * memdedup: memory with a RamDiscardManager (virtio-mem)
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * A memory-backend-ksm used as a virtio-mem device's memdev is only
 * partly plugged: the device owns a RamDiscardManager that says which
 * parts the guest may use, and discards (MADV_DONTNEED) the parts it
 * unplugs.  The engine follows it through a RamDiscardListener per
 * mapped section, found by a MemoryListener on the system address space:
 *  - a block gets a page bitmap of its plugged parts when its first
 *    section with a manager is mapped; the scanner never looks at pages
 *    outside it;
 *  - a discard clears those bits at once and queues the affected
 *    regions; the scanner drops their fingerprints and recounts the
 *    statistics without waiting for the next pass.
 * All callbacks run with the BQL held.  A listener holds a reference on
 * its block, and the section copy made by the manager holds the memory
 * region (hence the backend) until the section is unmapped.
 */

#include "qemu/osdep.h"
#include "qemu/bitmap.h"
#include "qemu/main-loop.h"
#include "exec/memory.h"
#include "exec/address-spaces.h"
#include "memdedup-internal.h"
#include "trace.h"

typedef struct MemdedupDiscardWatch {
    RamDiscardListener rdl;
    MemoryRegion *mr;
    hwaddr offset_within_address_space;
    MemdedupBlock *blk;
    uint64_t block_offset;      /* of the memory region's start, in blk */
    QLIST_ENTRY(MemdedupDiscardWatch) next;
} MemdedupDiscardWatch;

static QLIST_HEAD(, MemdedupDiscardWatch) memdedup_watches =
    QLIST_HEAD_INITIALIZER(memdedup_watches);
static MemoryListener memdedup_discard_listener;

/* The pages of @section, as a page range of the watched block. */
static void memdedup_section_pages(MemdedupDiscardWatch *w,
                                   MemoryRegionSection *section,
                                   uint64_t *first, uint64_t *count)
{
    MemdedupBlock *blk = w->blk;
    uint64_t start = w->block_offset + section->offset_within_region;
    uint64_t end = MIN(start + int128_get64(section->size), blk->size);

    *first = start / blk->page_size;
    *count = end > start ? DIV_ROUND_UP(end, blk->page_size) - *first : 0;
}

static int memdedup_notify_populate(RamDiscardListener *rdl,
                                    MemoryRegionSection *section)
{
    MemdedupDiscardWatch *w = container_of(rdl, MemdedupDiscardWatch, rdl);
    uint64_t first, count;

    memdedup_section_pages(w, section, &first, &count);
    memdedup_block_plug(w->blk, first, count, true);
    return 0;
}

static void memdedup_notify_discard(RamDiscardListener *rdl,
                                    MemoryRegionSection *section)
{
    MemdedupDiscardWatch *w = container_of(rdl, MemdedupDiscardWatch, rdl);
    uint64_t first, count;

    memdedup_section_pages(w, section, &first, &count);
    memdedup_block_plug(w->blk, first, count, false);
}

static void memdedup_discard_region_add(MemoryListener *listener,
                                        MemoryRegionSection *section)
{
    RamDiscardManager *rdm;
    MemdedupDiscardWatch *w;
    MemdedupBlock *blk;
    uint8_t *host;

    if (!memory_region_is_ram(section->mr) ||
        !memory_region_has_ram_discard_manager(section->mr)) {
        return;
    }
    host = memory_region_get_ram_ptr(section->mr);
    blk = memdedup_block_find_host(host);
    if (!blk) {
        return;                 /* not memory the engine manages */
    }
    rdm = memory_region_get_ram_discard_manager(section->mr);
    w = g_new0(MemdedupDiscardWatch, 1);
    w->mr = section->mr;
    w->offset_within_address_space = section->offset_within_address_space;
    w->blk = blk;               /* memdedup_block_find_host's reference */
    w->block_offset = host - blk->host;
    /* From now on, only what the manager reports populated is scanned. */
    memdedup_block_track_plugged(blk);
    ram_discard_listener_init(&w->rdl, memdedup_notify_populate,
                              memdedup_notify_discard, true);
    ram_discard_manager_register_listener(rdm, &w->rdl, section);
    QLIST_INSERT_HEAD(&memdedup_watches, w, next);
    trace_memdedup_discard_watch(blk->id, section->offset_within_address_space,
                                 int128_get64(section->size), true);
}

static void memdedup_discard_region_del(MemoryListener *listener,
                                        MemoryRegionSection *section)
{
    MemdedupDiscardWatch *w;

    QLIST_FOREACH(w, &memdedup_watches, next) {
        if (w->mr == section->mr && w->offset_within_address_space ==
            section->offset_within_address_space) {
            break;
        }
    }
    if (!w) {
        return;
    }
    ram_discard_manager_unregister_listener(
        memory_region_get_ram_discard_manager(section->mr), &w->rdl);
    QLIST_REMOVE(w, next);
    trace_memdedup_discard_watch(w->blk->id,
                                 section->offset_within_address_space,
                                 int128_get64(section->size), false);
    memdedup_block_put(w->blk);
    g_free(w);
}

void memdedup_discard_init(void)
{
    assert(qemu_mutex_iothread_locked());
    if (memdedup_discard_listener.name) {
        return;
    }
    memdedup_discard_listener = (MemoryListener) {
        .name = "memdedup-discard",
        .region_add = memdedup_discard_region_add,
        .region_del = memdedup_discard_region_del,
    };
    memory_listener_register(&memdedup_discard_listener,
                             &address_space_memory);
}
