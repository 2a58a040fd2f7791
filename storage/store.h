/*
 * storage/store.h: the one seam between the gateway and wherever counters
 * live. Two implementations fill the same table: memory.c (embedded, one
 * process) and, later, redis.c (a fleet sharing one Redis).
 *
 * Model: a store_t is created once per process; each worker thread attaches
 * with its own event_base and gets a store_worker_t that it alone uses.
 *
 * Completion rule (as hiredis): every call that takes a callback calls it
 * exactly once, from the worker's event loop thread. A store may call it
 * before the call returns (the memory store does); callers must not touch
 * state after the call that the callback may have freed.
 *
 * Semantics (SPEC §3): acquire checks every check; if all have room it
 * charges all of them and takes one lease per gauge check, else it charges
 * nothing. Windows use the store's clock (o->now_ms).
 */
#ifndef RW_STORAGE_STORE_H
#define RW_STORAGE_STORE_H

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
    /* checks[0..n) must stay valid until cb has run. */
    void (*acquire)(store_worker_t *w, const lim_check_t *checks, size_t n,
                    store_acquire_cb cb, void *arg);
    /* Give back the leases of an admitted acquire. Fire and forget. */
    void (*release)(store_worker_t *w, const lim_check_t *checks, size_t n);
    void (*usage)(store_worker_t *w, const lim_check_t *checks, size_t n,
                  store_usage_cb cb, void *arg);
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
                                 size_t n, store_acquire_cb cb, void *arg)
{
    w->store->ops->acquire(w, c, n, cb, arg);
}
static inline void store_release(store_worker_t *w, const lim_check_t *c,
                                 size_t n)
{
    w->store->ops->release(w, c, n);
}
static inline void store_usage(store_worker_t *w, const lim_check_t *c,
                               size_t n, store_usage_cb cb, void *arg)
{
    w->store->ops->usage(w, c, n, cb, arg);
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

#endif
