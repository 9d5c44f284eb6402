/*
 * memdedup: host NUMA placement and per-node duplicate index
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * KSM keeps one stable and one unstable tree per host NUMA node when
 * /sys/kernel/mm/ksm/merge_across_nodes is 0, and then never merges two
 * pages on different nodes.  The engine mirrors that:
 *
 *  - placement: while a region is hashed, move_pages(2) in query mode
 *    (nodes == NULL) gives the host node of each of its resident pages
 *    (on a host with one node, node 0 is known without asking),
 *    kept in one int8_t per page (1 byte; with the 5-byte fingerprint
 *    within the 8 bytes per page the design allows).  A page seen on
 *    another node than in the previous pass (NUMA balancing, migration
 *    between nodes, a changed binding) is counted as re-homed;
 *  - the node index: next to the global dup set, one bit per host node
 *    for each of its entries, set when the node holds two copies or more,
 *    rebuilt with it at the end of every pass from the pages'
 *    (fingerprint, node) pairs, so a re-homed page counts on its new
 *    node by construction;
 *  - classification: a duplicate has a twin on its own node, or only on
 *    other nodes.  With per-node trees (partitioned) only the first kind
 *    is a candidate; with one tree both are.  Both are always counted so
 *    that the report shows what the other setting of the knob would give.
 *
 * Correctness: like the fingerprints, placement is a hint.  A page that
 * moves after it was placed is judged by its old node until the next
 * pass; that can only register a region ksmd then scans in vain, or
 * leave a mergeable one for a pass.  Nothing here touches guest memory:
 * move_pages with nodes == NULL only reads the page tables.
 */

#include "qemu/osdep.h"
#include "qemu/bitmap.h"
#include "qemu/ctype.h"
#include "qemu/cutils.h"
#include "memdedup-core.h"
#ifdef CONFIG_NUMA
#include <numaif.h>
#endif

/* ------------------------------------------------------------------ */
/* Placement                                                           */
/* ------------------------------------------------------------------ */

int memdedup_numa_move_pages(void *opaque, unsigned long count, void **pages,
                             int *status)
{
#ifdef CONFIG_NUMA
    long ret = move_pages(0, count, pages, NULL, status, 0);

    /* A positive value counts pages not migrated: impossible in query. */
    return ret < 0 ? -1 : 0;
#else
    errno = ENOSYS;
    return -1;
#endif
}

int memdedup_numa_one_node(void *opaque, unsigned long count, void **pages,
                           int *status)
{
    unsigned long i;

    for (i = 0; i < count; i++) {
        status[i] = 0;
    }
    return 0;
}

uint64_t memdedup_numa_place_pages(MemdedupPlacementFn fn, void *opaque,
                                   uint8_t *base, uint64_t page_size,
                                   const bool *present, size_t n,
                                   int8_t *nodes, void **addrs, int *status)
{
    uint64_t rehomed = 0;
    size_t i, count = 0, k = 0;

    for (i = 0; i < n; i++) {
        if (present[i]) {
            addrs[count++] = base + i * page_size;
        }
    }
    if (count && fn(opaque, count, addrs, status) < 0) {
        count = 0;              /* nothing learned: all unknown */
    }
    for (i = 0; i < n; i++) {
        int8_t node = MEMDEDUP_NODE_UNKNOWN;

        if (present[i]) {
            if (k < count && status[k] >= 0 && status[k] <= INT8_MAX) {
                node = status[k];
            }
            k++;
        }
        if (node != MEMDEDUP_NODE_UNKNOWN &&
            nodes[i] != MEMDEDUP_NODE_UNKNOWN && nodes[i] != node) {
            rehomed++;
        }
        /*
         * A page that went away keeps no node; one that comes back on a
         * different node is not "re-homed" (it was not resident between).
         */
        nodes[i] = node;
    }
    return rehomed;
}

