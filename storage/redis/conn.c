/*
 * storage/redis/conn.c: a worker's hiredis async connection on its event
 * loop: the FIFO of calls in flight and their deadlines, replies, the
 * clock offset, lost calls sent again, reconnect with backoff, setup
 * (AUTH, SELECT, SCRIPT LOAD) and NOSCRIPT. Ownership: see internal.h.
 */
#include <hiredis/adapters/libevent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

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
void rds_arm_timer_for(redis_worker_t *rw, int64_t when)
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
        rds_arm_timer_for(rw, when);
}

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
    rcall_t *r = rds_decision_call(c->rw, RC_ADJUST, c->checks, c->n, "", deltas, 0,
                               leases ? c->lease_id : NULL);
    if (!r)
        return;
    c->refund_cmd = r->cmd;
    c->refund_len = r->cmdlen;
    c->refund_conditional = leases;
    r->cmd = NULL;
    rds_call_free(r);
}

void rds_call_answer_unavailable(rcall_t *c)
{
    if (c->answered)
        return;
    c->answered = 1;
    if (c->kind == RC_BATCH)
        for (rcall_t *ch = c->children; ch; ch = ch->child_next)
            rds_call_answer_unavailable(ch);
    if (c->kind == RC_ACQUIRE && c->sent_to_redis)
        prepare_refund(c); /* while the caller's checks are still valid */
    if ((c->kind == RC_JOB_DONE || c->kind == RC_JOB_FIND) && c->done_cb)
        c->done_cb(c->arg, -1);
    if (c->kind == RC_ACQUIRE || c->kind == RC_USAGE)
        rds_answer_unavailable(c->rw, c->kind, c->checks, c->n, c->lease_id, c->cb, c->arg);
}

void rds_call_free(rcall_t *c)
{
    while (c->children) {
        rcall_t *ch = c->children;
        c->children = ch->child_next;
        rds_call_free(ch);
    }
    while (c->debt) {
        debt_t *d = c->debt;
        c->debt = d->next;
        free(d);
    }
    free(c->cmd);
    free(c->release_cmd);
    free(c->refund_cmd);
    free(c);
}

/* Held decisions: none is in Redis, so failing one charges nothing. */
void rds_held_fail_all(redis_worker_t *rw)
{
    rcall_t *c = rw->held;
    rw->held = rw->held_tail = NULL;
    while (c) {
        rcall_t *next = c->held_next;
        rds_call_answer_unavailable(c);
        rds_call_free(c);
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
        rds_send_decision(rw, c);
        rds_call_answer_unavailable(c);
        rds_call_free(c);
        c = next;
    }
}


/* One line per outage, saying what decisions do meanwhile. */
void rds_note_down(redis_worker_t *rw, const char *why)
{
    if (rw->parent)
        rds_cluster_node_down(rw);
    if (!rw->was_down)
        rds_rlog(rw->rs, "redis %s: %s; until it is back, decisions %s", rw->addr, why,
             rw->fallback ? "are counted in this instance's memory: each instance enforces "
                            "the limits alone"
                          : "are refused with 503 LIMITER_UNAVAILABLE");
    rw->was_down = 1;
}

/* Drop the connection: every call not yet answered is answered now; hiredis
 * then hands each one back to on_reply() with NULL, which frees it. */
/* The connection is gone (or going): no context, nothing known of the
 * server's clock, every call in flight or held answered "unavailable". */
static void forget_connection(redis_worker_t *rw)
{
    rw->ac = NULL;
    rw->connected = 0;
    rw->ready = 0;
    rw->offset_known = 0;
    for (rcall_t *c = rw->head; c; c = c->next)
        rds_call_answer_unavailable(c);
    rds_held_fail_all(rw);
}

void rds_connection_drop(redis_worker_t *rw, const char *why)
{
    redisAsyncContext *ac = rw->ac;
    if (!ac)
        return;
    rds_note_down(rw, why);
    forget_connection(rw);
    redisAsyncFree(ac); /* on_reply(NULL) for each call, then on_disconnect */
    rds_schedule_reconnect(rw);
}

