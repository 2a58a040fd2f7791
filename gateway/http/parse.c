/*
 * gateway/http/parse.c: see parse.h. Everything here reads the caller's
 * bytes and writes only the caller's structs.
 */
#include "parse.h"
#include "bytes.h"

#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

const char *hp_strerror(int code)
{
    switch (code) {
    case HP_NEED: return "incomplete";
    case HP_E_SYNTAX: return "not valid HTTP/1.x";
    case HP_E_TOO_MANY: return "too many header fields";
    case HP_E_METHOD: return "the method is not a token";
    case HP_E_VERSION: return "the HTTP version is not supported";
    case HP_E_LENGTH: return "the Content-Length is not valid";
    case HP_E_TE: return "only Transfer-Encoding: chunked is supported";
    case HP_E_TARGET: return "the request target is not valid";
    case HP_E_HOST: return "an HTTP/1.1 request needs exactly one Host";
    case HP_E_FIELD: return "a header field line is not valid";
    case HP_E_CHUNK: return "the chunked framing is not valid";
    case HP_E_STATUS: return "the status line is not valid";
    }
    return "error";
}

/* tchar (RFC 9110 5.6.2): a byte of a token, by table (every byte of
 * every field name goes through it). */
#define TC_RANGE(lo, hi) [lo ... hi] = 1
static const unsigned char tchar[256] = {
    TC_RANGE('a', 'z'), TC_RANGE('A', 'Z'), TC_RANGE('0', '9'),
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1,
    ['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
};
#undef TC_RANGE

static int is_tchar(unsigned char ch)
{
    return tchar[ch];
}

/* A byte a field value or reason phrase may hold: VCHAR, obs-text, SP, HTAB. */
static int is_value_byte(unsigned char ch)
{
    return ch == '\t' || (ch >= ' ' && ch != 0x7f);
}

/* Whether [p, e) holds value bytes only: eight at a time while a word has
 * no byte below 0x20 and none 0x7f (the two tests are exact for "any"),
 * byte by byte in a word that has one (a tab, or a byte refused). */
static int all_value_bytes(const char *p, const char *e)
{
    while (e - p >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        if (word_has_below(w, 0x20) | word_has_byte(w, 0x7f)) {
            for (int i = 0; i < 8; i++)
                if (!is_value_byte((unsigned char)p[i]))
                    return 0;
        }
        p += 8;
    }
    for (; p < e; p++)
        if (!is_value_byte((unsigned char)*p))
            return 0;
    return 1;
}

static int eq_ci(const char *a, size_t n, const char *lit)
{
    return strlen(lit) == n && strncasecmp(a, lit, n) == 0;
}

/* The next line at buf[pos..len): its end (before CR LF or LF) in *le and
 * the position after it in *next. 0, HP_NEED, or HP_E_SYNTAX for a CR not
 * followed by LF. bare_lf: whether a lone LF ends a line. A CR inside the
 * line is an error too, unless field: a field line's every byte is
 * checked by parse_field, which refuses a CR. */
static int next_line(const char *buf, size_t len, size_t pos, int bare_lf, int field,
                     size_t *le, size_t *next)
{
    const char *nl = memchr(buf + pos, '\n', len - pos);
    if (!nl) {
        /* A CR that cannot start a CRLF is already an error. */
        const char *cr = memchr(buf + pos, '\r', len - pos);
        if (cr && (size_t)(cr - buf) + 1 < len)
            return HP_E_SYNTAX;
        return HP_NEED;
    }
    size_t n = (size_t)(nl - buf);
    size_t e = n;
    if (e > pos && buf[e - 1] == '\r')
        e--;
    else if (!bare_lf)
        return HP_E_SYNTAX;
    if (!field && memchr(buf + pos, '\r', e - pos))
        return HP_E_SYNTAX;
    *le = e;
    *next = n + 1;
    return 0;
}

int hp_list_has(const char *v, size_t len, const char *t)
{
    size_t n = strlen(t);
    size_t i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < len && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e - s == n && strncasecmp(v + s, t, n) == 0)
            return 1;
    }
    return 0;
}

