/*
 * Unit tests for the memdedup engine below its QOM object: a block of
 * the test's own anonymous memory, passes run by the test (there is no
 * scanner thread), the summaries they count and the registration the
 * policy applies, as the kernel shows it (VmFlags in /proc/self/smaps).
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 */

#include "qemu/osdep.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "crypto/init.h"
#include "hw/boards.h"
#include "../../hw/mem/memdedup/memdedup-internal.h"

/* The engine asks the machine for guest NUMA nodes: there is none. */
MachineState *current_machine;

#define REGION (64 * KiB)
#define NR_REGIONS 16

typedef struct TestBlock {
    uint8_t *host;
    size_t page;
    size_t pages_per_region;
    MemdedupBlock *blk;
} TestBlock;

/* Fill page @p of @t with content no other page has. */
static void fill_unique(TestBlock *t, uint64_t p, uint64_t salt)
{
    uint64_t *w = (uint64_t *)(t->host + p * t->page);
    size_t i;

    for (i = 0; i < t->page / sizeof(*w); i++) {
        w[i] = (salt << 48 | p << 16 | i) * 0x9e3779b97f4a7c15ull;
    }
}

/*
 * The block every test starts from, one region of 16 pages each:
 * regions 0-1 zero, 3 a copy of 2, the first half of 4 a copy of the
 * first half of 2, page 0 of 5 a copy of page 0 of 2, the rest unique.
 * With the default threshold (10 %) regions 0-4 are candidates.
 */
