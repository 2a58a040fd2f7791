/* limiter/window.c: rolling buckets and UTC calendar periods. See window.h. */
#include "window.h"

#include <string.h>

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0)))
        q--;
    return q;
}

int64_t lim_bucket_of(int64_t t_ms, int64_t window_ms)
{
    return floor_div(t_ms * LIM_BUCKETS, window_ms);
}

int64_t lim_bucket_start(int64_t j, int64_t window_ms)
{
    /* ceil(j * W / 60) */
    return -floor_div(-(j * window_ms), LIM_BUCKETS);
}

void lim_rolling_init(lim_rolling_t *r, int64_t window_ms, int64_t now_ms)
{
    memset(r, 0, sizeof *r);
    r->head = lim_bucket_of(now_ms, window_ms);
}

void lim_rolling_advance(lim_rolling_t *r, int64_t window_ms, int64_t now_ms)
{
    int64_t cur = lim_bucket_of(now_ms, window_ms);
    if (cur <= r->head)
        return;
    if (cur - r->head >= LIM_SLOTS) {
        memset(r->slot, 0, sizeof r->slot);
        r->sum = 0;
    } else {
        /* Bucket j takes the slot of bucket j - 61, which has left. */
        for (int64_t j = r->head + 1; j <= cur; j++) {
            int64_t *s = &r->slot[j % LIM_SLOTS];
            r->sum -= *s;
            *s = 0;
        }
    }
    r->head = cur;
}

void lim_rolling_add(lim_rolling_t *r, int64_t amount)
{
    r->slot[r->head % LIM_SLOTS] += amount;
    r->sum += amount;
}

void lim_rolling_give_back(lim_rolling_t *r, int64_t window_ms, int64_t amount,
                           int64_t charged_ms)
{
    int64_t j = lim_bucket_of(charged_ms, window_ms);
    if (j > r->head || j < r->head - LIM_BUCKETS || amount <= 0)
        return;
    int64_t *s = &r->slot[((j % LIM_SLOTS) + LIM_SLOTS) % LIM_SLOTS];
    int64_t take = amount < *s ? amount : *s;
    *s -= take;
    r->sum -= take;
}

int64_t lim_rolling_retry_at(const lim_rolling_t *r, int64_t window_ms,
                             int64_t limit, int64_t amount, int64_t now_ms)
{
    if (amount > limit)
        return LIM_NEVER;
    int64_t sum = r->sum;
    if (sum + amount <= limit)
        return now_ms;
    /* Oldest first: bucket j leaves at start(j + 61). */
    for (int64_t j = r->head - LIM_BUCKETS; j <= r->head; j++) {
        sum -= r->slot[((j % LIM_SLOTS) + LIM_SLOTS) % LIM_SLOTS];
        if (sum + amount <= limit) {
            int64_t t = lim_bucket_start(j + LIM_SLOTS, window_ms);
            return t > now_ms ? t : now_ms;
        }
    }
    return lim_bucket_start(r->head + LIM_SLOTS, window_ms);
}

int64_t lim_rolling_reset_at(const lim_rolling_t *r, int64_t window_ms,
                             int64_t now_ms)
{
    for (int64_t j = r->head; j >= r->head - LIM_BUCKETS; j--) {
        if (r->slot[((j % LIM_SLOTS) + LIM_SLOTS) % LIM_SLOTS] != 0) {
            int64_t t = lim_bucket_start(j + LIM_SLOTS, window_ms);
            return t > now_ms ? t : now_ms;
        }
    }
    return now_ms;
}

int lim_rolling_idle(const lim_rolling_t *r, int64_t window_ms, int64_t now_ms)
{
    return r->sum == 0 ||
           lim_bucket_of(now_ms, window_ms) - r->head >= LIM_SLOTS;
}

/* Days since 1970-01-01 of a civil date; the classic era-based conversion
 * (400-year eras of 146097 days, years starting in March). */
int64_t lim_days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = floor_div(y, 400);
    int64_t yoe = y - era * 400;                                 /* [0, 399] */
    int64_t mp = (m + 9) % 12;                                   /* March = 0 */
    int64_t doy = (153 * mp + 2) / 5 + d - 1;                    /* [0, 365] */
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;         /* [0, 146096] */
    return era * 146097 + doe - 719468;
}

void lim_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = floor_div(z, 146097);
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (unsigned)(doy - (153 * mp + 2) / 5 + 1);
    *m = (unsigned)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

#define DAY_MS 86400000LL

int64_t lim_period_id(lim_per_t per, int64_t t_ms)
{
    int64_t day = floor_div(t_ms, DAY_MS);
    if (per == LIM_PER_DAY)
        return day;
    int64_t y;
    unsigned m, d;
    lim_civil_from_days(day, &y, &m, &d);
    return y * 12 + (m - 1);
}

int64_t lim_period_start(lim_per_t per, int64_t t_ms)
{
    int64_t day = floor_div(t_ms, DAY_MS);
    if (per == LIM_PER_DAY)
        return day * DAY_MS;
    int64_t y;
    unsigned m, d;
    lim_civil_from_days(day, &y, &m, &d);
    return lim_days_from_civil(y, m, 1) * DAY_MS;
}

int64_t lim_period_end(lim_per_t per, int64_t t_ms)
{
    int64_t day = floor_div(t_ms, DAY_MS);
    if (per == LIM_PER_DAY)
        return (day + 1) * DAY_MS;
    int64_t y;
    unsigned m, d;
    lim_civil_from_days(day, &y, &m, &d);
    if (m == 12) {
        y++;
        m = 1;
    } else {
        m++;
    }
    return lim_days_from_civil(y, m, 1) * DAY_MS;
}
