/*
 * gateway/proxy.c: forward an admitted request to its backend and stream
 * the answer back as it arrives.
 *
 * Backend connections are kept alive in per-worker pools, one pool per
 * backend address. A connection carries one request at a time (evhttp does
 * not pipeline), so a busy connection is out of the pool until its request
 * completes.
 *
 * Ownership: a proxy_conn belongs to its pool; while busy it is lent to one
 * request (r->bconn) and comes back in on_backend_done(). The backend
 * evhttp_request is owned by evhttp; r->breq is cleared when it completes
 * or fails, and proxy_abort() frees the connection (and with it the
 * request, without callbacks) when the client goes away first.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>

#include "gateway.h"
#include "metrics.h"
#include "tls.h"

typedef struct proxy_conn {
    struct evhttp_connection *evcon;
    struct proxy_pool *pool;
    struct proxy_conn *next; /* in the pool's idle list */
    int dead;                /* TLS: closed once, not to be reused */
} proxy_conn_t;

typedef struct proxy_pool {
    struct proxy_pool *next; /* all pools of a worker */
    char *host;
    uint16_t port;
    int64_t timeout_ms;
    int tls;
    char *ca_file;           /* NULL: the system's store */
    SSL_CTX *ssl_ctx;        /* tls: verifying client context (owned) */
    struct event_base *base; /* the worker's */
    proxy_conn_t *idle;
    size_t n_idle;
} proxy_pool_t;

#define POOL_IDLE_MAX 256 /* idle keep-alive connections per backend per worker */

static __thread struct evdns_base *dns;

