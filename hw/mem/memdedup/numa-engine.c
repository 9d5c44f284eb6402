/*
 * memdedup: host NUMA placement in the engine and its report
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * The glue between the pure per-node logic of numa.c and the engine:
 *  - intended placement: the guest node of a backend (the machine's
 *    -numa node,memdev=) and its host binding (host-nodes, policy), looked
 *    up when the monitor asks, under the BQL, so that a backend's
 *    properties are never read from the scanner thread;
 *  - actual placement: the host node of every page the scanner hashes
 *    (move_pages in query mode, one call per region, inside the same RCU
 *    read-side section as the hashing);
 *  - the host's merge_across_nodes, re-read at the start of every pass
 *    and watched once a second between passes: when the partitioning
 *    changes, a pass is requested, which rebuilds the per-node index and
 *    applies every backend's policy again.
 *
 * Locking: blk->nodes and engine->numa are scanner-owned like the
 * fingerprints and the dup set; blk->numa_stats and the engine's NUMA
 * fields are published under MemdedupEngine.lock.
 */

#include "qemu/osdep.h"
#include "qemu/atomic.h"
#include "qemu/bitmap.h"
#include "qemu/rcu.h"
#include "hw/boards.h"
#include "qom/object.h"
#include "sysemu/hostmem.h"
#include "sysemu/numa.h"
#include "memdedup-internal.h"
#include "trace.h"

/* The host's partitioning: (knob or -1, online nodes, per-node trees). */
static bool memdedup_numa_read_host(int64_t *knob, uint32_t *nodes)
{
    unsigned long online[BITS_TO_LONGS(MEMDEDUP_NUMA_NODES_MAX)];
    uint64_t value;

    *knob = memdedup_read_ksm_knob("merge_across_nodes", &value) ? value : -1;
    *nodes = memdedup_read_host_nodes(online) ?
             bitmap_count_one(online, MEMDEDUP_NUMA_NODES_MAX) : 1;
    return *knob == 0 && *nodes > 1;
}

bool memdedup_numa_pass_begin(MemdedupEngine *engine)
{
    int64_t knob;
    uint32_t nodes;
    bool partitioned = memdedup_numa_read_host(&knob, &nodes);
    bool changed;

    qemu_mutex_lock(&engine->lock);
    /* The first pass sets the partitioning; later ones change it. */
    changed = engine->host_nodes && partitioned != engine->partitioned;
    engine->merge_across_nodes = knob;
    engine->host_nodes = nodes;
    engine->partitioned = partitioned;
    engine->repartitions += changed;
    qemu_mutex_unlock(&engine->lock);

    /* Scanner-owned; no worker thread runs yet. */
    if (engine->numa.partitioned != partitioned) {
        engine->dupset_gen++;   /* duplicates count differently now */
    }
    engine->numa.partitioned = partitioned;
    engine->placement = nodes > 1 ? memdedup_numa_move_pages :
                                    memdedup_numa_one_node;
    if (changed) {
        trace_memdedup_numa_repartition(knob, nodes, partitioned);
    }
    return changed;
}

void memdedup_numa_watch(MemdedupEngine *engine)
{
    int64_t knob;
    uint32_t nodes;
    bool partitioned = memdedup_numa_read_host(&knob, &nodes);

    QEMU_LOCK_GUARD(&engine->lock);
    if (engine->host_nodes && partitioned != engine->partitioned) {
        /* Judge everything again under the kernel's new trees. */
        engine->scan_requested = true;
        qemu_cond_signal(&engine->wakeup);
    }
}

bool memdedup_numa_scan_region(MemdedupBlock *blk, uint64_t region,
                               uint8_t *base, MemdedupScanBuffers *buf)
{
    uint64_t first = region * blk->pages_per_region;
    uint64_t pages = MIN(blk->pages_per_region, blk->nr_pages - first);
    /* Set by memdedup_numa_pass_begin before any hashing. */
    MemdedupPlacementFn placement = memdedup_engine.placement ?:
                                    memdedup_numa_move_pages;
    uint64_t rehomed;

    memcpy(buf->nodes, blk->nodes + first, pages);
    rehomed = memdedup_numa_place_pages(placement, NULL, base,
                                        blk->page_size, buf->present, pages,
                                        blk->nodes + first, buf->addrs,
                                        buf->status);
    if (rehomed) {
        qatomic_add(&blk->rehomed_pages, rehomed);
        trace_memdedup_numa_rehomed(blk->id, region, rehomed);
    }
    return !memcmp(buf->nodes, blk->nodes + first, pages);
}

