/*
 * gateway/http/parse.h: HTTP/1.1 on the wire, parsed without I/O.
 *
 * Request heads, response heads and chunked bodies (with trailers) are
 * parsed from a caller's buffer: no allocation, no I/O, no clock, nothing
 * of the gateway. Every call answers with how many bytes it took, that it
 * needs more, or an error code; the caller decides what to send. This is
 * what lets the server side (gateway/http/server.c, input.c, output.c) and a backend client share one
 * strict reading of the protocol, and what the fuzz targets in tests/fuzz
 * drive directly.
 *
 * Why by hand: Debian's packages offer evhttp's parser (bound to its own
 * connection objects and allocating per header) and llhttp/http-parser
 * (callback-driven, not in our stack); picohttpparser's contract (consumed,
 * need more, or error, pointers into the caller's buffer) is the model.
 *
 * Strictness (RFC 9112), for requests and responses alike:
 *  - lines end in CRLF; a bare LF is taken as a line end in a head (RFC
 *    9112 section 2.2), a bare CR anywhere is an error;
 *  - field names are tokens, with no space before the colon; folded lines
 *    (obs-fold) are errors; a value holds no control byte but HTAB;
 *  - Content-Length is digits only, every copy equal; with
 *    Transfer-Encoding it is an error;
 *  - Transfer-Encoding (all its fields together) must be exactly
 *    "chunked"; anything else is HP_E_TE (501 for a request);
 *  - a request target holds no control byte, space or NUL; HTTP/1.1 needs
 *    exactly one Host.
 *
 * Pointers returned point into the caller's buffer and live as long as it.
 */
#ifndef RW_GATEWAY_HTTP_PARSE_H
#define RW_GATEWAY_HTTP_PARSE_H

#include <stddef.h>
#include <stdint.h>

/* Results below zero. */
enum {
    HP_NEED = -1,        /* a complete unit is not in the buffer yet */
    HP_E_SYNTAX = -2,    /* not HTTP/1.x (400 / 502) */
    HP_E_TOO_MANY = -3,  /* more fields than the caller's array (431) */
    HP_E_METHOD = -4,    /* method not a token (400) */
    HP_E_VERSION = -5,   /* not HTTP/1.0 or HTTP/1.1 (505 / 502) */
    HP_E_LENGTH = -6,    /* Content-Length not valid, or conflicting (400) */
    HP_E_TE = -7,        /* a transfer coding other than chunked (501) */
    HP_E_TARGET = -8,    /* the request target is not acceptable (400) */
    HP_E_HOST = -9,      /* HTTP/1.1 without Host, or Host twice (400) */
    HP_E_FIELD = -10,    /* a field line is not valid (400) */
    HP_E_CHUNK = -11,    /* chunked framing not valid (400 / 502) */
    HP_E_STATUS = -12,   /* status line not valid (502) */
};

/* A short description of an error code, for logs and messages. */
const char *hp_strerror(int code);

typedef struct hp_field {
    const char *name;
    size_t name_len;
    const char *value; /* without leading and trailing blanks */
    size_t value_len;
} hp_field_t;

/* What the fields of a head say about framing and the connection. */
typedef struct hp_framing {
    int64_t content_length; /* -1: none */
    int chunked;            /* Transfer-Encoding: chunked */
    int conn_close;         /* Connection: close */
    int conn_keep_alive;    /* Connection: keep-alive */
    int expect_continue;    /* Expect: 100-continue */
    int expect_other;       /* an Expect other than 100-continue */
    int n_host;             /* Host fields seen */
} hp_framing_t;

typedef struct hp_request {
    const char *method;
    size_t method_len;
    const char *target;
    size_t target_len;
    int minor_version;  /* 0 or 1 */
    hp_field_t *fields; /* the caller's array */
    size_t n_fields;    /* in: its capacity; out: fields found */
    hp_framing_t framing;
} hp_request_t;

typedef struct hp_response {
    int status;         /* 100..999 */
    const char *reason; /* may be empty; no control byte but HTAB */
    size_t reason_len;
    int minor_version;
    hp_field_t *fields;
    size_t n_fields;
    hp_framing_t framing;
} hp_response_t;

/*
 * Parse a request head at buf[0..len). Empty lines before the request line
 * are skipped (RFC 9112 section 2.2). Returns the bytes the head took (the empty
 * line included), HP_NEED, or an error. `req->n_fields` is the capacity of
 * `req->fields` on entry.
 */
int hp_parse_request(const char *buf, size_t len, hp_request_t *req);

/*
 * Parse a response head. Returns as hp_parse_request. A 1xx head is a head
 * like another: the caller reads the next one after it.
 */
int hp_parse_response(const char *buf, size_t len, hp_response_t *res);

/* How the body of a response is delimited (RFC 9112 section 6.3), given the
 * request's method being HEAD and the response's status and framing. */
enum hp_body { HP_BODY_NONE, HP_BODY_LENGTH, HP_BODY_CHUNKED, HP_BODY_CLOSE };
enum hp_body hp_response_body(int is_head, const hp_response_t *res);

/* The first field of that name (case-insensitive), or NULL. */
const hp_field_t *hp_find(const hp_field_t *f, size_t n, const char *name);

/* Whether a comma-separated list value holds token, case-insensitively. */
int hp_list_has(const char *value, size_t len, const char *token);

/* ---- chunked bodies ---------------------------------------------------- */

/*
 * A chunked body, decoded step by step. Each call to hp_chunked_next reads
 * from buf[0..len) and returns the bytes it took (possibly 0 with an event),
 * HP_NEED when it needs more input to make progress, or an error; the event
 * says what was found:
 *   HP_CH_DATA    data (ev->data, ev->len): body bytes, in place
 *   HP_CH_TRAILER one trailer field (ev->field)
 *   HP_CH_END     the body ended (after the last trailer field and the
 *                 empty line); nothing more is read
 * A chunk's data may come in several HP_CH_DATA events. Chunk extensions
 * are accepted and ignored; sizes are bounded (at most 15 hex digits).
 */
enum hp_ch_state { HP_CH_SIZE = 0, HP_CH_DATA_IN, HP_CH_DATA_CRLF, HP_CH_TRAILERS, HP_CH_DONE };
enum hp_ch_event { HP_CH_NONE = 0, HP_CH_DATA, HP_CH_TRAILER, HP_CH_END };

typedef struct hp_chunked {
    enum hp_ch_state state;
    int64_t left;          /* of the current chunk */
    size_t max_line;       /* longest size or trailer line (0: 4096) */
} hp_chunked_t;

typedef struct hp_chunk_ev {
    enum hp_ch_event type;
    const char *data;
    size_t len;
    hp_field_t field;
} hp_chunk_ev_t;

void hp_chunked_init(hp_chunked_t *d);
int hp_chunked_next(hp_chunked_t *d, const char *buf, size_t len, hp_chunk_ev_t *ev);

#endif
