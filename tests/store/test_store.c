/*
 * tests/store/test_store.c: the store conformance suite, written once and
 * run with the store as its argument (`test_store memory`). Every case goes
 * through store.h only, with a fake clock, so any store with the same
 * semantics passes the same cases.
 */
#include <pthread.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../limiter/limits.h"
#include "../../limiter/window.h"
#include "../../storage/store.h"

#include "../unit/testutil.h"

static int64_t fake_now;
static int64_t fake_clock(void *arg)
{
    (void)arg;
    return __atomic_load_n(&fake_now, __ATOMIC_SEQ_CST);
}

static int is_redis;

static store_t *open_store(const char *name)
{
    if (strcmp(name, "memory") == 0)
        return store_memory_new(fake_clock, NULL);
    if (strcmp(name, "redis") == 0) {
        const char *port = getenv("RATEWALL_TEST_REDIS_PORT");
        if (!port) {
            fprintf(stderr, "test_store redis: RATEWALL_TEST_REDIS_PORT is not set "
                            "(run it through tests/store/with-redis)\n");
            exit(2);
        }
        is_redis = 1;
        store_redis_opts_t o = {.host = "127.0.0.1", .port = (uint16_t)atoi(port),
                                .timeout_ms = 2000, .key_prefix = "test:",
                                .clock = fake_clock};
        return store_redis_new(&o);
    }
    fprintf(stderr, "test_store: unknown store \"%s\"\n", name);
    exit(2);
}

/* Each thread's event loop, for stores that answer from it. */
static __thread struct event_base *loop;

/* Wait for a callback: a store may answer inline or from the loop. */
static void wait_answer(const int *called)
{
    while (!*called)
        event_base_loop(loop, EVLOOP_ONCE);
}

/* Synchronous wrappers over the async interface. */
typedef struct { int called; store_status_t st; lim_outcome_t o; } answer_t;
static void on_answer(void *arg, store_status_t st, const lim_outcome_t *o)
{
    answer_t *a = arg;
    a->called++;
    a->st = st;
    a->o = *o;
}

static answer_t acquire_lease(store_worker_t *w, lim_check_t *c, size_t n,
                              const char *lease)
{
    answer_t a = {0};
    store_acquire(w, c, n, lease, on_answer, &a);
    wait_answer(&a.called);
    if (a.called != 1 || a.st != STORE_OK) {
        fprintf(stderr, "acquire: callback ran %d times, status %d\n", a.called, a.st);
        exit(1);
    }
    return a;
}

static answer_t acquire(store_worker_t *w, lim_check_t *c, size_t n)
{
    return acquire_lease(w, c, n, "lease-test");
}

static answer_t usage(store_worker_t *w, lim_check_t *c, size_t n)
{
    answer_t a = {0};
    store_usage(w, c, n, on_answer, &a);
    wait_answer(&a.called);
    if (a.called != 1) {
        fprintf(stderr, "usage: callback ran %d times\n", a.called);
        exit(1);
    }
    return a;
}

static lim_rule_t rules[8];

static lim_check_t mk(const char *key, lim_metric_t m, lim_per_t per, int64_t limit,
                      int64_t amount)
{
    lim_check_t c;
    memset(&c, 0, sizeof c);
    lim_rule_t *r = &rules[m];
    r->metric = m;
    r->per = per;
    c.rule = r;
    c.per = per;
    c.limit = limit;
    c.amount = amount;
    c.window_ms = lim_per_window_ms(per);
    c.kind = m == LIM_CONCURRENT ? LIM_CK_GAUGE : c.window_ms ? LIM_CK_ROLLING : LIM_CK_CALENDAR;
    snprintf(c.key, sizeof c.key, "%s", key);
    return c;
}

#define MIN 60000LL
#define DAY 86400000LL

static void case_all_or_nothing(store_worker_t *w)
{
    fake_now = 1000 * MIN;
    lim_check_t c[2] = {mk("{a1}:k:x:m", LIM_REQUESTS, LIM_PER_MINUTE, 10, 1),
                        mk("{a1}:a:d", LIM_REQUESTS, LIM_PER_DAY, 2, 1)};
    CHECK(acquire(w, c, 2).o.admitted, "first");
    CHECK(acquire(w, c, 2).o.admitted, "second");
    answer_t a = acquire(w, c, 2);
    CHECK(!a.o.admitted && a.o.res[0].ok && !a.o.res[1].ok, "third refused by the day only");
    /* Nothing charged on the refusal: the minute still holds 2. */
    a = usage(w, c, 2);
    CHECK(a.o.res[0].used == 2, "minute used %lld after a refusal", (long long)a.o.res[0].used);
    /* Refusals do not count either. */
    for (int i = 0; i < 20; i++)
        acquire(w, c, 2);
    CHECK(usage(w, c, 2).o.res[0].used == 2, "20 refusals charged nothing");
}

