/*
 * gateway/after.c: what the backend's answer changes in the store.
 *
 *  - reconcile: the endpoint's `reconcile` names where the backend reports
 *    the units it really used (a response header or trailer, or JSON
 *    pointers into a JSON answer or into the `data:` events of a
 *    text/event-stream answer, read as they stream by); the difference to
 *    the estimate charged at admission is added to (or given back from)
 *    every units and spend counter of the request. Where the real use
 *    cannot be known, the estimate stays and the miss is counted.
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
 * Only 2xx answers count. The job parts own nothing beyond their own
 * calls; a reconcile's reading state is owned by its request (r->rec).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/sha.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "after.h"
#include "status.h"
#include "log.h"
#include "units.h"
#include "metrics.h"
#include "query.h"

/* The longest job id taken, in bytes. */
#define JOB_ID_MAX 256
#include "sse.h"

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
    return (ep->job && r->n_checks) || job_of_status_endpoint(r->cfg, r->ep_index);
}

static json_t *captured_json(request_t *r)
{
    if (!r->capture || evbuffer_get_length(r->capture) == 0)
        return NULL;
    size_t n = evbuffer_get_length(r->capture);
    /* JSON_ALLOW_NUL: a job id may hold \u0000 (ids are opaque bytes). */
    return json_loadb((const char *)evbuffer_pullup(r->capture, -1), n, JSON_ALLOW_NUL, NULL);
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
    status_job_held(r->acct->name, name, job->max_seconds);
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
            status_job_done(r->acct->name, r->job_poll);
            r->store_sent = 1;
            return;
        }
    }
}

void after_response(request_t *r, int code)
{
    if (code < 200 || code > 299)
        return;
    const cfg_endpoint_t *ep = r->ep;
    const cfg_job_t *status_of = job_of_status_endpoint(r->cfg, r->ep_index);
    int admitted = r->admitted && r->n_checks > 0;
    int job = admitted && ep->job && lim_checks_have_gauge(r->checks, r->n_checks);
    if (!job && !status_of)
        return;
    json_t *body = captured_json(r);
    if (job)
        job_created(r, body);
    if (status_of)
        job_polled(r, status_of, body);
    json_decref(body);
}

/* ---- reconcile ------------------------------------------------------------
 *
 * Begun at the head of a 2xx answer of an admitted request on a reconcile
 * endpoint, fed the body's bytes as they pass to the client, ended when the
 * answer is complete. What is kept is bounded: the pointers' last values,
 * one SSE event (RECONCILE_READ_MAX), or a JSON answer up to
 * RECONCILE_READ_MAX; nothing is delayed on its way to the client.
 */

enum { REC_HEADER = 0, REC_JSON, REC_SSE };

/*
 * Ownership: owned by its request (r->rec), freed by reconcile_abandon()
 * from request_finish(). Holds no reference to anything but its own
 * buffers; the pointers it reads are the endpoint's, in r->cfg.
 */
struct reconcile {
    int mode;            /* REC_* */
    int done;            /* ended: adjusted or counted as missed */
    int too_large;       /* the answer or one of its events was over the bound */
    int invalid;         /* an unreadable JSON object, or an out of range value */
    sse_framer_t sse;    /* REC_SSE */
    struct evbuffer *json; /* REC_JSON: the answer so far (NULL once too large) */
    struct {
        int seen;        /* a non-null value was found */
        int bad;         /* the last value seen was not a usable number */
        int64_t v;       /* the last value seen, in units (capped + 1) */
    } val[RECONCILE_POINTERS_MAX];
};

/* Above the cap: a report no backend can mean. */
#define UNITS_IMPLAUSIBLE (LIM_UNITS_MAX + 1)

/* A non-negative whole number from a header or trailer value. */
static int parse_units(const char *s, int64_t *out)
{
    if (!s)
        return -1;
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s < '0' || *s > '9')
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    while (*end == ' ' || *end == '\t')
        end++;
    if (*end)
        return -1;
    *out = errno == ERANGE || v > LIM_UNITS_MAX ? UNITS_IMPLAUSIBLE : v;
    return 0;
}

/* A non-negative number from a JSON value, rounded up to whole units. */
static int json_units(json_t *v, int64_t *out)
{
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        json_int_t x = json_integer_value(v);
        *out = x > LIM_UNITS_MAX ? UNITS_IMPLAUSIBLE : (int64_t)x;
        return 0;
    }
    if (json_is_real(v) && json_real_value(v) >= 0) {
        double d = json_real_value(v);
        if (d > (double)LIM_UNITS_MAX) {
            *out = UNITS_IMPLAUSIBLE;
        } else {
            *out = (int64_t)d;
            if ((double)*out < d)
                (*out)++;
        }
        return 0;
    }
    return -1;
}

/* Take the pointers' values from one JSON document (an answer or an event).
 * A pointer whose value is absent or null keeps what it had: "no value in
 * this document", as streams mean it. */
