/* limiter/deny.c: the local deny cache. See deny.h. */
#include "deny.h"

#include <stdlib.h>
#include <string.h>

/* A refusal that can never pass (limit 0) is kept this long: a reload
 * forgets it anyway. */
#define NEVER_KEEP_MS 60000

int lim_deny_init(lim_deny_t *d, size_t entries)
{
    size_t n = 1;
    while (n < entries)
        n <<= 1;
    memset(d, 0, sizeof *d);
    d->e = calloc(n, sizeof *d->e);
    if (!d->e)
        return -1;
    d->n = n;
    return 0;
}

void lim_deny_free(lim_deny_t *d)
{
    for (size_t i = 0; d->e && i < d->n; i++)
        free(d->e[i].body);
    free(d->e);
    memset(d, 0, sizeof *d);
}

static size_t slot_of(const lim_deny_t *d, uintptr_t key, uint32_t endpoint)
{
    uint64_t h = (uint64_t)key * 0x9E3779B97F4A7C15ULL ^ (uint64_t)endpoint * 0xC2B2AE3D27D4EB4FULL;
    h ^= h >> 29;
    return (size_t)(h & (d->n - 1));
}

lim_deny_entry_t *lim_deny_offer(lim_deny_t *d, uint64_t gen, uintptr_t key,
                                 uint32_t endpoint, const lim_check_t *checks,
                                 const lim_outcome_t *o, const lim_report_t *rep,
                                 int64_t sent_ms, int refundable)
{
    if (!d->e || o->admitted || rep->refused < 0)
        return NULL;
    const lim_check_t *c = &checks[rep->refused];
    const lim_result_t *r = &o->res[rep->refused];
    if (c->kind == LIM_CK_GAUGE || c->rule->metric == LIM_CONCURRENT || r->ok)
        return NULL;
    if (c->rule->metric != LIM_REQUESTS && refundable)
        return NULL;
    int64_t wait = r->retry_ms == LIM_NEVER ? NEVER_KEEP_MS : r->retry_ms - o->now_ms;
    if (wait <= 0)
        return NULL;
    lim_deny_entry_t *e = &d->e[slot_of(d, key, endpoint)];
    free(e->body);
    e->body = NULL;
    e->gen = gen;
    e->key = key;
    e->endpoint = endpoint;
    e->until_ms = sent_ms + wait;
    e->rep = *rep;
    e->rep.refused = 0;
    e->check = *c;
    e->remaining = c->limit > r->used ? c->limit - r->used : 0;
    e->reset_in_ms = r->reset_ms > o->now_ms ? r->reset_ms - o->now_ms : 0;
    e->offered_ms = sent_ms;
    d->stored++;
    return e;
}

/* What a request of these units and price adds to a check of this metric
 * (as lim_build_checks counts it). */
static int64_t amount_of(lim_metric_t m, int64_t units, int64_t price_micros)
{
    switch (m) {
    case LIM_UNITS: return units;
    case LIM_SPEND: return price_micros;
    default: return 1;
    }
}

const lim_deny_entry_t *lim_deny_lookup(lim_deny_t *d, uint64_t gen, uintptr_t key,
                                        uint32_t endpoint, int64_t units, int64_t price_micros,
                                        int64_t now_ms)
{
    if (!d->e)
        return NULL;
    lim_deny_entry_t *e = &d->e[slot_of(d, key, endpoint)];
    if (e->gen != gen || e->key != key || e->endpoint != endpoint)
        return NULL;
    if (now_ms >= e->until_ms) {
        e->gen = 0;
        return NULL;
    }
    /* A smaller amount may fit before until_ms, and one larger than the
     * limit alone is told "never": the store answers both. */
    int64_t amount = amount_of(e->check.rule->metric, units, price_micros);
    if (amount < e->check.amount || (!e->rep.never && amount > e->check.limit))
        return NULL;
    d->hits++;
    return e;
}
