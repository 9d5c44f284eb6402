/*
 * memdedup-stat: memdedup statistics of every running libvirt domain
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * Asks each running domain's QEMU for query-memdedup through libvirt
 * (virDomainQemuMonitorCommand, the API behind "virsh
 * qemu-monitor-command") and the host's KSM counters through
 * virNodeGetMemoryParameters (what "virsh node-memory-tune" shows), and
 * prints them as a table, as JSON or in Prometheus' text exposition
 * format.  A domain whose QEMU lacks query-memdedup, or runs it without
 * any managed backend, is listed as such; it is not an error.
 *
 * One snapshot is gathered completely (struct snapshot) before anything
 * is printed, so the three formats always show the same numbers.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>
#include <libvirt/libvirt.h>
#include <libvirt/libvirt-qemu.h>
#include <libvirt/virterror.h>

#define MIB (1024.0 * 1024.0)

/* Exit statuses (documented in --help and the man page). */
enum {
    EXIT_OK = 0,
    EXIT_FAILURE_LIBVIRT = 1,   /* cannot connect, list or query */
    EXIT_USAGE = 2,             /* bad command line */
};

enum format { FORMAT_TABLE, FORMAT_JSON, FORMAT_PROMETHEUS };

/* The order of the domains: by name, or by attributed saving. */
enum sort_key { SORT_NAME, SORT_ATTRIBUTED };

/* Why a domain shows no memdedup statistics. */
enum domain_status {
    DOMAIN_MEMDEDUP,            /* query-memdedup answered, backends > 0 */
    DOMAIN_NO_BACKENDS,         /* query-memdedup answered, no backend */
    DOMAIN_NO_COMMAND,          /* QEMU has no query-memdedup */
    DOMAIN_ERROR,               /* the query failed (domain went away ...) */
};

static const char *const domain_status_names[] = {
    [DOMAIN_MEMDEDUP] = "memdedup",
    [DOMAIN_NO_BACKENDS] = "no-backends",
    [DOMAIN_NO_COMMAND] = "no-memdedup",
    [DOMAIN_ERROR] = "error",
};

/* One backend's numbers, in bytes (pages times the backend page size). */
struct backend_stats {
    char *id;
    char *policy;
    uint64_t size;
    uint64_t resident;
    uint64_t zero;
    uint64_t duplicate;
    uint64_t unique;
    uint64_t volatile_bytes;
    uint64_t registered;
    uint64_t kernel_merged;
    bool has_kernel_merged;
    uint64_t estimated_saving;
    uint64_t actual_saving;
    uint64_t attributed;        /* attributed-saving */
    bool has_attributed;
    bool attributed_exact;      /* else an upper bound */
    uint64_t region_size;       /* bytes */
    uint64_t huge_regions;      /* regions handed back to huge pages */
    uint64_t unmerge_refusals;  /* count since QEMU started */
    uint64_t registration_failures; /* madvise refusals since start */
    /*
     * Copy-on-write churn: merged pages broken by a write in the last
     * pass and since start (pages, not bytes: each one cost the guest a
     * fault; absent where QEMU cannot read pagemap), and regions
     * unregistered for a backoff period because of it.  An older QEMU
     * reports neither.
     */
    bool has_cow_broken;
    uint64_t cow_broken_pages;
    uint64_t cow_broken_pages_total;
    bool has_cow_backoff;
    uint64_t cow_backoff_regions;
    /*
     * Times a region was taken off KSM and registered again because
     * ksmd's smart scan kept its copies apart (rearmed-regions); an
     * older QEMU does not report it.
     */
    bool has_rearmed;
    uint64_t rearmed_regions;
};

/* query-memdedup's board member: the counters of refused peers. */
struct board_stats {
    bool present;               /* the domain's QEMU is on a board */
    bool joined;
    uint64_t peers;
    uint64_t rejected_peers;    /* connections closed: no proof, bad data */
    uint64_t rejected_updates;  /* peers' filters refused */
    uint64_t refused_connections;   /* closed unread: too many waiting */
};

struct domain_stats {
    char *name;
    char *uuid;
    enum domain_status status;
    char *error;                /* DOMAIN_ERROR: libvirt's message */
    json_object *reply;         /* query-memdedup's "return", or NULL */
    char *state;                /* engine state: idle, scanning, ... */
    uint64_t passes_completed;
    uint64_t partial_passes;    /* the residency watch's */
    uint64_t scanner_cpu_ns;
    uint64_t metadata_bytes;
    long long ksm_run;          /* host-ksm's run, -1 if absent */
    struct board_stats board;
    struct backend_stats *backends;
    size_t nr_backends;
};

/* virNodeGetMemoryParameters' shm_* values; absent ones are -1. */
struct host_ksm {
    bool available;
    char *error;
    long long pages_to_scan;
    long long sleep_millisecs;
    long long pages_shared;
    long long pages_sharing;
    long long pages_unshared;
    long long pages_volatile;
    long long full_scans;
    long long merge_across_nodes;
    long long run;              /* from query-memdedup's host-ksm, or -1 */
};

struct snapshot {
    time_t taken;
    long page_size;             /* this host's, for the KSM page counts */
    struct host_ksm ksm;
    struct domain_stats *domains;
    size_t nr_domains;
};

static const char *progname = "memdedup-stat";
static volatile sig_atomic_t interrupted;

