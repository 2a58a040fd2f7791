/*
 * gateway/admin_keys.c: keys and accounts at run time on the admin listener.
 *
 *   POST   /admin/keys            create (the gateway makes the key unless
 *                                 "sha256" is given; the raw key is shown once)
 *   GET    /admin/keys[?account=] list
 *   GET    /admin/keys/{id}       one
 *   PATCH  /admin/keys/{id}       change disabled, limits, account, expires_at
 *   DELETE /admin/keys/{id}       revoke
 *   and the same on /admin/accounts[/{id}] (id, tier, limits, disabled).
 *
 * A change is a new document of API-made keys and accounts (registry.h),
 * validated by building the snapshot it makes with the configuration file;
 * only a valid one is kept, persisted (state file, or Redis) and swapped in.
 * Keys and accounts the file defines answer 409 MANAGED_BY_FILE to changes.
 */
#include "admin_keys.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "auth.h"
#include "errjson.h"
#include "log.h"
#include "query.h"
#include "registry.h"
#include "registry_redis.h"

#define ID_MAX 64

static void reply(h1_conn_t *req, int status, const char *reason, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    h1_add_header(req, "Content-Type", "application/json");
    h1_reply(req, status, reason, text, text ? strlen(text) : 0);
    free(text);
    json_decref(body);
}

static void fail(h1_conn_t *req, int status, const char *reason, const char *type,
                 const char *code, const char *msg, json_t *details)
{
    reply(req, status, reason, error_json(type, code, msg, details));
}

static void bad(h1_conn_t *req, json_t *errors)
{
    fail(req, 400, "Bad Request", "invalid_request_error", "INVALID_REQUEST",
         "The request body is not valid.", json_pack("{s:o}", "errors", errors));
}

static void bad1(h1_conn_t *req, const char *fmt, const char *arg)
{
    char line[256];
    snprintf(line, sizeof line, fmt, arg);
    bad(req, json_pack("[s]", line));
}

/* ------------------------------------------------------------------------
 * Times: RFC 3339 in, RFC 3339 (UTC) out.
 * ------------------------------------------------------------------------ */

/* Seconds since the epoch, or -1 when s is not an RFC 3339 date-time. */
static int64_t rfc3339_parse(const char *s)
{
    int Y, M, D, h, m, sec, n = 0;
    if (sscanf(s, "%4d-%2d-%2d%n", &Y, &M, &D, &n) != 3 || n != 10)
        return -1;
    if (s[10] != 'T' && s[10] != 't' && s[10] != ' ')
        return -1;
    int n2 = 0;
    if (sscanf(s + 11, "%2d:%2d:%2d%n", &h, &m, &sec, &n2) != 3 || n2 != 8)
        return -1;
    const char *p = s + 19;
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p))
            return -1;
        while (isdigit((unsigned char)*p))
            p++;
    }
    long off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om, n3 = 0;
        if (sscanf(p + 1, "%2d:%2d%n", &oh, &om, &n3) != 2 || n3 != 5 || oh > 23 || om > 59)
            return -1;
        off = (oh * 60L + om) * 60L * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return -1;
    }
    if (*p || M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60)
        return -1;
    struct tm tm = {.tm_year = Y - 1900, .tm_mon = M - 1, .tm_mday = D, .tm_hour = h,
                    .tm_min = m, .tm_sec = sec};
    time_t t = timegm(&tm);
    if (tm.tm_mday != D) /* February 30th and the like */
        return -1;
    return (int64_t)t - off;
}

static json_t *rfc3339(int64_t t)
{
    if (!t)
        return json_null();
    time_t tt = (time_t)t;
    struct tm tm;
    char b[32];
    gmtime_r(&tt, &tm);
    strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return json_string(b);
}

/* ------------------------------------------------------------------------
 * Views.
 * ------------------------------------------------------------------------ */

static json_t *money(int64_t micros)
{
    char b[48];
    snprintf(b, sizeof b, "%lld.%06lld", (long long)(micros / 1000000),
             (long long)(micros % 1000000));
    size_t n = strlen(b);
    while (n > 0 && b[n - 1] == '0' && b[n - 3] != '.')
        b[--n] = '\0';
    return json_string(b);
}

