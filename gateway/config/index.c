/*
 * gateway/config/index.c: the snapshot's lookup tables: name and digest tables (open
 * addressing), the route index, and the per-request lookups
 * (config_find_key, config_find_key_id, config_find_account, config_route,
 * config_route_any) and config_counter_changes.
 */
#include "internal.h"
#include "../../limiter/hash.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ------------------------------------------------------------------------
 * Small tables: name -> index (open addressing), digest -> key.
 * ------------------------------------------------------------------------ */

void st_free(strtab_t *t)
{
    free(t->k);
    free(t->v);
    memset(t, 0, sizeof *t);
}

static int st_find_slot(const strtab_t *t, const char *k, size_t *slot)
{
    size_t mask = t->cap - 1, i = (size_t)rw_hash_str(k) & mask;
    while (t->k[i]) {
        if (strcmp(t->k[i], k) == 0) {
            *slot = i;
            return 1;
        }
        i = (i + 1) & mask;
    }
    *slot = i;
    return 0;
}

static int st_grow(strtab_t *t)
{
    size_t cap = t->cap ? t->cap * 2 : 16;
    strtab_t nt = {calloc(cap, sizeof(char *)), calloc(cap, sizeof(uint32_t)), cap, 0};
    if (!nt.k || !nt.v) {
        st_free(&nt);
        return -1;
    }
    for (size_t i = 0; i < t->cap; i++) {
        if (!t->k[i])
            continue;
        size_t s;
        st_find_slot(&nt, t->k[i], &s);
        nt.k[s] = t->k[i];
        nt.v[s] = t->v[i];
        nt.n++;
    }
    st_free(t);
    *t = nt;
    return 0;
}

/* 0 inserted, 1 already there (*old set), -1 out of memory. */
int st_put(strtab_t *t, const char *k, uint32_t v, uint32_t *old)
{
    if ((t->n + 1) * 2 > t->cap && st_grow(t))
        return -1;
    size_t s;
    if (st_find_slot(t, k, &s)) {
        if (old)
            *old = t->v[s];
        return 1;
    }
    t->k[s] = k;
    t->v[s] = v;
    t->n++;
    return 0;
}

int st_get(const strtab_t *t, const char *k, uint32_t *v)
{
    if (!t->cap)
        return 0;
    size_t s;
    if (!st_find_slot(t, k, &s))
        return 0;
    *v = t->v[s];
    return 1;
}

static uint64_t dig_head(const unsigned char d[32])
{
    uint64_t h;
    memcpy(&h, d, sizeof h);
    return h;
}

static int dt_grow(digtab_t *t)
{
    size_t cap = t->cap ? t->cap * 2 : 64;
    dslot_t *s = calloc(cap, sizeof *s);
    if (!s)
        return -1;
    for (size_t i = 0; i < t->cap; i++) {
        if (!t->s[i].idx1)
            continue;
        size_t j = (size_t)t->s[i].h & (cap - 1);
        while (s[j].idx1)
            j = (j + 1) & (cap - 1);
        s[j] = t->s[i];
    }
    free(t->s);
    t->s = s;
    t->cap = cap;
    return 0;
}

/* 0 inserted, 1 duplicate digest (*dup = the other key), -1 out of memory. */
int dt_put(digtab_t *t, const cfg_key_t *keys, uint32_t idx, uint32_t *dup)
{
    if ((t->n + 1) * 2 > t->cap && dt_grow(t))
        return -1;
    uint64_t h = dig_head(keys[idx].sha256);
    size_t mask = t->cap - 1, j = (size_t)h & mask;
    while (t->s[j].idx1) {
        if (t->s[j].h == h &&
            CRYPTO_memcmp(keys[t->s[j].idx1 - 1].sha256, keys[idx].sha256, 32) == 0) {
            *dup = t->s[j].idx1 - 1;
            return 1;
        }
        j = (j + 1) & mask;
    }
    t->s[j].h = h;
    t->s[j].idx1 = idx + 1;
    t->n++;
    return 0;
}

static int cmp_rentry(const void *a, const void *b)
{
    const rentry_t *x = a, *y = b;
    int r = strcmp(x->path, y->path);
    return r ? r : (x->ep > y->ep) - (x->ep < y->ep);
}

static int cmp_prefix(const void *a, const void *b)
{
    const rentry_t *x = a, *y = b;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1;
    return (x->ep > y->ep) - (x->ep < y->ep);
}

