/*
 * memdedup: the memdedup object (engine-wide settings)
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * TYPE_MEMDEDUP, "-object memdedup,...": at most one per process.  It
 * holds the engine-wide settings (scan rate, threads, rescan interval,
 * migration hints), the board the engine joins and the backends it
 * adopts; complete pushes them to the engine, finalize puts the engine
 * back to its defaults.  Main loop, BQL held.
 */

#include "qemu/osdep.h"
#include "qemu/lockable.h"
#include "qemu/module.h"
#include "qemu/units.h"
#include "qapi/clone-visitor.h"
#include "qapi/error.h"
#include "qapi/qapi-builtin-visit.h"
#include "qapi/visitor.h"
#include "qom/object_interfaces.h"
#include "sysemu/sysemu.h"
#include "memdedup-internal.h"

OBJECT_DECLARE_SIMPLE_TYPE(MemdedupSettings, MEMDEDUP)

struct MemdedupSettings {
    Object parent_obj;
    bool complete;              /* this object owns the engine settings */
    uint64_t scan_rate;         /* bytes per second */
    uint32_t scan_threads;
    uint32_t rescan_interval;   /* milliseconds */
    uint32_t rescan_backoff;    /* factor, 1-64 */
    uint32_t vma_budget;        /* 0: from vm.max_map_count */
    uint64_t x_index_memory;    /* test: index memory to refuse past; 0: no */
    char *x_meminfo;            /* test: a file read for /proc/meminfo */
    char *x_ksm_sysfs;          /* test: a directory read for KSM's sysfs */
    char *x_madvise_fault;      /* test: "ERRNO[:COUNT]" madvise refusals */
    int fault_err;              /* ... parsed: errno, 0: none */
    int64_t fault_count;        /* ... calls to refuse, negative: every */
    bool migrate_hints;         /* send registered regions when migrating */
    bool residency_watch;       /* partial passes between passes (watch.c) */
    bool x_rearm;               /* stuck pairs registered again (rearm.c) */
    bool completed;             /* complete ran: adopt* are fixed */
    strList *adopt_ids;         /* "adopt": memory-backend-ram ids */
    bool adopt_ram;             /* "adopt-ram": every memory-backend-ram */
    MemdedupAdopt *adopt;       /* what was adopted (adopt.c), or NULL */
    MemdedupBoardConfig board;  /* board* properties; board.board: open */
};

/* Push the object's settings to the engine; BQL held. */
static void memdedup_settings_apply(MemdedupSettings *s)
{
    MemdedupEngine *engine = &memdedup_engine;

    if (!s->complete) {
        return;
    }
    QEMU_LOCK_GUARD(&engine->lock);
    engine->scan_rate = s->scan_rate;
    engine->scan_threads = s->scan_threads;
    engine->send_hints = s->migrate_hints;
    qatomic_set(&engine->residency_watch, s->residency_watch);
    qatomic_set(&engine->rearm, s->x_rearm);
    qatomic_set(&engine->rescan_interval, s->rescan_interval);
    engine->rescan_backoff = s->rescan_backoff;
    engine->vma_budget = s->vma_budget ? s->vma_budget :
                         memdedup_read_vma_budget();
    qatomic_set(&engine->x_index_memory, s->x_index_memory);
    g_free(engine->x_meminfo);
    engine->x_meminfo = g_strdup(s->x_meminfo);
    memdedup_rescan_hurry_locked(engine);
}

static bool memdedup_settings_get_residency_watch(Object *obj, Error **errp)
{
    return MEMDEDUP(obj)->residency_watch;
}

static void memdedup_settings_set_residency_watch(Object *obj, bool value,
                                                  Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);

    s->residency_watch = value;
    memdedup_settings_apply(s);
}

static bool memdedup_settings_get_x_rearm(Object *obj, Error **errp)
{
    return MEMDEDUP(obj)->x_rearm;
}

static void memdedup_settings_set_x_rearm(Object *obj, bool value,
                                          Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);

    s->x_rearm = value;
    memdedup_settings_apply(s);
}

static bool memdedup_settings_get_migrate_hints(Object *obj, Error **errp)
{
    return MEMDEDUP(obj)->migrate_hints;
}

static void memdedup_settings_set_migrate_hints(Object *obj, bool value,
                                                Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);

    s->migrate_hints = value;
    memdedup_settings_apply(s);
}