/* The file's limits in the file's syntax. */
static json_t *rules_json(const lim_rule_t *r, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) {
        json_t *o = json_pack("{s:s,s:s}", "metric", lim_metric_name(r[i].metric), "scope",
                              lim_scope_name(r[i].scope));
        if (!o)
            continue;
        if (r[i].per != LIM_PER_NONE)
            json_object_set_new(o, "per", json_string(lim_per_name(r[i].per)));
        if (r[i].removed)
            json_object_set_new(o, "limit", json_null());
        else if (r[i].metric == LIM_SPEND)
            json_object_set_new(o, "limit", money(r[i].limit));
        else
            json_object_set_new(o, "limit", json_integer(r[i].limit));
        if (r[i].ep_names && *r[i].ep_names) {
            json_t *eps = json_array();
            char *dup = strdup(r[i].ep_names), *save = NULL;
            for (char *t = dup ? strtok_r(dup, ",", &save) : NULL; t;
                 t = strtok_r(NULL, ",", &save))
                json_array_append_new(eps, json_string(t));
            free(dup);
            json_object_set_new(o, "endpoints", eps);
        }
        json_array_append_new(a, o);
    }
    return a;
}

static json_t *doc_account(json_t *doc, const char *name)
{
    return json_object_get(json_object_get(doc, "accounts"), name);
}

static json_t *key_view(const config_t *c, const cfg_key_t *k, json_t *doc)
{
    json_t *src = k->from_api ? registry_doc_key(doc, k->id, NULL) : NULL;
    json_t *limits = src && json_object_get(src, "limits")
                         ? json_deep_copy(json_object_get(src, "limits"))
                         : rules_json(k->rules, k->n_rules);
    return json_pack("{s:s,s:s,s:b,s:o,s:o,s:o,s:s}", "id", k->id, "account",
                     c->accounts[k->account].name, "disabled", k->disabled, "expires_at",
                     rfc3339(k->expires_at), "created_at", rfc3339(k->created_at), "limits",
                     limits, "source", k->from_api ? "api" : "file");
}

static json_t *account_view(const config_t *c, const cfg_account_t *a, json_t *doc)
{
    json_t *src = a->from_api ? doc_account(doc, a->name) : NULL;
    json_t *limits = src && json_object_get(src, "limits")
                         ? json_deep_copy(json_object_get(src, "limits"))
                         : rules_json(a->rules, a->n_rules);
    return json_pack("{s:s,s:s,s:b,s:o,s:o,s:s}", "id", a->name, "tier",
                     c->tiers[a->tier].name, "disabled", a->disabled, "created_at",
                     rfc3339(a->created_at), "limits", limits, "source",
                     a->from_api ? "api" : "file");
}

/* ------------------------------------------------------------------------
 * Bodies.
 * ------------------------------------------------------------------------ */

static void add_err(json_t *errs, const char *fmt, const char *a, const char *b)
{
    char line[300];
    snprintf(line, sizeof line, fmt, a, b);
    json_array_append_new(errs, json_string(line));
}

static int valid_id(const char *s)
{
    size_t n = strlen(s);
    return n >= 1 && n <= ID_MAX &&
           strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") == n;
}

/* Check the fields of body against allowed (a NULL-ended list of
 * "name:type" with type s string, b boolean, a array, n string-or-null),
 * adding one line per problem to errs. */
static void check_fields(const json_t *body, const char *const allowed[], json_t *errs)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)body, k, v) {
        char t = 0;
        for (size_t i = 0; allowed[i]; i++) {
            size_t n = strlen(allowed[i]) - 2;
            if (strncmp(allowed[i], k, n) == 0 && k[n] == '\0')
                t = allowed[i][n + 1];
        }
        if (!t) {
            add_err(errs, "unknown field \"%s\"%s", k, "");
            continue;
        }
        int ok = t == 's' ? json_is_string(v)
                 : t == 'b' ? json_is_boolean(v)
                 : t == 'a' ? json_is_array(v)
                            : json_is_string(v) || json_is_null(v);
        if (!ok)
            add_err(errs, "\"%s\": expected %s", k,
                    t == 's' ? "a string" : t == 'b' ? "a boolean" : t == 'a' ? "an array"
                                                                      : "a string or null");
    }
}

