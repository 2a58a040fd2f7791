/*
 * pace: an open-loop HTTP/1.1 load generator at a fixed request rate, for the
 * "added latency at half of peak" runs of tests/bench/run.
 *
 * Why it is written here: the tool made for this, wrk2, is not packaged by
 * Debian, and a wrk Lua delay() pacer counts in whole milliseconds, so it
 * sends its requests in bursts, one burst each millisecond (at 20,000 req/s,
 * twenty requests at once): what it measures then is how long a burst takes
 * to drain, not the latency a proxy adds to a request.
 *
 * What it does: RATE send slots a second, 1/RATE seconds apart, from a
 * timerfd with nanosecond resolution (and a timer slack of 1 ns). Slots go
 * out in their order, each on the next idle keep-alive connection; when none
 * is idle, a slot waits for the first one to free. Latency is counted from
 * the slot, not from the moment it went out, so a server that holds its
 * clients back is charged for the wait (what wrk2 calls correcting
 * coordinated omission). One thread, one epoll set, non-blocking sockets;
 * answers must carry Content-Length (every server in the bench does), any
 * other answer is a read error. A server that closes a connection (after an
 * answer with "Connection: close", or an idle one) is reconnected.
 *
 * usage: pace -r RATE -c CONNECTIONS -d SECONDS [-w WARMUP_SECONDS]
 *             [-m METHOD] [-b BODY] [-H 'Name: value']... http://IPv4:PORT/PATH
 *
 * Prints one line in the format of the bench's wrk done() script:
 *   RESULT requests=N duration_us=N bytes=N status=N connect=N read=N
 *          write=N timeout=N p50=N p90=N p99=N p999=N max=N mean=F
 * requests, the latencies (microseconds), status (answers of status 400 or
 * more) and timeout cover the slots of the measured window (after the
 * warm-up, SECONDS long; duration_us is its length): the run goes on after
 * the window until each of them is answered, and one still unanswered five
 * seconds after the window is a timeout. bytes, connect, read and write
 * errors count over the whole run; a request lost to a read or write error
 * is not retried. Exits 1 on a bad argument or when no connection can be
 * made at the start.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define RBUF 16384
#define TIMEOUT_NS (5 * 1000000000LL)

struct conn {
  int fd;       /* -1 while down (reconnected on a later tick) */
  int busy;     /* a request is in flight */
  int in_ring;  /* in the idle ring */
  int64_t slot; /* the send slot of the request in flight (ns) */
  size_t have;  /* bytes of the answer read so far */
  char buf[RBUF];
};

static struct sockaddr_in addr;
static char *req;
static size_t req_len;
static struct conn *conns;
static int nconns, n_down;
static int *idle; /* ring of idle connection indexes */
static int idle_head, idle_n;
static int64_t *waiting; /* ring of slots waiting for a connection, in order */
static size_t wait_cap, wait_head, wait_n;
static uint32_t *lat; /* recorded latencies, us */
static size_t lat_n, lat_cap;
static int64_t t_from, t_to; /* slots in [t_from, t_to) are recorded */
static long long n_bytes, n_status, n_connect, n_read, n_write, n_timeout;
static int ep;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
  fprintf(stderr, "pace: %s\n", what);
  exit(1);
}

static int recorded(int64_t slot) { return slot >= t_from && slot < t_to; }

static void ring_push(struct conn *c) {
  if (c->in_ring || c->fd < 0) return;
  idle[(idle_head + idle_n++) % nconns] = (int)(c - conns);
  c->in_ring = 1;
}

/* A connection made (blocking connect on loopback, then non-blocking),
 * idle and in the ring; 0, or -1 with the connection down. */
static int conn_open(struct conn *c) {
  int one = 1;
  c->busy = 0;
  c->have = 0;
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c->fd >= 0 && connect(c->fd, (struct sockaddr *)&addr, sizeof addr) == 0 &&
      fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) == 0) {
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(c - conns)};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) die("epoll_ctl");
    ring_push(c);
    return 0;
  }
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  n_connect++;
  n_down++;
  return -1;
}

/* Closed and made again. An idle connection stays where it is in the ring
 * (its index is still valid); a busy one's request is lost. */
static void conn_reopen(struct conn *c) {
  if (c->fd >= 0) close(c->fd); /* also leaves the epoll set */
  c->fd = -1;
  conn_open(c);
}

