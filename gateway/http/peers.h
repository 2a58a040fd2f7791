/*
 * gateway/http/peers.h: client connections open per client address, for
 * the whole process (a client's connections land on any worker's
 * SO_REUSEPORT listener, so the count cannot be a worker's own).
 *
 * An IPv4 address counts as itself (an IPv4-mapped IPv6 address as the
 * IPv4 one); an IPv6 address by its /64 prefix, the block one host is
 * usually given. Thread-safe: one mutex, taken once per accept and once per
 * close, never on the request path.
 */
#ifndef RW_GATEWAY_HTTP_PEERS_H
#define RW_GATEWAY_HTTP_PEERS_H

#include <stddef.h>
#include <sys/socket.h>

/* Counts a new connection from sa, allowing at most cap at once from its
 * address (servers that share a cap share the counts). Returns 1 when it
 * is counted (the caller gives it back with peers_give when it closes), 0
 * when cap is 0 (no cap: nothing counted, nothing to give back), -1 when
 * the address has cap connections open already. A lowered cap (a reload)
 * refuses new connections only; those open stay. */
int peers_take(const struct sockaddr *sa, size_t cap);
void peers_give(const struct sockaddr *sa);

#endif
