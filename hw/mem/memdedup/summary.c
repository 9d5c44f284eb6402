/*
 * memdedup: the index and the region summaries of a pass
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * After the hashing phase of a pass: the dup set is rebuilt from every
 * fingerprint (memdedup_pass_index), each region of each block is
 * counted against it and, with a board, against the other VMs'
 * fingerprints (memdedup_pass_summarize), and the block's summary is
 * the sum of its regions (MemdedupSummaryStats).  A rescan in which
 * nothing changed keeps the last counts (memdedup_pass_unchanged).
 * Region counts are set only through memdedup_region_set_counts, so
 * that resident = zero + duplicate + cross_vm + unique always holds.
 * Scanner thread only, between hashing phases: no worker thread runs,
 * so the regions and fingerprints are the scanner's alone.
 */

#include "qemu/osdep.h"
#include "qemu/atomic.h"
#include "qemu/bitmap.h"
#include "qemu/error-report.h"
#include "qemu/lockable.h"
#include "qapi/qapi-events-memdedup.h"
#include "memdedup-internal.h"
#include "trace.h"

/*
 * Drop the fingerprints of the pages of @discarded regions that are no
 * longer plugged, and recount those regions.  Scanner thread, between
 * hashing phases.
 */
static void memdedup_forget_discarded(MemdedupBlock *blk,
                                      unsigned long *discarded)
{
    unsigned long *plugged = qatomic_load_acquire(&blk->plugged);
    uint64_t i, p;

    for (i = find_first_bit(discarded, blk->nr_regions); i < blk->nr_regions;
         i = find_next_bit(discarded, blk->nr_regions, i + 1)) {
        MemdedupRegion *r = &blk->regions[i];
        uint64_t first = i * blk->pages_per_region;
        uint64_t last = MIN(first + blk->pages_per_region, blk->nr_pages);
        uint32_t resident = 0, zero = 0;

        for (p = first; p < last; p++) {
            if (plugged && !test_bit(p, plugged)) {
                memdedup_block_set_fp(blk, p, MEMDEDUP_FP_ABSENT);
            }
            resident += blk->fps[p] != MEMDEDUP_FP_ABSENT;
            zero += blk->fps[p] == MEMDEDUP_FP_ZERO;
        }
        /* Duplicates are recounted by the summary. */
        memdedup_region_set_counts(r, resident, zero, 0, 0);
        r->volatile_pages = MIN(r->volatile_pages, resident);
        blk->judged_gen = 0;
        if (!resident) {
            r->stable_passes = 0;
        }
    }
}

/*
 * Part of the index could not be had for want of memory (@what, @bytes
 * of it): the pass goes on without it (stale counts cost accuracy, never
 * correctness), and the next pass builds the whole index again even if
 * nothing changed.  Said once until an index is built whole.
 */
void memdedup_pass_index_failed(MemdedupPass *pass, const char *what,
                                uint64_t bytes)
{
    MemdedupEngine *engine = pass->engine;
    uint64_t pass_no;

    WITH_QEMU_LOCK_GUARD(&engine->lock) {
        engine->index_failures++;
        pass_no = engine->passes_completed + 1;
    }
    trace_memdedup_index_failed(pass_no, what, bytes);
    engine->indexed_blocks_gen = 0;
    if (engine->index_failing) {
        return;
    }
    engine->index_failing = true;
    warn_report("memdedup: no memory for %s in pass %" PRIu64 " (%" PRIu64
                " KiB); passes go on without it until it can be built",
                what, pass_no, bytes / KiB);
    qapi_event_send_memdedup_index_skipped(pass_no, bytes);
}

/* Said once, and again only after an index that left nothing out. */
static void memdedup_index_note_dropped(MemdedupEngine *engine)
{
    WITH_QEMU_LOCK_GUARD(&engine->lock) {
        engine->dupset_dropped = engine->dupset.dropped;
    }
    if (engine->dupset.dropped && !engine->index_dropping) {
        warn_report("memdedup: the duplicate index leaves out %" PRIu64
                    " duplicated fingerprints (those with the fewest "
                    "copies) to stay within %d bytes of metadata per "
                    "guest page; their pages count as unique",
                    engine->dupset.dropped, MEMDEDUP_METADATA_PER_PAGE);
    }
    engine->index_dropping = engine->dupset.dropped > 0;
}

/*
 * End of the hashing phase: rebuild the dup set (and the per-node index)
 * from the fingerprints of every block with a policy, leaving out
 * removed blocks; the summaries then count each region against it.  The
 * dup set gets the metadata budget the blocks leave.  False if the dup
 * set could not be rebuilt: the last one stands.
 */
