"""End-to-end harness: starts the real mock-backend and gateway on free
loopback ports, talks HTTP to them over real sockets, and stops every
process it started, by PID, whatever way the test ends.

A gateway built with sanitizers reports on stderr; stopping it checks that
it exited 0 and that no sanitizer report was printed.
"""
import argparse
import atexit
import copy
import fcntl
import hashlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

_procs = []


def _kill_all():
    for p in _procs:
        if p.poll() is None:
            p.kill()
            p.wait()


atexit.register(_kill_all)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))


PORT_DIR = os.path.join(tempfile.gettempdir(), "ratewall-test-ports")


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True


def free_port():
    """A loopback port for a server of this test. Taken below the kernel's
    ephemeral range (so no outgoing connection holds it) and claimed in a
    registry shared by tests running in parallel: the gateway binds with
    SO_REUSEPORT, so two tests must never be handed the same port.

    A claim is the file PORT_DIR/PORT, locked (flock) by the process that
    claimed it for as long as it lives: the kernel drops the lock when that
    process dies, however it dies, so a stale claim is one nobody holds a
    lock on. Taking one over is the same single flock call as taking a new
    one, so two tests cannot both win it. The owner unlinks its claims at
    exit while still holding their locks; a test that locked the file just
    before the unlink sees that the path no longer names its locked file
    and tries another port."""
    os.makedirs(PORT_DIR, exist_ok=True)
    rng = secrets.SystemRandom()
    for _ in range(1000):
        port = rng.randrange(20000, 32000)
        claim = os.path.join(PORT_DIR, str(port))
        fd = os.open(claim, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # held by a live test
        try:
            same = os.fstat(fd).st_ino == os.stat(claim).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # unlinked (and perhaps re-created) by its last owner
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            s.close()
            _claims.append((claim, fd))  # in use by something else: keep it
            continue
        s.close()
        _claims.append((claim, fd))
        return port
    raise RuntimeError("no free loopback port found")


_claims = []  # (path, locked fd) of this process's claims


def _release_claims():
    for path, fd in _claims:
        try:
            os.unlink(path)  # while the lock is still held: see free_port
        except OSError:
            pass
        os.close(fd)
    del _claims[:]


atexit.register(_release_claims)


def _listening_inodes(port):
    """Socket inodes of the TCP listeners on port (IPv4 and IPv6) in this
    network namespace."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        out.add(inode)
        except FileNotFoundError:
            pass
    return out


def _socket_inodes(pid):
    out = set()
    fd_dir = "/proc/%d/fd" % pid
    for fd in os.listdir(fd_dir):
        try:
            link = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            out.add(link[8:-1])
    return out


def listens(pid, port):
    """Whether process pid itself holds a listening socket on port (another
    process on the same port, as SO_REUSEPORT allows, does not count)."""
    want = _listening_inodes(port)
    return bool(want) and bool(want & _socket_inodes(pid))


def wait_port(port, proc, timeout=20.0, ready=None):
    """Until the process proc (a Popen) listens on port itself and, when
    ready is given (a callable), ready() is true. Fails if proc exits or
    the deadline passes."""
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError("process %d exited with %s before listening on %d"
                               % (proc.pid, proc.returncode, port))
        if listens(proc.pid, port) and (ready is None or ready()):
            return
        if time.time() > deadline:
            others = _listening_inodes(port)
            raise RuntimeError("process %d not listening on port %d after %.0f s%s" % (
                proc.pid, port, timeout,
                " (another process listens there)" if others else ""))
        time.sleep(0.02)


def wait_gateway(proc, port, timeout=20.0):
    """A gateway Proc started: it listens on port itself and has logged its
    "listening on HOST:PORT" line (printed once every worker runs and its
    signal handlers are set)."""
    line = "listening on 127.0.0.1:%d " % port
    wait_port(port, proc.p, timeout, ready=lambda: line in proc.output())


def poll(cond, timeout, what, step=0.02):
    """cond() until it is true (returned); fails loudly when timeout seconds
    pass first, naming what was waited for."""
    deadline = time.time() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError("%s not reached within %.1f s" % (what, timeout))
        time.sleep(step)


def sha256(s):
    return hashlib.sha256(s.encode()).hexdigest()


def new_key():
    return "sk_test_" + secrets.token_urlsafe(32)


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case name -> value
        self.body = body

    def json(self):
        return json.loads(self.body)

    def h(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return "<%d %s %r>" % (self.status, self.headers, self.body[:300])


def request(port, method, path, body=None, headers=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    finally:
        conn.close()


class Proc:
    def __init__(self, argv, name, workdir, env=None):
        self.name = name
        self.log_path = os.path.join(workdir, name + ".log")
        self.log = open(self.log_path, "wb")
        e = dict(os.environ)
        e.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        e.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        if env:
            e.update(env)
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=e)
        _procs.append(self.p)

    @property
    def pid(self):
        return self.p.pid

    def output(self):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def signal(self, sig):
        if self.p.poll() is None:
            self.p.send_signal(sig)

    def pause(self, timeout=10):
        """SIGSTOP, and wait until every thread of the process is stopped:
        kill() returns before the kernel has stopped them, and a thread
        still running would go on reading what the test sends next."""
        self.p.send_signal(signal.SIGSTOP)
        end = time.monotonic() + timeout
        while True:
            states = []
            for t in os.listdir("/proc/%d/task" % self.p.pid):
                try:
                    with open("/proc/%d/task/%s/stat" % (self.p.pid, t)) as f:
                        states.append(f.read().rsplit(")", 1)[1].split()[0])
                except FileNotFoundError:
                    pass  # a thread that ended meanwhile
            if states and all(s in ("T", "t") for s in states):
                return
            if time.monotonic() > end:
                raise AssertionError("%s not stopped %d s after SIGSTOP (threads: %s)"
                                     % (self.name, timeout, " ".join(states)))
            time.sleep(0.002)

    def stop(self, timeout=30, expect_clean=True):
        """SIGTERM, wait, and check a clean exit with no sanitizer report."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
                raise AssertionError("%s did not stop within %d s" % (self.name, timeout))
        out = self.output()
        if expect_clean:
            bad = [m for m in ("AddressSanitizer", "LeakSanitizer", "runtime error:")
                   if m in out]
            assert not bad, "%s printed a sanitizer report:\n%s" % (self.name, out[-6000:])
            assert self.p.returncode == 0, "%s exited %s:\n%s" % (
                self.name, self.p.returncode, out[-3000:])
        return out


def start_redis(workdir, port=None, extra=()):
    """A real redis-server on a free loopback port, no persistence."""
    exe = shutil.which("redis-server")
    if not exe:
        raise RuntimeError("redis-server is not installed (Debian package redis-server); "
                           "tests that need Redis fail without it")
    port = port or free_port()
    p = Proc([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
              "--appendonly", "no", "--dir", workdir, "--daemonize", "no"] + list(extra),
             "redis-%d" % port, workdir)
    p.port = port
    wait_port(port, p.p)
    return p


def _command(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def redis_cli(port, *args, password=None, db=None):
    """One Redis command over a raw socket (no client library needed),
    after AUTH and SELECT when given."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        f = s.makefile("rb")
        if password is not None:
            s.sendall(_command("AUTH", password))
            _resp(f)
        if db is not None:
            s.sendall(_command("SELECT", db))
            _resp(f)
        s.sendall(_command(*args))
        return _resp(f)
    finally:
        s.close()


def _resp(f):
    line = f.readline().rstrip(b"\r\n")
    t, rest = line[:1], line[1:]
    if t == b"+":
        return rest.decode()
    if t == b"-":
        raise RuntimeError(rest.decode())
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode(errors="replace")
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [_resp(f) for _ in range(n)]
    raise RuntimeError("bad RESP: %r" % line)


def base_config(backend_port, port, **over):
    """A small config: one backend, a few endpoints, tiers filled by tests."""
    cfg = {
        "server": {"listen": "127.0.0.1:%d" % port, "workers": 2,
                   "drain_timeout_ms": 5000},
        "backends": {
            "models": {"url": "http://127.0.0.1:%d" % backend_port, "timeout_ms": 2000,
                       "headers": {"X-Backend-Token": "backend-secret"}},
        },
        "endpoints": {
            "txt2img": {"method": "POST", "path": "/v3/txt2img", "backend": "models",
                        "units": [{"pointer": "/image_num", "default": 1}]},
            "img2img": {"method": "POST", "path": "/v3/img2img", "backend": "models"},
            "echo": {"method": "POST", "path": "/v1/echo", "backend": "models"},
            "chat": {"method": "POST", "path": "/v1/chat/completions", "backend": "models"},
            "models_api": {"method": "GET", "path_prefix": "/v1/models", "backend": "models"},
            "small": {"method": "POST", "path": "/v3/small", "backend": "models",
                      "max_body_bytes": 1024},
        },
        "tiers": {"open": {"limits": []}},
        "accounts": {},
        "keys": [],
    }
    for k, v in over.items():
        cfg[k] = v
    return cfg


class Env:
    """A mock-backend and a gateway, started for one test."""

    def __init__(self, args):
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="ratewall-e2e-")
        self.mock = None
        self.gw = None
        self.mock_port = None
        self.port = None
        self.keys = {}
        self.gws = []      # start_gateways: stopped and checked by close()
        self.killed = []   # gateways killed on purpose (kill_gateway): not checked
        self.redis = []    # start_redis: stopped by close()
        self.backends = [] # start_backend: stopped by close()

    def start_mock(self, extra=()):
        self.mock_port = free_port()
        self.mock = Proc([self.args.mock, "--listen", "127.0.0.1:%d" % self.mock_port] +
                         list(extra), "mock-backend", self.dir)
        wait_port(self.mock_port, self.mock.p)
        return self.mock_port

    def add_key(self, cfg, key_id, account, limits=None, disabled=False):
        k = new_key()
        self.keys[key_id] = k
        entry = {"id": key_id, "sha256": sha256(k), "account": account}
        if limits is not None:
            entry["limits"] = limits
        if disabled:
            entry["disabled"] = True
        cfg["keys"].append(entry)
        return k

    def write_config(self, cfg, name="ratewall.json"):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2)
        return path

    def start_gateway(self, cfg, env=None, args=()):
        """The gateway on cfg; args: more command-line arguments."""
        if self.port is None:
            self.port = int(cfg["server"]["listen"].rsplit(":", 1)[1])
        path = self.write_config(cfg)
        self.config_path = path
        self.gw = Proc([self.args.gateway, "-c", path] + list(args), "gateway", self.dir,
                       env=env)
        wait_gateway(self.gw, self.port)
        return self.gw

    def start_gateways(self, cfg, n, env=None):
        """n gateway processes on copies of cfg, each listening on its own free
        port (cfg's own server.listen is not used). env: one dict for all, or
        a list of n dicts (None for none). Returns the Procs; each has .port
        and .config_path. close() stops every one by PID and checks each for
        exit 0 and no sanitizer report."""
        envs = env if isinstance(env, list) else [env] * n
        procs = []
        for i in range(n):
            c = copy.deepcopy(cfg)
            port = free_port()
            c["server"]["listen"] = "127.0.0.1:%d" % port
            path = self.write_config(c, "ratewall-%d.json" % len(self.gws))
            p = Proc([self.args.gateway, "-c", path], "gateway-%d" % len(self.gws),
                     self.dir, env=envs[i])
            p.port = port
            p.config_path = path
            self.gws.append(p)
            procs.append(p)
        for p in procs:
            wait_gateway(p, p.port)
        return procs

    def kill_gateway(self, p):
        """SIGKILL one gateway of start_gateways (a crash on purpose): close()
        then neither stops nor checks it."""
        p.p.kill()
        p.p.wait()
        if p in self.gws:
            self.gws.remove(p)
        self.killed.append(p)

    def start_backend(self, handler, idle_timeout=None):
        """A backend.Backend (Python's standard library, behaving like real
        model services) on a free port, answering with handler(req);
        stopped by close()."""
        import backend
        b = backend.Backend(free_port(), handler, idle_timeout=idle_timeout)
        self.backends.append(b)
        return b

    def start_redis(self, port=None, extra=()):
        """harness.start_redis, stopped by close() (its exit status is not
        checked: tests kill and stop Redis on purpose)."""
        r = start_redis(self.dir, port=port, extra=extra)
        self.redis.append(r)
        return r

    def req_at(self, port, method, path, key=None, body=None, headers=None, timeout=30):
        """Like req(), to the gateway listening on port."""
        h = dict(headers or {})
        if key is not None:
            h["Authorization"] = "Bearer " + key
        return request(port, method, path, body=body, headers=h, timeout=timeout)

    def req(self, method, path, key=None, body=None, headers=None, header_style="bearer",
            timeout=30):
        h = dict(headers or {})
        if key is not None:
            if header_style == "bearer":
                h["Authorization"] = "Bearer " + key
            else:
                h["X-API-Key"] = key
        return request(self.port, method, path, body=body, headers=h, timeout=timeout)

    def wait_backend_busy(self, n=1, timeout=10):
        """Until the mock backend holds n requests (delayed or streaming);
        fails when it does not within timeout seconds."""
        poll(lambda: self.mock_stats()["in_flight"] >= n, timeout,
             "the mock backend holding %d requests" % n)

    def until_all_workers(self, cond, what, timeout=10, times=20, settle=3.0):
        """Polls cond() (one request on a new connection) until it holds,
        then until it holds `times` times in a row, SO_REUSEPORT spreading
        new connections over the gateway's workers: a change every worker
        must see (a reload) is seen by all of them, not by the first one
        asked. A miss later than `settle` seconds after the first hit means
        a worker that never took the change: that fails, as does the
        deadline passing."""
        deadline = time.time() + timeout
        poll(cond, timeout, what)
        first = time.time()
        run = 1
        while run < times:
            if cond():
                run += 1
                continue
            run = 0
            now = time.time()
            if now - first > settle or now > deadline:
                raise AssertionError("%s: seen, then missed again %.1f s later (a worker "
                                     "still answers as before)" % (what, now - first))
            time.sleep(0.02)

    def mock_stats(self):
        return request(self.mock_port, "GET", "/mock/stats").json()

    def close(self, ok):
        errors = []
        for p in [self.gw] + self.gws + [self.mock]:
            if p is None:
                continue
            try:
                p.stop()
            except AssertionError as e:
                errors.append(str(e))
        for b in self.backends:
            b.stop()
        for r in self.redis:
            r.signal(signal.SIGCONT)  # a test may have left it stopped
            try:
                r.stop(expect_clean=False)
            except AssertionError as e:
                errors.append(str(e))
        if ok and not errors:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print("logs kept in", self.dir)
            for g in [self.gw] + self.gws + self.killed:
                if g:
                    print("---- %s log ----\n" % g.name + g.output()[-4000:])
        if errors:
            raise AssertionError("\n".join(errors))


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--mock", required=True)
    ap.add_argument("--case", action="append", default=[],
                    help="run only this case (repeatable); --list names them")
    return ap.parse_args()


def case_name(t):
    """A case's name as CTest lists it: the function's name without its
    test_ prefix (for_both() variants keep their [store] suffix as .store)."""
    n = t.__name__
    if n.startswith("test_"):
        n = n[5:]
    return n.replace("[", ".").replace("]", "")


def utc_day():
    return int(time.time()) // 86400


def day_bound(fn):
    """Marks a case whose assertions hold within one UTC day (daily or
    monthly counters, resets at 00:00 UTC): run() runs it once more when it
    failed and the UTC day changed while it ran."""
    fn.day_bound = True
    return fn


def for_both(fn):
    """fn(env, store) as two cases, one on the memory store and one on
    Redis (named fn[memory] and fn[redis]; a day_bound mark is kept)."""
    def memory(env):
        fn(env, "memory")

    def redis(env):
        fn(env, "redis")
    memory.__name__ = fn.__name__ + "[memory]"
    redis.__name__ = fn.__name__ + "[redis]"
    if getattr(fn, "day_bound", False):
        memory, redis = day_bound(memory), day_bound(redis)
    return [memory, redis]


def _run_case(t, args):
    env = Env(args)
    ok = False
    t0 = time.time()
    try:
        t(env)
        ok = True
    except Exception:
        traceback.print_exc()
    try:
        env.close(ok)
    except AssertionError as e:
        print(e)
        ok = False
    print("%s %s (%.1f s)" % ("PASS" if ok else "FAIL", case_name(t), time.time() - t0))
    sys.stdout.flush()
    return ok


def run(tests):
    """Run test functions f(env) in order, each with fresh processes.
    --list prints the case names (CMake registers one CTest test each);
    --case NAME runs only that case."""
    names = [case_name(t) for t in tests]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        print("duplicate case names:", ", ".join(dup))
        sys.exit(2)
    if "--list" in sys.argv[1:]:
        print("\n".join(names))
        sys.exit(0)
    args = parse_args()
    for path in (args.gateway, args.mock):
        if not os.access(path, os.X_OK):
            print("missing executable:", path)
            sys.exit(1)
    if args.case:
        unknown = [c for c in args.case if c not in names]
        if unknown:
            print("no such case:", ", ".join(unknown), "(cases:", ", ".join(names) + ")")
            sys.exit(2)
        tests = [t for t in tests if case_name(t) in args.case]
    failed = 0
    for t in tests:
        day = utc_day()
        ok = _run_case(t, args)
        if not ok and getattr(t, "day_bound", False) and utc_day() != day:
            # Its counters began on one UTC day and ended on the next: what
            # it asserts holds within one day. Once more, on the new day.
            print("the UTC day changed during %s: once more" % case_name(t))
            ok = _run_case(t, args)
        failed += not ok
    if failed:
        print("%d of %d failed" % (failed, len(tests)))
        sys.exit(1)
    if not tests:
        print("no case ran")
        sys.exit(1)
    print("all %d passed" % len(tests))


def eq(a, b, what=""):
    assert a == b, "%s: expected %r, got %r" % (what, b, a)
