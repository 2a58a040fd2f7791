/*
 * limiter/limits.h: what a limit is, which limits apply to a request, and
 * what the store's answer means for the client.
 *
 * Pure C: no I/O, no clock, no allocation on the decision path. Every time
 * is a store-clock Unix time in milliseconds passed in by the caller.
 *
 * Units of every counter field:
 *   requests   - requests (1 per request)
 *   units      - cost units read from the request body (images, tokens, ...)
 *   spend      - money in millionths of the configured currency unit
 *   concurrent - leases held (requests or jobs in flight)
 */
#ifndef RW_LIMITER_LIMITS_H
#define RW_LIMITER_LIMITS_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    LIM_REQUESTS = 0,
    LIM_UNITS,
    LIM_SPEND,
    LIM_CONCURRENT
} lim_metric_t;

typedef enum {
    LIM_PER_NONE = 0, /* only for LIM_CONCURRENT */
    LIM_PER_SECOND,   /* rolling 1 s */
    LIM_PER_MINUTE,   /* rolling 60 s */
    LIM_PER_HOUR,     /* rolling 3600 s */
    LIM_PER_DAY,      /* calendar UTC day */
    LIM_PER_MONTH     /* calendar UTC month */
} lim_per_t;

typedef enum { LIM_SCOPE_KEY = 0, LIM_SCOPE_ACCOUNT } lim_scope_t;

/*
 * The largest amounts anywhere: a request's units (estimated or reported
 * by the backend) and its price in millionths saturate at these, and no
 * limit may be larger. Both stay far below 2^53, so a counter holding a
 * limit plus the reconcile debt of many requests is still exact where it
 * is kept as a double (Redis's Lua numbers).
 */
#define LIM_UNITS_MAX ((int64_t)1 << 40)
#define LIM_PRICE_MAX ((int64_t)1 << 50)

/* Longest counter identity a check can carry (account and key ids are
 * limited to 64 bytes by the config, rule identities to 96). */
#define LIM_KEY_MAX 256
/* Most checks one request can produce. The config refuses a policy that
 * would apply more limits than this to one endpoint. */
#define LIM_MAX_CHECKS 32

/*
 * One limit as written at one level (tier, account or key).
 * Ownership: the config snapshot that parsed it owns `eps` and `ident`;
 * a rule lives exactly as long as its snapshot.
 */
typedef struct lim_rule {
    lim_metric_t metric;
    lim_per_t per;     /* LIM_PER_NONE iff metric == LIM_CONCURRENT */
    lim_scope_t scope;
    int removed;       /* 1: "limit": null, removes the inherited rule of the same identity */
    int shadow;        /* 1: "mode": "shadow": counted and reported, never refuses */
    int64_t limit;     /* in the metric's unit (spend: millionths) */
    uint32_t *eps;     /* sorted, unique endpoint indices; n_eps == 0: all endpoints */
    uint32_t n_eps;
    char *ep_names;    /* endpoint names, comma-joined in config order, "" for all (for bodies) */
    /* Canonical identity: metric:per:scope:endpoint-set, plus ":shadow" for
     * a shadow rule (its own counter, beside an enforcing one). Two rules with the
     * same ident override each other, and counters keyed by it survive a
     * reload. At most 96 bytes (long endpoint sets are hashed by the config). */
    char *ident;
} lim_rule_t;

/*
 * The limits that apply to one key: tier, then account, then key merged.
 * rules point into the config snapshot (not owned). by_ep is owned.
 */
typedef struct lim_policy {
    const lim_rule_t **rules; /* owned array of borrowed pointers */
    size_t n_rules;
    size_t n_endpoints;
    uint32_t *ep_off;  /* n_endpoints + 1 offsets into ep_rule */
    uint16_t *ep_rule; /* indices into rules, per endpoint */
} lim_policy_t;

/*
 * Merge levels in order (tier, account, key). A rule of a later level with
 * the same ident replaces the earlier one; a `removed` rule deletes it; other
 * rules are added. Returns 0, or -1 on allocation failure (out untouched),
 * or -2 when an endpoint would have more than LIM_MAX_CHECKS limits.
 */
int lim_policy_resolve(lim_policy_t *out, const lim_rule_t *const levels[],
                       const size_t n_levels_rules[], size_t n_levels,
                       size_t n_endpoints);
void lim_policy_free(lim_policy_t *p);

typedef enum { LIM_CK_ROLLING = 0, LIM_CK_CALENDAR, LIM_CK_GAUGE } lim_ck_kind_t;