ssize_t memdedup_numa_find(MemdedupEngine *engine, MemdedupBlock *blk,
                           uint64_t page, MemdedupNumaStats *stats)
{
    ssize_t slot;
    MemdedupDupKind kind = memdedup_numa_classify(&engine->numa,
                                                  &engine->dupset,
                                                  memdedup_block_fp(blk, page),
                                                  blk->nodes[page], &slot);

    if (stats) {
        memdedup_numa_count_page(stats, blk->fps[page], blk->nodes[page],
                                 kind);
    }
    return memdedup_numa_candidate(&engine->numa, kind) ? slot : -1;
}

void memdedup_numa_block_publish(MemdedupEngine *engine, MemdedupBlock *blk,
                                 MemdedupNumaStats *stats)
{
    uint64_t chunk = MEMDEDUP_RCU_CHUNK / blk->page_size, p;

    /*
     * On one node, the node's KSM pages are the backend's, which the pass
     * counts through kpageflags anyway: do not read it twice.
     */
    stats->one_node = engine->placement == memdedup_numa_one_node;
    for (p = 0; !stats->one_node && p < blk->nr_pages; p += chunk) {
        bool counted = false;

        /* One RCU section per chunk (see MEMDEDUP_RCU_CHUNK). */
        WITH_RCU_READ_LOCK_GUARD() {
            counted = !qatomic_load_acquire(&blk->removed) &&
                      memdedup_numa_count_merged(
                          engine->pagemap_fd, engine->kpageflags_fd,
                          (uintptr_t)blk->host + p * blk->page_size,
                          blk->page_size, blk->nodes + p,
                          MIN(chunk, blk->nr_pages - p), stats);
        }
        if (!counted) {
            stats->merged_known = false;
            break;
        }
    }
    qemu_mutex_lock(&engine->lock);
    g_free(blk->numa_stats);
    blk->numa_stats = stats;
    qemu_mutex_unlock(&engine->lock);
}

MemdedupNumaStats *memdedup_numa_block_stats(MemdedupBlock *blk)
{
    MemdedupNumaStats *stats;
    unsigned n;

    /* Only the scanner thread replaces it: no lock to read it here. */
    if (!blk->numa_stats) {
        return NULL;
    }
    stats = g_memdup2(blk->numa_stats, sizeof(*stats));
    for (n = 0; n < MEMDEDUP_NUMA_NODES_MAX; n++) {
        stats->node[n].merged = 0;
    }
    stats->merged_known = false;
    return stats;
}

/* ------------------------------------------------------------------ */
/* Intended placement and the report (BQL held)                        */
/* ------------------------------------------------------------------ */

/* The memory backend object with id @id, or NULL. */
static HostMemoryBackend *memdedup_numa_backend(const char *id)
{
    Object *obj = object_resolve_path_component(object_get_objects_root(),
                                                id);

    return obj ? (HostMemoryBackend *)object_dynamic_cast(obj,
                                                TYPE_MEMORY_BACKEND) : NULL;
}

/* The guest node whose memdev @backend is, or -1. */
static int memdedup_numa_guest_node(HostMemoryBackend *backend)
{
    MachineState *ms = current_machine;
    int i;

    if (!ms || !ms->numa_state || !backend) {
        return -1;
    }
    for (i = 0; i < ms->numa_state->num_nodes; i++) {
        if (ms->numa_state->nodes[i].node_memdev == backend) {
            return i;
        }
    }
    return -1;
}

/* Is @backend bound to host nodes at all? */
static bool memdedup_numa_bound(HostMemoryBackend *backend)
{
    return backend &&
           find_first_bit(backend->host_nodes, MAX_NODES) < MAX_NODES;
}

void memdedup_numa_query_backend(MemdedupBlock *blk, MemdedupBackendInfo *bi)
{
    HostMemoryBackend *backend = memdedup_numa_backend(blk->id);
    int guest_node = memdedup_numa_guest_node(backend);
    uint16List **tail = &bi->host_nodes;
    unsigned long n;

    bi->rehomed_pages = qatomic_read(&blk->rehomed_pages);
    bi->host_policy = backend ? backend->policy : HOST_MEM_POLICY_DEFAULT;
    if (guest_node >= 0) {
        bi->has_guest_node = true;
        bi->guest_node = guest_node;
    }
    if (!memdedup_numa_bound(backend)) {
        return;
    }
    bi->has_host_nodes = true;
    bi->has_off_node_pages = blk->numa_stats != NULL;
    for (n = find_first_bit(backend->host_nodes, MAX_NODES); n < MAX_NODES;
         n = find_next_bit(backend->host_nodes, MAX_NODES, n + 1)) {
        QAPI_LIST_APPEND(tail, n);
    }
    for (n = 0; blk->numa_stats && n < MEMDEDUP_NUMA_NODES_MAX; n++) {
        if (!test_bit(n, backend->host_nodes)) {
            bi->off_node_pages += blk->numa_stats->node[n].resident;
        }
    }
}

