/*
 * gateway/http/input.c: reading requests: the head parsed in place
 * (gateway/http/parse.c does the parsing), bodies by Content-Length or
 * chunked, deferred bodies read on h1_read_body, the request accessors,
 * and the socket and TLS callbacks (conn.h, server.h).
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

/* ---- the request accessors -------------------------------------------- */

enum h1_method h1_method(const h1_conn_t *c) { return (enum h1_method)c->method; }
const char *h1_path(const h1_conn_t *c) { return c->path; }
const char *h1_query(const h1_conn_t *c) { return c->query; }
size_t h1_header_count(const h1_conn_t *c) { return c->n_hdr; }
struct evbuffer *h1_body(h1_conn_t *c) { return c->body; }
static void finish_body(h1_conn_t *c, int status);
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
        if (conn_reserve_body(c, c->body_left) != 0) {
            finish_body(c, H1_BODY_NO_ROOM);
            return;
        }
    }
    if (c->expect100 && c->ilen == c->ipos && !c->dead) {
        struct iovec v = {"HTTP/1.1 100 Continue\r\n\r\n", 25};
        conn_send_parts(c, &v, 1, NULL, NULL, 0);
    }
    c->expect100 = 0;
    conn_pause_reading(c, 0);
    c->busy++;
    conn_process(c);
    c->busy--;
    conn_maybe_free(c);
}

const char *h1_header(const h1_conn_t *c, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < c->n_hdr; i++)
        if (c->hdr[i].name_len == n && strncasecmp(c->hdr[i].name, name, n) == 0)
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
    if (c->srv->refusal_cb)
        c->srv->refusal_cb(c, c->srv->arg);
    h1_reply(c, status, reason, text ? text : "", text ? strlen(text) : 0);
    free(text);
}

static const struct {
    const char *name;
    int m;
} methods[] = {{"GET", H1_GET},       {"POST", H1_POST},   {"PUT", H1_PUT},
               {"DELETE", H1_DELETE}, {"PATCH", H1_PATCH}, {"HEAD", H1_HEAD},
               {"OPTIONS", H1_OPTIONS}};

static int method_of(const char *m, size_t n)
{
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++)
        if (strlen(methods[i].name) == n && memcmp(methods[i].name, m, n) == 0)
            return methods[i].m;
    return 0;
}

