/*
 * mock-backend: a model-service simulator for ratewall's end-to-end tests,
 * demo and bench.  One libevent evhttp server on one thread; every wait is a
 * timer, nothing blocks.  See README.md next to this file for the options
 * and behaviours.
 *
 * Lifetimes (libevent 2.1.12 semantics, read from http.c):
 *  - A request answered inside its callback needs nothing from us.
 *  - A request answered later gets a `struct pending` (owned by this file,
 *    freed only by pending_free(), always from the pending's own timer or
 *    from shutdown()).  While it exists we hold the connection's closecb and
 *    keep EV_READ enabled on the connection's bufferevent (with no read
 *    callback, so a pipelined request just waits in the input buffer) so that
 *    a client that leaves is noticed at once: libevent then detaches the
 *    unanswered request from the connection (req->evcon = NULL), frees the
 *    connection and calls our closecb.  A detached request is ours to free;
 *    an attached one (connection freed by evhttp_free at shutdown) is freed
 *    by libevent right after the closecb returns, so we forget it there.
 *  - The closecb only records the facts and arms the timer at zero; the real
 *    cleanup runs after libevent's stack has unwound.
 *  - Before the final evhttp_send_reply / evhttp_send_reply_end we clear the
 *    closecb and restore the bufferevent's timeouts and watermark: after
 *    that call the request (and maybe the connection) belong to libevent.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>
#include <jansson.h>

#define MAX_BODY_BYTES        (64L * 1024 * 1024) /* bytes */
#define MAX_WAIT_MS           3600000LL           /* ms; cap of any delay */
#define MAX_IMAGES            10000
#define MAX_STREAM_CHUNKS     1000000
#define MAX_PATHS_TRACKED     10000
#define ECHO_BODY_MAX         65536               /* bytes echoed as "body" */
#define IDLE_TIMEOUT_S        600                 /* s; libevent read/write timeout */
#define READ_HOLD_BYTES       (1024 * 1024)       /* input kept while pending */
#define JOB_BUCKETS           (1u << 17)
#define DEFAULT_CHAT_CHUNKS   4
#define DEFAULT_STREAM_MS     50

/* ------------------------------------------------------------------ */
/* options and global state (one thread, so plain globals are fine)   */

static struct {
	const char *listen;
	const char *port_file;
	const char *log_file;
	long long image_ms;   /* ms of simulated work per image */
	long long job_ms;     /* ms an async job runs by default */
	long max_jobs;
} opt = { "127.0.0.1:0", NULL, NULL, 0, 2000, 100000 };

static struct event_base *base;
static struct evhttp *http;
static FILE *logf;
static int stopping;    /* set once the loop has ended */

static struct {
	unsigned long long requests;
	unsigned long long client_gone;
	long long in_flight;
	json_t *by_path;        /* path -> count */
	unsigned long long seq; /* never reset; names images and chat ids */
} stats;

/* ------------------------------------------------------------------ */
/* small helpers                                                       */

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void log_line(const char *fmt, ...)
{
	char stamp[32];
	struct timespec ts;
	struct tm tm;
	va_list ap;

	if (!logf)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
	fprintf(logf, "%s.%03ldZ ", stamp, ts.tv_nsec / 1000000L);
	va_start(ap, fmt);
	vfprintf(logf, fmt, ap);
	va_end(ap);
	fputc('\n', logf);
}

static const char *method_name(enum evhttp_cmd_type t)
{
	switch (t) {
	case EVHTTP_REQ_GET: return "GET";
	case EVHTTP_REQ_POST: return "POST";
	case EVHTTP_REQ_HEAD: return "HEAD";
	case EVHTTP_REQ_PUT: return "PUT";
	case EVHTTP_REQ_DELETE: return "DELETE";
	case EVHTTP_REQ_OPTIONS: return "OPTIONS";
	case EVHTTP_REQ_TRACE: return "TRACE";
	case EVHTTP_REQ_CONNECT: return "CONNECT";
	case EVHTTP_REQ_PATCH: return "PATCH";
	}
	return "UNKNOWN";
}

static const char *req_path(struct evhttp_request *req)
{
	const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
	const char *p = u ? evhttp_uri_get_path(u) : NULL;
	return (p && *p) ? p : "/";
}

static const char *req_query(struct evhttp_request *req)
{
	const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
	return u ? evhttp_uri_get_query(u) : NULL;
}

static const char *hdr(struct evhttp_request *req, const char *name)
{
	return evhttp_find_header(evhttp_request_get_input_headers(req), name);
}

/* Parses header `name` as an integer in [lo, hi].
 * Returns 0 when absent, 1 when present and valid (*out set), -1 when bad. */
static int hdr_int(struct evhttp_request *req, const char *name,
    long long lo, long long hi, long long *out)
{
	const char *s = hdr(req, name);
	char *end;
	long long v;

	if (!s)
		return 0;
	while (*s == ' ' || *s == '\t')
		s++;
	errno = 0;
	v = strtoll(s, &end, 10);
	while (*end == ' ' || *end == '\t')
		end++;
	if (end == s || *end != '\0' || errno == ERANGE || v < lo || v > hi)
		return -1;
	*out = v;
	return 1;
}

/* Request body as one contiguous block (NULL when empty). */
static const char *req_body(struct evhttp_request *req, size_t *len)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	*len = evbuffer_get_length(in);
	if (*len == 0)
		return NULL;
	return (const char *)evbuffer_pullup(in, -1);
}

