/*
 * memory-backend-ksm: guest RAM whose KSM registration belongs to memdedup
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * Anonymous private RAM, like memory-backend-ram, usable wherever a memdev
 * is.  It never madvises its RAM MERGEABLE wholesale: it hands the RAM to
 * the memdedup engine, which scans it and registers with KSM only the
 * regions its dedup-policy selects.  The base type's "merge" property
 * must therefore stay off.
 */

#include "qemu/osdep.h"
#include "qemu/module.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "qapi/visitor.h"
#include "qom/object_interfaces.h"
#include "sysemu/hostmem.h"
#include "sysemu/memdedup.h"

#define TYPE_MEMORY_BACKEND_KSM "memory-backend-ksm"
/* Largest size accepted, bytes: more than any host maps. */
#define KSM_BACKEND_SIZE_MAX    (1ULL << 56)

OBJECT_DECLARE_SIMPLE_TYPE(HostMemoryBackendKsm, MEMORY_BACKEND_KSM)

struct HostMemoryBackendKsm {
    HostMemoryBackend parent_obj;

    MemdedupParams params;      /* as set through the properties */
    MemdedupBlock *block;       /* the engine's handle, once allocated */
};

/*
 * Refuse host bindings the kernel would refuse with a bare EINVAL from
 * mbind(2) (QEMU itself checks only the policy/host-nodes pairing and
 * nodes >= MAX_NODES): host nodes that are not online, and policy
 * "preferred" with more than one node.
 */
static bool ksm_backend_check_host_nodes(HostMemoryBackend *backend,
                                         Error **errp)
{
    unsigned long online[BITS_TO_LONGS(MEMDEDUP_NUMA_NODES_MAX)];
    unsigned long count = bitmap_count_one(backend->host_nodes, MAX_NODES);
    unsigned long n;

    if (!count) {
        return true;            /* unbound */
    }
    if (backend->policy == HOST_MEM_POLICY_PREFERRED && count > 1) {
        error_setg(errp, "memory-backend-ksm: policy 'preferred' takes one "
                   "host node, not %lu; use policy 'bind' or 'interleave' "
                   "for several", count);
        return false;
    }
    /* Hosts with more nodes than the engine tracks: mbind decides. */
    if (!memdedup_read_host_nodes(online)) {
        return true;
    }
    for (n = find_first_bit(backend->host_nodes, MAX_NODES); n < MAX_NODES;
         n = find_next_bit(backend->host_nodes, MAX_NODES, n + 1)) {
        if (n >= MEMDEDUP_NUMA_NODES_MAX || !test_bit(n, online)) {
            error_setg(errp, "memory-backend-ksm: property 'host-nodes' "
                       "names host node %lu, but the host has %d online "
                       "nodes (/sys/devices/system/node/online)", n,
                       (int)bitmap_count_one(online, MEMDEDUP_NUMA_NODES_MAX));
            return false;
        }
    }
    return true;
}

static void ksm_backend_memory_alloc(HostMemoryBackend *backend, Error **errp)
{
    HostMemoryBackendKsm *ksm = MEMORY_BACKEND_KSM(backend);
    g_autofree char *name = NULL;
    const char *id;
    Error *local_err = NULL;
    uint32_t ram_flags;

    if (!backend->size) {
        error_setg(errp, "can't create backend with size 0");
        return;
    }
    /*
     * QEMU aborts when no RAM offset range fits the block; no host maps
     * more than 2^56 bytes of user space (5-level x86-64 page tables).
     */
    if (backend->size > KSM_BACKEND_SIZE_MAX) {
        error_setg(errp, "memory-backend-ksm: property 'size' must be at "
                   "most %" PRIu64 " PiB, not %" PRIu64,
                   (uint64_t)(KSM_BACKEND_SIZE_MAX / PiB), backend->size);
        return;
    }
    if (backend->merge) {
        error_setg(errp, "memory-backend-ksm: property 'merge' must be off: "
                   "use dedup-policy=all to register all memory with KSM");
        return;
    }
    if (backend->share) {
        error_setg(errp, "memory-backend-ksm: property 'share' must be off: "
                   "KSM merges only private anonymous memory");
        return;
    }

    if (!ksm_backend_check_host_nodes(backend, errp)) {
        return;
    }

    name = host_memory_backend_get_name(backend);
    ram_flags = backend->reserve ? 0 : RAM_NORESERVE;
    memory_region_init_ram_flags_nomigrate(&backend->mr, OBJECT(backend),
                                           name, backend->size, ram_flags,
                                           &local_err);
    if (local_err) {
        error_propagate(errp, local_err);
        return;
    }

    id = object_get_canonical_path_component(OBJECT(backend));
    /* On failure the RAM goes with the backend, when it is finalized. */
    ksm->block = memdedup_block_add(id ? id : name,
                                    memory_region_get_ram_ptr(&backend->mr),
                                    backend->size, &ksm->params, errp);
}

