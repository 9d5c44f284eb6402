/*
 * libFuzzer target: memdedup's parsers of kernel files
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * The engine reads /proc/self/ksm_stat, /sys/kernel/mm/ksm values,
 * /proc/meminfo, /proc/self/smaps and pagemap + kpageflags records.  The
 * kernel writes them, but their format varies across versions and a test
 * may point the engine at files of its own: every parser must take any
 * bytes without crashing, reading out of bounds or overflowing, and its
 * results must keep the invariants checked below.  Each input goes
 * through every parser.  Built and run by scripts/memdedup/fuzz.sh.
 */

#include "qemu/osdep.h"
#include "qemu/units.h"
#include "../../../hw/mem/memdedup/memdedup-core.h"
#include "fuzz.h"

#define PAGE 4096

/*
 * The bound on a window's merged bytes: at least what the VMAs inside
 * hold (@inside), at most the window.
 */
static void fuzz_merged_bound(const char *text, uint64_t start, uint64_t end,
                              uint64_t inside)
{
    g_auto(MemdedupSmapsView) view = { 0 };
    uint64_t bound;

    memdedup_smaps_view_parse(&view, text);
    bound = memdedup_smaps_view_merged_bound(&view, start, end);
    g_assert_cmpuint(bound, >=, inside);
    g_assert_cmpuint(bound, <=, (end > start ? end - start : 0));
}

/* Cgroup paths taken are absolute and never climb out of the mount. */
static void fuzz_proc_cgroup(const char *text)
{
    g_autofree char *v2 = NULL;
    g_autofree char *v1 = NULL;

    memdedup_parse_proc_cgroup(text, &v2, &v1);
    g_assert(!v2 || (v2[0] == '/' && !strstr(v2, "/..")));
    g_assert(!v1 || (v1[0] == '/' && !strstr(v1, "/..")));
}

static void fuzz_text_parsers(const char *text, const uint8_t *data,
                              size_t size)
{
    MemdedupKsmStat stat;
    uint64_t value, available, total, ksm, vmas, mergeable;
    uint64_t start = 0, end = UINT64_MAX;

    if (memdedup_parse_ksm_stat(text, &stat)) {
        g_assert(stat.rmap_items >= -1 || strstr(text, "ksm_rmap_items"));
    }

    if (memdedup_parse_ksm_knob(text, &value)) {
        /* Accepted: a plain decimal number, and exactly that number. */
        const char *p = text;
        while (*p == ' ' || *p == '\t') {
            p++;
        }
        g_assert(g_ascii_isdigit(*p));
        g_assert_cmpuint(g_ascii_strtoull(p, NULL, 10), ==, value);
    }

    if (memdedup_parse_meminfo(text, &available, &total)) {
        /* kB, converted without overflow. */
        g_assert_cmpuint(available % KiB, ==, 0);
        g_assert_cmpuint(total % KiB, ==, 0);
        g_assert_cmpuint(available, <=, INT64_MAX);
        g_assert_cmpuint(total, <=, INT64_MAX);
    }

    /* The whole address space, then a window taken from the input. */
    memdedup_parse_smaps_ksm(text, start, end, &ksm, &vmas, &mergeable);
    g_assert_cmpuint(ksm % KiB, ==, 0);
    if (size >= 16) {
        memcpy(&start, data, 8);
        memcpy(&end, data + 8, 8);
        memdedup_parse_smaps_ksm(text, start, end, &ksm, &vmas, &mergeable);
        /* Each VMA counted lies inside the window. */
        g_assert((unsigned __int128)mergeable <=
                 (unsigned __int128)vmas * (end > start ? end - start : 0));
        if (start >= end) {
            /* An empty window holds no VMA. */
            g_assert_cmpuint(ksm, ==, 0);
            g_assert_cmpuint(vmas, ==, 0);
            g_assert_cmpuint(mergeable, ==, 0);
        }
        fuzz_merged_bound(text, start, end, ksm);
    }
    fuzz_proc_cgroup(text);
}

/* A memfd holding @len bytes of @data, for the pread-based reader. */
static int fuzz_file(const char *name, const uint8_t *data, size_t len)
{
    int fd = memfd_create(name, MFD_CLOEXEC);

    g_assert(fd >= 0);
    g_assert(write(fd, data, len) == (ssize_t)len);
    return fd;
}

/*
 * pagemap and kpageflags records: the first two bytes say how many
 * pagemap entries follow (at most 256); the rest is kpageflags.
 */
static void fuzz_page_records(const uint8_t *data, size_t size)
{
    size_t entries, pm_len;
    int pagemap, kpageflags;
    int64_t ksm;

    if (size < 2) {
        return;
    }
    entries = (data[0] | data[1] << 8) % 257;
    data += 2;
    size -= 2;
    pm_len = MIN(entries * 8, size - size % 8);
    pagemap = fuzz_file("pagemap", data, pm_len);
    kpageflags = fuzz_file("kpageflags", data + pm_len, size - pm_len);

    /* Asks for @entries pages; the file may hold fewer (a failed read). */
    ksm = memdedup_count_ksm_pages(pagemap, kpageflags, 0, entries * PAGE);
    g_assert_cmpint(ksm, >=, -1);
    g_assert_cmpint(ksm, <=, (int64_t)entries);
    if (pm_len < entries * 8) {
        g_assert_cmpint(ksm, ==, -1);
    }
    /* The same bytes as kpagecount: any count gives a share below 1. */
    if (ksm >= 0) {
        MemdedupKsmShares shares = { 0 };

        if (memdedup_count_ksm_shares(pagemap, kpageflags, kpageflags, 0,
                                      entries * PAGE, &shares)) {
            g_assert_cmpuint(shares.pages, ==, ksm);
            g_assert_cmpuint(shares.attributed, <=,
                             shares.pages * MEMDEDUP_SHARE_UNIT);
        }
    }
    close(pagemap);
    close(kpageflags);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    g_autofree char *text = g_strndup((const char *)data, size);

    fuzz_text_parsers(text, data, size);
    fuzz_page_records(data, size);
    return 0;
}