/* The oldest waiting slots, on idle connections, while there are both. */
static void dispatch(void) {
  while (wait_n && idle_n) {
    struct conn *c = &conns[idle[idle_head]];
    idle_head = (idle_head + 1) % nconns;
    idle_n--;
    c->in_ring = 0;
    if (c->fd < 0) continue; /* went down while in the ring */
    int64_t slot = waiting[wait_head];
    wait_head = (wait_head + 1) % wait_cap;
    wait_n--;
    c->busy = 1;
    c->slot = slot;
    c->have = 0;
    /* a request on an idle keep-alive connection never fills its socket
     * buffer: a short write means the connection is gone */
    if (send(c->fd, req, req_len, MSG_NOSIGNAL) != (ssize_t)req_len) {
      n_write++;
      conn_reopen(c);
    }
  }
}

static void wait_push(int64_t slot) {
  if (wait_n == wait_cap) {
    /* keep the ring's order when it grows: unroll it first */
    size_t cap = wait_cap ? wait_cap * 2 : 4096;
    int64_t *n = malloc(cap * sizeof *n);
    if (!n) die("out of memory");
    for (size_t i = 0; i < wait_n; i++) n[i] = waiting[(wait_head + i) % wait_cap];
    free(waiting);
    waiting = n;
    wait_head = 0;
    wait_cap = cap;
  }
  waiting[(wait_head + wait_n++) % wait_cap] = slot;
}

/* 1: a whole answer is in c->buf (*status, *close set); 0: need more;
 * -1: not an answer this tool reads */
static int answer_complete(struct conn *c, int *status, int *close_after) {
  char *end = memmem(c->buf, c->have, "\r\n\r\n", 4);
  if (!end) return c->have == RBUF ? -1 : 0;
  size_t head = (size_t)(end - c->buf) + 4;
  if (head < 12 || memcmp(c->buf, "HTTP/1.", 7) != 0) return -1;
  *status = atoi(c->buf + 9);
  *close_after = 0;
  long long clen = -1;
  for (char *p = memchr(c->buf, '\n', head); p && p < end; p = memchr(p + 1, '\n', (size_t)(end - p))) {
    if (strncasecmp(p + 1, "content-length:", 15) == 0) clen = atoll(p + 16);
    if (strncasecmp(p + 1, "connection:", 11) == 0 && strncasecmp(p + 12 + strspn(p + 12, " "), "close", 5) == 0)
      *close_after = 1;
  }
  if (clen < 0 || head + (size_t)clen > RBUF) return -1;
  if (c->have < head + (size_t)clen) return 0;
  if (c->have > head + (size_t)clen) return -1; /* nothing was pipelined */
  return 1;
}

static void on_readable(struct conn *c) {
  if (c->fd < 0) return; /* an event of this batch for a connection since closed */
  for (;;) {
    ssize_t r = read(c->fd, c->buf + c->have, RBUF - c->have);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (r <= 0) {
      /* an idle connection the server closed is not an error */
      if (c->busy || c->have || r < 0) n_read++;
      conn_reopen(c);
      return;
    }
    c->have += (size_t)r;
    n_bytes += r;
    int status = 0, close_after = 0;
    int done = answer_complete(c, &status, &close_after);
    if (done == 0) continue;
    if (done < 0 || !c->busy) {
      n_read++;
      conn_reopen(c);
      return;
    }
    if (recorded(c->slot)) {
      if (lat_n == lat_cap) {
        lat_cap = lat_cap ? lat_cap * 2 : 65536;
        if (!(lat = realloc(lat, lat_cap * sizeof *lat))) die("out of memory");
      }
      lat[lat_n++] = (uint32_t)((now_ns() - c->slot) / 1000);
      if (status >= 400) n_status++;
    }
    c->busy = 0;
    c->have = 0;
    if (close_after)
      conn_reopen(c);
    else
      ring_push(c);
    return;
  }
}

/* Whether a request whose slot is recorded is still unanswered (counted
 * as timeouts when there is no more time). */
static int in_window_pending(int count) {
  int n = 0;
  for (int i = 0; i < nconns; i++)
    if (conns[i].busy && recorded(conns[i].slot)) n++;
  for (size_t i = 0; i < wait_n; i++)
    if (recorded(waiting[(wait_head + i) % wait_cap])) n++;
  if (count) n_timeout += n;
  return n > 0;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return (x > y) - (x < y);
}

/* Nearest rank: the smallest latency with at least p % of them at or below. */
static uint32_t pct(double p) {
  if (!lat_n) return 0;
  double r = p / 100.0 * (double)lat_n;
  size_t k = (size_t)r;
  if ((double)k < r) k++;
  return lat[k ? k - 1 : 0];
}

