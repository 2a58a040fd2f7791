/*
 * storage/redis.c: counters shared by a fleet through one Redis.
 *
 * One decision is one EVALSHA of storage/acquire.lua: every check of the
 * request is evaluated and, only if all fit, charged, on Redis's own clock.
 * Each worker has its own hiredis async connection on its event loop;
 * concurrent requests are pipelined on it.
 *
 * hiredis 0.14's async API has no timeout of its own, so every call is kept
 * in a FIFO (Redis answers in order) with a deadline; a timer answers the
 * calls that ran out as unavailable but keeps them until Redis replies. A
 * connection with no reply for DROP_AFTER is dropped and re-made with a
 * backoff of 50 ms doubling up to 1 s.
 *
 * Nothing is charged for a decision answered "unavailable": every charging
 * decision carries its deadline on Redis's own clock (the local monotonic
 * deadline plus the offset to Redis's clock that every reply reveals, minus
 * a margin), and a script that runs later (a stalled Redis waking up) writes
 * nothing. Until a connection's offset is known, its decisions wait (within
 * their own deadline) for the TIME sent at connect. As a safety net, a late
 * reply that still admitted gives the leases and the charges straight back.
 *
 * Leases held by this worker's requests are renewed in one EVALSHA of
 * renew.lua per RENEW interval, so a stream may outlive its lease_ttl_ms;
 * a dead gateway's leases expire lease_ttl_ms after the last renewal.
 *
 * on_error allow: while Redis is away, the memory store decides alone and
 * what it charged is recorded per counter (the debt table, shared by the
 * workers). As soon as Redis answers again the debt is added to Redis with
 * the adjust mode of acquire.lua, one call per hash tag, and the memory
 * store's counters are dropped, so the next outage starts from zero.
 *
 * Ownership:
 *  - rcall_t: allocated per command, owned by this file. hiredis calls
 *    on_reply() exactly once per command (with NULL when the connection
 *    goes away); that is the one place a call is freed. The caller's
 *    callback may run earlier (timeout): `answered` keeps it to once.
 *  - A call borrows the caller's checks until it is answered, never after.
 *  - The formatted command is owned by the call (kept for a NOSCRIPT retry).
 *  - A held call (decision waiting for the connection's clock offset) is in
 *    the worker's held list, not in hiredis; it is owned by that list and
 *    freed when it is sent (a new call is made), answered or failed.
 *  - renew_lease_t: owned by the worker's renewal set, from the admitting
 *    reply to release() (or until renew.lua reports the lease gone).
 *  - debt_t: owned by the store's debt table (debt_mu), until replayed.
 */
#include <pthread.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "../limiter/window.h"
#include "store.h"

extern const char rw_lua_acquire[];
extern const char rw_lua_release[];
extern const char rw_lua_hold[];
extern const char rw_lua_renew[];

#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 1000
#define LEASE_SET_BUCKETS 256
#define DROP_AFTER_MIN_MS 1000 /* and at least 4 timeouts */
#define RENEW_MS_DEFAULT 10000 /* lease renewal interval (at most 10 s) */
#define RENEW_BUCKETS 1024
#define RENEW_CHUNK_KEYS 1000  /* lease keys per renew.lua call */
#define DEBT_BUCKETS 4096
#define DEBT_MAX 200000        /* counters remembered during one outage */

/* What the fallback memory store charged to one counter in one bucket
 * (rolling) or period (calendar) while Redis was away. */
typedef struct debt {
    struct debt *next;
    int64_t slot;              /* bucket index (rolling) or period id (calendar) */
    int64_t amount;
    lim_check_t ck;            /* key, kind, per, window (limit unused) */
} debt_t;

typedef struct redis_store {
    store_t base;
    store_redis_opts_t o;     /* strings owned (copied) */
    char sha_acquire[41], sha_release[41], sha_hold[41], sha_renew[41];
    store_t *fallback;        /* memory store, on_error allow only */
    store_redis_stats_t stats;
    int64_t renew_ms;         /* lease renewal interval */
    pthread_mutex_t debt_mu;  /* guards debt[], n_debt, debt_full */
    debt_t *debt[DEBT_BUCKETS];
    size_t n_debt;
    int debt_full;            /* logged once per outage */
    atomic_size_t debt_hint;  /* n_debt, read without the lock */
} redis_store_t;

typedef struct redis_worker redis_worker_t;

enum call_kind { RC_ACQUIRE, RC_USAGE, RC_RELEASE, RC_SETUP, RC_ADJUST, RC_JOB_DONE,
                 RC_JOB_FIND, RC_TIME, RC_RENEW };

typedef struct rcall {
    struct rcall *prev, *next; /* in the worker's FIFO of calls sent */
    redis_worker_t *rw;
    enum call_kind kind;
    store_acquire_cb cb;
    void *arg;
    const lim_check_t *checks; /* borrowed until answered */
    size_t n;
    char lease_id[72];         /* RC_JOB_FIND: the job's name */
    void (*done_cb)(void *arg, int found); /* RC_JOB_DONE, RC_JOB_FIND */
    int answered;
    int retried;               /* NOSCRIPT: loaded and sent again once */
    int64_t deadline;          /* monotonic ms */
    int64_t sent;              /* monotonic ms */
    char *cmd;                 /* formatted command (hiredis format) */
    int cmdlen;
    char *release_cmd;         /* acquire with leases: their release, for a late admit */
    int release_len;
    char *refund_cmd;          /* acquire answered unavailable: its charges given back */
    int refund_len;
    int refund_conditional;    /* refund_cmd applies only if the lease is held */
    int sent_to_redis;         /* queued on the connection (not held) */
    struct rcall *held_next;   /* in the worker's held list */
} rcall_t;

/* A lease release (or any fire-and-forget script call, a job's done
 * included) whose reply was lost with its connection: sent again once
 * Redis answers, a few times, because a call already in Redis's buffer may
 * still run after we reconnect. */
typedef struct pending {
    struct pending *next;
    char *cmd;           /* formatted command (owned) */
    int len;
    int sends_left;
} pending_t;

#define PENDING_SENDS 4  /* once a second after Redis answers again */
#define PENDING_MAX 100000

typedef struct lease_node {
    struct lease_node *next;
    char id[72];
} lease_node_t;

/* A lease this worker holds in Redis, renewed until released. */
typedef struct renew_lease {
    struct renew_lease *next;
    char id[72];
    int nkeys;
    struct {
        int64_t ttl_ms;
        char key[LIM_KEY_MAX + 64];
    } k[];
} renew_lease_t;