static void memdedup_settings_get_scan_rate(Object *obj, Visitor *v,
                                            const char *name, void *opaque,
                                            Error **errp)
{
    visit_type_size(v, name, &MEMDEDUP(obj)->scan_rate, errp);
}

static void memdedup_settings_set_scan_rate(Object *obj, Visitor *v,
                                            const char *name, void *opaque,
                                            Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);
    uint64_t value;

    if (!visit_type_size(v, name, &value, errp)) {
        return;
    }
    if (value < MEMDEDUP_SCAN_RATE_MIN || value > MEMDEDUP_SCAN_RATE_MAX) {
        error_setg(errp, "property '%s' of %s must be between %d MiB/s "
                   "and %d PiB/s, not %" PRIu64, name, TYPE_MEMDEDUP,
                   (int)(MEMDEDUP_SCAN_RATE_MIN / MiB),
                   (int)(MEMDEDUP_SCAN_RATE_MAX / PiB), value);
        return;
    }
    s->scan_rate = value;
    memdedup_settings_apply(s);
}

/* Set @field to the value visited, if it lies in [@min, @max]. */
static void memdedup_settings_set_u32(MemdedupSettings *s, Visitor *v,
                                      const char *name, uint32_t *field,
                                      uint32_t min, uint32_t max,
                                      Error **errp)
{
    uint32_t value;

    if (!visit_type_uint32(v, name, &value, errp)) {
        return;
    }
    if (value < min || value > max) {
        error_setg(errp, "property '%s' of %s must be between %" PRIu32
                   " and %" PRIu32 ", not %" PRIu32, name, TYPE_MEMDEDUP,
                   min, max, value);
        return;
    }
    *field = value;
    memdedup_settings_apply(s);
}

static void memdedup_settings_get_scan_threads(Object *obj, Visitor *v,
                                               const char *name,
                                               void *opaque, Error **errp)
{
    visit_type_uint32(v, name, &MEMDEDUP(obj)->scan_threads, errp);
}

static void memdedup_settings_set_scan_threads(Object *obj, Visitor *v,
                                               const char *name,
                                               void *opaque, Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);

    memdedup_settings_set_u32(s, v, name, &s->scan_threads, 1,
                              MEMDEDUP_SCAN_THREADS_MAX, errp);
}

static void memdedup_settings_get_rescan_interval(Object *obj, Visitor *v,
                                                  const char *name,
                                                  void *opaque, Error **errp)
{
    visit_type_uint32(v, name, &MEMDEDUP(obj)->rescan_interval, errp);
}

static void memdedup_settings_set_rescan_interval(Object *obj, Visitor *v,
                                                  const char *name,
                                                  void *opaque, Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);

    memdedup_settings_set_u32(s, v, name, &s->rescan_interval,
                              MEMDEDUP_RESCAN_INTERVAL_MIN,
                              MEMDEDUP_RESCAN_INTERVAL_MAX, errp);
}

static void memdedup_settings_get_rescan_backoff(Object *obj, Visitor *v,
                                                 const char *name,
                                                 void *opaque, Error **errp)
{
    visit_type_uint32(v, name, &MEMDEDUP(obj)->rescan_backoff, errp);
}

static void memdedup_settings_set_rescan_backoff(Object *obj, Visitor *v,
                                                 const char *name,
                                                 void *opaque, Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);

    memdedup_settings_set_u32(s, v, name, &s->rescan_backoff, 1,
                              MEMDEDUP_RESCAN_BACKOFF_MAX, errp);
}

static void memdedup_settings_get_vma_budget(Object *obj, Visitor *v,
                                             const char *name, void *opaque,
                                             Error **errp)
{
    visit_type_uint32(v, name, &MEMDEDUP(obj)->vma_budget, errp);
}

static void memdedup_settings_set_vma_budget(Object *obj, Visitor *v,
                                             const char *name, void *opaque,
                                             Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);
    uint32_t value;

    if (!visit_type_uint32(v, name, &value, errp)) {
        return;
    }
    if (value && (value < MEMDEDUP_VMA_SHARE_MIN || value > INT32_MAX)) {
        error_setg(errp, "property '%s' of %s must be 0 (half of "
                   "vm.max_map_count) or between %d and %d, not %" PRIu32,
                   name, TYPE_MEMDEDUP, MEMDEDUP_VMA_SHARE_MIN, INT32_MAX,
                   value);
        return;
    }
    s->vma_budget = value;
    memdedup_settings_apply(s);
}