/* The row of (@guest_node, @host_node) in @rows, added if new. */
static MemdedupNumaPlacement *memdedup_numa_row(GPtrArray *rows,
                                                int guest_node,
                                                unsigned host_node)
{
    MemdedupNumaPlacement *row;
    guint i;

    for (i = 0; i < rows->len; i++) {
        row = g_ptr_array_index(rows, i);
        if (row->host_node == host_node &&
            (row->has_guest_node ? (int)row->guest_node : -1) ==
            guest_node) {
            return row;
        }
    }
    row = g_new0(MemdedupNumaPlacement, 1);
    row->has_guest_node = guest_node >= 0;
    row->guest_node = MAX(guest_node, 0);
    row->host_node = host_node;
    row->has_kernel_merged_pages = true;    /* until a block lacks it */
    row->has_bound = true;                  /* until an unbound block */
    row->bound = true;
    g_ptr_array_add(rows, row);
    return row;
}

static gint memdedup_numa_row_cmp(gconstpointer a, gconstpointer b)
{
    const MemdedupNumaPlacement *x = *(MemdedupNumaPlacement **)a;
    const MemdedupNumaPlacement *y = *(MemdedupNumaPlacement **)b;
    int gx = x->has_guest_node ? x->guest_node : INT_MAX;
    int gy = y->has_guest_node ? y->guest_node : INT_MAX;

    return gx != gy ? (gx < gy ? -1 : 1) :
           (int)x->host_node - (int)y->host_node;
}

void memdedup_numa_query(MemdedupEngine *engine, MemdedupInfo *info)
{
    g_autoptr(GPtrArray) rows = g_ptr_array_new();
    MemdedupNumaPlacementList **tail;
    MemdedupNuma *numa;
    MemdedupBlock *blk;
    guint i;

    QEMU_LOCK_GUARD(&engine->lock);
    if (!engine->host_nodes) {
        return;                 /* no pass yet */
    }
    numa = g_new0(MemdedupNuma, 1);
    numa->host_nodes = engine->host_nodes;
    numa->has_merge_across_nodes = engine->merge_across_nodes >= 0;
    numa->merge_across_nodes = engine->merge_across_nodes > 0;
    numa->per_node_trees = engine->partitioned;
    numa->repartitions = engine->repartitions;

    QTAILQ_FOREACH(blk, &engine->blocks, next) {
        HostMemoryBackend *backend = memdedup_numa_backend(blk->id);
        int guest_node = memdedup_numa_guest_node(backend);
        bool bound = memdedup_numa_bound(backend);
        const MemdedupNumaStats *st = blk->numa_stats;
        unsigned n;

        if (!st) {
            continue;
        }
        numa->unplaced_pages += st->unknown;
        for (n = 0; n < MEMDEDUP_NUMA_NODES_MAX; n++) {
            const MemdedupNumaNodeStats *ns = &st->node[n];
            int64_t exact = blk->merged.kernel_merged_pages_exact;
            MemdedupNumaPlacement *row;

            if (!ns->resident) {
                continue;
            }
            row = memdedup_numa_row(rows, guest_node, n);
            row->resident_pages += ns->resident;
            row->duplicate_pages += ns->duplicate;
            row->cross_node_duplicate_pages += ns->cross_node;
            if (st->one_node) {
                /* Every page is on node 0: the backend's own count. */
                row->kernel_merged_pages += MAX(exact, 0);
                row->has_kernel_merged_pages &= exact >= 0;
            } else {
                row->kernel_merged_pages += ns->merged;
                row->has_kernel_merged_pages &= st->merged_known;
            }
            row->has_bound &= bound;
            row->bound &= bound && test_bit(n, backend->host_nodes);
        }
    }
    g_ptr_array_sort(rows, memdedup_numa_row_cmp);
    tail = &numa->placement;
    for (i = 0; i < rows->len; i++) {
        MemdedupNumaPlacement *row = g_ptr_array_index(rows, i);

        if (!row->has_kernel_merged_pages) {
            row->kernel_merged_pages = 0;
        }
        if (!row->has_bound) {
            row->bound = false;
        }
        QAPI_LIST_APPEND(tail, row);
    }
    info->numa = numa;
    info->has_numa = true;
}
