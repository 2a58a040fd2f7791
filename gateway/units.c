/*
 * gateway/units.c: the units of a request, a product of factors read from
 * its JSON body by RFC 6901 pointers. The body is parsed only for
 * endpoints that read it (units, match, stream options), and once.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "units.h"

/* Prices saturate here (millionths), far above any cap. */
#define PRICE_MAX LIM_PRICE_MAX
/* Units saturate here: far above any limit, never overflowing a counter. */
#define UNITS_MAX LIM_UNITS_MAX

int64_t price_of(const cfg_endpoint_t *ep, int64_t units)
{
    int64_t unit_part;
    if (__builtin_mul_overflow(ep->price_unit_micros, units, &unit_part) ||
        unit_part > PRICE_MAX)
        unit_part = PRICE_MAX;
    int64_t p = ep->price_request_micros + unit_part;
    return p > PRICE_MAX ? PRICE_MAX : p;
}

/* The product of the factors, rounded up to a whole number and saturating
 * at UNITS_MAX. Whole factors multiply exactly; once a factor has a
 * fraction the product is carried as a long double, and a last part in
 * 10^12 is taken for the binary rounding of decimal fractions (0.1 * 30
 * is 3 units, not 4). */
typedef struct {
    int64_t whole;     /* exact product while every factor is whole */
    long double frac;  /* the product once one is not */
    int fractional;
} product_t;

static void product_mul(product_t *p, double x)
{
    if (!p->fractional && x == (double)(int64_t)x) {
        int64_t v = (int64_t)x, out;
        if (p->whole == 0 || v == 0)
            p->whole = 0;
        else if (v > UNITS_MAX || __builtin_mul_overflow(p->whole, v, &out) || out > UNITS_MAX)
            p->whole = UNITS_MAX;
        else
            p->whole = out;
        return;
    }
    if (!p->fractional) {
        p->fractional = 1;
        p->frac = (long double)p->whole;
    }
    p->frac *= (long double)x;
    if (p->frac > (long double)UNITS_MAX)
        p->frac = (long double)UNITS_MAX;
}

static int64_t product_units(const product_t *p)
{
    if (!p->fractional)
        return p->whole;
    long double v = p->frac;
    int64_t n = (int64_t)v;
    if ((long double)n < v && (v - (long double)n) > v * 1e-12L)
        n++;
    return n > UNITS_MAX ? UNITS_MAX : n;
}

/* The body as JSON, for whatever reads it (units, match, stream options):
 * parsed once per request. A body that is not JSON, or whose objects
 * repeat a member name anywhere (the backend might read the other one),
 * is refused. */
json_t *units_parse_body(const char *body, size_t len, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root = json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        snprintf(err, errlen, "The request body is not valid JSON: %s (line %d, column %d).",
                 jerr.text, jerr.line, jerr.column);
    return root;
}

/* Units from the parsed body: each factor's value (a number >= 0, -0 being
 * 0, or a mapped string; the default when absent or null), raised to the
 * factor's min, multiplied. */
int units_from_json(const cfg_endpoint_t *ep, json_t *root, int64_t *units, char *err,
                    size_t errlen)
{
    *units = 1;
    if (ep->n_units == 0)
        return 0;
    product_t prod = {1, 0, 0};
    int rc = 0;
    for (size_t i = 0; i < ep->n_units && rc == 0; i++) {
        const cfg_factor_t *f = &ep->units[i];
        json_t *v = json_pointer_get(root, f->pointer);
        double x;
        if (!v || json_is_null(v)) {
            x = (double)f->dflt;
        } else if (json_is_integer(v)) {
            x = (double)json_integer_value(v);
        } else if (json_is_real(v)) {
            x = json_real_value(v);
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
            x = (double)f->map[k].value;
        } else {
            snprintf(err, errlen, "The value at %s must be a number%s.", f->pointer,
                     f->map ? " or one of the accepted strings" : "");
            rc = -1;
            break;
        }
        if (x < 0) { /* -0 and -0.0 are zero, not negative */
            snprintf(err, errlen, "The value at %s must not be negative.", f->pointer);
            rc = -1;
            break;
        }
        if (x < f->min)
            x = f->min;
        if (x > (double)UNITS_MAX)
            x = (double)UNITS_MAX;
        product_mul(&prod, x);
    }
    *units = rc == 0 ? product_units(&prod) : 1;
    return rc;
}

int units_from_body(const cfg_endpoint_t *ep, const char *body, size_t len,
                    int64_t *units, char *err, size_t errlen)
{
    *units = 1;
    if (ep->n_units == 0)
        return 0;
    json_t *root = units_parse_body(body, len, err, errlen);
    if (!root)
        return -1;
    int rc = units_from_json(ep, root, units, err, errlen);
    json_decref(root);
    return rc;
}
