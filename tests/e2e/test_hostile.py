"""Clients that try to hurt other tenants without a key: a connection that
pipelines requests and never reads the answers, more connections than
the process has file descriptors for, more connections than
server.max_connections or server.max_connections_per_client. The gateway's memory and CPU stay bounded, and a
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


def read_answer(s, timeout=10):
    """Bytes until the gateway closes; fails on a timeout."""
    s.settimeout(timeout)
    data = b""
    while True:
        try:
            d = s.recv(65536)
        except ConnectionResetError:
            d = b""
        except socket.timeout:
            raise AssertionError("no close within %d s; got %r" % (timeout, data[:200]))
        if not d:
            return data
        data += d


def take(port, src):
    """A connection from address src: ("held", sock) when a request on it
    is served, ("refused", bytes) when the gateway answers it unasked and
    closes it."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(src, 0))
    ready, _, _ = select.select([s], [], [], 0.2)
    if not ready:
        s.sendall(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        data = s.recv(65536)
        if data.startswith(b"HTTP/1.1 404"):
            return "held", s
    else:
        data = b""
    data += read_answer(s)
    s.close()
    return "refused", data


def test_max_connections_per_client(env):
    """One address holds at most max_connections_per_client connections,
    over all workers together; another address is still served, and a
    connection that closes makes room again."""
    cfg = gateway_cfg(env, workers=2, max_connections_per_client=3)
    env.start_gateway(cfg)
    held = []
    try:
        refused = None
        while len(held) < 10:
            what, x = take(env.port, "127.0.0.1")
            if what == "refused":
                refused = x
                break
            held.append(x)
        assert refused is not None, "a 4th connection from one address is refused"
        eq(len(held), 3, "connections served from one address")
        assert refused.startswith(b"HTTP/1.1 503"), "refused with 503: %r" % refused[:200]
        assert b"TOO_MANY_CONNECTIONS" in refused and b"from this address" in refused, \
            "with its code and why: %r" % refused
        # Another client address is not held back by the first one's cap.
        others = []
        for _ in range(3):
            what, x = take(env.port, "127.0.0.2")
            eq(what, "held", "a connection from 127.0.0.2 while 127.0.0.1 is at its cap")
            others.append(x)
        held += others
        # One of the first address's connections closes: room for one more.
        held.pop(0).close()
        deadline = time.time() + 5
        while True:
            what, x = take(env.port, "127.0.0.1")
            if what == "held":
                held.append(x)
                break
            assert time.time() < deadline, "room again after a connection closed"
            time.sleep(0.05)
    finally:
        for s in held:
            s.close()
    log = env.gw.output()
    assert "max_connections_per_client reached" in log, "the refusal is logged"


def keyed_cfg(env, **server):
    cfg = gateway_cfg(env, workers=1, **server)
    cfg["tiers"]["t"] = {"limits": [{"metric": "requests", "per": "minute", "limit": 1000}]}
    cfg["accounts"] = {"acme": {"tier": "t"}}
    env.add_key(cfg, "k", "acme")
    return cfg


def test_refused_before_the_body(env):
    """404, 401 and 403 are answered from the head: a client that announces
    a large body and never sends it is answered at once, 100 Continue is
    never promised to it, and nothing of the body is read."""
    cfg = keyed_cfg(env)
    env.start_gateway(cfg)
    heads = {
        401: b"POST /v3/txt2img HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n"
             b"Expect: 100-continue\r\n\r\n",
        404: b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n",
    }
    for status, head in heads.items():
        s = socket.create_connection(("127.0.0.1", env.port))
        t0 = time.time()
        s.sendall(head)
        data = read_answer(s)
        s.close()
        assert data.startswith(b"HTTP/1.1 %d" % status), "answered %d from the head: %r" % (
            status, data[:200])
        assert b"100 Continue" not in data, "no 100 Continue for a request that cannot pass"
        assert time.time() - t0 < 3, "answered at once, without waiting for the body"
    # Sixty connections without a key, each sending 1 MiB: the gateway
    # holds none of it.
    before = rss_kb(env.gw.pid)
    socks = []
    for _ in range(60):
        s = socket.create_connection(("127.0.0.1", env.port))
        s.sendall(b"POST /v3/txt2img HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
        s.setblocking(False)
        try:
            s.send(b"x" * (1 << 20))
        except OSError:
            pass  # refused and closed already
        socks.append(s)
    grown = rss_kb(env.gw.pid) - before
    for s in socks:
        s.close()
    assert grown < 32 * 1024, "RSS grew by %d KB for bodies of requests without a key" % grown
    probe_ms(env.port)


def test_body_trickle_cut_off(env):
    """A body sent a byte at a time is cut off with 408 once
    client_timeout_ms has passed and it is under min_body_rate."""
    cfg = keyed_cfg(env, client_timeout_ms=1000, min_body_rate=100)
    env.start_gateway(cfg)
    key = env.keys["k"]
    s = socket.create_connection(("127.0.0.1", env.port))
    s.sendall(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode() +
              b"\r\nContent-Length: 1000\r\n\r\n")
    t0 = time.time()
    s.setblocking(False)
    data = b""
    while time.time() - t0 < 15:
        try:
            s.send(b"x")
        except OSError:
            break
        try:
            d = s.recv(65536)
            if not d:
                break
            data += d
        except BlockingIOError:
            pass
        time.sleep(0.2)  # the trickle's pace: one byte every 200 ms
    took = time.time() - t0
    if not data:
        data = read_answer(s)
    s.close()
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), "a trickled body gets 408: %r" % data[:200]
    assert 1.0 <= took < 6, "cut off after client_timeout_ms, took %.1f s" % took
    eq(env.mock_stats()["requests"], 0, "nothing reached the backend")


def test_body_budget(env):
    """Bodies held at once are bounded: over server.body_buffer_bytes a
    request gets 503 SERVER_BUSY instead of growing the process."""
    cfg = keyed_cfg(env, body_buffer_bytes=300000)
    env.start_gateway(cfg)
    key = env.keys["k"].encode()
    held = []
    for _ in range(3):  # 3 x 200 kB announced, sent only in part
        s = socket.create_connection(("127.0.0.1", env.port))
        s.sendall(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key +
                  b"\r\nContent-Length: 200000\r\n\r\n" + b"x" * 1000)
        held.append(s)
    answers = []
    for s in held:
        s.setblocking(False)
    deadline = time.time() + 10
    while time.time() < deadline and not answers:
        for s in held:
            try:
                d = s.recv(65536)
                if d:
                    answers.append(d)
            except BlockingIOError:
                pass
        time.sleep(0.02)
    for s in held:
        s.close()
    assert answers, "one of the three is answered before its body is all here"
    assert answers[0].startswith(b"HTTP/1.1 503") and b"SERVER_BUSY" in answers[0], \
        "over the body budget: 503 SERVER_BUSY, got %r" % answers[0][:200]
    probe_ms(env.port)


run([test_pipelining_without_reading, test_out_of_file_descriptors, test_max_connections,
     test_max_connections_per_client, test_refused_before_the_body, test_body_trickle_cut_off, test_body_budget])
