/*
 * gateway/tls.h: TLS with OpenSSL for the listener (server.tls) and for
 * https:// backends. Contexts are reference counted by OpenSSL
 * (SSL_CTX_up_ref / SSL_CTX_free): a reload builds a new server context and
 * each worker swaps to it; connections keep the context they began with.
 */
#ifndef RW_GATEWAY_TLS_H
#define RW_GATEWAY_TLS_H

#include <openssl/ssl.h>
#include <stddef.h>

/* A server context with the certificate chain and key: TLS 1.2 or later.
 * NULL with a message in err. */
SSL_CTX *tls_server_ctx(const char *cert_file, const char *key_file, char *err, size_t len);

/* A client context that verifies the peer against ca_file, or against the
 * system's store when ca_file is NULL. NULL with a message in err. */
SSL_CTX *tls_client_ctx(const char *ca_file, char *err, size_t len);

/* A new SSL for a connection to host: SNI and host name verification. */
SSL *tls_client_ssl(SSL_CTX *ctx, const char *host);

#endif
