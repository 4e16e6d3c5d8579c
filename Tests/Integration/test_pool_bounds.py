"""Huge pools and the engine thread (issue 11, "Engine thread and huge pools").

A pool has at most --max-chunks-per-pool chunks (default 2^28): creating a
pool, adding a supplier or growing one past that answers 400
invalid-argument naming the limit, before any file is made (a 16 TiB or a
64 PiB sparse supplier of 4 KiB chunks used to stall or abort the daemon).
A pool over a lowered limit is served at start, with one warning, and
cannot grow. The pool check runs off the engine thread on a bitmap, and
allocator growth is word at a time: neither grows the daemon's memory by
8 bytes a chunk, nor stalls a concurrent NBD reader.

Bounds (debug build, on a shared 2-core machine):
- RSS growth during the check of a 2^24-chunk pool: under 32 MiB (the old
  check took 8 bytes a chunk: 128 MiB);
- the longest 4k NBD read while a control-plane command runs: under
  READ_STALL_BOUND (the old code held the engine thread for seconds);
- the engine's own time for the command (its CPU time,
  remap_engine_command_cpu_seconds_max): under ENGINE_BOUND.
"""

import os
import random
import re
import shutil
import tempfile
import threading
import time

import nbd
import pytest

from harness import GiB, KiB, MiB, assert_problem, file_supplier, run

TiB = 1024 * GiB
PiB = 1024 * TiB
DEFAULT_LIMIT = 1 << 28
READ_STALL_BOUND = 0.25
ENGINE_BOUND = 0.1
RSS_BOUND = 32 * MiB


