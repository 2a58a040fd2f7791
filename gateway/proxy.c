/*
 * gateway/proxy.c: forward an admitted request to its backend and stream
 * the answer back as it arrives.
 *
 * The wire is gateway/http/client.c: per worker, one pool of keep-alive
 * connections per backend address (and TLS settings). The request goes out
 * as one buffer (head formatted here, the client's body moved in after
 * it); the answer comes back through the callbacks below as it is parsed.
 *
 * Ownership: the exchange (x->bx) belongs to client.c from hc_request()
 * until its on_end or on_error, which clear x->bx; proxy_release() cancels
 * it (no callback follows) when the request ends first. The head of an
 * answer whose body is all here waits in x->held_head and x->held until
 * on_backend_end sends both in one write.
 *
 * The proxy reports to its user (the request) only through the hooks it
 * was given; it never ends the request itself.
 *
 * A job create whose client leaves is not aborted: its leases may belong
 * to a job by now. proxy_keep_without_client() puts the exchange on the
 * worker's list of kept ones (proxy_worker_t.kept, the worker thread's
 * own): its answer is read to the end with no client (x->client NULL), and
 * proxy_release() takes it off the list. A worker that exits with kept
 * exchanges still on it cuts them in proxy_worker_free().
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>

#include "http/client.h"
#include "log.h"
#include "proxy.h"
#include "tls.h"

typedef struct proxy_pool {
    struct proxy_pool *next; /* all pools of a worker */
    char *host;
    uint16_t port;
    int64_t timeout_ms;
    int tls;
    char *ca_file;           /* NULL: the system's store */
    SSL_CTX *ssl_ctx;        /* tls: verifying client context (owned) */
    hc_pool_t *hc;           /* the connections (gateway/http/client.c) */
} proxy_pool_t;

static int same_file(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void pool_free(proxy_pool_t *p)
{
    if (p->hc)
        hc_pool_free(p->hc);
    if (p->ssl_ctx)
        SSL_CTX_free(p->ssl_ctx);
    free(p->ca_file);
    free(p->host);
    free(p);
}

static SSL *pool_new_ssl(void *arg)
{
    proxy_pool_t *p = arg;
    return tls_client_ssl(p->ssl_ctx, p->host);
}

static proxy_pool_t *pool_for(proxy_worker_t *w, const cfg_backend_t *be)
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
    p->port = be->port;
    p->timeout_ms = be->timeout_ms;
    char err[512];
    if (p->tls) {
        p->ssl_ctx = tls_client_ctx(be->ca_file, err, sizeof err);
        if (!p->ssl_ctx) {
            log_msg(LOG_ERROR, "backend %s: %s", be->name, err);
            pool_free(p);
            return NULL;
        }
    }
    hc_pool_opts_t o = {.host = be->host, .port = be->port, .timeout_ms = be->timeout_ms,
                        .new_ssl = p->tls ? pool_new_ssl : NULL, .ssl_arg = p};
    p->hc = hc_pool_new(w->base, &o, err, sizeof err);
    if (!p->hc) {
        log_msg(LOG_ERROR, "backend %s: %s", be->name, err);
        pool_free(p);
        return NULL;
    }
    p->next = w->pools;
    w->pools = p;
    return p;
}

void proxy_worker_init(proxy_worker_t *pw, struct event_base *base)
{
    pw->base = base;
    pw->pools = NULL;
    pw->kept = NULL;
    pw->head = NULL;
    pw->head_cap = 0;
}

static void forget_kept(proxy_exchange_t *x)
{
    if (!x->kept_prev)
        return;
    *x->kept_prev = x->kept_next;
    if (x->kept_next)
        x->kept_next->kept_prev = x->kept_prev;
    x->kept_next = NULL;
    x->kept_prev = NULL;
}

void proxy_keep_without_client(proxy_exchange_t *x)
{
    proxy_worker_t *pw = x->pw;
    x->client = NULL;
    x->kept = 1;
    x->kept_next = pw->kept;
    x->kept_prev = &pw->kept;
    if (pw->kept)
        pw->kept->kept_prev = &x->kept_next;
    pw->kept = x;
}

