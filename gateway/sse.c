/*
 * gateway/sse.c: incremental server-sent events framer. See sse.h.
 */
#include "sse.h"

#include <stdlib.h>
#include <string.h>

/* Room for a line's field name and separator on top of the data bound. */
#define LINE_SLACK 16

void sse_init(sse_framer_t *f, size_t max_event, sse_event_fn on_event, void *arg)
{
    memset(f, 0, sizeof *f);
    f->max_event = max_event;
    f->on_event = on_event;
    f->arg = arg;
}

void sse_free(sse_framer_t *f)
{
    free(f->line);
    free(f->data);
    f->line = f->data = NULL;
    f->line_len = f->line_cap = f->data_len = f->data_cap = 0;
}

/* Make room for `need` bytes (plus a NUL) in *buf. */
static int reserve(char **buf, size_t *cap, size_t need)
{
    if (need + 1 <= *cap)
        return 0;
    size_t c = *cap ? *cap : 256;
    while (c < need + 1)
        c *= 2;
    char *b = realloc(*buf, c);
    if (!b)
        return -1;
    *buf = b;
    *cap = c;
    return 0;
}

static void end_event(sse_framer_t *f)
{
    if (f->skip_event) {
        f->oversized++;
    } else if (f->has_data) {
        f->data[f->data_len] = '\0';
        f->events++;
        f->on_event(f->arg, f->data, f->data_len);
    }
    f->has_data = 0;
    f->skip_event = 0;
    f->data_len = 0;
}

/* Whether a line (or the kept start of one) is a `data` field. */
static int is_data_line(const char *s, size_t n)
{
    return n >= 4 && memcmp(s, "data", 4) == 0 && (n == 4 || s[4] == ':');
}

static void end_line(sse_framer_t *f)
{
    const char *s = f->line;
    size_t n = f->line_len;
    int skipped = f->skip_line;
    f->line_len = 0;
    f->skip_line = 0;
    if (skipped) {
        /* Only its start was kept: a data line that long spoils its event. */
        if (is_data_line(s, n))
            f->skip_event = 1;
        return;
    }
    if (n == 0) {
        end_event(f);
        return;
    }
    if (s[0] == ':' || !is_data_line(s, n))
        return; /* a comment, or a field the framer does not use */
    const char *v = n > 4 ? s + 5 : s + 4;
    size_t vn = n > 4 ? n - 5 : 0;
    if (vn && *v == ' ') {
        v++;
        vn--;
    }
    if (f->skip_event)
        return;
    size_t need = f->data_len + (f->has_data ? 1 : 0) + vn;
    if (need > f->max_event) {
        f->skip_event = 1;
        f->data_len = 0;
        return;
    }
    if (reserve(&f->data, &f->data_cap, need) != 0) {
        f->failed = 1;
        return;
    }
    if (f->has_data)
        f->data[f->data_len++] = '\n';
    memcpy(f->data + f->data_len, v, vn);
    f->data_len += vn;
    f->has_data = 1;
}

/* Add bytes to the current line (up to the bound; the rest is dropped). */
static void add_to_line(sse_framer_t *f, const char *p, size_t n)
{
    if (f->skip_line || n == 0)
        return;
    size_t bound = f->max_event + LINE_SLACK;
    if (f->line_len + n > bound) {
        /* Keep just enough to tell the field. */
        size_t keep = f->line_len < 8 ? 8 - f->line_len : 0;
        if (keep > n)
            keep = n;
        n = keep;
        f->skip_line = 1;
    }
    if (reserve(&f->line, &f->line_cap, f->line_len + n) != 0) {
        f->failed = 1;
        return;
    }
    memcpy(f->line + f->line_len, p, n);
    f->line_len += n;
}

int sse_feed(sse_framer_t *f, const char *p, size_t n)
{
    static const unsigned char bom[3] = {0xEF, 0xBB, 0xBF};
    size_t i = 0;
    while (f->bom_state < 3 && i < n && !f->failed) {
        if ((unsigned char)p[i] == bom[f->bom_state]) {
            f->bom_state++;
            i++;
            continue;
        }
        /* Not a byte order mark: what looked like one is line content. */
        add_to_line(f, (const char *)bom, (size_t)f->bom_state);
        f->bom_state = 3;
    }
    while (i < n && !f->failed) {
        if (f->after_cr) {
            f->after_cr = 0;
            if (p[i] == '\n') {
                i++;
                continue;
            }
        }
        /* The longest run of line content from here. */
        size_t j = i;
        while (j < n && p[j] != '\n' && p[j] != '\r')
            j++;
        add_to_line(f, p + i, j - i);
        if (j == n)
            break;
        f->after_cr = p[j] == '\r';
        i = j + 1;
        end_line(f);
    }
    return f->failed ? -1 : 0;
}
