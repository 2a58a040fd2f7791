/*
 * storage/memory.c: the embedded store. One process, any number of worker
 * threads.
 *
 * Counters live in NSHARDS hash tables, each behind its own mutex. A shard
 * is chosen by the counter key's hash tag ("{account}"), so every check of
 * one request normally takes one lock, as one Redis slot would take one
 * script. Every write also looks at a couple of hash chains and frees the
 * entries that count nothing any more, so memory follows live counters.
 *
 * Async jobs that hold leases are kept in a job table of their own (with
 * its own mutex), one entry per create, named by account and job: the
 * gauge counts keep the job's lease until job_done() of that account and
 * job, or the job's expiry, found by a sweep at most once a second.
 *
 * Ownership: entries and jobs belong to the store; nothing is handed out.
 * Callbacks run before the call returns, with no lock held.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../limiter/hash.h"
#include "../limiter/window.h"
#include "store.h"

#define NSHARDS 64
#define EVICT_PROBES 2     /* chains inspected per write */
#define MIN_BUCKETS 64

typedef struct entry {
    struct entry *next;
    uint64_t hash;
    lim_ck_kind_t kind;
    lim_per_t per;
    int64_t window_ms;
    union {
        struct { int64_t period; int64_t value; } cal; /* calendar */
        int64_t gauge;                                 /* leases held */
    } u;
    lim_rolling_t *roll;   /* rolling only: allocated with the entry */
    char key[];
} entry_t;

typedef struct shard {
    pthread_mutex_t mu;
    entry_t **b;
    size_t nb;      /* power of two */
    size_t count;
    size_t cursor;  /* next chain to probe for idle entries */
} shard_t;

/* One create's leases, held for a job of an account: the gauge keys it
 * counts in. One account may hold several of one job id (a backend that
 * returned it twice); each is its own entry. Chained by the job name's
 * hash, so a lookup without the account is one chain. */
typedef struct job {
    struct job *next;
    int64_t expires_ms;
    size_t n_keys;
    char **keys;
    char *account;  /* in the same allocation, after job */
    char job[];
} job_t;

#define JOB_BUCKETS 1024

typedef struct mem_store {
    store_t base;
    pthread_mutex_t jobs_mu;
    job_t *jobs[JOB_BUCKETS];
    atomic_size_t n_jobs; /* read without jobs_mu as a hint */
    int64_t next_sweep_ms;
    store_clock_fn clock;
    void *clock_arg;
    atomic_uint rover; /* next shard to sweep */
    shard_t shard[NSHARDS];
} mem_store_t;

typedef struct mem_worker {
    store_worker_t base;
} mem_worker_t;

/* Hash of the hash tag "{...}" if the key has one, else of the key. */
static unsigned shard_of(const char *key)
{
    const char *open = strchr(key, '{');
    const char *close = open ? strchr(open + 1, '}') : NULL;
    uint64_t h = close ? rw_hash_bytes(open + 1, (size_t)(close - open - 1))
                       : rw_hash_str(key);
    return (unsigned)(h % NSHARDS);
}