bool memdedup_parse_node_list(const char *text, unsigned long *nodes,
                              unsigned max)
{
    const char *p = text;

    bitmap_zero(nodes, max);
    while (*p == ' ' || *p == '\n') {
        p++;
    }
    while (*p) {
        unsigned long first, last;

        if (!qemu_isdigit(*p) || qemu_strtoul(p, &p, 10, &first) < 0) {
            return false;
        }
        last = first;
        if (*p == '-') {
            p++;
            if (!qemu_isdigit(*p) || qemu_strtoul(p, &p, 10, &last) < 0) {
                return false;
            }
        }
        if (last < first || last >= max) {
            return false;
        }
        bitmap_set(nodes, first, last - first + 1);
        if (*p == ',') {
            p++;
            if (!qemu_isdigit(*p)) {
                return false;
            }
            continue;
        }
        while (*p == ' ' || *p == '\n') {
            p++;
        }
        if (*p) {
            return false;
        }
    }
    return true;
}

bool memdedup_read_host_nodes(unsigned long *nodes)
{
    g_autofree char *text = NULL;

    if (!g_file_get_contents("/sys/devices/system/node/online", &text, NULL,
                             NULL)) {
        /* A kernel without NUMA: everything is on node 0. */
        bitmap_zero(nodes, MEMDEDUP_NUMA_NODES_MAX);
        set_bit(0, nodes);
        return true;
    }
    return memdedup_parse_node_list(text, nodes, MEMDEDUP_NUMA_NODES_MAX);
}

/* ------------------------------------------------------------------ */
/* The per-node index                                                  */
/* ------------------------------------------------------------------ */

void memdedup_numa_index_clear(MemdedupNumaIndex *idx)
{
    g_free(idx->within);
    idx->within = NULL;
    idx->nr_nodes = 0;
    idx->len = 0;
}

size_t memdedup_numa_index_bytes(const MemdedupNumaIndex *idx)
{
    return idx->within ? BITS_TO_LONGS(idx->len * idx->nr_nodes) *
                         sizeof(unsigned long) : 0;
}

unsigned memdedup_numa_nodes_in_use(const MemdedupFpArray *arrays, size_t nr)
{
    unsigned long used[BITS_TO_LONGS(MEMDEDUP_NUMA_NODES_MAX)] = { 0 };
    size_t a;

    for (a = 0; a < nr; a++) {
        for (uint64_t p = 0; arrays[a].nodes && p < arrays[a].nr_pages; p++) {
            int n = arrays[a].nodes[p];
            if (arrays[a].lo[p] > MEMDEDUP_FP_ZERO && n >= 0 &&
                n < MEMDEDUP_NUMA_NODES_MAX) {
                set_bit(n, used);
            }
        }
    }
    if (bitmap_count_one(used, MEMDEDUP_NUMA_NODES_MAX) < 2) {
        return 0;
    }
    return find_last_bit(used, MEMDEDUP_NUMA_NODES_MAX) + 1;
}

bool memdedup_numa_index_build(MemdedupNumaIndex *idx,
                               const MemdedupDupSet *global,
                               const MemdedupFpArray *arrays, size_t nr,
                               unsigned nr_nodes)
{
    uint64_t bits = global->len * nr_nodes;
    g_autofree unsigned long *seen = NULL;
    size_t a;

    memdedup_numa_index_clear(idx);
    if (!bits) {
        return true;
    }
    seen = bitmap_try_new(bits);
    idx->within = bitmap_try_new(bits);
    if (!seen || !idx->within) {
        memdedup_numa_index_clear(idx);
        return false;
    }
    /* A node holds two copies when its bit is seen a second time. */
    for (a = 0; a < nr; a++) {
        const MemdedupFpArray *arr = &arrays[a];

        for (uint64_t p = 0; arr->nodes && p < arr->nr_pages; p++) {
            int node = arr->nodes[p];
            ssize_t g;

            memdedup_dupset_prefetch(global, arr->lo, arr->hi, p,
                                     arr->nr_pages);
            if (arr->lo[p] <= MEMDEDUP_FP_ZERO || node < 0 ||
                (unsigned)node >= nr_nodes) {
                continue;
            }
            g = memdedup_dupset_find(global, memdedup_fp_at(arr, p));
            if (g >= 0 && test_and_set_bit(g * nr_nodes + node, seen)) {
                set_bit(g * nr_nodes + node, idx->within);
            }
        }
    }
    idx->nr_nodes = nr_nodes;
    idx->len = global->len;
    return true;
}

