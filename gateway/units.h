/* gateway/units.h: a request's units and price from its body (units.c). */
#ifndef RW_GATEWAY_UNITS_H
#define RW_GATEWAY_UNITS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "config/config.h"
#include "config/pointer.h" /* json_pointer_get, for the units readers */

/* units.c: the body parsed as JSON (duplicate member names refused); a
 * new reference, or NULL with a message for a 400 INVALID_BODY. */
json_t *units_parse_body(const char *body, size_t len, char *err, size_t errlen);
/* The request's units from its parsed body (borrowed). Returns 0 and sets
 * *units, or -1 with a message for a 400 INVALID_BODY. */
int units_from_json(const cfg_endpoint_t *ep, json_t *root, int64_t *units, char *err,
                    size_t errlen);
/* The same from the body's text (parses it). */
int units_from_body(const cfg_endpoint_t *ep, const char *body, size_t len,
                    int64_t *units, char *err, size_t errlen);
/* A request's price in millionths for its units: per_request + per_unit x
 * units, saturating far above any cap. */
int64_t price_of(const cfg_endpoint_t *ep, int64_t units);

#endif
