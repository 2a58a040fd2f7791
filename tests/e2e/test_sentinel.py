"""Redis Sentinel: storage.sentinel names a master and its sentinels. One
primary, one replica and three redis-sentinel processes on loopback; the
gateway asks a sentinel for the primary (the first node listed is down, so
it tries the next), a limit holds through it, the primary is killed with
SIGKILL, the sentinels fail over, and the gateway serves decisions on the
new primary within seconds, the limit still exact: nothing admitted twice,
nothing lost that the old primary had replicated. With
storage.sentinel.password the sentinels require a password of their own
(requirepass), the primary another one (storage.password): both are used,
through a failover; a wrong sentinel password is said in the log and
decisions follow on_error."""
import hashlib
import os
import shutil
import time

from harness import Proc, base_config, eq, free_port, poll, redis_cli, request, run, wait_port

MASTER = "rwprimary"


SENTINEL_PASS = "sen-Secret-7"
PRIMARY_PASS = "prim-Secret-9"


def start_sentinel(env, primary_port, password=None, primary_password=None):
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
        if password:  # asked with it; and asks the other sentinels with it
            f.write("requirepass %s\nsentinel sentinel-pass %s\n" % (password, password))
        if primary_password:
            f.write("sentinel auth-pass %s %s\n" % (MASTER, primary_password))
    p = Proc([exe, conf], "sentinel-%d" % port, env.dir)
    p.port = port
    wait_port(port, p.p)
    env.redis.append(p)  # stopped by close() like the Redis servers
    return p


def count_through_failover(call, admitted, limit, within=20):
    """Requests until the limit refuses, through a failover: only 200, 503
    or 429 is ever seen, and exactly the limit is admitted across it.
    Returns the seconds it took."""
    t0 = time.time()
    seen = []
    while time.time() - t0 < within:
        st = call()
        seen.append(st)
        assert st in (200, 503, 429), "during a failover only 200, 503 or 429: %r" % st
        admitted += st == 200
        if st == 429:
            break
        if st == 503:
            time.sleep(0.05)
    eq(seen[-1], 429, "the limit reached on the new primary (seen %r)" % seen[-20:])
    eq(admitted, limit, "exactly the limit admitted, across the switch")
    return time.time() - t0


def start_set(env, password=None, primary_password=None):
    """A primary, its replica in sync, three sentinels that know both and
    each other. password: the sentinels' requirepass; primary_password: the
    data nodes' (requirepass and masterauth)."""
    auth = ["--requirepass", primary_password, "--masterauth", primary_password] \
        if primary_password else []
    primary = env.start_redis(extra=auth)
    replica = env.start_redis(extra=["--replicaof", "127.0.0.1", str(primary.port)] + auth)

    def in_sync():
        info = redis_cli(replica.port, "INFO", "replication", password=primary_password)
        return "master_link_status:up" in info and \
            redis_cli(primary.port, "WAIT", 1, 1000, password=primary_password) >= 1
    poll(in_sync, 20, "the replica in sync")
    sentinels = [start_sentinel(env, primary.port, password, primary_password)
                 for _ in range(3)]

    def sentinels_ready():
        for s in sentinels:
            if len(redis_cli(s.port, "SENTINEL", "replicas", MASTER, password=password)
                   or []) < 1:
                return False
            if len(redis_cli(s.port, "SENTINEL", "sentinels", MASTER, password=password)
                   or []) < 2:
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
    took = count_through_failover(call, admitted=3, limit=6, within=30)
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
    count_through_failover(call, admitted=1, limit=4)
    for _ in range(10):
        eq(call(), 429, "over the limit on every worker after the switch")
    keys = redis_cli(replica.port, "KEYS", "sen:*")
    assert keys, "the counters live on the new primary: %r" % keys


def sentinel_gateway(env, sentinels, sentinel_password, on_error="deny"):
    """A gateway whose sentinel password comes from the environment."""
    if env.mock is None:
        env.start_mock()
    cfg = base_config(env.mock_port, env.port or free_port())
    cfg["storage"] = {"driver": "redis", "timeout_ms": 200, "key_prefix": "sen:",
                      "on_error": on_error, "password": PRIMARY_PASS,
                      "sentinel": {"master": MASTER, "password": "${RW_SENTINEL_PASS}",
                                   "addresses": ["127.0.0.1:%d" % s.port for s in sentinels]}}
    cfg["tiers"]["t"] = {"limits": [{"metric": "requests", "per": "minute", "limit": 4}]}
    cfg["accounts"] = {"acme": {"tier": "t"}}
    env.add_key(cfg, "k1", "acme")
    env.start_gateway(cfg, env=dict(os.environ, RW_SENTINEL_PASS=sentinel_password))
    key = env.keys["k1"]
    return lambda: env.req("POST", "/v3/img2img", key=key, body={}).status


