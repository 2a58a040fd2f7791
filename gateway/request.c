/*
 * gateway/request.c: the life of one client request.
 *
 *   request_start: route (404) -> key (401/403) -> body (413/400)
 *     -> a route told apart by a body field: its endpoint (404)
 *     -> checks -> store acquire            [state RQ_STORE]
 *   on_acquire: 503 | 429 | proxy_start     [state RQ_PROXY]
 *   request_finish: the one place a request ends, whichever way.
 *
 * A client that goes away is seen by on_client_close(): it marks the
 * request, aborts the backend call, and lets request_finish() run after the
 * connection's teardown has unwound. A job create holding leases is the
 * exception: its backend call goes on without the client (the job may
 * exist by now), and its answer still hands the leases over to the job.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "auth.h"
#include "errjson.h"
#include "after.h"
#include "log.h"
#include "path.h"
#include "request.h"
#include "units.h"
#include "metrics.h"
#include "respond.h"
#include "status.h"
#include "waitq.h"

#include <stddef.h>

/* The one place a request ends: settles it (below) if that was not done,
 * frees everything. */
static void request_finish(request_t *r);
/* Count and log the request and release its leases, right before its last
 * write: a client that has its answer finds its slot free and its line in
 * the access log. Idempotent; request_finish still follows. */
static void request_settle(request_t *r);
/* Hear of a client that goes away while its request is served. */
static void request_watch_client(request_t *r);
/* Before the last write of an answer: stop watching. */
static void request_unwatch_client(request_t *r);

/* Request contexts are recycled per worker: no allocation per request once
 * warm. The free list belongs to the worker's thread. */
#define FREELIST_MAX 256
static __thread request_t *freelist[FREELIST_MAX];
static __thread int n_free;

static request_t *request_alloc(void)
{
    request_t *r;
    if (n_free > 0) {
        r = freelist[--n_free];
    } else {
        r = malloc(sizeof *r);
        if (!r)
            return NULL;
        proxy_exchange_init(&r->px);
    }
    /* Everything before the checks array is state; the checks are written
     * by lim_build_checks before they are read. */
    memset(r, 0, offsetof(request_t, checks));
    proxy_exchange_reset(&r->px);
    return r;
}

static void request_destroy(request_t *r)
{
    proxy_exchange_destroy(&r->px);
    free(r);
}

static void request_free(request_t *r)
{
    if (n_free < FREELIST_MAX)
        freelist[n_free++] = r;
    else
        request_destroy(r);
}

void request_freelist_clear(void)
{
    while (n_free > 0)
        request_destroy(freelist[--n_free]);
}

static unsigned method_bit(enum h1_method t)
{
    switch (t) {
    case H1_GET: return CFG_M_GET;
    case H1_POST: return CFG_M_POST;
    case H1_PUT: return CFG_M_PUT;
    case H1_DELETE: return CFG_M_DELETE;
    case H1_PATCH: return CFG_M_PATCH;
    case H1_HEAD: return CFG_M_HEAD;
    case H1_OPTIONS: return CFG_M_OPTIONS;
    }
    return 0;
}

static int64_t us_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)(now.tv_sec - t0->tv_sec) * 1000000 + (now.tv_nsec - t0->tv_nsec) / 1000;
}


static void count_and_log(const request_t *r)
{
    const char *limit = NULL;
    if ((r->decision == DEC_REFUSED || r->decision == DEC_CACHED) && r->rep.refused >= 0)
        limit = r->checks[r->rep.refused].rule->ident;
    /* Charged: what an admitted request's decision counted, replaced by
     * what the backend reported when it was reconciled. */
    int charged = (r->decision == DEC_ADMITTED || r->decision == DEC_UNLIMITED) && r->ep &&
                  !r->is_usage;
    int64_t spend = 0;
    if (charged)
        spend = r->reconciled ? price_of(r->ep, r->units_used) : r->price_micros;
    const char *shadow[LIM_MAX_CHECKS];
    size_t n_shadow = 0;
    for (size_t i = 0; i < r->n_checks && r->shadow_refused; i++)
        if (r->shadow_refused & (UINT32_C(1) << i))
            shadow[n_shadow++] = r->checks[i].rule->ident;
    metrics_request_t m = {
        .generation = r->cfg->generation,
        .endpoint = r->ep ? r->ep->name : r->is_usage ? "_usage" : "_none",
        .status = r->status,
        .decision = r->decision,
        .limit = limit,
        .shadow_refused = shadow,
        .n_shadow_refused = n_shadow,
        .waited_ms = r->waited ? r->waited_ms : -1,
        .request_id = r->rid,
        .key_id = r->key ? r->key->id : NULL,
        .account = r->acct ? r->acct->name : NULL,
        .method = r->method,
        .path = r->path,
        .client = r->peer,
        .model = r->model,
        .units_charged = charged ? r->units : 0,
        .units_reconciled = charged && r->reconciled ? r->units_used : -1,
        .spend_micros = spend,
        .bytes_out = r->bytes_out + proxy_bytes_out(&r->px),
        .upstream_us = proxy_upstream_us(&r->px),
        .total_us = us_since(&r->t_start),
    };
    metrics_request_done(&m);
    int refused = r->decision == DEC_REFUSED || r->decision == DEC_CACHED;
    status_request(r->cfg->generation, m.endpoint, refused);
    if (refused && r->key)
        status_refused(r->key->id, m.account, limit);
}

