"""The wire format the HTTP layer accepts (gateway/http/parse.c through
gateway/http/input.c), over raw sockets, against a backend that records every
request it receives: what is not valid HTTP/1.1 is refused with a JSON
error and the connection closed, and nothing of it, nor anything hidden
behind it, reaches the backend."""
import json
import re
import socket
import time

from backend import Reply
from harness import base_config, eq, free_port, run


def setup(env):
    be = env.start_backend(lambda req: Reply(200, {"ok": True, "body": req.body.decode()}))
    cfg = base_config(be.port, free_port())
    cfg["tiers"]["t"] = {"limits": [{"metric": "requests", "per": "minute", "limit": 1000}]}
    cfg["accounts"] = {"acme": {"tier": "t"}}
    env.add_key(cfg, "k", "acme")
    env.start_gateway(cfg)
    return be, env.keys["k"]


def exchange(port, data, timeout=10):
    """Send data, read until the gateway closes; fails if it never does."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            assert left > 0, "the gateway did not close the connection; got %r" % out[:300]
            s.settimeout(left)
            try:
                d = s.recv(65536)
            except ConnectionResetError:
                d = b""
            except socket.timeout:
                raise AssertionError("no close within %d s; got %r" % (timeout, out[:300]))
            if not d:
                return out
            out += d
    finally:
        s.close()


def first_answer(out):
    assert out.startswith(b"HTTP/1.1 "), "an HTTP answer, got %r" % out[:200]
    head, _, body = out.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    fields = {}
    for ln in head.split(b"\r\n")[1:]:
        k, _, v = ln.partition(b":")
        fields[k.strip().lower().decode()] = v.strip().decode()
    n = int(fields.get("content-length", "0"))
    return status, fields, body[:n]


def test_refused_heads(env):
    be, key = setup(env)
    auth = b"Authorization: Bearer " + key.encode() + b"\r\n"
    ok = b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 2\r\n\r\n{}"
    cases = [
        ("HTTP/1.1 without Host", 400,
         b"POST /v1/echo HTTP/1.1\r\n" + auth + b"Content-Length: 2\r\n\r\n{}"),
        ("two Hosts", 400,
         b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nHost: y\r\n" + auth +
         b"Content-Length: 2\r\n\r\n{}"),
        ("gzip and chunked in two fields", 501,
         b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n" + auth + b"Transfer-Encoding: gzip\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"),
        ("Content-Length with a vertical tab", 400,
         b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: \x0b2\r\n\r\n{}"),
        ("Content-Length as a list", 400,
         b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 2, 2\r\n\r\n{}"),
        ("a control byte in a value", 400,
         b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n" + auth +
         b"Content-Length: 2\r\n\r\n{}"),
        ("a bare CR in a field line", 400,
         b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nX-A: a\rX-B: b\r\n" + auth +
         b"Content-Length: 2\r\n\r\n{}"),
        ("a NUL in the target", 400,
         b"POST /v1/echo\x00/x HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 2\r\n\r\n{}"),
        ("obs-fold (a folded header line)", 400,
         b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n Transfer-Encoding: chunked\r\n" +
         auth + b"Content-Length: 2\r\n\r\n{}"),
        ("a tab-folded line", 400,
         b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n" + auth +
         b"Content-Length: 2\r\n\r\n{}"),
        ("Content-Length with Transfer-Encoding", 400,
         b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 40\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"),
        ("two different Content-Lengths", 400,
         b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 2\r\n"
         b"Content-Length: 40\r\n\r\n{}"),
        ("a space before the colon", 400,
         b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n" + auth +
         b"Content-Length: 2\r\n\r\n{}"),
        ("HTTP/2.0 on the wire", 505,
         b"POST /v1/echo HTTP/2.0\r\nHost: x\r\n" + auth + b"Content-Length: 2\r\n\r\n{}"),
        ("a chunk size that overflows", 400,
         b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\n"
         b"10000000000000002\r\n{}\r\n0\r\n\r\n"),
        ("a chunk without its CRLF", 400,
         b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\n"
         b"2\r\n{}0\r\n\r\n"),
        ("a trailer line that is not a field", 400,
         b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\n"
         b"2\r\n{}\r\n0\r\nnot a field\r\n\r\n"),
    ]
    ids = set()
    for what, status, data in cases:
        # A valid request pipelined behind the bad one must never be served.
        out = exchange(env.port, data + ok)
        st, fields, body = first_answer(out)
        eq(st, status, "status for %s (%r)" % (what, out[:200]))
        eq(fields.get("connection", "").lower(), "close", "Connection: close for %s" % what)
        err = json.loads(body)["error"]
        assert err["code"] and err["message"], "a JSON error for %s: %r" % (what, body)
        eq(len(re.findall(rb"(?:^|\n)HTTP/1\.1 \d{3} ", out)), 1, "one answer only for %s" % what)
        assert re.match(r"^[0-9a-f]{32}$", fields.get("x-request-id", "")), \
            "X-Request-Id on the refusal of %s: %r" % (what, fields)
        ids.add(fields["x-request-id"])
    eq(len(ids), len(cases), "a new request id on every refusal")
    eq(len(be.requests), 0, "nothing the HTTP layer refused reached the backend")


def test_accepted_forms(env):
    be, key = setup(env)
    auth = b"Authorization: Bearer " + key.encode() + b"\r\n"
    forms = [
        ("chunk extensions", b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n" + auth +
         b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
         b"2;name=value\r\n{}\r\n0\r\n\r\n"),
        ("the same Content-Length twice", b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n" + auth +
         b"Content-Length: 2\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"),
        ("bare LF line ends in the head", b"POST /v1/echo HTTP/1.1\nHost: x\n" +
         auth.replace(b"\r\n", b"\n") + b"Content-Length: 2\nConnection: close\n\n{}"),
        ("HTTP/1.0 without Host", b"POST /v1/echo HTTP/1.0\r\n" + auth +
         b"Content-Length: 2\r\n\r\n{}"),
    ]
    for what, data in forms:
        st, _, body = first_answer(exchange(env.port, data))
        eq(st, 200, "%s is served" % what)
        eq(json.loads(body)["body"], "{}", "the body as sent (%s)" % what)
    eq(len(be.requests), len(forms), "each reached the backend once")


def test_no_request_hidden_in_a_body(env):
    """A request inside a body, or a second one pipelined behind it, never
    reaches the backend as a request of its own."""
    be, key = setup(env)
    auth = b"Authorization: Bearer " + key.encode() + b"\r\n"
    hidden = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    data = (b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n" + auth +
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(hidden) + hidden)
    st, _, body = first_answer(exchange(env.port, data))
    eq(st, 200, "the outer request is served")
    eq(len(be.requests), 1, "the backend saw one request")
    eq(be.requests[0].body, hidden, "the hidden request is a body, byte for byte")
    eq(be.requests[0].path, "/v1/echo", "at the outer request's path")
    # Chunked: the bytes after the last chunk are the next request, which
    # is decided on (and here refused: no key) like any other.
    data = (b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n" + auth +
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
            b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n"
            b"\r\n{}")
    out = exchange(env.port, data)
    eq(out.count(b"HTTP/1.1 200"), 1, "the chunked request is served: %r" % out[:300])
    eq(out.count(b"HTTP/1.1 401"), 1, "the one after it is decided alone (no key: 401)")
    eq(len(be.requests), 2, "the backend saw one more request, not two")


run([test_refused_heads, test_accepted_forms, test_no_request_hidden_in_a_body])