static void cancel(proxy_exchange_t *x)
{
    if (!x->bx)
        return;
    hc_cancel(x->bx); /* no callback follows */
    x->bx = NULL;
}

void proxy_worker_free(proxy_worker_t *pw)
{
    /* The worker exits: answers still read for a gone client are cut. */
    while (pw->kept) {
        proxy_exchange_t *x = pw->kept;
        cancel(x);
        forget_kept(x);
        x->hooks->ended(x->arg, PROXY_FAILED);
    }
    proxy_pool_t *p = pw->pools;
    while (p) {
        proxy_pool_t *next = p->next;
        pool_free(p);
        p = next;
    }
    pw->pools = NULL;
    free(pw->head);
    pw->head = NULL;
    pw->head_cap = 0;
}

void proxy_exchange_init(proxy_exchange_t *x)
{
    memset(x, 0, sizeof *x);
}

void proxy_exchange_reset(proxy_exchange_t *x)
{
    struct evbuffer *held = x->held, *held_head = x->held_head;
    memset(x, 0, sizeof *x);
    x->held = held;
    x->held_head = held_head;
}

void proxy_exchange_destroy(proxy_exchange_t *x)
{
    if (x->held)
        evbuffer_free(x->held);
    if (x->held_head)
        evbuffer_free(x->held_head);
    x->held = x->held_head = NULL;
}

void proxy_release(proxy_exchange_t *x)
{
    forget_kept(x);
    cancel(x);
    x->client = NULL;
    if (x->held_head)
        evbuffer_drain(x->held_head, evbuffer_get_length(x->held_head));
    if (x->held)
        evbuffer_drain(x->held, evbuffer_get_length(x->held));
}

int proxy_running(const proxy_exchange_t *x)
{
    return x->bx != NULL;
}

uint64_t proxy_bytes_out(const proxy_exchange_t *x)
{
    return x->bytes_out;
}

