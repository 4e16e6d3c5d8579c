"""Real-device faults (issue 10): remapd on a block device that fails, on a
state filesystem that fills, on a supplier filesystem that fills, and with
supplier files that vanish or shrink under it or while it is down.

The failing device is the whole kernel stack a user could have:
nbdkit's memory plugin behind its error filter (errors only while a trigger
file exists), exported on a unix socket, made a file by nbdfuse, made a
block device by losetup (with and without --direct-io), used as a pool's
block supplier. Writes go through remapd's buffered fd into the loop
device's page cache, so a failure shows up as a write-back error at
fdatasync: the case Linux reports once per open file.

What each test asserts is issue 10's contract (DESIGN.md, "When the
hardware fails"): pool states online / degraded / offline with a reason,
`POST /v1/pools/{name}/clear-errors`, EIO only where the storage failed,
ENOSPC for a full host filesystem, a FLUSH answered OK only when everything
before it is durable. Each scenario runs to its end and reports every
broken promise at once (`Promises`), so one run shows all that differs.

Needs root, /dev/fuse and loop devices for the block-device tests (skipped,
with the reason, only when the machine has none), and tmpfs mounts.
Tools: nbdkit (nbdkit, with its error filter and memory plugin), nbdfuse
(libnbd-bin), fusermount3 (fuse3), losetup/blockdev (util-linux, mount).
"""

import errno
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import nbd

from conftest import MiB, clean_env, fuse_loop_unavailable, run, wait_until

TOOLS = {"nbdkit": "nbdkit", "nbdfuse": "libnbd-bin", "fusermount3": "fuse3",
         "losetup": "mount", "blockdev": "util-linux"}
DEVICE_SIZE = 256 * MiB


# ------------------------------------------------------------------ helpers

class Promises:
    """Collects broken promises of one scenario, so that the scenario runs to
    its end and the failure lists everything that differs from the spec."""

    def __init__(self):
        self.broken = []

    def expect(self, condition, what):
        if not condition:
            self.broken.append(what)
        return bool(condition)

    def verify(self):
        if self.broken:
            raise AssertionError(f"{len(self.broken)} broken promise(s):\n  - " + "\n  - ".join(self.broken))


def nbd_errno(call, *args):
    """Runs a libnbd call; 0 when it succeeded, else the errno it got."""
    try:
        call(*args)
        return 0
    except nbd.Error as e:
        return e.errnum or -1


def errname(n):
    return "OK" if n == 0 else errno.errorcode.get(n, str(n))


def digest(data):
    """Short sha256 of data ("zeros" for all-zero data, so failures say so)."""
    if data.count(0) == len(data):
        return "zeros"
    return hashlib.sha256(data).hexdigest()[:16]


def read_digest(h, offset, length):
    """sha256 of a range read over NBD (a failed read is named, not raised)."""
    try:
        return digest(h.pread(length, offset))
    except nbd.Error as e:
        return f"read failed: {errname(e.errnum)}"


def pool_state(d, name):
    """(state, stateReason, suppliers) of a pool as GET /v1/pools/{name} says."""
    pool = d.pool(name)
    return pool.get("state"), pool.get("stateReason"), pool.get("suppliers", [])


