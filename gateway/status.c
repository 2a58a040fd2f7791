/*
 * gateway/status.c: the counters behind the status page. See status.h.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../limiter/hash.h"
#include "metrics.h"
#include "respond.h"
#include "status.h"

#define ST_MINUTES 16   /* ring of minutes; the last SHOWN are shown */
#define ST_SHOWN 15
#define ST_ENDPOINTS 128
#define ST_THREADS 256
#define ST_REFUSED 128  /* (key, limit) pairs per thread */
#define ST_LEVELS 128   /* accounts per thread */
#define ST_PROBE 8
#define ST_NAME 65
#define ST_IDENT 160

/* Endpoint names get a small index, process-wide; the table only grows. */
static char ep_names[ST_ENDPOINTS][ST_NAME];
static atomic_int n_eps;
static pthread_mutex_t ep_mu = PTHREAD_MUTEX_INITIALIZER;

/* A (key, limit) pair refused: counts per minute. The strings are written
 * by the owning thread only, between two changes of seq (odd meanwhile). */
typedef struct refused_slot {
    atomic_uint seq;
    atomic_int used;
    char key_id[ST_NAME], account[ST_NAME], limit[ST_IDENT];
    atomic_llong minute[ST_MINUTES];
    atomic_ulong n[ST_MINUTES];
} refused_slot_t;

/* An account's level at its latest decision on this thread. */
typedef struct level_slot {
    atomic_uint seq;
    atomic_int used;
    char account[ST_NAME], limit[ST_IDENT];
    int64_t value, max;
    int money;
    int64_t at_us; /* the decision's time: the latest over threads wins */
} level_slot_t;

/* One thread's counters. Written by that thread only; read by status_json. */
typedef struct st_thread {
    atomic_llong minute[ST_MINUTES];
    atomic_ulong req[ST_MINUTES][ST_ENDPOINTS], ref[ST_MINUTES][ST_ENDPOINTS];
    atomic_ulong store_n[ST_MINUTES], store_us[ST_MINUTES], store_max[ST_MINUTES];
    refused_slot_t refused[ST_REFUSED];
    level_slot_t levels[ST_LEVELS];
} st_thread_t;

static _Atomic(st_thread_t *) threads[ST_THREADS];
static atomic_int n_threads;
static __thread st_thread_t *mine;
static __thread int mine_failed;

/* Per thread: the endpoint index of (name pointer, generation). */
#define EP_CACHE 64
static __thread struct {
    const char *name;
    uint64_t gen;
    int index;
} ep_cache[EP_CACHE];

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static st_thread_t *me(void)
{
    if (mine || mine_failed)
        return mine;
    int i = atomic_fetch_add(&n_threads, 1);
    if (i >= ST_THREADS || !(mine = calloc(1, sizeof *mine))) {
        mine_failed = 1;
        return NULL;
    }
    atomic_store_explicit(&threads[i], mine, memory_order_release);
    return mine;
}

static int ep_index(uint64_t gen, const char *name)
{
    size_t c = ((uintptr_t)name >> 4) % EP_CACHE;
    if (ep_cache[c].name == name && ep_cache[c].gen == gen)
        return ep_cache[c].index;
    int n = atomic_load_explicit(&n_eps, memory_order_acquire), found = -1;
    for (int i = 0; i < n && found < 0; i++)
        if (strcmp(ep_names[i], name) == 0)
            found = i;
    if (found < 0) {
        pthread_mutex_lock(&ep_mu);
        n = atomic_load_explicit(&n_eps, memory_order_acquire);
        for (int i = 0; i < n && found < 0; i++)
            if (strcmp(ep_names[i], name) == 0)
                found = i;
        if (found < 0 && n < ST_ENDPOINTS) {
            snprintf(ep_names[n], ST_NAME, "%s", name);
            atomic_store_explicit(&n_eps, n + 1, memory_order_release);
            found = n;
        }
        pthread_mutex_unlock(&ep_mu);
    }
    ep_cache[c].name = name;
    ep_cache[c].gen = gen;
    ep_cache[c].index = found;
    return found;
}

