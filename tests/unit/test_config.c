/*
 * tests/unit/test_config.c: config_load on good configs written to a temp
 * dir, checking the parsed snapshot field by field; plus the lookups
 * (key by digest, routes), the keys file, the position finder, and the
 * exact text of a few error lines. Exit 0 when every check passes.
 */
#include <jansson.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../gateway/config/config.h"
#include "../../gateway/config/jsonpos.h"

static int failures, checks;
static char tmpdir[64];

#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        checks++;                                                                             \
        if (!(cond)) {                                                                        \
            failures++;                                                                       \
            fprintf(stderr, "%s:%d: FAILED: %s: ", __FILE__, __LINE__, #cond);                \
            fprintf(stderr, __VA_ARGS__);                                                     \
            fputc('\n', stderr);                                                              \
        }                                                                                     \
    } while (0)

#define CHECK_INT(got, want)                                                                  \
    CHECK((long long)(got) == (long long)(want), "got %lld, want %lld", (long long)(got),    \
          (long long)(want))

#define CHECK_STR(got, want)                                                                  \
    CHECK((got) && strcmp((got), (want)) == 0, "got \"%s\", want \"%s\"",                     \
          (got) ? (got) : "(null)", (want))

static char *path_in(const char *name)
{
    static char buf[4][256];
    static int i;
    char *b = buf[i++ % 4];
    snprintf(b, sizeof buf[0], "%s/%s", tmpdir, name);
    return b;
}

static void write_file(const char *name, const char *text)
{
    FILE *f = fopen(path_in(name), "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path_in(name));
        exit(2);
    }
}

static void dump_msgs(const cfg_messages_t *m)
{
    for (size_t i = 0; i < m->n_errors; i++)
        fprintf(stderr, "  error: %s\n", m->errors[i]);
    for (size_t i = 0; i < m->n_warnings; i++)
        fprintf(stderr, "  %s\n", m->warnings[i]);
}

/* Load a config that must be valid. */
static config_t *load_ok(const char *name, cfg_messages_t *m)
{
    config_t *c = config_load(path_in(name), m);
    CHECK(c != NULL, "config %s should load", name);
    if (!c)
        dump_msgs(m);
    return c;
}

