/*
 * memdedup: content-targeted KSM registration for guest RAM
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * The engine hashes the pages of every memory-backend-ksm, finds the
 * duplicate and zero pages, and registers with KSM (madvise
 * MADV_MERGEABLE) only the regions worth merging; the kernel still does
 * the merging.  This header is what the rest of QEMU uses: the backend's
 * parameters and the engine's entry points for the backend and the
 * monitor.  The engine's own interfaces are in hw/mem/memdedup/.
 */

#ifndef SYSEMU_MEMDEDUP_H
#define SYSEMU_MEMDEDUP_H

#include "qemu/units.h"
#include "qapi/qapi-types-memdedup.h"

/* The policy knobs of one backend, copied by the scanner per pass. */
typedef struct MemdedupParams {
    MemdedupPolicy policy;
    uint64_t region_size;       /* bytes, power of two */
    uint8_t duplicate_threshold; /* percent of resident pages, 1-100 */
    bool manage_thp;            /* candidates on small pages, THP for rest */
    bool force_unmerge;         /* skip admission control on unmerge */
    uint8_t cow_threshold;      /* percent of merged pages broken, 0: off */
    uint32_t cow_backoff;       /* ms a churning region first stays off */
} MemdedupParams;

/* Region granularity limits and defaults (see docs/system/memdedup.rst). */
#define MEMDEDUP_REGION_SIZE_MIN     (64 * KiB)
#define MEMDEDUP_REGION_SIZE_MAX     (1 * GiB)
/* The THP size; real guest memory was measured bimodal at 2 MiB. */
#define MEMDEDUP_REGION_SIZE_DEFAULT (2 * MiB)
/* Percent; registered 99.9% of duplicates, skipped 25% of non-zero RAM. */
#define MEMDEDUP_THRESHOLD_DEFAULT   10
/*
 * Copy-on-write churn (see hw/mem/memdedup/cow.c): a region is taken off
 * KSM when, from one pass to the next, at least this percentage of its
 * merged pages stopped being merged while resident -- it then loses as
 * many merged pages per pass as it keeps, and the guest pays a
 * copy-on-write fault for each page it keeps merged.
 */
#define MEMDEDUP_COW_THRESHOLD_DEFAULT 50
/* ms, its first time off; doubled each time the churn comes back. */
#define MEMDEDUP_COW_BACKOFF_DEFAULT   60000
#define MEMDEDUP_COW_BACKOFF_MIN       100
#define MEMDEDUP_COW_BACKOFF_MAX       86400000     /* one day */
/* Host nodes reported one by one; pages on higher nodes count as unknown. */
#define MEMDEDUP_NUMA_NODES_MAX 64

/* The host's online nodes into @nodes (MEMDEDUP_NUMA_NODES_MAX bits). */
bool memdedup_read_host_nodes(unsigned long *nodes);

/* ------------------------------------------------------------------ */
/* Engine API (softmmu only)                                           */
/* ------------------------------------------------------------------ */

#define TYPE_MEMDEDUP "memdedup"

typedef struct MemdedupBlock MemdedupBlock;

/*
 * memdedup_block_add: put @size bytes of guest RAM at @host, owned by the
 * backend with object id @id, under the engine.  Called by the backend
 * with the BQL held once its RAM is allocated.  Fails (with @errp set)
 * when @params needs KSM and the host has none.
 */
MemdedupBlock *memdedup_block_add(const char *id, void *host, uint64_t size,
                                  const MemdedupParams *params, Error **errp);

/*
 * memdedup_block_release: the backend drops its handle.  If the RAM is
 * still mapped, the engine stops managing it first.  BQL held.
 */
void memdedup_block_release(MemdedupBlock *blk);

/*
 * memdedup_block_set_params: change a block's parameters at runtime.  A
 * policy switch that unregisters merged memory is refused with @errp
 * when the host lacks the MemAvailable to unmerge it, unless @params
 * allows forcing.  The scanner applies the change promptly.  BQL held.
 */
bool memdedup_block_set_params(MemdedupBlock *blk, const MemdedupParams *params,
                               Error **errp);

/*
 * memdedup_manages: is the RAM at @host under the engine (a
 * memory-backend-ksm's, or an adopted backend's)?  BQL held.
 */
bool memdedup_manages(void *host);

/* Start a pass now (memdedup-scan). */
bool memdedup_request_scan(Error **errp);

/* Fill a QMP reply; never waits for a running pass. */
MemdedupInfo *memdedup_query(Error **errp);

#endif /* SYSEMU_MEMDEDUP_H */
