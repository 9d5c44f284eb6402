/*
 * memdedup: KSM pages and their sharers, page by page
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * Exact counts where QEMU holds CAP_SYS_ADMIN: a range's page frames
 * from /proc/self/pagemap, their KPF_KSM flag from /proc/kpageflags and
 * their mappings from /proc/kpagecount.  The files are taken as
 * descriptors, so that the unit test and the fuzz target hand in their
 * own; what they say is bounded before use (a share is below one page
 * whatever a count says).
 */

#include "qemu/osdep.h"
#include "qemu/bitops.h"
#include "memdedup-core.h"

/*
 * Add to @shares the share of this mapping in each KSM page among
 * @flags (@n pages from @pfn): (sharers - 1) / sharers of a page, in
 * MEMDEDUP_SHARE_UNIT parts, the sharers being the page's mappings by
 * /proc/kpagecount (@kpagecount_fd).  False if a read fails.
 */
static bool memdedup_add_ksm_shares(int kpagecount_fd, const uint64_t *flags,
                                    uint64_t pfn, size_t n,
                                    MemdedupKsmShares *shares)
{
    size_t k;

    for (k = 0; k < n; k++) {
        uint64_t sharers;

        if (!((flags[k] >> MEMDEDUP_KPF_KSM) & 1)) {
            continue;
        }
        shares->pages++;
        if (kpagecount_fd < 0) {
            continue;
        }
        if (pread(kpagecount_fd, &sharers, sizeof(sharers),
                  (off_t)((pfn + k) * sizeof(sharers))) != sizeof(sharers)) {
            return false;
        }
        /* A KSM page nobody else maps (yet, or any more) saves nothing. */
        if (sharers > 1) {
            shares->attributed += MEMDEDUP_SHARE_UNIT -
                                  MEMDEDUP_SHARE_UNIT / sharers;
        }
    }
    return true;
}

bool memdedup_count_ksm_shares(int pagemap_fd, int kpageflags_fd,
                               int kpagecount_fd, uintptr_t start,
                               size_t len, MemdedupKsmShares *shares)
{
    const size_t batch = 4096;
    size_t page_size = qemu_real_host_page_size();
    size_t pages = len / page_size, done = 0;
    g_autofree uint64_t *entries = g_new(uint64_t, batch);
    g_autofree uint64_t *flags = g_new(uint64_t, batch);
    bool saw_pfn = false, saw_present = false;

    while (done < pages) {
        size_t n = MIN(batch, pages - done), i, j;
        off_t off = (off_t)((start / page_size) + done) * sizeof(uint64_t);

        if (pread(pagemap_fd, entries, n * sizeof(uint64_t), off) !=
            (ssize_t)(n * sizeof(uint64_t))) {
            return false;
        }
        /*
         * One kpageflags read per run of physically consecutive pages
         * (most memory that is not merged), not one per page.
         */
        for (i = 0; i < n; i = j) {
            uint64_t pfn = entries[i] & MEMDEDUP_PM_PFN_MASK;
            ssize_t want;

            j = i + 1;
            if (!(entries[i] & MEMDEDUP_PM_PRESENT)) {
                continue;
            }
            saw_present = true;
            if (!pfn) {
                continue;
            }
            saw_pfn = true;
            while (j < n && (entries[j] & MEMDEDUP_PM_PRESENT) &&
                   (entries[j] & MEMDEDUP_PM_PFN_MASK) == pfn + (j - i)) {
                j++;
            }
            want = (j - i) * sizeof(uint64_t);
            if (pread(kpageflags_fd, flags, want,
                      (off_t)(pfn * sizeof(uint64_t))) != want ||
                !memdedup_add_ksm_shares(kpagecount_fd, flags, pfn, j - i,
                                         shares)) {
                return false;
            }
        }
        done += n;
    }
    /* Unprivileged readers see present pages with PFN 0. */
    return !(saw_present && !saw_pfn);
}

int64_t memdedup_count_ksm_pages(int pagemap_fd, int kpageflags_fd,
                                 uintptr_t start, size_t len)
{
    MemdedupKsmShares shares = { 0 };

    if (!memdedup_count_ksm_shares(pagemap_fd, kpageflags_fd, -1, start, len,
                                   &shares)) {
        return -1;
    }
    return shares.pages;
}

uint32_t memdedup_cow_walk(const uint64_t *entries, const bool *nonzero,
                           size_t n, unsigned long *shared, uint64_t first,
                           uint32_t *sharing)
{
    uint32_t broken = 0;
    size_t k;

    *sharing = 0;
    for (k = 0; k < n; k++) {
        bool present = entries[k] & MEMDEDUP_PM_PRESENT;
        bool now = memdedup_pm_shares_frame(entries[k]);

        if (present && !now && test_bit(first + k, shared)) {
            broken++;
        }
        if (now && nonzero[k]) {
            set_bit(first + k, shared);
            (*sharing)++;
        } else {
            clear_bit(first + k, shared);
        }
    }
    return broken;
}
