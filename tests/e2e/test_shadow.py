"""Shadow limits ("mode": "shadow") end to end, on the memory store and on
Redis: counted like any limit and shown in usage, never refusing; a
would-be refusal is counted in /metrics and named in the access log; a
request that an enforcing limit refuses charges no shadow limit."""
import hashlib
import json
import os
import re

from harness import (Proc, base_config, eq, for_both, free_port, poll, request, run,
                     wait_gateway, wait_port)

TOKEN = "shadow-admin-token"
SHADOW_ID = "requests:minute:key:*:shadow"


def start(env, store, limits):
    """A gateway with key k1 of account acme on tier t (`limits`), an admin
    listener and an access log."""
    env.start_mock()
    cfg = base_config(env.mock_port, free_port())
    cfg["tiers"]["t"] = {"limits": limits}
    cfg["accounts"] = {"acme": {"tier": "t"}}
    cfg["admin"] = {"listen": "127.0.0.1:%d" % free_port(),
                    "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}
    if store == "redis":
        r = env.start_redis()
        cfg["storage"] = {"driver": "redis", "address": "127.0.0.1:%d" % r.port,
                          "timeout_ms": 500}
    env.add_key(cfg, "k1", "acme")
    env.port = int(cfg["server"]["listen"].rsplit(":", 1)[1])
    env.config_path = env.write_config(cfg)
    env.log_path = os.path.join(env.dir, "access.log")
    env.gw = Proc([env.args.gateway, "-c", env.config_path, "--access-log", env.log_path],
                  "gateway", env.dir)
    wait_gateway(env.gw, env.port)
    env.admin_port = int(cfg["admin"]["listen"].rsplit(":", 1)[1])
    wait_port(env.admin_port, env.gw.p)


def metric(text, name, **labels):
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name and \
                ",".join(sorted((m.group(2) or "").split(","))) == want:
            return float(m.group(3))
    return 0.0


def usage_of(env, key):
    r = env.req("GET", "/v1/usage", key=key)
    eq(r.status, 200, "usage")
    return {(l["metric"], l["per"], l.get("mode", "enforce")): l for l in r.json()["limits"]}


def stop_and_read_log(env):
    env.gw.stop()
    env.gw = None
    return [json.loads(l) for l in open(env.log_path) if l.strip()]


def shadow_would_refuse(env, store):
    """Enforcing 10/minute admits all 4; the shadow 2/minute beside it (the
    same dimensions, its own counter) would refuse the last 2: it counts
    past its limit, the refusals are counted and logged, nothing is
    refused, and the rate headers describe the enforcing limit only."""
    start(env, store, [
        {"metric": "requests", "per": "minute", "limit": 10},
        {"metric": "requests", "per": "minute", "limit": 2, "mode": "shadow"}])
    key = env.keys["k1"]
    for i in range(4):
        r = env.req("POST", "/v3/img2img", key=key, body={})
        eq(r.status, 200, "request %d admitted" % i)
        eq(r.h("x-ratelimit-limit"), "10", "X-RateLimit-Limit is the enforcing limit's")
        eq(r.h("x-ratelimit-remaining"), str(9 - i), "X-RateLimit-Remaining")
    u = usage_of(env, key)
    sh = u[("requests", "minute", "shadow")]
    eq((sh["limit"], sh["used"], sh["remaining"]), (2, 4, 0),
       "the shadow limit counted past its limit")
    en = u[("requests", "minute", "enforce")]
    assert "mode" not in en, "an enforcing limit shows no mode: %r" % en
    eq((en["limit"], en["used"]), (10, 4), "the enforcing limit charged every time")
    eq(env.mock_stats()["by_path"].get("/v3/img2img"), 4, "every request reached the backend")

    def counted():
        text = request(env.admin_port, "GET", "/metrics").body.decode()
        n = metric(text, "ratewall_decisions_total", outcome="shadow_refused", limit=SHADOW_ID)
        return text if n >= 2 else None
    text = poll(counted, 10, "shadow refusals counted in /metrics")
    eq(metric(text, "ratewall_decisions_total", outcome="shadow_refused", limit=SHADOW_ID),
       2.0, "two would-be refusals")
    eq(metric(text, "ratewall_decisions_total", outcome="admitted", limit=""), 4.0,
       "four admitted")
    eq(metric(text, "ratewall_requests_total", endpoint="img2img", status="429"), 0.0,
       "nothing refused")
    lines = [l for l in stop_and_read_log(env) if l["endpoint"] == "img2img"]
    eq([l["decision"] for l in lines], ["admitted"] * 4, "decisions in the access log")
    eq([l["shadow_refused"] for l in lines], [[], [], [SHADOW_ID], [SHADOW_ID]],
       "shadow_refused names the shadow limit on the would-be refusals only")


def refused_charges_no_shadow(env, store):
    """An enforcing 2/minute refuses the third request: the shadow limits
    (a day count and a concurrency gauge) are charged only for the two
    admitted, and nothing is logged as shadow_refused."""
    start(env, store, [
        {"metric": "requests", "per": "minute", "limit": 2},
        {"metric": "requests", "per": "day", "limit": 100, "mode": "shadow"},
        {"metric": "concurrent", "limit": 5, "mode": "shadow"}])
    key = env.keys["k1"]
    statuses = [env.req("POST", "/v3/img2img", key=key, body={}).status for _ in range(3)]
    eq(statuses, [200, 200, 429], "statuses")
    r = env.req("POST", "/v3/img2img", key=key, body={})
    eq(r.json()["error"]["details"]["limit"], 2, "the 429 names the enforcing limit")
    eq(r.h("x-ratelimit-type"), "minute", "X-RateLimit-Type")
    u = usage_of(env, key)
    eq(u[("requests", "day", "shadow")]["used"], 2, "the refusals charged no shadow day")
    eq(u[("concurrent", None, "shadow")]["used"], 0, "shadow leases given back")
    eq(u[("requests", "day", "shadow")]["mode"], "shadow", "usage shows the mode")
    lines = [l for l in stop_and_read_log(env) if l["endpoint"] == "img2img"]
    # A repeated refusal may come from the local deny cache (refused_cached).
    eq([l["decision"][:7] for l in lines], ["admitte", "admitte", "refused", "refused"],
       "decisions")
    eq([l["limit"] for l in lines if l["decision"].startswith("refused")],
       ["requests:minute:key:*"] * 2, "refused by the enforcing limit")
    eq([l["shadow_refused"] for l in lines], [[]] * len(lines),
       "nothing would have been refused by a shadow limit")


run(for_both(shadow_would_refuse) + for_both(refused_charges_no_shadow))
