/*
 * tests/fuzz/fuzz_response.c: libFuzzer target for the backend side of
 * gateway/http/parse.c: a response head, then its body framing (chunked
 * with trailers).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../gateway/http/parse.h"

#define INSIDE(p, n, buf, len) \
    ((const char *)(p) >= (buf) && (const char *)(p) + (n) <= (buf) + (len))

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    hp_field_t f[32];
    hp_response_t r;
    memset(&r, 0, sizeof r);
    r.fields = f;
    r.n_fields = 32;
    int rc = hp_parse_response(buf, size, &r);
    if (rc < 0)
        return 0;
    if ((size_t)rc > size || r.status < 100 || r.status > 999 ||
        !INSIDE(r.reason, r.reason_len, buf, size))
        abort();
    for (size_t i = 0; i < r.reason_len; i++)
        if (r.reason[i] == '\r' || r.reason[i] == '\n')
            abort(); /* response splitting */
    for (size_t i = 0; i < r.n_fields; i++) {
        if (!INSIDE(f[i].value, f[i].value_len, buf, (size_t)rc))
            abort();
        if (memchr(f[i].value, '\r', f[i].value_len) || memchr(f[i].value, '\n', f[i].value_len))
            abort();
    }
    if (hp_response_body(0, &r) != HP_BODY_CHUNKED)
        return 0;
    hp_chunked_t d;
    hp_chunked_init(&d);
    size_t pos = (size_t)rc;
    for (int guard = 0; guard < 100000; guard++) {
        hp_chunk_ev_t ev;
        int k = hp_chunked_next(&d, buf + pos, size - pos, &ev);
        if (k < 0)
            return 0;
        if ((size_t)k > size - pos)
            abort();
        if (ev.type == HP_CH_DATA && !INSIDE(ev.data, ev.len, buf, size))
            abort();
        pos += (size_t)k;
        if (ev.type == HP_CH_END)
            return 0;
        if (k == 0)
            abort();
    }
    abort();
}