static void memdedup_settings_get_x_index_memory(Object *obj, Visitor *v,
                                                 const char *name,
                                                 void *opaque, Error **errp)
{
    visit_type_size(v, name, &MEMDEDUP(obj)->x_index_memory, errp);
}

static void memdedup_settings_set_x_index_memory(Object *obj, Visitor *v,
                                                 const char *name,
                                                 void *opaque, Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);

    if (visit_type_size(v, name, &s->x_index_memory, errp)) {
        memdedup_settings_apply(s);
    }
}

/*
 * x-meminfo: tests make the host look short of memory with a file of
 * their own in /proc/meminfo's format.
 */
static char *memdedup_settings_get_x_meminfo(Object *obj, Error **errp)
{
    return g_strdup(MEMDEDUP(obj)->x_meminfo ?: "");
}

static void memdedup_settings_set_x_meminfo(Object *obj, const char *value,
                                            Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);

    g_free(s->x_meminfo);
    s->x_meminfo = *value ? g_strdup(value) : NULL;
    memdedup_settings_apply(s);
}

/* x-ksm-sysfs: tests fake a host without KSM; set when created. */
static char *memdedup_settings_get_x_ksm_sysfs(Object *obj, Error **errp)
{
    return g_strdup(MEMDEDUP(obj)->x_ksm_sysfs ?: "");
}

static void memdedup_settings_set_x_ksm_sysfs(Object *obj, const char *value,
                                              Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);

    if (s->completed) {
        error_setg(errp, "cannot change property 'x-ksm-sysfs' of %s after "
                   "it is created", TYPE_MEMDEDUP);
        return;
    }
    g_free(s->x_ksm_sysfs);
    s->x_ksm_sysfs = *value ? g_strdup(value) : NULL;
}

/* x-madvise-fault: tests make the kernel refuse registration. */
static char *memdedup_settings_get_x_madvise_fault(Object *obj, Error **errp)
{
    return g_strdup(MEMDEDUP(obj)->x_madvise_fault ?: "");
}

static void memdedup_settings_set_x_madvise_fault(Object *obj,
                                                  const char *value,
                                                  Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);
    int64_t count;
    int err;

    if (!memdedup_parse_madvise_fault(value, &err, &count)) {
        error_setg(errp, "property 'x-madvise-fault' of %s must be ENOMEM, "
                   "EINVAL, EAGAIN or EPERM, optionally followed by "
                   "':COUNT', not '%s'", TYPE_MEMDEDUP, value);
        return;
    }
    g_free(s->x_madvise_fault);
    s->x_madvise_fault = g_strdup(value);
    s->fault_err = err;
    s->fault_count = count;
    if (s->complete) {
        memdedup_madvise_set_fault(err, count);
    }
}

/* adopt* can be set until the object is complete. */
static bool memdedup_settings_adopt_settable(MemdedupSettings *s,
                                             const char *name, Error **errp)
{
    if (s->completed) {
        error_setg(errp, "cannot change property '%s' of %s after it is "
                   "created", name, TYPE_MEMDEDUP);
        return false;
    }
    return true;
}

static void memdedup_settings_get_adopt(Object *obj, Visitor *v,
                                        const char *name, void *opaque,
                                        Error **errp)
{
    strList *ids = QAPI_CLONE(strList, MEMDEDUP(obj)->adopt_ids);

    visit_type_strList(v, name, &ids, errp);
    qapi_free_strList(ids);
}

static void memdedup_settings_set_adopt(Object *obj, Visitor *v,
                                        const char *name, void *opaque,
                                        Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);
    strList *ids = NULL;

    if (!memdedup_settings_adopt_settable(s, name, errp) ||
        !visit_type_strList(v, name, &ids, errp)) {
        return;
    }
    qapi_free_strList(s->adopt_ids);
    s->adopt_ids = ids;
}

static bool memdedup_settings_get_adopt_ram(Object *obj, Error **errp)
{
    return MEMDEDUP(obj)->adopt_ram;
}

static void memdedup_settings_set_adopt_ram(Object *obj, bool value,
                                            Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);

    if (memdedup_settings_adopt_settable(s, "adopt-ram", errp)) {
        s->adopt_ram = value;
    }
}

