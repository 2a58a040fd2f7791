/*
 * gateway/http/client.h: the gateway's HTTP/1.1 client for backends.
 *
 * One pool per backend address per worker: keep-alive connections, at most
 * `max_idle` of them idle, each closed after `idle_timeout_ms` unused or as
 * soon as the backend closes it. A connection carries one exchange at a
 * time. The request (head and body, already formatted by the caller) goes
 * out in one writev on plain connections; the answer is parsed in place
 * from the connection's buffer by gateway/http/parse.c (Content-Length,
 * chunked with trailers, or until close) and handed to the caller as it
 * arrives. TLS goes through bufferevent_openssl with the caller's SSL.
 *
 * Why not evhttp's client: it costs ~3 epoll_ctl and an ioctl per request,
 * a malloc per header and printf per line, cannot hand over trailers, and
 * answers 502 for a pooled connection the backend had closed.
 *
 * Timeouts (`timeout_ms`): from the request's last byte written to the end
 * of the answer's head, and between any two reads of its body.
 *
 * Retry: an exchange on a reused connection that ends before any byte of
 * the answer arrived is sent again once, on a fresh connection, when the
 * backend cannot have started it: the write itself failed, or the method
 * is idempotent (GET, HEAD, OPTIONS, PUT, DELETE). Idle connections are
 * watched, so a backend's close of an idle one is seen before reuse.
 *
 * Ownership: the pool owns its connections; hc_request() lends one to the
 * exchange until the exchange ends. The exchange takes the request buffer
 * (`req`, freed when the exchange ends) and borrows `cb`/`arg` until its
 * last callback. Every exchange ends with exactly one of on_end or
 * on_error, or with hc_cancel() (then no callback runs at all). Callbacks
 * may call hc_cancel() on their own exchange and hc_request() on any pool.
 * Data and fields given to callbacks live only during the call.
 */
#ifndef RW_GATEWAY_HTTP_CLIENT_H
#define RW_GATEWAY_HTTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "parse.h"

struct event_base;
struct evbuffer;

typedef struct hc_pool hc_pool_t;
typedef struct hc_exchange hc_exchange_t;

enum hc_error {
    HC_E_CONNECT = 1, /* no connection could be made */
    HC_E_TIMEOUT,     /* timeout_ms passed (head, or a gap in the body) */
    HC_E_CLOSED,      /* the connection ended before the whole answer */
    HC_E_PROTOCOL,    /* the answer is not valid HTTP/1.1 */
    HC_E_MEMORY,
};

typedef struct hc_callbacks {
    /* The final answer's head (1xx heads are skipped). Return -1 to cancel
     * the exchange (no more callbacks). */
    int (*on_head)(void *arg, const hp_response_t *res);
    /* Body bytes, decoded from any chunked framing. */
    void (*on_data)(void *arg, const char *data, size_t len);
    /* One trailer field of a chunked answer (before on_end). */
    void (*on_trailer)(void *arg, const hp_field_t *f);
    /* The answer is complete. */
    void (*on_end)(void *arg);
    /* The exchange failed; got_head says whether on_head had run. */
    void (*on_error)(void *arg, enum hc_error err, int got_head);
} hc_callbacks_t;

typedef struct hc_pool_opts {
    const char *host;         /* a name or an address; resolved once */
    uint16_t port;
    int64_t timeout_ms;
    size_t max_idle;          /* 0: 256 */
    int64_t idle_timeout_ms;  /* 0: 30000 */
    /* TLS: a new SSL (with SNI and verification set up) per connection, or
     * NULL for plain HTTP. */
    SSL *(*new_ssl)(void *arg);
    void *ssl_arg;
} hc_pool_opts_t;

/* NULL with a message in err (the host cannot be resolved, memory). */
hc_pool_t *hc_pool_new(struct event_base *base, const hc_pool_opts_t *o, char *err,
                       size_t errlen);
/* Close every idle connection and free the pool. No exchange may be open. */
void hc_pool_free(hc_pool_t *p);
size_t hc_pool_idle(const hc_pool_t *p);

/* Methods whose repetition changes nothing (RFC 9110 section 9.2.2). */
int hc_idempotent(const char *method);

/*
 * Start an exchange: req holds the whole request (head and body) and is
 * taken over. is_head: the answer has no body. idempotent: may be sent
 * again if a reused connection turns out closed (see above). Returns the
 * exchange, or NULL when it could not start (req is freed, no callback
 * runs).
 */
hc_exchange_t *hc_request(hc_pool_t *p, struct evbuffer *req, int is_head, int idempotent,
                          const hc_callbacks_t *cb, void *arg);
/* Stop reading the answer (backpressure) or read again. */
void hc_pause(hc_exchange_t *x, int paused);
/* End the exchange now: its connection is closed, no callback runs. */
void hc_cancel(hc_exchange_t *x);
/* During on_head: the bytes of the body (or framing) already read past the
 * head (a body of known length that is all here can go out with the head). */
size_t hc_head_rest(const hc_exchange_t *x);
/* Whether the exchange was sent on a reused connection (for tests). */
int hc_reused(const hc_exchange_t *x);

#endif
