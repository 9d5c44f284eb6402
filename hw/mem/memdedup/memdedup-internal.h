/*
 * memdedup: engine internals shared by the engine's files
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 */

#ifndef HW_MEM_MEMDEDUP_INTERNAL_H
#define HW_MEM_MEMDEDUP_INTERNAL_H

#include "qemu/thread.h"
#include "qemu/queue.h"
#include "exec/ramlist.h"
#include "qapi/qapi-builtin-types.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "memdedup-core.h"

typedef struct MemdedupBoard MemdedupBoard;

/*
 * Engine settings: the memdedup object's properties (object.c), and the
 * engine's values when no such object exists (registry.c).
 */
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
/*
 * Reading smaps walks every page table entry of the process (half of
 * the engine's CPU in a steady state when read every second): after a
 * pass the kernel view is refreshed 1 s later, then at intervals that
 * double, up to this; a query finds it at most
 * MEMDEDUP_KERNEL_QUERY_STALE_MS old.  A refresh that ksm_stat can
 * answer does not read smaps, but smaps is read at least this often.
 */
#define MEMDEDUP_KERNEL_REFRESH_MAX_MS   16000

/*
 * A block's statistics, by producer: each struct has one writer, which
 * writes it under MemdedupEngine.lock; QMP reads them under the lock.
 */

/* What the last summary counted; written by pass.c (phase finish). */
typedef struct MemdedupSummaryStats {
    uint64_t resident_pages;
    uint64_t scanned_pages;
    uint64_t zero_pages;
    uint64_t duplicate_pages;
    uint64_t unique_pages;
    uint64_t volatile_pages;
    uint64_t candidate_regions;
    uint64_t cross_vm_pages;            /* duplicated only in other VMs */
    uint64_t cross_vm_regions;          /* wanted only for those */
    uint64_t estimated_saving;          /* bytes */
} MemdedupSummaryStats;

/* What is registered; written by advise.c. */
typedef struct MemdedupRegistrationStats {
    uint64_t registered_bytes;
    uint64_t registered_ranges;
    uint64_t huge_regions;
    uint64_t unmerge_refusals;
    uint64_t hinted_regions;            /* registered from migration hints */
    uint64_t rearmed_regions;           /* taken off and back; rearm.c */
                                        /* is its only writer */
} MemdedupRegistrationStats;

/* What the kernel merged; written by kernel-view.c. */
typedef struct MemdedupMergedStats {
    int64_t kernel_merged_pages;        /* smaps; -1: unavailable */
    int64_t kernel_merged_pages_exact;  /* kpageflags; -1: unavailable */
    int64_t cross_vm_merged_pages;      /* KSM pages there; -1: unknown */
    /* Share of the saving, MEMDEDUP_SHARE_UNIT per page; -1: unknown. */
    int64_t attributed;
} MemdedupMergedStats;

/* One region's churn as the last pass left it (cow.c). */
typedef struct MemdedupCowReport {
    uint64_t region;
    uint32_t broken;            /* in the last pass */
    bool off;
    int64_t until;              /* ms (realtime), while off */
    uint8_t level;
} MemdedupCowReport;

/* The regions reported one by one, at most. */
#define MEMDEDUP_COW_REPORT_MAX 32

/* Copy-on-write churn; written by cow.c. */
typedef struct MemdedupCowStats {
    bool known;                 /* pagemap was readable */
    uint64_t broken_pages;      /* merged pages broken, in the last pass */
    uint64_t broken_total;      /* ... in every pass */
    uint64_t off_regions;       /* regions off KSM for their churn now */
    size_t nr_report;
    MemdedupCowReport report[MEMDEDUP_COW_REPORT_MAX];
} MemdedupCowStats;

/*
 * Guest RAM is touched (madvise, pagemap walks) only inside RCU read-side
 * sections that saw its block alive; each covers at most
 * MEMDEDUP_RCU_CHUNK, and advice that copies memory (MADV_COLLAPSE, about
 * 300 MB/s measured on a 2-core host, and MADV_UNMERGEABLE of merged
 * pages) at most MEMDEDUP_COPY_CHUNK (collapse: or one huge page where
 * the host's are larger, since it collapses only whole huge pages in the
 * range it is given), so that a section lasts some tens
 * of milliseconds.  An unplugged DIMM waits for the section that runs
 * when it goes and for the one that began before its block was marked
 * removed: it is unmapped (and drain_call_rcu returns) well within a
 * second, even during a long collapse.
 */
#define MEMDEDUP_RCU_CHUNK (64 * MiB)
#define MEMDEDUP_COPY_CHUNK (8 * MiB)

struct MemdedupBlock {
    /* Constant after memdedup_block_add. */
    char *id;                   /* backend object id */
    uint8_t *host;              /* start of the guest RAM */
    uint64_t size;              /* bytes */
    uint64_t page_size;         /* bytes; the host page size */
    uint64_t nr_pages;
    uint64_t pages_per_region;
    uint64_t nr_regions;

