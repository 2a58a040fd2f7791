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
    for (size_t i = 0; d->e && i < d->n; i++) {
        free(d->e[i].body);
        free(d->e[i].remaining);
    }
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
                                 uint32_t endpoint, const lim_check_t *checks, size_t n,
                                 const lim_outcome_t *o, const lim_report_t *rep,
                                 int64_t sent_ms, int refundable)
{
    if (!d->e || o->admitted || rep->refused < 0 || (size_t)rep->refused >= n)
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
    int64_t *state = e->n >= n ? e->remaining : realloc(e->remaining, 2 * n * sizeof *state);
    free(e->body);
    e->body = NULL;
    if (!state) {
        e->gen = 0;
        return NULL;
    }
    e->remaining = state;
    e->reset_in_ms = state + n;
    e->gen = gen;
    e->key = key;
    e->endpoint = endpoint;
    e->until_ms = sent_ms + wait;
    e->rep = *rep;
    e->n = n;
    e->amount = c->amount;
    for (size_t i = 0; i < n; i++) {
        e->remaining[i] = checks[i].limit > o->res[i].used ? checks[i].limit - o->res[i].used : 0;
        e->reset_in_ms[i] = o->res[i].reset_ms > o->now_ms ? o->res[i].reset_ms - o->now_ms : 0;
    }
    e->offered_ms = sent_ms;
    e->store_now_ms = o->now_ms;
    d->stored++;
    return e;
}

const lim_deny_entry_t *lim_deny_lookup(lim_deny_t *d, uint64_t gen, uintptr_t key,
                                        uint32_t endpoint, const lim_check_t *checks,
                                        size_t n, int64_t now_ms)
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
    /* The same generation, key and endpoint give the same checks: only the
     * amounts differ. A smaller amount for the refusing limit may fit
     * before until_ms, and an amount larger than a limit alone is told
     * "never" by that limit: the store answers both. */
    if (e->n != n || checks[e->rep.refused].amount < e->amount)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (!checks[i].shadow && checks[i].amount > checks[i].limit &&
            !(e->rep.never && i == (size_t)e->rep.refused))
            return NULL;
    d->hits++;
    return e;
}
