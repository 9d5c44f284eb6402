/*
 * memdedup: the pure core -- fingerprints, the duplicate index, region
 * policy, kernel-file parsers, NUMA placement
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * Free of softmmu state, so that the unit test and the fuzz targets link
 * it alone (index.c, index-avx2.c, policy.c, kernel.c, numa.c, bloom.c).
 * The engine's hashes are hints: the kernel compares full pages under
 * write protection before it merges, so a collision or a torn read of a
 * page the guest is writing costs at most a wasted KSM scan.
 */

#ifndef HW_MEM_MEMDEDUP_CORE_H
#define HW_MEM_MEMDEDUP_CORE_H

#include "sysemu/memdedup.h"

/* ------------------------------------------------------------------ */
/* Page fingerprints                                                   */
/* ------------------------------------------------------------------ */

/*
 * A page's fingerprint has MEMDEDUP_FP_BITS bits.  The engine keeps it
 * between passes in two arrays per block, the low 32 bits (.fps) and the
 * high 8 (.fp_hi): 5 bytes per page, within the 8 bytes per page of
 * metadata the design allows (MEMDEDUP_METADATA_PER_PAGE).
 *
 * Why 40 bits: a unique page looks duplicated when any of the other n
 * pages has its fingerprint, which happens to about n / 2^bits of them.
 * With 32 bits that is 6 % of the unique pages of a 1 TiB guest (2^28
 * pages) and 25 % at 4 TiB, enough to make `targeted` register unique
 * memory; with 40 bits it is 0.1 % at 4 TiB.
 *
 * Two values are reserved; both have zero high bits.
 */
typedef uint64_t MemdedupFp;

#define MEMDEDUP_FP_BITS   40
#define MEMDEDUP_FP_ABSENT 0u   /* not resident, never scanned or swapped */
#define MEMDEDUP_FP_ZERO   1u   /* resident and all zero */

static inline MemdedupFp memdedup_fp_join(uint32_t lo, uint8_t hi)
{
    return (uint64_t)hi << 32 | lo;
}

static inline uint32_t memdedup_fp_lo(MemdedupFp fp)
{
    return (uint32_t)fp;
}

static inline uint8_t memdedup_fp_hi(MemdedupFp fp)
{
    return (uint8_t)(fp >> 32);
}

/*
 * memdedup_page_fingerprint: fingerprint one page of @size bytes.
 * @seed is the per-process random seed, so a guest cannot craft
 * colliding pages.  Never returns a reserved value (its low 32 bits are
 * never one); a zero page is not special-cased here (see
 * memdedup_page_classify).
 * Thread-safe; reads @page once and never writes it.
 */
MemdedupFp memdedup_page_fingerprint(const void *page, size_t size,
                                     uint64_t seed);

/*
 * memdedup_page_classify: MEMDEDUP_FP_ZERO for a zero page, otherwise the
 * page's fingerprint.
 */
MemdedupFp memdedup_page_classify(const void *page, size_t size,
                                  uint64_t seed);

/*
 * memdedup_hash_impl: the instruction set the page hash runs on ("avx2",
 * "sse2" or "scalar"), chosen once from the CPU.
 */
const char *memdedup_hash_impl(void);

/*
 * XXH3 derives a 192-byte secret from the seed for inputs over 240 bytes;
 * deriving it once per seed instead of once per page is worth 6 %.  With
 * that secret, XXH3_64bits_withSecret() equals XXH3_64bits_withSeed().
 */
#define MEMDEDUP_XXH3_SECRET_SIZE 192
#define MEMDEDUP_XXH3_MIDSIZE_MAX 240

#ifdef CONFIG_AVX2_OPT
/*
 * XXH3-64 of @data with @seed, compiled for AVX2 (index-avx2.c); @secret
 * is the one derived from @seed.  Only call it if the CPU has AVX2.
 */
uint64_t memdedup_xxh3_avx2(const void *data, size_t len, uint64_t seed,
                            const void *secret);
#endif

/* ------------------------------------------------------------------ */
/* Duplicate index                                                     */
/* ------------------------------------------------------------------ */

/*
 * The most metadata the engine keeps per guest page, in bytes: the
 * fingerprints, the host nodes, the region summaries and bitmaps, the
 * dup set and the per-node index together (metadata-bytes).  The dup set
 * gets what the rest leaves (see memdedup_dupset_build), and never less
 * than MEMDEDUP_INDEX_MIN_BYTES: the fixed part of a small backend (its
 * statistics, some KiB) would leave it nothing, and 64 KiB is nothing
 * next to a guest.
 */
#define MEMDEDUP_METADATA_PER_PAGE 8
#define MEMDEDUP_INDEX_MIN_BYTES (64 * KiB)

/*
 * The set of fingerprints that occurred more than once in the last pass,
 * over all managed blocks, rebuilt at the end of every pass.  Between
 * passes it lets a freshly hashed region be judged at once (early
 * registration).
 *
 * Fingerprints are uniform (hashes): the set is sorted and indexed by
 * the top @bucket_bits bits, one bucket per four to eight entries, so
 * that a lookup reads one or two cache lines instead of ~log2(len)
 * scattered ones.  @bucket_bits is at least 8, so a bucket fixes a
 * fingerprint's high 8 bits and an entry needs only the low 32: 4 bytes
 * per distinct duplicated fingerprint, plus 0.5 to 1 for the buckets.
 */
