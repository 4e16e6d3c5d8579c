"""remapd under a real systemd: the repo's units, socket activation,
Type=notify readiness, the watchdog.

The units under test are the repo's systemd/remapd.service and
systemd/remapd.socket, byte for byte. They are checked with
`systemd-analyze verify`, then installed into a throwaway systemd booted
with systemd-nspawn from the host's own /usr (Tests/Integration/systemd/
nspawn.py; well under a second per boot) and driven from inside with
systemctl, journalctl and curl. The only change a test makes is a drop-in
shortening WatchdogSec= (the watchdog test).

Needs root, systemd (systemd-analyze and the init that is booted) and
systemd-nspawn (Debian package systemd-container). The host's PID 1 need not
be systemd. The boot tests skip only if a bare systemd cannot be booted at
all on this host (probed once, with nothing of remap in it); once it boots,
every failure is a failure.
"""

import importlib.util
import itertools
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from harness import REMAPD, REPO_ROOT, run

UNIT_DIR = REPO_ROOT / "systemd"
UNITS = ("remapd.socket", "remapd.service")
API_SOCK = "/run/remap/api.sock"
NBD_SOCK = "/run/remap/nbd.sock"

# The test drop-in's watchdog interval (the unit says 10s).
WATCHDOG_SEC = 3
# From freezing remapd until systemd has restarted it and it serves again:
# the watchdog fires at most WATCHDOG_SEC after the last ping; then the
# process must go promptly (of the watchdog's SIGABRT, or of the SIGKILL
# after a short TimeoutAbortSec=, not after a minute), RestartSec=1s, and
# start-up (well under a second).
RECOVERY_DEADLINE = WATCHDOG_SEC + 12


