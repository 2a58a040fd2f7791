/*
 * gateway/respond.c: how the answers the gateway writes itself look
 * (errors, 429, 503, usage, the rate headers). Bodies are built with
 * jansson. Nothing here sends an answer or ends a request: the caller
 * (gateway/request.c) gets the fields added to its connection and the body
 * back, and sends it.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "errjson.h"
#include "respond.h"


/* Seconds a limit's window or period spans (months: 30 days). */
static int64_t window_s(const lim_check_t *c)
{
    if (c->window_ms)
        return c->window_ms / 1000;
    return c->per == LIM_PER_DAY ? 86400 : c->per == LIM_PER_MONTH ? 2592000 : 0;
}

static int64_t reset_in_s(const respond_rates_t *r, size_t i)
{
    int64_t ms = r->reset_ms[i] - r->now_ms;
    return ms > 0 ? (ms + 999) / 1000 : 0;
}

/* draft-ietf-httpapi-ratelimit-headers-10: one policy item per limit that
 * applies, named by the limit's identity; quota units other than requests
 * in `qu`. */
static void ietf_headers(const respond_rates_t *r, h1_conn_t *h)
{
    char pol[2048], cur[2048];
    size_t pl = 0, cl = 0;
    pol[0] = cur[0] = '\0';
    for (size_t i = 0; i < r->n_checks; i++) {
        const lim_check_t *c = &r->checks[i];
        if (c->shadow)
            continue; /* never refuses: no quota to show */
        const char *qu = c->rule->metric == LIM_REQUESTS    ? NULL
                         : c->rule->metric == LIM_UNITS      ? "units"
                         : c->rule->metric == LIM_SPEND      ? "spend-micros"
                                                             : "concurrent-requests";
        char w[32] = "";
        if (window_s(c))
            snprintf(w, sizeof w, ";w=%lld", (long long)window_s(c));
        /* An item that does not fit is left out whole, never cut. */
        int n = snprintf(pol + pl, sizeof pol - pl, "%s\"%s\";q=%lld%s%s%s%s", pl ? ", " : "",
                         c->rule->ident, (long long)c->limit, qu ? ";qu=\"" : "",
                         qu ? qu : "", qu ? "\"" : "", w);
        if (n > 0 && (size_t)n < sizeof pol - pl)
            pl += (size_t)n;
        pol[pl] = '\0';
        n = snprintf(cur + cl, sizeof cur - cl, "%s\"%s\";r=%lld;t=%lld", cl ? ", " : "",
                     c->rule->ident, (long long)r->remaining[i],
                     (long long)reset_in_s(r, i));
        if (n > 0 && (size_t)n < sizeof cur - cl)
            cl += (size_t)n;
        cur[cl] = '\0';
    }
    h1_add_header(h, "RateLimit-Policy", pol);
    h1_add_header(h, "RateLimit", cur);
}

/* A duration as LLM clients read it: "20ms", "1.5s", "6m0s", "1h2m3s". */
static void go_duration(int64_t ms, char *out, size_t len)
{
    if (ms < 1000) {
        snprintf(out, len, "%lldms", (long long)ms);
        return;
    }
    int64_t h = ms / 3600000, m = ms / 60000 % 60, s = ms / 1000 % 60, frac = ms % 1000;
    char sec[24];
    if (frac) {
        snprintf(sec, sizeof sec, "%lld.%03lld", (long long)s, (long long)frac);
        char *e = sec + strlen(sec) - 1;
        while (*e == '0')
            *e-- = '\0';
    } else {
        snprintf(sec, sizeof sec, "%lld", (long long)s);
    }
    if (h)
        snprintf(out, len, "%lldh%lldm%ss", (long long)h, (long long)m, sec);
    else if (m)
        snprintf(out, len, "%lldm%ss", (long long)m, sec);
    else
        snprintf(out, len, "%ss", sec);
}

/* x-ratelimit-{limit,remaining,reset}-{requests,tokens}: for requests and
 * for units limits, the one the limiter's report picks. */
static void openai_headers(const respond_rates_t *r, h1_conn_t *h)
{
    static const char *const suffix[2] = {"requests", "tokens"};
    for (int k = 0; k < 2; k++) {
        int best = lim_report_pick_metric(r->checks, r->n_checks, k == 0 ? LIM_REQUESTS : LIM_UNITS,
                                          r->remaining);
        if (best < 0)
            continue;
        char name[64], dur[48];
        snprintf(name, sizeof name, "x-ratelimit-limit-%s", suffix[k]);
        h1_add_header_int(h, name, r->checks[best].limit);
        snprintf(name, sizeof name, "x-ratelimit-remaining-%s", suffix[k]);
        h1_add_header_int(h, name, r->remaining[best]);
        int64_t ms = r->reset_ms[best] - r->now_ms;
        go_duration(ms > 0 ? ms : 0, dur, sizeof dur);
        snprintf(name, sizeof name, "x-ratelimit-reset-%s", suffix[k]);
        h1_add_header(h, name, dur);
    }
}

