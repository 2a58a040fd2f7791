/*
 * gateway/server.c: worker threads. Each worker owns an event_base, an
 * HTTP server (gateway/http/server.h) on its own SO_REUSEPORT socket, its backend pools and
 * its store connection. Workers share only the config snapshot (reference
 * counted, swapped through pending_cfg) and the store.
 */
#include <errno.h>
#include <netdb.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/bufferevent_ssl.h>
#include <event2/listener.h>
#include <openssl/ssl.h>

#include "log.h"
#include "request.h"
#include "admin.h"
#include "server.h"

int server_listen_socket(const char *host, uint16_t port, int reuseport, char *err,
                         size_t errlen)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char pbuf[8];
    snprintf(pbuf, sizeof pbuf, "%u", port);
    int rc = getaddrinfo(host, pbuf, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = socket(res->ai_family, res->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        freeaddrinfo(res);
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuseport)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
        snprintf(err, errlen, "cannot listen on %s:%u: %s", host, port, strerror(errno));
        close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    return fd;
}

int server_address_in_use(const char *host, uint16_t port, char *err, size_t errlen)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char pbuf[8];
    snprintf(pbuf, sizeof pbuf, "%u", port);
    int rc = getaddrinfo(host, pbuf, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        freeaddrinfo(res);
        return -1;
    }
    /* SO_REUSEADDR, as the workers' own sockets: connections of an earlier
     * run in TIME_WAIT do not count; without SO_REUSEPORT, any socket that
     * listens on the address does. */
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int in_use = 0;
    if (bind(fd, res->ai_addr, res->ai_addrlen) != 0) {
        if (errno == EADDRINUSE) {
            in_use = 1;
        } else {
            snprintf(err, errlen, "cannot bind %s:%u: %s", host, port, strerror(errno));
            in_use = -1;
        }
    }
    close(fd);
    freeaddrinfo(res);
    return in_use;
}

/* Bodies above the largest an endpoint takes are not read at all: the
 * request is answered 413 and its connection closed. */
static int64_t body_cap(const config_t *c)
{
    int64_t m = c->server.max_body_bytes;
    for (size_t i = 0; i < c->n_endpoints; i++)
        if (c->endpoints[i].max_body_bytes > m)
            m = c->endpoints[i].max_body_bytes;
    return m;
}

static h1_limits_t http_limits(const config_t *c)
{
    long workers = c->server.workers;
    if (workers <= 0)
        workers = sysconf(_SC_NPROCESSORS_ONLN);
    if (workers <= 0)
        workers = 1;
    /* The instance's cap, shared out among the workers (each accepts on a
     * SO_REUSEPORT socket of its own). */
    int64_t cap = c->server.max_connections;
    h1_limits_t l = {.max_header_bytes = (size_t)c->server.max_header_bytes,
                     .max_body_bytes = body_cap(c),
                     .timeout_ms = c->server.client_timeout_ms,
                     .max_connections = cap ? (size_t)((cap + workers - 1) / workers) : 0,
                     .max_per_client = (size_t)c->server.max_connections_per_client,
                     .min_body_rate = c->server.min_body_rate};
    h1_set_body_budget(c->server.body_buffer_bytes);
    return l;
}

/* The HTTP layer's own answers carry a request id too (and request-id
 * where the Anthropic fields are on), like every other answer. */
static void refusal_fields(h1_conn_t *c, void *arg)
{
    worker_t *w = arg;
    char rid[40];
    request_next_id(w, rid, sizeof rid);
    h1_add_header(c, "X-Request-Id", rid);
    if (w->cfg && w->cfg->server.anthropic_headers)
        h1_add_header(c, "request-id", rid);
}

static void http_log(const char *line)
{
    log_msg(LOG_WARN, "%s", line);
}

/* Each TLS connection takes the context of the worker's current snapshot:
 * after a reload, new connections present the renewed certificate. */
static SSL_CTX *tls_ctx_of(void *arg)
{
    worker_t *w = arg;
    return w->cfg->tls_ctx;
}

static void server_handle(h1_conn_t *c, void *arg)
{
    request_start(arg, c);
}

/* Take the snapshot the main thread handed over (mailbox). */
static void take_snapshot(worker_t *w)
{
    config_t *next = atomic_exchange(&w->pending_cfg, NULL);
    if (!next)
        return;
    config_t *old = w->cfg;
    w->cfg = next;
    if (w->http) { /* gone once the worker is exiting (mail still read) */
        h1_limits_t lim = http_limits(next);
        h1_server_set_limits(w->http, &lim);
    }
    config_unref(old);
}

