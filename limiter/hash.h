/*
 * limiter/hash.h: one fast hash for the gateway's in-process tables
 * (counters, routes, queues, the status page). Not keyed, not for
 * secrets and not stable across versions: nothing stores it, and no table
 * hashed with it takes entries a client chooses (a client's path is only
 * looked up). Eight bytes a step (a byte-at-a-time hash is a chain of
 * multiplies, one per byte), then a finalizer that spreads every input
 * bit over the low bits a table indexes with.
 */
#ifndef RW_HASH_H
#define RW_HASH_H

#include <stdint.h>
#include <string.h>

static inline uint64_t rw_hash_bytes(const void *p, size_t n)
{
    const char *s = p;
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ n;
    for (; n >= 8; s += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ULL;
        h ^= h >> 31;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0x94d049bb133111ebULL;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ULL;
    return h ^ (h >> 32);
}

static inline uint64_t rw_hash_str(const char *s)
{
    return rw_hash_bytes(s, strlen(s));
}

#endif