static void case_minute_burst_edges(store_worker_t *w)
{
    /* 3 at the end of one minute, then a burst at the start of the next:
     * never 6 in 60 s. */
    int64_t t0 = 2000 * MIN;
    lim_check_t c = mk("{a2}:k:x:m", LIM_REQUESTS, LIM_PER_MINUTE, 3, 1);
    fake_now = t0 + 59000;
    for (int i = 0; i < 3; i++)
        CHECK(acquire(w, &c, 1).o.admitted, "end-of-minute %d", i);
    fake_now = t0 + 60001;
    answer_t a = acquire(w, &c, 1);
    CHECK(!a.o.admitted, "start of next minute refused");
    /* Retry-After is tight: refused 1 ms before, admitted at it. */
    int64_t at = a.o.res[0].retry_ms;
    CHECK(at > fake_now && at <= t0 + 59000 + MIN + 1000, "retry at +%lld",
          (long long)(at - t0));
    fake_now = at - 1;
    CHECK(!acquire(w, &c, 1).o.admitted, "refused 1 ms before retry_ms");
    fake_now = at;
    CHECK(acquire(w, &c, 1).o.admitted, "admitted at retry_ms");
}

static void case_calendar(store_worker_t *w)
{
    int64_t day0 = lim_days_from_civil(2028, 2, 29) * DAY;
    lim_check_t d = mk("{a3}:k:x:d", LIM_REQUESTS, LIM_PER_DAY, 2, 1);
    lim_check_t m = mk("{a3}:k:x:mo", LIM_UNITS, LIM_PER_MONTH, 5, 2);
    fake_now = day0 + DAY - 2000;
    CHECK(acquire(w, &d, 1).o.admitted && acquire(w, &d, 1).o.admitted, "two today");
    answer_t a = acquire(w, &d, 1);
    CHECK(!a.o.admitted && a.o.res[0].retry_ms == day0 + DAY, "day resets at 00:00 UTC");
    fake_now = day0 + DAY;
    CHECK(acquire(w, &d, 1).o.admitted, "new day");
    /* Month: 2 + 2 fit in 5, a third 2 does not; March 1st resets. */
    fake_now = day0 + 1000;
    CHECK(acquire(w, &m, 1).o.admitted && acquire(w, &m, 1).o.admitted, "units");
    a = acquire(w, &m, 1);
    CHECK(!a.o.admitted && a.o.res[0].used == 4 &&
              a.o.res[0].retry_ms == lim_days_from_civil(2028, 3, 1) * DAY,
          "month of a leap February ends on the 29th");
    fake_now = lim_days_from_civil(2028, 3, 1) * DAY;
    CHECK(acquire(w, &m, 1).o.admitted, "new month");
    /* An amount larger than the limit never passes. */
    lim_check_t big = mk("{a3}:k:x:mo", LIM_UNITS, LIM_PER_MONTH, 5, 6);
    a = acquire(w, &big, 1);
    CHECK(!a.o.admitted && a.o.res[0].retry_ms == LIM_NEVER, "too big: never");
}

static void case_gauge(store_worker_t *w)
{
    /* Leases are named by request: releasing one frees that one. */
    lim_check_t g = mk("{a4}:a:c", LIM_CONCURRENT, LIM_PER_NONE, 2, 1);
    g.lease_ttl_ms = 30000;
    CHECK(acquire_lease(w, &g, 1, "L1").o.admitted && acquire_lease(w, &g, 1, "L2").o.admitted,
          "two leases");
    answer_t a = acquire_lease(w, &g, 1, "L3");
    CHECK(!a.o.admitted && a.o.res[0].used == 2, "third waits");
    store_release(w, &g, 1, "L1");
    CHECK(acquire_lease(w, &g, 1, "L4").o.admitted, "a released slot is usable");
    store_release(w, &g, 1, "L2");
    store_release(w, &g, 1, "L4");
    store_release(w, &g, 1, "L4"); /* once too often: never below zero */
    CHECK(usage(w, &g, 1).o.res[0].used == 0, "gauge floor at zero");
    /* A lease of a gateway that died expires on its own (shared stores). */
    if (is_redis) {
        CHECK(acquire_lease(w, &g, 1, "L5").o.admitted, "lease before expiry");
        fake_now += 30001;
        CHECK(usage(w, &g, 1).o.res[0].used == 0, "expired lease not counted");
    }
}

