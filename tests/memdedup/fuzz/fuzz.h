/*
 * memdedup fuzz targets: the entry point libFuzzer calls
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 */

#ifndef TESTS_MEMDEDUP_FUZZ_H
#define TESTS_MEMDEDUP_FUZZ_H

/* One input; returns 0 (libFuzzer reserves other values). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
