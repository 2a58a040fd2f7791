"""The gateway's backend client (gateway/http/client.c) against a backend
that behaves like real ones: it closes idle keep-alive connections, drops
connections without saying so, sends interim answers, close-delimited
bodies, and sometimes answers no library would send. Nothing of that may
reach the client as a 502 it did not deserve, or as a desynchronised
connection."""
import http.client
import json
import time

from backend import Reply
from harness import base_config, eq, free_port, run


def setup(env, handler, idle_timeout=None, timeout_ms=2000):
    be = env.start_backend(handler, idle_timeout=idle_timeout)
    cfg = base_config(be.port, free_port())
    cfg["server"]["workers"] = 1  # one pool: every request can reuse a connection
    cfg["backends"]["models"]["timeout_ms"] = timeout_ms
    cfg["tiers"]["t"] = {"limits": [{"metric": "requests", "per": "minute", "limit": 10000}]}
    cfg["accounts"] = {"acme": {"tier": "t"}}
    env.add_key(cfg, "k", "acme")
    env.start_gateway(cfg)
    return be, env.keys["k"]


def echo(req):
    return Reply(200, {"path": req.path, "n": len(req.body)})


def test_idle_connection_closed_by_backend(env):
    """The backend closes a keep-alive connection after 0.3 s idle (as
    uvicorn, gunicorn and Node do after a few seconds): the next request,
    POST included, is served on a fresh connection, never answered 502."""
    be, key = setup(env, echo, idle_timeout=0.3)
    for method in ("GET", "POST"):
        for i in range(3):
            path = "/v1/models" if method == "GET" else "/v1/echo"
            r = env.req(method, path, key=key, body=None if method == "GET" else {"i": i})
            eq(r.status, 200, "%s %d after the backend closed the idle connection: %r"
               % (method, i, r))
            closed = be.closed
            be.wait_closed(closed + 1, timeout=10)
    eq(len(be.requests), 6, "each request reached the backend once")


def test_connection_dropped_after_each_answer(env):
    """A backend that closes every connection right after its answer,
    without Connection: close: GETs (idempotent) are retried once on a fresh
    connection if they hit the closed one, so every one is served."""
    be, key = setup(env, lambda req: Reply(200, {"ok": 1}, close_after=True))
    for i in range(30):
        r = env.req("GET", "/v1/models?i=%d" % i, key=key)
        eq(r.status, 200, "GET %d against a backend that drops connections: %r" % (i, r))
    got = sorted(int(q.arg("i")) for q in be.requests)
    eq(got, list(range(30)), "each GET reached the backend exactly once")


def test_interim_and_close_delimited(env):
    def handler(req):
        if req.path == "/v1/models/hints":
            return Reply(raw=b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                             b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return Reply(200, body=b"x" * 100000 + b"end", close_delimited=True)
    be, key = setup(env, handler)
    r = env.req("GET", "/v1/models/hints", key=key)
    eq(r.status, 200, "the final answer after a 103")
    eq(r.body, b"ok", "its body")
    r = env.req("GET", "/v1/models/big", key=key)
    eq(r.status, 200, "a close-delimited answer")
    eq(r.body, b"x" * 100000 + b"end", "its whole body, to the close")


def test_answers_no_library_sends(env):
    """Answers that are not valid HTTP/1.1 never reach the client as such
    (502), a reason phrase with a bare CR cannot split the answer, and
    bytes after a Content-Length body never become the next answer."""
    raws = {
        "/v1/models/cr": b"HTTP/1.1 200 O\rK\r\nContent-Length: 2\r\n\r\nok",
        "/v1/models/ctl": b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 2\r\n\r\nok",
        "/v1/models/both": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: "
                           b"chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        "/v1/models/junk": b"NOT HTTP\r\n\r\n",
        "/v1/models/extra": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
    }

    def handler(req):
        if req.path in raws:
            return Reply(raw=raws[req.path])
        return Reply(200, {"real": req.path})
    be, key = setup(env, handler)
    for path in ("/v1/models/cr", "/v1/models/ctl", "/v1/models/both", "/v1/models/junk"):
        r = env.req("GET", path, key=key)
        eq(r.status, 502, "%s answered 502" % path)
        eq(r.json()["error"]["code"], "BACKEND_UNAVAILABLE", "%s: code" % path)
    r = env.req("GET", "/v1/models/extra", key=key)
    eq((r.status, r.body), (200, b"ok"), "the answer before the extra bytes")
    for i in range(3):
        r = env.req("GET", "/v1/models/next%d" % i, key=key)
        eq(r.status, 200, "the request after it")
        eq(r.json(), {"real": "/v1/models/next%d" % i}, "its own answer, not the forged one")


def test_request_on_the_wire(env):
    """What the backend receives: one request per client request, the
    normalized path, the body with its length, no client key."""
    be, key = setup(env, echo)
    body = json.dumps({"prompt": "x" * 5000})
    r = env.req("POST", "/v1/echo?a=1&b=2", key=key, body=body,
                headers={"X-Custom": "v", "Connection": "X-Custom"})
    eq(r.status, 200, "POST served")
    req = be.requests[-1]
    eq(req.target, "/v1/echo?a=1&b=2", "target as sent")
    eq(req.body.decode(), body, "body byte for byte")
    eq(req.header("Content-Length"), str(len(body)), "Content-Length")
    eq(req.header("Authorization"), None, "no client key")
    eq(req.header("X-Custom"), None, "a field named by Connection is hop-by-hop")
    eq(req.header("X-Backend-Token"), "backend-secret", "the backend's configured header")
    eq(req.header("X-Gateway-Account"), "acme", "the account")


def test_gap_in_body_times_out(env):
    """timeout_ms bounds any gap between two reads of a body: a backend
    that goes quiet mid-answer has the client's answer cut (never passed
    off as complete) after timeout_ms, not after the backend wakes up."""
    be, key = setup(env, lambda req: Reply(200, chunks=[b'{"a":', 3.0, b'1}']),
                    timeout_ms=500)
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=10)
    t0 = time.time()
    conn.request("GET", "/v1/models", headers={"Authorization": "Bearer " + key})
    r = conn.getresponse()
    eq(r.status, 200, "the head went out before the gap")
    try:
        body = r.read()
        cut = False
    except http.client.IncompleteRead:
        cut = True
    took = time.time() - t0
    conn.close()
    assert cut, "the answer must be cut, not completed (read %r)" % (body,)
    assert took < 2.8, "cut after timeout_ms (0.5 s), took %.1f s" % took


def test_slow_head_is_504(env):
    be, key = setup(env, lambda req: (time.sleep(1.5), Reply(200, {"late": 1}))[1],
                    timeout_ms=300)
    r = env.req("GET", "/v1/models", key=key)
    eq(r.status, 504, "no head within timeout_ms")
    eq(r.json()["error"]["code"], "BACKEND_TIMEOUT", "code")


run([test_idle_connection_closed_by_backend, test_connection_dropped_after_each_answer,
     test_interim_and_close_delimited, test_answers_no_library_sends, test_request_on_the_wire,
     test_gap_in_body_times_out,
     test_slow_head_is_504])
