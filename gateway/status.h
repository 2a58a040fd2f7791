/*
 * gateway/status.h: what the status page shows (GET / and GET /admin/status
 * on the admin listener; docs/operations.md, "Status page").
 *
 * The counting calls run on the workers' hot path and take no lock: each
 * thread counts into a block of its own (requests and refusals per endpoint
 * and minute, store latency per minute, a bounded table of refused keys and
 * one of the accounts' levels), and status_json() sums the blocks of every
 * thread when it is asked. Strings are copied into the blocks (nothing
 * points into a config snapshot that a reload may free); a table entry that
 * is being rewritten while it is read is skipped (a sequence number per
 * entry). Jobs held are rare events and kept under a mutex.
 */
#ifndef RW_GATEWAY_STATUS_H
#define RW_GATEWAY_STATUS_H

#include <stdint.h>

#include <jansson.h>

#include "worker.h"

/* A finished request of endpoint (its name; borrowed for the call),
 * refused (a 429) or not. gen and the name's pointer identify the endpoint
 * of one config snapshot, so its slot is looked up once per snapshot. */
void status_request(uint64_t gen, const char *endpoint, int refused);
/* A decision's store latency in microseconds. */
void status_store_latency(int64_t us);
/* A key refused by limit (identity); strings borrowed for the call. */
void status_refused(const char *key_id, const char *account, const char *limit);
/* An account's fullest limit at a decision: used (after the request) of
 * limit, both in the limit's unit; money: the unit is millionths. */
void status_level(const char *account, const char *limit_ident, int64_t used, int64_t limit,
                  int money);
/* Jobs that hold leases, as this instance saw them start and end. */
void status_job_held(const char *account, const char *job, int64_t max_seconds);
void status_job_done(const char *account, const char *job); /* account NULL: any */

/* The document of GET /admin/status (a new reference), read from worker
 * w's thread (for its store). */
json_t *status_json(worker_t *w);

/* The page served at GET / (NUL-terminated; generated from
 * gateway/status.html at build time). */
extern const char rw_status_html[];

#endif