void rds_on_timer(evutil_socket_t fd, short what, void *arg)
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
            rds_call_answer_unavailable(c); /* may rds_queue more calls at the tail */
        }
    }
    /* Held decisions that ran out: never sent, nothing to undo. */
    while (rw->held && rw->held->deadline <= now) {
        rcall_t *c = rw->held;
        rw->held = c->held_next;
        if (!rw->held)
            rw->held_tail = NULL;
        late = 1;
        rds_call_answer_unavailable(c);
        rds_call_free(c);
    }
    if (late) {
        char why[96];
        snprintf(why, sizeof why, "no answer within %lld ms",
                 (long long)rw->rs->o.timeout_ms);
        rds_note_down(rw, why);
    }
    if (rw->head && now - rw->head->sent >= drop_after(rw)) {
        char why[96];
        snprintf(why, sizeof why, "no reply at all for %lld ms", (long long)drop_after(rw));
        rds_connection_drop(rw, why);
        return;
    }
    arm_timer(rw);
}

/* ---- sending ------------------------------------------------------------ */


/* Queue a formatted command; on failure the call is not queued. */
int rds_queue(redis_worker_t *rw, rcall_t *c)
{
    if (!rw->ac || rw->detaching)
        return -1;
    if (redisAsyncFormattedCommand(rw->ac, on_reply, c, c->cmd, (size_t)c->cmdlen) != REDIS_OK)
        return -1;
    c->sent_to_redis = 1;
    list_add(rw, c);
    int64_t when = rw->head->sent + drop_after(rw);
    rds_arm_timer_for(rw, c->deadline < when ? c->deadline : when);
    return 0;
}

void rds_send_owned(redis_worker_t *rw, char *cmd, int len)
{
    rcall_t *c = calloc(1, sizeof *c);
    if (!c) {
        free(cmd);
        return;
    }
    c->rw = rw;
    c->kind = RC_RELEASE;
    c->sent = mono_ms();
    c->deadline = c->sent + rw->rs->o.timeout_ms;
    c->cmd = cmd;
    c->cmdlen = len;
    if (rds_queue(rw, c) != 0)
        rds_call_free(c);
}

void rds_write_now(redis_worker_t *rw)
{
    /* Not from inside hiredis' own callbacks: the loop writes soon after. */
    if (rw->ac && rw->connected && !rw->detaching && !(rw->ac->c.flags & REDIS_IN_CALLBACK))
        redisAsyncHandleWrite(rw->ac);
}

/* argv as a RESP array of bulk strings into *out (malloc'd, the caller
 * frees); its length, or -1. hiredis's redisFormatCommandArgv does the
 * same with a sprintf per argument, which on the decision path (a dozen
 * arguments a request) cost more than all the rest of the call. */
static int format_argv(char **out, int argc, const char **argv, const size_t *argvlen)
{
    char num[24];
    size_t total = 3 + rds_fmt_i64(num, argc);
    for (int i = 0; i < argc; i++)
        total += 5 + rds_fmt_i64(num, (int64_t)argvlen[i]) + argvlen[i];
    char *p = total < INT_MAX ? malloc(total + 1) : NULL;
    if (!p)
        return -1;
    size_t at = 0;
    p[at++] = '*';
    at += rds_fmt_i64(p + at, argc);
    p[at++] = '\r';
    p[at++] = '\n';
    for (int i = 0; i < argc; i++) {
        p[at++] = '$';
        at += rds_fmt_i64(p + at, (int64_t)argvlen[i]);
        p[at++] = '\r';
        p[at++] = '\n';
        memcpy(p + at, argv[i], argvlen[i]);
        at += argvlen[i];
        p[at++] = '\r';
        p[at++] = '\n';
    }
    p[at] = '\0';
    *out = p;
    return (int)at;
}

