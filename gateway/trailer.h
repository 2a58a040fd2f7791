/*
 * gateway/trailer.h: the value of one field in the trailer of a chunked
 * HTTP/1.1 answer, read from the raw bytes of the backend connection.
 *
 * libevent 2.1's HTTP client reads a chunked answer's trailer and drops it
 * (its fields never reach the answer's headers), so the proxy watches the
 * bytes that arrive on the connection and this scanner follows the framing
 * alongside: the head (interim 1xx heads skipped), then, when the answer
 * is chunked, each chunk-size line and chunk, then the trailer fields.
 *
 * Pure: no I/O. Bounded: a line longer than TRAILER_LINE_MAX is not kept
 * (a field in it is not read). Ownership: the scanner owns its value
 * buffer (trailer_scan_free); `name` is borrowed and must outlive it.
 */
#ifndef RW_GATEWAY_TRAILER_H
#define RW_GATEWAY_TRAILER_H

#include <stddef.h>
#include <stdint.h>

#define TRAILER_LINE_MAX 8192

typedef struct trailer_scan {
    const char *name;    /* field to find, compared case-insensitively */
    int state;           /* where in the answer the next byte is */
    int chunked;         /* the head said Transfer-Encoding: chunked */
    int bad;             /* framing not understood: nothing more is read */
    int64_t left;        /* bytes of the current chunk still to come */
    char line[TRAILER_LINE_MAX];
    size_t line_len;
    int line_long;       /* the current line went past the bound */
    char *value;         /* the last value of `name` in the trailer, or NULL */
    int done;            /* the trailer has ended */
} trailer_scan_t;

void trailer_scan_init(trailer_scan_t *t, const char *name);
void trailer_scan_feed(trailer_scan_t *t, const char *p, size_t n);
void trailer_scan_free(trailer_scan_t *t);

#endif
