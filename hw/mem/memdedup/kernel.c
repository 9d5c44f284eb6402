/*
 * memdedup: what the kernel says about KSM
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * Readers and parsers for the kernel files the engine reads back:
 * /proc/self/ksm_stat (process counters), /sys/kernel/mm/ksm (host
 * settings, read only: they belong to the host administrator),
 * /proc/self/smaps (per-VMA "KSM:" merged kB; readable unprivileged, and
 * every registered range is its own VMA) and /proc/meminfo (admission
 * control); page by page through pagemap, kpageflags and kpagecount in
 * kernel-pages.c.  Anything unreadable is reported as unavailable,
 * never treated as fatal.  Parsers take text so the unit test feeds them.
 */

#include "qemu/osdep.h"
#include "qemu/atomic.h"
#include "qemu/timer.h"
#include "qemu/cutils.h"
#include "memdedup-core.h"

#define MEMDEDUP_KSM_SYSFS "/sys/kernel/mm/ksm"

/*
 * Where the KSM files are read: tests fake a host without KSM with the
 * memdedup object's x-ksm-sysfs.  Interned strings are never freed, so
 * readers in any thread need no lock.
 */
static const char *memdedup_ksm_sysfs = MEMDEDUP_KSM_SYSFS;

const char *memdedup_ksm_sysfs_dir(void)
{
    return qatomic_read(&memdedup_ksm_sysfs);
}

void memdedup_set_ksm_sysfs_dir(const char *dir)
{
    qatomic_set(&memdedup_ksm_sysfs, dir ? g_intern_string(dir) :
                                           MEMDEDUP_KSM_SYSFS);
}

bool memdedup_host_has_ksm(void)
{
    g_autofree char *run = g_build_filename(memdedup_ksm_sysfs_dir(), "run",
                                            NULL);

    return access(run, R_OK) == 0;
}

bool memdedup_parse_ksm_knob(const char *text, uint64_t *value)
{
    const char *p = text, *end;
    uint64_t v;

    while (*p == ' ' || *p == '\t') {
        p++;
    }
    /* Unsigned decimal only: strtoull would turn "-1" into 2^64 - 1. */
    if (!g_ascii_isdigit(*p) || qemu_strtou64(p, &end, 10, &v) != 0) {
        return false;
    }
    while (*end == ' ' || *end == '\t' || *end == '\n') {
        end++;
    }
    if (*end) {
        return false;
    }
    *value = v;
    return true;
}

/* A file holding one unsigned decimal number. */
static bool memdedup_read_number(const char *path, uint64_t *value)
{
    g_autofree char *text = NULL;

    return g_file_get_contents(path, &text, NULL, NULL) &&
           memdedup_parse_ksm_knob(text, value);
}

bool memdedup_read_ksm_knob(const char *name, uint64_t *value)
{
    g_autofree char *path = g_build_filename(memdedup_ksm_sysfs_dir(), name,
                                             NULL);

    return memdedup_read_number(path, value);
}

uint32_t memdedup_read_vma_budget(void)
{
    uint64_t max = MEMDEDUP_MAX_MAP_COUNT_DEFAULT;

    if (!memdedup_read_number("/proc/sys/vm/max_map_count", &max) || !max) {
        max = MEMDEDUP_MAX_MAP_COUNT_DEFAULT;
    }
    return MIN(max, INT32_MAX) * MEMDEDUP_VMA_BUDGET_PERCENT / 100;
}

uint64_t memdedup_read_thp_size(void)
{
    uint64_t size;

    if (!memdedup_read_number("/sys/kernel/mm/transparent_hugepage/"
                              "hpage_pmd_size", &size) || !size) {
        size = 2 * MiB;
    }
    return size;
}

/* Find the line "@name value" (or "@name: value"); false if absent. */
static bool memdedup_find_field(const char *text, const char *name,
                                int64_t *value)
{
    size_t len = strlen(name);
    const char *p = text;

    while (p && *p) {
        if (!strncmp(p, name, len) && (p[len] == ' ' || p[len] == ':' ||
                                       p[len] == '\t')) {
            const char *v = p + len;
            const char *end;
            while (*v == ' ' || *v == ':' || *v == '\t') {
                v++;
            }
            /* Trailing text ("kB", the next line) is fine: pass @end. */
            return qemu_strtoi64(v, &end, 10, value) == 0 && end != v;
        }
        p = strchr(p, '\n');
        p = p ? p + 1 : NULL;
    }
    return false;
}