const hp_field_t *hp_find(const hp_field_t *f, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (eq_ci(f[i].name, f[i].name_len, name))
            return &f[i];
    return NULL;
}

/* One field line [s, e) into *f. 0 or HP_E_FIELD. */
static int parse_field(const char *s, const char *e, hp_field_t *f)
{
    if (s == e || *s == ' ' || *s == '\t')
        return HP_E_FIELD; /* empty name, or obs-fold */
    const char *c = s;
    while (c < e && is_tchar((unsigned char)*c))
        c++;
    if (c == s || c == e || *c != ':')
        return HP_E_FIELD; /* no colon, a non-token byte, or space before it */
    const char *v = c + 1, *ve = e;
    while (v < ve && (*v == ' ' || *v == '\t'))
        v++;
    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
        ve--;
    if (!all_value_bytes(v, ve))
        return HP_E_FIELD;
    f->name = s;
    f->name_len = (size_t)(c - s);
    f->value = v;
    f->value_len = (size_t)(ve - v);
    return 0;
}

/* Content-Length: 1 to 18 digits. */
static int parse_length(const char *v, size_t n, int64_t *out)
{
    if (n == 0 || n > 18)
        return -1;
    int64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        x = x * 10 + (v[i] - '0');
    }
    *out = x;
    return 0;
}

/* What one field says about framing; te_codings counts codings seen,
 * te_chunked_last whether the last of them is chunked. */
typedef struct te_state {
    int codings;
    int chunked_last;
} te_state_t;

static int note_framing(const hp_field_t *f, hp_framing_t *fr, te_state_t *te)
{
    if (eq_ci(f->name, f->name_len, "Content-Length")) {
        int64_t n;
        if (parse_length(f->value, f->value_len, &n) != 0 ||
            (fr->content_length >= 0 && fr->content_length != n))
            return HP_E_LENGTH;
        fr->content_length = n;
    } else if (eq_ci(f->name, f->name_len, "Transfer-Encoding")) {
        size_t i = 0, len = f->value_len;
        const char *v = f->value;
        int any = 0;
        while (i < len) {
            while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
                i++;
            size_t s = i;
            while (i < len && v[i] != ',')
                i++;
            size_t e = i;
            while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
                e--;
            if (e > s) {
                te->codings++;
                te->chunked_last = eq_ci(v + s, e - s, "chunked");
                any = 1;
            }
        }
        if (!any)
            return HP_E_TE;
    } else if (eq_ci(f->name, f->name_len, "Connection")) {
        fr->conn_close |= hp_list_has(f->value, f->value_len, "close");
        fr->conn_keep_alive |= hp_list_has(f->value, f->value_len, "keep-alive");
    } else if (eq_ci(f->name, f->name_len, "Expect")) {
        if (eq_ci(f->value, f->value_len, "100-continue"))
            fr->expect_continue = 1;
        else
            fr->expect_other = 1;
    } else if (eq_ci(f->name, f->name_len, "Host")) {
        fr->n_host++;
    }
    return 0;
}

/* The field lines from pos up to and including the empty line. Returns
 * the bytes taken in all (from 0), HP_NEED or an error. */
static int parse_fields(const char *buf, size_t len, size_t pos, hp_field_t *fields,
                        size_t *n_fields, hp_framing_t *fr)
{
    size_t cap = *n_fields, n = 0;
    te_state_t te = {0, 0};
    memset(fr, 0, sizeof *fr);
    fr->content_length = -1;
    for (;;) {
        size_t le, next;
        int rc = next_line(buf, len, pos, 1, 1, &le, &next);
        if (rc != 0)
            return rc == HP_E_SYNTAX ? HP_E_FIELD : rc;
        if (le == pos) {
            pos = next;
            break;
        }
        hp_field_t f;
        if (parse_field(buf + pos, buf + le, &f) != 0)
            return HP_E_FIELD;
        if (n == cap)
            return HP_E_TOO_MANY;
        if ((rc = note_framing(&f, fr, &te)) != 0)
            return rc;
        fields[n++] = f;
        pos = next;
    }
    *n_fields = n;
    if (te.codings) {
        if (te.codings != 1 || !te.chunked_last)
            return HP_E_TE;
        if (fr->content_length >= 0)
            return HP_E_LENGTH; /* both framings: a smuggling attempt */
        fr->chunked = 1;
    }
    if (pos > INT_MAX)
        return HP_E_SYNTAX;
    return (int)pos;
}

