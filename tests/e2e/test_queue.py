"""Waiting instead of 429 (an endpoint's "queue") end to end, on the memory
store and on Redis: a burst over a per-second limit waits and passes in
order with X-RateLimit-Waited-Ms; a concurrency waiter is woken by the
request that finishes; a daily refusal is answered at once; a client that
leaves while waiting costs nothing; past max_waiting the next gets its 429
at once; a drain answers the waiters at once.

Waiters live on the worker that has the connection, so these gateways run
one worker: the order they check is the order of one worker."""
import hashlib
import http.client
import json
import re
import signal
import socket
import threading
import time

from backend import Reply
from harness import base_config, eq, free_port, poll, request, run, wait_port


def for_both(fn):
    def memory(env):
        fn(env, "memory")

    def redis(env):
        fn(env, "redis")
    memory.__name__ = fn.__name__ + "[memory]"
    redis.__name__ = fn.__name__ + "[redis]"
    return [memory, redis]


def start(env, store, limits, handler, max_wait_ms=3000, max_waiting=64, admin=False):
    """One worker, endpoint echo (POST /v1/echo) with a queue, key k of
    account acme on tier t with `limits` (admin: and an admin listener on
    env.admin_port). Returns the backend."""
    be = env.start_backend(handler)
    cfg = base_config(be.port, free_port())
    cfg["server"]["workers"] = 1
    cfg["endpoints"]["echo"]["queue"] = {"max_wait_ms": max_wait_ms,
                                         "max_waiting": max_waiting}
    cfg["tiers"]["t"] = {"limits": limits}
    cfg["accounts"] = {"acme": {"tier": "t"}}
    if store == "redis":
        r = env.start_redis()
        cfg["storage"] = {"driver": "redis", "address": "127.0.0.1:%d" % r.port,
                          "timeout_ms": 500}
    if admin:
        env.admin_port = free_port()
        cfg["admin"] = {"listen": "127.0.0.1:%d" % env.admin_port,
                        "token_sha256": hashlib.sha256(b"queue-admin").hexdigest()}
    env.add_key(cfg, "k", "acme")
    env.start_gateway(cfg)
    if admin:
        wait_port(env.admin_port, env.gw.p)
    return be


def waiting(env):
    text = request(env.admin_port, "GET", "/metrics").body.decode()
    m = re.search(r"^ratewall_requests_waiting (\d+)$", text, re.M)
    assert m, "ratewall_requests_waiting in /metrics:\n" + text
    return int(m.group(1))


def slow(seconds):
    def handler(req):
        time.sleep(seconds)
        return Reply(200, {"ok": True})
    return handler


def quick(req):
    return Reply(200, {"ok": True})


class Call(threading.Thread):
    """One request in a thread of its own; .r the answer, .took seconds."""

    def __init__(self, env, body=None):
        super().__init__(daemon=True)
        self.env, self.body, self.r, self.took = env, body or {}, None, None

    def run(self):
        t0 = time.time()
        self.r = self.env.req("POST", "/v1/echo", key=self.env.keys["k"], body=self.body)
        self.took = time.time() - t0


def used(env, metric, per):
    for l in env.req("GET", "/v1/usage", key=env.keys["k"]).json()["limits"]:
        if l["metric"] == metric and l["per"] == per:
            return l["used"]
    raise AssertionError("no %s/%s limit in usage" % (metric, per))


def burst_in_order(env, store):
    """5 a second, the first five 100 ms apart: the next 5, sent at once,
    wait and pass as the window frees, in the order they arrived (about
    100 ms apart, so the backend sees that order too), each with
    X-RateLimit-Waited-Ms."""
    be = start(env, store, [{"metric": "requests", "per": "second", "limit": 5}], quick)
    key = env.keys["k"]
    for i in range(5):
        r = env.req("POST", "/v1/echo", key=key, body={"i": i})
        eq(r.status, 200, "request %d" % i)
        assert r.h("x-ratelimit-waited-ms") is None, "request %d did not wait" % i
        time.sleep(0.1)
    # Sent from this thread one after the other, so they arrive in order.
    conns = []
    for i in range(5, 10):
        c = http.client.HTTPConnection("127.0.0.1", env.port, timeout=10)
        c.request("POST", "/v1/echo", body=json.dumps({"i": i}),
                  headers={"Authorization": "Bearer " + key,
                           "Content-Type": "application/json"})
        conns.append(c)
        time.sleep(0.03)
    answers = []
    for c in conns:
        r = c.getresponse()
        answers.append((r.status, r.getheader("X-RateLimit-Waited-Ms")))
        r.read()
        c.close()
    eq([a[0] for a in answers], [200] * 5, "every waiter passed")
    waited = [int(a[1]) for a in answers]
    assert all(0 < w <= 3000 for w in waited), "X-RateLimit-Waited-Ms: %r" % waited
    eq([r.json()["i"] for r in be.requests], list(range(10)),
       "the backend saw them in arrival order")


