/* gateway/after.h: what a backend's answer changes after the decision:
 * async jobs and reconcile (after.c). */
#ifndef RW_GATEWAY_AFTER_H
#define RW_GATEWAY_AFTER_H

#include <stddef.h>
#include <stdint.h>

#include "request.h"

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

/* stream_include_usage: a JSON request body whose "stream" is true gets
 * "stream_options": {"include_usage": true} (root is the parsed body;
 * body is rewritten only when that changes it). -1 with a message in err
 * when it cannot be rewritten. */
int reconcile_ask_for_usage(struct evbuffer *body, json_t *root, char *err, size_t errlen);

#endif