static void drain_tick(evutil_socket_t fd, short what, void *arg);

/* Stop asked (mailbox): drain, or at once if draining already. */
static void stop(worker_t *w)
{
    if (w->draining) {
        event_base_loopbreak(w->base); /* second signal: at once */
        return;
    }
    w->draining = 1;
    h1_server_drain(w->http);
    request_drain_waiters(w);
    clock_gettime(CLOCK_MONOTONIC, &w->drain_deadline);
    int64_t ms = w->cfg->server.drain_timeout_ms;
    w->drain_deadline.tv_sec += ms / 1000;
    w->drain_deadline.tv_nsec += (ms % 1000) * 1000000;
    if (w->drain_deadline.tv_nsec >= 1000000000) {
        w->drain_deadline.tv_sec++;
        w->drain_deadline.tv_nsec -= 1000000000;
    }
    drain_tick(-1, 0, w);
}

static void drain_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    worker_t *w = arg;
    if (!w->http)
        return; /* the worker is exiting (a second signal broke the loop) */
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int over = now.tv_sec > w->drain_deadline.tv_sec ||
               (now.tv_sec == w->drain_deadline.tv_sec &&
                now.tv_nsec >= w->drain_deadline.tv_nsec);
    /* Done when every request has ended and every connection has written
     * its last answer and closed (a client that stops reading is cut off
     * by client_timeout_ms, and by the drain deadline). */
    if ((w->inflight == 0 && h1_server_conns(w->http) == 0) || over) {
        if (over && w->inflight > 0)
            log_msg(LOG_WARN, "worker %d: drain timeout with %d requests in flight",
                    w->index, w->inflight);
        event_base_loopexit(w->base, NULL);
        return;
    }
    struct timeval tv = {0, 20000};
    event_base_once(w->base, -1, EV_TIMEOUT, drain_tick, w, &tv);
}

/* ---- the mailbox (worker.h) ---------------------------------------------- */

static _Thread_local worker_t *self; /* the worker whose thread this is */

static void mail_post(worker_t *w)
{
    while (eventfd_write(w->mail_fd, 1) != 0 && errno == EINTR)
        ;
}

static void on_mail(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    worker_t *w = arg;
    eventfd_t n;
    (void)eventfd_read(fd, &n); /* EAGAIN: a second read of one write */
    unsigned bits = atomic_exchange(&w->mail, 0u);
    if (bits & WORKER_MAIL_RELOAD)
        take_snapshot(w);
    pthread_mutex_lock(&w->mail_mu);
    for (request_t *r = w->woken, *next; r; r = next) {
        next = r->wq_mail_next;
        event_active(r->wq_wake, r->wq_mail, 1);
        r->wq_mail = 0;
        r->wq_mail_next = NULL;
    }
    w->woken = NULL;
    pthread_mutex_unlock(&w->mail_mu);
    if (bits & WORKER_MAIL_STOP)
        stop(w);
}

void server_worker_wake(worker_t *w, request_t *r, short what)
{
    if (w == self) {
        event_active(r->wq_wake, what, 1);
        return;
    }
    pthread_mutex_lock(&w->mail_mu);
    if (!r->wq_mail) {
        r->wq_mail_next = w->woken;
        w->woken = r;
    }
    r->wq_mail |= what;
    pthread_mutex_unlock(&w->mail_mu);
    mail_post(w);
}

void server_worker_unwake(worker_t *w, request_t *r)
{
    pthread_mutex_lock(&w->mail_mu);
    if (r->wq_mail) {
        request_t **pp = &w->woken;
        while (*pp != r)
            pp = &(*pp)->wq_mail_next;
        *pp = r->wq_mail_next;
        r->wq_mail = 0;
        r->wq_mail_next = NULL;
    }
    pthread_mutex_unlock(&w->mail_mu);
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    self = w;
    event_base_dispatch(w->base);
    /* Ending connections ends their requests; let those finish. */
    h1_server_free(w->http);
    w->http = NULL;
    if (w->admin) {
        h1_server_free(w->admin);
        w->admin = NULL;
    }
    event_base_loop(w->base, EVLOOP_NONBLOCK);
    proxy_worker_free(&w->proxy);
    event_base_loop(w->base, EVLOOP_NONBLOCK);
    request_freelist_clear();
    atomic_store(&w->exited, 1);
    if (w->exit_notify)
        event_active(w->exit_notify, EV_READ, 0);
    return NULL;
}

