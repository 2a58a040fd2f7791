"""Proxying: what reaches the backend, what comes back, streaming as it
arrives, backend failures, and a client that leaves mid-request."""
import http.client
import socket
import threading
import time

import backend
from harness import base_config, eq, free_port, poll, run


def setup(env, backend_port=None, limits=None, timeout_ms=2000, workers=2):
    mock = env.start_mock() if backend_port is None else backend_port
    cfg = base_config(mock, free_port())
    cfg["server"]["workers"] = workers
    cfg["backends"]["models"]["timeout_ms"] = timeout_ms
    cfg["tiers"]["t"] = {"limits": limits or [
        {"metric": "requests", "per": "minute", "limit": 1000}]}
    cfg["accounts"] = {"acme": {"tier": "t"}}
    env.add_key(cfg, "k_acme", "acme")
    env.start_gateway(cfg)
    return env.keys["k_acme"]


def test_forwarding(env):
    key = setup(env)
    r = env.req("POST", "/v1/echo?seed=7&x=a%20b", key=key, body='{"hello":"world"}',
                headers={"Content-Type": "application/json", "X-Custom": "kept",
                         "Connection": "keep-alive, X-Hop", "X-Hop": "dropped",
                         "X-Gateway-Key-Id": "spoofed", "X-Forwarded-For": "10.1.1.1",
                         "Proxy-Authorization": "secret", "X-Backend-Token": "client-value"})
    eq(r.status, 200, "forwarded request")
    echo = r.json()
    h = {k.lower(): v for k, v in echo["headers"].items()}
    eq(echo["method"], "POST", "method")
    eq(echo["path"], "/v1/echo", "path")
    eq(echo["query"], "seed=7&x=a%20b", "query")
    eq(echo["body"], '{"hello":"world"}', "body")
    assert "authorization" not in h and "x-api-key" not in h, "no client key header: %r" % h
    assert key not in str(echo), "the client's key reached the backend"
    assert "x-hop" not in h and "proxy-authorization" not in h, "hop-by-hop dropped: %r" % h
    eq(h.get("x-custom"), "kept", "end-to-end header")
    eq(h.get("content-type"), "application/json", "content-type")
    eq(h.get("x-backend-token"), "backend-secret", "configured header wins")
    eq(h.get("x-gateway-key-id"), "k_acme", "key id")
    eq(h.get("x-gateway-account"), "acme", "account")
    eq(h.get("x-forwarded-for"), "10.1.1.1, 127.0.0.1", "XFF appended")
    eq(h.get("x-request-id"), r.h("x-request-id"), "same request id both ways")
    eq(h.get("host"), "127.0.0.1:%d" % env.mock_port, "Host of the backend")
    # X-API-Key style is stripped too.
    r = env.req("POST", "/v1/echo", key=key, body={}, header_style="x-api-key")
    h = {k.lower(): v for k, v in r.json()["headers"].items()}
    assert "x-api-key" not in h, "X-API-Key not forwarded: %r" % h
    # Prefix routes and GET with no body.
    r = env.req("GET", "/v1/models/some-model?v=1", key=key)
    eq(r.status, 200, "GET on a prefix route")
    eq(r.json()["path"], "/v1/models/some-model", "prefix path")


def test_status_and_body_passthrough(env):
    key = setup(env)
    r = env.req("POST", "/v3/img2img", key=key, body={}, headers={"x-mock-status": "503"})
    eq(r.status, 503, "backend status passes through")
    eq(r.json()["error"]["status"], 503, "backend body passes through")
    r = env.req("POST", "/v3/img2img", key=key, body={},
                headers={"x-mock-body-bytes": "3000000"})
    eq(r.status, 200, "a 3 MB answer")
    assert len(r.body) >= 2900000, "the whole 3 MB answer: %d bytes" % len(r.body)
    r = env.req("POST", "/v3/txt2img", key=key, body={"image_num": 3})
    eq(r.h("x-units-used"), "3", "backend headers pass through")
    # Keep-alive to the backend: many requests, few backend connections.
    for i in range(30):
        eq(env.req("POST", "/v3/img2img", key=key, body={}).status, 200, "request %d" % i)
    ports = {env.req("POST", "/v1/echo", key=key, body={}).json()["remote_port"]
             for _ in range(10)}
    assert len(ports) <= 2, "backend connections are reused: %r" % ports


def test_backend_down_and_slow(env):
    dead = free_port()  # nothing listens here
    key = setup(env, backend_port=dead)
    r = env.req("POST", "/v3/img2img", key=key, body={})
    eq(r.status, 502, "status with no backend listening")
    eq(r.json()["error"]["code"], "BACKEND_UNAVAILABLE", "code")
    eq(r.json()["error"]["type"], "upstream_error", "type")