typedef struct MemdedupDupSet {
    uint32_t *fps;              /* low bits of the duplicated fingerprints */
    size_t len;                 /* entries in fps */
    uint32_t *bucket;           /* 2^bucket_bits + 1 starts in fps */
    unsigned bucket_bits;
    uint64_t dropped;           /* duplicated fingerprints left out */
} MemdedupDupSet;

/* The fingerprints of one block, as the index builders read them. */
typedef struct MemdedupFpArray {
    const uint32_t *lo;         /* low bits, MemdedupBlock.fps */
    const uint8_t *hi;          /* high bits, MemdedupBlock.fp_hi */
    const int8_t *nodes;        /* host node of each page; NULL: unknown */
    uint64_t nr_pages;
} MemdedupFpArray;

static inline MemdedupFp memdedup_fp_at(const MemdedupFpArray *a,
                                        uint64_t p)
{
    return memdedup_fp_join(a->lo[p], a->hi[p]);
}

/* Bytes a dup set takes. */
size_t memdedup_dupset_bytes(const MemdedupDupSet *set);

/*
 * Sort @n 32-bit values in place (LSD radix sort, O(n); insertion sort
 * below 64); @tmp holds @n.
 */
void memdedup_fp_sort(uint32_t *fps, uint32_t *tmp, size_t n);

/*
 * How many of the @n fingerprints have their value more than once
 * (every copy counts: two equal ones make 2)?  Sorts @fps.
 */
size_t memdedup_count_repeats(MemdedupFp *fps, size_t n);

/*
 * memdedup_dupset_build: replace @set with the fingerprints that occur at
 * least twice in the @nr arrays @arrays (reserved values are skipped).
 * The set takes at most @budget bytes, counting @extra_bits more per
 * entry for what its user keeps beside it (the per-node index): when the
 * duplicated fingerprints need more, those with the fewest copies are
 * left out (@set->dropped counts them) -- the set only guides
 * registration, so a left-out duplicate costs saving, never correctness.
 * The transient memory is about 4 bytes per page.  If it cannot be had,
 * @set is left as it was and false is returned.
 */
bool memdedup_dupset_build(MemdedupDupSet *set, const MemdedupFpArray *arrays,
                           size_t nr, uint64_t budget, unsigned extra_bits);

/* Bytes the transient index of @pages fingerprints needs at least. */
uint64_t memdedup_dupset_transient_bytes(uint64_t pages);

/* Index of @fp in @set, or -1 if it is not a duplicate. */
ssize_t memdedup_dupset_find(const MemdedupDupSet *set, MemdedupFp fp);

/* How many pages ahead loops over fingerprints prefetch their lookups. */
#define MEMDEDUP_LOOKAHEAD 16

static inline unsigned memdedup_dupset_shift(const MemdedupDupSet *set)
{
    return MEMDEDUP_FP_BITS - set->bucket_bits;
}

/*
 * memdedup_dupset_prefetch: in a loop that looks up pages [0, @n) of
 * @lo/@hi in @set in order, call at @i to start loading what the lookups
 * ahead will read: the bucket of the page 2 * MEMDEDUP_LOOKAHEAD ahead,
 * and the entries of the page MEMDEDUP_LOOKAHEAD ahead (its bucket was
 * loaded meanwhile), so that neither load of a lookup waits for memory.
 * Any value is fine: a prefetch changes nothing.  Always inlined: GCC
 * judges a function that only prefetches to have no effect, and drops
 * calls to it.
 */
static inline QEMU_ALWAYS_INLINE
void memdedup_dupset_prefetch(const MemdedupDupSet *set, const uint32_t *lo,
                              const uint8_t *hi, size_t i, size_t n)
{
    unsigned shift = memdedup_dupset_shift(set);
    size_t j;

    if (!set->bucket) {
        return;
    }
    j = i + 2 * MEMDEDUP_LOOKAHEAD;
    if (j < n) {
        __builtin_prefetch(&set->bucket[memdedup_fp_join(lo[j], hi[j]) >>
                                        shift]);
    }
    j = i + MEMDEDUP_LOOKAHEAD;
    if (j < n) {
        __builtin_prefetch(&set->fps[set->bucket[memdedup_fp_join(lo[j],
                                                                  hi[j]) >>
                                                 shift]]);
    }
}

void memdedup_dupset_clear(MemdedupDupSet *set);

/*
 * The cross-VM board's Bloom filter (bloom.c), blocked: the
 * MEMDEDUP_BLOOM_PROBES bits of a fingerprint lie in one 64-byte line of
 * the filter of @bits bits (a multiple of 512, or a power of two from 64
 * to 512).  memdedup_bloom_line: the line holding @fp's bits, to
 * prefetch.  memdedup_bloom_plausible: whether @pages fingerprints can
 * have set @filter's bits, as many and where they are (a peer's filter
 * is checked with it once, before any lookup; @bits a multiple of 512).
 */
