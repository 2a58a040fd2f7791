/*
 * gateway/config/errors.c: the load context's JSON pointer path, its messages, and
 * the one place that turns them into "FILE:LINE:COL: text" (emit_all).
 */
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "jsonpos.h"
#include "pointer.h"

/* ------------------------------------------------------------------------
 * Load context and messages.
 * ------------------------------------------------------------------------ */

void cfg_nomem(ctx_t *c)
{
    c->oom = 1;
}

char *cfg_strdup(ctx_t *c, const char *s)
{
    char *d = strdup(s ? s : "");
    if (!d)
        cfg_nomem(c);
    return d;
}

/* Path: push a member or an index, pop back to a mark. */
int path_reserve(ctx_t *c, size_t extra)
{
    if (c->plen + extra + 1 <= c->pcap)
        return 0;
    size_t cap = c->pcap ? c->pcap : 128;
    while (c->plen + extra + 1 > cap)
        cap *= 2;
    char *p = realloc(c->path, cap);
    if (!p) {
        cfg_nomem(c);
        return -1;
    }
    c->path = p;
    c->pcap = cap;
    return 0;
}

size_t path_key(ctx_t *c, const char *key)
{
    size_t mark = c->plen;
    if (path_reserve(c, 1 + 2 * strlen(key)))
        return mark;
    c->path[c->plen++] = '/';
    for (const char *s = key; *s; s++)
        c->plen += json_pointer_escape((unsigned char)*s, c->path + c->plen);
    c->path[c->plen] = '\0';
    return mark;
}

size_t path_index(ctx_t *c, size_t idx)
{
    char b[32];
    size_t mark = c->plen;
    int n = snprintf(b, sizeof b, "/%zu", idx);
    if (path_reserve(c, (size_t)n))
        return mark;
    memcpy(c->path + c->plen, b, (size_t)n + 1);
    c->plen += (size_t)n;
    return mark;
}

void path_pop(ctx_t *c, size_t mark)
{
    c->plen = mark;
    if (c->path)
        c->path[mark] = '\0';
}

/* A user string, quoted and escaped for a one-line message. The result
 * lives until four more calls. */
const char *cfg_quote(ctx_t *c, const char *s)
{
    char *o = c->q[c->qi++ % 4];
    size_t n = 0, cap = sizeof c->q[0];
    o[n++] = '"';
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (n + 8 >= cap) {
            memcpy(o + n, "...", 3);
            n += 3;
            break;
        }
        if (ch == '"' || ch == '\\') {
            o[n++] = '\\';
            o[n++] = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f) {
            n += (size_t)snprintf(o + n, cap - n, "\\u%04x", ch);
        } else {
            o[n++] = (char)ch;
        }
    }
    o[n++] = '"';
    o[n] = '\0';
    return o;
}

void add_msg(ctx_t *c, int warning, int want_key, int line, int col,
                    int use_path, char *text)
{
    if (!text) {
        cfg_nomem(c);
        return;
    }
    if (c->nm == c->capm) {
        size_t cap = c->capm ? c->capm * 2 : 16;
        msg_t *m = realloc(c->m, cap * sizeof *m);
        if (!m) {
            free(text);
            cfg_nomem(c);
            return;
        }
        c->m = m;
        c->capm = cap;
    }
    msg_t *m = &c->m[c->nm];
    memset(m, 0, sizeof *m);
    m->file = c->file;
    m->warning = warning;
    m->want_key = want_key;
    m->line = line;
    m->col = col;
    m->text = text;
    m->seq = c->nm;
    if (use_path) {
        m->ptr = strdup(c->path ? c->path : "");
        if (!m->ptr) {
            free(text);
            cfg_nomem(c);
            return;
        }
    }
    c->nm++;
    if (!warning)
        c->n_err++;
}

/* The one message builder: "[WHERE: ]["LABEL": ]TEXT", about the current
 * path (its value, or its member key when want_key). */