bool memdedup_parse_ksm_stat(const char *text, MemdedupKsmStat *stat)
{
    bool any = false;

    stat->rmap_items = stat->zero_pages = stat->merging_pages = -1;
    stat->process_profit = 0;
    stat->has_process_profit = false;

    any |= memdedup_find_field(text, "ksm_rmap_items", &stat->rmap_items);
    any |= memdedup_find_field(text, "ksm_zero_pages", &stat->zero_pages);
    any |= memdedup_find_field(text, "ksm_merging_pages",
                               &stat->merging_pages);
    stat->has_process_profit = memdedup_find_field(text, "ksm_process_profit",
                                                   &stat->process_profit);
    return any || stat->has_process_profit;
}

bool memdedup_read_ksm_stat(MemdedupKsmStat *stat)
{
    g_autofree char *text = NULL;
    uint64_t merging;

    if (!g_file_get_contents("/proc/self/ksm_stat", &text, NULL, NULL) ||
        !memdedup_parse_ksm_stat(text, stat)) {
        return false;
    }
    /* Older kernels (6.1) keep the merged pages in a file of their own. */
    if (stat->merging_pages < 0 &&
        memdedup_read_number("/proc/self/ksm_merging_pages", &merging) &&
        merging <= INT64_MAX) {
        stat->merging_pages = merging;
    }
    return true;
}

GStrv memdedup_parse_stat_fields(const char *text)
{
    GPtrArray *names = g_ptr_array_new();
    const char *line = text;
    int n = 0;

    while (line && *line && n < MEMDEDUP_STAT_FIELDS_MAX) {
        const char *end = line, *v;

        while (g_ascii_islower(*end) || g_ascii_isdigit(*end) ||
               *end == '_') {
            end++;
        }
        for (v = end; *v == ' ' || *v == ':' || *v == '\t'; v++) {
            /* to the value */
        }
        if (end > line && end - line <= MEMDEDUP_STAT_FIELD_LEN &&
            v > end && (g_ascii_isalnum(*v) || *v == '-')) {
            g_ptr_array_add(names, g_strndup(line, end - line));
            n++;
        }
        line = strchr(line, '\n');
        line = line ? line + 1 : NULL;
    }
    g_ptr_array_add(names, NULL);
    return (GStrv)g_ptr_array_free(names, false);
}

char *memdedup_parse_selected(const char *text)
{
    const char *open = strchr(text, '['), *close, *p;

    if (!open) {
        return NULL;
    }
    close = strchr(open + 1, ']');
    if (!close || close == open + 1 || close - open - 1 > 32) {
        return NULL;
    }
    for (p = open + 1; p < close; p++) {
        if (!g_ascii_isalnum(*p) && *p != '-' && *p != '_') {
            return NULL;
        }
    }
    return g_strndup(open + 1, close - open - 1);
}

bool memdedup_process_has_merged_pages(const MemdedupKsmStat *stat)
{
    MemdedupKsmStat read;

    if (!stat) {
        if (!memdedup_read_ksm_stat(&read)) {
            return true;        /* no way to tell */
        }
        stat = &read;
    }
    if (stat->merging_pages != 0) {
        return true;            /* merged pages, or no way to tell */
    }
    return stat->zero_pages > 0;
}

bool memdedup_parse_meminfo(const char *text, uint64_t *mem_available,
                            uint64_t *mem_total)
{
    int64_t avail_kb, total_kb;

    if (!memdedup_find_field(text, "MemAvailable", &avail_kb) ||
        !memdedup_find_field(text, "MemTotal", &total_kb) ||
        avail_kb < 0 || total_kb < 0 ||
        avail_kb > INT64_MAX / KiB || total_kb > INT64_MAX / KiB) {
        return false;
    }
    *mem_available = (uint64_t)avail_kb * KiB;
    *mem_total = (uint64_t)total_kb * KiB;
    return true;
}

bool memdedup_read_meminfo(const char *path, uint64_t *mem_available,
                           uint64_t *mem_total)
{
    g_autofree char *text = NULL;

    if (!g_file_get_contents(path ? path : "/proc/meminfo", &text, NULL,
                             NULL)) {
        return false;
    }
    return memdedup_parse_meminfo(text, mem_available, mem_total);
}