    /* Atomic. */
    int refcount;               /* engine list, backend, pass, listener */
    bool removed;               /* RAM unmapped or going: never touch it */
    /*
     * VMAs: the engine's advice splits the block into @vmas (scanner
     * threads write it after each change), at most
     * MIN(@vma_share, @vma_cap): @vma_share is its part of the engine's
     * vma_budget (the pass snapshot sets it), @vma_cap halves each time
     * the kernel runs out of VMAs (UINT32_MAX until then).
     */
    uint32_t vmas;
    uint32_t vma_share;
    uint32_t vma_cap;
    uint32_t vma_target;        /* what the policy's last apply aimed at */
    bool vma_cut;               /* vma_cap was halved in this apply */
    uint64_t advise_failures;   /* registration changes the kernel refused */
    uint64_t thp_advise_failures;   /* MADV_(NO)HUGEPAGE refused */
    int advise_errno;           /* errno of the last, 0 once applied again */
    bool advise_warned;         /* a refusal was warned about */
    /*
     * Plugged pages, one bit each, when a RamDiscardManager (virtio-mem)
     * decides which parts exist; NULL: all of it.  Set once, freed with
     * the block; bits change under MemdedupEngine.lock.
     */
    unsigned long *plugged;

    /* Under MemdedupEngine.lock. */
    MemdedupParams params;      /* as set by the backend */
    bool params_changed;        /* scanner has not applied params yet */
    MemdedupSummaryStats summary;
    MemdedupRegistrationStats registration;
    MemdedupMergedStats merged;
    MemdedupCowStats cow;
    unsigned long *registered;  /* nr_regions bits, as advise.c published */
    unsigned long *hints;       /* migration hints not yet applied */
    unsigned long *discarded;   /* regions with pages discarded since */
    QTAILQ_ENTRY(MemdedupBlock) next;

    /*
     * Scanner-owned: only scanner threads touch these, each region by one
     * thread at a time; freed with the block.
     */
    uint32_t *fps;              /* nr_pages fingerprints, low bits */
    uint8_t *fp_hi;             /* nr_pages fingerprints, high bits */
    MemdedupRegion *regions;    /* nr_regions summaries */
    bool hinted;                /* registered from hints, not yet scanned */
    int8_t *nodes;             /* nr_pages host nodes, or -1 (numa.c) */
    unsigned long *shared;      /* nr_pages bits: shared their frame (cow.c) */
    unsigned long *watched;     /* nr_regions bits: residency moved (watch.c) */
    /*
     * engine->dupset_gen when the last summary counted every region's
     * duplicates (MemdedupRegion.duplicate) against the dup set; 0: not
     * counted against the current one.
     */
    uint64_t judged_gen;

    /* NUMA placement (numa-engine.c). */
    uint64_t rehomed_pages;     /* atomic: pages seen moving between nodes */
    MemdedupNumaStats *numa_stats;  /* under MemdedupEngine.lock; or NULL */
};

/*
 * The kernel view's state (kernel-view.c): when smaps was last read and
 * what ksm_stat said then, so that ksm_stat alone can keep the view
 * current between reads.  Written by the scanner thread under
 * MemdedupEngine.lock; QMP reads time and sets wanted, under the lock.
 */
typedef struct MemdedupKernelView {
    int64_t time;               /* last current (ms, realtime) */
    bool wanted;                /* a query found it stale: read it now */
    int64_t read_time;          /* smaps last read (ms, realtime), or 0 */
    int64_t merging_pages;      /* ksm_stat's counts at that read */
    int64_t zero_pages;
    int64_t outside_pages;      /* KSM pages outside the one block, or -1 */
    int64_t outside_last;       /* as measured at that read (one ksmd */
                                /* did not race), or -1 */
    int64_t block_pages;        /* the one block's KSM pages then, or -1 */
    int64_t derived_merging;    /* ksm_stat's at the last derived view */
    int64_t max_age;            /* ms: smaps is read again at this age */
    uint32_t age_factor;        /* its multiple of the base age, 1-8 */
    uint64_t blocks_gen;        /* MemdedupEngine.blocks_gen at that read */
    bool smaps_ksm;             /* smaps had KSM: lines (not Linux 6.1) */
} MemdedupKernelView;

/*
 * The kernel interfaces found when the engine started (features.c).
 * Written once by memdedup_engine_start() (BQL) before the scanner
 * thread exists; constant afterwards.
 */
typedef struct MemdedupFeatures {
    bool probed;
    char *release;              /* uname -r, shown only */
    bool ksm_stat;              /* /proc/self/ksm_stat exists */
    GStrv ksm_stat_fields;      /* its field names */
    bool merging_pages_file;    /* /proc/self/ksm_merging_pages exists */
    bool madv_collapse;         /* MADV_COLLAPSE is known */
} MemdedupFeatures;