typedef struct { int called, found; } done_t;
static void on_done(void *arg, int found)
{
    done_t *d = arg;
    d->called++;
    d->found = found;
}

static int job_done(store_worker_t *w, const char *account, const char *job)
{
    done_t d = {0, 99};
    store_job_done(w, account, job, on_done, &d);
    wait_answer(&d.called);
    if (d.called != 1) {
        fprintf(stderr, "job_done: callback ran %d times\n", d.called);
        exit(1);
    }
    return d.found;
}

static int64_t held(store_worker_t *w, lim_check_t *g)
{
    return usage(w, g, 1).o.res[0].used;
}

/* Jobs belong to an account; every create holds its own lease. */
static void case_jobs(store_worker_t *w)
{
    lim_check_t a = mk("{ja}:a:c", LIM_CONCURRENT, LIM_PER_NONE, 5, 1);
    lim_check_t b = mk("{jb}:a:c", LIM_CONCURRENT, LIM_PER_NONE, 5, 1);
    a.lease_ttl_ms = b.lease_ttl_ms = 60000;
    /* A gets job J twice (a backend repeating an id), B gets J once. */
    CHECK(acquire_lease(w, &a, 1, "R1").o.admitted, "A's first create");
    store_job_hold(w, &a, 1, "R1", "ja", "J", 60000);
    CHECK(acquire_lease(w, &a, 1, "R2").o.admitted, "A's second create");
    store_job_hold(w, &a, 1, "R2", "ja", "J", 60000);
    CHECK(acquire_lease(w, &b, 1, "R3").o.admitted, "B's create");
    store_job_hold(w, &b, 1, "R3", "jb", "J", 60000);
    CHECK(held(w, &a) == 2, "both of A's leases held, not one overwritten: %lld",
          (long long)held(w, &a));
    CHECK(held(w, &b) == 1, "B's lease held");
    CHECK(job_done(w, NULL, "J") == -2, "two accounts hold J: no account is a guess");
    CHECK(held(w, &a) == 2 && held(w, &b) == 1, "an ambiguous done frees nothing");
    CHECK(job_done(w, "jb", "J") == 1, "B's done");
    CHECK(held(w, &b) == 0 && held(w, &a) == 2, "B's done frees B's lease only");
    CHECK(job_done(w, "jc", "J") == 0, "an account without J finds nothing");
    CHECK(job_done(w, NULL, "J") == 1, "now A alone holds J");
    CHECK(held(w, &a) == 0, "one done frees both of A's leases of J");
    CHECK(job_done(w, "ja", "J") == 0 && job_done(w, NULL, "J") == 0, "J is gone");
    /* An id another account never held. */
    CHECK(acquire_lease(w, &a, 1, "R4").o.admitted, "A's create of K");
    store_job_hold(w, &a, 1, "R4", "ja", "K", 60000);
    CHECK(job_done(w, "jb", "K") == 0 && held(w, &a) == 1, "B cannot end A's job");
    CHECK(job_done(w, "ja", "K") == 1 && held(w, &a) == 0, "A ends it");
    /* A job past its ttl gives its lease back. */
    CHECK(acquire_lease(w, &a, 1, "R5").o.admitted, "A's create of E");
    store_job_hold(w, &a, 1, "R5", "ja", "E", 1000);
    CHECK(held(w, &a) == 1, "E held");
    fake_now += 2500;
    CHECK(held(w, &a) == 0, "its lease is free after the ttl");
    CHECK(job_done(w, "ja", "E") == 0 && job_done(w, NULL, "E") == 0,
          "an expired job is not found");
}

/* Random traffic: every admitted event checked against the exact rolling
 * window (never over), every refusal against the window plus one bucket
 * (refuses early by at most W/60). */
