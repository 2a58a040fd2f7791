/*
 * gateway/units.c: the units of a request, a product of factors read from
 * its JSON body by RFC 6901 pointers (SPEC §2). The body is parsed only for
 * endpoints that read units.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

/* Prices saturate here (millionths), far above any cap. */
#define PRICE_MAX LIM_PRICE_MAX
/* Units saturate here: far above any limit, never overflowing a counter. */
#define UNITS_MAX LIM_UNITS_MAX

/* Resolve an RFC 6901 pointer (validated by the config) in root. */
json_t *json_pointer_get(json_t *root, const char *ptr)
{
    json_t *cur = root;
    char tok[256];
    while (*ptr == '/' && cur) {
        ptr++;
        size_t n = 0;
        while (*ptr && *ptr != '/') {
            char ch = *ptr++;
            if (ch == '~') {
                ch = *ptr == '1' ? '/' : '~';
                if (*ptr)
                    ptr++;
            }
            if (n + 1 < sizeof tok)
                tok[n++] = ch;
        }
        tok[n] = '\0';
        if (json_is_object(cur)) {
            cur = json_object_get(cur, tok);
        } else if (json_is_array(cur)) {
            char *end;
            errno = 0;
            unsigned long i = strtoul(tok, &end, 10);
            if (!n || *end || errno || (n > 1 && tok[0] == '0'))
                return NULL;
            cur = json_array_get(cur, i);
        } else {
            return NULL;
        }
    }
    return cur;
}

static int64_t mul_sat(int64_t a, int64_t b)
{
    if (a == 0 || b == 0)
        return 0;
    if (a > UNITS_MAX / b)
        return UNITS_MAX;
    return a * b;
}

int64_t price_of(const cfg_endpoint_t *ep, int64_t units)
{
    int64_t unit_part;
    if (__builtin_mul_overflow(ep->price_unit_micros, units, &unit_part) ||
        unit_part > PRICE_MAX)
        unit_part = PRICE_MAX;
    int64_t p = ep->price_request_micros + unit_part;
    return p > PRICE_MAX ? PRICE_MAX : p;
}

int units_from_body(const cfg_endpoint_t *ep, const char *body, size_t len,
                    int64_t *units, char *err, size_t errlen)
{
    *units = 1;
    if (ep->n_units == 0)
        return 0;
    json_error_t jerr;
    json_t *root = json_loadb(body ? body : "", len, 0, &jerr);
    if (!root) {
        snprintf(err, errlen, "The request body is not valid JSON: %s (line %d, column %d).",
                 jerr.text, jerr.line, jerr.column);
        return -1;
    }
    int64_t total = 1;
    int rc = 0;
    for (size_t i = 0; i < ep->n_units && rc == 0; i++) {
        const cfg_factor_t *f = &ep->units[i];
        json_t *v = json_pointer_get(root, f->pointer);
        int64_t x = f->dflt;
        if (!v || json_is_null(v)) {
            x = f->dflt;
        } else if (json_is_integer(v)) {
            x = json_integer_value(v);
        } else if (json_is_real(v)) {
            double d = json_real_value(v);
            if (d >= (double)UNITS_MAX) {
                x = UNITS_MAX;
            } else {
                x = (int64_t)d; /* rounded up: a fraction of a unit costs a unit */
                if ((double)x < d)
                    x++;
            }
        } else if (json_is_string(v) && f->map) {
            const char *s = json_string_value(v);
            size_t k;
            for (k = 0; k < f->n_map; k++)
                if (strcmp(f->map[k].name, s) == 0)
                    break;
            if (k == f->n_map) {
                snprintf(err, errlen, "\"%s\" at %s is not one of the accepted values.", s,
                         f->pointer);
                rc = -1;
                break;
            }
            x = f->map[k].value;
        } else {
            snprintf(err, errlen, "The value at %s must be a number%s.", f->pointer,
                     f->map ? " or one of the accepted strings" : "");
            rc = -1;
            break;
        }
        if (x < 0) {
            snprintf(err, errlen, "The value at %s must not be negative.", f->pointer);
            rc = -1;
            break;
        }
        total = mul_sat(total, x > UNITS_MAX ? UNITS_MAX : x);
    }
    json_decref(root);
    *units = total;
    return rc;
}
