/*
 * gateway/config/config.c: load, validate and index the configuration (README "Configuration").
 *
 * Shape of a load:
 *   read + json_loadb (syntax errors carry jansson's LINE:COL and stop here)
 *   -> walk the tree in a fixed order (server, admin, storage, backends,
 *      endpoints, tiers, accounts, keys, keys_file), checking every field and
 *      reporting every problem found; each message remembers the JSON
 *      pointer of what it is about, never a position
 *   -> if there is no error: resolve policies, build the lookup tables
 *   -> place the messages: one jsonpos scan per file turns pointers into
 *      LINE:COL; format "FILE:LINE:COL: text" in one place (emit_all);
 *      sort by (file, line, col).
 *
 * Names of things (backends, endpoints, tiers, accounts) go into name tables
 * before their bodies are checked, so one bad object never makes every
 * reference to it an error too.
 */
#include "config.h"

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

#include "jsonpos.h"

#define NAME_MAX_LEN 64
#define IDENT_MAX_LEN 96
#define MAX_WORKERS 256

/* ------------------------------------------------------------------------
 * Small tables: name -> index (open addressing, FNV-1a), digest -> key.
 * ------------------------------------------------------------------------ */

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

typedef struct strtab {
    const char **k; /* borrowed: owned by the snapshot */
    uint32_t *v;
    size_t cap, n;  /* cap is 0 or a power of two */
} strtab_t;

static void st_free(strtab_t *t)
{
    free(t->k);
    free(t->v);
    memset(t, 0, sizeof *t);
}

static int st_find_slot(const strtab_t *t, const char *k, size_t *slot)
{
    size_t mask = t->cap - 1, i = (size_t)fnv1a(k) & mask;
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
static int st_put(strtab_t *t, const char *k, uint32_t v, uint32_t *old)
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

static int st_get(const strtab_t *t, const char *k, uint32_t *v)
{
    if (!t->cap)
        return 0;
    size_t s;
    if (!st_find_slot(t, k, &s))
        return 0;
    *v = t->v[s];
    return 1;
}

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
static int dt_put(digtab_t *t, const cfg_key_t *keys, uint32_t idx, uint32_t *dup)
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

typedef struct routes {
    rentry_t *exact; /* sorted by path, so one path's endpoints are adjacent */
    size_t n_exact;
    uint32_t *slots; /* index + 1 of the first entry of a path group */
    size_t cap;
    rentry_t *prefix; /* sorted by length, longest first */
    size_t n_prefix;
} routes_t;

/* ------------------------------------------------------------------------
 * Load context and messages.
 * ------------------------------------------------------------------------ */

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

static void nomem(ctx_t *c)
{
    c->oom = 1;
}

static char *xstrdup(ctx_t *c, const char *s)
{
    char *d = strdup(s ? s : "");
    if (!d)
        nomem(c);
    return d;
}

/* Path: push a member or an index, pop back to a mark. */
static int path_reserve(ctx_t *c, size_t extra)
{
    if (c->plen + extra + 1 <= c->pcap)
        return 0;
    size_t cap = c->pcap ? c->pcap : 128;
    while (c->plen + extra + 1 > cap)
        cap *= 2;
    char *p = realloc(c->path, cap);
    if (!p) {
        nomem(c);
        return -1;
    }
    c->path = p;
    c->pcap = cap;
    return 0;
}

static size_t pk(ctx_t *c, const char *key)
{
    size_t mark = c->plen, need = 1;
    for (const char *s = key; *s; s++)
        need += (*s == '~' || *s == '/') ? 2 : 1;
    if (path_reserve(c, need))
        return mark;
    c->path[c->plen++] = '/';
    for (const char *s = key; *s; s++) {
        if (*s == '~' || *s == '/') {
            c->path[c->plen++] = '~';
            c->path[c->plen++] = *s == '~' ? '0' : '1';
        } else {
            c->path[c->plen++] = *s;
        }
    }
    c->path[c->plen] = '\0';
    return mark;
}

static size_t pi(ctx_t *c, size_t idx)
{
    char b[32];
    size_t mark = c->plen;
    int n = snprintf(b, sizeof b, "/%zu", idx);
    if (path_reserve(c, (size_t)n))
        return mark;
    memcpy(c->path + c->plen, b, (size_t)n + 1);
    c->plen += (size_t)n;
    return mark;
}

static void pp(ctx_t *c, size_t mark)
{
    c->plen = mark;
    if (c->path)
        c->path[mark] = '\0';
}

/* A user string, quoted and escaped for a one-line message. The result
 * lives until four more calls. */
static const char *Q(ctx_t *c, const char *s)
{
    char *o = c->q[c->qi++ % 4];
    size_t n = 0, cap = sizeof c->q[0];
    o[n++] = '"';
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (n + 8 >= cap) {
            memcpy(o + n, "...", 3);
            n += 3;
            break;
        }
        if (ch == '"' || ch == '\\') {
            o[n++] = '\\';
            o[n++] = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f) {
            n += (size_t)snprintf(o + n, cap - n, "\\u%04x", ch);
        } else {
            o[n++] = (char)ch;
        }
    }
    o[n++] = '"';
    o[n] = '\0';
    return o;
}

static void add_msg(ctx_t *c, int warning, int want_key, int line, int col,
                    int use_path, char *text)
{
    if (!text) {
        nomem(c);
        return;
    }
    if (c->nm == c->capm) {
        size_t cap = c->capm ? c->capm * 2 : 16;
        msg_t *m = realloc(c->m, cap * sizeof *m);
        if (!m) {
            free(text);
            nomem(c);
            return;
        }
        c->m = m;
        c->capm = cap;
    }
    msg_t *m = &c->m[c->nm];
    memset(m, 0, sizeof *m);
    m->file = c->file;
    m->warning = warning;
    m->want_key = want_key;
    m->line = line;
    m->col = col;
    m->text = text;
    m->seq = c->nm;
    if (use_path) {
        m->ptr = strdup(c->path ? c->path : "");
        if (!m->ptr) {
            free(text);
            nomem(c);
            return;
        }
    }
    c->nm++;
    if (!warning)
        c->n_err++;
}

/* The one message builder: "[WHERE: ]["LABEL": ]TEXT", about the current
 * path (its value, or its member key when want_key). */
static void vreport(ctx_t *c, int warning, int want_key, const char *where,
                    const char *label, const char *fmt, va_list ap)
{
    char body[768], head[400];
    vsnprintf(body, sizeof body, fmt, ap);
    size_t h = 0;
    head[0] = '\0';
    if (where && *where)
        h += (size_t)snprintf(head + h, sizeof head - h, "%s: ", where);
    if (label && h < sizeof head)
        snprintf(head + h, sizeof head - h, "\"%s\": ", label);
    char *text;
    if (asprintf(&text, "%s%s", head, body) < 0)
        text = NULL;
    add_msg(c, warning, want_key, 0, 0, 1, text);
}

/* Error at the current value. */
__attribute__((format(printf, 4, 5)))
static void err(ctx_t *c, const char *where, const char *label, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(c, 0, 0, where, label, fmt, ap);
    va_end(ap);
}

/* Error at field `name` of the current object (its value). */
__attribute__((format(printf, 4, 5)))
static void ferr(ctx_t *c, const char *where, const char *name, const char *fmt, ...)
{
    size_t m = pk(c, name);
    va_list ap;
    va_start(ap, fmt);
    vreport(c, 0, 0, where, name, fmt, ap);
    va_end(ap);
    pp(c, m);
}

/* Error at the current member's key. */
__attribute__((format(printf, 3, 4)))
static void kerr(ctx_t *c, const char *where, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(c, 0, 1, where, NULL, fmt, ap);
    va_end(ap);
}


