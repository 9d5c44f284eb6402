/*
 * memdedup: the cross-VM fingerprint board
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * One QEMU only sees its own guest; pages identical across VMs but
 * unique inside each are never registered by targeted mode.  The QEMUs
 * of a host share what they found through a board: a file (by default
 * under /dev/shm) mapped shared by every engine that names it.  No
 * memory content is shared, only keyed fingerprints:
 *
 *  - fingerprints are XXH3 with a seed derived from a key (a secret
 *    object, "board-key"), so only engines holding the same key compute
 *    comparable fingerprints; the key also yields a domain tag, and an
 *    engine ignores slots whose tag differs from its own;
 *  - the board has a fixed number of slots; an engine claims one and is
 *    its only writer.  Its slot holds a Bloom filter of the fingerprints
 *    of its resident, non-zero, non-volatile pages: 16 bits per page at
 *    most (2 bytes per published page), rebuilt after every pass.  If the
 *    filter is too small for all of them, only fingerprints below a
 *    threshold are published (the same subset in every VM), and lookups
 *    of fingerprints above another slot's threshold are not answered;
 *  - a page of ours that no other page of ours duplicates, but that
 *    some other live slot of our domain contains, is a cross-VM
 *    duplicate and counts towards its region's registration;
 *  - no locks: a writer makes its slot's sequence number odd while it
 *    rewrites the filter and even when done; readers skip odd slots and
 *    drop what they read if the number changed meanwhile.  A writer that
 *    dies mid-update leaves its slot odd, so it is never read again;
 *  - liveness: the owner refreshes a heartbeat every second; a slot
 *    whose heartbeat is older than "board-timeout" is ignored by readers
 *    and may be claimed by a new engine (compare-and-swap on its owner
 *    token), so a dead publisher's entries age out and never wedge the
 *    board.  A board with no free slot leaves the engine working alone,
 *    and says so.
 *
 * The file is created with mode 0600; an existing one must be a regular
 * file of ours that nobody else can access.
 */

#include "qemu/osdep.h"
#include <sys/mman.h>
#include "qemu/error-report.h"
#include "qemu/cutils.h"
#include "qemu/host-utils.h"
#include "qemu/units.h"
#include "qemu/atomic.h"
#include "qemu/guest-random.h"
#include "qapi/error.h"
#include "qapi/visitor.h"
#include "crypto/secret_common.h"
#include "memdedup-internal.h"
#include "trace.h"

#define MEMDEDUP_BOARD_MAGIC    0x314452414f42444dull   /* "MDBOARD1" */
#define MEMDEDUP_BOARD_VERSION  2           /* 2: blocked filter */
#define MEMDEDUP_BOARD_HDR      4096        /* bytes before slot 0 */
#define MEMDEDUP_SLOT_HDR       128         /* bytes before a filter */
#define MEMDEDUP_BITS_PER_PAGE  16          /* at full capacity */
#define MEMDEDUP_BOARD_DIR      "/dev/shm"

typedef struct MemdedupBoardHeader {
    uint64_t magic;             /* stored last by the creator */
    uint32_t version;
    uint32_t nr_slots;
    uint64_t slot_bytes;        /* per slot, its header included */
    uint64_t size;              /* of the file */
} MemdedupBoardHeader;

typedef struct MemdedupBoardSlot {
    uint64_t owner;             /* token of the owner; 0: free */
    uint64_t heartbeat;         /* owner's CLOCK_MONOTONIC, ns */
    uint64_t seq;               /* odd while the filter is rewritten */
    uint8_t domain[16];         /* tag of the owner's key */
    uint32_t pid;               /* of the owner, for the operator */
    uint32_t threshold;         /* fingerprints <= this are published */
    uint64_t published;         /* fingerprints in the filter */
    uint64_t filter_bits;       /* power of two */
} MemdedupBoardSlot;

QEMU_BUILD_BUG_ON(sizeof(MemdedupBoardHeader) > MEMDEDUP_BOARD_HDR);
QEMU_BUILD_BUG_ON(sizeof(MemdedupBoardSlot) > MEMDEDUP_SLOT_HDR);

struct MemdedupBoard {
    char *path;
    uint8_t *map;
    uint64_t size;
    uint32_t nr_slots;
    uint64_t slot_bytes;
    uint64_t timeout_ns;
    uint64_t seed;              /* the engine's fingerprint seed */
    uint8_t domain[16];
    uint64_t token;
    int slot;                   /* ours, or -1 (board full) */
    int pub_slot;               /* the slot a publication writes */
    uint64_t claims;            /* slots claimed so far */
    uint64_t pub_claims;        /* claims when the publication began */
    uint64_t published_claims;  /* claims at the last complete one, or 0 */
    bool full_warned;