/* board* can be set until the board is open. */
static bool memdedup_settings_board_settable(MemdedupSettings *s,
                                             const char *name, Error **errp)
{
    if (s->board.board) {
        error_setg(errp, "property '%s' of %s cannot be changed once the "
                   "board is open", name, TYPE_MEMDEDUP);
        return false;
    }
    return true;
}

/* Set *@field to @value: not empty, not longer than a path. */
static void memdedup_settings_set_board_str(MemdedupSettings *s,
                                            const char *name,
                                            const char *value, char **field,
                                            Error **errp)
{
    if (!memdedup_settings_board_settable(s, name, errp)) {
        return;
    }
    if (!*value || strlen(value) >= PATH_MAX) {
        error_setg(errp, "property '%s' of %s must not be empty or longer "
                   "than a path", name, TYPE_MEMDEDUP);
        return;
    }
    g_free(*field);
    *field = g_strdup(value);
}

static char *memdedup_settings_get_board(Object *obj, Error **errp)
{
    return g_strdup(MEMDEDUP(obj)->board.path ?: "");
}

static void memdedup_settings_set_board(Object *obj, const char *value,
                                        Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);

    memdedup_settings_set_board_str(s, "board", value, &s->board.path, errp);
}

static char *memdedup_settings_get_board_key(Object *obj, Error **errp)
{
    return g_strdup(MEMDEDUP(obj)->board.key_id ?: "");
}

static void memdedup_settings_set_board_key(Object *obj, const char *value,
                                            Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);

    memdedup_settings_set_board_str(s, "board-key", value, &s->board.key_id,
                                    errp);
}

static void memdedup_settings_get_board_size(Object *obj, Visitor *v,
                                             const char *name, void *opaque,
                                             Error **errp)
{
    visit_type_size(v, name, &MEMDEDUP(obj)->board.size, errp);
}

static void memdedup_settings_set_board_size(Object *obj, Visitor *v,
                                             const char *name, void *opaque,
                                             Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);
    uint64_t value;

    if (!memdedup_settings_board_settable(s, name, errp) ||
        !visit_type_size(v, name, &value, errp)) {
        return;
    }
    if (value < MEMDEDUP_BOARD_SIZE_MIN || value > MEMDEDUP_BOARD_SIZE_MAX) {
        error_setg(errp, "property '%s' of %s must be between %" PRIu64
                   " and %" PRIu64 ", not %" PRIu64, name, TYPE_MEMDEDUP,
                   (uint64_t)MEMDEDUP_BOARD_SIZE_MIN,
                   (uint64_t)MEMDEDUP_BOARD_SIZE_MAX, value);
        return;
    }
    s->board.size = value;
}

/* Set a uint32 board property, until the board is open. */
static void memdedup_settings_set_board_u32(MemdedupSettings *s, Visitor *v,
                                            const char *name, uint32_t *field,
                                            uint32_t min, uint32_t max,
                                            Error **errp)
{
    uint32_t value;

    if (!memdedup_settings_board_settable(s, name, errp) ||
        !visit_type_uint32(v, name, &value, errp)) {
        return;
    }
    if (value < min || value > max) {
        error_setg(errp, "property '%s' of %s must be between %" PRIu32
                   " and %" PRIu32 ", not %" PRIu32, name, TYPE_MEMDEDUP,
                   min, max, value);
        return;
    }
    *field = value;
}

static void memdedup_settings_get_board_slots(Object *obj, Visitor *v,
                                              const char *name, void *opaque,
                                              Error **errp)
{
    visit_type_uint32(v, name, &MEMDEDUP(obj)->board.slots, errp);
}

static void memdedup_settings_set_board_slots(Object *obj, Visitor *v,
                                              const char *name, void *opaque,
                                              Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);

    memdedup_settings_set_board_u32(s, v, name, &s->board.slots,
                                    MEMDEDUP_BOARD_SLOTS_MIN,
                                    MEMDEDUP_BOARD_SLOTS_MAX, errp);
}

static void memdedup_settings_get_board_timeout(Object *obj, Visitor *v,
                                                const char *name,
                                                void *opaque, Error **errp)
{
    visit_type_uint32(v, name, &MEMDEDUP(obj)->board.timeout, errp);
}

static void memdedup_settings_set_board_timeout(Object *obj, Visitor *v,
                                                const char *name,
                                                void *opaque, Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(obj);

    memdedup_settings_set_board_u32(s, v, name, &s->board.timeout,
                                    MEMDEDUP_BOARD_TIMEOUT_MIN,
                                    MEMDEDUP_BOARD_TIMEOUT_MAX, errp);
}

