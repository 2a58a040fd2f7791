/*
 * gateway/config/pointer.c: JSON pointers (pointer.h).
 */
#include <errno.h>
#include <stdlib.h>

#include "pointer.h"

const char *json_pointer_problem(const char *p)
{
    if (*p && *p != '/')
        return "must be empty or start with \"/\"";
    for (; *p; p++)
        if (*p == '~' && p[1] != '0' && p[1] != '1')
            return "\"~\" must be followed by 0 or 1";
    return NULL;
}

size_t json_pointer_escape(unsigned char ch, char out[2])
{
    if (ch == '~' || ch == '/') {
        out[0] = '~';
        out[1] = ch == '~' ? '0' : '1';
        return 2;
    }
    out[0] = (char)ch;
    return 1;
}

json_t *json_pointer_get(json_t *root, const char *ptr)
{
    json_t *cur = root;
    char tok[256];
    while (*ptr == '/' && cur) {
        ptr++;
        size_t n = 0;
        while (*ptr && *ptr != '/') {
            char ch = *ptr++;
            if (ch == '~') {
                ch = *ptr == '1' ? '/' : '~';
                if (*ptr)
                    ptr++;
            }
            if (n + 1 < sizeof tok)
                tok[n++] = ch;
        }
        tok[n] = '\0';
        if (json_is_object(cur)) {
            cur = json_object_get(cur, tok);
        } else if (json_is_array(cur)) {
            char *end;
            errno = 0;
            unsigned long i = strtoul(tok, &end, 10);
            if (!n || *end || errno || (n > 1 && tok[0] == '0'))
                return NULL;
            cur = json_array_get(cur, i);
        } else {
            return NULL;
        }
    }
    return cur;
}