/* ---- waiting for room (an endpoint's queue; gateway/waitq.h) ---- */

static void on_acquire(void *arg, store_status_t st, const lim_outcome_t *o);
static void answer_429(request_t *r);
static int64_t mono_us(void);

static struct timeval ms_tv(int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

/* r's wake-up: it is the head and room is due, or the one before it left,
 * or a slot it waits for was given back. Decide it again. */
static void wq_wake_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    request_t *r = arg;
    if (what & EV_READ)
        r->wq_slot = 1; /* a slot was given back (waitq_wake_gauge) */
    if (r->state != RQ_QUEUED) {
        r->wq_kick = 1; /* being decided: room may have come after the store looked */
        return;
    }
    r->state = RQ_STORE;
    r->t_sent_us = mono_us();
    store_acquire(r->w->store, r->checks, r->n_checks, r->rid, on_acquire, r);
}

/* r stops waiting (admitted, refused, gone, drained): out of its queue,
 * whose next request is woken if r was the head, and out of its worker's
 * list. Every request that ends passes here (request_finish), so each
 * waiter gives its place back exactly once. */
static void queue_leave(request_t *r)
{
    if (r->wq_deadline) {
        event_free(r->wq_deadline);
        r->wq_deadline = NULL;
    }
    if (r->wq) {
        r->waited = 1;
        r->waited_ms = (mono_us() - r->wq_since_us) / 1000;
        metrics_waiting(-1);
        waitq_leave(r);
        if (r->wl_prev)
            r->wl_prev->wl_next = r->wl_next;
        else
            r->w->waiting = r->wl_next;
        if (r->wl_next)
            r->wl_next->wl_prev = r->wl_prev;
        r->wl_next = r->wl_prev = NULL;
    }
    /* After the leave: nobody else can reach it now. */
    if (r->wq_wake) {
        event_free(r->wq_wake);
        r->wq_wake = NULL;
    }
}

/* A waiter's 429, from its last refusal, with Retry-After counted from
 * now rather than from that refusal. */
static void queue_refuse(request_t *r)
{
    queue_leave(r);
    if (!r->rep.never && r->rep.retry_after_ms > 0) {
        int64_t left = r->rep.retry_after_ms - r->waited_ms;
        r->rep.retry_after_ms = left > 1 ? left : 1;
        r->rep.retry_after_s = (r->rep.retry_after_ms + 999) / 1000;
    }
    answer_429(r);
}

/* Its max_wait_ms has passed: a waiting request gets its 429 now (one
 * being decided gets its answer from that decision). */
static void wq_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    request_t *r = arg;
    r->wq_expired = 1;
    if (r->state == RQ_QUEUED)
        queue_refuse(r);
}

/* 1 when every enforcing refusal of o can turn into room within left_ms:
 * rolling windows that free in time and concurrency limits (a slot may
 * free at any moment); *delay_ms: when to decide again. Calendar periods
 * (day, month, spend) and requests larger than a limit never can. */
static int room_due(const request_t *r, const lim_outcome_t *o, int64_t left_ms,
                    int64_t *delay_ms)
{
    int64_t worst = 1;
    for (size_t i = 0; i < r->n_checks; i++) {
        const lim_check_t *c = &r->checks[i];
        const lim_result_t *res = &o->res[i];
        if (res->ok || c->shadow)
            continue;
        if (c->kind == LIM_CK_CALENDAR || res->retry_ms == LIM_NEVER)
            return 0;
        int64_t d = res->retry_ms - o->now_ms;
        if (c->kind == LIM_CK_ROLLING && d > left_ms)
            return 0;
        if (d > worst)
            worst = d;
    }
    *delay_ms = worst < left_ms ? worst : left_ms;
    return 1;
}

/* A refusal by the store: 1 if r waits for room instead of its 429 (it is
 * then RQ_QUEUED, behind the earlier waiters of its key and endpoint on
 * every worker). */
static int queue_wait(request_t *r, const lim_outcome_t *o)
{
    const cfg_endpoint_t *ep = r->ep;
    worker_t *w = r->w;
    if (!ep->queue_max_wait_ms || w->draining || r->wq_expired || !r->req)
        return 0;
    int64_t now = mono_us();
    int64_t left = ep->queue_max_wait_ms;
    if (r->wq)
        left -= (now - r->wq_since_us) / 1000;
    int64_t delay;
    if (left <= 0 || !room_due(r, o, left, &delay))
        return 0;
    if (!r->wq) {
        int head = 0, rc = -1;
        r->wq_deadline = evtimer_new(w->base, wq_deadline_cb, r);
        r->wq_wake = evtimer_new(w->base, wq_wake_cb, r);
        if (r->wq_deadline && r->wq_wake)
            rc = waitq_join(r, r->key->id, ep->name, (size_t)ep->queue_max_waiting, &head);
        if (rc != 0) {
            queue_leave(r); /* full (the 429 at once) or out of memory */
            return 0;
        }
        r->wl_prev = NULL;
        r->wl_next = w->waiting;
        if (w->waiting)
            w->waiting->wl_prev = r;
        w->waiting = r;
        metrics_waiting(1);
        r->wq_since_us = now;
        struct timeval tv = ms_tv(left);
        evtimer_add(r->wq_deadline, &tv);
        request_watch_client(r);
        if (!head) {
            r->state = RQ_QUEUED; /* woken when the ones before it are gone */
            return 1;
        }
    }
    int g = r->rep.refused;
    waitq_set_gauge(r, g >= 0 && r->checks[g].kind == LIM_CK_GAUGE
                           ? waitq_hash(r->checks[g].key) : 0);
    if (r->wq_kick) {
        delay = 0;
    } else if (r->wq_slot && g >= 0 && r->checks[g].kind == LIM_CK_GAUGE && delay > 50) {
        /* Woken by a slot given back through another store connection,
         * which the store may not have applied yet: soon once more. */
        delay = 50;
    }
    r->wq_kick = r->wq_slot = 0;
    r->state = RQ_QUEUED;
    struct timeval tv = ms_tv(delay);
    evtimer_add(r->wq_wake, &tv);
    return 1;
}

