/*
 * gateway/config/config.h: the configuration snapshot (docs/configuration.md).
 *
 * A snapshot is immutable once config_load() returns it and is shared by
 * every worker. Lifetime: reference counted. The loader returns it with one
 * reference; config_ref()/config_unref() may be called from any thread
 * (atomic). Everything reachable from it (strings, rules, policies) is owned
 * by it and freed by the last config_unref().
 */
#ifndef RW_GATEWAY_CONFIG_H
#define RW_GATEWAY_CONFIG_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "../../limiter/limits.h"

/* Methods, as bit values so an endpoint could hold several. */
enum {
    CFG_M_GET = 1 << 0,
    CFG_M_POST = 1 << 1,
    CFG_M_PUT = 1 << 2,
    CFG_M_DELETE = 1 << 3,
    CFG_M_PATCH = 1 << 4,
    CFG_M_HEAD = 1 << 5,
    CFG_M_OPTIONS = 1 << 6
};

typedef struct cfg_header {
    char *name;
    char *value; /* after ${ENV} substitution */
} cfg_header_t;

typedef struct cfg_backend {
    char *name;
    char *url;       /* as written, after ${ENV} */
    int tls;         /* https:// */
    char *host;      /* host name or address, no brackets */
    uint16_t port;   /* explicit or 80/443 */
    char *base_path; /* path part of url without trailing '/', "" if none */
    int64_t timeout_ms;          /* default 60000 */
    char *ca_file;               /* https: CA bundle to verify with (NULL: system store) */
    cfg_header_t *headers;       /* set on every proxied request */
    size_t n_headers;
} cfg_backend_t;

typedef struct cfg_map_entry {
    char *name;
    double value;       /* >= 0, fractions allowed */
} cfg_map_entry_t;

/* One factor of units: read at `pointer` in the request body. */
typedef struct cfg_factor {
    char *pointer;      /* RFC 6901, validated */
    double dflt;        /* when absent (default 1; >= 0, fractions allowed) */
    double min;         /* a smaller value counts as this (default 1, >= 0) */
    cfg_map_entry_t *map; /* string value -> number; NULL if none */
    size_t n_map;
} cfg_factor_t;

typedef struct cfg_job {
    char *id_pointer;      /* in the create response */
    uint32_t status_ep;    /* endpoint index */
    char *status_query;    /* query parameter carrying the job id */
    char *status_pointer;  /* status in the status response */
    char **done_values;
    size_t n_done;
    int64_t max_seconds;   /* default 3600 */
} cfg_job_t;

/* Reconcile pointers summed per answer, at most. */
#define RECONCILE_POINTERS_MAX 8

/* Where the backend reports the units it used: exactly one of pointers
 * (their values are added) and response_header is set. */
typedef struct cfg_reconcile {
    char **pointers;        /* RFC 6901, validated; NULL when by header */
    size_t n_pointers;
    char *response_header;  /* a head or trailer field; NULL when by pointer */
    int stream_include_usage; /* "stream": true bodies ask for the usage chunk */
} cfg_reconcile_t;

/* Endpoints that share one method and path, told apart by a string in the
 * JSON request body: the endpoint whose values hold the one at pointer
 * takes the request. */
typedef struct cfg_match {
    char *pointer;   /* RFC 6901, validated; the same on every endpoint of a route */
    char **values;   /* no value on two endpoints of one route */
    size_t n_values;
} cfg_match_t;

typedef struct cfg_endpoint {
    char *name;
    unsigned methods;      /* CFG_M_* bits (one method in the config) */
    char *path;            /* exact path, or prefix when is_prefix */
    int is_prefix;
    uint32_t backend;      /* index into backends */
    int64_t max_body_bytes; /* own value, else server.max_body_bytes */
    cfg_factor_t *units;   /* NULL/0: 1 unit per request */
    size_t n_units;
    int64_t price_request_micros; /* 0 if no price */
    int64_t price_unit_micros;
    cfg_job_t *job;              /* NULL if not a job endpoint */
    cfg_reconcile_t *reconcile;  /* NULL if none */
    cfg_match_t *match;          /* NULL: takes what its route's others do not */
    /* "queue": a request refused by a rolling window or a concurrency
     * limit waits up to queue_max_wait_ms for room; at most
     * queue_max_waiting wait per key on one worker. 0: no queue. */
    int64_t queue_max_wait_ms;
    int64_t queue_max_waiting;
} cfg_endpoint_t;