/* ------------------------------------------------------------------------
 * Typed field access. Each getter reads field `name` of object `o` (the
 * current path is o), reports what is wrong, and returns 1 (ok), 0 (absent)
 * or -1 (present but invalid, reported).
 * ------------------------------------------------------------------------ */

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

static void missing(ctx_t *c, const char *where, const char *name)
{
    err(c, where, NULL, "missing \"%s\"", name);
}

static void type_err(ctx_t *c, const char *where, const char *name, const json_t *v,
                     const char *expected)
{
    ferr(c, where, name, "expected %s, got %s", expected, json_kind(v));
}

/* Unknown members of object o: error at each key. */
static void check_keys(ctx_t *c, json_t *o, const char *const allowed[], const char *where)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        size_t i;
        for (i = 0; allowed[i]; i++)
            if (strcmp(allowed[i], k) == 0)
                break;
        if (allowed[i])
            continue;
        size_t m = pk(c, k);
        if (where && *where)
            kerr(c, NULL, "unknown key %s in %s", Q(c, k), where);
        else
            kerr(c, NULL, "unknown key %s at top level", Q(c, k));
        pp(c, m);
    }
}

static int valid_env_name(const char *s, size_t n)
{
    if (n == 0 || !((s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
        return 0;
    for (size_t i = 1; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '_'))
            return 0;
    }
    return 1;
}

/* ${NAME} substitution of the string at the current path. Returns a new
 * string, or NULL (reported, or out of memory). */
static char *subst_env(ctx_t *c, const char *s)
{
    if (!strstr(s, "${"))
        return xstrdup(c, s);
    size_t cap = strlen(s) + 1, n = 0;
    char *o = malloc(cap);
    int bad = 0;
    if (!o) {
        nomem(c);
        return NULL;
    }
    const char *p = s;
    while (*p) {
        const char *d = strstr(p, "${");
        size_t lit = d ? (size_t)(d - p) : strlen(p);
        const char *val = NULL;
        size_t vlen = 0;
        if (d) {
            const char *e = strchr(d + 2, '}');
            if (!e) {
                err(c, NULL, NULL, "\"${\" without a closing \"}\"");
                bad = 1;
                break;
            }
            size_t nl = (size_t)(e - d - 2);
            char name[256];
            if (!valid_env_name(d + 2, nl) || nl >= sizeof name) {
                char tmp[256];
                snprintf(tmp, sizeof tmp, "%.*s", (int)(nl < 200 ? nl : 200), d + 2);
                err(c, NULL, NULL, "invalid environment variable name %s", Q(c, tmp));
                bad = 1;
            } else {
                memcpy(name, d + 2, nl);
                name[nl] = '\0';
                val = getenv(name);
                if (!val) {
                    err(c, NULL, NULL, "environment variable %s is not set", name);
                    bad = 1;
                } else {
                    vlen = strlen(val);
                }
            }
            p = e + 1;
        } else {
            p += lit;
        }
        if (n + lit + vlen + 1 > cap) {
            while (n + lit + vlen + 1 > cap)
                cap *= 2;
            char *no = realloc(o, cap);
            if (!no) {
                free(o);
                nomem(c);
                return NULL;
            }
            o = no;
        }
        memcpy(o + n, d ? d - lit : p - lit, lit);
        n += lit;
        if (val) {
            memcpy(o + n, val, vlen);
            n += vlen;
        }
    }
    if (bad) {
        free(o);
        return NULL;
    }
    o[n] = '\0';
    return o;
}

/* The string value v at the current path (already pushed). */
static int str_value(ctx_t *c, json_t *v, const char *where, const char *label, char **out)
{
    if (!json_is_string(v)) {
        err(c, where, label, "expected a string, got %s", json_kind(v));
        return -1;
    }
    char *s = subst_env(c, json_string_value(v));
    if (!s)
        return -1;
    *out = s;
    return 1;
}

static int get_str(ctx_t *c, json_t *o, const char *where, const char *name, int required,
                   char **out)
{
    json_t *v = json_object_get(o, name);
    if (!v) {
        if (required) {
            missing(c, where, name);
            return -1;
        }
        return 0;
    }
    size_t m = pk(c, name);
    int rc = str_value(c, v, where, name, out);
    pp(c, m);
    return rc;
}

/* Replace *dst (a default) with field name when present and valid. */
static int set_str(ctx_t *c, json_t *o, const char *where, const char *name, int required,
                   char **dst)
{
    char *s = NULL;
    int rc = get_str(c, o, where, name, required, &s);
    if (rc == 1) {
        free(*dst);
        *dst = s;
    }
    return rc;
}

static void range_err(ctx_t *c, const char *where, const char *name, int64_t v, int64_t lo,
                      int64_t hi)
{
    if (hi < INT32_MAX)
        ferr(c, where, name, "must be between %" PRId64 " and %" PRId64 ", got %" PRId64, lo,
             hi, v);
    else if (v > hi)
        ferr(c, where, name, "must be at most %" PRId64 ", got %" PRId64, hi, v);
    else if (lo == 0)
        ferr(c, where, name, "must not be negative, got %" PRId64, v);
    else if (lo == 1)
        ferr(c, where, name, "must be positive, got %" PRId64, v);
    else
        ferr(c, where, name, "must be at least %" PRId64 ", got %" PRId64, lo, v);
}

static int get_int(ctx_t *c, json_t *o, const char *where, const char *name, int required,
                   int64_t lo, int64_t hi, int64_t *out)
{
    json_t *v = json_object_get(o, name);
    if (!v) {
        if (required) {
            missing(c, where, name);
            return -1;
        }
        return 0;
    }
    if (!json_is_integer(v)) {
        type_err(c, where, name, v, "an integer");
        return -1;
    }
    int64_t x = (int64_t)json_integer_value(v);
    if (x < lo || x > hi) {
        range_err(c, where, name, x, lo, hi);
        return -1;
    }
    *out = x;
    return 1;
}

static int get_bool(ctx_t *c, json_t *o, const char *where, const char *name, int *out)
{
    json_t *v = json_object_get(o, name);
    if (!v)
        return 0;
    if (!json_is_boolean(v)) {
        type_err(c, where, name, v, "true or false");
        return -1;
    }
    *out = json_is_true(v);
    return 1;
}

/* Field name must be of type t (or absent); what names it in messages. */
static json_t *get_typed(ctx_t *c, json_t *o, const char *where, const char *name, int required,
                         json_type t, const char *what)
{
    json_t *v = json_object_get(o, name);
    if (!v) {
        if (required)
            missing(c, where, name);
        return NULL;
    }
    if (json_typeof(v) != t) {
        type_err(c, where, name, v, what);
        return NULL;
    }
    return v;
}

static json_t *get_obj(ctx_t *c, json_t *o, const char *where, const char *name, int required)
{
    return get_typed(c, o, where, name, required, JSON_OBJECT, "an object");
}

static json_t *get_arr(ctx_t *c, json_t *o, const char *where, const char *name, int required)
{
    return get_typed(c, o, where, name, required, JSON_ARRAY, "an array");
}

/* One of a fixed list of words. Returns the index, -1 (reported) or -2 (absent). */
static int get_enum(ctx_t *c, json_t *o, const char *where, const char *name, int required,
                    const char *const words[], const char *what, const char *expect)
{
    char *s = NULL;
    int rc = get_str(c, o, where, name, required, &s);
    if (rc <= 0)
        return rc == 0 ? -2 : -1;
    for (int i = 0; words[i]; i++) {
        if (strcmp(words[i], s) == 0) {
            free(s);
            return i;
        }
    }
    ferr(c, where, name, "unknown %s %s: expected %s", what, Q(c, s), expect);
    free(s);
    return -1;
}

/* Money: "12.345678" -> micros. */
enum { MONEY_OK = 0, MONEY_SYNTAX, MONEY_NEGATIVE, MONEY_DECIMALS, MONEY_RANGE };

static int parse_money(const char *s, int64_t *out)
{
    const char *p = s;
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    int64_t whole = 0, frac = 0;
    int nd = 0, nf = 0, big = 0;
    for (; *p >= '0' && *p <= '9'; p++, nd++) {
        if (whole > (INT64_MAX / 1000000 - 9) / 10)
            big = 1;
        else
            whole = whole * 10 + (*p - '0');
    }
    if (nd == 0)
        return MONEY_SYNTAX;
    if (*p == '.') {
        p++;
        for (; *p >= '0' && *p <= '9'; p++, nf++)
            if (nf < 6)
                frac = frac * 10 + (*p - '0');
        if (nf == 0)
            return MONEY_SYNTAX;
    }
    if (*p)
        return MONEY_SYNTAX;
    if (neg && (whole || frac || big))
        return MONEY_NEGATIVE;
    if (nf > 6)
        return MONEY_DECIMALS;
    if (big)
        return MONEY_RANGE;
    for (int i = nf; i < 6; i++)
        frac *= 10;
    *out = whole * 1000000 + frac;
    return MONEY_OK;
}

/* The money value v at the current path. */
static int money_value(ctx_t *c, json_t *v, const char *where, const char *label, int64_t *out)
{
    if (!json_is_string(v)) {
        err(c, where, label, "expected a decimal string such as \"0.50\", got %s", json_kind(v));
        return -1;
    }
    char *s = subst_env(c, json_string_value(v));
    if (!s)
        return -1;
    int rc = parse_money(s, out);
    switch (rc) {
    case MONEY_OK: break;
    case MONEY_SYNTAX:
        err(c, where, label, "invalid amount %s: expected a decimal such as \"0.0015\"", Q(c, s));
        break;
    case MONEY_NEGATIVE: err(c, where, label, "amount %s must not be negative", Q(c, s)); break;
    case MONEY_DECIMALS:
        err(c, where, label, "amount %s has more than 6 decimal places", Q(c, s));
        break;
    default: err(c, where, label, "amount %s is too large", Q(c, s)); break;
    }
    free(s);
    return rc == MONEY_OK ? 1 : -1;
}

static int get_money(ctx_t *c, json_t *o, const char *where, const char *name, int64_t *out)
{
    json_t *v = json_object_get(o, name);
    if (!v)
        return 0;
    size_t m = pk(c, name);
    int rc = money_value(c, v, where, name, out);
    pp(c, m);
    return rc;
}

/* ------------------------------------------------------------------------
 * Value checks.
 * ------------------------------------------------------------------------ */

static int valid_name(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char ch = s[n];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '.' || ch == '-'))
            return 0;
    }
    return n >= 1 && n <= NAME_MAX_LEN;
}

