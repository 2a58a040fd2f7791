/*
 * gateway/http/server.h: the HTTP/1.1 server side of the gateway (the public
 * listener and the admin listener).
 *
 * Why not evhttp here: the profile in docs/benchmarks.md put three quarters of the
 * gateway's time in evhttp's server path (a malloc per header, printf per
 * header line, an epoll_ctl pair and a FIONREAD per answer, an evbuffer
 * chain allocated and freed per read and per write). This layer keeps what
 * evhttp does for us on the server side and drops those costs: a plain
 * connection reads into a buffer of its own, parses the head in place, and
 * writes an answer with one writev straight from its own buffer; only what
 * the socket does not take is queued (then EV_WRITE is asked for). TLS
 * connections go through bufferevent_openssl. The request head is read by
 * gateway/http/parse.c. The implementation is in server.c (listener,
 * accepting, lifetime), input.c (reading requests) and output.c (writing
 * answers), which share gateway/http/conn.h.
 *
 * One exchange (request + answer) at a time per connection; pipelined
 * requests wait in the input buffer until the answer before them is ended.
 *
 * Ownership: the server owns its connections. A connection is handed to
 * the server's request callback with an exchange open; the callee must end
 * it exactly once with h1_reply*, h1_reply_end or h1_abort, from any later
 * turn of the loop. Until then the connection stays allocated, even if the
 * client went away (the close callback says so). Strings returned by the
 * accessors live until the exchange is ended.
 */
#ifndef RW_GATEWAY_HTTP_SERVER_H
#define RW_GATEWAY_HTTP_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <event2/event.h>
#include <openssl/ssl.h>

struct evbuffer;
typedef struct h1_conn h1_conn_t;
typedef struct h1_server h1_server_t;

enum h1_method {
    H1_GET = 1,
    H1_POST,
    H1_PUT,
    H1_DELETE,
    H1_PATCH,
    H1_HEAD,
    H1_OPTIONS,
};

/* "GET", "POST", ... */
const char *h1_method_name(enum h1_method m);

typedef void (*h1_request_cb)(h1_conn_t *c, void *arg);
typedef void (*h1_event_cb)(h1_conn_t *c, void *arg);
/* The TLS context for a new connection, or NULL for plain HTTP. */
typedef SSL_CTX *(*h1_tls_cb)(void *arg);

typedef struct h1_limits {
    size_t max_header_bytes;
    int64_t max_body_bytes;  /* a larger body is not read (h1_body_refused) */
    int64_t timeout_ms;      /* whole head, body gaps, idle keep-alive, writes */
    size_t max_connections;  /* open at once; more are refused with a 503 (0: no cap) */
    size_t max_per_client;   /* open at once from one client address, counted over
                                every server of the process with this cap (0: no cap) */
    int64_t min_body_rate;   /* bytes/s a body must average after timeout_ms (0: off) */
} h1_limits_t;

/* Serve the listening socket fd (taken over) on base. */
h1_server_t *h1_server_new(struct event_base *base, int fd, const h1_limits_t *lim,
                           h1_request_cb cb, h1_tls_cb tls, void *arg);
void h1_server_set_limits(h1_server_t *s, const h1_limits_t *lim);
/* Called on each answer the HTTP layer sends on its own (a head or body it
 * refused: 400, 408, 413, 431, 501, ...), before its headers are written,
 * with the server's arg: it may add fields (the gateway adds its request
 * id). */
void h1_server_set_refusal_cb(h1_server_t *s, h1_request_cb cb);
/* Where the server's operational lines go (accept errors), one a second at
 * most. */
void h1_server_set_log(h1_server_t *s, void (*log)(const char *line));
/* Stop accepting; idle connections are closed, the others after their
 * answer ("Connection: close" is added). */
void h1_server_drain(h1_server_t *s);
/* Connections still open. */
size_t h1_server_conns(const h1_server_t *s);
/* Close everything: connections with an open exchange get their close
 * callback and are freed when it ends; the server goes with the last one. */
void h1_server_free(h1_server_t *s);

/* The request of the open exchange. */
enum h1_method h1_method(const h1_conn_t *c);
const char *h1_path(const h1_conn_t *c);  /* raw, as sent; never empty */
const char *h1_query(const h1_conn_t *c); /* after '?', or NULL */
/* The first header of this name (case-insensitive), or NULL. */
const char *h1_header(const h1_conn_t *c, const char *name);
size_t h1_header_count(const h1_conn_t *c);
void h1_header_at(const h1_conn_t *c, size_t i, const char **name, const char **value);
struct evbuffer *h1_body(h1_conn_t *c);
/* 1 when the body was larger than max_body_bytes and was not read: the
 * answer (a 413) closes the connection. */
