/*
 * gateway/trailer.c: one field of a chunked answer's trailer. See trailer.h.
 */
#include "trailer.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { T_STATUS = 0, T_HEAD, T_SIZE, T_DATA, T_DATA_END, T_TRAILER, T_OVER };

void trailer_scan_init(trailer_scan_t *t, const char *name)
{
    memset(t, 0, sizeof *t);
    t->name = name;
}

void trailer_scan_free(trailer_scan_t *t)
{
    free(t->value);
    t->value = NULL;
}

/* "Name: value" with name == t->name: the value, trimmed. */
static const char *field_value(const trailer_scan_t *t, char *line)
{
    char *colon = strchr(line, ':');
    size_t n = strlen(t->name);
    if (!colon || (size_t)(colon - line) != n || strncasecmp(line, t->name, n) != 0)
        return NULL;
    char *v = colon + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    char *e = v + strlen(v);
    while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
        *--e = '\0';
    return v;
}

static int is_chunked(char *line)
{
    char *colon = strchr(line, ':');
    if (!colon || (size_t)(colon - line) != 17 || strncasecmp(line, "Transfer-Encoding", 17) != 0)
        return 0;
    /* The last coding is the one that frames the body. */
    const char *v = colon + 1;
    const char *last = v;
    for (const char *p = v; *p; p++)
        if (*p == ',')
            last = p + 1;
    while (*last == ' ' || *last == '\t')
        last++;
    return strncasecmp(last, "chunked", 7) == 0 &&
           (last[7] == '\0' || last[7] == ' ' || last[7] == '\t');
}

static void end_line(trailer_scan_t *t)
{
    char *line = t->line;
    line[t->line_len] = '\0';
    int long_line = t->line_long;
    t->line_len = 0;
    t->line_long = 0;
    switch (t->state) {
    case T_STATUS:
        if (long_line || strncmp(line, "HTTP/", 5) != 0) {
            t->bad = 1;
            return;
        }
        /* An interim answer (1xx) has a head of its own; another follows. */
        t->chunked = 0;
        t->state = T_HEAD;
        t->left = (strlen(line) > 9 && line[9] == '1') ? 1 : 0; /* 1: interim */
        return;
    case T_HEAD:
        if (*line == '\0' && !long_line) {
            if (t->left == 1) {
                t->left = 0;
                t->state = T_STATUS;
            } else {
                t->state = t->chunked ? T_SIZE : T_OVER;
            }
            return;
        }
        if (!long_line && is_chunked(line))
            t->chunked = 1;
        return;
    case T_SIZE: {
        if (long_line) {
            t->bad = 1;
            return;
        }
        int64_t v = 0;
        const char *p = line;
        int digits = 0;
        for (; *p; p++, digits++) {
            int d = (*p >= '0' && *p <= '9')   ? *p - '0'
                    : (*p >= 'a' && *p <= 'f') ? *p - 'a' + 10
                    : (*p >= 'A' && *p <= 'F') ? *p - 'A' + 10
                                               : -1;
            if (d < 0)
                break;
            if (v > (INT64_MAX >> 4)) {
                t->bad = 1;
                return;
            }
            v = v * 16 + d;
        }
        if (!digits) {
            t->bad = 1;
            return;
        }
        t->left = v;
        t->state = v ? T_DATA : T_TRAILER;
        return;
    }
    case T_DATA_END:
        t->state = T_SIZE; /* the CRLF after a chunk's data */
        return;
    case T_TRAILER:
        if (*line == '\0' && !long_line) {
            t->done = 1;
            t->state = T_OVER;
            return;
        }
        if (!long_line) {
            const char *v = field_value(t, line);
            if (v) {
                char *copy = strdup(v);
                if (copy) {
                    free(t->value);
                    t->value = copy;
                }
            }
        }
        return;
    }
}

void trailer_scan_feed(trailer_scan_t *t, const char *p, size_t n)
{
    size_t i = 0;
    while (i < n && !t->bad && t->state != T_OVER) {
        if (t->state == T_DATA) {
            size_t take = (uint64_t)t->left < n - i ? (size_t)t->left : n - i;
            t->left -= (int64_t)take;
            i += take;
            if (t->left == 0)
                t->state = T_DATA_END;
            continue;
        }
        char ch = p[i++];
        if (ch == '\n') {
            if (t->line_len && t->line[t->line_len - 1] == '\r')
                t->line_len--;
            end_line(t);
        } else if (t->line_len + 1 < sizeof t->line) {
            t->line[t->line_len++] = ch;
        } else {
            t->line_long = 1;
        }
    }
}