static bool test_block_new(TestBlock *t, MemdedupPolicy policy)
{
    MemdedupParams params = {
        .policy = policy,
        .region_size = REGION,
        .duplicate_threshold = MEMDEDUP_THRESHOLD_DEFAULT,
    };
    uint64_t p;

    if (!memdedup_host_has_ksm()) {
        g_test_skip("the host has no KSM (madvise(MADV_MERGEABLE))");
        return false;
    }
    t->page = qemu_real_host_page_size();
    t->pages_per_region = REGION / t->page;
    t->host = mmap(NULL, NR_REGIONS * REGION, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    g_assert_true(t->host != MAP_FAILED);
    /* Small pages only, so that every page is resident on its own. */
    madvise(t->host, NR_REGIONS * REGION, MADV_NOHUGEPAGE);
    memset(t->host, 0, 2 * REGION);
    for (p = 2 * t->pages_per_region; p < NR_REGIONS * t->pages_per_region;
         p++) {
        fill_unique(t, p, 1);
    }
    memcpy(t->host + 3 * REGION, t->host + 2 * REGION, REGION);
    memcpy(t->host + 4 * REGION, t->host + 2 * REGION, REGION / 2);
    memcpy(t->host + 5 * REGION, t->host + 2 * REGION, t->page);
    t->blk = memdedup_registry_add("t0", t->host, NR_REGIONS * REGION,
                                   &params, &error_abort);
    return true;
}

static void test_block_free(TestBlock *t)
{
    memdedup_block_release(t->blk);
    munmap(t->host, NR_REGIONS * REGION);
}

/* Bit i: region i of @t lies in a VM_MERGEABLE VMA, as smaps has it. */
static uint32_t kernel_registered(TestBlock *t)
{
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;
    uintptr_t base = (uintptr_t)t->host, start = 0, end = 0;
    uint32_t mask = 0;
    size_t i;

    g_assert_true(g_file_get_contents("/proc/self/smaps", &text, NULL,
                                      NULL));
    lines = g_strsplit(text, "\n", -1);
    for (i = 0; lines[i]; i++) {
        unsigned long s, e;
        g_auto(GStrv) flags = NULL;
        int r;

        if (sscanf(lines[i], "%lx-%lx ", &s, &e) == 2) {
            start = s;
            end = e;
            continue;
        }
        if (!g_str_has_prefix(lines[i], "VmFlags:")) {
            continue;
        }
        flags = g_strsplit(lines[i] + strlen("VmFlags:"), " ", -1);
        if (!g_strv_contains((const gchar * const *)flags, "mg")) {
            continue;
        }
        for (r = 0; r < NR_REGIONS; r++) {
            uintptr_t a = base + r * REGION;

            if (a >= start && a + REGION <= end) {
                mask |= 1u << r;
            }
        }
    }
    return mask;
}

/* Bit i: the engine has region i registered. */
static uint32_t engine_registered(TestBlock *t)
{
    uint32_t mask = 0;
    int r;

    for (r = 0; r < NR_REGIONS; r++) {
        mask |= (uint32_t)t->blk->regions[r].registered << r;
    }
    return mask;
}

/* Every copy of a duplicated page counts: 2, 3, the halves, 1. */
static uint64_t expected_duplicates(TestBlock *t)
{
    return 2 * t->pages_per_region + t->pages_per_region / 2 + 1;
}

/*
 * Saved: every zero page, and every copy but the first: page 0 of region
 * 2 has three more, the rest of its first half two, its second half one.
 */
static uint64_t expected_saving(TestBlock *t)
{
    uint64_t ppr = t->pages_per_region;

    return (2 * ppr + 3 + (ppr / 2 - 1) * 2 + ppr / 2) * t->page;
}

/*
 * A pass counts zero and duplicated pages region by region, sums them,
 * estimates the saving and registers exactly the candidate regions; an
 * unchanged pass keeps all of it; a pass after the guest rewrote a
 * region counts it again and unregisters what stopped being a
 * candidate.
 */
static void test_pass_summary_and_registration(void)
{
    MemdedupEngine *engine = &memdedup_engine;
    TestBlock t;
    uint64_t pages = NR_REGIONS * REGION / qemu_real_host_page_size(), p;
    uint64_t ppr;

    if (!test_block_new(&t, MEMDEDUP_POLICY_TARGETED)) {
        return;
    }
    ppr = t.pages_per_region;
    memdedup_run_pass(engine, true);

    g_assert_cmpuint(t.blk->summary.resident_pages, ==, pages);
    g_assert_cmpuint(t.blk->summary.scanned_pages, ==, pages);
    g_assert_cmpuint(t.blk->summary.zero_pages, ==, 2 * ppr);
    g_assert_cmpuint(t.blk->summary.duplicate_pages, ==,
                     expected_duplicates(&t));
    g_assert_cmpuint(t.blk->summary.candidate_regions, ==, 5);
    g_assert_cmpuint(t.blk->summary.estimated_saving, ==,
                     expected_saving(&t));
    g_assert_cmpuint(t.blk->regions[4].duplicate, ==, ppr / 2);
    g_assert_cmpuint(t.blk->regions[5].duplicate, ==, 1);
    g_assert_cmphex(engine_registered(&t), ==, 0x1f);
    g_assert_cmphex(kernel_registered(&t), ==, 0x1f);
    g_assert_cmpuint(t.blk->registration.registered_bytes, ==, 5 * REGION);
    g_assert_cmpuint(t.blk->registration.registered_ranges, ==, 1);

    /* Nothing changed: the same summary and registration. */
    memdedup_run_pass(engine, true);
    g_assert_cmpuint(t.blk->summary.duplicate_pages, ==,
                     expected_duplicates(&t));
    g_assert_cmphex(kernel_registered(&t), ==, 0x1f);

    /* The guest rewrites region 4: no longer a candidate. */
    for (p = 4 * ppr; p < 5 * ppr; p++) {
        fill_unique(&t, p, 2);
    }
    memdedup_run_pass(engine, true);
    g_assert_cmpuint(t.blk->summary.duplicate_pages, ==, ppr + ppr + 1);
    g_assert_cmpuint(t.blk->regions[4].duplicate, ==, 0);
    g_assert_cmpuint(t.blk->summary.candidate_regions, ==, 4);
    g_assert_cmphex(engine_registered(&t), ==, 0xf);
    g_assert_cmphex(kernel_registered(&t), ==, 0xf);
    test_block_free(&t);
}

/* estimate counts the same, and wants and registers nothing. */
static void test_pass_estimate(void)
{
    TestBlock t;

    if (!test_block_new(&t, MEMDEDUP_POLICY_ESTIMATE)) {
        return;
    }
    memdedup_run_pass(&memdedup_engine, true);
    g_assert_cmpuint(t.blk->summary.zero_pages, ==, 2 * t.pages_per_region);
    g_assert_cmpuint(t.blk->summary.duplicate_pages, ==,
                     expected_duplicates(&t));
    g_assert_cmpuint(t.blk->summary.estimated_saving, ==,
                     expected_saving(&t));
    g_assert_cmpuint(t.blk->summary.candidate_regions, ==, 0);
    g_assert_cmphex(engine_registered(&t), ==, 0);
    g_assert_cmphex(kernel_registered(&t), ==, 0);
    test_block_free(&t);
}

static void set_counts(TestBlock *t, int r, uint32_t zero, uint32_t dup)
{
    memdedup_region_set_counts(&t->blk->regions[r], t->pages_per_region,
                               zero, dup, 0);
}

/*
 * Policy application on given region counts: registers the candidates
 * in as few madvise ranges as they form, unregisters (and says so) what
 * stopped being one, fills gaps to stay within the VMA budget, and
 * policy off unregisters everything.
 */
static void test_apply_policy(void)
{
    TestBlock t;
    MemdedupParams params;
    uint64_t refusals = 0;
    int r;

    if (!test_block_new(&t, MEMDEDUP_POLICY_TARGETED)) {
        return;
    }
    params = t.blk->params;
    for (r = 0; r < NR_REGIONS; r++) {
        set_counts(&t, r, 0, 0);
    }
    set_counts(&t, 1, t.pages_per_region, 0);
    set_counts(&t, 2, 0, t.pages_per_region);
    set_counts(&t, 6, 0, 1);                /* 6 %: below the threshold */
    g_assert_false(memdedup_apply_policy(t.blk, &params, false, &refusals));
    g_assert_cmphex(engine_registered(&t), ==, 0x6);
    g_assert_cmphex(kernel_registered(&t), ==, 0x6);

    /* Region 2 turned unique, 9 half duplicated. */
    set_counts(&t, 2, 0, 0);
    set_counts(&t, 9, 0, t.pages_per_region / 2);
    g_assert_true(memdedup_apply_policy(t.blk, &params, false, &refusals));
    g_assert_cmphex(engine_registered(&t), ==, 1 << 1 | 1 << 9);
    g_assert_cmphex(kernel_registered(&t), ==, 1 << 1 | 1 << 9);

    /* Three VMAs allowed, one range: the gap is registered too. */
    qatomic_set(&t.blk->vma_cap, 3);
    g_assert_false(memdedup_apply_policy(t.blk, &params, false, &refusals));
    g_assert_cmphex(engine_registered(&t), ==, 0x3fe);
    g_assert_cmphex(kernel_registered(&t), ==, 0x3fe);

    params.policy = MEMDEDUP_POLICY_OFF;
    g_assert_true(memdedup_apply_policy(t.blk, &params, false, &refusals));
    g_assert_cmphex(engine_registered(&t), ==, 0);
    g_assert_cmphex(kernel_registered(&t), ==, 0);
    g_assert_cmpuint(refusals, ==, 0);
    test_block_free(&t);
}

/*
 * The residency watch: memory that fills between passes is marked
 * region by region (nothing else), and a partial pass hashes only it,
 * counts duplicates inside a region and across regions, and registers
 * them without waiting for the next full pass.
 */
static void test_watch_partial_pass(void)
{
    MemdedupEngine *engine = &memdedup_engine;
    uint64_t passes, partial, p, ppr, cpu;
    TestBlock t;

    if (!test_block_new(&t, MEMDEDUP_POLICY_TARGETED)) {
        return;
    }
    ppr = t.pages_per_region;
    /* Regions 8-15 were never used: not resident. */
    g_assert_cmpint(madvise(t.host + 8 * REGION, 8 * REGION, MADV_DONTNEED),
                    ==, 0);
    memdedup_run_pass(engine, true);
    g_assert_cmpuint(t.blk->summary.resident_pages, ==, 8 * ppr);
    g_assert_cmphex(kernel_registered(&t), ==, 0x1f);
    g_assert_false(memdedup_watch(engine, &cpu));
    g_assert_cmpuint(bitmap_count_one(t.blk->watched, NR_REGIONS), ==, 0);

    /*
     * The guest fills regions 8-10: 9 a copy of 8, 10 its first half
     * twice.  A page more in region 11 is too little to mark it.
     */
    for (p = 8 * ppr; p < 9 * ppr; p++) {
        fill_unique(&t, p, 3);
    }
    memcpy(t.host + 9 * REGION, t.host + 8 * REGION, REGION);
    for (p = 10 * ppr; p < 10 * ppr + ppr / 2; p++) {
        fill_unique(&t, p, 4);
    }
    memcpy(t.host + 10 * REGION + REGION / 2, t.host + 10 * REGION,
           REGION / 2);
    fill_unique(&t, 11 * ppr, 5);
    g_assert_true(memdedup_watch(engine, &cpu));
    g_assert_cmphex(t.blk->watched[0], ==, 0x700);

    passes = engine->passes_completed;
    partial = engine->partial_passes;
    memdedup_run_partial_pass(engine);
    g_assert_cmpuint(engine->passes_completed, ==, passes);
    g_assert_cmpuint(engine->partial_passes, ==, partial + 1);
    /* Region 11 was not hashed: its page is not known yet. */
    g_assert_cmpuint(t.blk->summary.resident_pages, ==, 11 * ppr);
    g_assert_cmpuint(t.blk->regions[11].resident, ==, 0);
    g_assert_cmpuint(t.blk->regions[8].duplicate, ==, ppr);
    g_assert_cmpuint(t.blk->regions[9].duplicate, ==, ppr);
    g_assert_cmpuint(t.blk->regions[10].duplicate, ==, ppr);
    g_assert_cmphex(engine_registered(&t), ==, 0x71f);
    g_assert_cmphex(kernel_registered(&t), ==, 0x71f);

    /* Nothing moved since: no pass. */
    g_assert_false(memdedup_watch(engine, &cpu));

    /*
     * The guest reads region 12, never written.  Where the kernel maps
     * its zero page for that, the watch sees the region once and the
     * partial pass finds nothing resident; where it allocates pages,
     * they are zero pages.  Either way the watch does not see it again.
     */
    for (p = 12 * ppr; p < 13 * ppr; p++) {
        (void)qatomic_read(t.host + p * (REGION / ppr));
    }
    if (memdedup_watch(engine, &cpu)) {
        memdedup_run_partial_pass(engine);
    }
    g_assert_cmpuint(t.blk->regions[12].zero, ==,
                     t.blk->regions[12].resident);
    g_assert_false(memdedup_watch(engine, &cpu));

    /* A full pass finds region 11's page. */
    memdedup_run_pass(engine, true);
    g_assert_cmpuint(t.blk->regions[11].resident, ==, 1);
    g_assert_cmpuint(engine->passes_completed, ==, passes + 1);
    test_block_free(&t);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    /* The engine's fingerprint seed comes from QEMU's random source. */
    qcrypto_init(&error_abort);
    g_test_add_func("/memdedup-engine/pass/summary-and-registration",
                    test_pass_summary_and_registration);
    g_test_add_func("/memdedup-engine/pass/estimate", test_pass_estimate);
    g_test_add_func("/memdedup-engine/apply-policy", test_apply_policy);
    g_test_add_func("/memdedup-engine/watch/partial-pass",
                    test_watch_partial_pass);
    return g_test_run();
}