/* A clean exit takes our socket off the board at once. */
static void memdedup_board_exit(Notifier *n, void *data)
{
    MemdedupEngine *engine = &memdedup_engine;

    if (engine->board) {
        memdedup_board_release(engine->board);
    }
}

static Notifier memdedup_board_exit_notifier = {
    .notify = memdedup_board_exit,
};

/*
 * Open the cross-VM board, if configured.  Its key seeds the
 * fingerprints, so this must happen before the first pass: on the
 * command line, or with object-add before any backend was scanned.
 */
static bool memdedup_settings_join_board(MemdedupSettings *s, Error **errp)
{
    MemdedupEngine *engine = &memdedup_engine;
    MemdedupBoard *board;
    Error *local_err = NULL;

    board = memdedup_board_complete(&s->board, &local_err);
    if (local_err) {
        error_propagate(errp, local_err);
        return false;
    }
    if (!board) {
        return true;
    }
    qemu_mutex_lock(&engine->lock);
    if (engine->passes_completed || engine->state == MEMDEDUP_STATE_SCANNING) {
        qemu_mutex_unlock(&engine->lock);
        memdedup_board_close(board);
        error_setg(errp, "property 'board' of %s: the board must be joined "
                   "before the first scan pass (create the %s object on "
                   "the command line)", TYPE_MEMDEDUP, TYPE_MEMDEDUP);
        return false;
    }
    engine->board = board;
    engine->seed = memdedup_board_seed(board);
    engine->board_dirty = true;
    qemu_mutex_unlock(&engine->lock);
    qemu_add_exit_notifier(&memdedup_board_exit_notifier);
    return true;
}

static void memdedup_settings_complete(UserCreatable *uc, Error **errp)
{
    MemdedupSettings *s = MEMDEDUP(uc);
    MemdedupEngine *engine = &memdedup_engine;

    s->completed = true;
    /* Before the engine's start-up probes the KSM files. */
    if (s->x_ksm_sysfs) {
        memdedup_set_ksm_sysfs_dir(s->x_ksm_sysfs);
    }
    memdedup_engine_start();
    qemu_mutex_lock(&engine->lock);
    if (engine->settings_object) {
        qemu_mutex_unlock(&engine->lock);
        error_setg(errp, "only one %s object may exist", TYPE_MEMDEDUP);
        return;
    }
    engine->settings_object = true;
    qemu_mutex_unlock(&engine->lock);
    if (!memdedup_settings_join_board(s, errp)) {
        qemu_mutex_lock(&engine->lock);
        engine->settings_object = false;
    qatomic_set(&engine->x_index_memory, 0);
        qemu_mutex_unlock(&engine->lock);
        return;
    }
    s->complete = true;
    memdedup_settings_apply(s);
    memdedup_madvise_set_fault(s->fault_err, s->fault_count);
    /* On failure, finalize puts the engine back to its defaults. */
    memdedup_adopt_complete(s->adopt_ids, s->adopt_ram, &s->adopt, errp);
}

static void memdedup_settings_init(Object *obj)
{
    MemdedupSettings *s = MEMDEDUP(obj);

    s->scan_rate = MEMDEDUP_SCAN_RATE_DEFAULT;
    s->scan_threads = MEMDEDUP_SCAN_THREADS_DEFAULT;
    s->rescan_interval = MEMDEDUP_RESCAN_INTERVAL_DEFAULT;
    s->rescan_backoff = MEMDEDUP_RESCAN_BACKOFF_DEFAULT;
    s->residency_watch = true;
    s->x_rearm = true;
    s->board.size = MEMDEDUP_BOARD_SIZE_DEFAULT;
    s->board.slots = MEMDEDUP_BOARD_SLOTS_DEFAULT;
    s->board.timeout = MEMDEDUP_BOARD_TIMEOUT_DEFAULT;
}

