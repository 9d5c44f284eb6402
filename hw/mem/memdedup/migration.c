/*
 * memdedup: live migration
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * The scanner competes with the migration thread for memory bandwidth,
 * and on a destination it must not read RAM that has not arrived.  So:
 *  - source: a migration state notifier pauses scanning and registration
 *    when a migration is set up; they resume if it fails or is
 *    cancelled, and stay paused once it completed (the source is done)
 *    unless the source's guest runs again: continued after all, before
 *    or after the completion, or never stopped (a background snapshot);
 *  - destination (-incoming): the engine starts paused and resumes, with
 *    a pass at once, only when the incoming migration has completed
 *    (after postcopy too), which a timer of the main loop looks for;
 *  - hints (memdedup object, migrate-hints=on): when the migration is
 *    set up, before any RAM is sent, the source sends which regions of
 *    each memory-backend-ksm it had registered, one bit per region (a
 *    live section's setup stage).  The destination registers them at
 *    once, so KSM merges pages as they arrive, as it does for stock
 *    QEMU's all-mergeable RAM.  That is madvise only: nothing is read.
 *    A destination without memdedup has no handler for the section and
 *    fails the migration cleanly (the source resumes); hints for a
 *    backend the destination lacks, or whose size or region size
 *    differs, are ignored with a warning.
 */

#include "qemu/osdep.h"
#include "qemu/bitmap.h"
#include "qemu/bswap.h"
#include "qemu/error-report.h"
#include "qemu/lockable.h"
#include "qemu/timer.h"
#include "migration/misc.h"
#include "migration/migration.h"
#include "migration/register.h"
#include "migration/qemu-file-types.h"
#include "sysemu/runstate.h"
#include "memdedup-internal.h"
#include "trace.h"

#define MEMDEDUP_PAUSED_MIGRATED "outgoing migration completed"

/* How often a migration destination looks for the end of the incoming. */
#define MEMDEDUP_INCOMING_POLL_MS        100

#define MEMDEDUP_HINTS_MAGIC 0x4d444831u   /* "MDH1" */
/* A payload larger than this is not ours: 16 MiB is 128 Mi regions. */
#define MEMDEDUP_HINTS_MAX (16 * 1024 * 1024)

static void memdedup_migration_notify(Notifier *notifier, void *data)
{
    MigrationState *s = data;
    MemdedupEngine *engine = container_of(notifier, MemdedupEngine,
                                          migration_notifier);

    if (migration_in_setup(s)) {
        memdedup_engine_pause(engine, "outgoing migration", false);
    } else if (migration_has_failed(s)) {
        memdedup_engine_resume(engine,
                               "outgoing migration failed or cancelled");
    } else if (migration_has_finished(s)) {
        /*
         * The guest may be running again already: a background snapshot
         * restarts it before it completes, and a `cont` can come before
         * this notifier, which the migration's cleanup bottom half
         * calls.  Its memory is live then, and the engine goes on;
         * otherwise it waits for a `cont` (memdedup_vm_state_change).
         */
        if (runstate_is_running()) {
            memdedup_engine_resume(engine, "guest running after outgoing "
                                   "migration");
        } else {
            memdedup_engine_pause(engine, MEMDEDUP_PAUSED_MIGRATED, false);
        }
    }
}

/*
 * A source whose migration completed may still be continued (`cont`),
 * e.g. when the destination is discarded: then its memory is live again
 * and the engine resumes.
 */
static void memdedup_vm_state_change(void *opaque, bool running,
                                     RunState state)
{
    MemdedupEngine *engine = opaque;
    bool migrated;

    if (!running) {
        return;
    }
    WITH_QEMU_LOCK_GUARD(&engine->lock) {
        migrated = engine->paused &&
                   !g_strcmp0(engine->paused_reason, MEMDEDUP_PAUSED_MIGRATED);
    }
    if (migrated) {
        memdedup_engine_resume(engine,
                               "guest continued after outgoing migration");
    }
}

