/*
 * gateway/config/load.c: config_load: read the files, substitute ${ENV}, parse the
 * root in its fixed order, set defaults, free a snapshot or a failed load.
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

/* The string value v at the current path (already pushed). */

/* ------------------------------------------------------------------------
 * Files.
 * ------------------------------------------------------------------------ */

static char *read_file(const char *path, size_t *len, int *errnum)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        *errnum = errno;
        return NULL;
    }
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n == cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0)
            break;
    }
    if (!buf) {
        *errnum = ENOMEM;
    } else if (ferror(f)) {
        *errnum = errno ? errno : EIO;
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = n;
    return buf;
}

/* Parse the text of file `which`; a syntax error is reported with
 * jansson's own LINE:COL. */
static json_t *parse_text(ctx_t *c, int which)
{
    json_error_t je;
    json_t *root = json_loadb(c->text[which], c->tlen[which], JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        int saved = c->file;
        char *t;
        c->file = which;
        if (asprintf(&t, "invalid JSON: %s", je.text) < 0)
            t = NULL;
        add_msg(c, 0, 0, je.line > 0 ? je.line : 1, je.column > 0 ? je.column : 1, 0, t);
        c->file = saved;
    }
    return root;
}

/* ------------------------------------------------------------------------
 * Free.
 * ------------------------------------------------------------------------ */

static void rules_free(lim_rule_t *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(r[i].eps);
        free(r[i].ep_names);
        free(r[i].ident);
    }
    free(r);
}

static void config_free(config_t *cfg)
{
    if (!cfg)
        return;
    free(cfg->path);
    free(cfg->server.listen_host);
    free(cfg->server.tls_cert_file);
    free(cfg->server.tls_key_file);
    free(cfg->server.usage_path);
    free(cfg->admin.listen_host);
    free(cfg->storage.host);
    free(cfg->storage.password);
    free(cfg->storage.key_prefix);
    free(cfg->storage.state_file);
    free(cfg->storage.sentinel_master);
    free(cfg->storage.sentinel_password);
    for (size_t i = 0; i < cfg->storage.n_sentinels; i++)
        free(cfg->storage.sentinel_hosts[i]);
    free(cfg->storage.sentinel_hosts);
    free(cfg->storage.sentinel_ports);
    for (size_t i = 0; i < cfg->storage.n_cluster; i++)
        free(cfg->storage.cluster_hosts[i]);
    free(cfg->storage.cluster_hosts);
    free(cfg->storage.cluster_ports);
    for (size_t i = 0; i < cfg->n_backends; i++) {
        cfg_backend_t *b = &cfg->backends[i];
        free(b->name);
        free(b->url);
        free(b->ca_file);
        free(b->host);
        free(b->base_path);
        for (size_t k = 0; k < b->n_headers; k++) {
            free(b->headers[k].name);
            free(b->headers[k].value);
        }
        free(b->headers);
    }
    free(cfg->backends);
    for (size_t i = 0; i < cfg->n_endpoints; i++) {
        cfg_endpoint_t *e = &cfg->endpoints[i];
        free(e->name);
        free(e->path);
        for (size_t k = 0; k < e->n_units; k++) {
            free(e->units[k].pointer);
            for (size_t j = 0; j < e->units[k].n_map; j++)
                free(e->units[k].map[j].name);
            free(e->units[k].map);
        }
        free(e->units);
        if (e->job) {
            free(e->job->id_pointer);
            free(e->job->status_query);
            free(e->job->status_pointer);
            for (size_t k = 0; k < e->job->n_done; k++)
                free(e->job->done_values[k]);
            free(e->job->done_values);
            free(e->job);
        }
        if (e->reconcile) {
            for (size_t k = 0; k < e->reconcile->n_pointers; k++)
                free(e->reconcile->pointers[k]);
            free(e->reconcile->pointers);
            free(e->reconcile->response_header);
            free(e->reconcile);
        }
        if (e->match) {
            free(e->match->pointer);
            for (size_t k = 0; k < e->match->n_values; k++)
                free(e->match->values[k]);
            free(e->match->values);
            free(e->match);
        }
    }
    free(cfg->endpoints);
    for (size_t i = 0; i < cfg->n_tiers; i++) {
        free(cfg->tiers[i].name);
        rules_free(cfg->tiers[i].rules, cfg->tiers[i].n_rules);
    }
    free(cfg->tiers);
    for (size_t i = 0; i < cfg->n_accounts; i++) {
        free(cfg->accounts[i].name);
        rules_free(cfg->accounts[i].rules, cfg->accounts[i].n_rules);
        lim_policy_free(&cfg->accounts[i].policy);
    }
    free(cfg->accounts);
    for (size_t i = 0; i < cfg->n_keys; i++) {
        free(cfg->keys[i].id);
        rules_free(cfg->keys[i].rules, cfg->keys[i].n_rules);
        lim_policy_free(&cfg->keys[i].own);
    }
    free(cfg->keys);
    free(cfg->keys_file);
    keyidx_t *ki = cfg->key_index;
    if (ki) {
        free(ki->dig.s);
        st_free(&ki->ids);
        st_free(&ki->accounts);
        free(ki);
    }
    routes_free(cfg->route_index);
    free(cfg);
}