/* "HTTP/1.x" at s: the minor version, or -1. */
static int version_of(const char *s, size_t n)
{
    if (n != 8 || memcmp(s, "HTTP/", 5) != 0 || s[6] != '.' || s[5] < '0' || s[5] > '9' ||
        s[7] < '0' || s[7] > '9')
        return -2;
    if (s[5] != '1')
        return -1;
    return s[7] == '0' ? 0 : 1;
}

int hp_parse_request(const char *buf, size_t len, hp_request_t *req)
{
    size_t pos = 0;
    while (pos < len && (buf[pos] == '\r' || buf[pos] == '\n')) {
        if (buf[pos] == '\r' && (pos + 1 >= len || buf[pos + 1] != '\n'))
            return pos + 1 >= len ? HP_NEED : HP_E_SYNTAX;
        pos += buf[pos] == '\r' ? 2 : 1;
    }
    size_t le, next;
    int rc = next_line(buf, len, pos, 1, 0, &le, &next);
    if (rc != 0)
        return rc;
    const char *s = buf + pos, *e = buf + le;
    const char *sp1 = memchr(s, ' ', (size_t)(e - s));
    if (!sp1 || sp1 == s)
        return HP_E_SYNTAX;
    for (const char *p = s; p < sp1; p++)
        if (!is_tchar((unsigned char)*p))
            return HP_E_METHOD;
    const char *t = sp1 + 1;
    const char *sp2 = memchr(t, ' ', (size_t)(e - t));
    if (!sp2 || sp2 == t)
        return HP_E_SYNTAX;
    for (const char *p = t; p < sp2; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f)
            return HP_E_TARGET;
    int minor = version_of(sp2 + 1, (size_t)(e - sp2 - 1));
    if (minor == -2)
        return HP_E_SYNTAX;
    if (minor < 0)
        return HP_E_VERSION;
    req->method = s;
    req->method_len = (size_t)(sp1 - s);
    req->target = t;
    req->target_len = (size_t)(sp2 - t);
    req->minor_version = minor;
    rc = parse_fields(buf, len, next, req->fields, &req->n_fields, &req->framing);
    if (rc < 0)
        return rc;
    if (minor == 1 ? req->framing.n_host != 1 : req->framing.n_host > 1)
        return HP_E_HOST;
    return rc;
}

int hp_parse_response(const char *buf, size_t len, hp_response_t *res)
{
    size_t le, next;
    int rc = next_line(buf, len, 0, 1, 0, &le, &next);
    if (rc != 0)
        return rc == HP_E_SYNTAX ? HP_E_STATUS : rc;
    const char *s = buf, *e = buf + le;
    if (e - s < 12 || s[8] != ' ')
        return HP_E_STATUS;
    int minor = version_of(s, 8);
    if (minor == -2)
        return HP_E_STATUS;
    if (minor < 0)
        return HP_E_VERSION;
    int status = 0;
    for (int i = 9; i < 12; i++) {
        if (s[i] < '0' || s[i] > '9')
            return HP_E_STATUS;
        status = status * 10 + (s[i] - '0');
    }
    if (status < 100)
        return HP_E_STATUS;
    const char *r = s + 12;
    if (r < e) {
        if (*r != ' ')
            return HP_E_STATUS;
        r++;
    }
    for (const char *p = r; p < e; p++)
        if (!is_value_byte((unsigned char)*p))
            return HP_E_STATUS;
    res->status = status;
    res->reason = r;
    res->reason_len = (size_t)(e - r);
    res->minor_version = minor;
    return parse_fields(buf, len, next, res->fields, &res->n_fields, &res->framing);
}