struct redis_worker {
    store_worker_t base;
    redis_store_t *rs;
    struct event_base *evb;
    redisAsyncContext *ac;     /* NULL while down */
    int connected;
    int was_down;              /* for one log line per outage */
    struct event *timer;       /* deadline of the oldest call */
    struct event *retry_ev;    /* reconnect */
    int64_t backoff_ms;
    rcall_t *head, *tail;
    store_worker_t *fallback;  /* memory store worker (allow) */
    lease_node_t *fallback_leases[LEASE_SET_BUCKETS];
    int detaching;
    int ready;                 /* Redis has answered on this connection */
    pending_t *pending;        /* releases and job dones to send again */
    size_t n_pending;
    struct event *pending_ev;  /* once a second while there are some */
    int64_t timer_at;          /* when the armed timer fires (monotonic ms) */
    int offset_known;          /* a reply on this connection gave Redis's clock */
    int64_t offset_ms;         /* Redis clock - local monotonic clock (a lower bound) */
    rcall_t *held, *held_tail; /* decisions waiting for the offset */
    renew_lease_t *renew[RENEW_BUCKETS];
    size_t n_renew;
    struct event *renew_ev;    /* every renew_ms */
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void rlog(redis_store_t *rs, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void rlog(redis_store_t *rs, const char *fmt, ...)
{
    if (!rs->o.log)
        return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    rs->o.log(buf);
}

/* ---- calls in flight ---------------------------------------------------- */

static void list_add(redis_worker_t *rw, rcall_t *c)
{
    c->next = NULL;
    c->prev = rw->tail;
    if (rw->tail)
        rw->tail->next = c;
    else
        rw->head = c;
    rw->tail = c;
}

static void list_del(redis_worker_t *rw, rcall_t *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else if (rw->head == c)
        rw->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else if (rw->tail == c)
        rw->tail = c->prev;
    c->prev = c->next = NULL;
}

static int64_t drop_after(const redis_worker_t *rw)
{
    int64_t t = 4 * rw->rs->o.timeout_ms;
    return t > DROP_AFTER_MIN_MS ? t : DROP_AFTER_MIN_MS;
}

/* Make the timer fire at `when` at the latest (earlier if already armed
 * for earlier). */
static void arm_timer_for(redis_worker_t *rw, int64_t when)
{
    if (evtimer_pending(rw->timer, NULL) && rw->timer_at <= when)
        return;
    int64_t wait = when - mono_ms();
    if (wait < 1)
        wait = 1;
    struct timeval tv = {.tv_sec = wait / 1000, .tv_usec = (wait % 1000) * 1000};
    rw->timer_at = mono_ms() + wait;
    evtimer_add(rw->timer, &tv);
}

/* Wake for the earliest deadline of a call still waiting for its answer
 * (sent or held), or for the oldest sent call's drop time. */
static void arm_timer(redis_worker_t *rw)
{
    int64_t when = INT64_MAX;
    if (rw->head)
        when = rw->head->sent + drop_after(rw);
    for (rcall_t *c = rw->head; c; c = c->next)
        if (!c->answered && c->deadline < when)
            when = c->deadline;
    if (rw->held && rw->held->deadline < when)
        when = rw->held->deadline;
    if (when != INT64_MAX)
        arm_timer_for(rw, when);
}

/* ---- leases granted by the fallback store ------------------------------- */

static unsigned lease_bucket(const char *id)
{
    unsigned h = 2166136261u;
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 16777619u;
    return h % LEASE_SET_BUCKETS;
}

static void lease_remember(redis_worker_t *rw, const char *id)
{
    lease_node_t *n = malloc(sizeof *n);
    if (!n)
        return; /* the memory lease then stays until the process ends */
    snprintf(n->id, sizeof n->id, "%s", id);
    unsigned b = lease_bucket(id);
    n->next = rw->fallback_leases[b];
    rw->fallback_leases[b] = n;
}

static int lease_forget(redis_worker_t *rw, const char *id)
{
    for (lease_node_t **p = &rw->fallback_leases[lease_bucket(id)]; *p; p = &(*p)->next) {
        if (strcmp((*p)->id, id) == 0) {
            lease_node_t *n = *p;
            *p = n->next;
            free(n);
            return 1;
        }
    }
    return 0;
}

/* ---- leases held in Redis, renewed while their request lives ------------ */

static unsigned renew_bucket(const char *id)
{
    unsigned h = 2166136261u;
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 16777619u;
    return h % RENEW_BUCKETS;
}

static renew_lease_t **renew_find(redis_worker_t *rw, const char *id)
{
    renew_lease_t **p = &rw->renew[renew_bucket(id)];
    while (*p && strcmp((*p)->id, id) != 0)
        p = &(*p)->next;
    return p;
}

/* From the reply that admitted a request with leases. */
static void renew_add(redis_worker_t *rw, const char *id, const lim_check_t *checks,
                      size_t n)
{
    int k = 0;
    for (size_t i = 0; i < n; i++)
        k += checks[i].kind == LIM_CK_GAUGE;
    if (k == 0 || *renew_find(rw, id))
        return;
    renew_lease_t *l = calloc(1, sizeof *l + (size_t)k * sizeof l->k[0]);
    if (!l)
        return; /* not renewed: the lease then lives lease_ttl_ms */
    snprintf(l->id, sizeof l->id, "%s", id);
    for (size_t i = 0; i < n; i++) {
        if (checks[i].kind != LIM_CK_GAUGE)
            continue;
        l->k[l->nkeys].ttl_ms = checks[i].lease_ttl_ms > 0 ? checks[i].lease_ttl_ms : 90000;
        snprintf(l->k[l->nkeys].key, sizeof l->k[0].key, "%s%s", rw->rs->o.key_prefix,
                 checks[i].key);
        l->nkeys++;
    }
    unsigned b = renew_bucket(id);
    l->next = rw->renew[b];
    rw->renew[b] = l;
    rw->n_renew++;
}

/* The lease is given back (or gone): renew it no more. */
static void renew_forget(redis_worker_t *rw, const char *id)
{
    renew_lease_t **p = renew_find(rw, id);
    if (*p) {
        renew_lease_t *l = *p;
        *p = l->next;
        free(l);
        rw->n_renew--;
    }
}

/* ---- what the fallback charged while Redis was away (on_error allow) ---- */

static int64_t real_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

static int64_t debt_slot(const lim_check_t *c, int64_t t)
{
    return c->kind == LIM_CK_ROLLING ? lim_bucket_of(t, c->window_ms)
                                     : lim_period_id(c->per, t);
}

static unsigned str_hash(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

/* Add amount (negative: a give-back, only from what the same bucket or
 * period recorded) to checks' counter as charged at charged_ms (local
 * clock, the fallback's). */
static void debt_record(redis_store_t *rs, const lim_check_t *c, int64_t amount,
                        int64_t charged_ms)
{
    if (c->kind == LIM_CK_GAUGE || amount == 0)
        return;
    amount = clamp64(amount, -LIM_PRICE_MAX, LIM_PRICE_MAX);
    int64_t slot = debt_slot(c, charged_ms);
    unsigned b = (str_hash(c->key) ^ (unsigned)slot) % DEBT_BUCKETS;
    pthread_mutex_lock(&rs->debt_mu);
    debt_t *d = rs->debt[b];
    while (d && (d->slot != slot || d->ck.kind != c->kind || strcmp(d->ck.key, c->key) != 0))
        d = d->next;
    if (d) {
        d->amount = clamp64(d->amount + amount, 0, LIM_PRICE_MAX);
    } else if (amount > 0 && rs->n_debt < DEBT_MAX && (d = calloc(1, sizeof *d))) {
        d->slot = slot;
        d->amount = amount;
        d->ck = *c;
        d->ck.rule = NULL;
        d->next = rs->debt[b];
        rs->debt[b] = d;
        rs->n_debt++;
        atomic_store(&rs->debt_hint, rs->n_debt);
    } else if (amount > 0 && !rs->debt_full) {
        rs->debt_full = 1;
        rlog(rs, "redis: more than %d counters charged while Redis is away: the rest "
                 "will not be added to Redis when it is back", DEBT_MAX);
    }
    pthread_mutex_unlock(&rs->debt_mu);
}

static int cmp_debt(const void *a, const void *b)
{
    const debt_t *x = *(const debt_t *const *)a, *y = *(const debt_t *const *)b;
    return strcmp(x->ck.key, y->ck.key);
}

/* The hash tag of a counter key ("{account}"), as pointer and length. */
static size_t tag_of(const char *key, const char **tag)
{
    const char *open = strchr(key, '{');
    const char *close = open ? strchr(open + 1, '}') : NULL;
    *tag = close ? open : key;
    return close ? (size_t)(close - open + 1) : strlen(key);
}

static rcall_t *decision_call(redis_worker_t *rw, enum call_kind kind,
                              const lim_check_t *checks, size_t n, const char *lease_id,
                              const int64_t *deltas, int64_t local_deadline,
                              const char *refund_of);
static int queue(redis_worker_t *rw, rcall_t *c);
static void call_free(rcall_t *c);

/* Redis answers again: add what the fallback charged meanwhile to Redis's
 * counters (one adjust per hash tag, whatever the limits: an outage never
 * hands out a second allowance), and start the next outage from zero. */
static void debt_replay(redis_worker_t *rw)
{
    redis_store_t *rs = rw->rs;
    if (!rs->fallback || !rw->ac || atomic_load(&rs->debt_hint) == 0)
        return;
    pthread_mutex_lock(&rs->debt_mu);
    size_t n = rs->n_debt;
    debt_t **all = malloc((n ? n : 1) * sizeof *all);
    if (!all) {
        pthread_mutex_unlock(&rs->debt_mu);
        return; /* tried again at the next reply */
    }
    size_t m = 0;
    for (int b = 0; b < DEBT_BUCKETS; b++) {
        for (debt_t *d = rs->debt[b]; d; d = d->next)
            all[m++] = d;
        rs->debt[b] = NULL;
    }
    rs->n_debt = 0;
    rs->debt_full = 0;
    atomic_store(&rs->debt_hint, 0);
    store_memory_drop_counters(rs->fallback);
    pthread_mutex_unlock(&rs->debt_mu);

    /* Keep what still counts now: a rolling bucket still inside its
     * window, a calendar period still running. */
    int64_t now = real_ms();
    size_t k = 0;
    for (size_t i = 0; i < m; i++) {
        debt_t *d = all[i];
        int keep = d->amount > 0 &&
                   (d->ck.kind == LIM_CK_ROLLING
                        ? lim_bucket_of(now, d->ck.window_ms) - d->slot < LIM_SLOTS
                        : lim_period_id(d->ck.per, now) == d->slot);
        if (keep)
            all[k++] = d;
        else
            free(d);
    }
    qsort(all, k, sizeof *all, cmp_debt);
    lim_check_t checks[LIM_MAX_CHECKS];
    int64_t deltas[LIM_MAX_CHECKS];
    size_t sent = 0;
    for (size_t i = 0; i < k;) {
        /* Sorted by key, so one hash tag's counters are next to each other. */
        size_t nc = 0;
        const char *gtag;
        size_t glen = tag_of(all[i]->ck.key, &gtag);
        for (; i < k; i++) {
            const char *tag;
            size_t tlen = tag_of(all[i]->ck.key, &tag);
            if (tlen != glen || memcmp(tag, gtag, tlen) != 0)
                break;
            if (nc > 0 && checks[nc - 1].kind == all[i]->ck.kind &&
                strcmp(checks[nc - 1].key, all[i]->ck.key) == 0) {
                deltas[nc - 1] = clamp64(deltas[nc - 1] + all[i]->amount, 0, LIM_PRICE_MAX);
                continue;
            }
            if (nc == LIM_MAX_CHECKS)
                break;
            checks[nc] = all[i]->ck;
            deltas[nc] = all[i]->amount;
            nc++;
        }
        rcall_t *c = decision_call(rw, RC_ADJUST, checks, nc, "", deltas, 0, NULL);
        if (c && queue(rw, c) != 0)
            call_free(c);
        sent += nc;
    }
    for (size_t i = 0; i < k; i++)
        free(all[i]);
    free(all);
    if (sent)
        rlog(rs, "redis %s:%u: added %zu counters charged in local memory during the "
                 "outage to Redis", rs->o.host, rs->o.port, sent);
}

/* ---- answering ---------------------------------------------------------- */

typedef struct fallback_ctx {
    redis_worker_t *rw;
    store_acquire_cb cb;
    void *arg;
    const lim_check_t *checks;
    size_t n;
    const char *lease_id;
} fallback_ctx_t;

static void on_fallback(void *arg, store_status_t st, const lim_outcome_t *o)
{
    fallback_ctx_t *f = arg;
    if (st == STORE_OK && o->admitted) {
        if (lim_checks_have_gauge(f->checks, f->n))
            lease_remember(f->rw, f->lease_id);
        /* Owed to Redis once it is back. */
        for (size_t i = 0; i < f->n; i++)
            debt_record(f->rw->rs, &f->checks[i], f->checks[i].amount, o->now_ms);
    }
    f->cb(f->arg, st, o);
}

/* The store cannot answer: deny (503 upstream) or count locally (allow). */
static void answer_unavailable(redis_worker_t *rw, enum call_kind kind,
                               const lim_check_t *checks, size_t n, const char *lease_id,
                               store_acquire_cb cb, void *arg)
{
    redis_store_t *rs = rw->rs;
    atomic_fetch_add(&rs->stats.unavailable, 1);
    if (rw->fallback && (kind == RC_ACQUIRE || kind == RC_USAGE)) {
        atomic_fetch_add(&rs->stats.fallback_decisions, 1);
        /* The memory store answers inline, so the context can live here. */
        fallback_ctx_t f = {rw, cb, arg, checks, n, lease_id};
        if (kind == RC_ACQUIRE)
            store_acquire(rw->fallback, checks, n, lease_id, on_fallback, &f);
        else
            store_usage(rw->fallback, checks, n, cb, arg);
        return;
    }
    lim_outcome_t o;
    memset(&o, 0, sizeof o);
    cb(arg, STORE_UNAVAILABLE, &o);
}

/* The adjust that gives back what an acquire would charge, as a formatted
 * command (into c->refund_cmd): sent if Redis admits it after all, or if
 * its reply is lost with the connection. With leases it is conditional on
 * the lease being held (and gives it back too), so it refunds only what
 * was charged, and may be sent again. */
static void prepare_refund(rcall_t *c)
{
    int64_t deltas[LIM_MAX_CHECKS];
    int any = 0;
    for (size_t i = 0; i < c->n; i++) {
        deltas[i] = c->checks[i].kind == LIM_CK_GAUGE ? 0 : -c->checks[i].amount;
        any |= deltas[i] != 0;
    }
    int leases = lim_checks_have_gauge(c->checks, c->n);
    if (!any && !leases)
        return;
    /* charged "": the script's now, next to the late charge's. */
    rcall_t *r = decision_call(c->rw, RC_ADJUST, c->checks, c->n, "", deltas, 0,
                               leases ? c->lease_id : NULL);
    if (!r)
        return;
    c->refund_cmd = r->cmd;
    c->refund_len = r->cmdlen;
    c->refund_conditional = leases;
    r->cmd = NULL;
    call_free(r);
}

static void call_answer_unavailable(rcall_t *c)
{
    if (c->answered)
        return;
    c->answered = 1;
    if (c->kind == RC_ACQUIRE && c->sent_to_redis)
        prepare_refund(c); /* while the caller's checks are still valid */
    if ((c->kind == RC_JOB_DONE || c->kind == RC_JOB_FIND) && c->done_cb)
        c->done_cb(c->arg, -1);
    if (c->kind == RC_ACQUIRE || c->kind == RC_USAGE)
        answer_unavailable(c->rw, c->kind, c->checks, c->n, c->lease_id, c->cb, c->arg);
}

static void call_free(rcall_t *c)
{
    free(c->cmd);
    free(c->release_cmd);
    free(c->refund_cmd);
    free(c);
}

/* Held decisions: none is in Redis, so failing one charges nothing. */
static void held_fail_all(redis_worker_t *rw)
{
    rcall_t *c = rw->held;
    rw->held = rw->held_tail = NULL;
    while (c) {
        rcall_t *next = c->held_next;
        call_answer_unavailable(c);
        call_free(c);
        c = next;
    }
}

/* The connection's clock is known: send the held decisions, with their
 * deadlines on Redis's clock. */
static void held_send_all(redis_worker_t *rw)
{
    rcall_t *c = rw->held;
    rw->held = rw->held_tail = NULL;
    while (c) {
        rcall_t *next = c->held_next;
        rcall_t *nc = decision_call(rw, c->kind, c->checks, c->n, c->lease_id, NULL,
                                    c->deadline, NULL);
        if (nc) {
            nc->cb = c->cb;
            nc->arg = c->arg;
            nc->checks = c->checks;
            nc->n = c->n;
            if (queue(rw, nc) == 0)
                c->answered = 1; /* now nc's to answer */
            else
                call_free(nc);
        }
        call_answer_unavailable(c);
        call_free(c);
        c = next;
    }
}

static void schedule_reconnect(redis_worker_t *rw);

/* One line per outage, saying what decisions do meanwhile. */
static void note_down(redis_worker_t *rw, const char *why)
{
    if (!rw->was_down)
        rlog(rw->rs, "redis %s:%u: %s; until it is back, decisions %s", rw->rs->o.host,
             rw->rs->o.port, why,
             rw->fallback ? "are counted in this instance's memory: each instance enforces "
                            "the limits alone"
                          : "are refused with 503 LIMITER_UNAVAILABLE");
    rw->was_down = 1;
}

/* Drop the connection: every call not yet answered is answered now; hiredis
 * then hands each one back to on_reply() with NULL, which frees it. */
static void connection_drop(redis_worker_t *rw, const char *why)
{
    redisAsyncContext *ac = rw->ac;
    if (!ac)
        return;
    note_down(rw, why);
    rw->ac = NULL;
    rw->connected = 0;
    rw->ready = 0;
    rw->offset_known = 0;
    for (rcall_t *c = rw->head; c; c = c->next)
        call_answer_unavailable(c);
    held_fail_all(rw);
    redisAsyncFree(ac); /* on_reply(NULL) for each call, then on_disconnect */
    schedule_reconnect(rw);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    redis_worker_t *rw = arg;
    int64_t now = mono_ms();
    int late = 0;
    /* Deadlines are in sending order but for a call sent again (NOSCRIPT):
     * every call is looked at. */
    for (rcall_t *c = rw->head; c; c = c->next) {
        if (!c->answered && c->deadline <= now) {
            late = 1;
            call_answer_unavailable(c); /* may queue more calls at the tail */
        }
    }
    /* Held decisions that ran out: never sent, nothing to undo. */
    while (rw->held && rw->held->deadline <= now) {
        rcall_t *c = rw->held;
        rw->held = c->held_next;
        if (!rw->held)
            rw->held_tail = NULL;
        late = 1;
        call_answer_unavailable(c);
        call_free(c);
    }
    if (late) {
        char why[96];
        snprintf(why, sizeof why, "no answer within %lld ms",
                 (long long)rw->rs->o.timeout_ms);
        note_down(rw, why);
    }
    if (rw->head && now - rw->head->sent >= drop_after(rw)) {
        char why[96];
        snprintf(why, sizeof why, "no reply at all for %lld ms", (long long)drop_after(rw));
        connection_drop(rw, why);
        return;
    }
    arm_timer(rw);
}

/* ---- sending ------------------------------------------------------------ */

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Queue a formatted command; on failure the call is not queued. */
static int queue(redis_worker_t *rw, rcall_t *c)
{
    if (!rw->ac || rw->detaching)
        return -1;
    if (redisAsyncFormattedCommand(rw->ac, on_reply, c, c->cmd, (size_t)c->cmdlen) != REDIS_OK)
        return -1;
    c->sent_to_redis = 1;
    list_add(rw, c);
    int64_t when = rw->head->sent + drop_after(rw);
    arm_timer_for(rw, c->deadline < when ? c->deadline : when);
    return 0;
}

static rcall_t *call_new(redis_worker_t *rw, enum call_kind kind, int argc,
                         const char **argv, const size_t *argvlen)
{
    rcall_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->rw = rw;
    c->kind = kind;
    c->sent = mono_ms();
    c->deadline = c->sent + rw->rs->o.timeout_ms;
    c->cmdlen = redisFormatCommandArgv(&c->cmd, argc, argv, argvlen);
    if (c->cmdlen < 0) {
        free(c);
        return NULL;
    }
    return c;
}

/* A setup command (AUTH, SELECT, SCRIPT LOAD): replies are checked only for
 * errors, which drop the connection. */
static void send_setup(redis_worker_t *rw, int argc, const char **argv)
{
    size_t len[4];
    for (int i = 0; i < argc; i++)
        len[i] = strlen(argv[i]);
    rcall_t *c = call_new(rw, RC_SETUP, argc, argv, len);
    if (c && queue(rw, c) != 0)
        call_free(c);
}

/* SCRIPT LOAD of every script this file calls by EVALSHA. */
static void load_scripts(redis_worker_t *rw)
{
    const char *const scripts[] = {rw_lua_acquire, rw_lua_release, rw_lua_hold, rw_lua_renew};
    for (size_t i = 0; i < sizeof scripts / sizeof *scripts; i++) {
        const char *a[] = {"SCRIPT", "LOAD", scripts[i]};
        send_setup(rw, 3, a);
    }
}

/* ---- replies ------------------------------------------------------------ */

/* Redis's clock read `redis_ms` at the latest now: redis_ms - mono_ms() is
 * a lower bound of the offset between the clocks (the reply's way back and
 * a busy loop only make it smaller, which only makes deadlines earlier).
 * The best bound seen is kept; one much lower (Redis's clock stepped back)
 * replaces it. */
static void offset_learn(redis_worker_t *rw, int64_t redis_ms)
{
    if (rw->rs->o.clock)
        return; /* a test clock: no deadlines */
    int64_t est = redis_ms - mono_ms();
    if (!rw->offset_known || est > rw->offset_ms || est < rw->offset_ms - 1000)
        rw->offset_ms = est;
    rw->offset_known = 1;
}

static int parse_outcome(const redisReply *r, size_t n, lim_outcome_t *o)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 + 4 * n)
        return -1;
    for (size_t i = 0; i < r->elements; i++)
        if (r->element[i]->type != REDIS_REPLY_INTEGER)
            return -1;
    o->admitted = r->element[0]->integer == 1;
    o->now_ms = r->element[1]->integer;
    for (size_t i = 0; i < n; i++) {
        redisReply **e = &r->element[2 + 4 * i];
        o->res[i].ok = e[0]->integer == 1;
        o->res[i].used = e[1]->integer;
        o->res[i].reset_ms = e[2]->integer;
        o->res[i].retry_ms = e[3]->integer < 0 ? LIM_NEVER : e[3]->integer;
    }
    return 0;
}

static void job_found(rcall_t *c, const redisReply *r);

static void pending_arm(redis_worker_t *rw)
{
    if (rw->pending && !evtimer_pending(rw->pending_ev, NULL)) {
        struct timeval tv = {1, 0};
        evtimer_add(rw->pending_ev, &tv);
    }
}

/* A call whose reply is lost: what it would have given back is kept. */
static void keep_pending(redis_worker_t *rw, rcall_t *c)
{
    char **cmd = NULL;
    int len = 0;
    if (c->kind == RC_ACQUIRE && c->refund_cmd && c->refund_conditional) {
        /* Lost with its connection after the caller was told 503: charged
         * or not, the conditional refund gives back only what was. */
        cmd = &c->refund_cmd;
        len = c->refund_len;
    } else if (c->kind == RC_ACQUIRE && c->release_cmd) {
        cmd = &c->release_cmd;
        len = c->release_len;
    } else if (c->kind == RC_RELEASE || c->kind == RC_JOB_DONE) {
        cmd = &c->cmd;
        len = c->cmdlen;
    } else {
        return;
    }
    if (rw->n_pending >= PENDING_MAX || rw->detaching)
        return; /* the leases still expire on their own */
    pending_t *p = calloc(1, sizeof *p);
    if (!p)
        return;
    p->cmd = *cmd;
    p->len = len;
    *cmd = NULL;
    p->sends_left = PENDING_SENDS;
    p->next = rw->pending;
    rw->pending = p;
    rw->n_pending++;
    pending_arm(rw);
}

static void on_pending(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    redis_worker_t *rw = arg;
    if (rw->ready) {
        for (pending_t **pp = &rw->pending; *pp;) {
            pending_t *p = *pp;
            rcall_t *c = calloc(1, sizeof *c);
            if (c && (c->cmd = malloc((size_t)p->len))) {
                memcpy(c->cmd, p->cmd, (size_t)p->len);
                c->cmdlen = p->len;
                c->rw = rw;
                c->kind = RC_RELEASE;
                c->sent = mono_ms();
                c->deadline = c->sent + rw->rs->o.timeout_ms;
                if (queue(rw, c) != 0)
                    call_free(c);
            } else {
                free(c);
            }
            p->sends_left--;
            if (p->sends_left <= 0) {
                *pp = p->next;
                free(p->cmd);
                free(p);
                rw->n_pending--;
            } else {
                pp = &p->next;
            }
        }
    }
    pending_arm(rw);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    rcall_t *c = privdata;
    redis_worker_t *rw = c->rw;
    const redisReply *r = reply;
    (void)ac;
    list_del(rw, c);

    if (!r) {
        call_answer_unavailable(c);
        keep_pending(rw, c);
        call_free(c);
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        if (strncmp(r->str, "NOSCRIPT", 8) == 0 && !c->retried && c->kind != RC_SETUP) {
            /* Redis lost its scripts (restart, SCRIPT FLUSH): load them,
             * then send the same call again, once. */
            c->retried = 1;
            load_scripts(rw); /* all: the call may be any of them */
            if (queue(rw, c) == 0)
                return;
        }
        if (c->kind == RC_SETUP) {
            char why[300];
            snprintf(why, sizeof why, "setup failed: %s", r->str);
            call_free(c);
            connection_drop(rw, why);
            return;
        }
        rlog(rw->rs, "redis: %s", r->str);
        call_answer_unavailable(c);
        call_free(c);
        return;
    }
    if (rw->connected && !rw->ready) {
        /* The first answer on this connection: Redis is really back (a
         * TCP connect alone proves nothing: the kernel accepts for a
         * stopped Redis). */
        rw->ready = 1;
        rw->backoff_ms = BACKOFF_MIN_MS;
        if (rw->pending) {
            /* The first re-send of lost releases goes now, not in 1 s. */
            struct timeval now_tv = {0, 0};
            evtimer_add(rw->pending_ev, &now_tv);
        }
    }
    if (rw->was_down && rw->ready) {
        rlog(rw->rs, "redis %s:%u: answering again", rw->rs->o.host, rw->rs->o.port);
        rw->was_down = 0;
    }
    /* Redis answers: what the fallback admitted meanwhile goes to Redis now,
     * whether or not traffic comes. */
    if (atomic_load(&rw->rs->debt_hint) > 0)
        debt_replay(rw);
    if (c->kind == RC_TIME) {
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
            r->element[0]->type == REDIS_REPLY_STRING &&
            r->element[1]->type == REDIS_REPLY_STRING) {
            offset_learn(rw, strtoll(r->element[0]->str, NULL, 10) * 1000 +
                                 strtoll(r->element[1]->str, NULL, 10) / 1000);
            held_send_all(rw);
        }
        call_free(c);
        return;
    }
    if (c->kind == RC_RENEW) {
        /* Leases found in none of their sets: renewed no more. */
        if (r->type == REDIS_REPLY_ARRAY)
            for (size_t i = 0; i < r->elements; i++)
                if (r->element[i]->type == REDIS_REPLY_STRING)
                    renew_forget(rw, r->element[i]->str);
        call_free(c);
        return;
    }
    if (c->answered && c->kind == RC_ACQUIRE && r->type == REDIS_REPLY_ARRAY &&
        r->elements >= 1 && r->element[0]->type == REDIS_REPLY_INTEGER &&
        r->element[0]->integer == 1) {
        /* Admitted after the request was told 503 (its deadline had not
         * passed on Redis's clock, but the reply came too late): give the
         * leases and the charges back. */
        /* The refund first: with leases it is conditional on them. */
        char **cmds[] = {&c->refund_cmd, &c->release_cmd};
        int lens[] = {c->refund_len, c->release_len};
        for (int i = 0; i < 2; i++) {
            if (!*cmds[i])
                continue;
            rcall_t *back = calloc(1, sizeof *back);
            if (!back)
                continue;
            back->rw = rw;
            back->kind = RC_RELEASE;
            back->sent = mono_ms();
            back->deadline = back->sent + rw->rs->o.timeout_ms;
            back->cmd = *cmds[i];
            back->cmdlen = lens[i];
            *cmds[i] = NULL;
            if (queue(rw, back) != 0)
                call_free(back);
        }
    }
    if (c->kind == RC_JOB_DONE) {
        /* The leases are gone even when the caller was already told
         * "unavailable". */
        if (!c->answered && c->done_cb)
            c->done_cb(c->arg, r->type == REDIS_REPLY_INTEGER && r->integer > 0);
        c->answered = 1;
    } else if (c->kind == RC_JOB_FIND) {
        if (!c->answered)
            job_found(c, r);
        c->answered = 1;
    } else if (!c->answered && (c->kind == RC_ACQUIRE || c->kind == RC_USAGE)) {
        lim_outcome_t o;
        memset(&o, 0, sizeof o);
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
            r->element[0]->type == REDIS_REPLY_INTEGER && r->element[0]->integer == -1 &&
            r->element[1]->type == REDIS_REPLY_INTEGER) {
            /* Ran past its deadline on Redis's clock: nothing charged. */
            offset_learn(rw, r->element[1]->integer);
            call_answer_unavailable(c);
        } else if (parse_outcome(r, c->n, &o) != 0) {
            rlog(rw->rs, "redis: unexpected reply to a decision");
            call_answer_unavailable(c);
        } else {
            c->answered = 1;
            offset_learn(rw, o.now_ms);
            atomic_fetch_add(&rw->rs->stats.decisions, 1);
            if (c->kind == RC_ACQUIRE && o.admitted)
                renew_add(rw, c->lease_id, c->checks, c->n);
            c->cb(c->arg, STORE_OK, &o);
        }
    }
    call_free(c);
}