/* The ring slot of the current minute, cleared when a new minute takes it. */
static int minute_slot(st_thread_t *t, int64_t minute)
{
    int i = (int)(minute % ST_MINUTES);
    if (atomic_load_explicit(&t->minute[i], memory_order_relaxed) != minute) {
        int n = atomic_load_explicit(&n_eps, memory_order_relaxed);
        for (int e = 0; e < n; e++) {
            atomic_store_explicit(&t->req[i][e], 0, memory_order_relaxed);
            atomic_store_explicit(&t->ref[i][e], 0, memory_order_relaxed);
        }
        atomic_store_explicit(&t->store_n[i], 0, memory_order_relaxed);
        atomic_store_explicit(&t->store_us[i], 0, memory_order_relaxed);
        atomic_store_explicit(&t->store_max[i], 0, memory_order_relaxed);
        atomic_store_explicit(&t->minute[i], minute, memory_order_release);
    }
    return i;
}

void status_request(uint64_t gen, const char *endpoint, int refused)
{
    st_thread_t *t = me();
    if (!t)
        return;
    int e = ep_index(gen, endpoint);
    if (e < 0)
        return;
    int i = minute_slot(t, now_ms() / 60000);
    atomic_fetch_add_explicit(&t->req[i][e], 1, memory_order_relaxed);
    if (refused)
        atomic_fetch_add_explicit(&t->ref[i][e], 1, memory_order_relaxed);
}

