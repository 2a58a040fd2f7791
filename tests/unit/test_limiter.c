/*
 * tests/unit/test_limiter.c: the pure limiter with a fake clock: bucket
 * arithmetic, calendar periods (month lengths, leap years), policy merge,
 * checks and the report (codes, Retry-After, headers).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../limiter/limits.h"
#include "../../limiter/window.h"

#include "testutil.h"

#define DAY 86400000LL

/* Unix ms of a UTC civil time. */
static int64_t utc(int64_t y, unsigned mo, unsigned d, int h, int mi, int s)
{
    return lim_days_from_civil(y, mo, d) * DAY + ((h * 60 + mi) * 60 + s) * 1000LL;
}

static void test_civil(void)
{
    CHECK(lim_days_from_civil(1970, 1, 1) == 0, "epoch");
    CHECK(lim_days_from_civil(2000, 3, 1) == 11017, "2000-03-01");
    /* Round trip over 400 years, every day. */
    for (int64_t z = lim_days_from_civil(1900, 1, 1); z < lim_days_from_civil(2300, 1, 1);
         z++) {
        int64_t y;
        unsigned m, d;
        lim_civil_from_days(z, &y, &m, &d);
        if (lim_days_from_civil(y, m, d) != z) {
            CHECK(0, "round trip of day %lld", (long long)z);
            break;
        }
    }
}

static void test_calendar(void)
{
    /* Day: resets at 00:00 UTC. */
    int64_t t = utc(2026, 11, 24, 23, 59, 59) + 999;
    CHECK(lim_period_end(LIM_PER_DAY, t) == utc(2026, 11, 25, 0, 0, 0), "day end");
    CHECK(lim_period_id(LIM_PER_DAY, t) != lim_period_id(LIM_PER_DAY, t + 1),
          "new day at midnight");
    CHECK(lim_period_start(LIM_PER_DAY, t) == utc(2026, 11, 24, 0, 0, 0), "day start");

    /* Month ends of every length. */
    struct { int64_t y; unsigned m, last; } months[] = {
        {2026, 1, 31}, {2026, 2, 28}, {2024, 2, 29}, {2000, 2, 29}, {2100, 2, 28},
        {2026, 4, 30}, {2026, 12, 31}, {1900, 2, 28}, {2028, 2, 29},
    };
    for (size_t i = 0; i < sizeof months / sizeof *months; i++) {
        int64_t y = months[i].y;
        unsigned m = months[i].m, last = months[i].last;
        int64_t in = utc(y, m, last, 23, 59, 59) + 999;
        int64_t ny = m == 12 ? y + 1 : y;
        unsigned nm = m == 12 ? 1 : m + 1;
        CHECK(lim_period_end(LIM_PER_MONTH, in) == utc(ny, nm, 1, 0, 0, 0),
              "month end %lld-%u", (long long)y, m);
        CHECK(lim_period_start(LIM_PER_MONTH, in) == utc(y, m, 1, 0, 0, 0),
              "month start %lld-%u", (long long)y, m);
        CHECK(lim_period_id(LIM_PER_MONTH, in) + 1 == lim_period_id(LIM_PER_MONTH, in + 1),
              "month id steps at %lld-%u", (long long)y, m);
        /* The day after `last` is in the next month, so `last` is right. */
        CHECK(lim_period_id(LIM_PER_MONTH, utc(y, m, 1, 0, 0, 0)) ==
                  lim_period_id(LIM_PER_MONTH, in),
              "whole month %lld-%u", (long long)y, m);
    }
}

static void test_buckets(void)
{
    /* Second windows have buckets of 16.67 ms: starts are ceil(j*1000/60). */
    CHECK(lim_bucket_start(1, 1000) == 17, "start(1) = 17, got %lld",
          (long long)lim_bucket_start(1, 1000));
    CHECK(lim_bucket_start(3, 1000) == 50, "start(3)");
    for (int64_t t = 0; t < 5000; t++) {
        int64_t j = lim_bucket_of(t, 1000);
        if (!(lim_bucket_start(j, 1000) <= t && t < lim_bucket_start(j + 1, 1000))) {
            CHECK(0, "t=%lld not in its bucket %lld", (long long)t, (long long)j);
            break;
        }
    }
    CHECK(lim_bucket_of(59999, 60000) == 59 && lim_bucket_of(60000, 60000) == 60,
          "minute buckets are seconds");
}