typedef struct MemdedupEngine {
    QemuMutex lock;             /* protects the fields marked below */
    QemuCond wakeup;            /* scanner waits here; signalled on change */

    /* Under lock. */
    QTAILQ_HEAD(, MemdedupBlock) blocks;
    bool thread_started;
    bool quit;
    bool scan_requested;
    bool params_dirty;          /* some block has params_changed */
    uint64_t scan_rate;         /* bytes per second */
    uint32_t scan_threads;      /* 1-8 */
    /*
     * VMAs the advice may split guest RAM into over all blocks: the
     * memdedup object's vma-budget, else memdedup_read_vma_budget().
     */
    uint32_t vma_budget;
    uint64_t thp_size;          /* the host's THP size; set at init */
    uint32_t rescan_interval;   /* milliseconds */
    uint32_t rescan_backoff;    /* most a quiet pass may stretch it, 1-64 */
    uint32_t rescan_factor;     /* the stretch now: 1, 2, 4 .. backoff */
    bool rescan_hurry;          /* since the pass began: no stretching */
    bool settings_object;       /* a memdedup object exists */
    bool send_hints;            /* migrate-hints: send regions to the dest */
    bool hints_pending;         /* some block has hints to apply */
    bool discards_pending;      /* some block has discarded regions */
    MemdedupBoard *board;       /* the cross-VM board, or NULL */
    MemdedupBoard *board_retired;  /* closed by the scanner thread */
    bool board_dirty;           /* other VMs published: look up again */
    MemdedupKernelView view;    /* kernel-view.c's; written by the scanner */
    uint64_t blocks_gen;        /* counts changes to the list of blocks */
    int64_t collapse_after_scans; /* ksmd full_scans before collapsing */
    int64_t collapse_wait_start;  /* ms (realtime) the wait began */
    bool collapse_released;     /* ... reached: collapse from now on */
    uint64_t board_version;     /* of the peers' filters, last looked up */
    /*
     * Scanner-owned: the last publication came from a pass in which no
     * page changed, appeared or went (so no region was volatile), with
     * the blocks of board_published_gen: a quiet pass after it would
     * publish the same filter again, and does not.
     */
    bool board_published_quiet;
    uint64_t board_published_gen;
    char *paused_reason;        /* why paused, or NULL */
    bool incoming;              /* paused until the incoming migration ends */
    MemdedupState state;        /* idle, scanning or disabled */
    uint64_t passes_completed;
    uint64_t last_pass_duration;   /* ns */
    uint64_t metadata_bytes;
    uint64_t scanner_cpu_time;     /* ns, all scanner threads */
    uint64_t partial_passes;    /* passes that hashed the watched regions */
    uint64_t watch_cpu_time;    /* ns the residency watch took */
    uint64_t index_failures;    /* passes that kept the last index: no memory */
    uint64_t x_index_memory;    /* atomic: x-index-memory, 0: no limit */
    char *x_meminfo;            /* x-meminfo: read for /proc/meminfo */
    uint64_t dupset_dropped;    /* duplicates the last index left out */

    /* Atomic; written under lock.  Scanning and madvise stop when set. */
    bool paused;
    /* Atomic; written under lock: the residency watch runs (watch.c). */
    bool residency_watch;
    /* Atomic; written under lock: stuck pairs are registered again. */
    bool rearm;
    /* Scanner thread: ksmd's full_scans at the last rearm tick. */
    uint64_t rearm_scans;

    /* Atomic: progress of the running pass. */
    uint64_t pass_pages_total;
    uint64_t pass_pages_done;

    /* Constant after init. */
    uint64_t seed;              /* per-process fingerprint seed */
    int pagemap_fd;             /* /proc/self/pagemap or -1 */
    bool pagemap_scan;          /* atomic: its PAGEMAP_SCAN ioctl works */
    int kpageflags_fd;          /* /proc/kpageflags or -1 */
    int kpagecount_fd;          /* /proc/kpagecount or -1 */
    bool pfns_visible;          /* pagemap shows PFNs (CAP_SYS_ADMIN) */
    uint64_t zero_pfn;          /* the shared zero page, 0 if unknown or */
                                /* never mapped on a read fault */
    uint64_t huge_zero_pfn;     /* first PFN of the huge zero page, or 0 */
    MemdedupFeatures features;  /* the kernel's interfaces (features.c) */
    QemuThread thread;
    RAMBlockNotifier notifier;
    Notifier migration_notifier;
    /* Main loop (BQL): looks for the end of the incoming migration. */
    QEMUTimer *incoming_timer;

    /*
     * Scanner-owned.  Read-only while worker threads hash, rebuilt by
     * the main scanner thread between hashing phases.
     */
    MemdedupDupSet dupset;
    MemdedupNumaIndex numa;     /* per host node bits, next to dupset */
    bool index_failing;         /* the last index build ran out of memory */
    bool index_dropping;        /* the last index left duplicates out */
    uint64_t dupset_gen;        /* counts changes to dupset and numa, >= 1 */
    uint64_t indexed_blocks_gen;    /* blocks_gen when dupset was built */
    MemdedupPlacementFn placement;  /* move_pages, or node 0 on one node */

    /* Under lock: the host's NUMA view as of the last pass (numa-engine.c) */
    int64_t merge_across_nodes; /* the KSM knob, -1 if unreadable */
    uint32_t host_nodes;        /* online host nodes */
    bool partitioned;           /* KSM trees per node: knob 0, nodes > 1 */
    uint64_t repartitions;      /* times the partitioning changed */
} MemdedupEngine;

