/*
 * gateway/config/sections.c: the server, admin and storage sections, the name tables
 * of the named sections, and backends.
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
 * Sections.
 * ------------------------------------------------------------------------ */

void parse_server(ctx_t *c, json_t *o)
{
    static const char *const keys[] = {"listen", "workers", "tls", "max_body_bytes",
        "max_header_bytes", "client_timeout_ms", "drain_timeout_ms", "usage_path",
        "ietf_headers", "openai_headers", "anthropic_headers", "max_connections",
        "max_connections_per_client", "min_body_rate",
        "body_buffer_bytes", NULL};
    config_t *cfg = c->cfg;
    const char *W = "server";
    check_keys(c, o, keys, W);
    get_hostport(c, o, W, "listen", 0, &cfg->server.listen_host, &cfg->server.listen_port);
    int64_t x;
    if (get_int(c, o, W, "workers", 0, 0, MAX_WORKERS, &x) == 1)
        cfg->server.workers = (int)x;
    get_int(c, o, W, "max_body_bytes", 0, 1, INT64_MAX, &cfg->server.max_body_bytes);
    get_int(c, o, W, "max_header_bytes", 0, 1, INT32_MAX, &cfg->server.max_header_bytes);
    get_int(c, o, W, "client_timeout_ms", 0, 1, INT32_MAX, &cfg->server.client_timeout_ms);
    get_int(c, o, W, "drain_timeout_ms", 0, 0, INT32_MAX, &cfg->server.drain_timeout_ms);
    get_int(c, o, W, "max_connections", 0, 0, INT32_MAX, &cfg->server.max_connections);
    get_int(c, o, W, "max_connections_per_client", 0, 0, INT32_MAX,
            &cfg->server.max_connections_per_client);
    get_int(c, o, W, "min_body_rate", 0, 0, INT32_MAX, &cfg->server.min_body_rate);
    get_int(c, o, W, "body_buffer_bytes", 0, 0, INT64_MAX, &cfg->server.body_buffer_bytes);
    char *up = NULL;
    if (get_str(c, o, W, "usage_path", 0, &up) == 1) {
        if (up[0] != '/') {
            ferr(c, W, "usage_path", "must start with \"/\"");
            free(up);
        } else {
            free(cfg->server.usage_path);
            cfg->server.usage_path = up;
        }
    }
    get_bool(c, o, W, "ietf_headers", &cfg->server.ietf_headers);
    get_bool(c, o, W, "openai_headers", &cfg->server.openai_headers);
    get_bool(c, o, W, "anthropic_headers", &cfg->server.anthropic_headers);

    json_t *tls = get_obj(c, o, W, "tls", 0);
    if (tls) {
        static const char *const tkeys[] = {"cert_file", "key_file", NULL};
        size_t m = path_key(c, "tls");
        check_keys(c, tls, tkeys, "server.tls");
        get_file(c, tls, "server.tls", "cert_file", &cfg->server.tls_cert_file);
        get_file(c, tls, "server.tls", "key_file", &cfg->server.tls_key_file);
        path_pop(c, m);
    }
}

void parse_admin(ctx_t *c, json_t *o)
{
    static const char *const keys[] = {"listen", "token_sha256", NULL};
    config_t *cfg = c->cfg;
    const char *W = "admin";
    check_keys(c, o, keys, W);
    cfg->admin.enabled = 1;
    get_hostport(c, o, W, "listen", 1, &cfg->admin.listen_host, &cfg->admin.listen_port);
    if (get_digest(c, o, W, "token_sha256", 0, cfg->admin.token_sha256) == 1)
        cfg->admin.has_token = 1;
}

