/*
 * tests/unit/test_deny.c: the deny cache never changes a decision. The same
 * random traffic (several keys, endpoints, per-second/minute/day request
 * limits, a units limit, account scope) goes to two memory stores with one
 * fake clock: A decides every request in the store; B answers from the deny
 * cache when it holds a refusal and asks its store otherwise. Every decision
 * must be the same, and B must have asked its store less. Units and spend
 * (per minute, day and month; amounts that vary, some larger than a limit
 * alone) are cached too, and a counter that reconcile can give back to is
 * never kept.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../limiter/deny.h"
#include "../../limiter/limits.h"
#include "../../limiter/window.h"
#include "../../storage/store.h"
#include "testutil.h"

static int64_t fake_now;
static int64_t clock_fn(void *arg)
{
    (void)arg;
    return fake_now;
}

typedef struct { int called; lim_outcome_t o; } ans_t;
static void on_ans(void *arg, store_status_t st, const lim_outcome_t *o)
{
    ans_t *a = arg;
    a->called = st == STORE_OK;
    a->o = *o;
}

static lim_rule_t mkrule(lim_metric_t m, lim_per_t per, lim_scope_t s, int64_t limit,
                         const char *ident, uint32_t *eps, uint32_t n_eps)
{
    return test_rule(m, per, s, limit, ident, eps, n_eps, 0);
}

int main(void)
{
    uint32_t ep0[] = {0}, ep1[] = {1};
    lim_rule_t rules[] = {
        mkrule(LIM_REQUESTS, LIM_PER_SECOND, LIM_SCOPE_KEY, 3, "r:s:k:0", ep0, 1),
        mkrule(LIM_REQUESTS, LIM_PER_MINUTE, LIM_SCOPE_KEY, 20, "r:m:k:*", NULL, 0),
        mkrule(LIM_REQUESTS, LIM_PER_MINUTE, LIM_SCOPE_ACCOUNT, 45, "r:m:a:*", NULL, 0),
        mkrule(LIM_REQUESTS, LIM_PER_DAY, LIM_SCOPE_KEY, 400, "r:d:k:1", ep1, 1),
        mkrule(LIM_UNITS, LIM_PER_MINUTE, LIM_SCOPE_KEY, 30, "u:m:k:1", ep1, 1),
        mkrule(LIM_UNITS, LIM_PER_DAY, LIM_SCOPE_KEY, 700, "u:d:k:1", ep1, 1),
        mkrule(LIM_SPEND, LIM_PER_MONTH, LIM_SCOPE_ACCOUNT, 900000000, "s:mo:a:*", NULL, 0),
        mkrule(LIM_SPEND, LIM_PER_MINUTE, LIM_SCOPE_KEY, 9000000, "s:m:k:0", ep0, 1),
    };
    const lim_rule_t *levels[] = {rules};
    size_t nr[] = {sizeof rules / sizeof *rules};
    lim_policy_t p;
    if (lim_policy_resolve(&p, levels, nr, 1, 2) != 0)
        return 1;

    store_t *sa = store_memory_new(clock_fn, NULL), *sb = store_memory_new(clock_fn, NULL);
    store_worker_t *wa = store_attach(sa, NULL), *wb = store_attach(sb, NULL);
    lim_deny_t deny;
    lim_deny_init(&deny, 64);

    const char *keys[] = {"k0", "k1", "k2", "k3"};
    unsigned seed = 4242;
    fake_now = lim_days_from_civil(2026, 11, 24) * 86400000LL - 3600000; /* crosses midnight */
    long asked_b = 0, steps = 60000, admitted = 0, mismatches = 0, other_hits = 0,
         refundable_kept = 0, never_mismatches = 0;
    for (long i = 0; i < steps; i++) {
        fake_now += rand_r(&seed) % 250;
        unsigned k = rand_r(&seed) % 4, ep = rand_r(&seed) % 2;
        /* 0..6 units, sometimes more than the units limit alone */
        int64_t units = rand_r(&seed) % 50 == 0 ? 40 : rand_r(&seed) % 7;
        lim_check_t c[LIM_MAX_CHECKS];
        size_t n = lim_build_checks(&p, ep, "acct", keys[k], units, units * 250000, c,
                                    LIM_MAX_CHECKS);

        ans_t a = {0}, b = {0};
        store_acquire(wa, c, n, "l", on_ans, &a);
        int decided_b;
        const lim_deny_entry_t *e = lim_deny_lookup(&deny, 1, k + 1, ep, c, n, fake_now);
        if (e) {
            decided_b = 0;
            if (c[e->rep.refused].rule->metric != LIM_REQUESTS)
                other_hits++;
            /* A request that can never pass is told so by the limit it is
             * larger than, from the cache as from the store. */
            lim_report_t ra;
            lim_report(c, n, &a.o, &ra);
            if (!a.o.admitted && (ra.never != e->rep.never ||
                                  (ra.never && ra.refused != e->rep.refused))) {
                if (never_mismatches++ < 10)
                    fprintf(stderr, "step %ld: units %lld: the store says %s (check %d), the "
                                    "cache %s (check %d)\n", i, (long long)units,
                            ra.never ? "never" : "later", ra.refused,
                            e->rep.never ? "never" : "later", e->rep.refused);
            }
        } else {
            store_acquire(wb, c, n, "l", on_ans, &b);
            asked_b++;
            decided_b = b.o.admitted;
            if (!decided_b) {
                lim_report_t rep;
                lim_report(c, n, &b.o, &rep);
                /* A counter reconcile can give back to is never kept. */
                if (rep.refused >= 0 && c[rep.refused].rule->metric != LIM_REQUESTS) {
                    lim_deny_t other;
                    lim_deny_init(&other, 4);
                    if (lim_deny_offer(&other, 1, k + 1, ep, c, n, &b.o, &rep, fake_now, 1))
                        refundable_kept++;
                    lim_deny_free(&other);
                }
                lim_deny_offer(&deny, 1, k + 1, ep, c, n, &b.o, &rep, fake_now, 0);
            }
        }
        if (a.o.admitted != decided_b) {
            if (mismatches++ < 10)
                fprintf(stderr, "step %ld at %lld: key %u ep %u units %lld: store %s, cache "
                                "path %s\n",
                        i, (long long)fake_now, k, ep, (long long)units,
                        a.o.admitted ? "admits" : "refuses", decided_b ? "admits" : "refuses");
        }
        admitted += a.o.admitted;
    }
    printf("test_deny: %ld decisions, %ld admitted, store asked %ld times with the cache "
           "(%ld without), %llu cache hits (%ld by units or spend limits), %ld mismatches, "
           "%ld refundable refusals kept, %ld never told apart\n",
           steps, admitted, asked_b, steps, (unsigned long long)deny.hits, other_hits,
           mismatches, refundable_kept, never_mismatches);
    int fail = mismatches != 0 || asked_b >= steps || deny.hits == 0 || admitted == 0 ||
               other_hits == 0 || refundable_kept != 0 || never_mismatches != 0;
    lim_deny_free(&deny);
    store_detach(wa);
    store_detach(wb);
    store_destroy(sa);
    store_destroy(sb);
    lim_policy_free(&p);
    return fail;
}
