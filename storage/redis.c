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
 * calls that ran out as unavailable but keeps them until Redis replies: a
 * late reply that admitted a request gives its leases straight back. A
 * connection with no reply for DROP_AFTER is dropped and re-made with a
 * backoff of 50 ms doubling up to 1 s.
 *
 * Ownership:
 *  - rcall_t: allocated per command, owned by this file. hiredis calls
 *    on_reply() exactly once per command (with NULL when the connection
 *    goes away); that is the one place a call is freed. The caller's
 *    callback may run earlier (timeout): `answered` keeps it to once.
 *  - A call borrows the caller's checks until it is answered, never after.
 *  - The formatted command is owned by the call (kept for a NOSCRIPT retry).
 */
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

#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 1000
#define LEASE_SET_BUCKETS 256
#define DROP_AFTER_MIN_MS 1000 /* and at least 4 timeouts */

typedef struct redis_store {
    store_t base;
    store_redis_opts_t o;     /* strings owned (copied) */
    char sha_acquire[41], sha_release[41], sha_hold[41];
    store_t *fallback;        /* memory store, on_error allow only */
    store_redis_stats_t stats;
} redis_store_t;

typedef struct redis_worker redis_worker_t;

enum call_kind { RC_ACQUIRE, RC_USAGE, RC_RELEASE, RC_SETUP, RC_ADJUST, RC_JOB_DONE,
                 RC_JOB_FIND };

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

/* Wake for the first call still waiting for its answer, or for the oldest
 * call's drop time. */
