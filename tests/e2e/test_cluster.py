"""Redis Cluster: storage.cluster names seed nodes of a cluster made with
redis-server --cluster-enabled yes and redis-cli --cluster create. Every
account's counters live on the master of its hash tag's slot.

- fleet: 3 masters with a replica each, three gateways on them: limits
  exact across the fleet, accounts on every master, counters replicated.
- failover_manual / failover_kill: a master's replica takes over (CLUSTER
  FAILOVER on the replica; kill -9 of the master). Under on_error deny a
  refused request is a 503, never an admit; the other masters' accounts are
  not affected; the gateways serve the lost master's accounts again from
  the promoted replica within seconds of the cluster reporting ok (the
  time is printed); the scripts run there (NOSCRIPT answered by loading
  them); the limit comes out exact.
- reshard_under_load: the slot of an account with counters migrated by
  hand (IMPORTING, MIGRATING, MIGRATE of one key, then the rest, SETSLOT
  NODE) while three gateways keep deciding for it: -ASK and -TRYAGAIN are
  followed, no request waits past storage.timeout_ms, never over the limit,
  and exact afterwards.
- moved: a slot moved after the gateway read the slot map is followed
  through -MOVED."""
import copy
import shutil
import signal
import subprocess
import threading
import time

from harness import base_config, eq, free_port, poll, redis_cli, request, run

NODE_TIMEOUT_MS = 1000


