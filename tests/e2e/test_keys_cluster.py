"""The keys and accounts API on a Redis Cluster (storage.cluster): a
3-master cluster of its own, two gateways. A key made through one
gateway's admin API works on the other within a second; the registry's
keys share one hash tag, so they live on one master; when that slot moves
to another master, the gateways follow -MOVED (reading the slot map again)
and keep taking changes."""
import hashlib
import shutil
import subprocess
import time

from harness import base_config, eq, free_port, poll, redis_cli, request, run

TOKEN = "cluster-admin-token"
AUTH = {"Authorization": "Bearer " + TOKEN}
PREFIX = "kc:"
REG_KEYS = ["%s{registry}:%s" % (PREFIX, k) for k in ("keys", "accounts", "version")]


def start_cluster(env):
    cli = shutil.which("redis-cli")
    if not cli:
        raise RuntimeError("redis-cli is not installed (Debian package redis-tools); "
                           "the Cluster test fails without it")
    nodes = []
    for _ in range(3):
        port = free_port()
        nodes.append(env.start_redis(port=port, extra=[
            "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
            "--cluster-config-file", "nodes-%d.conf" % port,
            "--cluster-node-timeout", "2000"]))
    out = subprocess.run([cli, "--cluster", "create"] +
                         ["127.0.0.1:%d" % n.port for n in nodes] + ["--cluster-yes"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, "redis-cli --cluster create: %s%s" % (out.stdout, out.stderr)
    poll(lambda: all("cluster_state:ok" in redis_cli(n.port, "CLUSTER", "INFO")
                     for n in nodes), 30, "the cluster up on every node", step=0.1)
    return nodes


def start_gateways(env, nodes):
    env.start_mock()
    cfg = base_config(env.mock_port, free_port())
    cfg["storage"] = {"driver": "redis", "timeout_ms": 500, "key_prefix": PREFIX,
                      # the second seed first: the registry's slot is on any node
                      "cluster": ["127.0.0.1:%d" % nodes[1].port,
                                  "127.0.0.1:%d" % nodes[0].port]}
    cfg["tiers"]["basic"] = {"limits": [{"metric": "requests", "per": "minute",
                                         "limit": 100000}]}
    cfg["accounts"] = {"fileacct": {"tier": "basic"}}
    env.add_key(cfg, "filekey", "fileacct")
    gws = []
    for _ in range(2):
        cfg["admin"] = {"listen": "127.0.0.1:%d" % free_port(),
                        "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}
        g = env.start_gateways(cfg, 1)[0]
        g.admin = int(cfg["admin"]["listen"].rsplit(":", 1)[1])
        gws.append(g)
    return gws


def admin(gw, method, path, body=None):
    return request(gw.admin, method, path, body=body, headers=AUTH)


def use(gw, key):
    return request(gw.port, "POST", "/v3/img2img", body="{}",
                   headers={"Authorization": "Bearer " + key}).status


def steady(gw, key, status, what, timeout):
    """Within timeout seconds, 10 requests in a row (new connections, over
    the workers) answer status."""
    deadline = time.time() + timeout
    n = 0
    while n < 10:
        s = use(gw, key)
        n = n + 1 if s == status else 0
        if not n:
            assert time.time() < deadline, "%s: still %d after %.1f s" % (what, s, timeout)
            time.sleep(0.02)


def count(node):
    """Keys of the registry's slot on node (any node answers for itself)."""
    slot = redis_cli(node.port, "CLUSTER", "KEYSLOT", REG_KEYS[0])
    return redis_cli(node.port, "CLUSTER", "COUNTKEYSINSLOT", slot)


def holder(nodes):
    """The one master holding the registry's keys."""
    have = [n for n in nodes if count(n) > 0]
    eq(len(have), 1, "the registry's keys on exactly one master")
    eq(redis_cli(have[0].port, "EXISTS", *REG_KEYS), 3, "all three registry keys together")
    return have[0]


def create_key(gw, kid, timeout=5):
    """POST /admin/keys until it is not 503 (the registry still finding its
    master); the answer."""
    got = []
    poll(lambda: got.append(admin(gw, "POST", "/admin/keys", {"id": kid, "account": "acme"}))
         or got[-1].status != 503, timeout, "the key %s created" % kid, step=0.05)
    return got[-1]


def test_keys_across_cluster(env):
    nodes = start_cluster(env)
    a, b = start_gateways(env, nodes)
    made = []
    poll(lambda: made.append(admin(a, "POST", "/admin/accounts",
                                   {"id": "acme", "tier": "basic"})) or made[-1].status != 503,
         5, "A's registry connected to the master of its slot")
    eq(made[-1].status, 201, "account made on A: %r" % made[-1])
    r = create_key(a, "k1")
    eq(r.status, 201, "key made on A: %r" % r)
    key = r.json()["key"]
    t0 = time.time()
    steady(a, key, 200, "the key on A at once", 0.5)
    steady(b, key, 200, "the key made on A working on B", max(0.1, 1.5 - (time.time() - t0)))
    eq(admin(b, "GET", "/admin/keys/k1").json()["source"], "api", "B lists it")
    # Made on B, the same id again on A: one registry, so 409.
    r = admin(b, "POST", "/admin/keys", {"id": "k2", "account": "acme"})
    eq(r.status, 201, "key made on B")
    eq(admin(a, "POST", "/admin/keys", {"id": "k2", "account": "acme"}).status, 409,
       "the id B made is taken for A too")
    h = holder(nodes)
    slot = redis_cli(h.port, "CLUSTER", "KEYSLOT", REG_KEYS[0])
    eq(slot, redis_cli(h.port, "CLUSTER", "KEYSLOT", "registry"), "the {registry} hash tag")
    # Revoked on B: refused on A within a second.
    eq(admin(b, "DELETE", "/admin/keys/k1").status, 200, "revoked on B")
    steady(a, key, 401, "the key revoked on B refused on A", 1.5)


def test_registry_slot_moves(env):
    """The registry's slot moved (keys migrated) to another master: both
    gateways hear -MOVED, read the slot map again and follow it."""
    nodes = start_cluster(env)
    a, b = start_gateways(env, nodes)
    made = []
    poll(lambda: made.append(admin(a, "POST", "/admin/accounts",
                                   {"id": "acme", "tier": "basic"})) or made[-1].status != 503,
         5, "A's registry connected to the master of its slot")
    eq(made[-1].status, 201, "account made on A")
    eq(create_key(a, "k1").status, 201, "key made on A")
    src = holder(nodes)
    dst = [n for n in nodes if n is not src][0]
    slot = redis_cli(src.port, "CLUSTER", "KEYSLOT", REG_KEYS[0])
    ids = {n.port: redis_cli(n.port, "CLUSTER", "MYID") for n in nodes}
    redis_cli(dst.port, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src.port])
    redis_cli(src.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst.port])
    eq(redis_cli(src.port, "MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *REG_KEYS),
       "OK", "the registry's keys migrated")
    for n in nodes:
        redis_cli(n.port, "CLUSTER", "SETSLOT", slot, "NODE", ids[dst.port])
    eq(holder(nodes).port, dst.port, "the registry on the new master")
    t0 = time.time()
    r = create_key(a, "k2", timeout=10)
    eq(r.status, 201, "a key made on A after the move: %r" % r)
    assert time.time() - t0 < 5, "the move followed within seconds"
    key = r.json()["key"]
    steady(b, key, 200, "the key made on A after the move working on B", 3)
    eq(holder(nodes).port, dst.port, "written on the new master")
    eq(count(src), 0, "nothing written on the old master")
    assert "errorstat_MOVED" in redis_cli(src.port, "INFO", "errorstats"), \
        "the old master answered -MOVED (and the gateways followed it)"
    out = a.output()
    assert "keys and accounts: kept on 127.0.0.1:%d" % dst.port in out, \
        "A's log says where the registry went:\n" + out[-2000:]


run([test_keys_across_cluster, test_registry_slot_moves])
