"""Async jobs and their leases, end to end, on the memory store and on a
real redis-server (several gateway instances where it matters), against
backend.py: a video service on Python's standard library whose status
route reads its query with parse_qs (exact, case-sensitive names, decoded
names and values) and takes the first value of a repeated parameter, as
Flask and Starlette do, or the last one where that shows an attack.

What is proved: a job belongs to the account that created it (a status
answer frees only the polling key's account's jobs, whatever the query
looks like); the status id is read as the backend reads it, and a status
request naming it twice is refused before the backend sees it; every create
holds its own lease; ids are opaque (slashes, spaces, newlines, NUL,
non-ASCII, 200 bytes, numbers); an id that cannot be used keeps the lease
until max_seconds; a client that leaves before the create answer leaves
the job holding its lease; the admin done call with and without ?account.
"""
import hashlib
import json
import re
import socket
import threading
import time
import urllib.parse

from backend import Reply
from harness import base_config, eq, for_both, free_port, request, run

ADMIN_TOKEN = "jobs-admin-token"
CREATE = "/v3/async/txt2video"
STATUS = "/v3/async/task-result"
DONE = "TASK_STATUS_SUCCEED"


class VideoService:
    """The model service behind the gateway. A create's JSON body says what
    to answer: {"id": X} answers {"task_id": X}; {"reply": OBJ} answers OBJ
    as it is, with status "code" (default 200); "delay" (seconds) holds the answer back; "state" is the job's
    status from then on (default running). The status route answers
    {"task": {"status": ...}} for the id its query names (first value, or
    the last with pick="last"); an unknown id gets 404."""

    def __init__(self, env, pick="first"):
        self.pick = pick
        self.state = {}   # job id (as the query decodes it) -> status
        self.lock = threading.Lock()
        self.b = env.start_backend(self.handle)

    def handle(self, req):
        if req.method == "POST" and req.path == CREATE:
            body = req.json() or {}
            if body.get("delay"):
                time.sleep(body["delay"])
            if "reply" in body:
                return Reply(body.get("code", 200), body["reply"])
            jid = body["id"]
            with self.lock:
                self.state[str(jid)] = body.get("state", "TASK_STATUS_RUNNING")
            return Reply(200, {"task_id": jid})
        if req.method == "GET" and req.path == STATUS:
            ids = req.query.get("task_id") or []
            if not ids:
                return Reply(400, {"error": "task_id is required"})
            jid = ids[0] if self.pick == "first" else ids[-1]
            with self.lock:
                st = self.state.get(jid)
            if st is None:
                return Reply(404, {"error": "no such task"})
            return Reply(200, {"task": {"task_id": jid, "status": st}})
        return Reply(404, {"error": "no route"})

    def finish(self, jid):
        with self.lock:
            self.state[str(jid)] = DONE

    def seen(self, raw_query):
        """Whether a status request with exactly this raw query arrived."""
        return any(r.raw_query == raw_query for r in self.b.requests)


