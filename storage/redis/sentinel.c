/*
 * storage/redis/sentinel.c: the primary found through Redis Sentinel.
 *
 * Before every connect (the first one, and each after the primary's
 * connection dropped, failed or answered -READONLY) a worker asks a
 * sentinel SENTINEL get-master-addr-by-name, trying each configured node
 * in turn, and connects to the address named. A second connection, to one
 * sentinel, is subscribed to +switch-master: after a failover the worker
 * drops its connection to the old primary at once and asks again. Meanwhile
 * decisions are answered as on_error says (the connection is down).
 *
 * With storage.sentinel.password both connections to a sentinel begin with
 * AUTH (the sentinels' own requirepass; storage.password is the primary's).
 * A sentinel that refuses it is logged once until one accepts again, and
 * counts as one that did not answer.
 *
 * Ownership: rw->ask and rw->sub are the worker's. Each is set to NULL
 * before the worker frees it, so the callbacks hiredis then makes (NULL
 * replies, disconnect) see a context that is no longer theirs and return;
 * after a failed connect or a disconnect hiredis frees the context itself,
 * and the callback that notices it sets the pointer to NULL.
 */
#include <hiredis/adapters/libevent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define SUB_RETRY_MS 1000

static void ask_next(redis_worker_t *rw);

/* An error from sentinel i: logged, but a refused AUTH only once until a
 * sentinel accepts one again (every reconnect asks anew). */
static void sentinel_error(redis_worker_t *rw, size_t i, const char *what, const char *err)
{
    redis_store_t *rs = rw->rs;
    int auth = *what || strncmp(err, "NOAUTH", 6) == 0;
    if (auth && rw->sentinel_auth_logged)
        return;
    if (auth)
        rw->sentinel_auth_logged = 1;
    rds_rlog(rs, "redis sentinel %s:%u: %s%s%s", rs->o.sentinel_hosts[i], rs->o.sentinel_ports[i],
             what, err,
             !auth                     ? ""
             : rs->o.sentinel_password ? " (check storage.sentinel.password)"
                                       : " (set storage.sentinel.password)");
}

/* Send AUTH first on a new connection to a sentinel, when it has a password. */
static int sentinel_auth(redisAsyncContext *ac, redis_worker_t *rw, redisCallbackFn *cb)
{
    if (!rw->rs->o.sentinel_password)
        return REDIS_OK;
    return redisAsyncCommand(ac, cb, rw, "AUTH %s", rw->rs->o.sentinel_password);
}

/* How long one sentinel may take to answer. */
static int64_t ask_timeout_ms(const redis_worker_t *rw)
{
    return clamp64(4 * rw->rs->o.timeout_ms, 200, 2000);
}

static void timer_in(struct event *ev, int64_t ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    evtimer_add(ev, &tv);
}

/* The sentinel being asked is gone or said nothing useful: the next one. */
static void ask_failed(redis_worker_t *rw)
{
    redisAsyncContext *ac = rw->ask;
    rw->ask = NULL;
    evtimer_del(rw->ask_ev);
    if (ac)
        redisAsyncFree(ac);
    rw->ask_node = (rw->ask_node + 1) % rw->rs->o.n_sentinels;
    ask_next(rw);
}

static void on_ask_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    redis_worker_t *rw = privdata;
    const redisReply *r = reply;
    if (rw->ask != ac)
        return; /* given up on already */
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING) {
        if (r && r->type == REDIS_REPLY_ERROR)
            sentinel_error(rw, rw->ask_node, "", r->str);
        ask_failed(rw);
        return;
    }
    long port = strtol(r->element[1]->str, NULL, 10);
    if (port < 1 || port > 65535 || r->element[0]->len >= sizeof rw->host) {
        ask_failed(rw);
        return;
    }
    rw->ask = NULL;
    rw->sentinel_auth_logged = 0;
    evtimer_del(rw->ask_ev);
    redisAsyncFree(ac); /* after this callback: hiredis is inside it */
    if (strcmp(rw->host, r->element[0]->str) != 0 || rw->port != (uint16_t)port) {
        snprintf(rw->host, sizeof rw->host, "%s", r->element[0]->str);
        rw->port = (uint16_t)port;
        snprintf(rw->addr, sizeof rw->addr, "primary %s (%s:%u)", rw->rs->o.sentinel_master,
                 rw->host, rw->port);
        rds_rlog(rw->rs, "redis sentinel: the primary of %s is %s:%u",
                 rw->rs->o.sentinel_master, rw->host, rw->port);
    }
    if (!rw->ac && !rw->detaching)
        rds_connect_to(rw);
}

