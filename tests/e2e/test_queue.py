"""Waiting instead of 429 (an endpoint's "queue") end to end, on the memory
store and on Redis: a burst over a per-second limit waits and passes in
order with X-RateLimit-Waited-Ms; a concurrency waiter is woken by the
request that finishes; a daily refusal is answered at once; a client that
leaves while waiting costs nothing; past max_waiting the next gets its 429
at once; a drain answers the waiters at once.

The first cases run one worker. The queue of a key is one for the whole
process, so the last ones run two workers and put their requests on
connections of either (told apart by the worker's X-Request-Id prefix):
max_waiting counts both workers' waiters, the order holds across them, a
newcomer waits behind them, and a waiter that leaves or times out gives
its place back."""
import hashlib
import http.client
import json
import re
import signal
import socket
import threading
import time

from backend import Reply
from harness import base_config, eq, for_both, free_port, poll, request, run, wait_port


def start(env, store, limits, handler, max_wait_ms=3000, max_waiting=64, admin=False,
          workers=1, units=False):
    """`workers` workers, endpoint echo (POST /v1/echo) with a queue (units:
    read from the body's "n"), key k of account acme on tier t with
    `limits` (admin: and an admin listener on env.admin_port). Returns the
    backend."""
    be = env.start_backend(handler)
    cfg = base_config(be.port, free_port())
    cfg["server"]["workers"] = workers
    if workers > 1:
        cfg["backends"]["models"]["timeout_ms"] = 20000  # a Held request outlasts 2 s
    if units:
        cfg["endpoints"]["echo"]["units"] = [{"pointer": "/n", "default": 1}]
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


# ---- two workers: one queue per key for the whole process ----

class Held:
    """A backend whose requests with {"hold": true} are answered only once
    .release() is called; the others at once."""

    def __init__(self):
        self.go = threading.Event()

    def __call__(self, req):
        if json.loads(req.body or b"{}").get("hold"):
            self.go.wait(30)
        return Reply(200, {"ok": True})

    def release(self):
        self.go.set()


def worker_conns(env, per_worker=3, workers=2):
    """Open keep-alive connections until each of `workers` workers has
    per_worker of them: {rid prefix: [HTTPConnection, ...]}. A worker is
    told by the X-Request-Id prefix of a usage answer (not counted)."""
    by = {}
    spare = []
    for _ in range(200):
        if len(by) == workers and all(len(v) >= per_worker for v in by.values()):
            break
        c = http.client.HTTPConnection("127.0.0.1", env.port, timeout=15)
        c.request("GET", "/v1/usage", headers={"Authorization": "Bearer " + env.keys["k"]})
        r = c.getresponse()
        r.read()
        eq(r.status, 200, "usage on a probe connection")
        rid = r.getheader("X-Request-Id")
        assert rid and len(rid) == 32, "X-Request-Id: %r" % rid
        lst = by.setdefault(rid[:16], [])
        if len(lst) < per_worker:
            lst.append(c)
        else:
            spare.append(c)
    for c in spare:
        c.close()
    eq(len(by), workers, "connections reached every worker")
    assert all(len(v) >= per_worker for v in by.values()), "connections per worker"
    return list(by.values())


class On(threading.Thread):
    """One request on a given connection, in a thread of its own: .r (status,
    waited ms or None, error code or None), .took seconds."""

    def __init__(self, conn, key, body):
        super().__init__(daemon=True)
        self.conn, self.key, self.body, self.r, self.took = conn, key, body, None, None
        self.start()

    def run(self):
        t0 = time.time()
        self.conn.request("POST", "/v1/echo", body=json.dumps(self.body),
                          headers={"Authorization": "Bearer " + self.key,
                                   "Content-Type": "application/json"})
        a = self.conn.getresponse()
        data = a.read()
        self.took = time.time() - t0
        w = a.getheader("X-RateLimit-Waited-Ms")
        code = json.loads(data)["error"]["code"] if a.status == 429 else None
        self.r = (a.status, int(w) if w is not None else None, code)


