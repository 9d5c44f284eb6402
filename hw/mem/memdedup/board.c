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
 * of one trust domain share what they found through a board: a
 * directory (by default under /dev/shm) in which each QEMU listens on a
 * UNIX socket.  No memory content is shared, only keyed fingerprints,
 * and nothing another process sends is trusted:
 *
 *  - the key (a secret object, "board-key") never travels.  It yields
 *    the fingerprint seed, so only QEMUs holding it compute comparable
 *    fingerprints, and a proof key: on every connection both sides
 *    send a random nonce and then an HMAC-SHA256 of both nonces, of
 *    their own role and of the socket name the connection was made to
 *    (so that no proof is valid on another connection), and a side that
 *    cannot prove the key is dropped.  Nothing in the directory depends
 *    on the key;
 *  - a publication is a Bloom filter of the fingerprints of the
 *    publisher's resident, non-zero, non-volatile pages (2 bytes per
 *    page; beyond "board-size", the subset of fingerprints below a
 *    threshold, the same subset in every VM), written into a memfd that
 *    is then sealed (no write, shrink or grow) and passed to each proven
 *    peer (SCM_RIGHTS).  A sealed filter can neither change nor vanish
 *    under a reader: no torn reads, no SIGBUS;
 *  - a reader takes the geometry of a filter from the message into
 *    memory of its own, checks it against the memfd (size, seals, fully
 *    allocated) and the filter against its declared page count
 *    (memdedup_bloom_plausible), and only then maps it read-only for
 *    lookups.  Anything else closes the connection and is counted;
 *  - liveness is the connection itself: a peer that exits or is killed
 *    hangs up, and its filter is dropped at once.  No clock is shared.
 *    Its socket's name stays behind after SIGKILL; the next QEMU that
 *    finds nobody listening there removes it;
 *  - every reaction to a peer is bounded and rate-limited: the
 *    directory is read at most every MEMDEDUP_BOARD_WALK_MS, a peer's
 *    new filter is taken at most every MEMDEDUP_BOARD_ADOPT_MS, at most
 *    MEMDEDUP_BOARD_PENDING_MAX connections may be unproven at once and
 *    each gets "board-timeout" to prove itself.  A flood of connections
 *    or messages costs us a bounded amount of work per second.
 *
 * This file is the directory, our socket and the tick; board-link.c is
 * the links (messages and proofs), board-filter.c the filters.  The
 * board is the scanner thread's: it serves the sockets every
 * MEMDEDUP_BOARD_TICK_MS, between passes and during the hashing of a
 * long one (memdedup_board_tick), publishes after a pass and looks
 * peers' filters up during one.  Only the
 * counters shown by query-memdedup and the socket's path are shared
 * with other threads, under @lock.
 */

#include "qemu/osdep.h"
#include <sys/socket.h>
#include <sys/un.h>
#include <dirent.h>
#include "qemu/cutils.h"
#include "qemu/error-report.h"
#include "qemu/lockable.h"
#include "qemu/timer.h"
#include "qapi/error.h"
#include "crypto/random.h"
#include "crypto/secret_common.h"
#include "board-internal.h"
#include "trace.h"

#define MEMDEDUP_BOARD_DIR          "/dev/shm"

static const char memdedup_board_seed_label[] = "memdedup-board-v3 seed";
static const char memdedup_board_key_label[] = "memdedup-board-v3 proof key";

/* HMAC-SHA256 of @label under the board key: the seed, the proof key. */
static void memdedup_board_derive(const uint8_t *key, size_t key_len,
                                  const char *label, uint8_t out[32])
{
    GHmac *h = g_hmac_new(G_CHECKSUM_SHA256, key, key_len);
    gsize len = 32;

    g_hmac_update(h, (const guchar *)label, strlen(label));
    g_hmac_get_digest(h, out, &len);
    g_hmac_unref(h);
}

