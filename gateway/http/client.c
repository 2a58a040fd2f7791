/*
 * gateway/http/client.c: see client.h.
 *
 * A connection is idle (in its pool's list, reading only to notice a
 * close), or lent to one exchange. Its input is read into a buffer of its
 * own and parsed in place; a plain connection writes with sendmsg straight
 * from the request's evbuffer chains (kept until the answer's first byte,
 * for a retry), a TLS one through its bufferevent.
 *
 * Memory safety follows the server side (gateway/http/conn.h): `busy` counts the callbacks of this
 * file on the stack for a connection; a connection is freed only when it
 * is dead and not busy. An exchange is freed when it ends (finish, fail,
 * cancel), never while one of its callbacks runs: each callback is
 * followed by a check that the connection still serves that exchange.
 */
#include "client.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/event_struct.h>

#define HEAD_MAX (64 * 1024) /* the longest answer head taken */
#define READ_CHUNK (64 * 1024)
#define MAX_FIELDS 128

typedef struct hc_conn hc_conn_t;

struct hc_pool {
    struct event_base *base;
    hc_pool_opts_t o;
    char *host;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    hc_conn_t *idle; /* most recently used first */
    size_t n_idle;
    /* libevent common timeouts of timeout_ms and idle_timeout_ms (NULL:
     * none left): re-armed on every exchange, kept in a queue per length
     * rather than in the timer heap. */
    const struct timeval *ctv_exchange, *ctv_idle;
};

struct hc_conn {
    hc_pool_t *pool;
    hc_conn_t *next, *prev;  /* in the idle list */
    evutil_socket_t fd;
    struct bufferevent *bev; /* TLS only */
    struct event rev, wev, tmo;
    int events_set;
    char *ibuf;
    size_t ipos, ilen, icap;
    int connected, dead, busy, in_idle;
    int exchanges;           /* served so far: > 0 means reused */
    hc_exchange_t *x;        /* the exchange it serves, or NULL */
};

enum x_state { X_SEND, X_HEAD, X_BODY_LEN, X_BODY_CHUNKED, X_BODY_CLOSE };

struct hc_exchange {
    hc_pool_t *pool;
    hc_conn_t *conn;
    struct evbuffer *req;
    size_t sent;
    int is_head, idempotent;
    hc_callbacks_t cb;
    void *arg;
    enum x_state state;
    int64_t left;
    hp_chunked_t ch;
    int got_bytes, got_head, write_failed, retried, reused, paused, keep_alive;
    size_t head_rest;      /* bytes read past the head when on_head ran */
    int starting;          /* inside hc_request: a failure is not called back */
    enum hc_error failed;  /* the failure seen while starting */
};

static void conn_close(hc_conn_t *c);
static void process(hc_conn_t *c);
static void write_some(hc_conn_t *c);
static int start_on(hc_exchange_t *x, hc_conn_t *c);
static hc_conn_t *conn_new(hc_pool_t *p);

int hc_idempotent(const char *m)
{
    static const char *const idem[] = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"};
    for (size_t i = 0; i < sizeof idem / sizeof *idem; i++)
        if (strcmp(m, idem[i]) == 0)
            return 1;
    return 0;
}

static struct timeval tv_of(int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    return tv;
}

/* ---- connections --------------------------------------------------------- */

static void idle_unlink(hc_conn_t *c)
{
    if (!c->in_idle)
        return;
    hc_pool_t *p = c->pool;
    if (c->prev)
        c->prev->next = c->next;
    else
        p->idle = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
    c->in_idle = 0;
    p->n_idle--;
}

static void conn_free(hc_conn_t *c)
{
    free(c->ibuf);
    free(c);
}

static void maybe_free(hc_conn_t *c)
{
    if (c->dead && !c->busy)
        conn_free(c);
}