#define NAME_RULE "use 1 to 64 characters of A-Z a-z 0-9 _ . -"

/* RFC 6901: "" or "/..." with "~" only as "~0" or "~1". NULL if valid. */
static const char *pointer_problem(const char *p)
{
    if (*p && *p != '/')
        return "must be empty or start with \"/\"";
    for (; *p; p++)
        if (*p == '~' && p[1] != '0' && p[1] != '1')
            return "\"~\" must be followed by 0 or 1";
    return NULL;
}

static int get_pointer(ctx_t *c, json_t *o, const char *where, const char *name, int required,
                       char **out)
{
    char *s = NULL;
    int rc = get_str(c, o, where, name, required, &s);
    if (rc != 1)
        return rc;
    const char *why = pointer_problem(s);
    if (why) {
        ferr(c, where, name, "invalid JSON pointer %s: %s", Q(c, s), why);
        free(s);
        return -1;
    }
    *out = s;
    return 1;
}

static int is_tchar(unsigned char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static int valid_header_name(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!is_tchar((unsigned char)*s))
            return 0;
    return 1;
}

static int parse_port(const char *s, uint16_t *port)
{
    if (!*s)
        return -1;
    long v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9' || p - s >= 5)
            return -1;
        v = v * 10 + (*p - '0');
    }
    if (v < 1 || v > 65535)
        return -1;
    *port = (uint16_t)v;
    return 0;
}

/* "host:port" or "[v6]:port". NULL if valid. */
static const char *parse_hostport(const char *s, char **host, uint16_t *port)
{
    const char *colon;
    size_t hl;
    const char *h = s;
    if (*s == '[') {
        const char *e = strchr(s, ']');
        if (!e || e[1] != ':')
            return "expected HOST:PORT or [IPV6]:PORT";
        h = s + 1;
        hl = (size_t)(e - h);
        colon = e + 1;
        if (!hl || memchr(h, '[', hl))
            return "expected HOST:PORT or [IPV6]:PORT";
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return "expected HOST:PORT or [IPV6]:PORT";
        hl = (size_t)(colon - s);
        if (!hl || memchr(s, ':', hl))
            return "expected HOST:PORT or [IPV6]:PORT";
    }
    for (size_t i = 0; i < hl; i++)
        if ((unsigned char)h[i] <= ' ' || h[i] == '/' || h[i] == '@')
            return "expected HOST:PORT or [IPV6]:PORT";
    if (parse_port(colon + 1, port))
        return "the port must be a number from 1 to 65535";
    *host = strndup(h, hl);
    return NULL;
}

static int get_hostport(ctx_t *c, json_t *o, const char *where, const char *name, int required,
                        char **host, uint16_t *port)
{
    char *s = NULL;
    int rc = get_str(c, o, where, name, required, &s);
    if (rc != 1)
        return rc;
    char *hs = NULL;
    uint16_t pt = 0;
    const char *why = parse_hostport(s, &hs, &pt);
    if (why) {
        ferr(c, where, name, "invalid address %s: %s", Q(c, s), why);
        free(s);
        return -1;
    }
    free(s);
    if (!hs) {
        nomem(c);
        return -1;
    }
    free(*host);
    *host = hs;
    *port = pt;
    return 1;
}

/* http(s)://host[:port][/base]. NULL if valid. */
static const char *parse_url(const char *u, cfg_backend_t *b)
{
    const char *p;
    if (strncasecmp(u, "http://", 7) == 0) {
        b->tls = 0;
        p = u + 7;
    } else if (strncasecmp(u, "https://", 8) == 0) {
        b->tls = 1;
        p = u + 8;
    } else {
        return "the scheme must be http:// or https://";
    }
    if (strpbrk(u, "?#"))
        return "a query or fragment is not allowed";
    for (const char *q = u; *q; q++)
        if ((unsigned char)*q <= ' ' || *q == 0x7f)
            return "spaces and control characters are not allowed";
    size_t alen = strcspn(p, "/");
    if (memchr(p, '@', alen))
        return "user information is not allowed";
    const char *h = p, *pe = p + alen, *colon;
    size_t hl;
    if (*h == '[') {
        const char *e = memchr(h, ']', alen);
        if (!e)
            return "unterminated \"[\" in the host";
        hl = (size_t)(e - h - 1);
        h++;
        colon = e + 1 < pe ? e + 1 : NULL;
        if (colon && *colon != ':')
            return "expected \":PORT\" after \"]\"";
    } else {
        colon = memchr(h, ':', alen);
        hl = colon ? (size_t)(colon - h) : alen;
    }
    if (hl == 0)
        return "the host is missing";
    uint16_t port = b->tls ? 443 : 80;
    if (colon) {
        char ps[16];
        size_t pl = (size_t)(pe - colon - 1);
        if (pl == 0 || pl >= sizeof ps)
            return "the port must be a number from 1 to 65535";
        memcpy(ps, colon + 1, pl);
        ps[pl] = '\0';
        if (parse_port(ps, &port))
            return "the port must be a number from 1 to 65535";
    }
    b->host = strndup(h, hl);
    size_t bl = strlen(pe);
    while (bl && pe[bl - 1] == '/')
        bl--;
    b->base_path = strndup(pe, bl);
    b->port = port;
    return NULL;
}

