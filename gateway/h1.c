/*
 * gateway/h1.c: HTTP/1.1 server connections (see h1.h for why and for the
 * ownership rules).
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
 * The struct is freed only when dead && !open && !busy (maybe_free).
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

#include "errjson.h"
#include "h1.h"
#include "http/parse.h"
#include "http/peers.h"

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

static int64_t now_ms(const h1_conn_t *c)
{
    struct timeval tv;
    event_base_gettimeofday_cached(c->srv->base, &tv);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* ---- lifetime ---------------------------------------------------------- */

static void server_destroy(h1_server_t *s)
{
    free(s->busy_answer[0]);
    free(s->busy_answer[1]);
    free(s);
}

static void server_unlink(h1_server_t *s, h1_conn_t *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->n_conns--;
    if (s->freeing && s->n_conns == 0)
        server_destroy(s);
}

static void maybe_free(h1_conn_t *c)
{
    if (!c->dead || c->open || c->busy)
        return;
    event_del(&c->later);
    if (c->body)
        evbuffer_free(c->body);
    if (c->out)
        evbuffer_free(c->out);
    free(c->ibuf);
    free(c->head);
    free(c->obuf);
    server_unlink(c->srv, c);
    free(c);
}

/* Close the socket. The struct stays while its exchange is open; the
 * callee hears of it through the close callback, from the loop. */
static void fail(h1_conn_t *c)
{
    if (c->dead)
        return;
    c->dead = 1;
    if (c->peer_counted) {
        peers_give((const struct sockaddr *)&c->peer);
        c->peer_counted = 0;
    }
    if (c->bev) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    } else {
        event_del(&c->rev);
        event_del(&c->wev);
        evutil_closesocket(c->fd);
    }
    c->fd = -1;
    if (c->open && c->close_cb && !c->notified)
        event_active(&c->later, EV_TIMEOUT, 1);
}

static void pause_reading(h1_conn_t *c, int pause)
{
    if (c->dead || c->reading_paused == pause)
        return;
    c->reading_paused = pause;
    if (c->bev) {
        if (pause)
            bufferevent_disable(c->bev, EV_READ);
        else
            bufferevent_enable(c->bev, EV_READ);
    } else if (pause) {
        event_del(&c->rev);
    } else {
        event_add(&c->rev, c->srv->ctv);
    }
}

/* ---- output ------------------------------------------------------------ */

static size_t pending(const h1_conn_t *c)
{
    if (c->dead)
        return 0;
    if (c->bev)
        return evbuffer_get_length(bufferevent_get_output(c->bev));
    return evbuffer_get_length(c->out);
}

/*
 * Write pre[], then data (drained), then post[] — straight to the socket
 * when nothing is queued before them (one sendmsg), the rest queued.
 */
static void send_parts(h1_conn_t *c, const struct iovec *pre, int npre, struct evbuffer *data,
                       const struct iovec *post, int npost)
{
    if (c->dead) {
        if (data)
            evbuffer_drain(data, evbuffer_get_length(data));
        return;
    }
    if (c->bev) {
        struct evbuffer *o = bufferevent_get_output(c->bev);
        for (int i = 0; i < npre; i++)
            if (pre[i].iov_len)
                evbuffer_add(o, pre[i].iov_base, pre[i].iov_len);
        if (data)
            evbuffer_add_buffer(o, data);
        for (int i = 0; i < npost; i++)
            if (post[i].iov_len)
                evbuffer_add(o, post[i].iov_base, post[i].iov_len);
        return;
    }
    struct iovec iov[24];
    int n = 0;
    for (int i = 0; i < npre; i++)
        iov[n++] = pre[i];
    int ndata = 0;
    if (data && evbuffer_get_length(data)) {
        ndata = evbuffer_peek(data, -1, NULL, iov + n, 16);
        if (ndata > 16)
            ndata = -1; /* too fragmented: queue it all */
    }
    size_t written = 0;
    if (evbuffer_get_length(c->out) == 0 && ndata >= 0) {
        int total = n + ndata;
        for (int i = 0; i < npost; i++)
            iov[total++] = post[i];
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)total};
        ssize_t w;
        do
            w = sendmsg(c->fd, &m, MSG_NOSIGNAL);
        while (w < 0 && errno == EINTR);
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                if (data)
                    evbuffer_drain(data, evbuffer_get_length(data));
                fail(c);
                return;
            }
            w = 0;
        }
        written = (size_t)w;
    }
    /* Queue what the socket did not take, in order. */
    for (int i = 0; i < npre; i++) {
        size_t l = pre[i].iov_len, skip = written < l ? written : l;
        written -= skip;
        if (l > skip)
            evbuffer_add(c->out, (const char *)pre[i].iov_base + skip, l - skip);
    }
    if (data) {
        size_t l = evbuffer_get_length(data), skip = written < l ? written : l;
        written -= skip;
        evbuffer_drain(data, skip);
        evbuffer_add_buffer(c->out, data);
    }
    for (int i = 0; i < npost; i++) {
        size_t l = post[i].iov_len, skip = written < l ? written : l;
        written -= skip;
        if (l > skip)
            evbuffer_add(c->out, (const char *)post[i].iov_base + skip, l - skip);
    }
    if (evbuffer_get_length(c->out) && !c->writing) {
        c->writing = 1;
        event_add(&c->wev, c->srv->ctv);
    }
}

static void close_or_linger(h1_conn_t *c);

/* The idle keep-alive timeout runs from the moment an answer is all
 * written (the read timer restarted). */
