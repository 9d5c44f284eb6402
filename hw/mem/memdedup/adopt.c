/*
 * memdedup: adopting memory-backend-ram objects
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * Management software builds the guest's main RAM itself: libvirt emits
 * "-object memory-backend-ram,id=pc.ram" (or one "ram-nodeN" per guest
 * NUMA node) and "-machine memory-backend=pc.ram", and QEMU creates a
 * "pc.ram" memory-backend-ram of its own for a plain "-m".  The memdedup
 * object's "adopt" (a list of backend ids) and "adopt-ram" (every
 * memory-backend-ram) properties put such backends under the engine with
 * the default policy, as if they were memory-backend-ksm objects.
 *
 * Memory backends are created after the memdedup object on the command
 * line, so adoption waits for the machine-init-done notifier: every
 * backend exists and owns its RAM then, and the guest has not run yet.
 * A memdedup object created at runtime (object-add) adopts at once.
 *
 * The base type madvised the RAM MERGEABLE if its "merge" property was
 * on (the machine's mem-merge, the default).  Adoption turns "merge" off
 * and memdedup_block_add() undoes the madvise, exactly as for
 * memory-backend-ksm; nothing can be merged before the guest runs, so
 * this unmerges nothing.
 *
 * Everything here runs under the BQL.
 */

#include "qemu/osdep.h"
#include "qemu/error-report.h"
#include "qapi/clone-visitor.h"
#include "qapi/error.h"
#include "qapi/qapi-builtin-visit.h"
#include "qapi/visitor.h"
#include "hw/qdev-core.h"
#include "sysemu/hostmem.h"
#include "sysemu/sysemu.h"
#include "memdedup-internal.h"
#include "trace.h"

struct MemdedupAdopt {
    strList *ids;               /* "adopt": backend ids named by the user */
    bool all_ram;               /* "adopt-ram": every memory-backend-ram */
    Notifier machine_done;      /* adoption at machine-init-done */
    bool notifier_added;        /* machine_done is registered */
    GPtrArray *blocks;          /* MemdedupBlock handles of adopted RAM */
};

/* One adoption run; @backends is only compared, never dereferenced. */
typedef struct MemdedupAdoptRun {
    MemdedupAdopt *adopt;
    GPtrArray *backends;        /* HostMemoryBackend adopted in this run */
} MemdedupAdoptRun;

/* Can the engine manage @obj, named @id by the "adopt" property? */
static bool memdedup_adopt_check(Object *obj, const char *id, Error **errp)
{
    if (!obj) {
        error_setg(errp, "property 'adopt' of %s: no object with id '%s'",
                   TYPE_MEMDEDUP, id);
        return false;
    }
    if (!object_dynamic_cast(obj, TYPE_MEMORY_BACKEND)) {
        error_setg(errp, "property 'adopt' of %s: object '%s' is a %s, not a "
                   "memory backend", TYPE_MEMDEDUP, id,
                   object_get_typename(obj));
        return false;
    }
    if (strcmp(object_get_typename(obj), TYPE_MEMORY_BACKEND_RAM)) {
        error_setg(errp, "property 'adopt' of %s: object '%s' is a %s, not a "
                   "%s", TYPE_MEMDEDUP, id, object_get_typename(obj),
                   TYPE_MEMORY_BACKEND_RAM);
        return false;
    }
    if (!host_memory_backend_mr_inited(MEMORY_BACKEND(obj))) {
        error_setg(errp, "property 'adopt' of %s: backend '%s' has no memory "
                   "yet", TYPE_MEMDEDUP, id);
        return false;
    }
    if (MEMORY_BACKEND(obj)->share) {
        error_setg(errp, "property 'adopt' of %s: backend '%s' has share=on; "
                   "KSM merges only private anonymous memory",
                   TYPE_MEMDEDUP, id);
        return false;
    }
    return true;
}

