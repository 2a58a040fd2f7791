"""The command line and live reload on SIGHUP."""
import hashlib
import json
import os
import signal
import subprocess

from harness import base_config, eq, free_port, new_key, poll, request, run, sha256, wait_port


def gw(env, *args, stdin=None):
    p = subprocess.run([env.args.gateway] + list(args), input=stdin, capture_output=True,
                       text=True, timeout=30)
    return p.returncode, p.stdout, p.stderr


def test_keys_and_version(env):
    rc, out, err = gw(env, "--new-key")
    eq(rc, 0, "--new-key status")
    key, digest = out.strip().split("\n")
    assert key.startswith("sk_") and len(key) >= 3 + 43, "a new key: %r" % key
    eq(hashlib.sha256(key.encode()).hexdigest(), digest, "printed digest")
    rc, out, _ = gw(env, "--new-key", "--prefix", "sk_live_")
    assert out.startswith("sk_live_"), "a key with the prefix: %r" % out
    keys = {gw(env, "--new-key")[1].split("\n")[0] for _ in range(5)}
    eq(len(keys), 5, "keys are random")
    rc, out, _ = gw(env, "--hash-key", stdin="sk_abc\n")
    eq((rc, out.strip()), (0, hashlib.sha256(b"sk_abc").hexdigest()), "--hash-key")
    rc, out, _ = gw(env, "--version")
    assert rc == 0 and "ratewall" in out, "--version: %r" % out
    rc, out, _ = gw(env, "--help")
    assert rc == 0 and "--check-config" in out, "--help: %r" % out
    rc, _, err = gw(env, "--bogus")
    assert rc != 0 and "Usage" in err, "an unknown option: %r" % err
    rc, _, err = gw(env, "-c", "/nonexistent/ratewall.json")
    assert rc == 1 and "/nonexistent/ratewall.json:1:1:" in err, "a missing config: %r" % err


def test_check_config(env):
    here = os.path.dirname(os.path.abspath(__file__))
    example = os.path.join(here, "..", "..", "deploy", "examples", "ratewall.json")
    rc, out, err = gw(env, "--check-config", example)
    eq((rc, out), (0, "ok\n"), "the example config is valid: " + err)
    bad = os.path.join(env.dir, "bad.json")
    with open(bad, "w") as f:
        f.write('{\n  "server": { "listen": "127.0.0.1:1", "wrokers": 2 },\n'
                '  "tiers": { "t": { "limits": [ { "metric": "requests", "per": "week", '
                '"limit": 1 } ] } }\n}\n')
    rc, out, err = gw(env, "--check-config", bad)
    eq(rc, 1, "status")
    lines = [l for l in err.splitlines() if ": warning: " not in l]
    eq(len(lines), 2, "one line per error: %r" % lines)
    assert lines[0].startswith(bad + ":2:") and "wrokers" in lines[0], \
        "the unknown field on line 2: %r" % lines
    assert lines[1].startswith(bad + ":3:") and "week" in lines[1], \
        "the bad period on line 3: %r" % lines


def test_example_config(env):
    """deploy/examples as shipped: every demo key works, the free tier refuses
    the 4th txt2img of a minute."""
    here = os.path.dirname(os.path.abspath(__file__))
    ex = os.path.join(here, "..", "..", "deploy", "examples")
    with open(os.path.join(ex, "ratewall.json")) as f:
        cfg = json.load(f)
    env.start_mock()
    cfg["server"]["listen"] = "127.0.0.1:%d" % free_port()
    cfg["backends"]["models"]["url"] = "http://127.0.0.1:%d" % env.mock_port
    cfg["keys_file"] = os.path.abspath(os.path.join(ex, "keys.json"))
    admin_port = free_port()
    cfg["admin"]["listen"] = "127.0.0.1:%d" % admin_port
    env.start_gateway(cfg)
    # The tour's admin listener: the status page, /metrics, and the status
    # with the demo admin token that deploy/run-demo prints.
    wait_port(admin_port, env.gw.p)
    r = request(admin_port, "GET", "/")
    assert r.status == 200 and b"<title>ratewall status</title>" in r.body, \
        "the status page on the demo's admin listener: %r" % r
    eq(request(admin_port, "GET", "/metrics").status, 200, "the demo's /metrics")
    r = request(admin_port, "GET", "/admin/status",
                headers={"Authorization": "Bearer demo-admin-token"})
    eq(r.status, 200, "the demo admin token that run-demo prints")
    with open(os.path.join(here, "..", "..", "deploy", "run-demo")) as f:
        assert "Bearer demo-admin-token" in f.read(), "run-demo prints the demo admin token"
    keys = dict(l.split() for l in open(os.path.join(ex, "DEMO_KEYS")) if l.strip())
    for kid, key in keys.items():
        r = env.req("POST", "/v3/txt2img", key=key, body={"prompt": "x", "image_num": 1})
        eq(r.status, 200, "demo key %s" % kid)
    free = keys["demo_free"]
    eq(env.req("POST", "/v3/txt2img", key=free, body={}).status, 200, "2nd")
    eq(env.req("POST", "/v3/txt2img", key=free, body={}).status, 200, "3rd")
    r = env.req("POST", "/v3/txt2img", key=free, body={})
    eq((r.status, r.h("x-ratelimit-type")), (429, "minute"), "4th of the minute")
    # The LLM demo key: 500 tokens reserved, then reconciled to the usage
    # the backend reported.
    llm = keys["demo_llm"]
    r = env.req("POST", "/v1/chat/completions", key=llm,
                body={"max_tokens": 500, "messages": []})
    eq(r.status, 200, "chat")
    used = r.json()["usage"]["total_tokens"]
    assert 0 < used < 500, "the mock reports fewer tokens than reserved: %r" % used

    def units_used():
        for l in env.req("GET", "/v1/usage", key=llm).json()["limits"]:
            if (l["metric"], l["per"]) == ("units", "minute"):
                return l["used"]
        raise AssertionError("no units limit in the demo_llm usage")
    # Reconcile follows the answer: poll the usage (which is not counted).
    poll(lambda: units_used() != 500, 10, "the reservation of 500 reconciled")
    eq(units_used(), used, "units charged: the backend's usage.total_tokens, not max_tokens")


