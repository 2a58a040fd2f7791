"""The full limit model end to end, on the memory store and on Redis: units
with maps, token reconcile, spend reconcile, async job leases (released by
a status poll, by the admin call, by expiry, across instances), and the
admin listener's usage."""
import hashlib
import threading
import time

import backend
from harness import (Proc, base_config, day_bound, eq, for_both, free_port, poll, request, run,
                     wait_gateway)


ADMIN_TOKEN = "admin-secret-token"


def units_backend(req):
    """backend.py handler for llm_h: a plain JSON answer that reports the
    tokens it used in an X-Units-Used header (3 for any request)."""
    return backend.Reply(200, {"ok": True}, headers=[("X-Units-Used", "3")])


def config(env, store, tiers, accounts, keys, **endpoints):
    if env.mock is None:
        env.start_mock()
    cfg = base_config(env.mock_port, free_port())
    b = env.start_backend(units_backend)
    cfg["backends"]["units_header"] = {"url": "http://127.0.0.1:%d" % b.port,
                                       "timeout_ms": 2000}
    cfg["endpoints"].update({
        "video": {"method": "POST", "path": "/v3/video", "backend": "models",
                  "units": [{"pointer": "/duration", "default": 5},
                            {"pointer": "/resolution", "default": 1, "min": 0.5,
                             "map": {"480p": 0.5, "720p": 1, "1080p": 2, "4k": 4}}]},
        "llm": {"method": "POST", "path": "/v1/llm", "backend": "models",
                "units": [{"pointer": "/max_tokens", "default": 16}],
                "reconcile": {"response_pointer": "/usage/total_tokens"},
                "price": {"per_unit": "0.001"}},
        "llm_h": {"method": "POST", "path": "/v1/llm-stream", "backend": "units_header",
                  "units": [{"pointer": "/max_tokens", "default": 16}],
                  "reconcile": {"response_header": "X-Units-Used"}},
        "txt2video": {"method": "POST", "path": "/v3/async/txt2video", "backend": "models",
                      "job": {"id_pointer": "/task_id", "status_endpoint": "task_result",
                              "status_query": "task_id", "status_pointer": "/task/status",
                              "done_values": ["TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"],
                              "max_seconds": 3600}},
        "task_result": {"method": "GET", "path": "/v3/async/task-result", "backend": "models"},
    })
    cfg["endpoints"].update(endpoints)
    cfg["tiers"].update(tiers)
    cfg["accounts"] = accounts
    cfg["admin"] = {"listen": "127.0.0.1:%d" % free_port(),
                    "token_sha256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()}
    if store == "redis":
        if not env.redis:
            env.start_redis()
        cfg["storage"] = {"driver": "redis", "address": "127.0.0.1:%d" % env.redis[0].port,
                          "timeout_ms": 500}
    for k in keys:
        env.add_key(cfg, *k)
    return cfg


def admin(env, cfg, method, path, token=ADMIN_TOKEN):
    port = int(cfg["admin"]["listen"].rsplit(":", 1)[1])
    h = {"Authorization": "Bearer " + token} if token else {}
    return request(port, method, path, headers=h)


def units_map(env, store):
    cfg = config(env, store, {"v": {"limits": [
        {"metric": "units", "per": "minute", "limit": 100, "endpoints": ["video"]}]}},
        {"acme": {"tier": "v"}}, [("k", "acme")])
    env.start_gateway(cfg)
    key = env.keys["k"]
    # 30 s of 4k = 120 units: more than the limit alone, never admitted.
    r = env.req("POST", "/v3/video", key=key, body={"duration": 30, "resolution": "4k"})
    eq((r.status, r.h("x-should-retry")), (429, "false"), "120 units")
    # 5 s of 720p = 5; 10 s 1080p = 20; 20 s 4k = 80 -> 105 > 100.
    eq(env.req("POST", "/v3/video", key=key, body={"resolution": "720p"}).h(
        "x-ratelimit-remaining"), "95", "default duration 5 x 720p")
    eq(env.req("POST", "/v3/video", key=key, body={"duration": 10, "resolution": "1080p"}).h(
        "x-ratelimit-remaining"), "75", "10 x 1080p")
    # A fractional factor: 5 s of 480p = 2.5, rounded up to 3.
    eq(env.req("POST", "/v3/video", key=key, body={"duration": 5, "resolution": "480p"}).h(
        "x-ratelimit-remaining"), "72", "5 x 480p (0.5 a second)")
    eq(env.req("POST", "/v3/video", key=key, body={"duration": 20, "resolution": "4k"}).status,
       429, "80 more do not fit")
    r = env.req("POST", "/v3/video", key=key, body={"duration": 2, "resolution": "8k"})
    eq((r.status, r.json()["error"]["code"]), (400, "INVALID_BODY"), "unknown resolution")


@day_bound
def token_reconcile(env, store):
    """Reserve max_tokens, charge usage.total_tokens: more requests pass than
    the reserved estimate would let through."""
    cfg = config(env, store, {"t": {"limits": [
        {"metric": "units", "per": "minute", "limit": 100, "endpoints": ["chat", "llm_h"]},
        {"metric": "spend", "per": "day", "limit": "1.00", "endpoints": ["chat"]}]}},
        {"acme": {"tier": "t"}}, [("k", "acme")],
        chat={"method": "POST", "path": "/v1/chat/completions", "backend": "models",
             "units": [{"pointer": "/max_tokens", "default": 16}],
             "reconcile": {"response_pointer": "/usage/total_tokens"},
             "price": {"per_unit": "0.001"}})
    env.start_gateway(cfg)
    key = env.keys["k"]
    ok = 0
    for _ in range(9):
        r = env.req("POST", "/v1/chat/completions", key=key, body={"max_tokens": 40},
                    headers={"x-mock-tokens": "10"})
        ok += r.status == 200
    # Each reserves 40 and is charged 10: the 8th finds 70 used + 40 > 100.
    # Without reconcile only 2 would pass (40 + 40, then 120 > 100).
    eq(ok, 7, "admitted with reconcile")
    # Reconcile follows the answer: poll the usage (which is not counted).
    u = wait_units(env, key, 70, "7 requests reconciled to 10 tokens each")
    eq(u[("units", "minute")]["used"], 70, "units charged as used")
    eq(u[("spend", "day")]["used"], "0.07", "spend reconciled too (a decimal string)")
    # A reported usage above the estimate is charged in full.
    r = env.req("POST", "/v1/chat/completions", key=key, body={"max_tokens": 5},
                headers={"x-mock-tokens": "9"})
    eq(r.status, 200, "a request of 5 tokens reserved")
    u = wait_units(env, key, 79, "9 tokens charged for 5 reserved")
    eq(u[("units", "minute")]["used"], 79, "more than reserved")
    # Header reconcile: a backend that reports its usage in X-Units-Used.
    # 10 reserved, 3 reported: 79 + 3.
    r = env.req("POST", "/v1/llm-stream", key=key, body={"max_tokens": 10})
    eq(r.status, 200, "10 fit in the 21 left")
    eq(r.h("x-units-used"), "3", "the backend's header reaches the client")
    u = wait_units(env, key, 82, "the header's 3 units charged in place of the 10 reserved")
    eq(u[("units", "minute")]["used"], 82, "units after the header reconcile")


def wait_units(env, key, want, what):
    """The key's usage by (metric, per), once its units per minute show
    want; fails when they do not within the deadline."""
    def usage():
        u = {(l["metric"], l["per"]): l
             for l in env.req("GET", "/v1/usage", key=key).json()["limits"]}
        return u if u[("units", "minute")]["used"] == want else None
    return poll(usage, 10, "units used %d (%s)" % (want, what))


def job_leases(env, store):
    cfg = config(env, store, {"j": {"limits": [
        {"metric": "concurrent", "limit": 1, "scope": "account",
         "endpoints": ["txt2video"]}]}},
        {"acme": {"tier": "j"}}, [("k1", "acme"), ("k2", "acme")])
    env.start_gateway(cfg)
    k1, k2 = env.keys["k1"], env.keys["k2"]
    r = env.req("POST", "/v3/async/txt2video", key=k1, body={"duration_ms": 800})
    eq(r.status, 200, "the first job created")
    task = r.json()["task_id"]
    # The create request has ended; the job still holds the account's slot.
    r = env.req("POST", "/v3/async/txt2video", key=k2, body={"duration_ms": 800})
    eq(r.status, 429, "job holds the lease")
    eq(r.json()["error"]["message"],
       "Concurrent prediction limit exceeded. 1/1 predictions running.", "message")
    # Poll through the gateway until done: the done status releases it.
    deadline = time.time() + 10
    while time.time() < deadline:
        s = env.req("GET", "/v3/async/task-result?task_id=" + task, key=k1).json()
        if s["task"]["status"] in ("TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"):
            break
        eq(env.req("POST", "/v3/async/txt2video", key=k2, body={}).status, 429,
           "still running")
        time.sleep(0.1)
    else:
        raise AssertionError("the job never reported done")
    # The done status frees the slot: poll (a refused create charges nothing).
    r = poll(lambda: (lambda r: r if r.status == 200 else None)(
        env.req("POST", "/v3/async/txt2video", key=k2, body={"duration_ms": 60000})), 10,
        "the slot released by the done status")
    eq(r.status, 200, "released by the done status")
    task2 = r.json()["task_id"]
    # The admin call releases a job too.
    eq(admin(env, cfg, "POST", "/admin/jobs/%s/done" % task2, token=None).status, 401,
       "no token")
    eq(admin(env, cfg, "POST", "/admin/jobs/%s/done" % task2, token="wrong").status, 403,
       "wrong token")
    r = admin(env, cfg, "POST", "/admin/jobs/%s/done" % task2)
    eq((r.status, r.json()), (200, {"released": True}), "admin done")
    r = admin(env, cfg, "POST", "/admin/jobs/%s/done" % task2)
    eq((r.status, r.json()["error"]["code"]), (404, "JOB_NOT_FOUND"), "second done")
    eq(env.req("POST", "/v3/async/txt2video", key=k1, body={"duration_ms": 100}).status, 200,
       "slot free after admin done")


def job_expiry(env, store):
    cfg = config(env, store, {"j": {"limits": [
        {"metric": "concurrent", "limit": 1, "scope": "account",
         "endpoints": ["txt2video"]}]}},
        {"acme": {"tier": "j"}}, [("k1", "acme")])
    cfg["endpoints"]["txt2video"]["job"]["max_seconds"] = 1
    env.start_gateway(cfg)
    k1 = env.keys["k1"]
    eq(env.req("POST", "/v3/async/txt2video", key=k1, body={"duration_ms": 60000}).status, 200,
       "a job of a minute created")
    eq(env.req("POST", "/v3/async/txt2video", key=k1, body={}).status, 429, "held")
    deadline = time.time() + 6
    status = 429
    while status == 429 and time.time() < deadline:
        time.sleep(0.25)
        status = env.req("POST", "/v3/async/txt2video", key=k1, body={"duration_ms": 1}).status
    eq(status, 200, "released after max_seconds")


def job_across_instances(env, store):
    cfg = config(env, "redis", {"j": {"limits": [
        {"metric": "concurrent", "limit": 1, "scope": "account",
         "endpoints": ["txt2video"]}]}},
        {"acme": {"tier": "j"}}, [("k1", "acme")])
    env.start_gateway(cfg)
    # A second instance on the same Redis, its own ports.
    cfg_b = dict(cfg)
    cfg_b["server"] = dict(cfg["server"], listen="127.0.0.1:%d" % free_port())
    cfg_b["admin"] = dict(cfg["admin"], listen="127.0.0.1:%d" % free_port())
    path_b = env.write_config(cfg_b, "b.json")
    gw_b = Proc([env.args.gateway, "-c", path_b], "gateway-b", env.dir)
    port_b = int(cfg_b["server"]["listen"].rsplit(":", 1)[1])
    try:
        wait_gateway(gw_b, port_b)
        k1 = env.keys["k1"]
        r = env.req("POST", "/v3/async/txt2video", key=k1, body={"duration_ms": 60000})
        eq(r.status, 200, "created via A")
        task = r.json()["task_id"]
        r = request(port_b, "POST", "/v3/async/txt2video", body="{}",
                    headers={"Authorization": "Bearer " + k1})
        eq(r.status, 429, "B sees A's job lease")
        r = admin(env, cfg_b, "POST", "/admin/jobs/%s/done" % task)
        eq(r.status, 200, "finished via B's admin")
        r = request(port_b, "POST", "/v3/async/txt2video", body='{"duration_ms":1}',
                    headers={"Authorization": "Bearer " + k1})
        eq(r.status, 200, "slot free on B")
    finally:
        gw_b.stop()


@day_bound
def admin_usage(env, store):
    cfg = config(env, store, {"t": {"limits": [
        {"metric": "requests", "per": "minute", "limit": 10},
        {"metric": "requests", "per": "day", "limit": 50, "scope": "account"}]}},
        {"acme": {"tier": "t"}}, [("k1", "acme"), ("k2", "acme")])
    env.start_gateway(cfg)
    for k in ("k1", "k1", "k2"):
        eq(env.req("POST", "/v3/img2img", key=env.keys[k], body={}).status, 200,
           "a request of %s" % k)
    r = admin(env, cfg, "GET", "/admin/usage?key=k1")
    eq(r.status, 200, "admin usage of k1")
    by = {(l["metric"], l["per"], l["scope"]): l["used"] for l in r.json()["limits"]}
    eq(by, {("requests", "minute", "key"): 2, ("requests", "day", "account"): 3}, "key usage")
    r = admin(env, cfg, "GET", "/admin/usage?account=acme")
    eq([(l["scope"], l["used"]) for l in r.json()["limits"]], [("account", 3)], "account usage")
    eq(admin(env, cfg, "GET", "/admin/usage?key=nope").status, 404, "unknown key")
    eq(admin(env, cfg, "GET", "/admin/usage").status, 400, "no selector")
    eq(admin(env, cfg, "GET", "/healthz", token=None).status, 200, "healthz")
    eq(admin(env, cfg, "GET", "/readyz", token=None).status, 200, "readyz")
    # The admin listener is not on the public port.
    eq(env.req("GET", "/healthz").status, 404, "no admin on the public port")


def killed_gateway_loses_no_slot(env):
    """A gateway killed with kill -9 while holding a job's lease: another
    instance gets the slot back once the lease expires (max_seconds)."""
    cfg = config(env, "redis", {"j": {"limits": [
        {"metric": "concurrent", "limit": 1, "scope": "account",
         "endpoints": ["txt2video"]}]}},
        {"acme": {"tier": "j"}}, [("k1", "acme")])
    cfg["endpoints"]["txt2video"]["job"]["max_seconds"] = 2
    del cfg["admin"]
    a, b = env.start_gateways(cfg, 2)
    k1 = env.keys["k1"]
    eq(env.req_at(a.port, "POST", "/v3/async/txt2video", key=k1,
                  body={"duration_ms": 600000}).status, 200, "job via A")
    env.kill_gateway(a)
    t0 = time.time()
    eq(env.req_at(b.port, "POST", "/v3/async/txt2video", key=k1, body={}).status, 429,
       "A's lease is still held")
    status = 429
    while status == 429 and time.time() - t0 < 10:
        time.sleep(0.2)
        status = env.req_at(b.port, "POST", "/v3/async/txt2video", key=k1,
                            body={"duration_ms": 1}).status
    eq(status, 200, "slot back after the lease expiry")
    took = time.time() - t0
    assert took < 2 + 3.5, "slot back %.1f s after the kill: max_seconds (2 s) and a " \
        "little" % took


def job_across_instances_redis(env):
    job_across_instances(env, "redis")


run(for_both(units_map) + for_both(token_reconcile) + for_both(job_leases) +
    for_both(job_expiry) + [job_across_instances_redis, killed_gateway_loses_no_slot] +
    for_both(admin_usage))
