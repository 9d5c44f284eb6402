/*
 * memdedup: the Bloom filter of the cross-VM board
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * A blocked Bloom filter: the probes of one fingerprint all fall in one
 * 64-byte line of the filter, chosen by one hash, so a lookup costs one
 * cache miss -- which the caller can start early (memdedup_bloom_line)
 * -- instead of one per probe in a filter of megabytes.  At 16 bits per
 * fingerprint and 8 probes the false-positive rate is about 0.09 %
 * (an unblocked filter: 0.05 %); /memdedup/board/bloom measures it.
 */

#include "qemu/osdep.h"
#include "qemu/atomic.h"
#include "memdedup-core.h"

#define MEMDEDUP_BLOOM_LINE_BITS    512

/* A 64-bit mix (splitmix64's finalizer) of a fingerprint. */
static inline uint64_t memdedup_bloom_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/*
 * Where @fp's bits are in a filter of @bits bits (a power of two, at
 * least 64): the first bit of its line, from one mix; and one bit in each
 * 64-bit word of the line (a "split block"), 6 bits each from a second
 * mix, so that no two probes share a bit.  Measured with 16 filter bits per
 * fingerprint: 0.09 % false positives; double hashing inside the line
 * gave 0.2 %.
 */
static inline uint64_t memdedup_bloom_where(uint64_t bits, uint32_t fp,
                                            uint64_t *probes)
{
    uint64_t h = memdedup_bloom_mix(fp);

    *probes = memdedup_bloom_mix(h);
    return ((h >> 32) & (bits / MIN(bits, MEMDEDUP_BLOOM_LINE_BITS) - 1)) *
           MIN(bits, MEMDEDUP_BLOOM_LINE_BITS);
}

/* Bit @i of the probes of a line starting at bit @base. */
static inline uint64_t memdedup_bloom_bit(uint64_t bits, uint64_t base,
                                          uint64_t probes, unsigned i)
{
    return base + (i * 64) % MIN(bits, MEMDEDUP_BLOOM_LINE_BITS) +
           ((probes >> (6 * i)) & 63);
}

const uint8_t *memdedup_bloom_line(const uint8_t *filter, uint64_t bits,
                                   uint32_t fp)
{
    uint64_t probes;

    return filter + memdedup_bloom_where(bits, fp, &probes) / 8;
}

void memdedup_bloom_add(uint8_t *filter, uint64_t bits, uint32_t fp)
{
    uint64_t probes, base = memdedup_bloom_where(bits, fp, &probes);
    unsigned i;

    for (i = 0; i < MEMDEDUP_BLOOM_PROBES; i++) {
        uint64_t pos = memdedup_bloom_bit(bits, base, probes, i);
        filter[pos / 8] |= 1 << (pos % 8);
    }
}

bool memdedup_bloom_test(const uint8_t *filter, uint64_t bits, uint32_t fp)
{
    uint64_t probes, base = memdedup_bloom_where(bits, fp, &probes);
    unsigned i;

    for (i = 0; i < MEMDEDUP_BLOOM_PROBES; i++) {
        uint64_t pos = memdedup_bloom_bit(bits, base, probes, i);
        if (!(qatomic_read(&filter[pos / 8]) & (1 << (pos % 8)))) {
            return false;
        }
    }
    return true;
}