void status_store_latency(int64_t us)
{
    st_thread_t *t = me();
    if (!t)
        return;
    if (us < 0)
        us = 0;
    int i = minute_slot(t, now_ms() / 60000);
    atomic_fetch_add_explicit(&t->store_n[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&t->store_us[i], (unsigned long)us, memory_order_relaxed);
    if ((unsigned long)us > atomic_load_explicit(&t->store_max[i], memory_order_relaxed))
        atomic_store_explicit(&t->store_max[i], (unsigned long)us, memory_order_relaxed);
}

/* Refusals of a slot over the minutes shown. */
static unsigned long refused_recent(refused_slot_t *s, int64_t minute)
{
    unsigned long sum = 0;
    for (int k = 0; k < ST_MINUTES; k++) {
        int64_t m = atomic_load_explicit(&s->minute[k], memory_order_relaxed);
        if (m > minute - ST_SHOWN && m <= minute)
            sum += atomic_load_explicit(&s->n[k], memory_order_relaxed);
    }
    return sum;
}

static void seq_begin(atomic_uint *seq)
{
    atomic_fetch_add_explicit(seq, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
}

static void seq_end(atomic_uint *seq)
{
    atomic_fetch_add_explicit(seq, 1, memory_order_release);
}

void status_refused(const char *key_id, const char *account, const char *limit)
{
    st_thread_t *t = me();
    if (!t || !key_id)
        return;
    if (!limit)
        limit = "";
    if (!account)
        account = "";
    int64_t minute = now_ms() / 60000;
    uint64_t h = rw_hash_str(key_id) ^ rw_hash_str(limit) * 31;
    refused_slot_t *s = NULL, *victim = NULL;
    unsigned long victim_n = 0;
    for (int p = 0; p < ST_PROBE && !s; p++) {
        refused_slot_t *c = &t->refused[(h + (uint64_t)p) % ST_REFUSED];
        if (!atomic_load_explicit(&c->used, memory_order_relaxed)) {
            victim = c;
            victim_n = 0;
            break;
        }
        if (strcmp(c->key_id, key_id) == 0 && strcmp(c->limit, limit) == 0) {
            s = c;
            break;
        }
        unsigned long n = refused_recent(c, minute);
        if (!victim || n < victim_n) {
            victim = c;
            victim_n = n;
        }
    }
    if (!s) {
        /* A new pair takes a free slot, or the least refused one near it. */
        s = victim;
        seq_begin(&s->seq);
        snprintf(s->key_id, sizeof s->key_id, "%s", key_id);
        snprintf(s->account, sizeof s->account, "%s", account);
        snprintf(s->limit, sizeof s->limit, "%s", limit);
        for (int k = 0; k < ST_MINUTES; k++) {
            atomic_store_explicit(&s->minute[k], 0, memory_order_relaxed);
            atomic_store_explicit(&s->n[k], 0, memory_order_relaxed);
        }
        atomic_store_explicit(&s->used, 1, memory_order_relaxed);
        seq_end(&s->seq);
    }
    int k = (int)(minute % ST_MINUTES);
    if (atomic_load_explicit(&s->minute[k], memory_order_relaxed) != minute) {
        atomic_store_explicit(&s->n[k], 0, memory_order_relaxed);
        atomic_store_explicit(&s->minute[k], minute, memory_order_relaxed);
    }
    atomic_fetch_add_explicit(&s->n[k], 1, memory_order_relaxed);
}

void status_level(const char *account, const char *limit_ident, int64_t used, int64_t limit,
                  int money)
{
    st_thread_t *t = me();
    if (!t || !account || limit <= 0)
        return;
    uint64_t h = rw_hash_str(account);
    level_slot_t *s = NULL;
    for (int p = 0; p < ST_PROBE; p++) {
        level_slot_t *c = &t->levels[(h + (uint64_t)p) % ST_LEVELS];
        if (!atomic_load_explicit(&c->used, memory_order_relaxed) ||
            strcmp(c->account, account) == 0) {
            s = c;
            break;
        }
        if (!s || c->at_us < s->at_us)
            s = c; /* else the one seen longest ago makes room */
    }
    int64_t at = now_us();
    seq_begin(&s->seq);
    if (strcmp(s->account, account) != 0)
        snprintf(s->account, sizeof s->account, "%s", account);
    if (strcmp(s->limit, limit_ident) != 0)
        snprintf(s->limit, sizeof s->limit, "%s", limit_ident);
    s->value = used;
    s->max = limit;
    s->money = money;
    s->at_us = at;
    atomic_store_explicit(&s->used, 1, memory_order_relaxed);
    seq_end(&s->seq);
}

/* ---- jobs ---- */

#define ST_JOBS 4096
typedef struct job_entry {
    char account[ST_NAME], job[ST_NAME];
    int64_t until_ms;
} job_entry_t;
static job_entry_t jobs[ST_JOBS];
static size_t n_jobs;
static unsigned long jobs_untracked;
static pthread_mutex_t jobs_mu = PTHREAD_MUTEX_INITIALIZER;

/* Drops the jobs past their deadline; under jobs_mu. */
static void jobs_expire(int64_t now)
{
    size_t k = 0;
    for (size_t i = 0; i < n_jobs; i++)
        if (jobs[i].until_ms > now)
            jobs[k++] = jobs[i];
    n_jobs = k;
    metrics_jobs_held((long)n_jobs);
}

void status_job_held(const char *account, const char *job, int64_t max_seconds)
{
    int64_t now = now_ms();
    pthread_mutex_lock(&jobs_mu);
    jobs_expire(now);
    if (n_jobs < ST_JOBS) {
        job_entry_t *j = &jobs[n_jobs++];
        snprintf(j->account, sizeof j->account, "%s", account);
        snprintf(j->job, sizeof j->job, "%s", job);
        j->until_ms = now + max_seconds * 1000;
    } else {
        jobs_untracked++;
    }
    metrics_jobs_held((long)n_jobs);
    pthread_mutex_unlock(&jobs_mu);
}

void status_job_done(const char *account, const char *job)
{
    pthread_mutex_lock(&jobs_mu);
    for (size_t i = 0; i < n_jobs; i++) {
        if (strcmp(jobs[i].job, job) == 0 && (!account || strcmp(jobs[i].account, account) == 0)) {
            /* Every hold of that id is released at once. */
            jobs[i] = jobs[--n_jobs];
            i--;
        }
    }
    metrics_jobs_held((long)n_jobs);
    pthread_mutex_unlock(&jobs_mu);
}

/* ---- the document ---- */

/* A consistent copy of a table entry's strings, or 0 when it was being
 * rewritten (or is unused). */
static int copy_refused(refused_slot_t *s, char *key_id, char *account, char *limit)
{
    unsigned a = atomic_load_explicit(&s->seq, memory_order_acquire);
    if ((a & 1) || !atomic_load_explicit(&s->used, memory_order_relaxed))
        return 0;
    memcpy(key_id, s->key_id, ST_NAME);
    memcpy(account, s->account, ST_NAME);
    memcpy(limit, s->limit, ST_IDENT);
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&s->seq, memory_order_relaxed) != a)
        return 0;
    key_id[ST_NAME - 1] = account[ST_NAME - 1] = limit[ST_IDENT - 1] = '\0';
    return 1;
}

static int copy_level(level_slot_t *s, level_slot_t *out)
{
    unsigned a = atomic_load_explicit(&s->seq, memory_order_acquire);
    if ((a & 1) || !atomic_load_explicit(&s->used, memory_order_relaxed))
        return 0;
    memcpy(out->account, s->account, ST_NAME);
    memcpy(out->limit, s->limit, ST_IDENT);
    out->value = s->value;
    out->max = s->max;
    out->money = s->money;
    out->at_us = s->at_us;
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&s->seq, memory_order_relaxed) != a)
        return 0;
    out->account[ST_NAME - 1] = out->limit[ST_IDENT - 1] = '\0';
    return 1;
}

