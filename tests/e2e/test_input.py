"""Nothing a client sends walks past a limit: units that cannot be zero or
negative, bodies that repeat a member, paths spelt so that a backend runs
another endpoint than the one counted, identity headers spelt with `_`,
two gateways sharing one port, and what the answers say (Retry-After on a
request that can never pass, money in usage, counters a reload restarts).

Every backend here is tests/e2e/backend.py (Python's standard library): it
decodes paths as WSGI does, and keeps every header as it was received."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse

from backend import Reply
from harness import Proc, base_config, eq, for_both, free_port, redis_cli, request, run, wait_port


ADMIN_TOKEN = "input-admin-token"


def echo(req):
    return Reply(200, {"ok": True})


def setup(env, limits, store="memory", handler=echo, endpoints=None, admin=False,
          extra_keys=()):
    """A gateway in front of a backend.py backend; key "k" of account "acme"
    on tier "t" with `limits`. Returns (cfg, backend)."""
    be = env.start_backend(handler)
    cfg = base_config(be.port, free_port())
    if endpoints:
        cfg["endpoints"].update(endpoints)
    cfg["tiers"]["t"] = {"limits": limits}
    cfg["accounts"] = {"acme": {"tier": "t"}}
    if store == "redis":
        r = env.start_redis()
        cfg["storage"] = {"driver": "redis", "address": "127.0.0.1:%d" % r.port,
                          "timeout_ms": 500}
    if admin:
        cfg["admin"] = {"listen": "127.0.0.1:%d" % free_port(),
                        "token_sha256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()}
    env.add_key(cfg, "k", "acme")
    for k in extra_keys:
        env.add_key(cfg, *k)
    env.start_gateway(cfg)
    if admin:
        wait_port(int(cfg["admin"]["listen"].rsplit(":", 1)[1]), env.gw.p)
    return cfg, be


def raw_post(env, path, body, key):
    """POST a body given as raw text (for -0, repeated members)."""
    return request(env.port, "POST", path, body=body,
                   headers={"Authorization": "Bearer " + key,
                            "Content-Type": "application/json"})


def usage_of(env, key, metric, per):
    r = env.req("GET", "/v1/usage", key=key)
    eq(r.status, 200, "usage answer %r" % r)
    for l in r.json()["limits"]:
        if l["metric"] == metric and l["per"] == per:
            return l
    raise AssertionError("no %s/%s limit in usage %r" % (metric, per, r.json()))


def wait_for(pred, what, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))


# ---------------------------------------------------------------- units

def units_never_free(env, store):
    cfg, be = setup(env, [
        {"metric": "units", "per": "minute", "limit": 3, "endpoints": ["txt2img"]}], store)
    key = env.keys["k"]
    # Refused bodies first: none of them is charged or reaches the backend.
    bad = [
        ('{"image_num": -1}', "a negative number"),
        ('{"image_num": -0.5}', "a negative fraction"),
        ('{"image_num": -1e-9}', "a tiny negative fraction"),
        ('{"image_num": 1, "image_num": 0}', "a repeated member"),
        ('{"image_num": 1, "opts": {"seed": 1, "seed": 2}}', "a repeated nested member"),
        ('[{"a": 1, "a": 1}]', "a repeated member inside an array"),
        ('{"image_num": "two"}', "a string"),
        ('{"image_num": 1', "not JSON"),
    ]
    for body, what in bad:
        r = raw_post(env, "/v3/txt2img", body, key)
        eq(r.status, 400, "%s (%s): status of %r" % (what, body, r))
        eq(r.json()["error"]["code"], "INVALID_BODY", "%s: code" % what)
    eq(len(be.requests), 0, "the backend saw none of the refused bodies")
    eq(usage_of(env, key, "units", "minute")["used"], 0, "nothing charged for refused bodies")
    # 0, -0 and -0.0 are zero, and zero counts as the factor's min (1).
    for body, left in (('{"image_num": 0}', "2"), ('{"image_num": -0}', "1"),
                       ('{"image_num": -0.0}', "0")):
        r = raw_post(env, "/v3/txt2img", body, key)
        eq(r.status, 200, "%s admitted while room is left: %r" % (body, r))
        eq(r.h("x-ratelimit-remaining"), left, "remaining after %s (one unit each)" % body)
    # The window is spent: zero units do not pass it.
    r = raw_post(env, "/v3/txt2img", '{"image_num": 0}', key)
    eq(r.status, 429, "image_num 0 on a spent units limit: %r" % r)
    eq(len(be.requests), 3, "the backend ran exactly the 3 admitted requests")
    eq(usage_of(env, key, "units", "minute")["used"], 3, "units used")


test_units_never_free = for_both(units_never_free)


def test_units_min_and_rounding(env):
    endpoints = {
        "frac": {"method": "POST", "path": "/v3/frac", "backend": "models",
                 "units": [{"pointer": "/a", "default": 1, "min": 0},
                           {"pointer": "/b", "default": 1}]},
        "floor": {"method": "POST", "path": "/v3/floor", "backend": "models",
                  "units": [{"pointer": "/n", "default": 1, "min": 4}]},
    }
    setup(env, [{"metric": "units", "per": "minute", "limit": 100, "endpoints": ["frac"]},
                {"metric": "units", "per": "minute", "limit": 10, "endpoints": ["floor"]}],
          endpoints=endpoints)
    key = env.keys["k"]
    left = 100
    # product of the factors, rounded up once at the end
    for body, cost in (({"a": 0.1, "b": 30}, 3),   # 3.0000000000000004 in binary: 3
                       ({"a": 0.5, "b": 3}, 2),    # 1.5 -> 2 (not 1 * 3)
                       ({"a": 0.0001}, 1),         # a fraction of a unit costs one
                       ({"a": 0, "b": 7}, 0),      # min 0: zero is allowed to be free
                       ({"a": 2.5, "b": 2}, 5)):
        r = env.req("POST", "/v3/frac", key=key, body=body)
        eq(r.status, 200, "%r admitted: %r" % (body, r))
        left -= cost
        eq(r.h("x-ratelimit-remaining"), str(left), "%r costs %d units" % (body, cost))
    # min 4: 1 counts as 4, 0 and absent too (the default 1 is below min).
    for body, left in (({"n": 1}, "6"), ({"n": 0}, "2")):
        r = env.req("POST", "/v3/floor", key=key, body=body)
        eq((r.status, r.h("x-ratelimit-remaining")), (200, left), "%r counts as 4" % body)
    r = env.req("POST", "/v3/floor", key=key, body={})
    eq(r.status, 429, "absent n counts as min 4, more than the 2 left: %r" % r)


def test_units_saturate(env):
    setup(env, [{"metric": "units", "per": "minute", "limit": 1000000,
                 "endpoints": ["txt2img"]}])
    key = env.keys["k"]
    for body in ('{"image_num": 1e300}', '{"image_num": 9007199254740993}'):
        r = raw_post(env, "/v3/txt2img", body, key)
        eq(r.status, 429, "%s: far more than the limit alone: %r" % (body, r))
        eq(r.h("x-should-retry"), "false", "%s: never retry" % body)
    eq(usage_of(env, key, "units", "minute")["used"], 0, "nothing charged")


# ---------------------------------------------------------------- Retry-After

def cached_refusals(cfg):
    port = int(cfg["admin"]["listen"].rsplit(":", 1)[1])
    text = request(port, "GET", "/metrics").body.decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith("ratewall_decisions_total{") and 'outcome="refused_cached"' in l)


def retry_after_never(env, store):
    cfg, be = setup(env, [
        {"metric": "units", "per": "minute", "limit": 3, "endpoints": ["txt2img"]},
        {"metric": "requests", "per": "minute", "limit": 2, "endpoints": ["img2img"]},
        {"metric": "requests", "per": "minute", "limit": 0, "endpoints": ["echo"]}], store,
        admin=True)
    key = env.keys["k"]
    # Larger than the limit alone (5 units > 3; 1 request > 0): no moment
    # to retry at exists. The echo refusal is kept by the deny cache (one
    # per worker: of 3 requests over 2 workers, one at least is answered
    # from it), and what it answers must say the same.
    cases = [("/v3/txt2img", {"image_num": 5}, "5 units over a limit of 3")] + \
        [("/v1/echo", {}, "a request over a limit of 0 (#%d)" % i) for i in range(3)]
    for path, body, what in cases:
        r = env.req("POST", path, key=key, body=body)
        eq(r.status, 429, "%s: %r" % (what, r))
        eq((r.h("retry-after"), r.h("retry-after-ms")), (None, None),
           "%s: no Retry-After, no retry-after-ms" % what)
        eq(r.h("x-should-retry"), "false", "%s: x-should-retry" % what)
        assert "can never be admitted" in r.json()["error"]["message"], \
            "the 429 says it can never pass: %r" % r.json()
    assert cached_refusals(cfg) >= 1, "the deny cache answered one of the echo refusals"
    # A refusal that can pass later still names its moment, from the store
    # and from the deny cache alike.
    for _ in range(2):
        eq(env.req("POST", "/v3/img2img", key=key, body={}).status, 200, "within 2/minute")
    for i in range(3):
        r = env.req("POST", "/v3/img2img", key=key, body={})
        eq(r.status, 429, "third request in the minute (#%d)" % i)
        assert 1 <= int(r.h("retry-after")) <= 61, "Retry-After %r" % r.h("retry-after")
        assert 1 <= int(r.h("retry-after-ms")) <= 61000, "retry-after-ms within the window: %r" % r.headers
        eq(r.h("x-should-retry"), None, "a minute limit invites the retry")


test_retry_after_never = for_both(retry_after_never)


# ---------------------------------------------------------------- paths

def lenient(path):
    """What the most lenient backends make of a decoded path: repeated
    slashes merged, ;params cut from every segment, a trailing slash
    ignored, matched case-insensitively."""
    segs = [s.split(";", 1)[0] for s in path.split("/")]
    p = "/" + "/".join(s for s in segs if s)
    return p.lower()


TXT2IMG_SPELLINGS = [
    "/v3/txt2img", "/v3/%74xt2img", "/v3/%74%78%74%32%69%6d%67", "/v3/txt2im%67",
    "/v3//txt2img", "//v3/txt2img", "/v3/txt2img/", "/v3/txt2img//", "/v3/txt2img;x=1",
    "/v3;a=b/txt2img", "/v3/TXT2IMG", "/V3/TxT2ImG/", "/v3/./txt2img", "/v3/foo/../txt2img",
    "/v3/txt2img?x=1", "/v3/%54XT2IMG;v=2/",
]

REFUSED_PATHS = [
    "/v3/%2e%2e/txt2img", "/v3/%2E/txt2img", "/v3%2ftxt2img", "/v3/txt2img%2F",
    "/v3/%5ctxt2img", "/v3\\txt2img", "/v3/txt2img%00", "/v3/..;/txt2img",
    "/v3/.;x/txt2img", "/v3/%zz", "/v3/txt2img%4",
]


def test_path_spellings(env):
    cfg, be = setup(env, [
        {"metric": "requests", "per": "minute", "limit": 3, "endpoints": ["txt2img"]}],
        endpoints={"v3_rest": {"method": "POST", "path_prefix": "/v3/", "backend": "models"}})
    key = env.keys["k"]
    statuses = []
    for p in TXT2IMG_SPELLINGS * 2:
        r = env.req("POST", p, key=key, body={"image_num": 1})
        statuses.append((p, r.status))
        assert r.status in (200, 429), "%s: %r" % (p, r)
    admitted = [p for p, s in statuses if s == 200]
    ran = [q.path for q in be.requests if lenient(q.path) == "/v3/txt2img"]
    eq(len(admitted), 3, "every spelling of txt2img counts on its limit of 3 (%r)" % statuses)
    assert len(ran) <= 3, "a decoding, lenient backend ran txt2img %d times against a " \
        "limit of 3: %r" % (len(ran), ran)
    eq(len(be.requests), 3, "the backend got only the admitted requests")
    # Spellings that mean another path behind a decoding backend: refused.
    for p in REFUSED_PATHS:
        r = env.req("POST", p, key=key, body={"image_num": 1})
        eq(r.status, 400, "%s refused: %r" % (p, r))
        eq(r.json()["error"]["code"], "INVALID_REQUEST", "%s: code" % p)
    # A raw NUL (or any control byte) in the target: refused by the HTTP layer.
    for target in (b"/v3/txt2img\x00", b"/v3/\x00/txt2img", b"/v3/txt2img\x01"):
        with socket.create_connection(("127.0.0.1", env.port), timeout=10) as s:
            s.sendall(b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                      key.encode() + b"\r\nContent-Length: 2\r\n\r\n{}")
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        assert data.startswith(b"HTTP/1.1 400 "), "%r refused: %r" % (target, data[:200])
    eq(len(be.requests), 3, "no refused path reached the backend")


def test_path_forwarded_normalized(env):
    cfg, be = setup(env, [], endpoints={
        "v3_rest": {"method": "POST", "path_prefix": "/v3/", "backend": "models"}})
    key = env.keys["k"]
    cases = [
        ("/v3/%74xt2img", "/v3/txt2img"),
        ("/v3/%7euser/%41-%5F.x", "/v3/~user/A-_.x"),
        ("/v3//a///b/", "/v3/a/b/"),
        ("/v3/a/./b/../c", "/v3/a/c"),
        ("/v3/a%2ab%c3%a9", "/v3/a%2Ab%C3%A9"),     # other encodings stay, upper-cased
        ("/v3/Mixed;p=1/Case", "/v3/Mixed;p=1/Case"),  # case and params go as sent
        ("/v3/q?x=%74&y=1", "/v3/q"),
    ]
    for sent, want in cases:
        n = len(be.requests)
        r = env.req("POST", sent, key=key, body={})
        eq(r.status, 200, "%s: %r" % (sent, r))
        eq(len(be.requests), n + 1, "%s reached the backend once" % sent)
        eq(be.requests[-1].raw_path, want, "path the backend received for %s" % sent)
    eq(be.requests[-1].raw_query, "x=%74&y=1", "the query goes through untouched")
    # ".." never climbs above the root, and routing sees what the backend sees.
    r = env.req("POST", "/v3/../../v3/ok", key=key, body={})
    eq(r.status, 200, "climbing at the root stays at the root: %r" % r)
    eq(be.requests[-1].raw_path, "/v3/ok", "the backend got the resolved path")
    r = env.req("POST", "/v3/../v1/echo2", key=key, body={})
    eq(r.status, 404, "/v3/../v1/echo2 is /v1/echo2, not under the /v3/ prefix: %r" % r)


# ---------------------------------------------------------------- headers

def dash(name):
    return name.replace("_", "-").lower()


def test_underscore_headers(env):
    def handler(req):
        return Reply(200, {"ok": True}, headers=[
            ("X_RateLimit_Remaining", "999"), ("X_RateLimit_Limit", "999"),
            ("X-RateLimit-Remaining", "998"), ("X_Request_Id", "fake-id"),
            ("Retry_After", "0"), ("X_Should_Retry", "true"),
            ("X_Custom_Back", "fine"), ("X-Plain-Back", "fine too")])
    cfg, be = setup(env, [{"metric": "requests", "per": "minute", "limit": 50}],
                    handler=handler, extra_keys=[("victim_key", "acme")])
    key = env.keys["k"]
    spoof = [("X_Gateway_Key_Id", "victim_key"), ("X_Gateway_Account", "victim"),
             ("X_Request_Id", "spoofed"), ("X_Forwarded_For", "10.9.9.9"),
             ("X-Gateway-Extra", "spoofed"), ("X_Gateway_Anything", "spoofed"),
             ("X_API_Key", env.keys["victim_key"]), ("X_Backend_Token", "client-token"),
             ("x-backend_token", "client-token-2"), ("Proxy_Authorization", "Basic eA=="),
             ("Keep_Alive", "timeout=1"), ("Content_Length", "0"),
             ("X_Client_Thing", "kept"), ("X-Other", "kept too")]
    conn = __import__("http.client").client.HTTPConnection("127.0.0.1", env.port, timeout=30)
    conn.putrequest("POST", "/v1/echo")
    conn.putheader("Authorization", "Bearer " + key)
    for k, v in spoof:
        conn.putheader(k, v)
    conn.putheader("Content-Length", "2")
    conn.endheaders(b"{}")
    resp = conn.getresponse()
    body = resp.read()
    rh = resp.getheaders()
    conn.close()
    eq(resp.status, 200, "admitted: %r" % body)
    eq(len(be.requests), 1, "one request reached the backend")
    got = be.requests[0].headers
    by = {}
    for k, v in got:
        by.setdefault(dash(k), []).append((k, v))
    eq([v for _, v in by.get("x-gateway-key-id", [])], ["k"], "key id as the gateway set it")
    eq([v for _, v in by.get("x-gateway-account", [])], ["acme"], "account")
    eq([v for _, v in by.get("x-forwarded-for", [])], ["127.0.0.1"], "X-Forwarded-For")
    eq([v for _, v in by.get("x-backend-token", [])], ["backend-secret"],
       "the configured backend header only")
    eq(len(by.get("x-request-id", [])), 1, "one X-Request-Id")
    assert by["x-request-id"][0][1] != "spoofed", "the client's X_Request_Id dropped: %r" % got
    for name in ("x-gateway-extra", "x-gateway-anything", "x-api-key", "proxy-authorization",
                 "keep-alive"):
        eq(by.get(name), None, "%s (any spelling) dropped" % name)
    eq([k for k, _ in by.get("content-length", [])], ["Content-Length"],
       "only the gateway's Content-Length")
    eq(by.get("x-client-thing"), [("X_Client_Thing", "kept")], "other underscore headers kept")
    eq(by.get("x-other"), [("X-Other", "kept too")], "other headers kept")
    for k, v in got:
        assert env.keys["victim_key"] not in v and key not in v, "a client key reached " \
            "the backend in %s" % k
    # On the way back: no spelling of the gateway's own headers from the backend.
    names = [k for k, _ in rh]
    low = {}
    for k, v in rh:
        low.setdefault(dash(k), []).append((k, v))
    eq([v for _, v in low.get("x-ratelimit-remaining", [])], ["49"],
       "X-RateLimit-Remaining is the gateway's alone (%r)" % names)
    eq([v for _, v in low.get("x-ratelimit-limit", [])], ["50"], "X-RateLimit-Limit")
    eq(len(low.get("x-request-id", [])), 1, "one X-Request-Id (%r)" % names)
    assert low["x-request-id"][0][1] != "fake-id", "the backend's X_Request_Id dropped: %r" % rh
    for name in ("retry-after", "x-should-retry"):
        eq(low.get(name), None, "%s from the backend dropped (%r)" % (name, names))
    eq(low.get("x-custom-back"), [("X_Custom_Back", "fine")], "other backend headers kept")
    eq(low.get("x-plain-back"), [("X-Plain-Back", "fine too")], "plain backend headers kept")


# ---------------------------------------------------------------- listener

def second_gateway(env, cfg):
    path = env.write_config(cfg, "second.json")
    return Proc([env.args.gateway, "-c", path], "gateway-second", env.dir)


def test_one_port_memory_refused(env):
    cfg, be = setup(env, [{"metric": "requests", "per": "minute", "limit": 3}])
    key = env.keys["k"]
    second = second_gateway(env, cfg)
    wait_for(lambda: second.p.poll() is not None, "the second gateway to exit")
    assert second.p.returncode != 0, "second gateway exited %s" % second.p.returncode
    out = second.output()
    assert "already listens on 127.0.0.1:%d" % env.port in out and "refusing to start" in out, \
        "second gateway's message: %r" % out[-2000:]
    # The first one still serves, alone: 3 of 10 pass its 3/minute.
    codes = [env.req("POST", "/v1/echo", key=key, body={}).status for _ in range(10)]
    eq(codes.count(200), 3, "the first gateway counts every request: %r" % codes)
    eq(codes.count(429), 7, "the rest refused: %r" % codes)


def test_one_port_redis_shared(env):
    cfg, be = setup(env, [{"metric": "requests", "per": "minute", "limit": 3}], "redis")
    key = env.keys["k"]
    second = second_gateway(env, cfg)
    try:
        wait_for(lambda: "sharing the port" in second.output() or second.p.poll() is not None,
                 "the second gateway's start")
        eq(second.p.poll(), None, "the Redis-backed second gateway runs: %r" %
           second.output()[-2000:])
        assert "already listens on 127.0.0.1:%d" % env.port in second.output(), \
            "the second gateway logs that it shares the port: %s" % second.output()[-2000:]
        codes = []
        for _ in range(10):  # new connections, spread over both by the kernel
            codes.append(env.req("POST", "/v1/echo", key=key, body={}).status)
        eq(codes.count(200), 3, "shared counters: 3 of 10 pass a 3/minute limit: %r" % codes)
    finally:
        second.stop()


def test_restart_after_crash(env):
    cfg, be = setup(env, [{"metric": "requests", "per": "minute", "limit": 100}])
    key = env.keys["k"]
    # Connections the gateway closes first leave TIME_WAIT on its port.
    for _ in range(5):
        r = env.req("POST", "/v1/echo", key=key, body={}, headers={"Connection": "close"})
        eq(r.status, 200, "served")
    env.gw.p.kill()
    env.gw.p.wait()
    env.gw = Proc([env.args.gateway, "-c", env.config_path], "gateway-restarted", env.dir)
    wait_port(env.port, env.gw.p)
    eq(env.req("POST", "/v1/echo", key=key, body={}).status, 200,
       "a restart on the same port after a crash serves")


# ---------------------------------------------------------------- usage money

def usage_money(env, store):
    cfg, be = setup(env, [{"metric": "spend", "per": "day", "limit": "5.00"},
                          {"metric": "requests", "per": "minute", "limit": 10}], store,
                    endpoints={"txt2img": {"method": "POST", "path": "/v3/txt2img",
                                           "backend": "models",
                                           "units": [{"pointer": "/image_num", "default": 1}],
                                           "price": {"per_request": "0.25",
                                                     "per_unit": "0.0015"}}},
                    admin=True)
    key = env.keys["k"]
    eq(env.req("POST", "/v3/txt2img", key=key, body={"image_num": 2}).status, 200, "admitted")
    apo = int(cfg["admin"]["listen"].rsplit(":", 1)[1])
    ha = {"Authorization": "Bearer " + ADMIN_TOKEN}
    views = [("/v1/usage", env.req("GET", "/v1/usage", key=key)),
             ("admin ?key", request(apo, "GET", "/admin/usage?key=k", headers=ha)),
             ("admin ?account", request(apo, "GET", "/admin/usage?account=acme", headers=ha))]
    for what, r in views:
        eq(r.status, 200, "%s: %r" % (what, r))
        lims = {(l["metric"], l["per"]): l for l in r.json()["limits"]}
        if what == "admin ?account":
            eq(lims, {}, "an account's view holds only account-scope limits")
            continue
        s = lims[("spend", "day")]
        eq((s["limit"], s["used"], s["remaining"]), ("5.00", "0.253", "4.747"),
           "%s: spend as decimal strings" % what)
        q = lims[("requests", "minute")]
        eq((q["limit"], q["used"], q["remaining"]), (10, 1, 9), "%s: requests as integers" % what)


test_usage_money = for_both(usage_money)


# ---------------------------------------------------------------- reload

def test_reload_counter_identity(env):
    cfg, be = setup(env, [
        {"metric": "requests", "per": "minute", "limit": 5, "endpoints": ["txt2img"]},
        {"metric": "requests", "per": "day", "limit": 100}])
    old_path = env.write_config(cfg, "old.json")
    # Only a limit value changes: same counter, no warning.
    cfg["tiers"]["t"]["limits"][1]["limit"] = 200
    env.write_config(cfg)
    env.gw.signal(signal.SIGHUP)
    wait_for(lambda: env.gw.output().count("configuration reloaded") >= 1, "the first reload")
    assert "starts afresh" not in env.gw.output(), \
        "no warning for an unchanged identity: %s" % env.gw.output()[-2000:]
    # The endpoints change: a new counter.
    cfg["tiers"]["t"]["limits"][0]["endpoints"] = ["txt2img", "img2img"]
    new_path = env.write_config(cfg)
    env.gw.signal(signal.SIGHUP)
    wait_for(lambda: env.gw.output().count("configuration reloaded") >= 2, "the second reload")
    lines = [l for l in env.gw.output().splitlines() if "starts afresh" in l]
    eq(len(lines), 1, "one warning: %r" % lines)
    assert 'tier "t"' in lines[0] and "requests per minute" in lines[0] and \
        "[txt2img,img2img]" in lines[0] and "[txt2img])" in lines[0], \
        "the warning names the tier, the limit and both endpoint sets: %s" % lines[0]
    # --check-config --against: the same warning, exit 0, ok.
    p = subprocess.run([env.args.gateway, "--check-config", new_path, "--against", old_path],
                       capture_output=True, text=True, timeout=60)
    eq((p.returncode, p.stdout), (0, "ok\n"), "check-config of a valid file: %r" % p.stderr)
    warn = [l for l in p.stderr.splitlines() if "starts afresh" in l]
    eq(len(warn), 1, "check-config names the counter: %r" % p.stderr)
    assert warn[0].startswith(new_path + ": warning: ") and 'tier "t"' in warn[0], \
        "the warning names the file and the tier: %s" % warn[0]
    p = subprocess.run([env.args.gateway, "--check-config", new_path, "--against", new_path],
                       capture_output=True, text=True, timeout=60)
    eq((p.returncode, p.stdout, p.stderr), (0, "ok\n", ""), "nothing changed, nothing said")


run(test_units_never_free + [test_units_min_and_rounding, test_units_saturate] +
    test_retry_after_never +
    [test_path_spellings, test_path_forwarded_normalized, test_underscore_headers,
     test_one_port_memory_refused, test_one_port_redis_shared, test_restart_after_crash] +
    test_usage_money + [test_reload_counter_identity])
