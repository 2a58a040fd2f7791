/*
 * storage/redis/internal.h: what the Redis store's files share (private).
 *
 * The Redis store: counters shared by a fleet through one Redis. Its parts:
 * conn.c (the hiredis connection: calls in flight, timeouts, replies,
 * reconnect, script loading and NOSCRIPT), ops.c (the store operations and
 * the commands they send) and store.c (the store itself, the lease and
 * renewal sets, the debt owed after an outage).
 *
 * One decision is one EVALSHA of storage/acquire.lua: every check of the
 * request is evaluated and, only if all fit, charged, on Redis's own clock.
 * Each worker has its own hiredis async connection on its event loop;
 * concurrent requests are pipelined on it. The decisions that one loop
 * turn makes on the same checks (a busy key) go as one batch: the script
 * reads each counter once, decides them in order as separate calls would,
 * and writes each counter once, which costs Redis a fraction of a call
 * per decision.
 *
 * hiredis 0.14's async API has no timeout of its own, so every call is kept
 * in a FIFO (Redis answers in order) with a deadline; a timer answers the
 * calls that ran out as unavailable but keeps them until Redis replies. A
 * connection with no reply for DROP_AFTER is dropped and re-made with a
 * backoff of 50 ms doubling up to 1 s.
 *
 * Nothing is charged for a decision answered "unavailable": every charging
 * decision carries its deadline on Redis's own clock (the local monotonic
 * deadline plus the offset to Redis's clock that every reply reveals, minus
 * a margin), and a script that runs later (a stalled Redis waking up) writes
 * nothing. Until a connection's offset is known, its decisions wait (within
 * their own deadline) for the TIME sent at connect. As a safety net, a late
 * reply that still admitted gives the leases and the charges straight back.
 *
 * Leases held by this worker's requests are renewed in one EVALSHA of
 * renew.lua per RENEW interval, so a stream may outlive its lease_ttl_ms;
 * a dead gateway's leases expire lease_ttl_ms after the last renewal.
 *
 * on_error allow: while Redis is away, the memory store decides alone and
 * what it charged is recorded per counter (the debt table, shared by the
 * workers). As soon as Redis answers again the debt is added to Redis with
 * the adjust mode of acquire.lua, one call per hash tag, and the memory
 * store's counters are dropped, so the next outage starts from zero. In a
 * cluster only the debt (and the local counters) of the slots whose
 * master answers now is paid (and dropped); the rest waits for the master
 * that serves those slots next, a promoted replica after a failover.
 *
 * Ownership:
 *  - rcall_t: allocated per command, owned by conn.c. hiredis calls
 *    on_reply() exactly once per command (with NULL when the connection
 *    goes away); that is the one place a call is freed. The caller's
 *    callback may run earlier (timeout): `answered` keeps it to once.
 *  - A call borrows the caller's checks until it is answered, never after.
 *  - The formatted command is owned by the call (kept for a NOSCRIPT retry).
 *  - A held call (decision waiting for the connection's clock offset) is in
 *    the worker's held list, not in hiredis; it is owned by that list and
 *    freed when it is sent (a new call is made), answered or failed.
 *  - renew_lease_t: owned by the worker's renewal set, from the admitting
 *    reply to release() (or until renew.lua reports the lease gone).
 *  - debt_t: owned by the store's debt table (debt_mu), until replayed;
 *    then by the adjust call that pays it (freed with it, or given back
 *    to the table when Redis answers that call with an error).
 *  - Cluster: a call answered -TRYAGAIN is owned by its parent's `again`
 *    list until sent again (or answered at its deadline or at detach).
 *  - A batch (RC_BATCH) owns its decisions: each is answered from its own
 *    part of the batch's reply (or with the batch, unavailable) and freed
 *    with the batch. While a loop turn gathers them, the decisions are
 *    owned by the worker's groups[] until the flush sends or answers them.
 */
#ifndef RATEWALL_STORAGE_REDIS_INTERNAL_H
#define RATEWALL_STORAGE_REDIS_INTERNAL_H

#include <pthread.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "../../limiter/window.h"
#include "../store.h"

extern const char rw_lua_acquire[];
extern const char rw_lua_release[];
extern const char rw_lua_hold[];
extern const char rw_lua_renew[];

#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 1000
#define LEASE_SET_BUCKETS 256
#define DROP_AFTER_MIN_MS 1000 /* and at least 4 timeouts */
#define RENEW_MS_DEFAULT 10000 /* lease renewal interval (at most 10 s) */
#define RENEW_BUCKETS 1024
#define RENEW_CHUNK_KEYS 1000  /* lease keys per renew.lua call */
#define DEBT_BUCKETS 4096
#define DEBT_MAX 200000        /* counters remembered during one outage */

