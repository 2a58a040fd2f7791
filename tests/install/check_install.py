"""cmake --install into a DESTDIR: the gateway, the systemd unit, the
example configuration and keys file, the docs; the installed binary takes
the installed configuration; `systemd-analyze verify` accepts the unit (its
paths moved under the DESTDIR, so that the binaries it names exist); a
second install keeps an operator's edited configuration.

  check_install.py BUILD_DIR
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

PREFIX = "/usr/local"
BIN = PREFIX + "/bin/ratewall-gateway"
UNIT = PREFIX + "/lib/systemd/system/ratewall.service"
CONF = "/etc/ratewall"


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def install(build, dest):
    env = dict(os.environ, DESTDIR=dest)
    p = subprocess.run(["cmake", "--install", build, "--prefix", PREFIX], env=env,
                       capture_output=True, text=True)
    check(p.returncode == 0, "cmake --install failed:\n" + p.stdout + p.stderr)
    return p.stdout


def main():
    build = os.path.abspath(sys.argv[1])
    analyze = shutil.which("systemd-analyze")
    check(analyze, "systemd-analyze is missing: run deploy/install-deps test")
    dest = tempfile.mkdtemp(prefix="ratewall-install-")
    try:
        install(build, dest)
        for path in (BIN, UNIT, CONF + "/ratewall.json", CONF + "/keys.json",
                     PREFIX + "/share/doc/ratewall/operations.md",
                     PREFIX + "/share/doc/ratewall/status-page.png"):
            check(os.path.isfile(dest + path), "installed: " + path)
        check(os.access(dest + BIN, os.X_OK), "the gateway is executable")

        unit = open(dest + UNIT).read()
        check(not re.search(r"@[A-Z_]+@", unit), "every @VAR@ of the unit filled in")
        check(re.search(r"(?m)^ExecStart=%s -c %s/ratewall.json" % (BIN, CONF), unit),
              "ExecStart runs the installed gateway on the installed config:\n" + unit)
        check(re.search(r"(?m)^ExecStartPre=%s --check-config %s/ratewall.json" % (BIN, CONF),
                        unit), "the config is checked before the start")

        # The installed binary takes the installed config (its keys file
        # found next to it).
        p = subprocess.run([dest + BIN, "--check-config", dest + CONF + "/ratewall.json"],
                           capture_output=True, text=True)
        check((p.returncode, p.stdout) == (0, "ok\n"),
              "the installed config is valid: %r %r" % (p.stdout, p.stderr))
        p = subprocess.run([dest + BIN, "--version"], capture_output=True, text=True)
        check(p.returncode == 0 and "ratewall" in p.stdout + p.stderr,
              "the installed gateway runs: %r" % (p.stdout + p.stderr))

        # systemd-analyze verify: the unit's syntax, sandboxing options and
        # commands. The commands are looked up on this machine, so the copy
        # checked names them under the DESTDIR.
        vdir = tempfile.mkdtemp(prefix="verify-", dir=dest)
        moved = unit.replace(BIN, dest + BIN).replace(CONF + "/", dest + CONF + "/")
        with open(os.path.join(vdir, "ratewall.service"), "w") as f:
            f.write(moved)
        p = subprocess.run([analyze, "verify", os.path.join(vdir, "ratewall.service")],
                           capture_output=True, text=True)
        check(p.returncode == 0 and not p.stderr.strip(),
              "systemd-analyze verify: %d\n%s%s" % (p.returncode, p.stdout, p.stderr))
        # ... and it does fail on a unit whose command is missing.
        with open(os.path.join(vdir, "ratewall.service"), "w") as f:
            f.write(unit.replace(BIN, dest + "/nonexistent/ratewall-gateway"))
        p = subprocess.run([analyze, "verify", os.path.join(vdir, "ratewall.service")],
                           capture_output=True, text=True)
        check(p.returncode != 0 and "nonexistent" in p.stderr,
              "systemd-analyze verify refuses a missing command: %r" % p.stderr)

        # Installing again keeps an edited config.
        with open(dest + CONF + "/ratewall.json", "a") as f:
            f.write("\n")
        edited = open(dest + CONF + "/ratewall.json").read()
        out = install(build, dest)
        check(open(dest + CONF + "/ratewall.json").read() == edited,
              "a second install keeps the operator's config")
        check("Kept: " + dest + CONF + "/ratewall.json" in out, "and says so:\n" + out)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    print("PASS install")


if __name__ == "__main__":
    main()
