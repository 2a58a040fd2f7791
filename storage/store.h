/*
 * storage/store.h: the one seam between the gateway and wherever counters
 * live. Two implementations fill the same table: memory.c (embedded, one
 * process) and redis/ (a fleet sharing one Redis).
 *
 * Model: a store_t is created once per process; each worker thread attaches
 * with its own event_base and gets a store_worker_t that it alone uses.
 *
 * Completion rule (as hiredis): every call that takes a callback calls it
 * exactly once, from the worker's event loop thread. A store may call it
 * before the call returns (the memory store does); callers must not touch
 * state after the call that the callback may have freed.
 *
 * Semantics: acquire checks every check; if all enforcing checks have
 * room it charges all of them (shadow checks too, past their limit) and
 * takes one lease per gauge check, else it charges nothing. Windows use the store's clock (o->now_ms).
 */
#ifndef RW_STORAGE_STORE_H
#define RW_STORAGE_STORE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "../limiter/limits.h"

struct event_base;

typedef struct store store_t;
typedef struct store_worker store_worker_t;

typedef enum {
    STORE_OK = 0,          /* outcome is valid */
    STORE_UNAVAILABLE      /* store could not answer: LIMITER_UNAVAILABLE */
} store_status_t;

/*
 * Called once per acquire. `checks` is the caller's array, unchanged.
 * `o` is only valid during the call; copy what is needed. When
 * o->admitted, the caller holds the leases of every gauge check and must
 * call release() with the same checks exactly once.
 */
typedef void (*store_acquire_cb)(void *arg, store_status_t st,
                                 const lim_outcome_t *o);
/* Called once per usage() with the state of each check, nothing charged. */
typedef void (*store_usage_cb)(void *arg, store_status_t st,
                               const lim_outcome_t *o);

typedef struct store_ops {
    const char *name;
    /* 1: every callback runs before its call returns (no wait to watch). */
    int answers_inline;
    store_worker_t *(*attach)(store_t *s, struct event_base *base);
    void (*detach)(store_worker_t *w);
    /* checks[0..n) must stay valid until cb has run. lease_id names the
     * leases of the gauge checks (unique per request, <= 64 bytes); a
     * gauge check's lease_ttl_ms bounds how long a lease outlives a
     * gateway that died holding it. */
    void (*acquire)(store_worker_t *w, const lim_check_t *checks, size_t n,
                    const char *lease_id, store_acquire_cb cb, void *arg);
    /* Give back the leases of an admitted acquire. Fire and forget. */
    void (*release)(store_worker_t *w, const lim_check_t *checks, size_t n,
                    const char *lease_id);
    void (*usage)(store_worker_t *w, const lim_check_t *checks, size_t n,
                  store_usage_cb cb, void *arg);
    /* Reconcile: add deltas[i] to checks[i]'s counter (negative gives back),
     * as charged at charged_ms (store clock, from the acquire's outcome). A
     * counter never goes below zero and never counts a give-back in a
     * window or period later than the charge's. Fire and forget. */
    void (*adjust)(store_worker_t *w, const lim_check_t *checks, size_t n,
                   const int64_t *deltas, int64_t charged_ms);
    /* An async job of `account` took over the leases of an admitted
     * request: they are held, now under (account, job), until job_done()
     * or ttl_ms. `job` names the job id in keys: printable, no spaces, at
     * most 64 bytes (the gateway passes the SHA-256 of the id in hex).
     * Every call holds its own leases, even for a job already held: a
     * backend that returns one id twice gets two jobs of that id.
     * Fire and forget. */
    void (*job_hold)(store_worker_t *w, const lim_check_t *checks, size_t n,
                     const char *lease_id, const char *account, const char *job,
                     int64_t ttl_ms);
    /* Release every lease that `account` holds for `job`, from any worker
     * or instance. account NULL: the one account that holds `job`.
     * cb(arg, found): 1 released; 0 no lease held for it; -1 the store
     * cannot answer; -2 (account NULL only) several accounts hold it,
     * nothing released. cb may be NULL. */
    void (*job_done)(store_worker_t *w, const char *account, const char *job,
                     void (*cb)(void *arg, int found), void *arg);
    /* 1 when the store can answer now (readiness). */
    int (*ready)(store_worker_t *w);
    /* Send the calls queued so far now, not at the next turn of the loop:
     * before an answer that a client may follow at once with a call that
     * must see them (a released lease, a held job). NULL: nothing is ever
     * queued. */
    void (*flush)(store_worker_t *w);
    void (*destroy)(store_t *s);
} store_ops_t;

struct store {
    const store_ops_t *ops;
};

static inline store_worker_t *store_attach(store_t *s, struct event_base *b)
{
    return s->ops->attach(s, b);
}