    /* Lookup: foreign slots readable when it began, and their seq. */
    uint32_t nr_readable;
    uint32_t *readable;
    uint64_t *readable_seq;
    bool partial;               /* a peer was mid-update when it began */
};

static MemdedupBoardSlot *memdedup_slot(MemdedupBoard *b, uint32_t i)
{
    return (MemdedupBoardSlot *)(b->map + MEMDEDUP_BOARD_HDR +
                                 i * b->slot_bytes);
}

static uint8_t *memdedup_slot_filter(MemdedupBoard *b, uint32_t i)
{
    return (uint8_t *)memdedup_slot(b, i) + MEMDEDUP_SLOT_HDR;
}

static uint64_t memdedup_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

uint64_t memdedup_board_filter_bits(uint64_t slot_bytes)
{
    uint64_t bytes = slot_bytes > MEMDEDUP_SLOT_HDR ?
                     slot_bytes - MEMDEDUP_SLOT_HDR : 0;

    return bytes >= 8 ? pow2floor(bytes) * 8 : 0;
}

uint32_t memdedup_board_threshold(uint64_t pages, uint64_t filter_bits)
{
    uint64_t capacity = filter_bits / MEMDEDUP_BITS_PER_PAGE;

    if (pages <= capacity) {
        return UINT32_MAX;
    }
    return (uint32_t)((double)UINT32_MAX * capacity / pages);
}

/* Key material: the fingerprint seed and the domain tag. */
static void memdedup_board_derive(const uint8_t *key, size_t len,
                                  uint64_t *seed, uint8_t domain[16])
{
    g_autoptr(GChecksum) c = g_checksum_new(G_CHECKSUM_SHA256);
    uint8_t digest[32];
    gsize dlen = sizeof(digest);

    g_checksum_update(c, (const guchar *)"memdedup-board-v1", 17);
    g_checksum_update(c, key, len);
    g_checksum_get_digest(c, digest, &dlen);
    memcpy(seed, digest, sizeof(*seed));
    memcpy(domain, digest + 16, 16);
}

static bool memdedup_slot_live(MemdedupBoard *b, MemdedupBoardSlot *s,
                               uint64_t now)
{
    uint64_t hb = qatomic_read(&s->heartbeat);

    return qatomic_read(&s->owner) && now - hb < b->timeout_ns;
}

/* Is slot @i another live VM of our trust domain? */
static bool memdedup_slot_peer(MemdedupBoard *b, uint32_t i, uint64_t now)
{
    MemdedupBoardSlot *s = memdedup_slot(b, i);

    return i != b->slot && memdedup_slot_live(b, s, now) &&
           !memcmp(s->domain, b->domain, sizeof(b->domain));
}

/* Claim a free or dead slot; -1 if every slot is live. */
static int memdedup_board_claim(MemdedupBoard *b)
{
    uint64_t now = memdedup_now_ns();
    uint32_t i;

    for (i = 0; i < b->nr_slots; i++) {
        MemdedupBoardSlot *s = memdedup_slot(b, i);
        uint64_t owner = qatomic_read(&s->owner);

        if (owner && memdedup_slot_live(b, s, now)) {
            continue;
        }
        /* Heartbeat first, so that a racing claimer sees it live. */
        if (qatomic_cmpxchg(&s->owner, owner, b->token) != owner) {
            continue;
        }
        qatomic_set(&s->heartbeat, now);
        /* Odd: empty until our first publication. */
        qatomic_set(&s->seq, (qatomic_read(&s->seq) | 1) + 2);
        memcpy(s->domain, b->domain, sizeof(s->domain));
        s->pid = getpid();
        s->published = 0;
        s->threshold = 0;
        s->filter_bits = memdedup_board_filter_bits(b->slot_bytes);
        /*
         * The header above before the seq of our first publication
         * (memdedup_board_publish_end); pairs with the smp_rmb() in
         * memdedup_board_lookup_begin, which reads seq, then the header.
         */
        smp_wmb();
        b->claims++;
        trace_memdedup_board_slot(b->path, i, owner != 0);
        return i;
    }
    return -1;
}

