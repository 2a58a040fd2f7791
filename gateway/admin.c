/*
 * gateway/admin.c: the admin listener, on its own address, served
 * by worker 0's event loop. Health needs no token; everything under
 * /admin/ needs `Authorization: Bearer TOKEN` whose SHA-256 is configured,
 * compared in constant time.
 */
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sys/queue.h>
#include <unistd.h>

#include "admin.h"
#include "admin_keys.h"
#include "auth.h"
#include "errjson.h"
#include "after.h"
#include "log.h"
#include "request.h"
#include "metrics.h"
#include "query.h"
#include "status.h"

static admin_reload_fn reload_fn;

void admin_set_reload(admin_reload_fn fn)
{
    reload_fn = fn;
}

/* Admin answers are not part of any request context: plain JSON replies. */
static void reply(h1_conn_t *req, int status, const char *reason, json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT);
    h1_add_header(req, "Content-Type", "application/json");
    h1_reply(req, status, reason, text, text ? strlen(text) : 0);
    free(text);
    json_decref(body);
}

static void reply_error(h1_conn_t *req, int status, const char *reason,
                        const char *type, const char *code, const char *msg, json_t *details)
{
    reply(req, status, reason, error_json(type, code, msg, details));
}

/* 1 when the request carries the admin token; else answers 401/403. */
static int authorized(worker_t *w, h1_conn_t *req)
{
    const config_t *c = w->cfg;
    size_t len = 0;
    const char *token = auth_bearer(req, &len);
    if (!token) {
        reply_error(req, 401, "Unauthorized", "authentication_error", "MISSING_ADMIN_TOKEN",
                    "Send Authorization: Bearer ADMIN_TOKEN.", NULL);
        return 0;
    }
    unsigned char d[AUTH_DIGEST_LEN];
    auth_digest(token, len, d);
    int ok = c->admin.has_token && auth_digest_equal(d, c->admin.token_sha256);
    auth_wipe(d, sizeof d);
    if (!ok)
        reply_error(req, 403, "Forbidden", "permission_error", "INVALID_ADMIN_TOKEN",
                    "The admin token is not valid.", NULL);
    return ok;
}

/* Ownership: holds the open exchange of req until on_job_done ends it. */
typedef struct done_ctx {
    h1_conn_t *req;
    char account[257]; /* "" when none was named */
    char name[65];     /* the store's name of the job id */
} done_ctx_t;

static void on_job_done(void *arg, int found)
{
    done_ctx_t *d = arg;
    if (found > 0) {
        status_job_done(d->account[0] ? d->account : NULL, d->name);
        reply(d->req, 200, "OK", json_pack("{s:b}", "released", 1));
    }
    else if (found == 0)
        reply_error(d->req, 404, "Not Found", "not_found_error", "JOB_NOT_FOUND",
                    "No lease is held for this job.", NULL);
    else if (found == -2)
        reply_error(d->req, 400, "Bad Request", "invalid_request_error", "INVALID_REQUEST",
                    "Several accounts hold a job of this id: name one with ?account=ID.",
                    NULL);
    else
        reply_error(d->req, 503, "Service Unavailable", "service_unavailable",
                    "LIMITER_UNAVAILABLE", "The store cannot be reached.", NULL);
    free(d);
}

static void metrics(worker_t *w, h1_conn_t *req);

/* The status page: everything it needs is in it, and the browser is told
 * to fetch nothing else (it reads /admin/status, same origin). */
static void status_page(h1_conn_t *req)
{
    h1_add_header(req, "Content-Type", "text/html; charset=utf-8");
    h1_add_header(req, "Content-Security-Policy",
                  "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                  "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                  "frame-ancestors 'none'");
    h1_add_header(req, "Cache-Control", "no-store");
    h1_add_header(req, "X-Content-Type-Options", "nosniff");
    h1_reply(req, 200, "OK", rw_status_html, strlen(rw_status_html));
}

