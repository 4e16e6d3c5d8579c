"""The integration tests' harness: what the test files share.

conftest.py holds the fixtures (a daemon per test, or per module); this
module holds everything else more than one test file uses:

- processes: the binaries, `run`, `wait_until`, `free_port`;
- the daemon: `Remapd` (start, kill -9, restart with `remapd check`,
  REST through curl, remapctl, NBD handles) and `curl_api`;
- answers and the books: `assert_problem` (RFC 9457), `check_space`,
  `assert_accounting`.

Environment:
  REMAPD    path of the daemon binary   (default: <repo>/.build/debug/remapd)
  REMAPCTL  path of the CLI binary      (default: <repo>/.build/debug/remapctl)
  REMAP_ENGINE  data-path engine to run remapd with (io_uring or threads; default: remapd's choice)
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import nbd  # noqa: E402  (python3-libnbd; a missing package must fail, not skip)

REPO_ROOT = Path(__file__).resolve().parents[2]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
CHUNK = 64 * KiB
DEFAULT_POOL_SIZE = 512 * MiB
DEFAULT_POOL_SIZE_ARG = "512M"
# Generous: a loaded CI machine can be slow to start; a healthy start returns at once.
HEALTH_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0


# -------------------------------------------------------------------- processes

def _binary(env_name, default_rel):
    value = os.environ.get(env_name)
    if value:
        path = Path(value)
        if not path.is_absolute():
            path = REPO_ROOT / path
        return path
    return REPO_ROOT / default_rel


REMAPD = _binary("REMAPD", ".build/debug/remapd")
REMAPCTL = _binary("REMAPCTL", ".build/debug/remapctl")


def clean_env():
    """The environment for child processes, without systemd's variables."""
    env = dict(os.environ)
    for var in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
                "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(var, None)
    return env


def run(cmd, timeout=120, check=False, input=None, **kw):
    """subprocess.run with text output captured and a time limit; a command
    that overruns it is described (its threads' states and stacks) before it
    is killed, in the TimeoutExpired raised."""
    cmd = [str(c) for c in cmd]
    with subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else None,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(), **kw) as child:
        try:
            stdout, stderr = child.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            where = whereabouts(child.pid)
            child.kill()
            stdout, stderr = child.communicate()
            raise Overran(cmd, timeout, stdout, stderr, where) from None
    proc = subprocess.CompletedProcess(cmd, child.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed (exit {proc.returncode}): {' '.join(map(str, cmd))}\n"
            f"stdout: {_text(proc.stdout)}\nstderr: {_text(proc.stderr)}"
        )
    return proc


class Overran(subprocess.TimeoutExpired):
    """A command past its time limit, with where its threads were."""

    def __init__(self, cmd, timeout, output, stderr, where):
        super().__init__(cmd, timeout, output, stderr)
        self.where = where

    def __str__(self):
        return f"{super().__str__()}\n--- where it was ---\n{self.where}"


def whereabouts(pid):
    """Each thread of process `pid`: name, state, CPU ticks, the kernel
    stack it waits in, and (when gdb is installed) its user stack."""
    lines = []
    task = Path(f"/proc/{pid}/task")
    try:
        for tid in sorted(task.iterdir(), key=lambda p: int(p.name)):
            def read(name):
                try:
                    return (tid / name).read_text().strip()
                except OSError as e:
                    return f"({e.strerror})"
            stat = read("stat").rsplit(")", 1)[-1].split()
            state, ticks = (stat[0], int(stat[11]) + int(stat[12])) if len(stat) > 12 else ("?", 0)
            lines.append(f"thread {tid.name} {read('comm')}: state {state}, {ticks} CPU ticks, in {read('wchan')}")
            lines += ["    " + frame for frame in read("stack").splitlines()[:12]]
    except OSError as e:
        lines.append(f"cannot read {task}: {e.strerror}")
    if shutil.which("gdb"):
        try:
            p = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 12"],
                               capture_output=True, text=True, timeout=30)
            lines += [line for line in p.stdout.splitlines() if line.startswith(("#", "Thread"))]
        except subprocess.TimeoutExpired:
            lines.append("gdb did not answer in 30 s")
    return "\n".join(lines)