/* "start-end " at the start of @line, both hexadecimal, no blanks. */
static bool memdedup_parse_vma_header(const char *line, uint64_t *start,
                                      uint64_t *end)
{
    const char *p;

    if (!g_ascii_isxdigit(line[0]) ||
        qemu_strtou64(line, &p, 16, start) || *p != '-' ||
        !g_ascii_isxdigit(p[1]) ||
        qemu_strtou64(p + 1, &p, 16, end) || *p != ' ') {
        return false;
    }
    return true;
}

static int memdedup_smaps_vma_cmp(gconstpointer a, gconstpointer b)
{
    const MemdedupSmapsVma *va = a, *vb = b;

    return va->start < vb->start ? -1 : va->start > vb->start;
}

void memdedup_smaps_view_parse(MemdedupSmapsView *view, const char *text)
{
    const char *line = text;
    MemdedupSmapsVma vma = { 0 };
    bool in_vma = false;
    guint i, kept = 0;

    memdedup_smaps_view_clear(view);
    view->vmas = g_array_new(false, false, sizeof(MemdedupSmapsVma));

    while (line && *line) {
        const char *next = strchr(line, '\n');
        uint64_t s, e;
        int64_t kb;

        /*
         * A VMA header: "start-end perms offset dev inode [path]".  Not
         * sscanf: it takes the length of the whole remaining text on
         * every call, which made parsing quadratic in the number of VMAs.
         */
        if (memdedup_parse_vma_header(line, &s, &e)) {
            if (in_vma) {
                g_array_append_val(view->vmas, vma);
            }
            /* A malformed range is no VMA: its lines are ignored. */
            in_vma = s < e;
            vma = (MemdedupSmapsVma) { .start = s, .end = e };
        } else if (!strncmp(line, "KSM:", 4)) {
            view->has_ksm = true;
            /* The kernel never reports more than the VMA's size. */
            if (in_vma && memdedup_find_field(line, "KSM", &kb) && kb > 0) {
                vma.ksm_bytes = MIN((uint64_t)kb, (vma.end - vma.start) / KiB) *
                                KiB;
            }
        } else if (!strncmp(line, "VmFlags:", 8) && in_vma) {
            /* Flags are two-letter words; "mg" is VM_MERGEABLE. */
            const char *end_of_line = next ? next : line + strlen(line);
            const char *p;
            for (p = line + 8; p + 2 <= end_of_line; p++) {
                if (p[0] == 'm' && p[1] == 'g' && p[-1] == ' ' &&
                    (p + 2 == end_of_line || p[2] == ' ')) {
                    vma.mergeable = true;
                    break;
                }
            }
        }
        line = next ? next + 1 : NULL;
    }
    if (in_vma) {
        g_array_append_val(view->vmas, vma);
    }
    /*
     * The kernel lists VMAs in address order, none overlapping; any other
     * text is sorted, and a VMA overlapping the one before is dropped, so
     * that lookups may search by start and by end alike.
     */
    g_array_sort(view->vmas, memdedup_smaps_vma_cmp);
    for (i = 0; i < view->vmas->len; i++) {
        MemdedupSmapsVma *v = &g_array_index(view->vmas, MemdedupSmapsVma, i);

        if (!kept || v->start >= g_array_index(view->vmas, MemdedupSmapsVma,
                                               kept - 1).end) {
            g_array_index(view->vmas, MemdedupSmapsVma, kept++) = *v;
        }
    }
    g_array_set_size(view->vmas, kept);
}

bool memdedup_smaps_view_read(MemdedupSmapsView *view)
{
    g_autofree char *text = NULL;

    memdedup_smaps_view_clear(view);
    if (g_file_get_contents("/proc/self/smaps", &text, NULL, NULL)) {
        memdedup_smaps_view_parse(view, text);
    }
    view->read = true;
    return text != NULL;
}

bool memdedup_smaps_view_read_merged(MemdedupSmapsView *view,
                                     const MemdedupKsmStat *stat)
{
    if (memdedup_process_has_merged_pages(stat)) {
        return memdedup_smaps_view_read(view);
    }
    memdedup_smaps_view_clear(view);
    view->read = true;
    view->has_ksm = true;
    return true;
}