/* Close the socket; freed once no callback of it is on the stack. */
static void conn_close(hc_conn_t *c)
{
    if (c->dead)
        return;
    c->dead = 1;
    idle_unlink(c);
    if (c->events_set) {
        event_del(&c->rev);
        event_del(&c->wev);
        event_del(&c->tmo);
    } else if (c->events_set == 0 && c->bev) {
        event_del(&c->tmo);
    }
    if (c->bev) {
        bufferevent_free(c->bev); /* closes the socket and frees the SSL */
        c->bev = NULL;
    } else if (c->fd >= 0) {
        evutil_closesocket(c->fd);
    }
    c->fd = -1;
    c->x = NULL;
    maybe_free(c);
}

static void reading(hc_conn_t *c, int on)
{
    if (c->dead)
        return;
    if (c->bev) {
        if (on)
            bufferevent_enable(c->bev, EV_READ);
        else
            bufferevent_disable(c->bev, EV_READ);
    } else if (on) {
        event_add(&c->rev, NULL);
    } else {
        event_del(&c->rev);
    }
}

static void arm_timeout(hc_conn_t *c, int64_t ms)
{
    hc_pool_t *p = c->pool;
    const struct timeval *ctv = ms == p->o.timeout_ms      ? p->ctv_exchange
                                : ms == p->o.idle_timeout_ms ? p->ctv_idle
                                                             : NULL;
    struct timeval tv = tv_of(ms);
    event_add(&c->tmo, ctv ? ctv : &tv);
}

/* ---- ending exchanges ----------------------------------------------------- */

static void x_free(hc_exchange_t *x)
{
    if (x->req)
        evbuffer_free(x->req);
    free(x);
}

/* Back to the pool's idle list, or closed. */
static void conn_release(hc_conn_t *c, int reusable)
{
    hc_pool_t *p = c->pool;
    c->x = NULL;
    if (!reusable || c->dead || c->ipos != c->ilen || p->n_idle >= p->o.max_idle) {
        conn_close(c);
        return;
    }
    c->ipos = c->ilen = 0;
    c->next = p->idle;
    c->prev = NULL;
    if (p->idle)
        p->idle->prev = c;
    p->idle = c;
    c->in_idle = 1;
    p->n_idle++;
    reading(c, 1); /* a close (or stray bytes) is noticed while idle */
    arm_timeout(c, p->o.idle_timeout_ms);
}

static void finish(hc_exchange_t *x)
{
    hc_conn_t *c = x->conn;
    x->conn = NULL;
    if (c) {
        event_del(&c->tmo);
        conn_release(c, x->keep_alive && x->state != X_BODY_CLOSE);
    }
    hc_callbacks_t cb = x->cb;
    void *arg = x->arg;
    x_free(x);
    cb.on_end(arg);
}

static void fail(hc_exchange_t *x, enum hc_error err)
{
    hc_conn_t *c = x->conn;
    x->conn = NULL;
    if (c)
        conn_close(c);
    if (x->starting) {
        x->failed = err; /* hc_request answers NULL */
        return;
    }
    hc_callbacks_t cb = x->cb;
    void *arg = x->arg;
    int got_head = x->got_head;
    x_free(x);
    cb.on_error(arg, err, got_head);
}

void hc_cancel(hc_exchange_t *x)
{
    if (x->conn)
        conn_close(x->conn);
    x->conn = NULL;
    x_free(x);
}

/* The connection ended (EOF, reset, failed write) while serving x. */
static void conn_lost(hc_conn_t *c)
{
    hc_exchange_t *x = c->x;
    if (!x) {
        conn_close(c);
        return;
    }
    if (x->state == X_BODY_CLOSE) {
        finish(x);
        return;
    }
    if (!x->got_bytes && x->reused && !x->retried && (x->write_failed || x->idempotent)) {
        /* The backend had closed this pooled connection: once more, fresh. */
        x->conn = NULL;
        conn_close(c);
        x->retried = 1;
        x->reused = 0;
        x->sent = 0;
        x->write_failed = 0;
        x->state = X_SEND;
        hc_conn_t *n = conn_new(x->pool);
        if (!n || start_on(x, n) != 0)
            fail(x, HC_E_CONNECT);
        return;
    }
    fail(x, x->state == X_SEND && !x->reused ? HC_E_CONNECT : HC_E_CLOSED);
}