/* Push changed parameters to the engine once the RAM exists. */
static bool ksm_backend_update(HostMemoryBackendKsm *ksm,
                               const MemdedupParams *params, Error **errp)
{
    if (ksm->block && !memdedup_block_set_params(ksm->block, params, errp)) {
        return false;
    }
    ksm->params = *params;
    return true;
}

static int ksm_backend_get_policy(Object *obj, Error **errp)
{
    return MEMORY_BACKEND_KSM(obj)->params.policy;
}

static void ksm_backend_set_policy(Object *obj, int value, Error **errp)
{
    HostMemoryBackendKsm *ksm = MEMORY_BACKEND_KSM(obj);
    MemdedupParams params = ksm->params;

    params.policy = value;
    ksm_backend_update(ksm, &params, errp);
}

static void ksm_backend_get_region_size(Object *obj, Visitor *v,
                                        const char *name, void *opaque,
                                        Error **errp)
{
    visit_type_size(v, name, &MEMORY_BACKEND_KSM(obj)->params.region_size,
                    errp);
}

static void ksm_backend_set_region_size(Object *obj, Visitor *v,
                                        const char *name, void *opaque,
                                        Error **errp)
{
    HostMemoryBackendKsm *ksm = MEMORY_BACKEND_KSM(obj);
    uint64_t value;

    if (host_memory_backend_mr_inited(MEMORY_BACKEND(obj))) {
        error_setg(errp, "cannot change property '%s' of %s after it is "
                   "created", name, object_get_typename(obj));
        return;
    }
    if (!visit_type_size(v, name, &value, errp)) {
        return;
    }
    if (!is_power_of_2(value) || value < MEMDEDUP_REGION_SIZE_MIN ||
        value > MEMDEDUP_REGION_SIZE_MAX ||
        value < qemu_real_host_page_size()) {
        error_setg(errp, "property '%s' of %s must be a power of two between "
                   "64 KiB and 1 GiB, not %" PRIu64, name,
                   object_get_typename(obj), value);
        return;
    }
    ksm->params.region_size = value;
}

/*
 * The percentage properties: a uint8_t of MemdedupParams (at @offset)
 * from @min to 100.
 */
typedef struct KsmBackendPercent {
    size_t offset;
    uint8_t min;
} KsmBackendPercent;

static const KsmBackendPercent ksm_backend_duplicate_threshold = {
    .offset = offsetof(MemdedupParams, duplicate_threshold), .min = 1,
};
static const KsmBackendPercent ksm_backend_cow_threshold = {
    .offset = offsetof(MemdedupParams, cow_threshold), .min = 0,
};

static void ksm_backend_get_percent(Object *obj, Visitor *v,
                                    const char *name, void *opaque,
                                    Error **errp)
{
    const KsmBackendPercent *p = opaque;
    uint8_t value = *((uint8_t *)&MEMORY_BACKEND_KSM(obj)->params +
                      p->offset);

    visit_type_uint8(v, name, &value, errp);
}

static void ksm_backend_set_percent(Object *obj, Visitor *v,
                                    const char *name, void *opaque,
                                    Error **errp)
{
    const KsmBackendPercent *p = opaque;
    HostMemoryBackendKsm *ksm = MEMORY_BACKEND_KSM(obj);
    MemdedupParams params = ksm->params;
    uint8_t value;

    if (!visit_type_uint8(v, name, &value, errp)) {
        return;
    }
    if (value < p->min || value > 100) {
        error_setg(errp, "property '%s' of %s must be a percentage between "
                   "%u%s and 100, not %u", name, object_get_typename(obj),
                   p->min, p->min ? "" : " (off)", value);
        return;
    }
    *((uint8_t *)&params + p->offset) = value;
    ksm_backend_update(ksm, &params, errp);
}

static void ksm_backend_get_cow_backoff(Object *obj, Visitor *v,
                                        const char *name, void *opaque,
                                        Error **errp)
{
    visit_type_uint32(v, name, &MEMORY_BACKEND_KSM(obj)->params.cow_backoff,
                      errp);
}