/* Parses the body as JSON.  Returns a new reference, or NULL when the
 * body is empty (*bad = 0) or not valid JSON (*bad = 1). */
static json_t *req_json(struct evhttp_request *req, int *bad)
{
	size_t len;
	const char *b = req_body(req, &len);
	json_error_t err;
	json_t *j;

	*bad = 0;
	if (!b)
		return NULL;
	j = json_loadb(b, len, JSON_DECODE_ANY, &err);
	if (!j)
		*bad = 1;
	return j;
}

/* Integer field of a JSON object, or dflt when absent.  Returns -1 when
 * present but not an integer in [lo, hi]. */
static int json_int_field(json_t *obj, const char *key, long long lo,
    long long hi, long long dflt, long long *out)
{
	json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;

	*out = dflt;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < lo ||
	    json_integer_value(v) > hi)
		return -1;
	*out = json_integer_value(v);
	return 1;
}

static uint64_t fnv1a64(const char *p, size_t n)
{
	uint64_t h = 14695981039346656037ull;
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)p[i];
		h *= 1099511628211ull;
	}
	return h;
}

/* ------------------------------------------------------------------ */
/* async jobs: hash table by id + creation-order list                  */

struct job {
	char id[17];
	uint64_t created_ms;
	uint64_t duration_ms;
	int fail;
	long long image_num;
	struct job *hnext;          /* bucket chain */
	struct job *older, *newer;  /* creation order */
};

static struct {
	struct job **buckets;
	struct job *oldest, *newest;
	long count;
} jobs;

static unsigned job_hash(const char *id)
{
	return (unsigned)(fnv1a64(id, strlen(id)) & (JOB_BUCKETS - 1));
}

static struct job *job_find(const char *id)
{
	struct job *j;
	if (strlen(id) != 16)
		return NULL;
	for (j = jobs.buckets[job_hash(id)]; j; j = j->hnext)
		if (strcmp(j->id, id) == 0)
			return j;
	return NULL;
}

static void job_remove(struct job *j)
{
	struct job **pp = &jobs.buckets[job_hash(j->id)];
	while (*pp != j)
		pp = &(*pp)->hnext;
	*pp = j->hnext;
	if (j->older)
		j->older->newer = j->newer;
	else
		jobs.oldest = j->newer;
	if (j->newer)
		j->newer->older = j->older;
	else
		jobs.newest = j->older;
	jobs.count--;
	free(j);
}

static int job_done(const struct job *j, uint64_t now)
{
	return now - j->created_ms >= j->duration_ms;
}

static struct job *job_create(uint64_t duration_ms, int fail, long long image_num)
{
	struct job *j;
	unsigned char rnd[8];
	unsigned h;

	if (jobs.count >= opt.max_jobs) {
		/* Evict the oldest finished job, else the oldest job. */
		uint64_t now = now_ms();
		struct job *v = jobs.oldest;
		while (v && !job_done(v, now))
			v = v->newer;
		job_remove(v ? v : jobs.oldest);
	}
	j = calloc(1, sizeof(*j));
	if (!j)
		return NULL;
	do {
		evutil_secure_rng_get_bytes(rnd, sizeof(rnd));
		for (int i = 0; i < 8; i++)
			snprintf(j->id + 2 * i, 3, "%02x", rnd[i]);
	} while (job_find(j->id));
	j->created_ms = now_ms();
	j->duration_ms = duration_ms;
	j->fail = fail;
	j->image_num = image_num;
	h = job_hash(j->id);
	j->hnext = jobs.buckets[h];
	jobs.buckets[h] = j;
	j->older = jobs.newest;
	if (jobs.newest)
		jobs.newest->newer = j;
	else
		jobs.oldest = j;
	jobs.newest = j;
	jobs.count++;
	return j;
}

static void jobs_free_all(void)
{
	while (jobs.oldest)
		job_remove(jobs.oldest);
	free(jobs.buckets);
	jobs.buckets = NULL;
}

/* ------------------------------------------------------------------ */
/* per-request control headers                                         */

struct ctl {
	long long delay_ms;       /* x-mock-delay-ms, 0 = none */
	long long status;         /* x-mock-status, 0 = none */
	int close;                /* x-mock-close */
	long long stream;         /* x-mock-stream, -1 = none */
	long long interval_ms;    /* x-mock-stream-interval-ms */
	int hang;                 /* x-mock-stream-hang */
	long long body_bytes;     /* x-mock-body-bytes, 0 = none */
	long long tokens;         /* x-mock-tokens, -1 = none */
	long long job_ms;         /* x-mock-job-ms, -1 = none */
};

/* Returns NULL, or the name of the first malformed control header. */
static const char *ctl_parse(struct evhttp_request *req, struct ctl *c)
{
	long long v;

	memset(c, 0, sizeof(*c));
	c->stream = -1;
	c->tokens = -1;
	c->job_ms = -1;
	c->interval_ms = DEFAULT_STREAM_MS;
	if (hdr_int(req, "x-mock-delay-ms", 0, MAX_WAIT_MS, &c->delay_ms) < 0)
		return "x-mock-delay-ms";
	if (hdr_int(req, "x-mock-status", 100, 599, &c->status) < 0)
		return "x-mock-status";
	if (hdr_int(req, "x-mock-close", 0, 1, &v) < 0)
		return "x-mock-close";
	c->close = hdr(req, "x-mock-close") ? (int)v : 0;
	if (hdr_int(req, "x-mock-stream", 0, MAX_STREAM_CHUNKS, &c->stream) < 0)
		return "x-mock-stream";
	if (hdr_int(req, "x-mock-stream-interval-ms", 0, MAX_WAIT_MS,
	    &c->interval_ms) < 0)
		return "x-mock-stream-interval-ms";
	if (hdr_int(req, "x-mock-stream-hang", 0, 1, &v) < 0)
		return "x-mock-stream-hang";
	c->hang = hdr(req, "x-mock-stream-hang") ? (int)v : 0;
	if (hdr_int(req, "x-mock-body-bytes", 0, MAX_BODY_BYTES, &c->body_bytes) < 0)
		return "x-mock-body-bytes";
	if (hdr_int(req, "x-mock-tokens", 0, INT32_MAX, &c->tokens) < 0)
		return "x-mock-tokens";
	if (hdr_int(req, "x-mock-job-ms", 0, MAX_WAIT_MS, &c->job_ms) < 0)
		return "x-mock-job-ms";
	return NULL;
}