def start_cluster(env, replicas=0, extra=()):
    """3 masters (and `replicas` replicas of each), every node agreeing the
    cluster is ok and every replica linked to its master."""
    cli = shutil.which("redis-cli")
    if not cli:
        raise RuntimeError("redis-cli is not installed (Debian package redis-tools); "
                           "the Cluster test fails without it")
    nodes = []
    for _ in range(3 * (1 + replicas)):
        port = free_port()
        args = ["--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                "--cluster-config-file", "nodes-%d.conf" % port,
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS)] + list(extra)
        nodes.append(env.start_redis(port=port, extra=args))
        nodes[-1].args = args  # to start it again (restart_node)
    out = subprocess.run([cli, "--cluster", "create"] +
                         ["127.0.0.1:%d" % n.port for n in nodes] +
                         ["--cluster-replicas", str(replicas), "--cluster-yes"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, "redis-cli --cluster create: %s%s" % (out.stdout, out.stderr)

    def settled():
        for n in nodes:
            if "cluster_state:ok" not in redis_cli(n.port, "CLUSTER", "INFO"):
                return False
            role = redis_cli(n.port, "ROLE")
            if role[0] == "slave" and role[3] != "connected":
                return False
        return True
    poll(settled, 30, "the cluster up on every node, every replica linked", step=0.1)
    return nodes


def role(node):
    return redis_cli(node.port, "ROLE")[0]


def slot_of(nodes, account):
    return redis_cli(nodes[0].port, "CLUSTER", "KEYSLOT", account)


def master_of_slot(nodes, slot, ask=None):
    """The master serving slot, as CLUSTER SLOTS of node `ask` says."""
    ask = ask or nodes[0]
    for lo, hi, m, *_ in redis_cli(ask.port, "CLUSTER", "SLOTS"):
        if lo <= slot <= hi:
            return next(n for n in nodes if n.port == int(m[1]))
    raise AssertionError("slot %d served by no master" % slot)


def pick_accounts(nodes, per_master):
    """Account names, `per_master` on each master: {master port: [names]}."""
    masters = [n for n in nodes if role(n) == "master"]
    got = {m.port: [] for m in masters}
    for i in range(1000):
        name = "acct%d" % i
        m = master_of_slot(nodes, slot_of(nodes, name))
        if len(got[m.port]) < per_master:
            got[m.port].append(name)
        if all(len(v) == per_master for v in got.values()):
            return got
    raise AssertionError("no account names found for every master")


def fleet_config(env, seeds, accounts, limits, timeout_ms=500, on_error="deny"):
    env.start_mock()
    cfg = base_config(env.mock_port, free_port())
    cfg["storage"] = {"driver": "redis", "timeout_ms": timeout_ms, "key_prefix": "cl:",
                      "on_error": on_error,
                      "cluster": ["127.0.0.1:%d" % n.port for n in seeds]}
    cfg["tiers"]["t"] = {"limits": limits}
    cfg["accounts"] = {a: {"tier": "t"} for a in accounts}
    for a in accounts:
        env.add_key(cfg, "k-" + a, a)
    return cfg


def start_fleet(env, cfg, accounts, n=3):
    """n gateways on cfg, each answering usage for every account (the slot
    map read and every master connected; usage charges nothing)."""
    gws = []
    for _ in range(n):
        c = copy.deepcopy(cfg)
        if "admin" in c:  # an admin listener of its own
            c["admin"]["listen"] = "127.0.0.1:%d" % free_port()
        g = env.start_gateways(c, 1)[0]
        g.admin_port = int(c["admin"]["listen"].rsplit(":", 1)[1]) if "admin" in c else None
        gws.append(g)

    def all_usage():
        return all(env.req_at(g.port, "GET", "/v1/usage", key=env.keys["k-" + a]).status == 200
                   for g in gws for a in accounts)
    poll(all_usage, 15, "usage answered through the cluster by every gateway")
    return gws


def decide(env, gw, account, timeout=10):
    """One counted request; (status, seconds it took)."""
    t0 = time.time()
    st = env.req_at(gw.port, "POST", "/v3/img2img", key=env.keys["k-" + account], body={},
                    timeout=timeout).status
    return st, time.time() - t0


class Load:
    """One thread per gateway, each sending requests for `accounts` in turn
    (every `pause` seconds) until stop(); every answer is kept as
    (start, end, gateway index, account, status)."""

    def __init__(self, env, gws, accounts, pause=0.01):
        self.env, self.gws, self.accounts, self.pause = env, gws, list(accounts), pause
        self.records = []
        self.errors = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        # Daemons: a failing test never waits for them.
        self.threads = [threading.Thread(target=self.loop, args=(i,), daemon=True)
                        for i in range(len(gws))]
        for t in self.threads:
            t.start()

    def loop(self, i):
        k = i
        while not self.done.is_set():
            with self.lock:
                accounts = list(self.accounts)
            if accounts:
                a = accounts[k % len(accounts)]
                k += 1
                t0 = time.time()
                try:
                    st, _ = decide(self.env, self.gws[i], a)
                except Exception as e:  # noqa: BLE001 -- recorded, asserted on
                    with self.lock:
                        self.errors.append(repr(e))
                    continue
                with self.lock:
                    self.records.append((t0, time.time(), i, a, st))
            time.sleep(self.pause)

    def set_accounts(self, accounts):
        with self.lock:
            self.accounts = list(accounts)

    def stop(self):
        self.done.set()
        for t in self.threads:
            t.join(30)
        assert not self.errors, "every request answered: %r" % self.errors[:5]
        return self.records


def drive_to_limit(env, gws, account, limit):
    """Requests for account over every gateway until each answers 429;
    returns how many were admitted (never more than limit may be)."""
    admitted, refused = 0, set()
    for k in range(limit + 50):
        g = k % len(gws)
        st, _ = decide(env, gws[g], account)
        assert st in (200, 429), "only 200 or 429 once the cluster is stable: %r" % st
        admitted += st == 200
        if st == 429:
            refused.add(g)
            if len(refused) == len(gws):
                return admitted
    raise AssertionError("%s never refused by every gateway" % account)


def used(env, gw, account):
    """The account's minute counter as the store answers usage."""
    r = env.req_at(gw.port, "GET", "/v1/usage", key=env.keys["k-" + account])
    return r.json()["limits"][0]["used"] if r.status == 200 else None


def keys_on(node, account):
    return redis_cli(node.port, "KEYS", "cl:{%s}:*" % account)


def errorstats(node):
    return redis_cli(node.port, "INFO", "errorstats")


def test_fleet(env):
    """Three masters with a replica each, three gateways: every account's
    limit exact across the fleet, and every master holds some accounts."""
    nodes = start_cluster(env, replicas=1)
    by_master = pick_accounts(nodes, 2)
    accounts = [a for v in by_master.values() for a in v]
    limit = 5
    cfg = fleet_config(env, [nodes[0]], accounts,
                       [{"metric": "requests", "per": "minute", "limit": limit}])
    gws = start_fleet(env, cfg, accounts)
    statuses = {a: [] for a in accounts}
    lock = threading.Lock()

    def client(i):
        # 4 requests per account from each of the three gateways, in parallel.
        for a in accounts:
            for _ in range(4):
                st, _ = decide(env, gws[i % 3], a)
                with lock:
                    statuses[a].append(st)

    ts = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    for a in accounts:
        eq(sorted(statuses[a]), [200] * limit + [429] * (24 - limit),
           "%d a minute for %s across three gateways" % (limit, a))
    masters = [n for n in nodes if role(n) == "master"]
    eq(len(masters), 3, "three masters")
    for m in masters:
        held = [a for a in accounts if keys_on(m, a)]
        eq(sorted(held), sorted(by_master[m.port]),
           "master %d holds the counters of the accounts of its slots" % m.port)
    # Each master's replica has the same counters.
    for n in nodes:
        r = redis_cli(n.port, "ROLE")
        if r[0] != "slave":
            continue
        master = next(m for m in masters if m.port == int(r[2]))
        eq(redis_cli(master.port, "WAIT", 1, 2000), 1, "master %d replicated" % master.port)
        # A loaded machine may show the replica's copy a moment after WAIT.
        want = sorted(by_master[master.port])
        poll(lambda: sorted(a for a in accounts if keys_on(n, a)) == want, 5,
             "replica %d holds its master's accounts" % n.port, step=0.05)
        eq(sorted(a for a in accounts if keys_on(n, a)), want,
           "replica %d holds its master's accounts" % n.port)


def failover(env, kill):
    # Without full coverage required, the other masters keep answering while
    # one master's slots have none (between its failure and the promotion).
    nodes = start_cluster(env, replicas=1, extra=["--cluster-require-full-coverage", "no"])
    by_master = pick_accounts(nodes, 1)
    masters = [n for n in nodes if role(n) == "master"]
    victim_master = masters[0]
    victim = by_master[victim_master.port][0]
    others = [by_master[m.port][0] for m in masters[1:]]
    replica = next(n for n in nodes if role(n) == "slave" and
                   int(redis_cli(n.port, "ROLE")[2]) == victim_master.port)
    limit = 60
    # The master that fails is the only seed: the map is then read from
    # the masters the gateway knows.
    cfg = fleet_config(env, [victim_master], [victim] + others,
                       [{"metric": "requests", "per": "minute", "limit": limit}])
    cfg["admin"] = {"listen": "127.0.0.1:1"}  # start_fleet gives each its own
    gws = start_fleet(env, cfg, [victim] + others)

    def readyz(g):
        return request(g.admin_port, "GET", "/readyz").status
    poll(lambda: all(readyz(g) == 200 for g in gws), 10, "every gateway ready")
    before = 0
    for k in range(6):
        st, _ = decide(env, gws[k % 3], victim)
        eq(st, 200, "admitted on the victim's master before the failover")
        before += 1
    eq(redis_cli(victim_master.port, "WAIT", 1, 2000), 1, "the counters replicated")

    # Other accounts all the time; the victim's too for a manual failover
    # (the replica catches up before it takes over, nothing is lost). A
    # kill -9 may lose a charge not yet replicated: the victim's requests
    # start right after the kill, when the outage begins.
    load = Load(env, gws, others + ([] if kill else [victim]), pause=0.02)
    time.sleep(0.3)
    t_event = time.time()
    if kill:
        victim_master.p.kill()
        victim_master.p.wait()
        load.set_accounts(others + [victim])
    else:
        eq(redis_cli(replica.port, "CLUSTER", "FAILOVER"), "OK", "manual failover asked")
    live = [n for n in nodes if n is not victim_master] if kill else nodes
    slot = slot_of(live, victim)

    def promoted():
        if role(replica) != "master":
            return False
        return all("cluster_state:ok" in redis_cli(n.port, "CLUSTER", "INFO") and
                   master_of_slot(nodes, slot, ask=n) is replica for n in live)
    poll(promoted, 20, "the replica promoted, every node agreeing", step=0.05)
    t_ok = time.time()
    # Every gateway serving the victim again from the promoted replica.
    served_at = {}
    while len(served_at) < 3 and time.time() - t_ok < 15:
        with load.lock:
            recs = list(load.records)
        for t0, t1, g, a, st in recs:
            if a == victim and t0 >= t_ok and st in (200, 429) and g not in served_at:
                # Served from this request on, unless a later one was refused.
                if not any(r[3] == victim and r[2] == g and r[0] > t0 and r[4] == 503
                           for r in recs):
                    served_at[g] = t1
        time.sleep(0.05)
    time.sleep(0.5)
    records = load.stop()
    eq(len(served_at), 3, "every gateway served %s again after the failover" % victim)
    recovery = max(served_at.values()) - t_ok
    print("%s: cluster ok %.2f s after the %s; every gateway served its accounts %.2f s "
          "after that" % ("kill -9" if kill else "CLUSTER FAILOVER", t_ok - t_event,
                          "kill" if kill else "command", max(recovery, 0)))
    assert recovery < 10, "served again within 10 s of the cluster ok (%.2f s)" % recovery
    seen = {}
    for _, _, _, a, st in records:
        seen.setdefault(a, []).append(st)
    for a, sts in seen.items():
        assert set(sts) <= {200, 429, 503}, "only 200, 429 or 503 for %s: %r" % (a, set(sts))
    for a in others:
        eq(seen[a].count(503), 0, "%s, on another master, never refused" % a)
    admitted = before + seen.get(victim, []).count(200)
    assert admitted <= limit, "never over the limit (%d admitted of %d)" % (admitted, limit)
    # The lost master serves no slot now: the gateways are ready without it.
    poll(lambda: all(readyz(g) == 200 for g in gws), 5,
         "every gateway ready again after the failover")
    # NOSCRIPT on the promoted master: answered by loading the scripts.
    eq(redis_cli(replica.port, "SCRIPT", "FLUSH"), "OK", "scripts flushed on the new master")
    admitted += drive_to_limit(env, gws, victim, limit - admitted + 1)
    eq(admitted, limit, "exactly the limit admitted for %s across the failover" % victim)
    assert "errorstat_NOSCRIPT" in errorstats(replica), \
        "the new master answered NOSCRIPT and the gateway loaded the scripts"
    assert keys_on(replica, victim), "the victim's counters on the promoted replica"
    if not kill:
        assert "errorstat_MOVED" in errorstats(victim_master), \
            "the old master, a replica now, redirected the gateways with -MOVED"


def test_failover_manual(env):
    failover(env, kill=False)


def test_failover_kill(env):
    failover(env, kill=True)


def test_outage_debt_failover(env):
    """on_error allow: while a killed master's replica is not promoted yet,
    its accounts are decided in the gateway's memory (the other masters
    answering all along), and what was admitted meanwhile is owed. The
    debt waits for the master that serves the slot next (the promoted
    replica) and is added there: the limit counts the outage's admits."""
    nodes = start_cluster(env, replicas=1, extra=["--cluster-require-full-coverage", "no"])
    by_master = pick_accounts(nodes, 1)
    masters = [n for n in nodes if role(n) == "master"]
    dead = masters[0]
    victim = by_master[dead.port][0]
    others = [by_master[m.port][0] for m in masters[1:]]
    replica = next(n for n in nodes if role(n) == "slave" and
                   int(redis_cli(n.port, "ROLE")[2]) == dead.port)
    limit = 8
    cfg = fleet_config(env, masters[1:], [victim] + others,
                       [{"metric": "requests", "per": "minute", "limit": limit}],
                       timeout_ms=200, on_error="allow")
    cfg["tiers"]["big"] = {"limits": [{"metric": "requests", "per": "minute",
                                       "limit": 100000}]}
    for a in others:
        cfg["accounts"][a] = {"tier": "big"}
    gw = start_fleet(env, cfg, [victim] + others, n=1)[0]
    for _ in range(3):
        eq(decide(env, gw, victim)[0], 200, "admitted on its master before the outage")
    eq(redis_cli(dead.port, "WAIT", 1, 2000), 1, "the counters replicated")
    dead.p.kill()
    dead.p.wait()
    live = [n for n in nodes if n is not dead]
    slot = slot_of(live, victim)
    # Until the replica is promoted: the victim decided in local memory,
    # the other accounts by their masters (whose answers must not pay, nor
    # drop, the victim's debt).
    outage = []
    while role(replica) != "master":
        outage.append(decide(env, gw, victim)[0])
        for a in others:
            eq(decide(env, gw, a)[0], 200, "%s decided by its master meanwhile" % a)
    eq(set(outage) <= {200, 429}, True, "the outage's decisions made locally: %r" % outage)
    admitted = outage.count(200)
    print("outage: %d decisions for %s in local memory, %d admitted" % (
        len(outage), victim, admitted))
    assert len(outage) > limit, "more requests in the outage than the limit: %d" % len(outage)
    eq(admitted, limit, "the local memory kept its own count through the outage")
    poll(lambda: all(master_of_slot(nodes, slot, ask=n) is replica for n in live), 20,
         "every node naming the promoted replica", step=0.05)
    # 3 + 8 charged now on the promoted replica (usage asks it: the deny
    # cache would answer a counted request 429 whatever it holds).
    seen = []
    t0 = time.time()
    while time.time() - t0 < 10 and (not seen or seen[-1] != 3 + limit):
        seen.append(used(env, gw, victim))
        time.sleep(0.02)
    eq(seen[-1], 3 + limit, "the outage's admits added to the promoted replica (usage seen: "
       "%r)" % sorted(set(seen), key=str))
    assert keys_on(replica, victim), "the victim's counters on the promoted replica"


def test_clusterdown_allow(env):
    """A master without a replica killed, Redis's default full coverage:
    every master answers CLUSTERDOWN. Under on_error allow each account is
    decided in the gateway's memory, counted from zero and kept (one log
    line per master and worker, not one per call); when the master is
    started again the outage's admits are added to the masters."""
    nodes = start_cluster(env)
    by_master = pick_accounts(nodes, 1)
    dead = nodes[0]
    victim = by_master[dead.port][0]
    other = by_master[nodes[1].port][0]
    limit = 8
    cfg = fleet_config(env, nodes[1:], [victim, other],
                       [{"metric": "requests", "per": "minute", "limit": limit}],
                       timeout_ms=200, on_error="allow")
    gw = start_fleet(env, cfg, [victim, other], n=1)[0]
    for a in (victim, other):
        for _ in range(2):
            eq(decide(env, gw, a)[0], 200, "%s admitted by its master first" % a)
    dead.p.kill()
    dead.p.wait()
    poll(lambda: "cluster_state:fail" in redis_cli(nodes[1].port, "CLUSTER", "INFO"), 10,
         "the cluster down without the killed master", step=0.05)
    for a in (victim, other):
        sts = [decide(env, gw, a)[0] for _ in range(3 * limit)]
        eq(sts.count(200), limit, "%s: the limit counted from zero in local memory" % a)
    # Usage is never cached: each of these is refused CLUSTERDOWN by the
    # other's master, then answered from memory.
    for _ in range(20):
        used(env, gw, other)
    refused = int(errorstats(nodes[1]).split("errorstat_CLUSTERDOWN:count=")[1].split()[0])
    downs = [l for l in gw.output().splitlines() if "CLUSTERDOWN" in l]
    assert refused >= 20 and 0 < len(downs) <= 4, \
        "CLUSTERDOWN logged once per master and worker: %d lines for %d refusals" % (
            len(downs), refused)
    env.redis.remove(dead)
    back = env.start_redis(port=dead.port, extra=dead.args)  # empty: no persistence
    poll(lambda: all("cluster_state:ok" in redis_cli(n.port, "CLUSTER", "INFO")
                     for n in [back] + nodes[1:]), 20, "the cluster ok again", step=0.05)
    # Each account: 8 admitted locally are added to its master (2 + 8 on
    # the other's, 0 + 8 on the restarted one): over the limit on both.
    # The gateway's deny cache answers these accounts 429 without asking
    # any store until the minute ends; usage asks the master.
    for a, want in ((victim, limit), (other, 2 + limit)):
        poll(lambda: used(env, gw, a) == want, 10,
             "%s: %d used on its master (the outage's admits added)" % (a, want))
    # The restarted master came back empty: only the debt wrote there.
    assert keys_on(back, victim), "the victim's outage admits on its restarted master"


def test_reshard_under_load(env):
    """The slot of an account with counters (two of them: a minute and a
    day) moves to another master, one key first, while the fleet decides
    for it."""
    nodes = start_cluster(env)
    by_master = pick_accounts(nodes, 1)
    src = next(n for n in nodes if n.port in by_master)
    account = by_master[src.port][0]
    dst = next(n for n in nodes if n.port in by_master and n is not src)
    slot = slot_of(nodes, account)
    timeout_ms = 500
    limit = 150
    cfg = fleet_config(env, [nodes[0]], [account], [
        {"metric": "requests", "per": "minute", "limit": limit},
        {"metric": "requests", "per": "day", "limit": 100000}], timeout_ms=timeout_ms)
    gws = start_fleet(env, cfg, [account])
    for k in range(3):
        eq(decide(env, gws[k], account)[0], 200, "admitted before the reshard")
    keys = sorted(keys_on(src, account))
    assert len(keys) >= 2, "the account has two counters on its master: %r" % keys
    ids = {n.port: redis_cli(n.port, "CLUSTER", "MYID") for n in nodes}

    load = Load(env, gws, [account], pause=0.015)
    time.sleep(0.3)
    redis_cli(dst.port, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src.port])
    redis_cli(src.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst.port])
    time.sleep(0.2)
    # One counter moved, the other not yet: the source answers -ASK, the
    # target (after ASKING) -TRYAGAIN, until the rest follows.
    moving = redis_cli(src.port, "CLUSTER", "GETKEYSINSLOT", slot, 100)
    eq(sorted(moving), keys, "the slot holds the account's counters")
    eq(redis_cli(src.port, "MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", moving[0]),
       "OK", "first counter migrated")
    time.sleep(0.15)
    eq(redis_cli(src.port, "MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS",
                 *moving[1:]), "OK", "the other counters migrated")
    for n in [dst, src] + [n for n in nodes if n not in (src, dst)]:
        redis_cli(n.port, "CLUSTER", "SETSLOT", slot, "NODE", ids[dst.port])
    time.sleep(0.5)
    records = load.stop()
    sts = [r[4] for r in records]
    assert len(sts) > 30, "requests kept coming during the reshard: %d" % len(sts)
    worst = max(r[1] - r[0] for r in records)
    print("reshard: %d requests, %d admitted, slowest %.0f ms; source %s; target %s" % (
        len(sts), sts.count(200), worst * 1000,
        " ".join(l for l in errorstats(src).splitlines() if l.startswith("errorstat")),
        " ".join(l for l in errorstats(dst).splitlines() if l.startswith("errorstat"))))
    assert set(sts) <= {200, 429}, "every request decided during the reshard: %r" % set(sts)
    assert worst < timeout_ms / 1000 + 0.3, \
        "no request waited past storage.timeout_ms (slowest %.0f ms)" % (worst * 1000)
    admitted = 3 + sts.count(200)
    assert admitted <= limit, "never over the limit (%d of %d)" % (admitted, limit)
    stats = errorstats(src)
    assert "errorstat_ASK" in stats or "errorstat_MOVED" in stats, \
        "the source redirected the gateways (-ASK or -MOVED): %s" % stats
    admitted += drive_to_limit(env, gws, account, limit - admitted + 1)
    eq(admitted, limit, "exactly the limit admitted across the reshard")
    eq(sorted(keys_on(dst, account)), keys, "the counters on the new master")
    eq(keys_on(src, account), [], "none left on the old one")


