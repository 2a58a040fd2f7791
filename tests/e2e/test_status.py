"""The status page: GET /admin/status (with and without the token) and the
page at GET / in a real headless Chromium: it loads with no outside
requests, asks for the token, and shows numbers that move with traffic."""
import hashlib
import re
import threading

from harness import base_config, eq, free_port, poll, request, run, wait_port
import browser

TOKEN = "status-admin-token"
AUTH = {"Authorization": "Bearer " + TOKEN}
JOB = {"id_pointer": "/task_id", "status_endpoint": "task_result", "status_query": "task_id",
       "status_pointer": "/task/status",
       "done_values": ["TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"], "max_seconds": 3600}


def start(env):
    env.start_mock()
    cfg = base_config(env.mock_port, free_port())
    cfg["endpoints"].update({
        "txt2video": {"method": "POST", "path": "/v3/async/txt2video", "backend": "models",
                      "job": JOB},
        "task_result": {"method": "GET", "path": "/v3/async/task-result", "backend": "models"},
    })
    cfg["tiers"]["t"] = {"limits": [
        {"metric": "requests", "per": "minute", "limit": 3, "endpoints": ["img2img"]},
        {"metric": "requests", "per": "minute", "limit": 100, "endpoints": ["echo"]},
        {"metric": "concurrent", "limit": 50, "scope": "account",
         "endpoints": ["echo", "txt2video"]}]}
    cfg["accounts"] = {"acme": {"tier": "t"}, "globex": {"tier": "t"}}
    cfg["admin"] = {"listen": "127.0.0.1:%d" % free_port(),
                    "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}
    env.add_key(cfg, "k_acme", "acme")
    env.add_key(cfg, "k_globex", "globex")
    env.start_gateway(cfg)
    env.admin_port = int(cfg["admin"]["listen"].rsplit(":", 1)[1])
    wait_port(env.admin_port, env.gw.p)
    env.origin = "http://127.0.0.1:%d" % env.admin_port
    return cfg


def status(env):
    r = request(env.admin_port, "GET", "/admin/status", headers=AUTH)
    eq(r.status, 200, "/admin/status with the token")
    return r.json()


def endpoint(doc, name):
    for e in doc["endpoints"]:
        if e["endpoint"] == name:
            return e
    return None


def test_status_fields(env):
    start(env)
    eq(request(env.admin_port, "GET", "/admin/status").status, 401, "no token")
    r = request(env.admin_port, "GET", "/admin/status",
                headers={"Authorization": "Bearer wrong"})
    eq((r.status, r.json()["error"]["code"]), (403, "INVALID_ADMIN_TOKEN"), "a wrong token")
    acme, globex = env.keys["k_acme"], env.keys["k_globex"]
    statuses = [env.req("POST", "/v3/img2img", key=acme, body={}).status for _ in range(5)]
    eq(statuses, [200, 200, 200, 429, 429], "three admitted, two refused")
    for _ in range(4):
        eq(env.req("POST", "/v1/echo", key=globex, body={}).status, 200, "echo admitted")

    # The answers leave before their requests are counted: poll.
    doc = poll(lambda: (lambda d: d if endpoint(d, "echo") and
                        sum(endpoint(d, "echo")["requests"]) == 4 else None)(status(env)),
               10, "the requests counted")
    eq(len(doc["minutes"]), 15, "fifteen minutes")
    eq(doc["minutes"], sorted(doc["minutes"]), "oldest minute first")
    eq(doc["minutes"][-1] % 60, 0, "minutes start on a minute")
    img = endpoint(doc, "img2img")
    # (A minute may have turned during the test: sums over the minutes.)
    eq((sum(img["requests"]), sum(img["refused"])), (5, 2), "img2img over 15 minutes")
    assert img["requests"][-1] + img["requests"][-2] == 5, "in the last minutes: %r" % img
    eq(len(img["requests"]), 15, "one count per minute")
    st = doc["store"]
    eq((st["driver"], st["ready"]), ("memory", True), "store health")
    # The second refusal may come from the local deny cache (no store call).
    assert sum(st["calls"]) in (8, 9), "the decisions asked of the store: %r" % st
    k = max(i for i, n in enumerate(st["calls"]) if n)
    assert st["latency_avg_ms"][k] is not None and st["latency_avg_ms"][k] >= 0, \
        "a store latency: %r" % st
    assert st["latency_max_ms"][k] >= st["latency_avg_ms"][k], "max >= average: %r" % st
    eq(doc["refused_keys"], [{"key_id": "k_acme", "account": "acme", "refused": 2,
                              "limits": [{"limit": "requests:minute:key:img2img",
                                          "refused": 2}]}],
       "the refused key, by id, with the limit that refused it")
    accts = {a["account"]: a for a in doc["accounts"]}
    eq((accts["acme"]["limit"], accts["acme"]["used"], accts["acme"]["max"],
        accts["acme"]["percent"]), ("requests:minute:key:img2img", 3, 3, 100.0),
       "acme at its img2img limit")
    eq((accts["globex"]["limit"], accts["globex"]["used"], accts["globex"]["max"]),
       ("requests:minute:key:echo", 4, 100), "globex at 4 of 100")
    eq([a["account"] for a in doc["accounts"]], ["acme", "globex"], "fullest first")
    eq((doc["leases_held"], doc["jobs_held"]), (0, 0), "nothing held")
    text = request(env.admin_port, "GET", "/admin/status", headers=AUTH).body.decode()
    assert acme not in text and globex not in text, "a raw key in /admin/status"

    # Leases of requests in flight, and jobs that hold theirs.
    out = []
    t = threading.Thread(target=lambda: out.append(env.req(
        "POST", "/v1/echo", key=globex, body={}, headers={"x-mock-delay-ms": "1000"})))
    t.start()
    try:
        poll(lambda: status(env)["leases_held"] == 1, 10, "one lease held in flight")
    finally:
        t.join(20)
    eq(out[0].status, 200, "the slow request")
    poll(lambda: status(env)["leases_held"] == 0, 10, "the lease released")
    r = env.req("POST", "/v3/async/txt2video", key=acme, body={"duration_ms": 60000})
    eq(r.status, 200, "a job created")
    task = r.json()["task_id"]
    eq(status(env)["jobs_held"], 1, "the job holds its lease")
    r = request(env.admin_port, "POST", "/admin/jobs/%s/done" % task, headers=AUTH)
    eq(r.status, 200, "the job released")
    eq(status(env)["jobs_held"], 0, "no job held")


def numbers(dom):
    """What the page shows: the counters by element id and body attributes."""
    got = {}
    for name in ("store-ready", "total-requests", "leases", "jobs", "store-latency"):
        m = re.search(r'id="%s"[^>]*>([^<]*)<' % name, dom)
        got[name] = m.group(1) if m else None
    for name in ("data-polls", "data-requests"):
        m = re.search(r'<body[^>]*\s%s="(\d+)"' % name, dom)
        got[name] = int(m.group(1)) if m else None
    return got


def test_page_in_browser(env):
    start(env)
    r = request(env.admin_port, "GET", "/")
    eq(r.status, 200, "the page needs no token")
    assert (r.h("content-type") or "").startswith("text/html"), "HTML: %r" % r.headers
    csp = r.h("content-security-policy") or ""
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp, \
        "the browser is told to load nothing else: %r" % csp
    html = r.body.decode()
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html) + \
        re.findall(r'url\(([^)]*)\)', html) + re.findall(r'@import', html)
    eq([u for u in refs if not u.startswith("data:")], [], "nothing outside the page")
    links = [u for u in re.findall(r'https?://[^"\s\']+', html)
             if u != "http://www.w3.org/2000/svg"]
    eq(links, [], "no outside address in the page")

    acme = env.keys["k_acme"]
    for _ in range(5):
        env.req("POST", "/v3/img2img", key=acme, body={})
    poll(lambda: sum(endpoint(status(env), "img2img")["requests"]) == 5, 10, "5 counted")

    # Without a token the page asks for one and reads nothing.
    dom, reqs = browser.dump_dom(env.origin + "/", env.dir, budget_ms=2000)
    assert re.search(r'<div id="login" class="card">', dom), "the token form shows"
    assert re.search(r'<main id="status" hidden', dom), "no status without a token"
    eq([u for u in browser.page_requests(reqs, env.origin) if "/admin/" in u], [],
       "no status asked for without a token")

    # A wrong token: asked again, with a message.
    dom, reqs = browser.dump_dom(env.origin + "/#token=wrong", env.dir, budget_ms=2000)
    assert "That token is not valid." in dom, "a wrong token is said to be wrong"

    # With the token: live numbers, refreshed every few seconds, and not a
    # request outside the admin listener.
    dom, reqs = browser.dump_dom(env.origin + "/#token=" + TOKEN, env.dir, budget_ms=7000)
    eq(browser.outside(reqs, env.origin), [], "requests outside the admin listener")
    asked = [u for u in browser.page_requests(reqs, env.origin) if u.endswith("/admin/status")]
    assert len(asked) >= 3, "the page polls /admin/status every few seconds: %r" % asked
    got = numbers(dom)
    assert got["data-polls"] >= 3, "the page refreshed: %r" % got
    eq((got["store-ready"], got["data-requests"], got["leases"], got["jobs"]),
       ("ready", 5, "0", "0"), "the numbers shown")
    assert got["total-requests"].endswith(" / 5"), "5 requests in 15 minutes: %r" % got
    assert re.search(r'<tr data-key="k_acme">', dom), "the refused key by id"
    assert "requests:minute:key:img2img (2)" in dom, "the limit that refused it"
    assert re.search(r'<tr data-account="acme">', dom), "the account closest to its limit"
    assert re.search(r'<path [^>]*data-endpoint="img2img"', dom), "the chart's line"
    assert acme not in dom, "a raw key on the page"

    # Traffic flows: the numbers move.
    for _ in range(7):
        env.req("POST", "/v1/echo", key=acme, body={})
    poll(lambda: endpoint(status(env), "echo") is not None and
         sum(endpoint(status(env), "echo")["requests"]) == 7, 10, "7 more counted")
    dom, reqs = browser.dump_dom(env.origin + "/#token=" + TOKEN, env.dir, budget_ms=3000)
    got2 = numbers(dom)
    eq(got2["data-requests"], 12, "the numbers moved with the traffic")
    assert got2["total-requests"].endswith(" / 12"), "12 requests shown: %r" % got2
    assert re.search(r'<path [^>]*data-endpoint="echo"', dom), "a line for the new endpoint"


run([test_status_fields, test_page_in_browser])
