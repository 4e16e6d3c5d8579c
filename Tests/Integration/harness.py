"""The integration tests' harness: what the test files share.

conftest.py holds the fixtures (a daemon per test, or per module); this
module holds everything else more than one test file uses, so that no test
file keeps a copy of it:

- processes: the binaries, `run`, `ok`, `wait_until`, `free_port`;
- the daemon: `Remapd` (start, kill -9, restart with `remapd check`,
  REST through curl, remapctl, NBD handles) and `curl_api`;
- answers and the books: `assert_problem` (RFC 9457), `check_space`,
  `assert_accounting`;
- `Api`, a keep-alive REST client without curl, for tests that make
  thousands of calls or race two clients;
- pools, fault rules, reservations, exports, events and operations;
- NBD through libnbd: `connect`, `read_all`, `block_status`, data
  `pattern`s, `expect_enospc`, `fill`;
- bytes: digests, the first difference, chunk ranges;
- real clients: `qemu_io`, `qemu_img_compare`, `nbdinfo_json`, fio.

Environment:
  REMAPD    path of the daemon binary   (default: <repo>/.build/debug/remapd)
  REMAPCTL  path of the CLI binary      (default: <repo>/.build/debug/remapctl)
  REMAP_ENGINE  data-path engine to run remapd with (io_uring or threads; default: remapd's choice)
"""

import errno
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

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


def ok(p):
    """A process (from `run`) that exited 0: its stdout as text."""
    assert p.returncode == 0, (f"exit {p.returncode}\nstdout: {p.stdout.decode()}\n"
                               f"stderr: {p.stderr.decode()}")
    return p.stdout.decode()


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
        return connect(self, name)


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


# -------------------------------------------------------------------- the REST API without curl