/* ---- input ---------------------------------------------------------------- */

static int room(hc_conn_t *c, size_t want)
{
    if (c->ipos == c->ilen)
        c->ipos = c->ilen = 0;
    if (c->icap - c->ilen >= want)
        return 0;
    if (c->ipos) {
        memmove(c->ibuf, c->ibuf + c->ipos, c->ilen - c->ipos);
        c->ilen -= c->ipos;
        c->ipos = 0;
        if (c->icap - c->ilen >= want)
            return 0;
    }
    size_t cap = c->icap ? c->icap : READ_CHUNK;
    while (cap - c->ilen < want)
        cap *= 2;
    char *b = realloc(c->ibuf, cap);
    if (!b)
        return -1;
    c->ibuf = b;
    c->icap = cap;
    return 0;
}

/* Parse the answer's head. 1: go on, 0: need more, -1: x ended. */
static int step_head(hc_conn_t *c, hc_exchange_t *x)
{
    hp_field_t fields[MAX_FIELDS];
    hp_response_t res;
    memset(&res, 0, sizeof res);
    res.fields = fields;
    res.n_fields = MAX_FIELDS;
    size_t avail = c->ilen - c->ipos;
    int rc = hp_parse_response(c->ibuf + c->ipos, avail, &res);
    if (rc == HP_NEED) {
        if (avail > HEAD_MAX) {
            fail(x, HC_E_PROTOCOL);
            return -1;
        }
        return 0;
    }
    if (rc < 0) {
        fail(x, HC_E_PROTOCOL);
        return -1;
    }
    if (res.status < 200) {
        if (res.status == 101) {
            fail(x, HC_E_PROTOCOL); /* no upgrades through the gateway */
            return -1;
        }
        c->ipos += (size_t)rc; /* 100 Continue, 103 Early Hints: not relayed */
        return 1;
    }
    x->got_head = 1;
    x->keep_alive = res.minor_version == 1 ? !res.framing.conn_close
                                           : res.framing.conn_keep_alive && !res.framing.conn_close;
    switch (hp_response_body(x->is_head, &res)) {
    case HP_BODY_NONE:
        x->state = X_BODY_LEN;
        x->left = 0;
        break;
    case HP_BODY_LENGTH:
        x->state = X_BODY_LEN;
        x->left = res.framing.content_length;
        break;
    case HP_BODY_CHUNKED:
        x->state = X_BODY_CHUNKED;
        hp_chunked_init(&x->ch);
        break;
    case HP_BODY_CLOSE:
        x->state = X_BODY_CLOSE;
        x->keep_alive = 0;
        break;
    }
    /* The head is all here: from now on only gaps in the body are timed. */
    arm_timeout(c, x->pool->o.timeout_ms);
    x->head_rest = avail - (size_t)rc;
    int go = x->cb.on_head(x->arg, &res);
    if (c->x != x)
        return -1; /* cancelled from the callback */
    if (go != 0) {
        hc_cancel(x);
        return -1;
    }
    c->ipos += (size_t)rc;
    if (x->state == X_BODY_LEN && x->left == 0) {
        finish(x);
        return -1;
    }
    return 1;
}

/* Body bytes. 1: go on, 0: need more, -1: x ended. */
static int step_body(hc_conn_t *c, hc_exchange_t *x)
{
    size_t avail = c->ilen - c->ipos;
    if (x->state == X_BODY_CHUNKED) {
        hp_chunk_ev_t ev;
        int rc = hp_chunked_next(&x->ch, c->ibuf + c->ipos, avail, &ev);
        if (rc == HP_NEED)
            return 0;
        if (rc < 0) {
            fail(x, HC_E_PROTOCOL);
            return -1;
        }
        c->ipos += (size_t)rc;
        if (ev.type == HP_CH_DATA) {
            x->cb.on_data(x->arg, ev.data, ev.len);
        } else if (ev.type == HP_CH_TRAILER) {
            if (x->cb.on_trailer)
                x->cb.on_trailer(x->arg, &ev.field);
        } else if (ev.type == HP_CH_END) {
            finish(x);
            return -1;
        }
        return c->x == x ? 1 : -1;
    }
    if (avail == 0)
        return 0;
    size_t n = avail;
    if (x->state == X_BODY_LEN && (int64_t)n > x->left)
        n = (size_t)x->left;
    const char *data = c->ibuf + c->ipos;
    c->ipos += n;
    if (x->state == X_BODY_LEN)
        x->left -= (int64_t)n;
    x->cb.on_data(x->arg, data, n);
    if (c->x != x)
        return -1;
    if (x->state == X_BODY_LEN && x->left == 0) {
        finish(x);
        return -1;
    }
    return 1;
}