bool memdedup_pass_index(MemdedupPass *pass)
{
    MemdedupEngine *engine = pass->engine;
    g_autofree MemdedupFpArray *arrays = g_new(MemdedupFpArray,
                                               MAX(pass->nr_blocks, 1));
    uint64_t budget = 0, kept = 0, pages = 0, limit;
    size_t b, nr = 0;
    unsigned nr_nodes;
    bool whole;

    for (b = 0; b < pass->nr_blocks; b++) {
        MemdedupBlock *blk = pass->blocks[b].blk;

        budget += blk->nr_pages * MEMDEDUP_METADATA_PER_PAGE;
        kept += memdedup_block_metadata_bytes(blk);
        if (pass->blocks[b].params.policy == MEMDEDUP_POLICY_OFF ||
            qatomic_read(&blk->removed)) {
            continue;           /* a removed block leaves the index */
        }
        arrays[nr++] = (MemdedupFpArray) {
            .lo = blk->fps, .hi = blk->fp_hi, .nodes = blk->nodes,
            .nr_pages = blk->nr_pages,
        };
        pages += blk->nr_pages;
    }
    budget = MAX(budget - MIN(budget, kept), MEMDEDUP_INDEX_MIN_BYTES);
    nr_nodes = memdedup_numa_nodes_in_use(arrays, nr);
    /* x-index-memory: a test's stand-in for an allocation failing. */
    limit = qatomic_read(&engine->x_index_memory);
    if ((limit && memdedup_dupset_transient_bytes(pages) > limit) ||
        !memdedup_dupset_build(&engine->dupset, arrays, nr, budget,
                               nr_nodes)) {
        memdedup_pass_index_failed(pass, "the duplicate index",
                                   memdedup_dupset_transient_bytes(pages));
        return false;
    }
    for (b = 0; b < pass->nr_blocks; b++) {
        pass->blocks[b].indexed =
            pass->blocks[b].params.policy != MEMDEDUP_POLICY_OFF &&
            !qatomic_read(&pass->blocks[b].blk->removed);
    }
    /* The per-node bits (numa.c); without them, the global view. */
    whole = memdedup_numa_index_build(&engine->numa, &engine->dupset, arrays,
                                      nr, nr_nodes);
    memdedup_index_note_dropped(engine);
    engine->dupset_gen++;
    engine->indexed_blocks_gen = pass->blocks_gen;
    if (!whole) {
        memdedup_pass_index_failed(pass, "the per-node index",
                                   2 * DIV_ROUND_UP(engine->dupset.len *
                                                    nr_nodes, 8));
    } else {
        engine->index_failing = false;
    }
    return true;
}

/*
 * After hashing: would indexing and summarizing again give what the last
 * summary gave?  They would when every region of every block was scanned
 * and none had a page change, appear, go or move node since the last
 * summary counted it against the current dup set (MemdedupScanBuffers
 * .reused), the blocks are those the dup set was built from, nothing
 * was discarded and no parameter changed, and no other VM published
 * since we last looked up the board.  A quiet guest's rescan then costs
 * its hashing and little more.
 */
bool memdedup_pass_unchanged(MemdedupPass *pass, bool board_eval)
{
    MemdedupEngine *engine = pass->engine;
    size_t b;

    if (pass->reused != pass->nr_items || pass->churn ||
        pass->inputs_changed || board_eval ||
        engine->indexed_blocks_gen != pass->blocks_gen) {
        return false;
    }
    if (pass->board &&
        memdedup_board_version(pass->board) != engine->board_version) {
        return false;
    }
    for (b = 0; b < pass->nr_blocks; b++) {
        if (pass->blocks[b].hinted ||
            qatomic_read(&pass->blocks[b].blk->removed)) {
            return false;
        }
    }
    return true;
}

/* Sum the region counts of @pb's block into @st. */
static void memdedup_block_tally(MemdedupPassBlock *pb,
                                 MemdedupSummaryStats *st)
{
    MemdedupBlock *blk = pb->blk;
    uint64_t i;

    st->resident_pages = st->zero_pages = st->duplicate_pages = 0;
    st->unique_pages = st->volatile_pages = st->candidate_regions = 0;
    st->cross_vm_pages = st->cross_vm_regions = 0;
    for (i = 0; i < blk->nr_regions; i++) {
        MemdedupRegion *r = &blk->regions[i];

        st->resident_pages += r->resident;
        st->zero_pages += r->zero;
        st->duplicate_pages += r->duplicate;
        st->unique_pages += r->unique;
        st->volatile_pages += r->volatile_pages;
        st->candidate_regions += memdedup_region_wanted(&pb->params, r);
        st->cross_vm_pages += r->cross_vm;
        st->cross_vm_regions += memdedup_region_cross_only(&pb->params, r);
    }
}

/*
 * Count the pages [@first, @last) of @blk against the dup set (into
 * *@duplicate) and, for those unique here, the board (*@cross_vm), and
 * into @numa if not NULL.  Returns the bytes merging would free: every
 * copy but the first of each duplicate (@first_seen marks the firsts).
 */