static void vreport(ctx_t *c, int warning, int want_key, const char *where,
                    const char *label, const char *fmt, va_list ap)
{
    char body[768], head[400];
    vsnprintf(body, sizeof body, fmt, ap);
    size_t h = 0;
    head[0] = '\0';
    if (where && *where)
        h += (size_t)snprintf(head + h, sizeof head - h, "%s: ", where);
    if (label && h < sizeof head)
        snprintf(head + h, sizeof head - h, "\"%s\": ", label);
    char *text;
    if (asprintf(&text, "%s%s", head, body) < 0)
        text = NULL;
    add_msg(c, warning, want_key, 0, 0, 1, text);
}

/* Error at the current value. */
__attribute__((format(printf, 4, 5)))
void cfg_err(ctx_t *c, const char *where, const char *label, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(c, 0, 0, where, label, fmt, ap);
    va_end(ap);
}

/* Error at field `name` of the current object (its value). */
__attribute__((format(printf, 4, 5)))
void ferr(ctx_t *c, const char *where, const char *name, const char *fmt, ...)
{
    size_t m = path_key(c, name);
    va_list ap;
    va_start(ap, fmt);
    vreport(c, 0, 0, where, name, fmt, ap);
    va_end(ap);
    path_pop(c, m);
}

/* Error at the current member's key. */
__attribute__((format(printf, 3, 4)))
void kerr(ctx_t *c, const char *where, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(c, 0, 1, where, NULL, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------------
 * Messages out: the one place that formats them.
 * ------------------------------------------------------------------------ */

static int cmp_msg(const void *a, const void *b)
{
    const msg_t *x = a, *y = b;
    if (x->file != y->file)
        return x->file - y->file;
    if (x->line != y->line)
        return x->line - y->line;
    if (x->col != y->col)
        return x->col - y->col;
    return (x->seq > y->seq) - (x->seq < y->seq);
}

int emit_all(ctx_t *c, cfg_messages_t *out)
{
    if (c->oom) {
        c->file = 0;
        add_msg(c, 0, 0, 1, 1, 0, strdup("out of memory while loading the configuration"));
    }
    for (int f = 0; f < 2; f++) {
        size_t n = 0;
        for (size_t i = 0; i < c->nm; i++)
            n += c->m[i].file == f && c->m[i].ptr;
        if (!n)
            continue;
        jsonpos_req_t *rq = calloc(n, sizeof *rq);
        if (!rq)
            return -1;
        size_t k = 0;
        for (size_t i = 0; i < c->nm; i++)
            if (c->m[i].file == f && c->m[i].ptr)
                rq[k++] = (jsonpos_req_t){c->m[i].ptr, c->m[i].want_key, 0, 0};
        jsonpos_resolve(c->text[f] ? c->text[f] : "", c->text[f] ? c->tlen[f] : 0, rq, n);
        k = 0;
        for (size_t i = 0; i < c->nm; i++) {
            if (c->m[i].file != f || !c->m[i].ptr)
                continue;
            c->m[i].line = rq[k].line ? rq[k].line : 1;
            c->m[i].col = rq[k].line ? rq[k].col : 1;
            k++;
        }
        free(rq);
    }
    if (c->nm)
        qsort(c->m, c->nm, sizeof *c->m, cmp_msg);
    size_t ne = 0, nw = 0;
    for (size_t i = 0; i < c->nm; i++)
        *(c->m[i].warning ? &nw : &ne) += 1;
    out->errors = ne ? calloc(ne, sizeof(char *)) : NULL;
    out->warnings = nw ? calloc(nw, sizeof(char *)) : NULL;
    if ((ne && !out->errors) || (nw && !out->warnings))
        return -1;
    for (size_t i = 0; i < c->nm; i++) {
        msg_t *m = &c->m[i];
        char *line;
        /* FILE:LINE:COL: message (warnings carry "warning: " in their text) */
        if (asprintf(&line, "%s:%d:%d: %s", c->fname[m->file], m->line, m->col, m->text) < 0)
            return -1;
        if (m->warning)
            out->warnings[out->n_warnings++] = line;
        else
            out->errors[out->n_errors++] = line;
    }
    return 0;
}