def _text(b):
    if isinstance(b, bytes):
        return b.decode("utf-8", "replace")
    return b or ""


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=5.0, interval=0.05):
    """Poll predicate() until it returns a truthy value or timeout; return last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def fuse_loop_unavailable():
    """Why a FUSE file cannot be made a loop device on this machine (not
    root, no /dev/fuse, no loop devices), or None. Tests that need one skip
    with this reason; missing tools are failures, not reasons."""
    if os.geteuid() != 0:
        return "needs root (losetup, mount)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (no FUSE in this kernel/container)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as e:
        return f"/dev/fuse cannot be opened: {e}"
    if not os.path.exists("/dev/loop-control"):
        return "/dev/loop-control is missing (no loop devices in this kernel/container)"
    p = subprocess.run(["losetup", "--find"], capture_output=True, text=True) \
        if shutil.which("losetup") else None
    if p is not None and p.returncode != 0:
        return f"no free loop device: {p.stderr.strip()}"
    return None


# -------------------------------------------------------------------- the daemon

class CurlError(AssertionError):
    pass


class Remapd:
    """One remapd process on its own state directory and sockets."""

    def __init__(self, state_dir, pool_size=DEFAULT_POOL_SIZE_ARG, extra_args=(),
                 api_socket=None, nbd_socket=None, log_path=None):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.api_sock = Path(api_socket) if api_socket else self.state_dir / "api.sock"
        self.nbd_sock = Path(nbd_socket) if nbd_socket else self.state_dir / "nbd.sock"
        for s in (self.api_sock, self.nbd_sock):
            # sun_path is 108 bytes including the NUL.
            assert len(str(s)) < 100, f"socket path too long for AF_UNIX: {s}"
        self.pool_size = pool_size
        self.extra_args = list(extra_args)
        self.log_path = Path(log_path) if log_path else self.state_dir.parent / (
            self.state_dir.name + "-remapd.log")
        self.proc = None
        self.starts = 0
        self._handles = []

    # ---------------------------------------------------------------- process

    def command(self):
        cmd = [str(REMAPD), "--state-dir", str(self.state_dir),
               "--api-socket", str(self.api_sock),
               "--nbd-socket", str(self.nbd_sock)]
        if self.pool_size is not None:
            cmd += ["--default-pool-size", str(self.pool_size)]
        if os.environ.get("REMAP_ENGINE"):
            cmd += ["--engine", os.environ["REMAP_ENGINE"]]
        return cmd + self.extra_args

    def start(self, wait=True):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        if not REMAPD.exists():
            pytest.fail(f"remapd binary not found at {REMAPD} (build it, or set REMAPD)")
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env=clean_env(), start_new_session=True,
            )
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout=HEALTH_TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                pytest.fail(f"remapd exited with code {rc} before becoming healthy\n"
                            f"--- remapd log ---\n{self.log()}")
            if self.api_sock.exists():
                p = subprocess.run(
                    ["curl", "-sf", "--max-time", "2", "--unix-socket", str(self.api_sock),
                     "http://localhost/v1/health"],
                    capture_output=True, env=clean_env())
                if p.returncode == 0:
                    return
            if time.monotonic() > deadline:
                pytest.fail(f"remapd not healthy after {timeout}s\n"
                            f"--- where it is ---\n{self.whereabouts()}\n"
                            f"--- remapd log ---\n{self.log()}")
            time.sleep(0.05)

    def whereabouts(self):
        return whereabouts(self.proc.pid)

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    def last_output(self):
        """What the daemon printed since its last start (without our header)."""
        text = self.log()
        marker = text.rfind("\n===== start #")
        if marker < 0:
            return text
        return text[marker:].split("\n", 2)[-1] if text[marker:].count("\n") >= 2 else ""

    def close_handles(self):
        for h in self._handles:
            try:
                h.shutdown()
            except Exception:
                pass
        self._handles.clear()

    def kill9(self):
        """SIGKILL the daemon and reap it (a crash / power cut for the process)."""
        assert self.running, "remapd is not running"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)

    def terminate(self, check=True):
        """SIGTERM: expect a clean exit (code 0) with both sockets removed."""
        assert self.running, "remapd is not running"
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"remapd did not exit within {STOP_TIMEOUT}s of SIGTERM\n"
                        f"--- remapd log ---\n{self.log()}")
        if check:
            assert rc == 0, f"remapd exited with {rc} on SIGTERM\n--- log ---\n{self.log()}"
            assert not self.api_sock.exists(), "API socket left behind after SIGTERM"
            assert not self.nbd_sock.exists(), "NBD socket left behind after SIGTERM"
        return rc

    def restart(self, kill9=False, check=True):
        """Stop (SIGKILL with clients still connected, or a clean SIGTERM after
        they disconnected) and start again on the same state dir. In between,
        `remapd check` must find the durable state clean (check=False for a
        test that corrupts it on purpose)."""
        if kill9:
            if self.running:
                self.kill9()
            self.close_handles()
        else:
            self.close_handles()
            if self.running:
                self.terminate()
        if check:
            self.check()
        return self.start()

    # ---------------------------------------------------------------- remapd check

    def check_command(self, *args):
        """Runs `remapd check` on this daemon's state dir; returns the process."""
        return run([REMAPD, "check", "--state-dir", self.state_dir, *args], timeout=600)

    def check(self):
        """`remapd check --json` on the stopped daemon's state dir: asserts it
        exits 0 (no errors) and returns the report."""
        assert not self.running, "remapd check needs the daemon stopped"
        p = self.check_command("--json")
        try:
            report = json.loads(p.stdout)
            found = report["findings"] + [f for pool in report["pools"] for f in pool["findings"]]
            lines = "\n".join(f"{f['severity']} {f['kind']}: {f['detail']} ({f['count']}: {f['sample']})" for f in found)
        except ValueError:
            report, lines = None, _text(p.stdout)
        assert p.returncode == 0, (f"remapd check of {self.state_dir} exited {p.returncode}:\n{lines}\n"
                                   f"{_text(p.stderr)}")
        return report

    def cleanup(self, keep_pools=False):
        self.close_handles()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with open(self.log_path, "ab") as log:
                    log.write(b"\n===== test harness: no exit after SIGTERM; sent SIGKILL\n")
                self.proc.kill()
                self.proc.wait()
        # Pool files are fallocated (really take disk space) and pytest keeps
        # the last three runs' temp dirs: remove them, keep metadata and logs.
        pools = self.state_dir / "pools"
        if pools.is_dir() and not keep_pools:
            for f in pools.iterdir():
                if f.is_file():
                    f.unlink()

    # ---------------------------------------------------------------- REST

    def api(self, method, path, body=None, raw_body=None, headers=None, timeout=30):
        """Call the REST API with curl. Returns (status, headers, body).

        headers is a dict with lower-case names (last value wins); body is the
        parsed JSON when the response says JSON, else the text.
        """
        return curl_api(["--unix-socket", str(self.api_sock)], "http://localhost",
                        method, path, body=body, raw_body=raw_body, headers=headers,
                        timeout=timeout, log=self.log)

    def get_ok(self, path):
        status, _, body = self.api("GET", path)
        assert status == 200, f"GET {path} -> {status} {body}"
        return body

    def pool(self, name="default"):
        return self.get_ok(f"/v1/pools/{name}")

    def volumes(self):
        body = self.get_ok("/v1/volumes")
        assert isinstance(body, dict) and isinstance(body.get("volumes"), list), body
        return body["volumes"]

    def volume(self, name):
        return self.get_ok(f"/v1/volumes/{name}")

    def create_volume(self, name, size, pool=None, expect=201):
        spec = {"name": name, "sizeBytes": size}
        if pool is not None:
            spec["pool"] = pool
        status, _, body = self.api("POST", "/v1/volumes", body=spec)
        assert status == expect, f"create {spec} -> {status} {body}"
        return body

    def delete_volume(self, name):
        status, _, body = self.api("DELETE", f"/v1/volumes/{name}")
        assert status == 204, f"DELETE {name} -> {status} {body}"

    # ---------------------------------------------------------------- CLI / NBD

    def ctl(self, *args, timeout=30):
        if not REMAPCTL.exists():
            pytest.fail(f"remapctl binary not found at {REMAPCTL} (build it, or set REMAPCTL)")
        # --socket goes after the subcommand: remapctl's global options belong
        # to each leaf command (swift-argument-parser option groups).
        # test_remapctl.py::test_socket_option_before_subcommand checks the
        # documented `remapctl --socket S pool list` form separately.
        return run([REMAPCTL, *args, "--socket", self.api_sock], timeout=timeout)

    def nbd_uri(self, name):
        return f"nbd+unix:///{name}?socket={self.nbd_sock}"

    def nbd_list_uri(self):
        return f"nbd+unix:///?socket={self.nbd_sock}"

    def nbd(self, name):
        """A connected libnbd handle on export `name`; shut down at teardown."""
        h = nbd.NBD()
        h.set_handle_name(f"test-{name}")
        h.connect_uri(self.nbd_uri(name))
        self._handles.append(h)
        return h


