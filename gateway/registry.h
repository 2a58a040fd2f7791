/*
 * gateway/registry.h: the keys and accounts made through the admin API.
 *
 * They are one JSON document, {"accounts": {NAME: {...}}, "keys": [{...}]}
 * in the configuration file's syntax plus "created_at" (both) and
 * "expires_at" (keys), unix seconds; raw keys never appear, only "sha256".
 * A change becomes a new configuration snapshot (config_load_with: the file
 * plus this document), handed to the workers the way a reload is: the key
 * lookup stays the snapshot's one digest table, the file's keys and the
 * API's side by side with ids unique across both. A snapshot rather than an
 * overlay the lookup consults: an API key's limits are resolved into
 * policies by the same code as the file's, its body is validated by the
 * same checks, a request sees one consistent view (no second table to
 * consult, no lock), and a reload keeps the API's items for free. The cost:
 * each change re-reads the configuration file (with a large keys_file a
 * change takes as long as a reload).
 *
 * Where the document lives: with the memory store in storage.state_file
 * (written atomically: temp file, fsync, rename); with the Redis store in
 * Redis (registry_redis.c), each instance following changes within a second.
 *
 * Threads: the document is guarded by a mutex; registry_get/registry_put may
 * be called from any thread. Changes are made on worker 0's loop (the admin
 * listener and the Redis connections run there).
 */
#ifndef RW_GATEWAY_REGISTRY_H
#define RW_GATEWAY_REGISTRY_H

#include <jansson.h>

#include "config/config.h"

/* Swap in a snapshot built from the file and doc: 0, or -1 with the
 * errors in msgs (filled either way; the caller frees it). Thread-safe. */
typedef int (*registry_apply_fn)(const json_t *doc, cfg_messages_t *msgs);

/* Load the state file (memory store) or start empty (Redis store, filled
 * by registry_redis_start). -1 with a message in err when the state file
 * exists but cannot be read or parsed. */
int registry_init(const config_t *cfg, registry_apply_fn apply, char *err, size_t errlen);
void registry_free(void);

/* A copy of the document (a new reference, never NULL unless out of memory). */
json_t *registry_get(void);
/* Apply doc: build and swap in the snapshot; when it is valid, keep doc
 * (reference taken either way) and persist it. 0; -1 with msgs when it is
 * not valid; -2 when the state file cannot be written (the change is then
 * undone). */
int registry_put(json_t *doc, cfg_messages_t *msgs);
/* Keep doc as the document without persisting (Redis store: what Redis
 * holds, already applied). Takes the reference. */
void registry_adopt(json_t *doc);
/* The apply function given to registry_init. */
int registry_apply(const json_t *doc, cfg_messages_t *msgs);

/* The key object of id in doc["keys"], or NULL; its index in *idx. */
json_t *registry_doc_key(json_t *doc, const char *id, size_t *idx);

#endif
