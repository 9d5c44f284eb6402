/*
 * memdedup: hashing one region of guest RAM
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * Scanning must not change guest memory residency: pages that are not
 * present (never touched, discarded or swapped out) are skipped, learned
 * from /proc/self/pagemap (its PAGEMAP_SCAN ioctl where the kernel has
 * it, else its entries; mincore(2) where pagemap is unreadable), so
 * reading guest RAM never faults pages in and RSS does not grow.
 * The scanner only reads guest memory.  A page the guest writes while it
 * is hashed yields a torn fingerprint; that is harmless (see index.c).
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 */

#include "qemu/osdep.h"
#include <sys/ioctl.h>
#include "qemu/bitops.h"
#include "qemu/rcu.h"
#include "qemu/atomic.h"
#include "memdedup-internal.h"

/*
 * One probe of what a read fault maps: a private anonymous mapping of
 * its own (2 MiB-aligned and MADV_HUGEPAGE for the huge zero page), read
 * once, its first page's PFN taken from pagemap.  Each probe has its own
 * mapping: a page read before MADV_HUGEPAGE would keep its small-page
 * PTE there, and the huge zero page would never be seen.
 */
typedef struct MemdedupZeroProbe {
    uint8_t *area;              /* the mapping, or NULL */
    size_t length;              /* bytes mapped */
    uint8_t *page;              /* the page read */
    uint64_t pfn;               /* what pagemap shows there; 0 if hidden */
} MemdedupZeroProbe;