static void ksm_backend_set_cow_backoff(Object *obj, Visitor *v,
                                        const char *name, void *opaque,
                                        Error **errp)
{
    HostMemoryBackendKsm *ksm = MEMORY_BACKEND_KSM(obj);
    MemdedupParams params = ksm->params;
    uint32_t value;

    if (!visit_type_uint32(v, name, &value, errp)) {
        return;
    }
    if (value < MEMDEDUP_COW_BACKOFF_MIN || value > MEMDEDUP_COW_BACKOFF_MAX) {
        error_setg(errp, "property '%s' of %s must be between %u and %u "
                   "milliseconds, not %" PRIu32, name,
                   object_get_typename(obj), MEMDEDUP_COW_BACKOFF_MIN,
                   MEMDEDUP_COW_BACKOFF_MAX, value);
        return;
    }
    params.cow_backoff = value;
    ksm_backend_update(ksm, &params, errp);
}

static bool ksm_backend_get_manage_thp(Object *obj, Error **errp)
{
    return MEMORY_BACKEND_KSM(obj)->params.manage_thp;
}

static void ksm_backend_set_manage_thp(Object *obj, bool value, Error **errp)
{
    HostMemoryBackendKsm *ksm = MEMORY_BACKEND_KSM(obj);

    if (host_memory_backend_mr_inited(MEMORY_BACKEND(obj))) {
        error_setg(errp, "cannot change property 'manage-thp' of %s after "
                   "it is created", object_get_typename(obj));
        return;
    }
    ksm->params.manage_thp = value;
}

static bool ksm_backend_get_force_unmerge(Object *obj, Error **errp)
{
    return MEMORY_BACKEND_KSM(obj)->params.force_unmerge;
}

static void ksm_backend_set_force_unmerge(Object *obj, bool value,
                                          Error **errp)
{
    HostMemoryBackendKsm *ksm = MEMORY_BACKEND_KSM(obj);
    MemdedupParams params = ksm->params;

    params.force_unmerge = value;
    ksm_backend_update(ksm, &params, errp);
}

/*
 * Two properties of the base type must stay off: "merge", whose setter
 * madvises the whole RAM MERGEABLE on a running backend, behind the
 * engine's back, and "share" (KSM merges only private memory; the base
 * setter's error at runtime does not say which property it refuses).
 * QOM cannot override a parent's property, so the base class's setters
 * are wrapped: for memory-backend-ksm "on" is refused with a clear error
 * (at creation and at runtime) and "off" changes nothing.  A backend of
 * another type that the engine adopted (the memdedup object's "adopt")
 * has its "merge" refused the same way; for every other backend the
 * base setter runs unchanged.
 */
static const struct {
    const char *name;
    const char *reason;
} ksm_backend_fixed_off[] = {
    { "merge", "use dedup-policy=all to register all memory with KSM" },
    { "share", "KSM merges only private anonymous memory" },
};
static ObjectPropertyAccessor *ksm_backend_base_set[2];

/* A backend of another type whose RAM the engine manages (adopted). */
static bool ksm_backend_adopted(Object *obj)
{
    HostMemoryBackend *backend = MEMORY_BACKEND(obj);

    return host_memory_backend_mr_inited(backend) &&
           memdedup_manages(memory_region_get_ram_ptr(&backend->mr));
}

static void ksm_backend_set_fixed_off(Object *obj, Visitor *v,
                                      const char *name, void *opaque,
                                      Error **errp)
{
    size_t i = !!strcmp(name, ksm_backend_fixed_off[0].name);
    bool ksm = object_dynamic_cast(obj, TYPE_MEMORY_BACKEND_KSM);
    bool value;

    if (!ksm && (i != 0 || !ksm_backend_adopted(obj))) {
        ksm_backend_base_set[i](obj, v, name, opaque, errp);
        return;
    }
    if (!visit_type_bool(v, name, &value, errp)) {
        return;
    }
    if (value && ksm) {
        error_setg(errp, "memory-backend-ksm: property '%s' must be off: %s",
                   name, ksm_backend_fixed_off[i].reason);
    } else if (value) {
        error_setg(errp, "%s '%s': property 'merge' must stay off while "
                   "memdedup manages this backend (adopted by the %s "
                   "object): the engine registers its RAM with KSM",
                   object_get_typename(obj),
                   object_get_canonical_path_component(obj), TYPE_MEMDEDUP);
    }
}

