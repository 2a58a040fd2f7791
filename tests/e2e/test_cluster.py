"""Redis Cluster: storage.cluster names a seed node of a 3-master cluster
(redis-server --cluster-enabled yes, redis-cli --cluster create). Every
account's counters live on the master of its hash tag's slot, limits hold
exactly on each, and a slot moved to another master after the gateway read
the slot map is followed through -MOVED."""
import shutil
import subprocess

from harness import base_config, eq, free_port, poll, redis_cli, run

ACCOUNTS = ["acme", "globex", "initech", "umbrella", "hooli", "wayne"]


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


def start_gateway(env, nodes, limit):
    env.start_mock()
    cfg = base_config(env.mock_port, free_port())
    cfg["storage"] = {"driver": "redis", "timeout_ms": 200, "key_prefix": "cl:",
                      "cluster": ["127.0.0.1:%d" % nodes[0].port]}
    cfg["tiers"]["t"] = {"limits": [{"metric": "requests", "per": "minute", "limit": limit}]}
    cfg["accounts"] = {a: {"tier": "t"} for a in ACCOUNTS}
    for a in ACCOUNTS:
        env.add_key(cfg, "k-" + a, a)
    env.start_gateway(cfg)
    return lambda a: env.req("POST", "/v3/img2img", key=env.keys["k-" + a], body={}).status


def owner(nodes, account):
    """The node holding an account's keys (exactly one must)."""
    holders = [n for n in nodes if redis_cli(n.port, "KEYS", "cl:{%s}:*" % account)]
    eq(len(holders), 1, "the keys of %s on exactly one node" % account)
    slot = redis_cli(nodes[0].port, "CLUSTER", "KEYSLOT", account)
    eq(redis_cli(holders[0].port, "CLUSTER", "COUNTKEYSINSLOT", slot) > 0, True,
       "%s's keys in its slot on that node" % account)
    return holders[0]


def test_spread(env):
    nodes = start_cluster(env)
    call = start_gateway(env, nodes, 2)
    poll(lambda: call(ACCOUNTS[0]) == 200, 10, "a decision through the cluster")
    seen = {a: [call(a) for _ in range(3)] for a in ACCOUNTS[1:]}
    seen[ACCOUNTS[0]] = [200] + [call(ACCOUNTS[0]) for _ in range(2)]
    for a in ACCOUNTS:
        eq(seen[a], [200, 200, 429], "2 a minute for %s" % a)
    owners = {owner(nodes, a).port for a in ACCOUNTS}
    assert len(owners) >= 2, "the accounts spread over the masters: %r" % owners


def test_moved(env):
    nodes = start_cluster(env)
    call = start_gateway(env, nodes, 3)
    # One decision on another account: the gateway has its slot map.
    poll(lambda: call("acme") == 200, 10, "a decision through the cluster")
    account = "globex"
    slot = redis_cli(nodes[0].port, "CLUSTER", "KEYSLOT", account)
    ids = {n.port: redis_cli(n.port, "CLUSTER", "MYID") for n in nodes}
    src = [n for n in nodes
           if any(s[0] <= slot <= s[1] for s in
                  [r[:2] for r in redis_cli(n.port, "CLUSTER", "SLOTS")
                   if r[2][1] == n.port])][0]
    dst = [n for n in nodes if n is not src][0]
    # globex has no keys yet: its slot moves without migrating any.
    redis_cli(dst.port, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src.port])
    redis_cli(src.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst.port])
    for n in nodes:
        redis_cli(n.port, "CLUSTER", "SETSLOT", slot, "NODE", ids[dst.port])
    statuses = [call(account) for _ in range(4)]
    eq(statuses, [200, 200, 200, 429], "3 a minute for %s after its slot moved" % account)
    eq(owner(nodes, account).port, dst.port, "globex's keys on the node its slot moved to")
    eq(redis_cli(src.port, "KEYS", "cl:{%s}:*" % account), [], "none left on the old node")
    assert "errorstat_MOVED" in redis_cli(src.port, "INFO", "errorstats"), \
        "the old node answered -MOVED (the gateway's map was stale, and followed it)"


run([test_spread, test_moved])
