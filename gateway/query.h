/*
 * gateway/query.h: one parameter of a URL query, read the way common
 * backends read it (Python's parse_qs, which Flask, Django and Starlette
 * follow): the query is split on '&'; in each part the name ends at the
 * first '='; in names and values '+' is a space and %XX a byte; an
 * invalid escape stays as written; names compare exactly (case-sensitive)
 * after that decoding. A part without '=' counts as the name with an
 * empty value (backends that keep blank values see it so).
 *
 * Pure: no allocation, no state.
 */
#ifndef RW_GATEWAY_QUERY_H
#define RW_GATEWAY_QUERY_H

#include <stddef.h>

/*
 * How many parameters of q (the text after '?', may be NULL) are named
 * `name` once decoded. The first one's decoded value goes to val: at most
 * cap - 1 bytes and a NUL (cap > 0); *vlen gets its whole decoded length,
 * which may exceed cap - 1 (then val holds a prefix). A decoded value may
 * hold NUL bytes: *vlen, not strlen, is its length. With no match val is
 * "" and *vlen 0. Returns -1 when name is empty or longer than 256 bytes.
 */
int query_param(const char *q, const char *name, char *val, size_t cap, size_t *vlen);

/* Percent-decode n bytes of s into out (at most cap bytes written; plus is
 * a space when plus_space). Returns the whole decoded length. */
size_t query_decode(const char *s, size_t n, int plus_space, char *out, size_t cap);

#endif