void config_unref(config_t *c)
{
    if (c && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1) {
        if (c->tls_ctx && c->tls_free)
            c->tls_free(c->tls_ctx);
        config_free(c);
    }
}

void cfg_messages_free(cfg_messages_t *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_errors; i++)
        free(m->errors[i]);
    for (size_t i = 0; i < m->n_warnings; i++)
        free(m->warnings[i]);
    free(m->errors);
    free(m->warnings);
    memset(m, 0, sizeof *m);
}

static void ctx_free(ctx_t *c)
{
    for (size_t i = 0; i < c->nm; i++) {
        free(c->m[i].ptr);
        free(c->m[i].text);
    }
    free(c->m);
    free(c->path);
    for (int f = 0; f < 2; f++) {
        free(c->fname[f]);
        free(c->text[f]);
    }
    json_decref(c->keys_root);
    st_free(&c->t_backends);
    st_free(&c->t_endpoints);
    st_free(&c->t_tiers);
    st_free(&c->t_accounts);
    st_free(&c->t_keyids);
    free(c->t_dig.s);
    free(c->ksrc);
}

/* ------------------------------------------------------------------------
 * Load.
 * ------------------------------------------------------------------------ */

static int set_defaults(config_t *cfg)
{
    atomic_init(&cfg->refs, 1);
    static atomic_ulong generations;
    cfg->generation = atomic_fetch_add(&generations, 1) + 1;
    cfg->server.listen_host = strdup("0.0.0.0");
    cfg->server.listen_port = 8080;
    cfg->server.max_body_bytes = 10485760;
    cfg->server.max_header_bytes = 16384;
    cfg->server.client_timeout_ms = 30000;
    cfg->server.drain_timeout_ms = 30000;
    cfg->server.min_body_rate = 1024;
    cfg->server.body_buffer_bytes = (int64_t)512 * 1024 * 1024;
    cfg->server.usage_path = strdup("/v1/usage");
    cfg->storage.driver = CFG_STORE_MEMORY;
    cfg->storage.host = strdup("127.0.0.1");
    cfg->storage.port = 6379;
    cfg->storage.timeout_ms = 50;
    cfg->storage.on_error = CFG_ON_ERROR_DENY;
    cfg->storage.key_prefix = strdup("rl:");
    return cfg->server.listen_host && cfg->server.usage_path && cfg->storage.host &&
                   cfg->storage.key_prefix
               ? 0
               : -1;
}