def _load_nspawn():
    # Loaded by path: a package named "systemd" on sys.path would shadow
    # python3-systemd for everyone else.
    path = Path(__file__).resolve().parent / "systemd" / "nspawn.py"
    spec = importlib.util.spec_from_file_location("remap_test_nspawn", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


nspawn = _load_nspawn()
_names = itertools.count()


def machine_name(tag):
    return f"remap-{tag}-{os.getpid()}-{next(_names)}"


def require_remapd():
    if not REMAPD.exists():
        pytest.fail(f"remapd binary not found at {REMAPD} (build it, or set REMAPD)")


# ------------------------------------------------------------ systemd-analyze

def test_units_verify_clean(tmp_path):
    """`systemd-analyze verify` has nothing to say about either unit.

    The verifier checks that ExecStart= exists, so it runs on a root
    (--root=) where the built remapd is installed as /usr/local/bin/remapd
    and the repo's units, copied unchanged, are in /etc/systemd/system; the
    root gets a copy of the host's own unit directory for the units they
    depend on (sockets.target, sysinit.target, ...)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    require_remapd()

    root = tmp_path / "root"
    system_units = Path(os.path.realpath("/usr/lib/systemd/system"))
    assert system_units.is_dir(), "no /usr/lib/systemd/system on this host"
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "lib").symlink_to("usr/lib")
    etc_units = root / "etc/systemd/system"
    etc_units.mkdir(parents=True)
    for unit in UNITS:
        shutil.copyfile(UNIT_DIR / unit, etc_units / unit)
        assert (etc_units / unit).read_bytes() == (UNIT_DIR / unit).read_bytes()
    (root / "usr/local/bin").mkdir(parents=True)
    shutil.copy2(REMAPD, root / "usr/local/bin/remapd")

    cmd = [analyze, "verify", "--man=no", f"--root={root}"] + [str(etc_units / u) for u in UNITS]
    r = run(cmd, timeout=60)
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode == 0 and out == "", \
        f"systemd-analyze verify (exit {r.returncode}) says:\n{out}"

    # The same verifier on the same root does see these units: without the
    # binary it complains about ExecStart (so the silence above means
    # something).
    (root / "usr/local/bin/remapd").unlink()
    r = run(cmd, timeout=60)
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode != 0 and "/usr/local/bin/remapd" in out, \
        f"verify without the binary: exit {r.returncode}, output:\n{out}"


# -------------------------------------------------------------- booted systemd

@pytest.fixture(scope="module")
def systemd_boots(tmp_path_factory):
    """Skips the boot tests, with the reason, if this host cannot boot a
    bare systemd under nspawn; nothing of remap is involved here."""
    if os.geteuid() != 0:
        pytest.skip("booting systemd with systemd-nspawn needs root")
    missing = nspawn.missing_packages()
    if missing:
        pytest.skip(f"cannot boot systemd: not installed: {' '.join(missing)}")
    probe = nspawn.Container(machine_name("probe"), tmp_path_factory.mktemp("nspawn-probe"))
    try:
        probe.boot(timeout=60)
        r = probe.systemctl("is-system-running", check=False)
        if r.stdout.strip() not in ("running", "degraded"):
            raise nspawn.BootError(f"systemctl is-system-running: {r.stdout.strip()} {r.stderr.strip()}")
    except nspawn.BootError as e:
        pytest.skip(f"this host cannot boot systemd under systemd-nspawn: {e}")
    finally:
        probe.terminate()


class _Report:
    """What conftest's report hook attaches to a failed test: the
    container's journal and nspawn's console."""

    def __init__(self, container):
        self.container = container
        self.log_path = container.log_path
        self._journal = ""

    def log(self):
        if self.container.running:
            try:
                self._journal = self.container.journal("-b", lines=400)
            except Exception as e:  # a report must not raise
                self._journal = f"(journal unavailable: {e})"
        return (f"--- container journal ---\n{self._journal}\n"
                f"--- nspawn console ---\n{self.container.console()}")


@pytest.fixture
def machine(systemd_boots, request, tmp_path):
    """A booted systemd with the repo's units and remapd installed (not
    enabled). Always shut down, and the fallocated pool file removed."""
    require_remapd()
    c = nspawn.remap_container(machine_name("sd"), tmp_path, REMAPD, UNIT_DIR)
    request.node._remapd_instances = [_Report(c)]
    try:
        c.boot(timeout=60)
        # remapd can load its libraries in there: a clear failure up front
        # instead of a service that dies at exec.
        ldd = c.run("ldd", "/usr/local/bin/remapd", check=False)
        assert ldd.returncode == 0 and "not found" not in ldd.stdout, \
            f"remapd cannot be loaded in the container:\n{ldd.stdout}{ldd.stderr}"
        yield c
    finally:
        c.terminate()
        pools = tmp_path / "state" / "pools"
        if pools.is_dir():
            for f in pools.iterdir():
                if f.is_file():
                    f.unlink()


def health(c, timeout=20):
    """GET /v1/health on the socket unit's socket, from inside the container."""
    r = c.run("curl", "-sS", "--max-time", str(timeout), "--unix-socket", API_SOCK,
              "http://localhost/v1/health", check=False, timeout=timeout + 10)
    assert r.returncode == 0, f"curl on {API_SOCK} failed ({r.returncode}): {r.stderr}"
    try:
        return json.loads(r.stdout)
    except ValueError:
        raise AssertionError(f"/v1/health answered non-JSON: {r.stdout!r}")