def test_stopped_seed_no_stall(env):
    """A master stopped (SIGSTOP: the kernel still accepts connections, no
    answer comes) is the first seed: every time its connection drops, the
    slot map is read again, and the seed asked first never answers. The
    map is read on the worker's own event loop, so the other masters'
    accounts on the same workers never wait for it."""
    nodes = start_cluster(env, extra=["--cluster-require-full-coverage", "no"])
    by_master = pick_accounts(nodes, 2)
    stopped = nodes[0]
    others = [a for port, v in by_master.items() if port != stopped.port for a in v]
    timeout_ms = 200
    cfg = fleet_config(env, [stopped] + nodes[1:], others + by_master[stopped.port],
                       [{"metric": "requests", "per": "minute", "limit": 100000}],
                       timeout_ms=timeout_ms)
    cfg["server"]["workers"] = 1  # every account on the worker that reads the map
    gws = start_fleet(env, cfg, others + by_master[stopped.port], n=1)
    stopped.pause()
    load = Load(env, gws * 2, others, pause=0.005)
    # Requests for the stopped master's accounts: its connection times out
    # and drops, again and again (503 meanwhile, under deny).
    lost = Load(env, gws, by_master[stopped.port], pause=0.05)
    time.sleep(4)
    records = load.stop()
    lost_sts = {r[4] for r in lost.stop()}
    stopped.signal(signal.SIGCONT)
    eq(lost_sts, {503}, "the stopped master's accounts refused with 503")
    worst = max(r[1] - r[0] for r in records)
    sts = [r[4] for r in records]
    print("stopped seed: %d requests on the other masters, slowest %.0f ms" % (
        len(sts), worst * 1000))
    assert len(sts) > 100, "requests kept coming: %d" % len(sts)
    eq(set(sts), {200}, "the other masters' accounts all admitted")
    assert worst < timeout_ms / 1000 + 0.3, \
        "no request on the other masters stalled (slowest %.0f ms)" % (worst * 1000)
    out = gws[0].output()
    assert "no answer to CLUSTER SLOTS" in out, \
        "the stopped seed was asked for the map (and did not answer):\n" + out[-2000:]