static inline uint64_t memdedup_region_count_pages(MemdedupEngine *engine,
                                                   MemdedupBlock *blk,
                                                   MemdedupBoard *board,
                                                   unsigned long *first_seen,
                                                   MemdedupNumaStats *numa,
                                                   uint64_t first,
                                                   uint64_t last,
                                                   uint32_t *duplicate,
                                                   uint32_t *cross_vm)
{
    uint64_t p, saving = 0;

    for (p = first; p < last; p++) {
        ssize_t idx;

        memdedup_dupset_prefetch(&engine->dupset, blk->fps, blk->fp_hi, p,
                                 blk->nr_pages);
        if (board && p + MEMDEDUP_LOOKAHEAD < blk->nr_pages &&
            blk->fps[p + MEMDEDUP_LOOKAHEAD] > MEMDEDUP_FP_ZERO) {
            memdedup_board_prefetch(board, blk->fps[p + MEMDEDUP_LOOKAHEAD]);
        }
        if (blk->fps[p] <= MEMDEDUP_FP_ZERO) {
            if (numa) {
                memdedup_numa_count_page(numa, blk->fps[p], blk->nodes[p],
                                         MEMDEDUP_DUP_NONE);
            }
            continue;
        }
        idx = memdedup_numa_find(engine, blk, p, numa);
        if (idx < 0) {
            /* Unique here; held by another VM? */
            *cross_vm += board && memdedup_board_lookup(board, blk->fps[p]);
            continue;
        }
        (*duplicate)++;
        if (test_and_set_bit(idx, first_seen)) {
            saving += blk->page_size;
        }
    }
    return saving;
}

/*
 * Count @pb's regions against the dup set (and the board), into @st.
 * Without @recount (memdedup_pass_unchanged), each region keeps the
 * counts of the last summary, as do the estimated saving and the
 * per-node statistics: only the sums, the regions' stability and what
 * the kernel merged move.
 */
void memdedup_pass_summarize(MemdedupEngine *engine,
                             MemdedupPassBlock *pb,
                             MemdedupBoard *board,
                             unsigned long *first_seen,
                             bool recount,
                             MemdedupSummaryStats *st)
{
    MemdedupBlock *blk = pb->blk;
    MemdedupNumaStats *numa = NULL;
    uint64_t i;

    /*
     * The per-node statistics, from the same lookups (numa-engine.c);
     * the kernel's merged pages per node are counted again either way.
     */
    if (recount && pb->indexed) {
        numa = g_new0(MemdedupNumaStats, 1);
    } else if (!recount && pb->params.policy != MEMDEDUP_POLICY_OFF) {
        numa = memdedup_numa_block_stats(blk);
    }
    memset(st, 0, sizeof(*st));
    for (i = 0; i < blk->nr_regions; i++) {
        MemdedupRegion *r = &blk->regions[i];
        uint64_t first = i * blk->pages_per_region;
        uint64_t last = MIN(first + blk->pages_per_region, blk->nr_pages);
        uint32_t duplicate = r->duplicate, cross_vm = r->cross_vm;

        if (pb->params.policy != MEMDEDUP_POLICY_OFF) {
            if (recount) {
                duplicate = cross_vm = 0;
                st->estimated_saving += memdedup_region_count_pages(
                    engine, blk, board, first_seen, numa, first, last,
                    &duplicate, &cross_vm);
            }
            memdedup_region_set_counts(r, r->resident, r->zero, duplicate,
                                       cross_vm);
            /*
             * Stable: resident and unchanged, full pass after full pass
             * (a pass that only applied what changed, or hashed only
             * what the residency watch marked, says nothing of it).
             */
            if (pb->full && (r->volatile_pages || !r->resident)) {
                r->stable_passes = 0;
            } else if (pb->full && r->stable_passes < UINT8_MAX) {
                r->stable_passes++;
            }
        }
    }
    memdedup_block_tally(pb, st);
    st->scanned_pages = pb->params.policy == MEMDEDUP_POLICY_OFF ? 0 :
                        st->resident_pages;
    /* Each region's duplicates are counted: the next scan may reuse them. */
    blk->judged_gen = pb->params.policy == MEMDEDUP_POLICY_OFF ? 0 :
                      engine->dupset_gen;
    if (recount) {
        st->estimated_saving += st->zero_pages * blk->page_size;
    } else {
        /* The scanner is its only writer: no lock needed to read it. */
        st->estimated_saving = blk->summary.estimated_saving;
    }
    if (numa) {
        memdedup_numa_block_publish(engine, blk, numa);
    }
}

/*
 * Pages discarded (virtio-mem) leave the index when the pass gets to
 * them, also between passes: after hashing, which skipped them already.
 */
void memdedup_pass_forget_discarded(MemdedupPass *pass)
{
    size_t b;

    for (b = 0; b < pass->nr_blocks; b++) {
        if (pass->blocks[b].discarded) {
            memdedup_forget_discarded(pass->blocks[b].blk,
                                      pass->blocks[b].discarded);
            g_free(pass->blocks[b].discarded);
            pass->blocks[b].discarded = NULL;
        }
    }
}