static void ksm_backend_instance_init(Object *obj)
{
    HostMemoryBackendKsm *ksm = MEMORY_BACKEND_KSM(obj);

    /* The base type follows the machine's mem-merge; the engine decides. */
    MEMORY_BACKEND(obj)->merge = false;
    ksm->params.policy = MEMDEDUP_POLICY_TARGETED;
    ksm->params.region_size = MEMDEDUP_REGION_SIZE_DEFAULT;
    ksm->params.duplicate_threshold = MEMDEDUP_THRESHOLD_DEFAULT;
    ksm->params.manage_thp = true;
    ksm->params.force_unmerge = false;
    ksm->params.cow_threshold = MEMDEDUP_COW_THRESHOLD_DEFAULT;
    ksm->params.cow_backoff = MEMDEDUP_COW_BACKOFF_DEFAULT;
}

static void ksm_backend_instance_finalize(Object *obj)
{
    HostMemoryBackendKsm *ksm = MEMORY_BACKEND_KSM(obj);

    /* The RAM is already gone: the engine dropped it in ram_block_removed. */
    memdedup_block_release(ksm->block);
    ksm->block = NULL;
}

static void ksm_backend_class_init(ObjectClass *oc, void *data)
{
    HostMemoryBackendClass *bc = MEMORY_BACKEND_CLASS(oc);
    size_t i;

    bc->alloc = ksm_backend_memory_alloc;

    QEMU_BUILD_BUG_ON(ARRAY_SIZE(ksm_backend_fixed_off) !=
                      ARRAY_SIZE(ksm_backend_base_set));
    for (i = 0; i < ARRAY_SIZE(ksm_backend_fixed_off); i++) {
        ObjectProperty *prop =
            object_class_property_find(oc, ksm_backend_fixed_off[i].name);

        if (prop && prop->set != ksm_backend_set_fixed_off) {
            ksm_backend_base_set[i] = prop->set;
            prop->set = ksm_backend_set_fixed_off;
        }
    }

    object_class_property_add_enum(oc, "dedup-policy", "MemdedupPolicy",
                                   &MemdedupPolicy_lookup,
                                   ksm_backend_get_policy,
                                   ksm_backend_set_policy);
    object_class_property_set_description(oc, "dedup-policy",
        "What to register with KSM: targeted (default), all, zero-only, "
        "estimate or off");
    object_class_property_add(oc, "region-size", "size",
                              ksm_backend_get_region_size,
                              ksm_backend_set_region_size, NULL, NULL);
    object_class_property_set_description(oc, "region-size",
        "Granularity of classification and registration, a power of two "
        "between 64K and 1G (default 2M)");
    object_class_property_add(oc, "duplicate-threshold", "uint8",
                              ksm_backend_get_percent,
                              ksm_backend_set_percent, NULL,
                              (void *)&ksm_backend_duplicate_threshold);
    object_class_property_set_description(oc, "duplicate-threshold",
        "Percentage of a region's resident pages that must be duplicate "
        "or zero for it to be registered, 1-100 (default 10)");
    object_class_property_add(oc, "cow-threshold", "uint8",
                              ksm_backend_get_percent,
                              ksm_backend_set_percent, NULL,
                              (void *)&ksm_backend_cow_threshold);
    object_class_property_set_description(oc, "cow-threshold",
        "Percentage of a region's merged pages that, broken by writes "
        "between two passes, take the region off KSM for a while, "
        "0-100 (default 50, 0: never)");
    object_class_property_add(oc, "cow-backoff", "uint32",
                              ksm_backend_get_cow_backoff,
                              ksm_backend_set_cow_backoff, NULL, NULL);
    object_class_property_set_description(oc, "cow-backoff",
        "Milliseconds a churning region first stays off KSM, doubled while "
        "the churn continues (default 60000)");
    object_class_property_add_bool(oc, "manage-thp",
                                   ksm_backend_get_manage_thp,
                                   ksm_backend_set_manage_thp);
    object_class_property_set_description(oc, "manage-thp",
        "Keep mergeable regions on small pages and give stable unique "
        "regions transparent huge pages back (default on)");
    object_class_property_add_bool(oc, "force-unmerge",
                                   ksm_backend_get_force_unmerge,
                                   ksm_backend_set_force_unmerge);
    object_class_property_set_description(oc, "force-unmerge",
        "Unregister merged memory even when the host's MemAvailable "
        "cannot absorb the unmerged copies (default off)");
}

static const TypeInfo ksm_backend_info = {
    .name = TYPE_MEMORY_BACKEND_KSM,
    .parent = TYPE_MEMORY_BACKEND,
    .instance_size = sizeof(HostMemoryBackendKsm),
    .instance_init = ksm_backend_instance_init,
    .instance_finalize = ksm_backend_instance_finalize,
    .class_init = ksm_backend_class_init,
};

static void ksm_backend_register_types(void)
{
    type_register_static(&ksm_backend_info);
}

type_init(ksm_backend_register_types);