static void memdedup_settings_finalize(Object *obj)
{
    MemdedupSettings *s = MEMDEDUP(obj);
    MemdedupEngine *engine = &memdedup_engine;

    memdedup_adopt_free(s->adopt);
    qapi_free_strList(s->adopt_ids);
    memdedup_board_config_clear(&s->board);
    g_free(s->x_meminfo);
    g_free(s->x_madvise_fault);
    if (s->x_ksm_sysfs && s->completed) {
        memdedup_set_ksm_sysfs_dir(NULL);
    }
    g_free(s->x_ksm_sysfs);
    if (!s->complete) {
        return;
    }
    /* Back to the defaults. */
    memdedup_madvise_set_fault(0, -1);
    QEMU_LOCK_GUARD(&engine->lock);
    g_free(engine->x_meminfo);
    engine->x_meminfo = NULL;
    qatomic_set(&engine->x_index_memory, 0);
    if (engine->board) {
        /*
         * Leave the board now (QEMU deletes objects on exit, before
         * the exit notifiers run).  The scanner may still be looking
         * up peers' filters: it closes the board between passes.
         */
        memdedup_board_release(engine->board);
        if (engine->thread_started) {
            engine->board_retired = engine->board;
        } else {
            memdedup_board_close(engine->board);
        }
        engine->board = NULL;
        notifier_remove(&memdedup_board_exit_notifier);
    }
    engine->settings_object = false;
    engine->send_hints = false;
    engine->scan_rate = MEMDEDUP_SCAN_RATE_DEFAULT;
    engine->scan_threads = MEMDEDUP_SCAN_THREADS_DEFAULT;
    qatomic_set(&engine->rescan_interval, MEMDEDUP_RESCAN_INTERVAL_DEFAULT);
    engine->rescan_backoff = MEMDEDUP_RESCAN_BACKOFF_DEFAULT;
    qatomic_set(&engine->residency_watch, true);
    qatomic_set(&engine->rearm, true);
    engine->vma_budget = memdedup_read_vma_budget();
    memdedup_rescan_hurry_locked(engine);
}

