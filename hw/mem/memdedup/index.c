/*
 * memdedup: page fingerprints and the duplicate index
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * Each resident page is reduced to a 40-bit fingerprint: XXH3-64 with a
 * random per-process seed, folded to 40 bits.  At the end of a pass the
 * engine sorts a transient copy of every fingerprint (a counting sort by
 * the high 8 bits, then a radix sort of the low 32 within each of those
 * 256 parts: linear time, about 4 bytes per page) and keeps only those
 * that occur twice or more, as many as the metadata budget holds: the
 * dup set.  A page is a duplicate
 * candidate when its fingerprint is in the dup set.
 *
 * Why this is correct: the engine never merges anything itself.  A false
 * duplicate (a collision: a unique page among n is one with probability
 * about n / 2^40; or a torn read of a page being written) can only make
 * a region look more duplicated than it is, which costs KSM a wasted
 * compare; a duplicate the set leaves out (memdedup_dupset_build's
 * budget) only costs saving.  The seed keeps a guest from choosing pages
 * that collide on purpose.
 */

#include "qemu/osdep.h"
#include "qemu/cutils.h"
#include "qemu/atomic.h"
#include "memdedup-core.h"

#define XXH_INLINE_ALL
#include <xxhash.h>
#include "index-xxh3.h"

static uint64_t memdedup_xxh3_baseline(const void *data, size_t len,
                                       uint64_t seed, const void *secret)
{
    return memdedup_xxh3_inline(data, len, seed, secret);
}

typedef uint64_t (*MemdedupXxh3Fn)(const void *, size_t, uint64_t,
                                   const void *);

/* The hash for this CPU, chosen on first use (both give equal results). */
static MemdedupXxh3Fn memdedup_xxh3;

static MemdedupXxh3Fn memdedup_choose_hash(void)
{
    MemdedupXxh3Fn fn = qatomic_read(&memdedup_xxh3);

    if (likely(fn)) {
        return fn;
    }
    fn = memdedup_xxh3_baseline;
#ifdef CONFIG_AVX2_OPT
    /* Also checks that the kernel saves the AVX state (XGETBV). */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) {
        fn = memdedup_xxh3_avx2;
    }
#endif
    qatomic_set(&memdedup_xxh3, fn);
    return fn;
}

const char *memdedup_hash_impl(void)
{
#ifdef CONFIG_AVX2_OPT
    if (memdedup_choose_hash() == memdedup_xxh3_avx2) {
        return "avx2";
    }
#endif
    /* What xxhash.h chose for the baseline build. */
    switch (XXH_VECTOR) {
    case XXH_SSE2:
        return "sse2";
    case XXH_NEON:
        return "neon";
    case XXH_VSX:
        return "vsx";
    default:
        return "scalar";
    }
}

/*
 * What hashing with one seed needs, kept per thread for the last seed
 * and page size used: XXH3's secret for the seed, and the hash of a zero
 * page (see memdedup_page_classify).
 */
typedef struct MemdedupHashKey {
    bool valid;
    uint64_t seed;
    size_t size;
    uint64_t zero_hash;
    uint8_t secret[MEMDEDUP_XXH3_SECRET_SIZE] QEMU_ALIGNED(64);
} MemdedupHashKey;

static __thread MemdedupHashKey memdedup_hash_key;

static inline const MemdedupHashKey *memdedup_key_for(uint64_t seed,
                                                      size_t size)
{
    MemdedupHashKey *k = &memdedup_hash_key;

    if (unlikely(!k->valid || k->seed != seed || k->size != size)) {
        g_autofree void *zero = g_malloc0(size);

        QEMU_BUILD_BUG_ON(sizeof(k->secret) < XXH3_SECRET_DEFAULT_SIZE);
        XXH3_generateSecret_fromSeed(k->secret, seed);
        k->seed = seed;
        k->size = size;
        k->zero_hash = memdedup_choose_hash()(zero, size, seed, k->secret);
        k->valid = true;
    }
    return k;
}

static inline MemdedupFp memdedup_fold(uint64_t h)
{
    uint32_t lo = (uint32_t)(h ^ (h >> 32));

    /* Keep clear of the reserved values, whatever the high bits. */
    lo = lo <= MEMDEDUP_FP_ZERO ? lo + 2 : lo;
    return memdedup_fp_join(lo, h >> 56);
}

MemdedupFp memdedup_page_fingerprint(const void *page, size_t size,
                                     uint64_t seed)
{
    const MemdedupHashKey *k = memdedup_key_for(seed, size);

    return memdedup_fold(memdedup_choose_hash()(page, size, seed, k->secret));
}

/*
 * Hash first: a page is zero only if its hash is the zero page's, and
 * then buffer_is_zero() confirms it from the cache.  A non-zero page is
 * read once.
 */
MemdedupFp memdedup_page_classify(const void *page, size_t size,
                                  uint64_t seed)
{
    const MemdedupHashKey *k = memdedup_key_for(seed, size);
    uint64_t h = memdedup_choose_hash()(page, size, seed, k->secret);

    if (h == k->zero_hash && buffer_is_zero(page, size)) {
        return MEMDEDUP_FP_ZERO;
    }
    return memdedup_fold(h);
}