#define MEMDEDUP_BLOOM_PROBES 8

void memdedup_bloom_add(uint8_t *filter, uint64_t bits, uint32_t fp);
/*
 * A fingerprint's place in any filter, computed once for a lookup in
 * several (the board's peers): memdedup_bloom_test_key and
 * memdedup_bloom_line_key are memdedup_bloom_test and _line with it.
 */
typedef struct MemdedupBloomKey {
    uint32_t line;              /* scaled to a filter's number of lines */
    uint64_t probes;            /* 6 bits per probe: the bit in its word */
} MemdedupBloomKey;

MemdedupBloomKey memdedup_bloom_key(uint32_t fp);
bool memdedup_bloom_test_key(const uint8_t *filter, uint64_t bits,
                             MemdedupBloomKey key);
const uint8_t *memdedup_bloom_line_key(const uint8_t *filter, uint64_t bits,
                                       MemdedupBloomKey key);
bool memdedup_bloom_test(const uint8_t *filter, uint64_t bits, uint32_t fp);
const uint8_t *memdedup_bloom_line(const uint8_t *filter, uint64_t bits,
                                   uint32_t fp);
bool memdedup_bloom_plausible(const uint8_t *filter, uint64_t bits,
                              uint64_t pages);

/* ------------------------------------------------------------------ */
/* Regions and policy                                                  */
/* ------------------------------------------------------------------ */

/* What one region held in the last pass; counts are in pages. */
typedef struct MemdedupRegion {
    uint32_t resident;          /* pages present in host memory */
    uint32_t zero;              /* resident zero pages */
    uint32_t duplicate;         /* resident non-zero pages in the dup set */
    uint32_t unique;            /* resident non-zero pages seen once */
    uint32_t volatile_pages;    /* pages whose content changed this pass */
    uint32_t cross_vm;          /* unique here, held by another VM (board) */
    uint32_t mapped;            /* small pages mapping a frame when it */
                                /* was last hashed (the residency watch) */
    uint8_t stable_passes;      /* consecutive hashings with no change */
    bool seen_resident;         /* had resident pages in some pass */
    bool registered;            /* currently madvised MERGEABLE */
    bool huge;                  /* handed back to THP (MADV_HUGEPAGE) */
    /* Copy-on-write churn (memdedup_cow_judge). */
    bool cow_off;               /* taken off KSM for its churn */
    uint8_t cow_level;          /* times off in a row, 0: never churned */
    uint32_t shared;            /* pages that shared their frame at the */
                                /* last walk (memdedup_cow_walk) */
    int64_t cow_until;          /* ms: off at least until then; once */
                                /* registered again, when that was */
    /* Pairs ksmd's smart scan keeps apart (memdedup_rearm_due). */
    uint8_t rearm;              /* MemdedupRearmState */
    uint8_t rearm_tries;        /* times off since its counts last grew */
    uint32_t rearm_expect;      /* duplicate + cross_vm when last judged */
    uint64_t rearm_scan;        /* ksmd's full_scans at its last step */
} MemdedupRegion;

/*
 * Set a region's page counts; the rest of its resident pages are
 * unique.  The only way the engine sets them, so that resident = zero +
 * duplicate + cross_vm + unique always holds.
 */
void memdedup_region_set_counts(MemdedupRegion *r, uint32_t resident,
                                uint32_t zero, uint32_t duplicate,
                                uint32_t cross_vm);

/* A region is "unique" enough for THP when this share is unique, percent. */
#define MEMDEDUP_THP_UNIQUE_PERCENT  95
/* ... and unchanged for this many full passes. */
#define MEMDEDUP_THP_STABLE_PASSES   2
/* ksmd full scans after the first registration before MADV_COLLAPSE. */
#define MEMDEDUP_COLLAPSE_AFTER_SCANS 3
/*
 * The VMAs (splits of guest RAM) memdedup's advice may make over the
 * whole process, by default: this share of vm.max_map_count; the rest
 * is QEMU's own (threads, libraries, other mappings).
 */
#define MEMDEDUP_VMA_BUDGET_PERCENT  50
/* vm.max_map_count where it cannot be read: the kernel's default. */
#define MEMDEDUP_MAX_MAP_COUNT_DEFAULT 65530
/* Fewest VMAs any backend may use, whatever its share of the budget. */
#define MEMDEDUP_VMA_SHARE_MIN       16

/*
 * Copy-on-write churn.  Between two passes, a registered region's merged
 * pages may stop being merged while they stay resident: the guest wrote
 * them, paid a copy-on-write fault each, and ksmd will spend scans to
 * merge them again.  memdedup_cow_judge decides, after each pass's walk
 * of a registered region: @broken of the @shared pages it had merged at
 * the previous walk were broken.  When that reaches @params' cow_threshold
 * percent (and at least MEMDEDUP_COW_MIN_PAGES), the region is taken off
 * KSM (cow_off) for cow_backoff ms, doubled each time in a row (up to
 * MEMDEDUP_COW_LEVEL_MAX doublings).  A region registered again that
 * goes without churn for as long as its last time off comes down a
 * level.  Returns whether the region goes off now.
 *
 * memdedup_cow_release: a region off KSM may be registered again once it
 * has gone its whole time off without a write: each pass that finds its
 * content changed (volatile_pages) starts the time again.  Clears
 * cow_off and returns true then.
 */
