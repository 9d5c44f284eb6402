/*
 * memdedup: the page hash compiled for AVX2
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * QEMU is built for baseline x86-64, where XXH3 runs on SSE2.  This copy
 * of XXH3 is compiled for AVX2 (meson builds this file alone with -mavx2,
 * and only where QEMU's configure found AVX2 support: CONFIG_AVX2_OPT)
 * and chosen at run time when the CPU (and the kernel, through XSAVE)
 * supports it: on the development machine it hashes resident guest pages
 * about twice as fast.  XXH3's result does not depend on the instruction
 * set, so fingerprints stay comparable with those of other processes
 * (the board, migration hints).  Nothing else lives in this file: every
 * instruction here may be AVX2.
 */

#include "qemu/osdep.h"
#include "memdedup-core.h"

#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_AVX2
#include <xxhash.h>
#include "index-xxh3.h"

uint64_t memdedup_xxh3_avx2(const void *data, size_t len, uint64_t seed,
                            const void *secret)
{
    return memdedup_xxh3_inline(data, len, seed, secret);
}
