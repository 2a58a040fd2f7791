/*
 * gateway/proxy.h: forwarding an admitted request to its backend and
 * streaming the answer back. The proxy knows nothing of the request that
 * uses it: it is given what to send and a set of hooks, and reports back
 * through them.
 */
#ifndef RW_GATEWAY_PROXY_H
#define RW_GATEWAY_PROXY_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "config/config.h"
#include "http/server.h"

struct event_base;
struct evbuffer;
struct hc_exchange;
struct proxy_pool;
struct proxy_exchange;

/*
 * A worker's backend state: its keep-alive pools, one per backend address
 * (and TLS settings), and its list of exchanges kept for a gone client.
 * Ownership: owned by the worker and touched by its thread only; `base` is
 * borrowed (the worker's loop).
 */
typedef struct proxy_worker {
    struct event_base *base;
    struct proxy_pool *pools;
    struct proxy_exchange *kept;
    char *head;          /* scratch for request heads (owned, reused) */
    size_t head_cap;
} proxy_worker_t;

/* How an exchange ended (proxy_hooks_t.ended). */
enum proxy_end {
    PROXY_DONE = 0,    /* the whole answer was read (and sent, when there is a client) */
    PROXY_FAILED,      /* the backend failed with no client to tell */
    PROXY_CUT,         /* the backend failed after the head was sent: cut the client */
    PROXY_TIMEOUT,     /* no answer in time, nothing sent yet: answer 504 */
    PROXY_UNREACHABLE, /* no answer at all, nothing sent yet: answer 502 */
};

/*
 * What the proxy tells its user, each with the `arg` given to
 * proxy_start. Every exchange that started ends with exactly one call of
 * `ended` (never from inside proxy_start), unless it is released first.
 */
typedef struct proxy_hooks {
    /* The answer's head goes to client c with this status: the gateway's
     * own fields are added first (they replace the backend's). */
    void (*fields)(void *arg, h1_conn_t *c, int status);
    /* The backend's head arrived; content_type NULL when it has none,
     * content_length -1 when unknown. Returns 1 when the head is to wait
     * for the whole body (an answer whose counts are read from its body). */
    int (*head)(void *arg, int status, const char *content_type, int64_t content_length);
    /* Body bytes of the answer, as they pass (also with no client). */
    void (*data)(void *arg, const char *p, size_t n);
    /* The answer is complete; units_field: the last value of the
     * configured used-units field among head and trailer, or NULL. */
    void (*complete)(void *arg, int status, const char *units_field);
    /* Right before the last write of the answer to the client. */
    void (*last_write)(void *arg);
    void (*ended)(void *arg, enum proxy_end how);
} proxy_hooks_t;

/* What to send; borrowed for the call, except `client` and `units_header`,
 * which must outlive the exchange (the request's connection and config). */
typedef struct proxy_request {
    h1_conn_t *client;             /* the client's open exchange */
    const cfg_backend_t *backend;
    const char *path;              /* the normalized path */
    const char *request_id, *key_id, *account;
    const char *units_header;      /* the used-units field's name, or NULL */
} proxy_request_t;

/*
 * One backend exchange. Lives inside its user's context (the request),
 * which calls proxy_exchange_init once, proxy_exchange_reset before each
 * use, proxy_release when the request ends and proxy_exchange_destroy
 * before freeing it; every field is proxy.c's.
 * Ownership: `bx` belongs to gateway/http/client.c from hc_request until
 * its end or error callback (which clear it); proxy_release cancels it.
 * `client` is borrowed (NULL once the client is gone); `held` and
 * `held_head` are owned and kept, empty, across resets.
 */
typedef struct proxy_exchange {
    proxy_worker_t *pw;
    const proxy_hooks_t *hooks;
    void *arg;
    h1_conn_t *client;
    const char *units_header;
    struct hc_exchange *bx;
    int backend_status;
    char reason[64];               /* the backend's reason phrase */
    char units_field[32];          /* the used-units field's value (head or trailer) */
    int has_units_field;
    int hold_reply;                /* the head waits for the whole body (one write) */
    int reply_started;             /* the head went to the client */
    int backend_paused;            /* backend not read until the client drains */
    int kept;                      /* on the worker's list of kept exchanges */
    struct proxy_exchange *kept_next, **kept_prev;
    uint64_t bytes_out;            /* body bytes sent to the client */
    struct timespec t_backend;     /* when the request was sent (0: never) */
    int64_t upstream_us;           /* send to end of answer */
    struct evbuffer *held;         /* body that came before its head was sent */
    struct evbuffer *held_head;    /* the backend's fields of a head that waits */
} proxy_exchange_t;

void proxy_worker_init(proxy_worker_t *pw, struct event_base *base);
/* The worker exits: kept exchanges are cut (their `ended` runs), pools freed. */
void proxy_worker_free(proxy_worker_t *pw);

void proxy_exchange_init(proxy_exchange_t *x);
void proxy_exchange_reset(proxy_exchange_t *x);
void proxy_exchange_destroy(proxy_exchange_t *x);

/* Send the request; 0 when it is under way, or -1 with the reason in *why
 * (static text; no hook is called). */
int proxy_start(proxy_exchange_t *x, proxy_worker_t *pw, const proxy_request_t *in,
                const proxy_hooks_t *hooks, void *arg, const char **why);
/* 1 while the backend request is outstanding. */
int proxy_running(const proxy_exchange_t *x);
/* The client left: read the answer to its end without it (`complete` and
 * `ended` still run), on the worker's list of kept exchanges. */
void proxy_keep_without_client(proxy_exchange_t *x);
/* The exchange's user is done with it: cancels the backend request if any
 * (no hook follows), off the kept list, buffers emptied. Idempotent. */
void proxy_release(proxy_exchange_t *x);
/* Body bytes sent to the client so far. */
uint64_t proxy_bytes_out(const proxy_exchange_t *x);
/* Microseconds from sending the request to the end of its answer, or -1
 * when no request was sent. */
int64_t proxy_upstream_us(const proxy_exchange_t *x);

#endif