static void arm_idle(h1_conn_t *c)
{
    if (c->dead || c->reading_paused)
        return;
    if (c->bev) {
        struct timeval tv = {c->srv->lim.timeout_ms / 1000,
                             (c->srv->lim.timeout_ms % 1000) * 1000};
        bufferevent_set_timeouts(c->bev, &tv, &tv);
    } else {
        event_add(&c->rev, c->srv->ctv);
    }
}

static void process(h1_conn_t *c);

/* Everything written: close, tell the callee, or go on reading. */
static void drained(h1_conn_t *c)
{
    if (c->state == ST_CLOSING) {
        close_or_linger(c);
        return;
    }
    if (c->out_blocked && !c->open) {
        /* The client read what it was sent: its next requests are read. */
        c->out_blocked = 0;
        pause_reading(c, 0);
        process(c);
        if (c->dead)
            return;
    }
    if (!c->open && c->state == ST_HEAD && c->ilen == c->ipos) {
        if (c->srv->draining) {
            fail(c); /* its last answer is out */
            return;
        }
        arm_idle(c);
    }
    if (c->drained_cb) {
        h1_event_cb cb = c->drained_cb;
        c->drained_cb = NULL;
        cb(c, c->drained_arg);
    }
}

static size_t put_uint(char *p, uint64_t v)
{
    char t[24];
    size_t n = 0;
    do
        t[n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    for (size_t i = 0; i < n; i++)
        p[i] = t[n - 1 - i];
    return n;
}

static size_t put_str(char *p, const char *s)
{
    size_t n = strlen(s);
    memcpy(p, s, n);
    return n;
}

/* "Date: ...\r\n", formatted once a second per thread. */
static const char *date_line(const h1_conn_t *c)
{
    static __thread time_t last;
    static __thread char line[64];
    struct timeval tv;
    event_base_gettimeofday_cached(c->srv->base, &tv);
    if (tv.tv_sec != last || !line[0]) {
        struct tm tm;
        time_t t = tv.tv_sec;
        gmtime_r(&t, &tm);
        strftime(line, sizeof line, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        last = tv.tv_sec;
    }
    return line;
}

static int answer_closes(const h1_conn_t *c)
{
    return !c->keep_alive || c->srv->draining || c->body_refused || c->closing_after ||
           c->body_deferred;
}

/* Bodies buffered by every connection of the process, and the most they
 * may take together (0: no budget). */
static _Atomic int64_t body_in_use;
static _Atomic int64_t body_budget;
static _Atomic int64_t body_peak;

void h1_set_body_budget(int64_t bytes)
{
    body_budget = bytes;
}

int64_t h1_body_buffered(void)
{
    return atomic_load(&body_in_use);
}

static int reserve_body(h1_conn_t *c, int64_t n)
{
    int64_t now = atomic_fetch_add(&body_in_use, n) + n;
    if (body_budget && now > body_budget) {
        atomic_fetch_sub(&body_in_use, n);
        return -1;
    }
    c->reserved += n;
    if (now > atomic_load(&body_peak))
        atomic_store(&body_peak, now);
    return 0;
}

static void release_body(h1_conn_t *c)
{
    if (!c->reserved)
        return;
    int64_t left = atomic_fetch_sub(&body_in_use, c->reserved) - c->reserved;
    c->reserved = 0;
    /* After a burst of large bodies, give the memory back. */
    if (left == 0 && atomic_load(&body_peak) > 16 * 1024 * 1024) {
        atomic_store(&body_peak, 0);
        malloc_trim(0);
    }
}

/* Status line and Date into a; Content-Length / chunked / Connection and
 * the empty line into b. */
static void compose(h1_conn_t *c, int status, const char *reason, int64_t clen, char *a,
                    size_t *alen, char *b, size_t *blen)
{
    size_t n = put_str(a, "HTTP/1.1 ");
    n += put_uint(a + n, (uint64_t)(status > 0 && status < 1000 ? status : 500));
    a[n++] = ' ';
    size_t rl = strlen(reason);
    if (rl > 64)
        rl = 64;
    memcpy(a + n, reason, rl);
    n += rl;
    n += put_str(a + n, "\r\n");
    n += put_str(a + n, date_line(c));
    *alen = n;
    int bodiless = status < 200 || status == 204 || status == 304;
    size_t m = 0;
    if (clen >= 0 && !bodiless) {
        m += put_str(b, "Content-Length: ");
        m += put_uint(b + m, (uint64_t)clen);
        m += put_str(b + m, "\r\n");
    } else if (clen < 0 && !bodiless && !c->no_body_out) {
        if (c->http10)
            c->closing_after = 1; /* the body ends with the connection */
        else {
            m += put_str(b + m, "Transfer-Encoding: chunked\r\n");
            c->chunked_out = 1;
        }
    }
    if (answer_closes(c)) {
        c->closing_after = 1;
        m += put_str(b + m, "Connection: close\r\n");
    } else if (c->http10) {
        m += put_str(b + m, "Connection: keep-alive\r\n");
    }
    m += put_str(b + m, "\r\n");
    *blen = m;
}

static void process(h1_conn_t *c);

static void end_exchange(h1_conn_t *c)
{
    if (!c->open)
        return;
    c->open = 0;
    c->close_cb = NULL;
    c->drained_cb = NULL;
    c->olen = 0;
    c->chunked_out = 0;
    c->n_hdr = 0;
    if (c->body)
        evbuffer_drain(c->body, evbuffer_get_length(c->body));
    release_body(c);
    c->body_cb = NULL;
    if (c->body_deferred) {
        /* Answered without its body (404, 401, 403, 413...): the body is
         * never read, the connection closes after the answer. */
        c->body_deferred = 0;
        c->body_refused = 1;
        c->closing_after = 1;
    }
    if (c->dead) {
        maybe_free(c);
        return;
    }
    if (c->closing_after || c->srv->draining) {
        c->state = ST_CLOSING;
        if (pending(c) == 0) {
            close_or_linger(c);
            maybe_free(c);
        }
        return;
    }
    c->state = ST_HEAD;
    c->head_start_ms = 0;
    c->scan = 0;
    pause_reading(c, 0);
    if (pending(c) == 0)
        arm_idle(c);
    /* A pipelined request may be waiting: taken from the loop, not from
     * inside the callee's call. */
    size_t waiting = c->ilen - c->ipos;
    if (c->bev)
        waiting += evbuffer_get_length(bufferevent_get_input(c->bev));
    if (!c->in_process && waiting)
        event_active(&c->later, EV_TIMEOUT, 1);
}

/* ---- the public answer API -------------------------------------------- */

void h1_add_header(h1_conn_t *c, const char *name, const char *value)
{
    h1_add_header_n(c, name, strlen(name), value, strlen(value));
}

void h1_add_header_n(h1_conn_t *c, const char *name, size_t nl, const char *value, size_t vl)
{
    size_t need = c->olen + nl + vl + 4;
    if (need > c->ocap) {
        size_t cap = c->ocap ? c->ocap : 1024;
        while (cap < need)
            cap *= 2;
        char *p = realloc(c->obuf, cap);
        if (!p)
            return;
        c->obuf = p;
        c->ocap = cap;
    }
    char *p = c->obuf + c->olen;
    memcpy(p, name, nl);
    p[nl] = ':';
    p[nl + 1] = ' ';
    /* A value never breaks the head: CR and LF become spaces. */
    for (size_t i = 0; i < vl; i++)
        p[nl + 2 + i] = value[i] == '\r' || value[i] == '\n' ? ' ' : value[i];
    p[nl + 2 + vl] = '\r';
    p[nl + 3 + vl] = '\n';
    c->olen = need;
}

void h1_add_header_int(h1_conn_t *c, const char *name, int64_t value)
{
    char buf[24];
    size_t n = 0;
    if (value < 0) {
        buf[n++] = '-';
        n += put_uint(buf + n, (uint64_t)0 - (uint64_t)value);
    } else {
        n += put_uint(buf, (uint64_t)value);
    }
    buf[n] = '\0';
    h1_add_header(c, name, buf);
}

void h1_headers_reset(h1_conn_t *c)
{
    c->olen = 0;
}

size_t h1_headers_mark(const h1_conn_t *c)
{
    return c->olen;
}

int h1_has_header(const h1_conn_t *c, const char *name, size_t mark)
{
    return h1_has_header_n(c, name, strlen(name), mark);
}

int h1_has_header_n(const h1_conn_t *c, const char *name, size_t nl, size_t mark)
{
    const char *p = c->obuf, *end = c->obuf + (mark < c->olen ? mark : c->olen);
    while (p && p < end) {
        if ((size_t)(end - p) > nl && p[nl] == ':' && strncasecmp(p, name, nl) == 0)
            return 1;
        const char *e = memchr(p, '\n', (size_t)(end - p));
        p = e ? e + 1 : end;
    }
    return 0;
}

void h1_reply(h1_conn_t *c, int status, const char *reason, const void *body, size_t len)
{
    if (!c->open)
        return;
    char a[128], b[128];
    size_t al, bl;
    compose(c, status, reason, (int64_t)len, a, &al, b, &bl);
    int with_body = len && !c->no_body_out && status >= 200 && status != 204 && status != 304;
    struct iovec v[4] = {{a, al}, {c->obuf, c->olen}, {b, bl}, {(void *)body, len}};
    send_parts(c, v, with_body ? 4 : 3, NULL, NULL, 0);
    end_exchange(c);
}

void h1_reply_buffer(h1_conn_t *c, int status, const char *reason, struct evbuffer *body)
{
    if (!c->open)
        return;
    char a[128], b[128];
    size_t al, bl;
    size_t len = body ? evbuffer_get_length(body) : 0;
    compose(c, status, reason, (int64_t)len, a, &al, b, &bl);
    struct iovec v[3] = {{a, al}, {c->obuf, c->olen}, {b, bl}};
    int with_body = len && !c->no_body_out && status >= 200 && status != 204 && status != 304;
    if (body && !with_body)
        evbuffer_drain(body, len);
    send_parts(c, v, 3, with_body ? body : NULL, NULL, 0);
    end_exchange(c);
}

void h1_reply_start(h1_conn_t *c, int status, const char *reason, int64_t content_length)
{
    if (!c->open)
        return;
    char a[128], b[128];
    size_t al, bl;
    compose(c, status, reason, content_length, a, &al, b, &bl);
    struct iovec v[3] = {{a, al}, {c->obuf, c->olen}, {b, bl}};
    if (status < 200 || status == 204 || status == 304)
        c->no_body_out = 1;
    send_parts(c, v, 3, NULL, NULL, 0);
}

void h1_reply_chunk(h1_conn_t *c, struct evbuffer *data)
{
    size_t n = evbuffer_get_length(data);
    if (!c->open || c->dead || c->no_body_out || n == 0) {
        evbuffer_drain(data, n);
        return;
    }
    if (!c->chunked_out) {
        send_parts(c, NULL, 0, data, NULL, 0);
        return;
    }
    char pre[24];
    int pl = snprintf(pre, sizeof pre, "%zx\r\n", n);
    struct iovec a = {pre, (size_t)pl}, b = {"\r\n", 2};
    send_parts(c, &a, 1, data, &b, 1);
}

void h1_reply_bytes(h1_conn_t *c, const void *data, size_t n)
{
    if (!c->open || c->dead || c->no_body_out || n == 0)
        return;
    struct iovec d = {(void *)data, n};
    if (!c->chunked_out) {
        send_parts(c, &d, 1, NULL, NULL, 0);
        return;
    }
    char pre[24];
    int pl = snprintf(pre, sizeof pre, "%zx\r\n", n);
    struct iovec v[3] = {{pre, (size_t)pl}, d, {"\r\n", 2}};
    send_parts(c, v, 3, NULL, NULL, 0);
}

size_t h1_pending(const h1_conn_t *c)
{
    return pending(c);
}

void h1_set_drained_cb(h1_conn_t *c, h1_event_cb cb, void *arg)
{
    c->drained_cb = cb;
    c->drained_arg = arg;
}

void h1_set_close_cb(h1_conn_t *c, h1_event_cb cb, void *arg)
{
    c->close_cb = cb;
    c->close_arg = arg;
    if (cb && c->dead && c->open && !c->notified)
        event_active(&c->later, EV_TIMEOUT, 1);
}

void h1_reply_end(h1_conn_t *c)
{
    if (!c->open)
        return;
    if (c->chunked_out && !c->no_body_out) {
        struct iovec v = {"0\r\n\r\n", 5};
        send_parts(c, &v, 1, NULL, NULL, 0);
    }
    end_exchange(c);
}

void h1_abort(h1_conn_t *c)
{
    if (!c->open)
        return;
    c->close_cb = NULL;
    fail(c);
    end_exchange(c);
}

/* ---- the request accessors -------------------------------------------- */

enum h1_method h1_method(const h1_conn_t *c) { return (enum h1_method)c->method; }
const char *h1_path(const h1_conn_t *c) { return c->path; }
const char *h1_query(const h1_conn_t *c) { return c->query; }
int h1_is_http10(const h1_conn_t *c) { return c->http10; }
size_t h1_header_count(const h1_conn_t *c) { return c->n_hdr; }
struct evbuffer *h1_body(h1_conn_t *c) { return c->body; }
static void finish_body(h1_conn_t *c, int status);
static void process(h1_conn_t *c);
int h1_body_refused(const h1_conn_t *c) { return c->body_refused; }
int h1_body_status(const h1_conn_t *c) { return c->body_status; }
int h1_body_pending(const h1_conn_t *c) { return c->body_deferred; }

void h1_server_defer_body(h1_server_t *s, int on)
{
    s->defer_body = on;
}

void h1_read_body(h1_conn_t *c, int64_t max_bytes, h1_event_cb cb, void *arg)
{
    if (!c->open)
        return;
    if (!c->body_deferred) {
        cb(c, arg); /* no body, or read already */
        return;
    }
    c->body_cb = cb;
    c->body_arg = arg;
    c->body_max = max_bytes;
    if (c->state == ST_BODY_CL) {
        if (c->body_left > max_bytes) {
            finish_body(c, H1_BODY_TOO_LARGE);
            return;
        }
        if (reserve_body(c, c->body_left) != 0) {
            finish_body(c, H1_BODY_NO_ROOM);
            return;
        }
    }
    if (c->expect100 && c->ilen == c->ipos && !c->dead) {
        struct iovec v = {"HTTP/1.1 100 Continue\r\n\r\n", 25};
        send_parts(c, &v, 1, NULL, NULL, 0);
    }
    c->expect100 = 0;
    pause_reading(c, 0);
    c->busy++;
    process(c);
    c->busy--;
    maybe_free(c);
}

const char *h1_header(const h1_conn_t *c, const char *name)
{
    for (size_t i = 0; i < c->n_hdr; i++)
        if (strcasecmp(c->hdr[i].name, name) == 0)
            return c->hdr[i].value;
    return NULL;
}

void h1_header_at(const h1_conn_t *c, size_t i, const char **name, const char **value)
{
    *name = c->hdr[i].name;
    *value = c->hdr[i].value;
}

const char *h1_peer(h1_conn_t *c)
{
    if (!c->peer_text[0]) {
        const struct sockaddr *sa = (const struct sockaddr *)&c->peer;
        const void *a = sa->sa_family == AF_INET6
                            ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
                            : (const void *)&((const struct sockaddr_in *)sa)->sin_addr;
        if (!inet_ntop(sa->sa_family, a, c->peer_text, sizeof c->peer_text))
            strcpy(c->peer_text, "unknown");
    }
    return c->peer_text;
}

/* ---- input ------------------------------------------------------------- */

/* An answer of the HTTP layer itself (the request never reaches the
 * gateway): JSON error, then the connection is closed. */
static void refuse(h1_conn_t *c, int status, const char *reason, const char *code,
                   const char *message)
{
    json_t *j = error_json("invalid_request_error", code, message, NULL);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    c->open = 1; /* h1_reply ends it */
    c->keep_alive = 0;
    c->no_body_out = 0;
    c->olen = 0;
    h1_add_header(c, "Content-Type", "application/json");
    h1_reply(c, status, reason, text ? text : "", text ? strlen(text) : 0);
    free(text);
}

static int method_of(const char *m, size_t n)
{
    static const struct {
        const char *name;
        int m;
    } t[] = {{"GET", H1_GET},     {"POST", H1_POST}, {"PUT", H1_PUT},
             {"DELETE", H1_DELETE}, {"PATCH", H1_PATCH}, {"HEAD", H1_HEAD},
             {"OPTIONS", H1_OPTIONS}};
    for (size_t i = 0; i < sizeof t / sizeof *t; i++)
        if (strlen(t[i].name) == n && memcmp(t[i].name, m, n) == 0)
            return t[i].m;
    return 0;
}

int h1_list_has(const char *v, const char *t)
{
    return hp_list_has(v, strlen(v), t);
}

/* The answer of the HTTP layer to a head the parser refused. */
static void refuse_parse(h1_conn_t *c, int rc)
{
    switch (rc) {
    case HP_E_TOO_MANY:
        refuse(c, 431, "Request Header Fields Too Large", "HEADERS_TOO_LARGE",
               "The request has too many header fields.");
        return;
    case HP_E_TE:
        refuse(c, 501, "Not Implemented", "TRANSFER_ENCODING_NOT_SUPPORTED",
               "Only Transfer-Encoding: chunked is supported (HTTP/1.1).");
        return;
    case HP_E_VERSION:
        refuse(c, 505, "HTTP Version Not Supported", "VERSION_NOT_SUPPORTED",
               "Only HTTP/1.0 and HTTP/1.1 are supported.");
        return;
    case HP_E_LENGTH:
        refuse(c, 400, "Bad Request", "INVALID_REQUEST",
               "The Content-Length is not valid (digits only, one value, and not with "
               "Transfer-Encoding).");
        return;
    case HP_E_TARGET:
        refuse(c, 400, "Bad Request", "INVALID_REQUEST", "The request target is not valid.");
        return;
    case HP_E_HOST:
        refuse(c, 400, "Bad Request", "INVALID_REQUEST",
               "An HTTP/1.1 request needs exactly one Host header.");
        return;
    case HP_E_FIELD:
        refuse(c, 400, "Bad Request", "INVALID_REQUEST",
               "A header line is not valid (name not a token, folded, or a control byte).");
        return;
    default:
        refuse(c, 400, "Bad Request", "INVALID_REQUEST", "The request is not valid HTTP/1.1.");
    }
}

/* Parse the head in c->head (len bytes, ends with the empty line) with
 * gateway/http/parse.c, then make its strings NUL-terminated in place (each
 * ends on a byte of the framing: a space, CR, LF or colon). 0, or -1 when
 * the connection was refused. */
static int parse_head(h1_conn_t *c, size_t len)
{
    char *h = c->head;
    h[len] = '\0';
    hp_field_t f[H1_MAX_HEADERS];
    hp_request_t rq;
    memset(&rq, 0, sizeof rq);
    rq.fields = f;
    rq.n_fields = H1_MAX_HEADERS;
    int rc = hp_parse_request(h, len, &rq);
    if (rc < 0) {
        refuse_parse(c, rc);
        return -1;
    }
    c->method = method_of(rq.method, rq.method_len);
    if (!c->method) {
        refuse(c, 501, "Not Implemented", "METHOD_NOT_SUPPORTED",
               "The method is not supported (GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS).");
        return -1;
    }
    const hp_framing_t *fr = &rq.framing;
    c->http10 = rq.minor_version == 0;
    c->no_body_out = c->method == H1_HEAD;
    if (fr->chunked && c->http10) {
        refuse(c, 501, "Not Implemented", "TRANSFER_ENCODING_NOT_SUPPORTED",
               "Only Transfer-Encoding: chunked is supported (HTTP/1.1).");
        return -1;
    }
    char *target = (char *)rq.target;
    target[rq.target_len] = '\0';
    if (strncasecmp(target, "http://", 7) == 0 || strncasecmp(target, "https://", 8) == 0) {
        char *p = strstr(target, "://") + 3, *slash = strchr(p, '/'), *q = strchr(p, '?');
        if (!slash || (q && q < slash)) {
            /* "http://host" or "http://host?x": the path is "/" */
            target = q ? q - 1 : p + strlen(p) - 1;
            *target = '/';
            if (q)
                memmove(target + 1, q, strlen(q) + 1);
            else
                target[1] = '\0';
        } else {
            target = slash;
        }
    }
    char *frag = strchr(target, '#');
    if (frag)
        *frag = '\0';
    char *q = strchr(target, '?');
    if (q)
        *q++ = '\0';
    c->path = *target ? target : "/";
    c->query = q;

    c->n_hdr = rq.n_fields;
    for (size_t i = 0; i < rq.n_fields; i++) {
        char *name = (char *)f[i].name, *value = (char *)f[i].value;
        name[f[i].name_len] = '\0';
        value[f[i].value_len] = '\0';
        c->hdr[i].name = name;
        c->hdr[i].value = value;
    }
    int64_t clen = fr->content_length;
    c->keep_alive = c->http10 ? fr->conn_keep_alive && !fr->conn_close : !fr->conn_close;
    c->body_refused = 0;
    c->body_total = 0;
    if (fr->chunked) {
        c->state = ST_BODY_CHUNKED;
        hp_chunked_init(&c->chunk);
        c->chunk.max_line = CHUNK_LINE_MAX;
    } else if (clen > c->srv->lim.max_body_bytes) {
        c->body_refused = 1; /* answered (413) without reading it */
        c->state = ST_OPEN;
    } else if (clen > 0) {
        c->state = ST_BODY_CL;
        c->body_left = clen;
    } else {
        c->state = ST_OPEN;
    }
    c->body_got = 0;
    c->body_max = c->srv->lim.max_body_bytes;
    if (c->srv->defer_body && (c->state == ST_BODY_CL || c->state == ST_BODY_CHUNKED)) {
        c->body_deferred = 1; /* delivered now, read on h1_read_body */
        c->expect100 = fr->expect_continue && !c->http10;
        c->body_status = H1_BODY_OK;
        return 0;
    }
    if (fr->expect_continue && !c->http10 && (fr->chunked || clen > 0) && !c->body_refused &&
        c->ilen == c->ipos) {
        struct iovec v = {"HTTP/1.1 100 Continue\r\n\r\n", 25};
        send_parts(c, &v, 1, NULL, NULL, 0);
    }
    return 0;
}

/* The head goes to the callee; the body waits for h1_read_body. */
static void deliver_head(h1_conn_t *c)
{
    c->open = 1;
    c->notified = 0;
    c->closing_after = 0;
    c->chunked_out = 0;
    c->olen = 0;
    c->head_start_ms = 0;
    c->body_start_ms = now_ms(c);
    pause_reading(c, 1);
    c->srv->cb(c, c->srv->arg);
}

/* The deferred body is read (or refused): back to the callee. */
static void finish_body(h1_conn_t *c, int status)
{
    c->body_deferred = 0;
    c->body_status = status;
    if (status == H1_BODY_OK)
        c->state = ST_OPEN;
    else
        c->body_refused = 1;
    h1_event_cb cb = c->body_cb;
    c->body_cb = NULL;
    if (cb)
        cb(c, c->body_arg);
}

static void deliver(h1_conn_t *c)
{
    if (c->open) {
        finish_body(c, H1_BODY_OK); /* a deferred body is complete */
        return;
    }
    c->state = ST_OPEN;
    c->open = 1;
    c->notified = 0;
    c->closing_after = 0;
    c->chunked_out = 0;
    c->olen = 0;
    c->head_start_ms = 0;
    c->srv->cb(c, c->srv->arg);
}

/* Take up to n bytes of body from the input. */
static size_t take_body(h1_conn_t *c, size_t n)
{
    size_t avail = c->ilen - c->ipos;
    if (n > avail)
        n = avail;
    if (n) {
        evbuffer_add(c->body, c->ibuf + c->ipos, n);
        c->ipos += n;
        c->body_got += (int64_t)n;
    }
    return n;
}

/* Advance the chunked body (gateway/http/parse.c decodes the framing).
 * 1: progress, 0: needs input, -1: refused. Trailer fields are read and
 * dropped. */
static int step_chunked(h1_conn_t *c)
{
    hp_chunk_ev_t ev;
    int rc = hp_chunked_next(&c->chunk, c->ibuf + c->ipos, c->ilen - c->ipos, &ev);
    if (rc == HP_NEED)
        return 0;
    if (rc < 0) {
        if (c->open) {
            /* A deferred body: its exchange is the callee's to answer. */
            evbuffer_drain(c->body, evbuffer_get_length(c->body));
            finish_body(c, H1_BODY_INVALID);
            return -1;
        }
        refuse(c, 400, "Bad Request", "INVALID_REQUEST", "The chunked body is not valid.");
        return -1;
    }
    if (ev.type == HP_CH_DATA) {
        if (c->body_total + (int64_t)ev.len > c->body_max) {
            /* Answered now (413); the rest is never read. */
            c->body_refused = 1;
            evbuffer_drain(c->body, evbuffer_get_length(c->body));
            if (c->open)
                finish_body(c, H1_BODY_TOO_LARGE);
            else
                deliver(c);
            return 1;
        }
        if (c->open && reserve_body(c, (int64_t)ev.len) != 0) {
            evbuffer_drain(c->body, evbuffer_get_length(c->body));
            finish_body(c, H1_BODY_NO_ROOM);
            return 1;
        }
        evbuffer_add(c->body, ev.data, ev.len);
        c->body_total += (int64_t)ev.len;
        c->body_got += (int64_t)ev.len;
    }
    c->ipos += (size_t)rc;
    if (ev.type == HP_CH_END)
        deliver(c);
    return 1;
}

/* A deferred body that does not keep up server.min_body_rate once
 * client_timeout_ms has passed since its head. */
static int too_slow(h1_conn_t *c)
{
    int64_t rate = c->srv->lim.min_body_rate;
    if (rate <= 0)
        return 0;
    int64_t elapsed = now_ms(c) - c->body_start_ms;
    return elapsed > c->srv->lim.timeout_ms && c->body_got * 1000 / elapsed < rate;
}

/* One step of reading requests. 1: progress, 0: needs input (or stops). */
static int step(h1_conn_t *c)
{
    if (c->state == ST_HEAD) {
        /* The head's deadline runs from its first byte, empty lines
         * included. */
        if (!c->head_start_ms && c->ilen > c->ipos)
            c->head_start_ms = now_ms(c);
        int late = c->head_start_ms &&
                   now_ms(c) - c->head_start_ms > c->srv->lim.timeout_ms;
        /* Empty lines before a request are allowed (RFC 9112 §2.2). */
        while (c->ipos < c->ilen && (c->ibuf[c->ipos] == '\r' || c->ibuf[c->ipos] == '\n'))
            c->ipos++;
        size_t avail = c->ilen - c->ipos;
        if (avail == 0) {
            c->ipos = c->ilen = 0;
            c->scan = 0;
            if (late)
                fail(c);
            return 0;
        }
        if (late) {
            refuse(c, 408, "Request Timeout", "REQUEST_TIMEOUT",
                   "The request head did not arrive within client_timeout_ms.");
            return 0;
        }
        char *s = c->ibuf + c->ipos;
        size_t end = 0;
        for (size_t i = c->scan; i < avail;) {
            char *nl = memchr(s + i, '\n', avail - i);
            if (!nl)
                break;
            size_t k = (size_t)(nl - s);
            if (k + 1 < avail && s[k + 1] == '\n') {
                end = k + 2;
                break;
            }
            if (k + 2 < avail && s[k + 1] == '\r' && s[k + 2] == '\n') {
                end = k + 3;
                break;
            }
            i = k + 1;
        }
        size_t maxh = c->srv->lim.max_header_bytes;
        if (!end || end > maxh) {
            if (end > maxh || avail > maxh) {
                refuse(c, 431, "Request Header Fields Too Large", "HEADERS_TOO_LARGE",
                       "The request head is larger than max_header_bytes.");
                return 0;
            }
            c->scan = avail > 2 ? avail - 2 : 0;
            return 0;
        }
        if (end + 1 > c->head_cap) {
            size_t cap = c->head_cap ? c->head_cap : 1024;
            while (cap < end + 1)
                cap *= 2;
            char *p = realloc(c->head, cap);
            if (!p) {
                fail(c);
                return 0;
            }
            c->head = p;
            c->head_cap = cap;
        }
        memcpy(c->head, s, end);
        c->ipos += end;
        c->scan = 0;
        if (parse_head(c, end) != 0)
            return 0;
        if (c->state == ST_OPEN)
            deliver(c);
        else if (c->body_deferred)
            deliver_head(c); /* the loop goes on if the callee asks for the body */
        return 1;
    }
    if (c->state == ST_BODY_CL) {
        c->body_left -= (int64_t)take_body(c, (size_t)c->body_left);
        if (c->body_left > 0)
            return 0;
        deliver(c);
        return 1;
    }
    if (c->state == ST_BODY_CHUNKED)
        return step_chunked(c) > 0;
    return 0;
}

static void process(h1_conn_t *c)
{
    if (c->in_process)
        return;
    c->in_process = 1;
    while (!c->dead && (!c->open || c->body_cb) &&
           ((c->state == ST_HEAD && !c->open) || c->state == ST_BODY_CL ||
            c->state == ST_BODY_CHUNKED)) {
        if (c->open && too_slow(c)) {
            finish_body(c, H1_BODY_TOO_SLOW);
            break;
        }
        size_t moved = 0;
        if (c->bev) {
            /* TLS: move decrypted input into ibuf. */
            struct evbuffer *in = bufferevent_get_input(c->bev);
            size_t n = evbuffer_get_length(in);
            if (n) {
                if (c->ipos && c->ipos == c->ilen)
                    c->ipos = c->ilen = 0;
                if (c->icap - c->ilen < n && c->ipos) {
                    memmove(c->ibuf, c->ibuf + c->ipos, c->ilen - c->ipos);
                    c->ilen -= c->ipos;
                    c->ipos = 0;
                }
                size_t room = c->icap - c->ilen;
                if (room == 0 && c->icap < c->srv->lim.max_header_bytes + READ_CHUNK) {
                    char *p = realloc(c->ibuf, c->icap * 2);
                    if (p) {
                        c->ibuf = p;
                        c->icap *= 2;
                        room = c->icap - c->ilen;
                    }
                }
                int got = evbuffer_remove(in, c->ibuf + c->ilen, n < room ? n : room);
                moved = got > 0 ? (size_t)got : 0;
                c->ilen += moved;
            }
        }
        if (c->state == ST_HEAD && pending(c) > OUT_HIGH) {
            /* A client that sends requests without reading the answers is
             * not read either until it does (no answer piles up). */
            c->out_blocked = 1;
            pause_reading(c, 1);
            break;
        }
        if (step(c))
            continue;
        /* More decrypted input than fitted: take the rest before waiting. */
        if (!(moved && c->bev && evbuffer_get_length(bufferevent_get_input(c->bev))))
            break;
    }
    c->in_process = 0;
}

/* A read timeout: an idle keep-alive connection is closed; a request that
 * stopped coming in gets 408. With an exchange open the backend's own
 * timeout governs. */
static void on_idle_timeout(h1_conn_t *c)
{
    if (c->state == ST_LINGER) {
        fail(c);
        return;
    }
    if (c->open && c->body_cb) {
        finish_body(c, H1_BODY_TOO_SLOW); /* a gap in the body */
        return;
    }
    /* Still writing (the write timeout covers a client that stopped
     * reading), or an exchange open (the backend's timeout governs). */
    if (c->open || c->state == ST_CLOSING || pending(c) > 0) {
        if (c->bev)
            bufferevent_enable(c->bev, EV_READ);
        return;
    }
    if (c->state == ST_HEAD && c->ilen == c->ipos) {
        fail(c);
        return;
    }
    refuse(c, 408, "Request Timeout", "REQUEST_TIMEOUT",
           "The request did not arrive within client_timeout_ms.");
}

static void close_or_linger(h1_conn_t *c)
{
    if (c->dead)
        return;
    int unread = c->ilen > c->ipos || c->body_refused;
    if (c->bev || !unread) {
        fail(c);
        return;
    }
    /* Let the client read the answer: shut our side, drop its input for a
     * moment, then close. */
    c->state = ST_LINGER;
    c->linger_until_ms = now_ms(c) + LINGER_MS;
    c->ipos = c->ilen = 0;
    shutdown(c->fd, SHUT_WR);
    struct timeval tv = {LINGER_MS / 1000, (LINGER_MS % 1000) * 1000};
    event_del(&c->rev);
    c->reading_paused = 0;
    event_add(&c->rev, &tv);
}

/* Make room in ibuf for a read; 0 when none is to be had now. */
static size_t read_room(h1_conn_t *c)
{
    if (c->ipos == c->ilen)
        c->ipos = c->ilen = 0;
    if (c->icap - c->ilen < READ_CHUNK / 4 && c->ipos) {
        memmove(c->ibuf, c->ibuf + c->ipos, c->ilen - c->ipos);
        c->ilen -= c->ipos;
        c->ipos = 0;
    }
    if (c->ilen == c->icap) {
        size_t want = c->icap * 2;
        size_t cap = c->srv->lim.max_header_bytes + READ_CHUNK;
        if (cap < HOLD_INPUT)
            cap = HOLD_INPUT;
        if (c->icap >= cap)
            return 0;
        char *p = realloc(c->ibuf, want);
        if (!p)
            return 0;
        c->ibuf = p;
        c->icap = want;
    }
    return c->icap - c->ilen;
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    h1_conn_t *c = arg;
    c->busy++;
    if (what & EV_TIMEOUT) {
        on_idle_timeout(c);
        goto out;
    }
    if (c->state == ST_LINGER || c->state == ST_CLOSING) {
        char sink[4096];
        ssize_t n = read(fd, sink, sizeof sink);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) ||
            (c->state == ST_LINGER && now_ms(c) >= c->linger_until_ms))
            fail(c);
        goto out;
    }
    size_t room = read_room(c);
    if (room == 0) {
        if (c->open) {
            pause_reading(c, 1);
        } else if (c->state == ST_HEAD) {
            refuse(c, 431, "Request Header Fields Too Large", "HEADERS_TOO_LARGE",
                   "The request head is larger than max_header_bytes.");
        } else {
            fail(c);
        }
        goto out;
    }
    ssize_t n = read(fd, c->ibuf + c->ilen, room);
    if (n > 0) {
        c->ilen += (size_t)n;
        if (!c->open || c->body_cb)
            process(c);
        else if (c->ilen - c->ipos >= HOLD_INPUT)
            pause_reading(c, 1);
    } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        fail(c); /* the client is gone */
    }