/* ---- connection life ---------------------------------------------------- */

static void on_connect(const redisAsyncContext *ac, int status)
{
    redis_worker_t *rw = ac->data;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback. */
        if (rw->ac == ac) {
            rw->ac = NULL;
            rw->connected = 0;
            rw->ready = 0;
            rw->offset_known = 0;
            for (rcall_t *c = rw->head; c; c = c->next)
                call_answer_unavailable(c);
            held_fail_all(rw);
            char why[300];
            snprintf(why, sizeof why, "cannot connect: %s", ac->errstr);
            note_down(rw, why);
            schedule_reconnect(rw);
        }
        return;
    }
    rw->connected = 1;
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    redis_worker_t *rw = ac->data;
    (void)status;
    if (rw->ac != ac)
        return; /* dropped on purpose: already handled */
    rw->ac = NULL;
    rw->connected = 0;
    rw->ready = 0;
    rw->offset_known = 0;
    held_fail_all(rw);
    char why[300];
    snprintf(why, sizeof why, "connection lost: %s", ac->errstr[0] ? ac->errstr : "closed");
    note_down(rw, why);
    schedule_reconnect(rw);
}

static void connect_now(redis_worker_t *rw)
{
    redis_store_t *rs = rw->rs;
    atomic_fetch_add(&rs->stats.connects, 1);
    redisAsyncContext *ac = redisAsyncConnect(rs->o.host, rs->o.port);
    if (!ac || ac->err) {
        char why[300];
        snprintf(why, sizeof why, "cannot connect: %s", ac ? ac->errstr : "out of memory");
        note_down(rw, why);
        if (ac)
            redisAsyncFree(ac);
        schedule_reconnect(rw);
        return;
    }
    ac->data = rw;
    redisLibeventAttach(ac, rw->evb);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    rw->ac = ac;
    /* Sent in this order ahead of any decision; their deadlines also bound
     * a connect that never completes. */
    if (rs->o.password && *rs->o.password) {
        const char *a[] = {"AUTH", rs->o.password};
        send_setup(rw, 2, a);
    }
    if (rs->o.db) {
        char db[16];
        snprintf(db, sizeof db, "%d", rs->o.db);
        const char *a[] = {"SELECT", db};
        send_setup(rw, 2, a);
    }
    load_scripts(rw);
    /* Redis's clock, for the deadlines of the first decisions. */
    const char *tv[] = {"TIME"};
    size_t tl[] = {4};
    rcall_t *tc = call_new(rw, RC_TIME, 1, tv, tl);
    if (tc && queue(rw, tc) != 0)
        call_free(tc);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    redis_worker_t *rw = arg;
    if (!rw->ac && !rw->detaching)
        connect_now(rw);
}

