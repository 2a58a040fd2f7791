/*
 * gateway/query.c: reading one query parameter as a backend reads it.
 * See query.h.
 */
#include <string.h>

#include "query.h"

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

size_t query_decode(const char *s, size_t n, int plus_space, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '+' && plus_space) {
            c = ' ';
        } else if (c == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            c = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        }
        if (o < cap)
            out[o] = c;
        o++;
    }
    return o;
}

int query_param(const char *q, const char *name, char *val, size_t cap, size_t *vlen)
{
    size_t nlen = name ? strlen(name) : 0;
    val[0] = '\0';
    *vlen = 0;
    if (nlen == 0 || nlen > 256)
        return -1;
    if (!q)
        return 0;
    int count = 0;
    const char *p = q;
    for (;;) {
        const char *amp = strchr(p, '&');
        size_t plen = amp ? (size_t)(amp - p) : strlen(p);
        if (plen > 0) {
            const char *eq = memchr(p, '=', plen);
            size_t klen = eq ? (size_t)(eq - p) : plen;
            /* An escape is three bytes for one: a longer raw name cannot
             * decode to `name`. */
            if (klen <= 3 * nlen) {
                char key[3 * 256];
                size_t dlen = query_decode(p, klen, 1, key, sizeof key);
                if (dlen == nlen && memcmp(key, name, nlen) == 0) {
                    if (count++ == 0 && eq) {
                        const char *v = eq + 1;
                        size_t raw = plen - klen - 1;
                        size_t d = query_decode(v, raw, 1, val, cap - 1);
                        *vlen = d;
                        val[d < cap - 1 ? d : cap - 1] = '\0';
                    }
                }
            }
        }
        if (!amp)
            break;
        p = amp + 1;
    }
    return count;
}