out:
    c->busy--;
    maybe_free(c);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    h1_conn_t *c = arg;
    c->busy++;
    if (what & EV_TIMEOUT) {
        fail(c); /* the client stopped reading */
        goto out;
    }
    int n = evbuffer_write(c->out, fd);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        fail(c);
        goto out;
    }
    if (evbuffer_get_length(c->out) == 0) {
        event_del(&c->wev);
        c->writing = 0;
        drained(c);
    }
out:
    c->busy--;
    maybe_free(c);
}

static void on_later(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    h1_conn_t *c = arg;
    c->busy++;
    if (c->dead && c->open && c->close_cb && !c->notified) {
        c->notified = 1;
        h1_event_cb cb = c->close_cb;
        c->close_cb = NULL;
        cb(c, c->close_arg);
    }
    if (!c->dead && !c->open)
        process(c);
    c->busy--;
    maybe_free(c);
}

/* TLS connections: bufferevent_openssl callbacks. */
static void tls_read(struct bufferevent *bev, void *arg)
{
    h1_conn_t *c = arg;
    c->busy++;
    if (c->state == ST_CLOSING || c->state == ST_LINGER) {
        evbuffer_drain(bufferevent_get_input(bev), evbuffer_get_length(bufferevent_get_input(bev)));
    } else if (!c->open || c->body_cb) {
        process(c);
    } else if (evbuffer_get_length(bufferevent_get_input(bev)) >= HOLD_INPUT) {
        pause_reading(c, 1);
    }
    c->busy--;
    maybe_free(c);
}

