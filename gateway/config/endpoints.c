/*
 * gateway/config/endpoints.c: endpoints with their units, job and reconcile blocks,
 * and the checks across routes.
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

static const char *const method_names[] = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD",
    "OPTIONS", NULL};


/* s (owned) appended to list[0..*n) (room for it made by the caller),
 * or reported as listed twice (field of W) and freed. */
static void add_unique(ctx_t *c, const char *W, const char *field, char **list, size_t *n,
                       char *s)
{
    for (size_t k = 0; k < *n; k++) {
        if (strcmp(list[k], s) == 0) {
            cfg_err(c, W, field, "%s is listed twice", cfg_quote(c, s));
            free(s);
            return;
        }
    }
    list[(*n)++] = s;
}

/* A number of units a factor may take (a default, a min, a map value):
 * >= 0 and at most LIM_UNITS_MAX, fractions allowed (the product is
 * rounded up). name is the field; key, when not NULL, the map entry it
 * is for. Returns 1 (set), 0 (absent) or -1 (reported). */
static int units_number(ctx_t *c, json_t *v, const char *W, const char *name, const char *key,
                        double *out)
{
    if (!v)
        return 0;
    char why[200];
    if (!json_is_number(v))
        snprintf(why, sizeof why, "expected a number, got %s", json_kind(v));
    else if (json_number_value(v) < 0)
        snprintf(why, sizeof why, "must not be negative, got %g", json_number_value(v));
    else if (json_number_value(v) > (double)LIM_UNITS_MAX)
        snprintf(why, sizeof why, "must be at most %" PRId64 ", got %g",
                 (int64_t)LIM_UNITS_MAX, json_number_value(v));
    else {
        *out = json_number_value(v);
        return 1;
    }
    /* A field is reported at its value; a map entry at its own path. */
    if (key)
        cfg_err(c, W, name, "%s: %s", cfg_quote(c, key), why);
    else
        ferr(c, W, name, "%s", why);
    return -1;
}