void routes_free(routes_t *r)
{
    if (!r)
        return;
    for (size_t i = 0; r->exact && i < r->n_exact; i++)
        free(r->exact[i].path);
    for (size_t i = 0; r->prefix && i < r->n_prefix; i++)
        free(r->prefix[i].path);
    for (size_t i = 0; r->groups && i < r->n_groups; i++)
        st_free(&r->groups[i].values);
    free(r->groups);
    free(r->ep_group);
    free(r->exact);
    free(r->slots);
    free(r->prefix);
    free(r);
}

/* The routes whose endpoints match on the body: each a group, with the
 * value table of its members (the loader checked that no value repeats). */
static int build_groups(routes_t *r, const config_t *cfg)
{
    size_t n = cfg->n_endpoints ? cfg->n_endpoints : 1;
    r->ep_group = malloc(n * sizeof *r->ep_group);
    r->groups = calloc(n, sizeof *r->groups);
    if (!r->ep_group || !r->groups)
        return -1;
    for (size_t i = 0; i < n; i++)
        r->ep_group[i] = -1;
    for (size_t i = 0; i < cfg->n_endpoints; i++) {
        if (r->ep_group[i] >= 0)
            continue;
        int any = 0;
        for (size_t j = i; j < cfg->n_endpoints && !any; j++)
            any = cfg->endpoints[j].match && same_route(&cfg->endpoints[i], &cfg->endpoints[j]);
        if (!any)
            continue;
        rgroup_t *g = &r->groups[r->n_groups];
        g->fallback = -1;
        for (size_t j = i; j < cfg->n_endpoints; j++) {
            const cfg_endpoint_t *e = &cfg->endpoints[j];
            if (j != i && !same_route(&cfg->endpoints[i], e))
                continue;
            r->ep_group[j] = (int32_t)r->n_groups;
            if (e->max_body_bytes > g->max_body)
                g->max_body = e->max_body_bytes;
            if (!e->match) {
                g->fallback = (int32_t)j;
                continue;
            }
            g->pointer = e->match->pointer;
            for (size_t k = 0; k < e->match->n_values; k++)
                if (st_put(&g->values, e->match->values[k], (uint32_t)j, NULL) < 0)
                    return -1;
        }
        r->n_groups++;
    }
    return 0;
}

routes_t *build_routes(const config_t *cfg)
{
    routes_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    size_t n = cfg->n_endpoints ? cfg->n_endpoints : 1;
    r->exact = calloc(n, sizeof *r->exact);
    r->prefix = calloc(n, sizeof *r->prefix);
    r->cap = 16;
    while (r->cap < 2 * n)
        r->cap *= 2;
    r->slots = calloc(r->cap, sizeof *r->slots);
    if (!r->exact || !r->prefix || !r->slots) {
        routes_free(r);
        return NULL;
    }
    for (size_t i = 0; i < cfg->n_endpoints; i++) {
        const cfg_endpoint_t *e = &cfg->endpoints[i];
        char *key = route_key_dup(e->path, !e->is_prefix);
        if (!key) {
            routes_free(r);
            return NULL;
        }
        rentry_t en = {key, strlen(key), (uint32_t)i, e->methods};
        if (e->is_prefix)
            r->prefix[r->n_prefix++] = en;
        else
            r->exact[r->n_exact++] = en;
    }
    if (build_groups(r, cfg) != 0) {
        routes_free(r);
        return NULL;
    }
    qsort(r->exact, r->n_exact, sizeof *r->exact, cmp_rentry);
    qsort(r->prefix, r->n_prefix, sizeof *r->prefix, cmp_prefix);
    for (size_t i = 0; i < r->n_exact; i++) {
        if (i && strcmp(r->exact[i - 1].path, r->exact[i].path) == 0)
            continue; /* same group */
        size_t s = (size_t)rw_hash_str(r->exact[i].path) & (r->cap - 1);
        while (r->slots[s])
            s = (s + 1) & (r->cap - 1);
        r->slots[s] = (uint32_t)i + 1;
    }
    return r;
}

/* ------------------------------------------------------------------------
 * Lookups (per request).
 * ------------------------------------------------------------------------ */

const cfg_key_t *config_find_key(const config_t *c, const unsigned char sha[32])
{
    const keyidx_t *ki = c->key_index;
    if (!ki || !ki->dig.cap)
        return NULL;
    uint64_t h = dig_head(sha);
    size_t mask = ki->dig.cap - 1, j = (size_t)h & mask;
    while (ki->dig.s[j].idx1) {
        const cfg_key_t *k = &c->keys[ki->dig.s[j].idx1 - 1];
        if (ki->dig.s[j].h == h && CRYPTO_memcmp(k->sha256, sha, 32) == 0)
            return k;
        j = (j + 1) & mask;
    }
    return NULL;
}

