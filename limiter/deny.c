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
                                 int64_t sent_ms)
{
    if (!d->e || o->admitted || rep->refused < 0)
        return NULL;
    const lim_check_t *c = &checks[rep->refused];
    const lim_result_t *r = &o->res[rep->refused];
    if (c->rule->metric != LIM_REQUESTS || c->kind == LIM_CK_GAUGE || r->ok)
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
    d->stored++;
    return e;
}

const lim_deny_entry_t *lim_deny_lookup(lim_deny_t *d, uint64_t gen, uintptr_t key,
                                        uint32_t endpoint, int64_t now_ms)
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
    d->hits++;
    return e;
}
