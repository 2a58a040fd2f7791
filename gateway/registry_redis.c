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

/* Module state, touched on worker 0's loop only. Owns both connections
 * (freed by hiredis after on_disconnect), the timer and the strings. */
static struct {
    int on;
    int unsupported;     /* storage.sentinel or cluster: not kept (registry_redis.h) */
    struct event_base *base;
    struct event *timer;
    redisAsyncContext *cmd, *sub;
    char *host, *password, *prefix;
    int port, db;
    long long seen;      /* the version last applied; -1 none yet */
    int fetching;
    int again;           /* a change was announced while fetching */
    unsigned writes;     /* bumped by each write: older fetches are stale */
    char k_keys[160], k_accounts[160], k_version[160], channel[160];
} R = {.seen = -1};

static void connect_both(void);

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    if (ac == R.cmd) {
        R.cmd = NULL;
        R.fetching = 0;
    }
    if (ac == R.sub)
        R.sub = NULL;
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    if (status != REDIS_OK) {
        if (ac == R.cmd)
            R.cmd = NULL;
        if (ac == R.sub)
            R.sub = NULL;
    }
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

static redisAsyncContext *open_one(void)
{
    redisAsyncContext *ac = redisAsyncConnect(R.host, R.port);
    if (!ac)
        return NULL;
    if (ac->err || redisLibeventAttach(ac, R.base) != REDIS_OK) {
        redisAsyncFree(ac);
        return NULL;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (R.password)
        redisAsyncCommand(ac, NULL, NULL, "AUTH %s", R.password);
    /* Named, so that CLIENT LIST tells them from the decision connections. */
    redisAsyncCommand(ac, NULL, NULL, "CLIENT SETNAME ratewall-registry");
    return ac;
}

static void connect_both(void)
{
    if (!R.cmd && (R.cmd = open_one()) && R.db)
        redisAsyncCommand(R.cmd, NULL, NULL, "SELECT %d", R.db);
    if (!R.sub && (R.sub = open_one()))
        redisAsyncCommand(R.sub, on_message, NULL, "SUBSCRIBE %s", R.channel);
}

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
    if (!r || r->type == REDIS_REPLY_ERROR)
        f->failed = 1;
    else if (r->type == REDIS_REPLY_STRING)
        f->version = strtoll(r->str, NULL, 10);
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
        if (r && (stale || R.again))
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
    if (!R.cmd || R.fetching)
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
    long long v = r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10) : 0;
    if (r->type != REDIS_REPLY_ERROR && v != R.seen)
        fetch();
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    connect_both();
    if (R.cmd && !R.fetching)
        redisAsyncCommand(R.cmd, on_check_version, NULL, "GET %s", R.k_version);
}

int registry_redis_start(struct event_base *base, const config_t *cfg)
{
    R.on = 1;
    R.base = base;
    if (cfg->storage.sentinel_master || cfg->storage.n_cluster) {
        /* The registry talks to one Redis; it does not follow a Sentinel
         * failover nor a Cluster's slots yet. */
        R.unsupported = 1;
        log_msg(LOG_WARN, "storage.%s: keys and accounts cannot be changed through the admin "
                          "API with this store (they can in the configuration file)",
                cfg->storage.sentinel_master ? "sentinel" : "cluster");
        return 0;
    }
    R.port = cfg->storage.port;
    R.db = cfg->storage.db;
    R.host = strdup(cfg->storage.host);
    R.password = cfg->storage.password ? strdup(cfg->storage.password) : NULL;
    R.prefix = strdup(cfg->storage.key_prefix);
    if (!R.host || !R.prefix || (cfg->storage.password && !R.password))
        return -1;
    snprintf(R.k_keys, sizeof R.k_keys, "%sregistry:keys", R.prefix);
    snprintf(R.k_accounts, sizeof R.k_accounts, "%sregistry:accounts", R.prefix);
    snprintf(R.k_version, sizeof R.k_version, "%sregistry:version", R.prefix);
    snprintf(R.channel, sizeof R.channel, "%sregistry", R.prefix);
    R.timer = event_new(base, -1, EV_PERSIST, on_timer, NULL);
    if (!R.timer)
        return -1;
    struct timeval tv = {0, CHECK_MS * 1000};
    event_add(R.timer, &tv);
    connect_both();
    fetch(); /* an instance started later takes what is there at once */
    return 0;
}

void registry_redis_stop(void)
{
    if (!R.on)
        return;
    if (R.timer)
        event_free(R.timer);
    R.timer = NULL;
    /* The loop has ended: free what is left without callbacks into it. */
    redisAsyncContext *c = R.cmd, *s = R.sub;
    R.cmd = R.sub = NULL;
    if (c)
        redisAsyncFree(c);
    if (s)
        redisAsyncFree(s);
    free(R.host);
    free(R.password);
    free(R.prefix);
    R.host = R.password = R.prefix = NULL;
    R.on = 0;
    R.unsupported = 0;
}

int registry_redis_on(void)
{
    return R.on;
}

int registry_redis_unsupported(void)
{
    return R.unsupported;
}

int registry_redis_ready(void)
{
    return !R.unsupported && R.cmd && (R.cmd->c.flags & REDIS_CONNECTED);
}

int registry_redis_write(const char *kind, const char *id, const json_t *obj)
{
    if (!registry_redis_ready())
        return -1;
    const char *hash = strcmp(kind, "keys") == 0 ? R.k_keys : R.k_accounts;
    R.writes++;
    redisAsyncCommand(R.cmd, NULL, NULL, "MULTI");
    if (obj) {
        char *text = json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS);
        if (!text) {
            redisAsyncCommand(R.cmd, NULL, NULL, "DISCARD");
            return -1;
        }
        redisAsyncCommand(R.cmd, NULL, NULL, "HSET %s %s %s", hash, id, text);
        free(text);
    } else {
        redisAsyncCommand(R.cmd, NULL, NULL, "HDEL %s %s", hash, id);
    }
    redisAsyncCommand(R.cmd, NULL, NULL, "INCR %s", R.k_version);
    redisAsyncCommand(R.cmd, NULL, NULL, "EXEC");
    redisAsyncCommand(R.cmd, NULL, NULL, "PUBLISH %s %s", R.channel, id);
    return 0;
}
