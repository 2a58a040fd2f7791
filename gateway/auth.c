/* gateway/auth.c: credentials on a request (auth.h). */
#include <pthread.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "auth.h"

const char *auth_bearer(const h1_conn_t *c, size_t *len)
{
    const char *a = h1_header(c, "Authorization");
    if (!a || strncasecmp(a, "Bearer ", 7) != 0)
        return NULL;
    a += 7;
    while (*a == ' ')
        a++;
    size_t n = strlen(a);
    while (n && a[n - 1] == ' ')
        n--;
    if (!n)
        return NULL;
    *len = n;
    return a;
}

const char *auth_client_key(const h1_conn_t *c, size_t *len)
{
    const char *a = auth_bearer(c, len);
    if (a)
        return a;
    a = h1_header(c, "X-API-Key");
    if (a && *a) {
        *len = strlen(a);
        return a;
    }
    return NULL;
}

/* SHA256() looks the algorithm up by name and makes a context on every
 * call; every request hashes its key, so the algorithm is fetched once
 * (kept for the process's life) and each thread keeps one context, freed
 * when the thread ends. */
static EVP_MD *sha256_md;
static pthread_key_t ctx_key;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void ctx_free(void *ctx)
{
    EVP_MD_CTX_free(ctx);
}

static void sha256_fetch(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (pthread_key_create(&ctx_key, ctx_free) != 0) {
        EVP_MD_free(sha256_md);
        sha256_md = NULL;
    }
}

void auth_digest(const char *s, size_t n, unsigned char out[AUTH_DIGEST_LEN])
{
    pthread_once(&sha256_once, sha256_fetch);
    EVP_MD_CTX *ctx = sha256_md ? pthread_getspecific(ctx_key) : NULL;
    if (sha256_md && !ctx && (ctx = EVP_MD_CTX_new()) && pthread_setspecific(ctx_key, ctx)) {
        EVP_MD_CTX_free(ctx);
        ctx = NULL;
    }
    if (!ctx || !EVP_DigestInit_ex2(ctx, sha256_md, NULL) || !EVP_DigestUpdate(ctx, s, n) ||
        !EVP_DigestFinal_ex(ctx, out, NULL))
        SHA256((const unsigned char *)s, n, out);
}

int auth_digest_equal(const unsigned char *a, const unsigned char *b)
{
    return CRYPTO_memcmp(a, b, AUTH_DIGEST_LEN) == 0;
}

void auth_wipe(void *p, size_t n)
{
    OPENSSL_cleanse(p, n);
}