static void test_rolling(void)
{
    const int64_t W = 60000;
    lim_rolling_t r;
    int64_t t0 = 1000000 * W; /* a minute boundary */
    lim_rolling_init(&r, W, t0);
    /* Burst of 3 at the end of one minute. */
    lim_rolling_advance(&r, W, t0 + 59900);
    lim_rolling_add(&r, 3);
    CHECK(r.sum == 3, "sum");
    /* At the start of the next minute it is all still counted. */
    lim_rolling_advance(&r, W, t0 + 60100);
    CHECK(r.sum == 3, "burst still counted at the next minute: %lld", (long long)r.sum);
    /* It frees when bucket 59 leaves: start(59 + 61) = 120 s. */
    int64_t at = lim_rolling_retry_at(&r, W, 3, 1, t0 + 60100);
    CHECK(at == t0 + 120000, "retry at %lld", (long long)(at - t0));
    CHECK(lim_rolling_reset_at(&r, W, t0 + 60100) == t0 + 120000, "reset");
    lim_rolling_advance(&r, W, t0 + 119999);
    CHECK(r.sum == 3, "still counted 1 ms before");
    lim_rolling_advance(&r, W, t0 + 120000);
    CHECK(r.sum == 0, "gone at retry time");
    CHECK(lim_rolling_idle(&r, W, t0 + 120000), "idle");
    /* Amount above the limit never fits. */
    CHECK(lim_rolling_retry_at(&r, W, 3, 4, t0) == LIM_NEVER, "never");
    /* A long silence clears everything. */
    lim_rolling_add(&r, 2);
    lim_rolling_advance(&r, W, t0 + 10 * W);
    CHECK(r.sum == 0, "cleared after silence");
    /* Time going back does not move the window. */
    lim_rolling_add(&r, 1);
    lim_rolling_advance(&r, W, t0);
    CHECK(r.sum == 1, "clock going back keeps counts");
}


