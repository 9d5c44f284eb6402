/*
 * memdedup: which kernel interfaces this host has
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * Feature detection, never version checks: every kernel interface the
 * engine uses is tried once when the engine starts (the per-process
 * ones) or looked up when asked (KSM's sysfs files, which the host
 * administrator owns and tests may point elsewhere with x-ksm-sysfs).
 * What a kernel lacks makes a figure absent or tells the engine to take
 * a fallback; the kernel release is only shown to the operator.
 */

#include "qemu/osdep.h"
#include <sys/utsname.h>
#include "qemu/atomic.h"
#include "qapi/qapi-types-memdedup.h"
#include "memdedup-internal.h"

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

/* Is @advice known to this kernel?  A zero-length madvise answers 0. */
static bool memdedup_advice_known(int advice)
{
    void *page = mmap(NULL, qemu_real_host_page_size(), PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    bool known;

    if (page == MAP_FAILED) {
        return false;
    }
    known = madvise(page, 0, advice) == 0;
    munmap(page, qemu_real_host_page_size());
    return known;
}

void memdedup_features_probe(MemdedupEngine *engine)
{
    MemdedupFeatures *f = &engine->features;
    g_autofree char *stat = NULL;
    struct utsname uts;

    f->release = g_strdup(uname(&uts) == 0 ? uts.release : "unknown");
    f->ksm_stat = g_file_get_contents("/proc/self/ksm_stat", &stat, NULL,
                                      NULL);
    f->ksm_stat_fields = memdedup_parse_stat_fields(stat ? stat : "");
    f->merging_pages_file = access("/proc/self/ksm_merging_pages",
                                   R_OK) == 0;
    f->madv_collapse = memdedup_advice_known(MADV_COLLAPSE);
    memdedup_probe_pagemap_scan(engine);
    f->probed = true;
}

/* Does KSM's sysfs directory (or x-ksm-sysfs) have @name? */
static bool memdedup_ksm_has(const char *name)
{
    g_autofree char *path = g_build_filename(memdedup_ksm_sysfs_dir(), name,
                                             NULL);

    return access(path, R_OK) == 0;
}

MemdedupKernelFeatures *memdedup_features_query(MemdedupEngine *engine)
{
    MemdedupKernelFeatures *k = g_new0(MemdedupKernelFeatures, 1);
    const MemdedupFeatures *f = &engine->features;
    strList **tail = &k->ksm_stat_fields;
    g_autofree char *thp = NULL;
    char **field;

    k->release = g_strdup(f->release);
    k->ksm = memdedup_host_has_ksm();
    k->ksm_stat = f->ksm_stat;
    for (field = f->ksm_stat_fields; field && *field; field++) {
        QAPI_LIST_APPEND(tail, g_strdup(*field));
    }
    k->merging_pages_file = f->merging_pages_file;
    k->ksm_zero_pages = memdedup_ksm_has("ksm_zero_pages");
    k->general_profit = memdedup_ksm_has("general_profit");
    k->smart_scan = memdedup_ksm_has("smart_scan");
    k->advisor = memdedup_ksm_has("advisor_mode");
    k->pagemap_scan = qatomic_read(&engine->pagemap_scan);
    k->madv_collapse = f->madv_collapse;
    k->pfns = engine->pfns_visible;
    k->kpageflags = engine->kpageflags_fd >= 0;
    k->kpagecount = engine->kpagecount_fd >= 0;
    if (engine->pfns_visible) {
        k->has_zero_page_on_read = k->has_huge_zero_page = true;
        k->zero_page_on_read = engine->zero_pfn != 0;
        k->huge_zero_page = engine->huge_zero_pfn != 0;
    }
    if (g_file_get_contents("/sys/kernel/mm/transparent_hugepage/enabled",
                            &thp, NULL, NULL)) {
        k->thp = memdedup_parse_selected(thp);
        k->has_thp = k->thp != NULL;
    }
    return k;
}
