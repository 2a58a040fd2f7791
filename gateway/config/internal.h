/*
 * gateway/config/internal.h: the loader's parsing context and the helpers the
 * files of gateway/config/ share. Private to this folder; the rest of the
 * tree sees only config.h.
 *
 * Shape of a load (load.c):
 *   read + json_loadb (syntax errors carry jansson's LINE:COL and stop here)
 *   -> walk the tree in a fixed order (server, admin, storage, backends,
 *      endpoints, tiers, accounts, keys, keys_file), checking every field and
 *      reporting every problem found; each message remembers the JSON
 *      pointer of what it is about, never a position
 *   -> if there is no error: resolve policies (limits.c), build the lookup
 *      tables (index.c)
 *   -> place the messages: one jsonpos scan per file turns pointers into
 *      LINE:COL; format "FILE:LINE:COL: text" in one place (emit_all,
 *      errors.c); sort by (file, line, col).
 *
 * Names of things (backends, endpoints, tiers, accounts) go into name tables
 * before their bodies are checked, so one bad object never makes every
 * reference to it an error too.
 *
 * Ownership: a ctx_t lives for one config_load call on its caller's stack;
 * it owns its path, messages, file texts and name tables (freed by
 * ctx_free), and points into the config_t it fills, which it hands to the
 * caller only when the load succeeds. Nothing here crosses an async call.
 */
#ifndef RATEWALL_CONFIG_INTERNAL_H
#define RATEWALL_CONFIG_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "config.h"

#define NAME_MAX_LEN 64
#define IDENT_MAX_LEN 96
#define MAX_WORKERS 256
#define NAME_RULE "use 1 to 64 characters of A-Z a-z 0-9 _ . -"

typedef struct strtab {
    const char **k; /* borrowed: owned by the snapshot */
    uint32_t *v;
    size_t cap, n;  /* cap is 0 or a power of two */
} strtab_t;

/* Digest table: slots keyed by the first 8 bytes of the SHA-256, the full
 * 32 bytes compared with CRYPTO_memcmp. */
typedef struct dslot {
    uint64_t h;
    uint32_t idx1; /* key index + 1; 0 = empty */
} dslot_t;

typedef struct digtab {
    dslot_t *s;
    size_t cap, n;
} digtab_t;

typedef struct keyidx {
    digtab_t dig;
    strtab_t ids;
    strtab_t accounts;
} keyidx_t;

/* Routes: exact paths in a hash of path groups; prefixes longest first. */
typedef struct rentry {
    char *path;      /* route key (see route_key), owned by the routes */
    size_t len;
    uint32_t ep;
    unsigned methods;
} rentry_t;

/* Endpoints of one route told apart by a body field (their matches). */
typedef struct rgroup {
    const char *pointer; /* borrowed from a member's match */
    strtab_t values;     /* match value -> endpoint index */
    int32_t fallback;    /* the member without match, -1 if none */
    int64_t max_body;    /* the largest max_body_bytes of the members */
} rgroup_t;

typedef struct routes {
    int32_t *ep_group; /* per endpoint: index into groups, -1 if its head decides */
    rgroup_t *groups;
    size_t n_groups;
    rentry_t *exact; /* sorted by path, so one path's endpoints are adjacent */
    size_t n_exact;
    uint32_t *slots; /* index + 1 of the first entry of a path group */
    size_t cap;
    rentry_t *prefix; /* sorted by length, longest first */
    size_t n_prefix;
} routes_t;

typedef struct msg {
    int file;     /* 0 main config, 1 keys file */
    int warning;
    int want_key;
    int line, col; /* known for syntax errors; else from ptr */
    char *ptr;     /* JSON pointer of what the message is about */
    char *text;
    size_t seq;
} msg_t;

typedef struct keysrc {
    int file;
    size_t idx; /* index in its JSON array */
} keysrc_t;

typedef struct ctx {
    config_t *cfg;
    int file;
    char *fname[2];
    char *text[2];
    size_t tlen[2];
    json_t *keys_root; /* the keys file's array */

    char *path; /* JSON pointer of the current value */
    size_t plen, pcap;

    msg_t *m;
    size_t nm, capm, n_err;
    int oom;

    char q[4][160]; /* ring of quoted strings for messages */
    unsigned qi;

    strtab_t t_backends, t_endpoints, t_tiers, t_accounts, t_keyids;
    digtab_t t_dig;
    keysrc_t *ksrc;
} ctx_t;
/* index.c */
void st_free(strtab_t *t);
int st_put(strtab_t *t, const char *k, uint32_t v, uint32_t *old);
int st_get(const strtab_t *t, const char *k, uint32_t *v);
int dt_put(digtab_t *t, const cfg_key_t *keys, uint32_t idx, uint32_t *dup);
void routes_free(routes_t *r);
routes_t *build_routes(const config_t *cfg);