static void case_property(store_worker_t *w, lim_per_t per)
{
    const int64_t W = lim_per_window_ms(per);
    const int64_t limit = 20;
    enum { N = 4000 };
    static int64_t t[N], amt[N];
    size_t n = 0;
    char key[64];
    snprintf(key, sizeof key, "{p%d}:k:x:r", (int)per);
    int64_t now = 5000 * W + 123;
    unsigned seed = 12345u + (unsigned)per;
    for (int i = 0; i < N; i++) {
        now += rand_r(&seed) % (W / 8 + 1);
        int64_t amount = 1 + rand_r(&seed) % 3;
        fake_now = now;
        lim_check_t c = mk(key, LIM_UNITS, per, limit, amount);
        answer_t a = acquire(w, &c, 1);
        int64_t in_window = 0, in_wider = 0;
        for (size_t k = 0; k < n; k++) {
            if (t[k] > now - W)
                in_window += amt[k];
            if (t[k] >= now - W - (W + 59) / 60)
                in_wider += amt[k];
        }
        if (a.o.admitted) {
            CHECK(in_window + amount <= limit, "over at %lld: %lld + %lld > %lld",
                  (long long)now, (long long)in_window, (long long)amount, (long long)limit);
            t[n] = now;
            amt[n] = amount;
            n++;
        } else {
            CHECK(in_wider + amount > limit, "refused too early at %lld (%lld + %lld)",
                  (long long)now, (long long)in_wider, (long long)amount);
        }
        if (failures > 20)
            return;
    }
    CHECK(n > N / 4, "some admitted (%zu)", n);
}

static void case_eviction(store_t *s, store_worker_t *w)
{
    size_t before = store_memory_count(s);
    fake_now = 9000 * MIN;
    for (int i = 0; i < 5000; i++) {
        char k[64];
        snprintf(k, sizeof k, "{ev%d}:k:x:m", i);
        lim_check_t c = mk(k, LIM_REQUESTS, LIM_PER_MINUTE, 5, 1);
        acquire(w, &c, 1);
    }
    size_t peak = store_memory_count(s);
    CHECK(peak >= 5000, "counters created: %zu", peak);
    /* Two minutes later, new traffic sweeps the idle ones away. */
    fake_now += 3 * MIN;
    for (int i = 0; i < 20000; i++) {
        char k[64];
        snprintf(k, sizeof k, "{new%d}:k:x:m", i % 50);
        lim_check_t c = mk(k, LIM_REQUESTS, LIM_PER_MINUTE, 1000000, 1);
        acquire(w, &c, 1);
    }
    size_t after = store_memory_count(s);
    CHECK(after < before + 200, "idle counters evicted: %zu left of %zu", after, peak);
}

/* Threads racing on one account counter: exactly the limit admitted. */
typedef struct { store_t *s; int admitted; } race_t;
static void *racer(void *arg)
{
    race_t *r = arg;
    loop = event_base_new();
    store_worker_t *w = store_attach(r->s, loop);
    for (int i = 0; i < 5000; i++) {
        lim_check_t c[2] = {mk("{race}:a:m", LIM_REQUESTS, LIM_PER_HOUR, 7000, 1),
                            mk("{race}:a:c", LIM_CONCURRENT, LIM_PER_NONE, 1000000, 1)};
        answer_t a = acquire(w, c, 2);
        if (a.o.admitted) {
            r->admitted++;
            store_release(w, c, 2, "lease-test");
        }
    }
    /* Releases are fire and forget; a call answered after them (same
     * connection, in order) makes sure they were applied. */
    lim_check_t g = mk("{race}:a:c", LIM_CONCURRENT, LIM_PER_NONE, 10, 1);
    usage(w, &g, 1);
    store_detach(w);
    event_base_free(loop);
    return NULL;
}

static void case_threads(store_t *s)
{
    fake_now = 20000 * MIN;
    pthread_t th[4];
    race_t r[4];
    for (int i = 0; i < 4; i++) {
        r[i].s = s;
        r[i].admitted = 0;
        pthread_create(&th[i], NULL, racer, &r[i]);
    }
    int total = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        total += r[i].admitted;
    }
    CHECK(total == 7000, "4 threads admitted %d, limit 7000", total);
    store_worker_t *w = store_attach(s, loop);
    lim_check_t g = mk("{race}:a:c", LIM_CONCURRENT, LIM_PER_NONE, 10, 1);
    CHECK(usage(w, &g, 1).o.res[0].used == 0, "every lease released");
    store_detach(w);
}

/* Amounts at the cap stay exact in every counter (Redis keeps them as Lua
 * numbers: below 2^53), and an adjust adds "debt" whatever the limits. */