int server_worker_init(worker_t *w, int index, config_t *cfg, store_t *store, int fd)
{
    memset(w, 0, sizeof *w);
    w->mail_fd = -1;
    w->index = index;
    w->cfg = config_ref(cfg);
    /* RATEWALL_NO_DENY_CACHE=1 turns the local deny cache off (for
     * measuring the store alone). */
    const char *nd = getenv("RATEWALL_NO_DENY_CACHE");
    w->deny_cache = !(nd && *nd && strcmp(nd, "0") != 0);
    atomic_init(&w->pending_cfg, NULL);
    unsigned char rnd[8];
    if (RAND_bytes(rnd, sizeof rnd) != 1)
        return -1;
    for (int i = 0; i < 8; i++)
        snprintf(w->rid_prefix + 2 * i, 3, "%02x", rnd[i]);
    /* epoll changelist: the add/del of write interest that every answer
     * causes is folded into one epoll_ctl per loop turn, or none. No lock:
     * only this worker's thread touches its base (the mailbox is how other
     * threads reach it), and a proxied request made a dozen lock and
     * unlock calls. */
    struct event_config *ec = event_config_new();
    if (!ec)
        return -1;
    event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
    w->base = event_base_new_with_config(ec);
    event_config_free(ec);
    if (!w->base)
        return -1;
    proxy_worker_init(&w->proxy, w->base);
    h1_limits_t lim = http_limits(cfg);
    w->http = h1_server_new(w->base, fd, &lim, server_handle, cfg->tls_ctx ? tls_ctx_of : NULL,
                            w);
    if (!w->http) {
        close(fd);
        return -1;
    }
    h1_server_set_log(w->http, http_log);
    h1_server_set_refusal_cb(w->http, refusal_fields);
    h1_server_defer_body(w->http, 1); /* 404, 401, 403 before any body is read */
    if (lim_deny_init(&w->deny, 4096) != 0)
        return -1;
    w->store = store_attach(store, w->base);
    if (!w->store)
        return -1;
    if (index == 0 && cfg->admin.enabled) {
        char err[256];
        int afd = server_listen_socket(cfg->admin.listen_host, cfg->admin.listen_port, 0, err,
                                       sizeof err);
        if (afd < 0)
            log_msg(LOG_ERROR, "admin: %s", err);
        w->admin = afd < 0 ? NULL : admin_start(w, afd);
        if (!w->admin) {
            log_msg(LOG_ERROR, "admin: cannot listen on %s:%u", cfg->admin.listen_host,
                    cfg->admin.listen_port);
            return -1;
        }
    }
    w->mail_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->mail_fd < 0)
        return -1;
    if (pthread_mutex_init(&w->mail_mu, NULL) != 0) {
        close(w->mail_fd);
        w->mail_fd = -1;
        return -1;
    }
    w->mail_ev = event_new(w->base, w->mail_fd, EV_READ | EV_PERSIST, on_mail, w);
    if (!w->mail_ev || event_add(w->mail_ev, NULL) != 0)
        return -1;
    return 0;
}

int server_worker_start(worker_t *w)
{
    return pthread_create(&w->thread, NULL, worker_main, w);
}

void server_worker_swap(worker_t *w, config_t *next)
{
    config_t *old = atomic_exchange(&w->pending_cfg, config_ref(next));
    if (old)
        config_unref(old);
    atomic_fetch_or(&w->mail, WORKER_MAIL_RELOAD);
    mail_post(w);
}

void server_worker_stop(worker_t *w)
{
    atomic_fetch_or(&w->mail, WORKER_MAIL_STOP);
    mail_post(w);
}

void server_worker_join_free(worker_t *w)
{
    pthread_join(w->thread, NULL);
    server_worker_free(w);
}

void server_worker_free(worker_t *w)
{
    config_t *p = atomic_exchange(&w->pending_cfg, NULL);
    if (p)
        config_unref(p);
    if (w->store)
        store_detach(w->store);
    if (w->mail_ev)
        event_free(w->mail_ev);
    if (w->mail_fd >= 0) {
        close(w->mail_fd);
        pthread_mutex_destroy(&w->mail_mu);
    }
    if (w->http)
        h1_server_free(w->http);
    if (w->admin)
        h1_server_free(w->admin);
    if (w->base)
        event_base_free(w->base);
    lim_deny_free(&w->deny);
    config_unref(w->cfg);
}
