/* tests/fuzz/fuzz_sse.c: libFuzzer target for the server-sent events framer
 * (gateway/sse.c). The input's first byte picks the event bound and the
 * size of the pieces it is fed in; whatever the pieces, the events that come
 * out must be the same as when the whole input is fed at once, and each
 * must respect the bound. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../gateway/sse.h"

typedef struct {
    unsigned char *out;
    size_t len, cap;
    size_t max;
} sink_t;

static void on_event(void *arg, const char *data, size_t len)
{
    sink_t *s = arg;
    if (len > s->max || data[len] != '\0')
        abort();
    size_t need = s->len + len + sizeof len;
    if (need > s->cap) {
        s->cap = need * 2;
        s->out = realloc(s->out, s->cap);
        if (!s->out)
            abort();
    }
    memcpy(s->out + s->len, &len, sizeof len);
    memcpy(s->out + s->len + sizeof len, data, len);
    s->len = need;
}

static void run(const uint8_t *p, size_t n, size_t max, size_t step, sink_t *s,
                uint64_t *oversized)
{
    sse_framer_t f;
    memset(s, 0, sizeof *s);
    s->max = max;
    sse_init(&f, max, on_event, s);
    for (size_t i = 0; i < n; i += step)
        sse_feed(&f, (const char *)p + i, i + step > n ? n - i : step);
    *oversized = f.oversized;
    sse_free(&f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t max = 1 + (data[0] & 0x3f);
    size_t step = 1 + (data[0] >> 6) * 3;
    sink_t whole, pieces;
    uint64_t o1, o2;
    run(data + 1, size - 1, max, size, &whole, &o1);
    run(data + 1, size - 1, max, step, &pieces, &o2);
    if (whole.len != pieces.len || o1 != o2 ||
        (whole.len && memcmp(whole.out, pieces.out, whole.len) != 0))
        abort();
    free(whole.out);
    free(pieces.out);
    return 0;
}
