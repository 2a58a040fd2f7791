/* tests/unit/testutil.h: what the C test programs share: CHECK, which counts
 * a failure and goes on, and a limit rule built in place. */
#ifndef RW_TESTS_TESTUTIL_H
#define RW_TESTS_TESTUTIL_H

#include <stdio.h>
#include <string.h>

#include "../../limiter/limits.h"

static int failures __attribute__((unused));

#define CHECK(cond, ...)                                                               \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            failures++;                                                                \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond);   \
            fprintf(stderr, __VA_ARGS__);                                              \
            fprintf(stderr, "\n");                                                     \
        }                                                                              \
    } while (0)

/* A rule as the config would make it; ident and eps are borrowed. */
static inline lim_rule_t test_rule(lim_metric_t m, lim_per_t per, lim_scope_t s,
                                   int64_t limit, const char *ident, uint32_t *eps,
                                   uint32_t n_eps, int removed)
{
    lim_rule_t r;
    memset(&r, 0, sizeof r);
    r.metric = m;
    r.per = per;
    r.scope = s;
    r.limit = limit;
    r.ident = (char *)ident;
    r.eps = eps;
    r.n_eps = n_eps;
    r.ep_names = (char *)"";
    r.removed = removed;
    return r;
}

#endif
