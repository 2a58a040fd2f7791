/*
 * gateway/registry_redis.h: the Redis side of the key registry. API-made
 * keys and accounts live in two hashes, PREFIXregistry:keys (id -> key
 * object) and PREFIXregistry:accounts (name -> account object), digests only;
 * PREFIXregistry:version counts changes (in a Cluster the three are
 * PREFIX{registry}:keys etc., one hash tag, so one slot). A change is one
 * Lua script that also bumps the version (a create writes only if the id is
 * absent), then the id is published on channel PREFIXregistry. Each
 * instance subscribes to it and also checks the version every 500 ms (so
 * one that missed a message, or started later, catches up), and when it
 * moved reads both hashes and swaps in a new snapshot (registry_apply).
 *
 * Which server: storage.address; with storage.sentinel the primary a
 * sentinel names, asked at every 500 ms check (so a failover is followed
 * within one); with storage.cluster the master of the registry's slot, read
 * from CLUSTER SLOTS at start and again after -MOVED/-ASK/-CLUSTERDOWN or a
 * lost connection (PUBLISH reaches every node of a cluster, so the
 * subscription works on that master too). When the server changes both
 * connections are remade and everything read again.
 *
 * Two hiredis async connections (one for commands, one for SUBSCRIBE, both
 * named ratewall-registry with CLIENT SETNAME), plus one to a sentinel or
 * a cluster node for the lookup, on worker 0's event base; every function here runs on that loop, except
 * registry_redis_start (before the loop runs) and registry_redis_stop (after
 * it ended).
 */
#ifndef RW_GATEWAY_REGISTRY_REDIS_H
#define RW_GATEWAY_REGISTRY_REDIS_H

#include <event2/event.h>
#include <jansson.h>

#include "config/config.h"

int registry_redis_start(struct event_base *base, const config_t *cfg);
void registry_redis_stop(void);
/* 1 when the registry runs on Redis (whether connected or not). */
int registry_redis_on(void);
/* 1 when the command connection is up. */
int registry_redis_ready(void);
/* What a write came to, given to its callback. */
enum {
    RR_DONE = 1,    /* written, the version moved */
    RR_EXISTS = 0,  /* create: the id is taken in Redis (nothing written) */
    RR_FAILED = -1, /* no answer or an error: unknown whether written */
    RR_GONE = -2,   /* the gateway is stopping: answer nobody, free only */
};
typedef void (*registry_redis_done_fn)(void *arg, int result);
/* Write one change: kind "keys" or "accounts", obj the new object (borrowed)
 * or NULL to delete; create: only if the id is not in Redis yet (atomic:
 * of two instances creating one id at once, one gets RR_EXISTS). cb (may
 * be NULL) is called once, later, on worker 0's loop. Unless the answer is
 * RR_DONE the registry is read again from Redis, so what this instance
 * applied ahead of the answer is replaced by what Redis holds. -1 (and no
 * callback) when Redis is not connected. */
int registry_redis_write(const char *kind, const char *id, const json_t *obj, int create,
                         registry_redis_done_fn cb, void *arg);

#endif
