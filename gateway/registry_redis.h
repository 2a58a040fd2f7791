/*
 * gateway/registry_redis.h: the Redis side of the key registry. API-made
 * keys and accounts live in two hashes, PREFIXregistry:keys (id -> key
 * object) and PREFIXregistry:accounts (name -> account object), digests only;
 * PREFIXregistry:version counts changes. A change is written in one
 * MULTI/EXEC that also bumps the version, then the version is published on
 * channel PREFIXregistry. Each instance subscribes to it and also checks the
 * version every 500 ms (so one that missed a message, or started later,
 * catches up), and when it moved reads both hashes and swaps in a new
 * snapshot (registry_apply).
 *
 * Two hiredis async connections (one for commands, one for SUBSCRIBE, both
 * named ratewall-registry with CLIENT SETNAME) on
 * worker 0's event base; every function here runs on that loop, except
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
/* With storage.sentinel or storage.cluster the registry is not kept:
 * changes through the admin API are refused (501). */
int registry_redis_unsupported(void);
/* 1 when the registry runs on Redis (whether connected or not). */
int registry_redis_on(void);
/* 1 when the command connection is up. */
int registry_redis_ready(void);
/* Write one change: kind "keys" or "accounts", obj the new object (borrowed)
 * or NULL to delete. -1 when Redis is not connected. */
int registry_redis_write(const char *kind, const char *id, const json_t *obj);

#endif
