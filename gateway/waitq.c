/* gateway/waitq.c: the process's FIFOs of waiting requests. See waitq.h. */
#include "waitq.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "../limiter/hash.h"
#include "request.h"
#include "server.h"

#define WAITQ_BUCKETS 64

struct waitq {
    struct waitq *next; /* hash chain */
    struct request *head, *tail;
    size_t n;
    size_t key_len;
    char name[];        /* key id, '\0', endpoint name, '\0' */
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static waitq_t *table[WAITQ_BUCKETS];
/* Queues in the table: read without the mutex to skip it when none. */
static atomic_size_t n_queues;

uint64_t waitq_hash(const char *s)
{
    uint64_t h = rw_hash_str(s);
    return h ? h : 1;
}

static size_t bucket_of(const char *key_id, const char *ep)
{
    return (size_t)((waitq_hash(key_id) ^ waitq_hash(ep) * 31) % WAITQ_BUCKETS);
}

/* Under mu. */
static waitq_t *find(size_t b, const char *key_id, const char *ep)
{
    size_t kl = strlen(key_id);
    for (waitq_t *q = table[b]; q; q = q->next)
        if (q->key_len == kl && memcmp(q->name, key_id, kl) == 0 &&
            strcmp(q->name + kl + 1, ep) == 0)
            return q;
    return NULL;
}

int waitq_busy(const char *key_id, const char *ep)
{
    if (atomic_load(&n_queues) == 0)
        return 0;
    pthread_mutex_lock(&mu);
    int busy = find(bucket_of(key_id, ep), key_id, ep) != NULL;
    pthread_mutex_unlock(&mu);
    return busy;
}

int waitq_join(request_t *r, const char *key_id, const char *ep, size_t max, int *head)
{
    size_t b = bucket_of(key_id, ep);
    pthread_mutex_lock(&mu);
    waitq_t *q = find(b, key_id, ep);
    if (q && q->n >= max) {
        pthread_mutex_unlock(&mu);
        return 1;
    }
    if (!q) {
        size_t kl = strlen(key_id), el = strlen(ep);
        q = calloc(1, sizeof *q + kl + el + 2);
        if (!q) {
            pthread_mutex_unlock(&mu);
            return -1;
        }
        q->key_len = kl;
        memcpy(q->name, key_id, kl + 1);
        memcpy(q->name + kl + 1, ep, el + 1);
        q->next = table[b];
        table[b] = q;
        atomic_fetch_add(&n_queues, 1);
    }
    r->wq = q;
    r->wq_gauge = 0;
    r->wq_next = NULL;
    r->wq_prev = q->tail;
    if (q->tail)
        q->tail->wq_next = r;
    else
        q->head = r;
    q->tail = r;
    q->n++;
    *head = q->head == r;
    pthread_mutex_unlock(&mu);
    return 0;
}

void waitq_set_gauge(request_t *r, uint64_t g)
{
    pthread_mutex_lock(&mu);
    r->wq_gauge = g;
    pthread_mutex_unlock(&mu);
}

void waitq_leave(request_t *r)
{
    waitq_t *q = r->wq;
    if (!q)
        return;
    pthread_mutex_lock(&mu);
    int was_head = q->head == r;
    if (r->wq_prev)
        r->wq_prev->wq_next = r->wq_next;
    else
        q->head = r->wq_next;
    if (r->wq_next)
        r->wq_next->wq_prev = r->wq_prev;
    else
        q->tail = r->wq_prev;
    r->wq = NULL;
    r->wq_next = r->wq_prev = NULL;
    /* No thread can reach r now: a wake posted for it and not delivered
     * goes too (its wq_wake is freed next). */
    server_worker_unwake(r->w, r);
    q->n--;
    if (was_head && q->head)
        /* Its own worker decides it, on its own loop. */
        server_worker_wake(q->head->w, q->head, EV_TIMEOUT);
    if (q->n == 0) {
        waitq_t **pp = &table[bucket_of(q->name, q->name + q->key_len + 1)];
        while (*pp != q)
            pp = &(*pp)->next;
        *pp = q->next;
        atomic_fetch_sub(&n_queues, 1);
        free(q);
    }
    pthread_mutex_unlock(&mu);
}

void waitq_wake_gauge(const uint64_t *g, size_t n)
{
    if (n == 0 || atomic_load(&n_queues) == 0)
        return;
    pthread_mutex_lock(&mu);
    for (size_t b = 0; b < WAITQ_BUCKETS; b++) {
        for (waitq_t *q = table[b]; q; q = q->next) {
            request_t *h = q->head;
            if (!h->wq_gauge)
                continue;
            for (size_t i = 0; i < n; i++) {
                if (g[i] == h->wq_gauge) {
                    server_worker_wake(h->w, h, EV_READ); /* EV_READ: a slot */
                    break;
                }
            }
        }
    }
    pthread_mutex_unlock(&mu);
}
