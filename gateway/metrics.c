/*
 * gateway/metrics.c: counters for /metrics and the access log.
 * See metrics.h.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>

#include <jansson.h>

#include "log.h"
#include "metrics.h"
#include "respond.h"

/* ---- labelled counters --------------------------------------------------- */

#define SERIES_MAX 4096

typedef struct series {
    const char *family;   /* static */
    char labels[200];     /* rendered: endpoint="x",status="200" */
    atomic_ulong value;
} series_t;

static series_t series[SERIES_MAX];
static atomic_int n_series;
static pthread_mutex_t series_mu = PTHREAD_MUTEX_INITIALIZER;
static atomic_ulong series_overflow;

/* The series of family+labels, created on first use. Lookups are lock-free
 * over the published prefix of the table; creation takes the mutex. */
static series_t *series_get(const char *family, const char *labels)
{
    int n = atomic_load_explicit(&n_series, memory_order_acquire);
    for (int i = 0; i < n; i++)
        if (series[i].family == family && strcmp(series[i].labels, labels) == 0)
            return &series[i];
    pthread_mutex_lock(&series_mu);
    n = atomic_load_explicit(&n_series, memory_order_acquire);
    for (int i = 0; i < n; i++) {
        if (series[i].family == family && strcmp(series[i].labels, labels) == 0) {
            pthread_mutex_unlock(&series_mu);
            return &series[i];
        }
    }
    series_t *s = NULL;
    if (n < SERIES_MAX) {
        s = &series[n];
        s->family = family;
        snprintf(s->labels, sizeof s->labels, "%s", labels);
        atomic_store_explicit(&n_series, n + 1, memory_order_release);
    }
    pthread_mutex_unlock(&series_mu);
    if (!s)
        atomic_fetch_add(&series_overflow, 1);
    return s;
}

/* Per thread: the series last used for (family, a, b, n), so the hot path
 * formats and looks up its labels only the first time. a and b point into
 * the config snapshot of generation gen (names of an endpoint, a limit). */
#define SERIES_CACHE 128
static __thread struct {
    const char *family;
    const void *a, *b;
    int n;
    uint64_t gen;
    series_t *s;
} series_cache[SERIES_CACHE];

static void series_inc(uint64_t gen, const char *family, const void *a, const void *b, int n,
                       const char *fmt, const char *s1, const char *s2)
{
    uintptr_t h = ((uintptr_t)a * 31 + (uintptr_t)b * 17 + (uintptr_t)n * 7 +
                   (uintptr_t)family) >> 3;
    size_t i = h % SERIES_CACHE;
    series_t *s;
    if (series_cache[i].family == family && series_cache[i].a == a &&
        series_cache[i].b == b && series_cache[i].n == n && series_cache[i].gen == gen) {
        s = series_cache[i].s;
    } else {
        char labels[200];
        if (fmt[0] == 'E')
            snprintf(labels, sizeof labels, "endpoint=\"%s\",status=\"%d\"", s1, n);
        else if (fmt[0] == 'R')
            snprintf(labels, sizeof labels, "endpoint=\"%s\",reason=\"%s\"", s1, s2);
        else
            snprintf(labels, sizeof labels, "outcome=\"%s\",limit=\"%s\"", s1, s2);
        s = series_get(family, labels);
        series_cache[i].family = family;
        series_cache[i].a = a;
        series_cache[i].b = b;
        series_cache[i].n = n;
        series_cache[i].gen = gen;
        series_cache[i].s = s;
    }
    if (s)
        atomic_fetch_add_explicit(&s->value, 1, memory_order_relaxed);
}

static const char F_REQUESTS[] = "ratewall_requests_total";
static const char F_DECISIONS[] = "ratewall_decisions_total";
static const char F_JOB_ID_UNUSABLE[] = "ratewall_job_id_unusable_total";

void metrics_job_id_unusable(const char *endpoint)
{
    char labels[200];
    snprintf(labels, sizeof labels, "endpoint=\"%s\"", endpoint);
    series_t *s = series_get(F_JOB_ID_UNUSABLE, labels);
    if (s)
        atomic_fetch_add_explicit(&s->value, 1, memory_order_relaxed);
}

static const char F_RECONCILE_MISSED[] = "ratewall_reconcile_missed_total";

void metrics_reconcile_missed(uint64_t generation, const char *endpoint, const char *reason)
{
    series_inc(generation, F_RECONCILE_MISSED, endpoint, reason, 0, "R", endpoint, reason);
}

/* ---- histograms and gauges ------------------------------------------------ */