static void arm_timer(redis_worker_t *rw)
{
    if (!rw->head || evtimer_pending(rw->timer, NULL))
        return;
    int64_t when = rw->head->sent + drop_after(rw);
    for (rcall_t *c = rw->head; c; c = c->next) {
        if (!c->answered) {
            if (c->deadline < when)
                when = c->deadline;
            break;
        }
    }
    int64_t wait = when - mono_ms();
    if (wait < 1)
        wait = 1;
    struct timeval tv = {.tv_sec = wait / 1000, .tv_usec = (wait % 1000) * 1000};
    evtimer_add(rw->timer, &tv);
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
    if (st == STORE_OK && o->admitted && lim_checks_have_gauge(f->checks, f->n))
        lease_remember(f->rw, f->lease_id);
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

static void call_answer_unavailable(rcall_t *c)
{
    if (c->answered)
        return;
    c->answered = 1;
    if ((c->kind == RC_JOB_DONE || c->kind == RC_JOB_FIND) && c->done_cb)
        c->done_cb(c->arg, -1);
    if (c->kind == RC_ACQUIRE || c->kind == RC_USAGE)
        answer_unavailable(c->rw, c->kind, c->checks, c->n, c->lease_id, c->cb, c->arg);
}

static void call_free(rcall_t *c)
{
    free(c->cmd);
    free(c->release_cmd);
    free(c);
}

static void schedule_reconnect(redis_worker_t *rw);

/* One line per outage, saying what decisions do meanwhile (SPEC §2). */
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
    for (rcall_t *c = rw->head; c; c = c->next)
        call_answer_unavailable(c);
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
    for (rcall_t *c = rw->head; c && c->deadline <= now; c = c->next) {
        if (!c->answered) {
            late = 1;
            call_answer_unavailable(c); /* may queue more calls at the tail */
        }
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
    list_add(rw, c);
    arm_timer(rw);
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
    const char *const scripts[] = {rw_lua_acquire, rw_lua_release, rw_lua_hold};
    for (size_t i = 0; i < sizeof scripts / sizeof *scripts; i++) {
        const char *a[] = {"SCRIPT", "LOAD", scripts[i]};
        send_setup(rw, 3, a);
    }
}

/* ---- replies ------------------------------------------------------------ */

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
    if (c->kind == RC_ACQUIRE && c->release_cmd) {
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
        pending_arm(rw);
    }
    if (rw->was_down && rw->ready) {
        rlog(rw->rs, "redis %s:%u: answering again", rw->rs->o.host, rw->rs->o.port);
        rw->was_down = 0;
    }
    if (c->answered && c->release_cmd && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
        r->element[0]->type == REDIS_REPLY_INTEGER && r->element[0]->integer == 1) {
        /* Admitted after the request was told 503: give the leases back. */
        rcall_t *rel = calloc(1, sizeof *rel);
        if (rel) {
            rel->rw = rw;
            rel->kind = RC_RELEASE;
            rel->sent = mono_ms();
            rel->deadline = rel->sent + rw->rs->o.timeout_ms;
            rel->cmd = c->release_cmd;
            rel->cmdlen = c->release_len;
            c->release_cmd = NULL;
            if (queue(rw, rel) != 0)
                call_free(rel);
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
        if (parse_outcome(r, c->n, &o) != 0) {
            rlog(rw->rs, "redis: unexpected reply to a decision");
            call_answer_unavailable(c);
        } else {
            c->answered = 1;
            atomic_fetch_add(&rw->rs->stats.decisions, 1);
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
            for (rcall_t *c = rw->head; c; c = c->next)
                call_answer_unavailable(c);
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

/* EVALSHA sha numkeys KEYS... ARGV... for the acquire script. */
static rcall_t *decision_call(redis_worker_t *rw, enum call_kind kind,
                              const lim_check_t *checks, size_t n, const char *lease_id,
                              const int64_t *deltas)
{
    redis_store_t *rs = rw->rs;
    enum { FIXED = 6, PER = 5 };
    const char *argv[FIXED + PER * LIM_MAX_CHECKS];
    size_t len[FIXED + PER * LIM_MAX_CHECKS];
    char keys[LIM_MAX_CHECKS][LIM_KEY_MAX + 64];
    char nums[LIM_MAX_CHECKS][3][24];
    char numkeys[24], now[24];
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
    for (size_t i = 0; i < n; i++) {
        const lim_check_t *c = &checks[i];
        switch (c->kind) {
        case LIM_CK_ROLLING:
            argv[a++] = "r";
            snprintf(nums[i][0], sizeof nums[i][0], "%lld", (long long)c->window_ms);
            break;
        case LIM_CK_CALENDAR:
            argv[a++] = "c";
            snprintf(nums[i][0], sizeof nums[i][0], "%s", c->per == LIM_PER_MONTH ? "m" : "d");
            break;
        case LIM_CK_GAUGE:
            argv[a++] = "g";
            snprintf(nums[i][0], sizeof nums[i][0], "%lld",
                     (long long)(c->lease_ttl_ms > 0 ? c->lease_ttl_ms : 90000));
            break;
        }
        argv[a++] = nums[i][0];
        snprintf(nums[i][1], sizeof nums[i][1], "%lld", (long long)c->limit);
        argv[a++] = nums[i][1];
        snprintf(nums[i][2], sizeof nums[i][2], "%lld",
                 (long long)(deltas ? deltas[i] : c->amount));
        argv[a++] = nums[i][2];
    }
    for (int i = 0; i < a; i++)
        len[i] = strlen(argv[i]);
    rcall_t *call = call_new(rw, kind, a, argv, len);
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
    rcall_t *c = rw->ac ? decision_call(rw, kind, checks, n, lease_id, NULL) : NULL;
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
    char charged[24];
    snprintf(charged, sizeof charged, "%lld", (long long)charged_ms);
    rcall_t *c = rw->ac ? decision_call(rw, RC_ADJUST, checks, n, charged, deltas) : NULL;
    if (c && queue(rw, c) != 0)
        call_free(c);
    /* Redis away: the estimate stays charged (never an undercount). */
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
    if (rs->fallback)
        rw->fallback = store_attach(rs->fallback, base);
    if (!rw->timer || !rw->retry_ev || !rw->pending_ev || (rs->fallback && !rw->fallback)) {
        if (rw->timer)
            event_free(rw->timer);
        if (rw->retry_ev)
            event_free(rw->retry_ev);
        if (rw->pending_ev)
            event_free(rw->pending_ev);
        if (rw->fallback)
            store_detach(rw->fallback);
        free(rw);
        return NULL;
    }
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
    event_free(rw->timer);
    event_free(rw->retry_ev);
    event_free(rw->pending_ev);
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
