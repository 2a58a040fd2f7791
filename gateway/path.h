/*
 * gateway/path.h: request paths, normalized once before routing.
 */
#ifndef RW_GATEWAY_PATH_H
#define RW_GATEWAY_PATH_H

#include <stddef.h>

/* The longest path the gateway routes (request_t's path buffer). */
#define PATH_NORMAL_MAX 2048

/*
 * The one form of a request path that is routed and forwarded, so that the
 * gateway and a backend that decodes paths see the same one:
 *   - percent-encoded unreserved characters decoded (%74 is t), every other
 *     encoding kept with upper-case hex (%2a -> %2A);
 *   - an encoded "/", "\", "." or NUL, a raw "\", or a "%" not followed by
 *     two hex digits refused: each would mean one path here and another
 *     behind a backend; so is a "." or ".." segment with ";params";
 *   - repeated slashes merged, "." and ".." segments removed (RFC 3986
 *     section 5.2.4; ".." never climbs above "/").
 * Case, ";params" and a trailing slash are kept here: routing looks past
 * them (config_route), the backend gets them as sent.
 * 0, or -1 with the reason in *why.
 */
int path_normalize(const char *in, char *out, size_t len, const char **why);

#endif