static const double bounds_s[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                  0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                  1,      2.5,     5,      10,    30,     60};
#define NB (sizeof bounds_s / sizeof *bounds_s)

typedef struct histo {
    atomic_ulong bucket[NB + 1]; /* last: +Inf */
    atomic_ulong count;
    atomic_ulong sum_us;
} histo_t;

static histo_t store_latency, backend_latency;
static atomic_long leases_held;
static atomic_ulong reloads_ok, reloads_failed;
static atomic_ulong log_dropped;

static void histo_add(histo_t *h, int64_t us)
{
    if (us < 0)
        us = 0;
    size_t i = 0;
    while (i < NB && (double)us / 1e6 > bounds_s[i])
        i++;
    atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, (unsigned long)us, memory_order_relaxed);
}

void metrics_store_latency(int64_t us)
{
    histo_add(&store_latency, us);
}

void metrics_reload(int ok)
{
    atomic_fetch_add(ok ? &reloads_ok : &reloads_failed, 1);
}

void metrics_lease(int delta)
{
    atomic_fetch_add(&leases_held, delta);
}

long metrics_leases_held(void)
{
    return atomic_load(&leases_held);
}

static atomic_long requests_waiting, requests_in_flight, jobs_held;

void metrics_waiting(int delta)
{
    atomic_fetch_add(&requests_waiting, delta);
}

void metrics_in_flight(int delta)
{
    atomic_fetch_add(&requests_in_flight, delta);
}

void metrics_jobs_held(long n)
{
    atomic_store(&jobs_held, n);
}

/* ---- access log ------------------------------------------------------------ */

static linelog_t alog;

int access_log_open(const char *path)
{
    FILE *f = strcmp(path, "-") == 0 ? stdout : fopen(path, "a");
    if (!f)
        return -1;
    if (linelog_open(&alog, f) != 0) {
        if (f != stdout)
            fclose(f);
        return -1;
    }
    return 0;
}

void access_log_close(void)
{
    FILE *f = alog.out;
    if (!alog.open)
        return;
    linelog_close(&alog);
    if (f != stdout)
        fclose(f);
}

static void access_log_line(char *line)
{
    if (linelog_put(&alog, line) != 0)
        atomic_fetch_add(&log_dropped, 1);
}

/* ---- per request -------------------------------------------------------------- */

static const char S_SHADOW_REFUSED[] = "shadow_refused";

static const char *decision_name(int d)
{
    switch (d) {
    case DEC_ADMITTED: return "admitted";
    case DEC_REFUSED: return "refused";
    case DEC_CACHED: return "refused_cached";
    case DEC_UNAVAILABLE: return "unavailable";
    case DEC_UNLIMITED: return "unlimited";
    default: return "none";
    }
}

void metrics_request_done(const metrics_request_t *m)
{
    const char *ep = m->endpoint, *limit = m->limit;
    series_inc(m->generation, F_REQUESTS, ep, NULL, m->status, "E", ep, NULL);
    if (m->decision != DEC_NONE)
        series_inc(m->generation, F_DECISIONS, decision_name(m->decision), limit, 0, "D",
                   decision_name(m->decision), limit ? limit : "");
    for (size_t i = 0; i < m->n_shadow_refused; i++)
        series_inc(m->generation, F_DECISIONS, S_SHADOW_REFUSED, m->shadow_refused[i], 0, "D",
                   S_SHADOW_REFUSED, m->shadow_refused[i]);
    if (m->upstream_us >= 0)
        histo_add(&backend_latency, m->upstream_us);
    if (!alog.open)
        return;
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    char ts[80];
    struct tm tm;
    gmtime_r(&wall.tv_sec, &tm);
    snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             wall.tv_nsec / 1000000);
    char spend[32];
    respond_money(m->spend_micros, spend, sizeof spend);
    json_t *shadow = json_array();
    for (size_t i = 0; i < m->n_shadow_refused; i++)
        json_array_append_new(shadow, json_string(m->shadow_refused[i]));
    /* s? gives null for a NULL: every field is always there. */
    json_t *o = json_pack(
        "{s:s, s:s, s:s?, s:s?, s:s?, s:s?, s:s?, s:s, s:s?, s:i, s:s, s:s?, s:o, s:I, s:o, "
        "s:s, s:I, s:I, s:f, s:f}",
        "time", ts, "request_id", m->request_id, "method", m->method, "path", m->path,
        "client", m->client, "key_id", m->key_id, "account", m->account, "endpoint", ep,
        "model", m->model, "status", m->status, "decision", decision_name(m->decision),
        "limit", limit, "shadow_refused", shadow, "units_charged",
        (json_int_t)m->units_charged, "units_reconciled",
        m->units_reconciled >= 0 ? json_integer(m->units_reconciled) : json_null(), "spend",
        spend, "waited_ms", (json_int_t)(m->waited_ms > 0 ? m->waited_ms : 0), "bytes", (json_int_t)m->bytes_out,
        "upstream_ms", m->upstream_us >= 0 ? (double)m->upstream_us / 1000.0 : 0.0,
        "total_ms", (double)m->total_us / 1000.0);
    char *line = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (line)
        access_log_line(line);
}