def subscribed_clients(sentinels):
    """Connections subscribed on the sentinels (only the gateway's: the
    sentinels subscribe on the Redis servers, not on each other)."""
    n = 0
    for s in sentinels:
        listing = redis_cli(s.port, "CLIENT", "LIST", password=SENTINEL_PASS)
        n += sum(1 for line in listing.splitlines() if " sub=1 " in line)
    return n


def test_sentinel_password(env):
    """Sentinels with requirepass, a primary with another password: the
    gateway AUTHs to each with its own, finds the primary, subscribes to
    +switch-master and follows a failover."""
    primary, replica, sentinels = start_set(env, SENTINEL_PASS, PRIMARY_PASS)
    try:
        redis_cli(sentinels[0].port, "SENTINEL", "get-master-addr-by-name", MASTER)
        raise AssertionError("a sentinel answered without the password")
    except Exception as e:
        assert "NOAUTH" in str(e), "the sentinels require a password: %s" % e
    call = sentinel_gateway(env, sentinels, SENTINEL_PASS)
    poll(lambda: call() == 200, 10, "a decision through the primary the sentinels named")
    poll(lambda: subscribed_clients(sentinels) >= 1, 10,
         "the gateway subscribed to +switch-master on a sentinel (after AUTH)")
    eq(redis_cli(primary.port, "WAIT", 1, 2000, password=PRIMARY_PASS), 1,
       "the counter replicated")
    eq(redis_cli(sentinels[1].port, "SENTINEL", "failover", MASTER, password=SENTINEL_PASS),
       "OK", "failover asked")
    poll(lambda: redis_cli(sentinels[0].port, "SENTINEL", "get-master-addr-by-name", MASTER,
                           password=SENTINEL_PASS) == ["127.0.0.1", str(replica.port)],
         20, "the replica promoted", step=0.05)
    count_through_failover(call, admitted=1, limit=4)
    keys = redis_cli(replica.port, "KEYS", "sen:*", password=PRIMARY_PASS)
    assert keys, "the counters live on the new primary: %r" % keys
    out = env.gw.output()
    assert "failover of %s" % MASTER in out, \
        "the +switch-master message reached the gateway:\n" + out[-3000:]
    assert "AUTH" not in out, "no AUTH refused:\n" + out[-3000:]


def test_sentinel_wrong_password(env):
    """A wrong sentinel password: one clear log line naming the setting;
    on_error deny answers 503, on_error allow admits from local memory."""
    primary, replica, sentinels = start_set(env, SENTINEL_PASS)
    call = sentinel_gateway(env, sentinels, "not-the-password")
    poll(lambda: "storage.sentinel.password" in env.gw.output(), 10,
         "the refused AUTH in the log")
    out = env.gw.output()
    line = [ln for ln in out.splitlines() if "storage.sentinel.password" in ln][0]
    assert "AUTH" in line and "redis sentinel 127.0.0.1:" in line, \
        "the line names AUTH and the sentinel: %s" % line
    r = env.req("POST", "/v3/img2img", key=env.keys["k1"], body={})
    eq(r.status, 503, "on_error deny: no decision without the primary")
    eq(r.json()["error"]["code"], "LIMITER_UNAVAILABLE", "the 503 says the limiter is away")
    eq(subscribed_clients(sentinels), 0, "nothing subscribed with a refused password")
    time.sleep(2.5)  # several asks and subscription retries later
    n = env.gw.output().count("storage.sentinel.password")
    assert n <= 2, "the refusal logged once per worker, not on every retry (%d lines)" % n
    env.gw.stop()
    env.gw = None
    call = sentinel_gateway(env, sentinels, "not-the-password", on_error="allow")
    eq([call() for _ in range(5)], [200, 200, 200, 200, 429],
       "on_error allow: the local memory store decides")