static void schedule_reconnect(redis_worker_t *rw)
{
    if (rw->detaching || evtimer_pending(rw->retry_ev, NULL))
        return;
    struct timeval tv = {.tv_sec = rw->backoff_ms / 1000,
                         .tv_usec = (rw->backoff_ms % 1000) * 1000};
    evtimer_add(rw->retry_ev, &tv);
    rw->backoff_ms *= 2;
    if (rw->backoff_ms > BACKOFF_MAX_MS)
        rw->backoff_ms = BACKOFF_MAX_MS;
}

/* ---- the store ---------------------------------------------------------- */

/* EVALSHA sha with keys[0..k) and args[0..nargs), formatted into *cmd;
 * its length, or -1. Used by every script call but the decision's. */
static int format_script(const char *sha, char keys[][LIM_KEY_MAX + 64], int k,
                         const char *const *args, int nargs, char **cmd)
{
    const char *argv[3 + LIM_MAX_CHECKS + 1 + 6];
    size_t len[3 + LIM_MAX_CHECKS + 1 + 6];
    char numkeys[16];
    int a = 0;
    if (k > LIM_MAX_CHECKS + 1 || nargs > 6)
        return -1;
    snprintf(numkeys, sizeof numkeys, "%d", k);
    argv[a++] = "EVALSHA";
    argv[a++] = sha;
    argv[a++] = numkeys;
    for (int i = 0; i < k; i++)
        argv[a++] = keys[i];
    for (int i = 0; i < nargs; i++)
        argv[a++] = args[i];
    for (int i = 0; i < a; i++)
        len[i] = strlen(argv[i]);
    return redisFormatCommandArgv(cmd, a, argv, len);
}