/* A non-empty array of "HOST:PORT" at o[name] (W names o). */
static void parse_nodes(ctx_t *c, json_t *o, const char *W, const char *name, const char *what,
                        char ***hosts, uint16_t **ports, size_t *count)
{
    json_t *nodes = get_arr(c, o, W, name, 1);
    size_t n = nodes ? json_array_size(nodes) : 0;
    if (nodes && n == 0)
        ferr(c, W, name, "must list at least one %s", what);
    if (!n)
        return;
    *hosts = calloc(n, sizeof **hosts);
    *ports = calloc(n, sizeof **ports);
    if (!*hosts || !*ports) {
        cfg_nomem(c);
        return;
    }
    size_t mk = path_key(c, name);
    for (size_t i = 0; i < n; i++) {
        size_t mi = path_index(c, i);
        if (hostport_value(c, json_array_get(nodes, i), W, name, &(*hosts)[*count],
                           &(*ports)[*count]) == 1)
            (*count)++;
        path_pop(c, mi);
    }
    path_pop(c, mk);
}

/* storage.sentinel: {"master": NAME, "addresses": ["HOST:PORT", ...],
 * "password"?: the sentinels' own (storage.password is the primary's)}. */
static void parse_sentinel(ctx_t *c, json_t *o)
{
    static const char *const keys[] = {"master", "addresses", "password", NULL};
    config_t *cfg = c->cfg;
    const char *W = "storage.sentinel";
    size_t m = path_key(c, "sentinel");
    check_keys(c, o, keys, W);
    if (get_str(c, o, W, "master", 1, &cfg->storage.sentinel_master) == 1 &&
        !*cfg->storage.sentinel_master)
        ferr(c, W, "master", "must not be empty");
    parse_nodes(c, o, W, "addresses", "sentinel", &cfg->storage.sentinel_hosts,
                &cfg->storage.sentinel_ports, &cfg->storage.n_sentinels);
    if (get_str(c, o, W, "password", 0, &cfg->storage.sentinel_password) == 1 &&
        !*cfg->storage.sentinel_password)
        ferr(c, W, "password", "must not be empty (leave it out when the sentinels have none)");
    path_pop(c, m);
}

void parse_storage(ctx_t *c, json_t *o)
{
    static const char *const keys[] = {"driver", "address", "sentinel", "cluster", "password",
        "db", "timeout_ms", "on_error", "key_prefix", "state_file", NULL};
    static const char *const drivers[] = {"memory", "redis", NULL};
    static const char *const onerr[] = {"deny", "allow", NULL};
    config_t *cfg = c->cfg;
    const char *W = "storage";
    check_keys(c, o, keys, W);
    int d = get_enum(c, o, W, "driver", 0, drivers, "driver", "memory or redis");
    if (d >= 0)
        cfg->storage.driver = d == 1 ? CFG_STORE_REDIS : CFG_STORE_MEMORY;
    get_hostport(c, o, W, "address", 0, &cfg->storage.host, &cfg->storage.port);
    get_str(c, o, W, "password", 0, &cfg->storage.password);
    int64_t x;
    if (get_int(c, o, W, "db", 0, 0, INT32_MAX, &x) == 1)
        cfg->storage.db = (int)x;
    get_int(c, o, W, "timeout_ms", 0, 1, INT32_MAX, &cfg->storage.timeout_ms);
    int e = get_enum(c, o, W, "on_error", 0, onerr, "on_error value", "deny or allow");
    if (e >= 0)
        cfg->storage.on_error = e == 1 ? CFG_ON_ERROR_ALLOW : CFG_ON_ERROR_DENY;
    set_str(c, o, W, "key_prefix", 0, &cfg->storage.key_prefix);
    char *sf = NULL;
    if (get_str(c, o, W, "state_file", 0, &sf) == 1) {
        free(cfg->storage.state_file);
        cfg->storage.state_file = join_dir(c->fname[0], sf);
        if (!cfg->storage.state_file)
            cfg_nomem(c);
    }
    free(sf);
    json_t *s = get_obj(c, o, W, "sentinel", 0);
    json_t *cl = get_arr(c, o, W, "cluster", 0);
    if (s && json_object_get(o, "address"))
        ferr(c, W, "sentinel", "give either \"address\" or \"sentinel\", not both");
    else if (cl && (s || json_object_get(o, "address")))
        ferr(c, W, "cluster", "give one of \"address\", \"sentinel\" or \"cluster\"");
    else if (s)
        parse_sentinel(c, s);
    else if (cl)
        /* storage.cluster: ["HOST:PORT", ...], seed nodes. */
        parse_nodes(c, o, W, "cluster", "seed node", &cfg->storage.cluster_hosts,
                    &cfg->storage.cluster_ports, &cfg->storage.n_cluster);
    if (cl && cfg->storage.db != 0)
        ferr(c, W, "db", "a Redis Cluster has database 0 only");
}