def curl_api(conn_args, base, method, path, body=None, raw_body=None, headers=None,
             timeout=30, log=None):
    hdrs = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
    elif raw_body is not None:
        data = raw_body if isinstance(raw_body, bytes) else raw_body.encode()
    if data is not None and not any(k.lower() == "content-type" for k in hdrs):
        hdrs["Content-Type"] = "application/json"
    with tempfile.TemporaryDirectory(prefix="curl-") as td:
        hfile = os.path.join(td, "headers")
        bfile = os.path.join(td, "body")
        cmd = ["curl", "-sS", *conn_args, "-X", method, "-D", hfile, "-o", bfile,
               "-w", "%{http_code}", "--max-time", str(timeout), "-H", "Expect:"]
        for k, v in hdrs.items():
            cmd += ["-H", f"{k}: {v}"]
        if data is not None:
            cmd += ["--data-binary", "@-"]
        cmd.append(base + path)
        p = subprocess.run(cmd, input=data if data is not None else b"",
                           capture_output=True, timeout=timeout + 10, env=clean_env())
        code = p.stdout.decode().strip()[-3:]
        if not code.isdigit() or code == "000":
            extra = f"\n--- remapd log ---\n{log()}" if log else ""
            raise CurlError(f"curl {method} {path} got no HTTP response (exit {p.returncode}): "
                            f"{p.stderr.decode(errors='replace')}{extra}")
        status = int(code)
        raw_headers = open(hfile, "rb").read().decode("latin-1") if os.path.exists(hfile) else ""
        resp_body = open(bfile, "rb").read() if os.path.exists(bfile) else b""
    # Keep the last header block (skip 1xx interim responses).
    blocks = [b for b in raw_headers.replace("\r\n", "\n").split("\n\n") if b.strip()]
    parsed = {}
    if blocks:
        for line in blocks[-1].split("\n")[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                parsed[k.strip().lower()] = v.strip()
    ctype = parsed.get("content-type", "")
    text = resp_body.decode("utf-8", "replace")
    result = text
    if "json" in ctype and resp_body:
        try:
            result = json.loads(text)
        except ValueError:
            result = text
    return status, parsed, result


# -------------------------------------------------------------------- answers and the books

def assert_problem(status, headers, body, expect_status, expect_code):
    """An RFC 9457 problem+json error with our stable code."""
    assert status == expect_status, f"expected {expect_status}, got {status}: {body}"
    ctype = headers.get("content-type", "")
    assert ctype.split(";")[0].strip() == "application/problem+json", \
        f"content-type {ctype!r}, body {body!r}"
    assert isinstance(body, dict), f"problem body is not a JSON object: {body!r}"
    for key in ("type", "title", "status", "detail", "code"):
        assert key in body, f"problem body lacks {key!r}: {body}"
    assert body["status"] == expect_status, body
    assert body["code"] == expect_code, f"expected code {expect_code!r}: {body}"
    assert isinstance(body["title"], str) and body["title"], body
    assert isinstance(body["detail"], str) and body["detail"], body


def check_space(pool):
    """The pool's honest-space identity, capacity = allocated + reserved +
    free, in whole chunks; returns the pool."""
    for key in ("capacityBytes", "allocatedBytes", "reservedBytes", "freeBytes"):
        assert isinstance(pool.get(key), int) and pool[key] >= 0, f"{key}: {pool}"
    assert pool["capacityBytes"] == pool["allocatedBytes"] + pool["reservedBytes"] + pool["freeBytes"], \
        (f"capacity {pool['capacityBytes']} != allocated {pool['allocatedBytes']} + reserved "
         f"{pool['reservedBytes']} + free {pool['freeBytes']}: {pool}")
    for key in ("allocatedBytes", "reservedBytes", "freeBytes"):
        assert pool[key] % pool["chunkSizeBytes"] == 0, f"{key} not whole chunks: {pool}"
    return pool


def space(d, name="default"):
    """Pool `name` of daemon `d`, checked with check_space."""
    return check_space(d.pool(name))


def chunks_touched(offset, length, chunk=CHUNK):
    if length <= 0:
        return 0
    return (offset + length - 1) // chunk - offset // chunk + 1


def assert_accounting(d, pool_name="default"):
    """The pool's allocation is exactly the sum of its volumes' allocations,
    and capacity = allocated + reserved + free."""
    pool = d.pool(pool_name)
    check_space(pool)
    vols = [v for v in d.volumes() if v["pool"] == pool_name]
    total = sum(v["allocatedBytes"] for v in vols)
    assert pool["allocatedBytes"] == total, \
        f"pool allocated {pool['allocatedBytes']} != sum of volumes {total}: {vols}"
    return pool