/* Fire and forget a script call. */
static void send_script(redis_worker_t *rw, const char *sha, char keys[][LIM_KEY_MAX + 64],
                        int k, const char *const *args, int nargs)
{
    if (!rw->ac)
        return;
    rcall_t *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->rw = rw;
    c->kind = RC_RELEASE;
    c->sent = mono_ms();
    c->deadline = c->sent + rw->rs->o.timeout_ms;
    c->cmdlen = format_script(sha, keys, k, args, nargs, &c->cmd);
    if (c->cmdlen < 0 || queue(rw, c) != 0)
        call_free(c);
}

/* Gauge keys (with prefix) of checks, into keys[]; returns how many. */
static int gauge_keys(redis_worker_t *rw, const lim_check_t *checks, size_t n,
                      char keys[][LIM_KEY_MAX + 64])
{
    int k = 0;
    for (size_t i = 0; i < n; i++)
        if (checks[i].kind == LIM_CK_GAUGE)
            snprintf(keys[k++], LIM_KEY_MAX + 64, "%s%s", rw->rs->o.key_prefix,
                     checks[i].key);
    return k;
}

static int format_release(redis_worker_t *rw, const lim_check_t *checks, size_t n,
                          const char *lease_id, char **cmd);

/* How much earlier than the local deadline a decision's script deadline
 * is: time for its reply to come back once it ran. */
