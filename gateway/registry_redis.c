/*
 * gateway/registry_redis.c: API-made keys and accounts kept in Redis and
 * followed by every instance (see registry_redis.h).
 */
#include "registry_redis.h"

#include <stdlib.h>
#include <string.h>

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "log.h"
#include "registry.h"

#define CHECK_MS 500
#define LOOK_TICKS 4 /* a look unanswered this many checks: the next node */

enum mode { M_ONE, M_SENTINEL, M_CLUSTER };

/* One change: hash field ARGV[1] of KEYS[1] set to ARGV[3] ("set"), set
 * only if absent ("create": 0 when present), or deleted ("del"); then the
 * version (KEYS[2]) incremented and returned. One script, so a create is
 * atomic across instances and the version moves with the change. */
static const char WRITE_LUA[] =
    "if ARGV[2] == 'create' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then "
    "return 0 end "
    "if ARGV[2] == 'del' then redis.call('HDEL', KEYS[1], ARGV[1]) "
    "else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end "
    "return redis.call('INCR', KEYS[2])";

/* Module state, touched on worker 0's loop only. Owns the three
 * connections (each freed by hiredis after its on_disconnect, or by us
 * after its pointer here was set to NULL), the timer and the strings. */
static struct {
    int on;
    int stopping;        /* registry_redis_stop: callbacks answer nobody */
    enum mode mode;
    struct event_base *base;
    struct event *timer;
    redisAsyncContext *cmd, *sub;
    char *host, *password, *prefix; /* host: the server talked to (NULL: not known yet) */
    int port, db;
    /* Sentinel or Cluster: the nodes asked where the server is. */
    redisAsyncContext *look; /* NULL: none open */
    char **nodes;
    int *node_ports;
    size_t n_nodes, look_node;
    int looking;         /* ticks since the look in flight was sent; 0: none */
    int need_look;       /* Cluster: read the slot map again (-MOVED, a node lost) */
    char *master, *look_password; /* Sentinel: the master name, the sentinels' password */
    long long seen;      /* the version last applied; -1 none yet */
    int fetching;
    int again;           /* a change was announced while fetching */
    unsigned writes;     /* bumped by each write: older fetches are stale */
    char k_keys[160], k_accounts[160], k_version[160], channel[160];
} R = {.seen = -1};

static void connect_both(void);
static void look_lost(void);

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    if (ac == R.look)
        look_lost();
    if (ac == R.cmd) {
        R.cmd = NULL;
        R.fetching = 0;
        if (R.mode == M_CLUSTER)
            R.need_look = 1; /* the master may be gone: where is the slot now? */
    }
    if (ac == R.sub)
        R.sub = NULL;
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    if (status != REDIS_OK) {
        if (ac == R.look)
            look_lost();
        if (ac == R.cmd) {
            R.cmd = NULL;
            if (R.mode == M_CLUSTER)
                R.need_look = 1;
        }
        if (ac == R.sub)
            R.sub = NULL;
    }
}

/* An error reply from the server talked to: -MOVED / -ASK (the slot is
 * elsewhere now), -CLUSTERDOWN, -READONLY (a primary made a replica): ask
 * again where to go. */
static void redirect_error(const redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_ERROR || R.mode == M_ONE)
        return;
    if (strncmp(r->str, "MOVED", 5) == 0 || strncmp(r->str, "ASK", 3) == 0 ||
        strncmp(r->str, "CLUSTERDOWN", 11) == 0 || strncmp(r->str, "READONLY", 8) == 0)
        R.need_look = 1;
}

static void fetch(void);

static void on_message(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    (void)priv;
    redisReply *r = reply;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
        r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "message") == 0)
        fetch();
}

