/*
 * gateway/http/output.c: writing answers: the head composed in the
 * connection's own buffer and sent with the body in one sendmsg, what the
 * socket does not take queued (then EV_WRITE is asked for), chunked
 * streaming, the end of an exchange (conn.h, server.h).
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
#include "bytes.h"
#include "conn.h"
#include "digits.h"
#include "peers.h"

/* ---- output ------------------------------------------------------------ */

/*
 * Write pre[], then data (drained), then post[] — straight to the socket
 * when nothing is queued before them (one sendmsg), the rest queued.
 */
void conn_send_parts(h1_conn_t *c, const struct iovec *pre, int npre, struct evbuffer *data,
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
                conn_fail(c);
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
        conn_arm_read(c);
    }
}


/* Everything written: close, tell the callee, or go on reading. */
void conn_drained(h1_conn_t *c)
{
    if (c->state == ST_CLOSING) {
        conn_close_or_linger(c);
        return;
    }
    if (c->out_blocked && !c->open) {
        /* The client read what it was sent: its next requests are read. */
        c->out_blocked = 0;
        conn_pause_reading(c, 0);
        event_active(&c->later, EV_TIMEOUT, 1); /* read on from the loop */
    }
    if (!c->open && c->state == ST_HEAD && c->ilen == c->ipos) {
        if (c->srv->draining) {
            conn_fail(c); /* its last answer is out */
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

int conn_reserve_body(h1_conn_t *c, int64_t n)
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
        conn_maybe_free(c);
        return;
    }
    if (c->closing_after || c->srv->draining) {
        c->state = ST_CLOSING;
        if (conn_pending(c) == 0) {
            conn_close_or_linger(c);
            conn_maybe_free(c);
        }
        return;
    }
    c->state = ST_HEAD;
    c->head_start_ms = 0;
    c->scan = 0;
    conn_pause_reading(c, 0);
    if (conn_pending(c) == 0)
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

/* The answer's fields are lines at obuf + HEAD_ROOM (olen bytes), with
 * HEAD_ROOM free before them and at least as much after: the status line
 * and Date go in front, the framing lines behind, and the head is sent as
 * one piece (a socket write costs more for each piece it copies). */
#define HEAD_ROOM 128

/* obuf with room for `more` bytes of fields beyond olen (and the room on
 * either side): 0, or -1 out of memory. */
static int fields_reserve(h1_conn_t *c, size_t more)
{
    size_t need = HEAD_ROOM + c->olen + more + HEAD_ROOM;
    if (need <= c->ocap)
        return 0;
    size_t cap = c->ocap ? c->ocap : 1024;
    while (cap < need)
        cap *= 2;
    char *p = realloc(c->obuf, cap);
    if (!p)
        return -1;
    c->obuf = p;
    c->ocap = cap;
    return 0;
}

static const char *fields_of(const h1_conn_t *c)
{
    return c->obuf ? c->obuf + HEAD_ROOM : NULL;
}

/* Room for a field line of nl + vl bytes of name and value at the end of
 * the answer's fields: where it starts, or NULL (out of memory: the field
 * is left out). */
static char *field_room(h1_conn_t *c, size_t nl, size_t vl)
{
    if (fields_reserve(c, nl + vl + 4) != 0)
        return NULL;
    char *p = c->obuf + HEAD_ROOM + c->olen;
    c->olen += nl + vl + 4;
    return p;
}

/* The head of an answer as iovecs: the status line and Date (made in a),
 * the fields, the framing lines (made in b); one iovec when obuf can hold
 * it whole, else three (pointing into a and b, the caller's). Returns how
 * many. */
static int head_parts(h1_conn_t *c, int status, const char *reason, int64_t clen,
                      char a[HEAD_ROOM], char b[HEAD_ROOM], struct iovec v[3])
{
    size_t al, bl;
    compose(c, status, reason, clen, a, &al, b, &bl);
    if (fields_reserve(c, 0) == 0) {
        char *at = c->obuf + HEAD_ROOM - al;
        memcpy(at, a, al);
        memcpy(c->obuf + HEAD_ROOM + c->olen, b, bl);
        v[0] = (struct iovec){at, al + c->olen + bl};
        return 1;
    }
    v[0] = (struct iovec){(void *)a, al};
    v[1] = (struct iovec){(void *)fields_of(c), c->olen};
    v[2] = (struct iovec){(void *)b, bl};
    return 3;
}

/* Whether v[0..n) may hold a byte below 0x20 (CR, LF, or a tab: the
 * caller looks closer), eight bytes a step. */
static int has_control(const char *v, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, v + i, 8);
        if (word_has_below(w, 0x20))
            return 1;
    }
    for (; i < n; i++)
        if ((unsigned char)v[i] < 0x20)
            return 1;
    return 0;
}

/* A field line "name: " + vl bytes + CRLF at the end of the answer's
 * fields, its value left to the caller to write: where the value goes,
 * or NULL (out of memory: the field is left out). */
static char *field_line(h1_conn_t *c, const char *name, size_t nl, size_t vl)
{
    char *p = field_room(c, nl, vl);
    if (!p)
        return NULL;
    memcpy(p, name, nl);
    p[nl] = ':';
    p[nl + 1] = ' ';
    p[nl + 2 + vl] = '\r';
    p[nl + 3 + vl] = '\n';
    return p + nl + 2;
}