const cfg_key_t *config_find_key_id(const config_t *c, const char *id)
{
    const keyidx_t *ki = c->key_index;
    uint32_t v;
    if (!ki || !id || !st_get(&ki->ids, id, &v))
        return NULL;
    return &c->keys[v];
}

const cfg_account_t *config_find_account(const config_t *c, const char *name)
{
    const keyidx_t *ki = c->key_index;
    uint32_t v;
    if (!ki || !name || !st_get(&ki->accounts, name, &v))
        return NULL;
    return &c->accounts[v];
}

static int route(const config_t *c, unsigned method, const char *path)
{
    const routes_t *r = c->route_index;
    char key[2048]; /* as long as a request's normalized path */
    if (!r || !path || route_key(path, 0, key, sizeof key) != 0)
        return -1;
    /* Exact paths first, looked up without a trailing "/". */
    size_t klen = strlen(key);
    int cut = klen > 1 && key[klen - 1] == '/';
    if (cut)
        key[klen - 1] = '\0';
    size_t mask = r->cap - 1, s = (size_t)rw_hash_str(key) & mask;
    while (r->slots[s]) {
        size_t i = r->slots[s] - 1;
        if (strcmp(r->exact[i].path, key) == 0) {
            for (; i < r->n_exact && strcmp(r->exact[i].path, key) == 0; i++)
                if (r->exact[i].methods & method)
                    return (int)r->exact[i].ep;
            break;
        }
        s = (s + 1) & mask;
    }
    if (cut)
        key[klen - 1] = '/';
    for (size_t i = 0; i < r->n_prefix; i++)
        if ((r->prefix[i].methods & method) &&
            strncmp(key, r->prefix[i].path, r->prefix[i].len) == 0)
            return (int)r->prefix[i].ep;
    return -1;
}

int config_route(const config_t *c, unsigned method, const char *path)
{
    return method ? route(c, method, path) : -1;
}

static const rgroup_t *group_of(const config_t *c, int ep)
{
    const routes_t *r = c->route_index;
    if (!r || ep < 0 || (size_t)ep >= c->n_endpoints || r->ep_group[ep] < 0)
        return NULL;
    return &r->groups[r->ep_group[ep]];
}

const char *config_route_pointer(const config_t *c, int ep)
{
    const rgroup_t *g = group_of(c, ep);
    return g ? g->pointer : NULL;
}

int64_t config_route_max_body(const config_t *c, int ep)
{
    const rgroup_t *g = group_of(c, ep);
    if (g)
        return g->max_body;
    return ep >= 0 && (size_t)ep < c->n_endpoints ? c->endpoints[ep].max_body_bytes
                                                  : c->server.max_body_bytes;
}

int config_route_value(const config_t *c, int ep, const json_t *v)
{
    const rgroup_t *g = group_of(c, ep);
    if (!g)
        return ep;
    uint32_t hit;
    /* A string with a NUL inside is not the value its first part spells. */
    if (json_is_string(v) && strlen(json_string_value(v)) == json_string_length(v) &&
        st_get(&g->values, json_string_value(v), &hit))
        return (int)hit;
    return g->fallback;
}

int config_route_any(const config_t *c, const char *path)
{
    return route(c, ~0u, path);
}

/* ------------------------------------------------------------------------
 * Counters that a new snapshot starts afresh.
 * ------------------------------------------------------------------------ */

static const lim_rule_t *rule_by_ident(const lim_rule_t *rules, size_t n, const char *ident)
{
    for (size_t i = 0; i < n; i++)
        if (!rules[i].removed && strcmp(rules[i].ident, ident) == 0)
            return &rules[i];
    return NULL;
}

/* One level's limits: a rule of next whose counter identity is new while
 * old had a rule of the same metric, per and scope (now gone) is a limit
 * whose endpoints changed. */