static void admin_handle(h1_conn_t *req, void *arg)
{
    worker_t *w = arg;
    const char *path = h1_path(req);
    enum h1_method m = h1_method(req);
    if (admin_keys_match(path)) { /* keys and accounts at run time: admin_keys.c */
        if (authorized(w, req))
            admin_keys_handle(w, req);
        return;
    }
    if (m != H1_GET && m != H1_POST && m != H1_HEAD) {
        reply_error(req, 405, "Method Not Allowed", "invalid_request_error",
                    "METHOD_NOT_ALLOWED", "The admin listener takes GET and POST.", NULL);
        return;
    }
    if (m == H1_HEAD)
        m = H1_GET;

    if (strcmp(path, "/healthz") == 0 && m == H1_GET) {
        reply(req, 200, "OK", json_pack("{s:s}", "status", "ok"));
        return;
    }
    if (strcmp(path, "/readyz") == 0 && m == H1_GET) {
        if (store_ready(w->store))
            reply(req, 200, "OK", json_pack("{s:s}", "status", "ready"));
        else
            reply_error(req, 503, "Service Unavailable", "service_unavailable",
                        "LIMITER_UNAVAILABLE", "The store cannot be reached.", NULL);
        return;
    }
    if (strcmp(path, "/metrics") == 0 && m == H1_GET) {
        metrics(w, req);
        return;
    }
    if (strcmp(path, "/") == 0 && m == H1_GET) {
        status_page(req);
        return;
    }
    if (strncmp(path, "/admin/", 7) != 0) {
        reply_error(req, 404, "Not Found", "not_found_error", "NOT_FOUND",
                    "No such admin route.", NULL);
        return;
    }
    if (!authorized(w, req))
        return;

    if (strcmp(path, "/admin/usage") == 0 && m == H1_GET) {
        struct evkeyvalq q;
        TAILQ_INIT(&q);
        const char *query = h1_query(req);
        if (query)
            evhttp_parse_query_str(query, &q);
        const char *key = evhttp_find_header(&q, "key");
        const char *acct = evhttp_find_header(&q, "account");
        if (!key == !acct)
            reply_error(req, 400, "Bad Request", "invalid_request_error", "INVALID_REQUEST",
                        "Give exactly one of ?key=ID or ?account=ID.", NULL);
        else
            request_usage_start(w, req, key, acct);
        evhttp_clear_headers(&q);
        return;
    }
    if (strcmp(path, "/admin/status") == 0 && m == H1_GET) {
        h1_add_header(req, "Cache-Control", "no-store");
        reply(req, 200, "OK", status_json(w));
        return;
    }
    if (strcmp(path, "/admin/reload") == 0 && m == H1_POST) {
        cfg_messages_t msgs = {0};
        int ok = reload_fn && reload_fn(&msgs) == 0;
        if (ok) {
            reply(req, 200, "OK", json_pack("{s:b}", "reloaded", 1));
        } else {
            json_t *errs = json_array();
            for (size_t i = 0; i < msgs.n_errors; i++)
                json_array_append_new(errs, json_string(msgs.errors[i]));
            reply_error(req, 400, "Bad Request", "invalid_request_error", "INVALID_CONFIG",
                        "The configuration file is not valid; the running one stays.",
                        json_pack("{s:o}", "errors", errs));
        }
        cfg_messages_free(&msgs);
        return;
    }
    const char *prefix = "/admin/jobs/", *suffix = "/done";
    size_t pl = strlen(prefix), sl = strlen(suffix), n = strlen(path);
    if (m == H1_POST && n > pl + sl && strncmp(path, prefix, pl) == 0 &&
        strcmp(path + n - sl, suffix) == 0) {
        /* The id is percent-decoded: an id holding '/' comes as %2F. */
        char id[256 + 1], account[256 + 1];
        size_t idlen = query_decode(path + pl, n - pl - sl, 0, id, sizeof id - 1);
        size_t alen = 0;
        int na = query_param(h1_query(req), "account", account, sizeof account, &alen);
        if (na > 1 || (na == 1 && (alen == 0 || alen >= sizeof account ||
                                   memchr(account, '\0', alen)))) {
            reply_error(req, 400, "Bad Request", "invalid_request_error", "INVALID_REQUEST",
                        na > 1 ? "Give ?account=ID once." : "?account= names no account.",
                        NULL);
            return;
        }
        /* Account names are [A-Za-z0-9_.-]: another one holds nothing. */
        int acct_ok = na == 0 || (alen <= 64 && strspn(account, "abcdefghijklmnopqrstuvwxyz"
                                                                "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                                "0123456789_.-") == alen);
        if (idlen == 0 || idlen > 256 || !acct_ok) {
            reply_error(req, 404, "Not Found", "not_found_error", "JOB_NOT_FOUND",
                        "No lease is held for this job.", NULL);
            return;
        }
        char name[65];
        after_job_name(id, idlen, name);
        done_ctx_t *d = malloc(sizeof *d);
        if (!d) {
            reply_error(req, 503, "Service Unavailable", "api_error", "INTERNAL_ERROR",
                        "Out of memory.", NULL);
            return;
        }
        d->req = req;
        snprintf(d->account, sizeof d->account, "%s", na == 1 ? account : "");
        memcpy(d->name, name, sizeof d->name);
        store_job_done(w->store, na == 1 ? account : NULL, name, on_job_done, d);
        return;
    }
    reply_error(req, 404, "Not Found", "not_found_error", "NOT_FOUND", "No such admin route.",
                NULL);
}

static void metrics(worker_t *w, h1_conn_t *req)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        h1_reply(req, 503, "Service Unavailable", NULL, 0);
        return;
    }
    evbuffer_add_printf(b, "# HELP ratewall_up 1 while the gateway runs.\n"
                           "# TYPE ratewall_up gauge\nratewall_up 1\n");
    metrics_write(b);
    const store_redis_stats_t *rs = store_redis_stats(w->store->store);
    if (rs)
        evbuffer_add_printf(
            b,
            "# HELP ratewall_store_decisions_total Decisions answered by Redis.\n"
            "# TYPE ratewall_store_decisions_total counter\n"
            "ratewall_store_decisions_total %lu\n"
            "# HELP ratewall_store_unavailable_total Store calls Redis could not answer.\n"
            "# TYPE ratewall_store_unavailable_total counter\n"
            "ratewall_store_unavailable_total %lu\n"
            "# HELP ratewall_store_local_decisions_total Decisions counted in local memory "
            "while Redis was away (on_error allow): limits were enforced per instance.\n"
            "# TYPE ratewall_store_local_decisions_total counter\n"
            "ratewall_store_local_decisions_total %lu\n"
            "# HELP ratewall_store_connects_total Connection attempts to Redis.\n"
            "# TYPE ratewall_store_connects_total counter\n"
            "ratewall_store_connects_total %lu\n"
            "# HELP ratewall_store_debt_dropped_total Charges counted locally while Redis "
            "was away that will not reach Redis (more counters than one outage keeps).\n"
            "# TYPE ratewall_store_debt_dropped_total counter\n"
            "ratewall_store_debt_dropped_total %lu\n",
            atomic_load(&rs->decisions), atomic_load(&rs->unavailable),
            atomic_load(&rs->fallback_decisions), atomic_load(&rs->connects),
            atomic_load(&rs->debt_dropped));
    evbuffer_add_printf(b, "# HELP ratewall_store_ready 1 when the store answers.\n"
                           "# TYPE ratewall_store_ready gauge\nratewall_store_ready %d\n",
                        store_ready(w->store));
    h1_add_header(req, "Content-Type", "text/plain; version=0.0.4");
    h1_reply_buffer(req, 200, "OK", b);
    evbuffer_free(b);
}

h1_server_t *admin_start(worker_t *w, int fd)
{
    h1_limits_t lim = {.max_header_bytes = 16384, .max_body_bytes = 64 * 1024,
                       .timeout_ms = 30000};
    h1_server_t *h = h1_server_new(w->base, fd, &lim, admin_handle, NULL, w);
    if (!h)
        close(fd);
    return h;
}