const char *h1_method_name(enum h1_method m)
{
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++)
        if (methods[i].m == (int)m)
            return methods[i].name;
    return "GET"; /* none other is parsed */
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
        c->hdr[i].name_len = f[i].name_len;
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
        conn_send_parts(c, &v, 1, NULL, NULL, 0);
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
    /* The callee decides on the head and asks for the body (or answers)
     * before it returns, so a plain connection's read event stays on:
     * turning it off and on within one turn would cost an epoll_ctl per
     * request (libevent's changelist makes the pair a MOD). Input that
     * does come meanwhile is held up to HOLD_INPUT (conn_on_read). */
    if (c->bev)
        conn_pause_reading(c, 1);
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
        if (c->open && conn_reserve_body(c, (int64_t)ev.len) != 0) {
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
        /* Empty lines before a request are allowed (RFC 9112 section 2.2). */
        while (c->ipos < c->ilen && (c->ibuf[c->ipos] == '\r' || c->ibuf[c->ipos] == '\n'))
            c->ipos++;
        size_t avail = c->ilen - c->ipos;
        if (avail == 0) {
            c->ipos = c->ilen = 0;
            c->scan = 0;
            if (late)
                conn_fail(c);
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
                conn_fail(c);
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

void conn_process(h1_conn_t *c)
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
        if (c->state == ST_HEAD && conn_pending(c) > OUT_HIGH) {
            /* A client that sends requests without reading the answers is
             * not read either until it does (no answer piles up). */
            c->out_blocked = 1;
            conn_pause_reading(c, 1);
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
        conn_fail(c);
        return;
    }
    if (c->open && c->body_cb) {
        finish_body(c, H1_BODY_TOO_SLOW); /* a gap in the body */
        return;
    }
    /* Still writing (the write timeout covers a client that stopped
     * reading), or an exchange open (the backend's timeout governs). */
    if (c->open || c->state == ST_CLOSING || conn_pending(c) > 0) {
        if (c->bev)
            bufferevent_enable(c->bev, EV_READ);
        return;
    }
    if (c->state == ST_HEAD && c->ilen == c->ipos) {
        conn_fail(c);
        return;
    }
    refuse(c, 408, "Request Timeout", "REQUEST_TIMEOUT",
           "The request did not arrive within client_timeout_ms.");
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

void conn_on_read(evutil_socket_t fd, short what, void *arg)
{
    h1_conn_t *c = arg;
    c->busy++;
    if (!(what & EV_TIMEOUT) && c->state != ST_LINGER)
        conn_read_ran(c); /* the persistent event's timer, set again from now */
    if (what & EV_TIMEOUT) {
        on_idle_timeout(c);
        goto out;
    }
    if (c->state == ST_LINGER || c->state == ST_CLOSING) {
        char sink[4096];
        ssize_t n = read(fd, sink, sizeof sink);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) ||
            (c->state == ST_LINGER && now_ms(c) >= c->linger_until_ms))
            conn_fail(c);
        goto out;
    }
    size_t room = read_room(c);
    if (room == 0) {
        if (c->open) {
            conn_pause_reading(c, 1);
        } else if (c->state == ST_HEAD) {
            refuse(c, 431, "Request Header Fields Too Large", "HEADERS_TOO_LARGE",
                   "The request head is larger than max_header_bytes.");
        } else {
            conn_fail(c);
        }
        goto out;
    }
    ssize_t n = read(fd, c->ibuf + c->ilen, room);
    if (n > 0) {
        c->ilen += (size_t)n;
        if (!c->open || c->body_cb)
            conn_process(c);
        else if (c->ilen - c->ipos >= HOLD_INPUT)
            conn_pause_reading(c, 1);
    } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        conn_fail(c); /* the client is gone */
    }
out:
    c->busy--;
    conn_maybe_free(c);
}

void conn_on_write(evutil_socket_t fd, short what, void *arg)
{
    h1_conn_t *c = arg;
    c->busy++;
    if (what & EV_TIMEOUT) {
        conn_fail(c); /* the client stopped reading */
        goto out;
    }
    int n = evbuffer_write(c->out, fd);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        conn_fail(c);
        goto out;
    }
    if (evbuffer_get_length(c->out) == 0) {
        event_del(&c->wev);
        c->writing = 0;
        conn_drained(c);
    }
out:
    c->busy--;
    conn_maybe_free(c);
}

void conn_on_later(evutil_socket_t fd, short what, void *arg)
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
        conn_process(c);
    c->busy--;
    conn_maybe_free(c);
}

/* TLS connections: bufferevent_openssl callbacks. */
void conn_tls_read(struct bufferevent *bev, void *arg)
{
    h1_conn_t *c = arg;
    c->busy++;
    if (c->state == ST_CLOSING || c->state == ST_LINGER) {
        evbuffer_drain(bufferevent_get_input(bev), evbuffer_get_length(bufferevent_get_input(bev)));
    } else if (!c->open || c->body_cb) {
        conn_process(c);
    } else if (evbuffer_get_length(bufferevent_get_input(bev)) >= HOLD_INPUT) {
        conn_pause_reading(c, 1);
    }
    c->busy--;
    conn_maybe_free(c);
}

void conn_tls_write(struct bufferevent *bev, void *arg)
{
    (void)bev;
    h1_conn_t *c = arg;
    c->busy++;
    conn_drained(c);
    c->busy--;
    conn_maybe_free(c);
}

void conn_tls_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    h1_conn_t *c = arg;
    c->busy++;
    if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING)) {
        on_idle_timeout(c);
    } else if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
        conn_fail(c);
    }
    c->busy--;
    conn_maybe_free(c);
}
