"""Limits end to end on the memory store: per-minute and daily requests,
units, account scope shared by two keys, overrides, concurrency, spend,
headers on 200 and 429, nothing charged on a refusal, usage."""
import threading
import time

from harness import base_config, day_bound, eq, free_port, run


def gateway(env, tiers, accounts, keys, **server):
    env.start_mock()
    cfg = base_config(env.mock_port, free_port())
    cfg["server"].update(server)
    cfg["tiers"].update(tiers)
    cfg["accounts"] = accounts
    for k in keys:
        env.add_key(cfg, *k)
    env.start_gateway(cfg)
    return cfg


def assert_429(r, code, type_header, should_retry=True, never=False):
    """never: the request is larger than the limit alone, so no moment to
    retry at is named (no Retry-After, no retry-after-ms)."""
    eq(r.status, 429, "status of %r" % r)
    err = r.json()["error"]
    eq(err["type"], "rate_limit_error", "type")
    eq(err["code"], code, "code")
    eq(r.h("x-ratelimit-type"), type_header, "X-RateLimit-Type")
    if never:
        eq((r.h("retry-after"), r.h("retry-after-ms")), (None, None),
           "Retry-After and retry-after-ms of a request that can never pass")
    else:
        ra = int(r.h("retry-after"))
        ms = int(r.h("retry-after-ms"))
        assert ra >= 1 and ms >= 1 and (ms + 999) // 1000 <= ra, \
            "Retry-After %r s and retry-after-ms %r agree" % (ra, ms)
    if should_retry:
        assert r.h("x-should-retry") is None, "no x-should-retry: %r" % r.headers
    else:
        eq(r.h("x-should-retry"), "false", "x-should-retry")
    d = err["details"]
    for f in ("limit", "metric", "per", "scope", "endpoints", "reset"):
        assert f in d, "details.%s missing in %r" % (f, d)
    assert d["reset"] >= int(time.time()), "details.reset not in the past: %r" % d
    return err


@day_bound
def test_minute_then_refused(env):
    gateway(env, {"free": {"limits": [
        {"metric": "requests", "per": "minute", "limit": 3, "endpoints": ["txt2img"]},
        {"metric": "requests", "per": "day", "limit": 100, "endpoints": ["txt2img"]}]}},
        {"acme": {"tier": "free"}}, [("k1", "acme")])
    key = env.keys["k1"]
    for i in range(3):
        r = env.req("POST", "/v3/txt2img", key=key, body={"prompt": "cat"})
        eq(r.status, 200, "request %d" % i)
        eq(r.h("x-ratelimit-limit"), "3", "X-RateLimit-Limit")
        eq(r.h("x-ratelimit-remaining"), str(2 - i), "remaining after charge")
        assert int(r.h("x-ratelimit-reset")) >= int(time.time()), \
            "X-RateLimit-Reset not in the past: %r" % r.headers
        eq(r.h("x-ratelimit-daily-limit"), "100", "X-RateLimit-Daily-Limit")
        eq(r.h("x-ratelimit-daily-remaining"), str(99 - i), "X-RateLimit-Daily-Remaining")
        assert r.h("x-request-id"), "X-Request-Id: %r" % r.headers
    r = env.req("POST", "/v3/txt2img", key=key, body={"prompt": "cat"})
    err = assert_429(r, "RATE_LIMIT_EXCEEDED", "minute")
    eq(err["details"]["limit"], 3, "limit")
    eq(err["details"]["remaining"], 0, "remaining")
    eq(err["details"]["per"], "minute", "per")
    eq(err["details"]["scope"], "key", "scope")
    eq(err["details"]["endpoints"], ["txt2img"], "endpoints")
    eq(r.h("x-ratelimit-remaining"), "0", "X-RateLimit-Remaining on the 429")
    eq(r.h("x-ratelimit-daily-remaining"), "97", "the refusal charged no day")
    assert 40 <= int(r.h("retry-after")) <= 61, r.h("retry-after")
    # Another endpoint is not guarded by these limits.
    eq(env.req("POST", "/v3/img2img", key=key, body={}).status, 200,
       "another endpoint, not limited")
    eq(env.mock_stats()["by_path"].get("/v3/txt2img"), 3, "429 never reached the backend")


