/*
 * memdedup: page fingerprints and the duplicate index
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * Each resident page is reduced to a 32-bit fingerprint: XXH3-64 with a
 * random per-process seed, folded to 32 bits.  At the end of a pass the
 * engine sorts a transient copy of every fingerprint (radix sort, linear
 * time) and keeps only those that occur twice or more: the dup set.  A
 * page is a duplicate candidate when its fingerprint is in the dup set.
 *
 * Why this is correct: the engine never merges anything itself.  A false
 * duplicate (a 32-bit collision, about n^2 / 2^33 pairs for n pages, or a
 * torn read of a page being written) can only make a region look more
 * duplicated than it is, which costs KSM a wasted compare.  The seed keeps
 * a guest from choosing pages that collide on purpose.
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

static inline uint32_t memdedup_fold(uint64_t h)
{
    uint32_t fp = (uint32_t)(h ^ (h >> 32));

    /* Keep clear of the reserved values. */
    return fp <= MEMDEDUP_FP_ZERO ? fp + 2 : fp;
}

uint32_t memdedup_page_fingerprint(const void *page, size_t size,
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
uint32_t memdedup_page_classify(const void *page, size_t size, uint64_t seed)
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

void memdedup_dupset_clear(MemdedupDupSet *set)
{
    g_free(set->fps);
    g_free(set->bucket);
    set->fps = NULL;
    set->bucket = NULL;
    set->bucket_bits = 0;
    set->len = 0;
}

size_t memdedup_dupset_bytes(const MemdedupDupSet *set)
{
    return set->len * sizeof(uint32_t) +
           (set->bucket ? ((1ull << set->bucket_bits) + 1) * sizeof(uint32_t)
                        : 0);
}

/*
 * Fingerprints are uniform (hashes): index the set by its top bits, one
 * bucket per four entries, so that a lookup touches one or two cache
 * lines instead of ~log2(len) scattered ones.
 */
static void memdedup_dupset_index(MemdedupDupSet *set)
{
    unsigned bits = 0;
    size_t i, b, nb;

    while (bits < 24 && (4ull << (bits + 1)) <= set->len) {
        bits++;
    }
    if (bits < 4) {
        return;                 /* small: a binary search is as quick */
    }
    nb = 1ull << bits;
    set->bucket = g_new(uint32_t, nb + 1);
    set->bucket_bits = bits;
    for (i = 0, b = 0; b < nb; b++) {
        while (i < set->len && (set->fps[i] >> (32 - bits)) < b) {
            i++;
        }
        set->bucket[b] = i;
    }
    set->bucket[nb] = set->len;
}

void memdedup_dupset_build(MemdedupDupSet *set, const uint32_t *sorted,
                           size_t n)
{
    size_t i = 0, groups = 0, out = 0;

    memdedup_dupset_clear(set);

    /* First count the groups, so that the set is allocated exactly. */
    while (i < n) {
        size_t j = i + 1;
        while (j < n && sorted[j] == sorted[i]) {
            j++;
        }
        groups += (j - i) > 1;
        i = j;
    }
    if (!groups) {
        return;
    }
    set->fps = g_new(uint32_t, groups);
    for (i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && sorted[j] == sorted[i]) {
            j++;
        }
        if (j - i > 1) {
            set->fps[out++] = sorted[i];
        }
        i = j;
    }
    set->len = out;
    memdedup_dupset_index(set);
}

ssize_t memdedup_dupset_find(const MemdedupDupSet *set, uint32_t fp)
{
    size_t lo = 0, hi = set->len;

    if (set->bucket) {
        uint32_t b = fp >> (32 - set->bucket_bits);
        size_t i;

        /* About four entries a bucket: a scan beats a binary search. */
        lo = set->bucket[b];
        hi = set->bucket[b + 1];
        for (i = lo; i < hi; i++) {
            if (set->fps[i] >= fp) {
                return set->fps[i] == fp ? (ssize_t)i : -1;
            }
        }
        return -1;
    }

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (set->fps[mid] < fp) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return (lo < set->len && set->fps[lo] == fp) ? (ssize_t)lo : -1;
}
