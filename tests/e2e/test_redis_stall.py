"""Redis stalls (SIGSTOP) and lost replies: leases of requests answered 503
while Redis was stopped, and a job whose done status was seen while Redis
was slow, are given back once Redis answers again."""
import sys, time, threading, signal

from harness import run, eq, redis_cli
from test_redis import redis_env, keys_of, poll, wait_gateways_connected, PATH

def fire(env, g, key, n, out):
    def one():
        try:
            out.append(env.req_at(g.port, "POST", PATH, key=key, body={}, timeout=10).status)
        except Exception as e:
            out.append(repr(e))
    ts = [threading.Thread(target=one) for _ in range(n)]
    for t in ts: t.start()
    return ts

def probe_no_lease_left(env, r, g, key, after):
    """After `after` s, the lease sets are printed and 3 requests in a row
    must pass the limit of 1: no lease was left behind."""
    time.sleep(after)
    for k in keys_of(r.port, "rl:*"):
        print("  ", k, redis_cli(r.port, "ZRANGE", k, "0", "-1", "WITHSCORES"))
    st = [env.req_at(g.port, "POST", PATH, key=key, body={}).status for _ in range(3)]
    print("  probes after recovery:", st)
    eq(st, [200, 200, 200], "probes (a lease stuck from the stall?)")


def one_slot_gateway(env):
    """One gateway (1 worker, 100 ms store timeout, on_error deny) on a
    fresh Redis, one key whose account may run 1 request at a time."""
    r, gws, _ = redis_env(env, {"one": {"limits": [
        {"metric": "concurrent", "limit": 1, "scope": "account"}]}},
        {"acme": {"tier": "one"}}, [("k1", "acme")],
        storage={"timeout_ms": 100, "on_error": "deny"}, workers=1)
    wait_gateways_connected(r.port, 1)
    return r, gws[0], env.keys["k1"]


def test_stall_leases(env):
    r, g, key = one_slot_gateway(env)
    eq(env.req_at(g.port, "POST", PATH, key=key, body={}).status, 200)
    r.signal(signal.SIGSTOP)
    out = []
    ts = fire(env, g, key, 1, out)   # one acquire in flight when redis stalls
    time.sleep(0.5)                   # timed out (503) but not yet dropped
    ts += fire(env, g, key, 1, out)
    time.sleep(1.5)                   # past drop_after (1 s): connection dropped
    r.signal(signal.SIGCONT)
    for t in ts: t.join()
    print("  during stall:", out)
    probe_no_lease_left(env, r, g, key, after=1.5)

def test_stall_short(env):
    # stall shorter than drop_after: late admitted replies must release
    r, g, key = one_slot_gateway(env)
    r.signal(signal.SIGSTOP)
    out = []
    ts = fire(env, g, key, 5, out)
    time.sleep(0.6)
    r.signal(signal.SIGCONT)
    for t in ts: t.join()
    print("  during stall:", out)
    probe_no_lease_left(env, r, g, key, after=0.5)



# ---- jobs and allow mode under stalls ----
import sys, time, signal, threading, hashlib

src = open("/work/main/tests/e2e/test_model.py").read()
src = src[:src.index("run(for_both(units_map)")]
g = {"__name__": "tm"}; exec(compile(src, "test_model", "exec"), g)
from harness import run, eq, request, free_port
config, admin = g["config"], g["admin"]

def test_job_poll_timeout(env):
    cfg = config(env, "redis", {"j": {"limits": [
        {"metric": "concurrent", "limit": 1, "scope": "account", "endpoints": ["txt2video"]}]}},
        {"acme": {"tier": "j"}}, [("k1", "acme")])
    cfg["storage"]["timeout_ms"] = 100
    cfg["server"]["workers"] = 1
    env.start_gateway(cfg)
    k1 = env.keys["k1"]; r = env.redis[0]
    t = env.req("POST", "/v3/async/txt2video", key=k1, body={"duration_ms": 100}).json()["task_id"]
    time.sleep(0.3)
    # the done status is seen while redis is slow (300 ms > timeout 100 ms, < drop 1 s)
    r.signal(signal.SIGSTOP)
    s = env.req("GET", "/v3/async/task-result?task_id=" + t, key=k1).json()["task"]["status"]
    time.sleep(0.3)
    r.signal(signal.SIGCONT)
    time.sleep(0.3)
    st = env.req("POST", "/v3/async/txt2video", key=k1, body={"duration_ms": 1}).status
    print("  poll saw", s, "; new job after redis answered:", st)
    eq(st, 200, "slot freed by the done status seen during a slow Redis")

def test_hammer_allow(env):
    cfg = config(env, "redis", {"j": {"limits": [
        {"metric": "concurrent", "limit": 2, "scope": "account"},
        {"metric": "requests", "per": "minute", "limit": 1000000}]}},
        {"acme": {"tier": "j"}}, [("k1", "acme")])
    cfg["storage"]["timeout_ms"] = 50
    cfg["storage"]["on_error"] = "allow"
    env.start_gateway(cfg)
    k1 = env.keys["k1"]; r = env.redis[0]
    stop = [False]; res = {}
    def loop():
        while not stop[0]:
            try:
                s = env.req("POST", "/v1/echo", key=k1, body={}, headers={"x-mock-delay-ms": "20"}, timeout=10).status
            except Exception as e:
                s = type(e).__name__
            res[s] = res.get(s, 0) + 1
    ts = [threading.Thread(target=loop) for _ in range(6)]
    for t in ts: t.start()
    for i in range(4):
        time.sleep(0.4); r.signal(signal.SIGSTOP); time.sleep(0.3 + 0.5 * i); r.signal(signal.SIGCONT)
    time.sleep(0.5); stop[0] = True
    for t in ts: t.join()
    print("  statuses:", res)
    time.sleep(1.5)
    from test_redis import keys_of
    from harness import redis_cli
    for k in keys_of(r.port, "rl:*"):
        if "concurrent" in k: print("  ", k, redis_cli(r.port, "ZRANGE", k, "0", "-1", "WITHSCORES"))
    st = [env.req("POST", "/v1/echo", key=k1, body={}).status for _ in range(3)]
    print("  probes:", st)



run([test_stall_leases, test_stall_short, test_job_poll_timeout, test_hammer_allow])