/* Why we are not on the board (NULL: we are), said once per change. */
static void memdedup_board_set_reason(MemdedupBoard *b, const char *why)
{
    bool changed;

    WITH_QEMU_LOCK_GUARD(&b->lock) {
        changed = g_strcmp0(b->reason, why) != 0;
        g_free(b->reason);
        b->reason = g_strdup(why);
    }
    if (changed && why) {
        warn_report("memdedup: board '%s': %s; this VM works alone until "
                    "that changes", b->dir, why);
    } else if (changed) {
        info_report("memdedup: board '%s': joined", b->dir);
    }
}

/* ---------------------------------------------------------------- */
/* The directory and our socket                                     */
/* ---------------------------------------------------------------- */

/* Take the connections waiting on our socket, up to the caps. */
static void memdedup_board_accept(MemdedupBoard *b)
{
    int i;

    for (i = 0; i < MEMDEDUP_BOARD_ACCEPT_MAX; i++) {
        int fd = accept4(b->listen_fd, NULL, NULL,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            return;
        }
        if (b->nr_pending >= MEMDEDUP_BOARD_PENDING_MAX) {
            close(fd);
            memdedup_board_count(b, &b->refused_connections);
            continue;
        }
        memdedup_board_link_new(b, fd, "");
    }
}

/* "vm-" and 16 lower-case hex digits: the only names we connect to. */
static bool memdedup_board_name_valid(const char *name)
{
    size_t i, len = strlen(MEMDEDUP_BOARD_PREFIX);

    if (strncmp(name, MEMDEDUP_BOARD_PREFIX, len) || strlen(name) != len + 16) {
        return false;
    }
    for (i = len; name[i]; i++) {
        if (!g_ascii_isxdigit(name[i]) || g_ascii_isupper(name[i])) {
            return false;
        }
    }
    return true;
}

static bool memdedup_board_linked(MemdedupBoard *b, const char *name)
{
    guint i;

    for (i = 0; i < b->links->len; i++) {
        MemdedupBoardLink *l = g_ptr_array_index(b->links, i);

        if (!strcmp(l->name, name)) {
            return true;
        }
    }
    return false;
}

/*
 * Connect to the VM listening as @name; with @probe, only find out
 * whether anyone listens there (a VM whose name sorts before ours
 * connects to us; one that never does may be dead).  A name nobody
 * listens on is removed.
 */
static void memdedup_board_connect(MemdedupBoard *b, const char *name,
                                   int64_t now, bool probe)
{
    g_autofree char *path = g_build_filename(b->dir, name, NULL);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int64_t *when = g_hash_table_lookup(b->retry_after, name);
    int fd;

    if ((when && now < *when) || b->nr_pending >= MEMDEDUP_BOARD_PENDING_MAX ||
        strlen(path) >= sizeof(sa.sun_path)) {
        return;
    }
    pstrcpy(sa.sun_path, sizeof(sa.sun_path), path);
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        struct stat st;

        /*
         * Nobody listens: a VM was killed and left its name (names
         * appear only once listening, see memdedup_board_join).
         */
        if (errno == ECONNREFUSED && lstat(path, &st) == 0 &&
            S_ISSOCK(st.st_mode) && unlink(path) == 0) {
            trace_memdedup_board_stale(path);
            close(fd);
            return;
        }
        probe = true;           /* not now: try again later */
    }
    if (probe) {
        int64_t *later = g_new(int64_t, 1);

        *later = now + MEMDEDUP_BOARD_RETRY_MS;
        g_hash_table_insert(b->retry_after, g_strdup(name), later);
        close(fd);
        return;
    }
    memdedup_board_link_new(b, fd, name);
}

static gboolean memdedup_board_retry_expired(gpointer key, gpointer value,
                                             gpointer now)
{
    return *(int64_t *)value <= *(int64_t *)now;
}