typedef struct MemdedupScanBuffers {
    uint64_t *entries;          /* pagemap entries of one region */
    void *ranges;               /* PAGEMAP_SCAN's output for one region */
    bool *present;              /* residency of each page of one region */
    bool *hash;                 /* ... of them, those to hash */
    void **addrs;               /* move_pages arguments, one per page */
    int *status;                /* move_pages results, one per page */
    int8_t *nodes;              /* one region's nodes before placement */
    MemdedupFp *fps;            /* new fingerprints of one region */
    MemdedupFp *others;         /* ... of its pages in no dup set */
    uint64_t churn;             /* pages changed, appeared or gone so far */
    uint64_t rewritten;         /* ... of them changed, resident both times */
    uint64_t reused;            /* regions whose last count still held */
    bool keep_merged;           /* fingerprints of merged pages stand */
} MemdedupScanBuffers;

/*
 * A merged page keeps its fingerprint (memdedup_scan_region) but in one
 * full pass in MEMDEDUP_REHASH_PASSES, which hashes every page.
 */
#define MEMDEDUP_REHASH_PASSES 4

/*
 * Learn the zero pages' PFNs, when pagemap shows PFNs, and whether its
 * PAGEMAP_SCAN ioctl tells them apart.  Once, at init.
 */
void memdedup_learn_zero_pfns(MemdedupEngine *engine);

/*
 * Try the PAGEMAP_SCAN ioctl once on a page of our own: where the kernel
 * lacks it, engine->pagemap_scan is cleared before any pass.
 */
void memdedup_probe_pagemap_scan(MemdedupEngine *engine);

/* features.c: probe once at start (BQL); the QMP view of the result. */
void memdedup_features_probe(MemdedupEngine *engine);
struct MemdedupKernelFeatures *memdedup_features_query(MemdedupEngine *engine);

/*
 * After a rescan: pages whose fingerprint changed, appeared or went are
 * the pass's churn.  A pass is quiet when its churn is at most this
 * percentage of the resident pages -- with the residency watch on, its
 * rewritten pages alone: pages that came or went are the watch's to see.
 */
#define MEMDEDUP_QUIET_PERCENT 1

/*
 * Something happened that the next pass must not be stretched over (new
 * memory plugged, settings changed): back to the configured interval.
 * Engine lock held.
 */
void memdedup_rescan_hurry_locked(MemdedupEngine *engine);

void memdedup_scan_buffers_init(MemdedupScanBuffers *buf, uint64_t pages);
void memdedup_scan_buffers_free(MemdedupScanBuffers *buf);

/*
 * memdedup_scan_region: hash region @region of @blk, updating its page
 * fingerprints and summary.  Scanner threads only, each region by one
 * thread.  Returns false (nothing read) if the block was removed.
 */
bool memdedup_scan_region(MemdedupEngine *engine, MemdedupBlock *blk,
                          uint64_t region, MemdedupScanBuffers *buf,
                          uint64_t *bytes_hashed);

/*
 * The residency watch's measure: for each of the @n regions of @blk
 * from @region, how many small (host) pages of it map a frame, into
 * @counts, from mincore(2): it walks the page tables alone -- one byte
 * per page, no PFN, no category, no page read or faulted in -- about
 * ten times cheaper than PAGEMAP_SCAN's residency (1 GiB resident in
 * long runs: 0.28 ms against 2.7 ms here).  Unlike hashing, it counts
 * pages that map the zero page, so it is only ever compared with
 * itself (MemdedupRegion.mapped).  False if the block went.  Scanner
 * threads.
 */
bool memdedup_regions_mapped(MemdedupBlock *blk, uint64_t region, uint64_t n,
                             uint32_t *counts);

/*
 * board.c: the cross-VM fingerprint board (see there).
 * MemdedupBoardConfig is the memdedup object's board* properties
 * (object.c); memdedup_board_complete opens the board (NULL: none
 * configured, or an error in @errp: a missing or short key; a board
 * directory it cannot use only leaves the VM working alone, and says
 * why); memdedup_board_config_clear drops the configuration's strings.
 * The board itself is the scanner thread's, except for
 * memdedup_board_info and memdedup_board_release (any thread) and
 * memdedup_board_close (its owner, once no thread uses it).
 */
#define MEMDEDUP_BOARD_SIZE_DEFAULT     (64 * MiB)
#define MEMDEDUP_BOARD_SIZE_MIN         (64 * KiB)
#define MEMDEDUP_BOARD_SIZE_MAX         (1 * GiB)
#define MEMDEDUP_BOARD_SLOTS_DEFAULT    16
#define MEMDEDUP_BOARD_SLOTS_MIN        2
#define MEMDEDUP_BOARD_SLOTS_MAX        1024
#define MEMDEDUP_BOARD_TIMEOUT_DEFAULT  5000        /* ms */
#define MEMDEDUP_BOARD_TIMEOUT_MIN      100         /* ms */
#define MEMDEDUP_BOARD_TIMEOUT_MAX      600000      /* ms */
#define MEMDEDUP_BOARD_KEY_MIN          16          /* bytes */
/*
 * How often the scanner thread serves the board (ms): a peer's new
 * filter is read this soon; what any message may trigger is rate-limited
 * in board-link.c, whatever this is.
 */
#define MEMDEDUP_BOARD_TICK_MS          200