#define MEMDEDUP_COW_MIN_PAGES  8
#define MEMDEDUP_COW_LEVEL_MAX  7
bool memdedup_cow_judge(const MemdedupParams *params, MemdedupRegion *r,
                        uint32_t broken, int64_t now_ms);
bool memdedup_cow_release(const MemdedupParams *params, MemdedupRegion *r,
                          int64_t now_ms);
/* The time off at @level (1 .. MEMDEDUP_COW_LEVEL_MAX), ms. */
int64_t memdedup_cow_backoff_ms(uint32_t backoff, uint8_t level);

/*
 * Pairs that KSM's smart scan keeps apart.  With smart_scan, ksmd visits
 * a page that has not merged less and less often: in each of its first
 * four full scans, then after skipping 1, 2 and 4 scans, and from then on
 * once every 9 scans, counted from the scan in which KSM first saw it.
 * Two unmerged copies of a content merge only in a scan that visits
 * both; copies first seen by ksmd 4, 6 or 7 scans apart (modulo 9)
 * after the older one reached its 9-scan rhythm never are, so they never
 * merge -- about a third of them when one VM registers, or writes, a
 * content long after another.  The pages of one region may be split
 * between two rhythms (ksmd passed the region while it was written), so
 * that part of it merges and the rest never does.  A registered region
 * whose duplicates (duplicate + cross_vm) do not share their frame
 * MEMDEDUP_REARM_SCANS full scans after its registration -- at least
 * MEMDEDUP_REARM_MIN_PAGES of them, and more than one in
 * MEMDEDUP_REARM_UNMERGED_PART -- is taken off KSM until ksmd has passed
 * it twice (so that KSM forgets its pages), then registered again: its
 * pages start afresh, in another rhythm (as do its twin region's, judged
 * in the same full scan when the same pass counted both).  Each try
 * waits twice as long before its judgement; after MEMDEDUP_REARM_TRIES,
 * the region is left as it is until its duplicates double.
 *
 * The caller reads ksmd's full_scans (@scans) and, per registered
 * region: memdedup_rearm_due says what is due -- a judgement, for which
 * the caller counts the region's pages that share their frame and calls
 * memdedup_rearm_judge (true: take it off), or a registration again;
 * memdedup_rearm_set records that the region went off or on.
 */
typedef enum MemdedupRearmState {
    MEMDEDUP_REARM_IDLE,        /* not registered, or not seen so yet */
    MEMDEDUP_REARM_WAIT,        /* registered: judged at rearm_scan + ... */
    MEMDEDUP_REARM_DONE,        /* judged: merging, or given up */
    MEMDEDUP_REARM_OFF,         /* taken off KSM until ksmd passed it */
} MemdedupRearmState;

typedef enum MemdedupRearmAction {
    MEMDEDUP_REARM_NOTHING,
    MEMDEDUP_REARM_JUDGE,       /* count the sharing pages, then judge */
    MEMDEDUP_REARM_REGISTER,    /* register the region again */
} MemdedupRearmAction;

#define MEMDEDUP_REARM_SCANS      24
#define MEMDEDUP_REARM_GAP_SCANS  2
#define MEMDEDUP_REARM_TRIES      4
#define MEMDEDUP_REARM_MIN_PAGES  16
#define MEMDEDUP_REARM_UNMERGED_PART 16

MemdedupRearmAction memdedup_rearm_due(MemdedupRegion *r, uint64_t scans);
bool memdedup_rearm_judge(MemdedupRegion *r, uint32_t sharing);
void memdedup_rearm_set(MemdedupRegion *r, bool off, uint64_t scans);

/* Does @params' policy register memory with KSM at all? */
bool memdedup_policy_registers(MemdedupPolicy policy);
/* Does a backend with @policy publish its fingerprints on the board? */
bool memdedup_policy_publishes(MemdedupPolicy policy);

/* Does the policy want region @r registered? */
bool memdedup_region_wanted(const MemdedupParams *params,
                            const MemdedupRegion *r);

/* Is @r wanted only because of its cross-VM duplicates? */
bool memdedup_region_cross_only(const MemdedupParams *params,
                                const MemdedupRegion *r);

/* Should region @r (not wanted) get transparent huge pages back? */
bool memdedup_region_wants_thp(const MemdedupParams *params,
                               const MemdedupRegion *r,
                               uint64_t pages_per_region);

/*
 * memdedup_coalesce_ranges: given the wanted flags of @n regions, fill the
 * smallest gaps between wanted runs until at most @max_ranges runs
 * remain.  Returns the number of runs.  Filling a gap registers regions
 * that were not wanted; that only costs KSM scanning, never correctness.
 */
size_t memdedup_coalesce_ranges(bool *wanted, size_t n, size_t max_ranges);

/* Number of runs of true in @flags. */
size_t memdedup_count_runs(const bool *flags, size_t n);