/* ------------------------------------------------------------------ */
/* pending requests (answered later)                                   */

enum stage {
	ST_DELAY,   /* waiting x-mock-delay-ms; then act() */
	ST_WORK,    /* waiting simulated work; then send the prepared reply */
	ST_STREAM,  /* streaming: each tick sends one event */
	ST_HANG,    /* stream sent its first event and stops forever */
	ST_GONE,    /* client left; the timer frees us */
};

struct pending {
	struct pending *prev, *next;
	struct evhttp_request *req;     /* NULL once libevent took it back */
	struct evhttp_connection *evcon;/* NULL once the connection is gone */
	struct event *timer;
	enum stage stage;
	int req_owned;                  /* detached by libevent: we free it */
	struct ctl ctl;
	char method[8];
	char *uri;                      /* for the log */

	/* ST_WORK: the reply to send when the timer fires */
	int status;
	json_t *body;
	long long units;                /* X-Units-Used, -1 = none */

	/* ST_STREAM */
	long long n, i;
	int chat;                       /* chat.completion.chunk events */
	json_t *usage;                  /* chat: usage for the last event */
	char *model;
	unsigned long long chat_seq;
};

static struct pending *pendings;

static void on_conn_close(struct evhttp_connection *evcon, void *arg);
static void on_timer(evutil_socket_t fd, short what, void *arg);

static void arm_ms(struct pending *p, long long ms)
{
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
	evtimer_add(p->timer, &tv);
}

static struct pending *pending_new(struct evhttp_request *req, const struct ctl *c)
{
	struct pending *p = calloc(1, sizeof(*p));
	struct bufferevent *bev;
	void *cbarg;
	bufferevent_event_cb ecb;
	bufferevent_data_cb wcb;

	if (!p)
		return NULL;
	p->timer = evtimer_new(base, on_timer, p);
	p->uri = strdup(evhttp_request_get_uri(req));
	if (!p->timer || !p->uri) {
		if (p->timer)
			event_free(p->timer);
		free(p->uri);
		free(p);
		return NULL;
	}
	p->req = req;
	p->ctl = *c;
	p->units = -1;
	snprintf(p->method, sizeof(p->method), "%s",
	    method_name(evhttp_request_get_command(req)));
	p->evcon = evhttp_request_get_connection(req);
	evhttp_connection_set_closecb(p->evcon, on_conn_close, p);

	/* Close detection: libevent 2.1 disables reading once the request is
	 * read, so a client that leaves would go unnoticed until we write.
	 * Read with no read callback (data waits in the input buffer; at most
	 * READ_HOLD_BYTES), and no read timeout: the wait is ours to time. */
	bev = evhttp_connection_get_bufferevent(p->evcon);
	bufferevent_getcb(bev, NULL, &wcb, &ecb, &cbarg);
	bufferevent_setcb(bev, NULL, wcb, ecb, cbarg);
	{
		struct timeval wtv = { IDLE_TIMEOUT_S, 0 };
		bufferevent_set_timeouts(bev, NULL, &wtv);
	}
	bufferevent_setwatermark(bev, EV_READ, 0, READ_HOLD_BYTES);
	bufferevent_enable(bev, EV_READ);

	p->next = pendings;
	if (pendings)
		pendings->prev = p;
	pendings = p;
	return p;
}

/* Gives the connection back to libevent's own settings; after this the
 * next evhttp_send_* may free the request and the connection. */
static void pending_release_conn(struct pending *p)
{
	struct bufferevent *bev;
	struct timeval tv = { IDLE_TIMEOUT_S, 0 };

	if (!p->evcon)
		return;
	evhttp_connection_set_closecb(p->evcon, NULL, NULL);
	bev = evhttp_connection_get_bufferevent(p->evcon);
	bufferevent_setwatermark(bev, EV_READ, 0, 0);
	bufferevent_set_timeouts(bev, &tv, &tv);
	p->evcon = NULL;
}

static void pending_free(struct pending *p)
{
	pending_release_conn(p);
	if (p->req && p->req_owned)
		evhttp_request_free(p->req);
	if (p->prev)
		p->prev->next = p->next;
	else
		pendings = p->next;
	if (p->next)
		p->next->prev = p->prev;
	event_free(p->timer);
	json_decref(p->body);
	json_decref(p->usage);
	free(p->model);
	free(p->uri);
	free(p);
}

