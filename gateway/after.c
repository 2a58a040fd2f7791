/*
 * gateway/after.c: what the backend's answer changes in the store.
 *
 *  - reconcile: the endpoint's `reconcile` names where the backend reports
 *    the units it really used (a response header, or a JSON pointer into the
 *    body); the difference to the estimate charged at admission is added to
 *    (or given back from) every units and spend counter of the request.
 *  - job create: the answer of a `job` endpoint carries the job id; the
 *    request's leases are handed over to the job of the key's account and
 *    outlive the request. An id that cannot be used (absent, not a string
 *    or number, empty, over JOB_ID_MAX bytes) still keeps them, until the
 *    job's max_seconds: the backend may well be running the job.
 *  - job status: an answer of a job's `status_endpoint` whose status is one
 *    of `done_values` releases the leases that the polling key's account
 *    holds for that id, whichever instance or worker took them. The id is
 *    read from the query as backends read it (gateway/query.h), before
 *    the request is sent (after_read_poll).
 *
 * Job ids are opaque bytes: the store knows one only by its SHA-256 (hex),
 * and a log line never shows it.
 *
 * Only 2xx answers count. Nothing here owns memory beyond its own calls.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "gateway.h"
#include "metrics.h"
#include "query.h"

/* The longest job id taken, in bytes. */
#define JOB_ID_MAX 256

/* The job whose status endpoint is ep_index, if any. */
static const cfg_job_t *job_of_status_endpoint(const config_t *c, int ep_index)
{
    for (size_t i = 0; i < c->n_endpoints; i++)
        if (c->endpoints[i].job && (int)c->endpoints[i].job->status_ep == ep_index)
            return c->endpoints[i].job;
    return NULL;
}

int after_needs_body(const request_t *r)
{
    const cfg_endpoint_t *ep = r->ep;
    return (ep->reconcile && ep->reconcile->response_pointer && r->n_checks) ||
           (ep->job && r->n_checks) || job_of_status_endpoint(r->cfg, r->ep_index);
}

static json_t *captured_json(request_t *r)
{
    if (!r->capture || evbuffer_get_length(r->capture) == 0)
        return NULL;
    size_t n = evbuffer_get_length(r->capture);
    /* JSON_ALLOW_NUL: a job id may hold \u0000 (ids are opaque bytes). */
    return json_loadb((const char *)evbuffer_pullup(r->capture, -1), n, JSON_ALLOW_NUL, NULL);
}

/* A non-negative whole number from a header value or a JSON value. */
static int parse_units(const char *s, int64_t *out)
{
    if (!s)
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    while (*end == ' ')
        end++;
    if (errno || end == s || *end || v < 0)
        return -1;
    *out = v;
    return 0;
}

static int json_units(json_t *v, int64_t *out)
{
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        *out = json_integer_value(v);
        return 0;
    }
    if (json_is_real(v) && json_real_value(v) >= 0 && json_real_value(v) < 1e15) {
        double d = json_real_value(v);
        *out = (int64_t)d + ((double)(int64_t)d < d);
        return 0;
    }
    return -1;
}

void after_job_name(const char *id, size_t len, char out[65])
{
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)id, len, d);
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* A number as its id text: an integer in decimal, another number in the
 * shortest form that reads back the same (as JavaScript and Python print
 * it). */
static size_t number_id(json_t *v, char *out, size_t len)
{
    if (json_is_integer(v))
        return (size_t)snprintf(out, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    double d = json_real_value(v);
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, len, "%.*g", prec, d);
        if (strtod(out, NULL) == d)
            break;
    }
    return strlen(out);
}

/* The job id of a create answer, as bytes (into buf, or borrowed from v);
 * NULL with *why when it cannot be used. */
static const char *job_id_of(json_t *v, char *buf, size_t buflen, size_t *len,
                             const char **why)
{
    const char *id;
    if (json_is_string(v)) {
        id = json_string_value(v);
        *len = json_string_length(v);
    } else if (json_is_number(v)) {
        *len = number_id(v, buf, buflen);
        id = buf;
    } else {
        *why = v ? "not a string or a number" : "absent";
        return NULL;
    }
    if (*len == 0) {
        *why = "empty";
        return NULL;
    }
    if (*len > JOB_ID_MAX) {
        *why = "longer than 256 bytes";
        return NULL;
    }
    return id;
}

