/*
 * tests/unit/test_http_parse.c: gateway/http/parse.c, the wire format:
 * request and response heads, strictness, chunked bodies with trailers,
 * and that every prefix of a valid input asks for more instead of failing;
 * and gateway/http/digits.h, the numbers answer heads are written with.
 */
#include <stdlib.h>

#include "../../gateway/http/digits.h"
#include "../../gateway/http/parse.h"
#include "testutil.h"

static int req(const char *s, hp_request_t *r, hp_field_t *f, size_t cap)
{
    memset(r, 0, sizeof *r);
    r->fields = f;
    r->n_fields = cap;
    return hp_parse_request(s, strlen(s), r);
}

static int req_rc(const char *s)
{
    hp_request_t r;
    hp_field_t f[16];
    return req(s, &r, f, 16);
}

static int res(const char *s, hp_response_t *r, hp_field_t *f, size_t cap)
{
    memset(r, 0, sizeof *r);
    r->fields = f;
    r->n_fields = cap;
    return hp_parse_response(s, strlen(s), r);
}

static int res_rc(const char *s)
{
    hp_response_t r;
    hp_field_t f[16];
    return res(s, &r, f, 16);
}

static void test_request_ok(void)
{
    const char *s = "\r\nPOST /v1/chat?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n"
                    "X-Y:  spaced value \t\r\nConnection: keep-alive, Upgrade\r\n\r\nbody";
    hp_request_t r;
    hp_field_t f[8];
    int n = req(s, &r, f, 8);
    CHECK(n == (int)strlen(s) - 4, "consumed %d", n);
    CHECK(r.method_len == 4 && memcmp(r.method, "POST", 4) == 0, "method");
    CHECK(r.target_len == 12 && memcmp(r.target, "/v1/chat?x=1", 12) == 0, "target");
    CHECK(r.minor_version == 1, "version");
    CHECK(r.n_fields == 4, "fields %zu", r.n_fields);
    CHECK(r.framing.content_length == 12 && !r.framing.chunked, "framing");
    CHECK(r.framing.conn_keep_alive && !r.framing.conn_close, "connection");
    const hp_field_t *x = hp_find(f, r.n_fields, "x-y");
    CHECK(x && x->value_len == 12 && memcmp(x->value, "spaced value", 12) == 0, "trimmed");

    /* bare LF line ends in a head */
    CHECK(req_rc("GET / HTTP/1.1\nHost: a\n\n") == 24, "bare LF");
    /* HTTP/1.0 needs no Host */
    CHECK(req_rc("GET / HTTP/1.0\r\n\r\n") == 18, "1.0 without Host");
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n") > 0,
          "chunked");
}

static void test_request_strict(void)
{
    CHECK(req_rc("GET / HTTP/1.1\r\n\r\n") == HP_E_HOST, "no Host");
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == HP_E_HOST, "two Hosts");
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n") ==
              HP_E_LENGTH,
          "two lengths");
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n") >
              0,
          "the same length twice");
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: \v5\r\n\r\n") == HP_E_FIELD,
          "VT in a length");
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n") == HP_E_LENGTH,
          "+5");
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1234567890123456789\r\n\r\n") ==
              HP_E_LENGTH,
          "19 digits");
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: "
                 "3\r\n\r\n") == HP_E_LENGTH,
          "TE and CL");
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: "
                 "chunked\r\n\r\n") == HP_E_TE,
          "gzip and chunked in two fields");
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n") ==
              HP_E_TE,
          "chunked twice");
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n") == HP_E_TE,
          "identity");
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n") == HP_E_FIELD, "obs-fold");
    CHECK(req_rc("GET / HTTP/1.1\r\nHost : a\r\n\r\n") == HP_E_FIELD, "space before colon");
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n") == HP_E_SYNTAX ||
              req_rc("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n") == HP_E_FIELD,
          "bare CR in a value");
    CHECK(req_rc("GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n") == HP_E_FIELD, "control byte");
    CHECK(req_rc("GET / HTTP/1.1\r\nHo\x7fst: a\r\n\r\n") == HP_E_FIELD, "DEL in a name");
    CHECK(req_rc("GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n") == HP_E_TARGET, "control in target");
    static const char nul[] = "GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n";
    hp_request_t r;
    hp_field_t f[4];
    memset(&r, 0, sizeof r);
    r.fields = f;
    r.n_fields = 4;
    CHECK(hp_parse_request(nul, sizeof nul - 1, &r) == HP_E_TARGET, "NUL in target");
    CHECK(req_rc("GET / HTTP/2.0\r\n\r\n") == HP_E_VERSION, "HTTP/2");
    CHECK(req_rc("GET / HTTX/1.1\r\n\r\n") == HP_E_SYNTAX, "not HTTP");
    CHECK(req_rc("G(T / HTTP/1.1\r\nHost: a\r\n\r\n") == HP_E_METHOD, "method not a token");
    CHECK(req_rc("GET  / HTTP/1.1\r\nHost: a\r\n\r\n") == HP_E_SYNTAX, "two spaces");
    CHECK(req(
              "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n", &r, f, 2) == HP_E_TOO_MANY,
          "too many fields");
}

