"""TLS: a client speaks TLS to gateway B, which proxies to an https://
backend (gateway A, TLS listener, in front of the mock) verified against a
CA the test makes with openssl; a backend whose certificate does not verify
is refused; a reload picks up a renewed certificate."""
import http.client
import os
import shutil
import signal
import ssl
import socket
import subprocess

from harness import Proc, base_config, eq, free_port, poll, run, wait_gateway


def openssl(*args, cwd):
    exe = shutil.which("openssl")
    if not exe:
        raise RuntimeError("openssl (Debian package openssl) is needed to make test certificates")
    subprocess.run([exe] + list(args), cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=%s" % name, "-keyout", name + ".key", "-out", name + ".pem", cwd=d)


def make_cert(d, ca, name, serial):
    with open(os.path.join(d, name + ".ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout",
            name + ".key", "-out", name + ".csr", cwd=d)
    openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
            "-set_serial", str(serial), "-days", "2", "-extfile", name + ".ext", "-out",
            name + ".pem", cwd=d)


def tls_get(port, cafile, path="/v1/echo", key=None, body="{}"):
    ctx = ssl.create_default_context(cafile=cafile)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("POST", path, body=body,
                     headers={"Authorization": "Bearer " + key} if key else {})
        r = conn.getresponse()
        data = r.read()
        cert = conn.sock.getpeercert()
        return r.status, data, cert
    finally:
        conn.close()


def test_tls_end_to_end(env):
    d = env.dir
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_cert(d, "ca", "a", 1001)
    make_cert(d, "ca", "b", 2001)
    env.start_mock()

    # Gateway A: TLS listener in front of the mock.
    a = base_config(env.mock_port, free_port())
    a["server"]["tls"] = {"cert_file": os.path.join(d, "a.pem"),
                          "key_file": os.path.join(d, "a.key")}
    a["tiers"]["t"] = {"limits": []}
    a["accounts"] = {"acme": {"tier": "t"}}
    env.add_key(a, "ka", "acme")
    a_port = int(a["server"]["listen"].rsplit(":", 1)[1])
    path_a = env.write_config(a, "a.json")
    gw_a = Proc([env.args.gateway, "-c", path_a], "gateway-a", d)
    env.gws.append(gw_a)
    wait_gateway(gw_a, a_port)

    # Gateway B: TLS listener; its backend is A over https, verified by the CA.
    b = base_config(a_port, free_port())
    b["server"]["tls"] = {"cert_file": os.path.join(d, "b.pem"),
                          "key_file": os.path.join(d, "b.key")}
    b["backends"]["models"] = {"url": "https://127.0.0.1:%d" % a_port, "timeout_ms": 5000,
                               "ca_file": os.path.join(d, "ca.pem"),
                               "headers": {"Authorization": "Bearer " + env.keys["ka"]}}
    b["backends"]["untrusted"] = {"url": "https://127.0.0.1:%d" % a_port,
                                  "ca_file": os.path.join(d, "other-ca.pem")}
    b["endpoints"]["bad"] = {"method": "POST", "path": "/v1/bad", "backend": "untrusted"}
    b["tiers"]["t"] = {"limits": [{"metric": "requests", "per": "minute", "limit": 100}]}
    b["accounts"] = {"acme": {"tier": "t"}}
    env.add_key(b, "kb", "acme")
    env.start_gateway(b)

    status, data, cert = tls_get(env.port, os.path.join(d, "ca.pem"), key=env.keys["kb"])
    eq(status, 200, "client -> TLS gateway -> TLS backend -> mock: %r" % data[:200])
    assert b'"X-Gateway-Key-Id":"ka"' in data, "A saw its own key: %r" % data[:400]
    eq(int(cert["serialNumber"], 16), 2001, "B's certificate")
    for i in range(5):  # keep-alive TLS connections to A are reused
        eq(tls_get(env.port, os.path.join(d, "ca.pem"), key=env.keys["kb"])[0], 200, "again")

    status, data, _ = tls_get(env.port, os.path.join(d, "ca.pem"), path="/v1/bad",
                              key=env.keys["kb"])
    eq(status, 502, "a backend certificate that does not verify: %r" % data[:200])

    # Plain HTTP to a TLS listener is not served: no HTTP answer, and the
    # connection is closed (EOF or a reset, not a hang).
    s = socket.create_connection(("127.0.0.1", env.port), timeout=10)
    got = b""
    try:
        s.sendall(b"GET /v1/usage HTTP/1.1\r\nHost: x\r\n\r\n")
        while True:
            try:
                d = s.recv(65536)
            except ConnectionResetError:
                break
            except socket.timeout:
                raise AssertionError("plain HTTP on a TLS listener: no close within 10 s")
            if not d:
                break
            got += d
    finally:
        s.close()
    assert not got.startswith(b"HTTP/"), "plain HTTP answered on a TLS listener: %r" % got[:100]

    # A renewed certificate is picked up by a reload.
    make_cert(d, "ca", "b", 2002)
    env.gw.signal(signal.SIGHUP)
    poll(lambda: int(tls_get(env.port, os.path.join(d, "ca.pem"),
                             key=env.keys["kb"])[2]["serialNumber"], 16) == 2002, 10,
         "the renewed certificate (serial 2002) served after the reload", step=0.1)


run([test_tls_end_to_end])