def raw_waiter(env, body):
    """A request on a socket of its own, never read: close it to leave."""
    s = socket.create_connection(("127.0.0.1", env.port))
    data = json.dumps(body)
    s.sendall(("POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
               "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
               % (env.keys["k"], len(data), data)).encode())
    return s


def refused_at_once(env, conn, what):
    t0 = time.time()
    c = On(conn, env.keys["k"], {"over": what})
    c.join(10)
    took = time.time() - t0
    eq(c.r[0::2], (429, "CONCURRENT_LIMIT_EXCEEDED"), what + " is refused")
    assert took < 0.5, "%s refused at once, took %.2f s" % (what, took)


def max_waiting_per_instance(env, store):
    """max_waiting 2, two workers: one waiter on each, and the third gets
    its 429 at once on either worker (per worker, each would let 2 wait)."""
    held = Held()
    be = start(env, store, [{"metric": "concurrent", "limit": 1}], held, max_waiting=2,
               max_wait_ms=5000, admin=True, workers=2)
    w0, w1 = worker_conns(env, 2)
    key = env.keys["k"]
    holder = On(w0[0], key, {"hold": True})
    be.wait_busy(1)
    a = On(w0[1], key, {"i": 0})
    poll(lambda: waiting(env) == 1, 5, "the first waiter")
    b = On(w1[0], key, {"i": 1})
    poll(lambda: waiting(env) == 2, 5, "the second waiter, on the other worker")
    refused_at_once(env, w1[1], "a third waiter on the second worker")
    c = http.client.HTTPConnection("127.0.0.1", env.port, timeout=15)
    for i in range(4):  # new connections: on either worker
        refused_at_once(env, c, "a third waiter (%d)" % i)
    eq(waiting(env), 2, "still two waiting")
    held.release()
    for t in (holder, a, b):
        t.join(10)
    eq([t.r[0] for t in (holder, a, b)], [200] * 3, "the holder and both waiters passed")
    assert a.r[1] is not None and b.r[1] is not None, "both waiters say they waited"
    eq([json.loads(r.body).get("i") for r in be.requests], [None, 0, 1],
       "the backend saw the holder, then the waiters in arrival order")
    eq(waiting(env), 0, "nobody waits any more")


