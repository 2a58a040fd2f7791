/*
 * gateway/http/conn.h: the inside of the HTTP/1.1 server side, shared by
 * its four files and by nothing else: server.c (the listener, accepting),
 * input.c (reading and parsing requests, the request accessors, the socket
 * callbacks), output.c (writing answers, the answer API) and conn.c (a
 * connection's lifetime, which the other three use). The public API is
 * gateway/http/server.h.
 *
 * A connection walks ST_HEAD -> (ST_BODY_CL | ST_BODY_CHUNKED) -> ST_OPEN
 * (the exchange is with the request callback) -> ST_HEAD again, or
 * ST_CLOSING (the answer is flushed, then the socket closed; with unread
 * input it lingers: write side shut, input discarded for a moment, so that
 * the client reads the answer instead of a reset).
 *
 * Three flags keep the memory safe whatever the order of events:
 *   dead   the socket is closed; no more I/O;
 *   open   an exchange is with the callee, who will end it;
 *   busy   a libevent callback of this connection is on the stack.
 * The struct is freed only when dead && !open && !busy (conn_maybe_free).
 *
 * Ownership: the server owns every connection on its list; a connection
 * owns its buffers (ibuf, head, body, obuf, out) and its socket or
 * bufferevent. body_cb/close_cb/drained_cb and their args are the
 * callee's, borrowed until the exchange ends.
 */
#ifndef RW_GATEWAY_HTTP_CONN_H
#define RW_GATEWAY_HTTP_CONN_H

#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/listener.h>

#include "parse.h"
#include "server.h"

#define H1_MAX_HEADERS 100
#define HOLD_INPUT (64 * 1024)     /* most input kept while an exchange is open */
#define OUT_HIGH (256 * 1024)      /* most answer bytes queued before the next request is read */
#define READ_CHUNK 16384
#define LINGER_MS 2000
#define CHUNK_LINE_MAX 1024

enum { ST_HEAD, ST_BODY_CL, ST_BODY_CHUNKED, ST_OPEN, ST_CLOSING, ST_LINGER };
struct h1_server {
    struct event_base *base;
    struct evconnlistener *lst;
    h1_limits_t lim;
    const struct timeval *ctv; /* common timeout of lim.timeout_ms */
    h1_request_cb cb;
    h1_request_cb refusal_cb;  /* may add fields to the layer's own answers */
    h1_tls_cb tls;
    void *arg;
    h1_conn_t *conns;
    size_t n_conns;
    int draining, freeing;
    int defer_body;            /* deliver heads before their bodies */
    struct event resume;       /* accept again after running out of fds */
    int resume_set;
    void (*log)(const char *line);
    int64_t last_log_ms;       /* accept errors: one line a second at most */
    unsigned long unlogged;    /* errors since the last line */
    char *busy_answer[2];      /* the 503s over max_connections, per server and
                                  per client address (owned) */
    size_t busy_len[2];
};

struct h1_hdr {
    char *name, *value;
    size_t name_len; /* a lookup compares lengths first */
};

struct h1_conn {
    h1_server_t *srv;
    h1_conn_t *prev, *next;
    evutil_socket_t fd;
    struct bufferevent *bev; /* TLS only */
    struct event rev, wev;   /* plain only */
    struct event later;      /* close notice, resuming pipelined input */
    struct sockaddr_storage peer;
    int peer_counted;          /* counted in http/peers.c until the socket closes */
    char peer_text[INET6_ADDRSTRLEN];
    /* input: unconsumed bytes are ibuf[ipos, ilen) */
    char *ibuf;
    size_t ipos, ilen, icap, scan;
    int64_t head_start_ms;
    int64_t linger_until_ms;
    int state;
    hp_chunked_t chunk;      /* a chunked request body being read */
    int dead, open, busy, in_process, notified, reading_paused;
    /* The loop's cached time when rev's timer was last set to the client
     * timeout from then (by conn_arm_read, or by libevent itself as it
     * runs the persistent read event); rev_timed 0 when it is not so set.
     * Setting it again at the same time would change nothing. */
    struct timeval rev_at;
    int rev_timed;
    int out_blocked;         /* input paused until the client reads its answers */
    /* A body read only when the callee asks for it (h1_read_body). */
    int body_deferred;       /* the head was delivered; its body is still to come */
    int expect100;           /* the client waits for 100 Continue */
    int body_status;         /* H1_BODY_* */
    h1_event_cb body_cb;
    void *body_arg;
    int64_t body_max, body_got, body_start_ms;
    int64_t reserved;        /* of the process-wide body budget */
    /* the request */
    int method, http10, keep_alive, body_refused, no_body_out;
    int64_t body_left, body_total;
    char *head;
    size_t head_cap;
    char *path, *query;
    struct h1_hdr hdr[H1_MAX_HEADERS];
    size_t n_hdr;
    struct evbuffer *body;
    /* output */
    char *obuf; /* added answer headers, as lines */
    size_t olen, ocap;
    struct evbuffer *out; /* plain: what the socket has not taken yet */
    int writing, chunked_out, closing_after;
    h1_event_cb close_cb, drained_cb;
    void *close_arg, *drained_arg;
};

static inline int64_t now_ms(const h1_conn_t *c)
{
    struct timeval tv;
    event_base_gettimeofday_cached(c->srv->base, &tv);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* conn.c */
/* Frees a server whose last connection is gone (the server's own
 * memory; h1_server_free decides when). */
void conn_server_destroy(h1_server_t *s);
void conn_fail(h1_conn_t *c);
void conn_maybe_free(h1_conn_t *c);
void conn_pause_reading(h1_conn_t *c, int pause);
/* Plain sockets: the read event with its client timeout from now; a no-op
 * when it was set so at this same loop time. conn_read_ran: libevent has
 * just done it (a read event ran). */
void conn_arm_read(h1_conn_t *c);
void conn_read_ran(h1_conn_t *c);
size_t conn_pending(const h1_conn_t *c);
void conn_close_or_linger(h1_conn_t *c);
/* output.c */
void conn_send_parts(h1_conn_t *c, const struct iovec *pre, int npre, struct evbuffer *data,
                       const struct iovec *post, int npost);
void conn_drained(h1_conn_t *c);
int conn_reserve_body(h1_conn_t *c, int64_t n);
/* input.c */
void conn_process(h1_conn_t *c);
void conn_on_read(evutil_socket_t fd, short what, void *arg);
void conn_on_write(evutil_socket_t fd, short what, void *arg);
void conn_on_later(evutil_socket_t fd, short what, void *arg);
void conn_tls_read(struct bufferevent *bev, void *arg);
void conn_tls_write(struct bufferevent *bev, void *arg);
void conn_tls_event(struct bufferevent *bev, short what, void *arg);

#endif
