/*
 * memdedup: QMP and HMP commands
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * Thin wrappers: the engine fills a MemdedupInfo from a snapshot taken
 * under its lock (never waiting for a running pass); HMP prints it.
 */

#include "qemu/osdep.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-memdedup.h"
#include "monitor/hmp.h"
#include "monitor/monitor.h"
#include "sysemu/memdedup.h"

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
        monitor_printf(mon, "slot %u of %u, %u peers, published %" PRIu64
                       " pages (%u%%)\n", bd->slot, bd->slots, bd->peers,
                       bd->published_pages, bd->published_fraction);
    } else {
        monitor_printf(mon, "full (%u slots): not publishing, no cross-VM "
                       "view\n", bd->slots);
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

void hmp_info_memdedup(Monitor *mon, const QDict *qdict)
{
    Error *err = NULL;
    g_autoptr(MemdedupInfo) info = qmp_query_memdedup(&err);
    MemdedupBackendInfoList *l;

    if (hmp_handle_error(mon, err)) {
        return;
    }
    monitor_printf(mon, "memdedup: %s", MemdedupState_str(info->state));
    if (info->state == MEMDEDUP_STATE_SCANNING) {
        monitor_printf(mon, " (%u%%)", info->pass_progress);
    }
    if (info->paused_reason) {
        monitor_printf(mon, " (%s)", info->paused_reason);
    }
    monitor_printf(mon, ", %" PRIu64 " passes, last %.3f s, "
                   "scanner CPU %.3f s, metadata %.1f KiB, "
                   "scan rate %" PRIu64 " MiB/s, rescan every %u ms",
                   info->passes_completed,
                   info->last_pass_duration / 1e9,
                   info->scanner_cpu_time / 1e9,
                   info->metadata_bytes / 1024.0,
                   info->scan_rate / MiB, info->rescan_interval);
    if (info->next_rescan_interval != info->rescan_interval) {
        monitor_printf(mon, " (next in %" PRIu64 " ms: memory quiet)",
                       info->next_rescan_interval);
    }
    monitor_printf(mon, "\n");
    if (info->warning) {
        monitor_printf(mon, "warning: %s\n", info->warning);
    }

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
        if (l->value->registration_failures) {
            monitor_printf(mon, "  %s: %" PRIu64 " registration changes "
                           "refused by the kernel\n", l->value->id,
                           l->value->registration_failures);
        }
    }

    hmp_info_memdedup_numa(mon, info);

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
