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
#include "sysemu/memdedup.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

uint32_t memdedup_page_fingerprint(const void *page, size_t size,
                                   uint64_t seed)
{
    uint64_t h = XXH3_64bits_withSeed(page, size, seed);
    uint32_t fp = (uint32_t)(h ^ (h >> 32));

    /* Keep clear of the reserved values. */
    return fp <= MEMDEDUP_FP_ZERO ? fp + 2 : fp;
}

uint32_t memdedup_page_classify(const void *page, size_t size, uint64_t seed)
{
    if (buffer_is_zero(page, size)) {
        return MEMDEDUP_FP_ZERO;
    }
    return memdedup_page_fingerprint(page, size, seed);
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

        lo = set->bucket[b];
        hi = set->bucket[b + 1];
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