static int64_t deadline_margin(const redis_worker_t *rw)
{
    return clamp64(rw->rs->o.timeout_ms / 4, 2, 25);
}

/* EVALSHA sha numkeys KEYS... ARGV... for the acquire script. A charging
 * decision (RC_ACQUIRE) answered by local_deadline (monotonic ms; 0: now +
 * timeout_ms) carries that deadline on Redis's clock once the offset is
 * known. Amounts and limits are clamped to what the script accepts. */
static rcall_t *decision_call(redis_worker_t *rw, enum call_kind kind,
                              const lim_check_t *checks, size_t n, const char *lease_id,
                              const int64_t *deltas, int64_t local_deadline,
                              const char *refund_of)
{
    redis_store_t *rs = rw->rs;
    enum { FIXED = 7, PER = 5 };
    const char *argv[FIXED + PER * LIM_MAX_CHECKS];
    size_t len[FIXED + PER * LIM_MAX_CHECKS];
    char keys[LIM_MAX_CHECKS][LIM_KEY_MAX + 64];
    char nums[LIM_MAX_CHECKS][3][24];
    char numkeys[24], now[24], deadline[24];
    if (n > LIM_MAX_CHECKS)
        return NULL;
    if (local_deadline == 0)
        local_deadline = mono_ms() + rs->o.timeout_ms;
    int a = 0;
    argv[a++] = "EVALSHA";
    argv[a++] = rs->sha_acquire;
    snprintf(numkeys, sizeof numkeys, "%zu", n);
    argv[a++] = numkeys;
    for (size_t i = 0; i < n; i++) {
        snprintf(keys[i], sizeof keys[i], "%s%s", rs->o.key_prefix, checks[i].key);
        argv[a++] = keys[i];
    }
    now[0] = '\0';
    if (rs->o.clock)
        snprintf(now, sizeof now, "%lld", (long long)rs->o.clock(rs->o.clock_arg));
    argv[a++] = now;
    argv[a++] = lease_id ? lease_id : "";
    argv[a++] = kind == RC_ACQUIRE ? "1" : kind == RC_ADJUST ? "a" : "0";
    deadline[0] = '\0';
    if (kind == RC_ACQUIRE && !rs->o.clock && rw->offset_known)
        snprintf(deadline, sizeof deadline, "%lld",
                 (long long)(local_deadline + rw->offset_ms - deadline_margin(rw)));
    argv[a++] = kind == RC_ADJUST && refund_of ? refund_of : deadline;
    for (size_t i = 0; i < n; i++) {
        const lim_check_t *c = &checks[i];
        switch (c->kind) {
        case LIM_CK_ROLLING:
            argv[a++] = c->shadow ? "R" : "r";
            snprintf(nums[i][0], sizeof nums[i][0], "%lld", (long long)c->window_ms);
            break;
        case LIM_CK_CALENDAR:
            argv[a++] = c->shadow ? "C" : "c";
            snprintf(nums[i][0], sizeof nums[i][0], "%s", c->per == LIM_PER_MONTH ? "m" : "d");
            break;
        case LIM_CK_GAUGE:
            argv[a++] = c->shadow ? "G" : "g";
            snprintf(nums[i][0], sizeof nums[i][0], "%lld",
                     (long long)(c->lease_ttl_ms > 0 ? c->lease_ttl_ms : 90000));
            break;
        }
        argv[a++] = nums[i][0];
        snprintf(nums[i][1], sizeof nums[i][1], "%lld",
                 (long long)clamp64(c->limit, 0, LIM_PRICE_MAX));
        argv[a++] = nums[i][1];
        int64_t amount = deltas ? clamp64(deltas[i], -LIM_PRICE_MAX, LIM_PRICE_MAX)
                                : clamp64(c->amount, 0, LIM_PRICE_MAX);
        snprintf(nums[i][2], sizeof nums[i][2], "%lld", (long long)amount);
        argv[a++] = nums[i][2];
    }
    for (int i = 0; i < a; i++)
        len[i] = strlen(argv[i]);
    rcall_t *call = call_new(rw, kind, a, argv, len);
    if (call)
        call->deadline = local_deadline;
    if (call && lease_id)
        snprintf(call->lease_id, sizeof call->lease_id, "%s", lease_id);
    if (call && kind == RC_ACQUIRE && lim_checks_have_gauge(checks, n)) {
        call->release_len = format_release(rw, checks, n, lease_id, &call->release_cmd);
        if (call->release_len < 0)
            call->release_cmd = NULL;
    }
    return call;
}

static void decide(store_worker_t *w, enum call_kind kind, const lim_check_t *checks,
                   size_t n, const char *lease_id, store_acquire_cb cb, void *arg)
{
    redis_worker_t *rw = (redis_worker_t *)w;
    if (rw->ac && kind == RC_ACQUIRE && !rw->rs->o.clock && !rw->offset_known) {
        /* No deadline on Redis's clock yet: wait for the connection's TIME
         * (within this decision's own deadline), then send. */
        rcall_t *h = calloc(1, sizeof *h);
        if (h) {
            h->rw = rw;
            h->kind = kind;
            h->cb = cb;
            h->arg = arg;
            h->checks = checks;
            h->n = n;
            snprintf(h->lease_id, sizeof h->lease_id, "%s", lease_id ? lease_id : "");
            h->sent = mono_ms();
            h->deadline = h->sent + rw->rs->o.timeout_ms;
            if (rw->held_tail)
                rw->held_tail->held_next = h;
            else
                rw->held = h;
            rw->held_tail = h;
            arm_timer_for(rw, h->deadline);
            return;
        }
    }
    rcall_t *c = rw->ac ? decision_call(rw, kind, checks, n, lease_id, NULL, 0, NULL) : NULL;
    if (c) {
        c->cb = cb;
        c->arg = arg;
        c->checks = checks;
        c->n = n;
        if (queue(rw, c) == 0)
            return;
        call_free(c);
    }
    answer_unavailable(rw, kind, checks, n, lease_id, cb, arg);
}

static void redis_acquire(store_worker_t *w, const lim_check_t *checks, size_t n,
                          const char *lease_id, store_acquire_cb cb, void *arg)
{
    decide(w, RC_ACQUIRE, checks, n, lease_id, cb, arg);
}

static void redis_usage(store_worker_t *w, const lim_check_t *checks, size_t n,
                        store_usage_cb cb, void *arg)
{
    decide(w, RC_USAGE, checks, n, NULL, cb, arg);
}

/* The release of a request's leases as a formatted EVALSHA of release.lua
 * (into *cmd, malloc'd); its length, or -1 when there are no leases. */
static int format_release(redis_worker_t *rw, const lim_check_t *checks, size_t n,
                          const char *lease_id, char **cmd)
{
    char keys[LIM_MAX_CHECKS][LIM_KEY_MAX + 64];
    int k = gauge_keys(rw, checks, n, keys);
    const char *args[] = {lease_id};
    return k ? format_script(rw->rs->sha_release, keys, k, args, 1, cmd) : -1;
}

