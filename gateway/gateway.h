/*
 * gateway/gateway.h: the process-wide pieces shared by gateway/ files:
 * workers, the request context, and the functions that move a request along.
 */
#ifndef RW_GATEWAY_GATEWAY_H
#define RW_GATEWAY_GATEWAY_H

#include <stdatomic.h>
#include <stdint.h>
#include <pthread.h>
#include <stdio.h>

#include <event2/event.h>
#include <jansson.h>
#include <time.h>

#include "../limiter/deny.h"
#include "../limiter/limits.h"
#include "../storage/store.h"
#include "config/config.h"
#include "h1.h"

struct proxy_pool;

/*
 * One worker thread. Owns its event_base, its HTTP server (h1.c) on a
 * SO_REUSEPORT listener, its backend connection pools and its store
 * connection. Only `pending_cfg` and `stop_ev`/`reload_ev` are touched by
 * other threads.
 */
typedef struct worker {
    int index;
    pthread_t thread;
    struct event_base *base;
    h1_server_t *http;             /* the public listener (gateway/h1.c) */
    h1_server_t *admin;            /* worker 0 only, when configured */
    store_worker_t *store;
    config_t *cfg;                 /* this worker's reference */
    _Atomic(config_t *) pending_cfg; /* handed over by the main thread */
    struct event *reload_ev;       /* activated by the main thread */
    struct event *stop_ev;
    struct event *exit_notify;     /* the main thread's: activated on exit */
    atomic_int exited;             /* set before exit_notify is activated */
    struct proxy_pool *pools;      /* backend keep-alive pools, by address */
    lim_deny_t deny;               /* local deny cache (limiter/deny.h) */
    int draining;
    struct timespec drain_deadline;
    /* Touched by the worker's own thread only. */
    int inflight;   /* request contexts alive */
    /* X-Request-Id: random per-worker prefix + counter. */
    char rid_prefix[17];
    uint64_t rid_next;
} worker_t;

/* What the limiter decided, for metrics and the access log. */
enum { DEC_NONE = 0, DEC_ADMITTED, DEC_REFUSED, DEC_CACHED, DEC_UNAVAILABLE, DEC_UNLIMITED };

enum req_state {
    RQ_NEW = 0,     /* routing, auth */
    RQ_BODY,        /* reading the body of a request that can be served */
    RQ_STORE,       /* waiting for the store's answer */
    RQ_PROXY,       /* backend request outstanding */
    RQ_DONE
};

/*
 * Request context: one per client request, from the handler to
 * request_finish(), which is the one place it is freed.
 *
 * Ownership: owns `cfg` (a reference), `checks`, the lease (when
 * `admitted`), the open exchange of `req` until it ends it (then `req` is
 * set to NULL; gateway/h1.h).
 * Borrows `w`. `ep` and `key` point into `cfg`. The backend exchange `bx`
 * is client.c's; r only points at it while it runs (gateway/proxy.c). A
 * job create whose client left (`keep_backend`) has no connection any more
 * (`req` NULL): only the backend's callbacks and request_finish touch it,
 * and proxy.c's list of kept requests points at it until request_finish.
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
    int reply_started;  /* status line sent to the client */
    int is_usage;
    json_t *usage;      /* usage answer being built (owned) */
    size_t usage_next;  /* next policy rule to ask the store about */
    int watching;       /* close callback set on the client connection */
    int64_t units, price_micros;
    size_t n_checks;
    lim_report_t rep;
    char rid[40];
    /* proxy */
    struct hc_exchange *bx; /* the backend exchange while it runs (gateway/http/client.h) */
    int backend_status;
    char reason[64];     /* the backend's reason phrase */
    char units_field[32]; /* reconcile.response_header's value (head or trailer) */
    int has_units_field;
    int hold_reply;      /* the head waits for the whole body (one write) */
    int backend_failed;  /* the exchange ended in an error (cut, timeout) */
    struct evbuffer *capture; /* copy of the answer's body, when needed (owned) */
    int64_t charged_ms;  /* store clock of the admission (for reconcile) */
    int lease_moved;     /* an async job holds the leases now */
    /* A job create whose client left: the answer is still read to its end
     * (for the job id), with no client to send it to; the request is on
     * its worker's list of such (proxy.c) until request_finish. */
    int keep_backend;
    struct request *kept_next, **kept_prev;
    /* A job status request: the store's name of the id it asks about
     * (after.c), "" when it names none. */
    char job_poll[65];
    int status;          /* status sent to the client (0: none) */
    int decision;        /* DEC_* */
    uint64_t bytes_out;  /* body bytes sent to the client */
    struct timespec t_backend; /* when the backend request was sent (0: never) */
    int64_t upstream_us; /* backend: send to end of answer */
    /* Per-check state after the decision, kept only when the config asks
     * for the IETF or OpenAI headers (n_state == n_checks then). */
    size_t n_state;
    int64_t state_now_ms;
    int64_t state_remaining[LIM_MAX_CHECKS];
    int64_t state_reset_ms[LIM_MAX_CHECKS];
    int backend_paused;  /* backend not read until the client drains */
    struct reconcile *rec; /* reading the answer for used units (owned; after.c) */
    const char *deny_body; /* a 429 answered from the deny cache: its body */
    char **deny_keep;      /* a 429 just kept by the deny cache: its body slot */
    struct timespec t_start;
    int64_t t_sent_us;  /* monotonic us when the decision was asked for */
    /* Last: only the first n_checks are ever written or read, so a
     * recycled context is cleared only up to here. */
    lim_check_t checks[LIM_MAX_CHECKS];
    char path[2048];     /* the normalized path (routed and forwarded) */
    /* Body that came before its head was sent (owned; kept, empty, with
     * the recycled context; freed with it). */
    struct evbuffer *held;
    /* The backend's fields of an answer whose head waits (owned; proxy.c;
     * kept like `held`). */
    struct evbuffer *held_head;
} request_t;