static void test_policy(void)
{
    uint32_t ep0[] = {0}, ep1[] = {1};
    lim_rule_t tier[] = {
        test_rule(LIM_REQUESTS, LIM_PER_MINUTE, LIM_SCOPE_KEY, 3, "requests:minute:key:a", ep0, 1, 0),
        test_rule(LIM_REQUESTS, LIM_PER_DAY, LIM_SCOPE_KEY, 100, "requests:day:key:a", ep0, 1, 0),
        test_rule(LIM_REQUESTS, LIM_PER_MINUTE, LIM_SCOPE_KEY, 5, "requests:minute:key:b", ep1, 1, 0),
        test_rule(LIM_CONCURRENT, LIM_PER_NONE, LIM_SCOPE_ACCOUNT, 5, "concurrent::account:*", NULL, 0, 0),
    };
    lim_rule_t acct[] = {
        /* replaces the tier's a-per-minute */
        test_rule(LIM_REQUESTS, LIM_PER_MINUTE, LIM_SCOPE_KEY, 10, "requests:minute:key:a", ep0, 1, 0),
        /* adds an account-wide spend cap */
        test_rule(LIM_SPEND, LIM_PER_DAY, LIM_SCOPE_ACCOUNT, 5000000, "spend:day:account:*", NULL, 0, 0),
    };
    lim_rule_t key[] = {
        /* removes the daily limit */
        test_rule(LIM_REQUESTS, LIM_PER_DAY, LIM_SCOPE_KEY, 0, "requests:day:key:a", ep0, 1, 1),
        /* same metric and per but account scope: a different limit, added */
        test_rule(LIM_REQUESTS, LIM_PER_MINUTE, LIM_SCOPE_ACCOUNT, 50, "requests:minute:account:a", ep0, 1, 0),
    };
    const lim_rule_t *levels[] = {tier, acct, key};
    size_t ns[] = {4, 2, 2};
    lim_policy_t p;
    CHECK(lim_policy_resolve(&p, levels, ns, 3, 2) == 0, "resolve");
    CHECK(p.n_rules == 5, "5 rules after merge, got %zu", p.n_rules);
    CHECK(p.rules[0]->limit == 10, "account replaced the tier rule in place");
    int has_day = 0;
    for (size_t i = 0; i < p.n_rules; i++)
        has_day |= p.rules[i]->per == LIM_PER_DAY && p.rules[i]->metric == LIM_REQUESTS;
    CHECK(!has_day, "null removed the daily limit");

    lim_check_t c[LIM_MAX_CHECKS];
    size_t n = lim_build_checks(&p, 0, "acme", "k1", 4, 6000, c, LIM_MAX_CHECKS);
    /* endpoint 0: minute(10), concurrent, spend, account minute(50) */
    CHECK(n == 4, "4 checks on endpoint 0, got %zu", n);
    for (size_t i = 0; i < n; i++) {
        if (c[i].rule->metric == LIM_SPEND)
            CHECK(c[i].amount == 6000 && c[i].kind == LIM_CK_CALENDAR, "spend amount");
        if (c[i].rule->metric == LIM_CONCURRENT)
            CHECK(c[i].kind == LIM_CK_GAUGE && strcmp(c[i].key, "{acme}:a:concurrent::account:*") == 0,
                  "gauge key %s", c[i].key);
        if (c[i].rule->metric == LIM_REQUESTS && c[i].rule->scope == LIM_SCOPE_KEY)
            CHECK(strcmp(c[i].key, "{acme}:k:k1:requests:minute:key:a") == 0 &&
                      c[i].window_ms == 60000,
                  "key-scope key %s", c[i].key);
    }
    n = lim_build_checks(&p, 1, "acme", "k1", 1, 0, c, LIM_MAX_CHECKS);
    CHECK(n == 3, "3 checks on endpoint 1, got %zu", n);
    /* A recycled buffer: every field is written, so no lease ttl of an
     * earlier request (or garbage) reaches the store. */
    memset(c, 0xff, sizeof c);
    n = lim_build_rule_checks(&p, 0, "acme", "k1", c, LIM_MAX_CHECKS);
    CHECK(n == 5, "usage sees every rule");
    for (size_t i = 0; i < n; i++)
        CHECK(c[i].lease_ttl_ms == 0 && c[i].shadow == 0, "check %zu: ttl %lld, shadow %d", i,
              (long long)c[i].lease_ttl_ms, c[i].shadow);
    n = lim_build_rule_checks(&p, 3, "acme", "k1", c, 1);
    CHECK(n == 1 && c[0].rule == p.rules[3], "usage in batches");
    CHECK(lim_build_rule_checks(&p, 5, "acme", "k1", c, 4) == 0, "past the end");
    lim_policy_free(&p);
}

