"""What API clients read: the retry rules of the official OpenAI Python SDK
(reimplemented from its documented behaviour, not vendored), the OpenAI
x-ratelimit-* fields and the IETF RateLimit / RateLimit-Policy fields."""
import random
import re
import time

from harness import base_config, day_bound, eq, free_port, request, run


class SdkLikeClient:
    """The retry rules of openai-python's base client:
    - `x-should-retry: true|false` from the server decides when present;
    - else retry on 408, 409, 429 and 5xx;
    - the delay is `retry-after-ms` (ms), else `retry-after` (seconds), when
      it is within (0, 60] s; else exponential backoff from 0.5 s up to 8 s
      with jitter;
    - at most max_retries retries (2 by default)."""

    def __init__(self, port, key, max_retries=2):
        self.port, self.key, self.max_retries = port, key, max_retries
        self.attempts = []

    def should_retry(self, r):
        h = r.h("x-should-retry")
        if h == "true":
            return True
        if h == "false":
            return False
        return r.status in (408, 409, 429) or r.status >= 500

    def delay(self, r, retries_taken):
        ra = None
        if r.h("retry-after-ms"):
            try:
                ra = float(r.h("retry-after-ms")) / 1000.0
            except ValueError:
                pass
        if ra is None and r.h("retry-after"):
            try:
                ra = float(r.h("retry-after"))
            except ValueError:
                pass
        if ra is not None and 0 < ra <= 60:
            return ra
        d = min(0.5 * 2 ** retries_taken, 8.0)
        return d * (1 - 0.25 * random.random())

    def post(self, path, body):
        retries = 0
        while True:
            r = request(self.port, "POST", path, body=body,
                        headers={"Authorization": "Bearer " + self.key})
            self.attempts.append((time.time(), r.status))
            if r.status < 400 or retries >= self.max_retries or not self.should_retry(r):
                return r
            time.sleep(self.delay(r, retries))
            retries += 1


def gateway(env, limits, **server):
    env.start_mock()
    cfg = base_config(env.mock_port, free_port())
    cfg["server"].update(server)
    cfg["tiers"]["t"] = {"limits": limits}
    cfg["accounts"] = {"acme": {"tier": "t"}}
    env.add_key(cfg, "k1", "acme")
    env.start_gateway(cfg)
    return env.keys["k1"]


@day_bound
def test_sdk_retries_rate_not_daily(env):
    key = gateway(env, [
        {"metric": "requests", "per": "second", "limit": 1, "endpoints": ["img2img"]},
        {"metric": "requests", "per": "day", "limit": 2, "endpoints": ["echo"]}])
    # A per-second 429 is retried after the advertised delay, and passes.
    c = SdkLikeClient(env.port, key)
    eq(c.post("/v3/img2img", "{}").status, 200, "first")
    t0 = time.time()
    r = c.post("/v3/img2img", "{}")
    eq(r.status, 200, "retried into the next second")
    eq([s for _, s in c.attempts], [200, 429, 200], "one retry")
    waited = c.attempts[2][0] - c.attempts[1][0]
    assert 0.0 < waited <= 1.3, "waited %.3f s, as retry-after-ms said" % waited
    assert time.time() - t0 < 2, "no backoff beyond the advertised delay"
    # A daily 429 carries x-should-retry: false and is not retried.
    c = SdkLikeClient(env.port, key)
    c.post("/v1/echo", "{}")
    c.post("/v1/echo", "{}")
    t0 = time.time()
    r = c.post("/v1/echo", "{}")
    eq((r.status, r.h("x-should-retry"), r.h("x-ratelimit-type")), (429, "false", "daily"),
       "daily refusal")
    eq([s for _, s in c.attempts], [200, 200, 429], "the daily 429 was not retried")
    assert time.time() - t0 < 0.5, "no wait for a daily 429"


def test_openai_and_ietf_headers(env):
    key = gateway(env, [
        {"metric": "requests", "per": "minute", "limit": 60},
        {"metric": "requests", "per": "hour", "limit": 1000},
        {"metric": "units", "per": "minute", "limit": 100, "endpoints": ["txt2img"]}],
        ietf_headers=True, openai_headers=True)
    r = env.req("POST", "/v3/txt2img", key=key, body={"image_num": 4})
    eq(r.status, 200, "the first txt2img")
    eq(r.h("x-ratelimit-limit-requests"), "60", "requests limit")
    eq(r.h("x-ratelimit-remaining-requests"), "59", "requests remaining")
    eq(r.h("x-ratelimit-limit-tokens"), "100", "units as tokens")
    eq(r.h("x-ratelimit-remaining-tokens"), "96", "tokens remaining")
    for h in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        assert re.fullmatch(r"(\d+ms|(\d+h)?(\d+m)?\d+(\.\d+)?s)", r.h(h)), "%s as a duration: %r" % (h, r.h(h))
    pol = r.h("ratelimit-policy")
    cur = r.h("ratelimit")
    # Structured-field lists: "name";q=N;w=N[;qu="..."] and "name";r=N;t=N.
    items = [i.strip() for i in pol.split(",")]
    eq(len(items), 3, "one policy item per applying limit: %r" % pol)
    assert '"requests:minute:key:*";q=60;w=60' in items, "the minute's policy in %r" % pol
    assert '"requests:hour:key:*";q=1000;w=3600' in items, "the hour's policy in %r" % pol
    assert any(i.startswith('"units:minute:key:txt2img";q=100;qu="units";w=60')
               for i in items), "the units policy in %r" % pol
    m = re.search(r'"requests:minute:key:\*";r=(\d+);t=(\d+)', cur)
    assert m and m.group(1) == "59" and 0 < int(m.group(2)) <= 61, \
        "RateLimit of the minute: r=59, t in (0, 61]: %r" % cur
    # Also on a 429.
    for _ in range(30):
        r = env.req("POST", "/v3/txt2img", key=key, body={"image_num": 4})
    eq(r.status, 429, "the units of the minute used up")
    eq(r.h("x-ratelimit-remaining-tokens"), "0", "on the 429")
    assert r.h("ratelimit") and r.h("retry-after-ms"), \
        "RateLimit and retry-after-ms on the 429: %r" % r.headers


run([test_sdk_retries_rate_not_daily, test_openai_and_ietf_headers])