/* A newcomer of an endpoint whose key has waiters asked the store without
 * a charge: it takes its place behind them even when there is room now (a
 * refusal that cannot turn into room in time gets its 429 at once, as on
 * any first decision). Room now counts as a refusal by its fullest
 * window or concurrency limit, due at once, so that the 429 of a wait
 * that ends before its turn names that limit. */
static void on_peek(void *arg, store_status_t st, const lim_outcome_t *o)
{
    request_t *r = arg;
    if (st != STORE_OK || !o->admitted) {
        on_acquire(r, st, o);
        return;
    }
    int tight = -1;
    double best = -1;
    for (size_t i = 0; i < r->n_checks; i++) {
        const lim_check_t *c = &r->checks[i];
        if (c->shadow || c->limit <= 0 || c->kind == LIM_CK_CALENDAR)
            continue; /* (a calendar period would not let it wait) */
        double f = (double)(o->res[i].used + c->amount) / (double)c->limit;
        if (f > best) {
            best = f;
            tight = (int)i;
        }
    }
    if (tight < 0) { /* no limit that a waiter waits for */
        r->t_sent_us = mono_us();
        store_acquire(r->w->store, r->checks, r->n_checks, r->rid, on_acquire, r);
        return;
    }
    lim_outcome_t behind = *o;
    behind.admitted = 0;
    behind.res[tight].ok = 0;
    behind.res[tight].retry_ms = o->now_ms + 1;
    on_acquire(r, st, &behind);
}

/* r gave its concurrency leases back: a head (of any worker) waiting on
 * one of those counters is decided again at once. */
static void wake_gauge_waiters(const request_t *r)
{
    uint64_t g[LIM_MAX_CHECKS];
    size_t n = 0;
    for (size_t i = 0; i < r->n_checks; i++)
        if (r->checks[i].kind == LIM_CK_GAUGE)
            g[n++] = waitq_hash(r->checks[i].key);
    waitq_wake_gauge(g, n);
}

void request_drain_waiters(worker_t *w)
{
    request_t *r = w->waiting;
    while (r) {
        request_t *rn = r->wl_next;
        r->wq_expired = 1;
        if (r->state == RQ_QUEUED)
            queue_refuse(r);
        r = rn;
    }
}

static void request_settle(request_t *r)
{
    if (r->settled)
        return;
    r->settled = 1;
    count_and_log(r);
    int released = 0;
    if (r->admitted && lim_checks_have_gauge(r->checks, r->n_checks)) {
        metrics_lease(-1);
        if (!r->lease_moved) {
            store_release(r->w->store, r->checks, r->n_checks, r->rid);
            r->store_sent = 1;
            released = 1;
        }
    }
    r->admitted = 0;
    /* The answer goes out right after this: the store hears first. */
    if (r->store_sent)
        store_flush(r->w->store);
    /* After the flush: the release is on its way before a waiter of
     * another worker (another store connection) asks again. */
    if (released)
        wake_gauge_waiters(r);
}

static void request_finish(request_t *r)
{
    worker_t *w = r->w;
    queue_leave(r);
    request_settle(r);
    request_unwatch_client(r);
    proxy_release(&r->px);
    reconcile_abandon(r);
    if (r->capture) {
        evbuffer_free(r->capture);
        r->capture = NULL;
    }
    if (r->req) {
        /* Still open: the client went away, or the answer was cut short
         * (never to be taken for a whole one). */
        h1_abort(r->req);
        r->req = NULL;
    }
    r->state = RQ_DONE;
    if (r->usage) {
        json_decref(r->usage);
        r->usage = NULL;
    }
    config_unref(r->cfg);
    w->inflight--;
    metrics_in_flight(-1);
    request_free(r);
}

/* The client went away while its request was served. */
static void on_client_close(h1_conn_t *c, void *arg)
{
    (void)c;
    request_t *r = arg;
    r->client_gone = 1;
    r->watching = 0;
    /* A job create: the backend may be starting the job, and its answer
     * names it. The exchange ends now (nobody to answer); the request
     * ends when the answer is read. Not when the worker is exiting (its
     * listener is already gone): then the request is cut as any other. */
    if (r->state == RQ_PROXY && r->ep && r->ep->job && r->admitted &&
        lim_checks_have_gauge(r->checks, r->n_checks) && proxy_running(&r->px) && r->w->http) {
        h1_abort(r->req);
        r->req = NULL;
        proxy_keep_without_client(&r->px);
        log_msg(LOG_INFO, "request %s: the client left before the job's create answer; "
                          "the answer is still read for the job id",
                r->rid);
        return;
    }
    if (r->state == RQ_PROXY || r->state == RQ_BODY) {
        proxy_release(&r->px);
        request_finish(r);
    }
    if (r->state == RQ_QUEUED)
        request_finish(r); /* it waited for nothing: nothing charged */
    /* RQ_STORE: the store's callback sees client_gone and finishes. */
}

