"""Keys and accounts at run time: the /admin/keys and /admin/accounts routes
with and without the token, each error code, expiry, the memory store's state
file across a restart and a reload, a fleet of gateways on Redis following a
change within a second (and one started later), and the `gateway keys` /
`gateway accounts` command line against a running gateway."""
import copy
import hashlib
import json
import os
import subprocess
import time

from harness import (Proc, base_config, eq, free_port, new_key, poll, redis_cli, request, run,
                     sha256, wait_gateway, wait_port)

TOKEN = "keys-admin-token"
AUTH = {"Authorization": "Bearer " + TOKEN}
PATH = "/v3/img2img"


def config(env, storage=None):
    cfg = base_config(env.mock_port, free_port())
    cfg["tiers"]["basic"] = {"limits": [{"metric": "requests", "per": "minute", "limit": 100000}]}
    cfg["accounts"] = {"fileacct": {"tier": "basic"}}
    cfg["admin"] = {"listen": "127.0.0.1:%d" % free_port(),
                    "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}
    if storage:
        cfg["storage"] = storage
    env.add_key(cfg, "filekey", "fileacct")
    return cfg


def start_gw(env, cfg, name="ratewall.json"):
    """A gateway on cfg (written to name), waited for on both listeners."""
    path = env.write_config(cfg, name)
    p = Proc([env.args.gateway, "-c", path], "gateway-" + name, env.dir)
    p.port = int(cfg["server"]["listen"].rsplit(":", 1)[1])
    p.admin = int(cfg["admin"]["listen"].rsplit(":", 1)[1])
    p.config_path = path
    wait_gateway(p, p.port)
    wait_port(p.admin, p.p)
    env.gws.append(p)
    return p


def start(env, storage=None):
    env.start_mock()
    cfg = config(env, storage)
    return start_gw(env, cfg), cfg


def admin(gw, method, path, body=None, headers=AUTH):
    return request(gw.admin, method, path, body=body, headers=headers)


def use(gw, key):
    return request(gw.port, "POST", PATH, body="{}",
                   headers={"Authorization": "Bearer " + key}).status


def code(r):
    return r.json()["error"]["code"]


def all_workers(gw, key, status, what, timeout=1.0):
    """Within timeout seconds, `times` requests in a row (new connections,
    spread over the workers) answer status."""
    deadline = time.time() + timeout
    run_ = 0
    while run_ < 10:
        s = use(gw, key)
        run_ = run_ + 1 if s == status else 0
        if run_ == 0:
            assert time.time() < deadline, "%s: still %d after %.1f s" % (what, s, timeout)
            time.sleep(0.01)


# ---- the routes --------------------------------------------------------------

ROUTES = [("POST", "/admin/keys"), ("GET", "/admin/keys"), ("GET", "/admin/keys/k"),
          ("PATCH", "/admin/keys/k"), ("DELETE", "/admin/keys/k"),
          ("POST", "/admin/accounts"), ("GET", "/admin/accounts"),
          ("GET", "/admin/accounts/a"), ("PATCH", "/admin/accounts/a"),
          ("DELETE", "/admin/accounts/a")]


def test_routes_need_the_token(env):
    gw, _ = start(env)
    for m, p in ROUTES:
        r = admin(gw, m, p, body={}, headers={})
        eq((r.status, code(r)), (401, "MISSING_ADMIN_TOKEN"), "%s %s without the token" % (m, p))
        r = admin(gw, m, p, body={}, headers={"Authorization": "Bearer wrong"})
        eq((r.status, code(r)), (403, "INVALID_ADMIN_TOKEN"), "%s %s with a wrong token" % (m, p))
    # With it: each route answers as itself (here, nothing of these ids).
    want = {"POST /admin/keys": 400, "GET /admin/keys": 200, "GET /admin/keys/k": 404,
            "PATCH /admin/keys/k": 404, "DELETE /admin/keys/k": 404,
            "POST /admin/accounts": 400, "GET /admin/accounts": 200,
            "GET /admin/accounts/a": 404, "PATCH /admin/accounts/a": 404,
            "DELETE /admin/accounts/a": 404}
    for m, p in ROUTES:
        eq(admin(gw, m, p, body={}).status, want[m + " " + p], "%s %s with the token" % (m, p))
    eq(admin(gw, "PUT", "/admin/keys").status, 405, "PUT on the list")


def test_key_lifecycle(env):
    gw, _ = start(env)
    r = admin(gw, "POST", "/admin/accounts", {"id": "acme", "tier": "basic"})
    eq(r.status, 201, "account created: %r" % r)
    eq((r.json()["id"], r.json()["tier"], r.json()["source"]), ("acme", "basic", "api"),
       "the account as listed")
    r = admin(gw, "POST", "/admin/keys", {"id": "k1", "account": "acme"})
    eq(r.status, 201, "key created: %r" % r)
    made = r.json()
    key = made["key"]
    assert key.startswith("sk_") and len(key) > 40, "a raw key made by the gateway: %r" % made
    eq(made["sha256"], sha256(key), "its digest")
    eq((made["id"], made["account"]), ("k1", "acme"), "id and account")
    all_workers(gw, key, 200, "the new key works")

    listed = admin(gw, "GET", "/admin/keys").json()["keys"]
    eq(sorted(k["id"] for k in listed), ["filekey", "k1"], "file and API keys side by side")
    assert key not in json.dumps(listed), "the list never shows a raw key"
    one = admin(gw, "GET", "/admin/keys/k1").json()
    eq((one["source"], one["disabled"], one["expires_at"]), ("api", False, None), "one key")
    assert one["created_at"].endswith("Z"), "created_at in RFC 3339: %r" % one
    eq(set(one), {"id", "account", "disabled", "expires_at", "created_at", "limits", "source"},
       "the fields of a listed key")
    eq(admin(gw, "GET", "/admin/keys/filekey").json()["source"], "file", "file key's source")
    eq([k["id"] for k in admin(gw, "GET", "/admin/keys?account=acme").json()["keys"]], ["k1"],
       "?account= filters")

    r = admin(gw, "PATCH", "/admin/keys/k1", {"disabled": True})
    eq((r.status, r.json()["disabled"]), (200, True), "disabled")
    all_workers(gw, key, 403, "a disabled key")
    r = admin(gw, "PATCH", "/admin/keys/k1",
              {"disabled": False, "limits": [{"metric": "requests", "per": "minute",
                                              "limit": 1}]})
    eq(r.status, 200, "enabled with a limit of its own: %r" % r)
    time.sleep(0.2)
    statuses = [use(gw, key) for _ in range(3)]
    eq(statuses.count(429) >= 2, True, "its own limit of 1 holds: %r" % statuses)

    # A key made elsewhere: only its digest is given.
    mine = new_key()
    r = admin(gw, "POST", "/admin/keys", {"id": "k2", "account": "acme", "sha256": sha256(mine)})
    eq((r.status, "key" in r.json()), (201, False), "no raw key when the digest is given")
    all_workers(gw, mine, 200, "the key made elsewhere")

    # Errors.
    r = admin(gw, "POST", "/admin/keys", {"id": "k1", "account": "acme"})
    eq((r.status, code(r)), (409, "ALREADY_EXISTS"), "an API key's id again")
    r = admin(gw, "POST", "/admin/keys", {"id": "filekey", "account": "acme"})
    eq((r.status, code(r)), (409, "ALREADY_EXISTS"), "a file key's id")
    r = admin(gw, "POST", "/admin/accounts", {"id": "fileacct", "tier": "basic"})
    eq((r.status, code(r)), (409, "ALREADY_EXISTS"), "a file account's id")
    for m, b in (("PATCH", {"disabled": True}), ("DELETE", None)):
        r = admin(gw, m, "/admin/keys/filekey", b)
        eq((r.status, code(r)), (409, "MANAGED_BY_FILE"), "%s of a file key" % m)
        r = admin(gw, m, "/admin/accounts/fileacct", b)
        eq((r.status, code(r)), (409, "MANAGED_BY_FILE"), "%s of a file account" % m)
    r = admin(gw, "GET", "/admin/keys/nope")
    eq((r.status, code(r)), (404, "KEY_NOT_FOUND"), "no such key")
    r = admin(gw, "DELETE", "/admin/accounts/nope")
    eq((r.status, code(r)), (404, "ACCOUNT_NOT_FOUND"), "no such account")
    r = admin(gw, "DELETE", "/admin/accounts/acme")
    eq((r.status, code(r)), (409, "ACCOUNT_IN_USE"), "an account keys use")
    bad = [({"id": "k3", "account": "acme", "colour": "red"}, "unknown field"),
           ({"id": "k3", "account": 5}, "expected a string"),
           ({"id": "k3", "account": "ghost"}, "ghost"),
           ({"id": "k 3", "account": "acme"}, "invalid key id"),
           ({"id": "k3", "account": "acme", "expires_at": "tomorrow"}, "RFC 3339"),
           ({"id": "k3", "account": "acme", "sha256": "abc"}, "sha256"),
           ({"id": "k3", "account": "acme", "limits": [{"metric": "requests"}]}, "limits")]
    for body, word in bad:
        r = admin(gw, "POST", "/admin/keys", body)
        eq((r.status, code(r)), (400, "INVALID_REQUEST"), "invalid body %r" % body)
        errs = r.json()["error"]["details"]["errors"]
        assert errs and any(word in e for e in errs), "errors name the problem %r: %r" % (
            word, errs)
        assert not errs[0].startswith(gw.config_path), "no file position: %r" % errs
    r = admin(gw, "POST", "/admin/accounts", {"id": "a2", "tier": "gold"})
    eq((r.status, code(r)), (400, "INVALID_REQUEST"), "a dangling tier")
    assert any("gold" in e for e in r.json()["error"]["details"]["errors"]), "names the tier"
    r = request(gw.admin, "POST", "/admin/keys", body="{not json", headers=AUTH)
    eq((r.status, code(r)), (400, "INVALID_REQUEST"), "not JSON")
    eq(admin(gw, "GET", "/admin/keys/k3").status, 404, "no invalid key was kept")

    # Revoked: refused at once on this instance.
    eq(admin(gw, "DELETE", "/admin/keys/k1").json(), {"deleted": True}, "revoked")
    all_workers(gw, key, 401, "a revoked key", timeout=0.2)
    eq(admin(gw, "DELETE", "/admin/keys/k2").status, 200, "the other one revoked")
    eq(admin(gw, "DELETE", "/admin/accounts/acme").json(), {"deleted": True},
       "an unused account deleted")
    eq(admin(gw, "GET", "/admin/accounts/acme").status, 404, "gone")
    accts = admin(gw, "GET", "/admin/accounts").json()["accounts"]
    eq([(a["id"], a["source"]) for a in accts], [("fileacct", "file")], "the file's account")
    out = gw.output()
    assert key not in out and mine not in out, "a raw key was logged"


def test_expired_key(env):
    gw, _ = start(env)
    past = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    r = admin(gw, "POST", "/admin/keys", {"id": "old", "account": "fileacct",
                                          "expires_at": past})
    eq(r.status, 201, "a key that expired a minute ago: %r" % r)
    old = r.json()["key"]
    time.sleep(0.1)
    r = request(gw.port, "POST", PATH, body="{}", headers={"Authorization": "Bearer " + old})
    eq((r.status, code(r)), (401, "KEY_EXPIRED"), "past its expires_at")
    soon = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 3))
    r = admin(gw, "POST", "/admin/keys", {"id": "soon", "account": "fileacct",
                                          "expires_at": soon})
    key = r.json()["key"]
    all_workers(gw, key, 200, "before its expires_at")
    eq(admin(gw, "GET", "/admin/keys/soon").json()["expires_at"], soon.replace("+00:00", "Z"),
       "expires_at as listed")
    poll(lambda: use(gw, key) == 401, 6, "the key expiring")
    r = admin(gw, "PATCH", "/admin/keys/soon", {"expires_at": None})
    eq((r.status, r.json()["expires_at"]), (200, None), "expiry cleared")
    all_workers(gw, key, 200, "no longer expired")