def test_moved(env):
    nodes = start_cluster(env)
    cfg = fleet_config(env, [nodes[0]], ["acme", "globex"],
                       [{"metric": "requests", "per": "minute", "limit": 3}], timeout_ms=200)
    gw = start_fleet(env, cfg, ["acme", "globex"], n=1)[0]
    account = "globex"
    slot = slot_of(nodes, account)
    ids = {n.port: redis_cli(n.port, "CLUSTER", "MYID") for n in nodes}
    src = master_of_slot(nodes, slot)
    dst = next(n for n in nodes if n is not src)
    # globex has no keys yet: its slot moves without migrating any.
    redis_cli(dst.port, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src.port])
    redis_cli(src.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst.port])
    for n in nodes:
        redis_cli(n.port, "CLUSTER", "SETSLOT", slot, "NODE", ids[dst.port])
    statuses = [decide(env, gw, account)[0] for _ in range(4)]
    eq(statuses, [200, 200, 200, 429], "3 a minute for %s after its slot moved" % account)
    assert keys_on(dst, account), "globex's keys on the node its slot moved to"
    eq(keys_on(src, account), [], "none left on the old node")
    assert "errorstat_MOVED" in errorstats(src), \
        "the old node answered -MOVED (the gateway's map was stale, and followed it)"


run([test_fleet, test_failover_manual, test_failover_kill, test_reshard_under_load,
     test_stopped_seed_no_stall, test_outage_debt_failover, test_clusterdown_allow,
     test_moved])