/* Put @backend, whose object id is @id, under the engine. */
static bool memdedup_adopt_backend(MemdedupAdoptRun *run,
                                   HostMemoryBackend *backend,
                                   const char *id, Error **errp)
{
    MemdedupParams params = {
        .policy = MEMDEDUP_POLICY_TARGETED,
        .region_size = MEMDEDUP_REGION_SIZE_DEFAULT,
        .duplicate_threshold = MEMDEDUP_THRESHOLD_DEFAULT,
        .manage_thp = true,
        .force_unmerge = false,
        .cow_threshold = MEMDEDUP_COW_THRESHOLD_DEFAULT,
        .cow_backoff = MEMDEDUP_COW_BACKOFF_DEFAULT,
    };
    MemdedupBlock *blk;

    if (g_ptr_array_find(run->backends, backend, NULL)) {
        return true;            /* named twice, or also a memory-backend-ram */
    }

    /* Registration belongs to the engine from now on (see above). */
    backend->merge = false;
    blk = memdedup_block_add(id, memory_region_get_ram_ptr(&backend->mr),
                             backend->size, &params, errp);
    if (!blk) {
        return false;
    }
    g_ptr_array_add(run->adopt->blocks, blk);
    g_ptr_array_add(run->backends, backend);
    trace_memdedup_adopted(id, backend->size);
    return true;
}

static int memdedup_adopt_ram_one(Object *obj, void *opaque)
{
    MemdedupAdoptRun *run = opaque;
    Error *err = NULL;

    if (strcmp(object_get_typename(obj), TYPE_MEMORY_BACKEND_RAM) ||
        !host_memory_backend_mr_inited(MEMORY_BACKEND(obj)) ||
        MEMORY_BACKEND(obj)->share) {
        return 0;               /* adopt-ram skips what it cannot manage */
    }
    if (!memdedup_adopt_backend(run, MEMORY_BACKEND(obj),
                                object_get_canonical_path_component(obj),
                                &err)) {
        warn_report_err(err);
    }
    return 0;
}

/*
 * Adopt everything asked for.  All named backends are checked first, so
 * that an error adopts none of them.
 */
static bool memdedup_adopt_all(MemdedupAdopt *adopt, Error **errp)
{
    Object *root = object_get_objects_root();
    g_autoptr(GPtrArray) backends = g_ptr_array_new();
    MemdedupAdoptRun run = { .adopt = adopt, .backends = backends };
    strList *e;

    for (e = adopt->ids; e; e = e->next) {
        if (!memdedup_adopt_check(object_resolve_path_component(root,
                                                                e->value),
                                  e->value, errp)) {
            return false;
        }
    }
    for (e = adopt->ids; e; e = e->next) {
        Object *obj = object_resolve_path_component(root, e->value);

        if (!memdedup_adopt_backend(&run, MEMORY_BACKEND(obj), e->value,
                                    errp)) {
            return false;
        }
    }
    if (adopt->all_ram) {
        object_child_foreach(root, memdedup_adopt_ram_one, &run);
        if (!backends->len) {
            warn_report("%s: adopt-ram=on, but there is no memory-backend-ram "
                        "to adopt", TYPE_MEMDEDUP);
        }
    }
    return true;
}

/* The guest must not run with a request that cannot be honoured. */
static void memdedup_adopt_machine_done(Notifier *notifier, void *data)
{
    MemdedupAdopt *adopt = container_of(notifier, MemdedupAdopt,
                                        machine_done);

    if (!memdedup_adopt_all(adopt, &error_fatal)) {
        g_assert_not_reached();
    }
}

bool memdedup_adopt_complete(strList *ids, bool all_ram,
                             MemdedupAdopt **adoptp, Error **errp)
{
    MemdedupAdopt *adopt;

    *adoptp = NULL;
    if (!ids && !all_ram) {
        return true;
    }
    /* Set before adopting: what a failure adopted is released with it. */
    adopt = *adoptp = g_new0(MemdedupAdopt, 1);
    adopt->blocks = g_ptr_array_new();
    adopt->ids = QAPI_CLONE(strList, ids);
    adopt->all_ram = all_ram;
    if (phase_check(PHASE_MACHINE_READY)) {
        return memdedup_adopt_all(adopt, errp);
    }
    adopt->machine_done.notify = memdedup_adopt_machine_done;
    qemu_add_machine_init_done_notifier(&adopt->machine_done);
    adopt->notifier_added = true;
    return true;
}

void memdedup_adopt_free(MemdedupAdopt *adopt)
{
    guint i;

    if (!adopt) {
        return;
    }
    if (adopt->notifier_added) {
        qemu_remove_machine_init_done_notifier(&adopt->machine_done);
    }
    /* The engine stops managing the RAM; its registration stays as is. */
    for (i = 0; i < adopt->blocks->len; i++) {
        memdedup_block_release(g_ptr_array_index(adopt->blocks, i));
    }
    g_ptr_array_free(adopt->blocks, true);
    qapi_free_strList(adopt->ids);
    g_free(adopt);
}