/* The slot of section entry i's name in the snapshot (collect_names). */
typedef char **(*name_slot_fn)(config_t *cfg, size_t i);

/* errors.c */
void cfg_nomem(ctx_t *c);
char *cfg_strdup(ctx_t *c, const char *s);
int path_reserve(ctx_t *c, size_t extra);
size_t path_key(ctx_t *c, const char *key);
size_t path_index(ctx_t *c, size_t idx);
void path_pop(ctx_t *c, size_t mark);
const char *cfg_quote(ctx_t *c, const char *s);
void add_msg(ctx_t *c, int warning, int want_key, int line, int col,
                    int use_path, char *text);
void cfg_err(ctx_t *c, const char *where, const char *label, const char *fmt, ...);
void ferr(ctx_t *c, const char *where, const char *name, const char *fmt, ...);
void kerr(ctx_t *c, const char *where, const char *fmt, ...);
int emit_all(ctx_t *c, cfg_messages_t *out);

/* fields.c (json_kind is in config.h) */
void missing_field(ctx_t *c, const char *where, const char *name);
void type_err(ctx_t *c, const char *where, const char *name, const json_t *v,
                     const char *expected);
void check_keys(ctx_t *c, json_t *o, const char *const allowed[], const char *where);
int str_value(ctx_t *c, json_t *v, const char *where, const char *label, char **out);
int get_str(ctx_t *c, json_t *o, const char *where, const char *name, int required,
                   char **out);
int set_str(ctx_t *c, json_t *o, const char *where, const char *name, int required,
                   char **dst);
void range_err(ctx_t *c, const char *where, const char *name, int64_t v, int64_t lo,
                      int64_t hi);
int get_int(ctx_t *c, json_t *o, const char *where, const char *name, int required,
                   int64_t lo, int64_t hi, int64_t *out);
int get_bool(ctx_t *c, json_t *o, const char *where, const char *name, int *out);
json_t *get_obj(ctx_t *c, json_t *o, const char *where, const char *name, int required);
json_t *get_arr(ctx_t *c, json_t *o, const char *where, const char *name, int required);
int get_enum(ctx_t *c, json_t *o, const char *where, const char *name, int required,
                    const char *const words[], const char *what, const char *expect);
int money_value(ctx_t *c, json_t *v, const char *where, const char *label, int64_t *out);
int get_money(ctx_t *c, json_t *o, const char *where, const char *name, int64_t *out);
int valid_name(const char *s);
int get_pointer(ctx_t *c, json_t *o, const char *where, const char *name, int required,
                       char **out);
int valid_header_name(const char *s);
int hostport_value(ctx_t *c, json_t *v, const char *where, const char *label, char **host,
                   uint16_t *port);
int get_hostport(ctx_t *c, json_t *o, const char *where, const char *name, int required,
                        char **host, uint16_t *port);
const char *parse_url(const char *u, cfg_backend_t *b);
void get_file(ctx_t *c, json_t *o, const char *where, const char *name, char **dst);
int get_digest(ctx_t *c, json_t *o, const char *where, const char *name, int required,
                      unsigned char out[32]);

/* load.c */
char *subst_env(ctx_t *c, const char *s);
char *join_dir(const char *cfgpath, const char *rel);

/* sections.c */
void parse_server(ctx_t *c, json_t *o);
void parse_admin(ctx_t *c, json_t *o);
void parse_storage(ctx_t *c, json_t *o);
size_t collect_names(ctx_t *c, json_t *sec, strtab_t *t, const char *what,
                            name_slot_fn slot);
char **slot_backend(config_t *cfg, size_t i);
char **slot_endpoint(config_t *cfg, size_t i);
char **slot_tier(config_t *cfg, size_t i);
char **slot_account(config_t *cfg, size_t i);
void parse_backend(ctx_t *c, json_t *o, cfg_backend_t *b, const char *W);
int lookup_name(ctx_t *c, const strtab_t *t, json_t *o, const char *W, const char *name,
                  const char *what, uint32_t *out);

/* endpoints.c */
void parse_endpoint(ctx_t *c, json_t *o, cfg_endpoint_t *e, const char *W);
int route_key(const char *path, int exact, char *out, size_t len);
int same_route(const cfg_endpoint_t *a, const cfg_endpoint_t *b);
char *route_key_dup(const char *path, int exact);
void check_routes(ctx_t *c);

/* limits.c */
void parse_tier(ctx_t *c, json_t *o, cfg_tier_t *t, const char *W);
void parse_account(ctx_t *c, json_t *o, cfg_account_t *a, const char *W);
void parse_key(ctx_t *c, json_t *o, size_t ki, size_t pos);
void build_policies(ctx_t *c);

#endif