/* Index of the first VMA of @view that ends after @addr. */
static size_t memdedup_smaps_view_find(const MemdedupSmapsView *view,
                                       uint64_t addr)
{
    size_t lo = 0, hi = view->vmas ? view->vmas->len : 0;

    /* Sorted and not overlapping (see the parse): ends ascend too. */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (g_array_index(view->vmas, MemdedupSmapsVma, mid).end <= addr) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

void memdedup_smaps_view_sum(const MemdedupSmapsView *view, uint64_t start,
                             uint64_t end, uint64_t *ksm_bytes,
                             uint64_t *mergeable_vmas,
                             uint64_t *mergeable_bytes)
{
    size_t i;

    *ksm_bytes = *mergeable_vmas = *mergeable_bytes = 0;
    for (i = memdedup_smaps_view_find(view, start);
         view->vmas && i < view->vmas->len; i++) {
        const MemdedupSmapsVma *vma = &g_array_index(view->vmas,
                                                     MemdedupSmapsVma, i);

        if (vma->start >= end) {
            break;
        }
        if (vma->start < start || vma->end > end) {
            continue;
        }
        *ksm_bytes += vma->ksm_bytes;
        if (vma->mergeable) {
            (*mergeable_vmas)++;
            *mergeable_bytes += vma->end - vma->start;
        }
    }
}

uint64_t memdedup_smaps_view_merged_bound(const MemdedupSmapsView *view,
                                          uint64_t start, uint64_t end)
{
    uint64_t bound = 0;
    size_t i;

    if (start >= end) {
        return 0;
    }
    for (i = memdedup_smaps_view_find(view, start);
         view->vmas && i < view->vmas->len; i++) {
        const MemdedupSmapsVma *vma = &g_array_index(view->vmas,
                                                     MemdedupSmapsVma, i);

        if (vma->start >= end) {
            break;
        }
        bound += MIN(vma->ksm_bytes,
                     MIN(vma->end, end) - MAX(vma->start, start));
    }
    return bound;
}

void memdedup_smaps_view_clear(MemdedupSmapsView *view)
{
    if (view->vmas) {
        g_array_free(view->vmas, true);
    }
    *view = (MemdedupSmapsView) { 0 };
}

bool memdedup_parse_smaps_ksm(const char *text, uint64_t start, uint64_t end,
                              uint64_t *ksm_bytes, uint64_t *mergeable_vmas,
                              uint64_t *mergeable_bytes)
{
    g_auto(MemdedupSmapsView) view = { 0 };

    memdedup_smaps_view_parse(&view, text);
    memdedup_smaps_view_sum(&view, start, end, ksm_bytes, mergeable_vmas,
                            mergeable_bytes);
    return view.has_ksm;
}

/*
 * Refusals injected by tests (the memdedup object's x-madvise-fault):
 * every (@memdedup_madvise_fault_always), or the next
 * @memdedup_madvise_fault_left (it may go below 0), MADV_MERGEABLE and
 * MADV_UNMERGEABLE calls fail with errno @memdedup_madvise_fault_err,
 * without calling the kernel.  Written by memdedup_madvise_set_fault
 * (main thread), read by any thread: atomics.
 */
static int memdedup_madvise_fault_err;
static bool memdedup_madvise_fault_always;
static int64_t memdedup_madvise_fault_left;

bool memdedup_parse_madvise_fault(const char *spec, int *err, int64_t *count)
{
    static const struct {
        const char *name;
        int err;
    } names[] = {
        { "ENOMEM", ENOMEM }, { "EINVAL", EINVAL }, { "EAGAIN", EAGAIN },
        { "EPERM", EPERM },
    };
    size_t i;

    *err = 0;
    *count = -1;
    if (!*spec) {
        return true;
    }
    for (i = 0; i < ARRAY_SIZE(names); i++) {
        size_t len = strlen(names[i].name);
        uint64_t n;

        if (strncmp(spec, names[i].name, len)) {
            continue;
        }
        if (spec[len] == ':') {
            if (qemu_strtou64(spec + len + 1, NULL, 10, &n) || n > INT64_MAX) {
                return false;
            }
            *count = n;
        } else if (spec[len]) {
            return false;
        }
        *err = names[i].err;
        return true;
    }
    return false;
}

void memdedup_madvise_set_fault(int err, int64_t count)
{
    qatomic_set(&memdedup_madvise_fault_always, count < 0);
    qatomic_set(&memdedup_madvise_fault_left, count);
    qatomic_set(&memdedup_madvise_fault_err, err);
}

int memdedup_madvise(void *addr, size_t len, int advice)
{
    int err = qatomic_read(&memdedup_madvise_fault_err);

    if (err && (advice == MADV_MERGEABLE || advice == MADV_UNMERGEABLE) &&
        (qatomic_read(&memdedup_madvise_fault_always) ||
         qatomic_fetch_dec(&memdedup_madvise_fault_left) > 0)) {
        errno = err;
        return -1;
    }
    return madvise(addr, len, advice);
}

uint64_t memdedup_thread_cpu_ns(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)) {
        return 0;
    }
    return ts.tv_sec * NANOSECONDS_PER_SECOND + ts.tv_nsec;
}

