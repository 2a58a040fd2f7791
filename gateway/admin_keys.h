/* gateway/admin_keys.h: /admin/keys and /admin/accounts on the admin
 * listener (docs/operations.md, "Keys and accounts at run time"). */
#ifndef RW_GATEWAY_ADMIN_KEYS_H
#define RW_GATEWAY_ADMIN_KEYS_H

#include "http/server.h"
#include "worker.h"

/* 1 when path is one of these routes (the caller checks the token first). */
int admin_keys_match(const char *path);
/* Answer the request (its body is all here: the admin listener reads
 * bodies before it calls back). Runs on worker w's loop (worker 0). */
void admin_keys_handle(worker_t *w, h1_conn_t *req);

#endif