@day_bound
def test_daily(env):
    gateway(env, {"free": {"limits": [
        {"metric": "requests", "per": "minute", "limit": 50},
        {"metric": "requests", "per": "day", "limit": 2}]}},
        {"acme": {"tier": "free"}}, [("k1", "acme")])
    key = env.keys["k1"]
    eq(env.req("POST", "/v3/img2img", key=key, body={}).status, 200, "the first of the day")
    eq(env.req("POST", "/v3/img2img", key=key, body={}).status, 200, "the second of the day")
    r = env.req("POST", "/v3/img2img", key=key, body={})
    err = assert_429(r, "DAILY_LIMIT_EXCEEDED", "daily", should_retry=False)
    now = time.time()
    midnight = (int(now) // 86400 + 1) * 86400
    eq(err["details"]["reset"], midnight, "reset at 00:00 UTC")
    assert abs(int(r.h("retry-after")) - (midnight - now)) <= 2, r.h("retry-after")
    # The minute was not charged by the refusal.
    eq(r.h("x-ratelimit-remaining"), "48", "X-RateLimit-Remaining: the minute not charged")


def test_account_shared_by_two_keys(env):
    gateway(env, {"team": {"limits": [
        {"metric": "requests", "per": "minute", "limit": 5, "scope": "account"},
        {"metric": "requests", "per": "minute", "limit": 4}]}},
        {"acme": {"tier": "team"}, "other": {"tier": "team"}},
        [("a1", "acme"), ("a2", "acme"), ("o1", "other")])
    # a1 uses 3, a2 can use only 2 more: the account's 5 are shared.
    for _ in range(3):
        eq(env.req("POST", "/v3/img2img", key=env.keys["a1"], body={}).status, 200,
           "a1 within the account's 5")
    eq(env.req("POST", "/v3/img2img", key=env.keys["a2"], body={}).status, 200,
       "a2's first: the account's 4th")
    eq(env.req("POST", "/v3/img2img", key=env.keys["a2"], body={}).status, 200,
       "a2's second: the account's 5th")
    r = env.req("POST", "/v3/img2img", key=env.keys["a2"], body={})
    err = assert_429(r, "RATE_LIMIT_EXCEEDED", "minute")
    eq(err["details"]["scope"], "account", "the account limit refused")
    eq(err["details"]["endpoints"], ["*"], "all endpoints")
    # Another account is untouched.
    eq(env.req("POST", "/v3/img2img", key=env.keys["o1"], body={}).status, 200,
       "another account untouched")


def test_concurrent_account_limit_exact(env):
    """30 clients at once over two keys of one account, limit 5 per minute on
    the account: exactly 5 admitted."""
    gateway(env, {"team": {"limits": [
        {"metric": "requests", "per": "minute", "limit": 5, "scope": "account"}]}},
        {"acme": {"tier": "team"}}, [("a1", "acme"), ("a2", "acme")])
    results = []
    lock = threading.Lock()

    def client(i):
        key = env.keys["a1" if i % 2 else "a2"]
        r = env.req("POST", "/v3/img2img", key=key, body={},
                    headers={"x-mock-delay-ms": "50"})
        with lock:
            results.append(r.status)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    eq(sorted(results).count(200), 5, "admitted")
    eq(sorted(results).count(429), 25, "refused")


def test_units_per_minute(env):
    gateway(env, {"images": {"limits": [
        {"metric": "units", "per": "minute", "limit": 20, "endpoints": ["txt2img"]}]}},
        {"acme": {"tier": "images"}}, [("k1", "acme")])
    key = env.keys["k1"]
    for n, status, remaining in ((8, 200, "12"), (10, 200, "2"), (3, 429, "2"), (2, 200, "0")):
        r = env.req("POST", "/v3/txt2img", key=key, body={"image_num": n})
        eq(r.status, status, "image_num %d" % n)
        eq(r.h("x-ratelimit-remaining"), remaining, "units remaining after %d" % n)
    # Absent pointer: default 1 -> no room left.
    r = env.req("POST", "/v3/txt2img", key=key, body={})
    assert_429(r, "RATE_LIMIT_EXCEEDED", "minute")
    # More than the limit in one request: never admitted, do not retry.
    r = env.req("POST", "/v3/txt2img", key=key, body={"image_num": 21})
    assert_429(r, "RATE_LIMIT_EXCEEDED", "minute", should_retry=False, never=True)


@day_bound
def test_overrides(env):
    gateway(env, {"free": {"limits": [
        {"metric": "requests", "per": "minute", "limit": 1},
        {"metric": "requests", "per": "day", "limit": 1}]}},
        {"big": {"tier": "free", "limits": [
            {"metric": "requests", "per": "minute", "limit": 3}]}},
        [("plain", "big"),
         ("nodaily", "big", [{"metric": "requests", "per": "day", "limit": None}]),
         ("strict", "big", [{"metric": "requests", "per": "minute", "limit": 0}])])
    # Account raised the minute to 3 but the tier's day of 1 still holds.
    eq(env.req("POST", "/v3/img2img", key=env.keys["plain"], body={}).status, 200,
       "the tier's one a day")
    assert_429(env.req("POST", "/v3/img2img", key=env.keys["plain"], body={}),
               "DAILY_LIMIT_EXCEEDED", "daily", should_retry=False)
    # Key removed the day: the account's 3/min applies.
    for _ in range(3):
        eq(env.req("POST", "/v3/img2img", key=env.keys["nodaily"], body={}).status, 200,
           "nodaily within the account's 3 a minute")
    assert_429(env.req("POST", "/v3/img2img", key=env.keys["nodaily"], body={}),
               "RATE_LIMIT_EXCEEDED", "minute")
    # Key set its minute to 0: nothing passes, never retry.
    assert_429(env.req("POST", "/v3/img2img", key=env.keys["strict"], body={}),
               "RATE_LIMIT_EXCEEDED", "minute", should_retry=False, never=True)


def test_concurrency_leases(env):
    gateway(env, {"c": {"limits": [
        {"metric": "concurrent", "limit": 2, "scope": "account"}]}},
        {"acme": {"tier": "c"}}, [("k1", "acme")])
    key = env.keys["k1"]
    slow = []

    def slow_call():
        slow.append(env.req("POST", "/v3/img2img", key=key, body={},
                            headers={"x-mock-delay-ms": "1500"}).status)

    ts = [threading.Thread(target=slow_call) for _ in range(2)]
    for t in ts:
        t.start()
    env.wait_backend_busy(2)
    r = env.req("POST", "/v3/img2img", key=key, body={})
    err = assert_429(r, "CONCURRENT_LIMIT_EXCEEDED", "concurrent")
    eq(err["message"], "Concurrent prediction limit exceeded. 2/2 predictions running.",
       "message")
    eq(err["details"]["limit"], 2, "limit")
    eq(err["details"]["active"], 2, "active")
    for t in ts:
        t.join()
    eq(slow, [200, 200], "slow calls")
    # Leases released when the responses were sent.
    eq(env.req("POST", "/v3/img2img", key=key, body={}).status, 200,
       "a lease free once the slow calls answered")
    # Backend failure and timeout release the lease too.
    eq(env.req("POST", "/v3/img2img", key=key, body={},
               headers={"x-mock-status": "500"}).status, 500, "a backend 500 passes through")
    eq(env.req("POST", "/v3/img2img", key=key, body={},
               headers={"x-mock-close": "1"}).status, 502, "a backend that closes: 502")
    eq(env.req("POST", "/v3/img2img", key=key, body={},
               headers={"x-mock-delay-ms": "3000"}).status, 504, "a backend too slow: 504")
    usage = env.req("GET", "/v1/usage", key=key).json()
    eq(usage["limits"][0]["used"], 0, "no lease left held")


@day_bound
def test_spend_cap(env):
    env.start_mock()
    cfg = base_config(env.mock_port, free_port())
    cfg["endpoints"]["txt2img"]["price"] = {"per_request": "0.01", "per_unit": "0.0015"}
    cfg["tiers"]["paid"] = {"limits": [
        {"metric": "spend", "per": "day", "limit": "0.05", "scope": "account"}]}
    cfg["accounts"] = {"acme": {"tier": "paid"}}
    env.add_key(cfg, "a1", "acme")
    env.add_key(cfg, "a2", "acme")
    env.start_gateway(cfg)
    # 0.01 + 10 * 0.0015 = 0.025 each: two fit in 0.05 exactly, across keys.
    eq(env.req("POST", "/v3/txt2img", key=env.keys["a1"], body={"image_num": 10}).status, 200,
       "a1's 0.025")
    eq(env.req("POST", "/v3/txt2img", key=env.keys["a2"], body={"image_num": 10}).status, 200,
       "a2's 0.025: 0.05 in all")
    r = env.req("POST", "/v3/txt2img", key=env.keys["a1"], body={"image_num": 1})
    err = assert_429(r, "SPEND_LIMIT_EXCEEDED", "daily", should_retry=False)
    eq(err["details"]["limit"], "0.05", "money as a decimal string")


@day_bound
def test_usage_not_counted(env):
    gateway(env, {"free": {"limits": [
        {"metric": "requests", "per": "minute", "limit": 3, "endpoints": ["txt2img"]},
        {"metric": "requests", "per": "day", "limit": 100}]}},
        {"acme": {"tier": "free"}}, [("k1", "acme")])
    key = env.keys["k1"]
    eq(env.req("POST", "/v3/txt2img", key=key, body={}).status, 200, "the one txt2img")
    for _ in range(5):
        u = env.req("GET", "/v1/usage", key=key)
        eq(u.status, 200, "usage answer")
    body = u.json()
    eq(body["key"], "k1", "key id")
    eq(body["account"], "acme", "account")
    eq(body["tier"], "free", "tier")
    by = {(l["metric"], l["per"]): l for l in body["limits"]}
    eq(by[("requests", "minute")]["used"], 1, "minute used")
    eq(by[("requests", "minute")]["remaining"], 2, "minute remaining")
    eq(by[("requests", "minute")]["endpoints"], ["txt2img"], "endpoints")
    eq(by[("requests", "day")]["used"], 1, "usage calls not counted")
    assert by[("requests", "day")]["reset"] % 86400 == 0, "the day resets at 00:00 UTC: %r" % by


@day_bound
def test_usage_many_limits(env):
    """More limits than one store call carries: usage answers them all."""
    sets = [["txt2img"], ["img2img"], ["chat"], ["echo"], ["small"], ["models_api"],
            ["txt2img", "img2img"], None]
    limits = []
    for per in ("second", "minute", "hour", "day", "month"):
        for eps in sets:
            l = {"metric": "requests", "per": per, "limit": 1000}
            if eps:
                l["endpoints"] = eps
            limits.append(l)
    gateway(env, {"many": {"limits": limits}}, {"acme": {"tier": "many"}}, [("k1", "acme")])
    key = env.keys["k1"]
    eq(env.req("POST", "/v3/img2img", key=key, body={}).status, 200, "one img2img")
    u = env.req("GET", "/v1/usage", key=key)
    eq(u.status, 200, "usage answer")
    got = u.json()["limits"]
    eq(len(got), 40, "every limit reported")
    eq(sum(l["used"] for l in got), 15, "img2img counted by its 15 limits")


def test_enterprise_unlimited(env):
    gateway(env, {"enterprise": {"limits": []}}, {"big": {"tier": "enterprise"}},
            [("e1", "big")])
    for _ in range(50):
        r = env.req("POST", "/v3/img2img", key=env.keys["e1"], body={})
        eq(r.status, 200, "unlimited")
    assert r.h("x-ratelimit-limit") is None and r.h("x-request-id"), \
        "no rate headers with no limit, X-Request-Id all the same: %r" % r.headers


run([test_minute_then_refused, test_daily, test_account_shared_by_two_keys,
     test_concurrent_account_limit_exact, test_units_per_minute, test_overrides,
     test_concurrency_leases, test_spend_cap, test_usage_not_counted,
     test_usage_many_limits, test_enterprise_unlimited])