void memdedup_fp_sort(uint32_t *fps, uint32_t *tmp, size_t n)
{
    uint32_t *src = fps, *dst = tmp;
    int shift;

    /* A small part (most of the 256 in a small guest): insertion sort. */
    if (n < 64) {
        for (size_t i = 1; i < n; i++) {
            uint32_t v = fps[i];
            size_t j = i;

            for (; j && fps[j - 1] > v; j--) {
                fps[j] = fps[j - 1];
            }
            fps[j] = v;
        }
        return;
    }

    /* Four stable counting passes of 8 bits; the result ends in @fps. */
    for (shift = 0; shift < 32; shift += 8) {
        size_t count[257] = { 0 };
        size_t i;

        for (i = 0; i < n; i++) {
            count[((src[i] >> shift) & 0xff) + 1]++;
        }
        for (i = 1; i < 257; i++) {
            count[i] += count[i - 1];
        }
        for (i = 0; i < n; i++) {
            dst[count[(src[i] >> shift) & 0xff]++] = src[i];
        }
        uint32_t *swap = src;
        src = dst;
        dst = swap;
    }
}

static int memdedup_fp_cmp(const void *a, const void *b)
{
    MemdedupFp x = *(const MemdedupFp *)a, y = *(const MemdedupFp *)b;

    return x < y ? -1 : x > y;
}

size_t memdedup_count_repeats(MemdedupFp *fps, size_t n)
{
    size_t i, run, repeats = 0;

    qsort(fps, n, sizeof(*fps), memdedup_fp_cmp);
    for (i = 0; i < n; i += run) {
        for (run = 1; i + run < n && fps[i + run] == fps[i]; run++) {
            /* find the end of the run */
        }
        repeats += run > 1 ? run : 0;
    }
    return repeats;
}

void memdedup_dupset_clear(MemdedupDupSet *set)
{
    g_free(set->fps);
    g_free(set->bucket);
    *set = (MemdedupDupSet) { 0 };
}

/*
 * Bucket bits for a set of @len entries: one bucket per four to eight
 * entries, at least 8 (so a bucket fixes the high byte).
 */
static unsigned memdedup_dupset_bits(uint64_t len)
{
    unsigned bits = 8;

    while (bits < 30 && (4ull << (bits + 1)) <= len) {
        bits++;
    }
    return bits;
}

/* Bytes of a set of @len entries, with @extra_bits more per entry. */
static uint64_t memdedup_dupset_cost(uint64_t len, unsigned extra_bits)
{
    if (!len) {
        return 0;
    }
    return len * sizeof(uint32_t) + DIV_ROUND_UP(len * extra_bits, 8) +
           ((1ull << memdedup_dupset_bits(len)) + 1) * sizeof(uint32_t);
}

size_t memdedup_dupset_bytes(const MemdedupDupSet *set)
{
    return memdedup_dupset_cost(set->len, 0);
}

uint64_t memdedup_dupset_transient_bytes(uint64_t pages)
{
    return pages * sizeof(uint32_t);
}

/* Groups of at least this many copies are counted together. */
#define MEMDEDUP_GROUP_SIZES 64

/*
 * The sorted fingerprints, as memdedup_dupset_build makes them: the low
 * bits of every non-reserved fingerprint, ordered by (high, low) bits;
 * @start[h] is where those with high bits @h begin.
 */
typedef struct MemdedupSorted {
    uint32_t *lo;
    uint64_t start[257];
} MemdedupSorted;

static bool memdedup_sort_all(MemdedupSorted *s, const MemdedupFpArray *arrays,
                              size_t nr)
{
    uint64_t pos[256], most = 0;
    g_autofree uint32_t *tmp = NULL;
    size_t a;
    unsigned h;

    memset(s->start, 0, sizeof(s->start));
    for (a = 0; a < nr; a++) {
        for (uint64_t p = 0; p < arrays[a].nr_pages; p++) {
            s->start[arrays[a].hi[p] + 1] += arrays[a].lo[p] > MEMDEDUP_FP_ZERO;
        }
    }
    for (h = 0; h < 256; h++) {
        most = MAX(most, s->start[h + 1]);
        s->start[h + 1] += s->start[h];
    }
    s->lo = g_try_new(uint32_t, MAX(s->start[256], 1));
    tmp = g_try_new(uint32_t, MAX(most, 1));
    if (!s->lo || !tmp) {
        g_free(s->lo);
        s->lo = NULL;
        return false;
    }
    memcpy(pos, s->start, sizeof(pos));
    for (a = 0; a < nr; a++) {
        for (uint64_t p = 0; p < arrays[a].nr_pages; p++) {
            if (arrays[a].lo[p] > MEMDEDUP_FP_ZERO) {
                s->lo[pos[arrays[a].hi[p]]++] = arrays[a].lo[p];
            }
        }
    }
    for (h = 0; h < 256; h++) {
        memdedup_fp_sort(s->lo + s->start[h], tmp,
                         s->start[h + 1] - s->start[h]);
    }
    return true;
}

