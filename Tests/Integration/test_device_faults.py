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
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import nbd

from harness import (MiB, assert_accounting, check_space, clean_env, fuse_loop_unavailable, make_pool, run,
                     wait_until)

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
    make_pool(d, "faulty", suppliers=[{"kind": "block", "path": dev.loop}])
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


# ------------------------------------------------------------------ filesystems that fill

class Content:
    """What each 1 MiB piece of a volume may read after a crash: what the
    last FLUSH that answered OK covered, or any write made since."""

    def __init__(self):
        self.acked = {}    # offset -> (digest, which FLUSH acknowledged it)
        self.since = {}    # offset -> digests written after that FLUSH

    def wrote(self, offset, data):
        self.since.setdefault(offset, []).append(digest(data))

    def flushed(self, label):
        for offset, digests in self.since.items():
            self.acked[offset] = (digests[-1], label)
        self.since.clear()

    def differences(self, h):
        bad = []
        for offset in sorted(set(self.acked) | set(self.since)):
            got = read_digest(h, offset, MiB)
            acked, label = self.acked.get(offset, ("zeros", None))
            if got not in {acked, *self.since.get(offset, [])}:
                bad.append(f"{offset // MiB} MiB reads {got}; {label or 'no FLUSH'} acknowledged {acked}"
                           + (" (or a later write)" if offset in self.since else ""))
        return bad


def expect_serves(p, d, volume, offset, what):
    """A volume of a healthy pool: write, FLUSH, read back."""
    h = d.nbd(volume)
    data = os.urandom(256 * 1024)
    w = nbd_errno(h.pwrite, data, offset)
    f = nbd_errno(h.flush)
    p.expect(w == 0 and f == 0, f"{what}: write {errname(w)}, FLUSH {errname(f)} on healthy volume {volume}")
    p.expect(read_digest(h, offset, len(data)) == digest(data), f"{what}: {volume} reads back other data")
    return data


@pytest.fixture
def tmpfs(tmp_path):
    """Factory: tmpfs(name, size) mounts a tmpfs of `size` (e.g. "16m") at
    tmp_path/name; all are unmounted at teardown."""
    mounts = []

    def mount(name, size):
        path = tmp_path / name
        path.mkdir()
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True)
        if p.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {p.stderr.decode().strip()}")
        mounts.append(path)
        return path

    yield mount
    for path in reversed(mounts):
        subprocess.run(["umount", "-l", str(path)])


def fill_up(fs, name):
    """Takes every free byte of filesystem `fs` with file fs/name."""
    path = fs / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        stat = os.statvfs(fs)
        if stat.f_bavail:
            try:
                os.posix_fallocate(fd, os.lseek(fd, 0, os.SEEK_END), stat.f_bavail * stat.f_frsize)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
        block = b"\xee" * 4096
        try:
            while True:
                os.write(fd, block)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    finally:
        os.close(fd)
    return path


def fill_state_filesystem(fs, reserve):
    """Fills `fs` and keeps filling while remapd gives its metadata reserve
    up (its blocks are freed a little after the name is gone); returns the
    filler files once the filesystem has stayed full for 0.3 s."""
    fillers = [fill_up(fs, "filler-1")]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if os.statvfs(fs).f_bavail:
            fillers.append(fill_up(fs, f"filler-{len(fillers) + 1}"))
        elif not reserve.exists():
            time.sleep(0.3)
            if os.statvfs(fs).f_bavail == 0:
                return fillers
        time.sleep(0.05)
    pytest.fail(f"{fs} did not stay full (metadata reserve still there: {reserve.exists()})")


# ------------------------------------------------------------------ 2. the state filesystem fills