static void request_watch_client(request_t *r)
{
    if (r->watching || !r->req || r->client_gone)
        return;
    r->watching = 1;
    h1_set_close_cb(r->req, on_client_close, r);
}

static void request_unwatch_client(request_t *r)
{
    if (!r->watching)
        return;
    r->watching = 0;
    if (r->req && !r->client_gone)
        h1_set_close_cb(r->req, NULL, NULL);
}

/* ---- the gateway's own answers (rendered by respond.c) ---- */

static void rates_of(const request_t *r, respond_rates_t *v)
{
    int kept = r->n_state && r->n_state == r->n_checks;
    *v = (respond_rates_t){
        .rep = r->state >= RQ_STORE && r->n_checks > 0 ? &r->rep : NULL,
        .checks = r->checks,
        .n_checks = r->n_checks,
        .remaining = kept ? r->state_remaining : NULL,
        .reset_ms = kept ? r->state_reset_ms : NULL,
        .now_ms = r->state_now_ms,
        .ietf = r->cfg->server.ietf_headers,
        .openai = r->cfg->server.openai_headers,
        .anthropic = r->cfg->server.anthropic_headers,
        .request_id = r->rid,
    };
}

static void add_rate_headers(const request_t *r, h1_conn_t *c)
{
    respond_rates_t v;
    rates_of(r, &v);
    respond_rate_headers(&v, c);
    if (r->waited) {
        char ms[24];
        snprintf(ms, sizeof ms, "%lld", (long long)r->waited_ms);
        h1_add_header(c, "X-RateLimit-Waited-Ms", ms);
    }
}

/* 1 while the client can still be answered. */
static int can_answer(const request_t *r)
{
    return r->req && !r->client_gone;
}

/* Send status and a JSON body (built with jansson, or already rendered
 * text) and end the request. Steals body. keep: where to store a copy of
 * the rendered text (the deny cache reuses it), or NULL. */
static void answer(request_t *r, int status, json_t *body, const char *rendered, char **keep)
{
    h1_conn_t *c = r->req;
    request_unwatch_client(r);
    if (can_answer(r)) {
        h1_add_header(c, "Content-Type", "application/json");
        add_rate_headers(r, c);
        char *text = rendered ? (char *)rendered : json_dumps(body, JSON_COMPACT);
        size_t len = text ? strlen(text) : 0;
        if (keep && text && !rendered) {
            free(*keep);
            *keep = strdup(text);
        }
        r->status = status;
        r->bytes_out += len;
        r->req = NULL; /* the exchange ends here */
        request_settle(r);
        h1_reply(c, status, respond_reason(status), text, len);
        if (!rendered)
            free(text);
    }
    json_decref(body);
    request_finish(r);
}

/* An error answer; details stolen, may be NULL. Ends the request. */
static void answer_error(request_t *r, int status, const char *type, const char *code,
                         const char *message, json_t *details)
{
    answer(r, status, error_json(type, code, message, details), NULL, NULL);
}

static void answer_unavailable(request_t *r)
{
    answer(r, 503, respond_unavailable(can_answer(r) ? r->req : NULL), NULL, NULL);
}

static void answer_429(request_t *r)
{
    if (can_answer(r))
        respond_429_headers(&r->rep, r->req);
    if (r->deny_body)
        /* The deny cache keeps the body it was first sent with. */
        answer(r, 429, NULL, r->deny_body, NULL);
    else
        answer(r, 429, respond_429_body(&r->rep, r->checks), NULL, r->deny_keep);
}

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* RATEWALL_NO_DENY_CACHE=1 turns the local deny cache off (diagnostics). */

/* A refusal the deny cache still holds for these checks: answer it
 * without the store, with every limit's state as the store last reported
 * it (resets moved on by the time since). */
static int answer_from_deny_cache(request_t *r)
{
    int64_t now_ms = mono_us() / 1000;
    const lim_deny_entry_t *e =
        lim_deny_lookup(&r->w->deny, r->cfg->generation, (uintptr_t)r->key,
                        (uint32_t)r->ep_index, r->checks, r->n_checks, now_ms);
    if (!e)
        return 0;
    /* On the store's clock, as a store answer is: its time at the refusal
     * moved on by the time since, the resets where the store put them. */
    int64_t since = now_ms - e->offered_ms;
    r->rep = e->rep;
    r->n_state = r->n_checks;
    r->state_now_ms = e->store_now_ms + (since > 0 ? since : 0);
    for (size_t i = 0; i < r->n_checks; i++) {
        r->state_remaining[i] = e->remaining[i];
        r->state_reset_ms[i] = e->store_now_ms + e->reset_in_ms[i];
    }
    if (!r->rep.never) {
        int64_t left = e->until_ms - now_ms;
        r->rep.retry_after_ms = left > 1 ? left : 1;
        r->rep.retry_after_s = (r->rep.retry_after_ms + 999) / 1000;
    }
    r->state = RQ_STORE;
    r->decision = DEC_CACHED;
    r->deny_body = e->body;
    answer_429(r);
    return 1;
}

