/*
 * memdedup: the cross-VM board's links
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * One link per connection with another QEMU of the board (board.c
 * makes and accepts them).  A link proves the key both ways before
 * anything else passes:
 *
 *   both:      HELLO (a random nonce; the name we listen on, as a hint)
 *   connector: PROOF (HMAC of both nonces, its role, the name dialled)
 *   acceptor:  PROOF (the same, with its role), once it checked that one
 *   both:      FILTER, whenever a publication is new (with its memfd),
 *              or FULL once, from a side with no room for another peer
 *
 * The acceptor proves nothing to a connection that has not proven the
 * key: connecting to a QEMU yields no MAC to test guessed keys on.
 *
 * Messages are fixed-size SOCK_SEQPACKET records: a short, long or
 * truncated one, a wrong magic, version, type or order, any extra
 * descriptor, or a wrong proof closes the link and counts the peer as
 * rejected; so does a link not proven within "board-timeout" or whose
 * filters are refused MEMDEDUP_BOARD_REFUSALS_MAX times in a row.  At
 * most MEMDEDUP_BOARD_READ_MAX messages are read per link per tick, and
 * of the filters only the newest is kept, taken at most every
 * MEMDEDUP_BOARD_ADOPT_MS: a peer cannot make us work harder by sending
 * faster.  Scanner thread only.
 */

#include "qemu/osdep.h"
#include <sys/socket.h>
#include "qemu/cutils.h"
#include "qemu/error-report.h"
#include "qemu/lockable.h"
#include "qapi/error.h"
#include "crypto/random.h"
#include "board-internal.h"
#include "trace.h"

static const char memdedup_board_proof_label[] = "memdedup-board-v3 proof";

/*
 * The proof of the side of link @l with @role ('c': it connected, 'a':
 * it accepted): an HMAC under the proof key of both nonces, in
 * connector-acceptor order, and of the socket name the connector
 * dialled.  With role and name in it, no proof made on one connection
 * is valid on another: a QEMU's proof can be neither reflected back to
 * it on a second connection nor relayed between two QEMUs.
 */
static void memdedup_board_proof(MemdedupBoard *b, MemdedupBoardLink *l,
                                 char role, uint8_t mac[32])
{
    GHmac *h = g_hmac_new(G_CHECKSUM_SHA256, b->proof_key,
                          sizeof(b->proof_key));
    char name[sizeof(l->name)] = { 0 };
    gsize len = 32;

    pstrcpy(name, sizeof(name), l->outgoing ? l->name : b->own_name);
    g_hmac_update(h, (const guchar *)memdedup_board_proof_label,
                  strlen(memdedup_board_proof_label));
    g_hmac_update(h, (const guchar *)&role, 1);
    g_hmac_update(h, l->outgoing ? l->own_nonce : l->peer_nonce,
                  MEMDEDUP_BOARD_NONCE);
    g_hmac_update(h, l->outgoing ? l->peer_nonce : l->own_nonce,
                  MEMDEDUP_BOARD_NONCE);
    g_hmac_update(h, (const guchar *)name, sizeof(name));
    g_hmac_get_digest(h, mac, &len);
    g_hmac_unref(h);
}

/* Compare two MACs in time that does not depend on where they differ. */
static bool memdedup_board_mac_equal(const uint8_t *a, const uint8_t *b)
{
    uint8_t diff = 0;
    int i;

    for (i = 0; i < 32; i++) {
        diff |= a[i] ^ b[i];
    }
    return !diff;
}

