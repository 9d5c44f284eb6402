/*
 * memdedup: the cross-VM board's shared definitions
 *
 * Copyright (c) 2026 The memdedup authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * Between board.c (the directory, our socket, the tick), board-link.c
 * (links: messages and proofs) and board-filter.c (filters: publishing
 * ours, checking and looking up the peers').  Nothing outside these
 * three files includes it.
 */

#ifndef HW_MEM_MEMDEDUP_BOARD_INTERNAL_H
#define HW_MEM_MEMDEDUP_BOARD_INTERNAL_H

#include "qemu/thread.h"
#include "memdedup-internal.h"

#define MEMDEDUP_BOARD_MAGIC        0x3342444du     /* "MDB3" */
#define MEMDEDUP_BOARD_VERSION      3
#define MEMDEDUP_BOARD_PREFIX       "vm-"           /* + 16 hex digits */
#define MEMDEDUP_BOARD_NONCE        32              /* bytes */
#define MEMDEDUP_BOARD_BITS_PER_PAGE 16             /* 2 bytes per page */
#define MEMDEDUP_BOARD_LINE_BITS    512             /* filter granule */
/* Read the directory for new peers at most this often (ms). */
#define MEMDEDUP_BOARD_WALK_MS      2000
/* Directory entries looked at per walk: a full directory costs no more. */
#define MEMDEDUP_BOARD_WALK_MAX     4096
/* Try joining again this often while the directory is unusable (ms). */
#define MEMDEDUP_BOARD_REJOIN_MS    10000
/* After a peer had no room for us, ask it again this late (ms). */
#define MEMDEDUP_BOARD_RETRY_MS     10000
/* Take a peer's newer filter at most this often (ms). */
#define MEMDEDUP_BOARD_ADOPT_MS     5000
/* Connections not yet proven, at most, and accepted per tick. */
#define MEMDEDUP_BOARD_PENDING_MAX  8
#define MEMDEDUP_BOARD_ACCEPT_MAX   32
/* Messages read from one connection per tick. */
#define MEMDEDUP_BOARD_READ_MAX     16
/* Filters of a peer refused in a row before it is dropped. */
#define MEMDEDUP_BOARD_REFUSALS_MAX 3

enum {
    MEMDEDUP_MSG_HELLO = 1,     /* nonce, and the name we listen on */
    MEMDEDUP_MSG_PROOF = 2,     /* mac */
    MEMDEDUP_MSG_FILTER = 3,    /* filter, with its memfd (none if empty) */
    MEMDEDUP_MSG_FULL = 4,      /* no room for another peer: closing */
};

/* Every message has this size exactly; anything else is refused. */
typedef struct MemdedupBoardMsg {
    uint32_t magic;
    uint16_t version;
    uint16_t type;
    union {
        struct {
            uint8_t nonce[MEMDEDUP_BOARD_NONCE];
            uint64_t id;        /* the sender's socket name, claimed */
        } hello;
        uint8_t mac[MEMDEDUP_BOARD_NONCE];
        struct {
            uint64_t pages;     /* fingerprints in the filter */
            uint64_t bits;      /* filter size: the memfd's, times 8 */
            uint32_t threshold; /* fingerprints <= this are in it */
            uint32_t reserved;  /* 0 */
        } filter;
    };
} MemdedupBoardMsg;

QEMU_BUILD_BUG_ON(sizeof(MemdedupBoardMsg) != 48);

/* A peer's filter, as we checked it: our own copy of its geometry. */
typedef struct MemdedupBoardFilter {
    const uint8_t *bits_map;    /* read-only mapping of a sealed memfd */
    uint64_t bits;              /* 0: nothing published */
    uint64_t pages;
    uint32_t threshold;
} MemdedupBoardFilter;

typedef enum MemdedupLinkState {
    MEMDEDUP_LINK_HELLO,        /* our nonce sent, waiting for theirs */
    MEMDEDUP_LINK_PROOF,        /* nonces known, waiting for their proof */
    MEMDEDUP_LINK_PEER,         /* proven: filters flow */
} MemdedupLinkState;