/* ---- the backend exchange (proxy.c), reporting back here ---- */

/* The answer's body is kept (up to CAPTURE_MAX) when after_response needs
 * to read it: a job id, a job status, used units. */
#define CAPTURE_MAX (1024 * 1024)

static void px_fields(void *arg, h1_conn_t *c, int status)
{
    request_t *r = arg;
    add_rate_headers(r, c);
    r->status = status;
}

static int px_head(void *arg, int status, const char *content_type, int64_t content_length)
{
    request_t *r = arg;
    reconcile_begin(r, status, content_type);
    /* A job's create or status answer reaches the client whole, once the
     * job's leases are held (or freed): a client that polls, or creates
     * again, the moment it has the answer finds the store up to date. */
    if (r->capture && content_length >= 0 && content_length <= CAPTURE_MAX)
        return 1;
    return reconcile_holds_head(r, content_length);
}

static void px_data(void *arg, const char *p, size_t n)
{
    request_t *r = arg;
    if (r->rec)
        reconcile_feed(r, p, n);
    if (!r->capture)
        return;
    if (evbuffer_get_length(r->capture) + n > CAPTURE_MAX) {
        evbuffer_free(r->capture); /* too big to read: left as it is */
        r->capture = NULL;
        return;
    }
    evbuffer_add(r->capture, p, n);
}

static void px_complete(void *arg, int status, const char *units_field)
{
    request_t *r = arg;
    reconcile_end(r, units_field);
    after_response(r, status);
}

static void px_last_write(void *arg)
{
    request_t *r = arg;
    request_unwatch_client(r);
    r->req = NULL;
    request_settle(r);
}

static void px_ended(void *arg, enum proxy_end how)
{
    request_t *r = arg;
    if (how != PROXY_DONE)
        r->backend_failed = 1;
    switch (how) {
    case PROXY_DONE:
    case PROXY_FAILED:
        break;
    case PROXY_CUT: {
        /* Mid-stream: the client must not take a cut body for a whole
         * one, so its connection is closed without the final chunk. */
        h1_conn_t *c = r->req;
        if (c) {
            request_unwatch_client(r);
            r->client_gone = 1;
            r->req = NULL;
            h1_abort(c);
        }
        break;
    }
    case PROXY_TIMEOUT:
        answer_error(r, 504, "upstream_error", "BACKEND_TIMEOUT",
                     "The backend did not answer in time.", NULL);
        return;
    case PROXY_UNREACHABLE:
        answer_error(r, 502, "upstream_error", "BACKEND_UNAVAILABLE",
                     "The backend could not be reached.", NULL);
        return;
    }
    request_finish(r);
}

static const proxy_hooks_t px_hooks = {
    .fields = px_fields,
    .head = px_head,
    .data = px_data,
    .complete = px_complete,
    .last_write = px_last_write,
    .ended = px_ended,
};

/* An admitted request goes to its backend. */
static void start_proxy(request_t *r)
{
    const cfg_reconcile_t *rc = r->ep->reconcile;
    proxy_request_t in = {
        .client = r->req,
        .backend = &r->cfg->backends[r->ep->backend],
        .path = r->path,
        .request_id = r->rid,
        .key_id = r->key->id,
        .account = r->acct->name,
        .units_header = rc ? rc->response_header : NULL,
    };
    if (after_needs_body(r))
        r->capture = evbuffer_new();
    r->state = RQ_PROXY;
    request_watch_client(r);
    const char *why;
    if (proxy_start(&r->px, &r->w->proxy, &in, &px_hooks, r, &why) != 0)
        answer_error(r, 502, "upstream_error", "BACKEND_UNAVAILABLE", why, NULL);
}

/* 1 if reconcile can give back to the counters of this rule: one of its
 * endpoints reconciles (the deny cache keeps no refusal of such a counter). */
static int rule_reconciled(const config_t *cfg, const lim_rule_t *rule)
{
    if (rule->n_eps == 0) {
        for (size_t i = 0; i < cfg->n_endpoints; i++)
            if (cfg->endpoints[i].reconcile)
                return 1;
        return 0;
    }
    for (uint32_t i = 0; i < rule->n_eps; i++)
        if (rule->eps[i] < cfg->n_endpoints && cfg->endpoints[rule->eps[i]].reconcile)
            return 1;
    return 0;
}

/* The status page's view of the account: its fullest limit after this
 * decision (shadow limits included: they count too). */
static void note_level(const request_t *r, const lim_outcome_t *o)
{
    int best = -1;
    double best_f = -1;
    int64_t best_used = 0;
    for (size_t i = 0; i < r->n_checks; i++) {
        const lim_check_t *c = &r->checks[i];
        if (c->limit <= 0)
            continue;
        int64_t used = o->res[i].used + (o->admitted ? c->amount : 0);
        double f = (double)used / (double)c->limit;
        if (f > best_f) {
            best_f = f;
            best = (int)i;
            best_used = used;
        }
    }
    if (best >= 0)
        status_level(r->acct->name, r->checks[best].rule->ident, best_used,
                     r->checks[best].limit, r->checks[best].rule->metric == LIM_SPEND);
}