typedef struct MemdedupBoardConfig {
    char *path;                 /* "board": a directory */
    char *key_id;               /* "board-key": a secret object's id */
    uint64_t size;              /* "board-size": our filter's most bytes */
    uint32_t slots;             /* "board-slots": VMs we exchange with + 1 */
    uint32_t timeout;           /* "board-timeout": ms to prove the key */
    MemdedupBoard *board;       /* open, once complete */
} MemdedupBoardConfig;

MemdedupBoard *memdedup_board_complete(MemdedupBoardConfig *cfg,
                                       Error **errp);
void memdedup_board_config_clear(MemdedupBoardConfig *cfg);
void memdedup_board_close(MemdedupBoard *b);
/* Our socket's name goes, and the board is served no more.  Any thread. */
void memdedup_board_release(MemdedupBoard *b);
uint64_t memdedup_board_seed(MemdedupBoard *b);
/*
 * Serve the board: join (again), accept and check peers, take their
 * new filters (rate-limited), deliver ours.  Every
 * MEMDEDUP_BOARD_TICK_MS, between passes and during a long pass's
 * hashing, and before a pass counts.
 */
void memdedup_board_tick(MemdedupBoard *b);
/*
 * Publish @pages fingerprints: begin, publish each, end (the filter is
 * sealed then, and the next memdedup_board_tick sends it to every
 * peer).  @pages 0 publishes that we publish nothing.
 * memdedup_board_publish_prefetch: start loading the line that
 * publishing @fp writes, a few fingerprints ahead.
 */
bool memdedup_board_publish_begin(MemdedupBoard *b, uint64_t pages);
void memdedup_board_publish(MemdedupBoard *b, uint32_t fp);
void memdedup_board_publish_prefetch(MemdedupBoard *b, uint32_t fp);
void memdedup_board_publish_end(MemdedupBoard *b);
/* A publication of ours completed (and is what peers get). */
bool memdedup_board_published(MemdedupBoard *b);
/*
 * Look up: begin (number of peers with a filter), then lookups until
 * the next memdedup_board_tick.  The peers' filters are sealed and
 * replaced only by the tick, so a view is always whole and never
 * changes under the lookups.  memdedup_board_prefetch: start loading
 * what a lookup of @fp reads (one cache line per peer), a few lookups
 * ahead.
 */
uint32_t memdedup_board_lookup_begin(MemdedupBoard *b);
bool memdedup_board_lookup(MemdedupBoard *b, uint32_t fp);
void memdedup_board_prefetch(MemdedupBoard *b, uint32_t fp);
/* Changes whenever a peer's filter does (new, replaced, gone). */
uint64_t memdedup_board_version(MemdedupBoard *b);
MemdedupBoardInfo *memdedup_board_info(MemdedupBoard *b);
/* The highest fingerprint a filter of @filter_bits bits publishes. */
uint32_t memdedup_board_threshold(uint64_t pages, uint64_t filter_bits);

/* ------------------------------------------------------------------ */
/* registry.c: the engine singleton and its blocks (the bottom floor)  */
/* ------------------------------------------------------------------ */

extern MemdedupEngine memdedup_engine;

/* Initialize the singleton's lock, list and defaults, once.  Any thread. */
void memdedup_registry_init(void);

/*
 * memdedup_registry_add: list @size bytes of guest RAM at @host, owned
 * by the backend @id, with a reference for the caller (the backend).
 * BQL held.  Fails (with @errp set) when @params needs KSM and the host
 * has none, or the metadata cannot be allocated.
 */
MemdedupBlock *memdedup_registry_add(const char *id, void *host, uint64_t size,
                                     const MemdedupParams *params,
                                     Error **errp);

/* References to a block: the last one frees it.  Any thread. */
void memdedup_block_ref(MemdedupBlock *blk);

/*
 * Bytes @blk keeps between passes: fingerprints, nodes, region
 * summaries, bitmaps and statistics (its part of metadata-bytes).
 */
uint64_t memdedup_block_metadata_bytes(const MemdedupBlock *blk);

/* The fingerprint of page @p of @blk, and setting it (scanner-owned). */
static inline MemdedupFp memdedup_block_fp(const MemdedupBlock *blk,
                                           uint64_t p)
{
    return memdedup_fp_join(blk->fps[p], blk->fp_hi[p]);
}

static inline void memdedup_block_set_fp(MemdedupBlock *blk, uint64_t p,
                                         MemdedupFp fp)
{
    blk->fps[p] = memdedup_fp_lo(fp);
    blk->fp_hi[p] = memdedup_fp_hi(fp);
}
void memdedup_block_unref(MemdedupBlock *blk);

/*
 * Would unregistering [@start, @end) of @blk fit in MemAvailable?  Sets
 * *@merged to the merged bytes there (the whole range when unknown);
 * false with @errp set if not.  @smaps is read on first use and kept
 * for the caller's later calls.  Any thread, lock not held.
 */
bool memdedup_unmerge_check(MemdedupBlock *blk, uint64_t start, uint64_t end,
                            bool force, MemdedupSmapsView *smaps,
                            uint64_t *merged, Error **errp);

/*
 * memdedup_block_set_hints: the migration source registered the regions
 * set in @bits (@nr_regions bits, LSB first) of its backend @id, of
 * @size bytes in regions of @region_size: queue them for the scanner.
 * Ignored, with a warning, when no block has that id or its geometry
 * differs.  Any thread; takes the engine lock.
 */