# ---- the memory store's state file -----------------------------------------------

def test_state_file_survives_restart_and_reload(env):
    gw, cfg = start(env)
    state = os.path.join(env.dir, "ratewall-state.json")
    eq(admin(gw, "POST", "/admin/accounts", {"id": "acme", "tier": "basic"}).status, 201,
       "account")
    key = admin(gw, "POST", "/admin/keys", {"id": "k1", "account": "acme"}).json()["key"]
    text = open(state).read()
    saved = json.loads(text)
    eq([k["id"] for k in saved["keys"]], ["k1"], "the key is in the state file beside the config")
    assert key not in text and sha256(key) in text, "digests only in the state file"
    eq(sorted(os.listdir(env.dir)).count("ratewall-state.json"), 1, "one state file")
    assert not [f for f in os.listdir(env.dir) if ".tmp." in f], "no temp file left"
    # A reload of the file keeps them.
    r = admin(gw, "POST", "/admin/reload")
    eq(r.status, 200, "reload")
    all_workers(gw, key, 200, "the API key after a reload")
    # A restart keeps them.
    gw.stop()
    env.gws.remove(gw)
    gw = start_gw(env, cfg)
    all_workers(gw, key, 200, "the API key after a restart")
    eq(admin(gw, "GET", "/admin/keys/k1").json()["source"], "api", "still an API key")
    eq(admin(gw, "DELETE", "/admin/keys/k1").status, 200, "revoked")
    gw.stop()
    env.gws.remove(gw)
    # storage.state_file names another place (relative to the config).
    cfg["storage"] = {"driver": "memory", "state_file": "elsewhere.json"}
    gw = start_gw(env, cfg)
    eq(use(gw, key), 401, "the revocation survived the restart too")
    eq(admin(gw, "POST", "/admin/keys", {"id": "k2", "account": "acme"}).status, 400,
       "acme lived in the other state file")
    eq(admin(gw, "POST", "/admin/keys", {"id": "k2", "account": "fileacct"}).status, 201,
       "a key into the named state file")
    assert os.path.exists(os.path.join(env.dir, "elsewhere.json")), "storage.state_file used"
    gw.stop()
    env.gws.remove(gw)
    # A state file that cannot be written: the change is refused and undone.
    cfg["storage"] = {"driver": "memory", "state_file": "no-such-dir/state.json"}
    gw = start_gw(env, cfg)
    r = admin(gw, "POST", "/admin/keys", {"id": "k3", "account": "fileacct"})
    eq((r.status, code(r)), (503, "INTERNAL_ERROR"), "an unwritable state file")
    eq(admin(gw, "GET", "/admin/keys/k3").status, 404, "the key was not kept")


