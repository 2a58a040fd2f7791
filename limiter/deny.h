/*
 * limiter/deny.h: the local deny cache. After a refusal that cannot turn
 * into an admit before a known time T, the same key and endpoint are
 * refused locally until T, without asking the store: a flood from one
 * abusive key costs the store nothing.
 *
 * Kept: a refusal by a rolling window or a calendar period (day, month) of
 * requests, units or spend, whose earliest pass time T the store reported.
 * Such a count can only go down by time passing (a rolling window frees at
 * T, a period ends at T): another request, instance or lease release only
 * adds to it. So a later request of the same key and endpoint whose amount
 * for that limit is at least the refused one cannot pass before T either
 * (a smaller one is asked of the store, and so is one larger than some
 * limit alone: that limit's "never" is its answer). A counter that reconcile can give
 * back to (the caller says so: `refundable`) can free early and is not
 * kept, nor a concurrency refusal. A config reload starts a new generation
 * and so forgets everything. So the cache never changes a decision, it
 * only answers some of them sooner (tests/unit/test_deny.c).
 *
 * Pure: times are passed in (the caller's clock, milliseconds). One cache
 * belongs to one thread. Memory is fixed at init: a direct-mapped table
 * whose entries are overwritten on collision.
 */
#ifndef RW_LIMITER_DENY_H
#define RW_LIMITER_DENY_H

#include <stddef.h>
#include <stdint.h>

#include "limits.h"

typedef struct lim_deny_entry {
    uint64_t gen;        /* config generation; 0 = empty */
    uintptr_t key;       /* identity of the API key within that generation */
    uint32_t endpoint;
    int64_t until_ms;    /* caller's clock */
    lim_report_t rep;    /* the refusal as reported; rep.refused indexes the
                            request's checks */
    size_t n;            /* how many checks the request had */
    int64_t amount;      /* the refusing check's amount (what was refused) */
    int64_t *remaining;  /* n: each check's limit less what it counted (>= 0),
                            for headers (owned, with reset_in_ms) */
    int64_t *reset_in_ms; /* n: from the refusal to each check's reset (store
                             clock); points into the same allocation */
    int64_t offered_ms;  /* the caller's clock when it was offered (sent_ms) */
    int64_t store_now_ms; /* the store's clock in the refusal (o->now_ms) */
    char *body;          /* the 429 body as sent, set by the caller (owned,
                            free()d when the entry is overwritten or freed) */
} lim_deny_entry_t;

typedef struct lim_deny {
    lim_deny_entry_t *e; /* owned */
    size_t n;            /* power of two */
    uint64_t hits, stored;
} lim_deny_t;

int lim_deny_init(lim_deny_t *d, size_t entries);
void lim_deny_free(lim_deny_t *d);

/* Keep the refusal o of checks[0..n) (reported as rep), if it is one the
 * cache may keep. Returns the entry (its body still NULL) or NULL. */
lim_deny_entry_t *lim_deny_offer(lim_deny_t *d, uint64_t gen, uintptr_t key, uint32_t endpoint,
                   const lim_check_t *checks, size_t n, const lim_outcome_t *o,
                   const lim_report_t *rep, int64_t sent_ms, int refundable);

/* The kept refusal that answers a request of checks[0..n) now, or NULL
 * (ask the store): none kept, expired, a smaller amount for the refusing
 * limit (it may fit), or an amount larger than some limit alone (that
 * limit's "never" is the answer, which the store gives). */
const lim_deny_entry_t *lim_deny_lookup(lim_deny_t *d, uint64_t gen, uintptr_t key,
                                        uint32_t endpoint, const lim_check_t *checks,
                                        size_t n, int64_t now_ms);

#endif
