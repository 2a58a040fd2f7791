/*
 * tests/fuzz/fuzz_request.c: libFuzzer target for the request side of
 * gateway/http/parse.c: a request head, then (when the head says so) a
 * chunked body. Checks that every answer stays inside the input and that
 * the parser's results agree with each other.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../gateway/http/parse.h"

#define INSIDE(p, n, buf, len) \
    ((const char *)(p) >= (buf) && (const char *)(p) + (n) <= (buf) + (len))

static void chunked(const char *buf, size_t len)
{
    hp_chunked_t d;
    hp_chunked_init(&d);
    size_t pos = 0;
    for (int guard = 0; guard < 100000; guard++) {
        hp_chunk_ev_t ev;
        int rc = hp_chunked_next(&d, buf + pos, len - pos, &ev);
        if (rc < 0)
            return;
        if ((size_t)rc > len - pos)
            abort();
        if (ev.type == HP_CH_DATA && (!INSIDE(ev.data, ev.len, buf, len) || ev.len == 0))
            abort();
        if (ev.type == HP_CH_TRAILER &&
            (!INSIDE(ev.field.name, ev.field.name_len, buf, len) ||
             !INSIDE(ev.field.value, ev.field.value_len, buf, len)))
            abort();
        pos += (size_t)rc;
        if (ev.type == HP_CH_END)
            return;
        if (rc == 0)
            abort(); /* no progress without an end */
    }
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    hp_field_t f[32];
    hp_request_t r;
    memset(&r, 0, sizeof r);
    r.fields = f;
    r.n_fields = 32;
    int rc = hp_parse_request(buf, size, &r);
    if (rc < 0)
        return 0;
    if ((size_t)rc > size || r.n_fields > 32 || !INSIDE(r.method, r.method_len, buf, size) ||
        !INSIDE(r.target, r.target_len, buf, size) || r.method_len == 0 || r.target_len == 0)
        abort();
    for (size_t i = 0; i < r.n_fields; i++)
        if (!INSIDE(f[i].name, f[i].name_len, buf, (size_t)rc) ||
            !INSIDE(f[i].value, f[i].value_len, buf, (size_t)rc) || f[i].name_len == 0)
            abort();
    if (r.framing.chunked && r.framing.content_length >= 0)
        abort();
    if (r.minor_version == 1 && r.framing.n_host != 1)
        abort();
    if (r.framing.chunked)
        chunked(buf + rc, size - (size_t)rc);
    return 0;
}
