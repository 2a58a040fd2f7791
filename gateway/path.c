/*
 * gateway/path.c: the one form of a request path (path.h).
 */
#include <string.h>

#include "path.h"

static int hex_digit(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

static int unreserved(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '_' || ch == '~';
}

int path_normalize(const char *in, char *out, size_t len, const char **why)
{
    char dec[PATH_NORMAL_MAX];
    size_t d = 0;
    *why = "The path is too long.";
    if (*in != '/') {
        *why = "The path must start with \"/\".";
        return -1;
    }
    for (const char *p = in; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '\\') {
            *why = "The path must not hold a backslash.";
            return -1;
        }
        if (ch != '%') {
            if (d + 1 >= sizeof dec)
                return -1;
            dec[d++] = (char)ch;
            continue;
        }
        int hi = hex_digit(p[1]), lo = hi < 0 ? -1 : hex_digit(p[2]);
        if (hi < 0 || lo < 0) {
            *why = "The path holds a \"%\" that is not followed by two hex digits.";
            return -1;
        }
        unsigned char v = (unsigned char)(hi * 16 + lo);
        if (v == '/' || v == '\\' || v == '.' || v == 0) {
            *why = "The path must not hold an encoded slash, backslash, dot or NUL.";
            return -1;
        }
        if (unreserved(v)) {
            if (d + 1 >= sizeof dec)
                return -1;
            dec[d++] = (char)v;
        } else {
            if (d + 3 >= sizeof dec)
                return -1;
            dec[d++] = '%';
            dec[d++] = "0123456789ABCDEF"[hi];
            dec[d++] = "0123456789ABCDEF"[lo];
        }
        p += 2;
    }
    dec[d] = '\0';

    size_t o = 0;
    const char *p = dec;
    while (*p) {
        /* p points at a '/' */
        const char *seg = p + 1;
        const char *end = strchr(seg, '/');
        size_t n = end ? (size_t)(end - seg) : strlen(seg);
        size_t bare = strcspn(seg, ";/");
        if (bare < n && ((bare == 1 && seg[0] == '.') ||
                         (bare == 2 && seg[0] == '.' && seg[1] == '.'))) {
            /* "..;x" is ".." to a backend that drops path parameters */
            *why = "The path must not hold a dot segment with parameters.";
            return -1;
        }
        if (n == 0 && end) {
            /* an empty segment: "//" is "/" */
        } else if (n == 1 && seg[0] == '.') {
            if (!end && o + 1 < len)
                out[o++] = '/';
        } else if (n == 2 && seg[0] == '.' && seg[1] == '.') {
            while (o > 0 && out[o - 1] != '/')
                o--;
            if (o > 0)
                o--; /* drop the segment and its slash */
            if (!end && o + 1 < len)
                out[o++] = '/';
        } else {
            if (o + 1 + n >= len)
                return -1;
            out[o++] = '/';
            memcpy(out + o, seg, n);
            o += n;
        }
        p = end ? end : seg + n;
    }
    if (o == 0)
        out[o++] = '/';
    out[o] = '\0';
    return 0;
}