/* Stop listening (the socket's name is gone); the links stay. */
static void memdedup_board_leave(MemdedupBoard *b, const char *why)
{
    WITH_QEMU_LOCK_GUARD(&b->lock) {
        if (b->sock_path) {
            unlink(b->sock_path);
        }
        g_free(b->sock_path);
        b->sock_path = NULL;
    }
    close(b->listen_fd);
    b->listen_fd = -1;
    b->next_join = 0;
    memdedup_board_set_reason(b, why);
}

/*
 * Connect to every VM whose socket's name sorts after ours (the others
 * connect to us; those that have not are probed, so that a dead VM's
 * name goes), at most MEMDEDUP_BOARD_WALK_MAX names per walk.
 */
static void memdedup_board_walk(MemdedupBoard *b, int64_t now)
{
    struct dirent *e;
    bool own_seen = false;
    unsigned n = 0;
    int fd;
    DIR *d;

    g_hash_table_foreach_remove(b->retry_after, memdedup_board_retry_expired,
                                &now);
    fd = open(b->dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0) {
            close(fd);
        }
        memdedup_board_leave(b, "the directory went away");
        return;
    }
    while ((e = readdir(d)) && n++ < MEMDEDUP_BOARD_WALK_MAX) {
        int order;

        if (!memdedup_board_name_valid(e->d_name)) {
            continue;
        }
        order = strcmp(e->d_name, b->own_name);
        /* Ours, not another socket put in its place. */
        own_seen |= !order && e->d_ino == b->own_ino;
        if (order && !memdedup_board_linked(b, e->d_name)) {
            memdedup_board_connect(b, e->d_name, now, order < 0);
        }
    }
    closedir(d);
    if (!own_seen && n <= MEMDEDUP_BOARD_WALK_MAX) {
        /*
         * Someone removed or replaced our socket: nobody new could find
         * us, or they would find someone else under our name.
         */
        memdedup_board_leave(b, "its socket was removed or replaced");
    }
}

/*
 * The board directory, if we may use it: created 0700 if missing; else
 * it must be a directory (not a link) of ours that nobody else can
 * enter.  NULL if usable, else why not.
 */
static char *memdedup_board_check_dir(MemdedupBoard *b)
{
    struct stat st;

    if (mkdir(b->dir, 0700) < 0 && errno != EEXIST) {
        return g_strdup_printf("cannot create the directory: %s",
                               strerror(errno));
    }
    if (lstat(b->dir, &st) < 0) {
        return g_strdup_printf("cannot use the directory: %s",
                               strerror(errno));
    }
    if (!S_ISDIR(st.st_mode)) {
        return g_strdup("the path is not a directory (a board of an older "
                        "memdedup, or a file of another program)");
    }
    if (st.st_uid != geteuid()) {
        return g_strdup_printf("the directory belongs to uid %u, not to "
                               "this user", (unsigned)st.st_uid);
    }
    if (st.st_mode & 077) {
        return g_strdup_printf("the directory is open to other users (mode "
                               "%04o, must be 0700)",
                               (unsigned)(st.st_mode & 07777));
    }
    return NULL;
}

