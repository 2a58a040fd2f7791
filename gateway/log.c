/* gateway/log.c: operational messages on stderr, one line each, with time
 * and level, and the line writer behind them and the access log: lines are
 * queued and written by a thread of its own, so no worker waits on I/O.
 * API keys are never passed here; key ids are. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

int log_level = LOG_INFO;

static void *linelog_main(void *arg)
{
    linelog_t *l = arg;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (l->n == 0 && !l->stop)
            pthread_cond_wait(&l->cv, &l->mu);
        if (l->n == 0 && l->stop)
            break;
        char *line = l->q[l->head];
        l->head = (l->head + 1) % LINELOG_QUEUE;
        l->n--;
        pthread_mutex_unlock(&l->mu);
        fputs(line, l->out);
        fputc('\n', l->out);
        free(line);
        pthread_mutex_lock(&l->mu);
        if (l->n == 0)
            fflush(l->out);
    }
    pthread_mutex_unlock(&l->mu);
    fflush(l->out);
    return NULL;
}

int linelog_open(linelog_t *l, FILE *out)
{
    memset(l, 0, sizeof *l);
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    l->out = out;
    if (pthread_create(&l->thread, NULL, linelog_main, l) != 0)
        return -1;
    l->open = 1;
    return 0;
}

int linelog_put(linelog_t *l, char *line)
{
    pthread_mutex_lock(&l->mu);
    if (l->n == LINELOG_QUEUE) {
        pthread_mutex_unlock(&l->mu);
        free(line);
        return -1;
    }
    l->q[(l->head + l->n) % LINELOG_QUEUE] = line;
    l->n++;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
    return 0;
}

void linelog_close(linelog_t *l)
{
    if (!l->open)
        return;
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->thread, NULL);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
    l->open = 0;
}

/* Operational messages go through a writer of their own while the gateway
 * runs (log_start); before and after, straight to stderr. */
static linelog_t oplog;

void log_start(void)
{
    linelog_open(&oplog, stderr);
}

void log_stop(void)
{
    linelog_close(&oplog);
}

void log_msg(int level, const char *fmt, ...)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    if (level > log_level)
        return;
    char line[1024];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, names[level]);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof line)
        vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    char *copy = oplog.open ? strdup(line) : NULL;
    if (copy)
        linelog_put(&oplog, copy); /* a full queue drops the line */
    else
        fprintf(stderr, "%s\n", line);
}