/* What the fallback memory store charged to one counter in one bucket
 * (rolling) or period (calendar) while Redis was away. */
typedef struct debt {
    struct debt *next;
    int64_t slot;              /* bucket index (rolling) or period id (calendar) */
    int64_t amount;
    lim_check_t ck;            /* key, kind, per, window (limit unused) */
} debt_t;

typedef struct redis_store {
    store_t base;
    store_redis_opts_t o;     /* strings owned (copied) */
    char sha_acquire[41], sha_release[41], sha_hold[41], sha_renew[41];
    store_t *fallback;        /* memory store, on_error allow only */
    store_redis_stats_t stats;
    int64_t renew_ms;         /* lease renewal interval */
    pthread_mutex_t debt_mu;  /* guards debt[], n_debt, debt_full */
    debt_t *debt[DEBT_BUCKETS];
    size_t n_debt;
    int debt_full;            /* logged once per outage */
    atomic_size_t debt_hint;  /* n_debt, read without the lock */
} redis_store_t;

typedef struct redis_worker redis_worker_t;

enum call_kind { RC_ACQUIRE, RC_USAGE, RC_RELEASE, RC_SETUP, RC_ADJUST, RC_JOB_DONE,
                 RC_JOB_FIND, RC_TIME, RC_RENEW, RC_PROBE, RC_BATCH };

#define BATCH_MAX 64   /* decisions in one batch */
#define GROUPS_MAX 16  /* batches being gathered in one loop turn */

typedef struct rcall {
    struct rcall *prev, *next; /* in the worker's FIFO of calls sent */
    redis_worker_t *rw;
    enum call_kind kind;
    store_acquire_cb cb;
    void *arg;
    const lim_check_t *checks; /* borrowed until answered */
    size_t n;
    char lease_id[72];         /* RC_JOB_FIND: the job's name */
    void (*done_cb)(void *arg, int found); /* RC_JOB_DONE, RC_JOB_FIND */
    int answered;
    int retried;               /* NOSCRIPT: loaded and sent again once */
    int redirects;             /* cluster: -MOVED / -ASK followed since last sent */
    int tries;                 /* cluster: -TRYAGAIN answered so far */
    int64_t again_at;          /* cluster: when it is sent again (monotonic ms) */
    struct rcall *again_next;  /* cluster: in the parent's list to send again */
    int64_t deadline;          /* monotonic ms */
    int64_t sent;              /* monotonic ms */
    char *cmd;                 /* formatted command (hiredis format) */
    int cmdlen;
    char *release_cmd;         /* acquire with leases: their release, for a late admit */
    int release_len;
    char *refund_cmd;          /* acquire answered unavailable: its charges given back */
    int refund_len;
    int refund_conditional;    /* refund_cmd applies only if the lease is held */
    int sent_to_redis;         /* queued on the connection (not held) */
    struct debt *debt;         /* RC_ADJUST of a debt replay: its entries (owned) */
    struct rcall *held_next;   /* in the worker's held list */
    /* RC_BATCH: its decisions (RC_ACQUIRE calls never sent themselves),
     * in the order of the batch; a decision: the next one. */
    struct rcall *children, *children_tail, *child_next;
    size_t n_children;
} rcall_t;

/* A lease release (or any fire-and-forget script call, a job's done
 * included) whose reply was lost with its connection: sent again once
 * Redis answers, a few times, because a call already in Redis's buffer may
 * still run after we reconnect. */
typedef struct pending {
    struct pending *next;
    char *cmd;           /* formatted command (owned) */
    int len;
    int sends_left;
} pending_t;

#define PENDING_SENDS 4  /* once a second after Redis answers again */
#define PENDING_MAX 100000

typedef struct lease_node {
    struct lease_node *next;
    char id[72];
} lease_node_t;

/* A lease this worker holds in Redis, renewed until released. */
typedef struct renew_lease {
    struct renew_lease *next;
    char id[72];
    int nkeys;
    struct {
        int64_t ttl_ms;
        char key[LIM_KEY_MAX + 64];
    } k[];
} renew_lease_t;