/* The body as an object, or NULL (answered). */
static json_t *read_body(h1_conn_t *req)
{
    struct evbuffer *b = h1_body(req);
    size_t n = b ? evbuffer_get_length(b) : 0;
    const char *text = n ? (const char *)evbuffer_pullup(b, -1) : "";
    json_error_t je;
    json_t *o = json_loadb(text, n, JSON_REJECT_DUPLICATES, &je);
    if (!o) {
        char line[300];
        snprintf(line, sizeof line, "body:%d:%d: invalid JSON: %s", je.line, je.column, je.text);
        bad(req, json_pack("[s]", line));
        return NULL;
    }
    if (!json_is_object(o)) {
        bad1(req, "the body must be a JSON object, got %s", json_kind(o));
        json_decref(o);
        return NULL;
    }
    return o;
}

/* "expires_at" as given (string, or null to clear) into the stored
 * object; 0 ok, -1 with a line in errs. */
static int take_expiry(json_t *body, json_t *stored, json_t *errs)
{
    json_t *v = json_object_get(body, "expires_at");
    if (!v)
        return 0;
    if (json_is_null(v)) {
        json_object_del(stored, "expires_at");
        return 0;
    }
    int64_t t = json_is_string(v) ? rfc3339_parse(json_string_value(v)) : -1;
    if (t <= 0) {
        add_err(errs, "\"expires_at\": %s is not an RFC 3339 date-time "
                      "(like 2030-01-31T12:00:00Z)",
                json_is_string(v) ? json_string_value(v) : "the value", "");
        return -1;
    }
    json_object_set_new(stored, "expires_at", json_integer(t));
    return 0;
}

/* Apply doc (reference taken); on refusal answer 400 with the loader's
 * messages, their FILE:LINE:COL part left out (they are about this body). */
static int commit(h1_conn_t *req, const config_t *c, json_t *doc)
{
    cfg_messages_t m = {0};
    int rc = registry_put(doc, &m);
    if (rc == 0 || rc == -2) {
        cfg_messages_free(&m);
        if (rc == -2)
            fail(req, 503, "Service Unavailable", "api_error", "INTERNAL_ERROR",
                 "The state file cannot be written: nothing was changed.", NULL);
        return rc;
    }
    json_t *errs = json_array();
    size_t pl = strlen(c->path);
    for (size_t i = 0; i < m.n_errors; i++) {
        const char *e = m.errors[i];
        if (strncmp(e, c->path, pl) == 0 && e[pl] == ':') {
            const char *p = e + pl + 1;
            p += strspn(p, "0123456789");
            if (*p == ':')
                p++;
            p += strspn(p, "0123456789");
            if (*p == ':' && p[1] == ' ')
                e = p + 2;
        }
        json_array_append_new(errs, json_string(e));
    }
    if (!json_array_size(errs))
        json_array_append_new(errs, json_string("the change cannot be applied"));
    bad(req, errs);
    cfg_messages_free(&m);
    return -1;
}

static int sync_write(const char *kind, const char *id, const json_t *obj)
{
    if (!registry_redis_on())
        return 0;
    if (registry_redis_write(kind, id, obj, 0, NULL, NULL) != 0) {
        log_msg(LOG_ERROR, "the change of %s \"%s\" could not be written to Redis", kind, id);
        return -1;
    }
    return 0;
}

static int store_down(h1_conn_t *req)
{
    if (registry_redis_on() && !registry_redis_ready()) {
        fail(req, 503, "Service Unavailable", "service_unavailable", "LIMITER_UNAVAILABLE",
             "The store cannot be reached: keys and accounts cannot be changed now.", NULL);
        return 1;
    }
    return 0;
}

/* A create on the Redis store: applied here already (commit), answered
 * only once Redis says whether the id was free there, so that of two
 * instances creating one id at once the second gets 409 as on one
 * instance. Owned by the write in flight (registry_redis_write's callback
 * frees it); req stays open until then (the server keeps a connection
 * whose exchange is open, even when the client left). */
typedef struct pending_create {
    h1_conn_t *req;
    json_t *ok;        /* the 201 body (owned) */
    int key;           /* 1: a key, 0: an account */
    char id[ID_MAX + 2];
    char account[ID_MAX + 2];
} pending_create_t;

