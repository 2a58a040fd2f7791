/*
 * gateway/waitq.h: the requests that wait for room instead of a 429 (an
 * endpoint's "queue"), per worker: one FIFO per (key, endpoint) that has
 * waiters, found through a small hash table in the worker. Only the head
 * of a queue is ever decided again; the others wait behind it, so the
 * requests of one key are admitted in arrival order on this worker.
 *
 * Ownership: a waitq_t belongs to its worker's table and is freed by
 * waitq_remove() when its last request leaves it. It borrows its requests
 * (each is owned by request.c and unlinked before it ends) and `key`
 * (a cfg_key_t of the config snapshot that its requests hold a reference
 * to). `timer` (owned) re-decides the head; its callback is request.c's.
 * One worker's thread alone touches its queues.
 */
#ifndef RW_GATEWAY_WAITQ_H
#define RW_GATEWAY_WAITQ_H

#include <stddef.h>

struct request;
struct worker;
struct event;

typedef struct waitq {
    struct waitq *next;        /* hash chain */
    struct worker *w;
    const void *key;           /* the API key (cfg_key_t) */
    int ep;                    /* endpoint index */
    struct request *head, *tail;
    size_t n;
    struct event *timer;
} waitq_t;

#define WAITQ_BUCKETS 64

/* The queue of (key, ep), or NULL; created (empty, timer set to call
 * cb(arg = the queue)) when `create`, NULL on allocation failure. */
waitq_t *waitq_find(struct worker *w, const void *key, int ep, int create,
                    void (*cb)(int, short, void *));
/* Append r at the tail. */
void waitq_push(waitq_t *q, struct request *r);
/* Unlink r; frees q (and its timer) when it is left empty. */
void waitq_remove(waitq_t *q, struct request *r);

#endif
