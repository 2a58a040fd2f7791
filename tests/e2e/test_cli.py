"""The command line (SPEC §1) and live reload on SIGHUP."""
import hashlib
import json
import os
import signal
import subprocess
import time

from harness import base_config, eq, free_port, new_key, run, sha256


def gw(env, *args, stdin=None):
    p = subprocess.run([env.args.gateway] + list(args), input=stdin, capture_output=True,
                       text=True, timeout=30)
    return p.returncode, p.stdout, p.stderr


def test_keys_and_version(env):
    rc, out, err = gw(env, "--new-key")
    eq(rc, 0, "--new-key status")
    key, digest = out.strip().split("\n")
    assert key.startswith("sk_") and len(key) >= 3 + 43, key
    eq(hashlib.sha256(key.encode()).hexdigest(), digest, "printed digest")
    rc, out, _ = gw(env, "--new-key", "--prefix", "sk_live_")
    assert out.startswith("sk_live_"), out
    keys = {gw(env, "--new-key")[1].split("\n")[0] for _ in range(5)}
    eq(len(keys), 5, "keys are random")
    rc, out, _ = gw(env, "--hash-key", stdin="sk_abc\n")
    eq((rc, out.strip()), (0, hashlib.sha256(b"sk_abc").hexdigest()), "--hash-key")
    rc, out, _ = gw(env, "--version")
    assert rc == 0 and "ratewall" in out, out
    rc, out, _ = gw(env, "--help")
    assert rc == 0 and "--check-config" in out, out
    rc, _, err = gw(env, "--bogus")
    assert rc != 0 and "Usage" in err, err
    rc, _, err = gw(env, "-c", "/nonexistent/ratewall.json")
    assert rc == 1 and "/nonexistent/ratewall.json:1:1:" in err, err


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
    assert lines[0].startswith(bad + ":2:") and "wrokers" in lines[0], lines
    assert lines[1].startswith(bad + ":3:") and "week" in lines[1], lines


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
    env.start_gateway(cfg)
    keys = dict(l.split() for l in open(os.path.join(ex, "DEMO_KEYS")) if l.strip())
    for kid, key in keys.items():
        r = env.req("POST", "/v3/txt2img", key=key, body={"prompt": "x", "image_num": 1})
        eq(r.status, 200, "demo key %s" % kid)
    free = keys["demo_free"]
    eq(env.req("POST", "/v3/txt2img", key=free, body={}).status, 200, "2nd")
    eq(env.req("POST", "/v3/txt2img", key=free, body={}).status, 200, "3rd")
    r = env.req("POST", "/v3/txt2img", key=free, body={})
    eq((r.status, r.h("x-ratelimit-type")), (429, "minute"), "4th of the minute")
    # The LLM demo key: tokens reserved, then reconciled.
    r = env.req("POST", "/v1/chat/completions", key=keys["demo_llm"],
                body={"max_tokens": 500, "messages": []})
    eq(r.status, 200, "chat")


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


def reload(env, cfg):
    env.write_config(cfg)
    mark = env.gw.output().count("reload")
    env.gw.signal(signal.SIGHUP)
    deadline = time.time() + 5
    while env.gw.output().count("reload") == mark and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # the workers pick the snapshot up on their next turn


def test_reload_keeps_counts(env):
    cfg = start(env, 5)
    key = env.keys["k1"]
    for _ in range(3):
        eq(env.req("POST", "/v3/img2img", key=key, body={}).status, 200)
    # Tighten to 3: the 3 already counted stay counted.
    cfg["tiers"]["t"]["limits"][0]["limit"] = 3
    reload(env, cfg)
    r = env.req("POST", "/v3/img2img", key=key, body={})
    eq(r.status, 429, "tightened limit applies to the kept count")
    eq(r.h("x-ratelimit-limit"), "3")
    # Loosen to 10: 7 more.
    cfg["tiers"]["t"]["limits"][0]["limit"] = 10
    reload(env, cfg)
    r = env.req("POST", "/v3/img2img", key=key, body={})
    eq((r.status, r.h("x-ratelimit-remaining")), (200, "6"), "count kept across reloads")


def test_invalid_reload_changes_nothing(env):
    cfg = start(env, 5)
    key = env.keys["k1"]
    eq(env.req("POST", "/v3/img2img", key=key, body={}).status, 200)
    with open(env.config_path, "w") as f:
        f.write('{ "server": { "listen": 12 } ')
    env.gw.signal(signal.SIGHUP)
    deadline = time.time() + 5
    while "reload refused" not in env.gw.output() and time.time() < deadline:
        time.sleep(0.02)
    out = env.gw.output()
    assert "reload refused" in out and env.config_path + ":1:" in out, out
    r = env.req("POST", "/v3/img2img", key=key, body={})
    eq((r.status, r.h("x-ratelimit-remaining")), (200, "3"), "old config still in force")


def test_reload_keys_file(env):
    cfg = start(env, 5)
    new = new_key()
    with open(os.path.join(env.dir, "keys.json"), "w") as f:
        json.dump([{"id": "k2", "sha256": sha256(new), "account": "acme"}], f)
    eq(env.req("POST", "/v3/img2img", key=new, body={}).status, 401, "not yet known")
    reload(env, cfg)
    eq(env.req("POST", "/v3/img2img", key=new, body={}).status, 200, "added key works")
    # Disable k1 and drop k2: refused at once.
    cfg["keys"][0]["disabled"] = True
    with open(os.path.join(env.dir, "keys.json"), "w") as f:
        json.dump([], f)
    reload(env, cfg)
    eq(env.req("POST", "/v3/img2img", key=env.keys["k1"], body={}).status, 403, "disabled")
    eq(env.req("POST", "/v3/img2img", key=new, body={}).status, 401, "removed")


run([test_keys_and_version, test_check_config, test_example_config, test_reload_keeps_counts,
     test_invalid_reload_changes_nothing, test_reload_keys_file])