/* Take back a create that Redis did not confirm: what it added here is
 * removed now (the registry is read again from Redis as well, which brings
 * the other instance's item or, if the write did land, this one). */
static void uncreate(const pending_create_t *p)
{
    json_t *doc = registry_get();
    size_t idx;
    if (p->key && registry_doc_key(doc, p->id, &idx))
        json_array_remove(json_object_get(doc, "keys"), idx);
    else if (!p->key)
        json_object_del(json_object_get(doc, "accounts"), p->id);
    cfg_messages_t m = {0};
    if (registry_put(doc, &m) != 0)
        log_msg(LOG_ERROR, "admin: the %s \"%s\" Redis did not take could not be taken back "
                "here (until the registry is read again)", p->key ? "key" : "account", p->id);
    cfg_messages_free(&m);
}

static void on_created(void *arg, int result)
{
    pending_create_t *p = arg;
    if (result == RR_EXISTS || result == RR_FAILED)
        uncreate(p);
    if (result == RR_DONE) {
        reply(p->req, 201, "Created", p->ok);
        p->ok = NULL;
        if (p->key)
            log_msg(LOG_INFO, "admin: key \"%s\" of account \"%s\" created", p->id,
                    p->account);
        else
            log_msg(LOG_INFO, "admin: account \"%s\" created", p->id);
    } else if (result == RR_EXISTS) {
        fail(p->req, 409, "Conflict", "invalid_request_error", "ALREADY_EXISTS",
             p->key ? "A key of this id exists already." : "An account of this id exists already.",
             json_pack("{s:s}", "id", p->id));
    } else if (result == RR_FAILED) {
        fail(p->req, 503, "Service Unavailable", "service_unavailable", "LIMITER_UNAVAILABLE",
             "The store did not confirm the change: it may not have been made.", NULL);
    }
    if (p->ok && json_object_get(p->ok, "key")) {
        /* The raw key, never shown: not left in freed memory either. */
        char *k = (char *)json_string_value(json_object_get(p->ok, "key"));
        OPENSSL_cleanse(k, strlen(k));
    }
    json_decref(p->ok);
    free(p);
}

/* Answer a create that commit() applied: 201 at once with the memory
 * store, after Redis's word with the Redis store. ok (the 201 body) is
 * taken. */
static void created(h1_conn_t *req, int key, const char *id, const char *acct, json_t *ok,
                    const json_t *stored)
{
    if (!registry_redis_on()) {
        reply(req, 201, "Created", ok);
        if (key)
            log_msg(LOG_INFO, "admin: key \"%s\" of account \"%s\" created", id, acct);
        else
            log_msg(LOG_INFO, "admin: account \"%s\" created", id);
        return;
    }
    pending_create_t *p = calloc(1, sizeof *p);
    if (p) {
        p->req = req;
        p->ok = ok;
        p->key = key;
        snprintf(p->id, sizeof p->id, "%s", id);
        snprintf(p->account, sizeof p->account, "%s", acct ? acct : "");
    }
    if (!p || registry_redis_write(key ? "keys" : "accounts", id, stored, 1, on_created, p) != 0) {
        log_msg(LOG_ERROR, "the creation of %s \"%s\" could not be written to Redis",
                key ? "key" : "account", id);
        if (p)
            on_created(p, RR_FAILED);
        else
            json_decref(ok);
        if (!p)
            fail(req, 503, "Service Unavailable", "service_unavailable", "LIMITER_UNAVAILABLE",
                 "The store did not confirm the change: it may not have been made.", NULL);
    }
}

