/*
 * memdedup: the Bloom filter of the cross-VM board
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * A blocked Bloom filter: the probes of one fingerprint all fall in one
 * 64-byte line of the filter, chosen by one hash (scaled to the number of
 * lines, so a filter need not be a power of two), so a lookup costs one
 * cache miss -- which the caller can start early (memdedup_bloom_line)
 * -- instead of one per probe in a filter of megabytes.  At 16 bits per
 * fingerprint and 8 probes the false-positive rate is about 0.09 %
 * (an unblocked filter: 0.05 %); /memdedup/board/bloom measures it.
 */

#include "qemu/osdep.h"
#include <math.h>
#include "qemu/host-utils.h"
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
 * Where @fp's bits are, in any filter (memdedup_bloom_base places it in
 * one): its line from one mix, the high half of which is scaled to the
 * filter's number of lines; and one bit in each 64-bit word of the line
 * (a "split block"), 6 bits each from a second mix, so that no two
 * probes share a bit.  Measured with 16 filter bits per fingerprint:
 * 0.09 % false positives; double hashing inside the line gave 0.2 %.
 */
MemdedupBloomKey memdedup_bloom_key(uint32_t fp)
{
    uint64_t h = memdedup_bloom_mix(fp);

    return (MemdedupBloomKey) {
        .line = h >> 32,
        .probes = memdedup_bloom_mix(h),
    };
}

/* The first bit of @key's line in a filter of @bits bits. */
static inline uint64_t memdedup_bloom_base(uint64_t bits, MemdedupBloomKey key)
{
    uint64_t line_bits = MIN(bits, MEMDEDUP_BLOOM_LINE_BITS);

    return (((uint64_t)key.line * (bits / line_bits)) >> 32) * line_bits;
}

/* Bit @i of the probes of a line starting at bit @base. */
static inline uint64_t memdedup_bloom_bit(uint64_t bits, uint64_t base,
                                          uint64_t probes, unsigned i)
{
    return base + (i * 64) % MIN(bits, MEMDEDUP_BLOOM_LINE_BITS) +
           ((probes >> (6 * i)) & 63);
}

const uint8_t *memdedup_bloom_line_key(const uint8_t *filter, uint64_t bits,
                                       MemdedupBloomKey key)
{
    return filter + memdedup_bloom_base(bits, key) / 8;
}

const uint8_t *memdedup_bloom_line(const uint8_t *filter, uint64_t bits,
                                   uint32_t fp)
{
    return memdedup_bloom_line_key(filter, bits, memdedup_bloom_key(fp));
}

void memdedup_bloom_add(uint8_t *filter, uint64_t bits, uint32_t fp)
{
    MemdedupBloomKey key = memdedup_bloom_key(fp);
    uint64_t base = memdedup_bloom_base(bits, key);
    unsigned i;

    for (i = 0; i < MEMDEDUP_BLOOM_PROBES; i++) {
        uint64_t pos = memdedup_bloom_bit(bits, base, key.probes, i);
        filter[pos / 8] |= 1 << (pos % 8);
    }
}

bool memdedup_bloom_test_key(const uint8_t *filter, uint64_t bits,
                             MemdedupBloomKey key)
{
    uint64_t base = memdedup_bloom_base(bits, key);
    unsigned i;

    for (i = 0; i < MEMDEDUP_BLOOM_PROBES; i++) {
        uint64_t pos = memdedup_bloom_bit(bits, base, key.probes, i);

        if (!(filter[pos / 8] & (1 << (pos % 8)))) {
            return false;
        }
    }
    return true;
}

bool memdedup_bloom_test(const uint8_t *filter, uint64_t bits, uint32_t fp)
{
    return memdedup_bloom_test_key(filter, bits, memdedup_bloom_key(fp));
}

/*
 * The false-positive rate of a filter made from @pages fingerprints in
 * @bits bits: a fingerprint's line holds X others, X ~ Poisson(pages /
 * lines), and each of its probe bits is set with probability
 * 1 - (63/64)^X, one word of the line each.
 */
static double memdedup_bloom_expected_fp(uint64_t pages, uint64_t bits)
{
    double lambda = (double)pages * MEMDEDUP_BLOOM_LINE_BITS / bits;
    double p = exp(-lambda), fp = 0;
    uint64_t x, last = lambda + 12 * sqrt(lambda) + 32;

    for (x = 0; x <= last; x++) {
        fp += p * pow(1 - pow(63.0 / 64, x), MEMDEDUP_BLOOM_PROBES);
        p *= lambda / (x + 1);
    }
    return fp;
}

/*
 * Could an honest publisher have made @filter (@bits bits, whole lines)
 * from @pages fingerprints?  Two bounds, both computed in one read:
 *  - the bits set: a bit stays clear with probability
 *    exp(-pages * probes / bits) whatever the lines' load, so at most
 *    10 % more than the expected fill, plus 2 % of the bits, may be set
 *    (an all-ones filter is refused);
 *  - what a lookup would match, which is what a peer could steer: the
 *    filter's own false-positive rate, the mean over its lines of the
 *    product of each word's share of set bits, may be at most twice an
 *    honest filter's, plus 0.5 %.  A filter whose set bits are packed
 *    into some lines would match far more than its fill says.
 * Honest filters pass with a wide margin: at 16 bits per page the
 * expected fill is 39 % and the false-positive rate 0.1 %; a one-line
 * filter of 32 pages has a spread of 2 % of its bits.
 */
bool memdedup_bloom_plausible(const uint8_t *filter, uint64_t bits,
                              uint64_t pages)
{
    double fill = 1.0 - exp(-(double)pages * MEMDEDUP_BLOOM_PROBES /
                            (double)bits);
    uint64_t lines = bits / MEMDEDUP_BLOOM_LINE_BITS, set = 0, i, w;
    double matched = 0;

    if (!lines || bits % MEMDEDUP_BLOOM_LINE_BITS) {
        return false;
    }
    for (i = 0; i < lines; i++) {
        double p = 1;

        for (w = 0; w < MEMDEDUP_BLOOM_LINE_BITS / 64; w++) {
            uint64_t word;
            int n;

            memcpy(&word, filter + i * 64 + w * 8, sizeof(word));
            n = ctpop64(word);
            set += n;
            p *= n / 64.0;
        }
        matched += p;
    }
    return set <= (fill * 1.1 + 0.02) * bits &&
           matched / lines <= 2 * memdedup_bloom_expected_fp(pages, bits) +
                              0.005;
}
