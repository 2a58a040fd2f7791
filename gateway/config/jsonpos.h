/*
 * gateway/config/jsonpos.h: where, in a JSON text, is the value (or the member key)
 * that an RFC 6901 pointer names.
 *
 * jansson reports a position only for syntax errors; the config loader uses
 * this for every other error. It keeps no map: it is called only when there
 * are messages to place, and it resolves all of them in one forward scan of
 * the text that descends only into the containers holding a requested
 * pointer (a 100k-key file with one error costs one skim of the bytes).
 *
 * Positions are 1-based. LINE counts '\n'. COL counts characters (UTF-8 code
 * points; a tab is one character), the same way jansson counts the columns
 * of its syntax errors, so both kinds of message agree.
 *
 * The text must be valid JSON (jansson accepted it); on invalid text the
 * scan stops early and leaves the remaining requests unresolved.
 */
#ifndef RW_GATEWAY_JSONPOS_H
#define RW_GATEWAY_JSONPOS_H

#include <stddef.h>

typedef struct jsonpos_req {
    const char *pointer; /* in: RFC 6901 pointer, "" is the whole text (borrowed) */
    int want_key;        /* in: 1 = position of the member's key (its opening
                            quote); 0 = position of the value's first byte */
    int line, col;       /* out: 1-based, or 0/0 when not found */
} jsonpos_req_t;

/* Resolve every request in one scan. Requests may repeat. Returns 0, or -1
 * on allocation failure (requests not found keep 0/0). */
int jsonpos_resolve(const char *text, size_t len, jsonpos_req_t *reqs, size_t n);

/* One pointer. Returns 0 and fills line/col, or -1 when not found. */
int jsonpos_find(const char *text, size_t len, const char *pointer, int want_key,
                 int *line, int *col);

#endif