/* A path from /proc/self/cgroup we will join to a mount point. */
static char *memdedup_cgroup_path_checked(const char *path)
{
    if (path[0] != '/' || strstr(path, "/..") || strchr(path, '\n')) {
        return NULL;
    }
    return g_strdup(path);
}

void memdedup_parse_proc_cgroup(const char *text, char **v2_path,
                                char **v1_path)
{
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    size_t i;

    *v2_path = *v1_path = NULL;
    for (i = 0; lines[i]; i++) {
        /* "hierarchy-id:controller-list:path"; the path may hold ':'. */
        g_auto(GStrv) f = g_strsplit(lines[i], ":", 3);
        g_auto(GStrv) controllers = NULL;

        if (g_strv_length(f) != 3) {
            continue;
        }
        if (!strcmp(f[0], "0") && !f[1][0]) {
            if (!*v2_path) {
                *v2_path = memdedup_cgroup_path_checked(f[2]);
            }
            continue;
        }
        controllers = g_strsplit(f[1], ",", -1);
        if (!*v1_path &&
            g_strv_contains((const gchar * const *)controllers, "memory")) {
            *v1_path = memdedup_cgroup_path_checked(f[2]);
        }
    }
}

/* A limit at or above this is none (v1 reports 2^63 less a page). */
#define MEMDEDUP_CGROUP_UNLIMITED (1ull << 62)

/*
 * Walk from @path up to the root of the hierarchy mounted at @mount, and
 * keep in @headroom, @limit and @where the cgroup with the least room
 * below its limit (@max_file), given its usage (@usage_file), unless one
 * with less room was @found already.  Returns whether one was found.
 */
static bool memdedup_cgroup_walk(const char *mount, const char *path,
                                 const char *max_file, const char *usage_file,
                                 bool found, uint64_t *headroom,
                                 uint64_t *limit, char **where)
{
    g_autofree char *rel = g_strdup(path);

    for (;;) {
        g_autofree char *dir = g_build_filename(mount, rel, NULL);
        g_autofree char *max_path = g_build_filename(dir, max_file, NULL);
        g_autofree char *usage_path = g_build_filename(dir, usage_file, NULL);
        uint64_t max, usage;
        char *slash;

        /* "max" (no limit) does not parse: nothing to keep. */
        if (memdedup_read_number(max_path, &max) &&
            max < MEMDEDUP_CGROUP_UNLIMITED &&
            memdedup_read_number(usage_path, &usage)) {
            uint64_t room = max > usage ? max - usage : 0;

            if (!found || room < *headroom) {
                *headroom = room;
                *limit = max;
                g_free(*where);
                *where = g_strdup(dir);
                found = true;
            }
        }
        slash = strrchr(rel, '/');
        if (!slash || !rel[1]) {
            return found;
        }
        slash[slash == rel] = '\0';    /* "/a" becomes "/", "/a/b" "/a" */
    }
}

bool memdedup_read_cgroup_headroom(uint64_t *headroom, uint64_t *limit,
                                   char **where)
{
    g_autofree char *text = NULL;
    g_autofree char *v2 = NULL;
    g_autofree char *v1 = NULL;
    bool found = false;

    *where = NULL;
    if (!g_file_get_contents("/proc/self/cgroup", &text, NULL, NULL)) {
        return false;
    }
    memdedup_parse_proc_cgroup(text, &v2, &v1);
    if (v2) {
        /* The unified hierarchy at the top, or beside v1 controllers. */
        const char *mount = access("/sys/fs/cgroup/cgroup.controllers",
                                   R_OK) == 0 ? "/sys/fs/cgroup" :
                            "/sys/fs/cgroup/unified";

        found = memdedup_cgroup_walk(mount, v2, "memory.max",
                                     "memory.current", found, headroom,
                                     limit, where);
    }
    if (v1) {
        found = memdedup_cgroup_walk("/sys/fs/cgroup/memory", v1,
                                     "memory.limit_in_bytes",
                                     "memory.usage_in_bytes", found,
                                     headroom, limit, where);
    }
    return found;
}
