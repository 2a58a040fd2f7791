"""Clients that try to hurt other tenants without a key: a connection that
pipelines requests and never reads the answers, more connections than
the process has file descriptors for, more connections than
server.max_connections. The gateway's memory and CPU stay bounded, and a
well-behaved client on another connection is still served meanwhile."""
import os
import select
import socket
import sys
import time

from harness import Proc, base_config, eq, free_port, request, run, wait_port


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def probe_ms(port):
    """One request on a fresh connection: a 404, answered from the head."""
    t0 = time.time()
    r = request(port, "GET", "/nope", timeout=10)
    eq(r.status, 404, "probe answered")
    return (time.time() - t0) * 1000


def gateway_cfg(env, **server):
    env.start_mock()
    cfg = base_config(env.mock_port, free_port())
    cfg["server"].update(server)
    return cfg


def test_pipelining_without_reading(env):
    cfg = gateway_cfg(env, workers=1)
    env.start_gateway(cfg)
    pid = env.gw.pid
    before = rss_kb(pid)
    s = socket.create_connection(("127.0.0.1", env.port))
    s.setblocking(False)
    one = b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
    burst = one * 256
    sent = 0
    worst = 0.0
    deadline = time.time() + 4
    while time.time() < deadline:
        try:
            sent += s.send(burst)
        except BlockingIOError:
            # The gateway stopped reading us: what matters is that it stays
            # small and still serves others.
            worst = max(worst, probe_ms(env.port))
            time.sleep(0.05)
    grown = rss_kb(pid) - before
    s.close()
    assert sent > 0, "the flood sent something"
    assert sent < 200 * 1024 * 1024, "the gateway stopped reading a client that does not read"
    assert grown < 64 * 1024, "RSS grew by %d KB while one client pipelined %d bytes unread" % (
        grown, sent)
    assert worst < 1000, "a probe waited %.0f ms during the flood" % worst
    probe_ms(env.port)


def start_limited(env, cfg, nofile):
    """The gateway with RLIMIT_NOFILE set to nofile."""
    path = env.write_config(cfg)
    wrap = ("import os, resource, sys; n = int(sys.argv[1]); "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])")
    p = Proc([sys.executable, "-c", wrap, str(nofile), env.args.gateway, "-c", path],
             "gateway", env.dir)
    env.gw = p
    env.port = int(cfg["server"]["listen"].rsplit(":", 1)[1])
    wait_port(env.port, p.p)
    return p


def test_out_of_file_descriptors(env):
    cfg = gateway_cfg(env, workers=1)
    gw = start_limited(env, cfg, 96)
    socks = []
    try:
        for _ in range(160):
            try:
                socks.append(socket.create_connection(("127.0.0.1", env.port), timeout=2))
            except OSError:
                break
        assert len(socks) > 96, "more connections queued than the gateway has descriptors for"
        c0 = cpu_s(gw.pid)
        t0 = time.time()
        time.sleep(2)  # measuring CPU over a span: nothing to poll for
        used = (cpu_s(gw.pid) - c0) / (time.time() - t0)
        assert used < 0.5, "out of descriptors, the gateway used %.0f%% of a core" % (used * 100)
    finally:
        for s in socks:
            s.close()
    # Once descriptors are free again, it serves.
    deadline = time.time() + 10
    while True:
        try:
            probe_ms(env.port)
            break
        except (OSError, AssertionError):
            assert time.time() < deadline, "not serving again after the descriptors came back"
            time.sleep(0.1)
    lines = [ln for ln in gw.output().splitlines() if "out of file descriptors" in ln]
    assert 1 <= len(lines) <= 6, "one warning a second at most, got %d" % len(lines)


def test_max_connections(env):
    cfg = gateway_cfg(env, workers=1, max_connections=4)
    env.start_gateway(cfg)
    held, refused = [], None
    try:
        # Connections are taken (a request on each is served) until one is
        # refused; the harness's own readiness probe may still count.
        while len(held) < 10:
            s = socket.create_connection(("127.0.0.1", env.port), timeout=5)
            # A refused connection is answered at once, unasked; a taken one
            # only answers a request.
            ready, _, _ = select.select([s], [], [], 0.5)
            data = b""
            if not ready:
                s.sendall(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
                data = s.recv(65536)
            if data.startswith(b"HTTP/1.1 404"):
                held.append(s)
                continue
            while True:
                d = s.recv(65536)
                if not d:
                    break
                data += d
            s.close()
            refused = data
            break
        assert refused is not None, "a connection past max_connections is refused"
        assert 3 <= len(held) <= 4, "4 connections at most, %d were served" % len(held)
        assert refused.startswith(b"HTTP/1.1 503"), "refused with 503: %r" % refused[:200]
        assert b"TOO_MANY_CONNECTIONS" in refused, "with its code: %r" % refused
    finally:
        for s in held:
            s.close()
    deadline = time.time() + 10
    while True:
        try:
            if request(env.port, "GET", "/nope", timeout=5).status == 404:
                break
        except OSError:
            pass
        assert time.time() < deadline, "served again once connections closed"
        time.sleep(0.05)


run([test_pipelining_without_reading, test_out_of_file_descriptors, test_max_connections])
