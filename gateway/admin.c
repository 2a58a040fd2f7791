/*
 * gateway/admin.c: the admin listener (SPEC §5), on its own address, served
 * by worker 0's event loop. Health needs no token; everything under
 * /admin/ needs `Authorization: Bearer TOKEN` whose SHA-256 is configured,
 * compared in constant time.
 */
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sys/queue.h>

#include "admin.h"
#include "gateway.h"
#include "metrics.h"

static admin_reload_fn reload_fn;

void admin_set_reload(admin_reload_fn fn)
{
    reload_fn = fn;
}

/* Admin answers are not part of any request context: plain JSON replies. */
static void reply(struct evhttp_request *req, int status, const char *reason, json_t *body)
{
    struct evbuffer *b = evbuffer_new();
    char *text = json_dumps(body, JSON_COMPACT);
    if (b && text)
        evbuffer_add(b, text, strlen(text));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "application/json");
    evhttp_send_reply(req, status, reason, b);
    free(text);
    if (b)
        evbuffer_free(b);
    json_decref(body);
}

static void reply_error(struct evhttp_request *req, int status, const char *reason,
                        const char *type, const char *code, const char *msg, json_t *details)
{
    reply(req, status, reason,
          json_pack("{s:{s:s, s:s, s:s, s:o}}", "error", "type", type, "code", code,
                    "message", msg, "details", details ? details : json_object()));
}

/* 1 when the request carries the admin token; else answers 401/403. */
static int authorized(worker_t *w, struct evhttp_request *req)
{
    const config_t *c = w->cfg;
    const char *a = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!a || strncasecmp(a, "Bearer ", 7) != 0 || !a[7]) {
        reply_error(req, 401, "Unauthorized", "authentication_error", "MISSING_ADMIN_TOKEN",
                    "Send Authorization: Bearer ADMIN_TOKEN.", NULL);
        return 0;
    }
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)a + 7, strlen(a + 7), d);
    int ok = c->admin.has_token && CRYPTO_memcmp(d, c->admin.token_sha256, sizeof d) == 0;
    OPENSSL_cleanse(d, sizeof d);
    if (!ok)
        reply_error(req, 403, "Forbidden", "permission_error", "INVALID_ADMIN_TOKEN",
                    "The admin token is not valid.", NULL);
    return ok;
}

typedef struct done_ctx {
    struct evhttp_request *req;
} done_ctx_t;

static void on_job_done(void *arg, int found)
{
    done_ctx_t *d = arg;
    if (found > 0)
        reply(d->req, 200, "OK", json_pack("{s:b}", "released", 1));
    else if (found == 0)
        reply_error(d->req, 404, "Not Found", "not_found_error", "JOB_NOT_FOUND",
                    "No lease is held for this job.", NULL);
    else
        reply_error(d->req, 503, "Service Unavailable", "service_unavailable",
                    "LIMITER_UNAVAILABLE", "The store cannot be reached.", NULL);
    free(d);
}

static void metrics(worker_t *w, struct evhttp_request *req);

static void admin_handle(struct evhttp_request *req, void *arg)
{
    worker_t *w = arg;
    const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
    const char *path = u ? evhttp_uri_get_path(u) : "/";
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    if (!path)
        path = "/";

    if (strcmp(path, "/healthz") == 0 && m == EVHTTP_REQ_GET) {
        reply(req, 200, "OK", json_pack("{s:s}", "status", "ok"));
        return;
    }
    if (strcmp(path, "/readyz") == 0 && m == EVHTTP_REQ_GET) {
        if (store_ready(w->store))
            reply(req, 200, "OK", json_pack("{s:s}", "status", "ready"));
        else
            reply_error(req, 503, "Service Unavailable", "service_unavailable",
                        "LIMITER_UNAVAILABLE", "The store cannot be reached.", NULL);
        return;
    }
    if (strcmp(path, "/metrics") == 0 && m == EVHTTP_REQ_GET) {
        metrics(w, req);
        return;
    }
    if (strncmp(path, "/admin/", 7) != 0) {
        reply_error(req, 404, "Not Found", "not_found_error", "NOT_FOUND",
                    "No such admin route.", NULL);
        return;
    }
    if (!authorized(w, req))
        return;

    if (strcmp(path, "/admin/usage") == 0 && m == EVHTTP_REQ_GET) {
        struct evkeyvalq q;
        TAILQ_INIT(&q);
        const char *query = evhttp_uri_get_query(u);
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
    if (strcmp(path, "/admin/reload") == 0 && m == EVHTTP_REQ_POST) {
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
    if (m == EVHTTP_REQ_POST && n > pl + sl && strncmp(path, prefix, pl) == 0 &&
        strcmp(path + n - sl, suffix) == 0) {
        char id[80];
        size_t idlen = n - pl - sl;
        if (idlen >= sizeof id || memchr(path + pl, '/', idlen)) {
            reply_error(req, 404, "Not Found", "not_found_error", "JOB_NOT_FOUND",
                        "No lease is held for this job.", NULL);
            return;
        }
        memcpy(id, path + pl, idlen);
        id[idlen] = '\0';
        done_ctx_t *d = malloc(sizeof *d);
        if (!d) {
            reply_error(req, 503, "Service Unavailable", "api_error", "INTERNAL_ERROR",
                        "Out of memory.", NULL);
            return;
        }
        d->req = req;
        store_job_done(w->store, id, on_job_done, d);
        return;
    }
    reply_error(req, 404, "Not Found", "not_found_error", "NOT_FOUND", "No such admin route.",
                NULL);
}

static void metrics(worker_t *w, struct evhttp_request *req)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        evhttp_send_error(req, 503, "Out of memory");
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
            "ratewall_store_connects_total %lu\n",
            atomic_load(&rs->decisions), atomic_load(&rs->unavailable),
            atomic_load(&rs->fallback_decisions), atomic_load(&rs->connects));
    evbuffer_add_printf(b, "# HELP ratewall_store_ready 1 when the store answers.\n"
                           "# TYPE ratewall_store_ready gauge\nratewall_store_ready %d\n",
                        store_ready(w->store));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4");
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

struct evhttp *admin_start(worker_t *w, const config_t *c)
{
    struct evhttp *h = evhttp_new(w->base);
    if (!h)
        return NULL;
    evhttp_set_allowed_methods(h, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
    evhttp_set_max_body_size(h, 64 * 1024);
    evhttp_set_timeout(h, 30);
    evhttp_set_gencb(h, admin_handle, w);
    if (!evhttp_bind_socket_with_handle(h, c->admin.listen_host, c->admin.listen_port)) {
        evhttp_free(h);
        return NULL;
    }
    return h;
}