static void on_conn_close(struct evhttp_connection *evcon, void *arg)
{
	struct pending *p = arg;

	(void)evcon;
	p->evcon = NULL;
	if (p->req) {
		if (evhttp_request_get_connection(p->req) == NULL)
			p->req_owned = 1;   /* detached: ours to free */
		else
			p->req = NULL;      /* libevent frees it after we return */
	}
	if (!stopping)
		stats.client_gone++;
	stats.in_flight--;
	log_line("%s %s - %s", p->method, p->uri,
	    stopping ? "dropped at shutdown" : "client gone");
	p->stage = ST_GONE;
	arm_ms(p, 0);
}

/* ------------------------------------------------------------------ */
/* replies                                                             */

/* Pads a JSON object so that its compact dump is about `bytes` long. */
static void pad_json(json_t *obj, long long bytes)
{
	char *s;
	size_t len;
	const size_t overhead = sizeof(",\"pad\":\"\"") - 1;

	if (bytes <= 0 || !json_is_object(obj))
		return;
	s = json_dumps(obj, JSON_COMPACT);
	if (!s)
		return;
	len = strlen(s);
	free(s);
	if ((size_t)bytes > len + overhead) {
		size_t n = (size_t)bytes - len - overhead;
		char *pad = malloc(n);
		if (!pad)
			return;
		memset(pad, 'x', n);
		json_object_set_new(obj, "pad", json_stringn(pad, n));
		free(pad);
	}
}

static json_t *error_body(int status, const char *message)
{
	return json_pack("{s:{s:s,s:i}}", "error", "message", message,
	    "status", status);
}

/* Sends a JSON reply and ends the request.  Steals `body`.  `p` may be
 * NULL (answer inside the request callback); otherwise it is freed. */
static void reply_json(struct evhttp_request *req, struct pending *p,
    int status, json_t *body, long long units)
{
	struct evbuffer *out = evbuffer_new();
	struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
	long long pad = p ? p->ctl.body_bytes : 0;
	char *s;

	if (!p && hdr_int(req, "x-mock-body-bytes", 0, MAX_BODY_BYTES, &pad) <= 0)
		pad = 0;
	if (!body) {
		status = 500;
		body = error_body(500, "mock-backend could not encode its answer");
	}
	pad_json(body, pad);
	s = json_dumps(body, JSON_COMPACT);
	json_decref(body);
	if (out && s)
		evbuffer_add(out, s, strlen(s));
	free(s);
	evhttp_add_header(oh, "Content-Type", "application/json");
	if (units >= 0) {
		char u[24];
		snprintf(u, sizeof(u), "%lld", units);
		evhttp_add_header(oh, "X-Units-Used", u);
	}
	log_line("%s %s %d", method_name(evhttp_request_get_command(req)),
	    evhttp_request_get_uri(req), status);
	stats.in_flight--;
	if (p) {
		pending_release_conn(p);
		p->req = NULL;  /* libevent's from here on */
		pending_free(p);
	}
	evhttp_send_reply(req, status, NULL, out);
	if (out)
		evbuffer_free(out);
}

/* Replies used for /mock/... (never counted, never in flight). */
static void reply_plain(struct evhttp_request *req, int status, json_t *body)
{
	stats.in_flight++;  /* reply_json takes it back */
	reply_json(req, NULL, status, body, -1);
}

/* ------------------------------------------------------------------ */
/* streaming (SSE)                                                     */

static void stream_send(struct pending *p, const char *data, size_t len)
{
	struct evbuffer *b = evbuffer_new();
	if (!b)
		return;
	evbuffer_add(b, "data: ", 6);
	evbuffer_add(b, data, len);
	evbuffer_add(b, "\n\n", 2);
	evhttp_send_reply_chunk(p->req, b);
	evbuffer_free(b);
}

static void stream_event(struct pending *p, long long k)
{
	json_t *ev;
	char *s;

	if (p->chat) {
		int last = (k == p->n - 1);
		char content[32];
		char id[40];
		snprintf(content, sizeof(content), "tok%lld ", k);
		snprintf(id, sizeof(id), "chatcmpl-mock-%llu", p->chat_seq);
		ev = json_pack("{s:I,s:s,s:s,s:I,s:s,s:[{s:i,s:{s:s},s:o}]}",
		    "i", (json_int_t)k, "id", id,
		    "object", "chat.completion.chunk",
		    "created", (json_int_t)time(NULL), "model", p->model,
		    "choices", "index", 0, "delta", "content", content,
		    "finish_reason", last ? json_string("stop") : json_null());
		if (ev && last && p->usage)
			json_object_set(ev, "usage", p->usage);
	} else {
		ev = json_pack("{s:I}", "i", (json_int_t)k);
	}
	s = ev ? json_dumps(ev, JSON_COMPACT) : NULL;
	json_decref(ev);
	if (s)
		stream_send(p, s, strlen(s));
	free(s);
}

static void stream_tick(struct pending *p)
{
	if (p->i < p->n) {
		stream_event(p, p->i++);
		arm_ms(p, p->ctl.interval_ms);
		return;
	}
	stream_send(p, "[DONE]", 6);
	log_line("%s %s 200 stream end", p->method, p->uri);
	stats.in_flight--;
	{
		struct evhttp_request *req = p->req;
		pending_release_conn(p);
		p->req = NULL;
		pending_free(p);
		evhttp_send_reply_end(req);
	}
}

/* Starts an SSE answer of n events; p must exist. The usage of a chat
 * stream goes in its last event, as real LLM services send it: never in a
 * header at the start, which a service cannot know yet. */