/* request.c */
void request_start(worker_t *w, h1_conn_t *req);
/* Usage of a key by id, or of an account's account-scope limits (admin). */
void request_usage_start(worker_t *w, h1_conn_t *req, const char *key_id,
                         const char *account);
/* The one place a request ends: settles it (below) if that was not done,
 * frees everything. */
void request_finish(request_t *r);
/* Count and log the request and release its leases, right before its last
 * write: a client that has its answer finds its slot free and its line in
 * the access log. Idempotent; request_finish still follows. */
void request_settle(request_t *r);
void request_freelist_clear(void);
extern int deny_cache_on;
/* Hear of a client that goes away while its request is served. */
void request_watch_client(request_t *r);
/* Before the last write of an answer: stop watching. */
void request_unwatch_client(request_t *r);

/* units.c: the request's units from its JSON body. Returns 0 and sets
 * *units, or -1 with a message for a 400 INVALID_BODY. */
int units_from_body(const cfg_endpoint_t *ep, const char *body, size_t len,
                    int64_t *units, char *err, size_t errlen);
/* A request's price in millionths for its units: per_request + per_unit x
 * units, saturating far above any cap. */
int64_t price_of(const cfg_endpoint_t *ep, int64_t units);
/* The value at an RFC 6901 pointer in root (borrowed), or NULL. */
json_t *json_pointer_get(json_t *root, const char *ptr);

/* after.c: what an answer from the backend changes: hand leases over to an
 * async job, release a job that is done. Called once per complete backend
 * answer (status code), before it is ended. */
void after_response(request_t *r, int code);
/* 1 if the body of this request's answer must be kept for after_response. */
int after_needs_body(const request_t *r);
/* Before anything is sent: a job status request reads the id it asks
 * about. -1 when it names it more than once (a 400 INVALID_REQUEST), with
 * *param the parameter's name (borrowed from the config). */
int after_read_poll(request_t *r, const char **param);
/* The store's name of a job id (its bytes): SHA-256 in hex. */
void after_job_name(const char *id, size_t len, char out[65]);

/* after.c, reconcile: the units a backend reports it used replace the
 * estimate. The proxy hands over values, never its HTTP objects. */
/* An answer's JSON document or SSE event is read up to this many bytes. */
#define RECONCILE_READ_MAX (1024 * 1024)
/* At the head of an answer: starts reading it when it is to be reconciled
 * (r->rec set). content_type: the answer's, or NULL. */
void reconcile_begin(request_t *r, int status, const char *content_type);
/* 1 when the head should wait for the whole body (a JSON answer of known
 * length within the bound), so that it shows the reconciled counts. */
int reconcile_holds_head(const request_t *r, int64_t content_length);
/* Body bytes, as they pass to the client. */
void reconcile_feed(request_t *r, const char *p, size_t n);
/* The answer is complete; header_value: the last value of the endpoint's
 * response_header among the head's and the trailer's fields, or NULL.
 * Adjusts the counters, or counts why it cannot. */
void reconcile_end(request_t *r, const char *header_value);
/* From request_finish: an answer that never ended (client gone, stream
 * cut) is counted as missed; frees r->rec. */
void reconcile_abandon(request_t *r);

/* respond.c: every reply that is not a proxied response. Each one ends the
 * request (calls request_finish); `details` is stolen, may be NULL. */

void respond_error(request_t *r, int status, const char *type,
                   const char *code, const char *message, json_t *details);
void respond_json(request_t *r, int status, json_t *body);
void respond_429(request_t *r);
void respond_unavailable(request_t *r);
/* details.endpoints of a limit: its endpoint names, ["*"] for all. */
json_t *respond_endpoints_json(const lim_rule_t *rule);
/* An amount of rule's metric for a body: money (millionths) as a decimal
 * string such as "5.00", anything else as an integer. */
json_t *respond_amount_json(const lim_rule_t *rule, int64_t v);
/* Add X-RateLimit-* (when a decision was made) and X-Request-Id to the
 * answer of c. */
void respond_rate_headers(const request_t *r, h1_conn_t *c);

/* proxy.c */
void proxy_start(request_t *r);
/* Abort the backend request of r, if any (no callback will follow). */
void proxy_abort(request_t *r);
/* The client of a job create left: keep reading the backend's answer
 * without it (after_response still runs), then finish. */
void proxy_keep_without_client(request_t *r);
/* request_finish: off the list of requests kept without a client. */
void proxy_forget_kept(request_t *r);
void proxy_pools_free(worker_t *w);

/* log.c */
#define LINELOG_QUEUE 8192
/* Lines written by a thread of its own; put() never waits on I/O. */
typedef struct linelog {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    char *q[LINELOG_QUEUE]; /* owned lines */
    size_t head, n;
    FILE *out;              /* borrowed */
    int stop, open;
} linelog_t;
int linelog_open(linelog_t *l, FILE *out);
/* Takes line (malloc'd); -1 when the queue is full and the line dropped. */
int linelog_put(linelog_t *l, char *line);
void linelog_close(linelog_t *l);
void log_start(void);
void log_stop(void);
enum { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };
extern int log_level;
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