static void process(hc_conn_t *c)
{
    for (;;) {
        hc_exchange_t *x = c->x;
        if (!x || c->dead) {
            if (!x && !c->dead && c->ilen > c->ipos)
                conn_close(c); /* bytes nobody asked for */
            return;
        }
        if (x->paused || x->state == X_SEND)
            return;
        int rc = x->state == X_HEAD ? step_head(c, x) : step_body(c, x);
        if (rc <= 0)
            return;
    }
}

/* Bytes arrived (in ibuf) or the connection ended (eof). */
static void input(hc_conn_t *c, int eof)
{
    hc_exchange_t *x = c->x;
    if (x && c->ilen > c->ipos) {
        x->got_bytes = 1;
        if (x->state != X_HEAD && x->state != X_SEND)
            arm_timeout(c, c->pool->o.timeout_ms);
    }
    if (!x && !eof && c->ilen == c->ipos)
        return;
    process(c);
    if (eof && !c->dead) {
        if (c->x && c->x->paused && c->ilen > c->ipos)
            return; /* what is buffered goes first; the end is seen on resume */
        conn_lost(c);
    }
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    hc_conn_t *c = arg;
    c->busy++;
    int eof = 0;
    if (room(c, READ_CHUNK) != 0) {
        if (c->x)
            fail(c->x, HC_E_MEMORY);
        else
            conn_close(c);
    } else {
        ssize_t n;
        do
            n = recv(fd, c->ibuf + c->ilen, c->icap - c->ilen, 0);
        while (n < 0 && errno == EINTR);
        if (n > 0)
            c->ilen += (size_t)n;
        else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
            eof = 1;
        if (n > 0 || eof)
            input(c, eof);
    }
    c->busy--;
    maybe_free(c);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    hc_conn_t *c = arg;
    c->busy++;
    if (c->x)
        fail(c->x, HC_E_TIMEOUT);
    else
        conn_close(c); /* idle too long */
    c->busy--;
    maybe_free(c);
}

/* ---- output --------------------------------------------------------------- */

static void sent_all(hc_conn_t *c, hc_exchange_t *x)
{
    x->state = X_HEAD;
    arm_timeout(c, x->pool->o.timeout_ms);
    if (!x->paused)
        reading(c, 1);
}

static void write_some(hc_conn_t *c)
{
    hc_exchange_t *x = c->x;
    if (!x || x->state != X_SEND || !c->connected || c->dead)
        return;
    size_t total = evbuffer_get_length(x->req);
    if (c->bev) {
        /* The bufferevent copies; the request is kept for a retry. */
        struct evbuffer_iovec v[16];
        int n = evbuffer_peek(x->req, -1, NULL, v, 16);
        if (n > 16) {
            unsigned char *flat = evbuffer_pullup(x->req, -1);
            bufferevent_write(c->bev, flat, total);
        } else {
            for (int i = 0; i < n; i++)
                bufferevent_write(c->bev, v[i].iov_base, v[i].iov_len);
        }
        x->sent = total;
        sent_all(c, x);
        return;
    }
    while (x->sent < total) {
        struct evbuffer_ptr at;
        struct evbuffer_iovec v[16];
        struct iovec iov[16];
        evbuffer_ptr_set(x->req, &at, x->sent, EVBUFFER_PTR_SET);
        int n = evbuffer_peek(x->req, -1, &at, v, 16);
        if (n > 16)
            n = 16;
        for (int i = 0; i < n; i++) {
            iov[i].iov_base = v[i].iov_base;
            iov[i].iov_len = v[i].iov_len;
        }
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t w;
        do
            w = sendmsg(c->fd, &m, MSG_NOSIGNAL);
        while (w < 0 && errno == EINTR);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                reading(c, 0); /* back on in sent_all */
                event_add(&c->wev, NULL);
                return;
            }
            x->write_failed = 1;
            conn_lost(c);
            return;
        }
        x->sent += (size_t)w;
    }
    sent_all(c, x);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    hc_conn_t *c = arg;
    c->busy++;
    if (!c->connected) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (err) {
            if (c->x)
                fail(c->x, HC_E_CONNECT);
            else
                conn_close(c);
            goto out;
        }
        c->connected = 1;
    }
    write_some(c);
