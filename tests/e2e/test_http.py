"""The gateway's own HTTP/1.1 server side (gateway/http/), over raw sockets:
chunked request bodies, oversized bodies (413 and a lingering close),
Expect: 100-continue, the whole-head and idle deadlines of
client_timeout_ms, HTTP/1.0, heads the HTTP layer refuses, HEAD, and
pipelining. Nothing the HTTP layer refuses may reach the backend."""
import json
import select
import socket
import threading
import time

from harness import Response, base_config, eq, free_port, run

MAX_BODY = 4096     # server.max_body_bytes: no endpoint takes more
SMALL_BODY = 1024   # /v3/small's own max_body_bytes
MAX_HEAD = 2048     # server.max_header_bytes


def setup(env, **server):
    env.start_mock()
    cfg = base_config(env.mock_port, free_port())
    cfg["server"].update({"max_body_bytes": MAX_BODY, "max_header_bytes": MAX_HEAD,
                          "drain_timeout_ms": 2000})
    cfg["server"].update(server)
    ep = cfg["endpoints"]
    # Units read from the JSON body; the mock echoes whatever is not one of
    # its own paths (body, body_bytes, headers as received).
    ep["units_echo"] = {"method": "POST", "path": "/v1/units-echo", "backend": "models",
                        "units": [{"pointer": "/n", "default": 1}]}
    ep["info_head"] = {"method": "HEAD", "path": "/v1/info", "backend": "models"}
    ep["info_get"] = {"method": "GET", "path": "/v1/info", "backend": "models"}
    cfg["tiers"]["t"] = {"limits": [
        {"metric": "requests", "per": "minute", "limit": 1000},
        {"metric": "units", "per": "minute", "limit": 1000, "endpoints": ["units_echo"]}]}
    cfg["tiers"]["tiny"] = {"limits": [{"metric": "requests", "per": "minute", "limit": 1}]}
    cfg["accounts"] = {"acme": {"tier": "t"}, "little": {"tier": "tiny"}}
    env.add_key(cfg, "k_acme", "acme")
    env.add_key(cfg, "k_tiny", "little")
    env.start_gateway(cfg)
    return env.keys["k_acme"]


# ---- a raw HTTP/1.1 client -----------------------------------------------

