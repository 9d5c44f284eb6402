/*
 * memdedup: the cross-VM board's filters
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * Our publication and the peers' (see board.c for the protocol):
 *  - we write a Bloom filter of our fingerprints into a new memfd, sized
 *    2 bytes per page in whole 64-byte lines up to "board-size" (beyond
 *    it, the fingerprints up to a threshold: the same subset in every
 *    VM), then seal it against writing, shrinking and growing; board.c
 *    hands it to every peer;
 *  - a peer's filter is checked once, from a copy of its geometry in
 *    our memory, against its memfd (size, allocation, seals) and its
 *    declared page count (memdedup_bloom_plausible), and only then
 *    mapped read-only for lookups.  Sealed, it cannot change or shrink
 *    under us: a lookup never reads a torn filter or faults;
 *  - the peers' filters are replaced only by memdedup_board_tick, on
 *    the scanner thread, which also looks them up: a lookup view stays
 *    whole for a pass.
 */

#include "qemu/osdep.h"
#include <sys/mman.h>
#include "qemu/error-report.h"
#include "qemu/lockable.h"
#include "qemu/memfd.h"
#include "qemu/timer.h"
#include "qapi/error.h"
#include "board-internal.h"
#include "trace.h"

int64_t memdedup_board_now(void)
{
    return qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
}

void memdedup_board_count(MemdedupBoard *b, uint64_t *counter)
{
    QEMU_LOCK_GUARD(&b->lock);
    (*counter)++;
}

/* The filter size for @pages fingerprints, and the subset published. */
static uint64_t memdedup_board_bits_for(uint64_t pages, uint64_t max_bits)
{
    uint64_t bits = ROUND_UP(MAX(pages, 1) * MEMDEDUP_BOARD_BITS_PER_PAGE,
                             MEMDEDUP_BOARD_LINE_BITS);

    return MIN(bits, max_bits);
}

uint32_t memdedup_board_threshold(uint64_t pages, uint64_t filter_bits)
{
    uint64_t capacity = filter_bits / MEMDEDUP_BOARD_BITS_PER_PAGE;

    if (pages <= capacity) {
        return UINT32_MAX;
    }
    return (uint32_t)((double)UINT32_MAX * capacity / pages);
}

void memdedup_board_filter_drop(MemdedupBoardFilter *f)
{
    if (f->bits_map) {
        munmap((void *)f->bits_map, f->bits / 8);
    }
    memset(f, 0, sizeof(*f));
}

/*
 * The checks, in order: the geometry alone (whole lines, no larger than
 * we accept, no more pages than the filter holds, and, for a complete
 * publication, no larger than its pages need); then the memfd (a regular
 * file of exactly that size, every byte allocated, sealed against
 * writing, shrinking and growing); then the bits against the pages.
 * A filter of 0 bits says the peer publishes nothing.
 */
bool memdedup_board_filter_take(MemdedupBoard *b, const MemdedupBoardMsg *msg,
                                int fd, MemdedupBoardFilter *f)
{
    const int seals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;
    const MemdedupBoardMsg m = *msg;    /* our copy, checked once */
    struct stat st;
    int got;
    void *map;

    *f = (MemdedupBoardFilter) {
        .bits = m.filter.bits,
        .pages = m.filter.pages,
        .threshold = m.filter.threshold,
    };
    if (!f->bits) {
        if (fd >= 0 || f->pages || m.filter.reserved) {
            goto refused;
        }
        trace_memdedup_board_adopted(0, 0);
        return true;
    }
    if (fd < 0 || m.filter.reserved ||
        f->bits % MEMDEDUP_BOARD_LINE_BITS || f->bits > b->max_bits ||
        f->pages > f->bits / MEMDEDUP_BOARD_BITS_PER_PAGE +
                   f->bits / MEMDEDUP_BOARD_BITS_PER_PAGE / 8 ||
        (f->threshold == UINT32_MAX &&
         f->bits > memdedup_board_bits_for(f->pages, UINT64_MAX))) {
        goto refused;
    }
    got = fcntl(fd, F_GET_SEALS);
    if (got < 0 || (got & seals) != seals || fstat(fd, &st) < 0 ||
        !S_ISREG(st.st_mode) || st.st_size != f->bits / 8 ||
        (uint64_t)st.st_blocks * 512 < f->bits / 8) {
        goto refused;
    }
    map = mmap(NULL, f->bits / 8, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        goto refused;
    }
    f->bits_map = map;
    if (!memdedup_bloom_plausible(f->bits_map, f->bits, f->pages)) {
        memdedup_board_filter_drop(f);
        goto refused;
    }
    close(fd);
    trace_memdedup_board_adopted(m.filter.pages, m.filter.bits);
    return true;

refused:
    if (fd >= 0) {
        close(fd);
    }
    memset(f, 0, sizeof(*f));
    memdedup_board_count(b, &b->rejected_updates);
    trace_memdedup_board_refused(m.filter.pages, m.filter.bits);
    return false;
}

/* ---------------------------------------------------------------- */
/* Publication                                                       */
/* ---------------------------------------------------------------- */

/*
 * Begin a publication of up to @pages fingerprints into a new memfd,
 * sized for them (2 bytes per page) up to "board-size".  False if the
 * memfd cannot be had: the last publication stands.
 */
