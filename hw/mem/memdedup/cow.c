/*
 * memdedup: copy-on-write churn of registered memory
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * Merging pays only while merged pages stay merged.  A page the guest
 * writes after KSM merged it costs the guest a copy-on-write fault, and
 * ksmd two scans to merge it again if its content returns.  After each
 * pass's hashing, the registered regions' pagemap entries (no page
 * content, no privilege) say which pages share their frame now; those
 * that shared it at the previous pass and are resident but alone now
 * were broken by a write -- as many of them, in a region, as the pass
 * found pages with new content there.  That count is the backend's
 * cow-broken-pages, a lower bound of the faults (a page broken and
 * merged again between two passes is not seen), and the policy's
 * memdedup_cow_judge takes churning regions off KSM for a while.
 *
 * The walk costs one pagemap read of 8 bytes per registered page and
 * pass, about 2 MiB per registered GiB.
 */

#include "qemu/osdep.h"
#include "qemu/bitmap.h"
#include "qemu/lockable.h"
#include "qemu/rcu.h"
#include "qemu/atomic.h"
#include "memdedup-internal.h"
#include "trace.h"

bool memdedup_cow_read(MemdedupEngine *engine, MemdedupBlock *blk,
                              uint64_t i, uint64_t pages, uint64_t *entries)
{
    uintptr_t start = (uintptr_t)blk->host +
                      i * blk->pages_per_region * blk->page_size;
    ssize_t want = pages * sizeof(uint64_t);
    bool ok = false;

    WITH_RCU_READ_LOCK_GUARD() {
        ok = !qatomic_load_acquire(&blk->removed) &&
             pread(engine->pagemap_fd, entries, want,
                   (off_t)(start / blk->page_size * sizeof(uint64_t))) ==
             want;
    }
    return ok;
}

void memdedup_cow_forget(MemdedupBlock *blk, uint64_t first, uint64_t end)
{
    uint64_t k;

    for (k = first; k < end; k++) {
        uint64_t page = k * blk->pages_per_region;

        bitmap_clear(blk->shared, page,
                     MIN(blk->pages_per_region, blk->nr_pages - page));
        blk->regions[k].shared = 0;
    }
}

/* Off regions first, then the most broken. */
static uint64_t memdedup_cow_rank(const MemdedupCowReport *c)
{
    return (uint64_t)c->off << 32 | c->broken;
}

/* Keep @c among the MEMDEDUP_COW_REPORT_MAX highest ranked, in order. */
static void memdedup_cow_report(MemdedupCowStats *st,
                                const MemdedupCowReport *c)
{
    size_t k = st->nr_report;

    if (k == MEMDEDUP_COW_REPORT_MAX) {
        if (memdedup_cow_rank(&st->report[k - 1]) >= memdedup_cow_rank(c)) {
            return;
        }
        k--;
    } else {
        st->nr_report++;
    }
    for (; k > 0 && memdedup_cow_rank(&st->report[k - 1]) <
                    memdedup_cow_rank(c); k--) {
        st->report[k] = st->report[k - 1];
    }
    st->report[k] = *c;
}

void memdedup_cow_pass(MemdedupEngine *engine, MemdedupPassBlock *pb)
{
    g_autofree MemdedupCowStats *st = g_new0(MemdedupCowStats, 1);
    MemdedupBlock *blk = pb->blk;
    int64_t now = qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
    g_autofree uint64_t *entries = NULL;
    g_autofree bool *nonzero = NULL;
    uint64_t run, i;
    /* ksmd unmerging everything (run 2) is not the guest's doing. */
    bool judge = !memdedup_read_ksm_knob("run", &run) || run != 2;
    bool known = engine->pagemap_fd >= 0;

    if (known) {
        entries = g_new(uint64_t, blk->pages_per_region);
        nonzero = g_new(bool, blk->pages_per_region);
    }
    for (i = 0; i < blk->nr_regions; i++) {
        MemdedupRegion *r = &blk->regions[i];
        uint64_t first = i * blk->pages_per_region;
        uint64_t pages = MIN(blk->pages_per_region, blk->nr_pages - first);
        uint32_t broken = 0, sharing;
        uint64_t k;

        if (!r->registered || !known) {
            if (r->shared) {
                memdedup_cow_forget(blk, i, i + 1);
            }
        } else if (!memdedup_cow_read(engine, blk, i, pages, entries)) {
            return;
        } else {
            for (k = 0; k < pages; k++) {
                nonzero[k] = memdedup_block_fp(blk, first + k) !=
                             MEMDEDUP_FP_ZERO;
            }
            /*
             * Broken by a write, the content changed: a page the kernel
             * unmerged (ksmd's run=2, an unregistration elsewhere)
             * keeps its content, and is not the guest's churn.
             */
            broken = MIN(memdedup_cow_walk(entries, nonzero, pages,
                                           blk->shared, first, &sharing),
                         r->volatile_pages);
            if (!judge) {
                broken = 0;
            } else {
                st->broken_pages += broken;
                if (memdedup_cow_judge(&pb->params, r, broken, now)) {
                    trace_memdedup_cow_off(blk->id, i, broken, r->shared,
                                           memdedup_cow_backoff_ms(
                                               pb->params.cow_backoff,
                                               r->cow_level));
                }
            }
            r->shared = sharing;
        }
        if (!pb->params.cow_threshold) {
            /* Churn is not judged: nothing stays off for it. */
            r->cow_off = false;
            r->cow_level = 0;
        } else if (memdedup_cow_release(&pb->params, r, now)) {
            trace_memdedup_cow_on(blk->id, i, r->cow_level);
        }
        st->off_regions += r->cow_off;
        if (broken || r->cow_off) {
            MemdedupCowReport c = {
                .region = i, .broken = broken, .off = r->cow_off,
                .until = r->cow_until, .level = r->cow_level,
            };
            memdedup_cow_report(st, &c);
        }
    }

    QEMU_LOCK_GUARD(&engine->lock);
    st->known = known;
    st->broken_total = blk->cow.broken_total + st->broken_pages;
    blk->cow = *st;
}
