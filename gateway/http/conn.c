/*
 * gateway/http/conn.c: a connection's lifetime, below the three files that
 * use it (server.c accepts, input.c reads, output.c writes): pausing its
 * reading, what its output still holds, closing it (at once, or lingering
 * so the client reads the answer), and freeing it once nothing holds it
 * (conn.h has the rules).
 */
#include <stdlib.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "conn.h"
#include "peers.h"

void conn_server_destroy(h1_server_t *s)
{
    free(s->busy_answer[0]);
    free(s->busy_answer[1]);
    free(s);
}

static void server_unlink(h1_server_t *s, h1_conn_t *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->n_conns--;
    if (s->freeing && s->n_conns == 0)
        conn_server_destroy(s);
}

void conn_maybe_free(h1_conn_t *c)
{
    if (!c->dead || c->open || c->busy)
        return;
    event_del(&c->later);
    if (c->body)
        evbuffer_free(c->body);
    if (c->out)
        evbuffer_free(c->out);
    free(c->ibuf);
    free(c->head);
    free(c->obuf);
    server_unlink(c->srv, c);
    free(c);
}

/* Close the socket. The struct stays while its exchange is open; the
 * callee hears of it through the close callback, from the loop. */
void conn_fail(h1_conn_t *c)
{
    if (c->dead)
        return;
    c->dead = 1;
    if (c->peer_counted) {
        peers_give((const struct sockaddr *)&c->peer);
        c->peer_counted = 0;
    }
    if (c->bev) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    } else {
        event_del(&c->rev);
        c->rev_timed = 0;
        event_del(&c->wev);
        evutil_closesocket(c->fd);
    }
    c->fd = -1;
    if (c->open && c->close_cb && !c->notified)
        event_active(&c->later, EV_TIMEOUT, 1);
}

void conn_pause_reading(h1_conn_t *c, int pause)
{
    if (c->dead || c->reading_paused == pause)
        return;
    c->reading_paused = pause;
    if (c->bev) {
        if (pause)
            bufferevent_disable(c->bev, EV_READ);
        else
            bufferevent_enable(c->bev, EV_READ);
    } else if (pause) {
        event_del(&c->rev);
        c->rev_timed = 0;
    } else {
        conn_arm_read(c);
    }
}

void conn_read_ran(h1_conn_t *c)
{
    event_base_gettimeofday_cached(c->srv->base, &c->rev_at);
    c->rev_timed = 1;
}

void conn_arm_read(h1_conn_t *c)
{
    struct timeval now;
    event_base_gettimeofday_cached(c->srv->base, &now);
    if (c->rev_timed && evutil_timercmp(&now, &c->rev_at, ==))
        return;
    event_add(&c->rev, c->srv->ctv);
    c->rev_at = now;
    c->rev_timed = 1;
}

size_t conn_pending(const h1_conn_t *c)
{
    if (c->dead)
        return 0;
    if (c->bev)
        return evbuffer_get_length(bufferevent_get_output(c->bev));
    return evbuffer_get_length(c->out);
}

void conn_close_or_linger(h1_conn_t *c)
{
    if (c->dead)
        return;
    int unread = c->ilen > c->ipos || c->body_refused;
    if (c->bev || !unread) {
        conn_fail(c);
        return;
    }
    /* Let the client read the answer: shut our side, drop its input for a
     * moment, then close. */
    c->state = ST_LINGER;
    c->linger_until_ms = now_ms(c) + LINGER_MS;
    c->ipos = c->ilen = 0;
    shutdown(c->fd, SHUT_WR);
    struct timeval tv = {LINGER_MS / 1000, (LINGER_MS % 1000) * 1000};
    event_del(&c->rev);
    c->reading_paused = 0;
    c->rev_timed = 0;
    event_add(&c->rev, &tv);
}