def start(env, minute_limit):
    env.start_mock()
    cfg = base_config(env.mock_port, free_port())
    cfg["tiers"]["t"] = {"limits": [
        {"metric": "requests", "per": "minute", "limit": minute_limit}]}
    cfg["accounts"] = {"acme": {"tier": "t"}}
    env.add_key(cfg, "k1", "acme")
    cfg["keys_file"] = "keys.json"
    with open(os.path.join(env.dir, "keys.json"), "w") as f:
        json.dump([], f)
    env.start_gateway(cfg)
    return cfg


def reload(env, cfg, seen, what):
    """Writes cfg, sends SIGHUP, waits for the gateway to log the reload and
    then until every worker serves the new config: seen() (one request on a
    new connection, not counted) holds on each (Env.until_all_workers).
    Fails when either does not happen in time."""
    env.write_config(cfg)
    mark = env.gw.output().count("reload")
    env.gw.signal(signal.SIGHUP)
    poll(lambda: env.gw.output().count("reload") > mark, 10, "the reload in the log")
    out = env.gw.output()
    assert "reload refused" not in out, "the reload was refused:\n" + out[-2000:]
    env.until_all_workers(seen, what)


def usage_limit(env, key):
    """The first limit of key as /v1/usage shows it (usage is not counted)."""
    return env.req("GET", "/v1/usage", key=key).json()["limits"][0]["limit"]


def test_reload_keeps_counts(env):
    cfg = start(env, 5)
    key = env.keys["k1"]
    for i in range(3):
        eq(env.req("POST", "/v3/img2img", key=key, body={}).status, 200, "request %d" % i)
    # Tighten to 3: the 3 already counted stay counted.
    cfg["tiers"]["t"]["limits"][0]["limit"] = 3
    reload(env, cfg, lambda: usage_limit(env, key) == 3, "the limit of 3 in the usage")
    r = env.req("POST", "/v3/img2img", key=key, body={})
    eq(r.status, 429, "tightened limit applies to the kept count")
    eq(r.h("x-ratelimit-limit"), "3", "X-RateLimit-Limit after the reload")
    # Loosen to 10: 7 more.
    cfg["tiers"]["t"]["limits"][0]["limit"] = 10
    reload(env, cfg, lambda: usage_limit(env, key) == 10, "the limit of 10 in the usage")
    r = env.req("POST", "/v3/img2img", key=key, body={})
    eq((r.status, r.h("x-ratelimit-remaining")), (200, "6"), "count kept across reloads")


def test_invalid_reload_changes_nothing(env):
    cfg = start(env, 5)
    key = env.keys["k1"]
    eq(env.req("POST", "/v3/img2img", key=key, body={}).status, 200, "the first request")
    with open(env.config_path, "w") as f:
        f.write('{ "server": { "listen": 12 } ')
    env.gw.signal(signal.SIGHUP)
    poll(lambda: "reload refused" in env.gw.output(), 10, "the refused reload in the log")
    out = env.gw.output()
    assert env.config_path + ":1:" in out, "the error as FILE:LINE:COL in the log:\n" + out
    r = env.req("POST", "/v3/img2img", key=key, body={})
    eq((r.status, r.h("x-ratelimit-remaining")), (200, "3"), "old config still in force")


def test_reload_keys_file(env):
    cfg = start(env, 5)
    new = new_key()
    with open(os.path.join(env.dir, "keys.json"), "w") as f:
        json.dump([{"id": "k2", "sha256": sha256(new), "account": "acme"}], f)
    eq(env.req("POST", "/v3/img2img", key=new, body={}).status, 401, "not yet known")
    reload(env, cfg, lambda: env.req("GET", "/v1/usage", key=new).status == 200,
           "the added key known")
    eq(env.req("POST", "/v3/img2img", key=new, body={}).status, 200, "added key works")
    # Disable k1 and drop k2: refused at once.
    cfg["keys"][0]["disabled"] = True
    with open(os.path.join(env.dir, "keys.json"), "w") as f:
        json.dump([], f)
    reload(env, cfg, lambda: env.req("GET", "/v1/usage", key=new).status == 401,
           "the dropped key unknown")
    eq(env.req("POST", "/v3/img2img", key=env.keys["k1"], body={}).status, 403, "disabled")
    eq(env.req("POST", "/v3/img2img", key=new, body={}).status, 401, "removed")


run([test_keys_and_version, test_check_config, test_example_config, test_reload_keeps_counts,
     test_invalid_reload_changes_nothing, test_reload_keys_file])