def test_backend_timeout(env):
    key = setup(env, timeout_ms=500)
    t0 = time.time()
    r = env.req("POST", "/v3/img2img", key=key, body={}, headers={"x-mock-delay-ms": "5000"})
    eq(r.status, 504, "status after timeout_ms")
    eq(r.json()["error"]["code"], "BACKEND_TIMEOUT", "code")
    took = time.time() - t0
    assert 0.45 <= took < 4, "answered after the backend timeout (0.5 s), not after the " \
        "backend (5 s): %.2f s" % took
    # Gap between two chunks longer than the timeout: the stream is cut.
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", body="{}",
                 headers={"Authorization": "Bearer " + key, "x-mock-stream": "3",
                          "x-mock-stream-hang": "1"})
    resp = conn.getresponse()
    eq(resp.status, 200, "the hung stream's head")
    try:
        resp.read()
        raise AssertionError("a hung stream must not end as if complete")
    except (http.client.IncompleteRead, ConnectionError):
        pass
    conn.close()


def test_streaming_arrives_early(env):
    key = setup(env)
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=10)
    t0 = time.time()
    conn.request("POST", "/v1/chat/completions", body='{"stream":true}',
                 headers={"Authorization": "Bearer " + key, "x-mock-stream": "5",
                          "x-mock-stream-interval-ms": "800"})
    resp = conn.getresponse()
    eq(resp.status, 200, "stream status")
    eq(resp.getheader("content-type"), "text/event-stream", "SSE content type")
    assert resp.getheader("x-ratelimit-limit"), "rate headers on a stream"
    first = resp.read1(65536)
    t_first = time.time() - t0
    rest = resp.read()
    t_all = time.time() - t0
    assert first.startswith(b"data:"), "the first event: %r" % first
    # The backend sends the last event 3.2 s after the first.
    assert t_first < 2.5 and t_all > 3.0, "first event after %.2f s, all after %.2f s" % (
        t_first, t_all)
    assert b"[DONE]" in rest, "the end of the stream: %r" % rest[-200:]
    conn.close()


