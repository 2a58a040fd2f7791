/*
 * gateway/config/limits.c: rules and limits, tiers, accounts, keys, and the
 * policies resolved from them after validation.
 */
#include "internal.h"

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
 * Limits.
 * ------------------------------------------------------------------------ */

enum { LV_TIER, LV_ACCOUNT, LV_KEY };

static const char *const mode_words[] = {"enforce", "shadow", NULL};

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* metric:per:scope:EPS[:shadow] (EPS "*" or sorted names comma-joined; when
 * that would pass 96 bytes, "h" + 16 hex of the names' SHA-256). */
static char *make_ident(ctx_t *c, const lim_rule_t *r)
{
    const char *per = lim_per_name(r->per);
    const char *metric = lim_metric_name(r->metric);
    const char *scope = lim_scope_name(r->scope);
    char *joined = NULL;
    if (r->n_eps) {
        const char **names = malloc(r->n_eps * sizeof *names);
        if (!names) {
            cfg_nomem(c);
            return NULL;
        }
        size_t tot = 0;
        for (uint32_t i = 0; i < r->n_eps; i++) {
            names[i] = c->cfg->endpoints[r->eps[i]].name;
            tot += strlen(names[i]) + 1;
        }
        qsort(names, r->n_eps, sizeof *names, cmp_str);
        joined = malloc(tot);
        if (!joined) {
            free(names);
            cfg_nomem(c);
            return NULL;
        }
        size_t n = 0;
        for (uint32_t i = 0; i < r->n_eps; i++) {
            size_t l = strlen(names[i]);
            if (i)
                joined[n++] = ',';
            memcpy(joined + n, names[i], l);
            n += l;
        }
        joined[n] = '\0';
        free(names);
    }
    char *id = NULL;
    const char *mode = r->shadow ? ":shadow" : "";
    if (asprintf(&id, "%s:%s:%s:%s%s", metric, per, scope, joined ? joined : "*", mode) < 0) {
        id = NULL;
    } else if (strlen(id) > IDENT_MAX_LEN) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int mdlen = 0;
        free(id);
        id = NULL;
        if (EVP_Digest(joined, strlen(joined), md, &mdlen, EVP_sha256(), NULL) == 1 &&
            asprintf(&id, "%s:%s:%s:h%02x%02x%02x%02x%02x%02x%02x%02x%s", metric, per, scope,
                     md[0], md[1], md[2], md[3], md[4], md[5], md[6], md[7], mode) < 0)
            id = NULL;
    }
    free(joined);
    if (!id)
        cfg_nomem(c);
    return id;
}