/* "name: value" CRLF at the end of the answer's fields; with clean, CR
 * and LF in the value become spaces (a value never breaks the head). */
static void add_line(h1_conn_t *c, const char *name, size_t nl, const char *value, size_t vl,
                     int clean)
{
    char *v = field_line(c, name, nl, vl);
    if (!v)
        return;
    memcpy(v, value, vl);
    if (clean && has_control(value, vl))
        for (size_t i = 0; i < vl; i++)
            if (value[i] == '\r' || value[i] == '\n')
                v[i] = ' ';
}

void h1_add_header_n(h1_conn_t *c, const char *name, size_t nl, const char *value, size_t vl)
{
    add_line(c, name, nl, value, vl, 1);
}

/* A number needs no CR/LF check (a proxied answer carries half a dozen). */
void h1_add_header_int_n(h1_conn_t *c, const char *name, size_t nl, int64_t value)
{
    uint64_t mag = value < 0 ? (uint64_t)0 - (uint64_t)value : (uint64_t)value;
    size_t neg = value < 0, vl = uint_len(mag) + neg;
    char *v = field_line(c, name, nl, vl);
    if (!v)
        return;
    if (neg)
        v[0] = '-';
    put_uint_n(v + neg, mag, vl - neg);
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
    const char *p = fields_of(c), *end = p ? p + (mark < c->olen ? mark : c->olen) : NULL;
    while (p && p < end) {
        if ((size_t)(end - p) > nl && p[nl] == ':' && strncasecmp(p, name, nl) == 0)
            return 1;
        const char *e = memchr(p, '\n', (size_t)(end - p));
        p = e ? e + 1 : end;
    }
    return 0;
}

void h1_header_initials(const h1_conn_t *c, size_t mark, unsigned char first[256])
{
    const char *p = fields_of(c), *end = p ? p + (mark < c->olen ? mark : c->olen) : NULL;
    while (p && p < end) {
        unsigned char ch = (unsigned char)*p;
        first[ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch] = 1;
        const char *e = memchr(p, '\n', (size_t)(end - p));
        p = e ? e + 1 : end;
    }
}

void h1_reply(h1_conn_t *c, int status, const char *reason, const void *body, size_t len)
{
    if (!c->open)
        return;
    char a[HEAD_ROOM], b[HEAD_ROOM];
    int with_body = len && !c->no_body_out && status >= 200 && status != 204 && status != 304;
    struct iovec v[4];
    int n = head_parts(c, status, reason, (int64_t)len, a, b, v);
    if (with_body)
        v[n++] = (struct iovec){(void *)body, len};
    conn_send_parts(c, v, n, NULL, NULL, 0);
    end_exchange(c);
}

void h1_reply_buffer(h1_conn_t *c, int status, const char *reason, struct evbuffer *body)
{
    if (!c->open)
        return;
    char a[HEAD_ROOM], b[HEAD_ROOM];
    size_t len = body ? evbuffer_get_length(body) : 0;
    struct iovec v[3];
    int n = head_parts(c, status, reason, (int64_t)len, a, b, v);
    int with_body = len && !c->no_body_out && status >= 200 && status != 204 && status != 304;
    if (body && !with_body)
        evbuffer_drain(body, len);
    conn_send_parts(c, v, n, with_body ? body : NULL, NULL, 0);
    end_exchange(c);
}

void h1_reply_start(h1_conn_t *c, int status, const char *reason, int64_t content_length)
{
    if (!c->open)
        return;
    char a[HEAD_ROOM], b[HEAD_ROOM];
    struct iovec v[3];
    int n = head_parts(c, status, reason, content_length, a, b, v);
    if (status < 200 || status == 204 || status == 304)
        c->no_body_out = 1;
    conn_send_parts(c, v, n, NULL, NULL, 0);
}

void h1_reply_chunk(h1_conn_t *c, struct evbuffer *data)
{
    size_t n = evbuffer_get_length(data);
    if (!c->open || c->dead || c->no_body_out || n == 0) {
        evbuffer_drain(data, n);
        return;
    }
    if (!c->chunked_out) {
        conn_send_parts(c, NULL, 0, data, NULL, 0);
        return;
    }
    char pre[24];
    int pl = snprintf(pre, sizeof pre, "%zx\r\n", n);
    struct iovec a = {pre, (size_t)pl}, b = {"\r\n", 2};
    conn_send_parts(c, &a, 1, data, &b, 1);
}

void h1_reply_bytes(h1_conn_t *c, const void *data, size_t n)
{
    if (!c->open || c->dead || c->no_body_out || n == 0)
        return;
    struct iovec d = {(void *)data, n};
    if (!c->chunked_out) {
        conn_send_parts(c, &d, 1, NULL, NULL, 0);
        return;
    }
    char pre[24];
    int pl = snprintf(pre, sizeof pre, "%zx\r\n", n);
    struct iovec v[3] = {{pre, (size_t)pl}, d, {"\r\n", 2}};
    conn_send_parts(c, v, 3, NULL, NULL, 0);
}

size_t h1_pending(const h1_conn_t *c)
{
    return conn_pending(c);
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
        conn_send_parts(c, &v, 1, NULL, NULL, 0);
    }
    end_exchange(c);
}

void h1_abort(h1_conn_t *c)
{
    if (!c->open)
        return;
    c->close_cb = NULL;
    conn_fail(c);
    end_exchange(c);
}