static int memdedup_board_map(MemdedupBoard *b, int fd, Error **errp)
{
    MemdedupBoardHeader *h;
    struct stat st;
    int tries;

    /* The creator sizes it and stores the magic last. */
    for (tries = 0; tries < 100; tries++) {
        if (fstat(fd, &st) < 0) {
            error_setg_errno(errp, errno, "board '%s'", b->path);
            return -1;
        }
        if (st.st_size >= MEMDEDUP_BOARD_HDR) {
            break;
        }
        g_usleep(10000);
    }
    if (st.st_size < MEMDEDUP_BOARD_HDR) {
        error_setg(errp, "board '%s' is not a memdedup board (%" PRId64
                   " bytes)", b->path, (int64_t)st.st_size);
        return -1;
    }
    b->map = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (b->map == MAP_FAILED) {
        b->map = NULL;
        error_setg_errno(errp, errno, "cannot map board '%s'", b->path);
        return -1;
    }
    b->size = st.st_size;
    h = (MemdedupBoardHeader *)b->map;
    for (tries = 0; tries < 100 &&
         qatomic_load_acquire(&h->magic) != MEMDEDUP_BOARD_MAGIC; tries++) {
        g_usleep(10000);
    }
    if (qatomic_load_acquire(&h->magic) != MEMDEDUP_BOARD_MAGIC ||
        h->version != MEMDEDUP_BOARD_VERSION || h->size != b->size ||
        !h->nr_slots || h->nr_slots > MEMDEDUP_BOARD_SLOTS_MAX ||
        h->slot_bytes <= MEMDEDUP_SLOT_HDR ||
        h->slot_bytes > (b->size - MEMDEDUP_BOARD_HDR) / h->nr_slots) {
        error_setg(errp, "board '%s' is not a memdedup board of version %d",
                   b->path, MEMDEDUP_BOARD_VERSION);
        return -1;
    }
    b->nr_slots = h->nr_slots;
    b->slot_bytes = h->slot_bytes;
    return 0;
}

static char *memdedup_board_path(const char *name)
{
    return strchr(name, '/') ? g_strdup(name) :
           g_build_filename(MEMDEDUP_BOARD_DIR, name, NULL);
}

/* The secret of the trust domain, checked; NULL and @errp set if none. */
static uint8_t *memdedup_board_key(MemdedupBoardConfig *cfg, size_t *len,
                                   Error **errp)
{
    uint8_t *key = NULL;

    if (!cfg->key_id) {
        error_setg(errp, "property 'board' of %s needs 'board-key', the id "
                   "of a secret object shared by the VMs of one trust "
                   "domain", TYPE_MEMDEDUP);
        return NULL;
    }
    if (qcrypto_secret_lookup(cfg->key_id, &key, len, errp) < 0) {
        error_prepend(errp, "property 'board-key' of %s: ", TYPE_MEMDEDUP);
        return NULL;
    }
    if (*len < 8) {
        error_setg(errp, "property 'board-key' of %s: the secret '%s' must "
                   "hold at least 8 bytes", TYPE_MEMDEDUP, cfg->key_id);
        g_free(key);
        return NULL;
    }
    return key;
}

/*
 * Lay out the board file @fd we just created: slots of equal size, the
 * magic last, so that a peer mapping it early sees no board yet.
 */