/*
 * Main loop, BQL held: resume the engine once the incoming migration
 * completed.  The incoming side completes in the migration's own
 * coroutine or, after postcopy, its listen thread; neither tells a
 * notifier, so this looks every MEMDEDUP_INCOMING_POLL_MS.
 */
static void memdedup_incoming_poll(void *opaque)
{
    MemdedupEngine *engine = opaque;
    MigrationIncomingState *mis = migration_incoming_get_current();

    if (qatomic_read(&mis->state) == MIGRATION_STATUS_COMPLETED) {
        timer_free(engine->incoming_timer);
        engine->incoming_timer = NULL;
        memdedup_engine_resume(engine, "incoming migration completed");
        return;
    }
    timer_mod(engine->incoming_timer,
              qemu_clock_get_ms(QEMU_CLOCK_REALTIME) +
              MEMDEDUP_INCOMING_POLL_MS);
}

static bool memdedup_hints_active(void *opaque)
{
    MemdedupEngine *engine = opaque;
    QEMU_LOCK_GUARD(&engine->lock);

    return engine->send_hints;
}

static void memdedup_put_u32(GByteArray *out, uint32_t v)
{
    v = cpu_to_be32(v);
    g_byte_array_append(out, (uint8_t *)&v, sizeof(v));
}

static void memdedup_put_u64(GByteArray *out, uint64_t v)
{
    v = cpu_to_be64(v);
    g_byte_array_append(out, (uint8_t *)&v, sizeof(v));
}

/*
 * Source, migration thread, at setup (BQL not held): one record per
 * block, each "id length, id, size, region size, region count, bitmap",
 * behind a magic and a count, as one length-prefixed buffer.  The
 * scanner is paused, so the registration does not change under us.
 */
static int memdedup_hints_save_setup(QEMUFile *f, void *opaque)
{
    MemdedupEngine *engine = opaque;
    g_autoptr(GByteArray) out = g_byte_array_new();
    MemdedupBlock *blk;
    uint32_t count = 0;

    WITH_QEMU_LOCK_GUARD(&engine->lock) {
        QTAILQ_FOREACH(blk, &engine->blocks, next) {
            count++;
        }
        memdedup_put_u32(out, MEMDEDUP_HINTS_MAGIC);
        memdedup_put_u32(out, count);
        QTAILQ_FOREACH(blk, &engine->blocks, next) {
            uint64_t i, nbytes = DIV_ROUND_UP(blk->nr_regions, 8);
            g_autofree uint8_t *bytes = g_malloc0(nbytes);
            uint32_t id_len = strlen(blk->id);

            /* As the scanner last published it (advise.c). */
            for (i = 0; i < blk->nr_regions; i++) {
                if (test_bit(i, blk->registered)) {
                    bytes[i / 8] |= 1 << (i % 8);
                }
            }
            memdedup_put_u32(out, id_len);
            g_byte_array_append(out, (uint8_t *)blk->id, id_len);
            memdedup_put_u64(out, blk->size);
            memdedup_put_u64(out, blk->pages_per_region * blk->page_size);
            memdedup_put_u64(out, blk->nr_regions);
            g_byte_array_append(out, bytes, nbytes);
        }
    }
    if (out->len > MEMDEDUP_HINTS_MAX) {
        error_report("memdedup: migration hints too large (%u bytes)",
                     out->len);
        return -E2BIG;
    }
    qemu_put_be32(f, out->len);
    qemu_put_buffer(f, out->data, out->len);
    trace_memdedup_hints_saved(count, out->len);
    return qemu_file_get_error(f);
}

/* A bounds-checked reader over the received payload. */
typedef struct MemdedupReader {
    const uint8_t *p;
    size_t left;
} MemdedupReader;

