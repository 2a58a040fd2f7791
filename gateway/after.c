/*
 * gateway/after.c: what the backend's answer changes in the store.
 *
 *  - reconcile: the endpoint's `reconcile` names where the backend reports
 *    the units it really used (a response header, or a JSON pointer into the
 *    body); the difference to the estimate charged at admission is added to
 *    (or given back from) every units and spend counter of the request.
 *  - job create: the answer of a `job` endpoint carries the job id; the
 *    request's leases are handed over to the job and outlive the request.
 *  - job status: an answer of a job's `status_endpoint` whose status is one
 *    of `done_values` releases that job's leases, whichever instance or
 *    worker took them.
 *
 * Only 2xx answers count. Nothing here owns memory beyond its own calls.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "gateway.h"

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
    return json_loadb((const char *)evbuffer_pullup(r->capture, -1), n, 0, NULL);
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

/* Ids that may name a Redis key and a log line: [A-Za-z0-9_.:-]{1,64}. */
static int job_id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              (*s >= '0' && *s <= '9') || *s == '_' || *s == '.' || *s == ':' || *s == '-'))
            return 0;
    return 1;
}

static int job_id_of(json_t *v, char *out, size_t len)
{
    if (json_is_string(v))
        snprintf(out, len, "%s", json_string_value(v));
    else if (json_is_integer(v))
        snprintf(out, len, "%lld", (long long)json_integer_value(v));
    else
        return -1;
    return job_id_ok(out) ? 0 : -1;
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
    char id[80];
    if (!body || job_id_of(json_pointer_get(body, job->id_pointer), id, sizeof id) != 0) {
        log_msg(LOG_WARN, "request %s: no usable job id at %s in the answer; its lease ends "
                          "with the request",
                r->rid, job->id_pointer);
        return;
    }
    store_job_hold(r->w->store, r->checks, r->n_checks, r->rid, id, job->max_seconds * 1000);
    r->store_sent = 1;
    r->lease_moved = 1;
}

static void job_polled(request_t *r, const cfg_job_t *job, json_t *body)
{
    const char *q = r->req ? h1_query(r->req) : NULL;
    struct evkeyvalq params;
    TAILQ_INIT(&params);
    if (!q || evhttp_parse_query_str(q, &params) != 0)
        return;
    const char *id = evhttp_find_header(&params, job->status_query);
    json_t *st = body ? json_pointer_get(body, job->status_pointer) : NULL;
    if (id && job_id_ok(id) && json_is_string(st)) {
        for (size_t i = 0; i < job->n_done; i++) {
            if (strcmp(json_string_value(st), job->done_values[i]) == 0) {
                store_job_done(r->w->store, id, NULL, NULL);
                r->store_sent = 1;
                break;
            }
        }
    }
    evhttp_clear_headers(&params);
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
