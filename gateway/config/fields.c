/*
 * gateway/config/fields.c: typed field access (str, int, bool, enum, money, pointer,
 * host:port, url, file, digest) and the value checks behind them.
 */
#include "internal.h"
#include "pointer.h"

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
 * Typed field access. Each getter reads field `name` of object `o` (the
 * current path is o), reports what is wrong, and returns 1 (ok), 0 (absent)
 * or -1 (present but invalid, reported).
 * ------------------------------------------------------------------------ */

const char *json_kind(const json_t *v)
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

void missing_field(ctx_t *c, const char *where, const char *name)
{
    cfg_err(c, where, NULL, "missing \"%s\"", name);
}

void type_err(ctx_t *c, const char *where, const char *name, const json_t *v,
                     const char *expected)
{
    ferr(c, where, name, "expected %s, got %s", expected, json_kind(v));
}

/* Unknown members of object o: error at each key. */
void check_keys(ctx_t *c, json_t *o, const char *const allowed[], const char *where)
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
        size_t m = path_key(c, k);
        if (where && *where)
            kerr(c, NULL, "unknown key %s in %s", cfg_quote(c, k), where);
        else
            kerr(c, NULL, "unknown key %s at top level", cfg_quote(c, k));
        path_pop(c, m);
    }
}

int str_value(ctx_t *c, json_t *v, const char *where, const char *label, char **out)
{
    if (!json_is_string(v)) {
        cfg_err(c, where, label, "expected a string, got %s", json_kind(v));
        return -1;
    }
    char *s = subst_env(c, json_string_value(v));
    if (!s)
        return -1;
    *out = s;
    return 1;
}

int get_str(ctx_t *c, json_t *o, const char *where, const char *name, int required,
                   char **out)
{
    json_t *v = json_object_get(o, name);
    if (!v) {
        if (required) {
            missing_field(c, where, name);
            return -1;
        }
        return 0;
    }
    size_t m = path_key(c, name);
    int rc = str_value(c, v, where, name, out);
    path_pop(c, m);
    return rc;
}