/* An absolute time in Unix milliseconds as RFC 3339 UTC, whole seconds
 * rounded up: "2026-01-02T15:04:05Z". */
static void rfc3339(int64_t ms, char *out, size_t len)
{
    time_t t = (time_t)((ms + 999) / 1000);
    struct tm tm;
    if (!gmtime_r(&t, &tm) || !strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm))
        snprintf(out, len, "1970-01-01T00:00:00Z");
}

/* anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}: the same
 * limits as the x-ratelimit-* fields, reset as the time (RFC 3339) by which
 * the window has freed all it counts now. */
static void anthropic_headers(const respond_rates_t *r, h1_conn_t *h)
{
    static const char *const kind[2] = {"requests", "tokens"};
    for (int k = 0; k < 2; k++) {
        int best = lim_report_pick_metric(r->checks, r->n_checks, k == 0 ? LIM_REQUESTS : LIM_UNITS,
                                          r->remaining);
        if (best < 0)
            continue;
        char name[64], when[40];
        snprintf(name, sizeof name, "anthropic-ratelimit-%s-limit", kind[k]);
        h1_add_header_int(h, name, r->checks[best].limit);
        snprintf(name, sizeof name, "anthropic-ratelimit-%s-remaining", kind[k]);
        h1_add_header_int(h, name, r->remaining[best]);
        int64_t at = r->reset_ms[best] > r->now_ms ? r->reset_ms[best] : r->now_ms;
        rfc3339(at, when, sizeof when);
        snprintf(name, sizeof name, "anthropic-ratelimit-%s-reset", kind[k]);
        h1_add_header(h, name, when);
    }
}

/* Written before any header a backend sent: the proxy leaves out the
 * backend's fields of the same names (ours replace them). */
void respond_rate_headers(const respond_rates_t *r, h1_conn_t *h)
{
    const lim_report_t *rep = r->rep;
    if (rep) {
        if (rep->has_main) {
            h1_add_header_int(h, "X-RateLimit-Limit", rep->main_limit);
            h1_add_header_int(h, "X-RateLimit-Remaining", rep->main_remaining);
            h1_add_header_int(h, "X-RateLimit-Reset", rep->main_reset_s);
        }
        if (rep->has_daily) {
            h1_add_header_int(h, "X-RateLimit-Daily-Limit", rep->daily_limit);
            h1_add_header_int(h, "X-RateLimit-Daily-Remaining", rep->daily_remaining);
        }
    }
    if (r->remaining) {
        if (r->ietf)
            ietf_headers(r, h);
        if (r->openai)
            openai_headers(r, h);
        if (r->anthropic)
            anthropic_headers(r, h);
    }
    h1_add_header(h, "X-Request-Id", r->request_id);
    if (r->anthropic)
        h1_add_header(h, "request-id", r->request_id);
}

const char *respond_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    }
    return "Error";
}

json_t *respond_unavailable(h1_conn_t *c)
{
    if (c) {
        h1_add_header(c, "Retry-After", "1");
        h1_add_header(c, "retry-after-ms", "1000");
    }
    return error_json("service_unavailable", "LIMITER_UNAVAILABLE",
                      "The rate limiter's store cannot be reached. Retry shortly.", NULL);
}

/* Money in millionths as a decimal string: 2500000 -> "2.50". */
void respond_money(int64_t micros, char *buf, size_t len)
{
    int64_t whole = micros / 1000000, frac = micros % 1000000;
    int digits = 6;
    while (digits > 2 && frac % 10 == 0) {
        frac /= 10;
        digits--;
    }
    snprintf(buf, len, "%" PRId64 ".%0*" PRId64, whole, digits, frac);
}

/* details.endpoints of a limit: its endpoint names, ["*"] for all. */
static json_t *endpoints_json(const lim_rule_t *rule)
{
    json_t *a = json_array();
    if (!rule->ep_names || !*rule->ep_names) {
        json_array_append_new(a, json_string("*"));
        return a;
    }
    const char *p = rule->ep_names;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        json_array_append_new(a, json_stringn(p, n));
        p += n + (comma ? 1 : 0);
    }
    return a;
}

/* A limit value for a body: money as a decimal string, else an integer. */
static json_t *amount_json(const lim_rule_t *rule, int64_t v)
{
    if (rule->metric == LIM_SPEND) {
        char buf[32];
        respond_money(v, buf, sizeof buf);
        return json_string(buf);
    }
    return json_integer(v);
}

