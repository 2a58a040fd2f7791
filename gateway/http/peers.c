/*
 * gateway/http/peers.c: connections per client address (peers.h).
 *
 * A chained hash table of addresses with an open connection, each with its
 * count; an entry goes when its count reaches zero, so the table never
 * holds more entries than there are open connections.
 */
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "peers.h"

#define BUCKETS 4096

typedef struct peer {
    uint64_t key; /* an IPv4 address, or an IPv6 /64 prefix */
    int v6;
    size_t n;
    struct peer *next;
} peer_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static peer_t *table[BUCKETS];

/* The part of the address that counts, in *key. -1 for an address family
 * that is not counted (a Unix socket), else 0 (IPv4) or 1 (IPv6). */
static int key_of(const struct sockaddr *sa, uint64_t *key)
{
    const unsigned char *a;
    int v6;
    if (sa->sa_family == AF_INET) {
        a = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
        v6 = 0;
    } else if (sa->sa_family == AF_INET6) {
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        v6 = memcmp(a, mapped, 12) != 0;
        if (!v6)
            a += 12;
    } else {
        return -1;
    }
    uint64_t k = 0;
    for (int i = 0; i < (v6 ? 8 : 4); i++)
        k = k << 8 | a[i];
    *key = k;
    return v6;
}

static peer_t **find(uint64_t key, int v6)
{
    /* Fibonacci hashing: the top bits of the product. */
    size_t b = (size_t)((key * 0x9E3779B97F4A7C15ull + (uint64_t)v6) >> 52) % BUCKETS;
    peer_t **pp = &table[b];
    while (*pp && !((*pp)->key == key && (*pp)->v6 == v6))
        pp = &(*pp)->next;
    return pp;
}

int peers_take(const struct sockaddr *sa, size_t cap)
{
    uint64_t k;
    int v6 = key_of(sa, &k);
    if (!cap || v6 < 0)
        return 0;
    int rc = 1;
    pthread_mutex_lock(&lock);
    peer_t **pp = find(k, v6);
    if (*pp) {
        if ((*pp)->n >= cap)
            rc = -1;
        else
            (*pp)->n++;
    } else {
        peer_t *p = calloc(1, sizeof *p);
        if (p) {
            p->key = k;
            p->v6 = v6;
            p->n = 1;
            *pp = p;
        } else {
            rc = 0; /* not counted: nothing to give back */
        }
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

void peers_give(const struct sockaddr *sa)
{
    uint64_t k;
    int v6 = key_of(sa, &k);
    if (v6 < 0)
        return;
    pthread_mutex_lock(&lock);
    peer_t **pp = find(k, v6);
    peer_t *p = *pp;
    if (p && --p->n == 0) {
        *pp = p->next;
        free(p);
    }
    pthread_mutex_unlock(&lock);
}
