"""The Redis store end to end: real redis-server, several real gateway
processes, the mock-backend.

- a fleet of three gateways keeps a key limit and an account limit exactly;
  their clocks disagree (two run skewed by an LD_PRELOAD shim) and still
  agree on X-RateLimit-Reset and Retry-After (Redis TIME is the one clock);
- one EVALSHA per decision (INFO commandstats and MONITOR), plus one per
  lease release;
- Redis killed under load (on_error deny: fast 503s; on_error allow: local
  counting that still enforces a limit), Redis hung (SIGSTOP: 503 after
  storage.timeout_ms, not after the hang), and recovery after each;
- every key in Redis expires (rolling, calendar, lease);
- concurrency leases shared across instances, and a lease of a gateway
  killed with SIGKILL is bounded by the backend timeout + 30 s;
- acquire.lua refuses a bad argument before writing anything, refuses a
  decision past its deadline, and applies a lease's refund only once;
- acquire.lua's rolling windows answer as a plain bucket model does, step
  for step (admits, refusals and their retry moments, debt, refunds), and
  a window kept in the earlier layout keeps its count;
- a batch of decisions (mode "b") answers and writes exactly what the same
  decisions made one call at a time do, and refuses a bad one before
  writing anything; a burst that one gateway worker reads in one loop turn
  goes to Redis as one batch and keeps the limits exact;
- a Redis on deploy/redis.conf killed with SIGKILL and restarted keeps the
  day counters.
"""
import calendar
import datetime
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

from harness import base_config, day_bound, eq, free_port, redis_cli, request, run

PATH = "/v3/img2img"


# ---- helpers ---------------------------------------------------------------

def redis_env(env, tiers, accounts, keys, n_gw=1, storage=None, gw_env=None,
              backend_timeout_ms=None, workers=2):
    """mock-backend, one redis-server, n_gw gateways on it."""
    env.start_mock()
    r = env.start_redis()
    cfg = base_config(env.mock_port, free_port())
    cfg["server"]["workers"] = workers
    st = {"driver": "redis", "address": "127.0.0.1:%d" % r.port, "timeout_ms": 1000}
    st.update(storage or {})
    cfg["storage"] = st
    if backend_timeout_ms:
        cfg["backends"]["models"]["timeout_ms"] = backend_timeout_ms
    cfg["tiers"].update(tiers)
    cfg["accounts"] = accounts
    for k in keys:
        env.add_key(cfg, *k)
    gws = env.start_gateways(cfg, n_gw, env=gw_env)
    return r, gws, cfg


def redis_info(port, section):
    out = {}
    for line in redis_cli(port, "INFO", section).splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            out[k] = v
    return out


def evalsha_calls(rport):
    """Top-level EVALSHA calls since the last CONFIG RESETSTAT."""
    v = redis_info(rport, "commandstats").get("cmdstat_evalsha")
    if not v:
        return 0
    return int(dict(f.split("=") for f in v.split(","))["calls"])


def wait_gateways_connected(rport, n):
    """Until n gateway connections (one per worker) have loaded their scripts
    and read Redis's clock, the last command a connection sends before its
    first decision (a gateway listens before its workers' Redis connections
    are up)."""
    def ready():
        lines = redis_cli(rport, "CLIENT", "LIST").splitlines()
        return sum(1 for ln in lines if " cmd=time " in ln + " " or
                   " cmd=evalsha " in ln + " ") >= n
    poll(ready, 10, what="%d gateway connections to Redis" % n)
    time.sleep(0.2)


def redis_now_ms(rport):
    s, us = redis_cli(rport, "TIME")
    return int(s) * 1000 + int(us) // 1000


def keys_of(rport, pattern):
    return sorted(redis_cli(rport, "KEYS", pattern))


def hash_field(rport, key, field):
    v = redis_cli(rport, "HGET", key, field)
    return int(v) if v is not None else 0


def poll(cond, timeout, step=0.02, what="condition"):
    deadline = time.time() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError("%s not reached within %.1f s" % (what, timeout))
        time.sleep(step)


def assert_unavailable(r):
    eq(r.status, 503, "status of %r" % r)
    err = r.json()["error"]
    eq(err["type"], "service_unavailable", "type")
    eq(err["code"], "LIMITER_UNAVAILABLE", "code")
    eq(r.h("retry-after"), "1", "Retry-After")


def assert_rate_429(r):
    eq(r.status, 429, "status of %r" % r)
    err = r.json()["error"]
    eq(err["type"], "rate_limit_error", "type")
    eq(err["code"], "RATE_LIMIT_EXCEEDED", "code")
    eq(r.h("x-ratelimit-type"), "minute", "X-RateLimit-Type")
    assert int(r.h("retry-after")) >= 1, "Retry-After at least 1: %r" % r.headers
    return err["details"]


class Hammer:
    """Threads sending requests back to back to one gateway, each on a new
    connection; every answer is kept as (t0, t1, status, response|error) on
    the monotonic clock."""

    def __init__(self, port, key, threads=4, timeout=10):
        self.port, self.key, self.timeout = port, key, timeout
        self.records = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.loop, daemon=True)
                        for _ in range(threads)]

    def loop(self):
        while not self.stopping.is_set():
            t0 = time.monotonic()
            try:
                r = request(self.port, "POST", PATH, body={}, timeout=self.timeout,
                            headers={"Authorization": "Bearer " + self.key})
                rec = (t0, time.monotonic(), r.status, r)
            except Exception as e:  # a refused or cut connection: recorded, asserted on
                rec = (t0, time.monotonic(), None, e)
            with self.lock:
                self.records.append(rec)
            time.sleep(0.005)

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(30)
        return sorted(self.records, key=lambda x: x[0])

    def seen(self, pred):
        with self.lock:
            return any(pred(r) for r in self.records)


def check_no_errors(records):
    bad = [r for r in records if r[2] not in (200, 503)]
    assert not bad, "answers other than 200/503: %r" % (bad[:5],)


def recovery_time(records, t_up):
    """Seconds from t_up to the end of the last non-200 answer of a request
    sent after t_up, and whether a 200 came after it."""
    after = [r for r in records if r[0] >= t_up]
    bad = [r for r in after if r[2] != 200]
    last_bad_end = max((r[1] for r in bad), default=t_up)
    ok_after = [r for r in after if r[2] == 200 and r[0] >= last_bad_end]
    return last_bad_end - t_up, len(ok_after)