static int64_t now_ms(mem_store_t *m)
{
    if (m->clock)
        return m->clock(m->clock_arg);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static entry_t *lookup(shard_t *s, const char *key, uint64_t h)
{
    for (entry_t *e = s->b[h & (s->nb - 1)]; e; e = e->next)
        if (e->hash == h && strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

static void grow(shard_t *s)
{
    size_t nb = s->nb * 2;
    entry_t **b = calloc(nb, sizeof *b);
    if (!b)
        return; /* keep the old table: longer chains, still correct */
    for (size_t i = 0; i < s->nb; i++) {
        entry_t *e = s->b[i];
        while (e) {
            entry_t *next = e->next;
            e->next = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
            e = next;
        }
    }
    free(s->b);
    s->b = b;
    s->nb = nb;
}

static entry_t *create(shard_t *s, const lim_check_t *c, uint64_t h, int64_t now)
{
    size_t klen = strlen(c->key);
    size_t size = sizeof(entry_t) + klen + 1;
    size_t roll_off = (size + 7) & ~(size_t)7;
    if (c->kind == LIM_CK_ROLLING)
        size = roll_off + sizeof(lim_rolling_t);
    entry_t *e = malloc(size);
    if (!e)
        return NULL;
    memset(e, 0, sizeof *e);
    memcpy(e->key, c->key, klen + 1);
    e->hash = h;
    e->kind = c->kind;
    e->per = c->per;
    e->window_ms = c->window_ms;
    if (c->kind == LIM_CK_ROLLING) {
        e->roll = (lim_rolling_t *)((char *)e + roll_off);
        lim_rolling_init(e->roll, c->window_ms, now);
    } else if (c->kind == LIM_CK_CALENDAR) {
        e->u.cal.period = lim_period_id(c->per, now);
    }
    if (s->count + 1 > s->nb * 2)
        grow(s);
    size_t i = h & (s->nb - 1);
    e->next = s->b[i];
    s->b[i] = e;
    s->count++;
    return e;
}

static int entry_idle(entry_t *e, int64_t now)
{
    switch (e->kind) {
    case LIM_CK_ROLLING: return lim_rolling_idle(e->roll, e->window_ms, now);
    case LIM_CK_CALENDAR:
        return e->u.cal.value == 0 || e->u.cal.period != lim_period_id(e->per, now);
    case LIM_CK_GAUGE: return e->u.gauge <= 0;
    }
    return 0;
}

/* Free idle entries of the next EVICT_PROBES chains. */
static void evict_some(shard_t *s, int64_t now)
{
    for (int p = 0; p < EVICT_PROBES; p++) {
        entry_t **pp = &s->b[s->cursor];
        s->cursor = (s->cursor + 1) & (s->nb - 1);
        while (*pp) {
            entry_t *e = *pp;
            if (entry_idle(e, now)) {
                *pp = e->next;
                free(e);
                s->count--;
            } else {
                pp = &e->next;
            }
        }
    }
}

static void sweep_jobs(mem_store_t *m, int64_t now);

/* Shards with no traffic of their own are swept by everyone else's: each
 * admitted write also sweeps the next shard in turn, if it is free. */
static void sweep_other(mem_store_t *m, int64_t now)
{
    unsigned i = atomic_fetch_add_explicit(&m->rover, 1, memory_order_relaxed) % NSHARDS;
    shard_t *s = &m->shard[i];
    if (pthread_mutex_trylock(&s->mu) != 0)
        return;
    evict_some(s, now);
    pthread_mutex_unlock(&s->mu);
}

/* Lock the shards of checks[] in index order; returns a bitmap of them. */
static uint64_t lock_shards(mem_store_t *m, const lim_check_t *c, size_t n,
                            unsigned *sh)
{
    uint64_t set = 0;
    for (size_t i = 0; i < n; i++) {
        sh[i] = shard_of(c[i].key);
        set |= 1ULL << sh[i];
    }
    for (unsigned i = 0; i < NSHARDS; i++)
        if (set & (1ULL << i))
            pthread_mutex_lock(&m->shard[i].mu);
    return set;
}

static void unlock_shards(mem_store_t *m, uint64_t set)
{
    for (unsigned i = 0; i < NSHARDS; i++)
        if (set & (1ULL << i))
            pthread_mutex_unlock(&m->shard[i].mu);
}

/* Current count of one check at now (advancing a rolling window). */
static int64_t used_of(entry_t *e, const lim_check_t *c, int64_t now)
{
    if (!e)
        return 0;
    switch (c->kind) {
    case LIM_CK_ROLLING:
        lim_rolling_advance(e->roll, c->window_ms, now);
        return e->roll->sum;
    case LIM_CK_CALENDAR:
        return e->u.cal.period == lim_period_id(c->per, now) ? e->u.cal.value : 0;
    case LIM_CK_GAUGE:
        return e->u.gauge;
    }
    return 0;
}

static void charge(entry_t *e, const lim_check_t *c, int64_t now)
{
    switch (c->kind) {
    case LIM_CK_ROLLING:
        lim_rolling_add(e->roll, c->amount);
        break;
    case LIM_CK_CALENDAR: {
        int64_t id = lim_period_id(c->per, now);
        if (e->u.cal.period != id) {
            e->u.cal.period = id;
            e->u.cal.value = 0;
        }
        e->u.cal.value += c->amount;
        break;
    }
    case LIM_CK_GAUGE:
        e->u.gauge += c->amount;
        break;
    }
}

static int64_t reset_of(entry_t *e, const lim_check_t *c, int64_t now)
{
    switch (c->kind) {
    case LIM_CK_ROLLING: return e ? lim_rolling_reset_at(e->roll, c->window_ms, now) : now;
    case LIM_CK_CALENDAR: return lim_period_end(c->per, now);
    case LIM_CK_GAUGE: return 0;
    }
    return 0;
}

static int64_t retry_of(entry_t *e, const lim_check_t *c, int64_t now)
{
    if (c->amount > c->limit)
        return LIM_NEVER;
    switch (c->kind) {
    case LIM_CK_ROLLING:
        return e ? lim_rolling_retry_at(e->roll, c->window_ms, c->limit, c->amount, now)
                 : now;
    case LIM_CK_CALENDAR: return lim_period_end(c->per, now);
    case LIM_CK_GAUGE: return now + 1000;
    }
    return now;
}

/* The decision, under the shard locks. charge_ok: charge if all fit. */
static void decide(mem_store_t *m, const lim_check_t *c, size_t n, int charge_ok,
                   lim_outcome_t *o, int *nomem)
{
    unsigned sh[LIM_MAX_CHECKS];
    entry_t *e[LIM_MAX_CHECKS];
    uint64_t hs[LIM_MAX_CHECKS];
    int64_t now = now_ms(m);
    if (m->n_jobs)
        sweep_jobs(m, now);
    uint64_t set = lock_shards(m, c, n, sh);

    o->now_ms = now;
    o->admitted = 1;
    for (size_t i = 0; i < n; i++) {
        hs[i] = rw_hash_str(c[i].key);
        e[i] = lookup(&m->shard[sh[i]], c[i].key, hs[i]);
        lim_result_t *r = &o->res[i];
        r->used = used_of(e[i], &c[i], now);
        r->ok = r->used + c[i].amount <= c[i].limit;
        if (!r->ok && !c[i].shadow)
            o->admitted = 0;
    }
    if (o->admitted && charge_ok) {
        for (size_t i = 0; i < n && !*nomem; i++) {
            if (!e[i]) {
                /* Another check of this request may share the key. */
                e[i] = lookup(&m->shard[sh[i]], c[i].key, hs[i]);
                if (!e[i])
                    e[i] = create(&m->shard[sh[i]], &c[i], hs[i], now);
                if (!e[i])
                    *nomem = 1;
            }
        }
        if (*nomem) {
            o->admitted = 0;
        } else {
            for (size_t i = 0; i < n; i++)
                charge(e[i], &c[i], now);
        }
    }
    for (size_t i = 0; i < n; i++) {
        lim_result_t *r = &o->res[i];
        r->reset_ms = reset_of(e[i], &c[i], now);
        r->retry_ms = r->ok ? now : retry_of(e[i], &c[i], now);
    }
    /* Last: eviction may free entries of this very decision (a charge of 0
     * leaves a window idle), so nothing reads e[] after it. */
    if (o->admitted && charge_ok)
        for (unsigned i = 0; i < NSHARDS; i++)
            if (set & (1ULL << i))
                evict_some(&m->shard[i], now);
    unlock_shards(m, set);
    if (o->admitted && charge_ok)
        sweep_other(m, now);
}

static void mem_acquire(store_worker_t *w, const lim_check_t *c, size_t n,
                        const char *lease_id, store_acquire_cb cb, void *arg)
{
    (void)lease_id; /* one process: a lease is a count, gone with the process */
    mem_store_t *m = (mem_store_t *)w->store;
    lim_outcome_t o;
    int nomem = 0;
    decide(m, c, n, 1, &o, &nomem);
    cb(arg, nomem ? STORE_UNAVAILABLE : STORE_OK, &o);
}

static void mem_usage(store_worker_t *w, const lim_check_t *c, size_t n,
                      store_usage_cb cb, void *arg)
{
    mem_store_t *m = (mem_store_t *)w->store;
    lim_outcome_t o;
    int nomem = 0;
    decide(m, c, n, 0, &o, &nomem);
    cb(arg, STORE_OK, &o);
}

static void mem_release(store_worker_t *w, const lim_check_t *c, size_t n,
                        const char *lease_id)
{
    (void)lease_id;
    mem_store_t *m = (mem_store_t *)w->store;
    unsigned sh[LIM_MAX_CHECKS];
    uint64_t set = lock_shards(m, c, n, sh);
    for (size_t i = 0; i < n; i++) {
        if (c[i].kind != LIM_CK_GAUGE)
            continue;
        entry_t *e = lookup(&m->shard[sh[i]], c[i].key,
                            rw_hash_str(c[i].key));
        if (e) {
            e->u.gauge -= c[i].amount;
            if (e->u.gauge < 0)
                e->u.gauge = 0;
        }
    }
    unlock_shards(m, set);
}

static void mem_adjust(store_worker_t *w, const lim_check_t *c, size_t n,
                       const int64_t *deltas, int64_t charged_ms)
{
    mem_store_t *m = (mem_store_t *)w->store;
    unsigned sh[LIM_MAX_CHECKS];
    int64_t now = now_ms(m);
    uint64_t set = lock_shards(m, c, n, sh);
    for (size_t i = 0; i < n; i++) {
        int64_t d = deltas[i];
        if (d == 0 || c[i].kind == LIM_CK_GAUGE)
            continue;
        uint64_t h = rw_hash_str(c[i].key);
        entry_t *e = lookup(&m->shard[sh[i]], c[i].key, h);
        if (!e && d > 0)
            e = create(&m->shard[sh[i]], &c[i], h, now);
        if (!e)
            continue;
        if (c[i].kind == LIM_CK_ROLLING) {
            lim_rolling_advance(e->roll, c[i].window_ms, now);
            if (d > 0)
                lim_rolling_add(e->roll, d);
            else
                lim_rolling_give_back(e->roll, c[i].window_ms, -d, charged_ms);
        } else {
            int64_t id = lim_period_id(c[i].per, now);
            if (d > 0) {
                if (e->u.cal.period != id) {
                    e->u.cal.period = id;
                    e->u.cal.value = 0;
                }
                e->u.cal.value += d;
            } else if (e->u.cal.period == id && lim_period_id(c[i].per, charged_ms) == id) {
                e->u.cal.value = e->u.cal.value + d > 0 ? e->u.cal.value + d : 0;
            }
        }
    }
    unlock_shards(m, set);
}

static unsigned job_bucket(const char *job)
{
    return (unsigned)(rw_hash_str(job) % JOB_BUCKETS);
}

/* Give back one lease of each of the entry's gauges. */
static void job_release(mem_store_t *m, job_t *j)
{
    for (size_t i = 0; i < j->n_keys; i++) {
        unsigned s = shard_of(j->keys[i]);
        pthread_mutex_lock(&m->shard[s].mu);
        entry_t *e = lookup(&m->shard[s], j->keys[i], rw_hash_str(j->keys[i]));
        if (e && e->u.gauge > 0)
            e->u.gauge--;
        pthread_mutex_unlock(&m->shard[s].mu);
    }
}

static void job_free(job_t *j)
{
    for (size_t i = 0; i < j->n_keys; i++)
        free(j->keys[i]);
    free(j->keys);
    free(j);
}

/* Jobs past their max_seconds give their leases back; at most once a second. */
static void sweep_jobs(mem_store_t *m, int64_t now)
{
    job_t *expired = NULL;
    pthread_mutex_lock(&m->jobs_mu);
    if (now < m->next_sweep_ms || m->n_jobs == 0) {
        pthread_mutex_unlock(&m->jobs_mu);
        return;
    }
    m->next_sweep_ms = now + 1000;
    for (int b = 0; b < JOB_BUCKETS; b++) {
        for (job_t **p = &m->jobs[b]; *p;) {
            job_t *j = *p;
            if (j->expires_ms <= now) {
                *p = j->next;
                m->n_jobs--;
                j->next = expired;
                expired = j;
            } else {
                p = &j->next;
            }
        }
    }
    pthread_mutex_unlock(&m->jobs_mu);
    while (expired) {
        job_t *next = expired->next;
        job_release(m, expired);
        job_free(expired);
        expired = next;
    }
}

static void mem_job_hold(store_worker_t *w, const lim_check_t *c, size_t n,
                         const char *lease_id, const char *account, const char *job,
                         int64_t ttl_ms)
{
    mem_store_t *m = (mem_store_t *)w->store;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += c[i].kind == LIM_CK_GAUGE;
    size_t jl = strlen(job) + 1, al = strlen(account) + 1;
    job_t *j = calloc(1, sizeof *j + jl + al);
    if (j)
        j->keys = calloc(k ? k : 1, sizeof *j->keys);
    if (!j || !j->keys) {
        /* Cannot remember the job: give its leases back rather than leak them. */
        if (j)
            free(j);
        mem_release(w, c, n, lease_id);
        return;
    }
    memcpy(j->job, job, jl);
    j->account = j->job + jl;
    memcpy(j->account, account, al);
    j->expires_ms = now_ms(m) + ttl_ms;
    for (size_t i = 0; i < n; i++)
        if (c[i].kind == LIM_CK_GAUGE && (j->keys[j->n_keys] = strdup(c[i].key)))
            j->n_keys++;
    pthread_mutex_lock(&m->jobs_mu);
    unsigned b = job_bucket(job);
    j->next = m->jobs[b];
    m->jobs[b] = j;
    m->n_jobs++;
    pthread_mutex_unlock(&m->jobs_mu);
}

static void mem_job_done(store_worker_t *w, const char *account, const char *job,
                         void (*cb)(void *arg, int found), void *arg)
{
    mem_store_t *m = (mem_store_t *)w->store;
    int64_t now = now_ms(m);
    sweep_jobs(m, now);
    job_t *taken = NULL;
    int found = 0;
    pthread_mutex_lock(&m->jobs_mu);
    job_t **chain = &m->jobs[job_bucket(job)];
    const char *owner = account;
    if (!owner) {
        /* Without an account: the one account holding job, if only one. */
        for (job_t *j = *chain; j; j = j->next) {
            if (j->expires_ms <= now || strcmp(j->job, job) != 0)
                continue;
            if (!owner)
                owner = j->account;
            else if (strcmp(owner, j->account) != 0)
                found = -2;
        }
    }
    if (owner && found == 0) {
        for (job_t **p = chain; *p;) {
            job_t *j = *p;
            if (strcmp(j->job, job) == 0 && strcmp(j->account, owner) == 0) {
                *p = j->next;
                m->n_jobs--;
                found |= j->expires_ms > now;
                j->next = taken;
                taken = j;
            } else {
                p = &j->next;
            }
        }
    }
    pthread_mutex_unlock(&m->jobs_mu);
    while (taken) {
        job_t *next = taken->next;
        job_release(m, taken);
        job_free(taken);
        taken = next;
    }
    if (cb)
        cb(arg, found);
}

static int mem_ready(store_worker_t *w)
{
    (void)w;
    return 1;
}

static store_worker_t *mem_attach(store_t *s, struct event_base *base)
{
    (void)base;
    mem_worker_t *w = calloc(1, sizeof *w);
    if (w)
        w->base.store = s;
    return &w->base;
}

static void mem_detach(store_worker_t *w)
{
    free(w);
}

static void mem_destroy(store_t *s)
{
    mem_store_t *m = (mem_store_t *)s;
    for (int b = 0; b < JOB_BUCKETS; b++) {
        while (m->jobs[b]) {
            job_t *j = m->jobs[b];
            m->jobs[b] = j->next;
            job_free(j);
        }
    }
    pthread_mutex_destroy(&m->jobs_mu);
    for (int i = 0; i < NSHARDS; i++) {
        shard_t *sh = &m->shard[i];
        for (size_t j = 0; j < sh->nb; j++) {
            entry_t *e = sh->b[j];
            while (e) {
                entry_t *next = e->next;
                free(e);
                e = next;
            }
        }
        free(sh->b);
        pthread_mutex_destroy(&sh->mu);
    }
    free(m);
}

size_t store_memory_count(store_t *s)
{
    mem_store_t *m = (mem_store_t *)s;
    size_t n = 0;
    for (int i = 0; i < NSHARDS; i++) {
        pthread_mutex_lock(&m->shard[i].mu);
        n += m->shard[i].count;
        pthread_mutex_unlock(&m->shard[i].mu);
    }
    return n;
}

void store_memory_drop_counters(store_t *s)
{
    store_memory_drop_counters_if(s, NULL, NULL);
}

void store_memory_drop_counters_if(store_t *s, int (*drop)(const char *key, void *arg),
                                   void *arg)
{
    mem_store_t *m = (mem_store_t *)s;
    for (int i = 0; i < NSHARDS; i++) {
        shard_t *sh = &m->shard[i];
        pthread_mutex_lock(&sh->mu);
        for (size_t j = 0; j < sh->nb; j++) {
            for (entry_t **pp = &sh->b[j]; *pp;) {
                entry_t *e = *pp;
                if (e->kind != LIM_CK_GAUGE && (!drop || drop(e->key, arg))) {
                    *pp = e->next;
                    free(e);
                    sh->count--;
                } else {
                    pp = &e->next;
                }
            }
        }
        pthread_mutex_unlock(&sh->mu);
    }
}

static const store_ops_t mem_ops = {
    .name = "memory",
    .answers_inline = 1,
    .attach = mem_attach,
    .detach = mem_detach,
    .acquire = mem_acquire,
    .release = mem_release,
    .usage = mem_usage,
    .adjust = mem_adjust,
    .job_hold = mem_job_hold,
    .job_done = mem_job_done,
    .ready = mem_ready,
    .destroy = mem_destroy,
};

store_t *store_memory_new(store_clock_fn clock, void *clock_arg)
{
    mem_store_t *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->base.ops = &mem_ops;
    m->clock = clock;
    m->clock_arg = clock_arg;
    pthread_mutex_init(&m->jobs_mu, NULL);
    for (int i = 0; i < NSHARDS; i++) {
        shard_t *s = &m->shard[i];
        pthread_mutex_init(&s->mu, NULL);
        s->nb = MIN_BUCKETS;
        s->b = calloc(s->nb, sizeof *s->b);
        if (!s->b) {
            for (int j = 0; j <= i; j++) {
                free(m->shard[j].b);
                pthread_mutex_destroy(&m->shard[j].mu);
            }
            free(m);
            return NULL;
        }
    }
    return &m->base;
}