static void on_acquire(void *arg, store_status_t st, const lim_outcome_t *o)
{
    request_t *r = arg;
    metrics_store_latency(mono_us() - r->t_sent_us);
    status_store_latency(mono_us() - r->t_sent_us);
    if (st != STORE_OK) {
        r->decision = DEC_UNAVAILABLE;
        if (r->client_gone)
            request_finish(r);
        else
            answer_unavailable(r);
        return;
    }
    lim_report(r->checks, r->n_checks, o, &r->rep);
    r->admitted = o->admitted;
    r->decision = o->admitted ? DEC_ADMITTED : DEC_REFUSED;
    r->shadow_refused = 0;
    for (size_t i = 0; o->admitted && i < r->n_checks; i++)
        if (r->checks[i].shadow && !o->res[i].ok)
            r->shadow_refused |= UINT32_C(1) << i;
    /* Reconcile recomputes the headers from this state. */
    if (r->cfg->server.ietf_headers || r->cfg->server.openai_headers ||
        r->cfg->server.anthropic_headers || r->ep->reconcile) {
        r->n_state = r->n_checks;
        r->state_now_ms = o->now_ms;
        for (size_t i = 0; i < r->n_checks; i++) {
            const lim_check_t *c = &r->checks[i];
            int64_t used = o->res[i].used + (o->admitted ? c->amount : 0);
            r->state_remaining[i] = c->limit > used ? c->limit - used : 0;
            r->state_reset_ms[i] = o->res[i].reset_ms;
        }
    }
    note_level(r, o);
    if (o->admitted && lim_checks_have_gauge(r->checks, r->n_checks))
        metrics_lease(1);
    r->charged_ms = o->now_ms;
    if (!o->admitted && !r->client_gone && queue_wait(r, o))
        return;
    queue_leave(r);
    if (!o->admitted && r->w->deny_cache && !r->ep->queue_max_wait_ms) {
        int refundable = r->rep.refused >= 0 &&
                         rule_reconciled(r->cfg, r->checks[r->rep.refused].rule);
        lim_deny_entry_t *e =
            lim_deny_offer(&r->w->deny, r->cfg->generation, (uintptr_t)r->key,
                           (uint32_t)r->ep_index, r->checks, r->n_checks, o, &r->rep,
                           r->t_sent_us / 1000,
                           refundable);
        if (e)
            r->deny_keep = &e->body;
    }
    if (r->client_gone) {
        request_finish(r);
        return;
    }
    if (!o->admitted) {
        answer_429(r);
        return;
    }
    start_proxy(r);
}

static void usage_next(request_t *r);

/* One batch of usage answered: add its limits, then ask for the next. */
static void on_usage(void *arg, store_status_t st, const lim_outcome_t *o)
{
    request_t *r = arg;
    if (st != STORE_OK || r->client_gone) {
        if (r->client_gone)
            request_finish(r);
        else
            answer_unavailable(r);
        return;
    }
    for (size_t i = 0; i < r->n_checks; i++)
        json_array_append_new(r->usage, respond_usage_limit(&r->checks[i], &o->res[i]));
    r->usage_next += r->n_checks;
    usage_next(r);
}

static void usage_next(request_t *r)
{
    const lim_policy_t *p = r->key ? r->key->policy : &r->acct->policy;
    if (r->usage_next >= p->n_rules) {
        json_t *limits = r->usage;
        r->usage = NULL;
        r->n_checks = 0; /* nothing was decided: no rate headers */
        const cfg_tier_t *tier = &r->cfg->tiers[r->acct->tier];
        answer(r, 200, respond_usage_body(r->acct->name, tier->name, r->key ? r->key->id : NULL,
                                          limits),
               NULL, NULL);
        return;
    }
    size_t n = lim_build_rule_checks(p, r->usage_next, r->acct->name,
                                     r->key ? r->key->id : "", r->checks, LIM_MAX_CHECKS);
    if (!r->key && n != (size_t)-1) {
        /* An account's view: its account-scope limits only. */
        r->usage_next += n;
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (r->checks[i].rule->scope == LIM_SCOPE_ACCOUNT)
                r->checks[k++] = r->checks[i];
        r->usage_next -= k; /* on_usage adds the ones asked about */
        if (k == 0) {
            usage_next(r);
            return;
        }
        n = k;
    }
    if (n == (size_t)-1 || n == 0) {
        r->n_checks = 0;
        answer_error(r, 500, "api_error", "INTERNAL_ERROR",
                      "The limits of this key cannot be read.", NULL);
        return;
    }
    r->n_checks = n;
    store_usage(r->w->store, r->checks, r->n_checks, on_usage, r);
}

static void usage_start(request_t *r)
{
    r->usage = json_array();
    r->state = RQ_STORE;
    if (!store_answers_inline(r->w->store))
        request_watch_client(r);
    usage_next(r);
}

void request_next_id(worker_t *w, char *out, size_t len)
{
    /* The prefix and the counter in 16 hex digits, written by hand (every
     * request has one). */
    static const char hex[] = "0123456789abcdef";
    size_t p = strlen(w->rid_prefix);
    if (len < p + 17) {
        if (len)
            out[0] = '\0';
        return;
    }
    memcpy(out, w->rid_prefix, p);
    uint64_t v = w->rid_next++;
    for (int i = 15; i >= 0; i--, v >>= 4)
        out[p + (size_t)i] = hex[v & 15];
    out[p + 16] = '\0';
}

/* s into dst (cap > 0 bytes), cut to fit (snprintf "%s" at a fraction of
 * the cost, on every request). */
static void copy_cut(char *dst, size_t cap, const char *s)
{
    size_t n = strlen(s);
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, s, n);
    dst[n] = '\0';
}