/* An object-of-objects section: names first, then each body. */
static void parse_section(ctx_t *c, json_t *root, const char *name, const char *what,
                          void **arr, size_t elsize, size_t *count, strtab_t *t,
                          name_slot_fn slot,
                          void (*body)(ctx_t *, json_t *, void *, const char *))
{
    json_t *sec = get_obj(c, root, NULL, name, 0);
    if (!sec || !json_object_size(sec))
        return;
    size_t n = json_object_size(sec);
    *arr = calloc(n, elsize);
    if (!*arr) {
        cfg_nomem(c);
        return;
    }
    size_t m = path_key(c, name);
    *count = collect_names(c, sec, t, what, slot);
    const char *k;
    json_t *v;
    size_t i = 0;
    json_object_foreach(sec, k, v) {
        if (i >= *count)
            break;
        char W[120];
        snprintf(W, sizeof W, "%s %s", what, cfg_quote(c, k));
        size_t mk = path_key(c, k);
        if (!json_is_object(v))
            cfg_err(c, W, NULL, "expected an object, got %s", json_kind(v));
        else
            body(c, v, (char *)*arr + i * elsize, W);
        path_pop(c, mk);
        i++;
    }
    path_pop(c, m);
}

static void body_backend(ctx_t *c, json_t *o, void *p, const char *W) { parse_backend(c, o, p, W); }
static void body_endpoint(ctx_t *c, json_t *o, void *p, const char *W) { parse_endpoint(c, o, p, W); }
static void body_tier(ctx_t *c, json_t *o, void *p, const char *W) { parse_tier(c, o, p, W); }
static void body_account(ctx_t *c, json_t *o, void *p, const char *W) { parse_account(c, o, p, W); }

static void parse_root(ctx_t *c, json_t *root)
{
    static const char *const top[] = {"server", "admin", "storage", "backends", "endpoints",
        "tiers", "accounts", "keys", "keys_file", NULL};
    config_t *cfg = c->cfg;
    check_keys(c, root, top, NULL);
    json_t *o;
    size_t m;
    if ((o = get_obj(c, root, NULL, "server", 0))) {
        m = path_key(c, "server");
        parse_server(c, o);
        path_pop(c, m);
    }
    if ((o = get_obj(c, root, NULL, "admin", 0))) {
        m = path_key(c, "admin");
        parse_admin(c, o);
        path_pop(c, m);
    }
    if ((o = get_obj(c, root, NULL, "storage", 0))) {
        m = path_key(c, "storage");
        parse_storage(c, o);
        path_pop(c, m);
    }
    parse_section(c, root, "backends", "backend", (void **)&cfg->backends,
                  sizeof *cfg->backends, &cfg->n_backends, &c->t_backends, slot_backend,
                  body_backend);
    parse_section(c, root, "endpoints", "endpoint", (void **)&cfg->endpoints,
                  sizeof *cfg->endpoints, &cfg->n_endpoints, &c->t_endpoints, slot_endpoint,
                  body_endpoint);
    check_routes(c);
    parse_section(c, root, "tiers", "tier", (void **)&cfg->tiers, sizeof *cfg->tiers,
                  &cfg->n_tiers, &c->t_tiers, slot_tier, body_tier);
    parse_section(c, root, "accounts", "account", (void **)&cfg->accounts,
                  sizeof *cfg->accounts, &cfg->n_accounts, &c->t_accounts, slot_account,
                  body_account);

    /* Keys: the config's own, then keys_file's. */
    json_t *keys = get_arr(c, root, NULL, "keys", 0);
    char *kf = NULL;
    if (get_str(c, root, NULL, "keys_file", 0, &kf) == 1) {
        cfg->keys_file = join_dir(c->fname[0], kf);
        c->fname[1] = cfg->keys_file ? strdup(cfg->keys_file) : NULL;
        if (!c->fname[1]) {
            cfg_nomem(c);
        } else {
            int e = 0;
            c->text[1] = read_file(c->fname[1], &c->tlen[1], &e);
            if (!c->text[1]) {
                ferr(c, NULL, "keys_file", "cannot read %s: %s", cfg_quote(c, c->fname[1]), strerror(e));
            } else {
                c->keys_root = parse_text(c, 1);
                if (c->keys_root && !json_is_array(c->keys_root)) {
                    c->file = 1;
                    cfg_err(c, NULL, NULL, "a keys file must be a JSON array of key objects, got %s",
                        json_kind(c->keys_root));
                    c->file = 0;
                    json_decref(c->keys_root);
                    c->keys_root = NULL;
                }
            }
        }
    }
    free(kf);
    size_t n0 = keys ? json_array_size(keys) : 0;
    size_t n1 = c->keys_root ? json_array_size(c->keys_root) : 0;
    if (n0 + n1 == 0)
        return;
    cfg->keys = calloc(n0 + n1, sizeof *cfg->keys);
    c->ksrc = calloc(n0 + n1, sizeof *c->ksrc);
    if (!cfg->keys || !c->ksrc) {
        cfg_nomem(c);
        return;
    }
    cfg->n_keys = n0 + n1;
    if (n0) {
        m = path_key(c, "keys");
        for (size_t i = 0; i < n0; i++) {
            size_t mi = path_index(c, i);
            c->ksrc[i] = (keysrc_t){0, i};
            parse_key(c, json_array_get(keys, i), i, i);
            path_pop(c, mi);
        }
        path_pop(c, m);
    }
    if (n1) {
        c->file = 1; /* pointers now into the keys file's array */
        path_pop(c, 0);
        for (size_t i = 0; i < n1; i++) {
            size_t mi = path_index(c, i);
            c->ksrc[n0 + i] = (keysrc_t){1, i};
            parse_key(c, json_array_get(c->keys_root, i), n0 + i, i);
            path_pop(c, mi);
        }
        c->file = 0;
    }
}

