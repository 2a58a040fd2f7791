/*
 * gateway/http/digits.h: unsigned numbers in decimal for answer heads,
 * written straight into the head being built (every answer carries half a
 * dozen: the status, Content-Length, the rate headers). snprintf costs
 * several times more and needs a buffer to copy from.
 */
#ifndef RW_HTTP_DIGITS_H
#define RW_HTTP_DIGITS_H

#include <stddef.h>
#include <stdint.h>

/* Digits of v in decimal: t, the bit length times log10(2) (1233/4096)
 * rounded down, is the count or one less; v >= 10^t tells which. */
static inline size_t uint_len(uint64_t v)
{
    static const uint64_t p10[20] = {
        1ULL, 10ULL, 100ULL, 1000ULL,
        10000ULL, 100000ULL, 1000000ULL, 10000000ULL,
        100000000ULL, 1000000000ULL, 10000000000ULL, 100000000000ULL,
        1000000000000ULL, 10000000000000ULL, 100000000000000ULL, 1000000000000000ULL,
        10000000000000000ULL, 100000000000000000ULL, 1000000000000000000ULL, 10000000000000000000ULL};
    if (v == 0)
        return 1;
    size_t t = ((size_t)(64 - __builtin_clzll(v)) * 1233) >> 12;
    return t + (v >= p10[t]);
}

/* v in decimal at p (n = uint_len(v) bytes, no NUL), two digits a step
 * from the end: an answer carries half a dozen numbers. */
static inline size_t put_uint_n(char *p, uint64_t v, size_t n)
{
    static const char pairs[] = "00010203040506070809101112131415161718192021222324"
                                "25262728293031323334353637383940414243444546474849"
                                "50515253545556575859606162636465666768697071727374"
                                "75767778798081828384858687888990919293949596979899";
    size_t i = n;
    while (v >= 100) {
        const char *d = pairs + 2 * (v % 100);
        v /= 100;
        p[--i] = d[1];
        p[--i] = d[0];
    }
    if (v >= 10) {
        p[--i] = pairs[2 * v + 1];
        p[--i] = pairs[2 * v];
    } else {
        p[--i] = (char)('0' + v);
    }
    return n;
}

static inline size_t put_uint(char *p, uint64_t v)
{
    return put_uint_n(p, v, uint_len(v));
}

#endif