static void stream_start(struct pending *p, long long n)
{
	struct evkeyvalq *oh = evhttp_request_get_output_headers(p->req);

	p->stage = ST_STREAM;
	p->n = n;
	p->i = 0;
	evhttp_add_header(oh, "Content-Type", "text/event-stream");
	evhttp_add_header(oh, "Cache-Control", "no-cache");
	log_line("%s %s 200 stream start n=%lld", p->method, p->uri, n);
	evhttp_send_reply_start(p->req, 200, NULL);
	if (p->ctl.hang) {
		stream_event(p, 0);
		p->stage = ST_HANG;  /* no timer: waits for the client to leave */
		return;
	}
	stream_tick(p);
}

/* ------------------------------------------------------------------ */
/* endpoints                                                           */

static int is_path(const char *path, const char *want)
{
	return strcmp(path, want) == 0;
}

static json_t *headers_json(struct evhttp_request *req)
{
	json_t *o = json_object();
	struct evkeyval *kv;

	TAILQ_FOREACH(kv, evhttp_request_get_input_headers(req), next) {
		json_t *old = json_object_get(o, kv->key);
		if (old) {
			/* a repeated header: join as a list, the way HTTP does */
			size_t n = strlen(json_string_value(old)) + strlen(kv->value) + 3;
			char *j = malloc(n);
			if (!j)
				continue;
			snprintf(j, n, "%s, %s", json_string_value(old), kv->value);
			json_object_set_new(o, kv->key, json_string(j));
			free(j);
		} else {
			json_object_set_new(o, kv->key, json_string(kv->value));
		}
	}
	return o;
}

static void ep_echo(struct evhttp_request *req, struct pending *p)
{
	size_t len;
	const char *b = req_body(req, &len);
	const char *q = req_query(req);
	char *addr = NULL;
	ev_uint16_t port = 0;
	char fnv[17];
	json_t *o;
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);

	if (evcon)
		evhttp_connection_get_peer(evcon, &addr, &port);
	snprintf(fnv, sizeof(fnv), "%016" PRIx64, fnv1a64(b ? b : "", len));
	o = json_pack("{s:b,s:s,s:s,s:o,s:I,s:s,s:o,s:s,s:i}",
	    "ok", 1,
	    "method", method_name(evhttp_request_get_command(req)),
	    "path", req_path(req),
	    "query", q ? json_string(q) : json_null(), /* NULL if not UTF-8 */
	    "body_bytes", (json_int_t)len,
	    "body_fnv1a64", fnv,
	    "headers", headers_json(req),
	    "remote_addr", addr ? addr : "",
	    "remote_port", (int)port);
	if (o && len <= ECHO_BODY_MAX) {
		json_t *s = json_stringn(b ? b : "", len);
		if (s)
			json_object_set_new(o, "body", s);
	}
	reply_json(req, p, 200, o, -1);
}

static void ep_images(struct evhttp_request *req, struct pending *p, const struct ctl *c)
{
	int bad;
	json_t *in = req_json(req, &bad);
	long long n, work;
	json_t *imgs, *o;

	if (bad || json_int_field(in, "image_num", 1, MAX_IMAGES, 1, &n) < 0) {
		json_decref(in);
		reply_json(req, p, 400, error_body(400, bad ? "invalid JSON body"
		    : "image_num must be an integer from 1 to 10000"), -1);
		return;
	}
	json_decref(in);
	imgs = json_array();
	for (long long k = 0; k < n; k++) {
		char url[64];
		snprintf(url, sizeof(url), "https://mock/img/%llu.png", ++stats.seq);
		json_array_append_new(imgs, json_pack("{s:s}", "image_url", url));
	}
	o = json_pack("{s:o,s:{s:s},s:{s:I}}", "images", imgs,
	    "task", "status", "TASK_STATUS_SUCCEED", "usage", "images", (json_int_t)n);
	work = n * opt.image_ms;
	if (work > MAX_WAIT_MS)
		work = MAX_WAIT_MS;
	if (work <= 0) {
		reply_json(req, p, 200, o, n);
		return;
	}
	if (!p && !(p = pending_new(req, c))) {
		reply_json(req, NULL, 200, o, n);
		return;
	}
	p->stage = ST_WORK;
	p->status = 200;
	p->body = o;
	p->units = n;
	arm_ms(p, work);
}

static void ep_chat(struct evhttp_request *req, struct pending *p, const struct ctl *c)
{
	int bad;
	json_t *in = req_json(req, &bad);
	long long max_tokens, total, completion, prompt;
	size_t len;
	int stream;
	const char *model;
	json_t *usage;
	char id[40];

	req_body(req, &len);
	if (bad || json_int_field(in, "max_tokens", 0, INT32_MAX, 16, &max_tokens) < 0) {
		json_decref(in);
		reply_json(req, p, 400, error_body(400, bad ? "invalid JSON body"
		    : "max_tokens must be a non-negative integer"), -1);
		return;
	}
	stream = json_is_true(json_object_get(in, "stream"));
	model = json_string_value(json_object_get(in, "model"));
	if (c->tokens >= 0) {
		total = c->tokens;
	} else {
		total = 7 + (long long)(len / 10);
		if (total > max_tokens)
			total = max_tokens;
	}
	completion = total / 2;
	prompt = total - completion;
	usage = json_pack("{s:I,s:I,s:I}", "prompt_tokens", (json_int_t)prompt,
	    "completion_tokens", (json_int_t)completion,
	    "total_tokens", (json_int_t)total);
	snprintf(id, sizeof(id), "chatcmpl-mock-%llu", ++stats.seq);

	if (stream || c->stream >= 0) {
		if (!p && !(p = pending_new(req, c))) {
			json_decref(in);
			json_decref(usage);
			reply_json(req, NULL, 500, error_body(500, "out of memory"), -1);
			return;
		}
		p->chat = 1;
		p->usage = usage;
		p->model = strdup(model ? model : "mock");
		p->chat_seq = stats.seq;
		json_decref(in);
		stream_start(p, c->stream >= 1 ? c->stream : DEFAULT_CHAT_CHUNKS);
		return;
	}
	{
		json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:[{s:i,s:{s:s,s:s},s:s}],s:o}",
		    "id", id, "object", "chat.completion",
		    "created", (json_int_t)time(NULL), "model", model ? model : "mock",
		    "choices", "index", 0, "message", "role", "assistant",
		    "content", "This is a mock answer.", "finish_reason", "stop",
		    "usage", usage);
		json_decref(in);
		reply_json(req, p, 200, o, total);
	}
}