int h1_body_refused(const h1_conn_t *c);

/*
 * Bodies after decisions (h1_server_defer_body): the callback gets a
 * request as soon as its head is here; h1_body_pending() says a body is
 * still to come, and the callee reads it with h1_read_body() only for a
 * request it will serve. An exchange answered without reading its body
 * closes its connection after the answer (the body is never read).
 * h1_read_body calls cb once (possibly before it returns) when the body is
 * all here (H1_BODY_OK) or refused: larger than max_bytes
 * (H1_BODY_TOO_LARGE, nothing more is read), no room in the process-wide
 * budget (H1_BODY_NO_ROOM), or too slow (H1_BODY_TOO_SLOW: a gap over
 * timeout_ms, or under min_body_rate), or not valid chunked framing
 * (H1_BODY_INVALID). With no body pending, cb runs at
 * once. A client that asked for 100 Continue gets it from h1_read_body.
 */
enum { H1_BODY_OK = 0, H1_BODY_TOO_LARGE, H1_BODY_NO_ROOM, H1_BODY_TOO_SLOW, H1_BODY_INVALID };
void h1_server_defer_body(h1_server_t *s, int on);
int h1_body_pending(const h1_conn_t *c);
void h1_read_body(h1_conn_t *c, int64_t max_bytes, h1_event_cb cb, void *arg);
int h1_body_status(const h1_conn_t *c);
/* Every server of the process together buffers at most this many body
 * bytes (0: no budget); what is buffered now. */
void h1_set_body_budget(int64_t bytes);
int64_t h1_body_buffered(void);
const char *h1_peer(h1_conn_t *c); /* the client's address as text */

/* Whether a comma-separated field value (a Connection header) holds
 * token, case-insensitively. */
int h1_list_has(const char *list, const char *token);

/* Called once if the client goes away while the exchange is open (never
 * from inside an h1_* call). NULL removes it. */
void h1_set_close_cb(h1_conn_t *c, h1_event_cb cb, void *arg);

/* Answer headers, before h1_reply* / h1_reply_start. Names and values are
 * copied. With lengths (strings not NUL-terminated): */
void h1_add_header_n(h1_conn_t *c, const char *name, size_t name_len, const char *value,
                     size_t value_len);
void h1_add_header_int_n(h1_conn_t *c, const char *name, size_t name_len, int64_t value);
/* The same for NUL-terminated strings; inline, so that the length of a
 * literal name is the compiler's (an answer carries a dozen). */
static inline void h1_add_header(h1_conn_t *c, const char *name, const char *value)
{
    h1_add_header_n(c, name, strlen(name), value, strlen(value));
}
static inline void h1_add_header_int(h1_conn_t *c, const char *name, int64_t value)
{
    h1_add_header_int_n(c, name, strlen(name), value);
}
/* Forget the headers added so far. */
void h1_headers_reset(h1_conn_t *c);
/* How much has been added so far (a mark for h1_has_header). */
size_t h1_headers_mark(const h1_conn_t *c);
/* Whether a header of this name was added before mark. */
int h1_has_header(const h1_conn_t *c, const char *name, size_t mark);
int h1_has_header_n(const h1_conn_t *c, const char *name, size_t name_len, size_t mark);
/* first[b] = 1 for the first byte b (lower case) of each field added
 * before mark: a name starting otherwise is not among them. */
void h1_header_initials(const h1_conn_t *c, size_t mark, unsigned char first[256]);

/* A whole answer: status line, the added headers, Date, Content-Length (and
 * Connection when it closes), then body. Ends the exchange. */
void h1_reply(h1_conn_t *c, int status, const char *reason, const void *body, size_t len);
/* The same with the body from an evbuffer (drained). */
void h1_reply_buffer(h1_conn_t *c, int status, const char *reason, struct evbuffer *body);
/* A streamed answer: content_length < 0 means unknown (chunked, or until
 * close for an HTTP/1.0 client). */
void h1_reply_start(h1_conn_t *c, int status, const char *reason, int64_t content_length);
/* Body bytes of a started answer (drained from data). */
void h1_reply_chunk(h1_conn_t *c, struct evbuffer *data);
/* The same from memory (copied only when the socket does not take it). */
void h1_reply_bytes(h1_conn_t *c, const void *data, size_t n);
/* Bytes written to the connection and not yet taken by the socket. */
size_t h1_pending(const h1_conn_t *c);
/* cb runs (from the loop) once everything pending has been written. */
void h1_set_drained_cb(h1_conn_t *c, h1_event_cb cb, void *arg);
void h1_reply_end(h1_conn_t *c);
/* End the exchange by closing the connection (a cut answer). */
void h1_abort(h1_conn_t *c);

#endif