# ---- a fleet on Redis --------------------------------------------------------------

def test_fleet_on_redis(env):
    env.start_mock()
    r = env.start_redis()
    base = config(env, {"driver": "redis", "address": "127.0.0.1:%d" % r.port,
                        "timeout_ms": 1000})
    gws = []
    for i in range(3):
        c = copy.deepcopy(base)
        c["server"]["listen"] = "127.0.0.1:%d" % free_port()
        c["admin"]["listen"] = "127.0.0.1:%d" % free_port()
        gws.append(start_gw(env, c, "fleet-%d.json" % i))
    a, b, c3 = gws
    # Until A's registry connection is up, a change answers 503.
    made = []
    poll(lambda: made.append(admin(a, "POST", "/admin/accounts",
                                   {"id": "acme", "tier": "basic"})) or made[-1].status != 503,
         5, "A's registry connected to Redis")
    eq(made[-1].status, 201, "account on A")
    made = admin(a, "POST", "/admin/keys", {"id": "k1", "account": "acme"})
    eq(made.status, 201, "key on A: %r" % made)
    key = made.json()["key"]
    t0 = time.time()
    all_workers(a, key, 200, "on A at once", timeout=0.3)
    for g, name in ((b, "B"), (c3, "C")):
        all_workers(g, key, 200, "the key made on A working on " + name,
                    timeout=max(0.05, 1.0 - (time.time() - t0)))
    stored = redis_cli(r.port, "HGET", "rl:registry:keys", "k1")
    assert sha256(key) in stored and key not in stored, "Redis holds the digest only"
    eq(admin(b, "GET", "/admin/keys/k1").json()["account"], "acme", "B lists it")
    # An instance started after the change sees it.
    late = copy.deepcopy(base)
    late["server"]["listen"] = "127.0.0.1:%d" % free_port()
    late["admin"]["listen"] = "127.0.0.1:%d" % free_port()
    d = start_gw(env, late, "fleet-late.json")
    all_workers(d, key, 200, "a gateway started later", timeout=1.0)
    # Revoked on B: refused at once there, within 1 s everywhere.
    eq(admin(b, "DELETE", "/admin/keys/k1").status, 200, "revoked on B")
    t0 = time.time()
    all_workers(b, key, 401, "refused at once on B", timeout=0.3)
    for g, name in ((a, "A"), (c3, "C"), (d, "D")):
        all_workers(g, key, 401, "the revoked key on " + name,
                    timeout=max(0.05, 1.0 - (time.time() - t0)))
    # A change written while a message was missed is caught up by the
    # periodic version check: write to Redis behind the gateways' backs.
    other = new_key()
    obj = {"id": "k9", "account": "acme", "sha256": sha256(other), "created_at": 1}
    redis_cli(r.port, "HSET", "rl:registry:keys", "k9", json.dumps(obj))
    redis_cli(r.port, "INCR", "rl:registry:version")
    for g in gws + [d]:
        all_workers(g, other, 200, "a change with no message", timeout=1.5)


