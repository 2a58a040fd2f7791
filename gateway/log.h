/* gateway/log.h: the operator's log (stderr) and the line writer that the
 * access log shares, both written by a thread of their own. */
#ifndef RW_GATEWAY_LOG_H
#define RW_GATEWAY_LOG_H

#include <pthread.h>
#include <stddef.h>
#include <stdio.h>

#define LINELOG_QUEUE 8192
/* Lines written by a thread of its own; put() never waits on I/O.
 * Ownership: the queued lines are owned until written; `out` is borrowed. */
typedef struct linelog {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    char *q[LINELOG_QUEUE]; /* owned lines */
    size_t head, n;
    FILE *out;              /* borrowed */
    int stop, open;
} linelog_t;
int linelog_open(linelog_t *l, FILE *out);
/* Takes line (malloc'd); -1 when the queue is full and the line dropped. */
int linelog_put(linelog_t *l, char *line);
void linelog_close(linelog_t *l);
void log_start(void);
void log_stop(void);
enum { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };
extern int log_level;
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
