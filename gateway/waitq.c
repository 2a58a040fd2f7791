/* gateway/waitq.c: per-worker FIFOs of waiting requests. See waitq.h. */
#include "waitq.h"

#include <stdint.h>
#include <stdlib.h>

#include <event2/event.h>

#include "request.h"
#include "worker.h"

static size_t bucket_of(const void *key, int ep)
{
    uint64_t h = (uint64_t)(uintptr_t)key * 0x9E3779B97F4A7C15ULL ^ (uint64_t)ep * 0xC2B2AE3DULL;
    return (size_t)((h >> 32) % WAITQ_BUCKETS);
}

waitq_t *waitq_find(worker_t *w, const void *key, int ep, int create,
                    void (*cb)(int, short, void *))
{
    size_t b = bucket_of(key, ep);
    for (waitq_t *q = w->waitq[b]; q; q = q->next)
        if (q->key == key && q->ep == ep)
            return q;
    if (!create)
        return NULL;
    waitq_t *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->timer = evtimer_new(w->base, cb, q);
    if (!q->timer) {
        free(q);
        return NULL;
    }
    q->w = w;
    q->key = key;
    q->ep = ep;
    q->next = w->waitq[b];
    w->waitq[b] = q;
    return q;
}

void waitq_push(waitq_t *q, request_t *r)
{
    r->wq = q;
    r->wq_next = NULL;
    r->wq_prev = q->tail;
    if (q->tail)
        q->tail->wq_next = r;
    else
        q->head = r;
    q->tail = r;
    q->n++;
}

void waitq_remove(waitq_t *q, request_t *r)
{
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
    q->n--;
    if (q->n)
        return;
    waitq_t **pp = &q->w->waitq[bucket_of(q->key, q->ep)];
    while (*pp != q)
        pp = &(*pp)->next;
    *pp = q->next;
    event_free(q->timer);
    free(q);
}
