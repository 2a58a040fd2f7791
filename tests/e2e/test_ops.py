"""Operations: metrics that move, the JSON access log, reload through the
admin listener."""
import hashlib
import json
import os
import re
import time

from harness import Proc, base_config, eq, free_port, poll, request, run, wait_gateway, wait_port

TOKEN = "ops-admin-token"


def start(env, limit=2, access_log=None, drain_timeout_ms=5000, chat=False):
    env.start_mock()
    cfg = base_config(env.mock_port, free_port())
    cfg["tiers"]["t"] = {"limits": [{"metric": "requests", "per": "minute", "limit": limit}]}
    if chat:
        cfg["endpoints"]["chat"].update({
            "units": [{"pointer": "/max_tokens", "default": 16}],
            "reconcile": {"response_pointer": "/usage/total_tokens"},
            "price": {"per_unit": "0.00025"}})
    cfg["accounts"] = {"acme": {"tier": "t"}}
    cfg["server"]["drain_timeout_ms"] = drain_timeout_ms
    cfg["admin"] = {"listen": "127.0.0.1:%d" % free_port(),
                    "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}
    env.add_key(cfg, "k1", "acme")
    env.add_key(cfg, "k2", "acme")
    env.port = int(cfg["server"]["listen"].rsplit(":", 1)[1])
    path = env.write_config(cfg)
    env.config_path = path
    argv = [env.args.gateway, "-c", path]
    if access_log:
        argv += ["--access-log", access_log]
    env.gw = Proc(argv, "gateway", env.dir)
    wait_gateway(env.gw, env.port)
    env.admin_port = int(cfg["admin"]["listen"].rsplit(":", 1)[1])
    wait_port(env.admin_port, env.gw.p)
    return cfg


def metric(text, name, **labels):
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = ",".join(sorted((m.group(2) or "").split(","))) if m.group(2) else ""
        if got == want:
            return float(m.group(3))
    return 0.0


def test_metrics_move(env):
    start(env)
    key = env.keys["k1"]
    before = request(env.admin_port, "GET", "/metrics").body.decode()
    statuses = [env.req("POST", "/v3/img2img", key=key, body={}).status for _ in range(3)]
    eq(statuses, [200, 200, 429], "statuses")
    # The answer may leave before its metrics are counted: poll for them.
    def counted():
        r = request(env.admin_port, "GET", "/metrics")
        text = r.body.decode()
        done = metric(text, "ratewall_requests_total", endpoint="img2img", status="429") >= 1
        return (r, text) if done else None
    r, text = poll(counted, 10, "the 429 counted in /metrics")
    eq(r.status, 200, "/metrics status")
    assert (r.h("content-type") or "").startswith("text/plain"), \
        "/metrics is text: %r" % r.headers
    eq(metric(text, "ratewall_requests_total", endpoint="img2img", status="200"), 2.0,
       "admitted counted")
    eq(metric(text, "ratewall_requests_total", endpoint="img2img", status="429"), 1.0,
       "refusal counted")
    refused = metric(text, "ratewall_decisions_total", outcome="refused",
                     limit="requests:minute:key:*")
    eq(refused - metric(before, "ratewall_decisions_total", outcome="refused",
                        limit="requests:minute:key:*"), 1.0, "refusal by its limit")
    assert metric(text, "ratewall_store_latency_seconds_count") >= 3, \
        "three decisions in the store latency histogram:\n" + text
    assert "# TYPE ratewall_backend_latency_seconds histogram" in text, \
        "the backend latency histogram:\n" + text
    # Every line is valid exposition text: name{labels} value, or a comment.
    for line in text.splitlines():
        assert line.startswith("#") or re.match(r'^[a-z_]+(\{[^}]*\})? [0-9.e+-]+$', line), \
            "not exposition text: %r" % line


def test_access_log(env):
    log = os.path.join(env.dir, "access.log")
    start(env, access_log=log, chat=True)
    key = env.keys["k1"]
    for _ in range(3):
        env.req("POST", "/v3/img2img", key=key, body={})
    env.req("POST", "/v3/img2img", key="sk_wrong", body={})
    r = env.req("POST", "/v1/chat/completions", key=env.keys["k2"], body={"max_tokens": 40},
                headers={"x-mock-tokens": "10"})
    eq(r.status, 200, "the reconciled request")
    env.gw.stop()
    env.gw = None
    lines = [json.loads(l) for l in open(log) if l.strip()]
    eq(len(lines), 5, "one line per request")
    eq([l["status"] for l in lines], [200, 200, 429, 401, 200], "statuses")
    eq(lines[0]["key_id"], "k1", "key id logged")
    eq(lines[0]["account"], "acme", "account logged")
    eq((lines[0]["method"], lines[0]["path"], lines[0]["client"]),
       ("POST", "/v3/img2img", "127.0.0.1"), "method, path, client address")
    eq((lines[0]["units_charged"], lines[0]["units_reconciled"], lines[0]["spend"]),
       (1, None, "0.00"), "one unit charged, no reconcile, no price")
    eq(lines[2]["decision"], "refused", "decision")
    eq(lines[2]["limit"], "requests:minute:key:*", "the limit that refused")
    eq((lines[2]["units_charged"], lines[2]["spend"]), (0, "0.00"),
       "a refusal charges nothing")
    eq((lines[3]["key_id"], lines[3]["endpoint"]), (None, "img2img"),
       "an unknown key: no key id")
    chat = lines[4]
    eq((chat["endpoint"], chat["units_charged"], chat["units_reconciled"], chat["spend"]),
       ("chat", 40, 10, "0.0025"),
       "40 reserved, 10 reconciled, spend (10 x 0.00025) as a decimal string")
    for l in lines:
        eq((l["model"], l["shadow_refused"], l["waited_ms"]), (None, [], 0),
           "no model matched, no shadow limit, no wait")
        for f in ("time", "request_id", "method", "path", "client", "key_id", "account",
                  "endpoint", "model", "status", "decision", "limit", "shadow_refused",
                  "units_charged", "units_reconciled", "spend", "waited_ms", "bytes",
                  "upstream_ms", "total_ms"):
            assert f in l, "field %s in the access log line %r" % (f, l)
    text = open(log).read()
    assert key not in text and env.keys["k2"] not in text and "sk_wrong" not in text, \
        "a key was logged"


def test_admin_reload(env):
    cfg = start(env, limit=5)
    key = env.keys["k1"]
    eq(env.req("POST", "/v3/img2img", key=key, body={}).status, 200, "the first request")
    h = {"Authorization": "Bearer " + TOKEN}
    cfg["tiers"]["t"]["limits"][0]["limit"] = 1
    env.write_config(cfg)
    r = request(env.admin_port, "POST", "/admin/reload", headers=h)
    eq((r.status, r.json()), (200, {"reloaded": True}), "reload")
    # Every worker takes the new config on its next turn: poll the usage
    # (not counted) until all show the new limit.
    env.until_all_workers(
        lambda: env.req("GET", "/v1/usage", key=key).json()["limits"][0]["limit"] == 1,
        "the reloaded limit 1 in /v1/usage")
    eq(env.req("POST", "/v3/img2img", key=key, body={}).status, 429, "tightened, count kept")
    with open(env.config_path, "w") as f:
        f.write('{"server": {"listen": 5}}')
    r = request(env.admin_port, "POST", "/admin/reload", headers=h)
    eq(r.status, 400, "invalid")
    err = r.json()["error"]
    eq(err["code"], "INVALID_CONFIG", "code")
    assert err["details"]["errors"] and err["details"]["errors"][0].startswith(
        env.config_path + ":1:"), "FILE:LINE:COL errors: %r" % err
    eq(env.req("POST", "/v3/img2img", key=key, body={}).status, 429, "old config stays")
    text = request(env.admin_port, "GET", "/metrics").body.decode()
    eq(metric(text, "ratewall_reloads_total", result="ok"), 1.0, "reload ok counted")
    eq(metric(text, "ratewall_reloads_total", result="failed"), 1.0, "reload failure counted")
    eq(request(env.admin_port, "POST", "/admin/reload").status, 401, "no token")


def test_second_signal_stops_at_once(env):
    start(env, limit=100, drain_timeout_ms=20000)
    key = env.keys["k1"]
    import threading
    out = {}

    def slow():
        try:
            out["r"] = env.req("POST", "/v3/img2img", key=key, body={},
                               headers={"x-mock-delay-ms": "8000"}, timeout=15)
        except Exception as e:  # the connection is cut: expected
            out["e"] = e

    t = threading.Thread(target=slow)
    t.start()
    env.wait_backend_busy(1)
    env.gw.signal(15)
    poll(lambda: "draining" in env.gw.output(), 10, "the gateway saying it drains")
    assert env.gw.p.poll() is None, "the first signal drains (a request is in flight)"
    t0 = time.time()
    env.gw.signal(15)
    env.gw.p.wait(15)
    took = time.time() - t0
    # The drain would have lasted until the backend answered (8 s) or the
    # drain timeout (20 s).
    assert took < 5, "the second signal stops at once, not after %.1f s" % took
    t.join(30)
    assert "r" not in out or out["r"].status != 200, "the slow request was cut"


run([test_metrics_move, test_access_log, test_admin_reload, test_second_signal_stops_at_once])