/* One limit object at the current path. Returns 1 when the rule is whole. */
static int parse_rule(ctx_t *c, json_t *o, lim_rule_t *r, int level, const char *W)
{
    static const char *const keys[] = {"metric", "per", "limit", "scope", "endpoints", "mode",
                                       NULL};
    int ok = 1;
    check_keys(c, o, keys, W);
    int metric = get_enum(c, o, W, "metric", 1, lim_metric_words, "metric",
                          "requests, units, spend or concurrent");
    if (metric < 0)
        ok = 0;
    else
        r->metric = (lim_metric_t)metric;

    json_t *perv = json_object_get(o, "per");
    if (metric == LIM_CONCURRENT) {
        r->per = LIM_PER_NONE;
        if (perv) {
            size_t m = path_key(c, "per");
            kerr(c, W, "\"per\" must not be given for a concurrent limit");
            path_pop(c, m);
            ok = 0;
        }
    } else if (metric >= 0 && !perv) {
        cfg_err(c, W, NULL, "missing \"per\" (required for a %s limit)", lim_metric_words[metric]);
        ok = 0;
    } else if (perv) {
        int p = get_enum(c, o, W, "per", 0, lim_per_words, "period",
                         "second, minute, hour, day or month");
        if (p < 0)
            ok = 0;
        else
            r->per = (lim_per_t)(LIM_PER_SECOND + p);
    }

    int sc = get_enum(c, o, W, "scope", 0, lim_scope_words, "scope", "key or account");
    if (sc == -1)
        ok = 0;
    r->scope = sc == 1 ? LIM_SCOPE_ACCOUNT : LIM_SCOPE_KEY;

    int mode = get_enum(c, o, W, "mode", 0, mode_words, "mode", "enforce or shadow");
    if (mode == -1)
        ok = 0;
    r->shadow = mode == 1;

    json_t *eps = json_object_get(o, "endpoints");
    if (eps) {
        size_t m = path_key(c, "endpoints");
        size_t n = json_is_array(eps) ? json_array_size(eps) : 0;
        if (!json_is_array(eps)) {
            cfg_err(c, W, "endpoints", "expected an array, got %s", json_kind(eps));
            ok = 0;
        } else if (!n) {
            cfg_err(c, W, "endpoints",
                "must not be empty (leave \"endpoints\" out to count all endpoints)");
            ok = 0;
        } else {
            r->eps = calloc(n, sizeof *r->eps);
            size_t namelen = 1;
            for (size_t i = 0; i < n; i++) {
                json_t *s = json_array_get(eps, i);
                namelen += json_is_string(s) ? json_string_length(s) + 1 : 0;
            }
            r->ep_names = calloc(1, namelen);
            if (!r->eps || !r->ep_names) {
                cfg_nomem(c);
                ok = 0;
            }
            for (size_t i = 0; i < n && r->eps && r->ep_names; i++) {
                size_t mi = path_index(c, i);
                char *s = NULL;
                uint32_t idx;
                if (str_value(c, json_array_get(eps, i), W, "endpoints", &s) != 1) {
                    ok = 0;
                } else if (!st_get(&c->t_endpoints, s, &idx)) {
                    cfg_err(c, W, "endpoints", "no endpoint named %s", cfg_quote(c, s));
                    ok = 0;
                } else {
                    uint32_t k;
                    for (k = 0; k < r->n_eps; k++)
                        if (r->eps[k] == idx)
                            break;
                    if (k < r->n_eps) {
                        cfg_err(c, W, "endpoints", "%s is listed twice", cfg_quote(c, s));
                        ok = 0;
                    } else {
                        r->eps[r->n_eps++] = idx;
                        if (r->ep_names[0])
                            strcat(r->ep_names, ",");
                        strcat(r->ep_names, c->cfg->endpoints[idx].name);
                    }
                }
                free(s);
                path_pop(c, mi);
            }
            if (r->eps)
                qsort(r->eps, r->n_eps, sizeof *r->eps, cmp_u32);
        }
        path_pop(c, m);
    }
    if (!r->ep_names && !(r->ep_names = calloc(1, 1))) {
        cfg_nomem(c);
        ok = 0;
    }

    json_t *lv = json_object_get(o, "limit");
    if (!lv) {
        missing_field(c, W, "limit");
        ok = 0;
    } else if (json_is_null(lv)) {
        if (level == LV_TIER) {
            ferr(c, W, "limit",
                 "null (remove an inherited limit) is only allowed on accounts and keys");
            ok = 0;
        }
        r->removed = 1;
    } else if (metric == LIM_SPEND) {
        size_t m = path_key(c, "limit");
        if (money_value(c, lv, W, "limit", &r->limit) != 1)
            ok = 0;
        path_pop(c, m);
    } else if (metric >= 0) {
        if (!json_is_integer(lv)) {
            type_err(c, W, "limit", lv, "an integer (or null)");
            ok = 0;
        } else if (json_integer_value(lv) < 0) {
            range_err(c, W, "limit", (int64_t)json_integer_value(lv), 0, INT64_MAX);
            ok = 0;
        } else {
            r->limit = (int64_t)json_integer_value(lv);
        }
    }
    if (ok && !(r->ident = make_ident(c, r)))
        ok = 0;
    return ok;
}