# A shim that moves CLOCK_REALTIME (and gettimeofday, time) of one process by
# SKEW_MS: instances whose own clocks disagree.
SKEW_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
static long long skew(void) {
    static long long v = -1; static int done;
    if (!done) { const char *s = getenv("SKEW_MS"); v = s ? atoll(s) : 0; done = 1; }
    return v;
}
static void add(struct timespec *ts) {
    long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + skew() * 1000000LL;
    ts->tv_sec = ns / 1000000000LL; ts->tv_nsec = ns % 1000000000LL;
}
int clock_gettime(clockid_t id, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int r = real(id, ts);
    if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) add(ts);
    return r;
}
int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    (void)tz;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (tv) { tv->tv_sec = ts.tv_sec; tv->tv_usec = ts.tv_nsec / 1000; }
    return 0;
}
time_t time(time_t *t) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (t) *t = ts.tv_sec;
    return ts.tv_sec;
}
"""


def build_skew_shim(workdir):
    """The shim as a shared library. Without a C compiler (gcc, installed by
    deploy/install-deps) the test fails: "one clock" checked without any
    skew would prove nothing."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (cc or gcc; Debian package gcc) to build the "
                           "clock-skew shim: the one-clock test needs it")
    src = os.path.join(workdir, "skew.c")
    lib = os.path.join(workdir, "libskew.so")
    with open(src, "w") as f:
        f.write(SKEW_SHIM)
    r = subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", lib, src, "-ldl"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise RuntimeError("the clock-skew shim did not build:\n" + r.stdout.decode()[-2000:])
    return lib


