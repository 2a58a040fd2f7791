/*
 * gateway/http/server.c: the HTTP/1.1 server side's listener: accepting
 * (caps on connections, backing off when out of descriptors), a
 * connection's lifetime, drain and free (conn.h has the walk of a
 * connection and its ownership rules; server.h the API).
 */
#include <errno.h>
#include <malloc.h>
#include <stdatomic.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/listener.h>
#include <jansson.h>

#include "../errjson.h"
#include "conn.h"
#include "peers.h"

/* ---- the server -------------------------------------------------------- */

static int64_t mono_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A line for the operator, one a second at most (the rest are counted). */
static void server_log(h1_server_t *s, const char *what)
{
    int64_t now = mono_now_ms();
    if (s->last_log_ms && now - s->last_log_ms < 1000) {
        s->unlogged++;
        return;
    }
    if (s->log) {
        char line[256];
        if (s->unlogged)
            snprintf(line, sizeof line, "%s (and %lu more in the last second)", what, s->unlogged);
        else
            snprintf(line, sizeof line, "%s", what);
        s->log(line);
    }
    s->last_log_ms = now;
    s->unlogged = 0;
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    h1_server_t *s = arg;
    if (s->lst && !s->draining)
        evconnlistener_enable(s->lst);
}

/* accept() failed. Out of descriptors (or memory), the pending connection
 * stays in the backlog and the listener would fire again at once: it is
 * paused for a moment instead of spinning. */
static void on_accept_error(struct evconnlistener *l, void *arg)
{
    h1_server_t *s = arg;
    int err = EVUTIL_SOCKET_ERROR();
    if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
        evconnlistener_disable(l);
        struct timeval tv = {0, 100 * 1000};
        evtimer_add(&s->resume, &tv);
        server_log(s, err == EMFILE || err == ENFILE
                          ? "accept: out of file descriptors; new connections wait 100 ms "
                            "(raise LimitNOFILE or lower server.max_connections)"
                          : "accept: out of memory; new connections wait 100 ms");
        return;
    }
    char line[160];
    snprintf(line, sizeof line, "accept: %s", evutil_socket_error_to_string(err));
    server_log(s, line);
}

/* Over max_connections (per_client 0) or max_connections_per_client (1):
 * a short answer (rendered once per server), then the connection closes. */