/* ---- exposition ----------------------------------------------------------------- */

static void write_family(struct evbuffer *out, const char *family, const char *help)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s counter\n", family, help, family);
    int n = atomic_load_explicit(&n_series, memory_order_acquire);
    for (int i = 0; i < n; i++)
        if (series[i].family == family)
            evbuffer_add_printf(out, "%s{%s} %lu\n", family, series[i].labels,
                                atomic_load(&series[i].value));
}

static void write_histo(struct evbuffer *out, const char *name, const char *help,
                        histo_t *h)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    unsigned long cum = 0;
    for (size_t i = 0; i < NB; i++) {
        cum += atomic_load(&h->bucket[i]);
        evbuffer_add_printf(out, "%s_bucket{le=\"%g\"} %lu\n", name, bounds_s[i], cum);
    }
    cum += atomic_load(&h->bucket[NB]);
    evbuffer_add_printf(out, "%s_bucket{le=\"+Inf\"} %lu\n%s_sum %.6f\n%s_count %lu\n", name,
                        cum, name, (double)atomic_load(&h->sum_us) / 1e6, name,
                        atomic_load(&h->count));
}

void metrics_write(struct evbuffer *out)
{
    write_family(out, F_REQUESTS, "Requests answered, by endpoint and status.");
    write_family(out, F_DECISIONS,
                 "Limit decisions by outcome and, for refusals, the limit that refused (shadow_refused: a shadow limit that would have).");
    write_family(out, F_JOB_ID_UNUSABLE,
                 "Job creates answered 2xx whose job id could not be used, by endpoint: "
                 "their leases are held until the job's max_seconds.");
    write_family(out, F_RECONCILE_MISSED,
                 "Reconciles whose real use could not be known (the estimate stayed "
                 "charged), by endpoint and reason.");
    write_histo(out, "ratewall_store_latency_seconds",
                "Time from asking the store for a decision to its answer.", &store_latency);
    write_histo(out, "ratewall_backend_latency_seconds",
                "Time from sending a request to the backend to the end of its answer.",
                &backend_latency);
    evbuffer_add_printf(out,
                        "# HELP ratewall_leases_held Concurrency leases this instance holds "
                        "for requests in flight.\n# TYPE ratewall_leases_held gauge\n"
                        "ratewall_leases_held %ld\n",
                        atomic_load(&leases_held));
    evbuffer_add_printf(out,
                        "# HELP ratewall_jobs_held Async jobs whose concurrency leases this "
                        "instance holds (until a done status, a done call or max_seconds).\n"
                        "# TYPE ratewall_jobs_held gauge\nratewall_jobs_held %ld\n",
                        atomic_load(&jobs_held));
    evbuffer_add_printf(out,
                        "# HELP ratewall_requests_in_flight Requests this instance is "
                        "handling (from the head read to the answer's end).\n"
                        "# TYPE ratewall_requests_in_flight gauge\n"
                        "ratewall_requests_in_flight %ld\n",
                        atomic_load(&requests_in_flight));
    evbuffer_add_printf(out,
                        "# HELP ratewall_requests_waiting Requests waiting for room "
                        "(an endpoint's queue).\n# TYPE ratewall_requests_waiting gauge\n"
                        "ratewall_requests_waiting %ld\n",
                        atomic_load(&requests_waiting));
    evbuffer_add_printf(out,
                        "# HELP ratewall_reloads_total Configuration reloads by result.\n"
                        "# TYPE ratewall_reloads_total counter\n"
                        "ratewall_reloads_total{result=\"ok\"} %lu\n"
                        "ratewall_reloads_total{result=\"failed\"} %lu\n",
                        atomic_load(&reloads_ok), atomic_load(&reloads_failed));
    evbuffer_add_printf(out,
                        "# HELP ratewall_access_log_dropped_total Access log lines dropped "
                        "because the writer fell behind.\n"
                        "# TYPE ratewall_access_log_dropped_total counter\n"
                        "ratewall_access_log_dropped_total %lu\n",
                        atomic_load(&log_dropped));
}