def skew_env(lib, ms):
    asan = os.environ.get("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    # ASan insists on coming first in the library list; the shim comes first.
    return {"LD_PRELOAD": lib, "SKEW_MS": str(ms),
            "ASAN_OPTIONS": asan + ":verify_asan_link_order=0"}


def log_clock_offset(proc):
    """Seconds by which the first timestamped log line of proc is ahead of
    the real clock now (it was written at start-up, so a little behind)."""
    for line in proc.output().splitlines():
        try:
            t = datetime.datetime.strptime(line.split(" ", 1)[0], "%Y-%m-%dT%H:%M:%S.%fZ")
        except ValueError:
            continue
        return calendar.timegm(t.timetuple()) + t.microsecond / 1e6 - time.time()
    return None


# ---- 1 + 2: a fleet keeps limits exactly, on one clock -----------------------

def test_fleet_exact_and_one_clock(env):
    lib = build_skew_shim(env.dir)
    skews = [0, -90000, 150000]  # ms: instance 1 runs 90 s late, instance 2 150 s early
    gw_env = [None] + [skew_env(lib, s) for s in skews[1:]]
    r, gws, _ = redis_env(env, {"team": {"limits": [
        {"metric": "requests", "per": "minute", "limit": 7},
        {"metric": "requests", "per": "minute", "limit": 10, "scope": "account"}]}},
        {"acme": {"tier": "team"}}, [("k1", "acme"), ("k2", "acme")], n_gw=3,
        gw_env=gw_env)
    for g, s in zip(gws[1:], skews[1:]):
        off = poll(lambda: log_clock_offset(g), 5, what="a log line of " + g.name)
        assert abs(off - s / 1000) < 30, \
            "the skew shim did not move %s's clock by %d s (%r s)" % (g.name, s / 1000, off)

    keys = ["k1", "k2"]
    results = []
    lock = threading.Lock()
    n_threads, per_thread = 36, 3
    barrier = threading.Barrier(n_threads)

    def client(i):
        g = gws[i % 3]
        kid = keys[(i // 3) % 2]
        barrier.wait()
        for _ in range(per_thread):
            resp = env.req_at(g.port, "POST", PATH, key=env.keys[kid], body={})
            with lock:
                results.append((g.name, kid, resp))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    eq(len(results), n_threads * per_thread, "answers")
    statuses = sorted(set(x[2].status for x in results))
    assert set(statuses) <= {200, 429}, "statuses %r: %r" % (
        statuses, [x for x in results if x[2].status not in (200, 429)][:3])
    admitted = {k: sum(1 for x in results if x[1] == k and x[2].status == 200) for k in keys}
    eq(sum(admitted.values()), 10, "admitted by the fleet (account limit 10), per key %r"
       % admitted)
    for k in keys:
        assert admitted[k] <= 7, "key %s admitted %d > its limit 7" % (k, admitted[k])
    for _, _, resp in results:
        if resp.status == 429:
            d = assert_rate_429(resp)
            assert (d["limit"], d["scope"]) in ((7, "key"), (10, "account")), \
                "refused by the key's 7 or the account's 10: %r" % d
            eq(d["remaining"], 0, "details.remaining")
    eq(env.mock_stats()["by_path"].get(PATH), 10, "requests that reached the backend")
    # The account counter in Redis holds exactly 10.
    acct = [k for k in keys_of(r.port, "rl:*") if ":minute:account" in k]
    eq(len(acct), 1, "account minute counter in %r" % keys_of(r.port, "rl:*"))
    eq(hash_field(r.port, acct[0], "s"), 10, "account counter in Redis")

    # One clock: every instance, whatever its own clock, gives the same
    # reset for the same counters (Redis TIME), and a sane one.
    for kid in keys:
        resets, retries = [], []
        for g in gws:
            resp = env.req_at(g.port, "POST", PATH, key=env.keys[kid], body={})
            assert_rate_429(resp)
            resets.append(int(resp.h("x-ratelimit-reset")))
            retries.append(int(resp.h("retry-after")))
        now = time.time()
        assert max(resets) - min(resets) <= 1, \
            "X-RateLimit-Reset of %s differs between instances: %r" % (kid, resets)
        assert max(retries) - min(retries) <= 2, \
            "Retry-After of %s differs between instances: %r" % (kid, retries)
        for x in resets:
            assert now - 2 <= x <= now + 63, "X-RateLimit-Reset %d, now %.0f" % (x, now)
        for x in retries:
            assert 1 <= x <= 62, "Retry-After %d" % x
        print("  %s: admitted %d; X-RateLimit-Reset %r, Retry-After %r from the 3 instances"
              % (kid, admitted[kid], resets, retries))


# ---- 3: one round trip per decision ------------------------------------------

class Monitor:
    """MONITOR on a raw socket: the top-level commands of every client other
    than Lua (script-internal commands show as [N lua])."""

    def __init__(self, rport):
        self.s = socket.create_connection(("127.0.0.1", rport), timeout=5)
        self.s.sendall(b"*1\r\n$7\r\nMONITOR\r\n")
        self.f = self.s.makefile("rb")
        first = self.f.readline()
        assert first.startswith(b"+OK"), "MONITOR accepted: %r" % first
        self.lines = []
        self.lock = threading.Lock()
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        try:
            while True:
                line = self.f.readline()
                if not line:
                    return
                with self.lock:
                    self.lines.append(line.decode(errors="replace").rstrip("\r\n"))
        except OSError:
            return

    def top_level(self):
        out = []
        with self.lock:
            lines = list(self.lines)
        for ln in lines:
            # +1700000000.123456 [0 127.0.0.1:5555] "EVALSHA" "..."
            try:
                src = ln.split("[", 1)[1].split("]", 1)[0]
                cmd = ln.split("] ", 1)[1].split(" ", 1)[0].strip('"').upper()
            except IndexError:
                continue
            if " lua" in src or cmd in ("INFO", "CONFIG"):
                continue
            if "registry" in ln and cmd in ("GET", "HGETALL", "SUBSCRIBE", "CLIENT"):
                continue  # the key registry's version check, not a decision's
            out.append(cmd)
        return out

    def close(self):
        try:
            self.s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.s.close()


def test_one_round_trip_per_decision(env):
    r, gws, _ = redis_env(env, {
        "multi": {"limits": [
            {"metric": "requests", "per": "minute", "limit": 12},
            {"metric": "requests", "per": "hour", "limit": 100},
            {"metric": "requests", "per": "day", "limit": 100},
            {"metric": "requests", "per": "minute", "limit": 50, "scope": "account"}]},
        "conc": {"limits": [
            {"metric": "requests", "per": "minute", "limit": 100},
            {"metric": "concurrent", "limit": 3, "scope": "account"}]}},
        {"acme": {"tier": "multi"}, "busy": {"tier": "conc"}},
        [("k1", "acme"), ("c1", "busy")], n_gw=2)
    wait_gateways_connected(r.port, 2 * 2)  # 2 gateways of 2 workers
    mon = Monitor(r.port)
    try:
        # Part 1: N admitted decisions of a key with four limits: N EVALSHA.
        redis_cli(r.port, "CONFIG", "RESETSTAT")
        n = 12
        for i in range(n):
            eq(env.req_at(gws[i % 2].port, "POST", PATH, key=env.keys["k1"],
                          body={}).status, 200, "request %d" % i)
        eq(evalsha_calls(r.port), n, "EVALSHA calls for %d decisions" % n)
        stats = redis_info(r.port, "commandstats")
        for c in ("cmdstat_eval", "cmdstat_evalsha_ro", "cmdstat_eval_ro", "cmdstat_fcall",
                  "cmdstat_multi", "cmdstat_exec", "cmdstat_script|load"):
            assert c not in stats, "%s in %r" % (c, sorted(stats))
        top = poll(lambda: (lambda t: t if len(t) >= n else None)(mon.top_level()), 5,
                   what="%d commands seen by MONITOR" % n)
        time.sleep(0.2)
        top = mon.top_level()
        eq(top, ["EVALSHA"] * n, "top-level commands the gateways sent for %d decisions" % n)

        # Refusals cost at most one call each (the deny cache may answer
        # some without Redis).
        for i in range(4):
            resp = env.req_at(gws[0].port, "POST", PATH, key=env.keys["k1"], body={})
            assert_rate_429(resp)
        calls = evalsha_calls(r.port)
        assert n + 1 <= calls <= n + 4, "EVALSHA after 4 refusals: %d" % calls

        # Part 2: with a concurrency limit, one more call per admitted
        # request (its release) and none per refusal.
        redis_cli(r.port, "CONFIG", "RESETSTAT")
        results = []
        lock = threading.Lock()
        m = 8
        barrier = threading.Barrier(m)

        def client(i):
            barrier.wait()
            resp = env.req_at(gws[i % 2].port, "POST", PATH, key=env.keys["c1"], body={},
                              headers={"x-mock-delay-ms": "1500"})
            with lock:
                results.append(resp)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(m)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        admitted = sum(1 for x in results if x.status == 200)
        refused = [x for x in results if x.status == 429]
        eq(admitted + len(refused), m, "answers %r" % results)
        assert admitted >= 1 and refused, "admitted %d of %d (concurrency limit 3)" % (
            admitted, m)
        for x in refused:
            eq(x.json()["error"]["code"], "CONCURRENT_LIMIT_EXCEEDED", "code")
        want = m + admitted
        poll(lambda: evalsha_calls(r.port) >= want, 5,
             what="%d EVALSHA (%d decisions + %d releases)" % (want, m, admitted))
        time.sleep(0.3)
        eq(evalsha_calls(r.port), want, "EVALSHA: %d decisions + %d releases" % (m, admitted))
        # Every lease was given back, not left to expire.
        poll(lambda: not [k for k in keys_of(r.port, "rl:*") if "concurrent" in k], 3,
             what="lease sets emptied")
    finally:
        mon.close()


def hammered_gateway(env, timeout_ms):
    """Redis, one gateway (on_error deny, a limit never reached) and a
    Hammer of clients already getting 200s."""
    r, gws, _ = redis_env(env, {"big": {"limits": [
        {"metric": "requests", "per": "minute", "limit": 1000000}]}},
        {"acme": {"tier": "big"}}, [("k1", "acme")],
        storage={"timeout_ms": timeout_ms, "on_error": "deny"})
    g = gws[0]
    h = Hammer(g.port, env.keys["k1"]).start()
    try:
        poll(lambda: h.seen(lambda x: x[2] == 200), 5, what="first 200")
    except BaseException:
        h.stop()
        raise
    time.sleep(0.3)
    return r, g, h


# ---- 4: Redis killed, on_error deny ------------------------------------------

def test_redis_killed_deny(env):
    r, g, h = hammered_gateway(env, timeout_ms=100)
    try:
        r.p.kill()           # SIGKILL by PID
        r.p.wait()
        t_dead = time.monotonic()
        time.sleep(1.0)
        t_restart = time.monotonic()
        env.start_redis(port=r.port)
        t_up = time.monotonic()
        poll(lambda: h.seen(lambda x: x[0] >= t_up and x[2] == 200), 5,
             what="a 200 after Redis came back")
        time.sleep(2.5)
    finally:
        recs = h.stop()
    check_no_errors(recs)
    down = [x for x in recs if x[0] >= t_dead and x[1] <= t_restart]
    assert len(down) >= 5, "only %d requests during the outage" % len(down)
    for x in down:
        assert_unavailable(x[3])
    worst = max(x[1] - x[0] for x in recs)
    assert worst < 1.0, "a request took %.3f s (storage.timeout_ms 100)" % worst
    rec_s, n_ok = recovery_time(recs, t_up)
    print("  deny: %d answers during the outage, slowest answer %.0f ms, recovered "
          "%.2f s after Redis was back" % (len(down), worst * 1000, rec_s))
    assert rec_s <= 2.5, "traffic back only %.2f s after Redis" % rec_s
    assert n_ok >= 5, "too few 200s after recovery: %d" % n_ok
    eq(env.mock_stats()["requests"], sum(1 for x in recs if x[2] == 200),
       "requests that reached the backend")
    # Counting resumed in the new Redis.
    assert keys_of(r.port, "rl:*"), "no counters in the restarted Redis"


# ---- 5: Redis killed, on_error allow -----------------------------------------

def test_redis_killed_allow(env):
    five = {"limits": [{"metric": "requests", "per": "minute", "limit": 5}]}
    r, gws, _ = redis_env(env, {"five": five, "big": {"limits": [
        {"metric": "requests", "per": "minute", "limit": 1000000}]}},
        {"acme": {"tier": "five"}, "poller": {"tier": "big"}},
        [("pre", "acme"), ("out", "acme"), ("post", "acme"), ("poll", "poller")],
        storage={"timeout_ms": 100, "on_error": "allow"})
    g = gws[0]

    def send(kid, n):
        out = []
        for _ in range(n):
            t0 = time.monotonic()
            resp = env.req_at(g.port, "POST", PATH, key=env.keys[kid], body={})
            out.append((time.monotonic() - t0, resp))
        return out

    for _, resp in send("pre", 2):
        eq(resp.status, 200, "before the outage")
    assert [k for k in keys_of(r.port, "rl:*") if ":pre:" in k], "no Redis counter for pre"

    r.p.kill()
    r.p.wait()
    # While Redis is down every request is decided by this instance's memory:
    # 5 a minute for "out", then refusals.
    got = send("out", 8)
    eq([x[1].status for x in got], [200] * 5 + [429] * 3, "statuses during the outage")
    for _, resp in got[5:]:
        assert_rate_429(resp)
    worst = max(x[0] for x in got)
    assert worst < 1.0, "a request took %.3f s during the outage" % worst

    # A longer outage: the reconnect backoff grows (50 ms doubling to 1 s),
    # and the instance keeps deciding alone.
    time.sleep(1.2)
    got = send("out", 2)
    eq([x[1].status for x in got], [429] * 2, "still counted locally")
    env.start_redis(port=r.port)
    t_up = time.monotonic()

    # Back on Redis once every request of a round is counted there.
    def counted_in_redis():
        ks = [k for k in keys_of(r.port, "rl:*") if ":poll:" in k]
        before = hash_field(r.port, ks[0], "s") if ks else 0
        for _, resp in send("poll", 8):
            eq(resp.status, 200, "poll")
        ks = [k for k in keys_of(r.port, "rl:*") if ":poll:" in k]
        return ks and hash_field(r.port, ks[0], "s") - before == 8

    poll(counted_in_redis, 5, step=0.05, what="decisions counted in Redis again")
    rec_s = time.monotonic() - t_up
    print("  allow: outage answers slowest %.0f ms; counted in Redis again %.2f s after "
          "it was back" % (worst * 1000, rec_s))
    assert rec_s <= 2.5, "Redis counting resumed only %.2f s after Redis" % rec_s

    got = send("post", 7)
    eq([x[1].status for x in got], [200] * 5 + [429] * 2, "statuses after the outage")
    ks = [k for k in keys_of(r.port, "rl:*") if ":post:" in k]
    eq(len(ks), 1, "post counters %r" % ks)
    eq(hash_field(r.port, ks[0], "s"), 5, "post counted in Redis")
    # Under on_error allow the instance says so in its log.
    assert "memory" in g.output(), \
        "the log does not say that decisions were counted in local memory:\n" + g.output()


# ---- 6: Redis hangs ----------------------------------------------------------

def test_redis_hang(env):
    r, g, h = hammered_gateway(env, timeout_ms=150)
    try:
        r.pause()
        t_stop = time.monotonic()
        time.sleep(2.0)
        t_cont = time.monotonic()
        r.signal(signal.SIGCONT)
        poll(lambda: h.seen(lambda x: x[0] >= t_cont and x[2] == 200), 5,
             what="a 200 after Redis resumed")
        time.sleep(2.5)
    finally:
        r.signal(signal.SIGCONT)
        recs = h.stop()
    check_no_errors(recs)
    hung = [x for x in recs if x[0] >= t_stop + 0.05 and x[1] <= t_cont]
    assert len(hung) >= 3, "only %d requests answered during the hang" % len(hung)
    for x in hung:
        assert_unavailable(x[3])
    worst = max(x[1] - x[0] for x in recs)
    assert worst < 1.0, "a request took %.3f s (storage.timeout_ms 150, hang 2 s)" % worst
    rec_s, n_ok = recovery_time(recs, t_cont)
    print("  hang: %d 503s during the 2 s hang, slowest answer %.0f ms, recovered "
          "%.2f s after SIGCONT" % (len(hung), worst * 1000, rec_s))
    assert rec_s <= 2.5, "traffic back only %.2f s after Redis resumed" % rec_s
    assert n_ok >= 5, "too few 200s after recovery: %d" % n_ok
    # The decisions answered 503 ran when Redis resumed, past their
    # deadline on Redis's clock: none charged. (One that Redis ran in the
    # instant it was stopped, its reply lost with the dropped connection,
    # may stay charged: a request without a lease has nothing to prove it.)
    ks = [k for k in keys_of(r.port, "rl:*") if ":minute:" in k]
    eq(len(ks), 1, "one minute counter in Redis: %r" % ks)
    ok = sum(1 for x in recs if x[2] == 200)
    unavailable = sum(1 for x in recs if x[2] == 503)
    counted = poll(lambda: hash_field(r.port, ks[0], "s") >= ok and
                   hash_field(r.port, ks[0], "s"), 5,
                   what="every one of the %d admitted requests counted in Redis" % ok)
    # Every admitted request is charged, and a decision answered 503 is
    # not, even when the stalled Redis runs it on resuming. One decision
    # that Redis ran in the instant it stopped, whose reply was lost with
    # the dropped connection, may stay charged (see the README).
    assert ok <= counted <= ok + 1, \
        "Redis counted %d requests; %d were admitted, %d answered 503 (503s charged?)" % (
            counted, ok, unavailable)


# ---- 7: every key expires ----------------------------------------------------

@day_bound
def test_keys_expire(env):
    r, gws, _ = redis_env(env, {"all": {"limits": [
        {"metric": "requests", "per": "second", "limit": 50},
        {"metric": "requests", "per": "minute", "limit": 50},
        {"metric": "requests", "per": "hour", "limit": 100},
        {"metric": "requests", "per": "day", "limit": 100},
        {"metric": "requests", "per": "month", "limit": 1000},
        {"metric": "units", "per": "minute", "limit": 100, "endpoints": ["txt2img"]},
        {"metric": "concurrent", "limit": 2, "scope": "account"}]}},
        {"acme": {"tier": "all"}}, [("k1", "acme")],
        storage={"key_prefix": "rwt:"}, backend_timeout_ms=5000)
    g = gws[0]
    key = env.keys["k1"]
    slow = []
    t = threading.Thread(target=lambda: slow.append(env.req_at(
        g.port, "POST", PATH, key=key, body={}, headers={"x-mock-delay-ms": "2500"})))
    eq(env.req_at(g.port, "POST", "/v3/txt2img", key=key, body={"image_num": 2}).status, 200,
       "a txt2img of 2 units")
    t.start()
    try:
        poll(lambda: env.mock_stats()["in_flight"] == 1, 5, what="slow request at the backend")
        eq(env.req_at(g.port, "POST", PATH, key=key, body={}).status, 200,
           "a second request beside the slow one")
        now = redis_now_ms(r.port)
        ttl = {}
        for k in keys_of(r.port, "*"):
            ttl[k] = redis_cli(r.port, "PTTL", k)
    finally:
        t.join(30)
    eq(slow[0].status, 200, "slow request")
    assert ttl, "no keys in Redis"
    for k, v in ttl.items():
        assert k.startswith("rwt:"), "key %r without the configured prefix" % k
        assert v > 0, "key %r has no expiry (PTTL %r)" % (k, v)
    day_end = (now // 86400000 + 1) * 86400000
    d = datetime.datetime.utcfromtimestamp(now / 1000)
    nm = datetime.datetime(d.year + (d.month == 12), d.month % 12 + 1, 1)
    month_end = calendar.timegm(nm.timetuple()) * 1000
    expect = {  # kind in the key -> (low, high] PTTL in ms
        ":second:": (0, 1000 + 17 + 1000),
        ":minute:": (50000, 60000 + 1000 + 1000),
        ":hour:": (3600000, 3600000 + 60000 + 1000),
        # (+1: `now` is TIME cut to the millisecond, PTTL rounds its own)
        ":day:": (day_end - now + 60000 - 5000, day_end - now + 60000 + 1),
        ":month:": (month_end - now + 60000 - 5000, month_end - now + 60000 + 1),
        "concurrent": (25000, 5000 + 30000 + 1000),  # backend timeout + 30 s (+1 s)
    }
    seen = set()
    print("  keys and PTTLs: %r" % sorted(ttl.items()))
    for k, v in ttl.items():
        kinds = [x for x in expect if x in k]
        assert len(kinds) == 1, "cannot tell the kind of key %r" % k
        lo, hi = expect[kinds[0]]
        assert lo < v <= hi, "%s: PTTL %d ms not in (%d, %d]" % (k, v, lo, hi)
        seen.add(kinds[0])
    for kind in (":minute:", ":hour:", ":day:", ":month:", "concurrent"):
        assert kind in seen, "no %s key among %r" % (kind, sorted(ttl))
    # The lease itself expires with the backend timeout + 30 s.
    # (Checked again in test_leases_shared for a gateway killed holding one.)
    # After the slow request, its lease set is gone.
    poll(lambda: not [k for k in keys_of(r.port, "*") if "concurrent" in k], 3,
         what="lease set removed after the last release")


# ---- 8: leases shared across instances ---------------------------------------

def test_leases_shared(env):
    r, gws, _ = redis_env(env, {"one": {"limits": [
        {"metric": "concurrent", "limit": 1, "scope": "account"}]}},
        {"acme": {"tier": "one"}}, [("k1", "acme"), ("k2", "acme")], n_gw=3,
        backend_timeout_ms=5000)
    a, b, c = gws
    k1, k2 = env.keys["k1"], env.keys["k2"]
    slow = []
    t = threading.Thread(target=lambda: slow.append(env.req_at(
        a.port, "POST", PATH, key=k1, body={}, headers={"x-mock-delay-ms": "3000"})))
    t.start()
    try:
        poll(lambda: env.mock_stats()["in_flight"] == 1, 5, what="slow request at the backend")
        for gw, kid in ((b, k2), (c, k1)):
            resp = env.req_at(gw.port, "POST", PATH, key=kid, body={})
            eq(resp.status, 429, "while A holds the slot, via %s" % gw.name)
            err = resp.json()["error"]
            eq(err["code"], "CONCURRENT_LIMIT_EXCEEDED", "code")
            eq(err["details"]["limit"], 1, "details.limit")
            eq(err["details"]["active"], 1, "details.active")
            eq(resp.h("x-ratelimit-type"), "concurrent", "X-RateLimit-Type")
            assert "1/1" in err["message"], err["message"]
    finally:
        t.join(30)
    eq(slow[0].status, 200, "slow request via A")
    poll(lambda: env.req_at(b.port, "POST", PATH, key=k2, body={}).status == 200, 3,
         step=0.05, what="B admits once A's request is done")

    # A dies (SIGKILL) holding a lease: the slot stays taken, and the lease
    # carries an expiry of the backend timeout (5 s) + 30 s on Redis's clock.
    dead = []

    def doomed():
        try:
            dead.append(env.req_at(a.port, "POST", PATH, key=k1, body={},
                                   headers={"x-mock-delay-ms": "20000"}, timeout=10))
        except Exception as e:
            dead.append(e)

    t = threading.Thread(target=doomed)
    t.start()
    poll(lambda: env.mock_stats()["in_flight"] == 1, 5, what="doomed request at the backend")
    env.kill_gateway(a)
    t.join(15)
    assert dead and isinstance(dead[0], Exception), "the client of a killed gateway got %r" % dead
    resp = env.req_at(b.port, "POST", PATH, key=k2, body={})
    eq(resp.status, 429, "the dead gateway's lease still holds the slot")
    lease_keys = [k for k in keys_of(r.port, "rl:*") if "concurrent" in k]
    eq(len(lease_keys), 1, "lease sets %r" % lease_keys)
    lk = lease_keys[0]
    members = redis_cli(r.port, "ZRANGE", lk, "0", "-1", "WITHSCORES")
    eq(len(members), 2, "one lease in %r" % members)
    now = redis_now_ms(r.port)
    left = int(float(members[1])) - now
    assert 5000 + 30000 - 5000 < left <= 5000 + 30000, \
        "lease expires in %d ms, want <= backend timeout + 30 s" % left
    pttl = redis_cli(r.port, "PTTL", lk)
    assert left <= pttl <= 5000 + 30000 + 1000, "lease set PTTL %d, lease %d" % (pttl, left)
    # Waiting 35 s is too long for this suite: move the lease's expiry to
    # 300 ms from now (as if the time had passed) and see the slot free up.
    redis_cli(r.port, "ZADD", lk, "XX", str(redis_now_ms(r.port) + 300), members[0])
    poll(lambda: env.req_at(b.port, "POST", PATH, key=k2, body={}).status == 200, 3,
         step=0.05, what="slot free once the dead gateway's lease expired")
    poll(lambda: env.mock_stats()["in_flight"] == 0, 5, what="backend idle")


# ---- 9: the decision script checks every argument before writing ----------

def test_acquire_script_validates(env):
    r = env.start_redis()
    src = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                            "storage", "acquire.lua")).read()
    keys = ["t:{a}:units", "t:{a}:spend", "t:{a}:conc"]

    def call(mode, checks, deadline="", lease="L1"):
        # ARGV: now, lease id (mode "a": charged time), mode, deadline
        # (mode "a": the lease a refund is tied to)
        args = ["", lease, mode, deadline] if mode != "a" else ["", "", mode, lease]
        for c in checks:
            args += c
        return redis_cli(r.port, "EVAL", src, str(len(checks)), *(keys[:len(checks)] + args))

    good = [["r", "60000", "100", "1"], ["c", "d", "100", "1"], ["g", "31000", "2", "1"]]
    bad = {
        "amount past the cap (1e17) on the second check":
            [good[0], ["c", "d", "100", "100000000000000000"], good[2]],
        "fractional amount in float notation": [good[0], ["c", "d", "100", "2e-1"], good[2]],
        "fractional amount": [good[0], ["c", "d", "100", "1.5"], good[2]],
        "negative amount in a charge": [good[0], ["c", "d", "100", "-1"], good[2]],
        "limit not a number": [good[0], good[1], ["g", "31000", "x", "1"]],
        "unknown kind": [good[0], good[1], ["z", "31000", "2", "1"]],
        "unknown period": [good[0], ["c", "w", "100", "1"], good[2]],
        "zero window": [["r", "0", "100", "1"], good[1], good[2]],
        "nan limit": [good[0], ["c", "d", "nan", "1"], good[2]],
        "inf amount": [good[0], ["c", "d", "100", "inf"], good[2]],
    }
    for what, checks in bad.items():
        try:
            out = call("1", checks)
        except RuntimeError as e:
            assert "bad argument" in str(e), "%s: error %r" % (what, e)
        else:
            raise AssertionError("%s: accepted, answered %r" % (what, out))
        eq(keys_of(r.port, "t:*"), [], "keys written by a refused call (%s)" % what)
    # A clock past 2^47 ms is refused: there, now * 60 passes 2^53 and
    # bucket indices of a 1 ms window stop being exact integers (a loop over
    # buckets then never ended, and Redis stayed BUSY).
    for now in (str(2 ** 50), str(2 ** 47 + 1)):
        try:
            out = redis_cli(r.port, "EVAL", src, "1", keys[0], now, "", "1", "",
                            "r", "1", "100", "1")
        except RuntimeError as e:
            assert "bad argument: now" in str(e), "now %s: error %r" % (now, e)
        else:
            raise AssertionError("now %s accepted, answered %r" % (now, out))
    eq(keys_of(r.port, "t:*"), [], "keys written by a refused far-future clock")
    out = redis_cli(r.port, "EVAL", src, "1", "x:{a}:far", str(2 ** 47), "", "1", "",
                    "r", "1", "100", "1")
    eq(out[0], 1, "the latest clock accepted (2^47 ms) decides")
    try:
        call("x", good)
        raise AssertionError("an unknown mode was accepted")
    except RuntimeError as e:
        assert "bad argument" in str(e), "unknown mode: error %r" % e
    try:
        call("a", [good[0], ["c", "d", "100", str(2 ** 50 + 1)]])
        raise AssertionError("an adjust past the cap was accepted")
    except RuntimeError as e:
        assert "bad argument" in str(e), "adjust past the cap: error %r" % e
    eq(keys_of(r.port, "t:*"), [], "keys written by refused calls")

    # A deadline already passed on Redis's clock: refused, nothing written.
    out = call("1", good, deadline=str(redis_now_ms(r.port) - 1))
    eq(out[0], -1, "a decision past its deadline")
    eq(keys_of(r.port, "t:*"), [], "keys written by a decision past its deadline")
    # The same decision in time is charged. It, the debt and the refund
    # below go in one bucket (a second of the minute window; the refund is
    # taken from the bucket of now): started early in a second of Redis's
    # clock, not across a bucket boundary on a loaded machine.
    poll(lambda: redis_now_ms(r.port) % 1000 < 300, 3, step=0.01,
         what="the start of a second on Redis's clock")
    out = call("1", good, deadline=str(redis_now_ms(r.port) + 5000))
    eq(out[0], 1, "a decision within its deadline: %r" % out)
    eq(keys_of(r.port, "t:*"), sorted(keys), "counters of an admitted decision")
    # A refund tied to a lease that is not held writes nothing; tied to the
    # held one it gives back the charges and the lease, once.
    eq(call("a", [good[0], ["c", "d", "100", "-1"], good[2]], lease="")[0], 1, "plain adjust")
    eq(redis_cli(r.port, "HGET", "t:{a}:spend", "v"), "0", "plain give-back")
    eq(redis_cli(r.port, "HGET", "t:{a}:units", "s"), "2", "plain adjust adds")
    refund = [["r", "60000", "100", "-1"], ["c", "d", "100", "-1"], ["g", "31000", "2", "0"]]
    eq(call("a", refund, lease="other")[0], 0, "refund of a lease not held")
    eq(redis_cli(r.port, "HGET", "t:{a}:units", "s"), "2", "units after a refund not applied")
    eq(call("a", refund, lease="L1")[0], 1, "refund of the held lease")
    eq(redis_cli(r.port, "HGET", "t:{a}:units", "s"), "1", "units after the refund")
    eq(redis_cli(r.port, "ZCARD", "t:{a}:conc"), 0, "the refunded lease is given back")
    eq(call("a", refund, lease="L1")[0], 0, "a refund sent again is a no-op")


class WindowModel:
    """A rolling window as the contract counts it: 61 buckets of window/60,
    charges in the current one, a refund only from its charge's bucket."""
    CAP = 4 * 2 ** 50

    def __init__(self, w):
        self.w, self.b, self.head = w, {}, None

    def cur(self, now):
        return now * 60 // self.w

    def start(self, j):
        q = j // 60
        return q * self.w + -(-((j - q * 60) * self.w) // 60)

    def used(self, now):
        c = self.cur(now)
        return sum(v for j, v in self.b.items() if c - 60 <= j <= c)

    def decide(self, now, limit, amount):
        """(ok, used, reset if not charged, retry)"""
        c, used = self.cur(now), self.used(now)
        ok = used + amount <= limit
        reset = now
        if used > 0:
            reset = max(self.start(self.head + 61), now)
        retry = now
        if not ok:
            if amount > limit:
                retry = -1
            else:
                left = used
                for j in range(c - 60, c + 1):
                    left -= self.b.get(j, 0)
                    if left + amount <= limit:
                        retry = max(self.start(j + 61), now)
                        break
        return ok, used, reset, retry

    def charge(self, now, amount):
        c = self.cur(now)
        self.b[c] = self.b.get(c, 0) + amount
        self.head = c
        return self.start(c + 61)

    def debt(self, now, d):
        d = max(0, min(d, self.CAP - self.used(now)))
        self.charge(now, d)

    def refund(self, now, charged, d):
        j, c = self.cur(charged), self.cur(now)
        if self.head is None or j > self.head or j < c - 60:
            return
        self.b[j] = self.b.get(j, 0) - min(-d, self.b.get(j, 0))


def test_acquire_script_model(env):
    """acquire.lua's rolling windows (running totals, bisected retry) give
    the same answers as a plain bucket model, step for step: random times
    (bursts, gaps, long silences), admits, refusals, debt and refunds; and
    a window written in the earlier layout (per-bucket amounts) keeps its
    count."""
    import random
    r = env.start_redis()
    src = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                            "storage", "acquire.lua")).read()
    sha = redis_cli(r.port, "SCRIPT", "LOAD", src)
    rnd = random.Random(1414)
    keys = ["m:{a}:w1", "m:{a}:w2"]
    windows = [(60000, 40), (1000, 7)]
    models = [WindowModel(w) for w, _ in windows]
    now = 1_800_000_000_000
    charges = []
    steps = 0
    for step in range(3000):
        gap = rnd.choice([0, 3, 50, 400, 1000, 1700, 9000, 30000, 61000, 130000])
        now += rnd.randrange(gap + 1)
        action = rnd.random()
        if action < 0.1 and charges:
            # debt (+) or refund (-) of an earlier charge
            t, amts = rnd.choice(charges[-4:])
            sign = rnd.choice([1, -1])
            deltas = [sign * rnd.choice([1, 2, 5, 20, 60]) for _ in amts]
            args = [str(now), str(t), "a", ""]
            for (w, lim), d in zip(windows, deltas):
                args += ["r", str(w), str(lim), str(d)]
            out = redis_cli(r.port, "EVALSHA", sha, "2", *keys, *args)
            eq(out[0], 1, "adjust answered")
            for m, d in zip(models, deltas):
                if d > 0:
                    m.debt(now, d)
                else:
                    m.refund(now, t, d)
            continue
        amts = [rnd.choice([1, 1, 1, 2, 3, 9]) for _ in windows]
        args = [str(now), "", "1", ""]
        for (w, lim), a in zip(windows, amts):
            args += ["r", str(w), str(lim), str(a)]
        out = redis_cli(r.port, "EVALSHA", sha, "2", *keys, *args)
        want = [m.decide(now, lim, a) for m, (w, lim), a in zip(models, windows, amts)]
        admitted = all(x[0] for x in want)
        eq(out[0], 1 if admitted else 0, "step %d admitted" % step)
        for i, (m, a) in enumerate(zip(models, amts)):
            ok, used, reset, retry = want[i]
            if admitted:
                # A charge answers what each check counted before it only
                # (the gateway computes its reset from now).
                m.charge(now, a)
                eq(out[2 + i], used, "step %d window %d charged (used)" % (step, i))
                continue
            got = out[2 + 4 * i: 6 + 4 * i]
            eq(got, [1 if ok else 0, used, reset, retry],
               "step %d window %d (ok, used, reset, retry)" % (step, i))
        if admitted:
            charges.append((now, amts))
        steps += 1
    assert steps > 2000, "decisions made: %d" % steps

    # The earlier layout: h = head, s = sum, slot j % 61 = bucket j's amount.
    now = redis_now_ms(r.port)
    cur = now * 60 // 60000
    old = ["h", str(cur - 2), "s", "6"]
    for j, v in ((cur - 30, 1), (cur - 5, 2), (cur - 2, 3)):
        old += [str(j % 61), str(v)]
    redis_cli(r.port, "HSET", "m:{b}:old", *old)
    redis_cli(r.port, "PEXPIRE", "m:{b}:old", "61000")
    out = redis_cli(r.port, "EVALSHA", sha, "1", "m:{b}:old", "", "", "0", "",
                    "r", "60000", "100", "1")
    eq(out[2:4], [1, 6], "an earlier-layout window's count")
    out = redis_cli(r.port, "EVALSHA", sha, "1", "m:{b}:old", "", "", "1", "",
                    "r", "60000", "7", "1")
    eq(out[0:1] + out[2:3], [1, 6], "admitted over it")
    out = redis_cli(r.port, "EVALSHA", sha, "1", "m:{b}:old", "", "", "1", "",
                    "r", "60000", "7", "1")
    eq(out[0:1] + out[3:4], [0, 7], "then full")


def test_acquire_script_batch(env):
    """Mode "b" (a batch of decisions on the same checks) against the same
    decisions sent one call at a time, on twin keys and the same clock:
    every reply and every counter left in Redis are the same, over random
    limits, amounts, shadow checks, deadlines already passed and gaps in
    time. A bad decision anywhere in a batch is refused before any write."""
    import random
    r = env.start_redis()
    src = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                            "storage", "acquire.lua")).read()
    sha = redis_cli(r.port, "SCRIPT", "LOAD", src)
    rnd = random.Random(2026)
    seen = {"admitted": 0, "refused": 0, "late": 0}
    for trial in range(150):
        redis_cli(r.port, "FLUSHDB")
        specs = []
        for _ in range(rnd.randint(1, 3)):
            kind = rnd.choice(["r", "r", "c", "R", "C"])
            param = rnd.choice(["1000", "60000", "7000"]) if kind in "rR" else \
                rnd.choice(["d", "m"])
            specs.append((kind, param, str(rnd.randint(0, 12))))
        now = 1_800_000_000_000 + rnd.randrange(10 ** 9)
        one = ["b:{one}:%d" % i for i in range(len(specs))]
        many = ["b:{many}:%d" % i for i in range(len(specs))]
        for step in range(rnd.randint(1, 6)):
            now += rnd.choice([0, 1, 17, 500, 1500, 30000])
            decisions = []
            for _ in range(rnd.randint(1, 9)):
                deadline = rnd.choice(["", "", str(now + 5), str(now - 1)])
                decisions.append((deadline, [rnd.choice(["1", "1", "2", "0", "5", "20"])
                                             for _ in specs]))
            singles = []
            for deadline, amounts in decisions:
                args = [str(now), "", "1", deadline]
                for (kind, param, limit), a in zip(specs, amounts):
                    args += [kind, param, limit, a]
                singles.append(redis_cli(r.port, "EVALSHA", sha, str(len(specs)), *one,
                                         *args))
            args = [str(now), "", "b", decisions[0][0]]
            for (kind, param, limit), a in zip(specs, decisions[0][1]):
                args += [kind, param, limit, a]
            for deadline, amounts in decisions[1:]:
                args += [deadline] + amounts
            batch = redis_cli(r.port, "EVALSHA", sha, str(len(specs)), *many, *args)
            eq(batch, singles, "trial %d step %d: %r at %d, decisions %r" % (
                trial, step, specs, now, decisions))
            for x in singles:
                seen["late" if x[0] == -1 else "admitted" if x[0] == 1 else "refused"] += 1
            for a, b in zip(one, many):
                eq(redis_cli(r.port, "HGETALL", b), redis_cli(r.port, "HGETALL", a),
                   "trial %d step %d: counter %s" % (trial, step, a))
    for what, n in seen.items():
        assert n > 200, "decisions %s: only %d (%r)" % (what, n, seen)

    # Refused whole, nothing written: a lease check, a count that does not
    # divide, a bad amount or deadline in a later decision.
    redis_cli(r.port, "FLUSHDB")
    w = ["r", "60000", "10", "1"]
    bad = {
        "a lease check": (["x:{a}:g"], ["", "L", "b", "", "g", "31000", "2", "1"]),
        "a count that does not divide": (["x:{a}:w"], ["", "", "b", ""] + w + ["", "1", "1"]),
        "a fractional amount in decision 2": (["x:{a}:w"], ["", "", "b", ""] + w + ["", "1.5"]),
        "a bad deadline in decision 3": (["x:{a}:w"], ["", "", "b", ""] + w +
                                         ["", "1", "soon", "1"]),
    }
    for what, (keys, args) in bad.items():
        try:
            out = redis_cli(r.port, "EVALSHA", sha, str(len(keys)), *keys, *args)
        except RuntimeError as e:
            assert "bad argument" in str(e), "%s: error %r" % (what, e)
        else:
            raise AssertionError("%s: accepted, answered %r" % (what, out))
        eq(keys_of(r.port, "x:*"), [], "keys written by a refused batch (%s)" % what)


