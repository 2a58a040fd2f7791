/*
 * storage/redis/cluster.c: counters spread over a Redis Cluster.
 *
 * The worker a gateway thread attaches (the parent) never connects itself:
 * it asks a seed node for CLUSTER SLOTS and makes one node worker per
 * master, each a complete worker (its own connection, FIFO, deadlines,
 * clock offset, scripts loaded at connect, renewals, fallback) on the same
 * event loop. Every command goes to the node of its first key's slot (the
 * CRC16 of the key's hash tag): all keys of one decision carry the same
 * account tag, so one decision is one script on one slot. A -MOVED reply
 * moves the slot in the map and the call to the node named; -ASK sends
 * ASKING and the call to the node named, the map unchanged.
 *
 * -TRYAGAIN (a script whose keys a migration split between the two nodes)
 * puts the call in the parent's list, sent again after 2, 4 ... 32 ms to
 * the node the map names, as long as its deadline allows.
 *
 * The slot map is read asynchronously on the worker's own event loop
 * (hiredis async, like every other connection): one node asked at a time,
 * the seeds in turn and then every master known, each given
 * max(timeout_ms, 500) ms, so a node that is down or stopped never stalls
 * the worker. It is read at attach (decisions that come before it are
 * held, within their deadline), again every second while no node
 * answered, and a second after a master's connection is lost (a failover
 * may have given its slots to a replica). A node that serves no slot in a
 * new map (a master failed over) is left idle: not reconnected to, not
 * counted by ready(), woken when a map or a redirect names it again.
 *
 * Ownership: the parent owns its nodes (freed at detach, after the
 * decisions it held waiting for the first map are answered), the slot map, the context asking for
 * it (map_ac: freed by map_close(), or by hiredis after a failed connect
 * or a lost connection, which on_slots() sees as a NULL reply) and the
 * calls waiting to be sent again (again: in no node's FIFO meanwhile,
 * answered unavailable at detach). A node is never freed before detach,
 * so a redirected call's new worker outlives it.
 */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"

#define SLOTS 16384
#define MAX_NODES 1024

static void on_again(evutil_socket_t fd, short what, void *arg);

/* How long one node is given to answer CLUSTER SLOTS before the next is
 * asked. */
static int64_t map_wait_ms(const redis_worker_t *p)
{
    return p->rs->o.timeout_ms > 500 ? p->rs->o.timeout_ms : 500;
}

/* CRC16-CCITT (XMODEM), as Redis Cluster hashes keys. */
static unsigned crc16(const char *s, size_t n)
{
    unsigned crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (unsigned)(unsigned char)s[i] << 8;
        for (int b = 0; b < 8; b++)
            crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
    }
    return crc;
}

/* The slot of a key: of its hash tag's content when it has a non-empty
 * one ("{...}", the first), else of the whole key. */
static unsigned key_slot(const char *key)
{
    const char *open = strchr(key, '{');
    if (open) {
        const char *close = strchr(open + 1, '}');
        if (close && close > open + 1)
            return crc16(open + 1, (size_t)(close - open - 1)) % SLOTS;
    }
    return crc16(key, strlen(key)) % SLOTS;
}

/* The node worker for host:port, made (and connecting) if new; NULL when
 * out of memory or too many. */
static redis_worker_t *node_for(redis_worker_t *p, const char *host, unsigned port)
{
    for (size_t i = 0; i < p->n_nodes; i++) {
        redis_worker_t *n = p->nodes[i];
        if (n->port != port || strcmp(n->host, host) != 0)
            continue;
        if (n->idle) {
            /* Named again (a failback, a slot moved back): connect again. */
            n->idle = 0;
            n->backoff_ms = BACKOFF_MIN_MS;
            if (!n->ac && !evtimer_pending(n->retry_ev, NULL))
                rds_connect_now(n);
        }
        return n;
    }
    if (p->n_nodes >= MAX_NODES || p->detaching)
        return NULL;
    redis_worker_t **grown = realloc(p->nodes, (p->n_nodes + 1) * sizeof *grown);
    if (!grown)
        return NULL;
    p->nodes = grown;
    redis_worker_t *n = rds_worker_new(p->rs, p->evb, host, (uint16_t)port);
    if (!n)
        return NULL;
    n->parent = p;
    p->nodes[p->n_nodes++] = n;
    rds_connect_now(n);
    return n;
}

