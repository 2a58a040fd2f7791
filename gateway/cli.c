/*
 * gateway/cli.c: `gateway keys ...` and `gateway accounts ...`, a client of
 * the admin listener's /admin/keys and /admin/accounts routes, so that an
 * operator never writes the HTTP requests by hand. One plain HTTP/1.1
 * request per command over a blocking socket (Connection: close).
 */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

static void cli_usage(FILE *f)
{
    fprintf(f,
            "Usage: gateway keys create --account ACCOUNT [--id ID] [--sha256 HEX]\n"
            "                           [--expires-at RFC3339] [--disabled]\n"
            "       gateway keys list [--account ACCOUNT]\n"
            "       gateway keys get ID | revoke ID | disable ID | enable ID\n"
            "       gateway accounts create ID --tier TIER [--disabled]\n"
            "       gateway accounts list | get ID | delete ID\n"
            "Each takes --admin HOST:PORT (default 127.0.0.1:9090, or RATEWALL_ADMIN) and\n"
            "the admin token from --token-file FILE or RATEWALL_ADMIN_TOKEN.\n"
            "Prints the answer's JSON; exits 0 on success, 1 when the gateway refuses\n"
            "(its error on stderr), 2 on a usage error.\n");
}

/* Percent-encode an id for a path segment. */
static void path_escape(const char *s, char *out, size_t cap)
{
    size_t o = 0;
    for (; *s && o + 4 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
            ch == '-' || ch == '_' || ch == '.')
            out[o++] = (char)ch;
        else
            o += (size_t)snprintf(out + o, cap - o, "%%%02X", ch);
    }
    out[o] = '\0';
}

static char *read_token(const char *file)
{
    char buf[4096];
    if (file) {
        FILE *f = fopen(file, "r");
        if (!f) {
            fprintf(stderr, "gateway: cannot read %s: %s\n", file, strerror(errno));
            return NULL;
        }
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
    } else {
        const char *e = getenv("RATEWALL_ADMIN_TOKEN");
        if (!e || !*e) {
            fprintf(stderr, "gateway: give the admin token with --token-file FILE or "
                            "RATEWALL_ADMIN_TOKEN\n");
            return NULL;
        }
        snprintf(buf, sizeof buf, "%s", e);
    }
    size_t n = strcspn(buf, "\r\n");
    buf[n] = '\0';
    char *t = n ? strdup(buf) : NULL;
    OPENSSL_cleanse(buf, sizeof buf);
    if (!n)
        fprintf(stderr, "gateway: the admin token is empty\n");
    return t;
}

/* One exchange: the status (or -1 when the gateway cannot be reached) and
 * the body (malloc'd, NUL-ended) in *out. */
