/*
 * gateway/config/jsonpos.c: positions of JSON pointers in a JSON text (see jsonpos.h).
 *
 * The requests are sorted by pointer. The scanner walks the text forward
 * keeping the pointer of the value it stands on; it enters a container only
 * if some request lies below it (the requests below pointer P are the
 * contiguous run starting at lower_bound(P + "/")), and skims every other
 * value. Positions found are increasing, so LINE:COL are counted
 * incrementally from the last one: the whole thing is one pass.
 */
#include "jsonpos.h"
#include "pointer.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct walker {
    const char *s;
    size_t len, i;
    jsonpos_req_t *reqs;
    size_t *ord; /* request indices sorted by (pointer, want_key) */
    size_t n, left;
    char *path; /* pointer of the current value, NUL-terminated */
    size_t plen, pcap;
    int oom, bad;
    /* incremental LINE:COL: the position of byte lc_off */
    size_t lc_off;
    int lc_line, lc_col;
} walker_t;

/* Requests sorted by (pointer, want_key, index), without a global. */
typedef struct sortent {
    const char *p;
    int k;
    size_t idx;
} sortent_t;

static int cmp_ent(const void *a, const void *b)
{
    const sortent_t *x = a, *y = b;
    int r = strcmp(x->p, y->p);
    if (r)
        return r;
    if (x->k != y->k)
        return x->k - y->k;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

static void advance_lc(walker_t *w, size_t off)
{
    if (off > w->len)
        off = w->len;
    if (off < w->lc_off) { /* never happens in a forward scan; restart */
        w->lc_off = 0;
        w->lc_line = 1;
        w->lc_col = 1;
    }
    for (size_t k = w->lc_off; k < off; k++) {
        unsigned char ch = (unsigned char)w->s[k];
        if (ch == '\n') {
            w->lc_line++;
            w->lc_col = 1;
        } else if ((ch & 0xC0) != 0x80) {
            w->lc_col++;
        }
    }
    w->lc_off = off;
}

/* First index in ord whose pointer is >= p (string order). */
static size_t lower_bound(const walker_t *w, const char *p)
{
    size_t lo = 0, hi = w->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(w->reqs[w->ord[mid]].pointer, p) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Record the position `off` for requests (current path, want_key). */
static void mark(walker_t *w, int want_key, size_t off)
{
    size_t k = lower_bound(w, w->path);
    for (; k < w->n; k++) {
        jsonpos_req_t *r = &w->reqs[w->ord[k]];
        if (strcmp(r->pointer, w->path) != 0)
            break;
        if (r->want_key != want_key || r->line)
            continue;
        advance_lc(w, off);
        r->line = w->lc_line;
        r->col = w->lc_col;
        w->left--;
    }
}

/* 1 if some request lies strictly below the current path. */
static int wanted_below(walker_t *w)
{
    if (w->plen + 2 > w->pcap)
        return 1; /* cannot test without growing; be safe and descend */
    w->path[w->plen] = '/';
    w->path[w->plen + 1] = '\0';
    size_t k = lower_bound(w, w->path);
    int yes = k < w->n && strncmp(w->reqs[w->ord[k]].pointer, w->path, w->plen + 1) == 0;
    w->path[w->plen] = '\0';
    return yes;
}

static int walker_reserve(walker_t *w, size_t extra)
{
    if (w->plen + extra + 2 <= w->pcap)
        return 0;
    size_t cap = w->pcap ? w->pcap : 64;
    while (w->plen + extra + 2 > cap)
        cap *= 2;
    char *p = realloc(w->path, cap);
    if (!p) {
        w->oom = 1;
        return -1;
    }
    w->path = p;
    w->pcap = cap;
    return 0;
}

static int path_putc(walker_t *w, char ch)
{
    if (walker_reserve(w, 1))
        return -1;
    w->path[w->plen++] = ch;
    w->path[w->plen] = '\0';
    return 0;
}

/* Append one decoded key byte, escaped for a pointer (~ -> ~0, / -> ~1). */
static int path_put_keych(walker_t *w, unsigned char ch)
{
    char e[2];
    size_t n = json_pointer_escape(ch, e);
    return path_putc(w, e[0]) || (n == 2 && path_putc(w, e[1]));
}

static int path_put_utf8(walker_t *w, uint32_t cp)
{
    unsigned char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (unsigned char)(0xC0 | (cp >> 6));
        b[1] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (unsigned char)(0xE0 | (cp >> 12));
        b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        b[0] = (unsigned char)(0xF0 | (cp >> 18));
        b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        b[3] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    for (size_t k = 0; k < n; k++)
        if (path_put_keych(w, b[k]))
            return -1;
    return 0;
}

static void skip_ws(walker_t *w)
{
    while (w->i < w->len) {
        char ch = w->s[w->i];
        if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r')
            break;
        w->i++;
    }
}

static int hex4(const char *s, uint32_t *out)
{
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        char ch = s[k];
        v <<= 4;
        if (ch >= '0' && ch <= '9')
            v |= (uint32_t)(ch - '0');
        else if (ch >= 'a' && ch <= 'f')
            v |= (uint32_t)(ch - 'a' + 10);
        else if (ch >= 'A' && ch <= 'F')
            v |= (uint32_t)(ch - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* At an opening quote: skip the string. If `append`, decode it onto the path. */
static int scan_string(walker_t *w, int append)
{
    if (w->i >= w->len || w->s[w->i] != '"')
        return -1;
    w->i++;
    while (w->i < w->len) {
        unsigned char ch = (unsigned char)w->s[w->i];
        if (ch == '"') {
            w->i++;
            return 0;
        }
        if (ch != '\\') {
            if (append && path_put_keych(w, ch))
                return -1;
            w->i++;
            continue;
        }
        if (w->i + 1 >= w->len)
            return -1;
        char e = w->s[w->i + 1];
        w->i += 2;
        if (!append) {
            continue; /* \uXXXX digits are plain characters to skip */
        }
        uint32_t cp;
        switch (e) {
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (w->i + 4 > w->len || hex4(w->s + w->i, &cp))
                return -1;
            w->i += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF && w->i + 6 <= w->len &&
                w->s[w->i] == '\\' && w->s[w->i + 1] == 'u') {
                uint32_t lo;
                if (hex4(w->s + w->i + 2, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    w->i += 6;
                }
            }
            break;
        default: cp = (unsigned char)e; break; /* " \ / */
        }
        if (path_put_utf8(w, cp))
            return -1;
    }
    return -1;
}

/* Skip one value of any kind, without descending. */
static int skip_value(walker_t *w)
{
    skip_ws(w);
    if (w->i >= w->len)
        return -1;
    char ch = w->s[w->i];
    if (ch == '"')
        return scan_string(w, 0);
    if (ch == '{' || ch == '[') {
        size_t depth = 0;
        while (w->i < w->len) {
            ch = w->s[w->i];
            if (ch == '"') {
                if (scan_string(w, 0))
                    return -1;
                continue;
            }
            if (ch == '{' || ch == '[')
                depth++;
            else if (ch == '}' || ch == ']') {
                if (--depth == 0) {
                    w->i++;
                    return 0;
                }
            }
            w->i++;
        }
        return -1;
    }
    /* number, true, false, null */
    size_t start = w->i;
    while (w->i < w->len) {
        ch = w->s[w->i];
        if (ch == ',' || ch == ']' || ch == '}' || ch == ' ' || ch == '\t' ||
            ch == '\n' || ch == '\r')
            break;
        w->i++;
    }
    return w->i > start ? 0 : -1;
}

static int walk_value(walker_t *w);

/* After a member of an object or array (base: the path's length before
 * it): 1 when another member follows, 0 at the closer (or when every
 * position wanted is found), -1 on malformed text. */
static int next_member(walker_t *w, size_t base, char closer)
{
    w->plen = base;
    w->path[base] = '\0';
    if (w->left == 0)
        return 0;
    skip_ws(w);
    if (w->i >= w->len)
        return -1;
    if (w->s[w->i] == ',') {
        w->i++;
        return 1;
    }
    if (w->s[w->i] == closer) {
        w->i++;
        return 0;
    }
    return -1;
}

static int walk_object(walker_t *w)
{
    w->i++; /* { */
    size_t base = w->plen;
    skip_ws(w);
    if (w->i < w->len && w->s[w->i] == '}') {
        w->i++;
        return 0;
    }
    for (;;) {
        skip_ws(w);
        size_t keypos = w->i;
        if (path_putc(w, '/') || scan_string(w, 1))
            return -1;
        mark(w, 1, keypos);
        skip_ws(w);
        if (w->i >= w->len || w->s[w->i] != ':')
            return -1;
        w->i++;
        if (w->left == 0)
            return 0;
        if (walk_value(w))
            return -1;
        int more = next_member(w, base, '}');
        if (more <= 0)
            return more;
    }
}

static int walk_array(walker_t *w)
{
    w->i++; /* [ */
    size_t base = w->plen;
    skip_ws(w);
    if (w->i < w->len && w->s[w->i] == ']') {
        w->i++;
        return 0;
    }
    for (size_t idx = 0;; idx++) {
        char num[24];
        size_t nl = 0, v = idx;
        do {
            num[nl++] = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        if (path_putc(w, '/'))
            return -1;
        while (nl)
            if (path_putc(w, num[--nl]))
                return -1;
        if (walk_value(w))
            return -1;
        int more = next_member(w, base, ']');
        if (more <= 0)
            return more;
    }
}

/* The current path names the value that starts here. */
static int walk_value(walker_t *w)
{
    skip_ws(w);
    if (w->i >= w->len)
        return -1;
    mark(w, 0, w->i);
    char ch = w->s[w->i];
    if ((ch == '{' || ch == '[') && w->left && wanted_below(w))
        return ch == '{' ? walk_object(w) : walk_array(w);
    return skip_value(w);
}

int jsonpos_resolve(const char *text, size_t len, jsonpos_req_t *reqs, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        reqs[k].line = 0;
        reqs[k].col = 0;
    }
    if (n == 0)
        return 0;
    walker_t w;
    memset(&w, 0, sizeof w);
    w.s = text;
    w.len = len;
    w.reqs = reqs;
    w.n = n;
    w.left = n;
    w.lc_line = 1;
    w.lc_col = 1;
    w.ord = malloc(n * sizeof *w.ord);
    sortent_t *ents = malloc(n * sizeof *ents);
    if (!w.ord || !ents || walker_reserve(&w, 64)) {
        free(w.ord);
        free(ents);
        free(w.path);
        return -1;
    }
    for (size_t k = 0; k < n; k++) {
        ents[k].p = reqs[k].pointer;
        ents[k].k = reqs[k].want_key;
        ents[k].idx = k;
    }
    qsort(ents, n, sizeof *ents, cmp_ent);
    for (size_t k = 0; k < n; k++)
        w.ord[k] = ents[k].idx;
    free(ents);
    w.path[0] = '\0';
    (void)walk_value(&w);
    int rc = w.oom ? -1 : 0;
    free(w.ord);
    free(w.path);
    return rc;
}

int jsonpos_find(const char *text, size_t len, const char *pointer, int want_key,
                 int *line, int *col)
{
    jsonpos_req_t r = {pointer, want_key, 0, 0};
    if (jsonpos_resolve(text, len, &r, 1) || r.line == 0)
        return -1;
    *line = r.line;
    *col = r.col;
    return 0;
}