@pytest.mark.timeout(60)
@pytest.mark.parametrize("ending", ["flush-after-space", "crash-without-flush"])
def test_full_state_filesystem_fails_flush_until_a_commit_succeeds(make_remapd, tmpfs, tmp_path, ending):
    """Defect 2: metadata.db on a tmpfs that fills while the pool's supplier
    lives elsewhere. While commits fail, every FLUSH fails; whatever a FLUSH
    answered OK for survives kill -9 (checked right after space returns,
    and after the FLUSH that follows it).

    The tmpfs is 176 MiB, not a few: remapd keeps a 64 MiB reserve file
    there and refuses new chunks below 32 MiB free; it gives the reserve
    up when the filesystem fills, and the filler takes that space too."""
    p = Promises()
    fs = tmpfs("statefs", "176m")
    suppliers = tmp_path / "suppliers"
    d = make_remapd(state_dir=fs / "state", pool_size="1M", extra_args=["--supplier-dir", str(suppliers)])
    reserve = d.state_dir / "metadata.reserve"
    make_pool(d, "data", suppliers=[{"kind": "file", "path": str(suppliers / "data.img"), "sizeBytes": 128 * MiB}])
    d.create_volume("v", 64 * MiB, pool="data")
    h = d.nbd("v")
    content = Content()

    def write(offset):
        data = os.urandom(MiB)
        err = nbd_errno(h.pwrite, data, offset)
        assert err == 0, f"write at {offset} answered {errname(err)} (the data path itself is healthy)"
        content.wrote(offset, data)

    def flush(label):
        err = nbd_errno(h.flush)
        if err == 0:
            content.flushed(label)
        return err

    for i in range(4):
        write(i * MiB)
    assert flush("the FLUSH before the fault") == 0
    # New chunks, their mappings pending; then the state filesystem fills.
    for i in range(8, 12):
        write(i * MiB)
    fillers = fill_state_filesystem(fs, reserve)
    first = flush("the first FLUSH while commits fail")
    p.expect(first == errno.EIO, f"FLUSH while the state filesystem is full answered {errname(first)}, not EIO")
    # In place, into chunks already mapped (no room for new ones).
    for i in list(range(8, 12)) + [1]:
        write(i * MiB)
    second = flush("the second FLUSH while commits fail")
    p.expect(second == errno.EIO, f"second FLUSH while commits still fail answered {errname(second)}, not EIO")
    status, _, body = d.api("PATCH", "/v1/volumes/v", body={"labels": {"fault": "state-fs-full"}})
    p.expect(status == 500 and isinstance(body, dict) and body.get("code") == "internal",
             f"PATCH while commits fail answered {status} {body}, not 500 internal")
    p.expect(d.volume("v").get("labels") == {"fault": "state-fs-full"},
             f"the PATCH is not in effect in memory: {d.volume('v')}")

    for f in fillers:
        f.unlink()
    wait_until(lambda: reserve.exists(), timeout=5)
    if ending == "flush-after-space":
        third = flush("the FLUSH after space returned")
        p.expect(third == 0, f"FLUSH after space returned answered {errname(third)}, not OK")
        write(32 * MiB)   # a new chunk: allowed again
        final = flush("the last FLUSH")
        assert final == 0, f"FLUSH with space back answered {errname(final)}\n" + "\n".join(p.broken)

    d.kill9()
    d.close_handles()
    d.start()
    h = d.nbd("v")
    lost = content.differences(h)
    p.expect(not lost, "after kill -9, acknowledged data is gone:\n      " + "\n      ".join(lost))
    if ending == "flush-after-space":
        p.expect(d.volume("v").get("labels") == {"fault": "state-fs-full"},
                 f"after kill -9 the PATCH made while commits failed is gone: {d.volume('v')}")
    check = pool_check(d, "data")
    p.expect(check["ok"], f"pool check of data after restart: {check}")
    assert_accounting(d, "data")
    p.verify()


# ------------------------------------------------------------------ 3. the supplier's filesystem fills

