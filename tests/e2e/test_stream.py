"""Reconcile of streamed and non-streamed model answers, against backend.py
(Python's standard library answering as OpenAI- and Anthropic-style
services do), on the memory store and on a real redis-server:

 - an OpenAI-style stream with stream_include_usage: the backend is asked
   for the usage chunk, the client gets every chunk, the counter shows the
   real total tokens;
 - an Anthropic-style stream counted at input + output (a list of pointers);
 - X-Units-Used in a chunked answer's trailer;
 - usage over the limit is debt: used > limit, remaining 0, 429 until the
   window frees;
 - spend reconciled from a stream;
 - every reason a reconcile is missed, counted in /metrics and logged;
 - chunks reach the client before the stream ends;
 - a reconciled JSON answer's rate headers show the reconciled count;
 - bodies that stream_include_usage cannot read get 400, uncharged.
"""
import hashlib
import json
import re
import socket
import threading
import time

import backend
from harness import Proc, base_config, eq, for_both, free_port, request, run, wait_port

ADMIN_TOKEN = "stream-admin-token"


def handler_table(env):
    """A backend whose answer is chosen per request by the test: the
    X-Scenario request header names a function in env.scenarios."""
    def handler(req):
        name = req.header("X-Scenario") or "default"
        return env.scenarios[name](req)
    return handler


