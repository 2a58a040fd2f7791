"""Redis Sentinel: storage.sentinel names a master and its sentinels. One
primary, one replica and three redis-sentinel processes on loopback; the
gateway asks a sentinel for the primary (the first node listed is down, so
it tries the next), a limit holds through it, the primary is killed with
SIGKILL, the sentinels fail over, and the gateway serves decisions on the
new primary within seconds, the limit still exact: nothing admitted twice,
nothing lost that the old primary had replicated."""
import os
import shutil
import time

from harness import Proc, base_config, eq, free_port, poll, redis_cli, run, wait_port

MASTER = "rwprimary"


def start_sentinel(env, primary_port):
    exe = shutil.which("redis-sentinel")
    if not exe:
        raise RuntimeError("redis-sentinel is not installed (Debian package redis-sentinel); "
                           "the Sentinel test fails without it")
    port = free_port()
    conf = os.path.join(env.dir, "sentinel-%d.conf" % port)
    with open(conf, "w") as f:
        f.write("port %d\nbind 127.0.0.1\ndaemonize no\ndir %s\n"
                "sentinel monitor %s 127.0.0.1 %d 2\n"
                "sentinel down-after-milliseconds %s 1000\n"
                "sentinel failover-timeout %s 3000\n"
                "sentinel parallel-syncs %s 1\n"
                % (port, env.dir, MASTER, primary_port, MASTER, MASTER, MASTER))
    p = Proc([exe, conf], "sentinel-%d" % port, env.dir)
    p.port = port
    wait_port(port, p.p)
    env.redis.append(p)  # stopped by close() like the Redis servers
    return p


def replica_in_sync(primary, replica):
    info = redis_cli(replica.port, "INFO", "replication")
    if "master_link_status:up" not in info:
        return False
    return redis_cli(primary.port, "WAIT", 1, 1000) >= 1


def start_set(env):
    """A primary, its replica in sync, three sentinels that know both and
    each other."""
    primary = env.start_redis()
    replica = env.start_redis(extra=["--replicaof", "127.0.0.1", str(primary.port)])
    poll(lambda: replica_in_sync(primary, replica), 20, "the replica in sync")
    sentinels = [start_sentinel(env, primary.port) for _ in range(3)]

    def sentinels_ready():
        for s in sentinels:
            if len(redis_cli(s.port, "SENTINEL", "replicas", MASTER) or []) < 1:
                return False
            if len(redis_cli(s.port, "SENTINEL", "sentinels", MASTER) or []) < 2:
                return False
        return True
    poll(sentinels_ready, 30, "every sentinel knowing the replica and the other two",
         step=0.2)
    return primary, replica, sentinels


def start_gateway(env, sentinels, limit):
    env.start_mock()
    cfg = base_config(env.mock_port, free_port())
    dead = free_port()
    cfg["storage"] = {"driver": "redis", "timeout_ms": 200, "key_prefix": "sen:",
                      "sentinel": {"master": MASTER,
                                   "addresses": ["127.0.0.1:%d" % dead] +
                                            ["127.0.0.1:%d" % s.port for s in sentinels]}}
    cfg["tiers"]["t"] = {"limits": [{"metric": "requests", "per": "minute", "limit": limit}]}
    cfg["accounts"] = {"acme": {"tier": "t"}}
    env.add_key(cfg, "k1", "acme")
    env.start_gateway(cfg)
    key = env.keys["k1"]
    return lambda: env.req("POST", "/v3/img2img", key=key, body={}).status


def test_failover(env):
    primary, replica, sentinels = start_set(env)
    call = start_gateway(env, sentinels, 6)
    # The first decision may come before the worker has found the primary.
    poll(lambda: call() == 200, 10, "a decision through the primary")
    statuses = [call() for _ in range(2)]
    eq(statuses, [200, 200], "admitted on the primary")
    keys = redis_cli(primary.port, "KEYS", "sen:*")
    assert keys and all(k.startswith("sen:{acme}:") for k in keys), \
        "the counters live on the primary: %r" % keys
    eq(redis_cli(primary.port, "WAIT", 1, 2000), 1, "the counters replicated")

    primary.p.kill()
    primary.p.wait()
    t0 = time.time()
    admitted, seen = 3, []
    while time.time() - t0 < 30:
        st = call()
        seen.append(st)
        assert st in (200, 503, 429), "during a failover only 200, 503 or 429: %r" % st
        if st == 200:
            admitted += 1
        if st == 429:
            break
        if st == 503:
            time.sleep(0.05)
    took = time.time() - t0
    eq(seen[-1], 429, "the limit reached again on the new primary (seen %r)" % seen[-20:])
    eq(admitted, 6, "exactly the limit admitted, across the failover")
    assert took < 20, "decisions served again within seconds (%.1f s)" % took
    eq(redis_cli(sentinels[0].port, "SENTINEL", "get-master-addr-by-name", MASTER),
       ["127.0.0.1", str(replica.port)], "the replica is the primary now")
    # Every worker answers on the new primary: still exact, never admitted.
    for _ in range(10):
        eq(call(), 429, "over the limit on every worker after the failover")
    out = env.gw.output()
    assert "failover" in out, "the log tells of the failover:\n" + out[-3000:]


def test_switch_live_primary(env):
    """SENTINEL FAILOVER: the old primary lives on (and is made a replica);
    the gateway leaves it for the new primary on +switch-master."""
    primary, replica, sentinels = start_set(env)
    call = start_gateway(env, sentinels, 4)
    poll(lambda: call() == 200, 10, "a decision through the primary")
    eq(redis_cli(primary.port, "WAIT", 1, 2000), 1, "the counter replicated")
    eq(redis_cli(sentinels[1].port, "SENTINEL", "failover", MASTER), "OK", "failover asked")
    poll(lambda: redis_cli(sentinels[0].port, "SENTINEL", "get-master-addr-by-name", MASTER)
         == ["127.0.0.1", str(replica.port)], 20, "the replica promoted", step=0.05)
    t0 = time.time()
    admitted, seen = 1, []
    while time.time() - t0 < 20:
        st = call()
        seen.append(st)
        assert st in (200, 503, 429), "during a failover only 200, 503 or 429: %r" % st
        admitted += st == 200
        if st == 429:
            break
        if st == 503:
            time.sleep(0.05)
    eq(seen[-1], 429, "the limit reached on the new primary (seen %r)" % seen[-20:])
    eq(admitted, 4, "exactly the limit admitted, across the switch")
    for _ in range(10):
        eq(call(), 429, "over the limit on every worker after the switch")
    keys = redis_cli(replica.port, "KEYS", "sen:*")
    assert keys, "the counters live on the new primary: %r" % keys


run([test_failover, test_switch_live_primary])