class Setup:
    """Gateways on one store, accounts acme and evil (a key each), a
    concurrency limit per account on the create endpoint."""

    def __init__(self, env, store, limit=2, max_seconds=3600, instances=1, pick="first",
                 drain_ms=5000):
        self.env = env
        self.svc = VideoService(env, pick)
        cfg = base_config(self.svc.b.port, free_port())
        cfg["server"]["drain_timeout_ms"] = drain_ms
        cfg["backends"]["models"]["timeout_ms"] = 10000
        cfg["endpoints"] = {
            "txt2video": {"method": "POST", "path": CREATE, "backend": "models",
                          "job": {"id_pointer": "/task_id", "status_endpoint": "task_result",
                                  "status_query": "task_id",
                                  "status_pointer": "/task/status",
                                  "done_values": [DONE, "TASK_STATUS_FAILED"],
                                  "max_seconds": max_seconds}},
            "task_result": {"method": "GET", "path": STATUS, "backend": "models"},
        }
        cfg["tiers"] = {"j": {"limits": [
            {"metric": "concurrent", "limit": limit, "scope": "account",
             "endpoints": ["txt2video"]}]}}
        cfg["accounts"] = {"acme": {"tier": "j"}, "evil": {"tier": "j"}}
        self.keys = {"acme": env.add_key(cfg, "k_acme", "acme"),
                     "evil": env.add_key(cfg, "k_evil", "evil")}
        if store == "redis":
            r = env.start_redis()
            cfg["storage"] = {"driver": "redis", "address": "127.0.0.1:%d" % r.port,
                              "timeout_ms": 1000}
        self.gws = []
        for _ in range(instances):
            c = json.loads(json.dumps(cfg))
            c["admin"] = {"listen": "127.0.0.1:%d" % free_port(),
                          "token_sha256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()}
            g, = env.start_gateways(c, 1)
            g.admin_port = int(c["admin"]["listen"].rsplit(":", 1)[1])
            self.gws.append(g)

    def gw(self, i=0):
        return self.gws[i % len(self.gws)]

    def create(self, account, body, gw=0):
        return self.env.req_at(self.gw(gw).port, "POST", CREATE, key=self.keys[account],
                               body=body)

    def create_job(self, account, jid, gw=0, **extra):
        body = dict(extra, id=jid)
        r = self.create(account, body, gw)
        eq(r.status, 200, "%s creates job %r" % (account, jid))
        return r

    def poll(self, account, query, gw=0):
        return self.env.req_at(self.gw(gw).port, "GET", STATUS + "?" + query,
                               key=self.keys[account])

    def running(self, account, gw=0):
        r = self.env.req_at(self.gw(gw).port, "GET", "/v1/usage", key=self.keys[account])
        eq(r.status, 200, "usage of %s" % account)
        (used,) = [l["used"] for l in r.json()["limits"] if l["metric"] == "concurrent"]
        return used

    def wait_running(self, account, n, timeout=10, what=""):
        deadline = time.time() + timeout
        while True:
            got = self.running(account)
            if got == n:
                return
            if time.time() > deadline:
                raise AssertionError("%s: %s holds %d leases, expected %d within %d s"
                                     % (what, account, got, n, timeout))
            time.sleep(0.05)

    def admin(self, method, path, gw=0):
        return request(self.gw(gw).admin_port, method, path,
                       headers={"Authorization": "Bearer " + ADMIN_TOKEN})

    def metric(self, line_prefix, gw=0):
        r = request(self.gw(gw).admin_port, "GET", "/metrics")
        eq(r.status, 200, "/metrics")
        for line in r.body.decode().splitlines():
            if line.startswith(line_prefix + " "):
                return float(line.split()[-1])
        return 0.0

    def log(self):
        return "".join(g.output() for g in self.gws)


def q(jid):
    """The status query naming jid, encoded as a client library would."""
    return "task_id=" + urllib.parse.quote(str(jid), safe="")


def variant_attack(env, store):
    """?TASK_ID=<running>&task_id=<finished>: the backend reads task_id (the
    finished job) and says done; only that job's lease may go."""
    s = Setup(env, store)
    s.create_job("acme", "run-1")
    s.create_job("acme", "fin-1")
    s.svc.finish("fin-1")
    eq(s.running("acme"), 2, "two jobs hold the account's two slots")
    r = s.poll("acme", "TASK_ID=run-1&task_id=fin-1")
    eq((r.status, r.json()["task"]["task_id"]), (200, "fin-1"),
       "the backend answered for task_id, the exact name")
    s.wait_running("acme", 1, what="the finished job's lease goes")
    r = s.admin("POST", "/admin/jobs/run-1/done?account=acme")
    eq((r.status, r.json()), (200, {"released": True}),
       "the running job still held its lease after the case-variant poll")
    eq(s.running("acme"), 0, "nothing left")


def pct5f_attack(env, store):
    """task%5Fid is task_id to the backend: a repeat in any spelling is
    refused with 400 before the backend sees it. This backend takes the
    last value, so without the refusal the gateway would read run-1 (the
    first) while the backend reports on fin-1."""
    s = Setup(env, store, pick="last")
    s.create_job("acme", "run-1")
    s.create_job("acme", "fin-1")
    s.svc.finish("fin-1")
    for query in ("task%5Fid=run-1&task_id=fin-1", "task_id=run-1&task%5fid=fin-1",
                  "task_id=run-1&task_id=fin-1", "task_id=run-1&task_id=run-1",
                  "task_id=run-1&task_id", "task_id=run-1&task+id=x&task%5Fid=fin-1"):
        r = s.poll("acme", query)
        eq((r.status, r.json()["error"]["type"], r.json()["error"]["code"]),
           (400, "invalid_request_error", "INVALID_REQUEST"), "repeated id: " + query)
        eq(r.json()["error"]["details"], {"parameter": "task_id"}, "names the parameter")
        assert not s.svc.seen(query), "the backend never saw %s" % query
    eq(s.running("acme"), 2, "a refused poll frees nothing")
    # Spelled once, encoded: the same id for the gateway as for the backend.
    r = s.poll("acme", "task%5Fid=fin%2D1")
    eq((r.status, r.json()["task"]["status"]), (200, DONE), "encoded once: answered")
    s.wait_running("acme", 1, what="the encoded poll frees fin-1")
    # A name that only looks alike is another parameter, for both.
    s.svc.finish("run-1")
    r = s.poll("acme", "task+id=run-1&task_id=run-1")
    eq(r.status, 200, "task+id is 'task id', not a repeat")
    s.wait_running("acme", 0, what="run-1 done")


def cross_account_poll(env, store):
    """evil polls with acme's job id (a backend does not know accounts):
    nothing of acme's is freed. On Redis the poll goes through another
    instance than the create."""
    s = Setup(env, store, instances=2 if store == "redis" else 1)
    s.create_job("acme", "v-1", gw=0)
    s.create_job("acme", "v-2", gw=0)
    s.svc.finish("v-1")
    r = s.poll("evil", q("v-1"), gw=1)
    eq((r.status, r.json()["task"]["status"]), (200, DONE),
       "the backend tells evil that acme's job is done")
    eq(s.running("acme"), 2, "evil's poll freed none of acme's leases")
    eq(s.create("acme", {"id": "v-3"}, gw=1).status, 429, "acme's limit still full")
    r = s.poll("acme", q("v-1"), gw=1)
    eq(r.status, 200, "acme polls its own job")
    s.wait_running("acme", 1, what="acme's own poll frees v-1")
    eq(s.running("evil"), 0, "evil holds nothing")


def same_id(env, store):
    """A backend that returns one id to two accounts, and twice to one:
    three leases, each freed by its own account's done. On Redis the
    creates go through two instances."""
    s = Setup(env, store, instances=2 if store == "redis" else 1)
    s.create_job("acme", "dup", gw=0)
    s.create_job("acme", "dup", gw=1)
    s.create_job("evil", "dup", gw=1)
    eq(s.running("acme"), 2, "acme's second create holds a lease of its own")
    eq(s.running("evil"), 1, "evil's job of the same id is its own")
    r = s.admin("POST", "/admin/jobs/dup/done")
    eq((r.status, r.json()["error"]["code"]), (400, "INVALID_REQUEST"),
       "two accounts hold dup: the admin call must name one")
    eq((s.running("acme"), s.running("evil")), (2, 1), "the refused done freed nothing")
    s.svc.finish("dup")
    eq(s.poll("evil", q("dup"), gw=0).status, 200, "evil polls dup")
    s.wait_running("evil", 0, what="evil's done")
    eq(s.running("acme"), 2, "evil's done left acme's two leases")
    eq(s.poll("acme", q("dup"), gw=0).status, 200, "acme polls dup")
    s.wait_running("acme", 0, what="one done frees both of acme's leases of dup")
    r = s.admin("POST", "/admin/jobs/dup/done")
    eq((r.status, r.json()["error"]["code"]), (404, "JOB_NOT_FOUND"), "dup is gone")


ODD_IDS = ["a/b=c", "with space", "line\nbreak", "tab\tand \"quote\"", "\u00fcn\u00efc\u00f8de",
           "nul\u0000byte", "%2F literal percent", "x" * 200, "a+b", 12345, 1.5]


def odd_ids(env, store):
    """Ids are opaque: any of these holds the lease and is freed by a poll
    that names it (encoded as a client would)."""
    s = Setup(env, store, limit=1)
    for jid in ODD_IDS:
        s.create_job("acme", jid)
        eq(s.create("acme", {"id": "other"}).status, 429, "%r holds the slot" % (jid,))
        s.svc.finish(jid)
        r = s.poll("acme", q(jid))
        eq((r.status, r.json()["task"]["status"]), (200, DONE), "poll of %r" % (jid,))
        s.wait_running("acme", 0, what="the done poll of %r" % (jid,))
    # An id with a space, spelled with '+' as forms do.
    s.create_job("acme", "plus space")
    s.svc.finish("plus space")
    eq(s.poll("acme", "task_id=plus+space").status, 200, "poll with +")
    s.wait_running("acme", 0, what="'+' is a space")
    out = s.log()
    assert "line\nbreak" not in out and "x" * 200 not in out, "no raw id in the log"


UNUSABLE = [{}, {"task_id": None}, {"task_id": {"id": "x"}}, {"task_id": ["x"]},
            {"task_id": True}, {"task_id": ""}, {"task_id": "y" * 257},
            {"task_id": "z" * 300}]


def unusable_ids(env, store):
    """A 2xx create whose id cannot be used keeps its lease until
    max_seconds, is logged (without the id) and counted in /metrics."""
    max_s = 3
    s = Setup(env, store, limit=len(UNUSABLE), max_seconds=max_s)
    t0 = time.time()
    for reply in UNUSABLE:
        r = s.create("acme", {"reply": reply})
        eq(r.status, 200, "the client gets the backend's answer: %r" % (reply,)[:80])
    t1 = time.time()
    eq(s.running("acme"), len(UNUSABLE), "every unusable create keeps its lease")
    eq(s.create("acme", {"id": "more"}).status, 429, "the account's slots are all held")
    eq(s.metric('ratewall_job_id_unusable_total{endpoint="txt2video"}'), len(UNUSABLE),
       "counted by endpoint")
    # The long ids, polled by what a client could send: nothing is freed.
    for jid in ("z" * 300, "y" * 257, "z" * 256, ""):
        s.poll("acme", q(jid))
    eq(s.running("acme"), len(UNUSABLE), "no poll frees an unusable id's lease")
    deadline = t1 + max_s + 10
    while s.running("acme") and time.time() < deadline:
        time.sleep(0.1)
    released = time.time()
    eq(s.running("acme"), 0, "released after max_seconds (%d s)" % max_s)
    assert released - t0 >= max_s - 0.2, \
        "released %.2f s after the creates began: before max_seconds" % (released - t0)
    out = s.log()
    eq(len(re.findall(r"job id at /task_id in the answer cannot be used", out)),
       len(UNUSABLE), "one warning per unusable create")
    assert "z" * 64 not in out and "y" * 64 not in out, "the log never shows the id"


def send_and_leave(port, key, body):
    """A raw client: sends a create and returns the socket, to be closed
    before the answer."""
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST %s HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
              % (CREATE.encode(), key.encode(), len(data), data))
    return s


