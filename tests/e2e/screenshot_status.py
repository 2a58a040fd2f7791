"""Takes docs/status-page.png: starts the mock backend and the gateway (as
the tests do), sends a few minutes of mixed traffic from several accounts
(some of it refused, a few slow requests and async jobs holding leases),
and screenshots the status page in headless Chromium.

  python3 tests/e2e/screenshot_status.py --gateway build/release/gateway \\
      --mock build/release/mock-backend [--minutes 3] [--out docs/status-page.png]
"""
import argparse
import hashlib
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Env, base_config, free_port, wait_port  # noqa: E402
import browser  # noqa: E402

TOKEN = "screenshot-admin-token"
JOB = {"id_pointer": "/task_id", "status_endpoint": "task_result", "status_query": "task_id",
       "status_pointer": "/task/status",
       "done_values": ["TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"], "max_seconds": 3600}


def config(env):
    cfg = base_config(env.mock_port, free_port())
    cfg["backends"]["models"]["timeout_ms"] = 10000
    cfg["endpoints"]["chat"].update({
        "units": [{"pointer": "/max_tokens", "default": 256}],
        "reconcile": {"response_pointer": "/usage/total_tokens"},
        "price": {"per_unit": "0.000002"}})
    cfg["endpoints"]["txt2video"] = {"method": "POST", "path": "/v3/async/txt2video",
                                     "backend": "models", "job": JOB}
    cfg["endpoints"]["task_result"] = {"method": "GET", "path": "/v3/async/task-result",
                                       "backend": "models"}
    cfg["tiers"] = {
        "free": {"limits": [
            {"metric": "requests", "per": "minute", "limit": 20, "endpoints": ["txt2img"]},
            {"metric": "requests", "per": "minute", "limit": 30, "endpoints": ["img2img"]},
            {"metric": "units", "per": "minute", "limit": 4000, "endpoints": ["chat"]}]},
        "pro": {"limits": [
            {"metric": "requests", "per": "minute", "limit": 200},
            {"metric": "units", "per": "minute", "limit": 40000, "endpoints": ["chat"]},
            {"metric": "concurrent", "limit": 3, "scope": "account",
             "endpoints": ["txt2video", "echo"]}]},
    }
    cfg["accounts"] = {"acme": {"tier": "pro"}, "globex": {"tier": "pro"},
                       "initech": {"tier": "free"}, "hooli": {"tier": "free"}}
    cfg["admin"] = {"listen": "127.0.0.1:%d" % free_port(),
                    "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}
    for kid, acct in (("acme_prod", "acme"), ("acme_batch", "acme"), ("globex_web", "globex"),
                      ("initech_app", "initech"), ("hooli_trial", "hooli")):
        env.add_key(cfg, kid, acct)
    return cfg


def traffic(env, seconds, stop):
    """Per second: a rate for each key that drifts, so the lines differ."""
    rng = random.Random(7)
    plan = [("acme_prod", "POST", "/v3/txt2img", {"image_num": 1}, 1.5),
            ("acme_batch", "POST", "/v1/chat/completions", {"max_tokens": 400}, 1.0),
            ("globex_web", "POST", "/v3/img2img", {}, 1.0),
            ("initech_app", "POST", "/v3/txt2img", {}, 0.6),
            ("hooli_trial", "POST", "/v1/chat/completions", {"max_tokens": 900}, 0.2),
            ("hooli_trial", "POST", "/v3/img2img", {}, 0.7)]
    t0 = time.time()
    while time.time() - t0 < seconds and not stop.is_set():
        phase = (time.time() - t0) / 60.0
        for kid, method, path, body, rate in plan:
            n = max(0, int(rng.gauss(rate * (1.5 + (phase % 2)), 0.6)))
            for _ in range(n):
                env.req(method, path, key=env.keys[kid], body=body)
        if rng.random() < 0.15:
            env.req("POST", "/v3/async/txt2video", key=env.keys["acme_prod"],
                    body={"duration_ms": 600000})
        time.sleep(max(0.0, 1.0 - (time.time() - t0) % 1.0))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--mock", required=True)
    ap.add_argument("--minutes", type=float, default=3)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "..", "docs", "status-page.png"))
    args = ap.parse_args()
    args.gateway, args.mock = os.path.abspath(args.gateway), os.path.abspath(args.mock)
    env = Env(args)
    ok = False
    try:
        env.start_mock()
        cfg = config(env)
        env.start_gateway(cfg)
        admin = int(cfg["admin"]["listen"].rsplit(":", 1)[1])
        wait_port(admin, env.gw.p)
        stop = threading.Event()
        slow = threading.Thread(target=lambda: [
            env.req("POST", "/v1/echo", key=env.keys["globex_web"], body={},
                    headers={"x-mock-delay-ms": "9000"}, timeout=20)
            for _ in range(int(args.minutes * 60 / 9) + 1) if not stop.is_set()])
        slow.start()
        try:
            traffic(env, args.minutes * 60, stop)
            origin = "http://127.0.0.1:%d" % admin
            requests = browser.screenshot(origin + "/#token=" + TOKEN, env.dir, args.out,
                                          budget_ms=3000, size=(1280, 1060))
            bad = browser.outside(requests, origin)
            assert not bad, "the page asked for outside addresses: %r" % bad
        finally:
            stop.set()
            slow.join(30)
        print("wrote", os.path.abspath(args.out))
        ok = True
    finally:
        env.close(ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
