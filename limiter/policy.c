/* limiter/policy.c: tier -> account -> key merge, and the checks of one
 * request. See limits.h. */
#include "limits.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const lim_metric_words[] = {"requests", "units", "spend", "concurrent", NULL};
const char *const lim_per_words[] = {"second", "minute", "hour", "day", "month", NULL};
const char *const lim_scope_words[] = {"key", "account", NULL};

const char *lim_metric_name(lim_metric_t m)
{
    return (unsigned)m <= LIM_CONCURRENT ? lim_metric_words[m] : "?";
}

const char *lim_per_name(lim_per_t p)
{
    if (p == LIM_PER_NONE)
        return "";
    return p >= LIM_PER_SECOND && p <= LIM_PER_MONTH ? lim_per_words[p - LIM_PER_SECOND] : "?";
}

const char *lim_scope_name(lim_scope_t s)
{
    return lim_scope_words[s == LIM_SCOPE_ACCOUNT];
}

int64_t lim_per_window_ms(lim_per_t p)
{
    switch (p) {
    case LIM_PER_SECOND: return 1000;
    case LIM_PER_MINUTE: return 60000;
    case LIM_PER_HOUR: return 3600000;
    default: return 0;
    }
}

static int rule_applies(const lim_rule_t *r, uint32_t ep)
{
    if (r->n_eps == 0)
        return 1;
    uint32_t lo = 0, hi = r->n_eps;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (r->eps[mid] == ep)
            return 1;
        if (r->eps[mid] < ep)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

int lim_policy_resolve(lim_policy_t *out, const lim_rule_t *const levels[],
                       const size_t n_levels_rules[], size_t n_levels,
                       size_t n_endpoints)
{
    size_t cap = 0;
    for (size_t l = 0; l < n_levels; l++)
        cap += n_levels_rules[l];

    const lim_rule_t **rules = calloc(cap ? cap : 1, sizeof *rules);
    uint32_t *off = calloc(n_endpoints + 1, sizeof *off);
    if (!rules || !off)
        goto out_nomem;

    /* Merge: same ident replaces in place (keeps the tier's order), a
     * removal deletes, anything else is appended. */
    size_t n = 0;
    for (size_t l = 0; l < n_levels; l++) {
        for (size_t i = 0; i < n_levels_rules[l]; i++) {
            const lim_rule_t *r = &levels[l][i];
            size_t k;
            for (k = 0; k < n; k++)
                if (strcmp(rules[k]->ident, r->ident) == 0)
                    break;
            if (r->removed) {
                if (k < n) {
                    memmove(&rules[k], &rules[k + 1], (n - k - 1) * sizeof *rules);
                    n--;
                }
            } else if (k < n) {
                rules[k] = r;
            } else {
                rules[n++] = r;
            }
        }
    }

    /* Per endpoint: the indices of the rules that guard it. */
    size_t total = 0;
    for (size_t e = 0; e < n_endpoints; e++) {
        size_t c = 0;
        for (size_t k = 0; k < n; k++)
            c += rule_applies(rules[k], (uint32_t)e);
        if (c > LIM_MAX_CHECKS) {
            free(rules);
            free(off);
            return -2;
        }
        off[e] = (uint32_t)total;
        total += c;
    }
    off[n_endpoints] = (uint32_t)total;

    uint16_t *idx = calloc(total ? total : 1, sizeof *idx);
    if (!idx)
        goto out_nomem;
    for (size_t e = 0, p = 0; e < n_endpoints; e++)
        for (size_t k = 0; k < n; k++)
            if (rule_applies(rules[k], (uint32_t)e))
                idx[p++] = (uint16_t)k;

    out->rules = rules;
    out->n_rules = n;
    out->n_endpoints = n_endpoints;
    out->ep_off = off;
    out->ep_rule = idx;
    return 0;

out_nomem:
    free(rules);
    free(off);
    return -1;
}

void lim_policy_free(lim_policy_t *p)
{
    if (!p)
        return;
    free(p->rules);
    free(p->ep_off);
    free(p->ep_rule);
    memset(p, 0, sizeof *p);
}

/* dst = the parts (up to a NULL) one after the other: its length, or
 * (size_t)-1 (dst cut short) when they do not fit in cap bytes with the
 * NUL. */
static size_t join(char *dst, size_t cap, const char *const parts[])
{
    size_t at = 0;
    for (size_t i = 0; parts[i]; i++) {
        size_t n = strlen(parts[i]);
        if (n >= cap - at) {
            dst[at] = '\0';
            return (size_t)-1;
        }
        memcpy(dst + at, parts[i], n);
        at += n;
    }
    dst[at] = '\0';
    return at;
}

/* The two starts of a request's counter keys, "{account}:a:" and
 * "{account}:k:KEYID:", joined once for all its checks. */
typedef struct {
    char acct[LIM_KEY_MAX], key[LIM_KEY_MAX];
    size_t acct_len, key_len; /* (size_t)-1: does not fit */
} key_starts_t;

static void key_starts(key_starts_t *s, const char *account, const char *key_id)
{
    const char *const acct[] = {"{", account, "}:a:", NULL};
    const char *const key[] = {"{", account, "}:k:", key_id, ":", NULL};
    s->acct_len = join(s->acct, sizeof s->acct, acct);
    s->key_len = join(s->key, sizeof s->key, key);
}

/* One check for one rule; -1 if its key does not fit. */
static int build_one(const lim_rule_t *r, const key_starts_t *ks, int64_t units,
                     int64_t price_micros, lim_check_t *c)
{
    c->rule = r;
    c->shadow = r->shadow;
    c->lease_ttl_ms = 0; /* the caller's to set; a usage check keeps the default */
    c->per = r->per;
    c->limit = r->limit;
    c->window_ms = lim_per_window_ms(r->per);
    switch (r->metric) {
    case LIM_REQUESTS: c->amount = 1; break;
    case LIM_UNITS: c->amount = units; break;
    case LIM_SPEND: c->amount = price_micros; break;
    case LIM_CONCURRENT: c->amount = 1; break;
    }
    if (r->metric == LIM_CONCURRENT)
        c->kind = LIM_CK_GAUGE;
    else if (c->window_ms > 0)
        c->kind = LIM_CK_ROLLING;
    else
        c->kind = LIM_CK_CALENDAR;
    /* "{account}:a:IDENT" or "{account}:k:KEYID:IDENT", copied by hand: a
     * request builds several, and snprintf costs more than the rest of
     * the check together. */
    int by_acct = r->scope == LIM_SCOPE_ACCOUNT;
    const char *start = by_acct ? ks->acct : ks->key;
    size_t sl = by_acct ? ks->acct_len : ks->key_len, il = strlen(r->ident);
    if (sl == (size_t)-1 || il >= sizeof c->key - sl) {
        c->key[0] = '\0';
        return -1;
    }
    memcpy(c->key, start, sl);
    memcpy(c->key + sl, r->ident, il + 1);
    return 0;
}

int lim_checks_have_gauge(const lim_check_t *c, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (c[i].kind == LIM_CK_GAUGE)
            return 1;
    return 0;
}

size_t lim_build_checks(const lim_policy_t *p, uint32_t endpoint,
                        const char *account, const char *key_id,
                        int64_t units, int64_t price_micros,
                        lim_check_t *out, size_t max)
{
    if (endpoint >= p->n_endpoints)
        return 0;
    key_starts_t ks;
    key_starts(&ks, account, key_id);
    size_t n = 0;
    for (uint32_t i = p->ep_off[endpoint]; i < p->ep_off[endpoint + 1]; i++) {
        if (n == max ||
            build_one(p->rules[p->ep_rule[i]], &ks, units, price_micros, &out[n]) != 0)
            return (size_t)-1;
        n++;
    }
    return n;
}

size_t lim_build_rule_checks(const lim_policy_t *p, size_t first, const char *account,
                             const char *key_id, lim_check_t *out, size_t max)
{
    key_starts_t ks;
    key_starts(&ks, account, key_id);
    size_t n = 0;
    for (size_t i = first; i < p->n_rules && n < max; i++, n++)
        if (build_one(p->rules[i], &ks, 0, 0, &out[n]) != 0)
            return (size_t)-1;
    return n;
}