/* ------------------------------------------------------------------------
 * Sections.
 * ------------------------------------------------------------------------ */

static char *join_dir(const char *cfgpath, const char *rel);

/* A file named in the config: relative to the config's directory. */
static void get_file(ctx_t *c, json_t *o, const char *where, const char *name, char **dst)
{
    char *s = NULL;
    if (get_str(c, o, where, name, 1, &s) != 1)
        return;
    *dst = join_dir(c->fname[0], s);
    if (!*dst)
        nomem(c);
    free(s);
}

static void parse_server(ctx_t *c, json_t *o)
{
    static const char *const keys[] = {"listen", "workers", "tls", "max_body_bytes",
        "max_header_bytes", "client_timeout_ms", "drain_timeout_ms", "usage_path",
        "ietf_headers", "openai_headers", "max_connections", "min_body_rate",
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

    json_t *tls = get_obj(c, o, W, "tls", 0);
    if (tls) {
        static const char *const tkeys[] = {"cert_file", "key_file", NULL};
        size_t m = pk(c, "tls");
        check_keys(c, tls, tkeys, "server.tls");
        get_file(c, tls, "server.tls", "cert_file", &cfg->server.tls_cert_file);
        get_file(c, tls, "server.tls", "key_file", &cfg->server.tls_key_file);
        pp(c, m);
    }
}

static int parse_digest_hex(const char *s, unsigned char out[32])
{
    if (strlen(s) != 64)
        return -1;
    for (int i = 0; i < 32; i++) {
        int v = 0;
        for (int k = 0; k < 2; k++) {
            char ch = s[2 * i + k];
            v <<= 4;
            if (ch >= '0' && ch <= '9')
                v |= ch - '0';
            else if (ch >= 'a' && ch <= 'f')
                v |= ch - 'a' + 10;
            else if (ch >= 'A' && ch <= 'F')
                v |= ch - 'A' + 10;
            else
                return -1;
        }
        out[i] = (unsigned char)v;
    }
    return 0;
}

static int get_digest(ctx_t *c, json_t *o, const char *where, const char *name, int required,
                      unsigned char out[32])
{
    char *s = NULL;
    int rc = get_str(c, o, where, name, required, &s);
    if (rc != 1)
        return rc;
    if (parse_digest_hex(s, out)) {
        ferr(c, where, name, "expected 64 hexadecimal digits (a SHA-256), got %s", Q(c, s));
        free(s);
        return -1;
    }
    free(s);
    return 1;
}

static void parse_admin(ctx_t *c, json_t *o)
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

static void parse_storage(ctx_t *c, json_t *o)
{
    static const char *const keys[] = {"driver", "address", "password", "db", "timeout_ms",
        "on_error", "key_prefix", NULL};
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
}

/* Collect the names of an object-of-objects section into a table and the
 * cfg array's name fields. Returns the number of entries. */
typedef char **(*name_slot_fn)(config_t *cfg, size_t i);

static size_t collect_names(ctx_t *c, json_t *sec, strtab_t *t, const char *what,
                            name_slot_fn slot)
{
    const char *k;
    json_t *v;
    size_t i = 0;
    json_object_foreach(sec, k, v) {
        char **dst = slot(c->cfg, i);
        *dst = xstrdup(c, k);
        if (!*dst)
            return i;
        if (!valid_name(k)) {
            size_t m = pk(c, k);
            kerr(c, NULL, "invalid %s name %s: " NAME_RULE, what, Q(c, k));
            pp(c, m);
        }
        if (st_put(t, *dst, (uint32_t)i, NULL) < 0)
            nomem(c);
        i++;
    }
    return i;
}

static char **slot_backend(config_t *cfg, size_t i) { return &cfg->backends[i].name; }
static char **slot_endpoint(config_t *cfg, size_t i) { return &cfg->endpoints[i].name; }
static char **slot_tier(config_t *cfg, size_t i) { return &cfg->tiers[i].name; }
static char **slot_account(config_t *cfg, size_t i) { return &cfg->accounts[i].name; }

static void parse_backend(ctx_t *c, json_t *o, cfg_backend_t *b, const char *W)
{
    static const char *const keys[] = {"url", "timeout_ms", "headers", "ca_file", NULL};
    check_keys(c, o, keys, W);
    b->timeout_ms = 60000;
    if (json_object_get(o, "ca_file"))
        get_file(c, o, W, "ca_file", &b->ca_file);
    if (get_str(c, o, W, "url", 1, &b->url) == 1) {
        const char *why = parse_url(b->url, b);
        if (why)
            ferr(c, W, "url", "invalid URL %s: %s", Q(c, b->url), why);
        else if (!b->host || !b->base_path)
            nomem(c);

    }
    get_int(c, o, W, "timeout_ms", 0, 1, INT32_MAX, &b->timeout_ms);
    json_t *h = get_obj(c, o, W, "headers", 0);
    if (h && json_object_size(h)) {
        size_t m = pk(c, "headers");
        b->headers = calloc(json_object_size(h), sizeof *b->headers);
        if (!b->headers) {
            nomem(c);
            pp(c, m);
            return;
        }
        const char *k;
        json_t *v;
        json_object_foreach(h, k, v) {
            size_t mk = pk(c, k);
            cfg_header_t *hd = &b->headers[b->n_headers];
            if (!valid_header_name(k)) {
                kerr(c, W, "invalid header name %s", Q(c, k));
            } else if (str_value(c, v, W, k, &hd->value) == 1) {
                if (strpbrk(hd->value, "\r\n")) {
                    err(c, W, k, "a header value must not contain a line break");
                    free(hd->value);
                    hd->value = NULL;
                } else {
                    hd->name = xstrdup(c, k);
                    b->n_headers++;
                }
            }
            pp(c, mk);
        }
        pp(c, m);
    }
}

static const char *const method_names[] = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD",
    "OPTIONS", NULL};

static int lookup(ctx_t *c, const strtab_t *t, json_t *o, const char *W, const char *name,
                  const char *what, uint32_t *out)
{
    char *s = NULL;
    int rc = get_str(c, o, W, name, 1, &s);
    if (rc != 1)
        return rc;
    if (!st_get(t, s, out)) {
        ferr(c, W, name, "no %s named %s", what, Q(c, s));
        rc = -1;
    }
    free(s);
    return rc;
}