static void memdedup_settings_class_init(ObjectClass *oc, void *data)
{
    UserCreatableClass *ucc = USER_CREATABLE_CLASS(oc);

    ucc->complete = memdedup_settings_complete;

    object_class_property_add(oc, "scan-rate", "size",
                              memdedup_settings_get_scan_rate,
                              memdedup_settings_set_scan_rate, NULL, NULL);
    object_class_property_set_description(oc, "scan-rate",
        "Scan budget in bytes of guest memory per second (default 1G)");
    object_class_property_add(oc, "scan-threads", "uint32",
                              memdedup_settings_get_scan_threads,
                              memdedup_settings_set_scan_threads, NULL, NULL);
    object_class_property_set_description(oc, "scan-threads",
        "Number of scanner threads, 1-8 (default 1)");
    object_class_property_add(oc, "rescan-interval", "uint32",
                              memdedup_settings_get_rescan_interval,
                              memdedup_settings_set_rescan_interval, NULL,
                              NULL);
    object_class_property_set_description(oc, "rescan-interval",
        "Milliseconds between the end of a scan pass and the next, "
        "100-86400000 (default 10000)");
    object_class_property_add(oc, "rescan-backoff", "uint32",
                              memdedup_settings_get_rescan_backoff,
                              memdedup_settings_set_rescan_backoff, NULL,
                              NULL);
    object_class_property_set_description(oc, "rescan-backoff",
        "Most times rescan-interval the wait may grow to while passes find "
        "guest memory quiet, 1-64; each quiet pass doubles it (default 8, "
        "1: a fixed interval)");
    object_class_property_add(oc, "vma-budget", "uint32",
                              memdedup_settings_get_vma_budget,
                              memdedup_settings_set_vma_budget, NULL, NULL);
    object_class_property_set_description(oc, "vma-budget",
        "Most VMAs the engine may split guest RAM into, over all backends "
        "(default 0: half of vm.max_map_count)");
    object_class_property_add_str(oc, "x-meminfo",
                                  memdedup_settings_get_x_meminfo,
                                  memdedup_settings_set_x_meminfo);
    object_class_property_set_description(oc, "x-meminfo",
        "For tests: a file read instead of /proc/meminfo (default: none)");
    object_class_property_add_str(oc, "x-ksm-sysfs",
                                  memdedup_settings_get_x_ksm_sysfs,
                                  memdedup_settings_set_x_ksm_sysfs);
    object_class_property_set_description(oc, "x-ksm-sysfs",
        "For tests: a directory read instead of /sys/kernel/mm/ksm "
        "(default: none)");
    object_class_property_add_str(oc, "x-madvise-fault",
                                  memdedup_settings_get_x_madvise_fault,
                                  memdedup_settings_set_x_madvise_fault);
    object_class_property_set_description(oc, "x-madvise-fault",
        "For tests: ERRNO[:COUNT], the next COUNT (default every) "
        "registration changes fail with ERRNO (default: none)");
    object_class_property_add(oc, "x-index-memory", "size",
                              memdedup_settings_get_x_index_memory,
                              memdedup_settings_set_x_index_memory, NULL,
                              NULL);
    object_class_property_set_description(oc, "x-index-memory",
        "For tests: an index build that needs more transient memory than "
        "this fails as if the memory could not be allocated (default 0: "
        "no limit)");
    object_class_property_add_bool(oc, "residency-watch",
                                   memdedup_settings_get_residency_watch,
                                   memdedup_settings_set_residency_watch);
    object_class_property_set_description(oc, "residency-watch",
        "Between passes, hash at once the regions whose residency moved "
        "(default on)");
    object_class_property_add_bool(oc, "x-rearm",
                                   memdedup_settings_get_x_rearm,
                                   memdedup_settings_set_x_rearm);
    object_class_property_set_description(oc, "x-rearm",
        "For tests: register again the regions whose duplicates KSM's "
        "smart scan kept from merging (default on)");
    object_class_property_add_bool(oc, "migrate-hints",
                                   memdedup_settings_get_migrate_hints,
                                   memdedup_settings_set_migrate_hints);
    object_class_property_set_description(oc, "migrate-hints",
        "Send the registered regions in the migration stream; the "
        "destination must run memdedup too (default off)");
    object_class_property_add(oc, "adopt", "strList",
                              memdedup_settings_get_adopt,
                              memdedup_settings_set_adopt, NULL, NULL);
    object_class_property_set_description(oc, "adopt",
        "Ids of memory-backend-ram objects to manage like memory-backend-ksm "
        "with the default policy");
    object_class_property_add_bool(oc, "adopt-ram",
                                   memdedup_settings_get_adopt_ram,
                                   memdedup_settings_set_adopt_ram);
    object_class_property_set_description(oc, "adopt-ram",
        "Manage every memory-backend-ram like memory-backend-ksm with the "
        "default policy (default off)");
    object_class_property_add_str(oc, "board", memdedup_settings_get_board,
                                  memdedup_settings_set_board);
    object_class_property_set_description(oc, "board",
        "Cross-VM fingerprint board: a directory name under /dev/shm or a "
        "path, shared by the VMs of one trust domain (default: none)");
    object_class_property_add_str(oc, "board-key",
                                  memdedup_settings_get_board_key,
                                  memdedup_settings_set_board_key);
    object_class_property_set_description(oc, "board-key",
        "Id of the secret object (at least 16 bytes) that keys the board's "
        "fingerprints and proves membership");
    object_class_property_add(oc, "board-size", "size",
                              memdedup_settings_get_board_size,
                              memdedup_settings_set_board_size, NULL, NULL);
    object_class_property_set_description(oc, "board-size",
        "Most bytes of this VM's filter, and of a peer's it accepts, "
        "64K-1G (default 64M)");
    object_class_property_add(oc, "board-slots", "uint32",
                              memdedup_settings_get_board_slots,
                              memdedup_settings_set_board_slots, NULL, NULL);
    object_class_property_set_description(oc, "board-slots",
        "Most VMs this one exchanges fingerprints with, itself included, "
        "2-1024 (default 16)");
    object_class_property_add(oc, "board-timeout", "uint32",
                              memdedup_settings_get_board_timeout,
                              memdedup_settings_set_board_timeout, NULL,
                              NULL);
    object_class_property_set_description(oc, "board-timeout",
        "Milliseconds each board connection has to complete the proof of "
        "the key, 100-600000 (default 5000)");
}

static const TypeInfo memdedup_settings_info = {
    .name = TYPE_MEMDEDUP,
    .parent = TYPE_OBJECT,
    .instance_size = sizeof(MemdedupSettings),
    .instance_init = memdedup_settings_init,
    .instance_finalize = memdedup_settings_finalize,
    .class_init = memdedup_settings_class_init,
    .interfaces = (InterfaceInfo[]) {
        { TYPE_USER_CREATABLE },
        { }
    },
};

static void memdedup_register_types(void)
{
    type_register_static(&memdedup_settings_info);
}

type_init(memdedup_register_types);