static redisAsyncContext *open_to(const char *host, int port, const char *password,
                                  int named)
{
    redisAsyncContext *ac = redisAsyncConnect(host, port);
    if (!ac)
        return NULL;
    if (ac->err || redisLibeventAttach(ac, R.base) != REDIS_OK) {
        redisAsyncFree(ac);
        return NULL;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (password)
        redisAsyncCommand(ac, NULL, NULL, "AUTH %s", password);
    /* Named, so that CLIENT LIST tells them from the decision connections. */
    if (named)
        redisAsyncCommand(ac, NULL, NULL, "CLIENT SETNAME ratewall-registry");
    return ac;
}

static void connect_both(void)
{
    if (!R.host)
        return; /* not known yet: asked of the sentinels or the cluster */
    if (!R.cmd && (R.cmd = open_to(R.host, R.port, R.password, 1)) && R.db)
        redisAsyncCommand(R.cmd, NULL, NULL, "SELECT %d", R.db);
    if (!R.sub && (R.sub = open_to(R.host, R.port, R.password, 1)))
        redisAsyncCommand(R.sub, on_message, NULL, "SUBSCRIBE %s", R.channel);
}

/* Leave the server talked to (a failover, a slot moved): both connections
 * closed now, their calls answered as lost, and opened again to the new one. */
static void drop_both(void)
{
    redisAsyncContext *c = R.cmd, *s = R.sub;
    R.cmd = R.sub = NULL;
    R.fetching = 0;
    if (c)
        redisAsyncFree(c);
    if (s)
        redisAsyncFree(s);
}

/* ---- where the server is: Sentinel or Cluster ---------------------------- */

static void look_next_node(void)
{
    redisAsyncContext *ac = R.look;
    R.look = NULL;
    R.looking = 0;
    R.look_node = (R.look_node + 1) % R.n_nodes;
    if (ac)
        redisAsyncFree(ac); /* deferred by hiredis when inside its callback */
}

static void move_to(const char *host, int port)
{
    if (R.host && strcmp(R.host, host) == 0 && R.port == port)
        return;
    char *h = strdup(host);
    if (!h)
        return;
    log_msg(LOG_INFO, "keys and accounts: kept on %s:%d (%s)", host, port,
            R.mode == M_SENTINEL ? "the primary the sentinels name" : "the master of their slot");
    free(R.host);
    R.host = h;
    R.port = port;
    drop_both();
    connect_both();
    R.seen = -1; /* read everything on the new server */
}

/* SENTINEL get-master-addr-by-name: ["HOST", "PORT"]. */
static void on_sentinel_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    const redisReply *r = reply;
    if (ac != R.look)
        return;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING) {
        look_next_node();
        return;
    }
    R.looking = 0;
    long port = strtol(r->element[1]->str, NULL, 10);
    if (port >= 1 && port <= 65535)
        move_to(r->element[0]->str, (int)port);
}

/* CLUSTER KEYSLOT of the version key, then CLUSTER SLOTS: the master of
 * that slot. */
static long long look_slot = -1;

static void on_keyslot_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    const redisReply *r = reply;
    if (ac == R.look)
        look_slot = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
}

static void on_slots_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    const redisReply *r = reply;
    if (ac != R.look)
        return;
    if (!r || r->type != REDIS_REPLY_ARRAY || look_slot < 0) {
        look_next_node();
        return;
    }
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
            e->element[0]->type != REDIS_REPLY_INTEGER ||
            e->element[1]->type != REDIS_REPLY_INTEGER ||
            look_slot < e->element[0]->integer || look_slot > e->element[1]->integer)
            continue;
        const redisReply *m = e->element[2];
        if (m->type != REDIS_REPLY_ARRAY || m->elements < 2 ||
            m->element[0]->type != REDIS_REPLY_STRING ||
            m->element[1]->type != REDIS_REPLY_INTEGER)
            break;
        R.looking = 0;
        R.need_look = 0;
        /* An empty host: the node asked. */
        move_to(*m->element[0]->str ? m->element[0]->str : R.nodes[R.look_node],
                (int)m->element[1]->integer);
        return;
    }
    look_next_node(); /* this node does not know the slot: another may */
}

static void look(void)
{
    if (R.looking && ++R.looking > LOOK_TICKS)
        look_next_node(); /* no answer: the next node */
    if (R.looking)
        return;
    if (!R.look) {
        R.look = open_to(R.nodes[R.look_node], R.node_ports[R.look_node], R.look_password, 0);
        if (!R.look) {
            R.look_node = (R.look_node + 1) % R.n_nodes;
            return;
        }
    }
    int rc;
    if (R.mode == M_SENTINEL) {
        rc = redisAsyncCommand(R.look, on_sentinel_reply, NULL,
                               "SENTINEL get-master-addr-by-name %s", R.master);
    } else {
        look_slot = -1;
        rc = redisAsyncCommand(R.look, on_keyslot_reply, NULL, "CLUSTER KEYSLOT %s",
                               R.k_version);
        if (rc == REDIS_OK)
            rc = redisAsyncCommand(R.look, on_slots_reply, NULL, "CLUSTER SLOTS");
    }
    if (rc != REDIS_OK)
        look_next_node();
    else
        R.looking = 1;
}

