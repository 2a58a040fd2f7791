/*
 * gateway/respond.h: how the gateway's own answers look: error bodies,
 * 429 and 503 answers, usage, and the rate headers of every answer. These
 * render only: fields are added to the connection given, bodies are
 * returned (new references) for the caller to send.
 */
#ifndef RW_GATEWAY_RESPOND_H
#define RW_GATEWAY_RESPOND_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "../limiter/limits.h"
#include "http/server.h"

/* Money in millionths as a decimal string: 2500000 -> "2.50". */
void respond_money(int64_t micros, char *buf, size_t len);

/* The reason phrase of a status the gateway answers with. */
const char *respond_reason(int status);

/* What an answer's rate headers describe; everything borrowed for the call. */
typedef struct respond_rates {
    const lim_report_t *rep;   /* the decision's report; NULL: nothing decided */
    const lim_check_t *checks;
    size_t n_checks;
    /* Per-check state after the decision (RateLimit and x-ratelimit-*),
     * NULL when it was not kept. */
    const int64_t *remaining;
    const int64_t *reset_ms;
    int64_t now_ms;
    int ietf, openai, anthropic; /* which of those headers the config asks for */
    const char *request_id;
} respond_rates_t;
/* X-RateLimit-* (when a decision was made), the optional RateLimit /
 * x-ratelimit-* / anthropic-ratelimit-* headers, X-Request-Id (and with
 * anthropic, request-id). */
void respond_rate_headers(const respond_rates_t *r, h1_conn_t *c);

/* A 503 for an unreachable store: Retry-After fields on c (may be NULL),
 * and its body. */
json_t *respond_unavailable(h1_conn_t *c);
/* A 429: the refusal's fields (Retry-After, X-RateLimit-Type, ...) ... */
void respond_429_headers(const lim_report_t *rep, h1_conn_t *c);
/* ... and its body, for the check the report names. */
json_t *respond_429_body(const lim_report_t *rep, const lim_check_t *checks);

/* One limit of a usage answer: check c and what the store answered for it. */
json_t *respond_usage_limit(const lim_check_t *c, const lim_result_t *res);
/* The usage answer; key_id NULL for an account's; limits stolen. */
json_t *respond_usage_body(const char *account, const char *tier, const char *key_id,
                           json_t *limits);

#endif
