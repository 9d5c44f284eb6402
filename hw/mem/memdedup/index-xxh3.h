/*
 * memdedup: the page hash, one definition for every instruction set
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * Included after <xxhash.h> by index.c (baseline build) and index-avx2.c
 * (compiled for AVX2), so that both compute the same thing.
 */

#ifndef HW_MEM_MEMDEDUP_INDEX_XXH3_H
#define HW_MEM_MEMDEDUP_INDEX_XXH3_H

/* XXH3-64 of @data with @seed; @secret is the one derived from @seed. */
static inline uint64_t memdedup_xxh3_inline(const void *data, size_t len,
                                            uint64_t seed,
                                            const void *secret)
{
    if (len > MEMDEDUP_XXH3_MIDSIZE_MAX) {
        return XXH3_64bits_withSecret(data, len, secret,
                                      MEMDEDUP_XXH3_SECRET_SIZE);
    }
    return XXH3_64bits_withSeed(data, len, seed);
}

#endif
