/*
 * storage/redis/store.c: the Redis store and its workers (attach, detach,
 * destroy), the lease and renewal sets, the debt owed to Redis after an
 * outage (on_error allow). Ownership: see internal.h.
 */
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

void rds_rlog(redis_store_t *rs, const char *fmt, ...)
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

/* ---- leases granted by the fallback store ------------------------------- */

static unsigned lease_bucket(const char *id)
{
    unsigned h = 2166136261u;
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 16777619u;
    return h % LEASE_SET_BUCKETS;
}

void rds_lease_remember(redis_worker_t *rw, const char *id)
{
    lease_node_t *n = malloc(sizeof *n);
    if (!n)
        return; /* the memory lease then stays until the process ends */
    snprintf(n->id, sizeof n->id, "%s", id);
    unsigned b = lease_bucket(id);
    n->next = rw->fallback_leases[b];
    rw->fallback_leases[b] = n;
}

int rds_lease_forget(redis_worker_t *rw, const char *id)
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
void rds_renew_add(redis_worker_t *rw, const char *id, const lim_check_t *checks,
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
void rds_renew_forget(redis_worker_t *rw, const char *id)
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
void rds_debt_record(redis_store_t *rs, const lim_check_t *c, int64_t amount,
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
    } else if (amount > 0) {
        atomic_fetch_add(&rs->stats.debt_dropped, 1);
        if (!rs->debt_full) {
            rs->debt_full = 1;
            rds_rlog(rs, "redis: more than %d counters charged while Redis is away: the rest "
                     "will not be added to Redis when it is back "
                     "(ratewall_store_debt_dropped_total counts them)", DEBT_MAX);
        }
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


/* Entries of an adjust that did not run (an error reply): back into the
 * table, added to what was recorded meanwhile. Frees the list. */
void rds_debt_return(redis_store_t *rs, debt_t *list)
{
    pthread_mutex_lock(&rs->debt_mu);
    while (list) {
        debt_t *d = list;
        list = d->next;
        unsigned b = (str_hash(d->ck.key) ^ (unsigned)d->slot) % DEBT_BUCKETS;
        debt_t *e = rs->debt[b];
        while (e && (e->slot != d->slot || e->ck.kind != d->ck.kind ||
                     strcmp(e->ck.key, d->ck.key) != 0))
            e = e->next;
        if (e) {
            e->amount = clamp64(e->amount + d->amount, 0, LIM_PRICE_MAX);
            free(d);
        } else if (rs->n_debt < DEBT_MAX) {
            d->next = rs->debt[b];
            rs->debt[b] = d;
            rs->n_debt++;
        } else {
            atomic_fetch_add(&rs->stats.debt_dropped, 1);
            free(d);
        }
    }
    atomic_store(&rs->debt_hint, rs->n_debt);
    pthread_mutex_unlock(&rs->debt_mu);
}

/* Cluster: whether the master of key's slot answers on rw's side now (its
 * debt can be paid, its local counters dropped). */
static int payable(const char *key, void *arg)
{
    redis_worker_t *rw = arg;
    char k[LIM_KEY_MAX + 64];
    snprintf(k, sizeof k, "%s%s", rw->rs->o.key_prefix, key);
    redis_worker_t *to = rds_route(rw, k);
    /* was_down: refusing (CLUSTERDOWN) or late since its last answer. */
    return to->ac && to->ready && !to->was_down && !to->cluster_down && !to->idle &&
           !to->slots;
}

/* Redis answers again: add what the fallback charged meanwhile to Redis's
 * counters (one adjust per hash tag, whatever the limits: an outage never
 * hands out a second allowance), and start the next outage from zero. */
void rds_debt_replay(redis_worker_t *rw)
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
    /* In a cluster, only what the masters now answering for its slots can
     * take: the rest waits (its master away, or the replica that takes
     * over not promoted yet). */
    int cluster = rw->parent || rw->slots;
    size_t m = 0;
    for (int b = 0; b < DEBT_BUCKETS; b++) {
        for (debt_t **pp = &rs->debt[b]; *pp;) {
            debt_t *d = *pp;
            if (!cluster || payable(d->ck.key, rw)) {
                *pp = d->next;
                all[m++] = d;
            } else {
                pp = &d->next;
            }
        }
    }
    rs->n_debt -= m;
    if (rs->n_debt == 0)
        rs->debt_full = 0;
    atomic_store(&rs->debt_hint, rs->n_debt);
    if (!cluster)
        store_memory_drop_counters(rs->fallback);
    else if (m)
        store_memory_drop_counters_if(rs->fallback, payable, rw);
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
        size_t nc = 0, first = i;
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
        /* In a cluster, on the node of this hash tag's slot. */
        char key[LIM_KEY_MAX + 64] = "";
        if (nc)
            snprintf(key, sizeof key, "%s%s", rs->o.key_prefix, checks[0].key);
        redis_worker_t *to = nc ? rds_route(rw, key) : rw;
        rcall_t *c = to->ac ? rds_decision_call(to, RC_ADJUST, checks, nc, "", deltas, 0, NULL)
                            : NULL;
        /* The call owns its entries: an error reply (nothing ran) gives
         * them back to the table, to be paid later. */
        debt_t *owned = NULL;
        for (size_t j = first; j < i; j++) {
            all[j]->next = owned;
            owned = all[j];
        }
        if (c && rds_queue(to, c) == 0) {
            c->debt = owned;
            sent += nc;
        } else {
            if (c)
                rds_call_free(c);
            rds_debt_return(rs, owned);
        }
    }
    free(all);
    if (sent)
        rds_rlog(rs, "redis %s: added %zu counters charged in local memory during the "
                     "outage to Redis", cluster ? "cluster" : rw->addr, sent);
}