static int same_file(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void pool_free(proxy_pool_t *p)
{
    if (p->ssl_ctx)
        SSL_CTX_free(p->ssl_ctx);
    free(p->ca_file);
    free(p->host);
    free(p);
}

static proxy_pool_t *pool_for(worker_t *w, const cfg_backend_t *be)
{
    for (proxy_pool_t *p = w->pools; p; p = p->next)
        if (p->port == be->port && p->timeout_ms == be->timeout_ms && p->tls == be->tls &&
            strcmp(p->host, be->host) == 0 && same_file(p->ca_file, be->ca_file))
            return p;
    proxy_pool_t *p = calloc(1, sizeof *p);
    if (!p || !(p->host = strdup(be->host)) || (be->ca_file && !(p->ca_file = strdup(be->ca_file)))) {
        if (p)
            pool_free(p);
        return NULL;
    }
    p->tls = be->tls;
    p->base = w->base;
    if (p->tls) {
        char err[512];
        p->ssl_ctx = tls_client_ctx(be->ca_file, err, sizeof err);
        if (!p->ssl_ctx) {
            log_msg(LOG_ERROR, "backend %s: %s", be->name, err);
            pool_free(p);
            return NULL;
        }
    }
    p->port = be->port;
    p->timeout_ms = be->timeout_ms;
    p->next = w->pools;
    w->pools = p;
    return p;
}

/* A TLS connection that closed cannot be reconnected by evhttp (its SSL
 * object is spent): it is marked and freed instead of being reused. */
static void on_backend_conn_close(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    proxy_conn_t *c = arg;
    c->dead = 1;
}

static proxy_conn_t *conn_take(worker_t *w, proxy_pool_t *p)
{
    proxy_conn_t *c;
    while ((c = p->idle)) {
        p->idle = c->next;
        p->n_idle--;
        c->next = NULL;
        if (!c->dead)
            return c;
        evhttp_connection_free(c->evcon);
        free(c);
    }
    c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    if (!dns)
        dns = evdns_base_new(w->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    if (p->tls) {
        SSL *ssl = tls_client_ssl(p->ssl_ctx, p->host);
        struct bufferevent *bev =
            ssl ? bufferevent_openssl_socket_new(w->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                 BEV_OPT_CLOSE_ON_FREE)
                : NULL;
        if (!bev) {
            if (ssl)
                SSL_free(ssl);
            free(c);
            return NULL;
        }
        /* Many servers end a body by closing without close_notify. */
        bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
        c->evcon = evhttp_connection_base_bufferevent_new(w->base, dns, bev, p->host, p->port);
        if (c->evcon)
            evhttp_connection_set_closecb(c->evcon, on_backend_conn_close, c);
        else
            bufferevent_free(bev);
    } else {
        c->evcon = evhttp_connection_base_new(w->base, dns, p->host, p->port);
    }
    if (!c->evcon) {
        free(c);
        return NULL;
    }
    struct timeval tv = {.tv_sec = p->timeout_ms / 1000,
                         .tv_usec = (p->timeout_ms % 1000) * 1000};
    evhttp_connection_set_timeout_tv(c->evcon, &tv);
    evhttp_connection_set_retries(c->evcon, 0);
    evhttp_connection_set_max_headers_size(c->evcon, 64 * 1024);
    c->pool = p;
    return c;
}

static void conn_free_later(evutil_socket_t fd, short what, void *arg);

/* Back to the idle list; or freed, once the callback that returns it (it
 * may be the connection's own) has unwound. */
static void conn_give_back(proxy_conn_t *c)
{
    proxy_pool_t *p = c->pool;
    if (p->n_idle >= POOL_IDLE_MAX || c->dead) {
        if (event_base_once(p->base, -1, EV_TIMEOUT, conn_free_later, c, NULL) != 0) {
            c->next = p->idle; /* cannot defer: keep it, reconnects on use */
            p->idle = c;
            p->n_idle++;
        }
        return;
    }
    c->next = p->idle;
    p->idle = c;
    p->n_idle++;
}

/* Free a connection after the callback that used it has unwound. */
static void conn_free_later(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    proxy_conn_t *c = arg;
    evhttp_connection_free(c->evcon);
    free(c);
}

void proxy_pools_free(worker_t *w)
{
    proxy_pool_t *p = w->pools;
    while (p) {
        proxy_pool_t *next = p->next;
        proxy_conn_t *c = p->idle;
        while (c) {
            proxy_conn_t *cn = c->next;
            evhttp_connection_free(c->evcon);
            free(c);
            c = cn;
        }
        pool_free(p);
        p = next;
    }
    w->pools = NULL;
    if (dns) {
        evdns_base_free(dns, 0);
        dns = NULL;
    }
}

void proxy_abort(request_t *r)
{
    if (!r->bconn)
        return;
    /* Freeing the connection frees its pending request; no callback runs. */
    evhttp_connection_free(r->bconn->evcon);
    free(r->bconn);
    r->bconn = NULL;
    r->breq = NULL;
}

static enum evhttp_cmd_type cmd_of(h1_conn_t *req)
{
    switch (h1_method(req)) {
    case H1_GET: return EVHTTP_REQ_GET;
    case H1_POST: return EVHTTP_REQ_POST;
    case H1_PUT: return EVHTTP_REQ_PUT;
    case H1_DELETE: return EVHTTP_REQ_DELETE;
    case H1_PATCH: return EVHTTP_REQ_PATCH;
    case H1_HEAD: return EVHTTP_REQ_HEAD;
    case H1_OPTIONS: return EVHTTP_REQ_OPTIONS;
    }
    return EVHTTP_REQ_GET;
}

/* Header names compared as CGI-style backends see them: case-insensitive,
 * with `_` read as `-` (X_Gateway_Key_Id and X-Gateway-Key-Id are one
 * name to a backend that maps both to HTTP_X_GATEWAY_KEY_ID). */
static int same_header_name(const char *a, const char *b)
{
    for (;; a++, b++) {
        unsigned char x = (unsigned char)(*a == '_' ? '-' : *a);
        unsigned char y = (unsigned char)(*b == '_' ? '-' : *b);
        if (x >= 'A' && x <= 'Z')
            x = (unsigned char)(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z')
            y = (unsigned char)(y - 'A' + 'a');
        if (x != y)
            return 0;
        if (!x)
            return 1;
    }
}

/* Whether name starts with prefix, compared as same_header_name does. */
static int header_name_has_prefix(const char *name, const char *prefix)
{
    size_t n = strlen(prefix);
    if (strlen(name) < n)
        return 0;
    char head[64];
    if (n >= sizeof head)
        return 0;
    memcpy(head, name, n);
    head[n] = '\0';
    return same_header_name(head, prefix);
}

/* Hop-by-hop headers (RFC 9110 §7.6.1) and what the gateway sets itself. */
static int skip_request_header(const char *name)
{
    static const char *const skip[] = {
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
        "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
        "Host", "Content-Length", "Authorization", "X-API-Key", "Expect",
        "X-Request-Id", "X-Gateway-Key-Id", "X-Gateway-Account", "X-Forwarded-For",
    };
    for (size_t i = 0; i < sizeof skip / sizeof *skip; i++)
        if (same_header_name(name, skip[i]))
            return 1;
    /* The gateway's own namespace: nothing a client sends there is true. */
    return header_name_has_prefix(name, "X-Gateway-");
}

static int skip_response_header(const char *name)
{
    static const char *const skip[] = {
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
        "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
        "X-Request-Id", "Date",
    };
    for (size_t i = 0; i < sizeof skip / sizeof *skip; i++)
        if (same_header_name(name, skip[i]))
            return 1;
    if (!strchr(name, '_'))
        return 0;
    /* A backend header spelt with `_` that a client reading `_` as `-`
     * would take for one of the gateway's own answers' headers. */
    static const char *const ours[] = {
        "Content-Length", "Request-Id", "Retry-After", "Retry-After-Ms", "X-Should-Retry",
        "RateLimit", "RateLimit-Policy",
    };
    for (size_t i = 0; i < sizeof ours / sizeof *ours; i++)
        if (same_header_name(name, ours[i]))
            return 1;
    return header_name_has_prefix(name, "X-RateLimit-") ||
           header_name_has_prefix(name, "Anthropic-RateLimit-");
}

/* name with `_` read as `-`, for looking it up among the headers the
 * gateway has set (those never contain `_`). */
static const char *dashed(const char *name, char *buf, size_t len)
{
    size_t n = strlen(name);
    if (!strchr(name, '_') || n >= len)
        return name;
    for (size_t i = 0; i <= n; i++)
        buf[i] = name[i] == '_' ? '-' : name[i];
    return buf;
}

/* Headers named by a Connection header are hop-by-hop too: whether any
 * Connection header of hs names `name`. */
static int named_by_any_connection(struct evkeyvalq *hs, const char *name)
{
    for (struct evkeyval *h = hs->tqh_first; h; h = h->next.tqe_next)
        if (strcasecmp(h->key, "Connection") == 0 && h1_list_has(h->value, name))
            return 1;
    return 0;
}

/* The same for the client's request. */
static int client_connection_names(h1_conn_t *c, const char *name)
{
    size_t n = h1_header_count(c);
    for (size_t i = 0; i < n; i++) {
        const char *k, *v;
        h1_header_at(c, i, &k, &v);
        if (strcasecmp(k, "Connection") == 0 && h1_list_has(v, name))
            return 1;
    }
    return 0;
}

static void copy_request_headers(request_t *r, struct evkeyvalq *out)
{
    h1_conn_t *in = r->req;
    const cfg_backend_t *be = &r->cfg->backends[r->ep->backend];
    size_t nh = h1_header_count(in);
    for (size_t k = 0; k < nh; k++) {
        const char *key, *value;
        h1_header_at(in, k, &key, &value);
        if (skip_request_header(key) || client_connection_names(in, key))
            continue;
        int configured = 0;
        for (size_t i = 0; i < be->n_headers && !configured; i++)
            configured = same_header_name(be->headers[i].name, key);
        if (!configured)
            evhttp_add_header(out, key, value);
    }
    for (size_t i = 0; i < be->n_headers; i++)
        evhttp_add_header(out, be->headers[i].name, be->headers[i].value);

    char host[300];
    int default_port = be->port == (be->tls ? 443 : 80);
    int v6 = strchr(be->host, ':') != NULL;
    if (default_port)
        snprintf(host, sizeof host, v6 ? "[%s]" : "%s", be->host);
    else
        snprintf(host, sizeof host, v6 ? "[%s]:%u" : "%s:%u", be->host, be->port);
    evhttp_add_header(out, "Host", host);

    /* The peer is always the last entry: never cut off by a long client value. */
    const char *xff = h1_header(in, "X-Forwarded-For");
    const char *me = h1_peer(in);
    if (xff && *xff && strlen(xff) < 4096) {
        size_t need = strlen(xff) + strlen(me) + 3;
        char *xbuf = malloc(need);
        if (xbuf) {
            snprintf(xbuf, need, "%s, %s", xff, me);
            evhttp_add_header(out, "X-Forwarded-For", xbuf);
            free(xbuf);
        } else {
            evhttp_add_header(out, "X-Forwarded-For", me);
        }
    } else {
        evhttp_add_header(out, "X-Forwarded-For", me);
    }
    evhttp_add_header(out, "X-Request-Id", r->rid);
    evhttp_add_header(out, "X-Gateway-Key-Id", r->key->id);
    evhttp_add_header(out, "X-Gateway-Account", r->acct->name);
}

static void backend_failed(request_t *r)
{
    if (r->reply_started) {
        /* Mid-stream: the client must not take a cut body for a whole one,
         * so its connection is closed without the final chunk. */
        h1_conn_t *c = r->req;
        if (c) {
            request_unwatch_client(r);
            r->client_gone = 1;
            r->req = NULL;
            h1_abort(c);
        }
        request_finish(r);
        return;
    }
    if (r->backend_error == EVREQ_HTTP_TIMEOUT + 1)
        respond_error(r, 504, "upstream_error", "BACKEND_TIMEOUT",
                      "The backend did not answer in time.", NULL);
    else
        respond_error(r, 502, "upstream_error", "BACKEND_UNAVAILABLE",
                      "The backend could not be reached.", NULL);
}

/* The answer's head: ours first (they replace the backend's fields of the
 * same names), then the backend's end-to-end fields. Returns the backend's
 * Content-Length, -1 if none. */
static int64_t reply_headers(request_t *r, struct evhttp_request *breq)
{
    struct evkeyvalq *bh = evhttp_request_get_input_headers(breq);
    h1_conn_t *out = r->req;
    respond_rate_headers(r, out);
    size_t ours = h1_headers_mark(out);
    int64_t clen = -1;
    for (struct evkeyval *h = bh->tqh_first; h; h = h->next.tqe_next) {
        if (strcasecmp(h->key, "Content-Length") == 0) {
            char *e;
            long long v = strtoll(h->value, &e, 10);
            if (*h->value && !*e && v >= 0)
                clen = v;
            continue;
        }
        char dbuf[256];
        if (!skip_response_header(h->key) && !named_by_any_connection(bh, h->key) &&
            !h1_has_header(out, dashed(h->key, dbuf, sizeof dbuf), ours))
            h1_add_header(out, h->key, h->value);
    }
    int code = evhttp_request_get_response_code(breq);
    r->backend_status = code;
    r->status = code;
    r->reply_started = 1;
    return clen;
}

static const char *reason_of(struct evhttp_request *breq)
{
    const char *line = evhttp_request_get_response_code_line(breq);
    return line ? line : "";
}

/* Send the head now; the body follows as it arrives (chunked when its
 * length is unknown, until close for an HTTP/1.0 client). */
static void start_reply(request_t *r, struct evhttp_request *breq)
{
    int64_t clen = reply_headers(r, breq);
    h1_reply_start(r->req, r->status, reason_of(breq), clen);
}

static int on_backend_headers(struct evhttp_request *breq, void *arg)
{
    request_t *r = arg;
    int code = evhttp_request_get_response_code(breq);
    if (r->client_gone)
        return -1;
    if (code == 100)
        return 0; /* evhttp reads the final answer next */
    if (code < 200)
        return -1; /* other interim answers: not relayed, the backend is cut */
    /* A body that is already all here is sent with the head, in one write
     * (on_backend_done); otherwise the head goes now. */
    const char *cl = evhttp_find_header(evhttp_request_get_input_headers(breq),
                                        "Content-Length");
    if (cl && r->bconn && cmd_of(r->req) != EVHTTP_REQ_HEAD &&
        !evhttp_find_header(evhttp_request_get_input_headers(breq), "Transfer-Encoding")) {
        struct bufferevent *bev = evhttp_connection_get_bufferevent(r->bconn->evcon);
        char *e;
        long long n = strtoll(cl, &e, 10);
        if (!*e && n >= 0 && evbuffer_get_length(bufferevent_get_input(bev)) >= (size_t)n)
            return 0;
    }
    start_reply(r, breq);
    return 0;
}

/* The answer's body is kept (up to CAPTURE_MAX) when after_response needs
 * to read it: a job id, a job status, used units. */
#define CAPTURE_MAX (1024 * 1024)

static void keep_copy(request_t *r, struct evbuffer *in)
{
    if (!r->capture)
        return;
    size_t have = evbuffer_get_length(r->capture), n = evbuffer_get_length(in);
    if (have + n > CAPTURE_MAX) {
        evbuffer_free(r->capture); /* too big to read: left as it is */
        r->capture = NULL;
        return;
    }
    evbuffer_add(r->capture, evbuffer_pullup(in, (ev_ssize_t)n), n);
}

#define CLIENT_BUFFER_MAX (1024 * 1024)

/* The client took all that was waiting for it: read the backend again.
 * (Every way a request ends replaces this callback or frees the client
 * connection, so r is alive here.) */
static void on_client_drained(h1_conn_t *c, void *arg)
{
    (void)c;
    request_t *r = arg;
    if (r->backend_paused && r->bconn) {
        r->backend_paused = 0;
        bufferevent_enable(evhttp_connection_get_bufferevent(r->bconn->evcon), EV_READ);
    }
}

static void on_backend_chunk(struct evhttp_request *breq, void *arg)
{
    request_t *r = arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(breq);
    if (r->client_gone) {
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
    keep_copy(r, in);
    r->bytes_out += evbuffer_get_length(in);
    if (!r->reply_started) {
        /* The head waits for the whole body (all here already): evhttp
         * empties `in` after this call, so the bytes are kept aside. */
        if (!r->held)
            r->held = evbuffer_new();
        if (r->held)
            evbuffer_add_buffer(r->held, in);
        return;
    }
    h1_reply_chunk(r->req, in);
    /* Backpressure: a client that reads slower than the backend writes
     * must not make the gateway buffer the whole answer. Past the mark the
     * backend is not read until the client has taken everything. */
    if (h1_pending(r->req) > CLIENT_BUFFER_MAX && r->bconn) {
        bufferevent_disable(evhttp_connection_get_bufferevent(r->bconn->evcon), EV_READ);
        r->backend_paused = 1;
        h1_set_drained_cb(r->req, on_client_drained, r);
    }
}

static void on_backend_error(enum evhttp_request_error err, void *arg)
{
    request_t *r = arg;
    r->backend_error = (int)err + 1;
}

static void on_backend_done(struct evhttp_request *breq, void *arg)
{
    request_t *r = arg;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    r->upstream_us = (int64_t)(now.tv_sec - r->t_backend.tv_sec) * 1000000 +
                     (now.tv_nsec - r->t_backend.tv_nsec) / 1000;
    if (r->in_make_request) {
        /* Failed inside evhttp_make_request: proxy_start handles it. */
        r->breq = NULL;
        if (!r->backend_error)
            r->backend_error = EVREQ_HTTP_EOF + 1;
        return;
    }
    r->breq = NULL;
    proxy_conn_t *c = r->bconn;
    r->bconn = NULL;
    if (!breq || r->backend_error || evhttp_request_get_response_code(breq) == 0) {
        /* evhttp resets the connection; it reconnects on its next use. */
        if (c)
            conn_give_back(c);
        if (!r->backend_error)
            r->backend_error = EVREQ_HTTP_EOF + 1;
        backend_failed(r);
        return;
    }
    int code = evhttp_request_get_response_code(breq);
    if (c && (cmd_of(r->req) == EVHTTP_REQ_HEAD || code == 204 || code == 304)) {
        /* A backend that sends a body anyway would leave it on the
         * connection for the next request: this one is not reused. */
        if (event_base_once(r->w->base, -1, EV_TIMEOUT, conn_free_later, c, NULL) != 0)
            conn_give_back(c);
    } else if (c) {
        conn_give_back(c);
    }
    struct evbuffer *rest = evhttp_request_get_input_buffer(breq);
    int whole = !r->reply_started && cmd_of(r->req) != EVHTTP_REQ_HEAD && code != 204 &&
                code != 304;
    if (!r->reply_started) {
        if (whole)
            reply_headers(r, breq);
        else
            start_reply(r, breq);
    }
    keep_copy(r, rest);
    after_response(r, breq);
    r->bytes_out += evbuffer_get_length(rest);
    h1_conn_t *client = r->req;
    request_unwatch_client(r);
    r->req = NULL;
    request_settle(r);
    if (whole) {
        /* The whole answer at once: head and body in one write. */
        if (r->held) {
            evbuffer_add_buffer(r->held, rest);
            rest = r->held;
        }
        h1_reply_buffer(client, code, reason_of(breq), rest);
    } else {
        if (evbuffer_get_length(rest))
            h1_reply_chunk(client, rest);
        h1_reply_end(client);
    }
    request_finish(r);
}


void proxy_start(request_t *r)
{
    worker_t *w = r->w;
    const cfg_backend_t *be = &r->cfg->backends[r->ep->backend];
    proxy_pool_t *pool = pool_for(w, be);
    proxy_conn_t *c = pool ? conn_take(w, pool) : NULL;
    if (!c) {
        respond_error(r, 502, "upstream_error", "BACKEND_UNAVAILABLE",
                      "No connection to the backend could be made.", NULL);
        return;
    }
    struct evhttp_request *breq = evhttp_request_new(on_backend_done, r);
    if (!breq) {
        conn_give_back(c);
        respond_error(r, 502, "upstream_error", "BACKEND_UNAVAILABLE",
                      "Out of memory.", NULL);
        return;
    }
    evhttp_request_set_header_cb(breq, on_backend_headers);
    evhttp_request_set_chunked_cb(breq, on_backend_chunk);
    evhttp_request_set_error_cb(breq, on_backend_error);
    copy_request_headers(r, evhttp_request_get_output_headers(breq));
    struct evbuffer *out = evhttp_request_get_output_buffer(breq);
    evbuffer_add_buffer(out, h1_body(r->req));
    /* evhttp adds Content-Length only for POST and PUT: a PATCH (or any)
     * body without it would run into the next request on the connection. */
    enum evhttp_cmd_type cmd = cmd_of(r->req);
    size_t blen = evbuffer_get_length(out);
    if (blen || cmd == EVHTTP_REQ_POST || cmd == EVHTTP_REQ_PUT || cmd == EVHTTP_REQ_PATCH) {
        char cl[24];
        snprintf(cl, sizeof cl, "%zu", blen);
        evhttp_add_header(evhttp_request_get_output_headers(breq), "Content-Length", cl);
    }

    const char *path = r->path;
    const char *query = h1_query(r->req);
    size_t need = strlen(be->base_path) + strlen(path ? path : "/") +
                  (query ? strlen(query) + 1 : 0) + 1;
    char stackbuf[1024];
    char *target = need <= sizeof stackbuf ? stackbuf : malloc(need);
    if (!target) {
        evhttp_request_free(breq);
        conn_give_back(c);
        respond_error(r, 502, "upstream_error", "BACKEND_UNAVAILABLE", "Out of memory.",
                      NULL);
        return;
    }
    snprintf(target, need, "%s%s%s%s", be->base_path, path && *path ? path : "/",
             query ? "?" : "", query ? query : "");

    if (after_needs_body(r))
        r->capture = evbuffer_new();
    r->state = RQ_PROXY;
    r->bconn = c;
    r->breq = breq;
    request_watch_client(r);
    clock_gettime(CLOCK_MONOTONIC, &r->t_backend);
    r->in_make_request = 1;
    int rc = evhttp_make_request(c->evcon, breq, cmd_of(r->req), target);
    r->in_make_request = 0;
    if (target != stackbuf)
        free(target);
    if (rc != 0 || r->backend_error) {
        /* evhttp has freed breq; the connection is reset and reusable. */
        r->breq = NULL;
        r->bconn = NULL;
        conn_give_back(c);
        if (!r->backend_error)
            r->backend_error = EVREQ_HTTP_EOF + 1;
        backend_failed(r);
    }
}