static size_t node_index(const redis_worker_t *p, const redis_worker_t *n)
{
    for (size_t i = 0; i < p->n_nodes; i++)
        if (p->nodes[i] == n)
            return i;
    return 0;
}

/* ---- the slot map ------------------------------------------------------- */

/* A CLUSTER SLOTS reply into the map (an empty host is the node asked, at
 * host); 0 if it named at least one master. */
static int apply_map(redis_worker_t *p, const redisReply *r, const char *host)
{
    if (r->type == REDIS_REPLY_ERROR) {
        if (!p->map_failing) /* once per outage, not every second */
            rds_rlog(p->rs, "redis cluster %s:%u: %s", host, p->map_port, r->str);
        return -1;
    }
    if (r->type != REDIS_REPLY_ARRAY)
        return -1;
    int named = 0;
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
            e->element[0]->type != REDIS_REPLY_INTEGER ||
            e->element[1]->type != REDIS_REPLY_INTEGER ||
            e->element[2]->type != REDIS_REPLY_ARRAY || e->element[2]->elements < 2 ||
            e->element[2]->element[0]->type != REDIS_REPLY_STRING ||
            e->element[2]->element[1]->type != REDIS_REPLY_INTEGER)
            continue;
        long long lo = e->element[0]->integer, hi = e->element[1]->integer;
        const char *h = e->element[2]->element[0]->str;
        long long pt = e->element[2]->element[1]->integer;
        if (lo < 0 || hi >= SLOTS || lo > hi || pt < 1 || pt > 65535)
            continue;
        redis_worker_t *n = node_for(p, *h ? h : host, (unsigned)pt);
        if (!n)
            continue;
        named = 1;
        for (long long s = lo; s <= hi; s++)
            p->slots[s] = (uint16_t)(node_index(p, n) + 1);
    }
    if (!named)
        return -1;
    /* A node that serves no slot now (a master failed over, or emptied by
     * a reshard) is not reconnected to; node_for() wakes it when a map or
     * a redirect names it again. */
    unsigned char *used = calloc(p->n_nodes ? p->n_nodes : 1, 1);
    if (used) {
        for (size_t s = 0; s < SLOTS; s++)
            if (p->slots[s])
                used[p->slots[s] - 1] = 1;
        for (size_t i = 0; i < p->n_nodes; i++) {
            redis_worker_t *n = p->nodes[i];
            if (!used[i] && !n->idle) {
                n->idle = 1;
                if (!n->ac)
                    evtimer_del(n->retry_ev);
            }
        }
        free(used);
    }
    return 0;
}

static void map_ask_next(redis_worker_t *p);

/* Stop asking the node asked now. Its callbacks, run by the free, see that
 * it is no longer p->map_ac and do nothing. */
static void map_close(redis_worker_t *p)
{
    redisAsyncContext *ac = p->map_ac;
    if (!ac)
        return;
    p->map_ac = NULL;
    evtimer_del(p->map_to);
    redisAsyncFree(ac); /* deferred by hiredis when inside ac's own callback */
}

