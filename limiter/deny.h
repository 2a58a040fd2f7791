/*
 * limiter/deny.h: the local deny cache. After a refusal that cannot turn
 * into an admit before a known time T, the same key and endpoint are
 * refused locally until T, without asking the store: a flood from one
 * abusive key costs the store nothing.
 *
 * Only refusals by a `requests` limit are kept: every request adds exactly
 * 1 to it, and its count can only go down by time passing (a rolling window
 * frees at T, a calendar period ends at T); no other request, instance or
 * lease release can make room earlier. A config reload starts a new
 * generation and so forgets everything. So the cache never changes a
 * decision, it only answers some of them sooner (tests/unit/test_deny.c).
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
    lim_report_t rep;    /* the refusal as reported; rep.refused == 0 */
    lim_check_t check;   /* the refusing check */
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

/*
 * Offer a refusal just answered by the store. sent_ms is the caller's clock
 * when the request was sent to the store (so that `until` is never later
 * than the store's T). Returns the entry it was kept in (valid until the
 * next offer), or NULL.
 */
lim_deny_entry_t *lim_deny_offer(lim_deny_t *d, uint64_t gen, uintptr_t key, uint32_t endpoint,
                   const lim_check_t *checks, const lim_outcome_t *o,
                   const lim_report_t *rep, int64_t sent_ms);

/* The kept refusal for this key and endpoint at now_ms, or NULL. The entry
 * stays valid until the next offer. */
const lim_deny_entry_t *lim_deny_lookup(lim_deny_t *d, uint64_t gen, uintptr_t key,
                                        uint32_t endpoint, int64_t now_ms);

#endif