static void take_values(request_t *r, json_t *doc)
{
    const cfg_reconcile_t *rc = r->ep->reconcile;
    for (size_t i = 0; i < rc->n_pointers; i++) {
        json_t *v = json_pointer_get(doc, rc->pointers[i]);
        if (!v || json_is_null(v))
            continue;
        r->rec->val[i].seen = 1;
        r->rec->val[i].bad = json_units(v, &r->rec->val[i].v) != 0;
    }
}

static void on_sse_event(void *arg, const char *data, size_t len)
{
    request_t *r = arg;
    size_t i = 0;
    while (i < len && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n'))
        i++;
    if (i == len || data[i] != '{')
        return; /* not a JSON object ("[DONE]", text): nothing to read */
    json_t *doc = json_loadb(data, len, JSON_REJECT_DUPLICATES, NULL);
    if (!doc) {
        r->rec->invalid = 1;
        return;
    }
    take_values(r, doc);
    json_decref(doc);
}

/* Whether a Content-Type names text/event-stream (parameters aside). */
static int is_event_stream(const char *ct)
{
    static const char mt[] = "text/event-stream";
    if (!ct)
        return 0;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    size_t n = sizeof mt - 1;
    return strncasecmp(ct, mt, n) == 0 &&
           (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ' || ct[n] == '\t');
}

void reconcile_begin(request_t *r, int status, const char *content_type)
{
    const cfg_reconcile_t *rc = r->ep ? r->ep->reconcile : NULL;
    if (!rc || r->rec || !r->admitted || r->n_checks == 0 || status < 200 || status > 299)
        return;
    struct reconcile *x = calloc(1, sizeof *x);
    if (!x) {
        log_msg(LOG_WARN, "request %s: out of memory: its estimate stays", r->rid);
        return;
    }
    r->rec = x;
    if (rc->response_header) {
        x->mode = REC_HEADER;
    } else if (is_event_stream(content_type)) {
        x->mode = REC_SSE;
        sse_init(&x->sse, RECONCILE_READ_MAX, on_sse_event, r);
    } else {
        x->mode = REC_JSON;
        x->json = evbuffer_new();
        if (!x->json)
            x->too_large = 1;
    }
}

int reconcile_holds_head(const request_t *r, int64_t content_length)
{
    return r->rec && r->rec->mode == REC_JSON && content_length >= 0 &&
           content_length <= RECONCILE_READ_MAX;
}

void reconcile_feed(request_t *r, const char *p, size_t n)
{
    struct reconcile *x = r->rec;
    if (!x || x->done || n == 0)
        return;
    if (x->mode == REC_SSE) {
        if (!x->sse.failed && sse_feed(&x->sse, p, n) != 0)
            x->too_large = 1; /* out of memory for one event: unreadable */
    } else if (x->mode == REC_JSON && x->json) {
        if (evbuffer_get_length(x->json) + n > RECONCILE_READ_MAX) {
            evbuffer_free(x->json);
            x->json = NULL;
            x->too_large = 1;
        } else if (evbuffer_add(x->json, p, n) != 0) {
            evbuffer_free(x->json);
            x->json = NULL;
            x->too_large = 1;
        }
    }
}

static const char *const reason_name[] = {"client_gone", "cut", "no_usage", "too_large",
                                          "invalid"};
enum { MISS_CLIENT_GONE = 0, MISS_CUT, MISS_NO_USAGE, MISS_TOO_LARGE, MISS_INVALID };

/* Count and log a reconcile whose real use is not known. level: -1 for the
 * reason's own (debug for what clients and configs do every day, info for
 * what a backend got wrong). */
static void missed_at(request_t *r, int why, const char *detail, int level)
{
    metrics_reconcile_missed(r->cfg->generation, r->ep ? r->ep->name : "_none", reason_name[why]);
    if (level < 0)
        level = why == MISS_CLIENT_GONE || why == MISS_NO_USAGE ? LOG_DEBUG : LOG_INFO;
    log_msg(level, "request %s: endpoint %s: used units not known (%s%s%s): the estimate of "
                   "%lld stays",
            r->rid, r->ep->name, reason_name[why], detail ? ": " : "", detail ? detail : "",
            (long long)r->units);
}

static void missed(request_t *r, int why, const char *detail)
{
    missed_at(r, why, detail, -1);
}

/* After a reconcile: the remaining amounts the answer's head shows, from
 * the counters as this request left them. */
static void update_remaining(request_t *r, const int64_t *deltas)
{
    if (r->n_state != r->n_checks)
        return;
    lim_outcome_t o;
    memset(&o, 0, sizeof o);
    o.admitted = 1;
    o.now_ms = r->state_now_ms;
    for (size_t i = 0; i < r->n_checks; i++) {
        const lim_check_t *c = &r->checks[i];
        int64_t rem = r->state_remaining[i] - deltas[i];
        if (rem < 0)
            rem = 0;
        if (rem > c->limit)
            rem = c->limit;
        r->state_remaining[i] = rem;
        o.res[i].ok = 1;
        o.res[i].used = c->limit - rem - c->amount;
        o.res[i].reset_ms = r->state_reset_ms[i];
    }
    lim_report(r->checks, r->n_checks, &o, &r->rep);
}

static void apply(request_t *r, int64_t actual)
{
    r->reconciled = 1;
    r->units_used = actual;
    int64_t d_units = actual - r->units;
    if (d_units == 0)
        return;
    /* The spend delta is the price of the used units minus what was
     * charged, both with the cap the admission used. */
    int64_t d_spend = price_of(r->ep, actual) - r->price_micros;
    int64_t deltas[LIM_MAX_CHECKS];
    int any = 0;
    for (size_t i = 0; i < r->n_checks; i++) {
        lim_metric_t m = r->checks[i].rule->metric;
        deltas[i] = m == LIM_UNITS ? d_units : m == LIM_SPEND ? d_spend : 0;
        any |= deltas[i] != 0;
    }
    if (!any)
        return;
    store_adjust(r->w->store, r->checks, r->n_checks, deltas, r->charged_ms);
    r->store_sent = 1;
    update_remaining(r, deltas);
    log_msg(LOG_DEBUG, "request %s: reconciled %lld units (estimate %lld)", r->rid,
            (long long)actual, (long long)r->units);
}

void reconcile_end(request_t *r, const char *header_value)
{
    struct reconcile *x = r->rec;
    if (!x || x->done)
        return;
    x->done = 1;
    const cfg_reconcile_t *rc = r->ep->reconcile;
    int64_t actual = 0;
    if (x->mode == REC_HEADER) {
        if (!header_value) {
            missed(r, MISS_NO_USAGE, rc->response_header);
            return;
        }
        if (parse_units(header_value, &actual) != 0) {
            missed(r, MISS_INVALID, "not a whole number");
            return;
        }
    } else {
        if (x->mode == REC_SSE && x->sse.oversized)
            x->too_large = 1;
        if (x->too_large) {
            missed(r, MISS_TOO_LARGE, NULL);
            return;
        }
        if (x->mode == REC_JSON) {
            size_t n = evbuffer_get_length(x->json);
            if (n == 0) {
                missed(r, MISS_NO_USAGE, "empty answer");
                return;
            }
            json_t *doc = json_loadb((const char *)evbuffer_pullup(x->json, -1), n,
                                     JSON_REJECT_DUPLICATES, NULL);
            evbuffer_free(x->json);
            x->json = NULL;
            if (!doc) {
                missed(r, MISS_INVALID, "the answer is not JSON");
                return;
            }
            take_values(r, doc);
            json_decref(doc);
        }
        if (x->invalid) {
            missed(r, MISS_INVALID, "an event is not readable JSON");
            return;
        }
        for (size_t i = 0; i < rc->n_pointers; i++) {
            if (!x->val[i].seen) {
                missed(r, MISS_NO_USAGE, rc->pointers[i]);
                return;
            }
            if (x->val[i].bad) {
                missed(r, MISS_INVALID, "not a number of 0 or more");
                return;
            }
            actual += x->val[i].v;
        }
    }
    if (actual > LIM_UNITS_MAX) {
        /* A backend bug must not lock a tenant out for a month. */
        missed_at(r, MISS_INVALID, "over the cap of 2^40 units, not plausible", LOG_WARN);
        return;
    }
    apply(r, actual);
}

void reconcile_abandon(request_t *r)
{
    struct reconcile *x = r->rec;
    if (!x)
        return;
    if (!x->done) {
        x->done = 1;
        missed(r, r->backend_failed ? MISS_CUT : r->client_gone ? MISS_CLIENT_GONE : MISS_CUT,
               NULL);
    }
    if (x->mode == REC_SSE)
        sse_free(&x->sse);
    if (x->json)
        evbuffer_free(x->json);
    free(x);
    r->rec = NULL;
}

/* stream_include_usage: a JSON body whose "stream" is true gets
 * "stream_options": {"include_usage": true} (merged into an existing
 * stream_options object), so that an OpenAI-compatible backend ends its
 * stream with the usage chunk. The body is rewritten (compact JSON) only
 * when that changes it; root is the body already parsed (borrowed, and
 * changed). Returns -1 with a message when it cannot be rewritten. */
int reconcile_ask_for_usage(struct evbuffer *body, json_t *root, char *err, size_t errlen)
{
    size_t len = evbuffer_get_length(body);
    int rc = 0;
    if (json_is_object(root) && json_is_true(json_object_get(root, "stream"))) {
        json_t *so = json_object_get(root, "stream_options");
        if (!json_is_object(so) || !json_is_true(json_object_get(so, "include_usage"))) {
            if (!json_is_object(so)) {
                so = json_object();
                json_object_set_new(root, "stream_options", so);
            }
            json_object_set_new(so, "include_usage", json_true());
            char *text = json_dumps(root, JSON_COMPACT);
            if (!text) {
                snprintf(err, errlen, "The request body could not be rewritten.");
                rc = -1;
            } else {
                evbuffer_drain(body, len);
                evbuffer_add(body, text, strlen(text));
                free(text);
            }
        }
    }
    return rc;
}
