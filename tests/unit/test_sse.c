/* tests/unit/test_sse.c: the server-sent events framer (gateway/sse.c),
 * fed every way a stream can be cut into pieces. */
#include <stdlib.h>

#include "../../gateway/sse.h"
#include "testutil.h"

typedef struct {
    char out[4096];
    size_t len;
    int n;
} sink_t;

/* Events are written as "[data]" one after the other. */
static void on_event(void *arg, const char *data, size_t len)
{
    sink_t *s = arg;
    CHECK(data[len] == '\0', "event data is NUL-terminated");
    s->len += (size_t)snprintf(s->out + s->len, sizeof s->out - s->len, "[%s]", data);
    s->n++;
}

/* Frame text fed in pieces of `step` bytes; returns what came out. */
static const char *frame(const char *text, size_t step, size_t max, sse_framer_t *f, sink_t *s)
{
    memset(s, 0, sizeof *s);
    sse_init(f, max, on_event, s);
    size_t n = strlen(text);
    for (size_t i = 0; i < n; i += step)
        CHECK(sse_feed(f, text + i, i + step > n ? n - i : step) == 0, "feed");
    return s->out;
}

static void same_at_every_step(const char *text, size_t max, const char *want, int oversized)
{
    size_t n = strlen(text);
    for (size_t step = 1; step <= n; step++) {
        sse_framer_t f;
        sink_t s;
        const char *got = frame(text, step, max, &f, &s);
        CHECK(strcmp(got, want) == 0, "pieces of %zu of %.40s...: got %s, want %s", step, text,
              got, want);
        CHECK(f.oversized == (uint64_t)oversized, "oversized %llu, want %d (step %zu)",
              (unsigned long long)f.oversized, oversized, step);
        sse_free(&f);
    }
}

int main(void)
{
    /* LF, CRLF and CR line ends; a CRLF split between pieces is one end. */
    same_at_every_step("data: a\n\ndata: b\r\n\r\ndata: c\r\rdata: d\n\n", 64,
                       "[a][b][c][d]", 0);
    /* A CRLF split between two pieces is one line end, not two (two would
     * end the event after its first line). */
    same_at_every_step("data: a\r\ndata: b\r\n\r\n", 64, "[a\nb]", 0);
    /* Several data lines joined with \n; one space after the colon is dropped. */
    same_at_every_step("data: one\ndata:two\ndata:  three\n\n", 64, "[one\ntwo\n three]", 0);
    /* Comments and other fields are ignored; an event with no data is none. */
    same_at_every_step(": keep-alive\n\nevent: message_start\nid: 7\nretry: 10\n"
                       "data: {\"x\":1}\n\nevent: ping\n\n",
                       64, "[{\"x\":1}]", 0);
    /* "data" without a colon is an empty data line; "datax:" is another field. */
    same_at_every_step("data\n\ndatax: no\n\ndata: yes\n\n", 64, "[][yes]", 0);
    /* A byte order mark at the start is skipped, nowhere else. */
    same_at_every_step("\xEF\xBB\xBF" "data: a\n\n", 64, "[a]", 0);
    same_at_every_step("\xEF\xBB" "data: a\n\ndata: b\n\n", 64, "[b]", 0);
    /* An event past the bound is skipped whole, the next one comes out. */
    same_at_every_step("data: 0123456789\ndata: 0123456789\n\ndata: ok\n\n", 16, "[ok]", 1);
    /* A single data line far past the bound (its end dropped), then more. */
    same_at_every_step("data: 0123456789012345678901234567890123456789\n\n"
                       ": 0123456789012345678901234567890123456789\ndata: ok\n\n",
                       8, "[ok]", 1);
    /* An event the stream ends in the middle of is not passed on. */
    same_at_every_step("data: a\n\ndata: cut", 64, "[a]", 0);
    same_at_every_step("data: a\n\ndata: cut\n", 64, "[a]", 0);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("test_sse: all passed\n");
    return 0;
}