class Client:
    """One TCP connection; answers parsed by hand, so that the framing the
    gateway sends (Content-Length, chunked, until close) is checked too."""

    def __init__(self, port, timeout=5):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.eof = False

    def close(self):
        self.s.close()

    def send(self, data):
        self.s.sendall(data)

    def _fill(self, deadline):
        """More bytes into buf; False at EOF (or a reset)."""
        if self.eof:
            return False
        left = deadline - time.time()
        if left <= 0:
            raise AssertionError("no answer in time; have %r" % self.buf[:300])
        self.s.settimeout(left)
        try:
            d = self.s.recv(65536)
        except socket.timeout:
            raise AssertionError("no answer in time; have %r" % self.buf[:300])
        except ConnectionResetError:
            d = b""
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def _take(self, n, deadline):
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise AssertionError("closed after %d of %d bytes: %r" % (
                    len(self.buf), n, self.buf[:300]))
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self, deadline):
        while b"\r\n" not in self.buf:
            if not self._fill(deadline):
                raise AssertionError("closed mid-line: %r" % self.buf[:300])
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def response(self, method="GET", timeout=5):
        """The next answer (an interim 1xx is returned as it is)."""
        deadline = time.time() + timeout
        while b"\r\n\r\n" not in self.buf:
            if not self._fill(deadline):
                raise AssertionError("closed before a whole answer head: %r" % self.buf[:300])
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        version, status, _ = (lines[0].decode("latin-1").split(" ", 2) + [""])[:3]
        assert version in ("HTTP/1.1", "HTTP/1.0"), "status line: %r" % lines[0]
        status = int(status)
        fields = []
        for ln in lines[1:]:
            k, v = ln.decode("latin-1").split(":", 1)
            fields.append((k.strip().lower(), v.strip()))
        headers = {}
        for k, v in fields:
            headers[k] = headers[k] + ", " + v if k in headers else v
        te = headers.get("transfer-encoding", "").lower()
        body = b""
        if method == "HEAD" or status < 200 or status in (204, 304):
            pass
        elif te == "chunked":
            while True:
                size = int(self._line(deadline).split(b";")[0], 16)
                if size == 0:
                    while self._line(deadline):
                        pass  # trailer fields
                    break
                body += self._take(size, deadline)
                eq(self._take(2, deadline), b"\r\n", "chunk end")
        elif "content-length" in headers:
            body = self._take(int(headers["content-length"]), deadline)
        else:  # until the connection closes
            while self._fill(deadline):
                pass
            body, self.buf = self.buf, b""
        r = Response(status, headers, body)
        r.version = version
        r.fields = fields
        return r

    def wait_closed(self, timeout):
        """Seconds until the gateway closed the connection (no bytes may
        come first); None if it is still open after timeout."""
        t0 = time.time()
        deadline = t0 + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                return None
            self.s.settimeout(left)
            try:
                d = self.s.recv(65536)
            except socket.timeout:
                return None
            except ConnectionResetError:
                d = b""
            if not d:
                self.eof = True
                return time.time() - t0
            raise AssertionError("unexpected bytes: %r" % d[:300])

    def silent(self, seconds, what):
        """Nothing more arrives for seconds, and the connection stays open:
        reads the socket for that long (bytes already read count too)."""
        eq(self.buf, b"", what + ": bytes already received")
        took = self.wait_closed(seconds)
        assert took is None, "%s: the connection was closed after %.2f s" % (what, took)