bool memdedup_block_set_hints(MemdedupEngine *engine, const char *id,
                              uint64_t size, uint64_t region_size,
                              uint64_t nr_regions, const uint8_t *bits);

/* ------------------------------------------------------------------ */
/* A pass (pass.c), as summary.c, advise.c and kernel-view.c see it    */
/* ------------------------------------------------------------------ */

/* One block of a pass, with the parameters the pass uses for it. */
typedef struct MemdedupPassBlock {
    MemdedupBlock *blk;
    MemdedupParams params;
    bool apply_only;            /* params changed; no need to rescan */
    bool hinted;                /* registered from hints, not yet scanned */
    bool indexed;               /* its pages are in the dup set rebuilt */
    unsigned long *discarded;   /* regions to forget pages of, or NULL */
    uint64_t first_item;        /* index of its region 0 in the item space */
    bool full;                  /* a full pass hashes all of it */
    const unsigned long *only;  /* a partial pass hashes only these */
} MemdedupPassBlock;

typedef struct MemdedupPass {
    MemdedupEngine *engine;
    MemdedupPassBlock *blocks;
    size_t nr_blocks;
    uint64_t nr_items;          /* regions to scan, over all blocks */
    uint64_t next_item;         /* atomic: next region to take */
    uint64_t bytes_hashed;      /* atomic */
    uint64_t churn;             /* atomic: see MemdedupScanBuffers */
    uint64_t rewritten;         /* atomic: see MemdedupScanBuffers */
    uint64_t reused;            /* atomic: see MemdedupScanBuffers */
    uint64_t scan_rate;         /* bytes per second */
    int64_t start_ns;           /* QEMU_CLOCK_REALTIME */
    int64_t next_board_tick;    /* ms (realtime): serve the board then */
    uint64_t cpu_time;          /* atomic, ns */
    uint64_t max_region_pages;
    MemdedupBoard *board;       /* the cross-VM board, or NULL */
    uint64_t blocks_gen;        /* the engine's when the pass began */
    uint32_t nr_threads;        /* scanner threads hashing */
    bool rescan;                /* hash (else apply only) */
    bool partial;               /* ... only the watched regions (watch.c) */
    bool inputs_changed;        /* pages discarded, or parameters changed */
    bool summarize;             /* count the regions again */
    bool fps_changed;           /* fingerprints changed: publish them */
    bool board_eval;            /* peers published: judge cross-VM again */
    bool keep_merged;           /* see MemdedupScanBuffers */
    bool unregistered;          /* unmerged: ksm_stat lags behind */
    MemdedupSummaryStats *summaries;    /* one per block */
    uint64_t registered;        /* bytes, over all blocks */
    uint64_t metadata;          /* bytes the engine keeps between passes */
} MemdedupPass;

/* A full pass: one that hashes every region (not partial, not apply). */
static inline bool memdedup_pass_full(const MemdedupPass *pass)
{
    return pass->rescan && !pass->partial;
}

/* ------------------------------------------------------------------ */
/* advise.c: registration; scanner thread only                         */
/* ------------------------------------------------------------------ */

/* Register region @region of @blk at once, if it qualifies. */
void memdedup_register_early(MemdedupBlock *blk, const MemdedupParams *params,
                             uint64_t region);

/*
 * Bring the registration of @blk in line with @params and the region
 * summaries; @collapse: stable unique regions may get huge pages back.
 * Unmerges refused by admission control are added to *@refusals.  True
 * if some memory was unregistered (and so unmerged).
 */
bool memdedup_apply_policy(MemdedupBlock *blk, const MemdedupParams *params,
                           bool collapse, uint64_t *refusals);

/* May this pass give stable unique regions huge pages back? */
bool memdedup_collapse_allowed(MemdedupEngine *engine,
                               const MemdedupPass *pass);

/* Register what migration hints queued (memdedup_block_set_hints). */
void memdedup_apply_pending_hints(MemdedupEngine *engine);

/*
 * Publish @blk's registration (MemdedupBlock.registration, .registered),
 * adding @refusals and @hinted regions; returns the registered bytes.
 * Takes the engine lock.
 */
uint64_t memdedup_publish_registration(MemdedupEngine *engine,
                                       MemdedupBlock *blk, uint64_t refusals,
                                       uint64_t hinted);

/* ------------------------------------------------------------------ */
/* cow.c: copy-on-write churn; scanner thread only                     */
/* ------------------------------------------------------------------ */

/*
 * After a rescan's hashing, before its policy is applied: count the
 * merged pages of @pb's registered regions that writes broke since the
 * last pass, take churning regions off KSM (MemdedupRegion.cow_off) and
 * let quiet ones back, and publish MemdedupBlock.cow.
 */
void memdedup_cow_pass(MemdedupEngine *engine, MemdedupPassBlock *pb);

/* Regions [@first, @end) of @blk were unregistered: nothing shared. */
void memdedup_cow_forget(MemdedupBlock *blk, uint64_t first, uint64_t end);

/*
 * Read the pagemap entries of region @i of @blk (@pages of them) into
 * @entries; false if the block went or pagemap could not be read.
 */