static int redis_ready(store_worker_t *w)
{
    redis_worker_t *rw = (redis_worker_t *)w;
    if (rw->rs->o.n_cluster && !rw->parent) {
        /* Every master that serves slots (not one failed over). */
        size_t serving = 0;
        for (size_t i = 0; i < rw->n_nodes; i++) {
            if (rw->nodes[i]->idle)
                continue;
            if (!redis_ready(&rw->nodes[i]->base))
                return 0;
            serving++;
        }
        return serving > 0;
    }
    return rw->ac != NULL && rw->ready;
}

static void redis_detach(store_worker_t *w);

/* A worker for the server at host:port, not connected yet. */
redis_worker_t *rds_worker_new(redis_store_t *rs, struct event_base *base, const char *host,
                               uint16_t port)
{
    redis_worker_t *rw = calloc(1, sizeof *rw);
    if (!rw)
        return NULL;
    rw->base.store = &rs->base;
    rw->rs = rs;
    rw->evb = base;
    rw->backoff_ms = BACKOFF_MIN_MS;
    rw->timer = evtimer_new(base, rds_on_timer, rw);
    rw->retry_ev = evtimer_new(base, rds_on_retry, rw);
    rw->pending_ev = evtimer_new(base, rds_on_pending, rw);
    rw->renew_ev = event_new(base, -1, EV_PERSIST, rds_on_renew, rw);
    rw->flush_ev = event_new(base, -1, 0, rds_on_flush, rw);
    if (rs->fallback)
        rw->fallback = store_attach(rs->fallback, base);
    if (!rw->timer || !rw->retry_ev || !rw->pending_ev || !rw->renew_ev || !rw->flush_ev ||
        (rs->fallback && !rw->fallback)) {
        if (rw->timer)
            event_free(rw->timer);
        if (rw->retry_ev)
            event_free(rw->retry_ev);
        if (rw->pending_ev)
            event_free(rw->pending_ev);
        if (rw->renew_ev)
            event_free(rw->renew_ev);
        if (rw->flush_ev)
            event_free(rw->flush_ev);
        if (rw->fallback)
            store_detach(rw->fallback);
        free(rw);
        return NULL;
    }
    snprintf(rw->host, sizeof rw->host, "%s", host);
    rw->port = port;
    snprintf(rw->addr, sizeof rw->addr, "%s:%u", rw->host, rw->port);
    struct timeval rtv = {.tv_sec = rs->renew_ms / 1000, .tv_usec = (rs->renew_ms % 1000) * 1000};
    evtimer_add(rw->renew_ev, &rtv);
    return rw;
}

static store_worker_t *redis_attach(store_t *s, struct event_base *base)
{
    redis_store_t *rs = (redis_store_t *)s;
    redis_worker_t *rw = rds_worker_new(rs, base, rs->o.host, rs->o.port);
    if (!rw)
        return NULL;
    if (rs->o.sentinel_master) {
        snprintf(rw->addr, sizeof rw->addr, "primary %s", rs->o.sentinel_master);
        if (rds_sentinel_start(rw) != 0) {
            redis_detach(&rw->base);
            return NULL;
        }
    }
    if (rs->o.n_cluster) {
        if (rds_cluster_start(rw) != 0) {
            redis_detach(&rw->base);
            return NULL;
        }
        return &rw->base;
    }
    rds_connect_now(rw);
    return &rw->base;
}