/*
 * memdedup_count_vmas: how many VMAs @n regions make whose flags are
 * @registered (MADV_MERGEABLE) and @huge (MADV_HUGEPAGE, or NULL): one
 * per run of regions with equal flags.
 */
size_t memdedup_count_vmas(const bool *registered, const bool *huge,
                           size_t n);

/*
 * memdedup_keep_longest_runs: clear all but the @max_runs longest runs of
 * true in @flags (the first of equally long ones kept).  Returns the
 * number of runs left.
 */
size_t memdedup_keep_longest_runs(bool *flags, size_t n, size_t max_runs);

/*
 * memdedup_read_vma_budget: the VMAs memdedup may make by default,
 * MEMDEDUP_VMA_BUDGET_PERCENT of /proc/sys/vm/max_map_count (or of the
 * kernel's default where it cannot be read).
 */
uint32_t memdedup_read_vma_budget(void);

/* The host's THP size (hpage_pmd_size), or 2 MiB if it cannot be read. */
uint64_t memdedup_read_thp_size(void);

/*
 * memdedup_unmerge_admissible: may @merged_bytes of KSM-merged memory be
 * unmerged (each merged page becomes a private copy again) given the
 * host's @mem_available and @mem_total, in bytes?  A reserve of
 * MEMDEDUP_UNMERGE_RESERVE_PERCENT of @mem_total is kept free.
 */
#define MEMDEDUP_UNMERGE_RESERVE_PERCENT 5
bool memdedup_unmerge_admissible(uint64_t merged_bytes,
                                 uint64_t mem_available, uint64_t mem_total);

/*
 * memdedup_unmerge_admissible_cgroup: may @merged_bytes be unmerged in a
 * memory cgroup with @headroom bytes below its @limit, keeping
 * MEMDEDUP_UNMERGE_RESERVE_PERCENT of @limit free?
 */
bool memdedup_unmerge_admissible_cgroup(uint64_t merged_bytes,
                                        uint64_t headroom, uint64_t limit);

/*
 * memdedup_parse_proc_cgroup: the cgroup v2 path ("0::/path") and the
 * cgroup v1 memory controller's path ("N:...memory...:/path") in
 * /proc/PID/cgroup text @text; each NULL if absent.  Paths are checked
 * (absolute, no "..").
 */
void memdedup_parse_proc_cgroup(const char *text, char **v2_path,
                                char **v1_path);

/*
 * memdedup_read_cgroup_headroom: the least room below a memory limit
 * over QEMU's memory cgroup and its ancestors, in cgroup v2 (memory.max
 * - memory.current) and v1 (memory.limit_in_bytes -
 * memory.usage_in_bytes), whichever the host mounts: @headroom, the
 * @limit of that cgroup and its directory @where (to free).  False if no
 * limit applies, or none can be read.
 */
bool memdedup_read_cgroup_headroom(uint64_t *headroom, uint64_t *limit,
                                   char **where);

/* ------------------------------------------------------------------ */
/* Kernel views (parsers take text so that tests can feed them)        */
/* ------------------------------------------------------------------ */

/* /proc/self/ksm_stat; a field is -1 when absent. */
typedef struct MemdedupKsmStat {
    int64_t rmap_items;
    int64_t zero_pages;
    int64_t merging_pages;
    int64_t process_profit;     /* bytes, may be negative */
    bool has_process_profit;
} MemdedupKsmStat;

bool memdedup_parse_ksm_stat(const char *text, MemdedupKsmStat *stat);
/*
 * /proc/self/ksm_stat; where it lacks ksm_merging_pages (Linux 6.1),
 * merging_pages comes from /proc/self/ksm_merging_pages.
 */
bool memdedup_read_ksm_stat(MemdedupKsmStat *stat);

/* A kernel file's field names are at most this long; at most this many. */
#define MEMDEDUP_STAT_FIELD_LEN     64
#define MEMDEDUP_STAT_FIELDS_MAX    32

/*
 * The names of the "name value" (or "name: value") lines of a kernel
 * file such as /proc/self/ksm_stat: lower case, digits and '_', at most
 * MEMDEDUP_STAT_FIELD_LEN long, followed by a value; in order, at most
 * MEMDEDUP_STAT_FIELDS_MAX.  Never NULL.
 */
GStrv memdedup_parse_stat_fields(const char *text);

/*
 * The selected word of a sysfs choice file ("always [madvise] never"):
 * a newly allocated string, or NULL when none is selected or the word
 * is not one (alphanumerics, '-' and '_', at most 32).
 */
char *memdedup_parse_selected(const char *text);

/*
 * False only when /proc/self/ksm_stat says that this process maps no page
 * KSM merged, nor KSM's zero page: then every count of merged pages is 0
 * without walking page tables (smaps, kpageflags), which costs time in
 * proportion to the memory.  True when it cannot tell.  @stat: ksm_stat
 * as the caller just read it, or NULL to read it here.
 */
bool memdedup_process_has_merged_pages(const MemdedupKsmStat *stat);

/*
 * A /sys/kernel/mm/ksm value: one unsigned decimal number, surrounding
 * blanks and newline allowed; false for anything else.
 */
bool memdedup_parse_ksm_knob(const char *text, uint64_t *value);