def metric_pool_states(d):
    """{(pool, state): value} from remap_pool_state in /metrics."""
    status, _, text = d.api("GET", "/metrics")
    assert status == 200, (status, text)
    found = {}
    for line in str(text).splitlines():
        m = re.match(r'^remap_pool_state\{([^}]*)\}\s+(\S+)$', line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            found[(labels.get("pool"), labels.get("state"))] = float(m.group(2))
    return found


def events_of(d, kind, pool):
    body = d.get_ok("/v1/events")
    return [e for e in body.get("events", []) if e.get("type") == kind and e.get("pool") == pool]


def log_mentions(d, *words):
    """Lines of the daemon's log (this start) that name every word."""
    return [line for line in d.last_output().splitlines()
            if all(w.lower() in line.lower() for w in words)]


def create_pool(d, name, suppliers):
    status, _, body = d.api("POST", "/v1/pools", body={"name": name, "suppliers": suppliers})
    assert status == 201, f"POST /v1/pools {name} -> {status} {body}"
    return body


def clear_errors(d, name):
    return d.api("POST", f"/v1/pools/{name}/clear-errors", body={})


def pool_check(d, name):
    return d.get_ok(f"/v1/pools/{name}/check")


def expect_degraded(p, d, name, healthy=("default",)):
    """The pool is degraded with a reason, in the API, /metrics, the event
    log and the daemon's log; the healthy pools stay online."""
    state, reason, suppliers = pool_state(d, name)
    p.expect(state == "degraded", f"GET /v1/pools/{name}: state is {state!r}, not 'degraded'")
    p.expect(isinstance(reason, str) and reason, f"GET /v1/pools/{name}: stateReason is {reason!r}")
    p.expect(any(s.get("state") == "failed" and s.get("error") for s in suppliers),
             f"GET /v1/pools/{name}: no supplier with state 'failed' and an error: {suppliers}")
    for other in healthy:
        p.expect(pool_state(d, other)[0] == "online", f"pool {other} is {pool_state(d, other)[0]!r}, not online")
    states = metric_pool_states(d)
    p.expect(states.get((name, "degraded")) == 1 and states.get((name, "online")) == 0,
             f"/metrics remap_pool_state for {name}: {[(k, v) for k, v in states.items() if k[0] == name]}")
    p.expect(events_of(d, "pool.degraded", name), f"no pool.degraded event for {name} in GET /v1/events")
    p.expect(log_mentions(d, name, "degraded"), f"no log line names pool {name} and 'degraded'")


# ------------------------------------------------------------------ the failing device

needs_devices = pytest.mark.skipif(fuse_loop_unavailable() is not None, reason=str(fuse_loop_unavailable()))


class FaultyDevice:
    """nbdkit memory 256M behind the error filter -> nbdfuse file -> loop
    device. `fail(True)` makes every write, zero and trim of the device
    answer EIO (reads keep working) until `fail(False)`."""

    def __init__(self, direct_io):
        missing = [f"{tool} ({pkg})" for tool, pkg in TOOLS.items() if not shutil.which(tool)]
        assert not missing, f"tools missing (Debian packages): {', '.join(missing)}"
        # Short paths: the nbdkit socket must fit in sun_path.
        self.dir = Path(tempfile.mkdtemp(prefix="remap-dev-", dir="/tmp"))
        self.trigger = self.dir / "fail"
        self.socket = self.dir / "nbdkit.sock"
        self.mount = self.dir / "fuse"
        self.file = self.mount / "disk"
        self.direct_io = direct_io
        self.nbdkit = self.nbdfuse = self.loop = None

    def start(self):
        self.mount.mkdir()
        errors = [f"error-{op}=EIO" for op in ("pwrite", "zero", "trim")] + \
                 [f"error-{op}-rate=100%" for op in ("pwrite", "zero", "trim")] + \
                 [f"error-{op}-file={self.trigger}" for op in ("pwrite", "zero", "trim")]
        with open(self.dir / "nbdkit.log", "wb") as log:
            self.nbdkit = subprocess.Popen(
                ["nbdkit", "--foreground", "--unix", str(self.socket), "--filter=error",
                 "memory", str(DEVICE_SIZE), *errors],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=clean_env(), start_new_session=True)
        if not wait_until(lambda: self.socket.exists() or self.nbdkit.poll() is not None, timeout=10) \
                or self.nbdkit.poll() is not None:
            pytest.fail(f"nbdkit did not come up: {self.log('nbdkit.log')}")
        with open(self.dir / "nbdfuse.log", "wb") as log:
            self.nbdfuse = subprocess.Popen(
                ["nbdfuse", str(self.file), "--unix", str(self.socket)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=clean_env(), start_new_session=True)
        if not wait_until(lambda: self.file.exists() or self.nbdfuse.poll() is not None, timeout=10) \
                or self.nbdfuse.poll() is not None:
            pytest.fail(f"nbdfuse did not come up: {self.log('nbdfuse.log')}")
        assert self.file.stat().st_size == DEVICE_SIZE
        cmd = ["losetup", "--find", "--show"] + (["--direct-io=on"] if self.direct_io else []) + [self.file]
        p = run(cmd, check=True)
        self.loop = p.stdout.decode().strip()
        assert self.loop.startswith("/dev/loop"), self.loop
        return self

    def log(self, name):
        try:
            return (self.dir / name).read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    def fail(self, on):
        if on:
            self.trigger.touch()
        elif self.trigger.exists():
            self.trigger.unlink()

    def drop_cache(self):
        """Writes back and drops the loop device's page cache, so the next
        reader sees what the device holds (no one may have it open)."""
        run(["blockdev", "--flushbufs", self.loop])

    def stop(self):
        """Undoes everything, in order, tolerating what is already gone."""
        self.fail(False)
        if self.loop:
            for _ in range(50):
                if run(["losetup", "-d", self.loop]).returncode == 0:
                    break
                time.sleep(0.1)
            self.loop = None
        if self.nbdfuse is not None:
            end_process(self.nbdfuse, lambda: run(["fusermount3", "-u", self.mount]).returncode == 0
                        or run(["fusermount3", "-u", "-z", self.mount]))
            self.nbdfuse = None
        if self.nbdkit is not None:
            end_process(self.nbdkit, self.nbdkit.terminate)
            self.nbdkit = None
        shutil.rmtree(self.dir, ignore_errors=True)


def end_process(proc, ask):
    """Asks a child to end (ask()), then kills it if it is still there 10 s later."""
    if proc.poll() is None:
        ask()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def faulty_device(request, make_remapd):
    """A FaultyDevice (param: "direct-io" or "buffered", default direct-io).
    Depends on make_remapd so that its finalizer runs first: the daemons are
    stopped (closing the loop device) before the device is taken apart."""
    mode = getattr(request, "param", "direct-io")
    dev = FaultyDevice(direct_io=(mode == "direct-io"))

    def finish():
        for d in getattr(request.node, "_remapd_instances", []):
            d.cleanup()
        dev.stop()

    request.addfinalizer(finish)
    return dev.start()


def daemon_on_device(make_remapd, dev, volume_bytes, flushed_bytes):
    """A daemon with pool faulty on the device (a block supplier), volume a
    of `volume_bytes` in it, its first `flushed_bytes` written with random
    data and flushed, and volume b (16 MiB) in pool default. Returns the
    daemon, a handle on a, and the data."""
    d = make_remapd(pool_size="64M")
    create_pool(d, "faulty", [{"kind": "block", "path": dev.loop}])
    d.create_volume("a", volume_bytes, pool="faulty")
    d.create_volume("b", 16 * MiB)
    h = d.nbd("a")
    data = os.urandom(flushed_bytes)
    h.pwrite(data, 0)
    h.flush()
    return d, h, data


# ------------------------------------------------------------------ 1. a failing block supplier

@needs_devices
@pytest.mark.timeout(120)
@pytest.mark.parametrize("faulty_device", ["direct-io", "buffered"], indirect=True)
def test_failing_block_supplier_degrades_its_pool_only(make_remapd, faulty_device):
    """Defect 3: the write-back error of one pool's device is that pool's,
    sticky until clear-errors; every other pool's FLUSH is unaffected."""
    dev = faulty_device
    p = Promises()
    d, ha, before = daemon_on_device(make_remapd, dev, 64 * MiB, 8 * MiB)
    hb = d.nbd("b")
    b_before = os.urandom(MiB)
    hb.pwrite(b_before, 0)
    hb.flush()

    dev.fail(True)
    # Buffered writes land in the page cache and may be acknowledged; the
    # device's failure shows at write-back. Any error a write gets is EIO.
    for i in range(4):
        err = nbd_errno(ha.pwrite, os.urandom(MiB), 16 * MiB + i * MiB)
        p.expect(err in (0, errno.EIO), f"write to a during the fault got {errname(err)}, not EIO")
    b_during = os.urandom(MiB)
    hb.pwrite(b_during, MiB)
    b_flushed = nbd_errno(hb.flush)
    p.expect(b_flushed == 0, f"FLUSH on b (healthy pool) answered {errname(b_flushed)}: another pool's error")
    first = nbd_errno(ha.flush)
    p.expect(first == errno.EIO, f"first FLUSH on a while its device fails answered {errname(first)}, not EIO")
    second = nbd_errno(ha.flush)
    p.expect(second == errno.EIO, f"second FLUSH on a while its device fails answered {errname(second)}, not EIO")
    err = nbd_errno(ha.pwrite, os.urandom(65536), 24 * MiB)
    p.expect(err == errno.EIO, f"write to a in the degraded pool answered {errname(err)}, not EIO")
    err = nbd_errno(ha.trim, MiB, 16 * MiB)
    p.expect(err == errno.EIO, f"TRIM on a in the degraded pool answered {errname(err)}, not EIO")
    p.expect(read_digest(ha, 0, len(before)) == digest(before),
             f"reading a's data flushed before the fault: {read_digest(ha, 0, len(before))}")
    expect_degraded(p, d, "faulty")
    status, _, body = d.api("POST", "/v1/volumes", body={"name": "c", "sizeBytes": MiB, "pool": "faulty"})
    p.expect(status == 409 and isinstance(body, dict) and body.get("code") == "pool-unavailable",
             f"creating a volume in the degraded pool answered {status} {body}")
    p.expect(nbd_errno(hb.flush) == 0, "FLUSH on b got an error while pool faulty is degraded")

    dev.fail(False)
    err = nbd_errno(ha.flush)
    p.expect(err == errno.EIO, f"FLUSH on a after the device recovered, before clear-errors, answered {errname(err)}")
    err = nbd_errno(ha.pwrite, os.urandom(65536), 24 * MiB)
    p.expect(err == errno.EIO, f"write to a before clear-errors answered {errname(err)}, not EIO")
    status, _, body = clear_errors(d, "faulty")
    p.expect(status == 200 and isinstance(body, dict) and body.get("state") == "online",
             f"POST /v1/pools/faulty/clear-errors answered {status} {body}")
    state, reason, _ = pool_state(d, "faulty")
    p.expect(state == "online" and reason is None, f"after clear-errors pool faulty is {state!r} ({reason!r})")
    p.expect(events_of(d, "pool.online", "faulty"), "no pool.online event after clear-errors")
    after = os.urandom(4 * MiB)
    w, f = nbd_errno(ha.pwrite, after, 32 * MiB), nbd_errno(ha.flush)
    p.expect(w == 0 and f == 0, f"after clear-errors: write {errname(w)}, FLUSH {errname(f)} on a")
    p.expect(read_digest(ha, 0, len(before)) == digest(before), "a's data from before the fault changed")

    d.kill9()
    d.close_handles()
    dev.drop_cache()   # what comes back is what the device holds
    d.start()
    ha, hb = d.nbd("a"), d.nbd("b")
    p.expect(read_digest(ha, 0, len(before)) == digest(before),
             f"after kill -9: a's data flushed before the fault reads {read_digest(ha, 0, len(before))}")
    if w == 0 and f == 0:
        p.expect(read_digest(ha, 32 * MiB, len(after)) == digest(after),
                 "after kill -9: a's data flushed after clear-errors is not there")
    p.expect(read_digest(hb, 0, MiB) == digest(b_before), "after kill -9: b's first flushed write is not there")
    if b_flushed == 0:
        p.expect(read_digest(hb, MiB, MiB) == digest(b_during),
                 "after kill -9: b's write flushed during a's fault is not there")
    p.expect(pool_state(d, "faulty")[0] == "online", f"after restart pool faulty is {pool_state(d, 'faulty')[0]!r}")
    check = pool_check(d, "faulty")
    p.expect(check["ok"], f"pool check of faulty after restart: {check}")
    p.verify()