static bool memdedup_get(MemdedupReader *r, void *dst, size_t n)
{
    if (r->left < n) {
        return false;
    }
    memcpy(dst, r->p, n);
    r->p += n;
    r->left -= n;
    return true;
}

static bool memdedup_get_u32(MemdedupReader *r, uint32_t *v)
{
    if (!memdedup_get(r, v, sizeof(*v))) {
        return false;
    }
    *v = be32_to_cpu(*v);
    return true;
}

static bool memdedup_get_u64(MemdedupReader *r, uint64_t *v)
{
    if (!memdedup_get(r, v, sizeof(*v))) {
        return false;
    }
    *v = be64_to_cpu(*v);
    return true;
}

static int memdedup_hints_load(QEMUFile *f, void *opaque, int version_id)
{
    MemdedupEngine *engine = opaque;
    g_autofree uint8_t *buf = NULL;
    MemdedupReader r;
    uint32_t len, magic, count, i;
    int ret = 0;

    len = qemu_get_be32(f);
    if (len > MEMDEDUP_HINTS_MAX) {
        error_report("memdedup: malformed migration hints (%u bytes)", len);
        return -EINVAL;
    }
    buf = g_malloc(len);
    if (qemu_get_buffer(f, buf, len) != len || qemu_file_get_error(f)) {
        error_report("memdedup: truncated migration hints");
        return -EIO;
    }
    r = (MemdedupReader) { buf, len };
    if (!memdedup_get_u32(&r, &magic) || magic != MEMDEDUP_HINTS_MAGIC ||
        !memdedup_get_u32(&r, &count)) {
        error_report("memdedup: malformed migration hints");
        return -EINVAL;
    }
    for (i = 0; i < count; i++) {
        g_autofree char *id = NULL;
        g_autofree uint8_t *bytes = NULL;
        uint64_t size, region_size, nr_regions, nbytes;
        uint32_t id_len;

        if (!memdedup_get_u32(&r, &id_len) || id_len > 4096) {
            ret = -EINVAL;
            break;
        }
        id = g_malloc0(id_len + 1);
        if (!memdedup_get(&r, id, id_len) ||
            !memdedup_get_u64(&r, &size) ||
            !memdedup_get_u64(&r, &region_size) ||
            !memdedup_get_u64(&r, &nr_regions) ||
            nr_regions > r.left * 8) {
            ret = -EINVAL;
            break;
        }
        nbytes = DIV_ROUND_UP(nr_regions, 8);
        bytes = g_malloc(nbytes);
        if (!memdedup_get(&r, bytes, nbytes)) {
            ret = -EINVAL;
            break;
        }

        memdedup_block_set_hints(engine, id, size, region_size, nr_regions,
                                 bytes);
    }
    if (ret) {
        error_report("memdedup: malformed migration hints");
    }
    return ret;
}

static SaveVMHandlers savevm_memdedup_hints = {
    .is_active = memdedup_hints_active,
    .save_setup = memdedup_hints_save_setup,
    .load_state = memdedup_hints_load,
};

void memdedup_migration_init(MemdedupEngine *engine)
{
    engine->migration_notifier.notify = memdedup_migration_notify;
    add_migration_state_change_notifier(&engine->migration_notifier);
    register_savevm_live("memdedup-hints", 0, 1, &savevm_memdedup_hints,
                         engine);
    qemu_add_vm_change_state_handler(memdedup_vm_state_change, engine);

    if (runstate_check(RUN_STATE_INMIGRATE)) {
        memdedup_engine_pause(engine, "incoming migration", true);
        /*
         * First look from the main loop: the incoming state is not set
         * up yet while backends are created.
         */
        engine->incoming_timer = timer_new_ms(QEMU_CLOCK_REALTIME,
                                              memdedup_incoming_poll, engine);
        timer_mod(engine->incoming_timer,
                  qemu_clock_get_ms(QEMU_CLOCK_REALTIME) +
                  MEMDEDUP_INCOMING_POLL_MS);
    }
}