/* The look connection failed or dropped (hiredis frees it): the next
 * node at the next check. */
static void look_lost(void)
{
    R.look = NULL;
    R.looking = 0;
    R.look_node = (R.look_node + 1) % R.n_nodes;
}

/* ---- reading the registry ---------------------------------------------- */

static int cmp_id(const void *a, const void *b)
{
    const char *x = json_string_value(json_object_get(*(json_t *const *)a, "id"));
    const char *y = json_string_value(json_object_get(*(json_t *const *)b, "id"));
    return strcmp(x ? x : "", y ? y : "");
}

/* The replies of GET version, HGETALL keys, HGETALL accounts, in order. */
typedef struct fetch_state {
    long long version;
    unsigned writes; /* R.writes when sent */
    json_t *keys;   /* array, owned */
    int failed;
} fetch_state_t;

static json_t *parse_obj(const redisReply *v)
{
    if (!v || v->type != REDIS_REPLY_STRING)
        return NULL;
    json_t *o = json_loadb(v->str, v->len, 0, NULL);
    if (o && !json_is_object(o)) {
        json_decref(o);
        o = NULL;
    }
    return o;
}

static void on_version(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    fetch_state_t *f = priv;
    redisReply *r = reply;
    if (!r || r->type == REDIS_REPLY_ERROR) {
        f->failed = 1;
        redirect_error(r);
    } else if (r->type == REDIS_REPLY_STRING) {
        f->version = strtoll(r->str, NULL, 10);
    }
}

static void on_keys(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    fetch_state_t *f = priv;
    redisReply *r = reply;
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        f->failed = 1;
        return;
    }
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        json_t *o = parse_obj(r->element[i + 1]);
        if (o)
            json_array_append_new(f->keys, o);
    }
}

static void on_accounts(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    fetch_state_t *f = priv;
    redisReply *r = reply;
    R.fetching = 0;
    if (!r || r->type != REDIS_REPLY_ARRAY || f->failed || f->writes != R.writes) {
        /* A write of this instance came after: what was read may miss it. */
        int stale = r && f->writes != R.writes;
        json_decref(f->keys);
        free(f);
        if (r && !R.stopping && (stale || R.again))
            fetch();
        return;
    }
    json_t *accounts = json_object();
    for (size_t i = 0; accounts && i + 1 < r->elements; i += 2) {
        json_t *o = parse_obj(r->element[i + 1]);
        if (o && r->element[i]->type == REDIS_REPLY_STRING)
            json_object_set_new(accounts, r->element[i]->str, o);
        else
            json_decref(o);
    }
    /* Sorted by id: the same content is the same document everywhere. */
    size_t n = json_array_size(f->keys);
    json_t **v = calloc(n ? n : 1, sizeof *v);
    json_t *keys = json_array();
    if (v && keys) {
        for (size_t i = 0; i < n; i++)
            v[i] = json_array_get(f->keys, i);
        qsort(v, n, sizeof *v, cmp_id);
        for (size_t i = 0; i < n; i++)
            json_array_append(keys, v[i]);
    }
    free(v);
    json_decref(f->keys);
    long long version = f->version;
    free(f);
    json_t *doc = accounts && keys ? json_pack("{s:o,s:o}", "accounts", accounts, "keys", keys)
                                   : NULL;
    if (!doc) {
        return;
    }
    json_t *now = registry_get();
    if (now && json_equal(now, doc)) {
        json_decref(doc);
        R.seen = version;
    } else {
        cfg_messages_t m = {0};
        if (registry_apply(doc, &m) == 0) {
            registry_adopt(doc);
            R.seen = version;
            log_msg(LOG_INFO, "keys and accounts from the store applied (version %lld)", version);
        } else {
            for (size_t i = 0; i < m.n_errors; i++)
                log_msg(LOG_ERROR, "keys and accounts from the store refused: %s", m.errors[i]);
            json_decref(doc);
            R.seen = version; /* not again until the next change */
        }
        cfg_messages_free(&m);
    }
    json_decref(now);
    if (R.again)
        fetch();
}

