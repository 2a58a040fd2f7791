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
struct request;

/* Everything about a finished request, counted and logged once, from
 * request_finish(). */
void metrics_request_done(const struct request *r);
/* A decision from the store (or the deny cache): latency in microseconds,
 * -1 when the store was not asked. */
void metrics_store_latency(int64_t us);
void metrics_reload(int ok);
void metrics_lease(int delta);
/* A job create answered 2xx with no usable job id (rare: no cache). */
void metrics_job_id_unusable(const char *endpoint);
/* A reconcile whose real use could not be known (the estimate stayed):
 * reason is client_gone, cut, no_usage, too_large or invalid (static). */
void metrics_reconcile_missed(const struct request *r, const char *reason);
/* Write every series; `extra` lines (store-specific) are appended. */
void metrics_write(struct evbuffer *out);

/* Access log: one JSON line per request to FILE ("-" for stdout), written
 * by a thread of its own so that no worker ever waits on I/O. Lines that do
 * not fit in the queue are dropped and counted. */
int access_log_open(const char *path);
void access_log_close(void);

#endif