/* Collect the names of an object-of-objects section into a table and the
 * cfg array's name fields. Returns the number of entries. */
size_t collect_names(ctx_t *c, json_t *sec, strtab_t *t, const char *what,
                            name_slot_fn slot)
{
    const char *k;
    json_t *v;
    size_t i = 0;
    json_object_foreach(sec, k, v) {
        char **dst = slot(c->cfg, i);
        *dst = cfg_strdup(c, k);
        if (!*dst)
            return i;
        if (!valid_name(k)) {
            size_t m = path_key(c, k);
            kerr(c, NULL, "invalid %s name %s: " NAME_RULE, what, cfg_quote(c, k));
            path_pop(c, m);
        }
        if (st_put(t, *dst, (uint32_t)i, NULL) < 0)
            cfg_nomem(c);
        i++;
    }
    return i;
}

char **slot_backend(config_t *cfg, size_t i) { return &cfg->backends[i].name; }
char **slot_endpoint(config_t *cfg, size_t i) { return &cfg->endpoints[i].name; }
char **slot_tier(config_t *cfg, size_t i) { return &cfg->tiers[i].name; }
char **slot_account(config_t *cfg, size_t i) { return &cfg->accounts[i].name; }

void parse_backend(ctx_t *c, json_t *o, cfg_backend_t *b, const char *W)
{
    static const char *const keys[] = {"url", "timeout_ms", "headers", "ca_file", NULL};
    check_keys(c, o, keys, W);
    b->timeout_ms = 60000;
    if (json_object_get(o, "ca_file"))
        get_file(c, o, W, "ca_file", &b->ca_file);
    if (get_str(c, o, W, "url", 1, &b->url) == 1) {
        const char *why = parse_url(b->url, b);
        if (why)
            ferr(c, W, "url", "invalid URL %s: %s", cfg_quote(c, b->url), why);
        else if (!b->host || !b->base_path)
            cfg_nomem(c);

    }
    get_int(c, o, W, "timeout_ms", 0, 1, INT32_MAX, &b->timeout_ms);
    json_t *h = get_obj(c, o, W, "headers", 0);
    if (h && json_object_size(h)) {
        size_t m = path_key(c, "headers");
        b->headers = calloc(json_object_size(h), sizeof *b->headers);
        if (!b->headers) {
            cfg_nomem(c);
            path_pop(c, m);
            return;
        }
        const char *k;
        json_t *v;
        json_object_foreach(h, k, v) {
            size_t mk = path_key(c, k);
            cfg_header_t *hd = &b->headers[b->n_headers];
            if (!valid_header_name(k)) {
                kerr(c, W, "invalid header name %s", cfg_quote(c, k));
            } else if (str_value(c, v, W, k, &hd->value) == 1) {
                if (strpbrk(hd->value, "\r\n")) {
                    cfg_err(c, W, k, "a header value must not contain a line break");
                    free(hd->value);
                    hd->value = NULL;
                } else {
                    hd->name = cfg_strdup(c, k);
                    b->n_headers++;
                }
            }
            path_pop(c, mk);
        }
        path_pop(c, m);
    }
}