/* /sys/kernel/mm/ksm/<name> as an unsigned number; false if unreadable. */
bool memdedup_read_ksm_knob(const char *name, uint64_t *value);

/* CPU time of the calling thread, in nanoseconds (0 if unknown). */
uint64_t memdedup_thread_cpu_ns(void);

/*
 * Directory of the host's KSM sysfs files; set: another one (NULL: the
 * host's), for tests.  Any thread.
 */
const char *memdedup_ksm_sysfs_dir(void);
void memdedup_set_ksm_sysfs_dir(const char *dir);

/* Does the host have KSM at all? */
bool memdedup_host_has_ksm(void);

/*
 * memdedup_parse_smaps_ksm: sum the "KSM:" lines (kB) of the VMAs in
 * /proc/self/smaps text @text that lie inside [@start, @end), and count
 * those VMAs that carry the "mg" (mergeable) VmFlag.  Returns false if
 * the text has no KSM lines at all (kernel too old).
 */
bool memdedup_parse_smaps_ksm(const char *text, uint64_t start, uint64_t end,
                              uint64_t *ksm_bytes, uint64_t *mergeable_vmas,
                              uint64_t *mergeable_bytes);

/*
 * The VMAs of /proc/self/smaps, parsed once, so that many ranges can be
 * looked up without parsing the text again (a backend may have a
 * thousand registered ranges, the process several thousand VMAs).
 */
typedef struct MemdedupSmapsVma {
    uint64_t start;             /* address of the first byte */
    uint64_t end;               /* address after the last byte */
    uint64_t ksm_bytes;         /* the "KSM:" line, at most the VMA's size */
    bool mergeable;             /* VmFlags has "mg" */
} MemdedupSmapsVma;

typedef struct MemdedupSmapsView {
    bool read;                  /* memdedup_smaps_view_read was called */
    bool has_ksm;               /* the text has "KSM:" lines at all */
    GArray *vmas;               /* MemdedupSmapsVma, by address; or NULL */
} MemdedupSmapsView;

/* Parse smaps text @text into @view (replacing what it held). */
void memdedup_smaps_view_parse(MemdedupSmapsView *view, const char *text);

/* Read and parse /proc/self/smaps; false (empty view) if unreadable. */
bool memdedup_smaps_view_read(MemdedupSmapsView *view);

/*
 * For the KSM bytes alone: as memdedup_smaps_view_read(), but when the
 * process has no merged page (memdedup_process_has_merged_pages(@stat)),
 * an empty view that says so -- every sum is 0 -- without reading smaps.
 */
bool memdedup_smaps_view_read_merged(MemdedupSmapsView *view,
                                     const MemdedupKsmStat *stat);

/*
 * Over the VMAs of @view that lie inside [@start, @end): the KSM bytes,
 * and the number and bytes of those that are mergeable.
 */
void memdedup_smaps_view_sum(const MemdedupSmapsView *view, uint64_t start,
                             uint64_t end, uint64_t *ksm_bytes,
                             uint64_t *mergeable_vmas,
                             uint64_t *mergeable_bytes);

/*
 * memdedup_smaps_view_merged_bound: at least the KSM bytes in [@start,
 * @end), at most what the VMAs overlapping it hold: a VMA inside counts
 * its KSM bytes, one partly inside the lesser of its KSM bytes and the
 * overlap.  0 only if none of them holds a merged page.
 */
uint64_t memdedup_smaps_view_merged_bound(const MemdedupSmapsView *view,
                                          uint64_t start, uint64_t end);

void memdedup_smaps_view_clear(MemdedupSmapsView *view);
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(MemdedupSmapsView, memdedup_smaps_view_clear)

/* MemAvailable and MemTotal from /proc/meminfo text, in bytes. */
bool memdedup_parse_meminfo(const char *text, uint64_t *mem_available,
                            uint64_t *mem_total);
/* ... read from @path, or /proc/meminfo if NULL. */
bool memdedup_read_meminfo(const char *path, uint64_t *mem_available,
                           uint64_t *mem_total);

/* pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst) */
#define MEMDEDUP_PM_PRESENT   (1ULL << 63)
#define MEMDEDUP_PM_SWAPPED   (1ULL << 62)
#define MEMDEDUP_PM_FILE      (1ULL << 61)
#define MEMDEDUP_PM_EXCLUSIVE (1ULL << 56)
#define MEMDEDUP_PM_PFN_MASK  ((1ULL << 55) - 1)

/*
 * Does the anonymous page of pagemap entry @e share its frame (a KSM
 * page, or one still shared after fork)?  Present and not exclusively
 * mapped: no privilege needed.
 */
static inline bool memdedup_pm_shares_frame(uint64_t e)
{
    return (e & MEMDEDUP_PM_PRESENT) &&
           !(e & (MEMDEDUP_PM_FILE | MEMDEDUP_PM_EXCLUSIVE));
}
#define MEMDEDUP_KPF_KSM      21
#define MEMDEDUP_KPF_ZERO_PAGE 24