/* A new request context for req on worker w (NULL: out of memory, and
 * req has been answered). */
static request_t *request_new(worker_t *w, h1_conn_t *req)
{
    request_t *r = request_alloc();
    if (!r) {
        h1_reply(req, 503, "Service Unavailable", NULL, 0);
        return NULL;
    }
    w->inflight++;
    metrics_in_flight(1);
    r->w = w;
    r->req = req;
    r->cfg = config_ref(w->cfg);
    clock_gettime(CLOCK_MONOTONIC, &r->t_start);
    request_next_id(w, r->rid, sizeof r->rid);
    r->method = h1_method_name(h1_method(req));
    copy_cut(r->peer, sizeof r->peer, h1_peer(req));
    /* The path as sent until it is normalized (routing replaces it). */
    copy_cut(r->path, sizeof r->path, h1_path(req));
    return r;
}

void request_usage_start(worker_t *w, h1_conn_t *req, const char *key_id,
                         const char *account)
{
    request_t *r = request_new(w, req);
    if (!r)
        return;
    r->is_usage = 1;
    if (key_id) {
        r->key = config_find_key_id(r->cfg, key_id);
        if (r->key)
            r->acct = &r->cfg->accounts[r->key->account];
    } else if (account) {
        r->acct = config_find_account(r->cfg, account);
    }
    if (!r->acct) {
        answer_error(r, 404, "not_found_error", "NOT_FOUND",
                      key_id ? "No key with this id." : "No account with this name.", NULL);
        return;
    }
    usage_start(r);
}

static void on_body(h1_conn_t *req, void *arg);

void request_start(worker_t *w, h1_conn_t *req)
{
    request_t *r = request_new(w, req);
    if (!r)
        return;
    const config_t *cfg = r->cfg;

    const char *raw = h1_path(req);
    const char *why;
    if (path_normalize(raw, r->path, sizeof r->path, &why) != 0) {
        snprintf(r->path, sizeof r->path, "%s", raw);
        answer_error(r, 400, "invalid_request_error", "INVALID_REQUEST", why, NULL);
        return;
    }
    const char *path = r->path;
    unsigned method = method_bit(h1_method(req));

    r->is_usage = method == CFG_M_GET && strcmp(path, cfg->server.usage_path) == 0;
    if (!r->is_usage) {
        r->ep_index = config_route(cfg, method, path);
        if (r->ep_index < 0) {
            answer_error(r, 404, "not_found_error", "NOT_FOUND",
                          "No endpoint matches this method and path.", NULL);
            return;
        }
        /* A route decided on a body field has its endpoint chosen once the
         * body is read (on_body). */
        if (!config_route_pointer(cfg, r->ep_index))
            r->ep = &cfg->endpoints[r->ep_index];
    }

    size_t klen = 0;
    const char *key = auth_client_key(req, &klen);
    if (!key) {
        answer_error(r, 401, "authentication_error", "MISSING_API_KEY",
                      "No API key: send Authorization: Bearer KEY or X-API-Key: KEY.", NULL);
        return;
    }
    unsigned char digest[AUTH_DIGEST_LEN];
    auth_digest(key, klen, digest);
    r->key = config_find_key(cfg, digest);
    auth_wipe(digest, sizeof digest);
    if (!r->key) {
        answer_error(r, 401, "authentication_error", "INVALID_API_KEY",
                      "The API key is not valid.", NULL);
        return;
    }
    if (r->key->expires_at && (int64_t)time(NULL) >= r->key->expires_at) {
        answer_error(r, 401, "authentication_error", "KEY_EXPIRED",
                      "The API key has expired.", NULL);
        return;
    }
    r->acct = &cfg->accounts[r->key->account];
    if (r->key->disabled || r->acct->disabled) {
        answer_error(r, 403, "permission_error", "KEY_DISABLED",
                      r->key->disabled ? "This API key is disabled."
                                       : "This account is disabled.",
                      NULL);
        return;
    }

    /* Only a request that can be served has its body read (gateway/http/server.h). */
    int64_t max_body = r->is_usage ? cfg->server.max_body_bytes
                                   : config_route_max_body(cfg, r->ep_index);
    r->state = RQ_BODY;
    if (h1_body_pending(req))
        request_watch_client(r);
    h1_read_body(req, max_body, on_body, r);
}