@pytest.mark.timeout(60)
def test_sparse_supplier_on_full_filesystem_gets_enospc(make_remapd, tmpfs):
    """A sparse file supplier (preallocate: false) on a 16 MiB tmpfs, in a
    64 MiB pool: the writer that finds the host filesystem full gets ENOSPC,
    the failed writes map no chunk, the pool stays online, other pools
    serve, and once space is back writes work and the pool check is clean."""
    p = Promises()
    fs = tmpfs("supplierfs", "16m")
    d = make_remapd(pool_size="64M", extra_args=["--supplier-dir", str(fs)])
    make_pool(d, "sparse", suppliers=[{"kind": "file", "path": str(fs / "sparse.img"),
                               "sizeBytes": 64 * MiB, "preallocate": False}])
    d.create_volume("s", 64 * MiB, pool="sparse")
    d.create_volume("other", 16 * MiB)
    slack = fs / "slack"
    slack.write_bytes(b"\x01" * 2 * MiB)      # host space to give back later
    h = d.nbd("s")
    written = {}
    failures = []
    for i in range(64):
        data = os.urandom(MiB)
        err = nbd_errno(h.pwrite, data, i * MiB)
        if err == 0:
            written[i * MiB] = data
        else:
            failures.append((i, err))
            if len(failures) == 3:
                break
    assert failures, "a 64 MiB pool on a 16 MiB filesystem took 64 MiB of writes"
    p.expect(all(err == errno.ENOSPC for _, err in failures),
             f"writes to a full host filesystem got {[(i, errname(e)) for i, e in failures]}, not ENOSPC")
    flushed = nbd_errno(h.flush)
    p.expect(flushed == 0, f"FLUSH after ENOSPC answered {errname(flushed)} (nothing failed to write back)")
    pool = d.pool("sparse")
    p.expect(pool["allocatedBytes"] == len(written) * MiB,
             f"pool allocates {pool['allocatedBytes'] // 65536} chunks, the {len(written)} successful "
             f"1 MiB writes need {len(written) * 16}: failed writes mapped chunks")
    p.expect(d.volume("s")["allocatedBytes"] == len(written) * MiB,
             f"volume s allocates {d.volume('s')['allocatedBytes']} bytes for {len(written)} MiB written")
    p.expect(pool.get("state") == "online", f"pool sparse is {pool.get('state')!r} after ENOSPC, not online")
    expect_serves(p, d, "other", 0, "while pool sparse's filesystem is full")

    # Space returns: TRIM (the freed chunks' holes are punched) and host space.
    trimmed = sorted(written)[:4]
    h.trim(4 * MiB, trimmed[0])
    for off in trimmed:
        del written[off]
    h.flush()
    slack.unlink()
    retry_at = failures[0][0] * MiB
    data = os.urandom(MiB)
    ok = wait_until(lambda: nbd_errno(h.pwrite, data, retry_at) == 0, timeout=10, interval=0.2)
    p.expect(ok, f"writing at {failures[0][0]} MiB still fails with space back")
    if ok:
        written[retry_at] = data
    p.expect(nbd_errno(h.flush) == 0, "FLUSH after space returned failed")
    bad = [off // MiB for off, data in written.items() if read_digest(h, off, MiB) != digest(data)]
    p.expect(not bad, f"volume s reads other data at MiB {bad}")
    p.expect(read_digest(h, trimmed[0], 4 * MiB) == "zeros", "the trimmed range does not read zeros")

    def settled():
        check = pool_check(d, "sparse")
        return check if check["ok"] and d.pool("sparse")["allocatedBytes"] == len(written) * MiB else None
    p.expect(wait_until(settled, timeout=10, interval=0.2),
             f"pool sparse after space returned: check {pool_check(d, 'sparse')}, allocated "
             f"{d.pool('sparse')['allocatedBytes']} for {len(written)} MiB written")
    check_space(d.pool("sparse"))
    p.verify()


# ------------------------------------------------------------------ 4. supplier removed while serving

def daemon_with_file_pool(make_remapd, tmp_path, pool_bytes):
    """A daemon with pool p on one file supplier under tmp_path/suppliers,
    volume v (16 MiB) in it and volume w (16 MiB) in pool default; returns
    the daemon and the supplier's path."""
    suppliers = tmp_path / "suppliers"
    d = make_remapd(pool_size="64M", extra_args=["--supplier-dir", str(suppliers)])
    path = suppliers / "p.img"
    make_pool(d, "p", suppliers=[{"kind": "file", "path": str(path), "sizeBytes": pool_bytes}])
    d.create_volume("v", 16 * MiB, pool="p")
    d.create_volume("w", 16 * MiB)
    return d, path


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", ["unlinked", "truncated"])
def test_supplier_removed_under_running_daemon_degrades_pool(make_remapd, tmp_path, damage):
    """The pool's supplier file is unlinked (or truncated to half) while the
    daemon serves: writes into it are never acknowledged by a FLUSH, the
    pool is degraded within seconds with a reason, an event and a log line,
    and the other pools serve."""
    p = Promises()
    d, path = daemon_with_file_pool(make_remapd, tmp_path, 64 * MiB)
    h = d.nbd("v")
    before = os.urandom(4 * MiB)
    h.pwrite(before, 0)
    h.flush()

    if damage == "unlinked":
        path.unlink()
    else:
        os.truncate(path, 32 * MiB)
    # A write and a FLUSH right after (a check at commit time sees the damage
    # here; a periodic one within seconds).
    nbd_errno(h.pwrite, os.urandom(MiB), 8 * MiB)
    nbd_errno(h.flush)
    p.expect(wait_until(lambda: pool_state(d, "p")[0] == "degraded", timeout=10, interval=0.2),
             f"pool p is {pool_state(d, 'p')[0]!r} 10 s after its supplier was {damage}, not degraded")
    expect_degraded(p, d, "p")
    w, f = nbd_errno(h.pwrite, os.urandom(65536), 0), nbd_errno(h.flush)
    p.expect(w == errno.EIO and f == errno.EIO,
             f"in the degraded pool: write {errname(w)}, FLUSH {errname(f)}, not EIO")
    expect_serves(p, d, "w", 0, f"after pool p's supplier was {damage}")
    p.verify()


# ------------------------------------------------------------------ 5. supplier missing at start

def start_serving(d, timeout=30):
    """Starts the daemon and waits until it answers; a daemon that exits
    instead fails the test with what it said."""
    d.start(wait=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc = d.proc.poll()
        if rc is not None:
            pytest.fail(f"remapd exited with code {rc} instead of serving:\n{d.last_output()}")
        if d.api_sock.exists():
            p = run(["curl", "-sf", "--max-time", "2", "--unix-socket", d.api_sock,
                     "http://localhost/v1/health"])
            if p.returncode == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"remapd not healthy after {timeout} s:\n{d.last_output()}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", ["missing", "short"])
def test_supplier_missing_at_start_leaves_pool_offline(make_remapd, tmp_path, damage):
    """A non-default pool's supplier file is gone (or short) while the
    daemon is down: it starts anyway, that pool is offline with a reason,
    its volume answers EIO, the default pool serves; with the file back,
    clear-errors brings the pool online with its data."""
    p = Promises()
    d, path = daemon_with_file_pool(make_remapd, tmp_path, 32 * MiB)
    v_data, w_data = os.urandom(4 * MiB), os.urandom(4 * MiB)
    for name, data in (("v", v_data), ("w", w_data)):
        h = d.nbd(name)
        h.pwrite(data, 0)
        h.flush()
    d.close_handles()
    d.terminate()
    backup = tmp_path / "p.img.backup"
    shutil.copyfile(path, backup)
    if damage == "missing":
        path.unlink()
    else:
        os.truncate(path, 16 * MiB)

    start_serving(d)
    state, reason, sups = pool_state(d, "p")
    p.expect(state == "offline", f"pool p with a {damage} supplier is {state!r}, not offline")
    p.expect(isinstance(reason, str) and reason, f"pool p: stateReason is {reason!r}")
    want = ("missing",) if damage == "missing" else ("failed", "missing")
    p.expect(sups and sups[0].get("state") in want and sups[0].get("error"),
             f"pool p's supplier should be {' or '.join(want)} with an error: {sups}")
    p.expect(pool_state(d, "default")[0] == "online", f"pool default is {pool_state(d, 'default')[0]!r}")
    p.expect({"v", "w"} <= {v["name"] for v in d.volumes()}, f"volumes listed: {d.volumes()}")
    p.expect(events_of(d, "pool.offline", "p"), "no pool.offline event for p")
    states = metric_pool_states(d)
    p.expect(states.get(("p", "offline")) == 1, f"/metrics remap_pool_state for p: {states}")
    try:
        h = d.nbd("v")
        errs = (nbd_errno(h.pread, 65536, 0), nbd_errno(h.pwrite, bytes(65536), 0), nbd_errno(h.flush))
        p.expect(errs == (errno.EIO,) * 3,
                 f"volume v of the offline pool: read/write/FLUSH answered {[errname(e) for e in errs]}, not EIO")
    except nbd.Error as e:
        p.expect(False, f"volume v of the offline pool: NBD connect refused ({e}), not served with EIO")
    status, _, body = d.api("POST", "/v1/volumes", body={"name": "x", "sizeBytes": MiB, "pool": "p"})
    p.expect(status == 409 and isinstance(body, dict) and body.get("code") == "pool-unavailable",
             f"creating a volume in the offline pool answered {status} {body}")
    hw = d.nbd("w")
    p.expect(read_digest(hw, 0, len(w_data)) == digest(w_data), "volume w of pool default lost its data")
    expect_serves(p, d, "w", 8 * MiB, "while pool p is offline")

    status, _, body = clear_errors(d, "p")
    p.expect(status == 409 and isinstance(body, dict) and body.get("code") == "supplier-failed",
             f"clear-errors with the supplier still {damage} answered {status} {body}, not 409 supplier-failed")
    shutil.copyfile(backup, path)
    status, _, body = clear_errors(d, "p")
    p.expect(status == 200 and isinstance(body, dict) and body.get("state") == "online",
             f"clear-errors with the file back answered {status} {body}")
    d.close_handles()
    h = d.nbd("v")
    p.expect(read_digest(h, 0, len(v_data)) == digest(v_data), "pool p online again: v's data differs")
    p.expect(nbd_errno(h.pwrite, os.urandom(65536), 8 * MiB) == 0 and nbd_errno(h.flush) == 0,
             "pool p online again: write + FLUSH on v fail")
    d.restart(kill9=True)
    p.expect(pool_state(d, "p")[0] == "online", f"after restart pool p is {pool_state(d, 'p')[0]!r}")
    p.expect(read_digest(d.nbd("v"), 0, len(v_data)) == digest(v_data), "after restart v's data differs")
    p.verify()


# ------------------------------------------------------------------ 6, 7. zeroing on a failing device

def dirty_chunks(state_dir, pool):
    """Chunks of `pool` marked dirty in the metadata (daemon stopped)."""
    db = sqlite3.connect(f"file:{state_dir / 'metadata.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM dirty_chunks WHERE pool = ?", (pool,)).fetchone()[0]
    finally:
        db.close()


def device_recovers(p, d, dev, allocated):
    """The device works again: pool faulty is cleared if it is not online,
    and within 15 s its check is clean and it allocates `allocated` bytes
    (the chunks whose zeroing failed were zeroed on a retry and are free)."""
    dev.fail(False)
    if pool_state(d, "faulty")[0] != "online":
        status, _, body = clear_errors(d, "faulty")
        p.expect(status == 200, f"clear-errors with the device working answered {status} {body}")

    def settled():
        return pool_check(d, "faulty")["ok"] and d.pool("faulty")["allocatedBytes"] == allocated
    p.expect(wait_until(settled, timeout=15, interval=0.5),
             f"15 s after the device works: pool check {pool_check(d, 'faulty')}, "
             f"allocated {d.pool('faulty')['allocatedBytes']} ({allocated} mapped)")


@needs_devices
@pytest.mark.timeout(60)
def test_zeroing_that_fails_at_start_is_not_fatal(make_remapd, faulty_device):
    """Chunks left dirty by a crash (the prepared stash) are zeroed at start;
    on a device that fails writes that zeroing fails with EIO. The daemon
    starts anyway, the other pools serve, the failing pool's flushed data
    reads; once the device works (and the pool is cleared) the zeroing is
    retried and the pool check is clean."""
    dev = faulty_device
    p = Promises()
    d, h, data = daemon_on_device(make_remapd, dev, 32 * MiB, 4 * MiB)
    d.kill9()
    d.close_handles()
    assert dirty_chunks(d.state_dir, "faulty") > 0, "no dirty chunks to zero at start: the test proves nothing"
    dev.fail(True)

    start_serving(d)
    state = pool_state(d, "faulty")[0]
    p.expect(state in ("online", "degraded"),
             f"pool faulty is {state!r} after its zeroing failed at start (its supplier opens: reads work)")
    p.expect(pool_state(d, "default")[0] == "online", f"pool default is {pool_state(d, 'default')[0]!r}")
    expect_serves(p, d, "b", 0, "with pool faulty's zeroing failing")
    h = d.nbd("a")
    p.expect(read_digest(h, 0, len(data)) == digest(data), "a's flushed data does not read back")

    device_recovers(p, d, dev, allocated=len(data))
    more = os.urandom(MiB)
    w, f = nbd_errno(h.pwrite, more, 8 * MiB), nbd_errno(h.flush)
    p.expect(w == 0 and f == 0, f"write {errname(w)}, FLUSH {errname(f)} on a with the device working")
    d.restart(kill9=True)
    h = d.nbd("a")
    p.expect(read_digest(h, 0, len(data)) == digest(data), "after restart a's data differs")
    if w == 0 and f == 0:
        p.expect(read_digest(h, 8 * MiB, MiB) == digest(more), "after restart a's later write is gone")
    p.verify()


@needs_devices
@pytest.mark.timeout(60)
def test_reclaim_that_fails_is_retried(make_remapd, faulty_device):
    """Chunks freed by a TRIM are zeroed after the commit that frees them;
    on a failing device that zeroing fails. They are retried, not leaked
    until the next restart: once the device works (and the pool is
    cleared) they return to the pool and its check is clean."""
    dev = faulty_device
    p = Promises()
    d, h, data = daemon_on_device(make_remapd, dev, 32 * MiB, 8 * MiB)
    dev.fail(True)
    h.trim(4 * MiB, 4 * MiB)     # answered at once; the chunks are freed after the commit
    nbd_errno(h.flush)
    time.sleep(1)                # the zeroing job runs and fails
    device_recovers(p, d, dev, allocated=4 * MiB)
    p.expect(read_digest(h, 0, 4 * MiB) == digest(data[:4 * MiB]), "a's untrimmed data differs")
    p.expect(read_digest(h, 4 * MiB, 4 * MiB) == "zeros", "a's trimmed range does not read zeros")
    check_space(d.pool("faulty"))
    p.verify()