static void ep_job_create(struct evhttp_request *req, struct pending *p, const struct ctl *c)
{
	int bad;
	json_t *in = req_json(req, &bad);
	long long dur, images;
	struct job *j;

	if (bad) {
		reply_json(req, p, 400, error_body(400, "invalid JSON body"), -1);
		return;
	}
	if (json_int_field(in, "duration_ms", 0, MAX_WAIT_MS,
	    c->job_ms >= 0 ? c->job_ms : opt.job_ms, &dur) < 0 ||
	    json_int_field(in, "image_num", 1, MAX_IMAGES, 1, &images) < 0) {
		json_decref(in);
		reply_json(req, p, 400, error_body(400,
		    "duration_ms and image_num must be integers in range"), -1);
		return;
	}
	j = job_create((uint64_t)dur, json_is_true(json_object_get(in, "fail")), images);
	json_decref(in);
	if (!j) {
		reply_json(req, p, 500, error_body(500, "out of memory"), -1);
		return;
	}
	reply_json(req, p, 200, json_pack("{s:s}", "task_id", j->id), -1);
}

static void ep_job_result(struct evhttp_request *req, struct pending *p)
{
	struct evkeyvalq q;
	const char *qs = req_query(req);
	const char *id;
	struct job *j = NULL;
	uint64_t now = now_ms(), el;
	const char *status;
	int pct;
	json_t *o;

	TAILQ_INIT(&q);
	if (qs)
		evhttp_parse_query_str(qs, &q);
	id = evhttp_find_header(&q, "task_id");
	if (id)
		j = job_find(id);
	if (!j) {
		evhttp_clear_headers(&q);
		reply_json(req, p, 404, json_pack("{s:s}", "error", "unknown task"), -1);
		return;
	}
	evhttp_clear_headers(&q);
	el = now - j->created_ms;
	if (job_done(j, now)) {
		status = j->fail ? "TASK_STATUS_FAILED" : "TASK_STATUS_SUCCEED";
		pct = 100;
	} else {
		status = el < j->duration_ms / 10 ? "TASK_STATUS_QUEUED"
		    : "TASK_STATUS_PROCESSING";
		pct = (int)(el * 100 / j->duration_ms);
	}
	o = json_pack("{s:{s:s,s:s,s:i}}", "task", "task_id", j->id,
	    "status", status, "progress_percent", pct);
	if (job_done(j, now)) {
		if (j->fail) {
			json_object_set_new(json_object_get(o, "task"), "reason",
			    json_string("mock failure"));
		} else {
			json_t *imgs = json_array();
			for (long long k = 0; k < j->image_num; k++) {
				char url[64];
				snprintf(url, sizeof(url), "https://mock/img/%s-%lld.png",
				    j->id, k);
				json_array_append_new(imgs,
				    json_pack("{s:s}", "image_url", url));
			}
			json_object_set_new(o, "images", imgs);
		}
	}
	reply_json(req, p, 200, o, -1);
}

/* The behaviour after any x-mock-delay-ms.  p is NULL when called from the
 * request callback; otherwise it is the request's pending (consumed). */
static void act(struct evhttp_request *req, struct pending *p, const struct ctl *c)
{
	const char *path = req_path(req);
	enum evhttp_cmd_type m = evhttp_request_get_command(req);

	if (c->close) {
		if (!p) {
			/* close from our own timer, not from inside libevent's
			 * read callback */
			if ((p = pending_new(req, c)) != NULL) {
				p->stage = ST_DELAY;
				arm_ms(p, 0);
				return;
			}
			reply_json(req, NULL, 500, error_body(500, "out of memory"), -1);
			return;
		}
		{
			struct evhttp_connection *evcon = p->evcon;
			log_line("%s %s - closed (x-mock-close)", p->method, p->uri);
			stats.in_flight--;
			pending_release_conn(p);
			p->req = NULL;  /* freed with the connection */
			pending_free(p);
			evhttp_connection_free(evcon);
		}
		return;
	}
	if (c->status) {
		reply_json(req, p, (int)c->status,
		    error_body((int)c->status, "mock failure"), -1);
		return;
	}
	if (m == EVHTTP_REQ_POST && is_path(path, "/v1/chat/completions")) {
		ep_chat(req, p, c);
		return;
	}
	if (c->stream >= 0) {
		if (!p && !(p = pending_new(req, c))) {
			reply_json(req, NULL, 500, error_body(500, "out of memory"), -1);
			return;
		}
		stream_start(p, c->stream);
		return;
	}
	if (m == EVHTTP_REQ_POST &&
	    (is_path(path, "/v3/txt2img") || is_path(path, "/v3/img2img"))) {
		ep_images(req, p, c);
		return;
	}
	if (is_path(path, "/v3/async/task-result")) {
		ep_job_result(req, p);
		return;
	}
	if (m == EVHTTP_REQ_POST && strncmp(path, "/v3/async/", 10) == 0 &&
	    path[10] != '\0') {
		ep_job_create(req, p, c);
		return;
	}
	ep_echo(req, p);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct pending *p = arg;

	(void)fd;
	(void)what;
	switch (p->stage) {
	case ST_GONE:
		pending_free(p);
		break;
	case ST_DELAY:
		p->ctl.delay_ms = 0;
		act(p->req, p, &p->ctl);
		break;
	case ST_WORK: {
		json_t *body = p->body;
		p->body = NULL;
		reply_json(p->req, p, p->status, body, p->units);
		break;
	}
	case ST_STREAM:
		stream_tick(p);
		break;
	case ST_HANG:
		break;
	}
}