struct redis_worker {
    store_worker_t base;
    redis_store_t *rs;
    struct event_base *evb;
    redisAsyncContext *ac;     /* NULL while down */
    int connected;
    int was_down;              /* for one log line per outage */
    struct event *timer;       /* deadline of the oldest call */
    struct event *retry_ev;    /* reconnect */
    int64_t backoff_ms;
    rcall_t *head, *tail;
    store_worker_t *fallback;  /* memory store worker (allow) */
    lease_node_t *fallback_leases[LEASE_SET_BUCKETS];
    int detaching;
    int ready;                 /* Redis has answered on this connection */
    pending_t *pending;        /* releases and job dones to send again */
    size_t n_pending;
    struct event *pending_ev;  /* once a second while there are some */
    int64_t timer_at;          /* when the armed timer fires (monotonic ms) */
    int offset_known;          /* a reply on this connection gave Redis's clock */
    int64_t offset_ms;         /* Redis clock - local monotonic clock (a lower bound) */
    rcall_t *held, *held_tail; /* decisions waiting for the offset */
    renew_lease_t *renew[RENEW_BUCKETS];
    size_t n_renew;
    struct event *renew_ev;    /* every renew_ms */
    char host[256];            /* the server connected to (Sentinel: the primary named) */
    uint16_t port;
    char addr[320];            /* how log lines name it */
    /* Sentinel only (sentinel.c): the sentinel being asked for the primary
     * and the one subscribed to +switch-master. Both contexts are owned by
     * the worker and freed by it; hiredis frees one itself only after a
     * failed connect or a disconnect, which the callbacks notice. */
    redisAsyncContext *ask;    /* NULL: not asking */
    size_t ask_node, ask_tried;
    struct event *ask_ev;      /* the ask's timeout */
    redisAsyncContext *sub;    /* NULL: not subscribed */
    size_t sub_node;
    struct event *sub_ev;      /* subscribe again */
    int sentinel_auth_logged;  /* a refused AUTH was logged (until one is accepted) */
    /* Cluster only (cluster.c). The worker attached (the parent) owns one
     * node worker per master, each a full worker with its own connection;
     * nodes point back at it and it routes every command by slot. */
    redis_worker_t *parent;    /* node: its parent; NULL otherwise */
    redis_worker_t **nodes;    /* parent: the masters */
    size_t n_nodes;
    uint16_t *slots;           /* parent: slot -> node index + 1 (0: unknown) */
    struct event *map_ev;      /* parent: ask for the slot map again */
    redisAsyncContext *map_ac; /* parent: the node asked for CLUSTER SLOTS (owned) */
    struct event *map_to;      /* parent: that ask's timeout */
    size_t map_next;           /* parent: the next seed (then known master) to ask */
    char map_host[256];        /* parent: the node asked */
    uint16_t map_port;
    int map_failing;           /* parent: no node answered (logged once) */
    int idle;                  /* node: serves no slot; not reconnected */
    int cluster_down;          /* node: answered CLUSTERDOWN; CLUSTER INFO once a
                                * second until a keyed command is served again */
    int64_t debt_at;           /* parent: when the debt was last looked at */
    rcall_t *again;            /* parent: calls answered -TRYAGAIN, sent again soon */
    struct event *again_ev;    /* parent: when the first of them is due */
    /* Batches (not in a cluster): the decisions of one loop turn on the
     * same checks, gathered here and sent as one call when the turn ends
     * (flush_ev); a group of one is sent as a decision of its own. */
    rcall_t *groups[GROUPS_MAX];
    size_t n_groups;
    struct event *flush_ev;
};

static inline int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* v in decimal with its NUL into buf (24 bytes hold any); its length.
 * Every decision formats a dozen numbers: by hand, not snprintf. */
static inline size_t rds_fmt_i64(char *buf, int64_t v)
{
    char d[24];
    size_t i = sizeof d, n = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do
        d[--i] = (char)('0' + u % 10);
    while (u /= 10);
    if (v < 0)
        buf[n++] = '-';
    memcpy(buf + n, d + i, sizeof d - i);
    n += sizeof d - i;
    buf[n] = '\0';
    return n;
}

/* a then b into buf (cap bytes, cut to fit); its length. */
static inline size_t rds_join2(char *buf, size_t cap, const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    if (na >= cap)
        na = cap - 1;
    if (nb >= cap - na)
        nb = cap - na - 1;
    memcpy(buf, a, na);
    memcpy(buf + na, b, nb);
    buf[na + nb] = '\0';
    return na + nb;
}