/* AUTH refused: the SENTINEL command after it fails too (NOAUTH) and moves
 * on to the next sentinel; only the reason is said here. */
static void on_ask_auth(redisAsyncContext *ac, void *reply, void *privdata)
{
    redis_worker_t *rw = privdata;
    const redisReply *r = reply;
    if (rw->ask == ac && r && r->type == REDIS_REPLY_ERROR)
        sentinel_error(rw, rw->ask_node, "AUTH: ", r->str);
}

static void on_ask_connect(const redisAsyncContext *ac, int status)
{
    redis_worker_t *rw = ac->data;
    if (status != REDIS_OK && rw->ask == ac) {
        rw->ask = NULL; /* hiredis frees it */
        ask_failed(rw);
    }
}

static void on_ask_disconnect(const redisAsyncContext *ac, int status)
{
    redis_worker_t *rw = ac->data;
    (void)status;
    if (rw->ask == ac) {
        rw->ask = NULL; /* hiredis frees it */
        ask_failed(rw);
    }
}

static void on_ask_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ask_failed(arg);
}

/* Ask the sentinel at ask_node, unless every one was asked this round. */
static void ask_next(redis_worker_t *rw)
{
    redis_store_t *rs = rw->rs;
    if (rw->detaching)
        return;
    if (rw->ask_tried >= rs->o.n_sentinels) {
        char why[300];
        snprintf(why, sizeof why, "no sentinel named the primary of %s", rs->o.sentinel_master);
        rds_note_down(rw, why);
        rds_schedule_reconnect(rw);
        return;
    }
    rw->ask_tried++;
    size_t i = rw->ask_node;
    redisAsyncContext *ac = redisAsyncConnect(rs->o.sentinel_hosts[i], rs->o.sentinel_ports[i]);
    if (!ac || ac->err) {
        if (ac)
            redisAsyncFree(ac);
        ask_failed(rw);
        return;
    }
    ac->data = rw;
    redisLibeventAttach(ac, rw->evb);
    redisAsyncSetConnectCallback(ac, on_ask_connect);
    redisAsyncSetDisconnectCallback(ac, on_ask_disconnect);
    rw->ask = ac;
    if (sentinel_auth(ac, rw, on_ask_auth) != REDIS_OK ||
        redisAsyncCommand(ac, on_ask_reply, rw, "SENTINEL get-master-addr-by-name %s",
                          rs->o.sentinel_master) != REDIS_OK) {
        ask_failed(rw);
        return;
    }
    timer_in(rw->ask_ev, ask_timeout_ms(rw));
}

void rds_sentinel_ask(redis_worker_t *rw)
{
    if (rw->ask || rw->ac || rw->detaching)
        return; /* asking already, or connected */
    rw->ask_tried = 0;
    ask_next(rw);
}

/* ---- +switch-master ----------------------------------------------------- */

static void sub_lost(redis_worker_t *rw)
{
    rw->sub = NULL;
    rw->sub_node = (rw->sub_node + 1) % rw->rs->o.n_sentinels;
    if (!rw->detaching)
        timer_in(rw->sub_ev, SUB_RETRY_MS);
}

