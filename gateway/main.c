/*
 * gateway/main.c: the command line, signals, reload and the
 * process's start and end. The main thread runs only signal events; the
 * workers serve.
 */
#include <getopt.h>
#include <malloc.h>
#include <pthread.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "log.h"
#include "request.h"
#include "admin.h"
#include "registry.h"
#include "registry_redis.h"
#include "cli.h"
#include "auth.h"
#include "tls.h"
#include "metrics.h"
#include "server.h"

#ifndef RATEWALL_VERSION
#define RATEWALL_VERSION "dev"
#endif

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: gateway -c FILE              run with the configuration FILE\n"
            "       gateway --check-config FILE [--against RUNNING]\n"
            "                                    validate FILE: prints ok, or one\n"
            "                                    FILE:LINE:COL: message per error;\n"
            "                                    with RUNNING, warns of counters that\n"
            "                                    a reload from RUNNING would start afresh\n"
            "       gateway --new-key [--prefix P]  print a new API key and its SHA-256\n"
            "       gateway --hash-key           read a key on stdin, print its SHA-256\n"
            "       gateway keys|accounts COMMAND ...  manage keys and accounts through\n"
            "                                    the admin listener (gateway keys --help)\n"
            "       gateway --version | --help\n"
            "Options: --log-level error|warn|info|debug (default info)\n"
            "         --access-log FILE  one JSON line per request to FILE (- for stdout)\n"
            "Signals: SIGHUP reloads the configuration; SIGTERM/SIGINT drain and exit.\n");
}