/* API-made items in the file's syntax: their bookkeeping fields go. */
static json_t *api_body(const json_t *o)
{
    json_t *b = json_deep_copy(o);
    if (b && json_is_object(b)) {
        json_object_del(b, "created_at");
        json_object_del(b, "expires_at");
    }
    return b;
}

static int64_t api_time(const json_t *o, const char *name)
{
    json_t *v = json_is_object(o) ? json_object_get(o, name) : NULL;
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : 0;
}

/* Put the API's accounts and keys into the file's tree before the walk:
 * accounts after the file's (a name the file has stays the file's), keys
 * after the file's own. A section of the wrong type is left for the walk
 * to report. Returns the names of the accounts taken in (an object, name ->
 * API object; NULL when out of memory) and sets *first_key to the index the
 * API's keys start at. */
static json_t *merge_api(ctx_t *c, json_t *root, const json_t *api, size_t *first_key)
{
    json_t *taken = json_object();
    *first_key = SIZE_MAX;
    if (!taken) {
        cfg_nomem(c);
        return NULL;
    }
    json_t *aa = json_object_get(api, "accounts");
    if (json_is_object(aa) && json_object_size(aa)) {
        json_t *acc = json_object_get(root, "accounts");
        if (!acc) {
            acc = json_object();
            if (!acc || json_object_set_new(root, "accounts", acc))
                cfg_nomem(c);
        }
        const char *k;
        json_t *v;
        json_object_foreach(aa, k, v) {
            if (json_is_object(acc) && !json_object_get(acc, k)) {
                if (json_object_set_new(acc, k, api_body(v)) ||
                    json_object_set(taken, k, v))
                    cfg_nomem(c);
            }
        }
    }
    json_t *ka = json_object_get(api, "keys");
    if (json_is_array(ka) && json_array_size(ka)) {
        json_t *keys = json_object_get(root, "keys");
        if (!keys) {
            keys = json_array();
            if (!keys || json_object_set_new(root, "keys", keys))
                cfg_nomem(c);
        }
        if (json_is_array(keys)) {
            *first_key = json_array_size(keys);
            size_t i;
            json_t *v;
            json_array_foreach(ka, i, v) {
                if (json_array_append_new(keys, api_body(v)))
                    cfg_nomem(c);
            }
        }
    }
    return taken;
}