static bool memdedup_board_send(MemdedupBoardLink *l, uint16_t type,
                                const MemdedupBoardMsg *body, int fd)
{
    MemdedupBoardMsg msg = body ? *body : (MemdedupBoardMsg) { 0 };
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = { .iov_base = &msg, .iov_len = sizeof(msg) };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    ssize_t n;

    msg.magic = MEMDEDUP_BOARD_MAGIC;
    msg.version = MEMDEDUP_BOARD_VERSION;
    msg.type = type;
    if (fd >= 0) {
        struct cmsghdr *c;

        memset(&control, 0, sizeof(control));
        mh.msg_control = control.buf;
        mh.msg_controllen = sizeof(control.buf);
        c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    do {
        n = sendmsg(l->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return n == sizeof(msg);
}

/* Send our newest filter (or that we publish nothing) to a peer. */
static void memdedup_board_send_filter(MemdedupBoard *b, MemdedupBoardLink *l)
{
    if (l->state != MEMDEDUP_LINK_PEER || !b->published) {
        return;
    }
    /* A full socket buffer: the next tick tries again. */
    l->send_pending = !memdedup_board_send(l, MEMDEDUP_MSG_FILTER,
                                           &b->pub_msg, b->pub_fd);
}

/* A new link on socket @fd; @name: the socket we connected to, or "". */
MemdedupBoardLink *memdedup_board_link_new(MemdedupBoard *b, int fd,
                                           const char *name)
{
    MemdedupBoardLink *l = g_new0(MemdedupBoardLink, 1);
    MemdedupBoardMsg hello = { 0 };
    Error *err = NULL;

    l->fd = fd;
    l->newest_fd = -1;
    l->state = MEMDEDUP_LINK_HELLO;
    l->deadline = memdedup_board_now() + b->timeout_ms;
    l->outgoing = name[0];
    pstrcpy(l->name, sizeof(l->name), name);
    if (qcrypto_random_bytes(l->own_nonce, sizeof(l->own_nonce), &err) < 0) {
        error_report_err(err);
        close(fd);
        g_free(l);
        return NULL;
    }
    g_ptr_array_add(b->links, l);
    b->nr_pending++;
    memcpy(hello.hello.nonce, l->own_nonce, sizeof(hello.hello.nonce));
    hello.hello.id = b->own_id;
    memdedup_board_send(l, MEMDEDUP_MSG_HELLO, &hello, -1);
    return l;
}

/* Connect to @l's socket again no sooner than MEMDEDUP_BOARD_RETRY_MS. */
static void memdedup_board_retry_later(MemdedupBoard *b, MemdedupBoardLink *l)
{
    if (l->name[0]) {
        int64_t *when = g_new(int64_t, 1);

        *when = memdedup_board_now() + MEMDEDUP_BOARD_RETRY_MS;
        g_hash_table_insert(b->retry_after, g_strdup(l->name), when);
    }
}

/* Close @l; @rejected counts it as a peer that misbehaved. */
void memdedup_board_link_close(MemdedupBoard *b, MemdedupBoardLink *l,
                               bool rejected, const char *why)
{
    trace_memdedup_board_link_closed(l->fd, l->state, why);
    /*
     * Whatever ended it, the name we dialled waits before we dial it
     * again: a socket that never proves the key gets one proof of ours
     * per MEMDEDUP_BOARD_RETRY_MS at most.
     */
    if (l->outgoing) {
        memdedup_board_retry_later(b, l);
    }
    if (l->state == MEMDEDUP_LINK_PEER) {
        WITH_QEMU_LOCK_GUARD(&b->lock) {
            b->peers--;
        }
        if (l->filter.bits) {
            b->version++;
        }
    } else {
        b->nr_pending--;
    }
    if (rejected) {
        memdedup_board_count(b, &b->rejected_peers);
    }
    memdedup_board_filter_drop(&l->filter);
    if (l->newest_fd >= 0) {
        close(l->newest_fd);
    }
    close(l->fd);
    g_ptr_array_remove_fast(b->links, l);
    g_free(l);
}

/* Take @l's newest filter in place of its last, if it passes the checks. */
static bool memdedup_board_adopt(MemdedupBoard *b, MemdedupBoardLink *l)
{
    MemdedupBoardFilter f;
    int fd = l->newest_fd;

    l->newest_fd = -1;
    l->has_newest = false;
    if (!memdedup_board_filter_take(b, &l->newest, fd, &f)) {
        return false;
    }
    memdedup_board_filter_drop(&l->filter);
    l->filter = f;
    l->refusals = 0;
    b->version++;
    return true;
}

/*
 * The other side proved the key: it becomes a peer, if there is room
 * (else it is told so).  An accepting side proves the key only now, so
 * that a process that connects without it learns nothing.
 */
static bool memdedup_board_link_proven(MemdedupBoard *b, MemdedupBoardLink *l)
{
    /* b->peers: written by this thread only, so read without the lock. */
    if (b->peers >= b->max_peers) {
        memdedup_board_send(l, MEMDEDUP_MSG_FULL, NULL, -1);
        memdedup_board_retry_later(b, l);
        return false;
    }
    if (!l->outgoing) {
        MemdedupBoardMsg proof = { 0 };

        memdedup_board_proof(b, l, 'a', proof.mac);
        memdedup_board_send(l, MEMDEDUP_MSG_PROOF, &proof, -1);
    }
    b->nr_pending--;
    l->state = MEMDEDUP_LINK_PEER;
    WITH_QEMU_LOCK_GUARD(&b->lock) {
        b->peers++;
    }
    if (b->full_warned) {
        info_report("memdedup: board '%s': found room with a peer", b->dir);
        b->full_warned = false;
    }
    l->send_pending = b->published;
    return true;
}

/*
 * Receive one message from @l into @msg, with at most one descriptor
 * (*@fd, else -1; any other is closed at once).  Returns 1 if a message
 * of the right size, magic and version came, 0 if none is waiting, -1
 * if the peer hung up, -2 if it sent anything else.
 */
static int memdedup_board_recv(MemdedupBoardLink *l, MemdedupBoardMsg *msg,
                               int *fd)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * 4)];
        struct cmsghdr align;
    } control;
    struct iovec iov = { .iov_base = msg, .iov_len = sizeof(*msg) };
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1,
        .msg_control = control.buf, .msg_controllen = sizeof(control.buf),
    };
    struct cmsghdr *c;
    int extra = 0, reset = 0;
    ssize_t n;

    *fd = -1;
    /*
     * A peer that closed while our messages lay unread on its side sets
     * ECONNRESET on ours, reported before what it sent last (FULL, say):
     * the error is consumed by being reported, so read once more.
     */
    do {
        n = recvmsg(l->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    } while (n < 0 && (errno == EINTR ||
                       (errno == ECONNRESET && !reset++)));
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        return 0;
    }
    if (n <= 0) {
        return -1;
    }
    /* Whatever it sent, no descriptor of it stays open by mistake. */
    for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        int i, nfds;

        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
            continue;
        }
        nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (i = 0; i < nfds; i++) {
            int got;

            memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (*fd < 0) {
                *fd = got;
            } else {
                close(got);
                extra++;
            }
        }
    }
    if (n != sizeof(*msg) || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) ||
        extra || msg->magic != MEMDEDUP_BOARD_MAGIC ||
        msg->version != MEMDEDUP_BOARD_VERSION) {
        if (*fd >= 0) {
            close(*fd);
            *fd = -1;
        }
        return -2;
    }
    return 1;
}

