/* gateway/worker.h: one worker thread's state (started and stopped by
 * server.c, used by everything that runs on its loop). */
#ifndef RW_GATEWAY_WORKER_H
#define RW_GATEWAY_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include <event2/event.h>

#include "../limiter/deny.h"
#include "../storage/store.h"
#include "config/config.h"
#include "http/server.h"
#include "proxy.h"

/*
 * One worker thread. Owns its event_base, its HTTP server (gateway/http/) on a
 * SO_REUSEPORT listener, its backend connection pools and its store
 * connection. The event_base has no lock (EVENT_BASE_FLAG_NOLOCK: a loop
 * turn takes none), so no other thread may touch it or anything on it;
 * other threads reach the worker only through its mailbox (server.h:
 * server_worker_swap, server_worker_stop, server_worker_wake): they set
 * `mail` bits, put a request to wake on `woken` (under mail_mu), and write
 * mail_fd, an eventfd that mail_ev reads on the worker's own loop.
 */
#define WORKER_MAIL_RELOAD 1u /* pending_cfg was set */
#define WORKER_MAIL_STOP 2u   /* drain, or (a second time) stop at once */

typedef struct worker {
    int index;
    pthread_t thread;
    struct event_base *base;
    h1_server_t *http;             /* the public listener (gateway/http/server.h) */
    h1_server_t *admin;            /* worker 0 only, when configured */
    store_worker_t *store;
    config_t *cfg;                 /* this worker's reference */
    _Atomic(config_t *) pending_cfg; /* handed over by the main thread */
    atomic_uint mail;              /* WORKER_MAIL_* bits, set by other threads */
    pthread_mutex_t mail_mu;       /* guards woken and each request's wq_mail */
    struct request *woken;         /* requests to wake (wq_mail_next list) */
    int mail_fd;                   /* eventfd: written after mail or woken */
    struct event *mail_ev;         /* reads mail_fd on the worker's loop */
    struct event *exit_notify;     /* the main thread's: activated on exit */
    atomic_int exited;             /* set before exit_notify is activated */
    proxy_worker_t proxy;          /* backend pools, kept exchanges (proxy.h) */
    lim_deny_t deny;               /* local deny cache (limiter/deny.h) */
    int deny_cache;                /* the deny cache is used (RATEWALL_NO_DENY_CACHE) */
    int draining;
    struct timespec drain_deadline;
    /* Touched by the worker's own thread only. */
    int inflight;   /* request contexts alive */
    struct request *waiting; /* its waiting requests (their wl_ list; waitq.h) */
    /* X-Request-Id: random per-worker prefix + counter. */
    char rid_prefix[17];
    uint64_t rid_next;
} worker_t;

#endif