/* One counter a request must fit into. Built on the caller's stack. */
typedef struct lim_check {
    const lim_rule_t *rule; /* borrowed from the snapshot */
    lim_ck_kind_t kind;
    lim_per_t per;
    int64_t window_ms;      /* rolling windows: 1000, 60000 or 3600000 */
    int64_t limit;          /* metric unit */
    int64_t amount;         /* what this request adds (metric unit) */
    int shadow;             /* 1: never refuses; charged whenever the enforcing
                               checks admit, past its own limit too */
    int64_t lease_ttl_ms;   /* gauge: expiry of the lease in a shared store
                               (set by the caller; 0 = the store's default) */
    char key[LIM_KEY_MAX];  /* "{account}:a:IDENT" or "{account}:k:KEYID:IDENT" */
} lim_check_t;

/*
 * Build the checks for one request into out[0..max). `units` is the
 * request's units, `price_micros` its estimated price. Returns the number
 * of checks, or (size_t)-1 if a key would be longer than LIM_KEY_MAX.
 */
size_t lim_build_checks(const lim_policy_t *p, uint32_t endpoint,
                        const char *account, const char *key_id,
                        int64_t units, int64_t price_micros,
                        lim_check_t *out, size_t max);

/* Checks for rules [first, first + max) of the policy (units and price 0), whatever
 * endpoint they guard (for usage, in batches). Returns how many were built,
 * or (size_t)-1 if a key would be longer than LIM_KEY_MAX. */
size_t lim_build_rule_checks(const lim_policy_t *p, size_t first, const char *account,
                             const char *key_id, lim_check_t *out, size_t max);

/* 1 if any of the checks is a gauge (a lease to take and give back). */
int lim_checks_have_gauge(const lim_check_t *c, size_t n);

/* The store's answer for one check, in store-clock milliseconds. */
typedef struct lim_result {
    int ok;           /* used + amount <= limit (a shadow check that is not
                         ok would have refused, and was still charged) */
    int64_t used;     /* counted now, before this request */
    int64_t reset_ms; /* when all it counts now has left (rolling) or the
                         calendar period ends; for a gauge 0 */
    int64_t retry_ms; /* !ok: when this amount fits (LIM_NEVER: never) */
} lim_result_t;

#define LIM_NEVER INT64_MAX

/* The store's answer for one decision. res[i] answers checks[i]. */
typedef struct lim_outcome {
    int admitted;     /* every enforcing check is ok (shadow checks do not count) */
    int64_t now_ms;
    lim_result_t res[LIM_MAX_CHECKS];
} lim_outcome_t;

/* Facts for the 429 body and the X-RateLimit-* headers. No strings owned.
 * Shadow checks never refuse and never describe the headers. */
typedef struct lim_report {
    int admitted;
    /* Refusal (admitted == 0). */
    int refused;              /* index into checks */
    const char *code;         /* RATE_LIMIT_EXCEEDED, DAILY_LIMIT_EXCEEDED, ... */
    const char *type_header;  /* X-RateLimit-Type: second|minute|hour|daily|monthly|concurrent */
    int should_retry;         /* 0: x-should-retry: false */
    int never;                /* 1: larger than the limit alone, can never pass:
                                 no Retry-After, retry_after_* are 0 */
    int64_t retry_after_s;    /* >= 1 unless never */
    int64_t retry_after_ms;   /* >= 1 unless never */
    int64_t ref_limit, ref_used; /* of the refusing check, now */
    int64_t ref_reset_s;      /* Unix seconds */
    /* Headers on every answer: the per-minute (else shortest rolling)
     * requests/units limit with the fewest remaining. */
    int has_main;
    int64_t main_limit, main_remaining, main_reset_s;
    int has_daily;
    int64_t daily_limit, daily_remaining;
} lim_report_t;

void lim_report(const lim_check_t *checks, size_t n, const lim_outcome_t *o,
                lim_report_t *rep);
/* The limit of metric m that a per-metric header (x-ratelimit-*-requests,
 * -tokens) describes: among the rolling ones, the per-minute one, else the
 * shortest window, then the fewest remaining (remaining[i]: check i's, as
 * the request last knew it). -1 when there is none. */
int lim_report_pick_metric(const lim_check_t *checks, size_t n, lim_metric_t m,
                           const int64_t *remaining);

/* Names used in bodies, config and counter keys. */
/* The words the config file and the answers use, each list NULL-terminated
 * and in enum order: lim_metric_words by lim_metric_t, lim_per_words from
 * LIM_PER_SECOND on (LIM_PER_NONE has no word), lim_scope_words by
 * lim_scope_t. */
extern const char *const lim_metric_words[];
extern const char *const lim_per_words[];
extern const char *const lim_scope_words[];
const char *lim_metric_name(lim_metric_t m);
const char *lim_per_name(lim_per_t p);   /* "" for LIM_PER_NONE */
const char *lim_scope_name(lim_scope_t s);
int64_t lim_per_window_ms(lim_per_t p);  /* rolling window length, 0 for calendar/none */

#endif