/*
 * Act on message @msg (and descriptor @fd, which is ours now) from @l,
 * by the state of the link.  Returns 1 if done, -1 if the link must
 * close (*@rejected: the peer misbehaved).
 */
static int memdedup_board_handle(MemdedupBoard *b, MemdedupBoardLink *l,
                                 MemdedupBoardMsg *msg, int fd,
                                 bool *rejected)
{
    uint8_t mac[32];

    *rejected = true;
    switch (l->state) {
    case MEMDEDUP_LINK_HELLO:
        if (msg->type != MEMDEDUP_MSG_HELLO || fd >= 0 ||
            !memcmp(msg->hello.nonce, l->own_nonce, sizeof(l->own_nonce))) {
            break;              /* a reflected nonce is no proof */
        }
        memcpy(l->peer_nonce, msg->hello.nonce, sizeof(l->peer_nonce));
        if (!l->outgoing) {
            /* Who connected: not probed as a stale name while linked. */
            snprintf(l->name, sizeof(l->name), MEMDEDUP_BOARD_PREFIX
                     "%016" PRIx64, msg->hello.id);
        }
        if (l->outgoing) {
            /* The connecting side proves the key first. */
            memdedup_board_proof(b, l, 'c', msg->mac);
            memdedup_board_send(l, MEMDEDUP_MSG_PROOF, msg, -1);
        }
        l->state = MEMDEDUP_LINK_PROOF;
        return 1;
    case MEMDEDUP_LINK_PROOF:
        if (msg->type == MEMDEDUP_MSG_FULL && fd < 0 && l->outgoing) {
            goto full;
        }
        if (msg->type != MEMDEDUP_MSG_PROOF || fd >= 0) {
            break;
        }
        memdedup_board_proof(b, l, l->outgoing ? 'a' : 'c', mac);
        if (!memdedup_board_mac_equal(mac, msg->mac)) {
            break;
        }
        *rejected = false;
        return memdedup_board_link_proven(b, l) ? 1 : -1;
    case MEMDEDUP_LINK_PEER:
        if (msg->type == MEMDEDUP_MSG_FULL && fd < 0) {
full:
            /* It has no room for us: ask again later. */
            memdedup_board_retry_later(b, l);
            if (!b->full_warned) {
                warn_report("memdedup: board '%s': a peer has no room for "
                            "this VM (board-slots): it exchanges with the "
                            "peers that have", b->dir);
                b->full_warned = true;
            }
            *rejected = false;
            return -1;
        }
        if (msg->type != MEMDEDUP_MSG_FILTER) {
            break;
        }
        /* Only the newest counts; older ones are closed unread. */
        if (l->newest_fd >= 0) {
            close(l->newest_fd);
        }
        l->newest = *msg;
        l->newest_fd = fd;
        l->has_newest = true;
        return 1;
    }
    if (fd >= 0) {
        close(fd);
    }
    return -1;
}

/*
 * Serve one link: read what it sent, take its newest filter when one is
 * due, and deliver ours if the last try found its socket full.
 */
void memdedup_board_serve_link(MemdedupBoard *b, MemdedupBoardLink *l,
                               int64_t now)
{
    bool rejected = false;
    int i, r = 1;

    for (i = 0; i < MEMDEDUP_BOARD_READ_MAX && r > 0; i++) {
        MemdedupBoardMsg msg;
        int fd;

        r = memdedup_board_recv(l, &msg, &fd);
        if (r > 0) {
            r = memdedup_board_handle(b, l, &msg, fd, &rejected);
        } else {
            rejected = r == -2;
        }
    }
    if (r < 0) {
        memdedup_board_link_close(b, l, rejected,
                                  rejected ? "malformed message or proof" :
                                             "hung up");
        return;
    }
    if (l->state != MEMDEDUP_LINK_PEER) {
        if (now >= l->deadline) {
            memdedup_board_link_close(b, l, true, "no proof in time");
        }
        return;
    }
    if (l->has_newest && now >= l->next_adopt) {
        l->next_adopt = now + MEMDEDUP_BOARD_ADOPT_MS;
        if (!memdedup_board_adopt(b, l) &&
            ++l->refusals >= MEMDEDUP_BOARD_REFUSALS_MAX) {
            memdedup_board_link_close(b, l, true, "filters refused");
            return;
        }
    }
    if (l->send_pending) {
        memdedup_board_send_filter(b, l);
    }
}