def order_across_workers(env, store):
    """One slot, eight waiters that arrive alternately on two workers: they
    pass in arrival order, each woken as the one before it is answered
    (per worker, the holder's worker would let its own waiters in first
    and the other's would wait for its next second)."""
    held = Held()
    be = start(env, store, [{"metric": "concurrent", "limit": 1}], held, max_wait_ms=8000,
               admin=True, workers=2)
    w0, w1 = worker_conns(env, 5)
    key = env.keys["k"]
    holder = On(w0[4], key, {"hold": True})
    be.wait_busy(1)
    calls = []
    for i in range(8):
        conn = (w0 if i % 2 == 0 else w1)[i // 2]
        calls.append(On(conn, key, {"i": i}))
        poll(lambda: waiting(env) == i + 1, 5, "waiter %d waiting" % i)
    t0 = time.time()
    held.release()
    for t in [holder] + calls:
        t.join(15)
    took = time.time() - t0
    eq([t.r[0] for t in [holder] + calls], [200] * 9, "every one passed")
    eq([json.loads(r.body).get("i") for r in be.requests], [None] + list(range(8)),
       "the backend saw the waiters in arrival order")
    assert took < 3.5, "each woken when the slot freed, not at a retry: %.2f s" % took
    eq(waiting(env), 0, "nobody waits any more")


def newcomer_behind_waiters(env, store):
    """10 units a second: 8 pass; a request of 9 waits for the window; a
    request of 2 that comes next, on the other worker, would fit now but
    waits behind it, and passes a second after it (when the 9 leave the
    window: so the backend sees them in that order even though two
    workers start them); one of 11 (never fits) gets its 429 at once even
    behind them."""
    be = start(env, store, [{"metric": "units", "per": "second", "limit": 10}], quick,
               max_wait_ms=3000, admin=True, workers=2, units=True)
    w0, w1 = worker_conns(env, 1)
    key = env.keys["k"]
    first = On(w0[0], key, {"n": 8, "i": 0})
    first.join(10)
    eq(first.r[0], 200, "the first 8")
    big = On(w0[0], key, {"n": 9, "i": 1})
    poll(lambda: waiting(env) == 1, 5, "the 9 waiting")
    small = On(w1[0], key, {"n": 2, "i": 2})
    poll(lambda: waiting(env) == 2, 5, "the 2 waiting behind it")
    # Behind waiters, a refusal that cannot turn into room is still at once.
    t0 = time.time()
    r = env.req("POST", "/v1/echo", key=key, body={"n": 11, "i": 3})
    took = time.time() - t0
    eq(r.status, 429, "larger than the limit")
    assert took < 0.5, "refused at once behind waiters, took %.2f s" % took
    assert r.h("x-ratelimit-waited-ms") is None, "it did not wait"
    big.join(10)
    small.join(10)
    eq((big.r[0], small.r[0]), (200, 200), "both passed")
    assert small.r[1] is not None and small.r[1] >= 1000, \
        "the newcomer waited for room after the 9: %r" % (small.r,)
    eq([json.loads(r.body)["i"] for r in be.requests], [0, 1, 2],
       "the backend saw the waiter before the newcomer")


def places_given_back(env, store):
    """max_waiting 2 on two workers: waiters that leave, then waiters that
    time out, give their places back: each time two can wait again and a
    third is refused at once."""
    held = Held()
    be = start(env, store, [{"metric": "concurrent", "limit": 1}], held, max_waiting=2,
               max_wait_ms=2000, admin=True, workers=2)
    w0, w1 = worker_conns(env, 3)
    key = env.keys["k"]
    holder = On(w0[0], key, {"hold": True})
    be.wait_busy(1)
    socks = [raw_waiter(env, {"leaver": i}) for i in range(2)]
    poll(lambda: waiting(env) == 2, 5, "two leavers waiting")
    refused_at_once(env, w1[0], "a third beside the leavers")
    for s in socks:
        s.close()
    poll(lambda: waiting(env) == 0, 5, "the leavers gone")
    a = On(w0[1], key, {"late": 0})
    b = On(w1[1], key, {"late": 1})
    poll(lambda: waiting(env) == 2, 5, "two waiting after the leavers")
    refused_at_once(env, w1[2], "a third beside them")
    a.join(10)
    b.join(10)
    eq((a.r[0::2], b.r[0::2]), ((429, "CONCURRENT_LIMIT_EXCEEDED"),) * 2, "both timed out")
    assert 1.5 < a.took < 3 and 1.5 < b.took < 3, "at max_wait_ms: %.2f %.2f" % (a.took,
                                                                                b.took)
    eq(waiting(env), 0, "the timed out gone")
    c = On(w1[1], key, {"i": 0})
    poll(lambda: waiting(env) == 1, 5, "one waiting after the timeouts")
    d = On(w0[1], key, {"i": 1})
    poll(lambda: waiting(env) == 2, 5, "two waiting after the timeouts")
    refused_at_once(env, w0[2], "a third after the timeouts")
    held.release()
    for t in (holder, c, d):
        t.join(10)
    eq([t.r[0] for t in (holder, c, d)], [200] * 3, "the holder and the last two passed")
    eq([json.loads(r.body).get("i") for r in be.requests], [None, 0, 1],
       "only the holder and the last two reached the backend")
    eq(waiting(env), 0, "nobody waits any more")


run(for_both(burst_in_order) + for_both(concurrency_woken) + for_both(daily_at_once) +
    for_both(client_leaves) + for_both(overflow) + for_both(drain_answers_waiters) +
    for_both(max_waiting_per_instance) + for_both(order_across_workers) +
    for_both(newcomer_behind_waiters) + for_both(places_given_back))