static void parse_units(ctx_t *c, json_t *arr, cfg_endpoint_t *e, const char *epW)
{
    size_t n = json_array_size(arr);
    if (!n)
        return;
    e->units = calloc(n, sizeof *e->units);
    if (!e->units) {
        nomem(c);
        return;
    }
    e->n_units = n;
    for (size_t i = 0; i < n; i++) {
        static const char *const keys[] = {"pointer", "default", "min", "map", NULL};
        char W[300];
        snprintf(W, sizeof W, "%s units[%zu]", epW, i);
        json_t *f = json_array_get(arr, i);
        size_t m = pi(c, i);
        cfg_factor_t *fa = &e->units[i];
        fa->dflt = 1;
        fa->min = 1;
        if (!json_is_object(f)) {
            err(c, epW, NULL, "units[%zu]: expected an object, got %s", i, json_kind(f));
            pp(c, m);
            continue;
        }
        check_keys(c, f, keys, W);
        get_pointer(c, f, W, "pointer", 1, &fa->pointer);
        get_int(c, f, W, "default", 0, 0, INT64_MAX, &fa->dflt);
        json_t *mv = json_object_get(f, "min");
        if (mv && !json_is_number(mv))
            type_err(c, W, "min", mv, "a number");
        else if (mv && json_number_value(mv) < 0)
            ferr(c, W, "min", "must not be negative, got %g", json_number_value(mv));
        else if (mv && json_number_value(mv) > (double)LIM_UNITS_MAX)
            ferr(c, W, "min", "must be at most %" PRId64 ", got %g", (int64_t)LIM_UNITS_MAX,
                 json_number_value(mv));
        else if (mv)
            fa->min = json_number_value(mv);
        json_t *map = get_obj(c, f, W, "map", 0);
        if (map) {
            size_t mm = pk(c, "map");
            size_t nm = json_object_size(map);
            if (!nm) {
                err(c, W, "map", "must not be empty");
            } else if (!(fa->map = calloc(nm, sizeof *fa->map))) {
                nomem(c);
            } else {
                const char *k;
                json_t *v;
                json_object_foreach(map, k, v) {
                    size_t mk = pk(c, k);
                    if (!json_is_integer(v))
                        err(c, W, "map", "%s: expected an integer, got %s", Q(c, k),
                            json_kind(v));
                    else if (json_integer_value(v) < 0)
                        err(c, W, "map", "%s: must not be negative, got %" PRId64, Q(c, k),
                            (int64_t)json_integer_value(v));
                    else {
                        fa->map[fa->n_map].name = xstrdup(c, k);
                        fa->map[fa->n_map].value = (int64_t)json_integer_value(v);
                        fa->n_map++;
                    }
                    pp(c, mk);
                }
            }
            pp(c, mm);
        }
        pp(c, m);
    }
}

static void parse_job(ctx_t *c, json_t *o, cfg_endpoint_t *e, const char *epW)
{
    static const char *const keys[] = {"id_pointer", "status_endpoint", "status_query",
        "status_pointer", "done_values", "max_seconds", NULL};
    char W[300];
    snprintf(W, sizeof W, "%s job", epW);
    cfg_job_t *j = calloc(1, sizeof *j);
    if (!j) {
        nomem(c);
        return;
    }
    e->job = j;
    j->max_seconds = 3600;
    check_keys(c, o, keys, W);
    get_pointer(c, o, W, "id_pointer", 1, &j->id_pointer);
    lookup(c, &c->t_endpoints, o, W, "status_endpoint", "endpoint", &j->status_ep);
    get_str(c, o, W, "status_query", 1, &j->status_query);
    get_pointer(c, o, W, "status_pointer", 1, &j->status_pointer);
    json_t *dv = get_arr(c, o, W, "done_values", 1);
    if (dv) {
        size_t n = json_array_size(dv);
        if (!n) {
            ferr(c, W, "done_values", "must not be empty");
        } else if (!(j->done_values = calloc(n, sizeof(char *)))) {
            nomem(c);
        } else {
            size_t m = pk(c, "done_values");
            for (size_t i = 0; i < n; i++) {
                size_t mi = pi(c, i);
                if (str_value(c, json_array_get(dv, i), W, "done_values", &j->done_values[j->n_done]) == 1)
                    j->n_done++;
                pp(c, mi);
            }
            pp(c, m);
        }
    }
    get_int(c, o, W, "max_seconds", 0, 1, INT32_MAX, &j->max_seconds);
}

static void parse_reconcile(ctx_t *c, json_t *o, cfg_endpoint_t *e, const char *epW)
{
    static const char *const keys[] = {"response_pointer", "response_header",
        "stream_include_usage", NULL};
    char W[300];
    snprintf(W, sizeof W, "%s reconcile", epW);
    cfg_reconcile_t *r = calloc(1, sizeof *r);
    if (!r) {
        nomem(c);
        return;
    }
    e->reconcile = r;
    check_keys(c, o, keys, W);
    get_bool(c, o, W, "stream_include_usage", &r->stream_include_usage);
    json_t *ptr = json_object_get(o, "response_pointer");
    int a = ptr != NULL;
    int b = json_object_get(o, "response_header") != NULL;
    if (a == b) {
        err(c, W, NULL, "give exactly one of \"response_pointer\" and \"response_header\"");
        return;
    }
    if (json_is_array(ptr)) {
        size_t n = json_array_size(ptr);
        size_t m = pk(c, "response_pointer");
        if (n == 0 || n > RECONCILE_POINTERS_MAX) {
            err(c, W, "response_pointer", "a list of 1 to %d pointers, got %zu",
                RECONCILE_POINTERS_MAX, n);
        } else if (!(r->pointers = calloc(n, sizeof *r->pointers))) {
            nomem(c);
        } else {
            for (size_t i = 0; i < n; i++) {
                size_t mi = pi(c, i);
                char *s = NULL;
                const char *why;
                if (str_value(c, json_array_get(ptr, i), W, "response_pointer", &s) != 1) {
                    /* reported */
                } else if ((why = pointer_problem(s))) {
                    err(c, W, "response_pointer", "invalid JSON pointer %s: %s", Q(c, s), why);
                    free(s);
                } else {
                    for (size_t k = 0; k < r->n_pointers && s; k++) {
                        if (strcmp(r->pointers[k], s) == 0) {
                            err(c, W, "response_pointer", "%s is listed twice", Q(c, s));
                            free(s);
                            s = NULL;
                        }
                    }
                    if (s)
                        r->pointers[r->n_pointers++] = s;
                }
                pp(c, mi);
            }
        }
        pp(c, m);
    } else if (ptr) {
        char *s = NULL;
        if (!json_is_string(ptr)) {
            type_err(c, W, "response_pointer", ptr, "a JSON pointer or a list of them");
        } else if (get_pointer(c, o, W, "response_pointer", 0, &s) == 1) {
            if (!(r->pointers = calloc(1, sizeof *r->pointers))) {
                free(s);
                nomem(c);
            } else {
                r->pointers[0] = s;
                r->n_pointers = 1;
            }
        }
    }
    if (get_str(c, o, W, "response_header", 0, &r->response_header) == 1 &&
        !valid_header_name(r->response_header))
        ferr(c, W, "response_header", "invalid header name %s", Q(c, r->response_header));
    if (b && r->stream_include_usage)
        ferr(c, W, "stream_include_usage",
             "the usage chunk is read through \"response_pointer\", not a header");
}

/* Whether an endpoint's path is in the form a request path is normalized
 * to (gateway/request.c): else no request could ever match it. */
static int path_is_normal(const char *p)
{
    if (strstr(p, "//") || strchr(p, '\\'))
        return 0;
    for (const char *s = p; *s; s++) {
        if (*s == '/' && s[1] == '.' &&
            (s[2] == '/' || s[2] == '\0' || (s[2] == '.' && (s[3] == '/' || s[3] == '\0'))))
            return 0;
        if (*s == '%') {
            if (!isxdigit((unsigned char)s[1]) || !isxdigit((unsigned char)s[2]) ||
                islower((unsigned char)s[1]) || islower((unsigned char)s[2]))
                return 0;
            char hex[3] = {s[1], s[2], 0};
            int v = (int)strtol(hex, NULL, 16);
            if (isalnum(v) || v == '-' || v == '.' || v == '_' || v == '~' || v == '/' ||
                v == '\\' || v == 0)
                return 0;
            s += 2;
        }
    }
    return 1;
}