/*
 * memdedup_count_ksm_pages: count the pages of [@start, @start + @len)
 * that /proc/kpageflags marks KPF_KSM, reading /proc/self/pagemap through
 * @pagemap_fd and /proc/kpageflags through @kpageflags_fd.  Returns -1 if
 * PFNs are hidden (no CAP_SYS_ADMIN) or a read fails.
 */
int64_t memdedup_count_ksm_pages(int pagemap_fd, int kpageflags_fd,
                                 uintptr_t start, size_t len);

/*
 * memdedup_cow_walk: one registered region's walk for copy-on-write
 * churn, over the pagemap @entries of its @n pages.  A page shares its
 * frame when it is present, anonymous and not mapped exclusively (a KSM
 * page mapped more than once, or the zero page): what the kernel shows
 * every reader, with or without CAP_SYS_ADMIN.  @shared has a bit per
 * page (from @first): set at the previous walk for pages that shared
 * their frame and held non-zero content (@nonzero); those that are
 * present now but no longer share it were broken by a write, and are
 * counted (the return value).  Pages not present (swapped, discarded)
 * are not.  The bits are then set as of now (zero pages left out: a
 * guest writing its zeroed free memory is allocating it, not churning);
 * *@sharing is the number set.
 */
uint32_t memdedup_cow_walk(const uint64_t *entries, const bool *nonzero,
                           size_t n, unsigned long *shared, uint64_t first,
                           uint32_t *sharing);

/* A page's saving is divided among its sharers in this many parts. */
#define MEMDEDUP_SHARE_UNIT   1000000

typedef struct MemdedupKsmShares {
    uint64_t pages;             /* KSM pages mapped in the range */
    uint64_t attributed;        /* their share of the saving, in */
                                /* MEMDEDUP_SHARE_UNIT parts of a page */
} MemdedupKsmShares;

/*
 * memdedup_count_ksm_shares: add to @shares the KSM pages of [@start,
 * @start + @len) (as memdedup_count_ksm_pages) and, when @kpagecount_fd
 * (/proc/kpagecount) is not -1, this range's share of what they save:
 * a KSM page mapped N times saves N - 1 pages, and each mapping is
 * attributed (N - 1) / N of a page, so that the shares of every mapping
 * on the host add up to KSM's pages_sharing.  False if PFNs are hidden
 * or a read fails (@shares then partly added to).
 */
bool memdedup_count_ksm_shares(int pagemap_fd, int kpageflags_fd,
                               int kpagecount_fd, uintptr_t start,
                               size_t len, MemdedupKsmShares *shares);

/*
 * memdedup_madvise: madvise(2), through which the engine registers and
 * unregisters memory, so that tests can inject kernel refusals with
 * memdedup_madvise_set_fault: the next @count (negative: every)
 * MADV_(UN)MERGEABLE calls fail with errno @err (0: none).  Returns 0,
 * or -1 with errno set.  Thread-safe.
 * memdedup_parse_madvise_fault: "ERRNO[:COUNT]" (ENOMEM, EINVAL, EAGAIN,
 * EPERM), or "" for none, into @err and @count; false if malformed.
 */
int memdedup_madvise(void *addr, size_t len, int advice);
void memdedup_madvise_set_fault(int err, int64_t count);
bool memdedup_parse_madvise_fault(const char *spec, int *err,
                                  int64_t *count);

/* ------------------------------------------------------------------ */
/* NUMA placement and per-node KSM trees (numa.c)                      */
/* ------------------------------------------------------------------ */

/*
 * With /sys/kernel/mm/ksm/merge_across_nodes at 0, KSM keeps one tree per
 * host node and merges two pages only when both sit on the same node.
 * The engine then judges duplicates per node too: a page is a candidate
 * only when a twin lives on its own node.  It always counts both kinds,
 * so the operator sees what the other setting would give.
 */

/* blk->nodes value of a page whose host node is not known (not resident). */
#define MEMDEDUP_NODE_UNKNOWN   (-1)

/*
 * A placement function: the host node of each of @count pages at
 * @pages into @status (a node number, or a negative errno per page), as
 * move_pages(0, count, pages, NULL, status, 0) does.  Returns 0, or -1
 * with errno set when nothing could be learned.  Tests inject their own.
 */
typedef int (*MemdedupPlacementFn)(void *opaque, unsigned long count,
                                   void **pages, int *status);

/* The host's placement function: move_pages(2) in query mode. */
int memdedup_numa_move_pages(void *opaque, unsigned long count, void **pages,
                             int *status);

/*
 * The placement on a host with one node: node 0 for every page, without
 * a system call (move_pages costs about half as much as hashing a page).
 */
int memdedup_numa_one_node(void *opaque, unsigned long count, void **pages,
                           int *status);

/*
 * memdedup_numa_place_pages: learn the host node of the @n pages at
 * @base (@page_size apart) whose @present flag is set, into @nodes
 * (MEMDEDUP_NODE_UNKNOWN for the others), calling @fn once with up to
 * @n pages; @addrs and @status are caller buffers of @n entries.  Pages
 * found on another node than @nodes held before are re-homed (their
 * index entries follow them at the next index build); returns how many.
 */