/* The body is here (or refused): on to the decision. */
static void on_body(h1_conn_t *req, void *arg)
{
    request_t *r = arg;
    worker_t *w = r->w;
    const config_t *cfg = r->cfg;
    request_unwatch_client(r);
    r->state = RQ_NEW;
    struct evbuffer *body = h1_body(req);
    size_t blen = evbuffer_get_length(body);
    int64_t max_body = r->is_usage ? cfg->server.max_body_bytes
                                   : config_route_max_body(cfg, r->ep_index);
    int st = h1_body_status(req);
    if (st == H1_BODY_NO_ROOM) {
        answer_error(r, 503, "service_unavailable", "SERVER_BUSY",
                      "The gateway is holding too many request bodies; retry shortly.", NULL);
        return;
    }
    if (st == H1_BODY_TOO_SLOW) {
        answer_error(r, 408, "invalid_request_error", "REQUEST_TIMEOUT",
                      "The request body did not arrive in time (client_timeout_ms, "
                      "min_body_rate).",
                      NULL);
        return;
    }
    if (st == H1_BODY_INVALID) {
        answer_error(r, 400, "invalid_request_error", "INVALID_REQUEST",
                      "The chunked body is not valid.", NULL);
        return;
    }
    if (st == H1_BODY_TOO_LARGE || h1_body_refused(req) || (int64_t)blen > max_body) {
        /* Larger than any endpoint takes: not read at all (the connection
         * closes after this answer). */
        answer_error(r, 413, "invalid_request_error", "PAYLOAD_TOO_LARGE",
                      "The request body is larger than this endpoint accepts.",
                      json_pack("{s:I}", "limit", (json_int_t)max_body));
        return;
    }
    if (r->is_usage) {
        usage_start(r);
        return;
    }

    /* The body as JSON, parsed once for all that read it: the route's
     * match, the units, the stream options. */
    json_t *doc = NULL;
    char err[256];
    const char *match_ptr = r->ep ? NULL : config_route_pointer(cfg, r->ep_index);
    if (match_ptr) {
        doc = units_parse_body((const char *)evbuffer_pullup(body, -1), blen, err, sizeof err);
        if (!doc) {
            answer_error(r, 400, "invalid_request_error", "INVALID_BODY", err, NULL);
            return;
        }
        int e = config_route_value(cfg, r->ep_index, json_pointer_get(doc, match_ptr));
        if (e < 0) {
            json_decref(doc);
            char msg[300];
            snprintf(msg, sizeof msg, "No endpoint takes the value at %s of this body.",
                     match_ptr);
            answer_error(r, 404, "not_found_error", "NOT_FOUND", msg,
                         json_pack("{s:s}", "field", match_ptr));
            return;
        }
        r->ep_index = e;
        r->ep = &cfg->endpoints[e];
        /* The access log's model: the value as the config lists it. */
        const char *v = json_string_value(json_pointer_get(doc, match_ptr));
        for (size_t i = 0; v && r->ep->match && i < r->ep->match->n_values; i++)
            if (strcmp(r->ep->match->values[i], v) == 0)
                r->model = r->ep->match->values[i];
        if ((int64_t)blen > r->ep->max_body_bytes) {
            json_decref(doc);
            answer_error(r, 413, "invalid_request_error", "PAYLOAD_TOO_LARGE",
                          "The request body is larger than this endpoint accepts.",
                          json_pack("{s:I}", "limit", (json_int_t)r->ep->max_body_bytes));
            return;
        }
    }
    int usage_chunk = r->ep->reconcile && r->ep->reconcile->stream_include_usage;
    if (!doc && (r->ep->n_units || usage_chunk)) {
        doc = units_parse_body((const char *)evbuffer_pullup(body, -1), blen, err, sizeof err);
        if (!doc) {
            answer_error(r, 400, "invalid_request_error", "INVALID_BODY", err, NULL);
            return;
        }
    }

    const char *repeated = NULL;
    if (after_read_poll(r, &repeated) != 0) {
        json_decref(doc);
        answer_error(r, 400, "invalid_request_error", "INVALID_REQUEST",
                      "The query names the job id parameter more than once.",
                      json_pack("{s:s}", "parameter", repeated));
        return;
    }

    int bad = units_from_json(r->ep, doc, &r->units, err, sizeof err) != 0 ||
              (usage_chunk && reconcile_ask_for_usage(body, doc, err, sizeof err) != 0);
    json_decref(doc);
    if (bad) {
        answer_error(r, 400, "invalid_request_error", "INVALID_BODY", err, NULL);
        return;
    }
    r->price_micros = price_of(r->ep, r->units);

    size_t n = lim_build_checks(r->key->policy, (uint32_t)r->ep_index, r->acct->name,
                                r->key->id, r->units, r->price_micros, r->checks,
                                LIM_MAX_CHECKS);
    if (n == (size_t)-1) {
        answer_error(r, 500, "api_error", "INTERNAL_ERROR",
                      "The limits of this key cannot be evaluated.", NULL);
        return;
    }
    r->n_checks = n;
    /* A lease outlives a gateway that died holding it by at most this
     * (the docs promise it): the job's max_seconds, else the backend timeout + 30 s. */
    int64_t ttl = r->ep->job ? r->ep->job->max_seconds * 1000
                             : cfg->backends[r->ep->backend].timeout_ms + 30000;
    for (size_t i = 0; i < n; i++)
        r->checks[i].lease_ttl_ms = ttl;
    /* A queue's requests wait instead of taking a kept refusal. */
    if (n && r->w->deny_cache && !r->ep->queue_max_wait_ms && answer_from_deny_cache(r))
        return;
    if (n == 0) {
        /* No limit applies (enterprise): straight to the backend. */
        r->decision = DEC_UNLIMITED;
        r->state = RQ_STORE;
        r->admitted = 1;
        start_proxy(r);
        return;
    }
    r->state = RQ_STORE;
    if (!store_answers_inline(w->store))
        request_watch_client(r);
    r->t_sent_us = mono_us();
    /* Others of its key wait: it asks without a charge, to wait behind
     * them (on_peek) rather than pass them. */
    if (r->ep->queue_max_wait_ms && waitq_busy(r->key->id, r->ep->name))
        store_usage(w->store, r->checks, r->n_checks, on_peek, r);
    else
        store_acquire(w->store, r->checks, r->n_checks, r->rid, on_acquire, r);
}