static void test_prefixes_need_more(void)
{
    const char *s = "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n";
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i++) {
        hp_request_t r;
        hp_field_t f[8];
        memset(&r, 0, sizeof r);
        r.fields = f;
        r.n_fields = 8;
        int rc = hp_parse_request(s, i, &r);
        CHECK(rc == HP_NEED, "prefix %zu: %d", i, rc);
    }
    const char *t = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n";
    for (size_t i = 0; i < strlen(t); i++) {
        hp_response_t r;
        hp_field_t f[8];
        memset(&r, 0, sizeof r);
        r.fields = f;
        r.n_fields = 8;
        int rc = hp_parse_response(t, i, &r);
        CHECK(rc == HP_NEED, "response prefix %zu: %d", i, rc);
    }
}

static void test_response(void)
{
    hp_response_t r;
    hp_field_t f[8];
    CHECK(res("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", &r, f, 8) > 0, "ok");
    CHECK(r.status == 200 && r.reason_len == 2 && hp_response_body(0, &r) == HP_BODY_LENGTH,
          "200");
    CHECK(hp_response_body(1, &r) == HP_BODY_NONE, "HEAD has no body");
    CHECK(res("HTTP/1.1 204\r\n\r\n", &r, f, 8) > 0 && r.status == 204 && r.reason_len == 0 &&
              hp_response_body(0, &r) == HP_BODY_NONE,
          "204 without a reason");
    CHECK(res("HTTP/1.0 200 OK\r\n\r\n", &r, f, 8) > 0 && hp_response_body(0, &r) == HP_BODY_CLOSE,
          "close-delimited");
    CHECK(res("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", &r, f, 8) > 0 &&
              hp_response_body(0, &r) == HP_BODY_CHUNKED,
          "chunked");
    CHECK(res("HTTP/1.1 100 Continue\r\n\r\n", &r, f, 8) > 0 && r.status == 100 &&
              hp_response_body(0, &r) == HP_BODY_NONE,
          "1xx");
    CHECK(res_rc("HTTP/1.1 200 O\rK\r\n\r\n") == HP_E_STATUS, "CR in the reason");
    CHECK(res_rc("HTTP/1.1 200 O\x01K\r\n\r\n") == HP_E_STATUS, "control in the reason");
    CHECK(res_rc("HTTP/1.1 20x OK\r\n\r\n") == HP_E_STATUS, "status digits");
    CHECK(res_rc("HTTP/1.1 099 OK\r\n\r\n") == HP_E_STATUS, "status < 100");
    CHECK(res_rc("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n") ==
              HP_E_LENGTH,
          "both framings");
    CHECK(res_rc("HTTP/1.1 200 OK\r\nX: a\x0b\r\n\r\n") == HP_E_FIELD, "VT in a value");
}

/* Decode a whole chunked body, fed in pieces of `step` bytes; returns the
 * data joined, the last trailer's value in trailer, or NULL on error. */
static char *decode(const char *s, size_t step, char *trailer, int *err)
{
    hp_chunked_t d;
    hp_chunked_init(&d);
    static char out[4096];
    size_t o = 0, have = 0, pos = 0, n = strlen(s);
    *err = 0;
    trailer[0] = '\0';
    for (;;) {
        hp_chunk_ev_t ev;
        int rc = hp_chunked_next(&d, s + pos, have - pos, &ev);
        if (rc == HP_NEED) {
            if (have == n) {
                *err = HP_NEED;
                return NULL;
            }
            have = have + step > n ? n : have + step;
            continue;
        }
        if (rc < 0) {
            *err = rc;
            return NULL;
        }
        pos += (size_t)rc;
        if (ev.type == HP_CH_DATA) {
            memcpy(out + o, ev.data, ev.len);
            o += ev.len;
        } else if (ev.type == HP_CH_TRAILER) {
            memcpy(trailer, ev.field.value, ev.field.value_len);
            trailer[ev.field.value_len] = '\0';
        } else if (ev.type == HP_CH_END) {
            out[o] = '\0';
            return out;
        }
    }
}