/* Field "limits" of the object at the current path. */
static void parse_limits(ctx_t *c, json_t *owner, int level, const char *ownerW,
                         lim_rule_t **out, size_t *n_out)
{
    json_t *arr = get_arr(c, owner, ownerW, "limits", 0);
    size_t n = arr ? json_array_size(arr) : 0;
    if (!n)
        return;
    lim_rule_t *rules = calloc(n, sizeof *rules);
    if (!rules) {
        cfg_nomem(c);
        return;
    }
    *out = rules;
    size_t mk = path_key(c, "limits");
    for (size_t i = 0; i < n; i++) {
        char W[300];
        snprintf(W, sizeof W, "%s limits[%zu]", ownerW, i);
        json_t *o = json_array_get(arr, i);
        size_t mi = path_index(c, i);
        lim_rule_t *r = &rules[*n_out];
        if (!json_is_object(o)) {
            cfg_err(c, ownerW, NULL, "limits[%zu]: expected an object, got %s", i, json_kind(o));
        } else if (parse_rule(c, o, r, level, W)) {
            size_t k;
            for (k = 0; k < *n_out; k++)
                if (strcmp(rules[k].ident, r->ident) == 0)
                    break;
            if (k < *n_out) {
                cfg_err(c, W, NULL, "duplicate limit %s (the same metric, per, scope, endpoints "
                    "and mode as an earlier one)", r->ident);
            } else {
                (*n_out)++;
                r = NULL;
            }
        }
        if (r) { /* not kept: release what it holds, reuse the slot */
            free(r->eps);
            free(r->ep_names);
            free(r->ident);
            memset(r, 0, sizeof *r);
        }
        path_pop(c, mi);
    }
    path_pop(c, mk);
}

void parse_tier(ctx_t *c, json_t *o, cfg_tier_t *t, const char *W)
{
    static const char *const keys[] = {"limits", NULL};
    check_keys(c, o, keys, W);
    parse_limits(c, o, LV_TIER, W, &t->rules, &t->n_rules);
}

void parse_account(ctx_t *c, json_t *o, cfg_account_t *a, const char *W)
{
    static const char *const keys[] = {"tier", "disabled", "limits", NULL};
    check_keys(c, o, keys, W);
    lookup_name(c, &c->t_tiers, o, W, "tier", "tier", &a->tier);
    get_bool(c, o, W, "disabled", &a->disabled);
    parse_limits(c, o, LV_ACCOUNT, W, &a->rules, &a->n_rules);
}

/* Key object o (current path), stored at cfg->keys[ki]. */
void parse_key(ctx_t *c, json_t *o, size_t ki, size_t pos)
{
    static const char *const keys[] = {"id", "sha256", "account", "disabled", "limits", NULL};
    cfg_key_t *k = &c->cfg->keys[ki];
    char W[300];
    snprintf(W, sizeof W, "keys[%zu]", pos);
    if (!json_is_object(o)) {
        cfg_err(c, NULL, NULL, "keys[%zu]: expected an object, got %s", pos, json_kind(o));
        return;
    }
    if (get_str(c, o, W, "id", 1, &k->id) == 1) {
        if (!valid_name(k->id)) {
            ferr(c, W, "id", "invalid key id %s: " NAME_RULE, cfg_quote(c, k->id));
        } else {
            uint32_t old;
            int rc = st_put(&c->t_keyids, k->id, (uint32_t)ki, &old);
            if (rc < 0)
                cfg_nomem(c);
            else if (rc == 1)
                ferr(c, W, "id", "duplicate key id %s", cfg_quote(c, k->id));
            snprintf(W, sizeof W, "key %s", cfg_quote(c, k->id));
        }
    }
    check_keys(c, o, keys, W);
    if (get_digest(c, o, W, "sha256", 1, k->sha256) == 1) {
        uint32_t dup;
        int rc = dt_put(&c->t_dig, c->cfg->keys, (uint32_t)ki, &dup);
        if (rc < 0)
            cfg_nomem(c);
        else if (rc == 1)
            ferr(c, W, "sha256", "the same digest as key %s",
                 cfg_quote(c, c->cfg->keys[dup].id ? c->cfg->keys[dup].id : "?"));
    }
    lookup_name(c, &c->t_accounts, o, W, "account", "account", &k->account);
    get_bool(c, o, W, "disabled", &k->disabled);
    parse_limits(c, o, LV_KEY, W, &k->rules, &k->n_rules);
}

/* ------------------------------------------------------------------------
 * After validation: policies and lookup tables.
 * ------------------------------------------------------------------------ */

static void policy_error(ctx_t *c, int rc, const char *what)
{
    if (rc == -1)
        cfg_nomem(c);
    else
        cfg_err(c, what, NULL, "more than %d limits apply to one endpoint", LIM_MAX_CHECKS);
}