bool memdedup_board_publish_begin(MemdedupBoard *b, uint64_t pages)
{
    uint64_t bits = pages ? memdedup_board_bits_for(pages, b->max_bits) : 0;
    Error *err = NULL;
    void *map;

    memset(&b->next_msg, 0, sizeof(b->next_msg));
    b->next_msg.filter.bits = bits;
    b->next_msg.filter.threshold = memdedup_board_threshold(pages, bits);
    b->next_publishable = pages;
    b->next_fd = -1;
    b->next_map = NULL;
    if (!bits) {
        return true;            /* nothing to publish: say so */
    }
    b->next_fd = qemu_memfd_create("memdedup-board", bits / 8, false, 0,
                                   F_SEAL_SHRINK | F_SEAL_GROW, &err);
    if (b->next_fd < 0) {
        warn_report_once("memdedup: board '%s': cannot publish: %s", b->dir,
                         error_get_pretty(err));
        error_free(err);
        return false;
    }
    map = mmap(NULL, bits / 8, PROT_READ | PROT_WRITE, MAP_SHARED,
               b->next_fd, 0);
    if (map == MAP_FAILED) {
        warn_report_once("memdedup: board '%s': cannot map a filter of %"
                         PRIu64 " bytes: %s", b->dir, bits / 8,
                         strerror(errno));
        close(b->next_fd);
        b->next_fd = -1;
        return false;
    }
    b->next_map = map;
    return true;
}

void memdedup_board_publish(MemdedupBoard *b, uint32_t fp)
{
    if (fp <= b->next_msg.filter.threshold) {
        memdedup_bloom_add(b->next_map, b->next_msg.filter.bits, fp);
        b->next_msg.filter.pages++;
    }
}

void memdedup_board_publish_prefetch(MemdedupBoard *b, uint32_t fp)
{
    if (fp <= b->next_msg.filter.threshold) {
        __builtin_prefetch(memdedup_bloom_line(b->next_map,
                                               b->next_msg.filter.bits, fp),
                           1);
    }
}

/* Seal the new filter: it is what every peer gets from now on. */
void memdedup_board_publish_end(MemdedupBoard *b)
{
    const MemdedupBoardMsg *m = &b->next_msg;
    guint i;

    if (b->next_map) {
        munmap(b->next_map, m->filter.bits / 8);
        b->next_map = NULL;
        if (fcntl(b->next_fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SEAL) < 0) {
            warn_report_once("memdedup: board '%s': cannot seal a filter: %s",
                             b->dir, strerror(errno));
            close(b->next_fd);
            b->next_fd = -1;
            return;
        }
    }
    if (b->pub_fd >= 0) {
        close(b->pub_fd);
    }
    b->pub_fd = b->next_fd;
    b->next_fd = -1;
    b->pub_msg = *m;
    b->published = true;
    WITH_QEMU_LOCK_GUARD(&b->lock) {
        b->published_pages = m->filter.pages;
        b->publishable_pages = b->next_publishable;
        b->filter_bytes = m->filter.bits / 8;
        b->publications++;
    }
    /* memdedup_board_tick delivers it, right after the pass. */
    for (i = 0; i < b->links->len; i++) {
        MemdedupBoardLink *l = g_ptr_array_index(b->links, i);

        l->send_pending = l->state == MEMDEDUP_LINK_PEER;
    }
    trace_memdedup_board_published(b->dir, m->filter.pages, m->filter.bits,
                                   m->filter.threshold);
}

bool memdedup_board_published(MemdedupBoard *b)
{
    return b->published;
}

/* ---------------------------------------------------------------- */
/* Lookup                                                            */
/* ---------------------------------------------------------------- */

/*
 * The filters of the peers as they are now.  They change only in
 * memdedup_board_tick, on this thread, so the view holds until the
 * next tick: lookups never see a filter change.
 */
uint32_t memdedup_board_lookup_begin(MemdedupBoard *b)
{
    guint i;

    b->view = g_renew(MemdedupBoardFilter, b->view, b->links->len);
    b->nr_view = 0;
    for (i = 0; i < b->links->len; i++) {
        MemdedupBoardLink *l = g_ptr_array_index(b->links, i);

        if (l->state == MEMDEDUP_LINK_PEER && l->filter.bits) {
            b->view[b->nr_view++] = l->filter;
        }
    }
    return b->nr_view;
}

/* One key for every peer's filter: the mixes are computed once. */
bool memdedup_board_lookup(MemdedupBoard *b, uint32_t fp)
{
    MemdedupBloomKey key = memdedup_bloom_key(fp);
    uint32_t i;

    for (i = 0; i < b->nr_view; i++) {
        const MemdedupBoardFilter *f = &b->view[i];

        if (fp <= f->threshold &&
            memdedup_bloom_test_key(f->bits_map, f->bits, key)) {
            return true;
        }
    }
    return false;
}

void memdedup_board_prefetch(MemdedupBoard *b, uint32_t fp)
{
    MemdedupBloomKey key = memdedup_bloom_key(fp);
    uint32_t i;

    for (i = 0; i < b->nr_view; i++) {
        const MemdedupBoardFilter *f = &b->view[i];

        if (fp <= f->threshold) {
            __builtin_prefetch(memdedup_bloom_line_key(f->bits_map, f->bits,
                                                       key));
        }
    }
}

uint64_t memdedup_board_version(MemdedupBoard *b)
{
    return b->version;
}