def concurrency_woken(env, store):
    """One slot: the second waits and is let in when the first is
    answered, at once (well before a second's re-decision)."""
    be = start(env, store, [{"metric": "concurrent", "limit": 1}], slow(0.5))
    first = Call(env)
    first.start()
    be.wait_busy(1)
    t0 = time.time()
    second = Call(env)
    second.start()
    first.join(10)
    second.join(10)
    eq((first.r.status, second.r.status), (200, 200), "both passed")
    waited = int(second.r.h("x-ratelimit-waited-ms"))
    assert 200 <= waited <= 900, "woken when the slot freed, waited %d ms" % waited
    assert first.r.h("x-ratelimit-waited-ms") is None, "the first did not wait"
    assert time.time() - t0 < 1.5, "the second passed soon after the first"


def daily_at_once(env, store):
    """A day limit cannot free within max_wait_ms: its 429 comes at once."""
    start(env, store, [{"metric": "requests", "per": "day", "limit": 1}], quick)
    key = env.keys["k"]
    eq(env.req("POST", "/v1/echo", key=key, body={}).status, 200, "first")
    t0 = time.time()
    r = env.req("POST", "/v1/echo", key=key, body={})
    took = time.time() - t0
    eq((r.status, r.json()["error"]["code"]), (429, "DAILY_LIMIT_EXCEEDED"), "daily 429")
    assert took < 0.5, "answered at once, took %.2f s" % took
    assert r.h("x-ratelimit-waited-ms") is None, "it did not wait: %r" % r.headers


def client_leaves(env, store):
    """A waiting client that closes its connection drops out: nothing is
    charged for it, and it never reaches the backend."""
    be = start(env, store, [{"metric": "concurrent", "limit": 1},
                            {"metric": "requests", "per": "minute", "limit": 100}], slow(1.0))
    first = Call(env)
    first.start()
    be.wait_busy(1)
    s = socket.create_connection(("127.0.0.1", env.port))
    s.sendall(("POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
               "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
               % env.keys["k"]).encode())
    time.sleep(0.3)
    s.close()
    first.join(10)
    eq(first.r.status, 200, "first")
    time.sleep(0.3)
    eq(len(be.requests), 1, "the leaver never reached the backend")
    eq(used(env, "requests", "minute"), 1, "the leaver was not charged")
    t0 = time.time()
    eq(env.req("POST", "/v1/echo", key=env.keys["k"], body={}).status, 200, "the next")
    assert time.time() - t0 < 1.5, "the next did not wait behind the leaver"


def overflow(env, store):
    """max_waiting 1: the second waits, the third gets its 429 at once."""
    be = start(env, store, [{"metric": "concurrent", "limit": 1}], slow(0.8), max_waiting=1,
               admin=True)
    first = Call(env)
    first.start()
    be.wait_busy(1)
    second = Call(env)
    second.start()
    poll(lambda: waiting(env) == 1, 5, "one request waiting in /metrics")
    t0 = time.time()
    r = env.req("POST", "/v1/echo", key=env.keys["k"], body={})
    took = time.time() - t0
    eq((r.status, r.json()["error"]["code"]), (429, "CONCURRENT_LIMIT_EXCEEDED"),
       "the third is refused")
    assert took < 0.5, "refused at once (the waiter waits 0.8 s), took %.2f s" % took
    first.join(10)
    second.join(10)
    eq((first.r.status, second.r.status), (200, 200), "the first and the waiter passed")
    assert second.r.h("x-ratelimit-waited-ms"), "the waiter says it waited"
    eq(waiting(env), 0, "nobody waits any more")


def drain_answers_waiters(env, store):
    """SIGTERM: the waiter gets its 429 at once; the request in flight
    finishes; the gateway exits cleanly."""
    be = start(env, store, [{"metric": "concurrent", "limit": 1}], slow(1.5),
               max_wait_ms=5000)
    first = Call(env)
    first.start()
    be.wait_busy(1)
    second = Call(env)
    second.start()
    time.sleep(0.2)
    t0 = time.time()
    env.gw.signal(signal.SIGTERM)
    second.join(10)
    took = time.time() - t0
    eq(second.r.status, 429, "the waiter's 429")
    assert took < 1.0, "answered at the drain, took %.2f s" % took
    first.join(10)
    eq(first.r.status, 200, "the request in flight finished")
    env.gw.p.wait(10)
    eq(env.gw.p.returncode, 0, "exit status after the drain")


run(for_both(burst_in_order) + for_both(concurrency_woken) + for_both(daily_at_once) +
    for_both(client_leaves) + for_both(overflow) + for_both(drain_answers_waiters))