def test_burst_in_one_batch(env):
    """40 requests that one gateway worker reads in the same loop turn (the
    gateway is stopped while they are sent, then continued): one key, a
    minute limit of 25 and a day limit of 30. Exactly 25 are admitted and
    their X-RateLimit-Remaining counts down 24..0 (each decision saw the
    ones before it), the day counter says 25, and Redis ran far fewer
    calls than decisions (the burst went as a batch)."""
    r, gws, _ = redis_env(env, {
        "burst": {"limits": [
            {"metric": "requests", "per": "minute", "limit": 25},
            {"metric": "requests", "per": "day", "limit": 30}]}},
        {"acme": {"tier": "burst"}}, [("k1", "acme")], workers=1)
    gw = gws[0]
    wait_gateways_connected(r.port, 1)
    n = 40
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        # One answer first, so that the connection is accepted and read.
        s.sendall(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append((s, s.makefile("rb")))
    for s, f in socks:
        eq(read_answer(f)[0], 404, "warm-up answer")
    body = b"{}"
    req = ("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
           "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (
               PATH, env.keys["k1"], len(body))).encode() + body
    redis_cli(r.port, "CONFIG", "RESETSTAT")
    gw.pause()
    try:
        for s, _ in socks:
            s.sendall(req)
        time.sleep(0.3)
    finally:
        os.kill(gw.p.pid, signal.SIGCONT)
    answers = [read_answer(f) for _, f in socks]
    for s, _ in socks:
        s.close()
    statuses = sorted(a[0] for a in answers)
    eq(statuses, [200] * 25 + [429] * 15, "statuses")
    left = sorted(int(h["x-ratelimit-remaining"]) for st, h in answers if st == 200)
    eq(left, list(range(25)), "X-RateLimit-Remaining of the admitted")
    daily = sorted(int(h["x-ratelimit-daily-remaining"]) for st, h in answers if st == 200)
    eq(daily, list(range(5, 30)), "X-RateLimit-Daily-Remaining of the admitted")
    calls = evalsha_calls(r.port)
    assert 1 <= calls <= 4, "EVALSHA calls for a burst of %d decisions: %d" % (n, calls)
    assert_rate_429(env.req_at(gw.port, "POST", PATH, key=env.keys["k1"], body={}))
    u = env.req_at(gw.port, "GET", "/v1/usage", key=env.keys["k1"]).json()
    by = {(x["metric"], x["per"]): x["used"] for x in u["limits"]}
    eq(by, {("requests", "minute"): 25, ("requests", "day"): 25}, "counters after the burst")


