/*
 * gateway/http/bytes.h: tests on eight bytes at once, for the loops that
 * check every byte of a field value (the parser judging what a client
 * sent, the answer writer cleaning what goes out). A word that passes
 * needs no look at its bytes one by one.
 */
#ifndef RW_HTTP_BYTES_H
#define RW_HTTP_BYTES_H

#include <stdint.h>

#define RW_ONES 0x0101010101010101ULL
#define RW_HIGHS 0x8080808080808080ULL

/* Whether some byte of w is below b (b at most 0x80; exact for "some"). */
static inline int word_has_below(uint64_t w, unsigned b)
{
    return ((w - b * RW_ONES) & ~w & RW_HIGHS) != 0;
}

/* Whether some byte of w is b. */
static inline int word_has_byte(uint64_t w, unsigned b)
{
    return word_has_below(w ^ (b * RW_ONES), 1);
}

#endif
