"""Endpoints told apart by a field of the JSON body (`match`), and the
Anthropic-style rate headers, end to end with the real binary against
backend.py, on the memory store and on a real redis-server:

 - per-model limits on one path: two models with their own limits and
   backends, the endpoint without match takes every other model, a route
   without one answers 404 with details.field for a model it does not list;
 - 401 from the head on a match route, before the body;
 - a body that is not JSON (or repeats a member name) on a match route: 400;
 - match and units read from the same body, stream_include_usage too;
 - the shipped example's per-model LLM and media routes;
 - server.anthropic_headers: anthropic-ratelimit-* as the Anthropic SDK and
   its users read them, and request-id on every answer.
"""
import datetime
import json
import os
import re
import socket

import backend
from harness import base_config, eq, for_both, free_port, run

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "..", "deploy", "examples")

CHAT = "/v1/chat/completions"
IMAGES = "/v1/images/generations"


def named(name):
    """A backend that says who it is and what it got."""
    def handler(req):
        return backend.Reply(200, {"backend": name, "got": req.json()},
                             headers=[("request-id", "req_from_backend")])
    return handler


def setup(env, store, limits, anthropic=False, args=()):
    """Three backends (big, small, rest) behind one gateway:
      chat_big    POST /v1/chat/completions  model "big-model", units max_tokens
      chat_small  POST /v1/chat/completions  model "small-model" or "tiny-model"
      chat_rest   POST /v1/chat/completions  any other model (no match)
      img_a       POST /v1/images/generations  model "img-a" (no fallback)
      img_b       POST /v1/images/generations  model "img-b"
    with the tier's limits given, one key "k" of account "acme"."""
    env.backs = {n: env.start_backend(named(n)) for n in ("big", "small", "rest")}
    cfg = base_config(env.backs["rest"].port, free_port())
    cfg["backends"] = {n: {"url": "http://127.0.0.1:%d" % b.port, "timeout_ms": 2000}
                       for n, b in env.backs.items()}
    cfg["endpoints"] = {
        "chat_big": {"method": "POST", "path": CHAT, "backend": "big",
                     "match": {"pointer": "/model", "values": ["big-model"]},
                     "units": [{"pointer": "/max_tokens", "default": 16}],
                     "reconcile": {"response_pointer": "/usage/total_tokens",
                                   "stream_include_usage": True}},
        "chat_small": {"method": "POST", "path": CHAT, "backend": "small",
                       "match": {"pointer": "/model", "values": ["small-model", "tiny-model"]}},
        "chat_rest": {"method": "POST", "path": CHAT, "backend": "rest"},
        "img_a": {"method": "POST", "path": IMAGES, "backend": "rest",
                  "match": {"pointer": "/model", "values": ["img-a"]}},
        "img_b": {"method": "POST", "path": IMAGES, "backend": "rest",
                  "match": {"pointer": "/model", "values": ["img-b"]}},
    }
    cfg["tiers"] = {"t": {"limits": limits}}
    cfg["accounts"] = {"acme": {"tier": "t"}}
    if anthropic:
        cfg["server"]["anthropic_headers"] = True
    if store == "redis":
        r = env.start_redis()
        cfg["storage"] = {"driver": "redis", "address": "127.0.0.1:%d" % r.port,
                          "timeout_ms": 500}
    env.add_key(cfg, "k", "acme")
    env.start_gateway(cfg, args=args)
    return env.keys["k"]