def inode(c, path):
    """(type, inode) of path in the container, or None if it does not exist."""
    r = c.run("stat", "-c", "%F %i", path, check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def wait_for(predicate, timeout, interval=0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def service(c, *props):
    return c.show("remapd.service", *props)


def wait_started(c, timeout=10):
    """The service's properties once it is active/running (for Type=notify:
    systemd has processed READY=1). remapd answers requests as soon as its
    HTTP server runs, just before it sends READY=1, so a reply alone does
    not mean systemd has seen READY=1 yet."""
    props = ("ActiveState", "SubState", "MainPID", "NRestarts", "StatusText", "Result",
             "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic")
    last = {}

    def started():
        nonlocal last
        last = service(c, *props)
        return (last["ActiveState"], last["SubState"]) == ("active", "running")
    assert wait_for(started, timeout), f"remapd.service not active/running after {timeout}s: {last}"
    return last


def enable_socket(c):
    c.systemctl("enable", "--now", "remapd.socket")
    sock = c.show("remapd.socket", "ActiveState", "SubState", "Listen")
    assert (sock["ActiveState"], sock["SubState"]) == ("active", "listening"), sock
    assert API_SOCK in sock["Listen"], sock


def test_socket_activation_and_notify_readiness(machine):
    """Enabling the socket does not start remapd; the first request on the
    socket does; the service becomes active only through READY=1 (Type=
    notify), and the request is answered by remapd on systemd's socket."""
    c = machine
    enable_socket(c)
    before = inode(c, API_SOCK)
    assert before and before.startswith("socket"), f"{API_SOCK}: {before}"
    s = service(c, "ActiveState", "Type", "NotifyAccess", "TriggeredBy")
    assert s["ActiveState"] == "inactive", f"remapd started before any connection: {s}"
    assert (s["Type"], s["NotifyAccess"]) == ("notify", "main"), s
    assert "remapd.socket" in s["TriggeredBy"], s

    assert health(c) == {"status": "ok"}

    s = wait_started(c)
    assert int(s["MainPID"]) > 0, s
    # Type=notify: "active" was entered on READY=1, after the exec; the
    # STATUS= sent with it is shown.
    assert int(s["ActiveEnterTimestampMonotonic"]) >= int(s["ExecMainStartTimestampMonotonic"]) > 0, s
    assert s["StatusText"].startswith("serving "), s

    # remapd adopted the activated socket (FileDescriptorName=api) instead
    # of binding the path itself: same socket inode as before it started.
    assert inode(c, API_SOCK) == before, \
        f"{API_SOCK} was replaced by remapd (inode {before} -> {inode(c, API_SOCK)})"
    log = c.journal("-u", "remapd.service")
    assert "REST API on socket-activated fd" in log, log
    # journald took each line's priority from its prefix (and dropped the
    # prefix): "serving" is a notice, "REST API on" info.
    notices = c.journal("-u", "remapd.service", "-p", "notice")
    assert "serving " in notices and "REST API on" not in notices, notices
    assert "<6>" not in log and "<5>" not in log, log
    # Defaults from systemd's directories: NBD socket in RuntimeDirectory=,
    # state in StateDirectory=.
    assert (inode(c, NBD_SOCK) or "").startswith("socket"), f"no NBD socket at {NBD_SOCK}\n{log}"
    assert (machine.workdir / "state" / "metadata.db").exists(), \
        f"no metadata in StateDirectory /var/lib/remap\n{log}"
    # No restart loop behind the scenes.
    time.sleep(1)
    assert service(c, "NRestarts", "MainPID") == {"NRestarts": "0", "MainPID": s["MainPID"]}


def test_stop_keeps_socket_and_next_request_reactivates(machine):
    """`systemctl stop remapd.service` is a clean SIGTERM exit (STOPPING=1,
    exit 0); the socket unit keeps listening on the same path (Runtime-
    DirectoryPreserve=yes) and the next request starts remapd again."""
    c = machine
    enable_socket(c)
    sock_inode = inode(c, API_SOCK)
    assert health(c) == {"status": "ok"}
    first_pid = wait_started(c)["MainPID"]

    c.systemctl("stop", "remapd.service", timeout=90)
    s = service(c, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    # ExecMainCode 1 is CLD_EXITED: it exited (status 0), it was not killed.
    assert s == {"ActiveState": "inactive", "Result": "success",
                 "ExecMainCode": "1", "ExecMainStatus": "0"}, s
    assert "stopped cleanly" in c.journal("-u", "remapd.service")
    assert c.show("remapd.socket", "SubState")["SubState"] == "listening"
    assert inode(c, API_SOCK) == sock_inode, "the socket unit's socket went away with the service"
    assert inode(c, NBD_SOCK) is None, "remapd left its NBD socket behind after SIGTERM"

    assert health(c) == {"status": "ok"}
    s = wait_started(c)
    assert s["MainPID"] not in ("0", first_pid), s


def test_watchdog_restarts_a_frozen_remapd(machine):
    """remapd pings the watchdog while it runs; frozen (SIGSTOP: the engine
    thread's pings stop), systemd's watchdog fires, the process goes, the
    service is restarted (Restart=on-failure) and serves again."""
    c = machine
    c.write("/etc/systemd/system/remapd.service.d/50-test-watchdog.conf",
            f"# remap test: shorter watchdog than the unit's\n[Service]\nWatchdogSec={WATCHDOG_SEC}s\n")
    c.systemctl("daemon-reload")
    enable_socket(c)
    assert health(c) == {"status": "ok"}
    pid = wait_started(c)["MainPID"]
    s = service(c, "WatchdogUSec")
    assert s["WatchdogUSec"] == f"{WATCHDOG_SEC}s", s

    # Alive and pinging: over two watchdog periods no timeout, and the last
    # ping time systemd records moves on.
    def last_ping():
        return int(service(c, "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"])
    first = last_ping()
    time.sleep(2 * WATCHDOG_SEC + 0.5)
    s = service(c, "ActiveState", "SubState", "NRestarts", "MainPID")
    assert s == {"ActiveState": "active", "SubState": "running", "NRestarts": "0", "MainPID": pid}, \
        f"remapd did not stay up with WatchdogSec={WATCHDOG_SEC}s (not pinging?): {s}"
    assert last_ping() > first, "no WATCHDOG=1 reached systemd in two watchdog periods"

    frozen_at = time.monotonic()
    c.run("kill", "-STOP", pid)

    fired = wait_for(lambda: "Watchdog timeout" in c.journal("-u", "remapd.service"),
                     WATCHDOG_SEC + 5)
    assert fired, f"no watchdog timeout within {WATCHDOG_SEC + 5}s of freezing remapd"

    def recovered():
        s = service(c, "ActiveState", "SubState", "NRestarts", "MainPID")
        if s["NRestarts"] != "0" and s["SubState"] == "running" and s["MainPID"] not in ("0", pid):
            return s
        return None
    left = RECOVERY_DEADLINE - (time.monotonic() - frozen_at)
    s = wait_for(recovered, max(left, 0))
    if not s:
        now = service(c, "ActiveState", "SubState", "Result", "MainPID", "TimeoutAbortUSec", "WatchdogSignal")
        alive = c.run("sh", "-c", f"grep -E '^(Name|State):' /proc/{pid}/status", check=False)
        pytest.fail(
            f"remapd was not restarted within {RECOVERY_DEADLINE}s of freezing it "
            f"(WatchdogSec={WATCHDOG_SEC}s).\n"
            f"service now: {now}\n"
            f"frozen process {pid}: {alive.stdout.strip() or 'gone'}\n"
            "If it is 'deactivating/stop-watchdog' with the process alive, remapd survived "
            "the watchdog's signal and systemd is waiting TimeoutAbortSec= (default: "
            "TimeoutStopSec=) before SIGKILL.\n"
            + ("The journal shows the Swift runtime's crash handler caught that SIGABRT "
               "(\"Backtracing\"): it prints a backtrace and returns, which ends a process "
               "only for a synchronous fault, not for a signal sent with kill().\n"
               if "Backtracing" in c.journal("-u", "remapd.service") else "")
            + "--- journal (remapd.service) ---\n"
            + "\n".join(line for line in c.journal("-u", "remapd.service").splitlines()
                        if "systemd[1]" in line))
    assert health(c) == {"status": "ok"}
    log = c.journal("-u", "remapd.service")
    assert "restart counter is at 1" in log, log
    # The new process pings too.
    active_since = int(service(c, "ActiveEnterTimestampMonotonic")["ActiveEnterTimestampMonotonic"])
    assert wait_for(lambda: last_ping() > active_since + 500_000, WATCHDOG_SEC + 1), \
        "the restarted remapd does not ping the watchdog"
    assert service(c, "NRestarts", "SubState") == {"NRestarts": "1", "SubState": "running"}