def setup(env, store, limits, openai_headers=False):
    """backend.py behind a gateway (memory store or a real Redis) with
    three reconcile endpoints:
      chat      /v1/chat/completions  /usage/total_tokens, stream_include_usage
      messages  /v1/messages          input (message_start) + output tokens
      gen       /v1/gen               X-Units-Used header or trailer
    each reserving max_tokens (default 16), priced 0.001 a unit."""
    env.scenarios = {}
    b = env.start_backend(handler_table(env))
    cfg = base_config(b.port, free_port())
    price = {"per_unit": "0.001"}
    cfg["endpoints"] = {
        "chat": {"method": "POST", "path": "/v1/chat/completions", "backend": "models",
                 "units": [{"pointer": "/max_tokens", "default": 16}],
                 "reconcile": {"response_pointer": "/usage/total_tokens",
                               "stream_include_usage": True},
                 "price": price},
        "messages": {"method": "POST", "path": "/v1/messages", "backend": "models",
                     "units": [{"pointer": "/max_tokens", "default": 16}],
                     "reconcile": {"response_pointer": ["/message/usage/input_tokens",
                                                        "/usage/output_tokens"]},
                     "price": price},
        "gen": {"method": "POST", "path": "/v1/gen", "backend": "models",
                "units": [{"pointer": "/max_tokens", "default": 16}],
                "reconcile": {"response_header": "X-Units-Used"},
                "price": price},
    }
    cfg["server"]["openai_headers"] = openai_headers
    cfg["tiers"] = {"t": {"limits": limits}}
    cfg["accounts"] = {"acme": {"tier": "t"}}
    cfg["admin"] = {"listen": "127.0.0.1:%d" % free_port(),
                    "token_sha256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()}
    if store == "redis":
        r = env.start_redis()
        cfg["storage"] = {"driver": "redis", "address": "127.0.0.1:%d" % r.port,
                          "timeout_ms": 500}
    env.add_key(cfg, "k", "acme")
    env.add_key(cfg, "k2", "acme")
    env.port = int(cfg["server"]["listen"].rsplit(":", 1)[1])
    env.config_path = env.write_config(cfg)
    env.gw = Proc([env.args.gateway, "-c", env.config_path, "--log-level", "debug"],
                  "gateway", env.dir)
    wait_port(env.port, env.gw.p)
    env.admin_port = int(cfg["admin"]["listen"].rsplit(":", 1)[1])
    wait_port(env.admin_port, env.gw.p)
    env.backend = b
    return cfg


def money_micros(v):
    """A spend amount from a usage answer in millionths, whether shown as
    millionths or as a decimal string ("0.300000")."""
    if isinstance(v, str):
        whole, _, frac = v.partition(".")
        return int(whole) * 1000000 + int((frac + "000000")[:6])
    return v


def usage(env, key="k"):
    r = env.req("GET", "/v1/usage", key=env.keys[key])
    eq(r.status, 200, "usage answer")
    return {(l["metric"], l["per"]): l for l in r.json()["limits"]}


def wait_used(env, metric, per, want, key="k", timeout=10):
    """Poll the usage answer until the counter shows want (reconcile is
    sent to the store before the answer ends, and applied by it soon
    after); fail loudly with what it shows at the deadline."""
    deadline = time.time() + timeout
    got = None
    while time.time() < deadline:
        got = usage(env, key)[(metric, per)]
        if money_micros(got["used"]) == want:
            return got
        time.sleep(0.02)
    raise AssertionError("%s/%s used never became %r: %r" % (metric, per, want, got))


def metrics_text(env):
    return request(env.admin_port, "GET", "/metrics").body.decode()


def missed_count(text, endpoint, reason):
    want = 'ratewall_reconcile_missed_total{endpoint="%s",reason="%s"} ' % (endpoint, reason)
    for line in text.splitlines():
        if line.startswith(want):
            return int(line[len(want):])
    return 0


def wait_missed(env, endpoint, reason, want, timeout=10):
    deadline = time.time() + timeout
    n = None
    while time.time() < deadline:
        n = missed_count(metrics_text(env), endpoint, reason)
        if n == want:
            return
        time.sleep(0.02)
    raise AssertionError("ratewall_reconcile_missed_total{%s,%s} is %r, expected %d:\n%s" % (
        endpoint, reason, n, want, metrics_text(env)))


def wait_log(env, *parts, timeout=10):
    """Until one line of the gateway's log holds every part."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in env.gw.output().splitlines():
            if all(p in line for p in parts):
                return line
        time.sleep(0.02)
    raise AssertionError("no log line with %r:\n%s" % (parts, env.gw.output()[-3000:]))


def sse_events(body):
    """The data of each event of a text/event-stream body."""
    out = []
    for block in body.decode().replace("\r\n", "\n").split("\n\n"):
        data = [l[5:].lstrip(" ") if l.startswith("data:") else None
                for l in block.split("\n")]
        data = [d for d in data if d is not None]
        if data:
            out.append("\n".join(data))
    return out


def chat(env, body, scenario, key="k", path="/v1/chat/completions"):
    return env.req("POST", path, key=env.keys[key], body=body,
                   headers={"X-Scenario": scenario})


SSE = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]


def openai_reply(prompt, completion):
    """Streams usage only when the request asked for it, as OpenAI does."""
    def reply(req):
        asked = ((req.json() or {}).get("stream_options") or {}).get("include_usage") is True
        return backend.Reply(headers=SSE, chunks=backend.openai_stream(
            prompt, completion, include_usage=asked))
    return reply


# ---- counted at the real tokens -------------------------------------------------


def openai_stream(env, store):
    setup(env, store, [{"metric": "units", "per": "minute", "limit": 10000}])
    env.scenarios["s"] = openai_reply(1200, 34)
    body = {"model": "gpt-4o", "stream": True, "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}],
            "stream_options": {"include_usage": False, "continuous_usage_stats": False}}
    r = chat(env, body, "s")
    eq(r.status, 200, "streamed chat call")
    eq(r.h("content-type"), "text/event-stream", "SSE passes through")
    got = env.backend.requests[-1]
    sent = got.json()
    eq(sent["stream_options"], {"include_usage": True, "continuous_usage_stats": False},
       "include_usage set true, the rest of stream_options kept")
    eq(int(got.header("Content-Length")), len(got.body), "Content-Length of the rewritten body")
    eq({k: v for k, v in sent.items() if k != "stream_options"},
       {k: v for k, v in body.items() if k != "stream_options"}, "the rest of the body")
    ev = sse_events(r.body)
    eq(len(ev), 5, "3 content chunks, the usage chunk and [DONE] reach the client: %r" % ev)
    eq(json.loads(ev[3])["usage"]["total_tokens"], 1234, "the usage chunk reached the client")
    eq(ev[4], "[DONE]", "the stream's end reached the client")
    u = wait_used(env, "units", "minute", 1234)
    eq(u["remaining"], 10000 - 1234, "remaining after the real tokens")
    # No stream_options at all: one is added.
    r = chat(env, {"stream": True, "max_tokens": 10}, "s")
    eq(r.status, 200, "second call")
    eq(env.backend.requests[-1].json()["stream_options"], {"include_usage": True},
       "stream_options added")
    wait_used(env, "units", "minute", 2468)
    # Not streamed ("stream" absent, false, or not the JSON true): the body
    # reaches the backend byte for byte.
    env.scenarios["j"] = lambda req: backend.Reply(body={"usage": {"total_tokens": 5}})
    for raw in ['{"stream": false,  "max_tokens": 3}', '{"stream": "true", "max_tokens": 3}',
                '{"max_tokens":3, "x": 0.7}']:
        r = env.req("POST", "/v1/chat/completions", key=env.keys["k"], body=raw,
                    headers={"X-Scenario": "j", "Content-Type": "application/json"})
        eq(r.status, 200, "not streamed: %s" % raw)
        eq(env.backend.requests[-1].body, raw.encode(), "body unchanged: %s" % raw)
    wait_used(env, "units", "minute", 2468 + 15)


def anthropic_stream(env, store):
    setup(env, store, [{"metric": "units", "per": "minute", "limit": 5000}])
    env.scenarios["a"] = lambda req: backend.Reply(
        headers=SSE, chunks=backend.anthropic_stream(1500, 321))
    r = chat(env, {"model": "claude", "stream": True, "max_tokens": 50}, "a",
             path="/v1/messages")
    eq(r.status, 200, "Anthropic-style stream")
    ev = sse_events(r.body)
    eq(json.loads(ev[-1])["type"], "message_stop", "the whole stream reached the client")
    eq(env.backend.requests[-1].json(), {"model": "claude", "stream": True, "max_tokens": 50},
       "no stream_include_usage on this endpoint: body as sent")
    u = wait_used(env, "units", "minute", 1821)
    eq(u["remaining"], 5000 - 1821, "input (message_start) + output (last message_delta)")


def trailer_header(env, store):
    """X-Units-Used sent as a trailer after the last chunk (libevent's
    client adds trailer fields to the answer's headers: the trailer's value
    is the last one and counts); in the head of a JSON answer too."""
    setup(env, store, [{"metric": "units", "per": "minute", "limit": 5000}])
    env.scenarios["t"] = lambda req: backend.Reply(
        headers=[("Content-Type", "application/octet-stream")],
        chunks=[b"part one,", 0.05, b"part two"], trailers=[("X-Units-Used", "777")])
    r = chat(env, {"max_tokens": 10}, "t", path="/v1/gen")
    eq((r.status, r.body), (200, b"part one,part two"), "chunked answer")
    wait_used(env, "units", "minute", 777)
    # A head value and a trailer value: the trailer's is the last seen.
    env.scenarios["h2"] = lambda req: backend.Reply(
        headers=[("X-Units-Used", "5")], chunks=[b"x"], trailers=[("X-Units-Used", "40")])
    eq(chat(env, {"max_tokens": 10}, "h2", path="/v1/gen").status, 200, "head and trailer")
    wait_used(env, "units", "minute", 817)
    env.scenarios["h"] = lambda req: backend.Reply(
        body={"ok": True}, headers=[("X-Units-Used", "3")])
    eq(chat(env, {"max_tokens": 10}, "h", path="/v1/gen").status, 200, "header in the head")
    wait_used(env, "units", "minute", 820)


def debt(env, store):
    """Usage past the limit is recorded (the counter shows the real use)
    and refuses until it is back under."""
    setup(env, store, [{"metric": "units", "per": "hour", "limit": 100, "endpoints": ["chat"]},
                       {"metric": "units", "per": "second", "limit": 100, "scope": "key",
                        "endpoints": ["messages"]}])
    env.scenarios["big"] = openai_reply(400, 100)
    r = chat(env, {"stream": True, "max_tokens": 10}, "big")
    eq(r.status, 200, "admitted at its estimate of 10")
    u = wait_used(env, "units", "hour", 500)
    eq(u["remaining"], 0, "remaining is 0, never negative, in debt")
    r = chat(env, {"stream": True, "max_tokens": 1}, "big")
    eq(r.status, 429, "refused while in debt")
    eq(r.json()["error"]["details"]["remaining"], 0, "429 details.remaining in debt")
    eq(r.h("x-ratelimit-remaining"), "0", "X-RateLimit-Remaining in debt")
    eq(money_micros(usage(env)[("units", "hour")]["used"]), 500, "the 429 charged nothing")
    # A second-window limit in debt frees with its window.
    env.scenarios["a"] = lambda req: backend.Reply(
        headers=SSE, chunks=backend.anthropic_stream(250, 50))
    k2 = "k2"
    r = chat(env, {"stream": True, "max_tokens": 1}, "a", key=k2, path="/v1/messages")
    eq(r.status, 200, "second-window stream")
    t_end = time.time()
    r = chat(env, {"stream": True, "max_tokens": 1}, "a", key=k2, path="/v1/messages")
    if time.time() - t_end < 0.5:
        eq(r.status, 429, "refused right after a stream used 300 of 100 a second")
        assert r.h("retry-after"), "a 429 in debt says when to retry: %r" % r
    deadline = time.time() + 15
    while r.status == 429 and time.time() < deadline:
        time.sleep(0.1)
        r = chat(env, {"stream": False, "max_tokens": 1}, "a", key=k2, path="/v1/messages")
    assert r.status != 429, "the second window never freed: %r" % r


def spend(env, store):
    setup(env, store, [{"metric": "spend", "per": "day", "limit": "1.00"}])
    env.scenarios["s"] = openai_reply(250, 50)
    r = chat(env, {"stream": True, "max_tokens": 10}, "s")
    eq(r.status, 200, "streamed")
    # 300 tokens at 0.001: 0.30, where the estimate was 0.01.
    u = wait_used(env, "spend", "day", 300000)
    eq(money_micros(u["remaining"]), 700000, "spend remaining")
    env.scenarios["big"] = openai_reply(1000, 500)
    eq(chat(env, {"stream": True, "max_tokens": 10}, "big").status, 200, "within the cap at 0.01")
    wait_used(env, "spend", "day", 1800000)
    r = chat(env, {"stream": True, "max_tokens": 1}, "s")
    eq((r.status, r.json()["error"]["code"]), (429, "SPEND_LIMIT_EXCEEDED"),
       "spend in debt refuses")


# ---- missed: the estimate stays --------------------------------------------------


def read_first_event(sock):
    """Bytes of a raw HTTP answer on sock up to the end of its first SSE
    event; fails at a deadline."""
    sock.settimeout(10)
    buf = b""
    while b"\n\n" not in buf.partition(b"\r\n\r\n")[2].replace(b"\r\n", b"\n"):
        d = sock.recv(65536)
        assert d, "the connection closed before the first event: %r" % buf
        buf += d
    return buf


def send_raw(env, path, body, scenario, key="k"):
    s = socket.create_connection(("127.0.0.1", env.port), timeout=10)
    data = json.dumps(body).encode()
    s.sendall(("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
               "X-Scenario: %s\r\nContent-Type: application/json\r\n"
               "Content-Length: %d\r\n\r\n" % (path, env.keys[key], scenario, len(data))).encode()
              + data)
    return s


def missed_reasons(env):
    setup(env, "memory", [{"metric": "units", "per": "minute", "limit": 100000}])
    estimate = 7
    spent = 0

    def stays(what):
        nonlocal spent
        spent += estimate
        # Let one reconciled call land after it: the missed one's count is
        # checked against it, so a late adjust cannot pass unseen.
        r = chat(env, {"max_tokens": 7}, "json1")
        eq(r.status, 200, "marker call after %s" % what)
        spent += 1
        wait_used(env, "units", "minute", spent)

    env.scenarios["json1"] = lambda req: backend.Reply(body={"usage": {"total_tokens": 1}})

    # client_gone: the client leaves after the first event.
    release = threading.Event()

    def held(req):
        ch = backend.openai_stream(900, 100)
        return backend.Reply(headers=SSE, chunks=[ch[0]] + [lambda: release.wait(10)] + ch[1:])
    env.scenarios["held"] = held
    s = send_raw(env, "/v1/chat/completions", {"stream": True, "max_tokens": estimate}, "held")
    head = read_first_event(s)
    rid = re.search(rb"(?i)x-request-id: *(\S+)", head).group(1).decode()
    s.close()
    wait_missed(env, "chat", "client_gone", 1)
    release.set()
    wait_log(env, rid, "client_gone")
    stays("client_gone")

    # cut: the backend closes mid-stream, without the last chunk.
    env.scenarios["cut"] = lambda req: backend.Reply(
        headers=SSE, chunks=backend.openai_stream(900, 100)[:2], cut=True)
    s = send_raw(env, "/v1/chat/completions", {"stream": True, "max_tokens": estimate}, "cut")
    s.settimeout(10)
    raw = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        raw += d
    s.close()
    assert not raw.endswith(b"0\r\n\r\n"), "a cut stream must not end as a whole one: %r" % raw
    wait_missed(env, "chat", "cut", 1)
    stays("cut")

    # no_usage: a stream without usage (the backend ignores include_usage),
    # and a JSON answer without it.
    env.scenarios["nousage"] = lambda req: backend.Reply(
        headers=SSE, chunks=backend.openai_stream(1, 1, include_usage=False))
    eq(chat(env, {"stream": True, "max_tokens": estimate}, "nousage").status, 200, "no usage")
    wait_missed(env, "chat", "no_usage", 1)
    stays("no_usage stream")
    env.scenarios["nousage_json"] = lambda req: backend.Reply(body={"usage": None})
    eq(chat(env, {"max_tokens": estimate}, "nousage_json").status, 200, "no usage JSON")
    wait_missed(env, "chat", "no_usage", 2)
    stays("no_usage JSON")
    # A list of pointers of which one never comes: usage not known.
    env.scenarios["half"] = lambda req: backend.Reply(
        headers=SSE, chunks=backend.anthropic_stream(100, 100)[:-2] + backend.sse(
            [("message_stop", {"type": "message_stop"})]))
    eq(chat(env, {"stream": True, "max_tokens": estimate}, "half", path="/v1/messages").status,
       200, "no message_delta")
    wait_missed(env, "messages", "no_usage", 1)
    stays("half the list")

    # too_large: a JSON answer over 1 MiB, an event over 1 MiB.
    pad = "x" * (1024 * 1024 + 10)
    env.scenarios["bigjson"] = lambda req: backend.Reply(
        body={"pad": pad, "usage": {"total_tokens": 1}})
    r = chat(env, {"max_tokens": estimate}, "bigjson")
    eq((r.status, len(r.body) > 1024 * 1024), (200, True), "large JSON answer passes whole")
    wait_missed(env, "chat", "too_large", 1)
    stays("too_large JSON")
    env.scenarios["bigevent"] = lambda req: backend.Reply(headers=SSE, chunks=backend.sse(
        [{"pad": pad, "usage": None}, {"usage": {"total_tokens": 1}}, "[DONE]"]))
    r = chat(env, {"stream": True, "max_tokens": estimate}, "bigevent")
    eq(len(sse_events(r.body)), 3, "every event reaches the client")
    wait_missed(env, "chat", "too_large", 2)
    stays("too_large event")

    # invalid: 1e14 tokens (above the cap of 2^40: not plausible), a
    # negative count, a string, an unreadable object event, a bad header.
    for n, (scenario, reply) in enumerate([
            ("huge", lambda req: backend.Reply(headers=SSE, chunks=backend.sse(
                [{"usage": {"total_tokens": 100000000000000}}, "[DONE]"]))),
            ("hugereal", lambda req: backend.Reply(body='{"usage": {"total_tokens": 1e14}}')),
            ("negative", lambda req: backend.Reply(body={"usage": {"total_tokens": -5}})),
            ("string", lambda req: backend.Reply(body={"usage": {"total_tokens": "12"}})),
            ("garbled", lambda req: backend.Reply(headers=SSE, chunks=[
                b"data: {\"usage\": {\"total_tokens\": 3}}\n\n", b"data: {\"usage\": \n\n"])),
            ("dup", lambda req: backend.Reply(
                body='{"usage": {"total_tokens": 1, "total_tokens": 2}}')),
    ]):
        env.scenarios[scenario] = reply
        r = chat(env, {"stream": True, "max_tokens": estimate}, scenario)
        eq(r.status, 200, "status of scenario %s" % scenario)
        wait_missed(env, "chat", "invalid", n + 1)
        if scenario == "huge":
            wait_log(env, r.h("x-request-id"), "invalid", "cap")
        stays("invalid " + scenario)
    env.scenarios["badheader"] = lambda req: backend.Reply(
        body=b"ok", headers=[("X-Units-Used", "12abc")])
    eq(chat(env, {"max_tokens": estimate}, "badheader", path="/v1/gen").status, 200,
       "bad header")
    wait_missed(env, "gen", "invalid", 1)
    env.scenarios["noheader"] = lambda req: backend.Reply(body=b"ok")
    eq(chat(env, {"max_tokens": estimate}, "noheader", path="/v1/gen").status, 200,
       "no header")
    wait_missed(env, "gen", "no_usage", 1)
    spent += 2 * estimate
    wait_used(env, "units", "minute", spent)


def chunks_early(env):
    """The first event reaches the client while the backend still holds the
    last one: nothing is held back to read usage."""
    setup(env, "memory", [{"metric": "units", "per": "minute", "limit": 100000}])
    release = threading.Event()

    def held(req):
        ch = backend.openai_stream(40, 2)
        return backend.Reply(headers=SSE, chunks=[ch[0]] + [lambda: release.wait(20)] + ch[1:])
    env.scenarios["held"] = held
    s = send_raw(env, "/v1/chat/completions", {"stream": True, "max_tokens": 5}, "held")
    first = read_first_event(s)
    assert not release.is_set(), "the backend was released before the first event arrived"
    assert b"tok0" in first, "the first content chunk arrived first: %r" % first
    release.set()
    rest = b""
    s.settimeout(10)
    while not rest.endswith(b"0\r\n\r\n"):
        d = s.recv(65536)
        assert d, "closed before the stream's end: %r" % rest
        rest += d
    s.close()
    assert b'"total_tokens": 42' in rest, "usage chunk after the release: %r" % rest
    wait_used(env, "units", "minute", 42)


def json_headers(env, store):
    """A non-streamed JSON answer's rate headers show the reconciled count
    (its head waits for the whole body); a streamed one's show the
    estimate (its head left before the usage)."""
    setup(env, store, [{"metric": "units", "per": "minute", "limit": 1000}],
          openai_headers=True)
    env.scenarios["j"] = lambda req: backend.Reply(
        body={"choices": [{"message": {"content": "hi"}}], "usage": {"total_tokens": 10}})
    r = chat(env, {"max_tokens": 100}, "j")
    eq(r.status, 200, "JSON answer")
    eq(r.h("x-ratelimit-remaining"), "990", "X-RateLimit-Remaining after the reconcile")
    eq(r.h("x-ratelimit-remaining-tokens"), "990", "x-ratelimit-remaining-tokens too")
    wait_used(env, "units", "minute", 10)
    env.scenarios["s"] = openai_reply(15, 5)
    r = chat(env, {"stream": True, "max_tokens": 100}, "s")
    eq(r.h("x-ratelimit-remaining"), "890", "a stream's head shows the estimate charged")
    wait_used(env, "units", "minute", 30)


def bad_bodies(env):
    """On a stream_include_usage endpoint the body is read as JSON: an
    unreadable one, or one repeating a member name, gets 400 and is not
    charged or forwarded."""
    setup(env, "memory", [{"metric": "requests", "per": "minute", "limit": 100}])
    env.scenarios["j"] = lambda req: backend.Reply(body={"usage": {"total_tokens": 1}})
    for raw in ['{"stream": true,', 'not json', '',
                '{"stream": true, "stream": false}',
                '{"stream": true, "stream_options": {"include_usage": false, '
                '"include_usage": true}}',
                '{"messages": [{"role": "user", "role": "system"}], "stream": true}']:
        r = env.req("POST", "/v1/chat/completions", key=env.keys["k"], body=raw,
                    headers={"X-Scenario": "j"})
        eq((r.status, r.json()["error"]["code"]), (400, "INVALID_BODY"), "body %r" % raw)
    eq(len(env.backend.requests), 0, "no refused body reached the backend")
    eq(usage(env)[("requests", "minute")]["used"], 0, "no refused body was charged")


run(for_both(openai_stream) + for_both(anthropic_stream) + for_both(trailer_header) +
    for_both(debt) + for_both(spend) + for_both(json_headers) +
    [missed_reasons, chunks_early, bad_bodies])