/* Replace *dst (a default) with field name when present and valid. */
int set_str(ctx_t *c, json_t *o, const char *where, const char *name, int required,
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

void range_err(ctx_t *c, const char *where, const char *name, int64_t v, int64_t lo,
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

int get_int(ctx_t *c, json_t *o, const char *where, const char *name, int required,
                   int64_t lo, int64_t hi, int64_t *out)
{
    json_t *v = json_object_get(o, name);
    if (!v) {
        if (required) {
            missing_field(c, where, name);
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

int get_bool(ctx_t *c, json_t *o, const char *where, const char *name, int *out)
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
            missing_field(c, where, name);
        return NULL;
    }
    if (json_typeof(v) != t) {
        type_err(c, where, name, v, what);
        return NULL;
    }
    return v;
}

json_t *get_obj(ctx_t *c, json_t *o, const char *where, const char *name, int required)
{
    return get_typed(c, o, where, name, required, JSON_OBJECT, "an object");
}

json_t *get_arr(ctx_t *c, json_t *o, const char *where, const char *name, int required)
{
    return get_typed(c, o, where, name, required, JSON_ARRAY, "an array");
}

/* One of a fixed list of words. Returns the index, -1 (reported) or -2 (absent). */
int get_enum(ctx_t *c, json_t *o, const char *where, const char *name, int required,
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
    ferr(c, where, name, "unknown %s %s: expected %s", what, cfg_quote(c, s), expect);
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
int money_value(ctx_t *c, json_t *v, const char *where, const char *label, int64_t *out)
{
    if (!json_is_string(v)) {
        cfg_err(c, where, label, "expected a decimal string such as \"0.50\", got %s", json_kind(v));
        return -1;
    }
    char *s = subst_env(c, json_string_value(v));
    if (!s)
        return -1;
    int rc = parse_money(s, out);
    switch (rc) {
    case MONEY_OK: break;
    case MONEY_SYNTAX:
        cfg_err(c, where, label, "invalid amount %s: expected a decimal such as \"0.0015\"", cfg_quote(c, s));
        break;
    case MONEY_NEGATIVE: cfg_err(c, where, label, "amount %s must not be negative", cfg_quote(c, s)); break;
    case MONEY_DECIMALS:
        cfg_err(c, where, label, "amount %s has more than 6 decimal places", cfg_quote(c, s));
        break;
    default: cfg_err(c, where, label, "amount %s is too large", cfg_quote(c, s)); break;
    }
    free(s);
    return rc == MONEY_OK ? 1 : -1;
}

int get_money(ctx_t *c, json_t *o, const char *where, const char *name, int64_t *out)
{
    json_t *v = json_object_get(o, name);
    if (!v)
        return 0;
    size_t m = path_key(c, name);
    int rc = money_value(c, v, where, name, out);
    path_pop(c, m);
    return rc;
}

/* ------------------------------------------------------------------------
 * Value checks.
 * ------------------------------------------------------------------------ */

int valid_name(const char *s)
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


int get_pointer(ctx_t *c, json_t *o, const char *where, const char *name, int required,
                       char **out)
{
    char *s = NULL;
    int rc = get_str(c, o, where, name, required, &s);
    if (rc != 1)
        return rc;
    const char *why = json_pointer_problem(s);
    if (why) {
        ferr(c, where, name, "invalid JSON pointer %s: %s", cfg_quote(c, s), why);
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

int valid_header_name(const char *s)
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

/* A "HOST:PORT" string value (label names it in messages). */
int hostport_value(ctx_t *c, json_t *v, const char *where, const char *label, char **host,
                   uint16_t *port)
{
    char *s = NULL;
    if (str_value(c, v, where, label, &s) != 1)
        return -1;
    char *hs = NULL;
    const char *why = parse_hostport(s, &hs, port);
    if (why) {
        cfg_err(c, where, label, "invalid address %s: %s", cfg_quote(c, s), why);
        free(s);
        return -1;
    }
    free(s);
    if (!hs) {
        cfg_nomem(c);
        return -1;
    }
    *host = hs;
    return 1;
}

int get_hostport(ctx_t *c, json_t *o, const char *where, const char *name, int required,
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
        ferr(c, where, name, "invalid address %s: %s", cfg_quote(c, s), why);
        free(s);
        return -1;
    }
    free(s);
    if (!hs) {
        cfg_nomem(c);
        return -1;
    }
    free(*host);
    *host = hs;
    *port = pt;
    return 1;
}

/* http(s)://host[:port][/base]. NULL if valid. */
const char *parse_url(const char *u, cfg_backend_t *b)
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

/* A file named in the config: relative to the config's directory. */
void get_file(ctx_t *c, json_t *o, const char *where, const char *name, char **dst)
{
    char *s = NULL;
    if (get_str(c, o, where, name, 1, &s) != 1)
        return;
    *dst = join_dir(c->fname[0], s);
    if (!*dst)
        cfg_nomem(c);
    free(s);
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

int get_digest(ctx_t *c, json_t *o, const char *where, const char *name, int required,
                      unsigned char out[32])
{
    char *s = NULL;
    int rc = get_str(c, o, where, name, required, &s);
    if (rc != 1)
        return rc;
    if (parse_digest_hex(s, out)) {
        ferr(c, where, name, "expected 64 hexadecimal digits (a SHA-256), got %s", cfg_quote(c, s));
        free(s);
        return -1;
    }
    free(s);
    return 1;
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
char *subst_env(ctx_t *c, const char *s)
{
    if (!strstr(s, "${"))
        return cfg_strdup(c, s);
    size_t cap = strlen(s) + 1, n = 0;
    char *o = malloc(cap);
    int bad = 0;
    if (!o) {
        cfg_nomem(c);
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
                cfg_err(c, NULL, NULL, "\"${\" without a closing \"}\"");
                bad = 1;
                break;
            }
            size_t nl = (size_t)(e - d - 2);
            char name[256];
            if (!valid_env_name(d + 2, nl) || nl >= sizeof name) {
                char tmp[256];
                snprintf(tmp, sizeof tmp, "%.*s", (int)(nl < 200 ? nl : 200), d + 2);
                cfg_err(c, NULL, NULL, "invalid environment variable name %s", cfg_quote(c, tmp));
                bad = 1;
            } else {
                memcpy(name, d + 2, nl);
                name[nl] = '\0';
                val = getenv(name);
                if (!val) {
                    cfg_err(c, NULL, NULL, "environment variable %s is not set", name);
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
                cfg_nomem(c);
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

char *join_dir(const char *cfgpath, const char *rel)
{
    const char *slash = strrchr(cfgpath, '/');
    char *out;
    if (rel[0] == '/' || !slash)
        return strdup(rel);
    if (asprintf(&out, "%.*s/%s", (int)(slash - cfgpath), cfgpath, rel) < 0)
        return NULL;
    return out;
}