int64_t proxy_upstream_us(const proxy_exchange_t *x)
{
    return x->t_backend.tv_sec ? x->upstream_us : -1;
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

/* The first cap - 1 bytes of name (n long) folded as same_header_name
 * compares them (lower case, `_` as `-`) into buf; returns n. Every name
 * and prefix of the lists below is shorter than the buffers given. */
static size_t fold_name(const char *name, size_t n, char *buf, size_t cap)
{
    size_t k = n < cap ? n : cap - 1;
    for (size_t i = 0; i < k; i++) {
        unsigned char ch = (unsigned char)name[i];
        buf[i] = ch == '_' ? '-' : ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : (char)ch;
    }
    buf[k] = '\0';
    return n;
}

typedef struct {
    const char *s;
    size_t n;
} lit_t;
#define LIT(x) {x, sizeof x - 1}

/* Whether the folded name f (n bytes) is one of t (folded), or starts with
 * prefix (folded, may be NULL). */
static int folded_in(const char *f, size_t n, const lit_t *t, size_t nt, const char *prefix)
{
    for (size_t i = 0; i < nt; i++)
        if (t[i].n == n && memcmp(t[i].s, f, n) == 0)
            return 1;
    return prefix && n >= strlen(prefix) && memcmp(f, prefix, strlen(prefix)) == 0;
}

/* Hop-by-hop headers (RFC 9110 section 7.6.1) and what the gateway sets
 * itself; and the gateway's own namespace: nothing a client sends there is
 * true. */
static int skip_request_header(const char *name)
{
    static const lit_t skip[] = {
        LIT("connection"), LIT("keep-alive"), LIT("proxy-authenticate"),
        LIT("proxy-authorization"), LIT("proxy-connection"), LIT("te"), LIT("trailer"),
        LIT("transfer-encoding"), LIT("upgrade"), LIT("host"), LIT("content-length"),
        LIT("authorization"), LIT("x-api-key"), LIT("expect"), LIT("x-request-id"),
        LIT("x-gateway-key-id"), LIT("x-gateway-account"), LIT("x-forwarded-for"),
    };
    char f[64];
    size_t n = fold_name(name, strlen(name), f, sizeof f);
    return folded_in(f, n, skip, sizeof skip / sizeof *skip, "x-gateway-");
}

static int skip_response_header(const char *name, size_t len)
{
    static const lit_t skip[] = {
        LIT("connection"), LIT("keep-alive"), LIT("proxy-authenticate"),
        LIT("proxy-authorization"), LIT("proxy-connection"), LIT("te"), LIT("trailer"),
        LIT("transfer-encoding"), LIT("upgrade"), LIT("x-request-id"), LIT("date"),
        LIT("content-length"),
    };
    /* A backend header spelt with `_` that a client reading `_` as `-`
     * would take for one of the gateway's own answers' headers. */
    static const lit_t ours[] = {
        LIT("request-id"), LIT("retry-after"), LIT("retry-after-ms"), LIT("x-should-retry"),
        LIT("ratelimit"), LIT("ratelimit-policy"),
    };
    char f[64];
    size_t n = fold_name(name, len, f, sizeof f);
    if (folded_in(f, n, skip, sizeof skip / sizeof *skip, NULL))
        return 1;
    if (!memchr(name, '_', len))
        return 0;
    return folded_in(f, n, ours, sizeof ours / sizeof *ours, "x-ratelimit-") ||
           folded_in(f, n, NULL, 0, "anthropic-ratelimit-");
}

/* The first byte of a field name, lower case. */
static unsigned char fold_first(const char *name)
{
    unsigned char ch = (unsigned char)name[0];
    return ch >= 'A' && ch <= 'Z' ? (unsigned char)(ch - 'A' + 'a') : ch;
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
 * Connection field of the answer names `name`. */
static int named_by_any_connection(const hp_response_t *res, const char *name, size_t len)
{
    for (size_t i = 0; i < res->n_fields; i++) {
        const hp_field_t *f = &res->fields[i];
        if (f->name_len == 10 && strncasecmp(f->name, "Connection", 10) == 0) {
            char tok[128];
            if (len >= sizeof tok)
                continue;
            memcpy(tok, name, len);
            tok[len] = '\0';
            if (hp_list_has(f->value, f->value_len, tok))
                return 1;
        }
    }
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

/* A request head being written: one buffer, handed to the wire whole
 * (one copy instead of a libevent call per piece). */
typedef struct head {
    char *p;
    size_t n, cap;
    int failed; /* out of memory: the head is not sent */
} head_t;

static void put(head_t *h, const char *s, size_t n)
{
    if (h->failed)
        return;
    if (h->n + n > h->cap) {
        size_t cap = h->cap ? h->cap : 2048;
        while (cap < h->n + n)
            cap *= 2;
        char *p = realloc(h->p, cap);
        if (!p) {
            h->failed = 1;
            return;
        }
        h->p = p;
        h->cap = cap;
    }
    memcpy(h->p + h->n, s, n);
    h->n += n;
}

static void put_str(head_t *h, const char *s)
{
    put(h, s, strlen(s));
}

static void put_uint(head_t *h, uint64_t v)
{
    char d[20];
    size_t i = sizeof d;
    do
        d[--i] = (char)('0' + v % 10);
    while (v /= 10);
    put(h, d + i, sizeof d - i);
}

static void put_field(head_t *h, const char *name, const char *value)
{
    put_str(h, name);
    put(h, ": ", 2);
    put_str(h, value);
    put(h, "\r\n", 2);
}

/* The request line and the fields for the backend. */
static void request_head(const proxy_request_t *q, head_t *out, const char *query)
{
    h1_conn_t *in = q->client;
    const cfg_backend_t *be = q->backend;
    put_str(out, h1_method_name(h1_method(in)));
    put(out, " ", 1);
    put_str(out, be->base_path);
    put_str(out, q->path && *q->path ? q->path : "/");
    if (query) {
        put(out, "?", 1);
        put_str(out, query);
    }
    put(out, " HTTP/1.1\r\n", 11);
    size_t nh = h1_header_count(in);
    /* Only a request with a Connection field can name more hop-by-hop
     * fields (looked for once, not per field). */
    int has_connection = h1_header(in, "Connection") != NULL;
    for (size_t k = 0; k < nh; k++) {
        const char *key, *value;
        h1_header_at(in, k, &key, &value);
        if (skip_request_header(key) || (has_connection && client_connection_names(in, key)))
            continue;
        int configured = 0;
        for (size_t i = 0; i < be->n_headers && !configured; i++)
            configured = same_header_name(be->headers[i].name, key);
        if (!configured)
            put_field(out, key, value);
    }
    for (size_t i = 0; i < be->n_headers; i++)
        put_field(out, be->headers[i].name, be->headers[i].value);

    int default_port = be->port == (be->tls ? 443 : 80);
    int v6 = strchr(be->host, ':') != NULL;
    put_str(out, "Host: ");
    if (v6)
        put(out, "[", 1);
    put_str(out, be->host);
    if (v6)
        put(out, "]", 1);
    if (!default_port) {
        put(out, ":", 1);
        put_uint(out, be->port);
    }
    put(out, "\r\n", 2);

    /* The peer is always the last entry: never cut off by a long client value. */
    const char *xff = h1_header(in, "X-Forwarded-For");
    put_str(out, "X-Forwarded-For: ");
    if (xff && *xff && strlen(xff) < 4096) {
        put_str(out, xff);
        put(out, ", ", 2);
    }
    put_str(out, h1_peer(in));
    put(out, "\r\n", 2);
    put_field(out, "X-Request-Id", q->request_id);
    put_field(out, "X-Gateway-Key-Id", q->key_id);
    put_field(out, "X-Gateway-Account", q->account);
}

static void backend_failed(proxy_exchange_t *x, enum hc_error err)
{
    /* Mid-stream: the client must not take a cut body for a whole one,
     * so its connection is closed without the final chunk. */
    x->hooks->ended(x->arg, x->reply_started       ? PROXY_CUT
                            : err == HC_E_TIMEOUT ? PROXY_TIMEOUT
                                                  : PROXY_UNREACHABLE);
}

/* The answer's head: ours first (they replace the backend's fields of the
 * same names), then the backend's end-to-end fields. */
static void reply_headers(proxy_exchange_t *x, const hp_response_t *res)
{
    h1_conn_t *out = x->client;
    x->hooks->fields(x->arg, out, x->backend_status);
    size_t ours = h1_headers_mark(out);
    /* Only an answer with a Connection field can name more hop-by-hop
     * fields. */
    int has_connection = hp_find(res->fields, res->n_fields, "Connection") != NULL;
    /* The first letters (folded) of the gateway's own fields: a backend
     * field starting otherwise is not one of them, unlooked for. */
    unsigned char first[256] = {0};
    h1_header_initials(out, ours, first);
    for (size_t i = 0; i < res->n_fields; i++) {
        const hp_field_t *f = &res->fields[i];
        char name[256];
        if (f->name_len >= sizeof name)
            continue;
        memcpy(name, f->name, f->name_len);
        name[f->name_len] = '\0';
        char dbuf[256];
        if (!skip_response_header(name, f->name_len) &&
            !(has_connection && named_by_any_connection(res, f->name, f->name_len)) &&
            !(first[fold_first(name)] && h1_has_header(out, dashed(name, dbuf, sizeof dbuf), ours)))
            h1_add_header_n(out, f->name, f->name_len, f->value, f->value_len);
    }
    x->reply_started = 1;
}

#define CLIENT_BUFFER_MAX (1024 * 1024)

/* A used-units header, from the head or a trailer, for reconcile. */
static void note_units_field(proxy_exchange_t *x, const hp_field_t *f)
{
    const char *want = x->units_header;
    if (!want || strlen(want) != f->name_len || strncasecmp(want, f->name, f->name_len) != 0)
        return;
    size_t n = f->value_len < sizeof x->units_field - 1 ? f->value_len : sizeof x->units_field - 1;
    memcpy(x->units_field, f->value, n);
    x->units_field[n] = '\0';
    x->has_units_field = f->value_len < sizeof x->units_field;
}

/* The backend's fields of an answer whose head waits (on_backend_head):
 * kept as lines until on_backend_end, when the rate headers, computed after
 * the reconcile, go first. The parser let no CR or LF into a value. */
static void hold_fields(proxy_exchange_t *x, const hp_response_t *res)
{
    if (!x->held_head)
        x->held_head = evbuffer_new();
    if (!x->held_head)
        return;
    size_t total = 0;
    for (size_t i = 0; i < res->n_fields; i++)
        total += res->fields[i].name_len + res->fields[i].value_len + 2;
    struct evbuffer_iovec v;
    if (!total || evbuffer_reserve_space(x->held_head, (ev_ssize_t)total, &v, 1) != 1 ||
        v.iov_len < total)
        return;
    char *p = v.iov_base;
    for (size_t i = 0; i < res->n_fields; i++) {
        const hp_field_t *f = &res->fields[i];
        memcpy(p, f->name, f->name_len);
        p += f->name_len;
        *p++ = ':';
        memcpy(p, f->value, f->value_len);
        p += f->value_len;
        *p++ = '\n';
    }
    v.iov_len = total;
    evbuffer_commit_space(x->held_head, &v, 1);
}

/* reply_headers for an answer whose fields were held. */
static void reply_held_headers(proxy_exchange_t *x)
{
    hp_field_t f[128];
    hp_response_t res;
    memset(&res, 0, sizeof res);
    res.fields = f;
    size_t len = x->held_head ? evbuffer_get_length(x->held_head) : 0;
    const char *p = len ? (const char *)evbuffer_pullup(x->held_head, -1) : NULL, *end = p + len;
    while (p && p < end && res.n_fields < 128) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *colon = memchr(p, ':', (size_t)(nl - p));
        f[res.n_fields].name = p;
        f[res.n_fields].name_len = (size_t)(colon - p);
        f[res.n_fields].value = colon + 1;
        f[res.n_fields].value_len = (size_t)(nl - colon - 1);
        res.n_fields++;
        p = nl + 1;
    }
    reply_headers(x, &res);
    if (x->held_head)
        evbuffer_drain(x->held_head, len);
}

static int on_backend_head(void *arg, const hp_response_t *res)
{
    proxy_exchange_t *x = arg;
    x->backend_status = res->status;
    size_t n = res->reason_len < sizeof x->reason - 1 ? res->reason_len : sizeof x->reason - 1;
    memcpy(x->reason, res->reason, n);
    x->reason[n] = '\0';
    for (size_t i = 0; i < res->n_fields; i++)
        note_units_field(x, &res->fields[i]);
    const hp_field_t *ct = hp_find(res->fields, res->n_fields, "Content-Type");
    char ctype[128] = "";
    if (ct && ct->value_len < sizeof ctype) {
        memcpy(ctype, ct->value, ct->value_len);
        ctype[ct->value_len] = '\0';
    }
    int holds = x->hooks->head(x->arg, res->status, ct ? ctype : NULL,
                               res->framing.content_length);
    if (!x->client)
        return 0; /* read to its end all the same (a job create) */
    enum hp_body body = hp_response_body(h1_method(x->client) == H1_HEAD, res);
    /* A body that is already all here goes out with the head, in one
     * write (on_backend_end); so does a JSON answer to reconcile, within
     * its bound, whose head then shows the reconciled counts. Otherwise
     * the head goes now. */
    if (body == HP_BODY_LENGTH &&
        (hc_head_rest(x->bx) >= (size_t)res->framing.content_length || holds)) {
        hold_fields(x, res);
        x->hold_reply = 1;
        return 0;
    }
    reply_headers(x, res);
    h1_reply_start(x->client, x->backend_status, x->reason, res->framing.content_length);
    return 0;
}

/* The client took all that was waiting for it: read the backend again.
 * (Every way a request ends replaces this callback or frees the client
 * connection, so x is alive here.) */
static void on_client_drained(h1_conn_t *c, void *arg)
{
    (void)c;
    proxy_exchange_t *x = arg;
    if (x->backend_paused && x->bx) {
        x->backend_paused = 0;
        hc_pause(x->bx, 0);
    }
}

static void on_backend_data(void *arg, const char *data, size_t n)
{
    proxy_exchange_t *x = arg;
    x->hooks->data(x->arg, data, n); /* read in place: nothing held or delayed */
    if (!x->client)
        return;
    x->bytes_out += n;
    if (x->hold_reply) {
        if (!x->held)
            x->held = evbuffer_new();
        if (x->held)
            evbuffer_add(x->held, data, n);
        return;
    }
    h1_reply_bytes(x->client, data, n);
    /* Backpressure: a client that reads slower than the backend writes
     * must not make the gateway buffer the whole answer. Past the mark the
     * backend is not read until the client has taken everything. */
    if (h1_pending(x->client) > CLIENT_BUFFER_MAX && x->bx) {
        hc_pause(x->bx, 1);
        x->backend_paused = 1;
        h1_set_drained_cb(x->client, on_client_drained, x);
    }
}

static void on_backend_trailer(void *arg, const hp_field_t *f)
{
    note_units_field(arg, f);
}

static void backend_time(proxy_exchange_t *x)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    x->upstream_us = (int64_t)(now.tv_sec - x->t_backend.tv_sec) * 1000000 +
                     (now.tv_nsec - x->t_backend.tv_nsec) / 1000;
}

static void on_backend_end(void *arg)
{
    proxy_exchange_t *x = arg;
    x->bx = NULL;
    backend_time(x);
    /* The units field of the trailer, when it has one, came last. */
    x->hooks->complete(x->arg, x->backend_status,
                       x->has_units_field ? x->units_field : NULL);
    h1_conn_t *client = x->client;
    if (!client) {
        x->hooks->ended(x->arg, PROXY_DONE);
        return;
    }
    if (x->hold_reply)
        reply_held_headers(x); /* after the reconcile: its counts show */
    x->hooks->last_write(x->arg);
    x->client = NULL;
    if (x->hold_reply)
        /* The whole answer at once: head and body in one write. */
        h1_reply_buffer(client, x->backend_status, x->reason, x->held);
    else
        h1_reply_end(client);
    x->hooks->ended(x->arg, PROXY_DONE);
}

static void on_backend_error(void *arg, enum hc_error err, int got_head)
{
    proxy_exchange_t *x = arg;
    (void)got_head;
    x->bx = NULL;
    backend_time(x);
    x->hold_reply = 0;
    if (!x->client) {
        x->hooks->ended(x->arg, PROXY_FAILED);
        return;
    }
    backend_failed(x, err);
}

static const hc_callbacks_t backend_cbs = {
    .on_head = on_backend_head,
    .on_data = on_backend_data,
    .on_trailer = on_backend_trailer,
    .on_end = on_backend_end,
    .on_error = on_backend_error,
};

int proxy_start(proxy_exchange_t *x, proxy_worker_t *pw, const proxy_request_t *in,
                const proxy_hooks_t *hooks, void *arg, const char **why)
{
    const cfg_backend_t *be = in->backend;
    proxy_pool_t *pool = pool_for(pw, be);
    struct evbuffer *req = pool ? evbuffer_new() : NULL;
    if (!req) {
        *why = "No connection to the backend could be made.";
        return -1;
    }
    /* The head goes into the worker's scratch buffer, then into req. */
    head_t h = {pw->head, 0, pw->head_cap, 0};
    request_head(in, &h, h1_query(in->client));
    /* Content-Length for any body, and for the methods that carry one. */
    struct evbuffer *body = h1_body(in->client);
    size_t blen = evbuffer_get_length(body);
    enum h1_method m = h1_method(in->client);
    if (blen || m == H1_POST || m == H1_PUT || m == H1_PATCH) {
        put_str(&h, "Content-Length: ");
        put_uint(&h, blen);
        put(&h, "\r\n", 2);
    }
    put(&h, "\r\n", 2);
    pw->head = h.p;
    pw->head_cap = h.cap;
    if (h.failed || evbuffer_add(req, h.p, h.n) != 0) {
        evbuffer_free(req);
        *why = "Out of memory.";
        return -1;
    }
    evbuffer_add_buffer(req, body);

    x->pw = pw;
    x->hooks = hooks;
    x->arg = arg;
    x->client = in->client;
    x->units_header = in->units_header;
    clock_gettime(CLOCK_MONOTONIC, &x->t_backend);
    x->bx = hc_request(pool->hc, req, m == H1_HEAD, hc_idempotent(h1_method_name(m)),
                       &backend_cbs, x);
    if (!x->bx) {
        x->client = NULL;
        *why = "The backend could not be reached.";
        return -1;
    }
    return 0;
}