/* Copies of the fingerprint at @i of part [.., @end), and where the next is. */
static inline uint64_t memdedup_group(const uint32_t *lo, uint64_t i,
                                      uint64_t end)
{
    uint64_t j = i + 1;

    while (j < end && lo[j] == lo[i]) {
        j++;
    }
    return j - i;
}

/*
 * Which groups fit in @budget: all of at least *@size copies and the
 * first *@quota of *@size - 1 copies.  Returns the entries kept.
 */
static uint64_t memdedup_dupset_fit(const uint64_t *groups, uint64_t budget,
                                    unsigned extra_bits, unsigned *size,
                                    uint64_t *quota)
{
    uint64_t kept = 0, room = 0, total = 0;
    unsigned s;

    for (s = 2; s <= MEMDEDUP_GROUP_SIZES; s++) {
        total += groups[s];
    }
    *size = 2;
    *quota = 0;
    if (total <= UINT32_MAX &&
        memdedup_dupset_cost(total, extra_bits) <= budget) {
        return total;
    }
    /* The most entries that fit, to within 1/64. */
    while (memdedup_dupset_cost(room + 1, extra_bits) <= budget &&
           room < UINT32_MAX) {
        room = room ? MIN(room * 2, (uint64_t)UINT32_MAX) : 1;
    }
    while (room && memdedup_dupset_cost(room, extra_bits) > budget) {
        room -= MAX(room / 64, 1);
    }
    for (s = MEMDEDUP_GROUP_SIZES; s >= 2; s--) {
        if (kept + groups[s] > room) {
            *quota = room - kept;
            *size = s + 1;
            return room;
        }
        kept += groups[s];
    }
    return kept;
}

bool memdedup_dupset_build(MemdedupDupSet *set, const MemdedupFpArray *arrays,
                           size_t nr, uint64_t budget, unsigned extra_bits)
{
    MemdedupSorted sorted;
    MemdedupDupSet new = { 0 };
    uint64_t groups[MEMDEDUP_GROUP_SIZES + 1] = { 0 }, total = 0, quota, i;
    uint64_t kept, shift, b, nb;
    unsigned size, h;

    if (!memdedup_sort_all(&sorted, arrays, nr)) {
        return false;
    }
    for (h = 0; h < 256; h++) {
        uint64_t end = sorted.start[h + 1], n;

        for (i = sorted.start[h]; i < end; i += n) {
            n = memdedup_group(sorted.lo, i, end);
            if (n > 1) {
                groups[MIN(n, MEMDEDUP_GROUP_SIZES)]++;
                total++;
            }
        }
    }
    kept = memdedup_dupset_fit(groups, budget, extra_bits, &size, &quota);
    new.dropped = total - kept;
    if (kept) {
        new.fps = g_try_new(uint32_t, kept);
        new.bucket_bits = memdedup_dupset_bits(kept);
        nb = 1ull << new.bucket_bits;
        new.bucket = g_try_new(uint32_t, nb + 1);
        if (!new.fps || !new.bucket) {
            g_free(sorted.lo);
            memdedup_dupset_clear(&new);
            return false;
        }
        shift = MEMDEDUP_FP_BITS - new.bucket_bits;
        for (h = 0, b = 0; h < 256; h++) {
            uint64_t end = sorted.start[h + 1];

            for (i = sorted.start[h]; i < end;) {
                uint64_t n = memdedup_group(sorted.lo, i, end);
                MemdedupFp fp = memdedup_fp_join(sorted.lo[i], h);
                unsigned copies = MIN(n, MEMDEDUP_GROUP_SIZES);
                bool keep = n > 1 && copies >= size;

                if (n > 1 && copies == size - 1 && quota) {
                    quota--;
                    keep = true;
                }
                if (keep) {
                    /* Buckets up to this one start here or later. */
                    while (b <= fp >> shift) {
                        new.bucket[b++] = new.len;
                    }
                    new.fps[new.len++] = sorted.lo[i];
                }
                i += n;
            }
        }
        while (b <= nb) {
            new.bucket[b++] = new.len;
        }
        assert(new.len == kept);
    }
    g_free(sorted.lo);
    memdedup_dupset_clear(set);
    *set = new;
    return true;
}

ssize_t memdedup_dupset_find(const MemdedupDupSet *set, MemdedupFp fp)
{
    uint32_t lo = memdedup_fp_lo(fp);
    uint64_t b;
    size_t i;

    if (!set->len) {
        return -1;
    }
    /* Four to eight entries a bucket, all with @fp's high bits: a scan. */
    b = fp >> memdedup_dupset_shift(set);
    for (i = set->bucket[b]; i < set->bucket[b + 1]; i++) {
        if (set->fps[i] >= lo) {
            return set->fps[i] == lo ? (ssize_t)i : -1;
        }
    }
    return -1;
}