static int memdedup_board_create(MemdedupBoard *b, MemdedupBoardConfig *cfg,
                                 int fd, Error **errp)
{
    uint64_t slot_bytes = (cfg->size - MEMDEDUP_BOARD_HDR) / cfg->slots;
    MemdedupBoardHeader *h;

    slot_bytes = MEMDEDUP_SLOT_HDR + memdedup_board_filter_bits(slot_bytes) / 8;
    if (ftruncate(fd, cfg->size) < 0) {
        error_setg_errno(errp, errno, "cannot size board '%s'", b->path);
        unlink(b->path);
        return -1;
    }
    b->map = mmap(NULL, cfg->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (b->map == MAP_FAILED) {
        b->map = NULL;
        error_setg_errno(errp, errno, "cannot map board '%s'", b->path);
        unlink(b->path);
        return -1;
    }
    b->size = cfg->size;
    b->nr_slots = cfg->slots;
    b->slot_bytes = slot_bytes;
    h = (MemdedupBoardHeader *)b->map;
    h->version = MEMDEDUP_BOARD_VERSION;
    h->nr_slots = b->nr_slots;
    h->slot_bytes = b->slot_bytes;
    h->size = b->size;
    /* Pairs with the acquire load of the magic in memdedup_board_map. */
    qatomic_store_release(&h->magic, MEMDEDUP_BOARD_MAGIC);
    trace_memdedup_board_created(b->path, b->size, b->nr_slots);
    return 0;
}

/* Map the board another VM created at @b->path, if it may be trusted. */
static int memdedup_board_join(MemdedupBoard *b, Error **errp)
{
    struct stat st;
    int fd, ret = -1;

    fd = open(b->path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        error_setg_errno(errp, errno, "cannot open board '%s'", b->path);
        return -1;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
        st.st_uid != geteuid() || (st.st_mode & 077)) {
        error_setg(errp, "board '%s' must be a regular file owned by "
                   "this user and accessible to nobody else (mode 0600)",
                   b->path);
    } else {
        ret = memdedup_board_map(b, fd, errp);
    }
    close(fd);
    return ret;
}

static MemdedupBoard *memdedup_board_open(MemdedupBoardConfig *cfg,
                                          Error **errp)
{
    g_autofree uint8_t *key = NULL;
    MemdedupBoard *b;
    size_t key_len;
    int fd, ret;

    key = memdedup_board_key(cfg, &key_len, errp);
    if (!key) {
        return NULL;
    }
    b = g_new0(MemdedupBoard, 1);
    b->path = memdedup_board_path(cfg->path);
    b->timeout_ns = cfg->timeout * 1000000ull;
    b->slot = -1;
    memdedup_board_derive(key, key_len, &b->seed, b->domain);
    do {
        qemu_guest_getrandom_nofail(&b->token, sizeof(b->token));
    } while (!b->token);

    fd = open(b->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
              0600);
    if (fd >= 0) {
        ret = memdedup_board_create(b, cfg, fd, errp);
        close(fd);
    } else if (errno == EEXIST) {
        ret = memdedup_board_join(b, errp);
    } else {
        error_setg_errno(errp, errno, "cannot create board '%s'", b->path);
        ret = -1;
    }
    if (ret < 0) {
        memdedup_board_close(b);
        return NULL;
    }

    b->readable = g_new(uint32_t, b->nr_slots);
    b->readable_seq = g_new(uint64_t, b->nr_slots);
    b->slot = memdedup_board_claim(b);
    if (b->slot < 0) {
        warn_report("memdedup: board '%s' is full (%u slots in use): this "
                    "VM neither publishes nor looks up cross-VM duplicates "
                    "until a slot frees up", b->path, b->nr_slots);
        b->full_warned = true;
    }
    return b;
}

void memdedup_board_close(MemdedupBoard *b)
{
    if (!b) {
        return;
    }
    if (b->map) {
        memdedup_board_release(b);
        munmap(b->map, b->size);
    }
    g_free(b->readable);
    g_free(b->readable_seq);
    g_free(b->path);
    g_free(b);
}

uint64_t memdedup_board_seed(MemdedupBoard *b)
{
    return b->seed;
}

/* Still ours?  A stalled engine may have lost its slot to a new one. */
static bool memdedup_board_own(MemdedupBoard *b)
{
    if (b->slot < 0) {
        return false;
    }
    if (qatomic_read(&memdedup_slot(b, b->slot)->owner) != b->token) {
        warn_report("memdedup: board '%s': slot %d was taken over after "
                    "this VM missed its heartbeats; claiming another",
                    b->path, b->slot);
        b->slot = -1;
        return false;
    }
    return true;
}

void memdedup_board_heartbeat(MemdedupBoard *b)
{
    if (!memdedup_board_own(b)) {
        b->slot = memdedup_board_claim(b);
        if (b->slot < 0) {
            return;
        }
        if (b->full_warned) {
            info_report("memdedup: board '%s': got slot %d", b->path,
                        b->slot);
            b->full_warned = false;
        }
    }
    qatomic_set(&memdedup_slot(b, b->slot)->heartbeat, memdedup_now_ns());
}

void memdedup_board_touch(MemdedupBoard *b)
{
    int slot = qatomic_read(&b->slot);

    if (slot >= 0 &&
        qatomic_read(&memdedup_slot(b, slot)->owner) == b->token) {
        qatomic_set(&memdedup_slot(b, slot)->heartbeat, memdedup_now_ns());
    }
}

/* Give the slot back: unreadable first, then free.  Any thread. */
void memdedup_board_release(MemdedupBoard *b)
{
    int slot = qatomic_xchg(&b->slot, -1);
    MemdedupBoardSlot *s;

    if (slot < 0) {
        return;
    }
    s = memdedup_slot(b, slot);
    qatomic_set(&s->seq, qatomic_read(&s->seq) | 1);
    /*
     * Odd (unreadable) before free: a claimer that finds the slot free
     * also finds it unreadable.  Pairs with the smp_rmb() in
     * memdedup_board_lookup_begin.
     */
    smp_wmb();
    qatomic_cmpxchg(&s->owner, b->token, 0);
}

/*
 * Publication: begin (counting what will be published decides the
 * threshold), add each fingerprint, end.  Scanner thread.
 */
bool memdedup_board_publish_begin(MemdedupBoard *b, uint64_t pages)
{
    MemdedupBoardSlot *s;
    uint64_t seq;

    if (!memdedup_board_own(b)) {
        return false;
    }
    /* The slot may be given back meanwhile: keep writing where we began. */
    b->pub_slot = b->slot;
    b->pub_claims = b->claims;
    b->published_claims = 0;
    s = memdedup_slot(b, b->pub_slot);
    seq = qatomic_read(&s->seq);
    qatomic_set(&s->seq, seq | 1);
    /*
     * Odd before the filter is cleared and refilled: a reader whose
     * lookups saw any of that sees seq changed.  Pairs with the
     * smp_rmb() in memdedup_board_lookup_end.
     */
    smp_wmb();
    s->threshold = memdedup_board_threshold(pages, s->filter_bits);
    memset(memdedup_slot_filter(b, b->pub_slot), 0, s->filter_bits / 8);
    s->published = 0;
    return true;
}

void memdedup_board_publish(MemdedupBoard *b, uint32_t fp)
{
    MemdedupBoardSlot *s = memdedup_slot(b, b->pub_slot);

    if (fp <= s->threshold) {
        memdedup_bloom_add(memdedup_slot_filter(b, b->pub_slot),
                           s->filter_bits, fp);
        s->published++;
    }
}

void memdedup_board_publish_prefetch(MemdedupBoard *b, uint32_t fp)
{
    MemdedupBoardSlot *s = memdedup_slot(b, b->pub_slot);

    if (fp <= s->threshold) {
        __builtin_prefetch(memdedup_bloom_line(
            memdedup_slot_filter(b, b->pub_slot), s->filter_bits, fp), 1);
    }
}

void memdedup_board_publish_end(MemdedupBoard *b)
{
    MemdedupBoardSlot *s = memdedup_slot(b, b->pub_slot);

    if (memdedup_board_test_hook("stall-publish")) {
        /* For tests: die here and the slot stays odd. */
        g_usleep(3600ull * G_USEC_PER_SEC);
    }
    /*
     * The filter and its threshold before seq turns even (readable).
     * Pairs with the smp_rmb() in memdedup_board_lookup_begin.
     */
    smp_wmb();
    qatomic_set(&s->seq, (qatomic_read(&s->seq) | 1) + 1);
    qatomic_set(&s->heartbeat, memdedup_now_ns());
    b->published_claims = b->pub_claims;
    trace_memdedup_board_published(b->path, b->pub_slot, s->published,
                                   s->threshold);
}

bool memdedup_board_published(MemdedupBoard *b)
{
    return b->published_claims && b->published_claims == b->claims &&
           b->pub_slot == b->slot && memdedup_board_own(b);
}

/* Lookup: begin, any number of lookups, end (see memdedup-internal.h). */
uint32_t memdedup_board_lookup_begin(MemdedupBoard *b)
{
    uint64_t now = memdedup_now_ns();
    uint32_t i;

    b->nr_readable = 0;
    b->partial = false;
    if (!memdedup_board_own(b)) {
        return 0;               /* not on the board: no cross-VM view */
    }
    for (i = 0; i < b->nr_slots; i++) {
        MemdedupBoardSlot *s = memdedup_slot(b, i);
        uint64_t seq;

        if (!memdedup_slot_peer(b, i, now)) {
            continue;
        }
        seq = qatomic_read(&s->seq);
        /*
         * seq before the header and filter it vouches for.  Pairs with
         * the smp_wmb() in memdedup_board_publish_end (and in claim and
         * release).
         */
        smp_rmb();
        if (s->filter_bits != memdedup_board_filter_bits(b->slot_bytes)) {
            continue;
        }
        if (seq & 1) {
            b->partial = true;  /* publishing: not read, and so not seen */
            continue;
        }
        b->readable[b->nr_readable] = i;
        b->readable_seq[b->nr_readable++] = seq;
    }
    return b->nr_readable;
}

bool memdedup_board_lookup(MemdedupBoard *b, uint32_t fp)
{
    uint32_t i;

    for (i = 0; i < b->nr_readable; i++) {
        MemdedupBoardSlot *s = memdedup_slot(b, b->readable[i]);

        if (fp <= s->threshold &&
            memdedup_bloom_test(memdedup_slot_filter(b, b->readable[i]),
                                s->filter_bits, fp)) {
            return true;
        }
    }
    return false;
}

void memdedup_board_prefetch(MemdedupBoard *b, uint32_t fp)
{
    uint32_t i;

    for (i = 0; i < b->nr_readable; i++) {
        MemdedupBoardSlot *s = memdedup_slot(b, b->readable[i]);

        if (fp <= s->threshold) {
            __builtin_prefetch(memdedup_bloom_line(
                memdedup_slot_filter(b, b->readable[i]), s->filter_bits, fp));
        }
    }
}

bool memdedup_board_lookup_end(MemdedupBoard *b, bool *partial)
{
    bool intact = true;
    uint32_t i;

    *partial = b->partial;

    /*
     * The lookups' filter reads before seq is read again.  Pairs with
     * the smp_wmb() in memdedup_board_publish_begin.
     */
    smp_rmb();
    for (i = 0; i < b->nr_readable; i++) {
        if (qatomic_read(&memdedup_slot(b, b->readable[i])->seq) !=
            b->readable_seq[i]) {
            intact = false;
        }
    }
    return intact;
}

/*
 * Sum of the readable foreign slots' sequence numbers: changes when any
 * other VM publishes, joins or leaves.
 */
uint64_t memdedup_board_version(MemdedupBoard *b)
{
    uint64_t now = memdedup_now_ns(), v = 0;
    uint32_t i;

    for (i = 0; i < b->nr_slots; i++) {
        if (memdedup_slot_peer(b, i, now)) {
            v += qatomic_read(&memdedup_slot(b, i)->seq) * (i + 1);
        }
    }
    return v;
}

MemdedupBoardInfo *memdedup_board_info(MemdedupBoard *b)
{
    MemdedupBoardInfo *info = g_new0(MemdedupBoardInfo, 1);
    uint64_t now = memdedup_now_ns();
    uint32_t i;

    info->path = g_strdup(b->path);
    info->slots = b->nr_slots;
    info->bytes_per_slot = b->slot_bytes;
    info->joined = memdedup_board_own(b);
    if (info->joined) {
        MemdedupBoardSlot *s = memdedup_slot(b, b->slot);

        info->has_slot = true;
        info->slot = b->slot;
        info->published_pages = s->published;
        info->published_fraction = s->threshold == UINT32_MAX ? 100 :
            (uint8_t)((uint64_t)s->threshold * 100 / UINT32_MAX);
    }
    for (i = 0; i < b->nr_slots; i++) {
        info->peers += memdedup_slot_peer(b, i, now);
    }
    return info;
}

bool memdedup_board_test_hook(const char *what)
{
    const char *hook = getenv("QEMU_MEMDEDUP_BOARD_TEST");

    return hook && !strcmp(hook, what);
}

MemdedupBoard *memdedup_board_complete(MemdedupBoardConfig *cfg,
                                       Error **errp)
{
    if (!cfg || !cfg->path) {
        if (cfg && cfg->key_id) {
            error_setg(errp, "property 'board-key' of %s needs 'board'",
                       TYPE_MEMDEDUP);
        }
        return NULL;
    }
    if (cfg->size < MEMDEDUP_BOARD_HDR + cfg->slots *
                    (MEMDEDUP_SLOT_HDR + 8)) {
        error_setg(errp, "property 'board-size' of %s: %" PRIu64 " bytes "
                   "cannot hold %u slots", TYPE_MEMDEDUP, cfg->size,
                   cfg->slots);
        return NULL;
    }
    cfg->board = memdedup_board_open(cfg, errp);
    return cfg->board;
}

void memdedup_board_config_clear(MemdedupBoardConfig *cfg)
{
    /* The engine stopped using the board (memdedup_settings_finalize). */
    g_free(cfg->path);
    g_free(cfg->key_id);
    cfg->path = cfg->key_id = NULL;
}
