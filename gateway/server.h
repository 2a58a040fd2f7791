/* gateway/server.h: starting, reconfiguring and stopping worker threads.
 * Called from the main thread only. */
#ifndef RW_GATEWAY_SERVER_H
#define RW_GATEWAY_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "../storage/store.h"
#include "config/config.h"
#include "worker.h"

/* A listening socket (with SO_REUSEPORT when reuseport: one per worker),
 * or -1 with a message in err. */
int server_listen_socket(const char *host, uint16_t port, int reuseport, char *err,
                         size_t errlen);
/* Whether another socket already listens on host:port: 1 yes, 0 no, -1
 * with a message in err. The workers' sockets share their port through
 * SO_REUSEPORT, which would let a second process share it silently. */
int server_address_in_use(const char *host, uint16_t port, char *err, size_t errlen);
/* Set up worker w on listening socket fd (owned by the worker from now). */
int server_worker_init(worker_t *w, int index, config_t *cfg, store_t *store, int fd);
int server_worker_start(worker_t *w);
/* Hand a new snapshot to the worker (takes its own reference). */
void server_worker_swap(worker_t *w, config_t *next);
/* Stop accepting, drain, exit the worker's loop (twice: at once). */
void server_worker_stop(worker_t *w);
/* Activate request r's wq_wake with `what` (EV_TIMEOUT, EV_READ) on r's
 * worker w, from any thread: at once on w's own thread, else through w's
 * mailbox (flags of wakes not yet delivered add up, as libevent's do).
 * r must stay alive until server_worker_unwake(w, r) has returned. */
void server_worker_wake(worker_t *w, struct request *r, short what);
/* On w's thread: forget a wake of r not delivered yet (before r's wq_wake
 * is freed). */
void server_worker_unwake(worker_t *w, struct request *r);
void server_worker_join_free(worker_t *w);
/* Free a worker that was set up (fully or partly) but never started. */
void server_worker_free(worker_t *w);

#endif