/* Mark what came from the API, with its times. */
static void mark_api(config_t *cfg, const json_t *api, const json_t *taken, size_t first_key)
{
    for (size_t i = 0; taken && i < cfg->n_accounts; i++) {
        json_t *v = cfg->accounts[i].name ? json_object_get(taken, cfg->accounts[i].name) : NULL;
        if (v) {
            cfg->accounts[i].from_api = 1;
            cfg->accounts[i].created_at = api_time(v, "created_at");
        }
    }
    json_t *ka = json_object_get(api, "keys");
    for (size_t i = 0; first_key != SIZE_MAX && i < json_array_size(ka); i++) {
        if (first_key + i >= cfg->n_keys)
            break;
        cfg_key_t *k = &cfg->keys[first_key + i];
        json_t *v = json_array_get(ka, i);
        k->from_api = 1;
        k->created_at = api_time(v, "created_at");
        k->expires_at = api_time(v, "expires_at");
    }
}

config_t *config_load(const char *path, cfg_messages_t *msgs)
{
    return config_load_with(path, NULL, msgs);
}

config_t *config_load_with(const char *path, const json_t *api, cfg_messages_t *msgs)
{
    memset(msgs, 0, sizeof *msgs);
    ctx_t c;
    memset(&c, 0, sizeof c);
    config_t *cfg = calloc(1, sizeof *cfg);
    c.cfg = cfg;
    c.fname[0] = strdup(path);
    if (!cfg || !c.fname[0] || set_defaults(cfg) || !(cfg->path = strdup(path)) ||
        path_reserve(&c, 64)) {
        config_free(cfg);
        ctx_free(&c);
        msgs->errors = calloc(1, sizeof(char *));
        if (msgs->errors && asprintf(&msgs->errors[0], "%s:1:1: out of memory", path) >= 0)
            msgs->n_errors = 1;
        return NULL;
    }
    c.path[0] = '\0';

    int e = 0;
    json_t *root = NULL;
    c.text[0] = read_file(path, &c.tlen[0], &e);
    if (!c.text[0]) {
        char *t;
        if (asprintf(&t, "cannot read the file: %s", strerror(e)) < 0)
            t = NULL;
        add_msg(&c, 0, 0, 1, 1, 0, t);
    } else {
        root = parse_text(&c, 0);
    }
    if (root) {
        if (!json_is_object(root))
            cfg_err(&c, NULL, NULL, "the configuration must be a JSON object, got %s",
                json_kind(root));
        else {
            json_t *taken = NULL;
            size_t first_key = SIZE_MAX;
            if (api)
                taken = merge_api(&c, root, api, &first_key);
            parse_root(&c, root);
            if (api)
                mark_api(cfg, api, taken, first_key);
            json_decref(taken);
        }
        json_decref(root);
    }
    if (!cfg->storage.state_file && !(cfg->storage.state_file =
                                          join_dir(path, "ratewall-state.json")))
        cfg_nomem(&c);
    if (c.n_err == 0 && !c.oom) {
        build_policies(&c);
        if (c.n_err == 0 && !c.oom) {
            keyidx_t *ki = calloc(1, sizeof *ki);
            cfg->route_index = build_routes(cfg);
            if (!ki || !cfg->route_index) {
                free(ki);
                cfg_nomem(&c);
            } else {
                /* the tables move into the snapshot */
                ki->dig = c.t_dig;
                ki->ids = c.t_keyids;
                ki->accounts = c.t_accounts;
                memset(&c.t_dig, 0, sizeof c.t_dig);
                memset(&c.t_keyids, 0, sizeof c.t_keyids);
                memset(&c.t_accounts, 0, sizeof c.t_accounts);
                cfg->key_index = ki;
            }
        }
    }
    if (emit_all(&c, msgs)) {
        cfg_messages_free(msgs);
        msgs->errors = calloc(1, sizeof(char *));
        if (msgs->errors && asprintf(&msgs->errors[0], "%s:1:1: out of memory", path) >= 0)
            msgs->n_errors = 1;
        c.n_err = 1;
    }
    int failed = c.n_err > 0 || c.oom;
    ctx_free(&c);
    if (failed) {
        config_free(cfg);
        return NULL;
    }
    return cfg;
}
