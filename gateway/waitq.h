/*
 * gateway/waitq.h: the requests that wait for room instead of a 429 (an
 * endpoint's "queue"), per process: one FIFO per (key id, endpoint name)
 * that has waiters, shared by every worker, found through a small hash
 * table under one mutex. Only the head of a queue is ever decided again;
 * the others wait behind it, whichever worker has their connection, so
 * the requests of one key are admitted in arrival order and `max_waiting`
 * counts every waiter of the process.
 *
 * Ownership: a waitq_t belongs to the table: made by waitq_join() for its
 * first request, freed by waitq_leave() for its last. It borrows its
 * requests: each is owned by its worker (request.c), linked by
 * waitq_join() and unlinked by waitq_leave(), both called on that
 * worker's thread, and `wq_wake` (the request's own event) lives from
 * before the join to after the leave. While a request is linked, other
 * threads touch only its links, `wq_gauge` (written under the mutex) and
 * its wake (server_worker_wake: through its worker's mailbox, as a
 * worker's event_base has no lock; waitq_leave takes back a wake not yet
 * delivered): the head's worker is woken when the one before it leaves or
 * a concurrency slot it waits for is given back.
 */
#ifndef RW_GATEWAY_WAITQ_H
#define RW_GATEWAY_WAITQ_H

#include <stddef.h>
#include <stdint.h>

struct request;

typedef struct waitq waitq_t;

/* 1 if requests of (key_id, ep) wait now. */
int waitq_busy(const char *key_id, const char *ep);
/* Put r at the tail of the queue of (key_id, ep), unless `max` wait there
 * already. 0: r is linked (r->wq set; *head: it is the first), 1: full,
 * -1: out of memory. r->wq_wake must be made before. */
int waitq_join(struct request *r, const char *key_id, const char *ep, size_t max, int *head);
/* The head r waits for the concurrency counter of hash g (0: none). */
void waitq_set_gauge(struct request *r, uint64_t g);
/* Unlink r (r->wq cleared): if it was the head, the next one's worker is
 * woken. Frees the queue when it is left empty. */
void waitq_leave(struct request *r);
/* Concurrency counters of hashes g[0..n) were given back: the heads that
 * wait for one of them are woken. */
void waitq_wake_gauge(const uint64_t *g, size_t n);
/* The hash of a counter key for the two calls above (never 0). */
uint64_t waitq_hash(const char *s);

#endif