enum hp_body hp_response_body(int is_head, const hp_response_t *res)
{
    if (is_head || res->status < 200 || res->status == 204 || res->status == 304)
        return HP_BODY_NONE;
    if (res->framing.chunked)
        return HP_BODY_CHUNKED;
    if (res->framing.content_length >= 0)
        return res->framing.content_length ? HP_BODY_LENGTH : HP_BODY_NONE;
    return HP_BODY_CLOSE;
}

/* ---- chunked ------------------------------------------------------------ */

void hp_chunked_init(hp_chunked_t *d)
{
    memset(d, 0, sizeof *d);
}

static int hexval(char ch)
{
    return ch >= '0' && ch <= '9'   ? ch - '0'
           : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
           : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                    : -1;
}

/* A framing line (CRLF only) at buf[0..len), at most max bytes. */
static int chunk_line(const hp_chunked_t *d, const char *buf, size_t len, size_t *le,
                      size_t *next)
{
    size_t max = d->max_line ? d->max_line : 4096;
    size_t look = len < max ? len : max;
    int rc = next_line(buf, look, 0, 0, 0, le, next);
    if (rc == HP_NEED && len >= max)
        return HP_E_CHUNK;
    return rc == 0 ? 0 : rc == HP_NEED ? HP_NEED : HP_E_CHUNK;
}

int hp_chunked_next(hp_chunked_t *d, const char *buf, size_t len, hp_chunk_ev_t *ev)
{
    size_t le, next;
    int rc;
    ev->type = HP_CH_NONE;
    switch (d->state) {
    case HP_CH_SIZE: {
        if ((rc = chunk_line(d, buf, len, &le, &next)) != 0)
            return rc;
        int64_t n = 0;
        size_t i = 0;
        for (; i < le && hexval(buf[i]) >= 0; i++) {
            if (i == 15)
                return HP_E_CHUNK;
            n = n * 16 + hexval(buf[i]);
        }
        if (i == 0)
            return HP_E_CHUNK;
        size_t j = i;
        while (j < le && (buf[j] == ' ' || buf[j] == '\t'))
            j++;
        if (j < le && buf[j] != ';')
            return HP_E_CHUNK;
        for (; j < le; j++)
            if (!is_value_byte((unsigned char)buf[j]))
                return HP_E_CHUNK;
        d->left = n;
        d->state = n ? HP_CH_DATA_IN : HP_CH_TRAILERS;
        return (int)next;
    }
    case HP_CH_DATA_IN: {
        if (len == 0)
            return HP_NEED;
        size_t n = len;
        if ((int64_t)n > d->left)
            n = (size_t)d->left;
        if (n > INT_MAX)
            n = INT_MAX;
        ev->type = HP_CH_DATA;
        ev->data = buf;
        ev->len = n;
        d->left -= (int64_t)n;
        if (d->left == 0)
            d->state = HP_CH_DATA_CRLF;
        return (int)n;
    }
    case HP_CH_DATA_CRLF:
        if (len < 2) {
            if (len == 1 && buf[0] != '\r')
                return HP_E_CHUNK;
            return HP_NEED;
        }
        if (buf[0] != '\r' || buf[1] != '\n')
            return HP_E_CHUNK;
        d->state = HP_CH_SIZE;
        return 2;
    case HP_CH_TRAILERS:
        if ((rc = chunk_line(d, buf, len, &le, &next)) != 0)
            return rc;
        if (le == 0) {
            d->state = HP_CH_DONE;
            ev->type = HP_CH_END;
            return (int)next;
        }
        if (parse_field(buf, buf + le, &ev->field) != 0)
            return HP_E_CHUNK;
        ev->type = HP_CH_TRAILER;
        return (int)next;
    case HP_CH_DONE:
        ev->type = HP_CH_END;
        return 0;
    }
    return HP_E_CHUNK;
}