static void redis_detach(store_worker_t *w)
{
    redis_worker_t *rw = (redis_worker_t *)w;
    rw->detaching = 1;
    /* Decisions gathered for a batch not sent yet: answered now. */
    rds_on_flush(-1, 0, rw);
    if (rw->ac) {
        redisAsyncContext *ac = rw->ac;
        rw->ac = NULL;
        /* Lease releases queued by the last requests: write them out. */
        if (rw->connected)
            redisAsyncHandleWrite(ac);
        for (rcall_t *c = rw->head; c; c = c->next)
            rds_call_answer_unavailable(c);
        redisAsyncFree(ac);
    }
    rds_held_fail_all(rw);
    if (rw->ask_ev)
        rds_sentinel_stop(rw);
    if (rw->slots)
        rds_cluster_stop(rw);
    event_free(rw->timer);
    event_free(rw->retry_ev);
    event_free(rw->pending_ev);
    event_free(rw->renew_ev);
    event_free(rw->flush_ev);
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
    free((char *)rs->o.sentinel_master);
    free((char *)rs->o.sentinel_password);
    for (size_t i = 0; rs->o.sentinel_hosts && i < rs->o.n_sentinels; i++)
        free((char *)rs->o.sentinel_hosts[i]);
    free((void *)rs->o.sentinel_hosts);
    free((void *)rs->o.sentinel_ports);
    for (size_t i = 0; rs->o.cluster_hosts && i < rs->o.n_cluster; i++)
        free((char *)rs->o.cluster_hosts[i]);
    free((void *)rs->o.cluster_hosts);
    free((void *)rs->o.cluster_ports);
    free(rs);
}

static void redis_flush(store_worker_t *w)
{
    redis_worker_t *rw = (redis_worker_t *)w;
    for (size_t i = 0; i < rw->n_nodes; i++)
        redis_flush(&rw->nodes[i]->base);
    rds_write_now(rw);
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
    rs->o.sentinel_master = NULL;
    rs->o.sentinel_password = NULL;
    rs->o.sentinel_hosts = NULL;
    rs->o.sentinel_ports = NULL;
    rs->o.n_sentinels = 0;
    int sentinel_ok = 1;
    if (o->sentinel_master && o->n_sentinels) {
        char **hosts = calloc(o->n_sentinels, sizeof *hosts);
        uint16_t *ports = calloc(o->n_sentinels, sizeof *ports);
        rs->o.sentinel_master = strdup(o->sentinel_master);
        if (o->sentinel_password && !(rs->o.sentinel_password = strdup(o->sentinel_password)))
            sentinel_ok = 0;
        rs->o.sentinel_hosts = (const char *const *)hosts;
        rs->o.sentinel_ports = ports;
        sentinel_ok = sentinel_ok && hosts && ports && rs->o.sentinel_master;
        for (size_t i = 0; sentinel_ok && i < o->n_sentinels; i++) {
            hosts[i] = strdup(o->sentinel_hosts[i]);
            ports[i] = o->sentinel_ports[i];
            rs->o.n_sentinels++;
            sentinel_ok = hosts[i] != NULL;
        }
    }
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
    rs->o.cluster_hosts = NULL;
    rs->o.cluster_ports = NULL;
    rs->o.n_cluster = 0;
    if (o->n_cluster) {
        char **hosts = calloc(o->n_cluster, sizeof *hosts);
        uint16_t *ports = calloc(o->n_cluster, sizeof *ports);
        rs->o.cluster_hosts = (const char *const *)hosts;
        rs->o.cluster_ports = ports;
        sentinel_ok = sentinel_ok && hosts && ports;
        for (size_t i = 0; sentinel_ok && i < o->n_cluster; i++) {
            hosts[i] = strdup(o->cluster_hosts[i]);
            ports[i] = o->cluster_ports[i];
            rs->o.n_cluster++;
            sentinel_ok = hosts[i] != NULL;
        }
    }
    if (!rs->o.host || !rs->o.key_prefix || !sentinel_ok || (o->password && !rs->o.password) ||
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
