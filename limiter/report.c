/* limiter/report.c: from the store's answer to 429 facts and headers.
 * See limits.h (lim_report). */
#include "limits.h"

#include <string.h>

static int64_t ceil_div(int64_t a, int64_t b)
{
    return a >= 0 ? (a + b - 1) / b : -((-a) / b);
}

static int64_t remaining_of(const lim_check_t *c, const lim_result_t *r,
                            int admitted)
{
    int64_t used = r->used + (admitted ? c->amount : 0);
    int64_t rem = c->limit - used;
    return rem > 0 ? rem : 0;
}

/* Order of preference of a rolling window for the main headers: the minute
 * first, then shorter windows before longer ones. */
static int main_rank(lim_per_t p)
{
    switch (p) {
    case LIM_PER_MINUTE: return 0;
    case LIM_PER_SECOND: return 1;
    case LIM_PER_HOUR: return 2;
    default: return 9;
    }
}

static void refusal_facts(const lim_check_t *c, lim_report_t *rep)
{
    const lim_rule_t *r = c->rule;
    rep->should_retry = 1;
    if (r->metric == LIM_CONCURRENT) {
        rep->code = "CONCURRENT_LIMIT_EXCEEDED";
        rep->type_header = "concurrent";
        return;
    }
    switch (c->per) {
    case LIM_PER_DAY: rep->type_header = "daily"; break;
    case LIM_PER_MONTH: rep->type_header = "monthly"; break;
    default: rep->type_header = lim_per_name(c->per); break;
    }
    if (r->metric == LIM_SPEND) {
        rep->code = "SPEND_LIMIT_EXCEEDED";
        rep->should_retry = 0;
    } else if (c->per == LIM_PER_DAY) {
        rep->code = "DAILY_LIMIT_EXCEEDED";
        rep->should_retry = 0;
    } else if (c->per == LIM_PER_MONTH) {
        rep->code = "MONTHLY_LIMIT_EXCEEDED";
        rep->should_retry = 0;
    } else {
        rep->code = "RATE_LIMIT_EXCEEDED";
    }
}

void lim_report(const lim_check_t *checks, size_t n, const lim_outcome_t *o,
                lim_report_t *rep)
{
    memset(rep, 0, sizeof *rep);
    rep->admitted = o->admitted;
    rep->refused = -1;

    if (!o->admitted) {
        /* The binding refusal is the one that frees last: after it, every
         * other refusing check has room again too. */
        int64_t worst = -1;
        for (size_t i = 0; i < n; i++) {
            const lim_result_t *r = &o->res[i];
            if (!r->ok && !checks[i].shadow && r->retry_ms > worst) {
                worst = r->retry_ms;
                rep->refused = (int)i;
            }
        }
    }
    if (rep->refused >= 0) {
        const lim_check_t *c = &checks[rep->refused];
        const lim_result_t *r = &o->res[rep->refused];
        refusal_facts(c, rep);
        int64_t at = r->retry_ms;
        if (at == LIM_NEVER) {
            /* This request alone is larger than the limit: no moment to
             * name, and a retry could only loop. */
            rep->should_retry = 0;
            rep->never = 1;
            at = r->reset_ms > o->now_ms ? r->reset_ms : o->now_ms + 1000;
        } else if (c->kind == LIM_CK_GAUGE) {
            at = o->now_ms + 1000; /* a slot frees when a job ends: unknown */
        }
        if (!rep->never) {
            int64_t wait = at - o->now_ms;
            rep->retry_after_ms = wait >= 1 ? wait : 1;
            rep->retry_after_s = ceil_div(rep->retry_after_ms, 1000);
            if (rep->retry_after_s < 1)
                rep->retry_after_s = 1;
        }
        rep->ref_limit = c->limit;
        rep->ref_used = r->used;
        int64_t reset = c->kind == LIM_CK_GAUGE ? at : r->reset_ms;
        rep->ref_reset_s = ceil_div(reset > o->now_ms ? reset : o->now_ms, 1000);
    }

    int best_rank = 99;
    int best_daily_req = -1;
    for (size_t i = 0; i < n; i++) {
        const lim_check_t *c = &checks[i];
        const lim_result_t *r = &o->res[i];
        lim_metric_t m = c->rule->metric;
        if ((m != LIM_REQUESTS && m != LIM_UNITS) || c->shadow)
            continue;
        int64_t rem = remaining_of(c, r, o->admitted);
        if (c->kind == LIM_CK_ROLLING) {
            int rank = main_rank(c->per);
            if (rank < best_rank || (rank == best_rank && rem < rep->main_remaining)) {
                best_rank = rank;
                rep->has_main = 1;
                rep->main_limit = c->limit;
                rep->main_remaining = rem;
                int64_t reset = r->reset_ms > o->now_ms ? r->reset_ms : o->now_ms;
                rep->main_reset_s = ceil_div(reset, 1000);
            }
        } else if (c->per == LIM_PER_DAY) {
            /* Requests limits first, then the fewest remaining. */
            int is_req = m == LIM_REQUESTS;
            if (!rep->has_daily || is_req > best_daily_req ||
                (is_req == best_daily_req && rem < rep->daily_remaining)) {
                rep->has_daily = 1;
                best_daily_req = is_req;
                rep->daily_limit = c->limit;
                rep->daily_remaining = rem;
            }
        }
    }
}

int lim_report_pick_metric(const lim_check_t *checks, size_t n, lim_metric_t m,
                           const int64_t *remaining)
{
    int best = -1;
    for (size_t i = 0; i < n; i++) {
        const lim_check_t *c = &checks[i];
        if (c->rule->metric != m || c->kind != LIM_CK_ROLLING || c->shadow)
            continue;
        if (best < 0) {
            best = (int)i;
            continue;
        }
        const lim_check_t *b = &checks[best];
        int c_min = c->per == LIM_PER_MINUTE, b_min = b->per == LIM_PER_MINUTE;
        if (c_min > b_min || (c_min == b_min && c->window_ms < b->window_ms) ||
            (c_min == b_min && c->window_ms == b->window_ms && remaining[i] < remaining[best]))
            best = (int)i;
    }
    return best;
}