static void parse_endpoint(ctx_t *c, json_t *o, cfg_endpoint_t *e, const char *W)
{
    static const char *const keys[] = {"method", "path", "path_prefix", "backend",
        "max_body_bytes", "units", "price", "job", "reconcile", NULL};
    check_keys(c, o, keys, W);
    e->max_body_bytes = c->cfg->server.max_body_bytes;
    int m = get_enum(c, o, W, "method", 1, method_names, "method",
                     "GET, POST, PUT, DELETE, PATCH, HEAD or OPTIONS");
    if (m >= 0)
        e->methods = 1u << m;
    int has_p = json_object_get(o, "path") != NULL;
    int has_pp = json_object_get(o, "path_prefix") != NULL;
    if (has_p && has_pp) {
        ferr(c, W, "path_prefix", "give either \"path\" or \"path_prefix\", not both");
    } else if (!has_p && !has_pp) {
        err(c, W, NULL, "missing \"path\" (or \"path_prefix\")");
    } else {
        const char *f = has_p ? "path" : "path_prefix";
        if (get_str(c, o, W, f, 1, &e->path) == 1) {
            e->is_prefix = has_pp;
            if (e->path[0] != '/')
                ferr(c, W, f, "must start with \"/\", got %s", Q(c, e->path));
            else if (strpbrk(e->path, "?# \t\r\n"))
                ferr(c, W, f, "must be a plain path (no query, fragment or spaces), got %s",
                     Q(c, e->path));
            else if (!path_is_normal(e->path))
                ferr(c, W, f,
                     "must be a normalized path (no \"//\", \".\" or \"..\" segment, "
                     "backslash, or \"%%\" but in an upper-case encoding of a reserved "
                     "character), "
                     "got %s: requests are normalized before routing and could never match",
                     Q(c, e->path));
        }
    }
    lookup(c, &c->t_backends, o, W, "backend", "backend", &e->backend);
    get_int(c, o, W, "max_body_bytes", 0, 1, INT64_MAX, &e->max_body_bytes);
    json_t *u = get_arr(c, o, W, "units", 0);
    if (u) {
        size_t mk = pk(c, "units");
        parse_units(c, u, e, W);
        pp(c, mk);
    }
    json_t *pr = get_obj(c, o, W, "price", 0);
    if (pr) {
        static const char *const pkeys[] = {"per_request", "per_unit", NULL};
        char PW[300];
        snprintf(PW, sizeof PW, "%s price", W);
        size_t mk = pk(c, "price");
        check_keys(c, pr, pkeys, PW);
        get_money(c, pr, PW, "per_request", &e->price_request_micros);
        get_money(c, pr, PW, "per_unit", &e->price_unit_micros);
        pp(c, mk);
    }
    json_t *j = get_obj(c, o, W, "job", 0);
    if (j) {
        size_t mk = pk(c, "job");
        parse_job(c, j, e, W);
        pp(c, mk);
    }
    json_t *r = get_obj(c, o, W, "reconcile", 0);
    if (r) {
        size_t mk = pk(c, "reconcile");
        parse_reconcile(c, r, e, W);
        pp(c, mk);
    }
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
static int route_key(const char *path, int exact, char *out, size_t len)
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

static char *route_key_dup(const char *path, int exact)
{
    size_t n = strlen(path) + 1;
    char *k = malloc(n);
    if (k && route_key(path, exact, k, n) != 0) {
        free(k);
        k = NULL;
    }
    return k;
}

/* Two endpoints may not answer the same method on the same path. */
static void check_routes(ctx_t *c)
{
    config_t *cfg = c->cfg;
    for (size_t j = 0; j < cfg->n_endpoints; j++) {
        cfg_endpoint_t *b = &cfg->endpoints[j];
        if (!b->path || !b->methods)
            continue;
        for (size_t i = 0; i < j; i++) {
            cfg_endpoint_t *a = &cfg->endpoints[i];
            if (!a->path || a->is_prefix != b->is_prefix || !(a->methods & b->methods))
                continue;
            char *ka = route_key_dup(a->path, !a->is_prefix);
            char *kb = route_key_dup(b->path, !b->is_prefix);
            int same = ka && kb && strcmp(ka, kb) == 0;
            free(ka);
            free(kb);
            if (!same)
                continue;
            size_t m = pk(c, "endpoints");
            pk(c, b->name);
            int mi = __builtin_ctz(b->methods);
            char W[120];
            snprintf(W, sizeof W, "endpoint %s", Q(c, b->name));
            ferr(c, W, b->is_prefix ? "path_prefix" : "path",
                 "%s %s%s is already routed to endpoint %s%s", method_names[mi], b->path,
                 b->is_prefix ? "*" : "", Q(c, a->name),
                 strcmp(a->path, b->path) == 0
                     ? ""
                     : " (paths are routed regardless of case, \";params\" and a "
                       "trailing \"/\")");
            pp(c, m);
            break;
        }
    }
}

/* ------------------------------------------------------------------------
 * Limits.
 * ------------------------------------------------------------------------ */

enum { LV_TIER, LV_ACCOUNT, LV_KEY };

static const char *const metric_words[] = {"requests", "units", "spend", "concurrent", NULL};
static const char *const per_words[] = {"second", "minute", "hour", "day", "month", NULL};
static const char *const scope_words[] = {"key", "account", NULL};
static const lim_per_t per_values[] = {LIM_PER_SECOND, LIM_PER_MINUTE, LIM_PER_HOUR,
    LIM_PER_DAY, LIM_PER_MONTH};

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* metric:per:scope:EPS (EPS "*" or sorted names comma-joined; when that
 * would pass 96 bytes, "h" + 16 hex of the names' SHA-256). */
static char *make_ident(ctx_t *c, const lim_rule_t *r)
{
    const char *per = "";
    for (size_t i = 0; i < 5; i++)
        if (per_values[i] == r->per)
            per = per_words[i];
    const char *metric = metric_words[r->metric];
    const char *scope = scope_words[r->scope];
    char *joined = NULL;
    if (r->n_eps) {
        const char **names = malloc(r->n_eps * sizeof *names);
        if (!names) {
            nomem(c);
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
            nomem(c);
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
    if (asprintf(&id, "%s:%s:%s:%s", metric, per, scope, joined ? joined : "*") < 0) {
        id = NULL;
    } else if (strlen(id) > IDENT_MAX_LEN) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int mdlen = 0;
        free(id);
        id = NULL;
        if (EVP_Digest(joined, strlen(joined), md, &mdlen, EVP_sha256(), NULL) == 1 &&
            asprintf(&id, "%s:%s:%s:h%02x%02x%02x%02x%02x%02x%02x%02x", metric, per, scope,
                     md[0], md[1], md[2], md[3], md[4], md[5], md[6], md[7]) < 0)
            id = NULL;
    }
    free(joined);
    if (!id)
        nomem(c);
    return id;
}

/* One limit object at the current path. Returns 1 when the rule is whole. */
static int parse_rule(ctx_t *c, json_t *o, lim_rule_t *r, int level, const char *W)
{
    static const char *const keys[] = {"metric", "per", "limit", "scope", "endpoints", NULL};
    int ok = 1;
    check_keys(c, o, keys, W);
    int metric = get_enum(c, o, W, "metric", 1, metric_words, "metric",
                          "requests, units, spend or concurrent");
    if (metric < 0)
        ok = 0;
    else
        r->metric = (lim_metric_t)metric;

    json_t *perv = json_object_get(o, "per");
    if (metric == LIM_CONCURRENT) {
        r->per = LIM_PER_NONE;
        if (perv) {
            size_t m = pk(c, "per");
            kerr(c, W, "\"per\" must not be given for a concurrent limit");
            pp(c, m);
            ok = 0;
        }
    } else if (metric >= 0 && !perv) {
        err(c, W, NULL, "missing \"per\" (required for a %s limit)", metric_words[metric]);
        ok = 0;
    } else if (perv) {
        int p = get_enum(c, o, W, "per", 0, per_words, "period",
                         "second, minute, hour, day or month");
        if (p < 0)
            ok = 0;
        else
            r->per = per_values[p];
    }

    int sc = get_enum(c, o, W, "scope", 0, scope_words, "scope", "key or account");
    if (sc == -1)
        ok = 0;
    r->scope = sc == 1 ? LIM_SCOPE_ACCOUNT : LIM_SCOPE_KEY;

    json_t *eps = json_object_get(o, "endpoints");
    if (eps) {
        size_t m = pk(c, "endpoints");
        size_t n = json_is_array(eps) ? json_array_size(eps) : 0;
        if (!json_is_array(eps)) {
            err(c, W, "endpoints", "expected an array, got %s", json_kind(eps));
            ok = 0;
        } else if (!n) {
            err(c, W, "endpoints",
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
                nomem(c);
                ok = 0;
            }
            for (size_t i = 0; i < n && r->eps && r->ep_names; i++) {
                size_t mi = pi(c, i);
                char *s = NULL;
                uint32_t idx;
                if (str_value(c, json_array_get(eps, i), W, "endpoints", &s) != 1) {
                    ok = 0;
                } else if (!st_get(&c->t_endpoints, s, &idx)) {
                    err(c, W, "endpoints", "no endpoint named %s", Q(c, s));
                    ok = 0;
                } else {
                    uint32_t k;
                    for (k = 0; k < r->n_eps; k++)
                        if (r->eps[k] == idx)
                            break;
                    if (k < r->n_eps) {
                        err(c, W, "endpoints", "%s is listed twice", Q(c, s));
                        ok = 0;
                    } else {
                        r->eps[r->n_eps++] = idx;
                        if (r->ep_names[0])
                            strcat(r->ep_names, ",");
                        strcat(r->ep_names, c->cfg->endpoints[idx].name);
                    }
                }
                free(s);
                pp(c, mi);
            }
            if (r->eps)
                qsort(r->eps, r->n_eps, sizeof *r->eps, cmp_u32);
        }
        pp(c, m);
    }
    if (!r->ep_names && !(r->ep_names = calloc(1, 1))) {
        nomem(c);
        ok = 0;
    }

    json_t *lv = json_object_get(o, "limit");
    if (!lv) {
        missing(c, W, "limit");
        ok = 0;
    } else if (json_is_null(lv)) {
        if (level == LV_TIER) {
            ferr(c, W, "limit",
                 "null (remove an inherited limit) is only allowed on accounts and keys");
            ok = 0;
        }
        r->removed = 1;
    } else if (metric == LIM_SPEND) {
        size_t m = pk(c, "limit");
        if (money_value(c, lv, W, "limit", &r->limit) != 1)
            ok = 0;
        pp(c, m);
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
        nomem(c);
        return;
    }
    *out = rules;
    size_t mk = pk(c, "limits");
    for (size_t i = 0; i < n; i++) {
        char W[300];
        snprintf(W, sizeof W, "%s limits[%zu]", ownerW, i);
        json_t *o = json_array_get(arr, i);
        size_t mi = pi(c, i);
        lim_rule_t *r = &rules[*n_out];
        if (!json_is_object(o)) {
            err(c, ownerW, NULL, "limits[%zu]: expected an object, got %s", i, json_kind(o));
        } else if (parse_rule(c, o, r, level, W)) {
            size_t k;
            for (k = 0; k < *n_out; k++)
                if (strcmp(rules[k].ident, r->ident) == 0)
                    break;
            if (k < *n_out) {
                err(c, W, NULL, "duplicate limit %s (the same metric, per, scope and endpoints "
                    "as an earlier one)", r->ident);
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
        pp(c, mi);
    }
    pp(c, mk);
}

static void parse_tier(ctx_t *c, json_t *o, cfg_tier_t *t, const char *W)
{
    static const char *const keys[] = {"limits", NULL};
    check_keys(c, o, keys, W);
    parse_limits(c, o, LV_TIER, W, &t->rules, &t->n_rules);
}

static void parse_account(ctx_t *c, json_t *o, cfg_account_t *a, const char *W)
{
    static const char *const keys[] = {"tier", "disabled", "limits", NULL};
    check_keys(c, o, keys, W);
    lookup(c, &c->t_tiers, o, W, "tier", "tier", &a->tier);
    get_bool(c, o, W, "disabled", &a->disabled);
    parse_limits(c, o, LV_ACCOUNT, W, &a->rules, &a->n_rules);
}

/* Key object o (current path), stored at cfg->keys[ki]. */
static void parse_key(ctx_t *c, json_t *o, size_t ki, size_t pos)
{
    static const char *const keys[] = {"id", "sha256", "account", "disabled", "limits", NULL};
    cfg_key_t *k = &c->cfg->keys[ki];
    char W[300];
    snprintf(W, sizeof W, "keys[%zu]", pos);
    if (!json_is_object(o)) {
        err(c, NULL, NULL, "keys[%zu]: expected an object, got %s", pos, json_kind(o));
        return;
    }
    if (get_str(c, o, W, "id", 1, &k->id) == 1) {
        if (!valid_name(k->id)) {
            ferr(c, W, "id", "invalid key id %s: " NAME_RULE, Q(c, k->id));
        } else {
            uint32_t old;
            int rc = st_put(&c->t_keyids, k->id, (uint32_t)ki, &old);
            if (rc < 0)
                nomem(c);
            else if (rc == 1)
                ferr(c, W, "id", "duplicate key id %s", Q(c, k->id));
            snprintf(W, sizeof W, "key %s", Q(c, k->id));
        }
    }
    check_keys(c, o, keys, W);
    if (get_digest(c, o, W, "sha256", 1, k->sha256) == 1) {
        uint32_t dup;
        int rc = dt_put(&c->t_dig, c->cfg->keys, (uint32_t)ki, &dup);
        if (rc < 0)
            nomem(c);
        else if (rc == 1)
            ferr(c, W, "sha256", "the same digest as key %s",
                 Q(c, c->cfg->keys[dup].id ? c->cfg->keys[dup].id : "?"));
    }
    lookup(c, &c->t_accounts, o, W, "account", "account", &k->account);
    get_bool(c, o, W, "disabled", &k->disabled);
    parse_limits(c, o, LV_KEY, W, &k->rules, &k->n_rules);
}

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

static char *join_dir(const char *cfgpath, const char *rel)
{
    const char *slash = strrchr(cfgpath, '/');
    char *out;
    if (rel[0] == '/' || !slash)
        return strdup(rel);
    if (asprintf(&out, "%.*s/%s", (int)(slash - cfgpath), cfgpath, rel) < 0)
        return NULL;
    return out;
}

/* ------------------------------------------------------------------------
 * After validation: policies and lookup tables.
 * ------------------------------------------------------------------------ */

static void policy_error(ctx_t *c, int rc, const char *what)
{
    if (rc == -1)
        nomem(c);
    else
        err(c, what, NULL, "more than %d limits apply to one endpoint", LIM_MAX_CHECKS);
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
        size_t m = pk(c, "limits");
        pi(c, i);
        pk(c, "limit");
        char *text;
        if (asprintf(&text, "warning: %s limits[%zu]: \"limit\": null removes nothing: no "
                     "inherited limit is %s", W, i, rules[i].ident) < 0)
            text = NULL;
        add_msg(c, 1, 1, 0, 0, 1, text);
        pp(c, m);
    }
}

static void build_policies(ctx_t *c)
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
            size_t m = pk(c, "tiers");
            size_t m2 = pk(c, cfg->tiers[t].name);
            snprintf(W, sizeof W, "tier %s", Q(c, cfg->tiers[t].name));
            policy_error(c, rc, W);
            pp(c, m2);
            pp(c, m);
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
        size_t m = pk(c, "accounts");
        pk(c, a->name);
        snprintf(W, sizeof W, "account %s", Q(c, a->name));
        if (rc)
            policy_error(c, rc, W);
        else
            warn_noop_removals(c, W, a->rules, a->n_rules, NULL, 0, t->rules, t->n_rules);
        pp(c, m);
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
            pk(c, "keys");
        pi(c, c->ksrc[i].idx);
        snprintf(W, sizeof W, "key %s", Q(c, k->id));
        if (rc == 0) {
            k->policy = &k->own;
            warn_noop_removals(c, W, k->rules, k->n_rules, a->policy.rules, a->policy.n_rules,
                               NULL, 0);
        } else {
            policy_error(c, rc, W);
        }
        pp(c, m);
        c->file = saved;
    }
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

static void routes_free(routes_t *r)
{
    if (!r)
        return;
    for (size_t i = 0; r->exact && i < r->n_exact; i++)
        free(r->exact[i].path);
    for (size_t i = 0; r->prefix && i < r->n_prefix; i++)
        free(r->prefix[i].path);
    free(r->exact);
    free(r->slots);
    free(r->prefix);
    free(r);
}

static routes_t *build_routes(const config_t *cfg)
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
    qsort(r->exact, r->n_exact, sizeof *r->exact, cmp_rentry);
    qsort(r->prefix, r->n_prefix, sizeof *r->prefix, cmp_prefix);
    for (size_t i = 0; i < r->n_exact; i++) {
        if (i && strcmp(r->exact[i - 1].path, r->exact[i].path) == 0)
            continue; /* same group */
        size_t s = (size_t)fnv1a(r->exact[i].path) & (r->cap - 1);
        while (r->slots[s])
            s = (s + 1) & (r->cap - 1);
        r->slots[s] = (uint32_t)i + 1;
    }
    return r;
}

/* ------------------------------------------------------------------------
 * Messages out: the one place that formats them.
 * ------------------------------------------------------------------------ */

static int cmp_msg(const void *a, const void *b)
{
    const msg_t *x = a, *y = b;
    if (x->file != y->file)
        return x->file - y->file;
    if (x->line != y->line)
        return x->line - y->line;
    if (x->col != y->col)
        return x->col - y->col;
    return (x->seq > y->seq) - (x->seq < y->seq);
}

static int emit_all(ctx_t *c, cfg_messages_t *out)
{
    if (c->oom) {
        c->file = 0;
        add_msg(c, 0, 0, 1, 1, 0, strdup("out of memory while loading the configuration"));
    }
    for (int f = 0; f < 2; f++) {
        size_t n = 0;
        for (size_t i = 0; i < c->nm; i++)
            n += c->m[i].file == f && c->m[i].ptr;
        if (!n)
            continue;
        jsonpos_req_t *rq = calloc(n, sizeof *rq);
        if (!rq)
            return -1;
        size_t k = 0;
        for (size_t i = 0; i < c->nm; i++)
            if (c->m[i].file == f && c->m[i].ptr)
                rq[k++] = (jsonpos_req_t){c->m[i].ptr, c->m[i].want_key, 0, 0};
        jsonpos_resolve(c->text[f] ? c->text[f] : "", c->text[f] ? c->tlen[f] : 0, rq, n);
        k = 0;
        for (size_t i = 0; i < c->nm; i++) {
            if (c->m[i].file != f || !c->m[i].ptr)
                continue;
            c->m[i].line = rq[k].line ? rq[k].line : 1;
            c->m[i].col = rq[k].line ? rq[k].col : 1;
            k++;
        }
        free(rq);
    }
    if (c->nm)
        qsort(c->m, c->nm, sizeof *c->m, cmp_msg);
    size_t ne = 0, nw = 0;
    for (size_t i = 0; i < c->nm; i++)
        *(c->m[i].warning ? &nw : &ne) += 1;
    out->errors = ne ? calloc(ne, sizeof(char *)) : NULL;
    out->warnings = nw ? calloc(nw, sizeof(char *)) : NULL;
    if ((ne && !out->errors) || (nw && !out->warnings))
        return -1;
    for (size_t i = 0; i < c->nm; i++) {
        msg_t *m = &c->m[i];
        char *line;
        /* FILE:LINE:COL: message (warnings carry "warning: " in their text) */
        if (asprintf(&line, "%s:%d:%d: %s", c->fname[m->file], m->line, m->col, m->text) < 0)
            return -1;
        if (m->warning)
            out->warnings[out->n_warnings++] = line;
        else
            out->errors[out->n_errors++] = line;
    }
    return 0;
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
        nomem(c);
        return;
    }
    size_t m = pk(c, name);
    *count = collect_names(c, sec, t, what, slot);
    const char *k;
    json_t *v;
    size_t i = 0;
    json_object_foreach(sec, k, v) {
        if (i >= *count)
            break;
        char W[120];
        snprintf(W, sizeof W, "%s %s", what, Q(c, k));
        size_t mk = pk(c, k);
        if (!json_is_object(v))
            err(c, W, NULL, "expected an object, got %s", json_kind(v));
        else
            body(c, v, (char *)*arr + i * elsize, W);
        pp(c, mk);
        i++;
    }
    pp(c, m);
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
        m = pk(c, "server");
        parse_server(c, o);
        pp(c, m);
    }
    if ((o = get_obj(c, root, NULL, "admin", 0))) {
        m = pk(c, "admin");
        parse_admin(c, o);
        pp(c, m);
    }
    if ((o = get_obj(c, root, NULL, "storage", 0))) {
        m = pk(c, "storage");
        parse_storage(c, o);
        pp(c, m);
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
            nomem(c);
        } else {
            int e = 0;
            c->text[1] = read_file(c->fname[1], &c->tlen[1], &e);
            if (!c->text[1]) {
                ferr(c, NULL, "keys_file", "cannot read %s: %s", Q(c, c->fname[1]), strerror(e));
            } else {
                c->keys_root = parse_text(c, 1);
                if (c->keys_root && !json_is_array(c->keys_root)) {
                    c->file = 1;
                    err(c, NULL, NULL, "a keys file must be a JSON array of key objects, got %s",
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
        nomem(c);
        return;
    }
    cfg->n_keys = n0 + n1;
    if (n0) {
        m = pk(c, "keys");
        for (size_t i = 0; i < n0; i++) {
            size_t mi = pi(c, i);
            c->ksrc[i] = (keysrc_t){0, i};
            parse_key(c, json_array_get(keys, i), i, i);
            pp(c, mi);
        }
        pp(c, m);
    }
    if (n1) {
        c->file = 1; /* pointers now into the keys file's array */
        pp(c, 0);
        for (size_t i = 0; i < n1; i++) {
            size_t mi = pi(c, i);
            c->ksrc[n0 + i] = (keysrc_t){1, i};
            parse_key(c, json_array_get(c->keys_root, i), n0 + i, i);
            pp(c, mi);
        }
        c->file = 0;
    }
}

config_t *config_load(const char *path, cfg_messages_t *msgs)
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
            err(&c, NULL, NULL, "the configuration must be a JSON object, got %s",
                json_kind(root));
        else
            parse_root(&c, root);
        json_decref(root);
    }
    if (c.n_err == 0 && !c.oom) {
        build_policies(&c);
        if (c.n_err == 0 && !c.oom) {
            keyidx_t *ki = calloc(1, sizeof *ki);
            cfg->route_index = build_routes(cfg);
            if (!ki || !cfg->route_index) {
                free(ki);
                nomem(&c);
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
    size_t mask = r->cap - 1, s = (size_t)fnv1a(key) & mask;
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