class Api:
    """A keep-alive HTTP/1.1 client on the daemon's unix socket: one
    connection, reused (the property test makes thousands of calls; curl
    costs a process each). Returns (status, headers, body) like Remapd.api."""

    def __init__(self, sock_path, timeout=30):
        self.path = str(sock_path)
        self.timeout = timeout
        self.conn = None

    def _connect(self):
        conn = http.client.HTTPConnection("localhost", timeout=self.timeout)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        conn.sock = s
        return conn

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
        self.conn = None

    def __call__(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (0, 1):
            reused = self.conn is not None
            if self.conn is None:
                self.conn = self._connect()
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A kept-alive connection the server had closed: the request
                # never reached it, so sending it again is safe.
                self.close()
                if attempt or not reused:
                    raise
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        if resp.will_close:
            self.close()
        text = raw.decode("utf-8", "replace")
        result = text
        if "json" in hdrs.get("content-type", "") and raw:
            try:
                result = json.loads(text)
            except ValueError:
                pass
        return resp.status, hdrs, result

    def ok(self, method, path, body=None, expect=200):
        status, _, result = self(method, path, body)
        assert status == expect, f"{method} {path} {body} -> {status} {result}"
        return result


# -------------------------------------------------------------------- pools and faults

def file_supplier(path, size=64 * MiB, **extra):
    """The spec of a file supplier at `path` (`extra`: preallocate, ...)."""
    return {"kind": "file", "path": str(path), "sizeBytes": size, **extra}


def make_pool(d, name, size=64 * MiB, suppliers=None, **extra):
    """POST /v1/pools: pool `name` on `suppliers`, by default one file of
    `size` bytes in the daemon's supplier directory (`extra`: more of the
    pool's spec, e.g. chunkSizeBytes); asserts 201, returns the pool."""
    if suppliers is None:
        suppliers = [file_supplier(d.state_dir / "pools" / f"{name}.img", size)]
    status, _, pool = d.api("POST", "/v1/pools", body={"name": name, "suppliers": suppliers, **extra})
    assert status == 201, f"POST /v1/pools {name} -> {status} {pool}"
    return pool


def faults(d, *rules):
    """PUT /v1/debug/faults (a daemon started with --fault-injection): the
    rules now in force, replacing any before; returns the answer."""
    status, _, body = d.api("PUT", "/v1/debug/faults", body={"rules": list(rules)})
    assert status == 200, (status, body)
    return body


# -------------------------------------------------------------------- reservations, exports, events, operations

def reserve(d, volume, spec, expect=201):
    """POST a reservation of `volume`; with expect=507 the problem (which
    must say what was asked and what was there), else the reservation."""
    status, headers, body = d.api("POST", f"/v1/volumes/{volume}/reservations", body=spec)
    if expect == 507:
        assert_problem(status, headers, body, 507, "insufficient-space")
        assert isinstance(body.get("requestedBytes"), int), body
        assert isinstance(body.get("availableBytes"), int), body
        assert body["availableBytes"] < body["requestedBytes"], body
        return body
    assert status == expect, f"reserve {volume} {spec} -> {status} {body}"
    assert isinstance(body.get("id"), str) and body["id"], body
    assert body.get("volume") == volume, body
    return body


def release(d, volume, rid):
    status, _, body = d.api("DELETE", f"/v1/volumes/{volume}/reservations/{rid}")
    assert status == 204, f"DELETE reservation {rid} -> {status} {body}"


def reservations(d, volume):
    body = d.get_ok(f"/v1/volumes/{volume}/reservations")
    assert isinstance(body.get("reservations"), list), body
    return body["reservations"]


def bind_export(d, volume, rid, name=None):
    """POST /v1/exports binding reservation `rid`; returns the export's name."""
    spec = {"volume": volume, "reservation": rid}
    if name:
        spec["name"] = name
    status, _, body = d.api("POST", "/v1/exports", body=spec)
    assert status == 201, f"POST /v1/exports {spec} -> {status} {body}"
    assert body.get("volume") == volume and body.get("reservation") == rid, body
    assert body.get("name") == (name or f"{volume}+{rid}"), body
    return body["name"]


def last_seq(d):
    body = d.get_ok("/v1/events")
    assert isinstance(body.get("lastSeq"), int), body
    return body["lastSeq"]


def events_since(d, since):
    body = d.get_ok(f"/v1/events?since={since}")
    assert isinstance(body.get("events"), list), body
    seqs = [e["seq"] for e in body["events"]]
    assert all(s > since for s in seqs) and seqs == sorted(seqs), f"events not after {since}: {seqs}"
    return body["events"]


def parse_time(text):
    """An API timestamp (RFC 3339, UTC) as seconds since the epoch."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


OPERATION_FIELDS = {"id", "kind", "state", "volume", "source", "totalBytes", "doneBytes", "progress",
                    "createdAt", "finishedAt", "error"}


def wait_operation(d, op_id, timeout=60, seen=None):
    """Polls GET /v1/operations/{op_id} until it is no longer running;
    every answer has the operation's fields and progress never goes
    backwards. Returns the operation as it ended; `seen`, a list, gets
    every answer."""
    seen = [] if seen is None else seen
    deadline = time.monotonic() + timeout
    while True:
        op = d.get_ok(f"/v1/operations/{op_id}")
        assert set(op) <= OPERATION_FIELDS and OPERATION_FIELDS - {"finishedAt", "error"} <= set(op), op
        assert 0.0 <= op["progress"] <= 1.0 and 0 <= op["doneBytes"] <= op["totalBytes"], op
        seen.append(op)
        if op["state"] != "running":
            break
        assert time.monotonic() < deadline, f"operation still running after {timeout}s: {op}"
        time.sleep(0.02)
    progress = [o["progress"] for o in seen]
    assert progress == sorted(progress), f"progress went backwards: {progress}"
    done = [o["doneBytes"] for o in seen]
    assert done == sorted(done), f"doneBytes went backwards: {done}"
    return op


# -------------------------------------------------------------------- NBD

def export_uri(d, name):
    """The NBD URI of export `name` (any characters: percent-encoded)."""
    return f"nbd+unix:///{quote(name, safe='')}?socket={d.nbd_sock}"


def connect(d, name, strict=True, meta=False, full_info=False):
    """A libnbd handle on export `name`, shut down at teardown (or by
    `disconnect`). strict=False lets the server, not libnbd, refuse what
    the export does not allow; meta asks for base:allocation (for
    `block_status`); full_info for NBD_INFO_NAME and _DESCRIPTION."""
    h = nbd.NBD()
    h.set_handle_name(f"test-{name}")
    if not strict:
        h.set_strict_mode(0)
    if meta:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    if full_info:
        h.set_full_info(True)
    h.connect_uri(export_uri(d, name))
    d._handles.append(h)
    return h


def disconnect(d, h):
    h.shutdown()
    d._handles.remove(h)


def read_all(h, size, step=4 * MiB):
    """The first `size` bytes of `h`'s export, read `step` bytes at a time."""
    return b"".join(h.pread(min(step, size - off), off) for off in range(0, size, step))


def block_status(h, offset, length, flags=0):
    """base:allocation over [offset, offset+length): [(offset, length, flags)],
    contiguous, clipped to the range (the server may answer in pieces)."""
    out = []
    pos, end = offset, offset + length
    while pos < end:
        got = []

        def cb(metacontext, off, entries, err):
            if metacontext == nbd.CONTEXT_BASE_ALLOCATION:
                got.append((off, list(entries)))
            return 0

        h.block_status(min(end - pos, GiB), pos, cb, flags)
        assert len(got) == 1, f"expected one base:allocation reply at {pos}, got {got}"
        off, entries = got[0]
        assert off == pos, f"block status for {pos} answered at {off}"
        assert entries and len(entries) % 2 == 0, entries
        advanced = 0
        for i in range(0, len(entries), 2):
            n, fl = entries[i], entries[i + 1]
            assert n > 0, f"zero-length extent at {pos + advanced}: {entries}"
            n = min(n, end - pos - advanced)
            if n <= 0:
                break
            out.append((pos + advanced, n, fl))
            advanced += n
        assert advanced > 0
        pos += advanced
    return out


def pattern(tag, offset, length):
    """Bytes that say which volume and offset they belong to (8-byte words)."""
    first = offset // 8
    words = (length + (offset % 8) + 7) // 8 + 1
    out = b"".join(f"{tag[:1]}{(first + i) % 10**7:07d}".encode() for i in range(words))
    skip = offset % 8
    return out[skip:skip + length]


def expect_enospc(h, offset, length=4096, flags=0):
    """A write that must fail for lack of space; returns its latency in seconds."""
    data = b"\xee" * length
    t0 = time.perf_counter()
    try:
        h.pwrite(data, offset, flags)
    except nbd.Error as e:
        dt = time.perf_counter() - t0
        assert e.errnum == errno.ENOSPC, f"write at {offset}+{length}: expected ENOSPC, got {e}"
        return dt
    pytest.fail(f"write at {offset}+{length} succeeded on a full pool without a reservation covering it")


def fill(h, start, tag, step=MiB, limit=None):
    """Write `step`-sized patterns from `start` until ENOSPC; return the end."""
    end = start
    while True:
        assert limit is None or end < limit, f"wrote up to {limit} without running out"
        try:
            h.pwrite(pattern(tag, end, step), end)
        except nbd.Error as e:
            assert e.errnum == errno.ENOSPC, f"write at {end}: {e}"
            return end
        end += step


# -------------------------------------------------------------------- bytes

def sha256(data):
    return hashlib.sha256(data).hexdigest()


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def first_difference(a, b):
    """The first offset where `a` and `b` differ (None when equal)."""
    for off in range(0, max(len(a), len(b)), 4096):
        if a[off:off + 4096] != b[off:off + 4096]:
            for i in range(off, off + 4096):
                if i >= len(a) or i >= len(b) or a[i] != b[i]:
                    return i
    return None


def chunk_ranges(chunks, size=None, chunk=CHUNK):
    """Sorted, merged byte ranges [(offset, length)] of chunk numbers (the
    last one cut at `size`, the image's end)."""
    out = []
    for c in sorted(set(chunks)):
        if out and out[-1][0] + out[-1][1] == c * chunk:
            out[-1] = (out[-1][0], out[-1][1] + chunk)
        else:
            out.append((c * chunk, chunk))
    if size is not None and out and out[-1][0] + out[-1][1] > size:
        out[-1] = (out[-1][0], size - out[-1][0])
    return out


# -------------------------------------------------------------------- real clients

def qemu_io(uri, *commands, timeout=60):
    """qemu-io's commands (`-c`) on a raw image at `uri`: its output, which
    must not mention an error, a failure or something not supported."""
    cmd = ["qemu-io", "-f", "raw"]
    for c in commands:
        cmd += ["-c", c]
    cmd.append(uri)
    p = run(cmd, timeout=timeout)
    out = p.stdout.decode() + p.stderr.decode()
    low = out.lower()
    assert p.returncode == 0 and "error" not in low and "fail" not in low \
        and "not supported" not in low, f"qemu-io {commands}: exit {p.returncode}\n{out}"
    return out


def qemu_img_compare(path, uri):
    """`qemu-img compare` of a raw file with a raw image at `uri`: equal."""
    p = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", path, uri], timeout=120)
    assert p.returncode == 0, (f"qemu-img compare {path} {uri}: exit {p.returncode}\n"
                               f"{p.stdout.decode()}{p.stderr.decode()}")


def nbdinfo_json(*args):
    p = run(["nbdinfo", "--json", *args], timeout=60)
    assert p.returncode == 0, f"nbdinfo --json {args}: {p.stderr.decode()}"
    return json.loads(p.stdout)


def fio_has_nbd():
    """fio is installed and has its nbd engine."""
    if not shutil.which("fio"):
        return False
    p = subprocess.run(["fio", "--enghelp=nbd"], capture_output=True, text=True)
    return p.returncode == 0 and "uri" in p.stdout