def test_create_race_on_redis(env):
    """Two instances creating one new id at the same moment: one 201, the
    other 409 ALREADY_EXISTS as on one instance (the create is one script
    in Redis, not last write wins), and both end up with the winner's."""
    import threading
    env.start_mock()
    r = env.start_redis()
    base = config(env, {"driver": "redis", "address": "127.0.0.1:%d" % r.port,
                        "timeout_ms": 1000})
    gws = []
    for i in range(2):
        c = copy.deepcopy(base)
        c["server"]["listen"] = "127.0.0.1:%d" % free_port()
        c["admin"]["listen"] = "127.0.0.1:%d" % free_port()
        gws.append(start_gw(env, c, "race-%d.json" % i))
    made = []
    poll(lambda: made.append(admin(gws[0], "POST", "/admin/accounts",
                                   {"id": "acme", "tier": "basic"})) or made[-1].status != 503,
         5, "the registry connected to Redis")
    eq(made[-1].status, 201, "the account made")
    poll(lambda: admin(gws[1], "GET", "/admin/accounts/acme").status == 200, 2,
         "the account on the second gateway")
    for n in range(8):
        kid, acct = "race%d" % n, "team%d" % n
        keys = [new_key(), new_key()]
        out = [None, None, None, None]
        go = threading.Barrier(4)

        def create(i, path, body):
            go.wait()
            out[i] = admin(gws[i % 2], "POST", path, body)
        threads = [threading.Thread(target=create, args=(
            i, "/admin/keys", {"id": kid, "account": "acme", "sha256": sha256(keys[i])}))
            for i in range(2)]
        threads += [threading.Thread(target=create, args=(
            i, "/admin/accounts", {"id": acct, "tier": "basic"})) for i in (2, 3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        eq(sorted(o.status for o in out[:2]), [201, 409],
           "one create of key %s wins, the other is told it exists (%r)" % (kid, out[:2]))
        eq(sorted(o.status for o in out[2:]), [201, 409],
           "one create of account %s wins (%r)" % (acct, out[2:]))
        lost = [o for o in out if o.status == 409]
        eq([code(o) for o in lost], ["ALREADY_EXISTS"] * 2, "the loser's code")
        win = 0 if out[0].status == 201 else 1
        stored = json.loads(redis_cli(r.port, "HGET", "rl:registry:keys", kid))
        eq(stored["sha256"], sha256(keys[win]), "Redis holds the winner's key")
        for g in gws:
            all_workers(g, keys[win], 200, "the winner's key on every gateway")
            all_workers(g, keys[1 - win], 401, "the loser's key nowhere")


# ---- the command line ------------------------------------------------------------

def cli(env, gw, *args, token_env=True):
    envv = dict(os.environ)
    envv.pop("RATEWALL_ADMIN_TOKEN", None)
    if token_env:
        envv["RATEWALL_ADMIN_TOKEN"] = TOKEN
    p = subprocess.run([env.args.gateway] + list(args) + ["--admin", "127.0.0.1:%d" % gw.admin],
                       capture_output=True, text=True, env=envv, timeout=30)
    return p


def test_cli(env):
    gw, _ = start(env)
    p = cli(env, gw, "accounts", "create", "acme", "--tier", "basic")
    eq(p.returncode, 0, "accounts create: %s" % p.stderr)
    eq(json.loads(p.stdout)["id"], "acme", "its answer")
    tf = os.path.join(env.dir, "token")
    with open(tf, "w") as f:
        f.write(TOKEN + "\n")
    p = cli(env, gw, "keys", "create", "--account", "acme", "--id", "cli1", "--token-file", tf,
            token_env=False)
    eq(p.returncode, 0, "keys create with --token-file: %s" % p.stderr)
    key = json.loads(p.stdout)["key"]
    all_workers(gw, key, 200, "the key the CLI made")
    p = cli(env, gw, "keys", "list", "--account", "acme")
    eq([k["id"] for k in json.loads(p.stdout)["keys"]], ["cli1"], "keys list")
    p = cli(env, gw, "keys", "get", "cli1")
    eq(json.loads(p.stdout)["account"], "acme", "keys get")
    p = cli(env, gw, "keys", "disable", "cli1")
    eq((p.returncode, json.loads(p.stdout)["disabled"]), (0, True), "keys disable")
    all_workers(gw, key, 403, "disabled through the CLI")
    p = cli(env, gw, "accounts", "delete", "acme")
    eq(p.returncode, 1, "an account in use is not deleted")
    assert "ACCOUNT_IN_USE" in p.stderr, "the refusal's code on stderr: %r" % p.stderr
    p = cli(env, gw, "keys", "revoke", "cli1")
    eq((p.returncode, json.loads(p.stdout)), (0, {"deleted": True}), "keys revoke")
    all_workers(gw, key, 401, "revoked through the CLI", timeout=0.3)
    p = cli(env, gw, "accounts", "delete", "acme")
    eq(p.returncode, 0, "accounts delete: %s" % p.stderr)
    p = cli(env, gw, "accounts", "list")
    eq([a["id"] for a in json.loads(p.stdout)["accounts"]], ["fileacct"], "accounts list")
    p = cli(env, gw, "keys", "get", "cli1")
    eq(p.returncode, 1, "keys get of a revoked key")
    assert "KEY_NOT_FOUND" in p.stderr, "KEY_NOT_FOUND on stderr: %r" % p.stderr
    p = cli(env, gw, "keys", "list", token_env=False)
    eq(p.returncode, 2, "no token: a usage error")
    p = cli(env, gw, "keys", "frobnicate")
    eq(p.returncode, 2, "an unknown command")
    envv = dict(os.environ, RATEWALL_ADMIN_TOKEN="wrong")
    p = subprocess.run([env.args.gateway, "keys", "list", "--admin", "127.0.0.1:%d" % gw.admin],
                       capture_output=True, text=True, env=envv, timeout=30)
    eq(p.returncode, 1, "a wrong token")
    assert "INVALID_ADMIN_TOKEN" in p.stderr, "the refusal: %r" % p.stderr


run([test_routes_need_the_token, test_key_lifecycle, test_expired_key,
     test_state_file_survives_restart_and_reload, test_fleet_on_redis,
     test_create_race_on_redis, test_cli])