typedef struct MemdedupBoardLink {
    int fd;
    MemdedupLinkState state;
    bool outgoing;              /* we connected to @name */
    char name[24];              /* that socket's, or the one HELLO claimed */
    int64_t deadline;           /* ms (realtime) to prove the key by */
    uint8_t own_nonce[MEMDEDUP_BOARD_NONCE];
    uint8_t peer_nonce[MEMDEDUP_BOARD_NONCE];
    bool send_pending;          /* our newest filter not delivered yet */
    int64_t next_adopt;         /* ms: take a newer filter from then on */
    int newest_fd;              /* its newest filter's memfd, or -1 */
    MemdedupBoardMsg newest;    /* ... and the message that came with it */
    bool has_newest;
    uint32_t refusals;          /* filters refused in a row */
    MemdedupBoardFilter filter; /* adopted; looked up during passes */
} MemdedupBoardLink;

struct MemdedupBoard {
    /* Constant after memdedup_board_complete. */
    char *dir;
    uint64_t seed;              /* the fingerprint seed of the domain */
    uint8_t proof_key[32];
    uint64_t max_bits;          /* our filter's largest size ("board-size") */
    uint32_t max_peers;         /* "board-slots" - 1 */
    int64_t timeout_ms;         /* "board-timeout": time to prove the key */

    /* Scanner thread only. */
    int listen_fd;              /* -1 while not joined */
    char own_name[24];          /* our socket's name in @dir */
    ino_t own_ino;              /* ... and the inode it names */
    uint64_t own_id;            /* ... its number */
    GPtrArray *links;           /* of MemdedupBoardLink */
    uint32_t nr_pending;        /* links not proven yet */
    int64_t next_walk;          /* ms (realtime) */
    int64_t next_join;          /* ms: retry joining then */
    GHashTable *retry_after;    /* socket name -> ms it may be tried again */
    int pub_fd;                 /* our newest filter's sealed memfd, or -1 */
    MemdedupBoardMsg pub_msg;   /* its geometry */
    int next_fd;                /* the publication being written, or -1 */
    uint8_t *next_map;          /* ... mapped while it is written */
    MemdedupBoardMsg next_msg;  /* ... and its geometry */
    uint64_t next_publishable;  /* fingerprints it was sized for */
    bool published;             /* a publication completed */
    uint64_t version;           /* changes when a peer's filter does */
    MemdedupBoardFilter *view;  /* lookup_begin's snapshot of the filters */
    uint32_t nr_view;
    bool full_warned;

    /* @lock: written by the scanner thread, read by query-memdedup. */
    QemuMutex lock;
    char *sock_path;            /* our socket, or NULL; unlinked at exit */
    bool released;              /* the owner let go: join no more */
    char *reason;               /* why not joined, or NULL */
    uint32_t peers;
    uint64_t published_pages;
    uint64_t publishable_pages;
    uint64_t filter_bytes;
    uint64_t publications;
    uint64_t rejected_peers;
    uint64_t rejected_updates;
    uint64_t refused_connections;
};

/* board-link.c: a link on socket @fd; @name: the socket we dialled, or "" */
MemdedupBoardLink *memdedup_board_link_new(MemdedupBoard *b, int fd,
                                           const char *name);
/* Close @l; @rejected counts it as a peer that misbehaved. */
void memdedup_board_link_close(MemdedupBoard *b, MemdedupBoardLink *l,
                               bool rejected, const char *why);
/* Read and act on what @l sent, adopt or deliver filters; may close it. */
void memdedup_board_serve_link(MemdedupBoard *b, MemdedupBoardLink *l,
                               int64_t now);

/* board-filter.c */
int64_t memdedup_board_now(void);           /* ms, QEMU_CLOCK_REALTIME */
/* Count one event in @counter (a field under @b->lock). */
void memdedup_board_count(MemdedupBoard *b, uint64_t *counter);
/*
 * Check the filter @msg declares and memfd @fd holds (taken over: it is
 * closed either way); on success *@f is ours to look up until
 * memdedup_board_filter_drop.  Counts a refusal in rejected-updates.
 */
bool memdedup_board_filter_take(MemdedupBoard *b, const MemdedupBoardMsg *msg,
                                int fd, MemdedupBoardFilter *f);
void memdedup_board_filter_drop(MemdedupBoardFilter *f);

#endif