static void redis_release(store_worker_t *w, const lim_check_t *checks, size_t n,
                          const char *lease_id)
{
    redis_worker_t *rw = (redis_worker_t *)w;
    if (rw->fallback && lease_forget(rw, lease_id)) {
        store_release(rw->fallback, checks, n, lease_id);
        return;
    }
    renew_forget(rw, lease_id);
    /* If Redis is away the lease expires on its own (lease_ttl_ms). */
    char keys[LIM_MAX_CHECKS][LIM_KEY_MAX + 64];
    int k = gauge_keys(rw, checks, n, keys);
    const char *args[] = {lease_id};
    if (k)
        send_script(rw, rw->rs->sha_release, keys, k, args, 1);
}

static void fallback_found(void *arg, int found)
{
    *(int *)arg = found;
}

static void redis_adjust(store_worker_t *w, const lim_check_t *checks, size_t n,
                         const int64_t *deltas, int64_t charged_ms)
{
    redis_worker_t *rw = (redis_worker_t *)w;
    if (!rw->ac && rw->fallback) {
        /* Redis away (allow): counted here, and owed to Redis. */
        store_adjust(rw->fallback, checks, n, deltas, charged_ms);
        for (size_t i = 0; i < n; i++)
            debt_record(rw->rs, &checks[i], deltas[i], charged_ms);
        return;
    }
    char charged[24];
    snprintf(charged, sizeof charged, "%lld", (long long)charged_ms);
    rcall_t *c = rw->ac ? decision_call(rw, RC_ADJUST, checks, n, charged, deltas, 0, NULL) : NULL;
    if (c && queue(rw, c) != 0)
        call_free(c);
    /* Redis away (deny): the estimate stays charged (never an undercount). */
}

/* Every renew_ms: one renew.lua call for all the leases this worker holds
 * (in chunks of RENEW_CHUNK_KEYS keys). */
static void on_renew(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    redis_worker_t *rw = arg;
    if (!rw->ac || !rw->ready || rw->n_renew == 0)
        return;
    size_t cap = 3 + 3 * RENEW_CHUNK_KEYS;
    const char **argv = malloc(cap * sizeof *argv);
    size_t *len = malloc(cap * sizeof *len);
    char (*ttl)[24] = malloc(RENEW_CHUNK_KEYS * sizeof *ttl);
    if (!argv || !len || !ttl)
        goto out;
    int b = 0;
    renew_lease_t *l = NULL;
    for (;;) {
        /* Keys first (KEYS), then id and ttl pairs (ARGV) in the same order. */
        const char *keys[RENEW_CHUNK_KEYS];
        const char *ids[RENEW_CHUNK_KEYS];
        int k = 0;
        while (k < RENEW_CHUNK_KEYS) {
            while (!l && b < RENEW_BUCKETS)
                l = rw->renew[b++];
            if (!l || k + l->nkeys > RENEW_CHUNK_KEYS)
                break;
            for (int i = 0; i < l->nkeys; i++) {
                keys[k] = l->k[i].key;
                ids[k] = l->id;
                snprintf(ttl[k], sizeof ttl[k], "%lld", (long long)l->k[i].ttl_ms);
                k++;
            }
            l = l->next;
        }
        if (k == 0)
            break;
        char numkeys[16];
        snprintf(numkeys, sizeof numkeys, "%d", k);
        size_t a = 0;
        argv[a++] = "EVALSHA";
        argv[a++] = rw->rs->sha_renew;
        argv[a++] = numkeys;
        for (int i = 0; i < k; i++)
            argv[a++] = keys[i];
        for (int i = 0; i < k; i++) {
            argv[a++] = ids[i];
            argv[a++] = ttl[i];
        }
        for (size_t i = 0; i < a; i++)
            len[i] = strlen(argv[i]);
        rcall_t *c = call_new(rw, RC_RENEW, (int)a, argv, len);
        if (c && queue(rw, c) != 0)
            call_free(c);
        if (!l && b >= RENEW_BUCKETS)
            break;
    }
out:
    free(argv);
    free(len);
    free(ttl);
}


/* Jobs. An account's job is a hash, PREFIX{account}:job:JOB, mapping each
 * lease held for that job id (one per create: job:JOB:REQUESTID) to the
 * gauge keys it counts in; it shares the account's hash tag with those
 * gauges, so holding and releasing are each one script on one slot. An
 * index per job id, PREFIXjobs:JOB (account -> expiry), answers which
 * accounts hold an id (the admin call without ?account=). */
static void job_record_key(redis_worker_t *rw, const char *account, const char *job,
                           char *out, size_t len)
{
    snprintf(out, len, "%s{%s}:job:%s", rw->rs->o.key_prefix, account, job);
}

static void job_index_key(redis_worker_t *rw, const char *job, char *out, size_t len)
{
    snprintf(out, len, "%sjobs:%s", rw->rs->o.key_prefix, job);
}

/* hold.lua's clock argument: "" (Redis TIME) but under a test clock. */
static void job_now(redis_worker_t *rw, char out[24])
{
    out[0] = '\0';
    if (rw->rs->o.clock)
        snprintf(out, 24, "%lld", (long long)rw->rs->o.clock(rw->rs->o.clock_arg));
}

static void redis_job_hold(store_worker_t *w, const lim_check_t *checks, size_t n,
                           const char *lease_id, const char *account, const char *job,
                           int64_t ttl_ms)
{
    redis_worker_t *rw = (redis_worker_t *)w;
    redis_store_t *rs = rw->rs;
    if (rw->fallback && lease_forget(rw, lease_id)) {
        store_job_hold(rw->fallback, checks, n, lease_id, account, job, ttl_ms);
        return;
    }
    /* keys[0] is the record, then the gauges. */
    char keys[LIM_MAX_CHECKS + 1][LIM_KEY_MAX + 64];
    int k = gauge_keys(rw, checks, n, keys + 1);
    if (k == 0)
        return;
    job_record_key(rw, account, job, keys[0], sizeof keys[0]);
    char member[200], ttl[24], now[24];
    snprintf(member, sizeof member, "job:%s:%s", job, lease_id);
    snprintf(ttl, sizeof ttl, "%lld", (long long)ttl_ms);
    job_now(rw, now);
    const char *args[] = {"hold", now, lease_id, member, ttl};
    send_script(rw, rs->sha_hold, keys, k + 1, args, 5);
    char index[1][LIM_KEY_MAX + 64];
    job_index_key(rw, job, index[0], sizeof index[0]);
    const char *iargs[] = {"index", now, account, ttl};
    send_script(rw, rs->sha_hold, index, 1, iargs, 4);
}

/* The done of (account, job): one script on the record, the index told. */
static void job_done_account(redis_worker_t *rw, const char *account, const char *job,
                             void (*cb)(void *arg, int found), void *arg)
{
    redis_store_t *rs = rw->rs;
    char rec[1][LIM_KEY_MAX + 64];
    job_record_key(rw, account, job, rec[0], sizeof rec[0]);
    char now[24];
    job_now(rw, now);
    const char *args[] = {"done", now};
    rcall_t *c = rw->ac ? calloc(1, sizeof *c) : NULL;
    if (c) {
        c->rw = rw;
        c->kind = RC_JOB_DONE;
        c->sent = mono_ms();
        c->deadline = c->sent + rs->o.timeout_ms;
        c->done_cb = cb;
        c->arg = arg;
        c->cmdlen = format_script(rs->sha_hold, rec, 1, args, 2, &c->cmd);
        if (c->cmdlen >= 0 && queue(rw, c) == 0) {
            char index[1][LIM_KEY_MAX + 64];
            job_index_key(rw, job, index[0], sizeof index[0]);
            const char *uargs[] = {"unindex", now, account};
            send_script(rw, rs->sha_hold, index, 1, uargs, 3);
            return;
        }
        call_free(c);
    }
    if (cb)
        cb(arg, -1);
}

/* The accounts that hold a job (up to two): none, one to release, or too
 * many to choose. */
static void job_found(rcall_t *c, const redisReply *r)
{
    if (!c->done_cb)
        return;
    if (r->type != REDIS_REPLY_ARRAY) {
        c->done_cb(c->arg, -1);
        return;
    }
    if (r->elements == 0) {
        c->done_cb(c->arg, 0);
        return;
    }
    if (r->elements > 1 || r->element[0]->type != REDIS_REPLY_STRING) {
        c->done_cb(c->arg, r->elements > 1 ? -2 : -1);
        return;
    }
    char account[LIM_KEY_MAX];
    snprintf(account, sizeof account, "%s", r->element[0]->str);
    job_done_account(c->rw, account, c->lease_id, c->done_cb, c->arg);
}