static void tls_write(struct bufferevent *bev, void *arg)
{
    (void)bev;
    h1_conn_t *c = arg;
    c->busy++;
    drained(c);
    c->busy--;
    maybe_free(c);
}

static void tls_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    h1_conn_t *c = arg;
    c->busy++;
    if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING)) {
        on_idle_timeout(c);
    } else if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
        fail(c);
    }
    c->busy--;
    maybe_free(c);
}

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
    event_assign(&c->later, s->base, -1, 0, on_later, c);
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
        bufferevent_setcb(c->bev, tls_read, tls_write, tls_event, c);
        struct timeval tv = {s->lim.timeout_ms / 1000, (s->lim.timeout_ms % 1000) * 1000};
        bufferevent_set_timeouts(c->bev, &tv, &tv);
        bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    } else {
        event_assign(&c->rev, s->base, fd, EV_READ | EV_PERSIST, on_read, c);
        event_assign(&c->wev, s->base, fd, EV_WRITE | EV_PERSIST, on_write, c);
        event_add(&c->rev, s->ctv);
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
            pending(c) == 0) {
            fail(c);
            maybe_free(c);
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
        server_destroy(s);
        return;
    }
    s->freeing = 1;
    /* s goes with the last connection freed, which can only be the last one
     * visited (every one not yet visited still counts). */
    for (h1_conn_t *c = s->conns, *n; c; c = n) {
        n = c->next;
        fail(c);
        maybe_free(c);
    }
}