def client_leaves(env, store):
    """Four clients leave before their create answers: the gateway reads
    each answer to its end and the jobs hold the four leases (the account's
    limit); a done poll of each frees it."""
    s = Setup(env, store, limit=4)
    socks = [send_and_leave(s.gw().port, s.keys["acme"], {"id": "gone-%d" % i, "delay": 1.0})
             for i in range(4)]
    s.svc.b.wait_busy(4)
    eq(s.metric("ratewall_requests_in_flight"), 4, "four requests in flight")
    for sk in socks:
        sk.close()
    # Every request has ended (its lease settled) once the gauge of leases
    # held for requests in flight is back at 0.
    deadline = time.time() + 15
    while s.metric("ratewall_leases_held") != 0 and time.time() < deadline:
        time.sleep(0.05)
    eq(s.metric("ratewall_leases_held"), 0, "the four requests have ended")
    eq(len([r for r in s.svc.b.requests if r.path == CREATE]), 4, "the backend took four")
    eq(s.running("acme"), 4, "the four jobs hold their leases")
    eq(s.metric("ratewall_jobs_held"), 4, "/metrics counts the four jobs")
    eq(s.metric("ratewall_requests_in_flight"), 0, "no request in flight")
    eq(s.create("acme", {"id": "fifth"}).status, 429, "no fifth job")
    for i in range(4):
        s.svc.finish("gone-%d" % i)
        eq(s.poll("acme", q("gone-%d" % i)).status, 200, "poll gone-%d" % i)
        s.wait_running("acme", 3 - i, what="gone-%d's done frees its lease" % i)
    eq(s.metric("ratewall_jobs_held"), 0, "/metrics: no job held")
    # A create that the backend refuses holds nothing, client or not.
    sk = send_and_leave(s.gw().port, s.keys["acme"],
                        {"reply": {"error": "overloaded"}, "code": 503, "delay": 0.5})
    s.svc.b.wait_busy(1)
    sk.close()
    deadline = time.time() + 15
    while s.svc.b.in_flight or s.metric("ratewall_leases_held") != 0:
        assert time.time() < deadline, "the refused create never ended"
        time.sleep(0.05)
    eq(s.running("acme"), 0, "a refused create's lease is given back")


