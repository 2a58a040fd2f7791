/*
 * gateway/metrics.h: process-wide counters for /metrics (Prometheus text
 * exposition format) and the JSON access log. Counters are atomics; series
 * with labels live in a table that only grows (bounded by endpoints x
 * statuses and limits x outcomes of the configs loaded).
 */
#ifndef RW_GATEWAY_METRICS_H
#define RW_GATEWAY_METRICS_H

#include <stdint.h>

struct evbuffer;

/* What the limiter decided, for metrics and the access log. */
enum { DEC_NONE = 0, DEC_ADMITTED, DEC_REFUSED, DEC_CACHED, DEC_UNAVAILABLE, DEC_UNLIMITED };

/* Everything about a finished request that is counted and logged; the
 * strings are borrowed for the call. The endpoint and limit names belong
 * to the config snapshot of `generation` (labels are cached by pointer). */
typedef struct metrics_request {
    uint64_t generation;
    const char *endpoint;       /* its name, "_usage" or "_none" */
    int status;                 /* sent to the client (0: none) */
    int decision;               /* DEC_* */
    const char *limit;          /* the refusing limit's identity, or NULL */
    /* Admitted: the identities of the shadow limits that would have
     * refused (counted as outcome "shadow_refused", logged as a list). */
    const char *const *shadow_refused;
    size_t n_shadow_refused;
    int64_t waited_ms;          /* waited for room (an endpoint's queue); -1: did not */
    const char *request_id;
    const char *key_id, *account; /* NULL when unknown */
    const char *method, *path, *client;
    const char *model;          /* NULL unless an endpoint matched on one */
    int64_t units_charged;      /* at admission; 0 when nothing was charged */
    int64_t units_reconciled;   /* what the backend reported; -1: not reconciled */
    int64_t spend_micros;       /* charged in the end (after reconcile) */
    uint64_t bytes_out;         /* body bytes sent to the client */
    int64_t upstream_us;        /* backend: send to end of answer; -1: never sent */
    int64_t total_us;           /* since the request arrived */
} metrics_request_t;

/* A finished request, counted and logged once. */
void metrics_request_done(const metrics_request_t *m);
/* A decision from the store (or the deny cache): latency in microseconds,
 * -1 when the store was not asked. */
void metrics_store_latency(int64_t us);
void metrics_reload(int ok);
void metrics_lease(int delta);
/* Leases held now for requests in flight on this instance. */
long metrics_leases_held(void);
/* A request began (+1) or stopped (-1) waiting for room. */
void metrics_waiting(int delta);
/* A request context began (+1) or ended (-1) on this instance. */
void metrics_in_flight(int delta);
/* Jobs this instance holds leases for (the status page's count). */
void metrics_jobs_held(long n);
/* A job create answered 2xx with no usable job id (rare: no cache). */
void metrics_job_id_unusable(const char *endpoint);
/* A reconcile whose real use could not be known (the estimate stayed):
 * reason is client_gone, cut, no_usage, too_large or invalid (static);
 * endpoint is a name of the config snapshot of generation. */
void metrics_reconcile_missed(uint64_t generation, const char *endpoint, const char *reason);
/* Write every series. */
void metrics_write(struct evbuffer *out);

/* Access log: one JSON line per request to FILE ("-" for stdout), written
 * by a thread of its own so that no worker ever waits on I/O. Lines that do
 * not fit in the queue are dropped and counted. */
int access_log_open(const char *path);
void access_log_close(void);

#endif