static void refuse_connection(h1_server_t *s, evutil_socket_t fd, int per_client)
{
    if (!s->busy_answer[per_client]) {
        json_t *j = error_json("service_unavailable", "TOO_MANY_CONNECTIONS",
                               per_client ? "Too many connections are open from this address."
                                          : "The gateway has too many open connections.",
                               NULL);
        char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        if (body) {
            static const char head[] = "HTTP/1.1 503 Service Unavailable\r\n"
                                       "Content-Type: application/json\r\nRetry-After: 1\r\n"
                                       "Connection: close\r\nContent-Length: ";
            size_t bl = strlen(body), cap = sizeof head + bl + 32;
            if ((s->busy_answer[per_client] = malloc(cap)))
                s->busy_len[per_client] = (size_t)snprintf(s->busy_answer[per_client], cap,
                                                           "%s%zu\r\n\r\n%s", head, bl, body);
            free(body);
        }
    }
    if (s->busy_answer[per_client]) {
        ssize_t w = send(fd, s->busy_answer[per_client], s->busy_len[per_client],
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
    }
    /* What the client sent already is read, so that closing does not
     * reset the connection under the answer. */
    char sink[4096];
    for (int i = 0; i < 4 && recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0; i++)
        ;
    shutdown(fd, SHUT_WR);
    evutil_closesocket(fd);
    server_log(s, per_client ? "server.max_connections_per_client reached: a new connection "
                               "was refused with 503"
                             : "server.max_connections reached: a new connection was refused "
                               "with 503");
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    (void)l;
    h1_server_t *s = arg;
    if (s->lim.max_connections && s->n_conns >= s->lim.max_connections) {
        refuse_connection(s, fd, 0);
        return;
    }
    int counted = peers_take(sa, s->lim.max_per_client);
    if (counted < 0) {
        refuse_connection(s, fd, 1);
        return;
    }
    h1_conn_t *c = calloc(1, sizeof *c);
    if (!c || !(c->ibuf = malloc(READ_CHUNK)) || !(c->body = evbuffer_new()) ||
        !(c->out = evbuffer_new())) {
        if (c) {
            free(c->ibuf);
            if (c->body)
                evbuffer_free(c->body);
            free(c);
        }
        if (counted)
            peers_give(sa);
        evutil_closesocket(fd);
        return;
    }
    c->srv = s;
    c->fd = fd;
    c->icap = READ_CHUNK;
    if ((size_t)salen <= sizeof c->peer)
        memcpy(&c->peer, sa, (size_t)salen);
    c->peer_counted = counted > 0;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    event_assign(&c->later, s->base, -1, 0, conn_on_later, c);
    SSL_CTX *ctx = s->tls ? s->tls(s->arg) : NULL;
    if (ctx) {
        SSL *ssl = SSL_new(ctx);
        c->bev = ssl ? bufferevent_openssl_socket_new(s->base, fd, ssl,
                                                      BUFFEREVENT_SSL_ACCEPTING,
                                                      BEV_OPT_CLOSE_ON_FREE)
                     : NULL;
        if (!c->bev) {
            if (ssl)
                SSL_free(ssl);
            evbuffer_free(c->body);
            evbuffer_free(c->out);
            free(c->ibuf);
            free(c);
            if (counted)
                peers_give(sa);
            evutil_closesocket(fd);
            return;
        }
        bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
        bufferevent_setcb(c->bev, conn_tls_read, conn_tls_write, conn_tls_event, c);
        struct timeval tv = {s->lim.timeout_ms / 1000, (s->lim.timeout_ms % 1000) * 1000};
        bufferevent_set_timeouts(c->bev, &tv, &tv);
        bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    } else {
        event_assign(&c->rev, s->base, fd, EV_READ | EV_PERSIST, conn_on_read, c);
        event_assign(&c->wev, s->base, fd, EV_WRITE | EV_PERSIST, conn_on_write, c);
        conn_arm_read(c);
    }
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
}

static void set_limits(h1_server_t *s, const h1_limits_t *lim)
{
    s->lim = *lim;
    if (s->lim.max_header_bytes < 256)
        s->lim.max_header_bytes = 256;
    if (s->lim.timeout_ms <= 0)
        s->lim.timeout_ms = 30000;
    struct timeval tv = {s->lim.timeout_ms / 1000, (s->lim.timeout_ms % 1000) * 1000};
    s->ctv = event_base_init_common_timeout(s->base, &tv);
}

h1_server_t *h1_server_new(struct event_base *base, int fd, const h1_limits_t *lim,
                           h1_request_cb cb, h1_tls_cb tls, void *arg)
{
    h1_server_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->base = base;
    s->cb = cb;
    s->tls = tls;
    s->arg = arg;
    set_limits(s, lim);
    s->lst = evconnlistener_new(base, on_accept, s, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                -1, fd);
    if (!s->lst) {
        free(s);
        return NULL;
    }
    evconnlistener_set_error_cb(s->lst, on_accept_error);
    evtimer_assign(&s->resume, base, on_resume, s);
    s->resume_set = 1;
    return s;
}

void h1_server_set_refusal_cb(h1_server_t *s, h1_request_cb cb)
{
    s->refusal_cb = cb;
}

void h1_server_set_log(h1_server_t *s, void (*log)(const char *line))
{
    s->log = log;
}

void h1_server_set_limits(h1_server_t *s, const h1_limits_t *lim)
{
    set_limits(s, lim);
}

size_t h1_server_conns(const h1_server_t *s)
{
    return s->n_conns;
}

static void stop_listening(h1_server_t *s)
{
    if (s->resume_set)
        event_del(&s->resume);
    if (s->lst) {
        evconnlistener_free(s->lst);
        s->lst = NULL;
    }
}

void h1_server_drain(h1_server_t *s)
{
    if (s->draining)
        return;
    s->draining = 1;
    stop_listening(s);
    for (h1_conn_t *c = s->conns, *n; c; c = n) {
        n = c->next;
        if (!c->open && !c->busy && c->state == ST_HEAD && c->ilen == c->ipos &&
            conn_pending(c) == 0) {
            conn_fail(c);
            conn_maybe_free(c);
        }
    }
}

void h1_server_free(h1_server_t *s)
{
    if (!s)
        return;
    stop_listening(s);
    s->draining = 1;
    if (s->n_conns == 0) {
        conn_server_destroy(s);
        return;
    }
    s->freeing = 1;
    /* s goes with the last connection freed, which can only be the last one
     * visited (every one not yet visited still counts). */
    for (h1_conn_t *c = s->conns, *n; c; c = n) {
        n = c->next;
        conn_fail(c);
        conn_maybe_free(c);
    }
}