rcall_t *rds_call_new(redis_worker_t *rw, enum call_kind kind, int argc,
                      const char **argv, const size_t *argvlen)
{
    rcall_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->rw = rw;
    c->kind = kind;
    c->sent = mono_ms();
    c->deadline = c->sent + rw->rs->o.timeout_ms;
    c->cmdlen = format_argv(&c->cmd, argc, argv, argvlen);
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
    rcall_t *c = rds_call_new(rw, RC_SETUP, argc, argv, len);
    if (c && rds_queue(rw, c) != 0)
        rds_call_free(c);
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

/* The acquire script's answer: { admitted, now, per check ok, used,
 * reset, retry }, or for a charged decision the shorter { 1, now, per
 * check used } (a smaller reply is cheaper for Redis to make): each
 * check's ok is then used + amount <= limit as the script saw them
 * (clamped as rds_decision_call sends them), its retry now, and its reset
 * is computed here from now, as the script computes it for a window whose
 * newest bucket is now's (a Redis clock that stepped back leaves the
 * script's newest bucket ahead of now's: the reset said is then early by
 * at most that step). */
static int parse_outcome(const redisReply *r, const lim_check_t *checks, size_t n,
                         lim_outcome_t *o)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 2)
        return -1;
    for (size_t i = 0; i < r->elements; i++)
        if (r->element[i]->type != REDIS_REPLY_INTEGER)
            return -1;
    o->admitted = r->element[0]->integer == 1;
    o->now_ms = r->element[1]->integer;
    if (n > 0 && o->admitted && r->elements == 2 + n) {
        int64_t now = o->now_ms;
        for (size_t i = 0; i < n; i++) {
            const lim_check_t *ck = &checks[i];
            int64_t limit = clamp64(ck->limit, 0, LIM_PRICE_MAX);
            int64_t amount = clamp64(ck->amount, 0, LIM_PRICE_MAX);
            o->res[i].used = r->element[2 + i]->integer;
            o->res[i].ok = o->res[i].used <= limit - amount;
            o->res[i].retry_ms = now;
            switch (ck->kind) {
            case LIM_CK_ROLLING:
                o->res[i].reset_ms = lim_bucket_start(
                    lim_bucket_of(now, ck->window_ms) + LIM_SLOTS, ck->window_ms);
                break;
            case LIM_CK_CALENDAR: o->res[i].reset_ms = lim_period_end(ck->per, now); break;
            case LIM_CK_GAUGE: o->res[i].reset_ms = 0; break;
            }
        }
        return 0;
    }
    if (r->elements != 2 + 4 * n)
        return -1;
    for (size_t i = 0; i < n; i++) {
        redisReply **e = &r->element[2 + 4 * i];
        o->res[i].ok = e[0]->integer == 1;
        o->res[i].used = e[1]->integer;
        o->res[i].reset_ms = e[2]->integer;
        o->res[i].retry_ms = e[3]->integer < 0 ? LIM_NEVER : e[3]->integer;
    }
    return 0;
}