static void hex(const unsigned char *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* ------------------------------------------------------------------------
 * Keys.
 * ------------------------------------------------------------------------ */

static const char *const key_create_fields[] = {"id:s", "account:s", "limits:a", "disabled:b",
                                                "expires_at:n", "sha256:s", NULL};
static const char *const key_patch_fields[] = {"account:s", "limits:a", "disabled:b",
                                               "expires_at:n", NULL};

static void key_create(worker_t *w, h1_conn_t *req)
{
    const config_t *c = w->cfg;
    json_t *body = read_body(req);
    if (!body)
        return;
    json_t *errs = json_array();
    check_fields(body, key_create_fields, errs);
    const char *id = json_string_value(json_object_get(body, "id"));
    const char *acct = json_string_value(json_object_get(body, "account"));
    if (!json_object_get(body, "id"))
        add_err(errs, "missing field \"id\"%s", "", "");
    else if (id && !valid_id(id))
        add_err(errs, "invalid key id \"%s\": use 1 to 64 characters of A-Z a-z 0-9 _ . -",
                id, "");
    if (!json_object_get(body, "account"))
        add_err(errs, "missing field \"account\"%s", "", "");
    json_t *stored = json_object();
    take_expiry(body, stored, errs);
    if (json_array_size(errs)) {
        json_decref(stored);
        json_decref(body);
        bad(req, errs);
        return;
    }
    json_decref(errs);
    if (config_find_key_id(c, id)) {
        fail(req, 409, "Conflict", "invalid_request_error", "ALREADY_EXISTS",
             "A key of this id exists already.", json_pack("{s:s}", "id", id));
        goto out;
    }
    if (store_down(req))
        goto out;
    char raw[80] = "", digest[65];
    const char *given = json_string_value(json_object_get(body, "sha256"));
    if (given) {
        snprintf(digest, sizeof digest, "%s", given);
    } else {
        unsigned char rnd[32], b64[64], d[AUTH_DIGEST_LEN];
        if (RAND_bytes(rnd, sizeof rnd) != 1) {
            fail(req, 503, "Service Unavailable", "api_error", "INTERNAL_ERROR",
                 "No randomness available.", NULL);
            goto out;
        }
        int n = EVP_EncodeBlock(b64, rnd, sizeof rnd);
        OPENSSL_cleanse(rnd, sizeof rnd);
        while (n > 0 && b64[n - 1] == '=')
            n--;
        for (int i = 0; i < n; i++)
            b64[i] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : b64[i];
        b64[n] = '\0';
        snprintf(raw, sizeof raw, "sk_%s", (char *)b64);
        OPENSSL_cleanse(b64, sizeof b64);
        auth_digest(raw, strlen(raw), d);
        hex(d, sizeof d, digest);
        auth_wipe(d, sizeof d);
    }
    json_object_set_new(stored, "id", json_string(id));
    json_object_set_new(stored, "sha256", json_string(digest));
    json_object_set_new(stored, "account", json_string(acct));
    json_t *v;
    if ((v = json_object_get(body, "disabled")))
        json_object_set(stored, "disabled", v);
    if ((v = json_object_get(body, "limits")))
        json_object_set(stored, "limits", v);
    json_object_set_new(stored, "created_at", json_integer((json_int_t)time(NULL)));
    json_t *doc = registry_get();
    if (registry_doc_key(doc, id, NULL)) {
        /* Made a moment ago (here, or by another instance and read from
         * Redis), the workers' snapshot not swapped yet. */
        json_decref(doc);
        fail(req, 409, "Conflict", "invalid_request_error", "ALREADY_EXISTS",
             "A key of this id exists already.", json_pack("{s:s}", "id", id));
        OPENSSL_cleanse(raw, sizeof raw);
        goto out;
    }
    json_array_append(json_object_get(doc, "keys"), stored);
    if (commit(req, c, doc) == 0) {
        json_t *out = json_pack("{s:s,s:s,s:s}", "id", id, "account", acct, "sha256", digest);
        if (*raw)
            json_object_set_new(out, "key", json_string(raw));
        created(req, 1, id, acct, out, stored);
    }
    OPENSSL_cleanse(raw, sizeof raw);
out:
    json_decref(stored);
    json_decref(body);
}

static void key_list(worker_t *w, h1_conn_t *req)
{
    const config_t *c = w->cfg;
    char acct[ID_MAX + 2];
    size_t alen = 0;
    int na = query_param(h1_query(req), "account", acct, sizeof acct, &alen);
    if (na > 1 || (na == 1 && (alen == 0 || alen > ID_MAX))) {
        bad1(req, "%s", na > 1 ? "give ?account=ID once" : "?account= names no account");
        return;
    }
    json_t *doc = registry_get();
    json_t *list = json_array();
    for (size_t i = 0; i < c->n_keys; i++) {
        const cfg_key_t *k = &c->keys[i];
        if (na == 1 && strcmp(c->accounts[k->account].name, acct) != 0)
            continue;
        json_array_append_new(list, key_view(c, k, doc));
    }
    json_decref(doc);
    reply(req, 200, "OK", json_pack("{s:o}", "keys", list));
}


/* A PATCH body with only the fields it may change, or NULL when the
 * request was answered (unreadable body, or 400 with the fields wrong). */
static json_t *read_patch(h1_conn_t *req, const char *const fields[])
{
    json_t *body = read_body(req);
    if (!body)
        return NULL;
    json_t *errs = json_array();
    check_fields(body, fields, errs);
    if (json_array_size(errs)) {
        json_decref(body);
        bad(req, errs);
        return NULL;
    }
    json_decref(errs);
    return body;
}

/* The 409 for a change to a key or account the config file defines. */
static void managed_by_file(h1_conn_t *req, const char *what, const char *id)
{
    char msg[96];
    snprintf(msg, sizeof msg, "The configuration file defines this %s: change it there.", what);
    fail(req, 409, "Conflict", "invalid_request_error", "MANAGED_BY_FILE", msg,
         json_pack("{s:s}", "id", id));
}

/* The fields of a PATCH body (checked already) set on the stored entry. */
static void take_fields(json_t *stored, const json_t *body, const char *const fields[])
{
    for (size_t i = 0; fields[i]; i++) {
        json_t *v = json_object_get(body, fields[i]);
        if (v)
            json_object_set(stored, fields[i], v);
    }
}

static void key_one(worker_t *w, h1_conn_t *req, const char *id, enum h1_method m)
{
    const config_t *c = w->cfg;
    const cfg_key_t *k = config_find_key_id(c, id);
    if (!k) {
        fail(req, 404, "Not Found", "not_found_error", "KEY_NOT_FOUND", "No key of this id.",
             json_pack("{s:s}", "id", id));
        return;
    }
    if (m == H1_GET) {
        json_t *doc = registry_get();
        reply(req, 200, "OK", key_view(c, k, doc));
        json_decref(doc);
        return;
    }
    if (!k->from_api) {
        managed_by_file(req, "key", id);
        return;
    }
    json_t *body = NULL;
    if (m == H1_PATCH) {
        if (!(body = read_patch(req, key_patch_fields)))
            return;
    }
    if (store_down(req)) {
        json_decref(body);
        return;
    }
    json_t *doc = registry_get();
    size_t idx = 0;
    json_t *stored = registry_doc_key(doc, id, &idx);
    if (!stored) { /* cannot be: the snapshot came from this document */
        json_decref(doc);
        json_decref(body);
        fail(req, 404, "Not Found", "not_found_error", "KEY_NOT_FOUND", "No key of this id.",
             json_pack("{s:s}", "id", id));
        return;
    }
    if (m == H1_DELETE) {
        json_array_remove(json_object_get(doc, "keys"), idx);
        if (commit(req, c, doc) == 0) {
            sync_write("keys", id, NULL);
            reply(req, 200, "OK", json_pack("{s:b}", "deleted", 1));
            log_msg(LOG_INFO, "admin: key \"%s\" revoked", id);
        }
        return;
    }
    json_t *errs = json_array();
    take_expiry(body, stored, errs);
    if (json_array_size(errs)) {
        json_decref(doc);
        json_decref(body);
        bad(req, errs);
        return;
    }
    json_decref(errs);
    static const char *const f[] = {"disabled", "limits", "account", NULL};
    take_fields(stored, body, f);
    json_decref(body);
    json_t *copy = json_deep_copy(stored);
    if (commit(req, c, doc) == 0) {
        sync_write("keys", id, copy);
        /* The snapshot just made holds the change; worker 0 takes it on
         * its next turn, so answer from the document. */
        const char *acct = json_string_value(json_object_get(copy, "account"));
        json_t *exp = json_object_get(copy, "expires_at");
        json_t *lim = json_object_get(copy, "limits");
        reply(req, 200, "OK",
              json_pack("{s:s,s:s,s:b,s:o,s:o,s:o,s:s}", "id", id, "account", acct ? acct : "",
                        "disabled", json_is_true(json_object_get(copy, "disabled")),
                        "expires_at", rfc3339(exp ? json_integer_value(exp) : 0),
                        "created_at",
                        rfc3339(json_integer_value(json_object_get(copy, "created_at"))),
                        "limits", lim ? json_deep_copy(lim) : json_array(), "source",
                        "api"));
    }
    json_decref(copy);
}

/* ------------------------------------------------------------------------
 * Accounts.
 * ------------------------------------------------------------------------ */

static const char *const acct_create_fields[] = {"id:s", "tier:s", "limits:a", "disabled:b",
                                                 NULL};
static const char *const acct_patch_fields[] = {"tier:s", "limits:a", "disabled:b", NULL};

static json_t *stored_account_view(const char *name, const json_t *o)
{
    json_t *lim = json_object_get(o, "limits");
    const char *tier = json_string_value(json_object_get(o, "tier"));
    return json_pack("{s:s,s:s,s:b,s:o,s:o,s:s}", "id", name, "tier", tier ? tier : "",
                     "disabled", json_is_true(json_object_get(o, "disabled")), "created_at",
                     rfc3339(json_integer_value(json_object_get(o, "created_at"))), "limits",
                     lim ? json_deep_copy(lim) : json_array(), "source", "api");
}

static void account_create(worker_t *w, h1_conn_t *req)
{
    const config_t *c = w->cfg;
    json_t *body = read_body(req);
    if (!body)
        return;
    json_t *errs = json_array();
    check_fields(body, acct_create_fields, errs);
    const char *id = json_string_value(json_object_get(body, "id"));
    if (!json_object_get(body, "id"))
        add_err(errs, "missing field \"id\"%s", "", "");
    else if (id && !valid_id(id))
        add_err(errs, "invalid account name \"%s\": use 1 to 64 characters of A-Z a-z 0-9 _ . -",
                id, "");
    if (!json_object_get(body, "tier"))
        add_err(errs, "missing field \"tier\"%s", "", "");
    if (json_array_size(errs)) {
        json_decref(body);
        bad(req, errs);
        return;
    }
    json_decref(errs);
    if (config_find_account(c, id)) {
        fail(req, 409, "Conflict", "invalid_request_error", "ALREADY_EXISTS",
             "An account of this id exists already.", json_pack("{s:s}", "id", id));
        json_decref(body);
        return;
    }
    if (store_down(req)) {
        json_decref(body);
        return;
    }
    json_t *stored = json_deep_copy(body);
    json_object_del(stored, "id");
    json_object_set_new(stored, "created_at", json_integer((json_int_t)time(NULL)));
    json_t *doc = registry_get();
    if (json_object_get(json_object_get(doc, "accounts"), id)) {
        /* Made a moment ago, the workers' snapshot not swapped yet. */
        json_decref(doc);
        fail(req, 409, "Conflict", "invalid_request_error", "ALREADY_EXISTS",
             "An account of this id exists already.", json_pack("{s:s}", "id", id));
        json_decref(stored);
        json_decref(body);
        return;
    }
    json_object_set(json_object_get(doc, "accounts"), id, stored);
    if (commit(req, c, doc) == 0)
        created(req, 0, id, NULL, stored_account_view(id, stored), stored);
    json_decref(stored);
    json_decref(body);
}

static void account_list(worker_t *w, h1_conn_t *req)
{
    const config_t *c = w->cfg;
    json_t *doc = registry_get();
    json_t *list = json_array();
    for (size_t i = 0; i < c->n_accounts; i++)
        json_array_append_new(list, account_view(c, &c->accounts[i], doc));
    json_decref(doc);
    reply(req, 200, "OK", json_pack("{s:o}", "accounts", list));
}

static void account_one(worker_t *w, h1_conn_t *req, const char *id, enum h1_method m)
{
    const config_t *c = w->cfg;
    const cfg_account_t *a = config_find_account(c, id);
    if (!a) {
        fail(req, 404, "Not Found", "not_found_error", "ACCOUNT_NOT_FOUND",
             "No account of this id.", json_pack("{s:s}", "id", id));
        return;
    }
    if (m == H1_GET) {
        json_t *doc = registry_get();
        reply(req, 200, "OK", account_view(c, a, doc));
        json_decref(doc);
        return;
    }
    if (!a->from_api) {
        managed_by_file(req, "account", id);
        return;
    }
    json_t *body = NULL;
    if (m == H1_PATCH) {
        if (!(body = read_patch(req, acct_patch_fields)))
            return;
    } else {
        json_t *users = json_array();
        for (size_t i = 0; i < c->n_keys; i++)
            if (&c->accounts[c->keys[i].account] == a)
                json_array_append_new(users, json_string(c->keys[i].id));
        if (json_array_size(users)) {
            fail(req, 409, "Conflict", "invalid_request_error", "ACCOUNT_IN_USE",
                 "Keys still use this account: revoke them or move them first.",
                 json_pack("{s:s,s:o}", "id", id, "keys", users));
            return;
        }
        json_decref(users);
    }
    if (store_down(req)) {
        json_decref(body);
        return;
    }
    json_t *doc = registry_get();
    json_t *accounts = json_object_get(doc, "accounts");
    json_t *stored = json_object_get(accounts, id);
    if (!stored) {
        json_decref(doc);
        json_decref(body);
        fail(req, 404, "Not Found", "not_found_error", "ACCOUNT_NOT_FOUND",
             "No account of this id.", json_pack("{s:s}", "id", id));
        return;
    }
    if (m == H1_DELETE) {
        json_object_del(accounts, id);
        if (commit(req, c, doc) == 0) {
            sync_write("accounts", id, NULL);
            reply(req, 200, "OK", json_pack("{s:b}", "deleted", 1));
            log_msg(LOG_INFO, "admin: account \"%s\" deleted", id);
        }
        return;
    }
    static const char *const f[] = {"tier", "limits", "disabled", NULL};
    take_fields(stored, body, f);
    json_decref(body);
    json_t *copy = json_deep_copy(stored);
    if (commit(req, c, doc) == 0) {
        sync_write("accounts", id, copy);
        reply(req, 200, "OK", stored_account_view(id, copy));
    }
    json_decref(copy);
}

/* ------------------------------------------------------------------------
 * Router.
 * ------------------------------------------------------------------------ */

static int under(const char *path, const char *base, const char **rest)
{
    size_t n = strlen(base);
    if (strncmp(path, base, n) != 0 || (path[n] != '\0' && path[n] != '/'))
        return 0;
    *rest = path[n] == '/' ? path + n + 1 : NULL;
    return 1;
}

int admin_keys_match(const char *path)
{
    const char *rest;
    return under(path, "/admin/keys", &rest) || under(path, "/admin/accounts", &rest);
}

void admin_keys_handle(worker_t *w, h1_conn_t *req)
{
    const char *path = h1_path(req), *rest = NULL;
    enum h1_method m = h1_method(req);
    if (m == H1_HEAD)
        m = H1_GET;
    int keys = under(path, "/admin/keys", &rest);
    if (!keys)
        under(path, "/admin/accounts", &rest);
    if (!rest || !*rest) {
        if (m == H1_POST)
            keys ? key_create(w, req) : account_create(w, req);
        else if (m == H1_GET)
            keys ? key_list(w, req) : account_list(w, req);
        else
            fail(req, 405, "Method Not Allowed", "invalid_request_error", "METHOD_NOT_ALLOWED",
                 "This route takes GET and POST.", NULL);
        return;
    }
    char id[ID_MAX + 2];
    size_t n = query_decode(rest, strlen(rest), 0, id, sizeof id - 1);
    id[n < sizeof id ? n : sizeof id - 1] = '\0';
    if (m != H1_GET && m != H1_PATCH && m != H1_DELETE) {
        fail(req, 405, "Method Not Allowed", "invalid_request_error", "METHOD_NOT_ALLOWED",
             "This route takes GET, PATCH and DELETE.", NULL);
        return;
    }
    if (n == 0 || n > ID_MAX || memchr(id, '\0', n) || strchr(id, '/')) {
        if (keys)
            fail(req, 404, "Not Found", "not_found_error", "KEY_NOT_FOUND",
                 "No key of this id.", NULL);
        else
            fail(req, 404, "Not Found", "not_found_error", "ACCOUNT_NOT_FOUND",
                 "No account of this id.", NULL);
        return;
    }
    keys ? key_one(w, req, id, m) : account_one(w, req, id, m);
}