bool memdedup_cow_read(MemdedupEngine *engine, MemdedupBlock *blk,
                       uint64_t i, uint64_t pages, uint64_t *entries);

/* ------------------------------------------------------------------ */
/* rearm.c: pairs KSM's smart scan keeps apart; scanner thread only    */
/* ------------------------------------------------------------------ */

/*
 * Once a second between passes: judge the registered regions KSM had
 * time to merge, take off KSM those whose duplicates did not merge and
 * register them again after ksmd passed them (memdedup_rearm_due).
 * Lock not held.
 */
void memdedup_rearm_tick(MemdedupEngine *engine);

/*
 * Take region @i of @blk off KSM (@on false: if admission control lets
 * it unmerge, and within the block's VMA limit) or register it again.
 * True if done.  Scanner thread (advise.c).
 */
bool memdedup_rearm_advise(MemdedupBlock *blk, const MemdedupParams *params,
                           uint64_t i, bool on);

/* ------------------------------------------------------------------ */
/* summary.c: the index and the region counts; scanner thread only     */
/* ------------------------------------------------------------------ */

/*
 * Rebuild the dup set (and the per-node bits) from every fingerprint;
 * false if there was no memory for it: the last dup set stands.
 * memdedup_pass_index_failed: count and say (once) that @what, @bytes
 * of it, could not be had; the next pass rebuilds everything.
 */
bool memdedup_pass_index(MemdedupPass *pass);
void memdedup_pass_index_failed(MemdedupPass *pass, const char *what,
                                uint64_t bytes);

/* Would indexing and counting again give what the last count gave? */
bool memdedup_pass_unchanged(MemdedupPass *pass, bool board_eval);

/*
 * Count @pb's regions against the dup set and @board into @st (without
 * @recount: keep the regions' counts); @first_seen marks the dup set
 * slots seen, for the estimated saving.
 */
void memdedup_pass_summarize(MemdedupEngine *engine, MemdedupPassBlock *pb,
                             MemdedupBoard *board, unsigned long *first_seen,
                             bool recount, MemdedupSummaryStats *st);

/* Drop discarded pages (virtio-mem) from the fingerprints and counts. */
void memdedup_pass_forget_discarded(MemdedupPass *pass);

/* ------------------------------------------------------------------ */
/* kernel-view.c: what the kernel merged                               */
/* ------------------------------------------------------------------ */

void memdedup_kernel_view_init(MemdedupKernelView *view);

/*
 * Refresh every block's kernel-merged pages (from ksm_stat if that is
 * enough and @force is false, else from smaps).  Scanner thread.
 */
void memdedup_refresh_kernel_view(MemdedupEngine *engine, bool force);

/*
 * Count, through kpageflags, the KSM pages of the registered regions
 * (@exact) and of those registered for cross-VM duplicates only
 * (@cross), and publish them.  Scanner thread, lock not held.
 */
void memdedup_kernel_view_count_pass(MemdedupEngine *engine,
                                     MemdedupPass *pass, bool exact,
                                     bool cross);

/* A query is reading the view: have a stale one read.  Lock held. */
void memdedup_kernel_view_note_query(MemdedupEngine *engine);

/* ------------------------------------------------------------------ */
/* pass.c, engine.c                                                    */
/* ------------------------------------------------------------------ */

/* The scanner thread (thread.c); started by memdedup_block_add. */
void *memdedup_thread(void *opaque);

/*
 * One pass over every block (pass.c): hash them all when @rescan, else
 * apply what changed.  The scanner thread's, or the unit test's.
 */
void memdedup_run_pass(MemdedupEngine *engine, bool rescan);

/*
 * A pass that hashes only the regions the residency watch marked
 * (MemdedupBlock.watched), then counts and registers as a full one.
 */
void memdedup_run_partial_pass(MemdedupEngine *engine);

/* ------------------------------------------------------------------ */
/* watch.c: guest memory that filled or emptied between passes         */
/* ------------------------------------------------------------------ */

/*
 * The watch looks every MEMDEDUP_WATCH_INTERVAL_MS, or less often so as
 * to take at most 1/MEMDEDUP_WATCH_CPU_DIV of a core.
 * A region is marked when its resident pages moved by at least
 * 1/MEMDEDUP_WATCH_REGION_DIV of its pages since it was hashed; a
 * partial pass runs once the marked regions hold at least
 * 1/MEMDEDUP_WATCH_PASS_DIV of the memory watched, or
 * MEMDEDUP_WATCH_PASS_BYTES.
 */
#define MEMDEDUP_WATCH_INTERVAL_MS 1000
#define MEMDEDUP_WATCH_CPU_DIV     100
#define MEMDEDUP_WATCH_REGION_DIV  8
#define MEMDEDUP_WATCH_PASS_DIV    64
#define MEMDEDUP_WATCH_PASS_BYTES  (64 * MiB)

/*
 * Look at every block's residency (no content read) and mark the
 * regions that changed; true if a partial pass is worth running.
 * *@cpu_ns: the CPU time it took.  Scanner thread, lock not held.
 */
bool memdedup_watch(MemdedupEngine *engine, uint64_t *cpu_ns);