void respond_429_headers(const lim_report_t *rep, h1_conn_t *h)
{
    if (!rep->never) {
        h1_add_header_int(h, "Retry-After", rep->retry_after_s);
        h1_add_header_int(h, "retry-after-ms", rep->retry_after_ms);
    }
    h1_add_header(h, "X-RateLimit-Type", rep->type_header);
    if (!rep->should_retry)
        h1_add_header(h, "x-should-retry", "false");
}

json_t *respond_429_body(const lim_report_t *rep, const lim_check_t *checks)
{
    const lim_check_t *c = &checks[rep->refused];
    const lim_rule_t *rule = c->rule;
    char msg[256];

    int64_t remaining = rep->ref_limit - rep->ref_used;
    if (remaining < 0)
        remaining = 0;

    json_t *details = json_object();
    json_object_set_new(details, "limit", amount_json(rule, rep->ref_limit));
    if (rule->metric == LIM_CONCURRENT) {
        json_object_set_new(details, "active", json_integer(rep->ref_used));
        snprintf(msg, sizeof msg,
                 "Concurrent prediction limit exceeded. %" PRId64 "/%" PRId64
                 " predictions running.",
                 rep->ref_used, rep->ref_limit);
    } else {
        json_object_set_new(details, "remaining", amount_json(rule, remaining));
        const char *what = rule->metric == LIM_REQUESTS ? "requests"
                           : rule->metric == LIM_UNITS  ? "units"
                                                        : "spend";
        if (rule->metric == LIM_SPEND) {
            char lim[32];
            respond_money(rep->ref_limit, lim, sizeof lim);
            snprintf(msg, sizeof msg, "Spend limit exceeded: %s per %s (%s scope).", lim,
                     lim_per_name(c->per), lim_scope_name(rule->scope));
        } else if (rep->never) {
            snprintf(msg, sizeof msg,
                     "This request needs %" PRId64 " %s, more than the limit of %" PRId64
                     " per %s (%s scope); it can never be admitted.",
                     c->amount, what, c->limit, lim_per_name(c->per),
                     lim_scope_name(rule->scope));
        } else {
            /* No Retry-After in the text: the header has it, and the body
             * stays the same while the refusal lasts (the deny cache
             * sends it again as it is). */
            snprintf(msg, sizeof msg, "%s limit exceeded: %" PRId64 " %s per %s (%s scope).",
                     c->per == LIM_PER_DAY     ? "Daily"
                     : c->per == LIM_PER_MONTH ? "Monthly"
                                               : "Rate",
                     c->limit, what, lim_per_name(c->per), lim_scope_name(rule->scope));
        }
    }
    json_object_set_new(details, "metric", json_string(lim_metric_name(rule->metric)));
    json_object_set_new(details, "per", rule->per == LIM_PER_NONE
                                            ? json_null()
                                            : json_string(lim_per_name(rule->per)));
    json_object_set_new(details, "scope", json_string(lim_scope_name(rule->scope)));
    json_object_set_new(details, "endpoints", endpoints_json(rule));
    json_object_set_new(details, "reset", json_integer(rep->ref_reset_s));

    return error_json("rate_limit_error", rep->code, msg, details);
}

json_t *respond_usage_limit(const lim_check_t *c, const lim_result_t *res)
{
    const lim_rule_t *rule = c->rule;
    int64_t rem = c->limit - res->used;
    int64_t reset = c->kind == LIM_CK_GAUGE ? 0 : (res->reset_ms + 999) / 1000;
    json_t *o = json_pack("{s:s, s:o, s:s, s:o, s:o, s:o, s:o, s:o}", "metric",
                     lim_metric_name(rule->metric), "per",
                     rule->per == LIM_PER_NONE ? json_null() : json_string(lim_per_name(rule->per)),
                     "scope", lim_scope_name(rule->scope), "endpoints",
                     endpoints_json(rule), "limit", amount_json(rule, c->limit),
                     "used", amount_json(rule, res->used), "remaining",
                     amount_json(rule, rem > 0 ? rem : 0), "reset",
                     reset ? json_integer(reset) : json_null());
    if (o && rule->shadow)
        json_object_set_new(o, "mode", json_string("shadow"));
    return o;
}

json_t *respond_usage_body(const char *account, const char *tier, const char *key_id,
                           json_t *limits)
{
    json_t *body = json_pack("{s:s, s:s, s:o}", "account", account, "tier", tier, "limits", limits);
    if (body && key_id)
        json_object_set_new(body, "key", json_string(key_id));
    return body;
}