/* Every store_worker_t begins with its store, so dispatch needs no lookup. */
struct store_worker {
    store_t *store;
};

static inline void store_acquire(store_worker_t *w, const lim_check_t *c,
                                 size_t n, const char *lease_id,
                                 store_acquire_cb cb, void *arg)
{
    w->store->ops->acquire(w, c, n, lease_id, cb, arg);
}
static inline void store_release(store_worker_t *w, const lim_check_t *c,
                                 size_t n, const char *lease_id)
{
    w->store->ops->release(w, c, n, lease_id);
}
static inline void store_usage(store_worker_t *w, const lim_check_t *c,
                               size_t n, store_usage_cb cb, void *arg)
{
    w->store->ops->usage(w, c, n, cb, arg);
}
static inline void store_adjust(store_worker_t *w, const lim_check_t *c, size_t n,
                                const int64_t *deltas, int64_t charged_ms)
{
    w->store->ops->adjust(w, c, n, deltas, charged_ms);
}
static inline void store_job_hold(store_worker_t *w, const lim_check_t *c, size_t n,
                                  const char *lease_id, const char *account,
                                  const char *job, int64_t ttl_ms)
{
    w->store->ops->job_hold(w, c, n, lease_id, account, job, ttl_ms);
}
static inline void store_job_done(store_worker_t *w, const char *account, const char *job,
                                  void (*cb)(void *arg, int found), void *arg)
{
    w->store->ops->job_done(w, account, job, cb, arg);
}
static inline void store_flush(store_worker_t *w)
{
    if (w->store->ops->flush)
        w->store->ops->flush(w);
}
/* 1 when every callback of this store runs before its call returns: a
 * caller has no wait during which to watch for anything. */
static inline int store_answers_inline(const store_worker_t *w)
{
    return w->store->ops->answers_inline;
}
static inline int store_ready(store_worker_t *w)
{
    return w->store->ops->ready(w);
}
static inline void store_detach(store_worker_t *w)
{
    w->store->ops->detach(w);
}
static inline void store_destroy(store_t *s)
{
    s->ops->destroy(s);
}

/* The embedded store. clock: NULL for CLOCK_REALTIME, else a test clock
 * returning Unix milliseconds. Returns NULL on allocation failure. */
typedef int64_t (*store_clock_fn)(void *arg);
store_t *store_memory_new(store_clock_fn clock, void *clock_arg);
/* Live counters (for tests and metrics). */
size_t store_memory_count(store_t *s);
/* Forget every rolling and calendar counter; leases (gauges) and jobs stay.
 * The Redis store's fallback starts each outage from zero with it. */
void store_memory_drop_counters(store_t *s);
/* The same for the counters whose key drop(key, arg) is true for (called
 * under the store's locks: it must not call the store). */
void store_memory_drop_counters_if(store_t *s, int (*drop)(const char *key, void *arg),
                                   void *arg);

/* The Redis store (storage/redis/). Strings are copied. */
typedef struct store_redis_opts {
    const char *host;         /* default 127.0.0.1 */
    uint16_t port;            /* default 6379 */
    const char *password;     /* NULL: no AUTH */
    int db;
    int64_t timeout_ms;       /* per call, default 50 */
    int on_error_allow;       /* 1: count in local memory while Redis is away */
    const char *key_prefix;   /* default "rl:" */
    store_clock_fn clock;     /* tests only: NULL uses Redis TIME */
    void *clock_arg;
    void (*log)(const char *line); /* operational messages; may be NULL */
    /* Non-NULL: host and port are not used; the primary is asked of these
     * Redis Sentinels (in turn) by its master name, and followed through
     * failovers. */
    const char *sentinel_master;
    const char *sentinel_password; /* the sentinels' AUTH (NULL: none) */
    const char *const *sentinel_hosts;
    const uint16_t *sentinel_ports;
    size_t n_sentinels;
    /* Non-zero: a Redis Cluster, its slot map asked of these seed nodes;
     * host and port are not used. */
    const char *const *cluster_hosts;
    const uint16_t *cluster_ports;
    size_t n_cluster;
} store_redis_opts_t;

/* Counters for metrics, updated atomically by the workers. */
typedef struct store_redis_stats {
    atomic_ulong decisions;          /* answered by Redis */
    atomic_ulong unavailable;        /* calls Redis could not answer */
    atomic_ulong fallback_decisions; /* answered by local memory (allow) */
    atomic_ulong connects;           /* connection attempts */
    atomic_ulong debt_dropped;       /* local charges (on_error allow) that
                                        could not be kept to add to Redis: more
                                        counters than the outage bound */
} store_redis_stats_t;

store_t *store_redis_new(const store_redis_opts_t *o);
/* NULL when s is not a Redis store. */
const store_redis_stats_t *store_redis_stats(store_t *s);

#endif