int main(int argc, char **argv) {
  double rate = 0, secs = 10, warm = 0;
  const char *method = "GET", *body = "";
  char headers[8192] = "";
  size_t hlen = 0;
  int opt;
  nconns = 64;
  while ((opt = getopt(argc, argv, "r:c:d:w:m:b:H:")) != -1) {
    switch (opt) {
      case 'r': rate = atof(optarg); break;
      case 'c': nconns = atoi(optarg); break;
      case 'd': secs = atof(optarg); break;
      case 'w': warm = atof(optarg); break;
      case 'm': method = optarg; break;
      case 'b': body = optarg; break;
      case 'H': {
        int n = snprintf(headers + hlen, sizeof headers - hlen, "%s\r\n", optarg);
        if (n < 0 || (size_t)n >= sizeof headers - hlen) die("headers too long");
        hlen += (size_t)n;
        break;
      }
      default: die("usage: pace -r RATE -c CONNS -d SECS [-w SECS] [-m METHOD] [-b BODY] [-H HDR]... URL");
    }
  }
  if (optind != argc - 1 || rate <= 0 || nconns <= 0 || secs <= 0 || warm < 0)
    die("usage: pace -r RATE -c CONNS -d SECS [-w SECS] [-m METHOD] [-b BODY] [-H HDR]... URL");

  char host[64];
  int port;
  const char *path;
  if (sscanf(argv[optind], "http://%63[0-9.]:%d", host, &port) != 2 || !(path = strchr(argv[optind] + 7, '/')))
    die("URL must be http://IPv4:PORT/PATH");
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) die("bad IPv4 address");

  size_t blen = strlen(body);
  req = malloc(strlen(method) + strlen(path) + strlen(host) + hlen + blen + 128);
  if (!req) die("out of memory");
  req_len = (size_t)sprintf(req, "%s %s HTTP/1.1\r\nHost: %s:%d\r\n%sContent-Length: %zu\r\n\r\n%s", method, path,
                            host, port, headers, blen, body);

  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  conns = calloc((size_t)nconns, sizeof *conns);
  idle = calloc((size_t)nconns, sizeof *idle);
  if (!conns || !idle) die("out of memory");
  for (int i = 0; i < nconns; i++) conn_open(&conns[i]);
  if (n_down == nconns) die("no connection could be made");

  int64_t interval = (int64_t)(1e9 / rate);
  if (interval < 1) interval = 1;
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (tfd < 0) die("timerfd_create");
  int64_t start = now_ns() + 1000000;
  t_from = start + (int64_t)(warm * 1e9);
  t_to = t_from + (int64_t)(secs * 1e9);
  struct itimerspec its = {
      .it_value = {.tv_sec = start / 1000000000LL, .tv_nsec = start % 1000000000LL},
      .it_interval = {.tv_sec = interval / 1000000000LL, .tv_nsec = interval % 1000000000LL}};
  if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) != 0) die("timerfd_settime");
  struct epoll_event tev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev) != 0) die("epoll_ctl");

  int64_t next = start; /* the next slot not yet handed out */
  struct epoll_event evs[256];
  for (;;) {
    int64_t t = now_ns();
    /* every slot due by now, each with its own time, behind those waiting */
    for (; next <= t && next < t_to; next += interval) wait_push(next);
    if (n_down) {
      for (int i = 0; i < nconns; i++)
        if (conns[i].fd < 0 && !conns[i].busy) {
          n_down--;
          conn_open(&conns[i]);
        }
    }
    dispatch();
    /* after the last slot, until every recorded request is answered (or
     * five seconds have passed): a slow answer at the end still counts */
    if (next >= t_to && (!in_window_pending(0) || t >= t_to + TIMEOUT_NS)) break;
    int n = epoll_wait(ep, evs, 256, 10);
    for (int i = 0; i < n; i++) {
      if (evs[i].data.u32 == UINT32_MAX) {
        uint64_t ticks;
        if (read(tfd, &ticks, sizeof ticks) < 0 && errno != EAGAIN) die("timerfd read");
      } else {
        on_readable(&conns[evs[i].data.u32]);
      }
    }
  }
  in_window_pending(1);

  qsort(lat, lat_n, sizeof *lat, cmp_u32);
  double sum = 0;
  for (size_t i = 0; i < lat_n; i++) sum += lat[i];
  printf("RESULT requests=%zu duration_us=%lld bytes=%lld status=%lld connect=%lld read=%lld write=%lld "
         "timeout=%lld p50=%u p90=%u p99=%u p999=%u max=%u mean=%.1f\n",
         lat_n, (long long)((t_to - t_from) / 1000), n_bytes, n_status, n_connect, n_read, n_write, n_timeout,
         pct(50), pct(90), pct(99), pct(99.9), lat_n ? lat[lat_n - 1] : 0, lat_n ? sum / (double)lat_n : 0.0);
  return 0;
}