out:
    c->busy--;
    maybe_free(c);
}

/* ---- TLS ------------------------------------------------------------------- */

static void tls_read(struct bufferevent *bev, void *arg)
{
    hc_conn_t *c = arg;
    c->busy++;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t n = evbuffer_get_length(in);
    if (room(c, n) != 0) {
        if (c->x)
            fail(c->x, HC_E_MEMORY);
        else
            conn_close(c);
    } else {
        evbuffer_remove(in, c->ibuf + c->ilen, n);
        c->ilen += n;
        input(c, 0);
    }
    c->busy--;
    maybe_free(c);
}

static void tls_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    hc_conn_t *c = arg;
    c->busy++;
    if (what & BEV_EVENT_CONNECTED) {
        c->connected = 1;
        write_some(c);
    } else if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        if (!c->connected && c->x)
            fail(c->x, HC_E_CONNECT);
        else
            input(c, 1);
    }
    c->busy--;
    maybe_free(c);
}

/* ---- starting -------------------------------------------------------------- */

static hc_conn_t *conn_new(hc_pool_t *p)
{
    hc_conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->pool = p;
    c->fd = -1;
    evtimer_assign(&c->tmo, p->base, on_timeout, c);
    if (p->o.new_ssl) {
        SSL *ssl = p->o.new_ssl(p->o.ssl_arg);
        c->bev = ssl ? bufferevent_openssl_socket_new(p->base, -1, ssl,
                                                      BUFFEREVENT_SSL_CONNECTING,
                                                      BEV_OPT_CLOSE_ON_FREE)
                     : NULL;
        if (!c->bev) {
            if (ssl)
                SSL_free(ssl);
            free(c);
            return NULL;
        }
        /* Many servers end a body by closing without close_notify. */
        bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
        bufferevent_setcb(c->bev, tls_read, NULL, tls_event, c);
        if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&p->addr, (int)p->addrlen) !=
            0) {
            bufferevent_free(c->bev);
            free(c);
            return NULL;
        }
        evutil_socket_t fd = bufferevent_getfd(c->bev);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        return c;
    }
    c->fd = socket(p->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        free(c);
        return NULL;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    event_assign(&c->rev, p->base, c->fd, EV_READ | EV_PERSIST, on_read, c);
    event_assign(&c->wev, p->base, c->fd, EV_WRITE, on_write, c);
    c->events_set = 1;
    int rc;
    do
        rc = connect(c->fd, (struct sockaddr *)&p->addr, p->addrlen);
    while (rc < 0 && errno == EINTR);
    if (rc == 0) {
        c->connected = 1;
    } else if (errno != EINPROGRESS) {
        evutil_closesocket(c->fd);
        free(c);
        return NULL;
    }
    return c;
}