def test_client_gone_releases_lease(env):
    key = setup(env, limits=[{"metric": "concurrent", "limit": 1}], timeout_ms=10000)
    # Client leaves while the backend is still working.
    s = socket.create_connection(("127.0.0.1", env.port))
    s.sendall(b"POST /v3/img2img HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
              key.encode() + b"\r\nx-mock-delay-ms: 5000\r\nContent-Length: 2\r\n\r\n{}")
    env.wait_backend_busy(1)
    s.close()
    wait_no_lease(env, key, "the client left mid-request")
    eq(env.req("POST", "/v3/img2img", key=key, body={}).status, 200,
       "lease released when the client left mid-request")
    # Client leaves mid-stream.
    s = socket.create_connection(("127.0.0.1", env.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
              key.encode() + b"\r\nx-mock-stream: 50\r\nx-mock-stream-interval-ms: 100\r\n"
              b"Content-Length: 2\r\n\r\n{}")
    s.settimeout(10)
    data = s.recv(4096)
    assert data.startswith(b"HTTP/1.1 200"), "the stream began: %r" % data[:100]
    s.close()
    wait_no_lease(env, key, "the client left mid-stream")
    eq(env.req("POST", "/v3/img2img", key=key, body={}).status, 200,
       "lease released when the client left mid-stream")
    # Client leaves mid-upload: nothing admitted, nothing held.
    s = socket.create_connection(("127.0.0.1", env.port))
    s.sendall(b"POST /v3/img2img HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
              key.encode() + b"\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    s.close()
    wait_no_lease(env, key, "the client left mid-upload")
    eq(env.req("POST", "/v3/img2img", key=key, body={}).status, 200,
       "nothing held after a client left mid-upload")
    eq(env.mock_stats()["by_path"].get("/v3/img2img"), 4,
       "the upload never reached the backend (three before it, one after)")
    # And the backend saw the first two clients go.
    poll(lambda: env.mock_stats()["client_gone"] >= 2, 10,
         "the backend seeing both clients that left go")


def wait_no_lease(env, key, what):
    """Until the key's concurrency limit shows no lease held (usage is not
    counted, so polling it changes nothing)."""
    def used():
        return env.req("GET", "/v1/usage", key=key).json()["limits"][0]["used"]
    poll(lambda: used() == 0, 10, "the lease released after " + what)


def test_pipelined_requests(env):
    key = setup(env)
    s = socket.create_connection(("127.0.0.1", env.port), timeout=5)
    one = (b"POST /v3/img2img HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode() +
           b"\r\nx-mock-delay-ms: 100\r\nContent-Length: 2\r\n\r\n{}")
    s.sendall(one + one + one)
    data = b""
    deadline = time.time() + 5
    while data.count(b"HTTP/1.1 200") < 3 and time.time() < deadline:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    eq(data.count(b"HTTP/1.1 200"), 3, "three pipelined answers")


def test_drain_on_sigterm(env):
    key = setup(env)
    out = {}

    def slow():
        out["r"] = env.req("POST", "/v3/img2img", key=key, body={},
                           headers={"x-mock-delay-ms": "1500"})

    t = threading.Thread(target=slow)
    t.start()
    env.wait_backend_busy(1)
    env.gw.signal(15)

    def refused():
        try:
            socket.create_connection(("127.0.0.1", env.port), timeout=1).close()
            return False
        except ConnectionRefusedError:
            return True
        except ConnectionResetError:
            return False  # queued as the listener closed: ask again
    # No longer accepting, while the slow request is still in flight.
    poll(refused, 3, "connections refused after SIGTERM")
    assert t.is_alive(), "the listener closed while the request was still in flight"
    t.join(30)
    eq(out["r"].status, 200, "in-flight request finished during the drain")
    env.gw.p.wait(10)
    eq(env.gw.p.returncode, 0, "exit status")


# ---- against a backend that behaves like real ones (tests/e2e/backend.py) --

def real_backend(env, idle_timeout=None, workers=2):
    """A gateway in front of backend.py, whose handler answers what it
    received, as a Python service parses it."""
    env.start_mock()  # not proxied to: the harness checks it stops cleanly
    def handler(req):
        return backend.Reply(200, {"path": req.path, "raw_path": req.raw_path,
                                   "raw_query": req.raw_query, "query": req.query,
                                   "header_names": req.header_names(),
                                   "headers": dict((k.lower(), v) for k, v in req.headers),
                                   "body": req.body.decode(errors="replace")})
    b = env.start_backend(handler, idle_timeout=idle_timeout)
    key = setup(env, backend_port=b.port, workers=workers)
    return b, key


def test_forwarding_real_backend(env):
    b, key = real_backend(env)
    r = env.req("POST", "/v1/echo?seed=7&Seed=8&x=a%20b&x=second&t%5Fid=9", key=key,
                body='{"hello":"world"}', headers={"Content-Type": "application/json",
                                                   "X-Custom": "kept"})
    eq(r.status, 200, "forwarded to a real backend: %r" % r)
    got = r.json()
    eq(got["raw_query"], "seed=7&Seed=8&x=a%20b&x=second&t%5Fid=9",
       "the query reaches the backend byte for byte")
    # As the backend parses it: case-sensitive names, every repeat kept in
    # order, names and values percent-decoded.
    eq(got["query"], {"seed": ["7"], "Seed": ["8"], "x": ["a b", "second"], "t_id": ["9"]},
       "the query as a Python backend reads it")
    eq(got["path"], "/v1/echo", "path")
    eq(got["body"], '{"hello":"world"}', "body")
    names = [n.lower() for n in got["header_names"]]
    assert "authorization" not in names and "x-api-key" not in names, \
        "no client key header reached the backend: %r" % got["header_names"]
    assert key not in r.body.decode(), "the client's key reached the backend"
    eq(got["headers"].get("x-custom"), "kept", "end-to-end header")
    eq(got["headers"].get("x-gateway-key-id"), "k_acme", "key id")
    eq(names.count("content-length"), 1, "one Content-Length: %r" % got["header_names"])
    eq(len(b.requests), 1, "requests at the backend")


def test_backend_closes_idle_connections(env):
    """A backend closes keep-alive connections left idle (here after 1 s,
    as servers do after their keep-alive timeout). The gateway must not send
    the next request on a pooled connection the backend closed long ago and
    answer 502: it opens a new one."""
    # One worker: one pool of backend connections to watch.
    b, key = real_backend(env, idle_timeout=1.0, workers=1)
    # Within the backend's idle timeout, the pooled connection is reused.
    for i in range(2):
        eq(env.req("POST", "/v1/echo", key=key, body="{}").status, 200, "warm-up %d" % i)
    eq(b.connections, 1, "two requests in a row share one backend connection")
    b.wait_closed(1)
    for i in range(3):
        r = env.req("POST", "/v1/echo?round=%d" % i, key=key, body="{}")
        eq(r.status, 200, "round %d after the backend closed the idle connection: %r" % (i, r))
        eq(r.json()["query"], {"round": [str(i)]}, "round %d's own answer" % i)
        # The backend closed the connection the gateway used (the gateway's
        # own keep-alive to it is longer than 1 s).
        b.wait_closed(i + 2)
    eq(len(b.requests), 5, "every request reached the backend once")
    eq(b.connections, 4, "a new backend connection for each round")


run([test_forwarding, test_forwarding_real_backend, test_backend_closes_idle_connections, test_status_and_body_passthrough, test_backend_down_and_slow,
     test_backend_timeout, test_streaming_arrives_early, test_client_gone_releases_lease,
     test_pipelined_requests, test_drain_on_sigterm])