static void reconcile(request_t *r, json_t *body)
{
    const cfg_reconcile_t *rc = r->ep->reconcile;
    int64_t actual;
    int got;
    if (rc->response_header)
        got = parse_units(r->has_units_field ? r->units_field : NULL, &actual);
    else
        got = body ? json_units(json_pointer_get(body, rc->response_pointer), &actual) : -1;
    if (got != 0) {
        log_msg(LOG_DEBUG, "request %s: no used units in the answer; the estimate stays",
                r->rid);
        return;
    }
    /* Far above any limit. */
    const int64_t units_max = LIM_UNITS_MAX;
    if (actual > units_max)
        actual = units_max;
    int64_t d_units = actual - r->units;
    if (d_units == 0)
        return;
    /* The spend delta is the price of the used units minus what was
     * charged, both with the cap the admission used. */
    int64_t actual_price = price_of(r->ep, actual);
    int64_t d_spend = actual_price - r->price_micros;
    int64_t deltas[LIM_MAX_CHECKS];
    int any = 0;
    for (size_t i = 0; i < r->n_checks; i++) {
        lim_metric_t m = r->checks[i].rule->metric;
        deltas[i] = m == LIM_UNITS ? d_units : m == LIM_SPEND ? d_spend : 0;
        any |= deltas[i] != 0;
    }
    if (any) {
        store_adjust(r->w->store, r->checks, r->n_checks, deltas, r->charged_ms);
        r->store_sent = 1;
    }
}

static void job_created(request_t *r, json_t *body)
{
    const cfg_job_t *job = r->ep->job;
    char buf[64], name[65];
    size_t len = 0;
    const char *why = "absent";
    const char *id = body ? job_id_of(json_pointer_get(body, job->id_pointer), buf,
                                      sizeof buf, &len, &why)
                          : NULL;
    if (!body && r->capture)
        why = "the answer is not JSON";
    else if (!body)
        why = "the answer is too large to read";
    if (id) {
        after_job_name(id, len, name);
    } else {
        /* No poll can name it: held under a name of its own until
         * max_seconds, when the store gives the leases back. */
        snprintf(name, sizeof name, "unusable-%s", r->rid);
        metrics_job_id_unusable(r->ep->name);
        log_msg(LOG_WARN,
                "request %s: endpoint %s: the job id at %s in the answer cannot be used "
                "(%s); the job's leases are held until max_seconds (%lld s)",
                r->rid, r->ep->name, job->id_pointer, why, (long long)job->max_seconds);
    }
    store_job_hold(r->w->store, r->checks, r->n_checks, r->rid, r->acct->name, name,
                   job->max_seconds * 1000);
    r->store_sent = 1;
    r->lease_moved = 1;
}

int after_read_poll(request_t *r, const char **param)
{
    const cfg_job_t *job = job_of_status_endpoint(r->cfg, r->ep_index);
    r->job_poll[0] = '\0';
    if (!job || !r->req)
        return 0;
    char id[JOB_ID_MAX + 1];
    size_t len;
    int n = query_param(h1_query(r->req), job->status_query, id, sizeof id, &len);
    if (n > 1) {
        *param = job->status_query;
        return -1;
    }
    if (n == 1 && len > 0 && len <= JOB_ID_MAX)
        after_job_name(id, len, r->job_poll);
    return 0;
}

static void job_polled(request_t *r, const cfg_job_t *job, json_t *body)
{
    json_t *st = body ? json_pointer_get(body, job->status_pointer) : NULL;
    if (!r->job_poll[0] || !r->acct || !json_is_string(st))
        return;
    for (size_t i = 0; i < job->n_done; i++) {
        if (strcmp(json_string_value(st), job->done_values[i]) == 0) {
            store_job_done(r->w->store, r->acct->name, r->job_poll, NULL, NULL);
            r->store_sent = 1;
            return;
        }
    }
}

void after_response(request_t *r)
{
    int code = r->backend_status;
    if (code < 200 || code > 299)
        return;
    const cfg_endpoint_t *ep = r->ep;
    const cfg_job_t *status_of = job_of_status_endpoint(r->cfg, r->ep_index);
    int admitted = r->admitted && r->n_checks > 0;
    if (!(admitted && (ep->reconcile || (ep->job && lim_checks_have_gauge(r->checks, r->n_checks)))) && !status_of)
        return;
    json_t *body = captured_json(r);
    if (admitted && ep->reconcile)
        reconcile(r, body);
    if (admitted && ep->job && lim_checks_have_gauge(r->checks, r->n_checks))
        job_created(r, body);
    if (status_of)
        job_polled(r, status_of, body);
    json_decref(body);
}