/* "NAME OLD-IP OLD-PORT NEW-IP NEW-PORT" */
static void on_switch(redis_worker_t *rw, const char *msg)
{
    char name[256], host[256];
    unsigned port;
    if (sscanf(msg, "%255s %*s %*s %255s %u", name, host, &port) != 3 ||
        strcmp(name, rw->rs->o.sentinel_master) != 0)
        return;
    rds_rlog(rw->rs, "redis sentinel: failover of %s to %s:%u", name, host, port);
    if (rw->ac && strcmp(host, rw->host) == 0 && port == rw->port)
        return; /* on the new primary already */
    if (rw->ac)
        rds_connection_drop(rw, "failover");
    /* Down now (or already: the primary died): ask again at once. */
    rw->backoff_ms = BACKOFF_MIN_MS;
    if (!rw->ask) {
        evtimer_del(rw->retry_ev);
        rds_sentinel_ask(rw);
    }
}

static void on_sub_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    redis_worker_t *rw = privdata;
    const redisReply *r = reply;
    if (rw->sub != ac)
        return;
    if (!r) {
        sub_lost(rw); /* hiredis is freeing it */
        return;
    }
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
        r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "message") == 0 &&
        r->element[2]->type == REDIS_REPLY_STRING)
        on_switch(rw, r->element[2]->str);
}

/* AUTH refused on the subscription: said here; the SUBSCRIBE after it is
 * refused too, and hiredis drops a connection whose command was refused
 * in subscribed mode (on_sub_disconnect: tried again a second later). */
static void on_sub_auth(redisAsyncContext *ac, void *reply, void *privdata)
{
    redis_worker_t *rw = privdata;
    const redisReply *r = reply;
    if (rw->sub == ac && r && r->type == REDIS_REPLY_ERROR)
        sentinel_error(rw, rw->sub_node, "AUTH: ", r->str);
}

static void on_sub_connect(const redisAsyncContext *ac, int status)
{
    redis_worker_t *rw = ac->data;
    if (status != REDIS_OK && rw->sub == ac)
        sub_lost(rw);
}

static void on_sub_disconnect(const redisAsyncContext *ac, int status)
{
    redis_worker_t *rw = ac->data;
    (void)status;
    if (rw->sub == ac)
        sub_lost(rw);
}

static void subscribe(redis_worker_t *rw)
{
    redis_store_t *rs = rw->rs;
    if (rw->sub || rw->detaching)
        return;
    size_t i = rw->sub_node;
    redisAsyncContext *ac = redisAsyncConnect(rs->o.sentinel_hosts[i], rs->o.sentinel_ports[i]);
    if (!ac || ac->err) {
        if (ac)
            redisAsyncFree(ac);
        sub_lost(rw);
        return;
    }
    ac->data = rw;
    redisLibeventAttach(ac, rw->evb);
    redisAsyncSetConnectCallback(ac, on_sub_connect);
    redisAsyncSetDisconnectCallback(ac, on_sub_disconnect);
    rw->sub = ac;
    if (sentinel_auth(ac, rw, on_sub_auth) != REDIS_OK ||
        redisAsyncCommand(ac, on_sub_reply, rw, "SUBSCRIBE +switch-master") != REDIS_OK) {
        rw->sub = NULL;
        redisAsyncFree(ac);
        sub_lost(rw);
    }
}

static void on_sub_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    subscribe(arg);
}

int rds_sentinel_start(redis_worker_t *rw)
{
    rw->ask_ev = evtimer_new(rw->evb, on_ask_timeout, rw);
    rw->sub_ev = evtimer_new(rw->evb, on_sub_retry, rw);
    if (!rw->ask_ev || !rw->sub_ev) {
        if (rw->ask_ev)
            event_free(rw->ask_ev);
        if (rw->sub_ev)
            event_free(rw->sub_ev);
        rw->ask_ev = rw->sub_ev = NULL;
        return -1;
    }
    rw->host[0] = '\0';
    rw->port = 0;
    subscribe(rw);
    return 0;
}

void rds_sentinel_stop(redis_worker_t *rw)
{
    redisAsyncContext *ask = rw->ask, *sub = rw->sub;
    rw->ask = rw->sub = NULL;
    if (ask)
        redisAsyncFree(ask);
    if (sub)
        redisAsyncFree(sub);
    event_free(rw->ask_ev);
    event_free(rw->sub_ev);
}