static void fetch(void)
{
    if (R.fetching)
        R.again = 1;
    if (!R.cmd || R.fetching || R.stopping)
        return;
    R.again = 0;
    fetch_state_t *f = calloc(1, sizeof *f);
    if (!f || !(f->keys = json_array())) {
        free(f);
        return;
    }
    R.fetching = 1;
    f->writes = R.writes;
    redisAsyncCommand(R.cmd, on_version, f, "GET %s", R.k_version);
    redisAsyncCommand(R.cmd, on_keys, f, "HGETALL %s", R.k_keys);
    redisAsyncCommand(R.cmd, on_accounts, f, "HGETALL %s", R.k_accounts);
}

static void on_check_version(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    (void)priv;
    redisReply *r = reply;
    if (!r)
        return;
    redirect_error(r);
    long long v = r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10) : 0;
    if (r->type != REDIS_REPLY_ERROR && v != R.seen)
        fetch();
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    /* Sentinel: asked every check, so a failover is followed within one
     * even when no +switch-master reaches us. Cluster: when told to. */
    if (R.mode == M_SENTINEL || (R.mode == M_CLUSTER && (R.need_look || !R.host)))
        look();
    connect_both();
    if (R.cmd && !R.fetching)
        redisAsyncCommand(R.cmd, on_check_version, NULL, "GET %s", R.k_version);
}

static int copy_nodes(char *const *hosts, const uint16_t *ports, size_t n)
{
    R.nodes = calloc(n, sizeof *R.nodes);
    R.node_ports = calloc(n, sizeof *R.node_ports);
    if (!R.nodes || !R.node_ports)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (!(R.nodes[i] = strdup(hosts[i])))
            return -1;
        R.node_ports[i] = ports[i];
        R.n_nodes++;
    }
    return 0;
}

int registry_redis_start(struct event_base *base, const config_t *cfg)
{
    R.on = 1;
    R.stopping = 0;
    R.base = base;
    R.db = cfg->storage.db;
    R.password = cfg->storage.password ? strdup(cfg->storage.password) : NULL;
    R.prefix = strdup(cfg->storage.key_prefix);
    if (!R.prefix || (cfg->storage.password && !R.password))
        return -1;
    const char *tag_l = "", *tag_r = "";
    if (cfg->storage.sentinel_master) {
        R.mode = M_SENTINEL;
        R.master = strdup(cfg->storage.sentinel_master);
        R.look_password =
            cfg->storage.sentinel_password ? strdup(cfg->storage.sentinel_password) : NULL;
        if (!R.master || (cfg->storage.sentinel_password && !R.look_password) ||
            copy_nodes(cfg->storage.sentinel_hosts, cfg->storage.sentinel_ports,
                       cfg->storage.n_sentinels) != 0)
            return -1;
    } else if (cfg->storage.n_cluster) {
        /* One hash tag: the three keys on one slot, so one script writes
         * a change and its version on one master. */
        R.mode = M_CLUSTER;
        tag_l = "{";
        tag_r = "}";
        R.look_password = cfg->storage.password ? strdup(cfg->storage.password) : NULL;
        if ((cfg->storage.password && !R.look_password) ||
            copy_nodes(cfg->storage.cluster_hosts, cfg->storage.cluster_ports,
                       cfg->storage.n_cluster) != 0)
            return -1;
    } else {
        R.mode = M_ONE;
        R.port = cfg->storage.port;
        if (!(R.host = strdup(cfg->storage.host)))
            return -1;
    }
    snprintf(R.k_keys, sizeof R.k_keys, "%s%sregistry%s:keys", R.prefix, tag_l, tag_r);
    snprintf(R.k_accounts, sizeof R.k_accounts, "%s%sregistry%s:accounts", R.prefix, tag_l,
             tag_r);
    snprintf(R.k_version, sizeof R.k_version, "%s%sregistry%s:version", R.prefix, tag_l,
             tag_r);
    snprintf(R.channel, sizeof R.channel, "%sregistry", R.prefix);
    R.timer = event_new(base, -1, EV_PERSIST, on_timer, NULL);
    if (!R.timer)
        return -1;
    struct timeval tv = {0, CHECK_MS * 1000};
    event_add(R.timer, &tv);
    if (R.mode != M_ONE)
        look(); /* then connect_both, from the answer */
    connect_both();
    fetch(); /* an instance started later takes what is there at once */
    return 0;
}