static int exchange(const char *addr, const char *token, const char *method, const char *path,
                    const char *body, char **out)
{
    *out = NULL;
    char host[256];
    const char *port = "9090";
    snprintf(host, sizeof host, "%s", addr);
    char *colon = strrchr(host, ':');
    if (colon) {
        *colon = '\0';
        port = colon + 1;
    }
    char *h = host;
    if (*h == '[') { /* [::1]:9090 */
        h++;
        char *rb = strchr(h, ']');
        if (rb)
            *rb = '\0';
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int gai = getaddrinfo(*h ? h : "127.0.0.1", port, &hints, &res);
    if (gai != 0) {
        fprintf(stderr, "gateway: %s: %s\n", addr, gai_strerror(gai));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        fprintf(stderr, "gateway: cannot connect to the admin listener at %s: %s\n", addr,
                strerror(errno));
        return -1;
    }
    size_t blen = body ? strlen(body) : 0;
    char *req = NULL;
    int n = asprintf(&req,
                     "%s %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                     "Accept: application/json\r\nConnection: close\r\n"
                     "%s%zu\r\n\r\n%s",
                     method, path, addr, token,
                     body ? "Content-Type: application/json\r\nContent-Length: "
                          : "Content-Length: ",
                     blen, body ? body : "");
    if (n < 0) {
        close(fd);
        return -1;
    }
    size_t off = 0;
    while (off < (size_t)n) {
        ssize_t w = write(fd, req + off, (size_t)n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    OPENSSL_cleanse(req, (size_t)n);
    free(req);
    size_t cap = 8192, len = 0;
    char *resp = malloc(cap);
    for (;;) {
        if (!resp)
            break;
        if (len + 4096 > cap) {
            char *r = realloc(resp, cap *= 2);
            if (!r) {
                free(resp);
                resp = NULL;
                break;
            }
            resp = r;
        }
        ssize_t r = read(fd, resp + len, cap - len - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    if (!resp)
        return -1;
    resp[len] = '\0';
    int status = 0;
    char *sep = strstr(resp, "\r\n\r\n");
    if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1 || !sep) {
        fprintf(stderr, "gateway: %s did not answer HTTP\n", addr);
        free(resp);
        return -1;
    }
    *out = strdup(sep + 4);
    free(resp);
    return status;
}

/* Print the answer: a success's JSON on stdout, a refusal on stderr. */
static int show(int status, char *body)
{
    if (status < 0)
        return 1;
    json_t *j = body ? json_loads(body, 0, NULL) : NULL;
    char *pretty = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
    const char *text = pretty ? pretty : body ? body : "";
    int ok = status >= 200 && status < 300;
    if (ok) {
        printf("%s\n", text);
    } else {
        json_t *e = json_object_get(j, "error");
        fprintf(stderr, "gateway: %d %s: %s\n", status,
                e ? json_string_value(json_object_get(e, "code")) : "",
                e ? json_string_value(json_object_get(e, "message")) : text);
        json_t *errs = json_object_get(json_object_get(e, "details"), "errors");
        size_t i;
        json_t *v;
        json_array_foreach(errs, i, v) fprintf(stderr, "  %s\n", json_string_value(v));
    }
    free(pretty);
    json_decref(j);
    free(body);
    return ok ? 0 : 1;
}

int cli_main(int argc, char **argv)
{
    enum { O_ADMIN = 1, O_TOKEN, O_ACCOUNT, O_ID, O_SHA, O_EXP, O_DIS, O_TIER, O_HELP };
    static const struct option opts[] = {
        {"admin", required_argument, NULL, O_ADMIN},
        {"token-file", required_argument, NULL, O_TOKEN},
        {"account", required_argument, NULL, O_ACCOUNT},
        {"id", required_argument, NULL, O_ID},
        {"sha256", required_argument, NULL, O_SHA},
        {"expires-at", required_argument, NULL, O_EXP},
        {"disabled", no_argument, NULL, O_DIS},
        {"tier", required_argument, NULL, O_TIER},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *what = argv[0]; /* "keys" or "accounts" */
    const char *admin = getenv("RATEWALL_ADMIN"), *token_file = NULL, *account = NULL,
               *id = NULL, *sha = NULL, *exp = NULL, *tier = NULL;
    int disabled = 0, o;
    if (!admin || !*admin)
        admin = "127.0.0.1:9090";
    optind = 1;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case O_ADMIN: admin = optarg; break;
        case O_TOKEN: token_file = optarg; break;
        case O_ACCOUNT: account = optarg; break;
        case O_ID: id = optarg; break;
        case O_SHA: sha = optarg; break;
        case O_EXP: exp = optarg; break;
        case O_DIS: disabled = 1; break;
        case O_TIER: tier = optarg; break;
        case O_HELP: cli_usage(stdout); return 0;
        default: cli_usage(stderr); return 2;
        }
    }
    int keys = strcmp(what, "keys") == 0;
    const char *verb = optind < argc ? argv[optind++] : NULL;
    const char *arg = optind < argc ? argv[optind++] : NULL;
    if (!verb || optind < argc) {
        cli_usage(stderr);
        return 2;
    }
    const char *base = keys ? "/admin/keys" : "/admin/accounts";
    char path[512], esc[256];
    const char *method = NULL;
    json_t *body = NULL;
    int needs_arg = 0;
    if (strcmp(verb, "create") == 0) {
        method = "POST";
        snprintf(path, sizeof path, "%s", base);
        if (keys) {
            if (!account || arg) {
                fprintf(stderr, "gateway: keys create takes --account ACCOUNT\n");
                return 2;
            }
            char gen[32];
            if (!id) {
                unsigned char r[4];
                if (RAND_bytes(r, sizeof r) != 1)
                    return 1;
                snprintf(gen, sizeof gen, "key_%02x%02x%02x%02x", r[0], r[1], r[2], r[3]);
                id = gen;
            }
            body = json_pack("{s:s,s:s}", "id", id, "account", account);
            if (sha)
                json_object_set_new(body, "sha256", json_string(sha));
            if (exp)
                json_object_set_new(body, "expires_at", json_string(exp));
        } else {
            if (!arg || !tier) {
                fprintf(stderr, "gateway: accounts create takes ID --tier TIER\n");
                return 2;
            }
            body = json_pack("{s:s,s:s}", "id", arg, "tier", tier);
        }
        if (disabled)
            json_object_set_new(body, "disabled", json_true());
    } else if (strcmp(verb, "list") == 0) {
        method = "GET";
        if (keys && account) {
            path_escape(account, esc, sizeof esc);
            snprintf(path, sizeof path, "%s?account=%s", base, esc);
        } else {
            snprintf(path, sizeof path, "%s", base);
        }
        if (arg) {
            cli_usage(stderr);
            return 2;
        }
    } else if (strcmp(verb, "get") == 0) {
        method = "GET";
        needs_arg = 1;
    } else if ((keys && strcmp(verb, "revoke") == 0) || (!keys && strcmp(verb, "delete") == 0)) {
        method = "DELETE";
        needs_arg = 1;
    } else if (keys && (strcmp(verb, "disable") == 0 || strcmp(verb, "enable") == 0)) {
        method = "PATCH";
        needs_arg = 1;
        body = json_pack("{s:b}", "disabled", strcmp(verb, "disable") == 0);
    } else {
        fprintf(stderr, "gateway: unknown command \"%s %s\"\n", what, verb);
        cli_usage(stderr);
        return 2;
    }
    if (needs_arg) {
        if (!arg) {
            fprintf(stderr, "gateway: %s %s takes an ID\n", what, verb);
            json_decref(body);
            return 2;
        }
        path_escape(arg, esc, sizeof esc);
        snprintf(path, sizeof path, "%s/%s", base, esc);
    }
    char *token = read_token(token_file);
    if (!token) {
        json_decref(body);
        return 2;
    }
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    char *answer = NULL;
    int status = exchange(admin, token, method, path, text, &answer);
    OPENSSL_cleanse(token, strlen(token));
    free(token);
    free(text);
    return show(status, answer);
}