uint64_t memdedup_numa_place_pages(MemdedupPlacementFn fn, void *opaque,
                                   uint8_t *base, uint64_t page_size,
                                   const bool *present, size_t n,
                                   int8_t *nodes, void **addrs, int *status);

/*
 * Parse a sysfs node list ("0", "0-3,8\n"): set bit i of @nodes (of
 * @max bits) for each node i listed.  False on malformed text or a node
 * >= @max.
 */
bool memdedup_parse_node_list(const char *text, unsigned long *nodes,
                              unsigned max);


/* How a resident non-zero page relates to the duplicate index. */
typedef enum MemdedupDupKind {
    MEMDEDUP_DUP_NONE,          /* no twin anywhere */
    MEMDEDUP_DUP_WITHIN_NODE,   /* a twin on its own host node */
    MEMDEDUP_DUP_CROSS_NODE,    /* twins only on other host nodes */
} MemdedupDupKind;

/*
 * The per-node duplicate index, built next to the global dup set
 * whenever managed pages live on more than one host node: for each
 * entry of the global set and each node, one bit that says whether the
 * node holds two copies or more (a subset of the global set, so no set
 * of its own: nr_nodes bits per entry).  @partitioned follows
 * merge_across_nodes == 0: only then are cross-node duplicates not
 * candidates.  Scanner-owned; read-only while hashing.
 */
typedef struct MemdedupNumaIndex {
    bool partitioned;           /* KSM keeps one tree per node */
    unsigned nr_nodes;          /* bits per entry; 0: pages on one node */
    size_t len;                 /* entries of the global set it covers */
    unsigned long *within;      /* bit entry * nr_nodes + node */
} MemdedupNumaIndex;

/*
 * memdedup_numa_nodes_in_use: the host nodes (highest number + 1) that
 * hold non-zero pages of @nr arrays, or 0 if at most one node does.
 */
unsigned memdedup_numa_nodes_in_use(const MemdedupFpArray *arrays,
                                    size_t nr);

/*
 * memdedup_numa_index_build: rebuild @idx for @nr_nodes (from
 * memdedup_numa_nodes_in_use) over the global set @global, from @nr
 * arrays with their nodes; keeps @idx->partitioned.  False, with @idx
 * empty (pages judged by the global set alone), if memory runs out.
 */
bool memdedup_numa_index_build(MemdedupNumaIndex *idx,
                               const MemdedupDupSet *global,
                               const MemdedupFpArray *arrays, size_t nr,
                               unsigned nr_nodes);
void memdedup_numa_index_clear(MemdedupNumaIndex *idx);

/* Bytes @idx takes. */
size_t memdedup_numa_index_bytes(const MemdedupNumaIndex *idx);

/*
 * memdedup_numa_classify: the kind of duplicate a page with fingerprint
 * @fp on host node @node is, given the global dup set @global and @idx.
 * A page of unknown node is judged by the global set.  @slot, if not
 * NULL, receives a number in [0, memdedup_numa_slots()) that is the
 * same for every copy KSM could merge into one page, or -1.
 */
MemdedupDupKind memdedup_numa_classify(const MemdedupNumaIndex *idx,
                                       const MemdedupDupSet *global,
                                       MemdedupFp fp, int node,
                                       ssize_t *slot);

/* Is a page of @kind a candidate, with @idx's partitioning? */
bool memdedup_numa_candidate(const MemdedupNumaIndex *idx,
                             MemdedupDupKind kind);

/* Slots memdedup_numa_classify hands out. */
size_t memdedup_numa_slots(const MemdedupNumaIndex *idx,
                           const MemdedupDupSet *global);

/* One block's pages on one host node, in pages. */
typedef struct MemdedupNumaNodeStats {
    uint64_t resident;          /* resident pages */
    uint64_t duplicate;         /* non-zero pages with a twin on the node */
    uint64_t cross_node;        /* non-zero pages with twins elsewhere only */
    uint64_t merged;            /* pages the kernel merged (KPF_KSM) */
} MemdedupNumaNodeStats;

typedef struct MemdedupNumaStats {
    MemdedupNumaNodeStats node[MEMDEDUP_NUMA_NODES_MAX];
    uint64_t unknown;           /* resident pages of unknown host node */
    bool merged_known;          /* node[].merged is valid */
    bool one_node;              /* placed by memdedup_numa_one_node */
} MemdedupNumaStats;

/*
 * memdedup_numa_count_page: add one page, fingerprint @fp on host node
 * @node and already classified as @kind, to @stats (the engine does so
 * for each page while it summarizes a block).
 */
void memdedup_numa_count_page(MemdedupNumaStats *stats, uint32_t fp,
                              int node, MemdedupDupKind kind);

/*
 * memdedup_numa_count_merged: count into @stats->node[].merged the
 * pages of [@start, @start + nr_pages pages) that /proc/kpageflags marks
 * KPF_KSM, by the node in @nodes.  False (merged_known unset) when PFNs
 * are hidden or a read fails.
 */
bool memdedup_numa_count_merged(int pagemap_fd, int kpageflags_fd,
                                uintptr_t start, uint64_t page_size,
                                const int8_t *nodes, uint64_t nr_pages,
                                MemdedupNumaStats *stats);

#endif
