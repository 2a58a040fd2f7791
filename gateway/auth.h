/*
 * gateway/auth.h: credentials on a request: the client's API key, the admin
 * token, their SHA-256 digests and the constant-time comparison of digests.
 * Keys and tokens are only ever kept or compared as digests.
 */
#ifndef RW_GATEWAY_AUTH_H
#define RW_GATEWAY_AUTH_H

#include <stddef.h>

#include "http/server.h"

#define AUTH_DIGEST_LEN 32

/* The credential of `Authorization: Bearer TOKEN` (spaces around TOKEN
 * left out), or NULL when there is none; *len its length. Borrowed from c. */
const char *auth_bearer(const h1_conn_t *c, size_t *len);
/* The client's API key: the Bearer credential, else X-API-Key; NULL when
 * the request carries neither. */
const char *auth_client_key(const h1_conn_t *c, size_t *len);
/* SHA-256 of s[0..n). */
void auth_digest(const char *s, size_t n, unsigned char out[AUTH_DIGEST_LEN]);
/* 1 when the digests are equal, compared in constant time. */
int auth_digest_equal(const unsigned char *a, const unsigned char *b);
/* Wipe a digest (or any secret) from memory. */
void auth_wipe(void *p, size_t n);

#endif