/* ------------------------------------------------------------------ */
/* /mock/... and the entry point                                       */

static void mock_stats(struct evhttp_request *req)
{
	reply_plain(req, 200, json_pack("{s:I,s:O,s:I,s:I,s:I}",
	    "requests", (json_int_t)stats.requests,
	    "by_path", stats.by_path,
	    "in_flight", (json_int_t)stats.in_flight,
	    "client_gone", (json_int_t)stats.client_gone,
	    "jobs", (json_int_t)jobs.count));
}

static void count_request(const char *path)
{
	json_t *v;

	stats.requests++;
	v = json_object_get(stats.by_path, path);
	if (!v && json_object_size(stats.by_path) >= MAX_PATHS_TRACKED)
		path = "(other)";
	v = json_object_get(stats.by_path, path);
	json_object_set_new(stats.by_path, path,
	    json_integer(v ? json_integer_value(v) + 1 : 1));
}

static void on_request(struct evhttp_request *req, void *arg)
{
	const char *path = req_path(req);
	struct ctl c;
	const char *bad;

	(void)arg;
	if (strncmp(path, "/mock/", 6) == 0) {
		enum evhttp_cmd_type m = evhttp_request_get_command(req);
		if (is_path(path, "/mock/stats") && m == EVHTTP_REQ_GET) {
			mock_stats(req);
		} else if (is_path(path, "/mock/reset") && m == EVHTTP_REQ_POST) {
			stats.requests = 0;
			stats.client_gone = 0;
			json_object_clear(stats.by_path);
			reply_plain(req, 200, json_pack("{s:b}", "reset", 1));
		} else {
			reply_plain(req, 404, error_body(404, "unknown mock endpoint"));
		}
		return;
	}

	count_request(path);
	stats.in_flight++;
	bad = ctl_parse(req, &c);
	if (bad) {
		char msg[80];
		snprintf(msg, sizeof(msg), "bad %s header", bad);
		reply_json(req, NULL, 400, error_body(400, msg), -1);
		return;
	}
	if (c.delay_ms > 0) {
		struct pending *p = pending_new(req, &c);
		if (!p) {
			reply_json(req, NULL, 500, error_body(500, "out of memory"), -1);
			return;
		}
		p->stage = ST_DELAY;
		arm_ms(p, c.delay_ms);
		return;
	}
	act(req, NULL, &c);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	(void)arg;
	event_base_loopbreak(base);
}

/* ------------------------------------------------------------------ */
/* startup and shutdown                                                */

static void usage(FILE *f)
{
	fprintf(f,
	    "usage: mock-backend [--listen HOST:PORT] [--port-file FILE] [--log FILE]\n"
	    "                    [--image-ms N] [--job-ms N] [--max-jobs N]\n"
	    "  --listen HOST:PORT  address to serve on (default 127.0.0.1:0; port 0 picks one)\n"
	    "  --port-file FILE    write the bound port and a newline (atomically)\n"
	    "  --log FILE          append one line per request outcome\n"
	    "  --image-ms N        simulated work per image on /v3/txt2img, /v3/img2img (default 0)\n"
	    "  --job-ms N          default async job duration (default 2000)\n"
	    "  --max-jobs N        jobs kept in memory (default 100000)\n");
}

static int parse_ll(const char *s, long long lo, long long hi, long long *out)
{
	char *end;
	long long v;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (end == s || *end || errno || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

/* Splits "HOST:PORT" / "[V6]:PORT".  Returns 0 on success. */
static int split_hostport(const char *s, char *host, size_t hostsz, char *port,
    size_t portsz)
{
	const char *colon;
	size_t hl;

	if (s[0] == '[') {
		const char *rb = strchr(s, ']');
		if (!rb || rb[1] != ':')
			return -1;
		hl = (size_t)(rb - s - 1);
		if (hl == 0 || hl >= hostsz)
			return -1;
		memcpy(host, s + 1, hl);
		host[hl] = '\0';
		colon = rb + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon)
			return -1;
		hl = (size_t)(colon - s);
		if (hl == 0 || hl >= hostsz)
			return -1;
		memcpy(host, s, hl);
		host[hl] = '\0';
	}
	if (strlen(colon + 1) == 0 || strlen(colon + 1) >= portsz)
		return -1;
	strcpy(port, colon + 1);
	return 0;
}

static evutil_socket_t open_listener(const char *host, const char *port,
    unsigned *bound_port)
{
	struct addrinfo hints, *res = NULL, *ai;
	evutil_socket_t fd = -1;
	int rc;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0) {
		fprintf(stderr, "mock-backend: %s:%s: %s\n", host, port, gai_strerror(rc));
		return -1;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		int one = 1;
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
		    listen(fd, 4096) == 0 && evutil_make_socket_nonblocking(fd) == 0)
			break;
		close(fd);
		fd = -1;
	}
	if (fd < 0) {
		fprintf(stderr, "mock-backend: cannot listen on %s:%s: %s\n", host, port,
		    strerror(errno));
	} else {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		getsockname(fd, (struct sockaddr *)&ss, &sl);
		*bound_port = ntohs(ss.ss_family == AF_INET6
		    ? ((struct sockaddr_in6 *)&ss)->sin6_port
		    : ((struct sockaddr_in *)&ss)->sin_port);
	}
	freeaddrinfo(res);
	return fd;
}