/* Bind @path and listen there; -1 and errno on failure. */
static int memdedup_board_listen(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd, err;

    pstrcpy(sa.sun_path, sizeof(sa.sun_path), path);
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(fd, MEMDEDUP_BOARD_ACCEPT_MAX) < 0) {
        err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

/*
 * Join: listen on a socket of a random name.  It is bound under a name
 * the others ignore and renamed once listening, so that a name nobody
 * listens on is always a dead VM's.  On failure the VM works alone and
 * tries again every MEMDEDUP_BOARD_REJOIN_MS.
 */
static void memdedup_board_join(MemdedupBoard *b)
{
    g_autofree char *why = NULL, *path = NULL, *tmp = NULL;
    struct sockaddr_un sa;
    struct stat st;
    Error *err = NULL;
    int fd = -1, tries;

    b->next_join = memdedup_board_now() + MEMDEDUP_BOARD_REJOIN_MS;
    if (qcrypto_random_bytes(&b->own_id, sizeof(b->own_id), &err) < 0) {
        why = g_strdup(error_get_pretty(err));
        error_free(err);
        goto fail;
    }
    snprintf(b->own_name, sizeof(b->own_name), MEMDEDUP_BOARD_PREFIX
             "%016" PRIx64, b->own_id);
    path = g_build_filename(b->dir, b->own_name, NULL);
    tmp = g_strdup_printf("%s/.join-%016" PRIx64, b->dir, b->own_id);
    if (strlen(tmp) >= sizeof(sa.sun_path)) {
        why = g_strdup_printf("the path is too long for a socket (at most "
                              "%zu bytes)", sizeof(sa.sun_path) - 24);
        goto fail;
    }
    /* Twice: the last VM of the board may remove it in between. */
    for (tries = 0; tries < 2 && fd < 0; tries++) {
        g_free(why);
        why = memdedup_board_check_dir(b);
        if (why) {
            goto fail;
        }
        fd = memdedup_board_listen(tmp);
        if (fd < 0) {
            why = g_strdup_printf("cannot listen there: %s", strerror(errno));
        }
    }
    if (fd < 0) {
        goto fail;
    }
    if (lstat(tmp, &st) < 0 || rename(tmp, path) < 0) {
        why = g_strdup_printf("cannot name its socket: %s", strerror(errno));
        unlink(tmp);
        close(fd);
        goto fail;
    }
    b->own_ino = st.st_ino;
    WITH_QEMU_LOCK_GUARD(&b->lock) {
        if (b->released) {
            unlink(path);
            close(fd);
            return;
        }
        b->sock_path = g_steal_pointer(&path);
    }
    b->listen_fd = fd;
    b->next_walk = 0;
    trace_memdedup_board_joined(b->dir, b->own_name);
    memdedup_board_set_reason(b, NULL);
    return;

fail:
    memdedup_board_set_reason(b, why);
}

/*
 * Every MEMDEDUP_BOARD_TICK_MS, between passes and during a long one's
 * hashing (see the top of this file).  Scanner thread.
 */
void memdedup_board_tick(MemdedupBoard *b)
{
    int64_t now = memdedup_board_now();
    bool released;
    guint i;

    WITH_QEMU_LOCK_GUARD(&b->lock) {
        released = b->released;
    }
    if (released) {
        return;
    }
    /* Links may close or change filters now: no lookup view survives. */
    b->nr_view = 0;
    if (b->listen_fd < 0 && now >= b->next_join) {
        memdedup_board_join(b);
    }
    if (b->listen_fd >= 0) {
        memdedup_board_accept(b);
    }
    if (b->listen_fd >= 0 && now >= b->next_walk) {
        b->next_walk = now + MEMDEDUP_BOARD_WALK_MS;
        memdedup_board_walk(b, now);
    }
    /* Downwards: closing a link moves the last one into its place. */
    for (i = b->links->len; i-- > 0;) {
        memdedup_board_serve_link(b, g_ptr_array_index(b->links, i), now);
    }
}

/* ---------------------------------------------------------------- */
/* Life cycle                                                       */
/* ---------------------------------------------------------------- */

MemdedupBoardInfo *memdedup_board_info(MemdedupBoard *b)
{
    MemdedupBoardInfo *info = g_new0(MemdedupBoardInfo, 1);

    info->path = g_strdup(b->dir);
    info->max_peers = b->max_peers;
    QEMU_LOCK_GUARD(&b->lock);
    info->joined = b->sock_path != NULL;
    if (b->reason) {
        info->has_reason = true;
        info->reason = g_strdup(b->reason);
    }
    info->peers = b->peers;
    info->published_pages = b->published_pages;
    info->published_fraction = b->publishable_pages ?
        MIN(b->published_pages * 100 / b->publishable_pages, 100) : 100;
    info->filter_bytes = b->filter_bytes;
    info->publications = b->publications;
    info->rejected_peers = b->rejected_peers;
    info->rejected_updates = b->rejected_updates;
    info->refused_connections = b->refused_connections;
    return info;
}

uint64_t memdedup_board_seed(MemdedupBoard *b)
{
    return b->seed;
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
    if (*len < MEMDEDUP_BOARD_KEY_MIN) {
        error_setg(errp, "property 'board-key' of %s: the secret '%s' must "
                   "hold at least %d bytes (random ones, such as 'head -c "
                   "32 /dev/urandom | base64')", TYPE_MEMDEDUP, cfg->key_id,
                   MEMDEDUP_BOARD_KEY_MIN);
        g_free(key);
        return NULL;
    }
    return key;
}

static char *memdedup_board_path(const char *name)
{
    return strchr(name, '/') ? g_strdup(name) :
           g_build_filename(MEMDEDUP_BOARD_DIR, name, NULL);
}

/*
 * The owner lets go (exit, or the memdedup object deleted): our socket's
 * name goes at once, and the directory with it if we were the last.
 * Any thread.
 */
void memdedup_board_release(MemdedupBoard *b)
{
    QEMU_LOCK_GUARD(&b->lock);
    b->released = true;
    if (b->sock_path) {
        unlink(b->sock_path);
        g_free(b->sock_path);
        b->sock_path = NULL;
        rmdir(b->dir);          /* fails while others are there */
    }
}

/* The board's owner only, once nothing else uses it. */
void memdedup_board_close(MemdedupBoard *b)
{
    if (!b) {
        return;
    }
    memdedup_board_release(b);
    while (b->links->len) {
        memdedup_board_link_close(b, g_ptr_array_index(b->links, 0), false,
                                  "closing");
    }
    if (b->listen_fd >= 0) {
        close(b->listen_fd);
    }
    if (b->pub_fd >= 0) {
        close(b->pub_fd);
    }
    if (b->next_map) {
        munmap(b->next_map, b->next_msg.filter.bits / 8);
    }
    if (b->next_fd >= 0) {
        close(b->next_fd);
    }
    g_ptr_array_free(b->links, true);
    g_hash_table_destroy(b->retry_after);
    qemu_mutex_destroy(&b->lock);
    g_free(b->view);
    g_free(b->reason);
    g_free(b->dir);
    g_free(b);
}

MemdedupBoard *memdedup_board_complete(MemdedupBoardConfig *cfg,
                                       Error **errp)
{
    g_autofree uint8_t *key = NULL;
    uint8_t digest[32];
    MemdedupBoard *b;
    size_t key_len;

    if (!cfg || !cfg->path) {
        if (cfg && cfg->key_id) {
            error_setg(errp, "property 'board-key' of %s needs 'board'",
                       TYPE_MEMDEDUP);
        }
        return NULL;
    }
    key = memdedup_board_key(cfg, &key_len, errp);
    if (!key) {
        return NULL;
    }
    b = g_new0(MemdedupBoard, 1);
    b->dir = memdedup_board_path(cfg->path);
    memdedup_board_derive(key, key_len, memdedup_board_seed_label, digest);
    memcpy(&b->seed, digest, sizeof(b->seed));
    memdedup_board_derive(key, key_len, memdedup_board_key_label,
                          b->proof_key);
    b->max_bits = cfg->size / 64 * MEMDEDUP_BOARD_LINE_BITS;
    b->max_peers = cfg->slots - 1;
    b->timeout_ms = cfg->timeout;
    b->listen_fd = b->pub_fd = b->next_fd = -1;
    b->links = g_ptr_array_new();
    b->retry_after = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                           g_free);
    qemu_mutex_init(&b->lock);
    memdedup_board_join(b);
    cfg->board = b;
    return b;
}

void memdedup_board_config_clear(MemdedupBoardConfig *cfg)
{
    /* The engine stopped using the board (memdedup_settings_finalize). */
    g_free(cfg->path);
    g_free(cfg->key_id);
    cfg->path = cfg->key_id = NULL;
}