static void memdedup_zero_probe_map(MemdedupEngine *engine,
                                    MemdedupZeroProbe *probe, bool huge)
{
    const size_t huge_size = 2 * MiB;
    uint64_t entry;
    off_t off;

    probe->length = huge ? 2 * huge_size : qemu_real_host_page_size();
    probe->area = mmap(NULL, probe->length, PROT_READ,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (probe->area == MAP_FAILED) {
        probe->area = NULL;
        return;
    }
    probe->page = probe->area;
    if (huge) {
        probe->page = QEMU_ALIGN_PTR_UP(probe->area, huge_size);
        madvise(probe->page, huge_size, MADV_HUGEPAGE);
    }
    (void)*(volatile uint8_t *)probe->page;         /* the read fault */
    off = (off_t)((uintptr_t)probe->page / qemu_real_host_page_size()) *
          sizeof(entry);
    if (pread(engine->pagemap_fd, &entry, sizeof(entry), off) ==
            sizeof(entry) && (entry & MEMDEDUP_PM_PRESENT)) {
        probe->pfn = entry & MEMDEDUP_PM_PFN_MASK;
    }
}

static void memdedup_zero_probe_unmap(MemdedupZeroProbe *probe)
{
    if (probe->area) {
        munmap(probe->area, probe->length);
    }
}

/*
 * Did two probes mapped at the same time find the kernel's zero page?
 * Some kernels map it on a read fault; others allocate a zero-filled
 * page (or THP) there, an ordinary frame that is freed at munmap and
 * may later hold guest RAM, so it must never be learned as "zero".
 * /proc/kpageflags says so where it can be read (KPF_ZERO_PAGE, for
 * the small and the huge zero page alike); without it, two mappings
 * read at once share a frame only if it is the zero page.
 */
static bool memdedup_zero_probes_agree(MemdedupEngine *engine,
                                       const MemdedupZeroProbe probe[2],
                                       uint64_t frame_mask)
{
    uint64_t flags;

    if (!probe[0].pfn || !probe[1].pfn) {
        return false;
    }
    if (engine->kpageflags_fd >= 0 &&
        pread(engine->kpageflags_fd, &flags, sizeof(flags),
              (off_t)(probe[0].pfn * sizeof(flags))) == sizeof(flags)) {
        return (flags >> MEMDEDUP_KPF_ZERO_PAGE) & 1;
    }
    return !((probe[0].pfn ^ probe[1].pfn) & ~frame_mask);
}

static bool memdedup_scan_says_zero(MemdedupEngine *engine, uint8_t *addr);
static bool memdedup_is_zero_pfn(MemdedupEngine *engine, uint64_t pfn);

/*
 * Learn the PFNs of the kernel's zero pages (small and huge), where
 * this kernel maps them on a read fault and this process may see PFNs
 * (CAP_SYS_ADMIN); pages that map them cost no memory and are not
 * resident.  Also decide whether PAGEMAP_SCAN can be trusted to tell
 * the zero page apart.
 */
void memdedup_learn_zero_pfns(MemdedupEngine *engine)
{
    const uint64_t huge_frames = 2 * MiB / qemu_real_host_page_size();
    MemdedupZeroProbe small[2] = { 0 }, huge[2] = { 0 };
    MemdedupZeroProbe *all[] = { &small[0], &small[1], &huge[0], &huge[1] };
    size_t i;

    if (engine->pagemap_fd < 0) {
        return;
    }
    for (i = 0; i < 2; i++) {
        memdedup_zero_probe_map(engine, &small[i], false);
        memdedup_zero_probe_map(engine, &huge[i], true);
    }
    engine->pfns_visible = small[0].pfn || huge[0].pfn;
    if (memdedup_zero_probes_agree(engine, small, 0)) {
        engine->zero_pfn = small[0].pfn;
    }
    if (memdedup_zero_probes_agree(engine, huge, huge_frames - 1) &&
        huge[0].pfn != engine->zero_pfn) {
        engine->huge_zero_pfn = huge[0].pfn & ~(huge_frames - 1);
    }
    /*
     * PAGEMAP_SCAN must tell these pages apart as the PFNs do: the first
     * kernels with it compared a huge page's PFN with the small zero
     * page's only, so did not flag the huge zero page; and where a read
     * allocates a page, it must not flag that page.  Without PFNs it is
     * used whatever it says: it still tells the small zero page apart,
     * which the entries then cannot.
     */
    for (i = 0; i < ARRAY_SIZE(all); i++) {
        if (qatomic_read(&engine->pagemap_scan) && all[i]->pfn &&
            memdedup_scan_says_zero(engine, all[i]->page) !=
                memdedup_is_zero_pfn(engine, all[i]->pfn)) {
            qatomic_set(&engine->pagemap_scan, false);
        }
    }
    for (i = 0; i < ARRAY_SIZE(all); i++) {
        memdedup_zero_probe_unmap(all[i]);
    }
}

/*
 * Does @pfn belong to the kernel's zero page?  The small zero page never
 * moves.  The huge zero page is freed under memory pressure and
 * allocated again elsewhere, and its old frames go to ordinary pages:
 * a PFN in the range learned at start is only trusted when
 * /proc/kpageflags still says KPF_ZERO_PAGE (or cannot be asked).
 */
static bool memdedup_is_zero_pfn(MemdedupEngine *engine, uint64_t pfn)
{
    uint64_t flags;

    if (!pfn) {
        return false;
    }
    if (pfn == engine->zero_pfn) {
        return true;
    }
    if (!engine->huge_zero_pfn ||
        pfn - engine->huge_zero_pfn >= 2 * MiB / 4096) {
        return false;
    }
    if (engine->kpageflags_fd < 0 ||
        pread(engine->kpageflags_fd, &flags, sizeof(flags),
              (off_t)(pfn * sizeof(uint64_t))) != sizeof(flags)) {
        return true;
    }
    return (flags >> MEMDEDUP_KPF_ZERO_PAGE) & 1;
}

/*
 * The PAGEMAP_SCAN ioctl of /proc/PID/pagemap (Linux 6.7, in
 * <linux/fs.h> as struct pm_scan_arg and struct page_region), defined
 * here for build hosts whose headers predate it.
 */
typedef struct MemdedupPageRegion {
    uint64_t start;             /* first byte */
    uint64_t end;               /* past the last byte */
    uint64_t categories;        /* MEMDEDUP_PAGE_IS_*, of return_mask */
} MemdedupPageRegion;

typedef struct MemdedupPmScanArg {
    uint64_t size;              /* sizeof(MemdedupPmScanArg) */
    uint64_t flags;
    uint64_t start;
    uint64_t end;
    uint64_t walk_end;          /* set by the kernel: where it stopped */
    uint64_t vec;               /* MemdedupPageRegion array */
    uint64_t vec_len;
    uint64_t max_pages;
    uint64_t category_inverted;
    uint64_t category_mask;     /* report only pages with all of these */
    uint64_t category_anyof_mask;
    uint64_t return_mask;       /* categories the ranges are told by */
} MemdedupPmScanArg;

#define MEMDEDUP_PAGEMAP_SCAN       _IOWR('f', 16, MemdedupPmScanArg)
#define MEMDEDUP_PAGE_IS_PRESENT    (1 << 3)
#define MEMDEDUP_PAGE_IS_PFNZERO    (1 << 5)

/*
 * Residency through PAGEMAP_SCAN: the kernel reports runs of present
 * pages, and which of them map its zero page (small or huge) without
 * showing any PFN, so also without CAP_SYS_ADMIN; and it does not look
 * up every page's struct page as reading pagemap does (1 GiB, half on
 * huge pages: 2.2 ms against 4.8 ms here).  False if the ioctl did not
 * answer for the whole range; where the kernel lacks it, it is not
 * asked again.
 */
static bool memdedup_scan_residency(MemdedupEngine *engine, uint8_t *addr,
                                    size_t pages, uint64_t page_size,
                                    MemdedupPageRegion *vec, bool *present)
{
    MemdedupPmScanArg arg = {
        .size = sizeof(arg),
        .start = (uintptr_t)addr,
        .end = (uintptr_t)addr + pages * page_size,
        .vec = (uintptr_t)vec,
        .vec_len = pages,       /* a run is at least a page */
        .category_mask = MEMDEDUP_PAGE_IS_PRESENT,
        .return_mask = MEMDEDUP_PAGE_IS_PFNZERO,
    };
    int n, r;
    size_t i;

    n = ioctl(engine->pagemap_fd, MEMDEDUP_PAGEMAP_SCAN, &arg);
    if (n < 0) {
        if (errno == ENOTTY || errno == EINVAL) {
            qatomic_set(&engine->pagemap_scan, false);
        }
        return false;
    }
    if (arg.walk_end != arg.end) {
        return false;
    }
    memset(present, 0, pages * sizeof(*present));
    for (r = 0; r < n; r++) {
        if (vec[r].categories & MEMDEDUP_PAGE_IS_PFNZERO ||
            vec[r].start < arg.start || vec[r].end > arg.end) {
            continue;
        }
        for (i = (vec[r].start - arg.start) / page_size;
             i < (vec[r].end - arg.start) / page_size; i++) {
            present[i] = true;
        }
    }
    return true;
}

void memdedup_probe_pagemap_scan(MemdedupEngine *engine)
{
    size_t page_size = qemu_real_host_page_size();
    MemdedupPageRegion vec[1];
    bool present[1];
    uint8_t *page;

    if (!qatomic_read(&engine->pagemap_scan)) {
        return;
    }
    page = mmap(NULL, page_size, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (page == MAP_FAILED) {
        return;
    }
    page[0] = 1;
    if (!memdedup_scan_residency(engine, page, 1, page_size, vec, present) ||
        !present[0]) {
        qatomic_set(&engine->pagemap_scan, false);
    }
    munmap(page, page_size);
}

/* Does PAGEMAP_SCAN say the page at @addr maps the zero page? */
static bool memdedup_scan_says_zero(MemdedupEngine *engine, uint8_t *addr)
{
    MemdedupPageRegion vec[1];
    bool present[1];

    return memdedup_scan_residency(engine, addr, 1,
                                   qemu_real_host_page_size(), vec,
                                   present) && !present[0];
}

/*
 * Fill @buf->present with one flag per page of [@addr, @addr + @pages
 * pages).  Returns false if residency cannot be learned at all.
 */
static bool memdedup_read_residency(MemdedupEngine *engine, uint8_t *addr,
                                    size_t pages, uint64_t page_size,
                                    MemdedupScanBuffers *buf)
{
    uint64_t *entries = buf->entries;
    bool *present = buf->present;
    size_t i;

    if (qatomic_read(&engine->pagemap_scan) &&
        memdedup_scan_residency(engine, addr, pages, page_size, buf->ranges,
                                present)) {
        return true;
    }
    if (engine->pagemap_fd >= 0) {
        off_t off = (off_t)((uintptr_t)addr / page_size) * sizeof(uint64_t);
        ssize_t len = pages * sizeof(uint64_t);

        if (pread(engine->pagemap_fd, entries, len, off) == len) {
            for (i = 0; i < pages; i++) {
                present[i] = (entries[i] & MEMDEDUP_PM_PRESENT) &&
                             !(entries[i] & MEMDEDUP_PM_SWAPPED) &&
                             !memdedup_is_zero_pfn(engine, entries[i] &
                                                   MEMDEDUP_PM_PFN_MASK);
            }
            return true;
        }
    }
    /* mincore reports one byte per page; bit 0 is "resident". */
    if (mincore(addr, pages * page_size, (unsigned char *)entries) == 0) {
        const unsigned char *vec = (const unsigned char *)entries;
        for (i = 0; i < pages; i++) {
            present[i] = vec[i] & 1;
        }
        return true;
    }
    return false;
}

/*
 * The hardware prefetcher stops at page boundaries, and the next page of
 * guest RAM is rarely the next physical one: start loading the whole next
 * resident page (up to 4 KiB of it) while this one is hashed.  Measured
 * here (AVX2 XXH3 over 1 GiB of small pages, GB/s per CPU): nothing 20,
 * the first KiB 22, the whole page 30 -- as fast as a plain read loop.
 * Always inlined: GCC judges a function that only prefetches to have no
 * effect, and drops calls to it.
 */
static inline QEMU_ALWAYS_INLINE
void memdedup_prefetch_next(const MemdedupScanBuffers *buf,
                            const uint8_t *base, uint64_t i, uint64_t pages,
                            uint64_t page_size)
{
    const uint8_t *next;
    uint64_t off;

    if (i + 1 >= pages || !buf->hash[i + 1]) {
        return;
    }
    next = base + (i + 1) * page_size;
    for (off = 0; off < MIN(page_size, 4096); off += 64) {
        __builtin_prefetch(next + off);
    }
}

/*
 * Which present pages of region @region of @blk to hash (@buf->hash),
 * and the fingerprints of the others (@buf->fps).  A page of a
 * registered region that shares its frame now, and did at the region's
 * last copy-on-write walk with the content it was hashed with (cow.c:
 * MemdedupBlock.shared), is still the KSM page it was -- a write would
 * have given it a frame of its own -- and its fingerprint stands: in a
 * merged guest, about half of what a pass would read.  A page written,
 * then merged again with a new content before the next pass, keeps a
 * stale fingerprint until a full pass hashes everything (one in
 * MEMDEDUP_REHASH_PASSES): a count off by a page, never a wrong
 * registration by itself.  Inside the caller's RCU read-side section.
 */
static void memdedup_keep_merged(MemdedupEngine *engine, MemdedupBlock *blk,
                                 uint64_t region, uint64_t pages,
                                 MemdedupScanBuffers *buf)
{
    uint64_t first = region * blk->pages_per_region, i;

    memcpy(buf->hash, buf->present, pages * sizeof(*buf->hash));
    /* Most regions: unregistered, or nothing merged at the last walk. */
    if (!buf->keep_merged || !blk->regions[region].registered ||
        !blk->regions[region].shared ||
        !memdedup_cow_read(engine, blk, region, pages, buf->entries)) {
        return;
    }
    for (i = 0; i < pages; i++) {
        MemdedupFp old;

        if (!buf->present[i] || !memdedup_pm_shares_frame(buf->entries[i]) ||
            !test_bit(first + i, blk->shared)) {
            continue;
        }
        old = memdedup_block_fp(blk, first + i);
        if (old != MEMDEDUP_FP_ABSENT && old != MEMDEDUP_FP_ZERO) {
            buf->fps[i] = old;
            buf->hash[i] = false;
        }
    }
}

/*
 * Store a region's new fingerprints (@buf->fps, for the pages present)
 * and count them against the dup set.  The last summary counted this
 * region against the same dup set (@blk->judged_gen): when no page of
 * it changed, appeared, went or moved to another node (@placed_same),
 * its count is still right and no page is looked up -- in a quiet guest,
 * nearly every region of every pass.  Otherwise each page is looked up;
 * a lookup is a cache miss or two in a large set, so the lookups a few
 * pages ahead load meanwhile.
 */
static void memdedup_judge_region(MemdedupEngine *engine, MemdedupBlock *blk,
                                  uint64_t region, uint64_t pages,
                                  MemdedupScanBuffers *buf, bool placed_same,
                                  uint32_t *resident, uint32_t *zero,
                                  uint32_t *duplicate, uint32_t *changed)
{
    uint64_t first = region * blk->pages_per_region;
    uint64_t i, moved = 0, others = 0;

    for (i = 0; i < pages; i++) {
        MemdedupFp old = memdedup_block_fp(blk, first + i), fp = buf->fps[i];

        if (!buf->present[i]) {
            moved += old != MEMDEDUP_FP_ABSENT;
            memdedup_block_set_fp(blk, first + i, MEMDEDUP_FP_ABSENT);
            continue;
        }
        moved += old == MEMDEDUP_FP_ABSENT;
        memdedup_block_set_fp(blk, first + i, fp);
        (*resident)++;
        *zero += fp == MEMDEDUP_FP_ZERO;
        *changed += old != MEMDEDUP_FP_ABSENT && old != fp;
    }
    buf->churn += moved + *changed;
    buf->rewritten += *changed;

    if (placed_same && !moved && !*changed &&
        blk->judged_gen == engine->dupset_gen) {
        *duplicate = blk->regions[region].duplicate;
        buf->reused++;
        return;
    }
    for (i = 0; i < pages; i++) {
        MemdedupFp fp = buf->fps[i];

        memdedup_dupset_prefetch(&engine->dupset, blk->fps + first,
                                 blk->fp_hi + first, i, pages);
        if (!buf->present[i] || fp == MEMDEDUP_FP_ZERO) {
            continue;
        }
        if (memdedup_numa_candidate(&engine->numa,
                memdedup_numa_classify(&engine->numa, &engine->dupset, fp,
                                       blk->nodes[first + i], NULL))) {
            (*duplicate)++;
        } else {
            buf->others[others++] = fp;
        }
    }
    /*
     * New content duplicated inside the region is in no dup set yet:
     * count it now, so that such a region registers as soon as it is
     * hashed (the pass's count finds the same pages in the new set).
     * Copies on two host nodes count once the set is rebuilt.
     */
    if (!engine->numa.partitioned) {
        *duplicate += memdedup_count_repeats(buf->others, others);
    }
}

/*
 * Which pages of [@first, @first + @pages) of @blk are guest memory now
 * resident, into @buf->present; false if the block went or residency
 * cannot be learned.  Inside the caller's RCU read-side section.
 */
static bool memdedup_region_presence(MemdedupEngine *engine,
                                     MemdedupBlock *blk, uint64_t first,
                                     uint64_t pages, MemdedupScanBuffers *buf)
{
    unsigned long *plugged;
    uint64_t i;

    if (qatomic_load_acquire(&blk->removed) ||
        !memdedup_read_residency(engine, blk->host + first * blk->page_size,
                                 pages, blk->page_size, buf)) {
        return false;
    }
    /* With virtio-mem, the parts not plugged are not guest memory. */
    plugged = qatomic_load_acquire(&blk->plugged);
    for (i = 0; plugged && i < pages; i++) {
        buf->present[i] &= test_bit(first + i, plugged);
    }
    return true;
}

/* Small pages per mincore() call of the residency watch's count. */
#define MEMDEDUP_MINCORE_PAGES 4096

/* Bytes [@from, @to) of mincore's @vec with bit 0 set, eight at a time. */
static uint32_t memdedup_mincore_count(const uint8_t *vec, uint64_t from,
                                       uint64_t to)
{
    const uint64_t ones = 0x0101010101010101ULL;
    uint32_t n = 0;
    uint64_t i = from;

    for (; i < to && (i & 7); i++) {
        n += vec[i] & 1;
    }
    for (; i + 8 <= to; i += 8) {
        uint64_t w;

        memcpy(&w, vec + i, sizeof(w));
        /* Each byte is 0 or 1 now: the top byte of the product sums them. */
        n += ((w & ones) * ones) >> 56;
    }
    for (; i < to; i++) {
        n += vec[i] & 1;
    }
    return n;
}

bool memdedup_regions_mapped(MemdedupBlock *blk, uint64_t region, uint64_t n,
                             uint32_t *counts)
{
    const uint64_t host_page = qemu_real_host_page_size();
    const uint64_t region_bytes = blk->pages_per_region * blk->page_size;
    const uint64_t end = MIN((region + n) * region_bytes,
                             blk->nr_pages * blk->page_size);
    uint64_t words[MEMDEDUP_MINCORE_PAGES / sizeof(uint64_t)];
    uint8_t *vec = (uint8_t *)words;
    uint64_t off = region * region_bytes;

    memset(counts, 0, n * sizeof(*counts));
    RCU_READ_LOCK_GUARD();
    if (qatomic_load_acquire(&blk->removed)) {
        return false;
    }
    while (off < end) {
        uint64_t len = MIN(end - off, MEMDEDUP_MINCORE_PAGES * host_page);
        uint64_t pages = DIV_ROUND_UP(len, host_page), i = 0;

        if (mincore(blk->host + off, len, vec)) {
            return false;
        }
        /* Bit 0 of each byte: the page maps a frame. */
        while (i < pages) {
            uint64_t r = (off + i * host_page) / region_bytes;
            uint64_t stop = MIN(pages,
                                ((r + 1) * region_bytes - off) / host_page);

            counts[r - region] += memdedup_mincore_count(vec, i, stop);
            i = stop;
        }
        off += len;
    }
    return true;
}

bool memdedup_scan_region(MemdedupEngine *engine, MemdedupBlock *blk,
                          uint64_t region, MemdedupScanBuffers *buf,
                          uint64_t *bytes_hashed)
{
    uint64_t first = region * blk->pages_per_region;
    uint64_t pages = MIN(blk->pages_per_region, blk->nr_pages - first);
    MemdedupRegion *r = &blk->regions[region];
    uint32_t resident = 0, zero = 0, changed = 0, duplicate = 0, mapped;
    uint32_t hashed = 0;
    uint64_t i;

    *bytes_hashed = 0;
    /*
     * What the residency watch will compare with, taken first: a page
     * that comes meanwhile is hashed and also shows as moved (hashed
     * again at worst), never missed.
     */
    if (!memdedup_regions_mapped(blk, region, 1, &mapped)) {
        return false;
    }

    /*
     * Guest memory is only touched inside the RCU read side, and only if
     * the block was not removed: ram_block_removed sets @removed before
     * QEMU queues the unmap through call_rcu, so the mapping outlives
     * every reader that saw removed == false.
     */
    WITH_RCU_READ_LOCK_GUARD() {
        uint8_t *base = blk->host + first * blk->page_size;
        bool placed_same;

        if (!memdedup_region_presence(engine, blk, first, pages, buf)) {
            return false;
        }
        /* The host node of each present page (numa-engine.c). */
        placed_same = memdedup_numa_scan_region(blk, region, base, buf);
        memdedup_keep_merged(engine, blk, region, pages, buf);
        /* Hash every other resident page, loading the next one meanwhile. */
        for (i = 0; i < pages; i++) {
            if (buf->hash[i]) {
                memdedup_prefetch_next(buf, base, i, pages, blk->page_size);
                buf->fps[i] = memdedup_page_classify(base + i * blk->page_size,
                                                     blk->page_size,
                                                     engine->seed);
                hashed++;
            } else if (!buf->present[i]) {
                buf->fps[i] = MEMDEDUP_FP_ABSENT;
            }
        }
        memdedup_judge_region(engine, blk, region, pages, buf, placed_same,
                              &resident, &zero, &duplicate, &changed);
    }
    *bytes_hashed = (uint64_t)hashed * blk->page_size;

    /* Pages that came or went: not stable, whatever their content. */
    if (resident != r->resident) {
        r->stable_passes = 0;
    }
    /*
     * Tentative until the pass ends: judged against the last dup set,
     * and cross-VM duplicates as many as the last summary found.
     */
    memdedup_region_set_counts(r, resident, zero, duplicate,
                               MIN(r->cross_vm, resident - zero - duplicate));
    r->seen_resident |= resident > 0;
    r->volatile_pages = changed;
    r->mapped = mapped;
    return true;
}

void memdedup_scan_buffers_init(MemdedupScanBuffers *buf, uint64_t pages)
{
    buf->entries = g_new(uint64_t, pages);
    buf->ranges = g_new(MemdedupPageRegion, pages);
    buf->present = g_new(bool, pages);
    buf->hash = g_new(bool, pages);
    buf->addrs = g_new(void *, pages);
    buf->status = g_new(int, pages);
    buf->fps = g_new(MemdedupFp, pages);
    buf->others = g_new(MemdedupFp, pages);
    buf->nodes = g_new(int8_t, pages);
    buf->churn = 0;
    buf->rewritten = 0;
    buf->keep_merged = false;
    buf->reused = 0;
}

void memdedup_scan_buffers_free(MemdedupScanBuffers *buf)
{
    g_free(buf->entries);
    g_free(buf->ranges);
    g_free(buf->present);
    g_free(buf->hash);
    g_free(buf->addrs);
    g_free(buf->status);
    g_free(buf->fps);
    g_free(buf->others);
    g_free(buf->nodes);
}