static void pending_arm(redis_worker_t *rw)
{
    if ((rw->pending || rw->cluster_down) && !evtimer_pending(rw->pending_ev, NULL)) {
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

void rds_on_pending(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    redis_worker_t *rw = arg;
    if (rw->ready && rw->cluster_down) {
        /* Whether the cluster serves again, traffic or not (a local deny
         * cache may keep every request away): then its debt is paid. */
        const char *a[] = {"CLUSTER", "INFO"};
        size_t l[] = {7, 4};
        rcall_t *c = rds_call_new(rw, RC_PROBE, 2, a, l);
        if (c && rds_queue(rw, c) != 0)
            rds_call_free(c);
    }
    if (rw->ready) {
        for (pending_t **pp = &rw->pending; *pp;) {
            pending_t *p = *pp;
            char *cmd = malloc((size_t)p->len);
            if (cmd) {
                memcpy(cmd, p->cmd, (size_t)p->len);
                rds_send_owned(rw, cmd, p->len);
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

/* An error reply that says the command did not run for a passing reason
 * (the cluster down or moving, a replica, Redis loading or busy). */
int rds_refused_unrun(const char *err)
{
    static const char *const passing[] = {"CLUSTERDOWN", "TRYAGAIN", "MOVED", "ASK ",
                                          "LOADING", "READONLY", "MASTERDOWN", "BUSY"};
    for (size_t i = 0; i < sizeof passing / sizeof *passing; i++)
        if (strncmp(err, passing[i], strlen(passing[i])) == 0)
            return 1;
    return 0;
}

/* The reply r to call c (not an error reply): its caller answered, or,
 * for a decision already answered unavailable that Redis admitted after
 * all, what it charged given back. */
static void answer_call(redis_worker_t *rw, rcall_t *c, const redisReply *r)
{
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
            if (*cmds[i])
                rds_send_owned(rw, *cmds[i], lens[i]);
            *cmds[i] = NULL;
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
            rds_job_found(c, r);
        c->answered = 1;
    } else if (!c->answered && (c->kind == RC_ACQUIRE || c->kind == RC_USAGE)) {
        lim_outcome_t o;
        memset(&o, 0, sizeof o);
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
            r->element[0]->type == REDIS_REPLY_INTEGER && r->element[0]->integer == -1 &&
            r->element[1]->type == REDIS_REPLY_INTEGER) {
            /* Ran past its deadline on Redis's clock: nothing charged. */
            offset_learn(rw, r->element[1]->integer);
            rds_call_answer_unavailable(c);
        } else if (parse_outcome(r, c->checks, c->n, &o) != 0) {
            rds_rlog(rw->rs, "redis: unexpected reply to a decision");
            rds_call_answer_unavailable(c);
        } else {
            c->answered = 1;
            offset_learn(rw, o.now_ms);
            atomic_fetch_add(&rw->rs->stats.decisions, 1);
            if (c->kind == RC_ACQUIRE && o.admitted)
                rds_renew_add(rw, c->lease_id, c->checks, c->n);
            c->cb(c->arg, STORE_OK, &o);
        }
    }
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    rcall_t *c = privdata;
    redis_worker_t *rw = c->rw;
    const redisReply *r = reply;
    (void)ac;
    list_del(rw, c);

    if (!r) {
        rds_call_answer_unavailable(c);
        keep_pending(rw, c);
        rds_call_free(c);
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        if (strncmp(r->str, "NOSCRIPT", 8) == 0 && !c->retried && c->kind != RC_SETUP) {
            /* Redis lost its scripts (restart, SCRIPT FLUSH): load them,
             * then send the same call again, once. */
            c->retried = 1;
            load_scripts(rw); /* all: the call may be any of them */
            if (rds_queue(rw, c) == 0)
                return;
        }
        if (rw->parent && rds_cluster_redirect(c, r->str))
            return; /* sent to the node the cluster named */
        if (rw->parent && rds_cluster_tryagain(c, r->str))
            return; /* sent again in a moment */
        if (c->debt && rds_refused_unrun(r->str)) {
            /* A debt's adjust refused (nothing ran): owed still. */
            rds_debt_return(rw->rs, c->debt);
            c->debt = NULL;
        }
        if (rw->parent && strncmp(r->str, "CLUSTERDOWN", 11) == 0) {
            /* The cluster refuses (a master lost, its replica not promoted
             * yet): one line per outage, not one per call, and the map
             * read again soon. */
            rds_call_answer_unavailable(c);
            rds_call_free(c);
            rds_note_down(rw, "the cluster is down (CLUSTERDOWN)");
            rw->cluster_down = 1;
            pending_arm(rw);
            return;
        }
        if (rw->rs->o.sentinel_master && strncmp(r->str, "READONLY", 8) == 0) {
            /* The primary we knew is a replica now (a failover): answer this
             * call unavailable and ask the sentinels again. */
            rds_call_answer_unavailable(c);
            rds_call_free(c);
            rds_connection_drop(rw, "the server is a replica now");
            return;
        }
        if (c->kind == RC_SETUP) {
            char why[300];
            snprintf(why, sizeof why, "setup failed: %s", r->str);
            rds_call_free(c);
            rds_connection_drop(rw, why);
            return;
        }
        rds_rlog(rw->rs, "redis: %s", r->str);
        rds_call_answer_unavailable(c);
        rds_call_free(c);
        return;
    }
    if (c->kind == RC_PROBE && !(r->type == REDIS_REPLY_STRING &&
                                 strstr(r->str, "cluster_state:ok"))) {
        rds_call_free(c); /* still down: asked again in a second */
        return;
    }
    if (c->kind != RC_TIME && c->kind != RC_SETUP)
        rw->cluster_down = 0; /* a keyed command served, or the probe saw ok */
    int first = 0;
    if (rw->connected && !rw->ready) {
        first = 1;
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
    if (rw->was_down && rw->ready && !rw->cluster_down) {
        rds_rlog(rw->rs, "redis %s: answering again", rw->addr);
        rw->was_down = 0;
        first = 1; /* its debt, if any, paid now */
    }
    /* Redis answers: what the fallback admitted meanwhile goes to Redis now,
     * whether or not traffic comes. */
    if (atomic_load(&rw->rs->debt_hint) > 0) {
        /* In a cluster some debt may wait for a master away: looked at on
         * a node's first answer, and at most once a second otherwise. */
        redis_worker_t *p = rw->parent;
        int64_t now = mono_ms();
        if (!p || first || now - p->debt_at >= 1000) {
            if (p)
                p->debt_at = now;
            rds_debt_replay(rw);
        }
    }
    if (c->kind == RC_TIME) {
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
            r->element[0]->type == REDIS_REPLY_STRING &&
            r->element[1]->type == REDIS_REPLY_STRING) {
            offset_learn(rw, strtoll(r->element[0]->str, NULL, 10) * 1000 +
                                 strtoll(r->element[1]->str, NULL, 10) / 1000);
            held_send_all(rw);
        }
        rds_call_free(c);
        return;
    }
    if (c->kind == RC_RENEW) {
        /* Leases found in none of their sets: renewed no more. */
        if (r->type == REDIS_REPLY_ARRAY)
            for (size_t i = 0; i < r->elements; i++)
                if (r->element[i]->type == REDIS_REPLY_STRING)
                    rds_renew_forget(rw, r->element[i]->str);
        rds_call_free(c);
        return;
    }
    if (c->kind == RC_BATCH) {
        /* One reply per decision, in the batch's order. */
        if (r->type == REDIS_REPLY_ARRAY && r->elements == c->n_children) {
            size_t k = 0;
            for (rcall_t *ch = c->children; ch; ch = ch->child_next)
                answer_call(rw, ch, r->element[k++]);
        } else {
            rds_rlog(rw->rs, "redis: unexpected reply to a batch of decisions");
            rds_call_answer_unavailable(c);
        }
    } else {
        answer_call(rw, c, r);
    }
    rds_call_free(c);
}

/* ---- connection life ---------------------------------------------------- */

static void on_connect(const redisAsyncContext *ac, int status)
{
    redis_worker_t *rw = ac->data;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback. */
        if (rw->ac == ac) {
            forget_connection(rw);
            char why[300];
            snprintf(why, sizeof why, "cannot connect: %s", ac->errstr);
            rds_note_down(rw, why);
            rds_schedule_reconnect(rw);
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
    rds_held_fail_all(rw);
    char why[300];
    snprintf(why, sizeof why, "connection lost: %s", ac->errstr[0] ? ac->errstr : "closed");
    rds_note_down(rw, why);
    rds_schedule_reconnect(rw);
}

/* Connect: to the configured server, or (Sentinel) to the primary a
 * sentinel names now. */
void rds_connect_now(redis_worker_t *rw)
{
    if (rw->rs->o.sentinel_master)
        rds_sentinel_ask(rw);
    else
        rds_connect_to(rw);
}

/* Connect to rw->host:rw->port. */
void rds_connect_to(redis_worker_t *rw)
{
    redis_store_t *rs = rw->rs;
    atomic_fetch_add(&rs->stats.connects, 1);
    redisAsyncContext *ac = redisAsyncConnect(rw->host, rw->port);
    if (!ac || ac->err) {
        char why[300];
        snprintf(why, sizeof why, "cannot connect: %s", ac ? ac->errstr : "out of memory");
        rds_note_down(rw, why);
        if (ac)
            redisAsyncFree(ac);
        rds_schedule_reconnect(rw);
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
    rcall_t *tc = rds_call_new(rw, RC_TIME, 1, tv, tl);
    if (tc && rds_queue(rw, tc) != 0)
        rds_call_free(tc);
}

void rds_on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    redis_worker_t *rw = arg;
    if (!rw->ac && !rw->detaching)
        rds_connect_now(rw);
}

void rds_schedule_reconnect(redis_worker_t *rw)
{
    if (rw->detaching || rw->idle || evtimer_pending(rw->retry_ev, NULL))
        return;
    struct timeval tv = {.tv_sec = rw->backoff_ms / 1000,
                         .tv_usec = (rw->backoff_ms % 1000) * 1000};
    evtimer_add(rw->retry_ev, &tv);
    rw->backoff_ms *= 2;
    if (rw->backoff_ms > BACKOFF_MAX_MS)
        rw->backoff_ms = BACKOFF_MAX_MS;
}