static json_t *amount(int64_t v, int money)
{
    if (!money)
        return json_integer(v);
    char buf[32];
    respond_money(v, buf, sizeof buf);
    return json_string(buf);
}

typedef struct key_sum {
    char key_id[ST_NAME], account[ST_NAME];
    unsigned long total;
    json_t *limits; /* owned: [{"limit","refused"}] */
} key_sum_t;

static int by_total(const void *a, const void *b)
{
    const key_sum_t *x = a, *y = b;
    return x->total < y->total ? 1 : x->total > y->total ? -1 : strcmp(x->key_id, y->key_id);
}

static int by_level(const void *a, const void *b)
{
    const level_slot_t *x = a, *y = b;
    double fx = (double)x->value / (double)x->max, fy = (double)y->value / (double)y->max;
    return fx < fy ? 1 : fx > fy ? -1 : strcmp(x->account, y->account);
}

#define TOP 10

static json_t *refused_keys_json(int nt, int64_t minute)
{
    size_t cap = (size_t)nt * ST_REFUSED, n = 0;
    key_sum_t *sums = calloc(cap ? cap : 1, sizeof *sums);
    if (!sums)
        return json_array();
    char key_id[ST_NAME], account[ST_NAME], limit[ST_IDENT];
    for (int t = 0; t < nt; t++) {
        st_thread_t *b = atomic_load_explicit(&threads[t], memory_order_acquire);
        for (int i = 0; b && i < ST_REFUSED; i++) {
            refused_slot_t *s = &b->refused[i];
            if (!copy_refused(s, key_id, account, limit))
                continue;
            unsigned long c = refused_recent(s, minute);
            if (c == 0)
                continue;
            key_sum_t *k = NULL;
            for (size_t j = 0; j < n && !k; j++)
                if (strcmp(sums[j].key_id, key_id) == 0)
                    k = &sums[j];
            if (!k) {
                k = &sums[n++];
                memcpy(k->key_id, key_id, ST_NAME);
                memcpy(k->account, account, ST_NAME);
                k->limits = json_array();
            }
            k->total += c;
            json_t *l = NULL;
            size_t li;
            json_array_foreach(k->limits, li, l)
                if (strcmp(json_string_value(json_object_get(l, "limit")), limit) == 0)
                    break;
            if (li < json_array_size(k->limits))
                json_object_set_new(
                    l, "refused",
                    json_integer(json_integer_value(json_object_get(l, "refused")) +
                                 (json_int_t)c));
            else
                json_array_append_new(k->limits, json_pack("{s:s, s:I}", "limit", limit,
                                                           "refused", (json_int_t)c));
        }
    }
    qsort(sums, n, sizeof *sums, by_total);
    json_t *out = json_array();
    for (size_t j = 0; j < n; j++) {
        if (j < TOP)
            json_array_append_new(out, json_pack("{s:s, s:s, s:I, s:o}", "key_id",
                                                 sums[j].key_id, "account", sums[j].account,
                                                 "refused", (json_int_t)sums[j].total,
                                                 "limits", sums[j].limits));
        else
            json_decref(sums[j].limits);
    }
    free(sums);
    return out;
}

static json_t *accounts_json(int nt)
{
    int64_t now = now_us() / 1000;
    size_t cap = (size_t)nt * ST_LEVELS, n = 0;
    level_slot_t *all = calloc(cap ? cap : 1, sizeof *all);
    if (!all)
        return json_array();
    level_slot_t v;
    for (int t = 0; t < nt; t++) {
        st_thread_t *b = atomic_load_explicit(&threads[t], memory_order_acquire);
        for (int i = 0; b && i < ST_LEVELS; i++) {
            if (!copy_level(&b->levels[i], &v) ||
                v.at_us < (now - ST_SHOWN * 60000) * 1000 || v.max <= 0)
                continue;
            /* The latest decision of an account, over all threads. */
            size_t j = 0;
            while (j < n && strcmp(all[j].account, v.account) != 0)
                j++;
            if (j == n)
                all[n++] = v;
            else if (v.at_us > all[j].at_us ||
                     (v.at_us == all[j].at_us &&
                      (double)v.value / (double)v.max > (double)all[j].value / (double)all[j].max))
                all[j] = v;
        }
    }
    qsort(all, n, sizeof *all, by_level);
    json_t *out = json_array();
    for (size_t j = 0; j < n && j < TOP; j++) {
        level_slot_t *a = &all[j];
        double pct = 100.0 * (double)a->value / (double)a->max;
        json_array_append_new(out, json_pack("{s:s, s:s, s:o, s:o, s:f, s:I}", "account",
                                             a->account, "limit", a->limit, "used",
                                             amount(a->value, a->money), "max",
                                             amount(a->max, a->money), "percent", pct,
                                             "seen_ms_ago",
                                             (json_int_t)(now > a->at_us / 1000 ? now - a->at_us / 1000 : 0)));
    }
    free(all);
    return out;
}

