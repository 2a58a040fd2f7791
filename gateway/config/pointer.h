/*
 * gateway/config/pointer.h: JSON pointers (RFC 6901), the one place that
 * knows their syntax: checking one written in the config, escaping a
 * member name into one (error paths), and resolving one in a document
 * (units, reconcile, jobs).
 */
#ifndef RW_GATEWAY_CONFIG_POINTER_H
#define RW_GATEWAY_CONFIG_POINTER_H

#include <stddef.h>

#include <jansson.h>

/* Why p is not a valid pointer ("" or "/..." with "~" only as "~0" or
 * "~1"), or NULL when it is. */
const char *json_pointer_problem(const char *p);

/* How one byte of a member name is written in a pointer: its escape
 * ("~0" for '~', "~1" for '/') or the byte itself. Writes 1 or 2 bytes to
 * out and returns how many. */
size_t json_pointer_escape(unsigned char ch, char out[2]);

/* The value at ptr (valid, as json_pointer_problem says) in root, borrowed
 * from root; NULL when there is none. An array index is decimal digits
 * without a leading zero. A reference token longer than 255 bytes is cut
 * to its first 255. */
json_t *json_pointer_get(json_t *root, const char *ptr);

#endif