typedef struct cfg_tier {
    char *name;
    lim_rule_t *rules;
    size_t n_rules;
} cfg_tier_t;

typedef struct cfg_account {
    char *name;           /* <= 64 bytes, [A-Za-z0-9_.-] */
    uint32_t tier;        /* index into tiers */
    int disabled;
    lim_rule_t *rules;    /* own limits (overrides) */
    size_t n_rules;
    lim_policy_t policy;  /* tier + account, used by keys without own limits */
    int from_api;         /* made through the admin API, not the file */
    int64_t created_at;   /* API-made: unix seconds; 0 for the file's */
} cfg_account_t;

typedef struct cfg_key {
    char *id;             /* <= 64 bytes, [A-Za-z0-9_.-] */
    unsigned char sha256[32];
    uint32_t account;     /* index into accounts */
    int disabled;         /* the key's own flag (account flag checked apart) */
    lim_rule_t *rules;
    size_t n_rules;
    lim_policy_t own;     /* used when n_rules > 0 */
    const lim_policy_t *policy; /* &own or &accounts[account].policy */
    int from_api;         /* made through the admin API, not the file */
    int64_t created_at;   /* API-made: unix seconds; 0 for the file's */
    int64_t expires_at;   /* unix seconds; 0: never */
} cfg_key_t;

enum { CFG_STORE_MEMORY = 0, CFG_STORE_REDIS };
enum { CFG_ON_ERROR_DENY = 0, CFG_ON_ERROR_ALLOW };

typedef struct config {
    atomic_int refs;
    uint64_t generation; /* unique per load in this process, never 0 */
    char *path;

    struct {
        char *listen_host;  /* default "0.0.0.0" */
        uint16_t listen_port; /* default 8080 */
        int workers;        /* 0: one per core */
        char *tls_cert_file, *tls_key_file; /* NULL when no tls */
        int64_t max_body_bytes;     /* 10485760 */
        int64_t max_header_bytes;   /* 16384 */
        int64_t client_timeout_ms;  /* 30000 */
        int64_t drain_timeout_ms;   /* 30000 */
        int64_t max_connections;    /* client connections open at once; 0: no cap */
        int64_t max_connections_per_client; /* from one client address; 0: no cap */
        int64_t min_body_rate;      /* bytes/s once client_timeout_ms has passed; 1024; 0: off */
        int64_t body_buffer_bytes;  /* request bodies buffered at once, all workers; 512 MiB */
        char *usage_path;           /* "/v1/usage" */
        int ietf_headers, openai_headers, anthropic_headers;
    } server;

    struct {
        int enabled;        /* admin object present */
        char *listen_host;
        uint16_t listen_port;
        int has_token;
        unsigned char token_sha256[32];
    } admin;

    struct {
        int driver;         /* CFG_STORE_* (default memory) */
        char *host;         /* from address, default 127.0.0.1 */
        uint16_t port;      /* default 6379 */
        char *password;     /* NULL if none */
        int db;
        int64_t timeout_ms; /* 50 */
        int on_error;       /* CFG_ON_ERROR_* (deny) */
        char *key_prefix;   /* "rl:" */
        char *state_file;   /* memory store: API-made keys and accounts;
                             * default ratewall-state.json beside the config */
        /* sentinel: the primary is asked of these (NULL master: address). */
        char *sentinel_master;
        char *sentinel_password; /* the sentinels' own requirepass (NULL: none) */
        char **sentinel_hosts;
        uint16_t *sentinel_ports;
        size_t n_sentinels;
        /* cluster: seed nodes of a Redis Cluster (0: not a cluster). */
        char **cluster_hosts;
        uint16_t *cluster_ports;
        size_t n_cluster;
    } storage;

    cfg_backend_t *backends;   size_t n_backends;
    cfg_endpoint_t *endpoints; size_t n_endpoints;
    cfg_tier_t *tiers;         size_t n_tiers;
    cfg_account_t *accounts;   size_t n_accounts;
    cfg_key_t *keys;           size_t n_keys; /* config keys, then keys_file */
    char *keys_file;           /* resolved path (relative to the config's dir), NULL if none */

    /* Set by the loader's caller (gateway/main.c): the listener's TLS
     * context, freed with the snapshot by tls_free. */
    void *tls_ctx;
    void (*tls_free)(void *ctx);

    /* Lookup tables, private to the config room (built in index.c). */
    void *key_index;
    void *route_index;
} config_t;

