"""deploy/fleet end to end: HAProxy in front of three gateways on one Redis;
an account limit holds exactly across them, every gateway took traffic,
and stopping the fleet stops every process it started."""
import json
import os
import re
import signal
import select
import subprocess
import threading

from harness import eq, new_key, request, run, sha256

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def test_fleet_account_limit(env):
    env.start_mock()  # not used by the fleet; the harness wants one backend per test
    keys = {"k1": new_key(), "k2": new_key()}
    cfg = {
        "server": {"listen": "127.0.0.1:1", "workers": 1},
        "backends": {"models": {"url": "http://127.0.0.1:1", "timeout_ms": 5000}},
        "endpoints": {"img": {"method": "POST", "path": "/v3/img2img", "backend": "models"}},
        "tiers": {"team": {"limits": [
            {"metric": "requests", "per": "minute", "limit": 12, "scope": "account"},
            {"metric": "requests", "per": "minute", "limit": 8}]}},
        "accounts": {"acme": {"tier": "team"}},
        "keys": [{"id": k, "sha256": sha256(v), "account": "acme"} for k, v in keys.items()],
    }
    path = os.path.join(env.dir, "fleet-base.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    fleet = subprocess.Popen(
        [os.path.join(ROOT, "deploy", "fleet"), "--free-ports", "--json", "--gateway",
         env.args.gateway, "--mock", env.args.mock, "--config", path,
         "--dir", os.path.join(env.dir, "fleet")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # The fleet prints its ports once every gateway is up behind HAProxy.
        ready, _, _ = select.select([fleet.stdout], [], [], 90)
        assert ready, "deploy/fleet printed nothing within 90 s"
        line = fleet.stdout.readline()
        assert line.startswith("{"), "deploy/fleet did not come up:\n" + line + \
            fleet.stdout.read() if fleet.poll() is not None else line
        ports = json.loads(line)
        lb = ports["lb"]
        statuses = []
        lock = threading.Lock()

        def client(i):
            key = keys["k1" if i % 2 else "k2"]
            for _ in range(3):
                r = request(lb, "POST", "/v3/img2img", body="{}",
                            headers={"Authorization": "Bearer " + key,
                                     "x-mock-delay-ms": "20"})
                with lock:
                    statuses.append(r.status)

        ts = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        eq(statuses.count(200), 12, "the account's 12 a minute, across three gateways")
        eq(statuses.count(429), 48 - 12, "the rest refused")
        # Every gateway took part (HAProxy round robin).
        for i, admin in enumerate(ports["admin"]):
            text = request(admin, "GET", "/metrics").body.decode()
            n = sum(float(v) for v in re.findall(
                r'^ratewall_requests_total\{endpoint="img",status="\d+"\} (\S+)$', text, re.M))
            assert n > 0, "gateway %d took no traffic" % (i + 1)
        pids = ports["pids"]
    finally:
        fleet.send_signal(signal.SIGTERM)
        fleet.wait(30)
    eq(fleet.returncode, 0, "deploy/fleet exit status after SIGTERM")
    # The fleet stopped (and waited for) everything it started.
    for name, pid in pids.items():
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        assert not alive, "%s (pid %d) still runs" % (name, pid)


run([test_fleet_account_limit])