static void on_slots(redisAsyncContext *ac, void *reply, void *arg)
{
    redis_worker_t *p = arg;
    if (ac != p->map_ac)
        return; /* closed on purpose (timed out, detach) */
    const redisReply *r = reply;
    if (!r) {
        /* Cannot connect, or the connection lost: hiredis frees it. */
        p->map_ac = NULL;
        evtimer_del(p->map_to);
        map_ask_next(p);
        return;
    }
    char host[256];
    snprintf(host, sizeof host, "%s", p->map_host);
    int ok = apply_map(p, r, host) == 0;
    map_close(p);
    if (!ok) {
        map_ask_next(p);
        return;
    }
    if (p->map_failing)
        rds_rlog(p->rs, "redis cluster: slot map read from %s:%u", host, p->map_port);
    p->map_failing = 0;
    /* A map read while a failover was still under way can name a master
     * that is down (its replica not promoted yet), and no node may go down
     * again to ask for another read: while a master of the map is not
     * connected, read it again in a second. */
    for (size_t i = 0; i < p->n_nodes; i++) {
        const redis_worker_t *n = p->nodes[i];
        if (!n->idle && !n->connected && !evtimer_pending(p->map_ev, NULL)) {
            struct timeval tv = {1, 0};
            evtimer_add(p->map_ev, &tv);
            break;
        }
    }
    /* Decisions that came before the first map: to their nodes now. */
    rds_held_redispatch(p);
}

static void on_map_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    redis_worker_t *p = arg;
    if (!p->map_failing)
        rds_rlog(p->rs, "redis cluster %s:%u: no answer to CLUSTER SLOTS within %lld ms",
                 p->map_host, p->map_port, (long long)map_wait_ms(p));
    map_close(p);
    map_ask_next(p);
}

/* Ask host:port for CLUSTER SLOTS on the worker's own event loop; 0 if
 * asked (the answer, an error or the timeout comes later). */
static int map_ask(redis_worker_t *p, const char *host, unsigned port)
{
    redisAsyncContext *ac = redisAsyncConnect(host, (int)port);
    if (!ac || ac->err) {
        if (ac)
            redisAsyncFree(ac);
        return -1;
    }
    ac->data = p;
    if (redisLibeventAttach(ac, p->evb) != REDIS_OK) {
        redisAsyncFree(ac);
        return -1;
    }
    snprintf(p->map_host, sizeof p->map_host, "%s", host);
    p->map_port = (uint16_t)port;
    p->map_ac = ac;
    const char *pw = p->rs->o.password;
    if (pw && *pw)
        redisAsyncCommand(ac, NULL, NULL, "AUTH %s", pw); /* an error shows in the next */
    if (redisAsyncCommand(ac, on_slots, p, "CLUSTER SLOTS") != REDIS_OK) {
        map_close(p);
        return -1;
    }
    int64_t ms = map_wait_ms(p);
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    evtimer_add(p->map_to, &tv);
    return 0;
}

/* The next node to ask: the seeds in turn, then (the seeds gone) every
 * master known. None answered: again in a second. */
static void map_ask_next(redis_worker_t *p)
{
    const store_redis_opts_t *o = &p->rs->o;
    while (!p->detaching && !p->map_ac) {
        size_t i = p->map_next++;
        char host[256];
        unsigned port;
        if (i < o->n_cluster) {
            snprintf(host, sizeof host, "%s", o->cluster_hosts[i]);
            port = o->cluster_ports[i];
        } else if (i - o->n_cluster < p->n_nodes) {
            snprintf(host, sizeof host, "%s", p->nodes[i - o->n_cluster]->host);
            port = p->nodes[i - o->n_cluster]->port;
        } else {
            break;
        }
        if (map_ask(p, host, port) == 0)
            return;
    }
    if (p->detaching || p->map_ac)
        return;
    if (!p->map_failing)
        rds_rlog(p->rs, "redis cluster: no node answered CLUSTER SLOTS; asking again every "
                        "second");
    p->map_failing = 1;
    /* Decisions waiting for a first map: none is coming soon. */
    rds_held_fail_all(p);
    struct timeval tv = {1, 0};
    evtimer_add(p->map_ev, &tv);
}

/* Read the map again (at attach, and from map_ev: at most once a second). */
static void refresh_map(redis_worker_t *p)
{
    if (p->map_ac || p->detaching)
        return;
    p->map_next = 0;
    map_ask_next(p);
}

static void on_map(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    refresh_map(arg);
}

