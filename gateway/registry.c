/*
 * gateway/registry.c: the document of API-made keys and accounts, and the
 * memory store's state file (see registry.h).
 */
#include "registry.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static json_t *doc;            /* owned; guarded by mu */
static char *state_file;       /* memory store only; NULL with Redis */
static registry_apply_fn apply_fn;

static json_t *empty_doc(void)
{
    return json_pack("{s:{},s:[]}", "accounts", "keys");
}

int registry_init(const config_t *cfg, registry_apply_fn apply, char *err, size_t errlen)
{
    apply_fn = apply;
    json_t *d = NULL;
    if (cfg->storage.driver == CFG_STORE_MEMORY && cfg->storage.state_file) {
        state_file = strdup(cfg->storage.state_file);
        if (!state_file) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        if (access(state_file, F_OK) == 0) {
            json_error_t je;
            d = json_load_file(state_file, JSON_REJECT_DUPLICATES, &je);
            if (!d || !json_is_object(d) || !json_is_object(json_object_get(d, "accounts")) ||
                !json_is_array(json_object_get(d, "keys"))) {
                snprintf(err, errlen, "%s:%d:%d: %s", state_file, d ? 1 : je.line,
                         d ? 1 : je.column,
                         d ? "a state file holds {\"accounts\": {...}, \"keys\": [...]}"
                           : je.text);
                json_decref(d);
                return -1;
            }
        }
    }
    if (!d)
        d = empty_doc();
    pthread_mutex_lock(&mu);
    json_decref(doc);
    doc = d;
    pthread_mutex_unlock(&mu);
    return d ? 0 : -1;
}

void registry_free(void)
{
    pthread_mutex_lock(&mu);
    json_decref(doc);
    doc = NULL;
    free(state_file);
    state_file = NULL;
    pthread_mutex_unlock(&mu);
}

json_t *registry_get(void)
{
    pthread_mutex_lock(&mu);
    json_t *d = doc ? json_deep_copy(doc) : empty_doc();
    pthread_mutex_unlock(&mu);
    return d;
}

int registry_apply(const json_t *d, cfg_messages_t *msgs)
{
    if (!apply_fn) {
        memset(msgs, 0, sizeof *msgs);
        return -1;
    }
    return apply_fn(d, msgs);
}

/* Write the document beside its final name, fsync, rename over it, fsync
 * the directory: a crash leaves the old file or the new one, never half. */
static int write_state(const json_t *d)
{
    char *tmp = NULL;
    if (asprintf(&tmp, "%s.tmp.%ld", state_file, (long)getpid()) < 0)
        return -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        log_msg(LOG_ERROR, "cannot write %s: %s", tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    char *text = json_dumps(d, JSON_INDENT(2) | JSON_SORT_KEYS);
    size_t n = text ? strlen(text) : 0, off = 0;
    int ok = text != NULL;
    while (ok && off < n) {
        ssize_t w = write(fd, text + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            ok = 0;
        else
            off += (size_t)w;
    }
    if (ok && (write(fd, "\n", 1) != 1 || fsync(fd) != 0))
        ok = 0;
    if (close(fd) != 0)
        ok = 0;
    free(text);
    if (ok && rename(tmp, state_file) != 0)
        ok = 0;
    if (!ok) {
        log_msg(LOG_ERROR, "cannot write %s: %s", state_file, strerror(errno));
        unlink(tmp);
    } else {
        const char *slash = strrchr(state_file, '/');
        char *dir = slash ? strndup(state_file, (size_t)(slash - state_file)) : strdup(".");
        int dfd = dir ? open(*dir ? dir : "/", O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
        free(dir);
    }
    free(tmp);
    return ok ? 0 : -1;
}

static int cmp_id(const void *a, const void *b)
{
    const char *x = json_string_value(json_object_get(*(json_t *const *)a, "id"));
    const char *y = json_string_value(json_object_get(*(json_t *const *)b, "id"));
    return strcmp(x ? x : "", y ? y : "");
}

/* Keys in id order: the same content is the same document everywhere. */
static void sort_keys(json_t *d)
{
    json_t *keys = json_object_get(d, "keys");
    size_t n = json_array_size(keys);
    json_t **v = n > 1 ? calloc(n, sizeof *v) : NULL;
    if (!v)
        return;
    for (size_t i = 0; i < n; i++)
        v[i] = json_incref(json_array_get(keys, i));
    qsort(v, n, sizeof *v, cmp_id);
    json_array_clear(keys);
    for (size_t i = 0; i < n; i++)
        json_array_append_new(keys, v[i]);
    free(v);
}

int registry_put(json_t *d, cfg_messages_t *msgs)
{
    sort_keys(d);
    if (registry_apply(d, msgs) != 0) {
        json_decref(d);
        return -1;
    }
    pthread_mutex_lock(&mu);
    if (state_file && write_state(d) != 0) {
        /* Not kept, so not in force either: back to what the file holds. */
        json_t *old = doc ? json_incref(doc) : NULL;
        pthread_mutex_unlock(&mu);
        cfg_messages_t m = {0};
        registry_apply(old, &m);
        cfg_messages_free(&m);
        json_decref(old);
        json_decref(d);
        return -2;
    }
    json_decref(doc);
    doc = d;
    pthread_mutex_unlock(&mu);
    return 0;
}

void registry_adopt(json_t *d)
{
    pthread_mutex_lock(&mu);
    json_decref(doc);
    doc = d;
    pthread_mutex_unlock(&mu);
}

json_t *registry_doc_key(json_t *d, const char *id, size_t *idx)
{
    json_t *keys = json_object_get(d, "keys");
    size_t i;
    json_t *k;
    json_array_foreach(keys, i, k) {
        const char *kid = json_string_value(json_object_get(k, "id"));
        if (kid && strcmp(kid, id) == 0) {
            if (idx)
                *idx = i;
            return k;
        }
    }
    return NULL;
}