static void redis_job_done(store_worker_t *w, const char *account, const char *job,
                           void (*cb)(void *arg, int found), void *arg)
{
    redis_worker_t *rw = (redis_worker_t *)w;
    redis_store_t *rs = rw->rs;
    if (rw->fallback) {
        /* A job admitted while Redis was away lives in local memory. */
        int found = 0;
        store_job_done(rw->fallback, account, job, fallback_found, &found);
        if (found == 1 || found == -2) {
            if (cb)
                cb(arg, found);
            return;
        }
    }
    if (account) {
        job_done_account(rw, account, job, cb, arg);
        return;
    }
    char index[1][LIM_KEY_MAX + 64];
    job_index_key(rw, job, index[0], sizeof index[0]);
    char now[24];
    job_now(rw, now);
    const char *args[] = {"find", now};
    rcall_t *c = rw->ac ? calloc(1, sizeof *c) : NULL;
    if (c) {
        c->rw = rw;
        c->kind = RC_JOB_FIND;
        c->sent = mono_ms();
        c->deadline = c->sent + rs->o.timeout_ms;
        c->done_cb = cb;
        c->arg = arg;
        snprintf(c->lease_id, sizeof c->lease_id, "%s", job);
        c->cmdlen = format_script(rs->sha_hold, index, 1, args, 2, &c->cmd);
        if (c->cmdlen >= 0 && queue(rw, c) == 0)
            return;
        call_free(c);
    }
    if (cb)
        cb(arg, -1);
}

static int redis_ready(store_worker_t *w)
{
    redis_worker_t *rw = (redis_worker_t *)w;
    return rw->ac != NULL && rw->ready;
}

static store_worker_t *redis_attach(store_t *s, struct event_base *base)
{
    redis_store_t *rs = (redis_store_t *)s;
    redis_worker_t *rw = calloc(1, sizeof *rw);
    if (!rw)
        return NULL;
    rw->base.store = s;
    rw->rs = rs;
    rw->evb = base;
    rw->backoff_ms = BACKOFF_MIN_MS;
    rw->timer = evtimer_new(base, on_timer, rw);
    rw->retry_ev = evtimer_new(base, on_retry, rw);
    rw->pending_ev = evtimer_new(base, on_pending, rw);
    rw->renew_ev = event_new(base, -1, EV_PERSIST, on_renew, rw);
    if (rs->fallback)
        rw->fallback = store_attach(rs->fallback, base);
    if (!rw->timer || !rw->retry_ev || !rw->pending_ev || !rw->renew_ev ||
        (rs->fallback && !rw->fallback)) {
        if (rw->timer)
            event_free(rw->timer);
        if (rw->retry_ev)
            event_free(rw->retry_ev);
        if (rw->pending_ev)
            event_free(rw->pending_ev);
        if (rw->renew_ev)
            event_free(rw->renew_ev);
        if (rw->fallback)
            store_detach(rw->fallback);
        free(rw);
        return NULL;
    }
    struct timeval rtv = {.tv_sec = rs->renew_ms / 1000, .tv_usec = (rs->renew_ms % 1000) * 1000};
    evtimer_add(rw->renew_ev, &rtv);
    connect_now(rw);
    return &rw->base;
}

static void redis_detach(store_worker_t *w)
{
    redis_worker_t *rw = (redis_worker_t *)w;
    rw->detaching = 1;
    if (rw->ac) {
        redisAsyncContext *ac = rw->ac;
        rw->ac = NULL;
        /* Lease releases queued by the last requests: write them out. */
        if (rw->connected)
            redisAsyncHandleWrite(ac);
        for (rcall_t *c = rw->head; c; c = c->next)
            call_answer_unavailable(c);
        redisAsyncFree(ac);
    }
    held_fail_all(rw);
    event_free(rw->timer);
    event_free(rw->retry_ev);
    event_free(rw->pending_ev);
    event_free(rw->renew_ev);
    for (int i = 0; i < RENEW_BUCKETS; i++) {
        while (rw->renew[i]) {
            renew_lease_t *l = rw->renew[i];
            rw->renew[i] = l->next;
            free(l);
        }
    }
    while (rw->pending) {
        pending_t *p = rw->pending;
        rw->pending = p->next;
        free(p->cmd);
        free(p);
    }
    if (rw->fallback)
        store_detach(rw->fallback);
    for (int i = 0; i < LEASE_SET_BUCKETS; i++) {
        lease_node_t *n = rw->fallback_leases[i];
        while (n) {
            lease_node_t *next = n->next;
            free(n);
            n = next;
        }
    }
    free(rw);
}

static void redis_destroy(store_t *s)
{
    redis_store_t *rs = (redis_store_t *)s;
    if (rs->fallback)
        store_destroy(rs->fallback);
    for (int b = 0; b < DEBT_BUCKETS; b++) {
        while (rs->debt[b]) {
            debt_t *d = rs->debt[b];
            rs->debt[b] = d->next;
            free(d);
        }
    }
    pthread_mutex_destroy(&rs->debt_mu);
    free((char *)rs->o.host);
    free((char *)rs->o.password);
    free((char *)rs->o.key_prefix);
    free(rs);
}

static void redis_flush(store_worker_t *w)
{
    redis_worker_t *rw = (redis_worker_t *)w;
    /* Not from inside hiredis' own callbacks: the loop writes soon after. */
    if (rw->ac && rw->connected && !rw->detaching && !(rw->ac->c.flags & REDIS_IN_CALLBACK))
        redisAsyncHandleWrite(rw->ac);
    if (rw->fallback)
        store_flush(rw->fallback);
}

static const store_ops_t redis_ops = {
    .name = "redis",
    .answers_inline = 0,
    .attach = redis_attach,
    .detach = redis_detach,
    .acquire = redis_acquire,
    .release = redis_release,
    .usage = redis_usage,
    .adjust = redis_adjust,
    .job_hold = redis_job_hold,
    .job_done = redis_job_done,
    .ready = redis_ready,
    .flush = redis_flush,
    .destroy = redis_destroy,
};

static void sha1_hex(const char *s, char out[41])
{
    unsigned char d[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)s, strlen(s), d);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

store_t *store_redis_new(const store_redis_opts_t *o)
{
    redis_store_t *rs = calloc(1, sizeof *rs);
    if (!rs)
        return NULL;
    rs->base.ops = &redis_ops;
    pthread_mutex_init(&rs->debt_mu, NULL);
    rs->o = *o;
    rs->o.host = strdup(o->host ? o->host : "127.0.0.1");
    rs->o.password = o->password ? strdup(o->password) : NULL;
    rs->o.key_prefix = strdup(o->key_prefix ? o->key_prefix : "rl:");
    if (rs->o.timeout_ms <= 0)
        rs->o.timeout_ms = 50;
    if (!rs->o.port)
        rs->o.port = 6379;
    sha1_hex(rw_lua_acquire, rs->sha_acquire);
    sha1_hex(rw_lua_release, rs->sha_release);
    sha1_hex(rw_lua_hold, rs->sha_hold);
    sha1_hex(rw_lua_renew, rs->sha_renew);
    /* The lease renewal interval: 10 s; shorter through
     * RATEWALL_LEASE_RENEW_MS (for tests), never longer. */
    rs->renew_ms = RENEW_MS_DEFAULT;
    const char *renew = getenv("RATEWALL_LEASE_RENEW_MS");
    if (renew && *renew) {
        long long v = strtoll(renew, NULL, 10);
        if (v > 0)
            rs->renew_ms = clamp64(v, 50, RENEW_MS_DEFAULT);
    }
    if (o->on_error_allow)
        rs->fallback = store_memory_new(NULL, NULL);
    if (!rs->o.host || !rs->o.key_prefix || (o->password && !rs->o.password) ||
        (o->on_error_allow && !rs->fallback)) {
        redis_destroy(&rs->base);
        return NULL;
    }
    return &rs->base;
}

const store_redis_stats_t *store_redis_stats(store_t *s)
{
    return s->ops == &redis_ops ? &((redis_store_t *)s)->stats : NULL;
}