def post(path, key, body, extra=b"", version=b"HTTP/1.1"):
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    return (b"POST " + path.encode() + b" " + version + b"\r\nHost: x\r\n" +
            b"Authorization: Bearer " + key.encode() + b"\r\n" + extra +
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


def assert_json_error(r, status, code, etype="invalid_request_error"):
    eq(r.status, status, "status of %r" % r)
    assert (r.h("content-type") or "").startswith("application/json"), \
        "JSON content type: %r" % r.headers
    err = r.json()["error"]
    eq(err["code"], code, "code")
    eq(err["type"], etype, "type")
    assert isinstance(err["message"], str) and err["message"], "error.message: %r" % err
    assert isinstance(err["details"], dict), "error.details: %r" % err
    return err


def backend_requests(env):
    return env.mock_stats()["requests"]


# ---- 1. chunked request bodies ------------------------------------------

def test_chunked_request_body(env):
    key = setup(env)
    parts = [b'{"n":', b' 7, "pad": "', b"abcdefghijklmnopqrstuvwxyz", b'"}']
    body = b"".join(parts)
    head = (b"POST /v1/units-echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
            key.encode() + b"\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunks = b"%x\r\n%s\r\n" % (len(parts[0]), parts[0])
    chunks += b"%x;note=\"an extension\"\r\n%s\r\n" % (len(parts[1]), parts[1])
    chunks += b"%X\r\n%s\r\n" % (len(parts[2]), parts[2])  # "1A": upper-case hex
    chunks += b"%x\r\n%s\r\n" % (len(parts[3]), parts[3])
    last = b"0\r\nX-Trailer-Field: yes\r\n\r\n"
    c = Client(env.port)
    try:
        # The head and the chunks in separate writes, the last chunk on its own.
        c.send(head)
        time.sleep(0.05)
        c.send(chunks)
        time.sleep(0.05)
        c.send(last)
        r = c.response()
        eq(r.status, 200, "chunked body proxied: %r" % r)
        echo = r.json()
        eq(echo["path"], "/v1/units-echo", "path")
        eq(echo["body"], body.decode(), "the backend got the de-chunked body")
        eq(echo["body_bytes"], len(body), "body_bytes")
        h = {k.lower(): v for k, v in echo["headers"].items()}
        eq(h.get("content-length"), str(len(body)), "the backend got a Content-Length")
        assert "transfer-encoding" not in h, "no Transfer-Encoding to the backend: %r" % h
        assert "x-trailer-field" not in h, "a trailer is not a header: %r" % h
        # Units were read from the de-chunked JSON: 7 of 1000 per minute.
        eq(r.h("x-ratelimit-remaining"), "993", "units read from the chunked body")
        # The connection goes on after a chunked body: one more, in one write.
        c.send(head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(b'{"n":2}'), b'{"n":2}'))
        r = c.response()
        eq(r.status, 200, "second request on the connection")
        eq(r.json()["body"], '{"n":2}', "second body")
        eq(r.h("x-ratelimit-remaining"), "991", "units of the second body")
    finally:
        c.close()
    eq(backend_requests(env), 2, "two requests reached the backend")


# ---- 2. bodies over max_body_bytes --------------------------------------

def test_oversized_bodies(env):
    key = setup(env)
    # A chunked body larger than any endpoint takes: refused when the size
    # line that crosses the limit arrives; the rest is never read and never
    # sent (no last chunk).
    c = Client(env.port)
    try:
        c.send(b"POST /v3/small HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode() +
               b"\r\nTransfer-Encoding: chunked\r\n\r\n" +
               b"800\r\n" + b"a" * 0x800 + b"\r\n" + b"800\r\n" + b"b" * 0x800 + b"\r\n" +
               b"800\r\n" + b"c" * 0x800 + b"\r\n")
        r = c.response()
        err = assert_json_error(r, 413, "PAYLOAD_TOO_LARGE")
        eq(err["details"].get("limit"), SMALL_BODY, "details.limit is the endpoint's")
        eq((r.h("connection") or "").lower(), "close", "Connection: close")
        assert c.wait_closed(3) is not None, "closed after the 413"
    finally:
        c.close()

    # The same on an endpoint with the server-wide limit, and a chunk size
    # that alone is over it.
    c = Client(env.port)
    try:
        c.send(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode() +
               b"\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n" + b"z" * 5000)
        r = c.response()
        err = assert_json_error(r, 413, "PAYLOAD_TOO_LARGE")
        eq(err["details"].get("limit"), MAX_BODY, "details.limit")
        assert c.wait_closed(3) is not None, "closed after the 413"
    finally:
        c.close()

    # A Content-Length 100 times any limit, with a stream of body bytes the
    # client keeps sending: it reads the whole 413 at once, then the end of
    # the answer (the gateway shut its side), and the gateway keeps taking
    # (and dropping) what the client still sends for a moment instead of
    # resetting the connection (lingering close).
    c = Client(env.port)
    stop = threading.Event()
    poured = {"bytes": 0, "error_at": None}

    def pour():
        try:
            while not stop.is_set():
                c.s.sendall(b"x" * 16384)
                poured["bytes"] += 16384
        except OSError:
            poured["error_at"] = time.time()

    try:
        t0 = time.time()
        c.send(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode() +
               b"\r\nContent-Length: %d\r\n\r\n" % (100 * MAX_BODY))
        t = threading.Thread(target=pour)
        t.start()
        try:
            ready, _, _ = select.select([c.s], [], [], 2)
            assert ready, "no 413 before the body"
            assert time.time() - t0 < 3, "answered without waiting for the body"
            time.sleep(0.3)  # the client goes on sending meanwhile
            r = c.response()
            err = assert_json_error(r, 413, "PAYLOAD_TOO_LARGE")
            eq(err["details"].get("limit"), MAX_BODY, "details.limit")
            eq((r.h("connection") or "").lower(), "close", "Connection: close")
            assert c.wait_closed(2) is not None, "the answer ends with the connection"
            eof_at = time.time()
            time.sleep(0.3)
        finally:
            stop.set()
            t.join()
        assert poured["bytes"] >= 65536, "the client kept sending (%d bytes)" % poured["bytes"]
        assert poured["error_at"] is None or poured["error_at"] > eof_at + 0.2, (
            "the connection was reset %.2f s after the answer ended: no lingering close"
            % (poured["error_at"] - eof_at))
    finally:
        c.close()

    # Head only, body never sent: the 413 comes at once all the same.
    c = Client(env.port)
    try:
        c.send(b"POST /v3/small HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode() +
               b"\r\nContent-Length: %d\r\n\r\n" % (100 * MAX_BODY))
        r = c.response(timeout=2)
        err = assert_json_error(r, 413, "PAYLOAD_TOO_LARGE")
        eq(err["details"].get("limit"), SMALL_BODY, "details.limit")
        assert c.wait_closed(3) is not None, "closed after the 413"
    finally:
        c.close()
    eq(backend_requests(env), 0, "no oversized body reached the backend")

    # Over the endpoint's own limit but not over the largest: read, then
    # refused all the same (whether the connection stays is not specified).
    c = Client(env.port)
    try:
        c.send(b"POST /v3/small HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode() +
               b"\r\nTransfer-Encoding: chunked\r\n\r\n" +
               b"400\r\n" + b"a" * 0x400 + b"\r\n1\r\nb\r\n0\r\n\r\n")
        err = assert_json_error(c.response(), 413, "PAYLOAD_TOO_LARGE")
        eq(err["details"].get("limit"), SMALL_BODY, "details.limit")
    finally:
        c.close()
    eq(backend_requests(env), 0, "no oversized body reached the backend")
    # Exactly the limit passes, chunked or not.
    c = Client(env.port)
    try:
        c.send(post("/v1/echo", key, "y" * MAX_BODY))
        r = c.response()
        eq(r.status, 200, "a body of exactly max_body_bytes")
        eq(r.json()["body_bytes"], MAX_BODY, "body_bytes")
        c.send(b"POST /v3/small HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode() +
               b"\r\nTransfer-Encoding: chunked\r\n\r\n" +
               b"3ff\r\n" + b"a" * 0x3ff + b"\r\n1\r\nb\r\n0\r\n\r\n")
        r = c.response()
        eq(r.status, 200, "a chunked body of exactly the endpoint's max_body_bytes")
        eq(r.json()["body_bytes"], SMALL_BODY, "body_bytes")
    finally:
        c.close()
    eq(backend_requests(env), 2, "the two bodies within the limits reached the backend")


# ---- 3. Expect: 100-continue --------------------------------------------

def test_expect_continue(env):
    key = setup(env)
    body = b'{"n": 3, "text": "after the interim answer"}'
    c = Client(env.port)
    try:
        c.send(b"POST /v1/units-echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
               key.encode() + b"\r\nExpect: 100-continue\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body))
        r = c.response(timeout=3)
        eq(r.status, 100, "interim answer first: %r" % r)
        eq(r.version, "HTTP/1.1", "version of the 100")
        c.silent(0.3, "nothing more before the body is sent")
        eq(backend_requests(env), 0, "the backend waits for the body too")
        c.send(body)
        r = c.response()
        eq(r.status, 200, "final answer: %r" % r)
        eq(r.json()["body"], body.decode(), "the body reached the backend")
        eq(r.h("x-ratelimit-remaining"), "997", "units read from the body")
    finally:
        c.close()
    # A body too large for any endpoint: the 413 at once, no 100 first.
    c = Client(env.port)
    try:
        c.send(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode() +
               b"\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (100 * MAX_BODY))
        r = c.response(timeout=3)
        assert_json_error(r, 413, "PAYLOAD_TOO_LARGE")
        assert c.wait_closed(3) is not None, "closed after the 413"
    finally:
        c.close()
    eq(backend_requests(env), 1, "only the continued request reached the backend")


# ---- 4. client_timeout_ms -----------------------------------------------

TIMEOUT_S = 1.0
GAP_S = 0.3
# How late a deadline may fire on a loaded machine (2 cores, sanitizer
# builds, other tests at once); never early.
SLACK_S = 3.0


def trickle(c, data, gap, limit):
    """Send data a byte per gap until the gateway answers or closes; the
    seconds from the first byte to that moment (or None after limit). A
    send that fails means the gateway closed: cut_off_answer() then checks
    that it was a close (EOF), not a hang."""
    t0 = time.time()
    for i in range(len(data)):
        try:
            c.send(data[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            return time.time() - t0
        ready, _, _ = select.select([c.s], [], [], gap)
        if ready:
            return time.time() - t0
        if time.time() - t0 > limit:
            return None
    return None


def cut_off_answer(c, timeout=SLACK_S + 2):
    """A 408 JSON and then the close, or the connection closed (EOF read)
    without an answer; a gateway that neither answers nor closes within
    timeout fails."""
    try:
        r = c.response(timeout=timeout)
    except AssertionError as e:
        assert c.eof, "neither a 408 nor a close: %s" % e
        eq(c.buf, b"", "closed without an answer: nothing but a whole 408 may come first")
        return
    assert_json_error(r, 408, "REQUEST_TIMEOUT")
    assert c.wait_closed(timeout) is not None, "closed after the 408"


def timeout_setup(env):
    key = setup(env, client_timeout_ms=int(TIMEOUT_S * 1000))
    return key, post("/v1/echo", key, "{}")


def test_head_deadline_trickle(env):
    key, head = timeout_setup(env)
    # A head sent a byte every 300 ms is cut off when client_timeout_ms runs
    # out: about timeout + one gap after its first byte, not later.
    c = Client(env.port)
    try:
        took = trickle(c, head, GAP_S, TIMEOUT_S + SLACK_S + 1)
        assert took is not None, "a trickled head was never cut off"
        assert TIMEOUT_S - 0.1 <= took <= TIMEOUT_S + GAP_S + SLACK_S, \
            "cut off after %.2f s" % took
        cut_off_answer(c)
    finally:
        c.close()
    eq(backend_requests(env), 0, "the trickled head never reached the backend")


def test_head_deadline_whole(env):
    key, head = timeout_setup(env)
    # A head whose every gap is under the timeout but whose whole takes
    # longer: all but one byte at once, then one more byte after 0.7 s,
    # then the end of the head after another 0.7 s. It must not be served.
    # (The gaps are the point of the case, not a wait for some state.)
    c = Client(env.port)
    try:
        try:
            c.send(head[:-5])
            time.sleep(0.7)
            c.send(head[-5:-4])
            time.sleep(0.7)
            c.send(head[-4:])
        except (BrokenPipeError, ConnectionResetError):
            pass  # already cut off: cut_off_answer() checks it was a close
        cut_off_answer(c)
    finally:
        c.close()
    eq(backend_requests(env), 0, "a head over the deadline never reached the backend")


def test_body_gap(env):
    key, head = timeout_setup(env)
    # A body that stops coming: 408 (or a close) after the timeout.
    c = Client(env.port)
    try:
        t0 = time.time()
        c.send(head[:-1])  # one byte of a 2-byte body
        ready, _, _ = select.select([c.s], [], [], TIMEOUT_S + SLACK_S + 1)
        took = time.time() - t0
        assert ready, "a stalled body was never cut off"
        assert TIMEOUT_S - 0.1 <= took <= TIMEOUT_S + SLACK_S, "cut off after %.2f s" % took
        cut_off_answer(c)
    finally:
        c.close()
    eq(backend_requests(env), 0, "a stalled body never reached the backend")


def test_idle_connections(env):
    key, head = timeout_setup(env)
    # An idle connection (nothing sent) is closed after the timeout.
    c = Client(env.port)
    try:
        took = c.wait_closed(TIMEOUT_S + SLACK_S + 1)
        assert took is not None, "an idle connection was never closed"
        assert TIMEOUT_S - 0.1 <= took <= TIMEOUT_S + SLACK_S, "closed after %.2f s" % took
    finally:
        c.close()

    # An idle keep-alive connection: closed about the timeout after its
    # answer, also when that answer took longer than the timeout (the
    # backend's timeout governs an open exchange).
    for delay_ms in (0, 1500):
        c = Client(env.port)
        try:
            c.send(post("/v1/echo", key, "{}", extra=b"x-mock-delay-ms: %d\r\n" % delay_ms))
            r = c.response()
            eq(r.status, 200, "answer after %d ms" % delay_ms)
            took = c.wait_closed(TIMEOUT_S + SLACK_S + 1)
            assert took is not None, "an idle keep-alive connection was never closed"
            assert TIMEOUT_S - 0.2 <= took <= TIMEOUT_S + SLACK_S, (
                "idle keep-alive connection closed %.2f s after an answer that took %d ms"
                % (took, delay_ms))
        finally:
            c.close()
    eq(backend_requests(env), 2, "the two whole requests reached the backend")


def test_empty_lines_only(env):
    key, head = timeout_setup(env)
    # Empty lines instead of a request do not keep a connection open for
    # ever either: it is idle, or its head has begun.
    c = Client(env.port)
    try:
        took = trickle(c, b"\r\n" * 40, GAP_S, TIMEOUT_S + SLACK_S + 1)
        assert took is not None, "a connection sending only CRLFs was never closed"
        assert TIMEOUT_S - 0.1 <= took <= TIMEOUT_S + GAP_S + SLACK_S, \
            "closed after %.2f s" % took
        cut_off_answer(c)
    finally:
        c.close()


# ---- 5. HTTP/1.0 -------------------------------------------------------

def test_http10(env):
    key = setup(env)
    # No Connection: keep-alive: the answer ends with the connection.
    c = Client(env.port)
    try:
        c.send(post("/v1/echo", key, '{"v":10}', version=b"HTTP/1.0"))
        r = c.response()
        eq(r.status, 200, "HTTP/1.0 request")
        eq(r.json()["body"], '{"v":10}', "body")
        assert (r.h("connection") or "close").lower() == "close", \
            "no keep-alive for HTTP/1.0 by default: %r" % r.headers
        took = c.wait_closed(2)
        assert took is not None, "an HTTP/1.0 answer ends with the connection"
    finally:
        c.close()
    # Connection: keep-alive: two requests over one connection.
    c = Client(env.port)
    try:
        for i in (1, 2):
            c.send(post("/v1/echo?i=%d" % i, key, "{}", version=b"HTTP/1.0",
                        extra=b"Connection: keep-alive\r\n"))
            r = c.response()
            eq(r.status, 200, "keep-alive request %d" % i)
            eq(r.json()["query"], "i=%d" % i, "answer %d" % i)
            eq((r.h("connection") or "").lower(), "keep-alive", "Connection: keep-alive")
            assert r.h("content-length"), "a kept-alive 1.0 answer is delimited: %r" % r.headers
        assert c.wait_closed(0.3) is None, "the connection is kept"
        # A streamed answer (unknown length) cannot be chunked for 1.0: it
        # goes until close, even though keep-alive was asked for.
        c.send(post("/v1/chat/completions", key, "{}", version=b"HTTP/1.0",
                    extra=b"Connection: keep-alive\r\nx-mock-stream: 3\r\n"
                          b"x-mock-stream-interval-ms: 10\r\n"))
        r = c.response()
        eq(r.status, 200, "streamed answer")
        assert "transfer-encoding" not in r.headers, "no chunking for 1.0: %r" % r.headers
        assert "content-length" not in r.headers, "no length for a stream: %r" % r.headers
        assert b"[DONE]" in r.body, "the whole stream: %r" % r.body[-200:]
        assert c.eof, "the streamed 1.0 answer ended with the connection"
    finally:
        c.close()
    eq(backend_requests(env), 4, "four requests reached the backend")


def test_connection_close_frees(env):
    """Answers that close the connection (Connection: close, HTTP/1.0)
    after a proxied exchange: the connection is gone from the gateway too,
    so SIGTERM with nothing in flight exits at once, not after
    drain_timeout_ms."""
    key = setup(env, drain_timeout_ms=10000)
    for version, extra in ((b"HTTP/1.1", b"Connection: close\r\n"), (b"HTTP/1.0", b"")):
        c = Client(env.port)
        try:
            c.send(post("/v1/echo", key, "{}", version=version, extra=extra))
            r = c.response()
            eq(r.status, 200, "answer over %s" % version.decode())
            eq((r.h("connection") or "").lower(), "close", "Connection: close")
            assert c.wait_closed(2) is not None, "closed after the answer"
        finally:
            c.close()
    eq(backend_requests(env), 2, "both reached the backend")
    t0 = time.time()
    env.gw.stop()
    took = time.time() - t0
    assert took < 5.0, "SIGTERM with no request in flight took %.1f s (drain_timeout_ms " \
        "is 10 s): closed connections are still counted" % took


# ---- 6. heads the HTTP layer refuses --------------------------------------

def test_refused_heads(env):
    key = setup(env)
    auth = b"Authorization: Bearer " + key.encode() + b"\r\n"
    cases = [
        ("unknown method", 501, "METHOD_NOT_SUPPORTED",
         b"BREW /v1/echo HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 2\r\n\r\n{}"),
        ("no version", 400, "INVALID_REQUEST",
         b"POST /v1/echo\r\nHost: x\r\n" + auth + b"Content-Length: 2\r\n\r\n{}"),
        ("two spaces", 400, "INVALID_REQUEST",
         b"POST  /v1/echo HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 2\r\n\r\n{}"),
        ("not a version", 400, "INVALID_REQUEST",
         b"POST /v1/echo HTTX/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 2\r\n\r\n{}"),
        ("space before colon", 400, "INVALID_REQUEST",
         b"POST /v1/echo HTTP/1.1\r\nHost : x\r\n" + auth + b"Content-Length: 2\r\n\r\n{}"),
        ("obs-fold", 400, "INVALID_REQUEST",
         b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nX-Long: a\r\n  folded\r\n" + auth +
         b"Content-Length: 2\r\n\r\n{}"),
        ("line without colon", 400, "INVALID_REQUEST",
         b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nNoColon\r\n" + auth +
         b"Content-Length: 2\r\n\r\n{}"),
        ("head over max_header_bytes", 431, "HEADERS_TOO_LARGE",
         b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n" + auth + b"X-Big: " + b"a" * MAX_HEAD +
         b"\r\nContent-Length: 2\r\n\r\n{}"),
        ("Content-Length and Transfer-Encoding", 400, "INVALID_REQUEST",
         b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 7\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"),
        ("two different Content-Lengths", 400, "INVALID_REQUEST",
         b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 2\r\n"
         b"Content-Length: 3\r\n\r\n{} "),
        ("bad chunk size", 400, "INVALID_REQUEST",
         b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n" + auth + b"Transfer-Encoding: chunked\r\n"
         b"\r\nzz\r\n{}\r\n0\r\n\r\n"),
    ]
    for what, status, code, data in cases:
        c = Client(env.port)
        try:
            # A valid request pipelined behind the bad one must not be served.
            c.send(data + post("/v1/echo", key, "{}"))
            r = c.response()
            assert_json_error(r, status, code)
            eq((r.h("connection") or "").lower(), "close", "Connection: close (%s)" % what)
            assert c.wait_closed(3) is not None, "closed after the %d (%s)" % (status, what)
        except AssertionError as e:
            raise AssertionError("%s: %s" % (what, e))
        finally:
            c.close()
    # A head over max_header_bytes that is still coming in is refused too.
    c = Client(env.port)
    try:
        c.send(b"GET /v1/info HTTP/1.1\r\nHost: x\r\n" + auth + b"X-Big: " + b"a" * (3 * MAX_HEAD))
        r = c.response()
        assert_json_error(r, 431, "HEADERS_TOO_LARGE")
        assert c.wait_closed(3) is not None, "closed after the 431"
    finally:
        c.close()
    eq(backend_requests(env), 0, "nothing the HTTP layer refused reached the backend")


# ---- 7. HEAD ---------------------------------------------------------------

def test_head(env):
    key = setup(env)
    auth = b"Authorization: Bearer " + key.encode() + b"\r\n"
    c = Client(env.port)
    try:
        c.send(b"HEAD /v1/info?h=1 HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
        r = c.response(method="HEAD")
        eq(r.status, 200, "HEAD proxied: %r" % r)
        assert r.h("x-request-id"), "X-Request-Id on HEAD: %r" % r.headers
        assert r.h("x-ratelimit-limit"), "rate headers on HEAD: %r" % r.headers
        if r.h("content-length") is not None:
            assert r.h("content-length").isdigit(), "Content-Length: %r" % r.headers
        c.silent(0.3, "no body after the answer to HEAD")
        # The same connection serves a GET next.
        c.send(b"GET /v1/info?g=1 HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
        r = c.response()
        eq(r.status, 200, "GET after HEAD")
        echo = r.json()
        eq((echo["method"], echo["query"]), ("GET", "g=1"), "the GET's own answer")
        # A HEAD the gateway answers itself (404): Content-Length of the JSON
        # it would send, no body; the connection goes on.
        c.send(b"HEAD /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.response(method="HEAD")
        eq(r.status, 404, "HEAD of no endpoint")
        assert int(r.h("content-length") or 0) > 0, \
            "the length of the JSON it would send: %r" % r.headers
        c.send(b"GET /v1/info?g=2 HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
        r = c.response()
        eq(r.status, 200, "GET after the 404 to HEAD")
        eq(r.json()["query"], "g=2", "the GET's own answer")
    finally:
        c.close()
    by_path = env.mock_stats()["by_path"]
    eq(by_path.get("/v1/info"), 3, "HEAD and two GETs reached the backend")


# ---- 8. pipelining --------------------------------------------------------

def test_pipelining_with_429(env):
    key = setup(env)
    tiny = env.keys["k_tiny"]
    eq(env.req("POST", "/v1/echo", key=tiny, body={}).status, 200, "the tiny key's one request")
    c = Client(env.port)
    try:
        # The first is slow at the backend, the second refused at once, the
        # third chunked: still answered in order.
        c.send(post("/v1/echo?n=1", key, "{}", extra=b"x-mock-delay-ms: 300\r\n") +
               post("/v1/echo?n=2", tiny, "{}") +
               b"POST /v1/echo?n=3 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
               key.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
        r1, r2, r3 = c.response(), c.response(), c.response()
        eq(r1.status, 200, "first")
        eq(r1.json()["query"], "n=1", "first answer is the first request's")
        err = assert_json_error(r2, 429, "RATE_LIMIT_EXCEEDED", "rate_limit_error")
        eq(err["details"]["limit"], 1, "the tiny limit")
        assert r2.h("retry-after"), "Retry-After on the 429: %r" % r2.headers
        eq(r3.status, 200, "third")
        eq(r3.json()["query"], "n=3", "third answer is the third request's")
        eq(r3.json()["body"], "{}", "third body")
        c.silent(0.3, "nothing more after the third answer")
    finally:
        c.close()
    eq(backend_requests(env), 3, "the 429 never reached the backend")


run([test_chunked_request_body, test_oversized_bodies, test_expect_continue,
     test_head_deadline_trickle, test_head_deadline_whole, test_body_gap,
     test_idle_connections, test_empty_lines_only, test_http10, test_connection_close_frees, test_refused_heads, test_head,
     test_pipelining_with_429])