def wait_log(s, text, timeout=10):
    deadline = time.time() + timeout
    while text not in s.log():
        assert time.time() < deadline, "the gateway never logged %r" % text
        time.sleep(0.05)


def stop_while_kept(env, store):
    """A create whose client left is still being read when the gateway is
    told to stop, and the answer comes after the drain deadline: the
    gateway cuts it and exits cleanly (close() checks exit 0 and no
    sanitizer report), and the lease does not outlive the request."""
    s = Setup(env, store, drain_ms=300)
    sk = send_and_leave(s.gw().port, s.keys["acme"], {"id": "slow", "delay": 3.0})
    s.svc.b.wait_busy(1)
    sk.close()
    wait_log(s, "the client left before the job's create answer")
    eq(s.running("acme"), 1, "the kept create holds its lease")
    g = s.gw()
    t0 = time.time()
    g.stop()
    assert time.time() - t0 < 2.5, "stopped at the drain deadline, not after the backend"
    if store == "redis":
        g2, = env.start_gateways(json.loads(open(g.config_path).read()), 1)
        s.gws = [g2]
        eq(s.running("acme"), 0, "the cut request gave its lease back")


def admin_done(env, store):
    """POST /admin/jobs/{id}/done[?account=ID]: the id percent-encoded in the
    path (it may hold '/'), the account optional while one account holds
    the id."""
    s = Setup(env, store)
    jid = "a/b c=d"
    path = "/admin/jobs/%s/done" % urllib.parse.quote(jid, safe="")
    s.create_job("acme", jid)
    s.create_job("evil", jid)
    r = s.admin("POST", path)
    eq((r.status, r.json()["error"]["code"]), (400, "INVALID_REQUEST"), "two accounts")
    r = s.admin("POST", path + "?account=acme&account=evil")
    eq((r.status, r.json()["error"]["code"]), (400, "INVALID_REQUEST"), "two ?account=")
    r = s.admin("POST", path + "?account=nobody")
    eq((r.status, r.json()["error"]["code"]), (404, "JOB_NOT_FOUND"), "another account")
    r = s.admin("POST", path + "?account=%7Bacme%7D")
    eq((r.status, r.json()["error"]["code"]), (404, "JOB_NOT_FOUND"), "not an account name")
    eq((s.running("acme"), s.running("evil")), (1, 1), "nothing freed so far")
    r = s.admin("POST", path + "?account=evil")
    eq((r.status, r.json()), (200, {"released": True}), "evil's job by account")
    eq((s.running("acme"), s.running("evil")), (1, 0), "only evil's lease went")
    r = s.admin("POST", path)
    eq((r.status, r.json()), (200, {"released": True}), "acme alone holds it now")
    eq(s.running("acme"), 0, "acme's lease went")
    r = s.admin("POST", path)
    eq((r.status, r.json()["error"]["code"]), (404, "JOB_NOT_FOUND"), "none left")
    r = s.admin("POST", "/admin/jobs/%s/done" % ("q" * 257))
    eq((r.status, r.json()["error"]["code"]), (404, "JOB_NOT_FOUND"), "an id too long")
    r = request(s.gw().admin_port, "POST", path)
    eq((r.status, r.json()["error"]["code"]), (401, "MISSING_ADMIN_TOKEN"), "no token")


run(for_both(variant_attack) + for_both(pct5f_attack) +
    for_both(cross_account_poll) + for_both(same_id) + for_both(odd_ids) +
    for_both(unusable_ids) + for_both(client_leaves) + for_both(stop_while_kept) +
    for_both(admin_done))