static size_t rules_changes(const char *where, const lim_rule_t *old, size_t n_old,
                            const lim_rule_t *next, size_t n_next, size_t said,
                            cfg_note_fn note, void *arg)
{
    size_t found = 0;
    for (size_t i = 0; i < n_next; i++) {
        const lim_rule_t *r = &next[i];
        if (r->removed || rule_by_ident(old, n_old, r->ident))
            continue;
        const lim_rule_t *was = NULL;
        for (size_t j = 0; j < n_old && !was; j++) {
            const lim_rule_t *o = &old[j];
            if (!o->removed && o->metric == r->metric && o->per == r->per &&
                o->scope == r->scope && !rule_by_ident(next, n_next, o->ident))
                was = o;
        }
        if (!was)
            continue;
        found++;
        if (said + found > CFG_NOTES_MAX)
            continue;
        const char *now_eps = r->ep_names ? r->ep_names : "";
        const char *was_eps = was->ep_names ? was->ep_names : "";
        char *line;
        if (asprintf(&line,
                     "warning: %s: the %s%s%s limit (%s scope) now counts %s%s%s (was %s%s%s): "
                     "its counter starts afresh",
                     where, lim_metric_name(r->metric), r->per ? " per " : "",
                     lim_per_name(r->per), lim_scope_name(r->scope),
                     *now_eps ? "endpoints [" : "all endpoints", now_eps, *now_eps ? "]" : "",
                     *was_eps ? "endpoints [" : "all endpoints", was_eps,
                     *was_eps ? "]" : "") >= 0) {
            note(arg, line);
            free(line);
        }
    }
    return found;
}

size_t config_counter_changes(const config_t *old, const config_t *next, cfg_note_fn note,
                              void *arg)
{
    size_t n = 0;
    char where[160];
    for (size_t i = 0; i < next->n_tiers; i++) {
        const cfg_tier_t *t = &next->tiers[i];
        for (size_t j = 0; j < old->n_tiers; j++) {
            if (strcmp(old->tiers[j].name, t->name) != 0)
                continue;
            snprintf(where, sizeof where, "tier \"%s\"", t->name);
            n += rules_changes(where, old->tiers[j].rules, old->tiers[j].n_rules, t->rules,
                               t->n_rules, n, note, arg);
            break;
        }
    }
    for (size_t i = 0; i < next->n_accounts; i++) {
        const cfg_account_t *a = &next->accounts[i];
        const cfg_account_t *o = config_find_account(old, a->name);
        if (!o)
            continue;
        snprintf(where, sizeof where, "account \"%s\"", a->name);
        n += rules_changes(where, o->rules, o->n_rules, a->rules, a->n_rules, n, note, arg);
    }
    for (size_t i = 0; i < next->n_keys; i++) {
        const cfg_key_t *k = &next->keys[i];
        const cfg_key_t *o = config_find_key_id(old, k->id);
        if (!o)
            continue;
        snprintf(where, sizeof where, "key \"%s\"", k->id);
        n += rules_changes(where, o->rules, o->n_rules, k->rules, k->n_rules, n, note, arg);
    }
    if (n > CFG_NOTES_MAX) {
        char line[160];
        snprintf(line, sizeof line,
                 "warning: %zu more limits whose endpoints changed start their counters afresh",
                 n - CFG_NOTES_MAX);
        note(arg, line);
    }
    return n;
}

/*
 * The key a path is routed by: ASCII letters lower-cased, ";params" cut
 * from every segment, and for an exact path one trailing "/" dropped. Any
 * spelling that a lenient backend (case-insensitive matching, ignored
 * path parameters or trailing slash) takes for an endpoint's path routes
 * to that endpoint here too, so it is counted where the backend runs it.
 * The request's path itself is forwarded as it came (normalized).
 * Writes at most len bytes; -1 if the key does not fit.
 */
int route_key(const char *path, int exact, char *out, size_t len)
{
    size_t o = 0;
    int in_params = 0;
    for (const char *p = path; *p; p++) {
        char ch = *p;
        if (ch == '/')
            in_params = 0;
        else if (ch == ';')
            in_params = 1;
        if (in_params)
            continue;
        if (o + 1 >= len)
            return -1;
        out[o++] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
    }
    if (exact && o > 1 && out[o - 1] == '/')
        o--;
    out[o] = '\0';
    return 0;
}

char *route_key_dup(const char *path, int exact)
{
    size_t n = strlen(path) + 1;
    char *k = malloc(n);
    if (k && route_key(path, exact, k, n) != 0) {
        free(k);
        k = NULL;
    }
    return k;
}

int lookup_name(ctx_t *c, const strtab_t *t, json_t *o, const char *W, const char *name,
                  const char *what, uint32_t *out)
{
    char *s = NULL;
    int rc = get_str(c, o, W, name, 1, &s);
    if (rc != 1)
        return rc;
    if (!st_get(t, s, out)) {
        ferr(c, W, name, "no %s named %s", what, cfg_quote(c, s));
        rc = -1;
    }
    free(s);
    return rc;
}