/* Lend c to x and send. 0, or -1 (c closed, x untouched). */
static int start_on(hc_exchange_t *x, hc_conn_t *c)
{
    x->conn = c;
    x->reused = c->exchanges > 0;
    c->exchanges++;
    c->x = x;
    x->state = X_SEND;
    arm_timeout(c, x->pool->o.timeout_ms);
    /* A plain connection writes once the event loop has run the rest of
     * what is ready now: the requests of one loop turn reach the backend
     * back to back, so a backend on the same CPU is woken (and switched
     * to) about once per turn rather than once per request. conn_close's
     * event_del takes the write back out if the connection goes first. */
    if (c->connected && !c->bev)
        event_active(&c->wev, EV_WRITE, 1);
    else if (c->connected)
        write_some(c);
    else if (!c->bev)
        event_add(&c->wev, NULL);
    return 0;
}

static hc_conn_t *conn_take(hc_pool_t *p)
{
    hc_conn_t *c = p->idle;
    if (!c)
        return NULL;
    idle_unlink(c);
    event_del(&c->tmo);
    /* Its read event stays on: the request is written at once (and
     * reading stops only if the socket does not take it all), so no
     * epoll_ctl is spent turning it off and on again. */
    return c;
}

hc_exchange_t *hc_request(hc_pool_t *p, struct evbuffer *req, int is_head, int idempotent,
                          const hc_callbacks_t *cb, void *arg)
{
    hc_exchange_t *x = calloc(1, sizeof *x);
    if (!x) {
        evbuffer_free(req);
        return NULL;
    }
    x->pool = p;
    x->req = req;
    x->is_head = is_head;
    x->idempotent = idempotent;
    x->cb = *cb;
    x->arg = arg;
    hc_conn_t *c = conn_take(p);
    if (!c)
        c = conn_new(p);
    if (!c) {
        x_free(x);
        return NULL;
    }
    x->starting = 1;
    c->busy++;
    start_on(x, c);
    c->busy--;
    maybe_free(c);
    x->starting = 0;
    if (x->failed) {
        x_free(x);
        return NULL;
    }
    return x;
}

void hc_pause(hc_exchange_t *x, int paused)
{
    if (x->paused == paused)
        return;
    x->paused = paused;
    hc_conn_t *c = x->conn;
    if (!c || x->state == X_SEND)
        return;
    if (paused) {
        reading(c, 0);
        event_del(&c->tmo); /* our own pause is not the backend's gap */
        return;
    }
    reading(c, 1);
    arm_timeout(c, x->pool->o.timeout_ms);
    /* What was read before the pause is handed on now. */
    c->busy++;
    process(c);
    c->busy--;
    maybe_free(c);
}

size_t hc_head_rest(const hc_exchange_t *x)
{
    return x->head_rest;
}

int hc_reused(const hc_exchange_t *x)
{
    return x->reused;
}

/* ---- pools ------------------------------------------------------------------ */

hc_pool_t *hc_pool_new(struct event_base *base, const hc_pool_opts_t *o, char *err,
                       size_t errlen)
{
    hc_pool_t *p = calloc(1, sizeof *p);
    if (!p || !(p->host = strdup(o->host))) {
        free(p);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->base = base;
    p->o = *o;
    p->o.host = p->host;
    if (!p->o.max_idle)
        p->o.max_idle = 256;
    if (!p->o.idle_timeout_ms)
        p->o.idle_timeout_ms = 30000;
    struct timeval tv = tv_of(p->o.timeout_ms);
    p->ctv_exchange = p->o.timeout_ms > 0 ? event_base_init_common_timeout(base, &tv) : NULL;
    tv = tv_of(p->o.idle_timeout_ms);
    p->ctv_idle = event_base_init_common_timeout(base, &tv);
    char port[8];
    snprintf(port, sizeof port, "%u", o->port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(o->host, port, &hints, &ai);
    if (rc != 0 || !ai) {
        snprintf(err, errlen, "cannot resolve %s: %s", o->host, gai_strerror(rc));
        free(p->host);
        free(p);
        return NULL;
    }
    memcpy(&p->addr, ai->ai_addr, ai->ai_addrlen);
    p->addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);
    return p;
}

void hc_pool_free(hc_pool_t *p)
{
    while (p->idle)
        conn_close(p->idle);
    free(p->host);
    free(p);
}

size_t hc_pool_idle(const hc_pool_t *p)
{
    return p->n_idle;
}
