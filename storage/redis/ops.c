/*
 * storage/redis/ops.c: the store operations (acquire, usage, release,
 * adjust, lease renewal, job hold and done) and the commands they format.
 * Ownership: see internal.h.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

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
            rds_lease_remember(f->rw, f->lease_id);
        /* Owed to Redis once it is back. */
        for (size_t i = 0; i < f->n; i++)
            rds_debt_record(f->rw->rs, &f->checks[i], f->checks[i].amount, o->now_ms);
    }
    f->cb(f->arg, st, o);
}

/* The store cannot answer: deny (503 upstream) or count locally (allow). */
void rds_answer_unavailable(redis_worker_t *rw, enum call_kind kind,
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
    char *cmd;
    int len = format_script(sha, keys, k, args, nargs, &cmd);
    if (len >= 0)
        rds_send_owned(rw, cmd, len);
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
 * known. Amounts and limits are clamped to what the script accepts. With
 * more (kind RC_BATCH), the further decisions of a batch on the same
 * checks follow, each with its own deadline and amounts. */
static rcall_t *format_decision(redis_worker_t *rw, enum call_kind kind,
                                const lim_check_t *checks, size_t n, const char *lease_id,
                                const int64_t *deltas, int64_t local_deadline,
                                const char *refund_of, const rcall_t *more, size_t n_more)
{
    redis_store_t *rs = rw->rs;
    enum { FIXED = 7, PER = 5 };
    if (n > LIM_MAX_CHECKS || n_more >= BATCH_MAX)
        return NULL;
    /* Room for every argument and the numbers they are made of. */
    size_t argc_max = FIXED + PER * n + n_more * (1 + n);
    size_t nums_max = 3 * n + 2 + n_more * (1 + n);
    const char *argv_s[FIXED + PER * LIM_MAX_CHECKS];
    size_t len_s[FIXED + PER * LIM_MAX_CHECKS];
    char nums_s[3 * LIM_MAX_CHECKS + 2][24];
    const char **argv = argv_s;
    size_t *len = len_s;
    char(*nums)[24] = nums_s;
    void *heap = NULL;
    if (n_more) {
        heap = malloc(argc_max * (sizeof *argv + sizeof *len) + nums_max * 24);
        if (!heap)
            return NULL;
        argv = heap;
        len = (size_t *)(argv + argc_max);
        nums = (char(*)[24])(len + argc_max);
    }
    char keys[LIM_MAX_CHECKS][LIM_KEY_MAX + 64];
    size_t u = 0; /* numbers used */
    if (local_deadline == 0)
        local_deadline = mono_ms() + rs->o.timeout_ms;
    int a = 0;
    argv[a] = "EVALSHA";
    len[a++] = 7;
    argv[a] = rs->sha_acquire;
    len[a++] = strlen(rs->sha_acquire);
    argv[a] = nums[u];
    len[a++] = rds_fmt_i64(nums[u++], (int64_t)n);
    for (size_t i = 0; i < n; i++) {
        argv[a] = keys[i];
        len[a++] = rds_join2(keys[i], sizeof keys[i], rs->o.key_prefix, checks[i].key);
    }
    argv[a] = "";
    len[a] = 0;
    if (rs->o.clock) {
        argv[a] = nums[u];
        len[a] = rds_fmt_i64(nums[u++], rs->o.clock(rs->o.clock_arg));
    }
    a++;
    argv[a] = lease_id ? lease_id : "";
    len[a] = strlen(argv[a]);
    a++;
    argv[a] = kind == RC_ACQUIRE ? "1" : kind == RC_BATCH ? "b" : kind == RC_ADJUST ? "a" : "0";
    len[a++] = 1;
    int charging = kind == RC_ACQUIRE || kind == RC_BATCH;
    int with_deadline = charging && !rs->o.clock && rw->offset_known;
    int64_t margin = deadline_margin(rw);
    if (kind == RC_ADJUST && refund_of) {
        argv[a] = refund_of;
        len[a++] = strlen(refund_of);
    } else {
        argv[a] = nums[u];
        len[a++] = with_deadline
                       ? rds_fmt_i64(nums[u++], local_deadline + rw->offset_ms - margin)
                       : 0;
    }
    for (size_t i = 0; i < n; i++) {
        const lim_check_t *c = &checks[i];
        switch (c->kind) {
        case LIM_CK_ROLLING:
            argv[a] = c->shadow ? "R" : "r";
            len[a++] = 1;
            argv[a] = nums[u];
            len[a++] = rds_fmt_i64(nums[u++], c->window_ms);
            break;
        case LIM_CK_CALENDAR:
            argv[a] = c->shadow ? "C" : "c";
            len[a++] = 1;
            argv[a] = c->per == LIM_PER_MONTH ? "m" : "d";
            len[a++] = 1;
            break;
        case LIM_CK_GAUGE:
            argv[a] = c->shadow ? "G" : "g";
            len[a++] = 1;
            argv[a] = nums[u];
            len[a++] = rds_fmt_i64(nums[u++], c->lease_ttl_ms > 0 ? c->lease_ttl_ms : 90000);
            break;
        }
        argv[a] = nums[u];
        len[a++] = rds_fmt_i64(nums[u++], clamp64(c->limit, 0, LIM_PRICE_MAX));
        int64_t amount = deltas ? clamp64(deltas[i], -LIM_PRICE_MAX, LIM_PRICE_MAX)
                                : clamp64(c->amount, 0, LIM_PRICE_MAX);
        argv[a] = nums[u];
        len[a++] = rds_fmt_i64(nums[u++], amount);
    }
    for (const rcall_t *m = more; m; m = m->child_next) {
        argv[a] = nums[u];
        len[a++] = with_deadline
                       ? rds_fmt_i64(nums[u++], m->deadline + rw->offset_ms - margin)
                       : 0;
        for (size_t i = 0; i < n; i++) {
            int64_t amount = clamp64(m->checks[i].amount, 0, LIM_PRICE_MAX);
            if (amount == 1) {
                argv[a] = "1";
                len[a++] = 1;
            } else {
                argv[a] = nums[u];
                len[a++] = rds_fmt_i64(nums[u++], amount);
            }
        }
    }
    rcall_t *call = rds_call_new(rw, kind, a, argv, len);
    free(heap);
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

rcall_t *rds_decision_call(redis_worker_t *rw, enum call_kind kind,
                           const lim_check_t *checks, size_t n, const char *lease_id,
                           const int64_t *deltas, int64_t local_deadline,
                           const char *refund_of)
{
    return format_decision(rw, kind, checks, n, lease_id, deltas, local_deadline, refund_of,
                           NULL, 0);
}

/* The worker whose connection takes a command on checks' keys (all of one
 * hash tag): w itself but in a cluster. */
static redis_worker_t *route_checks(store_worker_t *w, const lim_check_t *checks, size_t n)
{
    redis_worker_t *rw = (redis_worker_t *)w;
    if (!rw->slots && !rw->parent)
        return rw;
    char key[LIM_KEY_MAX + 64];
    if (n)
        snprintf(key, sizeof key, "%s%s", rw->rs->o.key_prefix, checks[0].key);
    return rds_route(rw, n ? key : NULL);
}

/* A decision not sent yet (held for the clock, or gathered for a batch):
 * what is needed to send or answer it, its deadline from now. */
static rcall_t *unsent_decision(redis_worker_t *rw, enum call_kind kind,
                                const lim_check_t *checks, size_t n, const char *lease_id,
                                store_acquire_cb cb, void *arg)
{
    rcall_t *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->rw = rw;
    h->kind = kind;
    h->cb = cb;
    h->arg = arg;
    h->checks = checks;
    h->n = n;
    snprintf(h->lease_id, sizeof h->lease_id, "%s", lease_id ? lease_id : "");
    h->sent = mono_ms();
    h->deadline = h->sent + rw->rs->o.timeout_ms;
    return h;
}

void rds_send_decision(redis_worker_t *to, rcall_t *h)
{
    rcall_t *c = rds_decision_call(to, h->kind, h->checks, h->n, h->lease_id, NULL,
                                   h->deadline, NULL);
    if (!c)
        return;
    c->cb = h->cb;
    c->arg = h->arg;
    c->checks = h->checks;
    c->n = h->n;
    if (rds_queue(to, c) == 0)
        h->answered = 1; /* c's to answer now */
    else
        rds_call_free(c);
}

/* Two decisions go in one batch when their checks are the same counters
 * with the same limits (their amounts may differ). */
static int same_checks(const lim_check_t *a, const lim_check_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (a[i].kind != b[i].kind || a[i].per != b[i].per ||
            a[i].window_ms != b[i].window_ms || a[i].limit != b[i].limit ||
            a[i].shadow != b[i].shadow || strcmp(a[i].key, b[i].key) != 0)
            return 0;
    return 1;
}

/* A decision gathered into this loop turn's batch on its checks (sent when
 * the turn ends, rds_on_flush): 0, or -1 when it is to be sent on its own
 * (a cluster, a lease to take, no room). */
static int gather(redis_worker_t *rw, const lim_check_t *checks, size_t n,
                  store_acquire_cb cb, void *arg)
{
    if (rw->parent || rw->slots || n == 0 ||
        (!rw->rs->o.clock && !rw->offset_known) || lim_checks_have_gauge(checks, n))
        return -1;
    rcall_t *g = NULL;
    for (size_t i = 0; i < rw->n_groups && !g; i++)
        if (rw->groups[i]->n == n && rw->groups[i]->n_children < BATCH_MAX &&
            same_checks(rw->groups[i]->checks, checks, n))
            g = rw->groups[i];
    if (!g && rw->n_groups == GROUPS_MAX)
        return -1;
    rcall_t *c = unsent_decision(rw, RC_ACQUIRE, checks, n, NULL, cb, arg);
    if (!c)
        return -1;
    if (!g) {
        if (!(g = calloc(1, sizeof *g))) {
            free(c);
            return -1;
        }
        g->rw = rw;
        g->kind = RC_BATCH;
        g->checks = checks;
        g->n = n;
        rw->groups[rw->n_groups++] = g;
        if (rw->n_groups == 1)
            event_active(rw->flush_ev, EV_WRITE, 1);
    }
    if (g->children_tail)
        g->children_tail->child_next = c;
    else
        g->children = c;
    g->children_tail = c;
    g->n_children++;
    return 0;
}

/* Send the group g gathered: a decision of its own when it is alone, else
 * one batch (its deadline the first decision's, the earliest); the
 * decisions are answered unavailable if it cannot go. */
static void send_group(redis_worker_t *rw, rcall_t *g)
{
    rcall_t *first = g->children;
    if (rw->ac && g->n_children == 1) {
        rds_send_decision(rw, first);
    } else if (rw->ac) {
        rcall_t *c = format_decision(rw, RC_BATCH, first->checks, first->n, NULL, NULL,
                                     first->deadline, NULL, first->child_next,
                                     g->n_children - 1);
        if (c && rds_queue(rw, c) == 0) {
            c->children = g->children;
            c->children_tail = g->children_tail;
            c->n_children = g->n_children;
            g->children = g->children_tail = NULL;
            for (rcall_t *ch = c->children; ch; ch = ch->child_next)
                ch->sent_to_redis = 1;
        } else if (c) {
            rds_call_free(c);
        }
    }
    for (rcall_t *ch = g->children; ch; ch = ch->child_next)
        if (!ch->answered)
            rds_call_answer_unavailable(ch);
    rds_call_free(g);
}

void rds_on_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    redis_worker_t *rw = arg;
    /* Answers may make new decisions: they gather for the next flush. */
    rcall_t *groups[GROUPS_MAX];
    size_t n = rw->n_groups;
    memcpy(groups, rw->groups, n * sizeof *groups);
    rw->n_groups = 0;
    for (size_t i = 0; i < n; i++)
        send_group(rw, groups[i]);
    /* The turn's work is done: written now, not after another epoll_wait
     * (and the add and removal of write interest that would take). */
    if (n)
        rds_write_now(rw);
}

static void decide(store_worker_t *w, enum call_kind kind, const lim_check_t *checks,
                   size_t n, const char *lease_id, store_acquire_cb cb, void *arg)
{
    redis_worker_t *rw = route_checks(w, checks, n);
    /* A cluster whose first slot map is on its way: held by the parent
     * (within the decision's deadline), then sent to the slot's node. */
    int wait_map = rw->slots && rw->n_nodes == 0 && rw->map_ac;
    if (wait_map || (rw->ac && kind == RC_ACQUIRE && !rw->rs->o.clock && !rw->offset_known)) {
        /* No deadline on Redis's clock yet: wait for the connection's TIME
         * (within this decision's own deadline), then send. */
        rcall_t *h = unsent_decision(rw, kind, checks, n, lease_id, cb, arg);
        if (h) {
            if (rw->held_tail)
                rw->held_tail->held_next = h;
            else
                rw->held = h;
            rw->held_tail = h;
            rds_arm_timer_for(rw, h->deadline);
            return;
        }
    }
    if (rw->ac && kind == RC_ACQUIRE && gather(rw, checks, n, cb, arg) == 0)
        return;
    rcall_t *c = rw->ac ? rds_decision_call(rw, kind, checks, n, lease_id, NULL, 0, NULL) : NULL;
    if (c) {
        c->cb = cb;
        c->arg = arg;
        c->checks = checks;
        c->n = n;
        if (rds_queue(rw, c) == 0)
            return;
        rds_call_free(c);
    }
    rds_answer_unavailable(rw, kind, checks, n, lease_id, cb, arg);
}

void rds_held_redispatch(redis_worker_t *p)
{
    rcall_t *h = p->held;
    p->held = p->held_tail = NULL;
    int64_t now = mono_ms();
    while (h) {
        rcall_t *next = h->held_next;
        h->held_next = NULL;
        redis_worker_t *to = route_checks(&p->base, h->checks, h->n);
        if (to != p && to->ac && h->deadline > now && h->kind == RC_ACQUIRE &&
            !to->rs->o.clock && !to->offset_known) {
            /* Its node's clock is not known yet: held there. */
            h->rw = to;
            if (to->held_tail)
                to->held_tail->held_next = h;
            else
                to->held = h;
            to->held_tail = h;
            rds_arm_timer_for(to, h->deadline);
            h = next;
            continue;
        }
        if (to != p && to->ac && h->deadline > now)
            rds_send_decision(to, h);
        rds_call_answer_unavailable(h);
        rds_call_free(h);
        h = next;
    }
}

void redis_acquire(store_worker_t *w, const lim_check_t *checks, size_t n,
                   const char *lease_id, store_acquire_cb cb, void *arg)
{
    decide(w, RC_ACQUIRE, checks, n, lease_id, cb, arg);
}

void redis_usage(store_worker_t *w, const lim_check_t *checks, size_t n,
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

void redis_release(store_worker_t *w, const lim_check_t *checks, size_t n,
                   const char *lease_id)
{
    redis_worker_t *rw = route_checks(w, checks, n);
    if (rw->fallback && rds_lease_forget(rw, lease_id)) {
        store_release(rw->fallback, checks, n, lease_id);
        return;
    }
    rds_renew_forget(rw, lease_id);
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

void redis_adjust(store_worker_t *w, const lim_check_t *checks, size_t n,
                  const int64_t *deltas, int64_t charged_ms)
{
    redis_worker_t *rw = route_checks(w, checks, n);
    if (!rw->ac && rw->fallback) {
        /* Redis away (allow): counted here, and owed to Redis. */
        store_adjust(rw->fallback, checks, n, deltas, charged_ms);
        for (size_t i = 0; i < n; i++)
            rds_debt_record(rw->rs, &checks[i], deltas[i], charged_ms);
        return;
    }
    char charged[24];
    snprintf(charged, sizeof charged, "%lld", (long long)charged_ms);
    rcall_t *c = rw->ac ? rds_decision_call(rw, RC_ADJUST, checks, n, charged, deltas, 0, NULL) : NULL;
    if (c && rds_queue(rw, c) != 0)
        rds_call_free(c);
    /* Redis away (deny): the estimate stays charged (never an undercount). */
}

/* Every renew_ms: one renew.lua call for all the leases this worker holds
 * (in chunks of RENEW_CHUNK_KEYS keys). */
void rds_on_renew(evutil_socket_t fd, short what, void *arg)
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
            if (rw->parent)
                break; /* a cluster: one lease (one slot) per call */
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
        rcall_t *c = rds_call_new(rw, RC_RENEW, (int)a, argv, len);
        if (c && rds_queue(rw, c) != 0)
            rds_call_free(c);
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

void redis_job_hold(store_worker_t *w, const lim_check_t *checks, size_t n,
                    const char *lease_id, const char *account, const char *job,
                    int64_t ttl_ms)
{
    redis_worker_t *rw = route_checks(w, checks, n);
    redis_store_t *rs = rw->rs;
    if (rw->fallback && rds_lease_forget(rw, lease_id)) {
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
    redis_worker_t *ix = rds_route(rw, index[0]);
    send_script(ix, rs->sha_hold, index, 1, iargs, 4);
    /* Written now, before the create's answer reaches its client: a done
     * or a status the client sends on another connection (another worker,
     * the admin listener) finds the job in Redis, not a hold still queued
     * here until the end of the loop turn. */
    rds_write_now(rw);
    if (ix != rw)
        rds_write_now(ix);
}

/* The done of (account, job): one script on the record, the index told. */
static void job_done_account(redis_worker_t *rw, const char *account, const char *job,
                             void (*cb)(void *arg, int found), void *arg)
{
    redis_store_t *rs = rw->rs;
    char rec[1][LIM_KEY_MAX + 64];
    job_record_key(rw, account, job, rec[0], sizeof rec[0]);
    rw = rds_route(rw, rec[0]);
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
        if (c->cmdlen >= 0 && rds_queue(rw, c) == 0) {
            char index[1][LIM_KEY_MAX + 64];
            job_index_key(rw, job, index[0], sizeof index[0]);
            const char *uargs[] = {"unindex", now, account};
            send_script(rds_route(rw, index[0]), rs->sha_hold, index, 1, uargs, 3);
            return;
        }
        rds_call_free(c);
    }
    if (cb)
        cb(arg, -1);
}

/* The accounts that hold a job (up to two): none, one to release, or too
 * many to choose. */
void rds_job_found(rcall_t *c, const redisReply *r)
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

void redis_job_done(store_worker_t *w, const char *account, const char *job,
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
    rw = rds_route(rw, index[0]);
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
        if (c->cmdlen >= 0 && rds_queue(rw, c) == 0)
            return;
        rds_call_free(c);
    }
    if (cb)
        cb(arg, -1);
}

