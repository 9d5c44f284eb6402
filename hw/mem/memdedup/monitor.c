/*
 * memdedup: QMP and HMP commands
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * query-memdedup is filled from a snapshot of the engine and its blocks
 * taken under MemdedupEngine.lock (never waiting for a running pass:
 * the scanner does not hold the lock while it hashes, reads kernel files
 * or calls madvise), plus what the kernel's files say; HMP prints it.
 */

#include "qemu/osdep.h"
#include "qemu/atomic.h"
#include "qemu/cutils.h"
#include "qemu/lockable.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-memdedup.h"
#include "monitor/hmp.h"
#include "monitor/monitor.h"
#include "memdedup-internal.h"

/* ------------------------------------------------------------------ */
/* query-memdedup                                                      */
/* ------------------------------------------------------------------ */

static MemdedupHostKsm *memdedup_query_host_ksm(void)
{
    MemdedupHostKsm *host = g_new0(MemdedupHostKsm, 1);
    static const struct {
        const char *name;
        size_t has_off, val_off;
    } knobs[] = {
#define KNOB(file, field) \
        { file, offsetof(MemdedupHostKsm, has_##field), \
          offsetof(MemdedupHostKsm, field) }
        KNOB("run", run),
        KNOB("pages_to_scan", pages_to_scan),
        KNOB("sleep_millisecs", sleep_millisecs),
        KNOB("merge_across_nodes", merge_across_nodes),
        KNOB("use_zero_pages", use_zero_pages),
        KNOB("max_page_sharing", max_page_sharing),
        KNOB("pages_shared", pages_shared),
        KNOB("pages_sharing", pages_sharing),
        KNOB("full_scans", full_scans),
        KNOB("ksm_zero_pages", ksm_zero_pages),
        KNOB("smart_scan", smart_scan),
#undef KNOB
    };
    g_autofree char *profit = NULL, *advisor = NULL, *path = NULL;
    size_t i;

    for (i = 0; i < ARRAY_SIZE(knobs); i++) {
        uint64_t value;

        if (memdedup_read_ksm_knob(knobs[i].name, &value)) {
            *(bool *)((char *)host + knobs[i].has_off) = true;
            *(uint64_t *)((char *)host + knobs[i].val_off) = value;
        }
    }
    /* general_profit may be negative: KSM's metadata costs memory too. */
    path = g_build_filename(memdedup_ksm_sysfs_dir(), "general_profit", NULL);
    if (g_file_get_contents(path, &profit, NULL, NULL)) {
        const char *end;

        host->has_general_profit =
            qemu_strtoi64(profit, &end, 10, &host->general_profit) == 0;
    }
    g_free(path);
    path = g_build_filename(memdedup_ksm_sysfs_dir(), "advisor_mode", NULL);
    if (g_file_get_contents(path, &advisor, NULL, NULL)) {
        host->advisor_mode = memdedup_parse_selected(advisor);
        host->has_advisor_mode = host->advisor_mode != NULL;
    }
    return host;
}

/* The regions cow.c reported, in its order.  Engine lock held. */
static void memdedup_query_cow_regions(MemdedupBlock *blk,
                                       MemdedupBackendInfo *bi)
{
    uint64_t region_size = blk->pages_per_region * blk->page_size;
    int64_t now = qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
    MemdedupCowRegionList **tail = &bi->cow_regions;
    size_t k;

    for (k = 0; k < blk->cow.nr_report; k++) {
        const MemdedupCowReport *c = &blk->cow.report[k];
        MemdedupCowRegion *r = g_new0(MemdedupCowRegion, 1);

        r->offset = c->region * region_size;
        r->broken_pages = c->broken;
        r->off = c->off;
        r->has_off_remaining = c->off;
        r->off_remaining = MAX(c->until - now, 0);
        r->level = c->level;
        QAPI_LIST_APPEND(tail, r);
    }
}

/* One backend's row of the reply.  Engine lock held. */
static MemdedupBackendInfo *memdedup_query_backend(MemdedupEngine *engine,
                                                   MemdedupBlock *blk)
{
    MemdedupBackendInfo *bi = g_new0(MemdedupBackendInfo, 1);
    const MemdedupSummaryStats *sum = &blk->summary;
    const MemdedupRegistrationStats *reg = &blk->registration;
    const MemdedupMergedStats *merged = &blk->merged;

    bi->id = g_strdup(blk->id);
    bi->policy = blk->params.policy;
    bi->size = blk->size;
    bi->page_size = blk->page_size;
    bi->region_size = blk->params.region_size;
    bi->duplicate_threshold = blk->params.duplicate_threshold;
    bi->cow_threshold = blk->params.cow_threshold;
    bi->cow_backoff = blk->params.cow_backoff;
    bi->resident_pages = sum->resident_pages;
    bi->scanned_pages = sum->scanned_pages;
    bi->zero_pages = sum->zero_pages;
    bi->duplicate_pages = sum->duplicate_pages;
    bi->unique_pages = sum->unique_pages;
    bi->volatile_pages = sum->volatile_pages;
    bi->candidate_regions = sum->candidate_regions;
    bi->estimated_saving = sum->estimated_saving;
    bi->cross_vm_pages = sum->cross_vm_pages;
    bi->cross_vm_regions = sum->cross_vm_regions;
    bi->registered_bytes = reg->registered_bytes;
    bi->registered_ranges = reg->registered_ranges;
    bi->huge_regions = reg->huge_regions;
    bi->unmerge_refusals = reg->unmerge_refusals;
    bi->has_cow_broken_pages = bi->has_cow_broken_pages_total =
        blk->cow.known;
    bi->cow_broken_pages = blk->cow.broken_pages;
    bi->cow_broken_pages_total = blk->cow.broken_total;
    bi->cow_backoff_regions = blk->cow.off_regions;
    memdedup_query_cow_regions(blk, bi);
    bi->hinted_regions = reg->hinted_regions;
    bi->rearmed_regions = reg->rearmed_regions;
    bi->registration_failures = qatomic_read(&blk->advise_failures);
    bi->thp_advice_failures = qatomic_read(&blk->thp_advise_failures);
    bi->vmas = qatomic_read(&blk->vmas);
    bi->vma_share = MIN(qatomic_read(&blk->vma_share),
                        qatomic_read(&blk->vma_cap));
    bi->has_kernel_merged_pages = merged->kernel_merged_pages >= 0;
    bi->kernel_merged_pages = MAX(merged->kernel_merged_pages, 0);
    bi->has_kernel_merged_pages_exact =
        merged->kernel_merged_pages_exact >= 0;
    bi->kernel_merged_pages_exact = MAX(merged->kernel_merged_pages_exact, 0);
    bi->has_actual_saving = bi->has_kernel_merged_pages;
    bi->actual_saving = bi->kernel_merged_pages * blk->page_size;
    if (merged->attributed >= 0) {
        bi->has_attributed_saving = bi->has_attributed_saving_accuracy = true;
        bi->attributed_saving = merged->attributed / MEMDEDUP_SHARE_UNIT *
                                blk->page_size +
                                merged->attributed % MEMDEDUP_SHARE_UNIT *
                                blk->page_size / MEMDEDUP_SHARE_UNIT;
        bi->attributed_saving_accuracy = MEMDEDUP_SAVING_ACCURACY_EXACT;
    } else if (bi->has_actual_saving) {
        bi->has_attributed_saving = bi->has_attributed_saving_accuracy = true;
        bi->attributed_saving = bi->actual_saving;
        bi->attributed_saving_accuracy = MEMDEDUP_SAVING_ACCURACY_UPPER_BOUND;
    }
    bi->has_cross_vm_merged_pages = engine->board &&
                                    merged->cross_vm_merged_pages >= 0;
    bi->cross_vm_merged_pages = MAX(merged->cross_vm_merged_pages, 0);
    memdedup_numa_query_backend(blk, bi);
    return bi;
}

/* The engine's own part of the reply.  Engine lock held. */
static void memdedup_query_engine_locked(MemdedupEngine *engine,
                                         MemdedupInfo *info, char **refused)
{
    MemdedupBackendInfoList **tail = &info->backends;
    uint64_t total, done;
    MemdedupBlock *blk;

    memdedup_kernel_view_note_query(engine);
    info->state = engine->paused ? MEMDEDUP_STATE_PAUSED : engine->state;
    if (engine->paused) {
        info->has_paused_reason = true;
        info->paused_reason = g_strdup(engine->paused_reason);
    }
    info->passes_completed = engine->passes_completed;
    info->partial_passes = engine->partial_passes;
    info->watch_cpu_time = engine->watch_cpu_time;
    info->last_pass_duration = engine->last_pass_duration;
    info->scanner_cpu_time = engine->scanner_cpu_time;
    info->metadata_bytes = engine->metadata_bytes;
    info->index_dropped = engine->dupset_dropped;
    info->index_failures = engine->index_failures;
    info->scan_rate = engine->scan_rate;
    info->rescan_interval = engine->rescan_interval;
    info->rescan_backoff = engine->rescan_backoff;
    info->next_rescan_interval = (uint64_t)engine->rescan_interval *
                                 engine->rescan_factor;
    info->vma_budget = engine->vma_budget;
    total = qatomic_read(&engine->pass_pages_total);
    done = qatomic_read(&engine->pass_pages_done);
    info->pass_progress = (engine->state == MEMDEDUP_STATE_SCANNING && total) ?
                          MIN(done * 100 / total, 100) : 0;
    QTAILQ_FOREACH(blk, &engine->blocks, next) {
        int err = qatomic_read(&blk->advise_errno);

        if (err && !*refused) {
            *refused = g_strdup_printf("the kernel refused to change the KSM "
                                       "registration of backend '%s' (%s); "
                                       "registered-bytes shows what it "
                                       "accepted", blk->id, strerror(err));
        }
        QAPI_LIST_APPEND(tail, memdedup_query_backend(engine, blk));
    }
    if (engine->board) {
        info->has_board = true;
        info->board = memdedup_board_info(engine->board);
    }
    if (engine->features.probed) {
        info->has_kernel = true;
        info->kernel = memdedup_features_query(engine);
    }
}

/* What the kernel says of this process and of the host. */
static void memdedup_query_kernel(MemdedupInfo *info)
{
    MemdedupKsmStat ksm;

    if (memdedup_read_ksm_stat(&ksm)) {
        MemdedupProcessKsm *pk = g_new0(MemdedupProcessKsm, 1);

        pk->has_rmap_items = ksm.rmap_items >= 0;
        pk->rmap_items = MAX(ksm.rmap_items, 0);
        pk->has_zero_pages = ksm.zero_pages >= 0;
        pk->zero_pages = MAX(ksm.zero_pages, 0);
        pk->has_merging_pages = ksm.merging_pages >= 0;
        pk->merging_pages = MAX(ksm.merging_pages, 0);
        pk->has_process_profit = ksm.has_process_profit;
        pk->process_profit = ksm.process_profit;
        info->has_process_ksm = true;
        info->process_ksm = pk;
    }
    if (!memdedup_host_has_ksm()) {
        info->has_warning = true;
        info->warning = g_strdup("the host has no KSM: the engine can only "
                                 "estimate");
        return;
    }
    info->has_host_ksm = true;
    info->host_ksm = memdedup_query_host_ksm();
    if (info->host_ksm->has_run && info->host_ksm->run != 1) {
        info->has_warning = true;
        info->warning = g_strdup("ksmd is not running "
                                 "(/sys/kernel/mm/ksm/run is not 1): "
                                 "registered memory is not merged");
    }
}

MemdedupInfo *memdedup_query(Error **errp)
{
    MemdedupEngine *engine = &memdedup_engine;
    MemdedupInfo *info = g_new0(MemdedupInfo, 1);
    g_autofree char *refused = NULL;

    memdedup_registry_init();
    WITH_QEMU_LOCK_GUARD(&engine->lock) {
        memdedup_query_engine_locked(engine, info, &refused);
    }
    memdedup_numa_query(engine, info);
    memdedup_query_kernel(info);
    if (refused) {
        char *other = info->warning;

        info->has_warning = true;
        info->warning = other ? g_strdup_printf("%s; %s", refused, other) :
                                g_steal_pointer(&refused);
        g_free(other);
    }
    return info;
}

/* ------------------------------------------------------------------ */
/* QMP and HMP commands                                                */
/* ------------------------------------------------------------------ */

MemdedupInfo *qmp_query_memdedup(Error **errp)
{
    return memdedup_query(errp);
}

void qmp_memdedup_scan(Error **errp)
{
    memdedup_request_scan(errp);
}

void hmp_memdedup_scan(Monitor *mon, const QDict *qdict)
{
    Error *err = NULL;

    qmp_memdedup_scan(&err);
    hmp_handle_error(mon, err);
}

static double memdedup_mib(uint64_t pages, uint64_t page_size)
{
    return (double)pages * page_size / MiB;
}

/* The host NUMA view: one line per (guest node, host node). */
static void hmp_info_memdedup_numa(Monitor *mon, MemdedupInfo *info)
{
    MemdedupNuma *numa = info->numa;
    MemdedupNumaPlacementList *l;
    uint64_t page_size = info->backends ? info->backends->value->page_size :
                                          qemu_real_host_page_size();

    if (!numa) {
        return;
    }
    monitor_printf(mon, "NUMA: %u host nodes, merge_across_nodes %s, %s "
                   "(%" PRIu64 " repartitions), %" PRIu64 " pages unplaced\n",
                   numa->host_nodes,
                   !numa->has_merge_across_nodes ? "unknown" :
                   numa->merge_across_nodes ? "1" : "0",
                   numa->per_node_trees ? "per-node trees" : "one tree",
                   numa->repartitions, numa->unplaced_pages);
    monitor_printf(mon, "%-10s %-9s %-5s %9s %9s %10s %9s\n", "guest-node",
                   "host-node", "bound", "resident", "duplicate",
                   "cross-node", "merged");
    monitor_printf(mon, "%-10s %-9s %-5s %9s %9s %10s %9s\n", "", "", "",
                   "MiB", "MiB", "MiB", "MiB");
    for (l = numa->placement; l; l = l->next) {
        MemdedupNumaPlacement *p = l->value;
        g_autofree char *guest = p->has_guest_node ?
            g_strdup_printf("%u", p->guest_node) : g_strdup("-");
        g_autofree char *merged = p->has_kernel_merged_pages ?
            g_strdup_printf("%.1f", memdedup_mib(p->kernel_merged_pages,
                                                 page_size)) :
            g_strdup("n/a");

        monitor_printf(mon, "%-10s %-9u %-5s %9.1f %9.1f %10.1f %9s\n",
                       guest, p->host_node,
                       !p->has_bound ? "-" : p->bound ? "yes" : "no",
                       memdedup_mib(p->resident_pages, page_size),
                       memdedup_mib(p->duplicate_pages, page_size),
                       memdedup_mib(p->cross_node_duplicate_pages,
                                    page_size), merged);
    }
}

/* The cross-VM board, and what each backend found through it. */
static void hmp_info_memdedup_board(Monitor *mon, MemdedupInfo *info)
{
    MemdedupBoardInfo *bd = info->board;
    MemdedupBackendInfoList *l;

    monitor_printf(mon, "board: %s, ", bd->path);
    if (bd->joined) {
        monitor_printf(mon, "%u of %u peers, published %" PRIu64 " pages "
                       "(%u%%) in %" PRIu64 " bytes\n", bd->peers,
                       bd->max_peers, bd->published_pages,
                       bd->published_fraction, bd->filter_bytes);
    } else {
        monitor_printf(mon, "not joined (%s): working alone\n",
                       bd->has_reason ? bd->reason : "not yet");
    }
    if (bd->rejected_peers || bd->rejected_updates ||
        bd->refused_connections) {
        monitor_printf(mon, "  rejected: %" PRIu64 " peers, %" PRIu64
                       " filters; %" PRIu64 " connections refused\n",
                       bd->rejected_peers, bd->rejected_updates,
                       bd->refused_connections);
    }
    for (l = info->backends; l; l = l->next) {
        MemdedupBackendInfo *b = l->value;
        g_autofree char *merged = b->has_cross_vm_merged_pages ?
            g_strdup_printf("%.1f MiB", memdedup_mib(b->cross_vm_merged_pages,
                                                     b->page_size)) :
            g_strdup("n/a");

        monitor_printf(mon, "  %s: cross-VM duplicates %.1f MiB, %" PRIu64
                       " regions registered for them, merged there %s\n",
                       b->id, memdedup_mib(b->cross_vm_pages, b->page_size),
                       b->cross_vm_regions, merged);
    }
}

/* The engine's state line of info memdedup. */
static void hmp_info_memdedup_state(Monitor *mon, MemdedupInfo *info)
{
    monitor_printf(mon, "memdedup: %s", MemdedupState_str(info->state));
    if (info->state == MEMDEDUP_STATE_SCANNING) {
        monitor_printf(mon, " (%u%%)", info->pass_progress);
    }
    if (info->paused_reason) {
        monitor_printf(mon, " (%s)", info->paused_reason);
    }
    monitor_printf(mon, ", %" PRIu64 " passes (+%" PRIu64 " partial), "
                   "last %.3f s, scanner CPU %.3f s (watch %.3f s), "
                   "metadata %.1f KiB, "
                   "scan rate %" PRIu64 " MiB/s, rescan every %u ms",
                   info->passes_completed, info->partial_passes,
                   info->last_pass_duration / 1e9,
                   info->scanner_cpu_time / 1e9,
                   info->watch_cpu_time / 1e9,
                   info->metadata_bytes / 1024.0,
                   info->scan_rate / MiB, info->rescan_interval);
    if (info->next_rescan_interval != info->rescan_interval) {
        monitor_printf(mon, " (next in %" PRIu64 " ms: memory quiet)",
                       info->next_rescan_interval);
    }
    monitor_printf(mon, "\n");
    if (info->index_dropped || info->index_failures) {
        monitor_printf(mon, "  index: %" PRIu64 " duplicates left out for "
                       "the metadata budget, %" PRIu64 " passes without "
                       "memory for it\n", info->index_dropped,
                       info->index_failures);
    }
    if (info->warning) {
        monitor_printf(mon, "warning: %s\n", info->warning);
    }
}

/* The table of backends, and the kernel's refusals under it. */
static void hmp_info_memdedup_backends(Monitor *mon, MemdedupInfo *info)
{
    MemdedupBackendInfoList *l;

    monitor_printf(mon, "%-12s %-9s %9s %9s %9s %9s %9s %9s %11s %7s %9s %9s\n",
                   "backend", "policy", "size", "resident", "zero",
                   "duplicate", "unique", "volatile", "registered",
                   "ranges", "merged", "estimated");
    monitor_printf(mon, "%-12s %-9s %9s %9s %9s %9s %9s %9s %11s %7s %9s %9s\n",
                   "", "", "MiB", "MiB", "MiB", "MiB", "MiB", "MiB", "MiB",
                   "", "MiB", "MiB");
    for (l = info->backends; l; l = l->next) {
        MemdedupBackendInfo *b = l->value;
        g_autofree char *merged = b->has_kernel_merged_pages ?
            g_strdup_printf("%.1f", memdedup_mib(b->kernel_merged_pages,
                                                 b->page_size)) :
            g_strdup("n/a");

        monitor_printf(mon, "%-12s %-9s %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f "
                       "%11.1f %7" PRIu64 " %9s %9.1f\n",
                       b->id, MemdedupPolicy_str(b->policy),
                       (double)b->size / MiB,
                       memdedup_mib(b->resident_pages, b->page_size),
                       memdedup_mib(b->zero_pages, b->page_size),
                       memdedup_mib(b->duplicate_pages, b->page_size),
                       memdedup_mib(b->unique_pages, b->page_size),
                       memdedup_mib(b->volatile_pages, b->page_size),
                       (double)b->registered_bytes / MiB,
                       b->registered_ranges, merged,
                       (double)b->estimated_saving / MiB);
    }
    for (l = info->backends; l; l = l->next) {
        MemdedupBackendInfo *b = l->value;

        monitor_printf(mon, "  %s: %" PRIu64 " VMAs of %" PRIu64 " allowed "
                       "(budget %" PRIu64 " over all backends)",
                       b->id, b->vmas, b->vma_share, info->vma_budget);
        if (b->has_attributed_saving) {
            monitor_printf(mon, "; attributed saving %.1f MiB (%s)",
                           (double)b->attributed_saving / MiB,
                           b->attributed_saving_accuracy ==
                           MEMDEDUP_SAVING_ACCURACY_EXACT ? "exact" :
                                                            "upper bound");
        }
        if (b->has_cow_broken_pages) {
            monitor_printf(mon, "; copy-on-write: %" PRIu64 " merged pages "
                           "broken in the last pass, %" PRIu64 " in all, %"
                           PRIu64 " regions off KSM",
                           b->cow_broken_pages, b->cow_broken_pages_total,
                           b->cow_backoff_regions);
        }
        if (b->rearmed_regions) {
            monitor_printf(mon, "; registered again for ksmd's smart scan: "
                           "%" PRIu64 " times", b->rearmed_regions);
        }
        if (b->registration_failures || b->thp_advice_failures) {
            monitor_printf(mon, "; refused by the kernel: %" PRIu64
                           " registration changes, %" PRIu64
                           " huge page advice", b->registration_failures,
                           b->thp_advice_failures);
        }
        monitor_printf(mon, "\n");
    }
}

/* What the kernel says of this process and of the host. */
static void hmp_info_memdedup_ksm(Monitor *mon, MemdedupInfo *info)
{
    if (info->process_ksm) {
        MemdedupProcessKsm *p = info->process_ksm;
        monitor_printf(mon, "process KSM: rmap_items %" PRIu64
                       ", merging_pages %" PRIu64 ", zero_pages %" PRIu64,
                       p->rmap_items, p->merging_pages, p->zero_pages);
        if (p->has_process_profit) {
            monitor_printf(mon, ", profit %.1f MiB",
                           (double)p->process_profit / MiB);
        }
        monitor_printf(mon, "\n");
    } else {
        monitor_printf(mon, "process KSM: unavailable\n");
    }
    if (info->board) {
        hmp_info_memdedup_board(mon, info);
    }
    if (info->host_ksm) {
        MemdedupHostKsm *h = info->host_ksm;
        monitor_printf(mon, "host KSM: run %" PRIu64 ", pages_to_scan %"
                       PRIu64 ", sleep_millisecs %" PRIu64
                       ", merge_across_nodes %" PRIu64 ", use_zero_pages %"
                       PRIu64 ", max_page_sharing %" PRIu64
                       ", pages_shared %" PRIu64 ", pages_sharing %" PRIu64
                       "\n", h->run, h->pages_to_scan, h->sleep_millisecs,
                       h->merge_across_nodes, h->use_zero_pages,
                       h->max_page_sharing, h->pages_shared,
                       h->pages_sharing);
    } else {
        monitor_printf(mon, "host KSM: unavailable\n");
    }
}

/* Which kernel interfaces the engine found, and what they mean here. */
static void hmp_info_memdedup_kernel(Monitor *mon, MemdedupKernelFeatures *k)
{
    static const char *const tristate[] = { "unknown", "no", "yes" };
    const struct {
        const char *name;
        bool has;
    } features[] = {
        { "ksm", k->ksm }, { "ksm_stat", k->ksm_stat },
        { "ksm_merging_pages", k->merging_pages_file },
        { "ksm_zero_pages", k->ksm_zero_pages },
        { "general_profit", k->general_profit },
        { "smart_scan", k->smart_scan }, { "advisor", k->advisor },
        { "PAGEMAP_SCAN", k->pagemap_scan },
        { "MADV_COLLAPSE", k->madv_collapse }, { "PFNs", k->pfns },
        { "kpageflags", k->kpageflags }, { "kpagecount", k->kpagecount },
    };
    strList *f;
    size_t i;
    int pass;

    monitor_printf(mon, "kernel %s, THP %s\n", k->release,
                   k->has_thp ? k->thp : "none");
    for (pass = 0; pass < 2; pass++) {
        const char *sep = "";

        monitor_printf(mon, "  %s:", pass ? "lacks" : "has");
        for (i = 0; i < ARRAY_SIZE(features); i++) {
            if (features[i].has == !pass) {
                monitor_printf(mon, "%s %s", sep, features[i].name);
                sep = ",";
            }
        }
        monitor_printf(mon, "\n");
    }
    monitor_printf(mon, "  ksm_stat fields:");
    for (f = k->ksm_stat_fields; f; f = f->next) {
        monitor_printf(mon, " %s", f->value);
    }
    monitor_printf(mon, "%s\n", k->ksm_stat_fields ? "" : " none");
    monitor_printf(mon, "  read fault maps the zero page: %s, "
                   "the huge zero page: %s\n",
                   tristate[k->has_zero_page_on_read ?
                            1 + k->zero_page_on_read : 0],
                   tristate[k->has_huge_zero_page ?
                            1 + k->huge_zero_page : 0]);
}

void hmp_info_memdedup(Monitor *mon, const QDict *qdict)
{
    Error *err = NULL;
    g_autoptr(MemdedupInfo) info = qmp_query_memdedup(&err);

    if (hmp_handle_error(mon, err)) {
        return;
    }
    hmp_info_memdedup_state(mon, info);
    hmp_info_memdedup_backends(mon, info);
    hmp_info_memdedup_numa(mon, info);
    hmp_info_memdedup_ksm(mon, info);
    if (info->kernel) {
        hmp_info_memdedup_kernel(mon, info->kernel);
    }
}