json_t *status_json(worker_t *w)
{
    int64_t now = now_ms(), minute = now / 60000;
    int nt = atomic_load(&n_threads);
    if (nt > ST_THREADS)
        nt = ST_THREADS;
    int ne = atomic_load_explicit(&n_eps, memory_order_acquire);

    json_t *minutes = json_array();
    unsigned long req[ST_SHOWN][ST_ENDPOINTS] = {{0}}, ref[ST_SHOWN][ST_ENDPOINTS] = {{0}};
    unsigned long sn[ST_SHOWN] = {0}, sus[ST_SHOWN] = {0}, smax[ST_SHOWN] = {0};
    for (int k = 0; k < ST_SHOWN; k++) {
        int64_t m = minute - (ST_SHOWN - 1) + k;
        json_array_append_new(minutes, json_integer((json_int_t)(m * 60)));
        int i = (int)(m % ST_MINUTES);
        for (int t = 0; t < nt; t++) {
            st_thread_t *b = atomic_load_explicit(&threads[t], memory_order_acquire);
            if (!b || atomic_load_explicit(&b->minute[i], memory_order_acquire) != m)
                continue;
            for (int e = 0; e < ne; e++) {
                req[k][e] += atomic_load_explicit(&b->req[i][e], memory_order_relaxed);
                ref[k][e] += atomic_load_explicit(&b->ref[i][e], memory_order_relaxed);
            }
            sn[k] += atomic_load_explicit(&b->store_n[i], memory_order_relaxed);
            sus[k] += atomic_load_explicit(&b->store_us[i], memory_order_relaxed);
            unsigned long mx = atomic_load_explicit(&b->store_max[i], memory_order_relaxed);
            if (mx > smax[k])
                smax[k] = mx;
        }
    }
    json_t *eps = json_array();
    for (int e = 0; e < ne; e++) {
        json_t *rq = json_array(), *rf = json_array();
        unsigned long any = 0;
        for (int k = 0; k < ST_SHOWN; k++) {
            json_array_append_new(rq, json_integer((json_int_t)req[k][e]));
            json_array_append_new(rf, json_integer((json_int_t)ref[k][e]));
            any += req[k][e];
        }
        if (any)
            json_array_append_new(eps, json_pack("{s:s, s:o, s:o}", "endpoint", ep_names[e],
                                                 "requests", rq, "refused", rf));
        else {
            json_decref(rq);
            json_decref(rf);
        }
    }
    json_t *calls = json_array(), *avg = json_array(), *mx = json_array();
    for (int k = 0; k < ST_SHOWN; k++) {
        json_array_append_new(calls, json_integer((json_int_t)sn[k]));
        json_array_append_new(avg, sn[k] ? json_real((double)sus[k] / (double)sn[k] / 1000.0)
                                         : json_null());
        json_array_append_new(mx, sn[k] ? json_real((double)smax[k] / 1000.0) : json_null());
    }
    json_t *store = json_pack("{s:s, s:b, s:o, s:o, s:o}", "driver",
                              w->cfg->storage.driver == CFG_STORE_REDIS ? "redis" : "memory",
                              "ready", store_ready(w->store), "calls", calls, "latency_avg_ms",
                              avg, "latency_max_ms", mx);
    const store_redis_stats_t *rs = store_redis_stats(w->store->store);
    if (rs)
        json_object_set_new(store, "unavailable_total",
                            json_integer((json_int_t)atomic_load(&rs->unavailable)));

    pthread_mutex_lock(&jobs_mu);
    jobs_expire(now);
    json_int_t held = (json_int_t)n_jobs, untracked = (json_int_t)jobs_untracked;
    pthread_mutex_unlock(&jobs_mu);

    return json_pack("{s:s, s:I, s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:I}", "version",
                     RATEWALL_VERSION, "time", (json_int_t)(now / 1000), "store", store,
                     "minutes", minutes, "endpoints", eps, "accounts", accounts_json(nt),
                     "refused_keys", refused_keys_json(nt, minute), "leases_held",
                     (json_int_t)metrics_leases_held(), "jobs_held", held, "jobs_untracked",
                     untracked);
}