ADMIN_TOKEN = "sentinel-admin-token"
ADMIN = {"Authorization": "Bearer " + ADMIN_TOKEN}


def keys_gateway(env, sentinels):
    """A gateway with the admin API, its registry on the primary the
    sentinels name (both password-protected)."""
    if env.mock is None:
        env.start_mock()
    cfg = base_config(env.mock_port, free_port())
    cfg["storage"] = {"driver": "redis", "timeout_ms": 500, "key_prefix": "sen:",
                      "password": PRIMARY_PASS,
                      "sentinel": {"master": MASTER, "password": SENTINEL_PASS,
                                   "addresses": ["127.0.0.1:%d" % s.port for s in sentinels]}}
    cfg["tiers"]["t"] = {"limits": [{"metric": "requests", "per": "minute", "limit": 1000}]}
    cfg["accounts"] = {"fileacct": {"tier": "t"}}
    env.add_key(cfg, "filekey", "fileacct")
    cfg["admin"] = {"listen": "127.0.0.1:%d" % free_port(),
                    "token_sha256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()}
    g = env.start_gateways(cfg, 1)[0]
    g.admin = int(cfg["admin"]["listen"].rsplit(":", 1)[1])
    return g


def admin_until_up(g, method, path, body, what, timeout=20):
    """An admin change, asked again while it answers 503 (no primary yet)."""
    got = []
    poll(lambda: got.append(request(g.admin, method, path, body=body, headers=ADMIN))
         or got[-1].status != 503, timeout, what, step=0.1)
    return got[-1]


def use(g, key):
    return request(g.port, "POST", "/v3/img2img", body="{}",
                   headers={"Authorization": "Bearer " + key}).status


def test_keys_survive_failover(env):
    """Keys made through the admin API live on the primary the sentinels
    name; after a failover the registry moves to the new primary: what was
    made before is there, new changes go there, and a gateway started after
    the failover has them all."""
    primary, replica, sentinels = start_set(env, SENTINEL_PASS, PRIMARY_PASS)
    a = keys_gateway(env, sentinels)
    r = admin_until_up(a, "POST", "/admin/accounts", {"id": "acme", "tier": "t"},
                       "the account made on the primary")
    eq(r.status, 201, "account made: %r" % r)
    r = admin_until_up(a, "POST", "/admin/keys", {"id": "k1", "account": "acme"}, "key k1")
    eq(r.status, 201, "key made before the failover: %r" % r)
    k1 = r.json()["key"]
    eq(use(a, k1), 200, "k1 works")
    assert redis_cli(primary.port, "HGET", "sen:registry:keys", "k1", password=PRIMARY_PASS), \
        "k1 kept on the primary"
    eq(redis_cli(primary.port, "WAIT", 1, 2000, password=PRIMARY_PASS), 1, "k1 replicated")
    primary.p.kill()
    primary.p.wait()
    poll(lambda: redis_cli(sentinels[0].port, "SENTINEL", "get-master-addr-by-name", MASTER,
                           password=SENTINEL_PASS) == ["127.0.0.1", str(replica.port)],
         20, "the replica promoted", step=0.1)
    r = admin_until_up(a, "POST", "/admin/keys", {"id": "k2", "account": "acme"},
                       "a key made after the failover", timeout=10)
    eq(r.status, 201, "key made after the failover: %r" % r)
    k2 = r.json()["key"]
    for kid in ("k1", "k2"):
        assert redis_cli(replica.port, "HGET", "sen:registry:keys", kid,
                         password=PRIMARY_PASS), "%s on the new primary" % kid
    b = keys_gateway(env, sentinels)
    poll(lambda: use(b, k1) == 200 and use(b, k2) == 200, 5,
         "a gateway started after the failover takes both keys from the new primary")
    eq(request(b.admin, "DELETE", "/admin/keys/k1", headers=ADMIN).status, 200, "k1 revoked on B")
    poll(lambda: all(use(a, k1) == 401 for _ in range(10)), 2,
         "the revocation on B followed by A (on the new primary too)")
    eq(use(a, k2), 200, "k2 still works on A")
    assert "keys and accounts: kept on 127.0.0.1:%d" % replica.port in a.output(), \
        "A's log says the registry moved:\n" + a.output()[-2000:]


run([test_failover, test_switch_live_primary, test_sentinel_password,
     test_sentinel_wrong_password, test_keys_survive_failover])