/*
 * Open and probe the kernel files, hook migration: once, before the
 * first block or with the memdedup object (engine.c).  BQL held.
 */
void memdedup_engine_start(void);


/*
 * memdedup_engine_pause / memdedup_engine_resume: stop and restart
 * scanning and registration, saying why (reported over QMP and in a
 * MEMDEDUP_STATE_CHANGED event).  A running pass stops at the next
 * region.  Any thread; takes the engine lock.  @incoming: stay paused
 * until the incoming migration completes.
 */
void memdedup_engine_pause(MemdedupEngine *engine, const char *reason,
                           bool incoming);
void memdedup_engine_resume(MemdedupEngine *engine, const char *reason);

/* migration.c: hook the engine into migration.  BQL held, once. */
void memdedup_migration_init(MemdedupEngine *engine);

/*
 * discard.c: follow RamDiscardManagers (virtio-mem) of managed memory.
 * memdedup_discard_init: start watching the system address space, once;
 * BQL held.
 */
void memdedup_discard_init(void);

/*
 * Engine side of discard.c, BQL held:
 * memdedup_block_find_host: the live block whose RAM starts at @host,
 * with a reference for the caller (dropped with memdedup_block_put), or
 * NULL.
 * memdedup_block_track_plugged: from now on scan only plugged pages
 * (none until memdedup_block_plug says otherwise).
 * memdedup_block_plug: pages [@first, @first + @count) were populated
 * (@plugged) or discarded; discarded ones leave the index right away.
 */
MemdedupBlock *memdedup_block_find_host(void *host);
void memdedup_block_put(MemdedupBlock *blk);
void memdedup_block_track_plugged(MemdedupBlock *blk);
void memdedup_block_plug(MemdedupBlock *blk, uint64_t first, uint64_t count,
                         bool plugged);

/*
 * adopt.c: memory-backend-ram objects put under the engine by the
 * memdedup object's "adopt" (@ids) and "adopt-ram" (@all_ram)
 * properties.  BQL held.
 *
 * memdedup_adopt_complete: the owning object is complete: adopt now if
 * the machine is ready, else at machine-init-done (exiting QEMU with an
 * error if a named backend is missing or unsuitable then).  *@adopt is
 * the adoption, to be freed with memdedup_adopt_free (NULL if nothing is
 * asked for); false with @errp set on error.
 * memdedup_adopt_free: release the adopted backends' handles.
 */
typedef struct MemdedupAdopt MemdedupAdopt;
bool memdedup_adopt_complete(strList *ids, bool all_ram,
                             MemdedupAdopt **adopt, Error **errp);
void memdedup_adopt_free(MemdedupAdopt *adopt);

/*
 * numa-engine.c: host NUMA placement and per-node trees in the engine.
 *
 * memdedup_numa_pass_begin: re-read merge_across_nodes and the host's
 * nodes; true if the partitioning changed (the index must be rebuilt and
 * every block's policy applied again).  Scanner thread, lock not held.
 * memdedup_numa_scan_region: learn the host node of the present pages of
 * region @region (whose pages start at @base); inside the scanner's RCU
 * read-side section that saw @blk alive.  True if every page of the
 * region has the node (or unknown node) it had before.
 * memdedup_numa_find: the slot of page @page of @blk in the index if it
 * is a duplicate KSM can merge under the host's partitioning, else -1
 * (see memdedup_numa_classify); the page is also counted into @stats
 * unless that is NULL, so that one lookup serves both.  Scanner thread,
 * after the index.  memdedup_numa_slots() bounds the slots.
 * memdedup_numa_block_publish: add the kernel's merged pages per node
 * (when QEMU may read kpageflags) to @stats, @blk's per-node statistics
 * from the pass, and publish them; takes @stats.  Scanner thread, lock
 * not held.
 * memdedup_numa_block_stats: a copy of @blk's published per-node
 * statistics without the kernel's merged pages, for a pass that keeps
 * them (memdedup_numa_block_publish counts those again), or NULL if it
 * has none.  Scanner thread.
 * memdedup_numa_watch: between passes: request a pass when
 * merge_across_nodes changed.  Scanner thread, lock not held.
 * memdedup_numa_query_backend / memdedup_numa_query: fill the NUMA parts
 * of a query-memdedup reply; BQL held (they look up the backends and
 * the machine's NUMA nodes), engine lock held / not held.
 */
bool memdedup_numa_pass_begin(MemdedupEngine *engine);
bool memdedup_numa_scan_region(MemdedupBlock *blk, uint64_t region,
                               uint8_t *base, MemdedupScanBuffers *buf);
ssize_t memdedup_numa_find(MemdedupEngine *engine, MemdedupBlock *blk,
                           uint64_t page, MemdedupNumaStats *stats);
void memdedup_numa_block_publish(MemdedupEngine *engine, MemdedupBlock *blk,
                                 MemdedupNumaStats *stats);
MemdedupNumaStats *memdedup_numa_block_stats(MemdedupBlock *blk);
void memdedup_numa_watch(MemdedupEngine *engine);
void memdedup_numa_query_backend(MemdedupBlock *blk, MemdedupBackendInfo *bi);
void memdedup_numa_query(MemdedupEngine *engine, MemdedupInfo *info);

#endif