def chat(env, key, model, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    body.update(extra)
    return env.req("POST", CHAT, key=key, body=body)


def per_model_limits(env, store):
    key = setup(env, store, [
        {"metric": "requests", "per": "minute", "limit": 2, "endpoints": ["chat_big"]},
        {"metric": "requests", "per": "minute", "limit": 5, "endpoints": ["chat_small"]},
        {"metric": "requests", "per": "minute", "limit": 3, "endpoints": ["chat_rest"]},
    ])
    for i in range(2):
        r = chat(env, key, "big-model")
        eq((r.status, r.json()["backend"]), (200, "big"), "big-model %d" % i)
    eq(r.h("x-ratelimit-limit"), "2", "big-model's own limit")
    r = chat(env, key, "big-model")
    eq(r.status, 429, "big-model's third in a minute")
    d = r.json()["error"]["details"]
    eq((d["limit"], d["endpoints"]), (2, ["chat_big"]), "refused by the big model's limit")
    # The small models share one endpoint and its looser limit, untouched by the big one's.
    for i, m in enumerate(["small-model", "tiny-model", "small-model"]):
        r = chat(env, key, m)
        eq((r.status, r.json()["backend"]), (200, "small"), "%s (%d)" % (m, i))
    eq((r.h("x-ratelimit-limit"), r.h("x-ratelimit-remaining")), ("5", "2"),
       "small models counted together")
    # Any other model (or none) goes to the endpoint without match.
    for m in ["other-model", None]:
        body = {"messages": []} if m is None else {"model": m}
        r = env.req("POST", CHAT, key=key, body=body)
        eq((r.status, r.json()["backend"]), (200, "rest"), "fallback for %r" % m)
    r = env.req("POST", CHAT, key=key, body={"model": 7})
    eq((r.status, r.json()["backend"]), (200, "rest"), "a model that is not a string")
    eq(chat(env, key, "other-model").status, 429, "the fallback's own limit of 3")
    eq(chat(env, key, "tiny-model").status, 200, "the small models still pass")
    # What reached the backends: each body went through whole, to its own backend.
    eq([rq.json()["model"] for rq in env.backs["big"].requests], ["big-model"] * 2,
       "the big backend got the big model's admitted requests")
    eq(len(env.backs["small"].requests), 4, "the small backend got the small models'")

    # A route without a fallback: a model it does not list is a 404 naming the field.
    r = env.req("POST", IMAGES, key=key, body={"model": "img-c", "prompt": "x"})
    eq(r.status, 404, "unlisted model")
    e = r.json()["error"]
    eq((e["type"], e["code"], e["details"]), ("not_found_error", "NOT_FOUND",
                                               {"field": "/model"}), "404 names the pointer")
    r = env.req("POST", IMAGES, key=key, body={"prompt": "x"})
    eq((r.status, r.json()["error"]["details"]), (404, {"field": "/model"}), "no model at all")
    r = env.req("POST", IMAGES, key=key, body={"model": "img-a\u0000x"})
    eq((r.status, r.json()["error"]["code"]), (400, "INVALID_BODY"),
       "a NUL inside a string is refused, never taken for the value before it")
    eq(env.req("POST", IMAGES, key=key, body={"model": "img-b"}).status, 200, "img-b is listed")
    before = len(env.backs["rest"].requests)
    eq(env.req("POST", IMAGES, key=key, body={"model": "img-c"}).status, 404, "again")
    eq(len(env.backs["rest"].requests), before, "a 404 reaches no backend")

    # Usage names each matched endpoint's limit.
    u = env.req("GET", "/v1/usage", key=key).json()
    got = sorted((l["endpoints"][0], l["used"]) for l in u["limits"])
    eq(got, [("chat_big", 2), ("chat_rest", 3), ("chat_small", 4)], "usage per model")


def auth_from_head(env, store):
    """401 on a match route comes from the head: the client that sent only
    a head and announced a body gets it without sending the body."""
    setup(env, store, [])
    s = socket.create_connection(("127.0.0.1", env.port), timeout=5)
    try:
        s.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    assert data.startswith(b"HTTP/1.1 401"), "401 before the body: %r" % data[:80]
    eq(env.req("POST", "/v1/nothing", body={"model": "big-model"}).status, 404,
       "no such path: 404 before the key")


def not_json(env, store):
    key = setup(env, store, [
        {"metric": "requests", "per": "minute", "limit": 10},
    ])
    for body, what in [("not json", "that is not JSON"), ("", "that is empty"),
                       ('{"model": "big-model", "model": "small-model"}', "repeating a name")]:
        r = env.req("POST", CHAT, key=key, body=body,
                    headers={"Content-Type": "application/json"})
        eq((r.status, r.json()["error"]["code"]), (400, "INVALID_BODY"), "a body %s" % what)
    for n, b in env.backs.items():
        eq(len(b.requests), 0, "no request reached backend %s" % n)
    r = chat(env, key, "tiny-model")
    eq((r.status, r.h("x-ratelimit-remaining")), (200, "9"), "the 400s were not counted")


def match_and_units(env, store):
    """The same body decides the endpoint and its units (max_tokens), and
    gets the usage chunk asked for when it streams."""
    key = setup(env, store, [
        {"metric": "units", "per": "minute", "limit": 100, "endpoints": ["chat_big"]},
        {"metric": "requests", "per": "minute", "limit": 10, "endpoints": ["chat_small"]},
    ])
    r = chat(env, key, "big-model", max_tokens=60)
    eq((r.status, r.h("x-ratelimit-remaining")), (200, "40"), "60 units of 100")
    r = chat(env, key, "big-model", max_tokens=50)
    eq(r.status, 429, "50 more do not fit")
    eq(r.json()["error"]["details"]["metric"], "units", "refused by the units limit")
    r = chat(env, key, "big-model", max_tokens=-1)
    eq((r.status, r.json()["error"]["code"]), (400, "INVALID_BODY"), "negative units")
    # A small model's max_tokens counts nothing: its endpoint has no units.
    r = chat(env, key, "small-model", max_tokens=5000)
    eq((r.status, r.h("x-ratelimit-remaining")), (200, "9"), "one request, whatever max_tokens")
    r = chat(env, key, "big-model", max_tokens=10, stream=True)
    eq(r.status, 200, "a streamed request")
    got = env.backs["big"].requests[-1].json()
    eq(got["stream_options"], {"include_usage": True}, "the big model is asked for usage")
    eq((got["model"], got["max_tokens"]), ("big-model", 10), "the rest of the body kept")
    got = env.backs["small"].requests[-1].json()
    assert "stream_options" not in got, "the small model's body went through untouched"


RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def check_reset(value, what, horizon_s=61):
    """An RFC 3339 UTC time, as Python's (and the SDKs') date parsers read
    it, between now and the end of the window."""
    assert value and RFC3339.match(value), "%s: RFC 3339 UTC, got %r" % (what, value)
    t = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    now = datetime.datetime.now(datetime.timezone.utc)
    delta = (t - now).total_seconds()
    assert -2 <= delta <= horizon_s, "%s: %s is %.1f s from now" % (what, value, delta)


def anthropic_headers(env, store):
    key = setup(env, store, [
        {"metric": "requests", "per": "minute", "limit": 3, "endpoints": ["chat_big"]},
        {"metric": "units", "per": "minute", "limit": 1000, "endpoints": ["chat_big"]},
    ], anthropic=True)
    r = chat(env, key, "big-model", max_tokens=100)
    eq(r.status, 200, "proxied")
    h = r.headers
    eq((h.get("anthropic-ratelimit-requests-limit"), h.get("anthropic-ratelimit-requests-remaining")),
       ("3", "2"), "requests limit and remaining")
    eq((h.get("anthropic-ratelimit-tokens-limit"), h.get("anthropic-ratelimit-tokens-remaining")),
       ("1000", "900"), "tokens limit and remaining")
    check_reset(h.get("anthropic-ratelimit-requests-reset"), "requests reset")
    check_reset(h.get("anthropic-ratelimit-tokens-reset"), "tokens reset")
    for name in ("anthropic-ratelimit-requests-limit", "anthropic-ratelimit-requests-remaining",
                 "anthropic-ratelimit-tokens-limit", "anthropic-ratelimit-tokens-remaining"):
        assert re.match(r"^\d+$", h[name]), "%s is an integer string: %r" % (name, h[name])
    # The SDK reads request-id into requestID: ours, not the backend's.
    assert h.get("x-request-id"), "X-Request-Id on a proxied answer"
    eq(h.get("request-id"), h.get("x-request-id"), "request-id is X-Request-Id (proxied)")

    chat(env, key, "big-model", max_tokens=100)
    chat(env, key, "big-model", max_tokens=100)
    r = chat(env, key, "big-model", max_tokens=100)
    eq(r.status, 429, "the fourth")
    eq(r.h("anthropic-ratelimit-requests-remaining"), "0", "none left on the 429")
    check_reset(r.h("anthropic-ratelimit-requests-reset"), "reset on the 429")
    eq(r.h("request-id"), r.h("x-request-id"), "request-id on a 429")
    # The next one is refused by the instance itself (the deny cache): the
    # same fields, the tokens limit's too, and resets in the window ahead.
    first = r
    r = chat(env, key, "big-model", max_tokens=100)
    eq(r.status, 429, "the fifth")
    for name in ("anthropic-ratelimit-requests-limit", "anthropic-ratelimit-requests-remaining",
                 "anthropic-ratelimit-tokens-limit", "anthropic-ratelimit-tokens-remaining",
                 "x-ratelimit-limit", "x-ratelimit-remaining"):
        eq(r.h(name), first.h(name), "%s on the kept refusal" % name)
    check_reset(r.h("anthropic-ratelimit-requests-reset"), "requests reset on the kept refusal")
    check_reset(r.h("anthropic-ratelimit-tokens-reset"), "tokens reset on the kept refusal")
    # A request larger than the tokens limit alone is told it never passes,
    # by that limit, even while a requests refusal is kept.
    r = chat(env, key, "big-model", max_tokens=5000)
    eq((r.status, r.h("x-should-retry"), r.h("retry-after")), (429, "false", None),
       "larger than the tokens limit alone")
    eq(r.json()["error"]["details"]["metric"], "units", "the limit it is larger than")
    # Every answer, errors too: no key, no endpoint, a bad body, a 404 by match.
    for what, resp in [
            ("401", env.req("POST", CHAT, body={"model": "big-model"})),
            ("404 path", env.req("POST", "/v1/none", key=key, body={})),
            ("400", env.req("POST", CHAT, key=key, body="{",
                            headers={"Content-Type": "application/json"})),
            ("404 match", env.req("POST", IMAGES, key=key, body={"model": "zz"})),
            ("usage", env.req("GET", "/v1/usage", key=key))]:
        assert resp.h("request-id"), "request-id on the %s answer" % what
        eq(resp.h("request-id"), resp.h("x-request-id"), "request-id = X-Request-Id (%s)" % what)
    # An answer of an endpoint without requests or units limits has none of the ratelimit fields.
    r = chat(env, key, "tiny-model")
    eq(r.status, 200, "small model (no limits)")
    assert not [n for n in r.headers if n.startswith("anthropic-ratelimit-")], \
        "no ratelimit fields without a limit: %r" % r.headers


def anthropic_headers_off(env, store):
    """Off by default: no anthropic-ratelimit fields, and the backend's own
    request-id goes through untouched."""
    key = setup(env, store, [
        {"metric": "requests", "per": "minute", "limit": 3, "endpoints": ["chat_big"]},
    ])
    r = chat(env, key, "big-model")
    eq(r.status, 200, "proxied")
    assert not [n for n in r.headers if n.startswith("anthropic-ratelimit-")], \
        "no anthropic fields when off: %r" % r.headers
    eq(r.h("request-id"), "req_from_backend", "the backend's request-id")
    eq(env.req("POST", CHAT, body={}).h("request-id"), None, "no request-id of ours when off")


def example_routes(env):
    """deploy/examples/ratewall.json as shipped: the LLM route's large model
    is tight and its small one loose, the media routes carry the per-model
    images and video requests per minute."""
    with open(os.path.join(EXAMPLES, "ratewall.json")) as f:
        cfg = json.load(f)
    env.start_mock()
    cfg["server"]["listen"] = "127.0.0.1:%d" % free_port()
    cfg["backends"]["models"]["url"] = "http://127.0.0.1:%d" % env.mock_port
    cfg["keys_file"] = os.path.abspath(os.path.join(EXAMPLES, "keys.json"))
    env.start_gateway(cfg)
    keys = dict(l.split() for l in open(os.path.join(EXAMPLES, "DEMO_KEYS")) if l.strip())
    llm, media = keys["demo_llm"], keys["demo_images"]
    large, small = "meta-llama/llama-3.1-405b-instruct", "meta-llama/llama-3.1-8b-instruct"
    for i in range(10):
        eq(chat(env, llm, large, max_tokens=10).status, 200, "large model request %d" % i)
    r = chat(env, llm, large, max_tokens=10)
    eq((r.status, r.json()["error"]["details"]["endpoints"]), (429, ["chat_large"]),
       "the large model's 10 requests per minute")
    r = chat(env, llm, small, max_tokens=1000)
    eq((r.status, r.h("x-ratelimit-limit")), (200, "600"), "the small model is loose")
    eq(chat(env, llm, "some/other-model", max_tokens=10).status, 200, "others: the chat endpoint")

    def image(model, n=1):
        return env.req("POST", "/v3/media/images", key=media,
                       body={"model": model, "prompt": "a cat", "image_num": n})
    eq(image("txt2img_v3", 20).status, 200, "txt2img_v3: 20 images a minute")
    eq(image("txt2img_v3").status, 429, "the 21st image")
    eq(image("img2img_v3", 11).status, 429, "img2img_v3: 11 images are over its 10")
    eq(image("remove_background", 10).status, 200, "remove_background: its own 10")
    eq(image("upscale_v3", 20).status, 200, "upscale_v3: 20")

    def video(model):
        return env.req("POST", "/v3/media/videos", key=media, body={"model": model})
    eq([video("txt2video").status for _ in range(3)], [200, 200, 429], "txt2video: 2 a minute")
    eq(video("img2video").status, 200, "img2video has its own 2")
    eq([video("Kling i2v").status for _ in range(20)], [200] * 20, "Kling i2v: 20 a minute")
    eq(video("Kling i2v").status, 429, "the 21st Kling i2v")
    eq(video("Minimax").status, 200, "Minimax has its own 20")
    r = video("sora")
    eq((r.status, r.json()["error"]["details"]), (404, {"field": "/model"}), "an unlisted model")



def model_in_access_log(env, store):
    """The access log names the model a body-matching endpoint took, as
    the config lists it; a request the fallback took has none."""
    log = os.path.join(env.dir, "access.log")
    key = setup(env, store, [{"metric": "requests", "per": "minute", "limit": 100}],
                args=["--access-log", log])
    for m in ["big-model", "tiny-model", "other-model"]:
        eq(chat(env, key, m).status, 200, "a chat call with %s" % m)
    env.gw.stop()
    env.gw = None
    lines = [json.loads(l) for l in open(log) if l.strip()]
    eq([(l["endpoint"], l["model"]) for l in lines],
       [("chat_big", "big-model"), ("chat_small", "tiny-model"), ("chat_rest", None)],
       "endpoint and model of each line")

run(for_both(per_model_limits) + for_both(model_in_access_log) + for_both(auth_from_head) + for_both(not_json) +
    for_both(match_and_units) + [example_routes] + for_both(anthropic_headers) + for_both(anthropic_headers_off))