static void hex(const unsigned char *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static int cmd_new_key(const char *prefix)
{
    unsigned char rnd[32];
    if (RAND_bytes(rnd, sizeof rnd) != 1) {
        fprintf(stderr, "gateway: no randomness available\n");
        return 1;
    }
    /* base64url without padding: 43 characters for 32 bytes. */
    unsigned char b64[64];
    int n = EVP_EncodeBlock(b64, rnd, sizeof rnd);
    while (n > 0 && b64[n - 1] == '=')
        n--;
    for (int i = 0; i < n; i++)
        b64[i] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : b64[i];
    b64[n] = '\0';
    char key[128];
    snprintf(key, sizeof key, "%s%s", prefix ? prefix : "sk_", (char *)b64);
    unsigned char d[AUTH_DIGEST_LEN];
    auth_digest(key, strlen(key), d);
    char h[65];
    hex(d, sizeof d, h);
    printf("%s\n%s\n", key, h);
    OPENSSL_cleanse(rnd, sizeof rnd);
    OPENSSL_cleanse(key, sizeof key);
    return 0;
}

static int cmd_hash_key(void)
{
    char line[4096];
    if (!fgets(line, sizeof line, stdin)) {
        fprintf(stderr, "gateway: --hash-key reads one key from standard input\n");
        return 1;
    }
    size_t n = strcspn(line, "\r\n");
    line[n] = '\0';
    if (n == 0) {
        fprintf(stderr, "gateway: empty key\n");
        return 1;
    }
    unsigned char d[AUTH_DIGEST_LEN];
    auth_digest(line, n, d);
    char h[65];
    hex(d, sizeof d, h);
    printf("%s\n", h);
    OPENSSL_cleanse(line, sizeof line);
    return 0;
}

static void print_messages(const cfg_messages_t *m)
{
    for (size_t i = 0; i < m->n_warnings; i++)
        fprintf(stderr, "%s\n", m->warnings[i]);
    for (size_t i = 0; i < m->n_errors; i++)
        fprintf(stderr, "%s\n", m->errors[i]);
}

static void note_stderr(void *arg, const char *line)
{
    fprintf(stderr, "%s: %s\n", (const char *)arg, line);
}

static void note_log(void *arg, const char *line)
{
    log_msg(LOG_WARN, "%s: %s", (const char *)arg, line);
}

/* --check-config FILE [--against RUNNING]: with RUNNING (the configuration
 * a gateway runs now), also name the limits whose counters a reload to
 * FILE would start afresh (warnings: the exit status stays that of FILE). */
static int cmd_check(const char *path, const char *against)
{
    cfg_messages_t m = {0};
    config_t *c = config_load(path, &m);
    print_messages(&m);
    cfg_messages_free(&m);
    if (!c)
        return 1;
    if (against) {
        cfg_messages_t om = {0};
        config_t *old = config_load(against, &om);
        cfg_messages_free(&om);
        if (old) {
            config_counter_changes(old, c, note_stderr, (void *)path);
            config_unref(old);
        } else {
            fprintf(stderr, "%s: warning: not a valid configuration; nothing compared with it\n",
                    against);
        }
    }
    config_unref(c);
    printf("ok\n");
    return 0;
}

/* The running process. */
typedef struct app {
    char *path;
    config_t *cfg;
    store_t *store;
    worker_t *workers;
    int n_workers;
    struct event_base *base;
    int stopping;
} app_t;

static int same_str(const char *x, const char *y)
{
    return (!x && !y) || (x && y && strcmp(x, y) == 0);
}

static int same_sentinels(const config_t *x, const config_t *y)
{
    if (!same_str(x->storage.sentinel_master, y->storage.sentinel_master) ||
        !same_str(x->storage.sentinel_password, y->storage.sentinel_password) ||
        x->storage.n_sentinels != y->storage.n_sentinels)
        return 0;
    for (size_t i = 0; i < x->storage.n_sentinels; i++)
        if (!same_str(x->storage.sentinel_hosts[i], y->storage.sentinel_hosts[i]) ||
            x->storage.sentinel_ports[i] != y->storage.sentinel_ports[i])
            return 0;
    if (x->storage.n_cluster != y->storage.n_cluster)
        return 0;
    for (size_t i = 0; i < x->storage.n_cluster; i++)
        if (!same_str(x->storage.cluster_hosts[i], y->storage.cluster_hosts[i]) ||
            x->storage.cluster_ports[i] != y->storage.cluster_ports[i])
            return 0;
    return 1;
}

static int same_storage(const config_t *x, const config_t *y)
{
    return x->storage.driver == y->storage.driver && same_str(x->storage.host, y->storage.host) &&
           x->storage.port == y->storage.port &&
           same_str(x->storage.password, y->storage.password) && x->storage.db == y->storage.db &&
           x->storage.timeout_ms == y->storage.timeout_ms &&
           x->storage.on_error == y->storage.on_error &&
           same_str(x->storage.key_prefix, y->storage.key_prefix) && same_sentinels(x, y);
}

static void free_ssl_ctx(void *ctx)
{
    SSL_CTX_free(ctx);
}

/* The listener's TLS context for a freshly loaded snapshot (a renewed
 * certificate is read again on every load). -1 with a message. */
static int attach_tls(config_t *c, char *err, size_t len)
{
    if (!c->server.tls_cert_file)
        return 0;
    SSL_CTX *ctx = tls_server_ctx(c->server.tls_cert_file, c->server.tls_key_file, err, len);
    if (!ctx)
        return -1;
    c->tls_ctx = ctx;
    c->tls_free = free_ssl_ctx;
    return 0;
}

static pthread_mutex_t reload_mu = PTHREAD_MUTEX_INITIALIZER;
static app_t *the_app;

/* Load the file with the API's keys and accounts (doc), validate, swap in.
 * 0 on success; messages in *m either way. */
static int reload_with(app_t *a, const json_t *doc, int api, cfg_messages_t *m_out)
{
    pthread_mutex_lock(&reload_mu);
    cfg_messages_t m = {0};
    config_t *next = config_load_with(a->path, doc, &m);
    for (size_t i = 0; i < m.n_warnings; i++)
        log_msg(LOG_WARN, "%s", m.warnings[i]);
    if (!next && api) {
        /* A change through the admin API that does not hold: its caller
         * answers 400 with these messages. */
        log_msg(LOG_INFO, "a change of keys or accounts refused: %zu error(s)", m.n_errors);
        *m_out = m;
        pthread_mutex_unlock(&reload_mu);
        return -1;
    }
    if (!next) {
        for (size_t i = 0; i < m.n_errors; i++)
            log_msg(LOG_ERROR, "reload refused: %s", m.errors[i]);
        log_msg(LOG_ERROR, "reload refused: %zu error(s); the running configuration stays",
                m.n_errors);
        metrics_reload(0);
        *m_out = m;
        pthread_mutex_unlock(&reload_mu);
        return -1;
    }
    char terr[512];
    if ((!next->server.tls_cert_file) != (!a->cfg->server.tls_cert_file) ||
        attach_tls(next, terr, sizeof terr) != 0) {
        if ((!next->server.tls_cert_file) != (!a->cfg->server.tls_cert_file))
            snprintf(terr, sizeof terr, "server.tls can be added or removed on restart only");
        log_msg(LOG_ERROR, "reload refused: %s", terr);
        metrics_reload(0);
        /* Give the caller the reason as one more error line. */
        char **e = realloc(m.errors, (m.n_errors + 1) * sizeof *e);
        if (e) {
            m.errors = e;
            if (asprintf(&m.errors[m.n_errors], "%s: %s", a->path, terr) >= 0)
                m.n_errors++;
        }
        *m_out = m;
        config_unref(next);
        pthread_mutex_unlock(&reload_mu);
        return -1;
    }
    *m_out = m;
    if (strcmp(next->server.listen_host, a->cfg->server.listen_host) != 0 ||
        next->server.listen_port != a->cfg->server.listen_port ||
        next->server.workers != a->cfg->server.workers ||
        !same_storage(next, a->cfg))
        log_msg(LOG_WARN, "server.listen, server.workers and storage take effect "
                          "on restart only");
    config_counter_changes(a->cfg, next, note_log, a->path);
    for (int i = 0; i < a->n_workers; i++)
        server_worker_swap(&a->workers[i], next);
    config_unref(a->cfg);
    a->cfg = next;
    if (api) {
        log_msg(LOG_INFO, "keys and accounts changed (%zu keys)", next->n_keys);
    } else {
        log_msg(LOG_INFO, "configuration reloaded from %s (%zu keys)", a->path, next->n_keys);
        metrics_reload(1);
    }
    malloc_trim(0); /* the parse of a large keys_file leaves free memory behind */
    pthread_mutex_unlock(&reload_mu);
    return 0;
}

static int reload_into(app_t *a, cfg_messages_t *m_out)
{
    json_t *doc = registry_get();
    int rc = reload_with(a, doc, 0, m_out);
    json_decref(doc);
    return rc;
}

static int registry_apply_app(const json_t *doc, cfg_messages_t *m)
{
    return reload_with(the_app, doc, 1, m);
}

static void reload(app_t *a)
{
    cfg_messages_t m = {0};
    reload_into(a, &m);
    cfg_messages_free(&m);
}

static int admin_reload(cfg_messages_t *m)
{
    return reload_into(the_app, m);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    app_t *a = arg;
    if (sig == SIGHUP) {
        reload(a);
        return;
    }
    if (a->stopping)
        log_msg(LOG_WARN, "second signal: stopping at once");
    else
        log_msg(LOG_INFO, "stopping: draining in-flight requests (up to %lld ms)",
                (long long)a->cfg->server.drain_timeout_ms);
    a->stopping++;
    for (int i = 0; i < a->n_workers; i++)
        server_worker_stop(&a->workers[i]);
}

static void on_worker_exit(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    app_t *a = arg;
    /* Activations of one event coalesce: count the workers' own flags. */
    for (int i = 0; i < a->n_workers; i++)
        if (!atomic_load(&a->workers[i].exited))
            return;
    event_base_loopexit(a->base, NULL);
}

static void store_log(const char *line)
{
    log_msg(LOG_WARN, "%s", line);
}

static int run(const char *path)
{
    app_t a = {0};
    a.path = (char *)path;
    the_app = &a;
    admin_set_reload(admin_reload);
    cfg_messages_t m = {0};
    a.cfg = config_load(path, &m);
    if (a.cfg) {
        /* Keys and accounts made through the admin API join the file's. */
        char rerr[512];
        if (registry_init(a.cfg, registry_apply_app, rerr, sizeof rerr) != 0) {
            log_msg(LOG_ERROR, "%s", rerr);
            config_unref(a.cfg);
            cfg_messages_free(&m);
            return 1;
        }
        json_t *doc = registry_get();
        if (doc && json_array_size(json_object_get(doc, "keys")) +
                           json_object_size(json_object_get(doc, "accounts")) >
                       0) {
            config_unref(a.cfg);
            cfg_messages_free(&m);
            a.cfg = config_load_with(path, doc, &m);
        }
        json_decref(doc);
    }
    print_messages(&m);
    cfg_messages_free(&m);
    if (!a.cfg) {
        registry_free();
        return 1;
    }
    malloc_trim(0); /* give back what parsing the file took */
    char terr[512];
    if (attach_tls(a.cfg, terr, sizeof terr) != 0) {
        log_msg(LOG_ERROR, "%s", terr);
        config_unref(a.cfg);
        return 1;
    }
    const config_t *c = a.cfg;

    if (c->storage.driver == CFG_STORE_REDIS) {
        store_redis_opts_t ro = {
            .host = c->storage.host,
            .port = c->storage.port,
            .password = c->storage.password,
            .db = c->storage.db,
            .timeout_ms = c->storage.timeout_ms,
            .on_error_allow = c->storage.on_error == CFG_ON_ERROR_ALLOW,
            .key_prefix = c->storage.key_prefix,
            .log = store_log,
            .sentinel_master = c->storage.sentinel_master,
            .sentinel_password = c->storage.sentinel_password,
            .sentinel_hosts = (const char *const *)c->storage.sentinel_hosts,
            .sentinel_ports = c->storage.sentinel_ports,
            .n_sentinels = c->storage.n_sentinels,
            .cluster_hosts = (const char *const *)c->storage.cluster_hosts,
            .cluster_ports = c->storage.cluster_ports,
            .n_cluster = c->storage.n_cluster,
        };
        a.store = store_redis_new(&ro);
    } else {
        a.store = store_memory_new(NULL, NULL);
    }
    if (!a.store) {
        log_msg(LOG_ERROR, "out of memory");
        config_unref(a.cfg);
        return 1;
    }

    char perr[256];
    int in_use = server_address_in_use(c->server.listen_host, c->server.listen_port, perr,
                                       sizeof perr);
    if (in_use < 0) {
        log_msg(LOG_ERROR, "%s", perr);
        store_destroy(a.store);
        config_unref(a.cfg);
        return 1;
    }
    if (in_use && c->storage.driver != CFG_STORE_REDIS) {
        /* Two instances on one port would split its connections and
         * each count alone against the same limits. */
        log_msg(LOG_ERROR,
                "another process already listens on %s:%u; refusing to start: with the "
                "memory store each instance would count alone (stop the other one, "
                "choose another server.listen, or share the counters through the Redis "
                "store)",
                c->server.listen_host, c->server.listen_port);
        store_destroy(a.store);
        config_unref(a.cfg);
        return 1;
    }
    if (in_use)
        log_msg(LOG_WARN,
                "another process already listens on %s:%u; sharing the port with it "
                "(SO_REUSEPORT): connections are split between the processes, counters "
                "are shared through Redis",
                c->server.listen_host, c->server.listen_port);

    int n = c->server.workers;
    if (n <= 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        n = cores > 0 ? (int)cores : 1;
    }
    a.workers = calloc((size_t)n, sizeof *a.workers);
    int rc = 1;
    int started = 0, inited = 0;
    for (int i = 0; a.workers && i < n; i++) {
        char err[256];
        int fd = server_listen_socket(c->server.listen_host, c->server.listen_port, 1, err,
                                      sizeof err);
        if (fd < 0) {
            log_msg(LOG_ERROR, "%s", err);
            goto out_workers;
        }
        inited = i + 1;
        if (server_worker_init(&a.workers[i], i, a.cfg, a.store, fd) != 0) {
            log_msg(LOG_ERROR, "cannot set up worker %d", i);
            goto out_workers;
        }
    }
    a.n_workers = n;
    if (c->storage.driver == CFG_STORE_REDIS && registry_redis_start(a.workers[0].base, c) != 0) {
        log_msg(LOG_ERROR, "cannot set up the key registry's Redis connections");
        goto out_workers;
    }

    a.base = event_base_new();
    struct event *sig[3];
    int signos[3] = {SIGHUP, SIGTERM, SIGINT};
    for (int i = 0; i < 3; i++) {
        sig[i] = evsignal_new(a.base, signos[i], on_signal, &a);
        event_add(sig[i], NULL);
    }
    struct event *exit_ev = event_new(a.base, -1, 0, on_worker_exit, &a);
    for (int i = 0; i < n; i++)
        a.workers[i].exit_notify = exit_ev;
    for (int i = 0; i < n; i++) {
        if (server_worker_start(&a.workers[i]) != 0) {
            log_msg(LOG_ERROR, "cannot start worker %d", i);
            for (int j = 0; j < started; j++)
                server_worker_stop(&a.workers[j]);
            goto out_signals;
        }
        started++;
    }
    log_msg(LOG_INFO, "ratewall %s listening on %s:%u (%d worker%s, %s store, %zu keys)",
            RATEWALL_VERSION, c->server.listen_host, c->server.listen_port, n,
            n == 1 ? "" : "s", a.store->ops->name, c->n_keys);
    event_base_dispatch(a.base);
    rc = 0;

out_signals:
    for (int i = 0; i < started; i++) {
        if (i == 0) {
            /* The registry's Redis connections live on worker 0's base. */
            pthread_join(a.workers[0].thread, NULL);
            registry_redis_stop();
            server_worker_free(&a.workers[0]);
        } else {
            server_worker_join_free(&a.workers[i]);
        }
    }
    event_free(exit_ev);
    for (int i = 0; i < 3; i++)
        event_free(sig[i]);
    event_base_free(a.base);
out_workers:
    registry_redis_stop();
    for (int i = started; i < inited; i++)
        server_worker_free(&a.workers[i]);
    free(a.workers);
    store_destroy(a.store);
    registry_free();
    config_unref(a.cfg);
    if (rc == 0)
        log_msg(LOG_INFO, "stopped");
    return rc;
}

int main(int argc, char **argv)
{
    enum { OPT_CHECK = 256, OPT_AGAINST, OPT_NEW_KEY, OPT_PREFIX, OPT_HASH_KEY, OPT_VERSION, OPT_LOG,
           OPT_ACCESS_LOG };
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", required_argument, NULL, OPT_CHECK},
        {"against", required_argument, NULL, OPT_AGAINST},
        {"new-key", no_argument, NULL, OPT_NEW_KEY},
        {"prefix", required_argument, NULL, OPT_PREFIX},
        {"hash-key", no_argument, NULL, OPT_HASH_KEY},
        {"version", no_argument, NULL, OPT_VERSION},
        {"log-level", required_argument, NULL, OPT_LOG},
        {"access-log", required_argument, NULL, OPT_ACCESS_LOG},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    if (argc > 1 && (strcmp(argv[1], "keys") == 0 || strcmp(argv[1], "accounts") == 0))
        return cli_main(argc - 1, argv + 1);
    const char *config = NULL, *check = NULL, *prefix = NULL, *access_log = NULL,
               *against = NULL;
    int new_key = 0, hash_key = 0;
    int o;
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': config = optarg; break;
        case OPT_CHECK: check = optarg; break;
        case OPT_AGAINST: against = optarg; break;
        case OPT_NEW_KEY: new_key = 1; break;
        case OPT_PREFIX: prefix = optarg; break;
        case OPT_ACCESS_LOG: access_log = optarg; break;
        case OPT_HASH_KEY: hash_key = 1; break;
        case OPT_VERSION: printf("ratewall gateway %s\n", RATEWALL_VERSION); return 0;
        case OPT_LOG: {
            static const char *const lv[] = {"error", "warn", "info", "debug"};
            int found = 0;
            for (int i = 0; i < 4; i++)
                if (strcasecmp(optarg, lv[i]) == 0) {
                    log_level = i;
                    found = 1;
                }
            if (!found) {
                fprintf(stderr, "gateway: unknown log level \"%s\"\n", optarg);
                return 2;
            }
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "gateway: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (against && !check) {
        fprintf(stderr, "gateway: --against goes with --check-config\n");
        return 2;
    }
    if (prefix && !new_key) {
        fprintf(stderr, "gateway: --prefix goes with --new-key\n");
        return 2;
    }
    if (new_key)
        return cmd_new_key(prefix);
    if (hash_key)
        return cmd_hash_key();
    if (check)
        return cmd_check(check, against);
    if (!config) {
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (evthread_use_pthreads() != 0) {
        fprintf(stderr, "gateway: libevent without thread support\n");
        return 1;
    }
    if (access_log && access_log_open(access_log) != 0) {
        fprintf(stderr, "gateway: cannot open the access log %s\n", access_log);
        return 1;
    }
    log_start();
    int rc = run(config);
    access_log_close();
    log_stop();
    return rc;
}