static void die(int status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

static void die(int status, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", progname);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(status);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);

    if (!p) {
        die(EXIT_FAILURE_LIBVIRT, "out of memory");
    }
    return p;
}

static char *xstrdup(const char *s)
{
    char *p = strdup(s ? s : "");

    if (!p) {
        die(EXIT_FAILURE_LIBVIRT, "out of memory");
    }
    return p;
}

static const char *libvirt_error(void)
{
    const char *msg = virGetLastErrorMessage();

    return msg ? msg : "unknown libvirt error";
}

/* libvirt prints every error to stderr by default; we report our own. */
static void libvirt_quiet(void *opaque, virErrorPtr err)
{
    (void)opaque;
    (void)err;
}

/* ------------------------------------------------------------------ */
/* Gathering                                                           */
/* ------------------------------------------------------------------ */

static uint64_t json_u64(json_object *obj, const char *key, bool *present)
{
    json_object *v;

    if (!json_object_object_get_ex(obj, key, &v) ||
        !json_object_is_type(v, json_type_int)) {
        if (present) {
            *present = false;
        }
        return 0;
    }
    if (present) {
        *present = true;
    }
    return json_object_get_uint64(v);
}

static const char *json_str(json_object *obj, const char *key)
{
    json_object *v;

    if (!json_object_object_get_ex(obj, key, &v) ||
        !json_object_is_type(v, json_type_string)) {
        return "";
    }
    return json_object_get_string(v);
}

static void backend_parse(json_object *b, struct backend_stats *out)
{
    uint64_t page = json_u64(b, "page-size", NULL);

    if (!page) {
        page = 4096;
    }
    out->id = xstrdup(json_str(b, "id"));
    out->policy = xstrdup(json_str(b, "policy"));
    out->size = json_u64(b, "size", NULL);
    out->resident = json_u64(b, "resident-pages", NULL) * page;
    out->zero = json_u64(b, "zero-pages", NULL) * page;
    out->duplicate = json_u64(b, "duplicate-pages", NULL) * page;
    out->unique = json_u64(b, "unique-pages", NULL) * page;
    out->volatile_bytes = json_u64(b, "volatile-pages", NULL) * page;
    out->registered = json_u64(b, "registered-bytes", NULL);
    out->kernel_merged = json_u64(b, "kernel-merged-pages",
                                  &out->has_kernel_merged) * page;
    out->estimated_saving = json_u64(b, "estimated-saving", NULL);
    out->actual_saving = json_u64(b, "actual-saving", NULL);
    out->attributed = json_u64(b, "attributed-saving", &out->has_attributed);
    out->attributed_exact = !strcmp(json_str(b, "attributed-saving-accuracy"),
                                    "exact");
    out->region_size = json_u64(b, "region-size", NULL);
    out->huge_regions = json_u64(b, "huge-regions", NULL);
    out->unmerge_refusals = json_u64(b, "unmerge-refusals", NULL);
    out->registration_failures = json_u64(b, "registration-failures", NULL);
    out->cow_broken_pages = json_u64(b, "cow-broken-pages",
                                     &out->has_cow_broken);
    if (out->has_cow_broken) {
        out->cow_broken_pages_total = json_u64(b, "cow-broken-pages-total",
                                               &out->has_cow_broken);
    }
    out->cow_backoff_regions = json_u64(b, "cow-backoff-regions",
                                        &out->has_cow_backoff);
    out->rearmed_regions = json_u64(b, "rearmed-regions", &out->has_rearmed);
}

/* The board's counters, if the domain's QEMU has a board. */
static void board_parse(json_object *info, struct board_stats *out)
{
    json_object *board, *joined;

    if (!json_object_object_get_ex(info, "board", &board) ||
        !json_object_is_type(board, json_type_object)) {
        return;
    }
    out->present = true;
    out->joined = json_object_object_get_ex(board, "joined", &joined) &&
                  json_object_get_boolean(joined);
    out->peers = json_u64(board, "peers", NULL);
    out->rejected_peers = json_u64(board, "rejected-peers", NULL);
    out->rejected_updates = json_u64(board, "rejected-updates", NULL);
    out->refused_connections = json_u64(board, "refused-connections", NULL);
}

/* Is this monitor reply (or libvirt error) a missing command? */
static bool is_command_not_found(json_object *reply, const char *message)
{
    json_object *err, *cls;

    if (reply && json_object_object_get_ex(reply, "error", &err) &&
        json_object_object_get_ex(err, "class", &cls)) {
        return !strcmp(json_object_get_string(cls), "CommandNotFound");
    }
    return message && strstr(message, "CommandNotFound");
}

static void domain_query(virDomainPtr dom, struct domain_stats *d)
{
    char uuid[VIR_UUID_STRING_BUFLEN];
    char *text = NULL;
    json_object *reply, *ret, *backends, *err, *host_ksm;
    size_t i;

    d->name = xstrdup(virDomainGetName(dom));
    d->ksm_run = -1;
    d->uuid = xstrdup(virDomainGetUUIDString(dom, uuid) == 0 ? uuid : "");

    if (virDomainQemuMonitorCommand(dom, "{\"execute\":\"query-memdedup\"}",
                                    &text,
                                    VIR_DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT)
        < 0) {
        const char *msg = libvirt_error();

        if (is_command_not_found(NULL, msg)) {
            d->status = DOMAIN_NO_COMMAND;
        } else {
            d->status = DOMAIN_ERROR;
            d->error = xstrdup(msg);
        }
        return;
    }
    reply = json_tokener_parse(text);
    free(text);
    if (!reply) {
        d->status = DOMAIN_ERROR;
        d->error = xstrdup("query-memdedup: reply is not JSON");
        return;
    }
    if (!json_object_object_get_ex(reply, "return", &ret)) {
        if (is_command_not_found(reply, NULL)) {
            d->status = DOMAIN_NO_COMMAND;
        } else {
            d->status = DOMAIN_ERROR;
            d->error = xstrdup(json_object_object_get_ex(reply, "error", &err)
                               ? json_str(err, "desc")
                               : "query-memdedup: reply without return");
        }
        json_object_put(reply);
        return;
    }
    d->reply = json_object_get(ret);
    json_object_put(reply);

    d->state = xstrdup(json_str(ret, "state"));
    d->passes_completed = json_u64(ret, "passes-completed", NULL);
    d->partial_passes = json_u64(ret, "partial-passes", NULL);
    d->scanner_cpu_ns = json_u64(ret, "scanner-cpu-time", NULL);
    d->metadata_bytes = json_u64(ret, "metadata-bytes", NULL);
    if (json_object_object_get_ex(ret, "host-ksm", &host_ksm)) {
        bool present;
        uint64_t run = json_u64(host_ksm, "run", &present);

        if (present) {
            d->ksm_run = run;
        }
    }
    board_parse(ret, &d->board);
    if (json_object_object_get_ex(ret, "backends", &backends) &&
        json_object_is_type(backends, json_type_array)) {
        d->nr_backends = json_object_array_length(backends);
    }
    d->status = d->nr_backends ? DOMAIN_MEMDEDUP : DOMAIN_NO_BACKENDS;
    d->backends = xcalloc(d->nr_backends, sizeof(*d->backends));
    for (i = 0; i < d->nr_backends; i++) {
        backend_parse(json_object_array_get_idx(backends, i),
                      &d->backends[i]);
    }
}

static void host_ksm_query(virConnectPtr conn, struct host_ksm *ksm)
{
    static const struct {
        const char *name;
        size_t offset;
    } fields[] = {
        { VIR_NODE_MEMORY_SHARED_PAGES_TO_SCAN,
          offsetof(struct host_ksm, pages_to_scan) },
        { VIR_NODE_MEMORY_SHARED_SLEEP_MILLISECS,
          offsetof(struct host_ksm, sleep_millisecs) },
        { VIR_NODE_MEMORY_SHARED_PAGES_SHARED,
          offsetof(struct host_ksm, pages_shared) },
        { VIR_NODE_MEMORY_SHARED_PAGES_SHARING,
          offsetof(struct host_ksm, pages_sharing) },
        { VIR_NODE_MEMORY_SHARED_PAGES_UNSHARED,
          offsetof(struct host_ksm, pages_unshared) },
        { VIR_NODE_MEMORY_SHARED_PAGES_VOLATILE,
          offsetof(struct host_ksm, pages_volatile) },
        { VIR_NODE_MEMORY_SHARED_FULL_SCANS,
          offsetof(struct host_ksm, full_scans) },
        { VIR_NODE_MEMORY_SHARED_MERGE_ACROSS_NODES,
          offsetof(struct host_ksm, merge_across_nodes) },
    };
    virTypedParameterPtr params = NULL;
    int nparams = 0;
    size_t i;

    for (i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        *(long long *)((char *)ksm + fields[i].offset) = -1;
    }
    if (virNodeGetMemoryParameters(conn, NULL, &nparams, 0) < 0) {
        ksm->error = xstrdup(libvirt_error());
        return;
    }
    if (!nparams) {
        ksm->error = xstrdup("the host reports no KSM parameters");
        return;
    }
    params = xcalloc(nparams, sizeof(*params));
    if (virNodeGetMemoryParameters(conn, params, &nparams, 0) < 0) {
        ksm->error = xstrdup(libvirt_error());
        free(params);
        return;
    }
    for (i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        unsigned long long value;

        if (virTypedParamsGetULLong(params, nparams, fields[i].name,
                                    &value) == 1) {
            *(long long *)((char *)ksm + fields[i].offset) = value;
        } else {
            unsigned int uvalue;

            if (virTypedParamsGetUInt(params, nparams, fields[i].name,
                                      &uvalue) == 1) {
                *(long long *)((char *)ksm + fields[i].offset) = uvalue;
            }
        }
    }
    virTypedParamsFree(params, nparams);
    ksm->available = true;
}

static int domain_compare(const void *a, const void *b)
{
    return strcmp(((const struct domain_stats *)a)->name,
                  ((const struct domain_stats *)b)->name);
}

/* A domain's attributed saving over its backends. */
static uint64_t domain_attributed(const struct domain_stats *d)
{
    uint64_t sum = 0;
    size_t j;

    for (j = 0; j < d->nr_backends; j++) {
        sum += d->backends[j].attributed;
    }
    return sum;
}

/* Largest attributed saving first; ties, and domains without, by name. */
static int domain_compare_attributed(const void *a, const void *b)
{
    uint64_t sa = domain_attributed(a), sb = domain_attributed(b);

    if (sa != sb) {
        return sa > sb ? -1 : 1;
    }
    return domain_compare(a, b);
}

/* Gather everything; false (with a message printed) if libvirt fails. */
static bool snapshot_take(virConnectPtr conn, enum sort_key sort,
                          struct snapshot *snap)
{
    virDomainPtr *doms = NULL;
    int n, i;

    memset(snap, 0, sizeof(*snap));
    snap->taken = time(NULL);
    snap->page_size = sysconf(_SC_PAGESIZE);
    n = virConnectListAllDomains(conn, &doms,
                                 VIR_CONNECT_LIST_DOMAINS_ACTIVE);
    if (n < 0) {
        fprintf(stderr, "%s: cannot list domains: %s\n", progname,
                libvirt_error());
        return false;
    }
    host_ksm_query(conn, &snap->ksm);
    snap->ksm.run = -1;
    snap->domains = xcalloc(n, sizeof(*snap->domains));
    snap->nr_domains = n;
    for (i = 0; i < n; i++) {
        domain_query(doms[i], &snap->domains[i]);
        virDomainFree(doms[i]);
        /*
         * libvirt does not report ksmd's run setting; every QEMU reads
         * it from the same /sys/kernel/mm/ksm/run of this host.
         */
        if (snap->ksm.run < 0) {
            snap->ksm.run = snap->domains[i].ksm_run;
        }
    }
    free(doms);
    qsort(snap->domains, snap->nr_domains, sizeof(*snap->domains),
          sort == SORT_ATTRIBUTED ? domain_compare_attributed :
                                    domain_compare);
    return true;
}

static void snapshot_free(struct snapshot *snap)
{
    size_t i, j;

    for (i = 0; i < snap->nr_domains; i++) {
        struct domain_stats *d = &snap->domains[i];

        for (j = 0; j < d->nr_backends; j++) {
            free(d->backends[j].id);
            free(d->backends[j].policy);
        }
        free(d->backends);
        free(d->name);
        free(d->uuid);
        free(d->error);
        free(d->state);
        json_object_put(d->reply);
    }
    free(snap->domains);
    free(snap->ksm.error);
}

/* ------------------------------------------------------------------ */
/* Output: table                                                       */
/* ------------------------------------------------------------------ */

static void print_mib(FILE *out, int width, uint64_t bytes)
{
    fprintf(out, " %*.1f", width, bytes / MIB);
}

/*
 * One line per backend under the table: what its figures in the columns
 * do not show.  The copy-on-write figures only where QEMU reports them.
 */
static void print_backend_figures(FILE *out, const struct domain_stats *d,
                                  const struct backend_stats *b)
{
    fprintf(out, "%s %s: THP kept %" PRIu64 " regions (%.1f MiB), "
            "unmerge refusals %" PRIu64 ", registration failures %" PRIu64,
            d->name, b->id, b->huge_regions,
            b->huge_regions * b->region_size / MIB, b->unmerge_refusals,
            b->registration_failures);
    if (b->has_cow_broken) {
        fprintf(out, ", COW broken %" PRIu64 " pages in the last pass (%"
                PRIu64 " in all)", b->cow_broken_pages,
                b->cow_broken_pages_total);
    }
    if (b->has_cow_backoff) {
        fprintf(out, ", COW backoff %" PRIu64 " regions",
                b->cow_backoff_regions);
    }
    if (b->has_rearmed) {
        fprintf(out, ", registered again %" PRIu64 " times",
                b->rearmed_regions);
    }
    fputc('\n', out);
}

static void print_table(FILE *out, const struct snapshot *snap)
{
    const struct host_ksm *k = &snap->ksm;
    struct backend_stats total = { 0 };
    size_t i, j;

    bool upper = false;

    fprintf(out, "%-16s %-12s %-10s %9s %9s %9s %9s %9s %10s %9s %9s "
            "%10s\n", "DOMAIN", "BACKEND", "POLICY", "SIZE", "RESIDENT",
            "ZERO", "DUPLICATE", "UNIQUE", "REGISTERED", "MERGED",
            "ESTIMATED", "ATTRIBUTED");
    fprintf(out, "%-16s %-12s %-10s %9s %9s %9s %9s %9s %10s %9s %9s "
            "%10s\n", "", "", "", "MiB", "MiB", "MiB", "MiB", "MiB", "MiB",
            "MiB", "MiB", "MiB");
    for (i = 0; i < snap->nr_domains; i++) {
        const struct domain_stats *d = &snap->domains[i];

        if (d->status != DOMAIN_MEMDEDUP) {
            fprintf(out, "%-16s %s%s%s\n", d->name,
                    d->status == DOMAIN_NO_COMMAND ?
                    "(no memdedup: QEMU lacks query-memdedup)" :
                    d->status == DOMAIN_NO_BACKENDS ?
                    "(no memdedup: no managed backend)" : "(error: ",
                    d->error ? d->error : "", d->error ? ")" : "");
            continue;
        }
        for (j = 0; j < d->nr_backends; j++) {
            const struct backend_stats *b = &d->backends[j];

            fprintf(out, "%-16s %-12s %-10s", j ? "" : d->name, b->id,
                    b->policy);
            print_mib(out, 9, b->size);
            print_mib(out, 9, b->resident);
            print_mib(out, 9, b->zero);
            print_mib(out, 9, b->duplicate);
            print_mib(out, 9, b->unique);
            print_mib(out, 10, b->registered);
            if (b->has_kernel_merged) {
                print_mib(out, 9, b->kernel_merged);
            } else {
                fprintf(out, " %9s", "-");
            }
            print_mib(out, 9, b->estimated_saving);
            if (b->has_attributed) {
                fprintf(out, " %*.1f%s", b->attributed_exact ? 10 : 9,
                        b->attributed / MIB, b->attributed_exact ? "" : "*");
                upper |= !b->attributed_exact;
            } else {
                fprintf(out, " %10s", "-");
            }
            fputc('\n', out);
            total.size += b->size;
            total.resident += b->resident;
            total.zero += b->zero;
            total.duplicate += b->duplicate;
            total.unique += b->unique;
            total.registered += b->registered;
            total.kernel_merged += b->kernel_merged;
            total.estimated_saving += b->estimated_saving;
            total.attributed += b->attributed;
        }
    }
    fprintf(out, "%-16s %-12s %-10s", "TOTAL", "", "");
    print_mib(out, 9, total.size);
    print_mib(out, 9, total.resident);
    print_mib(out, 9, total.zero);
    print_mib(out, 9, total.duplicate);
    print_mib(out, 9, total.unique);
    print_mib(out, 10, total.registered);
    print_mib(out, 9, total.kernel_merged);
    print_mib(out, 9, total.estimated_saving);
    fprintf(out, " %*.1f%s\n", upper ? 9 : 10, total.attributed / MIB,
            upper ? "*" : "");
    /* What the host saved: the attributed savings of all its KSM users. */
    if (k->available && k->pages_sharing >= 0) {
        fprintf(out, "%-16s %-12s %-10s %9s %9s %9s %9s %9s %10s %9s %9s",
                "HOST", "pages_sharing", "", "", "", "", "", "", "", "", "");
        print_mib(out, 10, (uint64_t)k->pages_sharing * snap->page_size);
        fputc('\n', out);
    }
    if (upper) {
        fprintf(out, "* upper bound: that QEMU cannot read /proc/kpagecount "
                "(no CAP_SYS_ADMIN)\n");
    }

    for (i = 0; i < snap->nr_domains; i++) {
        const struct domain_stats *d = &snap->domains[i];

        if (d->status != DOMAIN_MEMDEDUP) {
            continue;
        }
        fprintf(out, "%s: engine %s, %" PRIu64 " passes (+%" PRIu64
                " partial), scanner CPU %.3f s, metadata %.1f KiB\n",
                d->name, d->state, d->passes_completed, d->partial_passes,
                d->scanner_cpu_ns / 1e9,
                d->metadata_bytes / 1024.0);
        for (j = 0; j < d->nr_backends; j++) {
            print_backend_figures(out, d, &d->backends[j]);
        }
        if (d->board.present) {
            fprintf(out, "%s: board %s, %" PRIu64 " peers, rejected %"
                    PRIu64 " peers and %" PRIu64 " updates, refused %"
                    PRIu64 " connections\n", d->name,
                    d->board.joined ? "joined" : "not joined",
                    d->board.peers, d->board.rejected_peers,
                    d->board.rejected_updates,
                    d->board.refused_connections);
        }
    }
    if (!k->available) {
        fprintf(out, "host KSM: unavailable (%s)\n", k->error);
        return;
    }
    fputs("host KSM: ", out);
    if (k->run >= 0) {
        fprintf(out, "run %lld, ", k->run);
    }
    fprintf(out, "pages_shared %lld, pages_sharing %lld "
            "(saving %.1f MiB), pages_unshared %lld, pages_volatile %lld, "
            "full_scans %lld, pages_to_scan %lld, sleep_millisecs %lld, "
            "merge_across_nodes %lld\n", k->pages_shared, k->pages_sharing,
            k->pages_sharing > 0 ? k->pages_sharing * snap->page_size / MIB :
            0.0, k->pages_unshared, k->pages_volatile, k->full_scans,
            k->pages_to_scan, k->sleep_millisecs, k->merge_across_nodes);
}

/* ------------------------------------------------------------------ */
/* Output: JSON                                                        */
/* ------------------------------------------------------------------ */

static void json_add_ll(json_object *obj, const char *key, long long value)
{
    if (value >= 0) {
        json_object_object_add(obj, key, json_object_new_int64(value));
    }
}

/*
 * The sums over every backend: attributed-saving (exact only if every
 * backend's is) and the host's saving, pages_sharing in bytes, which the
 * attributed savings of all KSM users on the host add up to; the THP
 * kept, refusals and failures, copy-on-write churn and regions
 * registered again (where any QEMU reports them) and the engines' CPU
 * time in seconds.
 */
static json_object *json_total(const struct snapshot *snap)
{
    json_object *total = json_object_new_object();
    uint64_t attributed = 0, huge = 0, refusals = 0, failures = 0;
    uint64_t cow = 0, cow_total = 0, backoff = 0, rearmed = 0, cpu_ns = 0;
    bool exact = true, has_cow_broken = false, has_cow_backoff = false;
    bool has_rearmed = false;
    size_t i, j;

    for (i = 0; i < snap->nr_domains; i++) {
        const struct domain_stats *d = &snap->domains[i];

        cpu_ns += d->scanner_cpu_ns;
        for (j = 0; j < d->nr_backends; j++) {
            const struct backend_stats *b = &d->backends[j];

            attributed += b->attributed;
            exact &= b->attributed_exact;
            huge += b->huge_regions * b->region_size;
            refusals += b->unmerge_refusals;
            failures += b->registration_failures;
            if (b->has_cow_broken) {
                has_cow_broken = true;
                cow += b->cow_broken_pages;
                cow_total += b->cow_broken_pages_total;
            }
            if (b->has_cow_backoff) {
                has_cow_backoff = true;
                backoff += b->cow_backoff_regions;
            }
            if (b->has_rearmed) {
                has_rearmed = true;
                rearmed += b->rearmed_regions;
            }
        }
    }
    json_object_object_add(total, "huge-bytes", json_object_new_int64(huge));
    json_object_object_add(total, "unmerge-refusals",
                           json_object_new_int64(refusals));
    json_object_object_add(total, "registration-failures",
                           json_object_new_int64(failures));
    if (has_cow_broken) {
        json_object_object_add(total, "cow-broken-pages",
                               json_object_new_int64(cow));
        json_object_object_add(total, "cow-broken-pages-total",
                               json_object_new_int64(cow_total));
    }
    if (has_cow_backoff) {
        json_object_object_add(total, "cow-backoff-regions",
                               json_object_new_int64(backoff));
    }
    if (has_rearmed) {
        json_object_object_add(total, "rearmed-regions",
                               json_object_new_int64(rearmed));
    }
    json_object_object_add(total, "scanner-cpu-seconds",
                           json_object_new_double(cpu_ns / 1e9));
    json_object_object_add(total, "attributed-saving",
                           json_object_new_int64(attributed));
    json_object_object_add(total, "attributed-saving-accuracy",
                           json_object_new_string(exact ? "exact" :
                                                          "upper-bound"));
    if (snap->ksm.available && snap->ksm.pages_sharing >= 0) {
        json_add_ll(total, "host-saving",
                    snap->ksm.pages_sharing * snap->page_size);
    }
    return total;
}

static void print_json(FILE *out, const struct snapshot *snap)
{
    json_object *root = json_object_new_object();
    json_object *host = json_object_new_object();
    json_object *domains = json_object_new_array();
    const struct host_ksm *k = &snap->ksm;
    size_t i;

    json_object_object_add(root, "timestamp",
                           json_object_new_int64(snap->taken));
    json_object_object_add(host, "available",
                           json_object_new_boolean(k->available));
    if (k->available) {
        json_add_ll(host, "pages-to-scan", k->pages_to_scan);
        json_add_ll(host, "sleep-millisecs", k->sleep_millisecs);
        json_add_ll(host, "pages-shared", k->pages_shared);
        json_add_ll(host, "pages-sharing", k->pages_sharing);
        json_add_ll(host, "pages-unshared", k->pages_unshared);
        json_add_ll(host, "pages-volatile", k->pages_volatile);
        json_add_ll(host, "full-scans", k->full_scans);
        json_add_ll(host, "merge-across-nodes", k->merge_across_nodes);
        json_add_ll(host, "run", k->run);
        json_add_ll(host, "page-size", snap->page_size);
    } else {
        json_object_object_add(host, "error",
                               json_object_new_string(k->error));
    }
    json_object_object_add(root, "host-ksm", host);
    json_object_object_add(root, "total", json_total(snap));

    for (i = 0; i < snap->nr_domains; i++) {
        const struct domain_stats *d = &snap->domains[i];
        json_object *dom = json_object_new_object();

        json_object_object_add(dom, "name", json_object_new_string(d->name));
        json_object_object_add(dom, "uuid", json_object_new_string(d->uuid));
        json_object_object_add(dom, "memdedup",
            json_object_new_boolean(d->status == DOMAIN_MEMDEDUP));
        json_object_object_add(dom, "status",
            json_object_new_string(domain_status_names[d->status]));
        if (d->error) {
            json_object_object_add(dom, "error",
                                   json_object_new_string(d->error));
        }
        if (d->reply) {
            /* query-memdedup's reply as QEMU gave it. */
            json_object_object_add(dom, "query-memdedup",
                                   json_object_get(d->reply));
        }
        json_object_array_add(domains, dom);
    }
    json_object_object_add(root, "domains", domains);
    fprintf(out, "%s\n",
            json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY |
                                           JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(root);
}

/* ------------------------------------------------------------------ */
/* Output: Prometheus text exposition format                           */
/* ------------------------------------------------------------------ */

/* A label value with \, " and newline escaped as the format demands. */
static void print_label(FILE *out, const char *value)
{
    for (; *value; value++) {
        if (*value == '\\' || *value == '"') {
            fputc('\\', out);
            fputc(*value, out);
        } else if (*value == '\n') {
            fputs("\\n", out);
        } else {
            fputc(*value, out);
        }
    }
}

static void prom_header(FILE *out, const char *name, const char *type,
                        const char *help)
{
    fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Which backend field a per-backend metric reports. */
typedef uint64_t (*backend_field)(const struct backend_stats *b);

#define BACKEND_FIELD(field) \
    static uint64_t backend_##field(const struct backend_stats *b) \
    { \
        return b->field; \
    }
BACKEND_FIELD(size)
BACKEND_FIELD(resident)
BACKEND_FIELD(zero)
BACKEND_FIELD(duplicate)
BACKEND_FIELD(unique)
BACKEND_FIELD(volatile_bytes)
BACKEND_FIELD(registered)
BACKEND_FIELD(kernel_merged)
BACKEND_FIELD(estimated_saving)
BACKEND_FIELD(actual_saving)
BACKEND_FIELD(huge_regions)
BACKEND_FIELD(unmerge_refusals)
BACKEND_FIELD(registration_failures)
BACKEND_FIELD(cow_broken_pages)
BACKEND_FIELD(cow_broken_pages_total)
BACKEND_FIELD(cow_backoff_regions)
BACKEND_FIELD(rearmed_regions)

static uint64_t backend_huge_bytes(const struct backend_stats *b)
{
    return b->huge_regions * b->region_size;
}

/* Whether a backend has an optional figure (NULL: always). */
typedef bool (*backend_has)(const struct backend_stats *b);

#define BACKEND_HAS(flag) \
    static bool backend_##flag(const struct backend_stats *b) \
    { \
        return b->flag; \
    }
BACKEND_HAS(has_kernel_merged)
BACKEND_HAS(has_cow_broken)
BACKEND_HAS(has_cow_backoff)
BACKEND_HAS(has_rearmed)

/* Which board counter a per-domain board metric reports. */
typedef uint64_t (*board_field)(const struct board_stats *b);

#define BOARD_FIELD(field) \
    static uint64_t board_##field(const struct board_stats *b) \
    { \
        return b->field; \
    }
BOARD_FIELD(joined)
BOARD_FIELD(peers)
BOARD_FIELD(rejected_peers)
BOARD_FIELD(rejected_updates)
BOARD_FIELD(refused_connections)

static double domain_passes(const struct domain_stats *d)
{
    return d->passes_completed;
}

static double domain_partial_passes(const struct domain_stats *d)
{
    return d->partial_passes;
}

static double domain_cpu(const struct domain_stats *d)
{
    return d->scanner_cpu_ns;
}

static double domain_metadata(const struct domain_stats *d)
{
    return d->metadata_bytes;
}

/*
 * A metric family is printed with its HELP and TYPE lines before its
 * first sample; an optional figure that no domain reports (an older
 * QEMU, no board) leaves its family out altogether.
 */
static void prom_sample_start(FILE *out, bool *headed, const char *name,
                              const char *type, const char *help,
                              const char *domain)
{
    if (!*headed) {
        prom_header(out, name, type, help);
        *headed = true;
    }
    fprintf(out, "%s{domain=\"", name);
    print_label(out, domain);
    fputc('"', out);
}

static void print_prometheus(FILE *out, const struct snapshot *snap)
{
    static const struct {
        const char *name;
        const char *type;
        backend_field get;
        backend_has has;
        const char *help;
    } metrics[] = {
        { "memdedup_backend_size_bytes", "gauge", backend_size, NULL,
          "Size of the memory backend" },
        { "memdedup_backend_resident_bytes", "gauge", backend_resident, NULL,
          "Resident guest memory of the backend" },
        { "memdedup_backend_zero_bytes", "gauge", backend_zero, NULL,
          "Resident zero pages of the backend" },
        { "memdedup_backend_duplicate_bytes", "gauge", backend_duplicate,
          NULL,
          "Resident non-zero pages whose content occurs more than once" },
        { "memdedup_backend_unique_bytes", "gauge", backend_unique, NULL,
          "Resident non-zero pages whose content occurs once" },
        { "memdedup_backend_volatile_bytes", "gauge", backend_volatile_bytes,
          NULL, "Pages whose content changed during the last pass" },
        { "memdedup_backend_registered_bytes", "gauge", backend_registered,
          NULL, "Memory registered with KSM (madvise MADV_MERGEABLE)" },
        { "memdedup_backend_kernel_merged_bytes", "gauge",
          backend_kernel_merged, backend_has_kernel_merged,
          "Memory the kernel reports merged by KSM" },
        { "memdedup_backend_estimated_saving_bytes", "gauge",
          backend_estimated_saving, NULL,
          "Memory that merging every zero and duplicate page would free" },
        { "memdedup_backend_actual_saving_bytes", "gauge",
          backend_actual_saving, NULL,
          "Private copies the kernel dropped by merging" },
        { "memdedup_backend_huge_regions", "gauge", backend_huge_regions,
          NULL, "Regions handed back to transparent huge pages (THP kept)" },
        { "memdedup_backend_huge_bytes", "gauge", backend_huge_bytes, NULL,
          "Memory handed back to transparent huge pages: huge regions "
          "times the region size" },
        { "memdedup_backend_unmerge_refusals_total", "counter",
          backend_unmerge_refusals, NULL,
          "Unregistrations refused because unmerging would not fit in "
          "host memory" },
        { "memdedup_backend_registration_failures_total", "counter",
          backend_registration_failures, NULL,
          "Registration changes (madvise) the kernel refused" },
        { "memdedup_backend_cow_broken_pages", "gauge",
          backend_cow_broken_pages, backend_has_cow_broken,
          "Merged pages a write broke (copy-on-write) in the last pass" },
        { "memdedup_backend_cow_broken_pages_total", "counter",
          backend_cow_broken_pages_total, backend_has_cow_broken,
          "Merged pages a write broke (copy-on-write) since QEMU started" },
        { "memdedup_backend_cow_backoff_regions", "gauge",
          backend_cow_backoff_regions, backend_has_cow_backoff,
          "Regions unregistered for a backoff period because writes kept "
          "breaking their merged pages" },
        { "memdedup_backend_rearmed_regions_total", "counter",
          backend_rearmed_regions, backend_has_rearmed,
          "Times a region was taken off KSM and registered again because "
          "ksmd's smart scan kept its copies from merging" },
    };
    static const struct {
        const char *name;
        const char *type;
        double (*get)(const struct domain_stats *d);
        double scale;           /* divide by this: ns to seconds */
        const char *help;
    } engine[] = {
        { "memdedup_passes_completed_total", "counter", domain_passes, 1,
          "Scan passes the engine completed" },
        { "memdedup_partial_passes_total", "counter", domain_partial_passes,
          1, "Passes that hashed only memory that filled or emptied" },
        { "memdedup_scanner_cpu_seconds_total", "counter", domain_cpu, 1e9,
          "CPU time the engine's scanner threads spent hashing" },
        { "memdedup_metadata_bytes", "gauge", domain_metadata, 1,
          "Memory the engine uses for its per-page metadata" },
    };
    static const struct {
        const char *name;
        const char *type;
        board_field get;
        const char *help;
    } board[] = {
        { "memdedup_board_joined", "gauge", board_joined,
          "1 if the QEMU listens on its cross-VM board, 0 while it "
          "cannot use the board directory" },
        { "memdedup_board_peers", "gauge", board_peers,
          "Board peers that proved the key and exchange fingerprints" },
        { "memdedup_board_rejected_peers_total", "counter",
          board_rejected_peers,
          "Board connections closed: no proof of the key in time, a "
          "malformed message or filters refused again and again" },
        { "memdedup_board_rejected_updates_total", "counter",
          board_rejected_updates,
          "Board peers' filters refused and never used" },
        { "memdedup_board_refused_connections_total", "counter",
          board_refused_connections,
          "Board connections closed unread: too many waiting to prove "
          "the key" },
    };
    const struct {
        const char *name;
        const char *type;
        long long value;
        const char *help;
    } host[] = {
        { "memdedup_host_ksm_run", "gauge", snap->ksm.run,
          "ksmd's run setting from query-memdedup: 0 stopped, 1 running, "
          "2 unmerging everything" },
        { "memdedup_host_ksm_pages_shared", "gauge", snap->ksm.pages_shared,
          "KSM pages in use (shm_pages_shared)" },
        { "memdedup_host_ksm_pages_sharing", "gauge", snap->ksm.pages_sharing,
          "Sites sharing KSM pages, the pages saved (shm_pages_sharing)" },
        { "memdedup_host_ksm_pages_unshared", "gauge",
          snap->ksm.pages_unshared,
          "Pages KSM checked but found unique (shm_pages_unshared)" },
        { "memdedup_host_ksm_pages_volatile", "gauge",
          snap->ksm.pages_volatile,
          "Pages changing too fast for KSM (shm_pages_volatile)" },
        { "memdedup_host_ksm_full_scans_total", "counter",
          snap->ksm.full_scans,
          "Full scans of all mergeable memory by ksmd (shm_full_scans)" },
        { "memdedup_host_ksm_pages_to_scan", "gauge",
          snap->ksm.pages_to_scan,
          "Pages ksmd scans per wake-up (shm_pages_to_scan)" },
        { "memdedup_host_ksm_sleep_milliseconds", "gauge",
          snap->ksm.sleep_millisecs,
          "Milliseconds ksmd sleeps between scans (shm_sleep_millisecs)" },
        { "memdedup_host_ksm_merge_across_nodes", "gauge",
          snap->ksm.merge_across_nodes,
          "Whether KSM merges across NUMA nodes (shm_merge_across_nodes)" },
    };
    size_t i, j, m;

    prom_header(out, "memdedup_domain_enabled", "gauge",
                "1 if the domain's QEMU runs memdedup with at least one "
                "managed backend, 0 if not");
    for (i = 0; i < snap->nr_domains; i++) {
        const struct domain_stats *d = &snap->domains[i];

        fputs("memdedup_domain_enabled{domain=\"", out);
        print_label(out, d->name);
        fprintf(out, "\",status=\"%s\"} %d\n",
                domain_status_names[d->status],
                d->status == DOMAIN_MEMDEDUP);
    }
    for (m = 0; m < sizeof(engine) / sizeof(engine[0]); m++) {
        prom_header(out, engine[m].name, engine[m].type, engine[m].help);
        for (i = 0; i < snap->nr_domains; i++) {
            const struct domain_stats *d = &snap->domains[i];

            if (d->status == DOMAIN_MEMDEDUP) {
                fprintf(out, "%s{domain=\"", engine[m].name);
                print_label(out, d->name);
                fprintf(out, "\"} %.*f\n", engine[m].scale == 1 ? 0 : 9,
                        engine[m].get(d) / engine[m].scale);
            }
        }
    }
    for (m = 0; m < sizeof(board) / sizeof(board[0]); m++) {
        bool headed = false;

        for (i = 0; i < snap->nr_domains; i++) {
            const struct domain_stats *d = &snap->domains[i];

            if (d->status == DOMAIN_MEMDEDUP && d->board.present) {
                prom_sample_start(out, &headed, board[m].name, board[m].type,
                                  board[m].help, d->name);
                fprintf(out, "} %" PRIu64 "\n", board[m].get(&d->board));
            }
        }
    }
    for (m = 0; m < sizeof(metrics) / sizeof(metrics[0]); m++) {
        bool headed = false;

        for (i = 0; i < snap->nr_domains; i++) {
            const struct domain_stats *d = &snap->domains[i];

            for (j = 0; j < d->nr_backends; j++) {
                const struct backend_stats *b = &d->backends[j];

                if (metrics[m].has && !metrics[m].has(b)) {
                    continue;
                }
                prom_sample_start(out, &headed, metrics[m].name,
                                  metrics[m].type, metrics[m].help, d->name);
                fputs(",backend=\"", out);
                print_label(out, b->id);
                fprintf(out, "\"} %" PRIu64 "\n", metrics[m].get(b));
            }
        }
    }
    prom_header(out, "memdedup_backend_attributed_saving_bytes", "gauge",
                "The backend's share of what KSM saves host wide: a page "
                "mapped N times saves N - 1, (N - 1) / N to each mapping");
    for (i = 0; i < snap->nr_domains; i++) {
        const struct domain_stats *d = &snap->domains[i];

        for (j = 0; j < d->nr_backends; j++) {
            const struct backend_stats *b = &d->backends[j];

            if (!b->has_attributed) {
                continue;
            }
            fputs("memdedup_backend_attributed_saving_bytes{domain=\"", out);
            print_label(out, d->name);
            fputs("\",backend=\"", out);
            print_label(out, b->id);
            fprintf(out, "\",accuracy=\"%s\"} %" PRIu64 "\n",
                    b->attributed_exact ? "exact" : "upper-bound",
                    b->attributed);
        }
    }
    prom_header(out, "memdedup_host_ksm_up", "gauge",
                "1 if libvirt reported the host's KSM parameters");
    fprintf(out, "memdedup_host_ksm_up %d\n", snap->ksm.available);
    for (m = 0; m < sizeof(host) / sizeof(host[0]); m++) {
        if (host[m].value < 0) {
            continue;
        }
        prom_header(out, host[m].name, host[m].type, host[m].help);
        fprintf(out, "%s %lld\n", host[m].name, host[m].value);
    }
}

/* ------------------------------------------------------------------ */
/* Main                                                                */
/* ------------------------------------------------------------------ */

static void usage(FILE *out)
{
    fprintf(out,
"Usage: %s [OPTION]...\n"
"Show the memdedup statistics of every running libvirt domain and the\n"
"host's KSM totals.\n"
"\n"
"  -c, --connect URI   libvirt connection URI (default: libvirt's default,\n"
"                      e.g. qemu:///system as root)\n"
"  -j, --json          print JSON: host-ksm, and per domain its status and\n"
"                      query-memdedup's reply\n"
"  -p, --prometheus    print Prometheus text exposition format (for\n"
"                      node-exporter's textfile collector)\n"
"  -s, --sort KEY      order the domains by KEY: name (the default) or\n"
"                      attributed (largest attributed saving first)\n"
"  -w, --watch SECS    refresh every SECS seconds until interrupted\n"
"  -o, --output FILE   write to FILE (replaced atomically at each refresh)\n"
"                      instead of standard output\n"
"  -h, --help          show this help and exit\n"
"\n"
"The table shows one row per memory backend, sizes in MiB; a domain\n"
"without memdedup (QEMU lacks query-memdedup, or manages no backend) is\n"
"listed as such.  ATTRIBUTED is each backend's share of the host's\n"
"saving (see the man page); the HOST row is what the host saved\n"
"(pages_sharing), which the shares of all its KSM users add up to.\n"
"Querying QEMU's monitor needs a read-write connection.\n"
"\n"
"Exit status: 0 on success, 1 if libvirt cannot be reached or queried,\n"
"2 on a usage error.\n", progname);
}

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* Print one snapshot to stdout or, atomically, to @path. */
static bool emit(const struct snapshot *snap, enum format format,
                 const char *path, bool clear)
{
    char *tmp = NULL;
    FILE *out = stdout;

    if (path) {
        if (asprintf(&tmp, "%s.tmp.%ld", path, (long)getpid()) < 0) {
            die(EXIT_FAILURE_LIBVIRT, "out of memory");
        }
        out = fopen(tmp, "w");
        if (!out) {
            fprintf(stderr, "%s: cannot write %s: %s\n", progname, tmp,
                    strerror(errno));
            free(tmp);
            return false;
        }
    } else if (clear) {
        fputs("\033[H\033[2J", out);
    }
    switch (format) {
    case FORMAT_TABLE:
        print_table(out, snap);
        break;
    case FORMAT_JSON:
        print_json(out, snap);
        break;
    case FORMAT_PROMETHEUS:
        print_prometheus(out, snap);
        break;
    }
    if (!path) {
        fflush(out);
        return !ferror(out);
    }
    if (fclose(out) != 0 || rename(tmp, path) != 0) {
        fprintf(stderr, "%s: cannot write %s: %s\n", progname, path,
                strerror(errno));
        unlink(tmp);
        free(tmp);
        return false;
    }
    free(tmp);
    return true;
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        { "connect", required_argument, NULL, 'c' },
        { "json", no_argument, NULL, 'j' },
        { "prometheus", no_argument, NULL, 'p' },
        { "watch", required_argument, NULL, 'w' },
        { "output", required_argument, NULL, 'o' },
        { "sort", required_argument, NULL, 's' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *uri = NULL, *output = NULL;
    enum format format = FORMAT_TABLE;
    enum sort_key sort = SORT_NAME;
    long watch = 0;
    virConnectPtr conn;
    struct sigaction sa = { .sa_handler = on_signal };
    int opt, status = EXIT_OK;
    bool clear;

    while ((opt = getopt_long(argc, argv, "c:jpw:o:s:h", options, NULL)) != -1) {
        char *end;

        switch (opt) {
        case 'c':
            uri = optarg;
            break;
        case 'j':
            format = FORMAT_JSON;
            break;
        case 'p':
            format = FORMAT_PROMETHEUS;
            break;
        case 'w':
            errno = 0;
            watch = strtol(optarg, &end, 10);
            if (errno || *end || end == optarg || watch < 1) {
                fprintf(stderr, "%s: --watch needs a whole number of seconds "
                        "of at least 1, not '%s'\n", progname, optarg);
                return EXIT_USAGE;
            }
            break;
        case 'o':
            output = optarg;
            break;
        case 's':
            if (!strcmp(optarg, "name")) {
                sort = SORT_NAME;
            } else if (!strcmp(optarg, "attributed")) {
                sort = SORT_ATTRIBUTED;
            } else {
                fprintf(stderr, "%s: --sort takes name or attributed, not "
                        "'%s'\n", progname, optarg);
                return EXIT_USAGE;
            }
            break;
        case 'h':
            usage(stdout);
            return EXIT_OK;
        default:
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "%s: unexpected argument '%s'\n", progname,
                argv[optind]);
        usage(stderr);
        return EXIT_USAGE;
    }

    virSetErrorFunc(NULL, libvirt_quiet);
    if (virInitialize() < 0) {
        die(EXIT_FAILURE_LIBVIRT, "cannot initialize libvirt: %s",
            libvirt_error());
    }
    conn = virConnectOpen(uri);
    if (!conn) {
        die(EXIT_FAILURE_LIBVIRT, "cannot connect to libvirt at '%s': %s",
            uri ? uri : "(default URI)", libvirt_error());
    }

    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    clear = watch && format == FORMAT_TABLE && !output && isatty(1);
    do {
        struct snapshot snap;
        struct timespec pause = { .tv_sec = watch };

        if (!snapshot_take(conn, sort, &snap)) {
            status = EXIT_FAILURE_LIBVIRT;
            break;
        }
        if (!emit(&snap, format, output, clear)) {
            status = EXIT_FAILURE_LIBVIRT;
        }
        snapshot_free(&snap);
        if (!watch || status != EXIT_OK) {
            break;
        }
        while (!interrupted && nanosleep(&pause, &pause) < 0 &&
               errno == EINTR) {
            /* a signal other than ours: sleep the rest */
        }
    } while (!interrupted);

    virConnectClose(conn);
    return status;
}