/* "limit": null that matches no inherited limit is most likely a typo in
 * its metric, per, scope or endpoints: warn at its "limit". The current
 * path is the owner (account or key) object. */
static void warn_noop_removals(ctx_t *c, const char *W, const lim_rule_t *rules, size_t n,
                               const lim_rule_t *const *inh, size_t n_inh,
                               const lim_rule_t *inh2, size_t n_inh2)
{
    for (size_t i = 0; i < n; i++) {
        if (!rules[i].removed)
            continue;
        int found = 0;
        for (size_t k = 0; k < n_inh && !found; k++)
            found = strcmp(inh[k]->ident, rules[i].ident) == 0;
        for (size_t k = 0; k < n_inh2 && !found; k++)
            found = strcmp(inh2[k].ident, rules[i].ident) == 0;
        if (found)
            continue;
        size_t m = path_key(c, "limits");
        path_index(c, i);
        path_key(c, "limit");
        char *text;
        if (asprintf(&text, "warning: %s limits[%zu]: \"limit\": null removes nothing: no "
                     "inherited limit is %s", W, i, rules[i].ident) < 0)
            text = NULL;
        add_msg(c, 1, 1, 0, 0, 1, text);
        path_pop(c, m);
    }
}

void build_policies(ctx_t *c)
{
    config_t *cfg = c->cfg;
    char W[120];
    for (size_t t = 0; t < cfg->n_tiers; t++) {
        const lim_rule_t *lv[1] = {cfg->tiers[t].rules};
        size_t nl[1] = {cfg->tiers[t].n_rules};
        lim_policy_t tmp;
        memset(&tmp, 0, sizeof tmp);
        int rc = lim_policy_resolve(&tmp, lv, nl, 1, cfg->n_endpoints);
        if (rc) {
            size_t m = path_key(c, "tiers");
            size_t m2 = path_key(c, cfg->tiers[t].name);
            snprintf(W, sizeof W, "tier %s", cfg_quote(c, cfg->tiers[t].name));
            policy_error(c, rc, W);
            path_pop(c, m2);
            path_pop(c, m);
        } else {
            lim_policy_free(&tmp);
        }
    }
    for (size_t i = 0; i < cfg->n_accounts; i++) {
        cfg_account_t *a = &cfg->accounts[i];
        const cfg_tier_t *t = &cfg->tiers[a->tier];
        const lim_rule_t *lv[2] = {t->rules, a->rules};
        size_t nl[2] = {t->n_rules, a->n_rules};
        int rc = lim_policy_resolve(&a->policy, lv, nl, 2, cfg->n_endpoints);
        size_t m = path_key(c, "accounts");
        path_key(c, a->name);
        snprintf(W, sizeof W, "account %s", cfg_quote(c, a->name));
        if (rc)
            policy_error(c, rc, W);
        else
            warn_noop_removals(c, W, a->rules, a->n_rules, NULL, 0, t->rules, t->n_rules);
        path_pop(c, m);
    }
    for (size_t i = 0; i < cfg->n_keys; i++) {
        cfg_key_t *k = &cfg->keys[i];
        cfg_account_t *a = &cfg->accounts[k->account];
        k->policy = &a->policy;
        if (!k->n_rules)
            continue;
        const cfg_tier_t *t = &cfg->tiers[a->tier];
        const lim_rule_t *lv[3] = {t->rules, a->rules, k->rules};
        size_t nl[3] = {t->n_rules, a->n_rules, k->n_rules};
        int rc = lim_policy_resolve(&k->own, lv, nl, 3, cfg->n_endpoints);
        int saved = c->file;
        c->file = c->ksrc[i].file;
        size_t m = c->plen;
        if (c->file == 0)
            path_key(c, "keys");
        path_index(c, c->ksrc[i].idx);
        snprintf(W, sizeof W, "key %s", cfg_quote(c, k->id));
        if (rc == 0) {
            k->policy = &k->own;
            warn_noop_removals(c, W, k->rules, k->n_rules, a->policy.rules, a->policy.n_rules,
                               NULL, 0);
        } else {
            policy_error(c, rc, W);
        }
        path_pop(c, m);
        c->file = saved;
    }
}