static int write_port_file(const char *path, unsigned port)
{
	char tmp[PATH_MAX];
	FILE *f;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof(tmp))
		return -1;
	f = fopen(tmp, "w");
	if (!f)
		return -1;
	fprintf(f, "%u\n", port);
	if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
		fclose(f);
		unlink(tmp);
		return -1;
	}
	if (fclose(f) != 0 || rename(tmp, path) != 0) {
		unlink(tmp);
		return -1;
	}
	return 0;
}

static void raise_fd_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static void shutdown_all(void)
{
	/* evhttp_free frees every connection: the closecb of a pending one
	 * runs and, its request being still attached, forgets it. */
	stopping = 1;
	evhttp_free(http);
	http = NULL;
	while (pendings)
		pending_free(pendings);
	jobs_free_all();
	json_decref(stats.by_path);
}

int main(int argc, char **argv)
{
	char host[256], port[16];
	unsigned bound = 0;
	evutil_socket_t fd;
	struct event *sigterm, *sigint;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			return 0;
		}
		if (!v) {
			fprintf(stderr, "mock-backend: %s needs a value\n", a);
			usage(stderr);
			return 2;
		}
		i++;
		if (!strcmp(a, "--listen")) {
			opt.listen = v;
		} else if (!strcmp(a, "--port-file")) {
			opt.port_file = v;
		} else if (!strcmp(a, "--log")) {
			opt.log_file = v;
		} else if (!strcmp(a, "--image-ms")) {
			if (parse_ll(v, 0, MAX_WAIT_MS, &opt.image_ms) < 0)
				goto bad_value;
		} else if (!strcmp(a, "--job-ms")) {
			if (parse_ll(v, 0, MAX_WAIT_MS, &opt.job_ms) < 0)
				goto bad_value;
		} else if (!strcmp(a, "--max-jobs")) {
			long long n;
			if (parse_ll(v, 1, 10000000, &n) < 0)
				goto bad_value;
			opt.max_jobs = (long)n;
		} else {
			fprintf(stderr, "mock-backend: unknown option %s\n", a);
			usage(stderr);
			return 2;
		}
		continue;
bad_value:
		fprintf(stderr, "mock-backend: bad value for %s: %s\n", a, v);
		return 2;
	}
	if (split_hostport(opt.listen, host, sizeof(host), port, sizeof(port)) < 0) {
		fprintf(stderr, "mock-backend: --listen wants HOST:PORT, got %s\n", opt.listen);
		return 2;
	}

	signal(SIGPIPE, SIG_IGN);
	raise_fd_limit();
	if (opt.log_file) {
		logf = fopen(opt.log_file, "a");
		if (!logf) {
			fprintf(stderr, "mock-backend: %s: %s\n", opt.log_file, strerror(errno));
			return 1;
		}
		setvbuf(logf, NULL, _IOLBF, 0);
	}
	jobs.buckets = calloc(JOB_BUCKETS, sizeof(*jobs.buckets));
	stats.by_path = json_object();
	base = event_base_new();
	http = base ? evhttp_new(base) : NULL;
	if (!jobs.buckets || !stats.by_path || !http) {
		fprintf(stderr, "mock-backend: out of memory\n");
		return 1;
	}
	evhttp_set_max_body_size(http, MAX_BODY_BYTES);
	evhttp_set_timeout(http, IDLE_TIMEOUT_S);
	evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST |
	    EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
	    EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT |
	    EVHTTP_REQ_PATCH);
	evhttp_set_gencb(http, on_request, NULL);

	fd = open_listener(host, port, &bound);
	if (fd < 0)
		return 1;
	if (!evhttp_accept_socket_with_handle(http, fd)) {
		fprintf(stderr, "mock-backend: cannot accept on %s\n", opt.listen);
		return 1;
	}
	sigterm = evsignal_new(base, SIGTERM, on_signal, NULL);
	sigint = evsignal_new(base, SIGINT, on_signal, NULL);
	if (!sigterm || !sigint || evsignal_add(sigterm, NULL) < 0 ||
	    evsignal_add(sigint, NULL) < 0) {
		fprintf(stderr, "mock-backend: cannot install signal handlers\n");
		return 1;
	}
	if (opt.port_file && write_port_file(opt.port_file, bound) < 0) {
		fprintf(stderr, "mock-backend: cannot write %s: %s\n", opt.port_file,
		    strerror(errno));
		return 1;
	}
	if (strchr(host, ':'))
		printf("mock-backend listening on [%s]:%u\n", host, bound);
	else
		printf("mock-backend listening on %s:%u\n", host, bound);
	fflush(stdout);
	log_line("listening on %s:%u", host, bound);

	event_base_dispatch(base);

	log_line("stopping");
	shutdown_all();
	event_free(sigterm);
	event_free(sigint);
	event_base_free(base);
	if (logf)
		fclose(logf);
	return 0;
}
