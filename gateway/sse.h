/*
 * gateway/sse.h: an incremental framer for server-sent events
 * (text/event-stream, as the HTML Living Standard defines its parsing).
 *
 * Pure: no I/O, no JSON, no configuration. Bytes go in as they arrive, in
 * pieces of any size; each complete event whose data is not empty comes out
 * through the callback, its `data:` lines joined with "\n". Lines end with
 * CRLF, LF or CR (a CRLF split across two pieces is one line end). Comments
 * (lines starting with ':') and the other fields (event, id, retry, unknown
 * ones) are ignored. A UTF-8 byte order mark at the very start is skipped.
 *
 * Memory is bounded: an event whose data (or one of whose lines) grows past
 * `max_event` bytes is not kept; it is skipped whole and counted in
 * `oversized`, and the stream goes on with the next event. An event still
 * open when the stream ends is discarded, as the standard says.
 *
 * Ownership: the framer owns its buffers (sse_free). The data passed to the
 * callback is the framer's, valid during the call only, and NUL-terminated.
 */
#ifndef RW_GATEWAY_SSE_H
#define RW_GATEWAY_SSE_H

#include <stddef.h>
#include <stdint.h>

typedef void (*sse_event_fn)(void *arg, const char *data, size_t len);

typedef struct sse_framer {
    sse_event_fn on_event;
    void *arg;
    size_t max_event;   /* bound on an event's data and on one line */
    char *line;         /* the current line, without its end */
    size_t line_len, line_cap;
    char *data;         /* the current event's data so far */
    size_t data_len, data_cap;
    int has_data;       /* at least one data line in the current event */
    int skip_line;      /* the current line is over the bound: dropped */
    int skip_event;     /* the current event is over the bound: dropped */
    int after_cr;       /* the last byte was a CR: a following LF is its pair */
    int bom_state;      /* 0: start, 1..2: BOM bytes seen, 3: past the start */
    int failed;         /* out of memory: nothing more is framed */
    uint64_t events;    /* events passed to the callback */
    uint64_t oversized; /* events skipped for their size */
} sse_framer_t;

void sse_init(sse_framer_t *f, size_t max_event, sse_event_fn on_event, void *arg);
/* Feed n bytes. Returns 0, or -1 once out of memory (the framer then
 * ignores what follows; the caller treats the stream as unreadable). */
int sse_feed(sse_framer_t *f, const char *p, size_t n);
void sse_free(sse_framer_t *f);

#endif