def read_answer(f):
    """(status, headers with lower-case names) of one HTTP/1.1 answer with a
    Content-Length, read from f."""
    status = int(f.readline().split()[1])
    headers = {}
    while True:
        line = f.readline().rstrip(b"\r\n")
        if not line:
            break
        k, v = line.decode().split(":", 1)
        headers[k.strip().lower()] = v.strip()
    f.read(int(headers.get("content-length", "0")))
    return status, headers


def start_shipped_redis(env, port, workdir):
    """redis-server on deploy/redis.conf (append-only file, fsync every
    second) on port, its files in workdir; stopped by env.close()."""
    from harness import Proc, wait_port
    conf = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                        "deploy", "redis.conf")
    p = Proc([shutil.which("redis-server"), conf, "--port", str(port), "--bind", "127.0.0.1",
              "--dir", workdir, "--daemonize", "no"], "redis-durable-%d" % port, env.dir)
    p.port = port
    env.redis.append(p)
    wait_port(port, p.p)
    return p


def test_durable_restart(env):
    """A Redis on the shipped configuration killed with SIGKILL and started
    again on its files keeps the day counters (everything fsynced more than
    a second before the kill): the day's remaining allowance is what it was."""
    day = {"limits": [{"metric": "requests", "per": "day", "limit": 5},
                      {"metric": "units", "per": "day", "limit": 1000,
                       "endpoints": ["txt2img"]}]}
    env.start_mock()
    port, data = free_port(), os.path.join(env.dir, "redis-data")
    os.mkdir(data)
    r = start_shipped_redis(env, port, data)
    eq(redis_cli(port, "CONFIG", "GET", "appendfsync"), ["appendfsync", "everysec"],
       "the shipped configuration's fsync")
    cfg = base_config(env.mock_port, free_port())
    cfg["server"]["workers"] = 1
    cfg["storage"] = {"driver": "redis", "address": "127.0.0.1:%d" % port, "timeout_ms": 200}
    cfg["tiers"]["day"] = day
    cfg["accounts"] = {"acme": {"tier": "day"}}
    env.add_key(cfg, "k1", "acme")
    g = env.start_gateways(cfg, 1)[0]
    key = env.keys["k1"]
    wait_gateways_connected(port, 1)
    for i in range(3):
        eq(env.req_at(g.port, "POST", "/v3/txt2img", key=key, body={"image_num": 7}).status,
           200, "request %d of the day" % (i + 1))
    time.sleep(1.6)  # past the once-a-second fsync
    r.p.kill()       # SIGKILL by PID
    r.p.wait()
    r = start_shipped_redis(env, port, data)
    poll(lambda: env.req_at(g.port, "GET", "/v1/usage", key=key).status == 200, 10,
         what="the gateway on the restarted Redis")
    u = env.req_at(g.port, "GET", "/v1/usage", key=key).json()
    by = {(x["metric"], x["per"]): x for x in u["limits"]}
    eq(by[("requests", "day")]["used"], 3, "day requests kept across kill -9")
    eq(by[("units", "day")]["used"], 21, "day units kept across kill -9")
    codes = [env.req_at(g.port, "POST", "/v3/txt2img", key=key, body={"image_num": 1}).status
             for _ in range(4)]
    eq(codes, [200, 200, 429, 429], "the rest of the day's allowance, no second one")


if __name__ == "__main__":
    run([test_fleet_exact_and_one_clock, test_one_round_trip_per_decision,
         test_redis_killed_deny, test_redis_killed_allow, test_redis_hang,
         test_keys_expire, test_leases_shared, test_acquire_script_validates,
         test_acquire_script_model, test_acquire_script_batch, test_burst_in_one_batch,
         test_durable_restart])
