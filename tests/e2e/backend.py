"""A backend that behaves like real model services, for the tests that must
not only talk to our own mock-backend (which shares libevent's parsers
with the gateway, and whose habits the gateway could come to rely on).

Written on Python's standard library alone, as many real backends are:
 - the query is parsed by urllib.parse.parse_qs: names are case-sensitive
   and percent-decoded, every repeat is kept (a handler picks the first, as
   Flask, Django and Starlette do, or the last);
 - the path is percent-decoded as WSGI (PEP 3333) and Go's net/http do;
 - answers can be JSON, streamed chunk by chunk (server-sent events with
   usage in the last events, as OpenAI and Anthropic send them), chunked
   with a trailer, or ended by closing the connection;
 - an idle keep-alive connection is closed after `idle_timeout` seconds.

A test gives a handler(req) -> Reply; every request is recorded in
`requests`, in arrival order. The server runs in a thread of the test
process and stops with Env.close().
"""
import http.server
import json
import socketserver
import threading
import time
import urllib.parse


class Req:
    def __init__(self, method, target, headers, body):
        self.method = method
        self.target = target                  # as received
        raw_path, _, self.raw_query = target.partition("?")
        self.raw_path = raw_path
        self.path = urllib.parse.unquote(raw_path)   # as WSGI decodes it
        self.query = urllib.parse.parse_qs(self.raw_query, keep_blank_values=True)
        self.headers = headers                # [(name, value)] as received
        self.body = body

    def header(self, name):
        """The first header of that name, compared case-insensitively."""
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_names(self):
        return [k for k, _ in self.headers]

    def arg(self, name):
        """The first value of a query parameter, by its exact name."""
        v = self.query.get(name)
        return v[0] if v else None

    def json(self):
        return json.loads(self.body) if self.body else None


class Reply:
    """status, headers [(name, value)], and one of: body (bytes or a JSON
    value), chunks (an iterable of bytes, each sent as one chunk as it is
    produced; a float in it sleeps that long; a callable in it is called,
    e.g. to wait until the test lets the answer go on), with trailers
    [(name, value)] after the last chunk. close_delimited: no length, no
    chunking, the end of the body is the connection's close. cut: the
    connection is closed after the chunks, without the final chunk. raw:
    these bytes and nothing else (for answers no library would send).
    close_after: the connection is closed after the answer without a
    Connection: close (as a server that drops keep-alive connections)."""

    def __init__(self, status=200, body=b"", headers=(), chunks=None, trailers=(),
                 close_delimited=False, cut=False, raw=None, close_after=False):
        self.status = status
        self.headers = list(headers)
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            self.headers.append(("Content-Type", "application/json"))
        self.body = body.encode() if isinstance(body, str) else body
        self.chunks = chunks
        self.trailers = list(trailers)
        self.close_delimited = close_delimited
        self.cut = cut
        self.raw = raw                  # bytes sent as they are, instead of all the above
        self.close_after = close_after  # close the connection after the answer, unannounced


def sse(events):
    """Server-sent events: each event a dict (sent as data: JSON), a str
    (sent as is after data:), or a (event_name, dict) pair."""
    out = []
    for e in events:
        if isinstance(e, tuple):
            out.append(("event: %s\ndata: %s\n\n" % (e[0], json.dumps(e[1]))).encode())
        elif isinstance(e, str):
            out.append(("data: %s\n\n" % e).encode())
        else:
            out.append(("data: %s\n\n" % json.dumps(e)).encode())
    return out


def openai_stream(prompt_tokens, completion_tokens, include_usage=True, pieces=3):
    """An OpenAI chat completion stream: content chunks, then (when the
    request asked for stream_options.include_usage) a last chunk with empty
    choices and the usage, then [DONE]."""
    ev = []
    for i in range(pieces):
        ev.append({"id": "chatcmpl-1", "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": {"content": "tok%d " % i}}],
                   "usage": None})
    if include_usage:
        ev.append({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
                   "usage": {"prompt_tokens": prompt_tokens,
                             "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens}})
    ev.append("[DONE]")
    return sse(ev)


def anthropic_stream(input_tokens, output_tokens, pieces=3):
    """An Anthropic Messages stream: input tokens in message_start, the
    output tokens (cumulative) in the last message_delta."""
    ev = [("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "content": [],
        "usage": {"input_tokens": input_tokens, "output_tokens": 1}}})]
    ev.append(("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}))
    for i in range(pieces):
        ev.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": "w%d" % i}}))
    ev.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    ev.append(("message_delta", {"type": "message_delta",
                                 "delta": {"stop_reason": "end_turn"},
                                 "usage": {"output_tokens": output_tokens}}))
    ev.append(("message_stop", {"type": "message_stop"}))
    return sse(ev)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class Backend:
    def __init__(self, port, handler, idle_timeout=None):
        self.port = port
        self.handler = handler
        self.requests = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.connections = 0   # accepted so far
        self.closed = 0        # closed so far (by either side, or idle_timeout)
        backend = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = idle_timeout

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                with backend.lock:
                    backend.connections += 1

            def _serve(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                req = Req(self.command, self.path, list(self.headers.items()), body)
                with backend.lock:
                    backend.requests.append(req)
                    backend.in_flight += 1
                try:
                    rep = backend.handler(req)
                    self._send(rep)
                finally:
                    with backend.lock:
                        backend.in_flight -= 1

            def _send(self, rep):
                if rep.close_after:
                    self.close_connection = True
                if rep.raw is not None:
                    self.wfile.write(rep.raw)
                    self.wfile.flush()
                    return
                self.send_response(rep.status)
                for k, v in rep.headers:
                    self.send_header(k, v)
                if rep.chunks is None and not rep.close_delimited:
                    self.send_header("Content-Length", str(len(rep.body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(rep.body)
                    return
                if rep.close_delimited:
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    for c in ([rep.body] if rep.chunks is None else rep.chunks):
                        if isinstance(c, float):
                            time.sleep(c)
                            continue
                        if callable(c):
                            c()
                            continue
                        self.wfile.write(c)
                        self.wfile.flush()
                    return
                self.send_header("Transfer-Encoding", "chunked")
                if rep.trailers:
                    self.send_header("Trailer", ", ".join(k for k, _ in rep.trailers))
                self.end_headers()
                for c in rep.chunks:
                    if isinstance(c, float):
                        time.sleep(c)
                        continue
                    if callable(c):
                        c()
                        continue
                    if c:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(c), c))
                        self.wfile.flush()
                if rep.cut:
                    self.close_connection = True
                    return
                self.wfile.write(b"0\r\n")
                for k, v in rep.trailers:
                    self.wfile.write(("%s: %s\r\n" % (k, v)).encode())
                self.wfile.write(b"\r\n")
                self.wfile.flush()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

        class S(_Server):
            def shutdown_request(self, request):
                super().shutdown_request(request)  # the socket is closed now
                with backend.lock:
                    backend.closed += 1

        self.server = S(("127.0.0.1", port), H)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def wait_closed(self, n=1, timeout=10):
        """Until n connections have ended; fails if they never do."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if self.closed >= n:
                    return
            time.sleep(0.01)
        raise AssertionError("backend saw %d connections end, not %d" % (self.closed, n))

    def wait_busy(self, n=1, timeout=10):
        """Until n requests are being answered; fails if they never are."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if self.in_flight >= n:
                    return
            time.sleep(0.01)
        raise AssertionError("backend never held %d requests (holds %d)" % (n, self.in_flight))