void rds_rlog(redis_store_t *rs, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* conn.c: the connection, calls in flight and their replies. */
void rds_arm_timer_for(redis_worker_t *rw, int64_t when);
void rds_call_answer_unavailable(rcall_t *c);
void rds_call_free(rcall_t *c);
void rds_held_fail_all(redis_worker_t *rw);
void rds_on_timer(evutil_socket_t fd, short what, void *arg);
int rds_queue(redis_worker_t *rw, rcall_t *c);
/* Fire and forget the formatted command cmd (owned from here on). */
void rds_send_owned(redis_worker_t *rw, char *cmd, int len);
/* Write what is queued on the connection now rather than on the loop's
 * next write event (not from inside a hiredis callback). */
void rds_write_now(redis_worker_t *rw);
rcall_t *rds_call_new(redis_worker_t *rw, enum call_kind kind, int argc,
                      const char **argv, const size_t *argvlen);
void rds_on_pending(evutil_socket_t fd, short what, void *arg);
void rds_connect_now(redis_worker_t *rw);
void rds_on_retry(evutil_socket_t fd, short what, void *arg);
void rds_connect_to(redis_worker_t *rw);
void rds_schedule_reconnect(redis_worker_t *rw);
void rds_note_down(redis_worker_t *rw, const char *why);
void rds_connection_drop(redis_worker_t *rw, const char *why);
int rds_refused_unrun(const char *err);

/* ops.c: the store operations. */
void rds_answer_unavailable(redis_worker_t *rw, enum call_kind kind,
                            const lim_check_t *checks, size_t n, const char *lease_id,
                            store_acquire_cb cb, void *arg);
rcall_t *rds_decision_call(redis_worker_t *rw, enum call_kind kind,
                           const lim_check_t *checks, size_t n, const char *lease_id,
                           const int64_t *deltas, int64_t local_deadline,
                           const char *refund_of);
/* A decision not sent yet (h: held or gathered) sent to `to` as a call of
 * its own; h is then marked answered (the new call answers its caller),
 * else left for the caller to answer unavailable. */
void rds_send_decision(redis_worker_t *to, rcall_t *h);
/* Send the batches this loop turn gathered (the worker's flush_ev). */
void rds_on_flush(evutil_socket_t fd, short what, void *arg);
void redis_acquire(store_worker_t *w, const lim_check_t *checks, size_t n,
                   const char *lease_id, store_acquire_cb cb, void *arg);
void redis_usage(store_worker_t *w, const lim_check_t *checks, size_t n,
                 store_usage_cb cb, void *arg);
void redis_release(store_worker_t *w, const lim_check_t *checks, size_t n,
                   const char *lease_id);
void redis_adjust(store_worker_t *w, const lim_check_t *checks, size_t n,
                  const int64_t *deltas, int64_t charged_ms);
void rds_on_renew(evutil_socket_t fd, short what, void *arg);
void redis_job_hold(store_worker_t *w, const lim_check_t *checks, size_t n,
                    const char *lease_id, const char *account, const char *job,
                    int64_t ttl_ms);
void rds_job_found(rcall_t *c, const redisReply *r);
/* Cluster: decisions held by the parent until the first slot map, sent
 * to their nodes now (or held there until the node's clock is known). */
void rds_held_redispatch(redis_worker_t *p);
void redis_job_done(store_worker_t *w, const char *account, const char *job,
                    void (*cb)(void *arg, int found), void *arg);

/* store.c: the lease and renewal sets, the debt table. */
void rds_lease_remember(redis_worker_t *rw, const char *id);
int rds_lease_forget(redis_worker_t *rw, const char *id);
void rds_renew_add(redis_worker_t *rw, const char *id, const lim_check_t *checks,
                   size_t n);
void rds_renew_forget(redis_worker_t *rw, const char *id);
void rds_debt_record(redis_store_t *rs, const lim_check_t *c, int64_t amount,
                     int64_t charged_ms);
void rds_debt_replay(redis_worker_t *rw);
void rds_debt_return(redis_store_t *rs, debt_t *list);

/* store.c */
redis_worker_t *rds_worker_new(redis_store_t *rs, struct event_base *base, const char *host,
                               uint16_t port);

/* cluster.c: Redis Cluster routing. */
int rds_cluster_start(redis_worker_t *rw);  /* at attach; -1: out of memory */
void rds_cluster_stop(redis_worker_t *rw);  /* at detach */
/* The worker that sends a command on key (with prefix): rw itself but in a
 * cluster, where it is the node of the key's slot (rw's parent's map). */
redis_worker_t *rds_route(redis_worker_t *rw, const char *key);
/* A call answered -MOVED or -ASK: sent to the node named; 1 if so. */
int rds_cluster_redirect(rcall_t *c, const char *err);
/* A call answered -TRYAGAIN (a script whose keys are split between the two
 * nodes of a slot being migrated): sent again through the map after a short
 * backoff, within its deadline; 1 if so (the call is then the parent's). */
int rds_cluster_tryagain(rcall_t *c, const char *err);
/* A node's connection is down: the parent reads the slot map again soon. */
void rds_cluster_node_down(redis_worker_t *rw);

/* sentinel.c: the primary asked of Redis Sentinel, failovers followed. */
int rds_sentinel_start(redis_worker_t *rw);  /* at attach; -1: out of memory */
void rds_sentinel_ask(redis_worker_t *rw);   /* then connect to the primary named */
void rds_sentinel_stop(redis_worker_t *rw);  /* at detach */

#endif
