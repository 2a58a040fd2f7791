/* gateway/request.h: the life of one client request (request.c): its
 * context and the calls that start one. */
#ifndef RW_GATEWAY_REQUEST_H
#define RW_GATEWAY_REQUEST_H

#include <stdint.h>
#include <time.h>

#include <jansson.h>

#include "../limiter/limits.h"
#include "config/config.h"
#include "path.h"
#include "http/server.h"
#include "proxy.h"
#include "worker.h"

struct evbuffer;
struct reconcile;

enum req_state {
    RQ_NEW = 0,     /* routing, auth */
    RQ_BODY,        /* reading the body of a request that can be served */
    RQ_STORE,       /* waiting for the store's answer */
    RQ_QUEUED,      /* refused, waiting for room (waitq.h) */
    RQ_PROXY,       /* backend request outstanding */
    RQ_DONE
};

/*
 * Request context: one per client request, from the handler to
 * request_finish(), which is the one place it is freed.
 *
 * Ownership: owns `cfg` (a reference), `checks`, the lease (when
 * `admitted`), the open exchange of `req` until it ends it (then `req` is
 * set to NULL; gateway/http/server.h), `usage`, `capture` and `rec`.
 * Borrows `w`. `ep`, `key` and `acct` point into `cfg`. `px` is the
 * backend exchange (proxy.h), which reports back through request.c's
 * hooks. A job create whose client left has no connection any more (`req`
 * NULL): only the proxy's hooks and request_finish touch it, and the
 * worker's list of kept exchanges points at `px` until request_finish.
 */
typedef struct request {
    worker_t *w;
    h1_conn_t *req;     /* the client's connection, exchange open; NULL once ended */
    config_t *cfg;
    const cfg_endpoint_t *ep;
    int ep_index;
    const cfg_key_t *key;
    const cfg_account_t *acct;
    enum req_state state;
    int admitted;       /* holds leases in the store */
    int settled;        /* counted, logged, leases released (request_settle) */
    int store_sent;     /* fire-and-forget store calls made since the decision */
    int client_gone;
    int is_usage;
    json_t *usage;      /* usage answer being built (owned) */
    size_t usage_next;  /* next policy rule to ask the store about */
    int watching;       /* close callback set on the client connection */
    int64_t units, price_micros;
    /* What the access log tells beyond the decision. `model`: the model a
     * body-matching endpoint matched on (borrowed from cfg), NULL when none.
     * `reconciled`: the backend reported `units_used`. */
    const char *model;
    int reconciled;
    int64_t units_used;
    const char *method;  /* static */
    char peer[48];       /* the client's address */
    size_t n_checks;
    lim_report_t rep;
    char rid[40];
    int backend_failed;  /* the exchange ended in an error (cut, timeout) */
    struct evbuffer *capture; /* copy of the answer's body, when needed (owned) */
    int64_t charged_ms;  /* store clock of the admission (for reconcile) */
    int lease_moved;     /* an async job holds the leases now */
    /* A job status request: the store's name of the id it asks about
     * (after.c), "" when it names none. */
    char job_poll[65];
    int status;          /* status sent to the client (0: none) */
    int decision;        /* DEC_* */
    uint32_t shadow_refused; /* admitted: bit i set when shadow check i would
                                have refused (LIM_MAX_CHECKS <= 32) */
    uint64_t bytes_out;  /* body bytes of the gateway's own answer sent */
    /* Per-check state after the decision, kept only when the config asks
     * for the IETF or OpenAI headers (n_state == n_checks then). */
    size_t n_state;
    int64_t state_now_ms;
    int64_t state_remaining[LIM_MAX_CHECKS];
    int64_t state_reset_ms[LIM_MAX_CHECKS];
    struct reconcile *rec; /* reading the answer for used units (owned; after.c) */
    const char *deny_body; /* a 429 answered from the deny cache: its body */
    char **deny_keep;      /* a 429 just kept by the deny cache: its body slot */
    struct timespec t_start;
    int64_t t_sent_us;  /* monotonic us when the decision was asked for */
    /* Waiting for room (an endpoint's queue, waitq.h): the process-wide
     * queue it is in (NULL: none) and its neighbours there (both under
     * waitq.c's mutex), the concurrency counter it waits for as the head
     * (a waitq_hash, 0: none; under that mutex too), its own deadline and
     * its wake-up (owned events: the wake-up is activated by the worker
     * whose waiter leaves the head before it, or gives a slot back), and
     * its neighbours in its worker's list of waiters (worker thread only). */
    struct waitq *wq;
    struct request *wq_next, *wq_prev;
    uint64_t wq_gauge;
    struct event *wq_deadline;
    struct event *wq_wake;
    short wq_mail;                 /* a wake in its worker's mailbox (under mail_mu) */
    struct request *wq_mail_next;  /* in the worker's woken list (under mail_mu) */
    struct request *wl_next, *wl_prev;
    int wq_kick;          /* woken while being decided: decide again at once */
    int wq_slot;          /* woken by a slot given back since its last decision */
    int64_t wq_since_us;  /* monotonic us when it began to wait */
    int wq_expired;       /* its max_wait_ms has passed: no more waiting */
    int waited;           /* it waited: X-RateLimit-Waited-Ms = waited_ms */
    int64_t waited_ms;
    /* Last: only the first n_checks are ever written or read, so a
     * recycled context is cleared only up to here. */
    lim_check_t checks[LIM_MAX_CHECKS];
    char path[PATH_NORMAL_MAX]; /* the normalized path (routed and forwarded) */
    /* The backend exchange (proxy.c's fields; kept, with its buffers, by
     * the recycled context and reset for each request). */
    proxy_exchange_t px;
} request_t;

/* request.c */
void request_start(worker_t *w, h1_conn_t *req);
/* The next X-Request-Id of worker w (its random prefix and a counter, 32
 * hex digits) into out: every request's, and the HTTP layer's own
 * refusals'. */
void request_next_id(worker_t *w, char *out, size_t len);
/* Usage of a key by id, or of an account's account-scope limits (admin). */
void request_usage_start(worker_t *w, h1_conn_t *req, const char *key_id,
                         const char *account);
void request_freelist_clear(void);
/* Drain: every waiting request of w gets its 429 now. */
void request_drain_waiters(worker_t *w);

#endif
