/*
 * limiter/window.h: window arithmetic, written once. Times are Unix
 * milliseconds of the store's clock; no function reads a clock.
 *
 * Rolling window of length W: W is cut into 60 buckets; bucket j holds what
 * was admitted in [start(j), start(j+1)) with start(j) = ceil(j*W/60).
 * At time `now` (bucket cur) the buckets cur-60 .. cur are counted: 61
 * buckets, a superset of (now-W, now]. So a window is never over its limit
 * and refuses early by at most one bucket, W/60 (1 s of a minute).
 * State is fixed size whatever the limit: 61 counters and a running sum.
 */
#ifndef RW_LIMITER_WINDOW_H
#define RW_LIMITER_WINDOW_H

#include <stdint.h>

#include "limits.h"

#define LIM_BUCKETS 60           /* buckets per window length */
#define LIM_SLOTS (LIM_BUCKETS + 1) /* buckets counted at any time */

typedef struct lim_rolling {
    int64_t head;              /* index of the newest bucket advanced to */
    int64_t sum;               /* sum of slot[] (metric unit) */
    int64_t slot[LIM_SLOTS];   /* slot[j % LIM_SLOTS] = bucket j (metric unit) */
} lim_rolling_t;

/* Bucket index of time t for window w. */
int64_t lim_bucket_of(int64_t t_ms, int64_t window_ms);
/* First millisecond of bucket j. */
int64_t lim_bucket_start(int64_t j, int64_t window_ms);

/* An empty window positioned at now. */
void lim_rolling_init(lim_rolling_t *r, int64_t window_ms, int64_t now_ms);
/* Drop buckets that left the window by now. Time never moves a window back:
 * a now older than head is treated as head. */
void lim_rolling_advance(lim_rolling_t *r, int64_t window_ms, int64_t now_ms);
/* Charge amount to the current bucket (after advance). */
void lim_rolling_add(lim_rolling_t *r, int64_t amount);
/* Take back up to amount from the bucket charged at charged_ms, if that
 * bucket is still counted (after advance). Only from that bucket: taking it
 * from a newer one would undercount once the charge's bucket leaves. */
void lim_rolling_give_back(lim_rolling_t *r, int64_t window_ms, int64_t amount,
                           int64_t charged_ms);
/* Earliest time >= now at which sum + amount <= limit, after advance;
 * LIM_NEVER if amount > limit. */
int64_t lim_rolling_retry_at(const lim_rolling_t *r, int64_t window_ms,
                             int64_t limit, int64_t amount, int64_t now_ms);
/* Time by which everything counted now has left the window (now if empty). */
int64_t lim_rolling_reset_at(const lim_rolling_t *r, int64_t window_ms,
                             int64_t now_ms);
/* 1 if nothing counted would survive at now (the entry can be evicted). */
int lim_rolling_idle(const lim_rolling_t *r, int64_t window_ms, int64_t now_ms);

/* Calendar periods (UTC). period_id identifies the day or month containing t. */
int64_t lim_period_id(lim_per_t per, int64_t t_ms);
int64_t lim_period_start(lim_per_t per, int64_t t_ms);
int64_t lim_period_end(lim_per_t per, int64_t t_ms); /* first ms of the next period */

/* Civil date helpers (proleptic Gregorian), exposed for tests. */
int64_t lim_days_from_civil(int64_t y, unsigned m, unsigned d);
void lim_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d);

#endif