static void parse_units(ctx_t *c, json_t *arr, cfg_endpoint_t *e, const char *epW)
{
    size_t n = json_array_size(arr);
    if (!n)
        return;
    e->units = calloc(n, sizeof *e->units);
    if (!e->units) {
        cfg_nomem(c);
        return;
    }
    e->n_units = n;
    for (size_t i = 0; i < n; i++) {
        static const char *const keys[] = {"pointer", "default", "min", "map", NULL};
        char W[300];
        snprintf(W, sizeof W, "%s units[%zu]", epW, i);
        json_t *f = json_array_get(arr, i);
        size_t m = path_index(c, i);
        cfg_factor_t *fa = &e->units[i];
        fa->dflt = 1;
        fa->min = 1;
        if (!json_is_object(f)) {
            cfg_err(c, epW, NULL, "units[%zu]: expected an object, got %s", i, json_kind(f));
            path_pop(c, m);
            continue;
        }
        check_keys(c, f, keys, W);
        get_pointer(c, f, W, "pointer", 1, &fa->pointer);
        units_number(c, json_object_get(f, "default"), W, "default", NULL, &fa->dflt);
        units_number(c, json_object_get(f, "min"), W, "min", NULL, &fa->min);
        json_t *map = get_obj(c, f, W, "map", 0);
        if (map) {
            size_t mm = path_key(c, "map");
            size_t nm = json_object_size(map);
            if (!nm) {
                cfg_err(c, W, "map", "must not be empty");
            } else if (!(fa->map = calloc(nm, sizeof *fa->map))) {
                cfg_nomem(c);
            } else {
                const char *k;
                json_t *v;
                json_object_foreach(map, k, v) {
                    size_t mk = path_key(c, k);
                    double x;
                    if (units_number(c, v, W, "map", k, &x) == 1) {
                        fa->map[fa->n_map].name = cfg_strdup(c, k);
                        fa->map[fa->n_map].value = x;
                        fa->n_map++;
                    }
                    path_pop(c, mk);
                }
            }
            path_pop(c, mm);
        }
        path_pop(c, m);
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
        cfg_nomem(c);
        return;
    }
    e->job = j;
    j->max_seconds = 3600;
    check_keys(c, o, keys, W);
    get_pointer(c, o, W, "id_pointer", 1, &j->id_pointer);
    lookup_name(c, &c->t_endpoints, o, W, "status_endpoint", "endpoint", &j->status_ep);
    get_str(c, o, W, "status_query", 1, &j->status_query);
    get_pointer(c, o, W, "status_pointer", 1, &j->status_pointer);
    json_t *dv = get_arr(c, o, W, "done_values", 1);
    if (dv) {
        size_t n = json_array_size(dv);
        if (!n) {
            ferr(c, W, "done_values", "must not be empty");
        } else if (!(j->done_values = calloc(n, sizeof(char *)))) {
            cfg_nomem(c);
        } else {
            size_t m = path_key(c, "done_values");
            for (size_t i = 0; i < n; i++) {
                size_t mi = path_index(c, i);
                if (str_value(c, json_array_get(dv, i), W, "done_values", &j->done_values[j->n_done]) == 1)
                    j->n_done++;
                path_pop(c, mi);
            }
            path_pop(c, m);
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
        cfg_nomem(c);
        return;
    }
    e->reconcile = r;
    check_keys(c, o, keys, W);
    get_bool(c, o, W, "stream_include_usage", &r->stream_include_usage);
    json_t *ptr = json_object_get(o, "response_pointer");
    int a = ptr != NULL;
    int b = json_object_get(o, "response_header") != NULL;
    if (a == b) {
        cfg_err(c, W, NULL, "give exactly one of \"response_pointer\" and \"response_header\"");
        return;
    }
    if (json_is_array(ptr)) {
        size_t n = json_array_size(ptr);
        size_t m = path_key(c, "response_pointer");
        if (n == 0 || n > RECONCILE_POINTERS_MAX) {
            cfg_err(c, W, "response_pointer", "a list of 1 to %d pointers, got %zu",
                RECONCILE_POINTERS_MAX, n);
        } else if (!(r->pointers = calloc(n, sizeof *r->pointers))) {
            cfg_nomem(c);
        } else {
            for (size_t i = 0; i < n; i++) {
                size_t mi = path_index(c, i);
                char *s = NULL;
                const char *why;
                if (str_value(c, json_array_get(ptr, i), W, "response_pointer", &s) != 1) {
                    /* reported */
                } else if ((why = json_pointer_problem(s))) {
                    cfg_err(c, W, "response_pointer", "invalid JSON pointer %s: %s", cfg_quote(c, s), why);
                    free(s);
                } else {
                    add_unique(c, W, "response_pointer", r->pointers, &r->n_pointers, s);
                }
                path_pop(c, mi);
            }
        }
        path_pop(c, m);
    } else if (ptr) {
        char *s = NULL;
        if (!json_is_string(ptr)) {
            type_err(c, W, "response_pointer", ptr, "a JSON pointer or a list of them");
        } else if (get_pointer(c, o, W, "response_pointer", 0, &s) == 1) {
            if (!(r->pointers = calloc(1, sizeof *r->pointers))) {
                free(s);
                cfg_nomem(c);
            } else {
                r->pointers[0] = s;
                r->n_pointers = 1;
            }
        }
    }
    if (get_str(c, o, W, "response_header", 0, &r->response_header) == 1 &&
        !valid_header_name(r->response_header))
        ferr(c, W, "response_header", "invalid header name %s", cfg_quote(c, r->response_header));
    if (b && r->stream_include_usage)
        ferr(c, W, "stream_include_usage",
             "the usage chunk is read through \"response_pointer\", not a header");
}

static void parse_match(ctx_t *c, json_t *o, cfg_endpoint_t *e, const char *epW)
{
    static const char *const keys[] = {"pointer", "values", NULL};
    char W[300];
    snprintf(W, sizeof W, "%s match", epW);
    cfg_match_t *mt = calloc(1, sizeof *mt);
    if (!mt) {
        cfg_nomem(c);
        return;
    }
    e->match = mt;
    check_keys(c, o, keys, W);
    get_pointer(c, o, W, "pointer", 1, &mt->pointer);
    json_t *vs = get_arr(c, o, W, "values", 1);
    if (!vs)
        return;
    size_t n = json_array_size(vs);
    if (!n) {
        ferr(c, W, "values", "must not be empty");
        return;
    }
    if (!(mt->values = calloc(n, sizeof *mt->values))) {
        cfg_nomem(c);
        return;
    }
    size_t m = path_key(c, "values");
    for (size_t i = 0; i < n; i++) {
        size_t mi = path_index(c, i);
        char *s = NULL;
        if (str_value(c, json_array_get(vs, i), W, "values", &s) == 1)
            add_unique(c, W, "values", mt->values, &mt->n_values, s);
        path_pop(c, mi);
    }
    path_pop(c, m);
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

void parse_endpoint(ctx_t *c, json_t *o, cfg_endpoint_t *e, const char *W)
{
    static const char *const keys[] = {"method", "path", "path_prefix", "backend",
        "max_body_bytes", "units", "price", "job", "reconcile", "match", "queue", NULL};
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
        cfg_err(c, W, NULL, "missing \"path\" (or \"path_prefix\")");
    } else {
        const char *f = has_p ? "path" : "path_prefix";
        if (get_str(c, o, W, f, 1, &e->path) == 1) {
            e->is_prefix = has_pp;
            if (e->path[0] != '/')
                ferr(c, W, f, "must start with \"/\", got %s", cfg_quote(c, e->path));
            else if (strpbrk(e->path, "?# \t\r\n"))
                ferr(c, W, f, "must be a plain path (no query, fragment or spaces), got %s",
                     cfg_quote(c, e->path));
            else if (!path_is_normal(e->path))
                ferr(c, W, f,
                     "must be a normalized path (no \"//\", \".\" or \"..\" segment, "
                     "backslash, or \"%%\" but in an upper-case encoding of a reserved "
                     "character), "
                     "got %s: requests are normalized before routing and could never match",
                     cfg_quote(c, e->path));
        }
    }
    lookup_name(c, &c->t_backends, o, W, "backend", "backend", &e->backend);
    get_int(c, o, W, "max_body_bytes", 0, 1, INT64_MAX, &e->max_body_bytes);
    json_t *u = get_arr(c, o, W, "units", 0);
    if (u) {
        size_t mk = path_key(c, "units");
        parse_units(c, u, e, W);
        path_pop(c, mk);
    }
    json_t *pr = get_obj(c, o, W, "price", 0);
    if (pr) {
        static const char *const pkeys[] = {"per_request", "per_unit", NULL};
        char PW[300];
        snprintf(PW, sizeof PW, "%s price", W);
        size_t mk = path_key(c, "price");
        check_keys(c, pr, pkeys, PW);
        get_money(c, pr, PW, "per_request", &e->price_request_micros);
        get_money(c, pr, PW, "per_unit", &e->price_unit_micros);
        path_pop(c, mk);
    }
    json_t *j = get_obj(c, o, W, "job", 0);
    if (j) {
        size_t mk = path_key(c, "job");
        parse_job(c, j, e, W);
        path_pop(c, mk);
    }
    json_t *r = get_obj(c, o, W, "reconcile", 0);
    if (r) {
        size_t mk = path_key(c, "reconcile");
        parse_reconcile(c, r, e, W);
        path_pop(c, mk);
    }
    json_t *mt = get_obj(c, o, W, "match", 0);
    if (mt) {
        size_t mk = path_key(c, "match");
        parse_match(c, mt, e, W);
        path_pop(c, mk);
    }
    json_t *q = get_obj(c, o, W, "queue", 0);
    if (q) {
        static const char *const qkeys[] = {"max_wait_ms", "max_waiting", NULL};
        char QW[300];
        snprintf(QW, sizeof QW, "%s queue", W);
        size_t mk = path_key(c, "queue");
        check_keys(c, q, qkeys, QW);
        e->queue_max_wait_ms = 2000;
        e->queue_max_waiting = 64;
        get_int(c, q, QW, "max_wait_ms", 0, 1, 60000, &e->queue_max_wait_ms);
        get_int(c, q, QW, "max_waiting", 0, 1, 100000, &e->queue_max_waiting);
        path_pop(c, mk);
    }
}

/* Whether endpoints a and b answer the same method on the same route. */
int same_route(const cfg_endpoint_t *a, const cfg_endpoint_t *b)
{
    if (!a->path || !b->path || a->is_prefix != b->is_prefix || !(a->methods & b->methods))
        return 0;
    char *ka = route_key_dup(a->path, !a->is_prefix);
    char *kb = route_key_dup(b->path, !b->is_prefix);
    int same = ka && kb && strcmp(ka, kb) == 0;
    free(ka);
    free(kb);
    return same;
}

/* A value of b's match that an earlier endpoint of its route (a) lists
 * too: reported at b's value. */
static void check_values(ctx_t *c, const cfg_endpoint_t *a, const cfg_endpoint_t *b,
                         const char *epW)
{
    char W[160];
    snprintf(W, sizeof W, "%s match", epW);
    for (size_t i = 0; i < b->match->n_values; i++) {
        for (size_t k = 0; k < a->match->n_values; k++) {
            if (strcmp(a->match->values[k], b->match->values[i]) != 0)
                continue;
            size_t m = path_key(c, "match");
            path_key(c, "values");
            path_index(c, i);
            cfg_err(c, W, "values", "%s is already matched by endpoint %s on this route",
                    cfg_quote(c, b->match->values[i]), cfg_quote(c, a->name));
            path_pop(c, m);
        }
    }
}

/* Two endpoints may not answer the same method on the same path, unless
 * they tell requests apart by one body field: then every endpoint of the
 * route but one has a match on the same pointer, and no value is listed
 * twice. */
void check_routes(ctx_t *c)
{
    config_t *cfg = c->cfg;
    for (size_t j = 0; j < cfg->n_endpoints; j++) {
        cfg_endpoint_t *b = &cfg->endpoints[j];
        if (!b->path || !b->methods)
            continue;
        size_t m = path_key(c, "endpoints");
        path_key(c, b->name);
        char W[120];
        snprintf(W, sizeof W, "endpoint %s", cfg_quote(c, b->name));
        for (size_t i = 0; i < j; i++) {
            cfg_endpoint_t *a = &cfg->endpoints[i];
            if (!same_route(a, b))
                continue;
            if (!a->match && !b->match) {
                int mi = __builtin_ctz(b->methods);
                ferr(c, W, b->is_prefix ? "path_prefix" : "path",
                     "%s %s%s is already routed to endpoint %s%s", method_names[mi], b->path,
                     b->is_prefix ? "*" : "", cfg_quote(c, a->name),
                     strcmp(a->path, b->path) == 0
                         ? ""
                         : " (paths are routed regardless of case, \";params\" and a "
                           "trailing \"/\")");
                break;
            }
            if (!a->match || !b->match)
                continue;
            if (a->match->pointer && b->match->pointer &&
                strcmp(a->match->pointer, b->match->pointer) != 0) {
                size_t mm = path_key(c, "match");
                char MW[160];
                snprintf(MW, sizeof MW, "%s match", W);
                ferr(c, MW, "pointer",
                     "%s differs from %s of endpoint %s on this route: the endpoints of one "
                     "route match at one pointer",
                     cfg_quote(c, b->match->pointer), cfg_quote(c, a->match->pointer), cfg_quote(c, a->name));
                path_pop(c, mm);
                break;
            }
            check_values(c, a, b, W);
        }
        path_pop(c, m);
    }
}