@pytest.fixture
def shm_dir():
    """A directory on tmpfs, where a file may be 64 PiB (sparse): ext4 stops
    just below 16 TiB, and refuses the file before remapd sees the pool."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    path = tempfile.mkdtemp(prefix="remap-bounds-", dir="/dev/shm")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def rss_bytes(d):
    with open(f"/proc/{d.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KiB
    raise AssertionError("no VmRSS")


def engine_max(d, command):
    """remap_engine_command_cpu_seconds_max of `command` (its longest run's
    work on the engine thread; wall time would count the other processes
    of a busy machine too), 0 if it never ran."""
    text = d.get_ok("/metrics")
    match = re.search(r'^remap_engine_command_cpu_seconds_max\{command="%s"\} (\S+)$' % re.escape(command), text, re.M)
    return float(match.group(1)) if match else 0.0


class Reader:
    """4k NBD reads at random offsets of one volume, back to back, on their
    own connection: the longest read while a command runs is how long the
    engine thread stalled."""

    def __init__(self, d, export, size):
        self.h = nbd.NBD()
        self.h.connect_uri(d.nbd_uri(export))
        self.size = size
        self.reads = 0
        self.longest = 0.0
        self.error = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        rng = random.Random(1)
        try:
            while not self._stop.is_set():
                offset = rng.randrange(self.size // 4096) * 4096
                started = time.monotonic()
                self.h.pread(4096, offset)
                self.longest = max(self.longest, time.monotonic() - started)
                self.reads += 1
        except Exception as e:  # reported by stop()
            self.error = e

    def __enter__(self):
        self._thread.start()
        deadline = time.monotonic() + 5
        while self.reads < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.longest = 0.0  # the connection's first reads are not what is measured
        return self

    def __exit__(self, *exc):
        time.sleep(0.05)
        self._stop.set()
        self._thread.join(timeout=60)
        self.h.shutdown()
        assert self.error is None, f"the reader failed: {self.error}"
        assert self.reads > 50, f"the reader got only {self.reads} reads"


def reader_volume(d):
    d.create_volume("reader", 64 * MiB)
    h = d.nbd("reader")
    h.pwrite(os.urandom(4 * MiB), 0)
    h.flush()
    return Reader(d, "reader", 4 * MiB)


# ------------------------------------------------------------------ the limit

@pytest.mark.timeout(120)
@pytest.mark.parametrize("size", [16 * TiB, 64 * PiB], ids=["16TiB", "64PiB"])
def test_a_pool_of_a_huge_supplier_of_4k_chunks_is_refused(make_remapd, shm_dir, size):
    d = make_remapd(extra_args=["--supplier-dir", shm_dir])
    path = os.path.join(shm_dir, "huge.img")
    status, headers, body = d.api("POST", "/v1/pools", timeout=60, body={
        "name": "huge", "chunkSizeBytes": 4096, "suppliers": [file_supplier(path, size, preallocate=False)]})
    assert_problem(status, headers, body, 400, "invalid-argument")
    assert str(size // 4096) in body["detail"] and str(DEFAULT_LIMIT) in body["detail"], body
    assert "--max-chunks-per-pool" in body["detail"], body
    assert not os.path.exists(path), "the supplier file was made before the refusal"
    assert d.running and [p["name"] for p in d.get_ok("/v1/pools")["pools"]] == ["default"]


@pytest.mark.timeout(120)
def test_adding_a_huge_supplier_is_refused(make_remapd, shm_dir):
    d = make_remapd(extra_args=["--supplier-dir", shm_dir])
    path = os.path.join(shm_dir, "huge.img")
    # 16 TiB of the default pool's 64 KiB chunks is the limit itself; with
    # the pool's first 512 MiB that is past it.
    status, headers, body = d.api("POST", "/v1/pools/default/suppliers", timeout=60,
                                  body=file_supplier(path, 16 * TiB, preallocate=False))
    assert_problem(status, headers, body, 400, "invalid-argument")
    assert str(DEFAULT_LIMIT) in body["detail"], body
    assert not os.path.exists(path)
    assert len(d.pool()["suppliers"]) == 1


def test_create_add_and_grow_stop_at_the_limit(make_remapd):
    d = make_remapd(extra_args=["--max-chunks-per-pool", "10000"])  # the default pool has 8192 chunks of 64 KiB
    pools = d.state_dir / "pools"
    status, headers, body = d.api("POST", "/v1/pools", body={
        "name": "p", "chunkSizeBytes": 4096, "suppliers": [file_supplier(pools / "p.img", 64 * MiB, preallocate=False)]})
    assert_problem(status, headers, body, 400, "invalid-argument")
    assert "16384 chunks" in body["detail"] and "10000" in body["detail"], body
    assert not (pools / "p.img").exists()

    status, headers, body = d.api("POST", "/v1/pools/default/suppliers",
                                  body=file_supplier(pools / "b.img", 128 * MiB, preallocate=False))
    assert_problem(status, headers, body, 400, "invalid-argument")
    assert "10240 chunks" in body["detail"], body
    assert not (pools / "b.img").exists()
    status, _, pool = d.api("POST", "/v1/pools/default/suppliers",
                            body=file_supplier(pools / "b.img", 64 * MiB, preallocate=False))
    assert status == 201, pool
    supplier = pool["suppliers"][1]["id"]

    status, headers, body = d.api("PATCH", f"/v1/pools/default/suppliers/{supplier}", body={"sizeBytes": 128 * MiB})
    assert_problem(status, headers, body, 400, "invalid-argument")
    assert os.path.getsize(pools / "b.img") == 64 * MiB, "the file grew though the pool may not"
    # Up to the limit exactly: 8192 + 1024 + 784 chunks.
    status, _, pool = d.api("PATCH", f"/v1/pools/default/suppliers/{supplier}", body={"sizeBytes": (1024 + 784) * 64 * KiB})
    assert status == 200, pool
    assert pool["capacityBytes"] == 10000 * 64 * KiB


def test_a_default_pool_past_the_limit_is_refused_at_first_start(make_remapd):
    d = make_remapd(start=False, extra_args=["--max-chunks-per-pool", "1000"])  # 512 MiB: 8192 chunks
    p = run(d.command(), timeout=60)
    assert p.returncode == 1, p
    assert "pool 'default' would have 8192 chunks" in p.stderr.decode() and "--max-chunks-per-pool" in p.stderr.decode(), p
    assert not (d.state_dir / "pools" / "default.img").exists()


def test_a_pool_over_a_lowered_limit_is_served(make_remapd):
    d = make_remapd()  # 8192 chunks
    d.create_volume("v", 16 * MiB)
    h = d.nbd("v")
    data = os.urandom(1 * MiB)
    h.pwrite(data, 0)
    h.flush()
    d.extra_args = ["--max-chunks-per-pool", "4096"]
    d.restart()
    warnings = [line for line in d.last_output().splitlines() if "--max-chunks-per-pool" in line]
    assert len(warnings) == 1 and "'default' has 8192 chunks" in warnings[0], d.last_output()
    h = d.nbd("v")
    assert h.pread(len(data), 0) == data
    h.pwrite(data, 4 * MiB)
    h.flush()
    status, headers, body = d.api("POST", "/v1/pools/default/suppliers",
                                  body=file_supplier(d.state_dir / "pools" / "more.img", 1 * MiB, preallocate=False))
    assert_problem(status, headers, body, 400, "invalid-argument")
    assert d.get_ok("/v1/pools/default/check")["ok"]


# ------------------------------------------------------------------ the engine thread

def big_pool(d, chunks):
    """A pool of `chunks` 4 KiB chunks on one sparse file."""
    status, _, pool = d.api("POST", "/v1/pools", timeout=120, body={
        "name": "big", "chunkSizeBytes": 4096,
        "suppliers": [file_supplier(d.state_dir / "pools" / "big.img", chunks * 4096, preallocate=False)]})
    assert status == 201, pool
    return pool


@pytest.mark.timeout(300)
def test_the_check_of_a_big_pool_is_a_bitmap_off_the_engine_thread(make_remapd):
    d = make_remapd()
    big_pool(d, 1 << 24)  # 64 GiB
    d.create_volume("data", 64 * MiB, pool="big")
    h = d.nbd("data")
    for i in range(8):
        h.pwrite(os.urandom(256 * KiB), i * 4 * MiB)
    h.flush()
    status, _, _ = d.api("POST", "/v1/volumes/data/snapshots", body={"name": "s"})
    assert status == 201
    h.pwrite(os.urandom(64 * KiB), 0)  # the volume and its snapshot differ in a page
    h.flush()
    reader = reader_volume(d)
    time.sleep(0.5)
    baseline = rss_bytes(d)
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes(d))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with reader:
        started = time.monotonic()
        report = d.get_ok("/v1/pools/big/check")
        took = time.monotonic() - started
    done.set()
    sampler.join()
    assert report["ok"], report
    assert report["referencedChunks"] == 8 * 64 + 16, report
    grew = peak[0] - baseline
    print(f"check of 2^24 chunks: {took * 1000:.0f} ms, RSS +{grew / MiB:.1f} MiB, "
          f"longest read {reader.longest * 1000:.1f} ms over {reader.reads} reads, "
          f"engine {engine_max(d, 'checkPool') * 1000:.1f} ms")
    assert grew < RSS_BOUND, f"RSS grew by {grew / MiB:.1f} MiB during the check"
    assert reader.longest < READ_STALL_BOUND, f"a read waited {reader.longest * 1000:.0f} ms during the check"
    assert engine_max(d, "checkPool") < ENGINE_BOUND


@pytest.mark.timeout(300)
def test_adding_and_growing_a_large_supplier_does_not_stall_readers(make_remapd):
    d = make_remapd()
    big_pool(d, 1024)
    path = d.state_dir / "pools" / "added.img"
    reader = reader_volume(d)
    with reader:
        status, _, pool = d.api("POST", "/v1/pools/big/suppliers", timeout=120,
                                body=file_supplier(path, 64 * GiB, preallocate=False))
        assert status == 201, pool
        supplier = pool["suppliers"][1]["id"]
        status, _, pool = d.api("PATCH", f"/v1/pools/big/suppliers/{supplier}", timeout=120, body={"sizeBytes": 128 * GiB})
        assert status == 200, pool
    assert pool["capacityBytes"] == 1024 * 4096 + 128 * GiB
    engine = max(engine_max(d, "addSupplier"), engine_max(d, "growSupplier"))
    print(f"add + grow by 2^24 chunks each: longest read {reader.longest * 1000:.1f} ms over {reader.reads} reads, "
          f"engine {engine * 1000:.1f} ms")
    assert reader.longest < READ_STALL_BOUND, f"a read waited {reader.longest * 1000:.0f} ms while the pool grew"
    assert engine < ENGINE_BOUND
    # The new chunks are all free, and usable.
    d.create_volume("late", 1 * GiB, pool="big")
    h = d.nbd("late")
    h.pwrite(b"x" * 4096, 1 * GiB - 4096)
    h.flush()
    assert d.get_ok("/v1/pools/big/check")["ok"]