static void sha256_hex(const char *s, unsigned char out[32], char hex[65])
{
    unsigned int n = 0;
    EVP_Digest(s, strlen(s), out, &n, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        sprintf(hex + 2 * i, "%02x", out[i]);
}

static int ep_index(const config_t *c, const char *name)
{
    for (size_t i = 0; i < c->n_endpoints; i++)
        if (strcmp(c->endpoints[i].name, name) == 0)
            return (int)i;
    return -1;
}

static const lim_rule_t *policy_rule(const lim_policy_t *p, const char *ident)
{
    for (size_t i = 0; i < p->n_rules; i++)
        if (strcmp(p->rules[i]->ident, ident) == 0)
            return p->rules[i];
    return NULL;
}

/* ------------------------------------------------------------------------ */

static void test_defaults(void)
{
    write_file("empty.json", "{}\n");
    cfg_messages_t m;
    config_t *c = load_ok("empty.json", &m);
    if (c) {
        CHECK_STR(c->server.listen_host, "0.0.0.0");
        CHECK_INT(c->server.listen_port, 8080);
        CHECK_INT(c->server.workers, 0);
        CHECK(c->server.tls_cert_file == NULL && c->server.tls_key_file == NULL, "no tls");
        CHECK_INT(c->server.max_body_bytes, 10485760);
        CHECK_INT(c->server.max_header_bytes, 16384);
        CHECK_INT(c->server.client_timeout_ms, 30000);
        CHECK_INT(c->server.drain_timeout_ms, 30000);
        CHECK_STR(c->server.usage_path, "/v1/usage");
        CHECK_INT(c->server.ietf_headers, 0);
        CHECK_INT(c->server.openai_headers, 0);
        CHECK_INT(c->server.anthropic_headers, 0);
        CHECK_INT(c->admin.enabled, 0);
        CHECK_INT(c->storage.driver, CFG_STORE_MEMORY);
        CHECK_STR(c->storage.host, "127.0.0.1");
        CHECK_INT(c->storage.port, 6379);
        CHECK(c->storage.password == NULL, "no password");
        CHECK_INT(c->storage.db, 0);
        CHECK_INT(c->storage.timeout_ms, 50);
        CHECK_INT(c->storage.on_error, CFG_ON_ERROR_DENY);
        CHECK_STR(c->storage.key_prefix, "rl:");
        CHECK_INT(c->n_backends + c->n_endpoints + c->n_tiers + c->n_accounts + c->n_keys, 0);
        CHECK(c->keys_file == NULL, "no keys file");
        CHECK_INT(m.n_errors, 0);
        CHECK_INT(m.n_warnings, 0);
        unsigned char d[32] = {0};
        CHECK(config_find_key(c, d) == NULL, "no keys");
        CHECK_INT(config_route(c, CFG_M_GET, "/"), -1);
        CHECK_INT(config_route_any(c, "/"), -1);
        CHECK_INT(atomic_load(&c->refs), 1);
        config_ref(c);
        CHECK_INT(atomic_load(&c->refs), 2);
        config_unref(c);
        config_unref(c);
    }
    cfg_messages_free(&m);
}

/* A full example, with env variables and a keys file. */
static const char *full_config =
    "{\n"
    "  \"server\":  { \"listen\": \"[::1]:18080\", \"workers\": 4,\n"
    "               \"max_body_bytes\": 1048576, \"max_header_bytes\": 8192,\n"
    "               \"client_timeout_ms\": 1000, \"drain_timeout_ms\": 0,\n"
    "               \"usage_path\": \"/usage\", \"ietf_headers\": true },\n"
    "  \"admin\":   { \"listen\": \"127.0.0.1:9090\",\n"
    "               \"token_sha256\": \"00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff\" },\n"
    "  \"storage\": { \"driver\": \"memory\", \"address\": \"redis.internal:7000\",\n"
    "               \"password\": \"${RW_UT_PASSWORD}\", \"db\": 2, \"timeout_ms\": 25,\n"
    "               \"on_error\": \"allow\", \"key_prefix\": \"x:\" },\n"
    "  \"backends\": {\n"
    "    \"images\": { \"url\": \"http://10.0.0.5:9001\", \"timeout_ms\": 120000,\n"
    "                \"headers\": { \"Authorization\": \"Bearer ${RW_UT_TOKEN}\",\n"
    "                             \"X-Both\": \"${RW_UT_TOKEN}-${RW_UT_PASSWORD}$\" } },\n"
    "    \"video\":  { \"url\": \"https://video.internal:9443/api/v2/\" },\n"
    "    \"v6\":     { \"url\": \"https://[fd00::1]\" }\n"
    "  },\n"
    "  \"endpoints\": {\n"
    "    \"txt2img\":   { \"method\": \"POST\", \"path\": \"/v3/txt2img\", \"backend\": \"images\",\n"
    "                   \"max_body_bytes\": 10485760,\n"
    "                   \"units\": [ { \"pointer\": \"/image_num\", \"default\": 1 },\n"
    "                              { \"pointer\": \"/size\", \"default\": 2,\n"
    "                                \"map\": { \"720p\": 1, \"4k\": 4 } } ],\n"
    "                   \"price\": { \"per_request\": \"0.0\", \"per_unit\": \"0.0015\" } },\n"
    "    \"txt2video\": { \"method\": \"POST\", \"path\": \"/v3/async/txt2video\", \"backend\": \"video\",\n"
    "                   \"price\": { \"per_request\": \"12\" },\n"
    "                   \"job\": { \"id_pointer\": \"/task_id\", \"status_endpoint\": \"task_result\",\n"
    "                            \"status_query\": \"task_id\", \"status_pointer\": \"/task/status\",\n"
    "                            \"done_values\": [\"TASK_STATUS_SUCCEED\", \"TASK_STATUS_FAILED\"] } },\n"
    "    \"task_result\": { \"method\": \"GET\", \"path\": \"/v3/async/task-result\", \"backend\": \"video\" },\n"
    "    \"chat\":      { \"method\": \"POST\", \"path\": \"/v1/chat\", \"backend\": \"images\",\n"
    "                   \"reconcile\": { \"response_header\": \"X-Units-Used\" } },\n"
    "    \"chat_get\":  { \"method\": \"GET\", \"path\": \"/v1/chat\", \"backend\": \"images\" },\n"
    "    \"prompt\":    { \"method\": \"POST\", \"path_prefix\": \"/v3/prompt/\", \"backend\": \"images\" },\n"
    "    \"prompt_sp\": { \"method\": \"POST\", \"path_prefix\": \"/v3/prompt/special/\", \"backend\": \"images\" },\n"
    "    \"prompt_x\":  { \"method\": \"POST\", \"path\": \"/v3/prompt/exact\", \"backend\": \"images\" }\n"
    "  },\n"
    "  \"tiers\": {\n"
    "    \"basic\":   { \"limits\": [\n"
    "      { \"metric\": \"requests\", \"per\": \"minute\", \"limit\": 3,   \"endpoints\": [\"txt2img\"] },\n"
    "      { \"metric\": \"requests\", \"per\": \"day\",    \"limit\": 100, \"endpoints\": [\"txt2img\"] },\n"
    "      { \"metric\": \"units\",    \"per\": \"minute\", \"limit\": 20,  \"endpoints\": [\"txt2img\"] },\n"
    "      { \"metric\": \"concurrent\",                \"limit\": 5,   \"scope\": \"account\" },\n"
    "      { \"metric\": \"spend\",    \"per\": \"day\",    \"limit\": \"5.00\" },\n"
    "      { \"metric\": \"requests\", \"per\": \"hour\",   \"limit\": 50,\n"
    "        \"endpoints\": [\"txt2video\", \"chat\", \"task_result\"] } ] },\n"
    "    \"premium\": { \"limits\": [ { \"metric\": \"requests\", \"per\": \"minute\", \"limit\": 300 } ] },\n"
    "    \"enterprise\": { \"limits\": [] }\n"
    "  },\n"
    "  \"accounts\": { \"acme\": { \"tier\": \"basic\",\n"
    "                 \"limits\": [ { \"metric\": \"requests\", \"per\": \"minute\", \"limit\": 6,\n"
    "                               \"endpoints\": [\"txt2img\"] },\n"
    "                             { \"metric\": \"spend\", \"per\": \"month\", \"limit\": \"0.000001\",\n"
    "                               \"scope\": \"account\" } ] },\n"
    "                \"big\": { \"tier\": \"enterprise\", \"disabled\": true } },\n"
    "  \"keys\": [ { \"id\": \"key_acme_1\", \"sha256\": \"%s\", \"account\": \"acme\",\n"
    "              \"limits\": [ { \"metric\": \"spend\", \"per\": \"day\", \"limit\": \"2.50\" },\n"
    "                          { \"metric\": \"requests\", \"per\": \"day\", \"limit\": null,\n"
    "                            \"endpoints\": [\"txt2img\"] } ] },\n"
    "            { \"id\": \"key_acme_2\", \"sha256\": \"%s\", \"account\": \"acme\" } ],\n"
    "  \"keys_file\": \"sub/keys.json\"\n"
    "}\n";

static void test_full(void)
{
    unsigned char d1[32], d2[32], d3[32];
    char h1[65], h2[65], h3[65];
    sha256_hex("sk_live_one", d1, h1);
    sha256_hex("sk_live_two", d2, h2);
    sha256_hex("sk_live_three", d3, h3);
    for (char *p = h2; *p; p++) /* upper case hex is accepted too */
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');

    char text[8192];
    snprintf(text, sizeof text, full_config, h1, h2);
    write_file("full.json", text);
    if (mkdir(path_in("sub"), 0700) != 0) {
        perror("mkdir");
        exit(2);
    }
    snprintf(text, sizeof text,
             "[ { \"id\": \"file_key\", \"sha256\": \"%s\", \"account\": \"big\",\n"
             "    \"disabled\": true } ]\n", h3);
    write_file("sub/keys.json", text);

    setenv("RW_UT_TOKEN", "tok", 1);
    setenv("RW_UT_PASSWORD", "pw", 1);
    cfg_messages_t m;
    config_t *c = load_ok("full.json", &m);
    if (!c) {
        cfg_messages_free(&m);
        return;
    }
    CHECK_INT(m.n_warnings, 0);

    /* server, admin, storage */
    CHECK_STR(c->server.listen_host, "::1");
    CHECK_INT(c->server.listen_port, 18080);
    CHECK_INT(c->server.workers, 4);
    CHECK_INT(c->server.max_body_bytes, 1048576);
    CHECK_INT(c->server.max_header_bytes, 8192);
    CHECK_INT(c->server.client_timeout_ms, 1000);
    CHECK_INT(c->server.drain_timeout_ms, 0);
    CHECK_STR(c->server.usage_path, "/usage");
    CHECK_INT(c->server.ietf_headers, 1);
    CHECK_INT(c->admin.enabled, 1);
    CHECK_STR(c->admin.listen_host, "127.0.0.1");
    CHECK_INT(c->admin.listen_port, 9090);
    CHECK_INT(c->admin.has_token, 1);
    CHECK(c->admin.token_sha256[0] == 0x00 && c->admin.token_sha256[5] == 0x55 &&
              c->admin.token_sha256[10] == 0xAA && c->admin.token_sha256[31] == 0xff,
          "admin token digest decoded");
    CHECK_STR(c->storage.host, "redis.internal");
    CHECK_INT(c->storage.port, 7000);
    CHECK_STR(c->storage.password, "pw");
    CHECK_INT(c->storage.db, 2);
    CHECK_INT(c->storage.timeout_ms, 25);
    CHECK_INT(c->storage.on_error, CFG_ON_ERROR_ALLOW);
    CHECK_STR(c->storage.key_prefix, "x:");

    /* backends, in config order */
    CHECK_INT(c->n_backends, 3);
    if (c->n_backends == 3) {
        cfg_backend_t *b = &c->backends[0];
        CHECK_STR(b->name, "images");
        CHECK_INT(b->tls, 0);
        CHECK_STR(b->host, "10.0.0.5");
        CHECK_INT(b->port, 9001);
        CHECK_STR(b->base_path, "");
        CHECK_INT(b->timeout_ms, 120000);
        CHECK_INT(b->n_headers, 2);
        if (b->n_headers == 2) {
            CHECK_STR(b->headers[0].name, "Authorization");
            CHECK_STR(b->headers[0].value, "Bearer tok");
            CHECK_STR(b->headers[1].value, "tok-pw$");
        }
        b = &c->backends[1];
        CHECK_INT(b->tls, 1);
        CHECK_STR(b->host, "video.internal");
        CHECK_INT(b->port, 9443);
        CHECK_STR(b->base_path, "/api/v2");
        CHECK_INT(b->timeout_ms, 60000);
        b = &c->backends[2];
        CHECK_STR(b->host, "fd00::1");
        CHECK_INT(b->port, 443);
    }

    /* endpoints */
    int e_img = ep_index(c, "txt2img"), e_vid = ep_index(c, "txt2video");
    int e_res = ep_index(c, "task_result"), e_chat = ep_index(c, "chat");
    int e_chatg = ep_index(c, "chat_get"), e_pr = ep_index(c, "prompt");
    int e_prs = ep_index(c, "prompt_sp"), e_prx = ep_index(c, "prompt_x");
    CHECK(e_img == 0 && e_vid == 1 && e_res == 2 && e_chat == 3, "endpoints in config order");
    CHECK_INT(c->n_endpoints, 8);
    if (e_img >= 0 && e_vid >= 0 && e_chat >= 0 && e_res >= 0) {
        cfg_endpoint_t *e = &c->endpoints[e_img];
        CHECK_INT(e->methods, CFG_M_POST);
        CHECK_STR(e->path, "/v3/txt2img");
        CHECK_INT(e->is_prefix, 0);
        CHECK_INT(e->backend, 0);
        CHECK_INT(e->max_body_bytes, 10485760);
        CHECK_INT(e->n_units, 2);
        if (e->n_units == 2) {
            CHECK_STR(e->units[0].pointer, "/image_num");
            CHECK_INT(e->units[0].dflt, 1);
            CHECK(e->units[0].map == NULL, "no map");
            CHECK_INT(e->units[1].dflt, 2);
            CHECK_INT(e->units[1].n_map, 2);
            if (e->units[1].n_map == 2) {
                CHECK_STR(e->units[1].map[1].name, "4k");
                CHECK_INT(e->units[1].map[1].value, 4);
            }
        }
        CHECK_INT(e->price_request_micros, 0);
        CHECK_INT(e->price_unit_micros, 1500);
        CHECK(e->job == NULL && e->reconcile == NULL, "plain endpoint");

        e = &c->endpoints[e_vid];
        CHECK_INT(e->backend, 1);
        CHECK_INT(e->max_body_bytes, 1048576); /* server's */
        CHECK_INT(e->n_units, 0);
        CHECK_INT(e->price_request_micros, 12000000);
        CHECK(e->job != NULL, "job parsed");
        if (e->job) {
            CHECK_STR(e->job->id_pointer, "/task_id");
            CHECK_INT(e->job->status_ep, e_res);
            CHECK_STR(e->job->status_query, "task_id");
            CHECK_STR(e->job->status_pointer, "/task/status");
            CHECK_INT(e->job->n_done, 2);
            if (e->job->n_done == 2)
                CHECK_STR(e->job->done_values[1], "TASK_STATUS_FAILED");
            CHECK_INT(e->job->max_seconds, 3600);
        }
        e = &c->endpoints[e_chat];
        CHECK(e->reconcile && !e->reconcile->pointers && e->reconcile->n_pointers == 0 &&
                  e->reconcile->response_header &&
                  strcmp(e->reconcile->response_header, "X-Units-Used") == 0,
              "reconcile by header");
        CHECK_INT(c->endpoints[e_res].methods, CFG_M_GET);
        CHECK_INT(c->endpoints[e_pr].is_prefix, 1);
    }

    /* routing: exact, method, longest prefix, exact before prefix */
    CHECK_INT(config_route(c, CFG_M_POST, "/v3/txt2img"), e_img);
    CHECK_INT(config_route(c, CFG_M_GET, "/v3/txt2img"), -1);
    CHECK_INT(config_route_any(c, "/v3/txt2img"), e_img);
    /* spellings a lenient backend takes for the same path route alike */
    CHECK_INT(config_route(c, CFG_M_POST, "/v3/txt2img/"), e_img);
    CHECK_INT(config_route(c, CFG_M_POST, "/V3/TXT2IMG"), e_img);
    CHECK_INT(config_route(c, CFG_M_POST, "/v3;a=1/txt2img;b=2/"), e_img);
    CHECK_INT(config_route(c, CFG_M_POST, "/v3/txt2img/x"), -1);
    CHECK_INT(config_route(c, CFG_M_POST, "/V3/Prompt/ABC"), e_pr);
    CHECK_INT(config_route(c, CFG_M_POST, "/v3/txt2im"), -1);
    CHECK_INT(config_route(c, CFG_M_POST, "/v1/chat"), e_chat);
    CHECK_INT(config_route(c, CFG_M_GET, "/v1/chat"), e_chatg);
    CHECK_INT(config_route(c, CFG_M_PUT, "/v1/chat"), -1);
    CHECK_INT(config_route(c, CFG_M_GET, "/v3/async/task-result"), e_res);
    CHECK_INT(config_route(c, CFG_M_POST, "/v3/prompt/abc"), e_pr);
    CHECK_INT(config_route(c, CFG_M_POST, "/v3/prompt/"), e_pr);
    CHECK_INT(config_route(c, CFG_M_POST, "/v3/prompt"), -1);
    CHECK_INT(config_route(c, CFG_M_POST, "/v3/prompt/special/x"), e_prs);
    CHECK_INT(config_route(c, CFG_M_POST, "/v3/prompt/exact"), e_prx);
    CHECK_INT(config_route(c, CFG_M_POST, "/v3/prompt/exactly"), e_pr);
    CHECK_INT(config_route(c, CFG_M_GET, "/v3/prompt/abc"), -1);
    CHECK_INT(config_route_any(c, "/v3/prompt/abc"), e_pr);
    CHECK_INT(config_route_any(c, "/nothing"), -1);
    CHECK_INT(config_route(c, 0, "/v3/txt2img"), -1);

    /* tiers and rules */
    CHECK_INT(c->n_tiers, 3);
    if (c->n_tiers == 3 && c->tiers[0].n_rules == 6) {
        const lim_rule_t *r = c->tiers[0].rules;
        CHECK_STR(c->tiers[0].name, "basic");
        CHECK_STR(r[0].ident, "requests:minute:key:txt2img");
        CHECK_INT(r[0].metric, LIM_REQUESTS);
        CHECK_INT(r[0].per, LIM_PER_MINUTE);
        CHECK_INT(r[0].scope, LIM_SCOPE_KEY);
        CHECK_INT(r[0].limit, 3);
        CHECK_INT(r[0].n_eps, 1);
        CHECK_INT(r[0].eps[0], e_img);
        CHECK_STR(r[0].ep_names, "txt2img");
        CHECK_STR(r[1].ident, "requests:day:key:txt2img");
        CHECK_STR(r[2].ident, "units:minute:key:txt2img");
        CHECK_STR(r[3].ident, "concurrent::account:*");
        CHECK_INT(r[3].per, LIM_PER_NONE);
        CHECK_INT(r[3].scope, LIM_SCOPE_ACCOUNT);
        CHECK_INT(r[3].n_eps, 0);
        CHECK_STR(r[3].ep_names, "");
        CHECK_STR(r[4].ident, "spend:day:key:*");
        CHECK_INT(r[4].limit, 5000000);
        /* endpoints: ident sorted by name, eps sorted by index, names as written */
        CHECK_STR(r[5].ident, "requests:hour:key:chat,task_result,txt2video");
        CHECK_STR(r[5].ep_names, "txt2video,chat,task_result");
        CHECK_INT(r[5].n_eps, 3);
        CHECK(r[5].eps[0] == (uint32_t)e_vid && r[5].eps[1] == (uint32_t)e_res &&
                  r[5].eps[2] == (uint32_t)e_chat,
              "eps sorted");
        CHECK_INT(r[5].removed, 0);
    } else {
        CHECK(0, "tier basic should have 6 rules");
    }

    /* accounts, policies */
    const cfg_account_t *acme = config_find_account(c, "acme");
    const cfg_account_t *big = config_find_account(c, "big");
    CHECK(acme && big && !config_find_account(c, "nobody"), "accounts by name");
    if (acme && big) {
        CHECK_INT(acme->tier, 0);
        CHECK_INT(acme->disabled, 0);
        CHECK_INT(big->disabled, 1);
        CHECK_INT(big->tier, 2);
        CHECK_INT(acme->n_rules, 2);
        const lim_policy_t *p = &acme->policy;
        /* tier 6 rules; the account replaces requests:minute:key:txt2img and adds one */
        CHECK_INT(p->n_rules, 7);
        const lim_rule_t *r = policy_rule(p, "requests:minute:key:txt2img");
        CHECK(r && r->limit == 6, "account override replaces the tier's limit");
        r = policy_rule(p, "spend:month:account:*");
        CHECK(r && r->limit == 1, "spend 0.000001 is 1 micro");
        CHECK_INT(big->policy.n_rules, 0);
        if (e_img >= 0 && p->ep_off) {
            /* txt2img: requests/min, requests/day, units/min, concurrent, spend/day, spend/month */
            CHECK_INT(p->ep_off[e_img + 1] - p->ep_off[e_img], 6);
            /* task_result: concurrent, spend/day, requests/hour, spend/month */
            CHECK_INT(p->ep_off[e_res + 1] - p->ep_off[e_res], 4);
        }
    }

    /* keys: config's first, then the keys file's */
    CHECK_INT(c->n_keys, 3);
    const cfg_key_t *k1 = config_find_key(c, d1), *k2 = config_find_key(c, d2);
    const cfg_key_t *k3 = config_find_key(c, d3);
    CHECK(k1 && k1 == &c->keys[0] && strcmp(k1->id, "key_acme_1") == 0, "key 1 by digest");
    CHECK(k2 && k2 == &c->keys[1], "key 2 by digest (upper case hex in config)");
    CHECK(k3 && k3 == &c->keys[2] && strcmp(k3->id, "file_key") == 0, "keys_file key by digest");
    CHECK(config_find_key_id(c, "key_acme_2") == k2, "key by id");
    CHECK(config_find_key_id(c, "nope") == NULL, "unknown id");
    unsigned char near[32];
    memcpy(near, d1, 32);
    near[31] ^= 1; /* same first 8 bytes: found in the table, refused by the compare */
    CHECK(config_find_key(c, near) == NULL, "digest differing in the last byte");
    near[31] ^= 1;
    near[0] ^= 1;
    CHECK(config_find_key(c, near) == NULL, "digest differing in the first byte");
    if (k1 && k2 && k3 && acme) {
        CHECK_INT(k1->account, 0);
        CHECK_INT(k3->account, 1);
        CHECK_INT(k3->disabled, 1);
        CHECK_INT(k1->n_rules, 2);
        CHECK(k1->rules && k1->rules[1].removed == 1, "limit null is a removal");
        CHECK(k1->policy == &k1->own, "key with own limits has its own policy");
        CHECK(k2->policy == &acme->policy, "key without limits shares the account's");
        CHECK(k3->policy == &c->accounts[1].policy, "file key shares its account's");
        const lim_policy_t *p = k1->policy;
        /* 7 of the account, spend/day replaced, requests/day txt2img removed */
        CHECK_INT(p->n_rules, 6);
        const lim_rule_t *r = policy_rule(p, "spend:day:key:*");
        CHECK(r && r->limit == 2500000, "key spend 2.50 replaces the tier's 5.00");
        CHECK(policy_rule(p, "requests:day:key:txt2img") == NULL, "null removed the day limit");
        CHECK(policy_rule(p, "requests:minute:key:txt2img") &&
                  policy_rule(p, "requests:minute:key:txt2img")->limit == 6,
              "account override kept");
    }
    CHECK(c->keys_file && strcmp(c->keys_file, path_in("sub/keys.json")) == 0,
          "keys_file resolved against the config's dir: %s", c->keys_file ? c->keys_file : "");
    config_unref(c);
    cfg_messages_free(&m);
    unsetenv("RW_UT_TOKEN");
    unsetenv("RW_UT_PASSWORD");
}

/* Exact error lines, and FILE for the keys file. */
static void test_errors(void)
{
    write_file("bad.json",
               "{\n"
               "  \"server\": { \"workers\": \"2\" },\n"
               "  \"storage\": { \"password\": \"${RW_UT_NOT_SET_AT_ALL}\" },\n"
               "  \"tiers\": { \"t\": { \"limits\": [ { \"metric\": \"spend\", \"per\": \"day\",\n"
               "                                   \"limit\": \"1.0000001\" } ] } },\n"
               "  \"accounts\": { \"a\": { \"tier\": \"t\" } },\n"
               "  \"keys_file\": \"badkeys.json\"\n"
               "}\n");
    write_file("badkeys.json",
               "[\n  { \"id\": \"k\", \"sha256\": \"x\", \"account\": \"a\" }\n]\n");
    unsetenv("RW_UT_NOT_SET_AT_ALL");
    cfg_messages_t m;
    config_t *c = config_load(path_in("bad.json"), &m);
    CHECK(c == NULL, "bad config refused");
    CHECK_INT(m.n_errors, 4);
    char want[4][512];
    snprintf(want[0], sizeof want[0],
             "%s:2:26: server: \"workers\": expected an integer, got a string", path_in("bad.json"));
    snprintf(want[1], sizeof want[1], "%s:3:28: environment variable RW_UT_NOT_SET_AT_ALL is not set",
             path_in("bad.json"));
    snprintf(want[2], sizeof want[2],
             "%s:5:45: tier \"t\" limits[0]: \"limit\": amount \"1.0000001\" has more than 6 "
             "decimal places",
             path_in("bad.json"));
    snprintf(want[3], sizeof want[3],
             "%s:2:26: key \"k\": \"sha256\": expected 64 hexadecimal digits (a SHA-256), got \"x\"",
             path_in("badkeys.json"));
    for (size_t i = 0; i < 4 && i < m.n_errors; i++)
        CHECK_STR(m.errors[i], want[i]);
    cfg_messages_free(&m);

    /* unreadable file */
    c = config_load(path_in("does-not-exist.json"), &m);
    CHECK(c == NULL && m.n_errors == 1, "missing file refused");
    if (m.n_errors == 1)
        CHECK(strstr(m.errors[0], "does-not-exist.json:1:1: cannot read the file: "),
              "got %s", m.errors[0]);
    cfg_messages_free(&m);
}

/* Many keys in a keys file: lookups, and an error found deep in it. */
static void test_many_keys(void)
{
    enum { N = 20000 };
    size_t cap = (size_t)N * 160 + 64, n = 0;
    char *buf = malloc(cap);
    static unsigned char digs[N][32];
    if (!buf)
        exit(2);
    n += (size_t)snprintf(buf + n, cap - n, "[\n");
    for (int i = 0; i < N; i++) {
        char plain[64], hex[65];
        snprintf(plain, sizeof plain, "sk_test_%d", i);
        sha256_hex(plain, digs[i], hex);
        n += (size_t)snprintf(buf + n, cap - n,
                              "  { \"id\": \"k%d\", \"sha256\": \"%s\", \"account\": \"a\" }%s\n",
                              i, hex, i + 1 < N ? "," : "");
    }
    n += (size_t)snprintf(buf + n, cap - n, "]\n");
    write_file("many_keys.json", buf);
    write_file("many.json",
               "{ \"tiers\": { \"t\": {} }, \"accounts\": { \"a\": { \"tier\": \"t\" } },\n"
               "  \"keys_file\": \"many_keys.json\" }\n");
    cfg_messages_t m;
    config_t *c = load_ok("many.json", &m);
    if (c) {
        CHECK_INT(c->n_keys, N);
        int bad = 0;
        for (int i = 0; i < N; i++) {
            const cfg_key_t *k = config_find_key(c, digs[i]);
            if (!k || k != &c->keys[i])
                bad++;
        }
        CHECK_INT(bad, 0);
        config_unref(c);
    }
    cfg_messages_free(&m);

    /* the last key names an unknown account: the line is N + 1 */
    char *last = strrchr(buf, '{');
    char *acct = strstr(last, "\"a\" }");
    acct[1] = 'b';
    write_file("many_keys.json", buf);
    c = config_load(path_in("many.json"), &m);
    CHECK(c == NULL && m.n_errors == 1, "one error");
    if (m.n_errors == 1) {
        char want[512];
        snprintf(want, sizeof want, "%s:%d:110: key \"k%d\": \"account\": no account named \"b\"",
                 path_in("many_keys.json"), N + 1, N - 1);
        CHECK_STR(m.errors[0], want);
    }
    cfg_messages_free(&m);
    free(buf);
}

/* A long endpoint set gets a hashed ident of at most 96 bytes. */
static void test_long_ident(void)
{
    char text[8192];
    size_t n = 0;
    n += (size_t)snprintf(text + n, sizeof text - n,
                          "{ \"backends\": { \"b\": { \"url\": \"http://127.0.0.1:1\" } },\n"
                          "  \"endpoints\": {\n");
    for (int i = 0; i < 12; i++)
        n += (size_t)snprintf(text + n, sizeof text - n,
                              "    \"endpoint_number_%02d\": { \"method\": \"POST\", \"path\": "
                              "\"/e%d\", \"backend\": \"b\" }%s\n",
                              i, i, i < 11 ? "," : "");
    n += (size_t)snprintf(text + n, sizeof text - n,
                          "  },\n  \"tiers\": { \"t\": { \"limits\": [ { \"metric\": \"units\", "
                          "\"per\": \"hour\", \"limit\": 1, \"endpoints\": [");
    for (int i = 11; i >= 0; i--)
        n += (size_t)snprintf(text + n, sizeof text - n, "\"endpoint_number_%02d\"%s", i,
                              i ? ", " : "");
    snprintf(text + n, sizeof text - n, "] } ] } } }\n");
    write_file("long.json", text);
    cfg_messages_t m;
    config_t *c = load_ok("long.json", &m);
    if (c && c->n_tiers == 1 && c->tiers[0].n_rules == 1) {
        const lim_rule_t *r = &c->tiers[0].rules[0];
        CHECK(strncmp(r->ident, "units:hour:key:h", 16) == 0 && strlen(r->ident) == 32,
              "hashed ident: %s", r->ident);
        CHECK_INT(r->n_eps, 12);
        CHECK(strncmp(r->ep_names, "endpoint_number_11,endpoint_number_10,", 38) == 0,
              "ep_names as written: %s", r->ep_names);
    } else {
        CHECK(0, "long ident config");
    }
    if (c)
        config_unref(c);
    cfg_messages_free(&m);
}

/* Warnings: a removal that removes nothing. TLS files are resolved against
 * the config's directory. */
static void test_warnings(void)
{
    write_file("warn.json",
               "{ \"server\": { \"tls\": { \"cert_file\": \"c.pem\", \"key_file\": \"/k.pem\" } },\n"
               "  \"tiers\": { \"t\": { \"limits\": [ { \"metric\": \"requests\", \"per\": \"day\", \"limit\": 5 } ] } },\n"
               "  \"accounts\": { \"a\": { \"tier\": \"t\", \"limits\": [\n"
               "    { \"metric\": \"requests\", \"per\": \"day\", \"limit\": null },\n"
               "    { \"metric\": \"requests\", \"per\": \"hour\", \"limit\": null } ] } } }\n");
    cfg_messages_t m;
    config_t *c = load_ok("warn.json", &m);
    CHECK_INT(m.n_warnings, 1);
    if (m.n_warnings == 1) {
        char want[512];
        snprintf(want, sizeof want,
                 "%s:5:44: warning: account \"a\" limits[1]: \"limit\": null removes nothing: "
                 "no inherited limit is requests:hour:key:*", path_in("warn.json"));
        CHECK_STR(m.warnings[0], want);
    }
    if (c) {
        CHECK_STR(c->server.tls_cert_file, path_in("c.pem"));
        CHECK_STR(c->server.tls_key_file, "/k.pem");
        CHECK_INT(c->accounts[0].policy.n_rules, 0);
        config_unref(c);
    }
    cfg_messages_free(&m);
}

static void test_jsonpos(void)
{
    /* "é" is 2 bytes, 1 column; keys with "/" and "~" are escaped in pointers */
    const char *t = "{\n"
                    " \"\\u00e9t\\u00e9\": { \"a/b\": [10, {\"~k\": true}] },\n"
                    "\t\"x\": \"é\", \"y\": null\n"
                    "}";
    size_t len = strlen(t);
    int line = 0, col = 0;
    CHECK(jsonpos_find(t, len, "", 0, &line, &col) == 0 && line == 1 && col == 1, "root");
    CHECK(jsonpos_find(t, len, "/\xc3\xa9t\xc3\xa9", 1, &line, &col) == 0 && line == 2 &&
              col == 2,
          "escaped key: %d:%d", line, col);
    CHECK(jsonpos_find(t, len, "/\xc3\xa9t\xc3\xa9/a~1b/1/~0k", 0, &line, &col) == 0 &&
              line == 2 && col == 40,
          "deep value: %d:%d", line, col);
    CHECK(jsonpos_find(t, len, "/\xc3\xa9t\xc3\xa9/a~1b/1/~0k", 1, &line, &col) == 0 &&
              line == 2 && col == 34,
          "deep key: %d:%d", line, col);
    CHECK(jsonpos_find(t, len, "/y", 0, &line, &col) == 0 && line == 3 && col == 17,
          "after a 2-byte character: %d:%d", line, col);
    CHECK(jsonpos_find(t, len, "/x", 1, &line, &col) == 0 && line == 3 && col == 2,
          "tab is one column: %d:%d", line, col);
    CHECK(jsonpos_find(t, len, "/z", 0, &line, &col) == -1, "absent");
    CHECK(jsonpos_find(t, len, "/\xc3\xa9t\xc3\xa9/a~1b/2", 0, &line, &col) == -1,
          "index past the end");
    jsonpos_req_t rq[3] = {{"/y", 0, 0, 0}, {"/x", 0, 0, 0}, {"/y", 1, 0, 0}};
    CHECK(jsonpos_resolve(t, len, rq, 3) == 0, "batch");
    CHECK(rq[0].line == 3 && rq[0].col == 17 && rq[1].col == 7 && rq[2].col == 12,
          "batch positions %d:%d %d:%d %d:%d", rq[0].line, rq[0].col, rq[1].line, rq[1].col,
          rq[2].line, rq[2].col);
}

/* Endpoints of one route told apart by a body field: the head routes to
 * one of them, the body's value picks the endpoint. */
static void test_match(void)
{
    write_file("match.json",
               "{ \"backends\": { \"b\": { \"url\": \"http://127.0.0.1:9001\" } },\n"
               "  \"endpoints\": {\n"
               "    \"plain\": { \"method\": \"POST\", \"path\": \"/v1/plain\", \"backend\": \"b\" },\n"
               "    \"big\":   { \"method\": \"POST\", \"path\": \"/v1/chat\", \"backend\": \"b\",\n"
               "               \"max_body_bytes\": 100,\n"
               "               \"match\": { \"pointer\": \"/model\", \"values\": [\"large\"] } },\n"
               "    \"rest\":  { \"method\": \"POST\", \"path\": \"/V1/Chat/\", \"backend\": \"b\",\n"
               "               \"max_body_bytes\": 50 },\n"
               "    \"small\": { \"method\": \"POST\", \"path\": \"/v1/chat\", \"backend\": \"b\",\n"
               "               \"max_body_bytes\": 70,\n"
               "               \"match\": { \"pointer\": \"/model\", \"values\": [\"small\", \"mini\"] } },\n"
               "    \"get\":   { \"method\": \"GET\", \"path\": \"/v1/chat\", \"backend\": \"b\" },\n"
               "    \"img\":   { \"method\": \"POST\", \"path\": \"/v1/img\", \"backend\": \"b\",\n"
               "               \"match\": { \"pointer\": \"/m\", \"values\": [\"a\"] } }\n"
               "  } }\n");
    cfg_messages_t m;
    config_t *c = load_ok("match.json", &m);
    if (c) {
        int big = ep_index(c, "big"), rest = ep_index(c, "rest"), small = ep_index(c, "small");
        int get = ep_index(c, "get"), img = ep_index(c, "img"), plain = ep_index(c, "plain");
        int head = config_route(c, CFG_M_POST, "/v1/chat");
        CHECK(head == big || head == rest || head == small, "the head routes into the group");
        CHECK_STR(config_route_pointer(c, head), "/model");
        CHECK_INT(config_route_max_body(c, head), 100);
        json_t *v = json_string("large");
        CHECK_INT(config_route_value(c, head, v), big);
        json_decref(v);
        v = json_string("mini");
        CHECK_INT(config_route_value(c, head, v), small);
        json_decref(v);
        v = json_string("other");
        CHECK_INT(config_route_value(c, head, v), rest);
        json_decref(v);
        v = json_integer(3);
        CHECK_INT(config_route_value(c, head, v), rest);
        json_decref(v);
        CHECK_INT(config_route_value(c, head, NULL), rest);
        CHECK_INT(config_route(c, CFG_M_GET, "/v1/chat"), get);
        CHECK(config_route_pointer(c, get) == NULL, "GET is decided by the head");
        CHECK(config_route_pointer(c, plain) == NULL, "a plain endpoint");
        CHECK_INT(config_route_max_body(c, plain), 10485760);
        int ih = config_route(c, CFG_M_POST, "/v1/img");
        CHECK_INT(ih, img);
        v = json_string("b");
        CHECK_INT(config_route_value(c, ih, v), -1);
        json_decref(v);
        config_unref(c);
    }
    cfg_messages_free(&m);
}

/* Keys and accounts made through the admin API, merged into the file's. */
static void test_api_items(void)
{
    char hex1[65], hex2[65];
    unsigned char d1[32], d2[32];
    sha256_hex("file-key", d1, hex1);
    sha256_hex("api-key", d2, hex2);
    char text[1024];
    snprintf(text, sizeof text,
             "{\"storage\": {\"state_file\": \"st/state.json\"},\n"
             " \"tiers\": {\"t\": {\"limits\": []}},\n"
             " \"accounts\": {\"filea\": {\"tier\": \"t\"}},\n"
             " \"keys\": [{\"id\": \"fk\", \"sha256\": \"%s\", \"account\": \"filea\"}]}\n",
             hex1);
    write_file("api.json", text);
    json_t *api = json_pack(
        "{s:{s:{s:s,s:I},s:{s:s,s:b}},s:[{s:s,s:s,s:s,s:I,s:I}]}", "accounts", "apia", "tier",
        "t", "created_at", (json_int_t)1700000000, "filea", "tier", "nope", "disabled", 1,
        "keys", "id", "ak", "sha256", hex2, "account", "apia", "created_at",
        (json_int_t)1700000001, "expires_at", (json_int_t)1900000000);
    cfg_messages_t m;
    config_t *c = config_load_with(path_in("api.json"), api, &m);
    CHECK(c != NULL, "file plus API items load (the file's filea wins over the API's)");
    if (!c)
        dump_msgs(&m);
    cfg_messages_free(&m);
    if (c) {
        CHECK_INT(c->n_keys, 2);
        CHECK_INT(c->n_accounts, 2);
        const cfg_key_t *fk = config_find_key(c, d1), *ak = config_find_key(c, d2);
        CHECK(fk && !fk->from_api && fk->expires_at == 0, "the file's key");
        CHECK(ak && ak->from_api, "the API's key, found by digest");
        if (ak) {
            CHECK_INT(ak->created_at, 1700000001);
            CHECK_INT(ak->expires_at, 1900000000);
            CHECK_STR(c->accounts[ak->account].name, "apia");
        }
        const cfg_account_t *fa = config_find_account(c, "filea");
        const cfg_account_t *aa = config_find_account(c, "apia");
        CHECK(fa && !fa->from_api && !fa->disabled, "the file's account, not the API's");
        CHECK(aa && aa->from_api && aa->created_at == 1700000000, "the API's account");
        char want[200];
        snprintf(want, sizeof want, "%s/st/state.json", tmpdir);
        CHECK_STR(c->storage.state_file, want);
        config_unref(c);
    }
    /* An API key whose id the file has: an error, ids unique across both. */
    json_t *dup = json_pack("{s:{},s:[{s:s,s:s,s:s}]}", "accounts", "keys", "id", "fk",
                            "sha256", hex2, "account", "filea");
    c = config_load_with(path_in("api.json"), dup, &m);
    CHECK(c == NULL && m.n_errors == 1 && strstr(m.errors[0], "duplicate key id"),
          "a duplicate id across the file and the API");
    config_unref(c);
    cfg_messages_free(&m);
    json_decref(dup);
    json_decref(api);
    /* The default state file: beside the configuration. */
    c = load_ok("empty.json", &m);
    if (c) {
        char want[200];
        snprintf(want, sizeof want, "%s/ratewall-state.json", tmpdir);
        CHECK_STR(c->storage.state_file, want);
        config_unref(c);
    }
    cfg_messages_free(&m);
}

static void cleanup(void)
{
    const char *files[] = {"empty.json", "full.json", "sub/keys.json", "bad.json",
        "badkeys.json", "many.json", "many_keys.json", "long.json", "warn.json", "match.json",
        "api.json", NULL};
    for (int i = 0; files[i]; i++)
        unlink(path_in(files[i]));
    rmdir(path_in("sub"));
    rmdir(tmpdir);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "%s", "/tmp/rw_test_config.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 2;
    }
    test_defaults();
    test_full();
    test_errors();
    test_many_keys();
    test_long_ident();
    test_warnings();
    test_jsonpos();
    test_match();
    test_api_items();
    cleanup();
    if (failures) {
        fprintf(stderr, "test_config: %d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("test_config: all %d checks passed\n", checks);
    return 0;
}
