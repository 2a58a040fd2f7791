/* gateway/admin.h: the admin listener (docs/operations.md, "Admin listener"). */
#ifndef RW_GATEWAY_ADMIN_H
#define RW_GATEWAY_ADMIN_H

#include "config/config.h"
#include "http/server.h"
#include "worker.h"

/* Reload the configuration file: 0 and swapped in, or -1 with the errors in
 * msgs (filled either way; the caller frees it). Thread-safe. */
typedef int (*admin_reload_fn)(cfg_messages_t *msgs);
void admin_set_reload(admin_reload_fn fn);

/* Serve the admin listener on listening socket fd (owned from now on,
 * closed on failure) from worker w's loop; NULL when it cannot be set up. */
h1_server_t *admin_start(worker_t *w, int fd);

#endif