void rds_cluster_node_down(redis_worker_t *rw)
{
    redis_worker_t *p = rw->parent;
    if (p && !rw->idle && !p->detaching && p->map_ev && !p->map_ac &&
        !evtimer_pending(p->map_ev, NULL)) {
        /* A master away: its slots may have a new master (a failover).
         * Read the map again soon, at most once a second (a read under way
         * now arms the next one itself if this master is still in it). */
        struct timeval tv = {1, 0};
        evtimer_add(p->map_ev, &tv);
    }
}

int rds_cluster_start(redis_worker_t *rw)
{
    rw->slots = calloc(SLOTS, sizeof *rw->slots);
    rw->map_ev = evtimer_new(rw->evb, on_map, rw);
    rw->again_ev = evtimer_new(rw->evb, on_again, rw);
    rw->map_to = evtimer_new(rw->evb, on_map_timeout, rw);
    if (!rw->slots || !rw->map_ev || !rw->again_ev || !rw->map_to) {
        free(rw->slots);
        rw->slots = NULL;
        if (rw->map_ev)
            event_free(rw->map_ev);
        rw->map_ev = NULL;
        if (rw->again_ev)
            event_free(rw->again_ev);
        rw->again_ev = NULL;
        if (rw->map_to)
            event_free(rw->map_to);
        rw->map_to = NULL;
        return -1;
    }
    snprintf(rw->addr, sizeof rw->addr, "cluster");
    refresh_map(rw);
    return 0;
}

void rds_cluster_stop(redis_worker_t *rw)
{
    map_close(rw);
    if (rw->map_to)
        event_free(rw->map_to);
    rw->map_to = NULL;
    /* Calls waiting to be sent again: in no node's FIFO, answered here. */
    while (rw->again) {
        rcall_t *c = rw->again;
        rw->again = c->again_next;
        rds_call_answer_unavailable(c);
        rds_call_free(c);
    }
    if (rw->again_ev)
        event_free(rw->again_ev);
    rw->again_ev = NULL;
    for (size_t i = 0; i < rw->n_nodes; i++)
        store_detach(&rw->nodes[i]->base);
    free(rw->nodes);
    rw->nodes = NULL;
    rw->n_nodes = 0;
    free(rw->slots);
    rw->slots = NULL;
    if (rw->map_ev)
        event_free(rw->map_ev);
    rw->map_ev = NULL;
}

redis_worker_t *rds_route(redis_worker_t *rw, const char *key)
{
    redis_worker_t *p = rw->parent ? rw->parent : rw;
    if (!p->slots)
        return rw;
    unsigned idx = key ? p->slots[key_slot(key)] : 0;
    if (idx)
        return p->nodes[idx - 1];
    /* A slot no master serves (yet): the first node answers CLUSTERDOWN or
     * MOVED, or nothing when there is none. */
    return p->n_nodes ? p->nodes[0] : rw;
}

/* The first key of a formatted EVALSHA (its fourth argument) into out;
 * 0 if the command has one. */
static int cmd_first_key(const rcall_t *c, char *out, size_t size)
{
    const char *p = c->cmd, *end = c->cmd + c->cmdlen;
    if (p >= end || *p != '*')
        return -1;
    p = memchr(p, '\n', (size_t)(end - p));
    for (int arg = 0; p && ++p < end && *p == '$'; arg++) {
        long len = strtol(p + 1, NULL, 10);
        const char *v = memchr(p, '\n', (size_t)(end - p));
        if (!v || len < 0 || ++v + len > end)
            return -1;
        if (arg == 0 && (len != 7 || strncasecmp(v, "EVALSHA", 7) != 0))
            return -1;
        if (arg == 2 && (len < 1 || *v == '0'))
            return -1; /* no keys */
        if (arg == 3) {
            if ((size_t)len >= size)
                return -1;
            memcpy(out, v, (size_t)len);
            out[len] = '\0';
            return 0;
        }
        p = v + len + 1; /* past "\r": at "\n" */
    }
    return -1;
}