/* Messages found while loading: errors and warnings, each one line
 * "FILE:LINE:COL: message" (warnings: "FILE:LINE:COL: warning: message"),
 * each list sorted in file order (keys_file after the main file). */
typedef struct cfg_messages {
    char **errors;   size_t n_errors;
    char **warnings; size_t n_warnings;
} cfg_messages_t;

/* Load and validate. Returns the snapshot (1 reference), or NULL when there
 * is any error; msgs is always filled and must be freed by the caller. */
config_t *config_load(const char *path, cfg_messages_t *msgs);
/* The same, with the keys and accounts made through the admin API merged in
 * (api: {"accounts": {NAME: {...}}, "keys": [{...}]}, the file's syntax plus
 * "created_at" on both and "expires_at" on keys, unix seconds; NULL: none).
 * An API account whose name the file defines is left out: the file's wins.
 * Their messages carry no position of their own (LINE:COL 1:1). */
struct json_t;
config_t *config_load_with(const char *path, const struct json_t *api, cfg_messages_t *msgs);
void cfg_messages_free(cfg_messages_t *m);

static inline config_t *config_ref(config_t *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}
void config_unref(config_t *c);

/* Key by digest: hash lookup, then a constant-time compare of the digest.
 * NULL when unknown. */
const cfg_key_t *config_find_key(const config_t *c, const unsigned char sha[32]);
/* Key by id (admin usage); NULL when unknown. */
const cfg_key_t *config_find_key_id(const config_t *c, const char *id);
const cfg_account_t *config_find_account(const config_t *c, const char *name);

/* Route: method (CFG_M_*) and the URI path (no query). Exact paths first,
 * then the longest matching prefix. Returns the endpoint index or -1. */
int config_route(const config_t *c, unsigned method, const char *path);

/* Limits whose endpoints (and so whose counter identity) differ between
 * two snapshots, at the same level (tier, account or key) with the same
 * metric, per and scope: their counters start afresh under next. note()
 * gets one line for each ("warning: ..."), at most CFG_NOTES_MAX and then
 * one line for the rest. Returns how many there are. */
#define CFG_NOTES_MAX 20
typedef void (*cfg_note_fn)(void *arg, const char *line);
size_t config_counter_changes(const config_t *old, const config_t *next, cfg_note_fn note,
                              void *arg);

/* For an endpoint that config_route returned: the pointer of the body
 * field its route is decided by, or NULL when the head decides alone. */
const char *config_route_pointer(const config_t *c, int ep);
/* The largest max_body_bytes among the endpoints of ep's route (the body
 * is read before the route's endpoint is known). */
int64_t config_route_max_body(const config_t *c, int ep);
/* The endpoint of ep's route that takes a body whose value at the route's
 * pointer is v (borrowed; NULL when absent): the one whose match values
 * hold the string v, else the one without match; -1 if none. */
int config_route_value(const config_t *c, int ep, const json_t *v);

/* The endpoint that `path` would match with any method (for 404 vs.
 * method mismatch); -1 if none. */
int config_route_any(const config_t *c, const char *path);

/* What a JSON value is, as error messages name it ("an object", "an
 * array", "a string", "an integer", "a number", "a boolean", "null"):
 * the config's errors and the admin API's use the same words. */
const char *json_kind(const json_t *v);

#endif