static void case_large_amounts(store_worker_t *w)
{
    fake_now = 30000 * MIN;
    const int64_t M = LIM_PRICE_MAX;
    lim_check_t c[2] = {mk("{big}:a:units:m", LIM_UNITS, LIM_PER_MINUTE, M, M),
                        mk("{big}:a:spend:d", LIM_SPEND, LIM_PER_DAY, M, M)};
    CHECK(acquire(w, c, 2).o.admitted, "an amount at the cap fits a limit at the cap");
    int64_t d[2] = {M, M};
    store_adjust(w, c, 2, d, fake_now);
    store_adjust(w, c, 2, d, fake_now);
    answer_t a = usage(w, c, 2);
    CHECK(a.o.res[0].used == 3 * M && a.o.res[1].used == 3 * M,
          "3 x cap exact: units %lld, spend %lld", (long long)a.o.res[0].used,
          (long long)a.o.res[1].used);
    int64_t back[2] = {-M, -M};
    store_adjust(w, c, 2, back, fake_now);
    a = usage(w, c, 2);
    CHECK(a.o.res[0].used == 2 * M && a.o.res[1].used == 2 * M,
          "after a give-back: units %lld, spend %lld", (long long)a.o.res[0].used,
          (long long)a.o.res[1].used);
    if (is_redis) {
        /* Past the cap: clamped by the store to the cap on both counters,
         * never applied to one and not the other. */
        int64_t huge[2] = {100000000000000000LL, 100000000000000000LL};
        store_adjust(w, c, 2, huge, fake_now);
        a = usage(w, c, 2);
        CHECK(a.o.res[0].used == 3 * M && a.o.res[1].used == 3 * M,
              "a delta of 1e17: units %lld, spend %lld", (long long)a.o.res[0].used,
              (long long)a.o.res[1].used);
    }
}

/* Shadow checks never refuse and are charged with the rest, past their
 * own limit; an enforcing refusal charges them nothing. */
static void case_shadow(store_worker_t *w)
{
    fake_now = 40000 * MIN;
    lim_check_t c[4] = {mk("{sh}:k:x:m", LIM_REQUESTS, LIM_PER_MINUTE, 3, 1),
                        mk("{sh}:k:x:m:shadow", LIM_UNITS, LIM_PER_MINUTE, 1, 1),
                        mk("{sh}:k:x:d:shadow", LIM_SPEND, LIM_PER_DAY, 1, 1),
                        mk("{sh}:k:x:c:shadow", LIM_CONCURRENT, LIM_PER_NONE, 1, 1)};
    c[1].shadow = c[2].shadow = c[3].shadow = 1;
    answer_t a = acquire_lease(w, c, 4, "sh-1");
    CHECK(a.o.admitted && a.o.res[1].ok && a.o.res[2].ok && a.o.res[3].ok, "first: all fit");
    a = acquire_lease(w, c, 4, "sh-2");
    CHECK(a.o.admitted, "second admitted though every shadow check is full");
    CHECK(!a.o.res[1].ok && !a.o.res[2].ok && !a.o.res[3].ok,
          "the full shadow checks say they would have refused");
    a = acquire_lease(w, c, 4, "sh-3");
    CHECK(a.o.admitted && a.o.res[0].ok, "third admitted");
    a = usage(w, c, 4);
    CHECK(a.o.res[0].used == 3 && a.o.res[1].used == 3 && a.o.res[2].used == 3 &&
              a.o.res[3].used == 3,
          "all charged 3 times: %lld %lld %lld %lld", (long long)a.o.res[0].used,
          (long long)a.o.res[1].used, (long long)a.o.res[2].used, (long long)a.o.res[3].used);
    a = acquire_lease(w, c, 4, "sh-4");
    CHECK(!a.o.admitted && !a.o.res[0].ok, "the enforcing check refuses the fourth");
    a = usage(w, c, 4);
    CHECK(a.o.res[1].used == 3 && a.o.res[2].used == 3 && a.o.res[3].used == 3,
          "the refusal charged no shadow check");
    store_release(w, c, 4, "sh-1");
    store_release(w, c, 4, "sh-2");
    store_release(w, c, 4, "sh-3");
    store_flush(w);
    CHECK(usage(w, c, 4).o.res[3].used == 0, "shadow leases released");
}

int main(int argc, char **argv)
{
    const char *name = argc > 1 ? argv[1] : "memory";
    store_t *s = open_store(name);
    loop = event_base_new();
    store_worker_t *w = store_attach(s, loop);
    case_all_or_nothing(w);
    case_minute_burst_edges(w);
    case_calendar(w);
    case_gauge(w);
    case_jobs(w);
    case_property(w, LIM_PER_SECOND);
    case_property(w, LIM_PER_MINUTE);
    case_property(w, LIM_PER_HOUR);
    case_large_amounts(w);
    case_shadow(w);
    if (!is_redis)
        case_eviction(s, w); /* Redis: keys carry their own expiry */
    store_detach(w);
    case_threads(s);
    store_destroy(s);
    event_base_free(loop);
    if (failures) {
        fprintf(stderr, "test_store %s: %d check(s) failed\n", name, failures);
        return 1;
    }
    printf("test_store %s: all checks passed\n", name);
    return 0;
}