void registry_redis_stop(void)
{
    if (!R.on)
        return;
    R.stopping = 1;
    if (R.timer)
        event_free(R.timer);
    R.timer = NULL;
    /* The loop has ended: free what is left; the callbacks hiredis makes
     * now (NULL replies) answer no request (R.stopping). */
    redisAsyncContext *c = R.cmd, *s = R.sub, *l = R.look;
    R.cmd = R.sub = R.look = NULL;
    if (c)
        redisAsyncFree(c);
    if (s)
        redisAsyncFree(s);
    if (l)
        redisAsyncFree(l);
    for (size_t i = 0; i < R.n_nodes; i++)
        free(R.nodes[i]);
    free(R.nodes);
    free(R.node_ports);
    free(R.host);
    free(R.password);
    free(R.prefix);
    free(R.master);
    free(R.look_password);
    R.nodes = NULL;
    R.node_ports = NULL;
    R.n_nodes = R.look_node = 0;
    R.host = R.password = R.prefix = R.master = R.look_password = NULL;
    R.looking = R.need_look = 0;
    R.on = 0;
}

int registry_redis_on(void)
{
    return R.on;
}

int registry_redis_ready(void)
{
    return R.cmd && (R.cmd->c.flags & REDIS_CONNECTED);
}

/* ---- writing ------------------------------------------------------------ */

/* One write in flight: its caller's callback. Owned by hiredis's callback
 * queue from the EVAL until on_written, which frees it (hiredis calls it
 * exactly once, with NULL when the connection goes away). */
typedef struct write_op {
    registry_redis_done_fn cb; /* NULL: nobody waits */
    void *arg;
} write_op_t;

static void on_written(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    write_op_t *op = priv;
    const redisReply *r = reply;
    int result = RR_FAILED;
    if (r && r->type == REDIS_REPLY_INTEGER)
        result = r->integer == 0 ? RR_EXISTS : RR_DONE;
    else
        redirect_error(r);
    if (result != RR_DONE && !R.stopping) {
        /* What this instance applied is not what Redis holds (an id taken
         * meanwhile, or the write lost): read Redis again, now or once it
         * answers. */
        R.seen = -1;
        fetch();
    }
    if (result == RR_FAILED && !R.stopping)
        log_msg(LOG_ERROR, "keys and accounts: a change was not written to Redis (%s)",
                r && r->type == REDIS_REPLY_ERROR ? r->str : "no answer");
    if (op->cb)
        op->cb(op->arg, R.stopping ? RR_GONE : result);
    free(op);
}

int registry_redis_write(const char *kind, const char *id, const json_t *obj, int create,
                         registry_redis_done_fn cb, void *arg)
{
    /* Whatever happens, this instance may have applied a change Redis does
     * not hold: unless it is confirmed, everything is read again. */
    R.writes++;
    if (!registry_redis_ready()) {
        R.seen = -1;
        return -1;
    }
    const char *hash = strcmp(kind, "keys") == 0 ? R.k_keys : R.k_accounts;
    char *text = obj ? json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    write_op_t *op = calloc(1, sizeof *op);
    if ((obj && !text) || !op) {
        free(text);
        free(op);
        R.seen = -1;
        return -1;
    }
    op->cb = cb;
    op->arg = arg;
    const char *mode = !obj ? "del" : create ? "create" : "set";
    if (redisAsyncCommand(R.cmd, on_written, op, "EVAL %s 2 %s %s %s %s %s", WRITE_LUA, hash,
                          R.k_version, id, mode, text ? text : "") != REDIS_OK) {
        free(text);
        free(op);
        R.seen = -1;
        return -1;
    }
    free(text);
    redisAsyncCommand(R.cmd, NULL, NULL, "PUBLISH %s %s", R.channel, id);
    return 0;
}