static void test_chunked(void)
{
    const char *body = "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Units-Used: 42\r\n\r\n";
    for (size_t step = 1; step <= strlen(body); step++) {
        char tr[64];
        int err;
        char *out = decode(body, step, tr, &err);
        CHECK(out && strcmp(out, "hello world") == 0, "step %zu: %s (%d)", step,
              out ? out : "(null)", err);
        CHECK(strcmp(tr, "42") == 0, "step %zu: trailer %s", step, tr);
    }
    char tr[64];
    int err;
    CHECK(!decode("5\nhello\r\n0\r\n\r\n", 64, tr, &err) && err == HP_E_CHUNK, "bare LF");
    CHECK(!decode("5\r\nhelloX\r\n0\r\n\r\n", 64, tr, &err) && err == HP_E_CHUNK,
          "data longer than its size");
    CHECK(!decode("fffffffffffffffff\r\n", 64, tr, &err) && err == HP_E_CHUNK, "size overflow");
    CHECK(!decode("x\r\n", 64, tr, &err) && err == HP_E_CHUNK, "no size");
    CHECK(!decode("5 x\r\nhello\r\n0\r\n\r\n", 64, tr, &err) && err == HP_E_CHUNK,
          "junk after the size");
    CHECK(!decode("0\r\nnot a field\r\n\r\n", 64, tr, &err) && err == HP_E_CHUNK,
          "trailer line not a field");
    CHECK(decode("5 ; a=b\r\nhello\r\n0\r\n\r\n", 64, tr, &err) != NULL, "extension with BWS");
}

/* Every byte at every place of a field value of up to 24 bytes (the
 * value check goes eight bytes at a time): refused exactly when it is a
 * control byte other than a tab (CR and LF end the line: left out), or
 * DEL; a tab or a space at either end is trimmed, not refused. */
static void test_value_bytes(void)
{
    int wrong = 0;
    for (int len = 1; len <= 24; len++) {
        for (int at = 0; at < len; at++) {
            for (int b = 0; b < 256; b++) {
                if (b == '\r' || b == '\n')
                    continue;
                char head[128];
                int n = snprintf(head, sizeof head, "GET / HTTP/1.1\r\nHost: a\r\nX: ");
                for (int i = 0; i < len; i++)
                    head[n + i] = i == at ? (char)b : 'v';
                n += len;
                n += snprintf(head + n, sizeof head - (size_t)n, "\r\n\r\n");
                hp_request_t r;
                hp_field_t f[16];
                memset(&r, 0, sizeof r);
                r.fields = f;
                r.n_fields = 16;
                int rc = hp_parse_request(head, (size_t)n, &r);
                int bad = (b < 0x20 && b != '\t') || b == 0x7f;
                if (bad ? rc != HP_E_FIELD : rc != n)
                    wrong++;
            }
        }
    }
    CHECK(wrong == 0, "%d values judged wrongly", wrong);
}

/* Every power of ten, one below it and one above, every value below
 * 10000 and the largest: as printf writes them. */
static void test_digits(void)
{
    int wrong = 0;
    uint64_t probe[200];
    size_t n = 0;
    probe[n++] = 0;
    probe[n++] = UINT64_MAX;
    probe[n++] = UINT64_MAX - 1;
    for (uint64_t p = 1;; p *= 10) {
        probe[n++] = p - 1;
        probe[n++] = p;
        probe[n++] = p + 1;
        if (p > UINT64_MAX / 10)
            break;
    }
    for (uint64_t v = 0; v < 10000 + n; v++) {
        uint64_t x = v < n ? probe[v] : v - n;
        char want[32], got[32];
        snprintf(want, sizeof want, "%llu", (unsigned long long)x);
        size_t len = uint_len(x);
        memset(got, 'x', sizeof got);
        size_t w = put_uint_n(got, x, len);
        if (len != strlen(want) || w != len || memcmp(got, want, len) != 0 || got[len] != 'x')
            wrong++;
    }
    CHECK(wrong == 0, "%d numbers written wrongly", wrong);
}

int main(void)
{
    test_digits();
    test_value_bytes();
    test_request_ok();
    test_request_strict();
    test_prefixes_need_more();
    test_response();
    test_chunked();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("http parse: all checks passed\n");
    return 0;
}
