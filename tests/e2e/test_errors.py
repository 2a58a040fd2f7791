"""The error answers: 404 before the key, 401, 403, 413, 400, and requests
the HTTP layer refuses. None of them may reach the backend."""
import json
import socket
import time

from harness import base_config, eq, free_port, run


def setup(env, **over):
    env.start_mock()
    cfg = base_config(env.mock_port, free_port(), **over)
    cfg["tiers"]["basic"] = {"limits": [
        {"metric": "requests", "per": "minute", "limit": 100}]}
    cfg["accounts"] = {"acme": {"tier": "basic"},
                       "frozen": {"tier": "basic", "disabled": True}}
    env.add_key(cfg, "k_acme", "acme")
    env.add_key(cfg, "k_off", "acme", disabled=True)
    env.add_key(cfg, "k_frozen", "frozen")
    env.start_gateway(cfg)
    return cfg


def assert_error(r, status, etype, code):
    eq(r.status, status, "status of %r" % r)
    body = r.json()
    eq(body["error"]["type"], etype, "type")
    eq(body["error"]["code"], code, "code")
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], \
        "error.message is a non-empty string: %r" % body
    assert isinstance(body["error"]["details"], dict), "error.details is an object: %r" % body
    assert (r.h("content-type") or "").startswith("application/json"), "JSON content type: %r" % r.headers
    assert r.h("x-request-id"), "every answer has X-Request-Id"


def test_not_found_before_key(env):
    setup(env)
    # No endpoint: 404 even without a key, and even with a bad one.
    assert_error(env.req("GET", "/nope"), 404, "not_found_error", "NOT_FOUND")
    assert_error(env.req("POST", "/nope", key="bad"), 404, "not_found_error", "NOT_FOUND")
    # Right path, wrong method: no endpoint either.
    assert_error(env.req("GET", "/v3/txt2img", key=env.keys["k_acme"]), 404,
                 "not_found_error", "NOT_FOUND")
    eq(env.mock_stats()["requests"], 0, "nothing reached the backend")


def test_auth(env):
    setup(env)
    assert_error(env.req("POST", "/v3/img2img", body={}), 401, "authentication_error",
                 "MISSING_API_KEY")
    assert_error(env.req("POST", "/v3/img2img", body={}, headers={"Authorization": "Basic x"}),
                 401, "authentication_error", "MISSING_API_KEY")
    assert_error(env.req("POST", "/v3/img2img", key="sk_wrong", body={}), 401,
                 "authentication_error", "INVALID_API_KEY")
    assert_error(env.req("POST", "/v3/img2img", key="sk_wrong", body={}, header_style="x-api-key"),
                 401, "authentication_error", "INVALID_API_KEY")
    assert_error(env.req("POST", "/v3/img2img", key=env.keys["k_off"], body={}), 403,
                 "permission_error", "KEY_DISABLED")
    assert_error(env.req("POST", "/v3/img2img", key=env.keys["k_frozen"], body={}), 403,
                 "permission_error", "KEY_DISABLED")
    eq(env.mock_stats()["requests"], 0, "nothing reached the backend")
    # Both header styles work for a good key.
    eq(env.req("POST", "/v3/img2img", key=env.keys["k_acme"], body={}).status, 200,
       "a good key as Authorization: Bearer")
    eq(env.req("POST", "/v3/img2img", key=env.keys["k_acme"], body={},
               header_style="x-api-key").status, 200, "a good key as X-API-Key")
    # The key never appears in the gateway's log.
    out = env.gw.output()
    for k in env.keys.values():
        assert k not in out, "a key was logged"


def test_body_limits(env):
    setup(env)
    key = env.keys["k_acme"]
    r = env.req("POST", "/v3/small", key=key, body="x" * 2000)
    assert_error(r, 413, "invalid_request_error", "PAYLOAD_TOO_LARGE")
    eq(r.json()["error"]["details"]["limit"], 1024, "details.limit")
    eq(env.req("POST", "/v3/small", key=key, body="x" * 1000).status, 200,
       "a body under the endpoint's limit")
    # Server-wide limit (10 MiB default) on another endpoint.
    r = env.req("POST", "/v3/img2img", key=key, body="y" * (10 * 1024 * 1024 + 10))
    assert_error(r, 413, "invalid_request_error", "PAYLOAD_TOO_LARGE")
    eq(r.json()["error"]["details"]["limit"], 10 * 1024 * 1024, "details.limit")


def test_invalid_body(env):
    setup(env)
    key = env.keys["k_acme"]
    for body in ("{not json", "", '{"image_num": "three"}', '{"image_num": -1}'):
        r = env.req("POST", "/v3/txt2img", key=key, body=body,
                    headers={"Content-Type": "application/json"})
        assert_error(r, 400, "invalid_request_error", "INVALID_BODY")
    # A refused body charges nothing: 100/min still all there.
    r = env.req("POST", "/v3/txt2img", key=key, body={"image_num": 2})
    eq(r.status, 200, "a valid body after the refused ones")
    eq(r.h("x-ratelimit-remaining"), "99", "only the admitted request counted")
    eq(env.mock_stats()["requests"], 1, "only the valid request reached the backend")


def raw(port, data, timeout=10):
    """Sends data on a new connection and reads until the gateway closes it.
    A gateway that neither answers nor closes within timeout fails the
    test: every case here expects an answer and then the close."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    deadline = time.time() + timeout
    try:
        s.sendall(data)
        out = b""
        while True:
            s.settimeout(max(0.01, deadline - time.time()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                raise AssertionError("no close within %.0f s after %r; have %r" % (
                    timeout, data[:60], out[:300]))
            except ConnectionResetError:
                break  # a close all the same; what came before is checked
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def parse(out, what):
    """(status, headers, body) of one whole answer in out."""
    assert out.startswith(b"HTTP/1.1 "), "%s: no HTTP answer before the close: %r" % (
        what, out[:200])
    head, sep, body = out.partition(b"\r\n\r\n")
    assert sep, "%s: an answer head without its end: %r" % (what, out[:200])
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "-1"))
    eq(len(body), n, "%s: body length against Content-Length" % what)
    return status, headers, body


def test_http_layer(env):
    setup(env)
    key = env.keys["k_acme"]
    # A head over max_header_bytes (16 KiB default): 431, then the close.
    big = b"POST /v3/img2img HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode() + \
          b"\r\nX-Big: " + b"a" * 20000 + b"\r\nContent-Length: 0\r\n\r\n"
    status, h, body = parse(raw(env.port, big), "a head over max_header_bytes")
    eq(status, 431, "a head over max_header_bytes")
    eq(json.loads(body)["error"]["code"], "HEADERS_TOO_LARGE", "code of the 431")
    eq(h.get("connection", "").lower(), "close", "Connection: close on the 431")
    # Garbage instead of HTTP: 400, then the close.
    status, h, body = parse(raw(env.port, b"HELLO THERE\r\n\r\n"), "garbage")
    eq(status, 400, "a line that is not HTTP")
    eq(json.loads(body)["error"]["code"], "INVALID_REQUEST", "code of the 400")
    eq(env.mock_stats()["requests"], 0, "nothing reached the backend")


run([test_not_found_before_key, test_auth, test_body_limits, test_invalid_body,
     test_http_layer])
