"""A real headless browser for the tests: Debian's chromium, run once per
page load (--dump-dom or --screenshot) in a profile directory of its own,
with a network log that names every request it made. The browser is
stopped by its process group (the one it was started in) whatever way the
call ends. A missing chromium fails loudly (deploy/install-deps test
installs it)."""
import json
import os
import shutil
import signal
import subprocess
import tempfile


def chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("chromium is not installed: run deploy/install-deps test")


def _run(url, workdir, action, budget_ms, size, timeout):
    profile = tempfile.mkdtemp(prefix="chromium-", dir=workdir)
    netlog = os.path.join(profile, "netlog.json")
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
            "--user-data-dir=" + profile, "--no-first-run", "--no-default-browser-check",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-default-apps", "--disable-extensions",
            "--disable-domain-reliability",
            "--disable-features=AutofillServerCommunication,Translate,MediaRouter", "--disable-client-side-phishing-detection",
            "--metrics-recording-only", "--hide-scrollbars", "--force-device-scale-factor=1",
            "--log-net-log=" + netlog, "--window-size=%d,%d" % size,
            "--virtual-time-budget=%d" % budget_ms] + action + [url]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        else:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # helpers it left behind
            except ProcessLookupError:
                pass
    assert p.returncode == 0, "chromium exited %s: %s" % (p.returncode, err.decode()[-2000:])
    urls = requested_urls(netlog)
    shutil.rmtree(profile, ignore_errors=True)
    return out.decode(), urls


def requested_urls(netlog):
    """Every request in a network log: (url, initiator), the initiator
    being the origin of the page that asked for it ("not an origin" for a
    navigation or the browser's own)."""
    with open(netlog) as f:
        text = f.read()
    try:
        doc = json.loads(text)
    except ValueError:
        # A log cut at exit lacks its closing brackets.
        doc = json.loads(text.rstrip().rstrip(",") + "]}")
    start = doc["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [(e["params"]["url"], e["params"].get("initiator", ""))
            for e in doc.get("events", [])
            if e.get("type") == start and "url" in e.get("params", {})]


def dump_dom(url, workdir, budget_ms=3000, timeout=60):
    """The page's DOM after budget_ms of (virtual) time, and the URLs asked for."""
    return _run(url, workdir, ["--dump-dom"], budget_ms, (1280, 1000), timeout)


def screenshot(url, workdir, out_png, budget_ms=3000, size=(1280, 1100), timeout=60):
    _, requests = _run(url, workdir, ["--screenshot=" + os.path.abspath(out_png)],
                       budget_ms, size, timeout)
    assert os.path.getsize(out_png) > 10000, "a screenshot was written: " + out_png
    return requests


def page_requests(requests, origin):
    """The URLs that the page of origin (scheme://host:port) loaded or
    asked for: its navigation and every request it initiated. The
    browser's own traffic (updates, sign-in) is not the page's."""
    return [u for u, init in requests if init == origin or u.startswith(origin + "/")]


def outside(requests, origin):
    """The page's requests that left origin."""
    return sorted(u for u in page_requests(requests, origin)
                  if not u.startswith(origin + "/") and not u.startswith("data:"))