static void again_arm(redis_worker_t *p)
{
    int64_t first = INT64_MAX;
    for (rcall_t *c = p->again; c; c = c->again_next)
        if (c->again_at < first)
            first = c->again_at;
    if (first == INT64_MAX)
        return;
    int64_t wait = clamp64(first - mono_ms(), 1, 1000);
    struct timeval tv = {.tv_sec = wait / 1000, .tv_usec = (wait % 1000) * 1000};
    evtimer_add(p->again_ev, &tv);
}

/* The calls due: sent again to the node the map names for their key now
 * (the slot's owner, which answers or sends -ASK again). */
static void on_again(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    redis_worker_t *p = arg;
    int64_t now = mono_ms();
    rcall_t *due = NULL;
    for (rcall_t **pp = &p->again; *pp;) {
        rcall_t *c = *pp;
        if (c->again_at <= now) {
            *pp = c->again_next;
            c->again_next = due;
            due = c;
        } else {
            pp = &c->again_next;
        }
    }
    while (due) {
        rcall_t *c = due;
        due = c->again_next;
        c->again_next = NULL;
        char key[LIM_KEY_MAX + 64];
        redis_worker_t *to = cmd_first_key(c, key, sizeof key) == 0 ? rds_route(p, key) : c->rw;
        c->redirects = 0;
        c->rw = to;
        if ((c->answered && (c->kind == RC_ACQUIRE || c->kind == RC_USAGE)) ||
            now >= c->deadline ||
            rds_queue(to, c) != 0) {
            if (c->debt) { /* a debt's adjust that never ran: owed still */
                rds_debt_return(c->rw->rs, c->debt);
                c->debt = NULL;
            }
            rds_call_answer_unavailable(c);
            rds_call_free(c);
        }
    }
    again_arm(p);
}

int rds_cluster_tryagain(rcall_t *c, const char *err)
{
    redis_worker_t *p = c->rw->parent;
    if (!p || !p->again_ev || p->detaching || strncmp(err, "TRYAGAIN", 8) != 0)
        return 0;
    /* A decision already answered (it ran out): nothing ran, nothing to do. */
    if (c->answered && (c->kind == RC_ACQUIRE || c->kind == RC_USAGE))
        return 0;
    /* 2, 4, 8 ... ms, at most 32, and only while the deadline allows. */
    int64_t wait = (int64_t)2 << (c->tries < 4 ? c->tries : 4);
    int64_t at = mono_ms() + wait;
    if (at >= c->deadline)
        return 0;
    c->tries++;
    c->again_at = at;
    c->again_next = p->again;
    p->again = c;
    again_arm(p);
    return 1;
}

int rds_cluster_redirect(rcall_t *c, const char *err)
{
    redis_worker_t *from = c->rw, *p = from->parent;
    int ask = strncmp(err, "ASK ", 4) == 0;
    if (!p || (!ask && strncmp(err, "MOVED ", 6) != 0) || c->redirects >= 5)
        return 0;
    unsigned slot, port;
    char host[256];
    const char *sp = strchr(err, ' ');
    if (!sp || sscanf(sp + 1, "%u %255[^ ]", &slot, host) != 2 || slot >= SLOTS)
        return 0;
    char *colon = strrchr(host, ':');
    if (!colon)
        return 0;
    *colon = '\0';
    port = (unsigned)strtoul(colon + 1, NULL, 10);
    if (port < 1 || port > 65535)
        return 0;
    redis_worker_t *to = node_for(p, *host ? host : from->host, port);
    if (!to)
        return 0;
    if (!ask)
        p->slots[slot] = (uint16_t)(node_index(p, to) + 1);
    c->redirects++;
    if (ask) {
        const char *a[] = {"ASKING"};
        size_t l[] = {6};
        rcall_t *k = rds_call_new(to, RC_RELEASE, 1, a, l);
        if (!k || rds_queue(to, k) != 0) {
            if (k)
                rds_call_free(k);
            return 0;
        }
    }
    c->rw = to;
    return rds_queue(to, c) == 0;
}