static void test_report(void)
{
    lim_rule_t minute = test_rule(LIM_REQUESTS, LIM_PER_MINUTE, LIM_SCOPE_KEY, 3, "m", NULL, 0, 0);
    lim_rule_t day = test_rule(LIM_REQUESTS, LIM_PER_DAY, LIM_SCOPE_KEY, 100, "d", NULL, 0, 0);
    lim_rule_t spend = test_rule(LIM_SPEND, LIM_PER_MONTH, LIM_SCOPE_ACCOUNT, 1000, "s", NULL, 0, 0);
    lim_rule_t conc = test_rule(LIM_CONCURRENT, LIM_PER_NONE, LIM_SCOPE_ACCOUNT, 5, "c", NULL, 0, 0);
    lim_check_t c[4];
    memset(c, 0, sizeof c);
    const lim_rule_t *rules[] = {&minute, &day, &spend, &conc};
    for (int i = 0; i < 4; i++) {
        c[i].rule = rules[i];
        c[i].per = rules[i]->per;
        c[i].limit = rules[i]->limit;
        c[i].amount = 1;
        c[i].window_ms = lim_per_window_ms(rules[i]->per);
        c[i].kind = i == 3 ? LIM_CK_GAUGE : c[i].window_ms ? LIM_CK_ROLLING : LIM_CK_CALENDAR;
    }
    lim_outcome_t o;
    memset(&o, 0, sizeof o);
    o.now_ms = 1000000;
    o.admitted = 1;
    for (int i = 0; i < 4; i++)
        o.res[i].ok = 1;
    o.res[0].used = 1;
    o.res[0].reset_ms = 1000000 + 59500;
    o.res[1].used = 10;
    lim_report_t rep;
    lim_report(c, 4, &o, &rep);
    CHECK(rep.admitted && rep.has_main && rep.main_limit == 3 && rep.main_remaining == 1,
          "main headers after charge: limit %lld remaining %lld", (long long)rep.main_limit,
          (long long)rep.main_remaining);
    CHECK(rep.main_reset_s == 1060 && rep.has_daily && rep.daily_remaining == 89,
          "reset %lld daily %lld", (long long)rep.main_reset_s, (long long)rep.daily_remaining);

    /* Minute and day both full: the day frees last, so it is the one. */
    o.admitted = 0;
    o.res[0].ok = 0;
    o.res[0].used = 3;
    o.res[0].retry_ms = 1000000 + 20001;
    o.res[1].ok = 0;
    o.res[1].used = 100;
    o.res[1].retry_ms = o.res[1].reset_ms = 86400000;
    lim_report(c, 4, &o, &rep);
    CHECK(rep.refused == 1 && strcmp(rep.code, "DAILY_LIMIT_EXCEEDED") == 0 &&
              strcmp(rep.type_header, "daily") == 0 && !rep.should_retry,
          "daily refusal, got %s", rep.code);
    CHECK(rep.retry_after_s == 85400 && rep.main_remaining == 0, "retry %lld",
          (long long)rep.retry_after_s);

    /* Only the minute: retry after 20.001 s -> 21 s, 20001 ms. */
    o.res[1].ok = 1;
    o.res[1].used = 10;
    lim_report(c, 4, &o, &rep);
    CHECK(rep.refused == 0 && strcmp(rep.code, "RATE_LIMIT_EXCEEDED") == 0 &&
              strcmp(rep.type_header, "minute") == 0 && rep.should_retry,
          "minute refusal");
    CHECK(rep.retry_after_s == 21 && rep.retry_after_ms == 20001, "retry %lld / %lld",
          (long long)rep.retry_after_s, (long long)rep.retry_after_ms);

    /* A request larger than the limit: never, no retry. */
    o.res[0].retry_ms = LIM_NEVER;
    lim_report(c, 4, &o, &rep);
    CHECK(!rep.should_retry && rep.never && rep.retry_after_s == 0 && rep.retry_after_ms == 0,
          "never fits: no retry, no moment named");

    /* Spend and concurrency codes. */
    o.res[0].ok = 1;
    o.res[2].ok = 0;
    o.res[2].retry_ms = 5000000;
    lim_report(c, 4, &o, &rep);
    CHECK(strcmp(rep.code, "SPEND_LIMIT_EXCEEDED") == 0 &&
              strcmp(rep.type_header, "monthly") == 0 && !rep.should_retry,
          "spend");
    o.res[2].ok = 1;
    o.res[3].ok = 0;
    o.res[3].used = 5;
    o.res[3].retry_ms = o.now_ms + 1000;
    lim_report(c, 4, &o, &rep);
    CHECK(strcmp(rep.code, "CONCURRENT_LIMIT_EXCEEDED") == 0 &&
              strcmp(rep.type_header, "concurrent") == 0 && rep.ref_used == 5 &&
              rep.retry_after_s == 1,
          "concurrent");

    /* A shadow check never refuses and never describes the headers: a
     * full shadow minute (limit 3, used 3) beside an enforcing day that
     * refuses leaves the day as the refusal and no main headers. */
    c[0].shadow = 1;
    o.res[3].ok = 1;
    o.res[0].ok = 0;
    o.res[0].used = 3;
    o.res[0].retry_ms = 1000000 + 90000000; /* frees later than the day */
    o.res[1].ok = 0;
    o.res[1].retry_ms = 86400000;
    lim_report(c, 4, &o, &rep);
    CHECK(rep.refused == 1 && !rep.has_main, "shadow minute: refused %d, has_main %d",
          rep.refused, rep.has_main);
    int64_t rem[4] = {0, 90, 0, 0};
    CHECK(lim_report_pick_metric(c, 4, LIM_REQUESTS, rem) == -1,
          "no per-metric header for a shadow limit");
}

int main(void)
{
    test_civil();
    test_calendar();
    test_buckets();
    test_rolling();
    test_policy();
    test_report();
    if (failures) {
        fprintf(stderr, "test_limiter: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_limiter: all checks passed\n");
    return 0;
}