MemdedupDupKind memdedup_numa_classify(const MemdedupNumaIndex *idx,
                                       const MemdedupDupSet *global,
                                       MemdedupFp fp, int node, ssize_t *slot)
{
    ssize_t g = memdedup_dupset_find(global, fp);
    bool by_node = idx->nr_nodes && idx->partitioned;
    size_t node_slots = idx->len * idx->nr_nodes;

    if (slot) {
        *slot = -1;
    }
    if (g < 0) {
        return MEMDEDUP_DUP_NONE;
    }
    /*
     * One node in use, or a page of unknown node: the global view.  Per
     * node, such pages get slots of their own after the nodes' slots.
     */
    if (!idx->nr_nodes || node < 0 || (unsigned)node >= idx->nr_nodes) {
        if (slot) {
            *slot = by_node ? (ssize_t)node_slots + g : g;
        }
        return MEMDEDUP_DUP_WITHIN_NODE;
    }
    if (!test_bit(g * idx->nr_nodes + node, idx->within)) {
        if (slot && !by_node) {
            *slot = g;
        }
        return MEMDEDUP_DUP_CROSS_NODE;
    }
    if (slot) {
        *slot = by_node ? (ssize_t)(g * idx->nr_nodes + node) : g;
    }
    return MEMDEDUP_DUP_WITHIN_NODE;
}

bool memdedup_numa_candidate(const MemdedupNumaIndex *idx,
                             MemdedupDupKind kind)
{
    return kind == MEMDEDUP_DUP_WITHIN_NODE ||
           (kind == MEMDEDUP_DUP_CROSS_NODE && !idx->partitioned);
}

size_t memdedup_numa_slots(const MemdedupNumaIndex *idx,
                           const MemdedupDupSet *global)
{
    return (idx->nr_nodes && idx->partitioned) ?
           idx->len * idx->nr_nodes + global->len : global->len;
}

/* ------------------------------------------------------------------ */
/* Statistics                                                          */
/* ------------------------------------------------------------------ */

void memdedup_numa_count_page(MemdedupNumaStats *stats, uint32_t fp,
                              int node, MemdedupDupKind kind)
{
    MemdedupNumaNodeStats *ns;

    if (fp == MEMDEDUP_FP_ABSENT) {
        return;
    }
    if (node < 0 || node >= MEMDEDUP_NUMA_NODES_MAX) {
        stats->unknown++;
        return;
    }
    ns = &stats->node[node];
    ns->resident++;
    if (fp == MEMDEDUP_FP_ZERO) {
        return;
    }
    switch (kind) {
    case MEMDEDUP_DUP_WITHIN_NODE:
        ns->duplicate++;
        break;
    case MEMDEDUP_DUP_CROSS_NODE:
        ns->cross_node++;
        break;
    default:
        break;
    }
}

bool memdedup_numa_count_merged(int pagemap_fd, int kpageflags_fd,
                                uintptr_t start, uint64_t page_size,
                                const int8_t *nodes, uint64_t nr_pages,
                                MemdedupNumaStats *stats)
{
    uint64_t counts[MEMDEDUP_NUMA_NODES_MAX] = { 0 };
    uint64_t first, end;
    unsigned node;

    /* One count per run of pages on the same node (long, when bound). */
    for (first = 0; first < nr_pages; first = end) {
        int where = nodes[first];
        int64_t ksm;

        for (end = first + 1; end < nr_pages && nodes[end] == where; end++) {
            /* extend the run */
        }
        if (where < 0 || where >= MEMDEDUP_NUMA_NODES_MAX) {
            continue;           /* not resident, or not reported */
        }
        ksm = memdedup_count_ksm_pages(pagemap_fd, kpageflags_fd,
                                       start + first * page_size,
                                       (end - first) * page_size);
        if (ksm < 0) {
            return false;       /* PFNs hidden, or a read failed */
        }
        counts[where] += ksm;
    }
    for (node = 0; node < MEMDEDUP_NUMA_NODES_MAX; node++) {
        stats->node[node].merged += counts[node];
    }
    stats->merged_known = true;
    return true;
}
