"""Honest space on a full pool (docs/api-v1.md, "Reservations, exports, events
(honest space)"; DESIGN.md, "The contract" 1): writes a reservation covers
succeed, every other write fails with ENOSPC within 10 ms; space freed
elsewhere (a volume delete, a release, a TRIM) is usable on the same
connection; a request needing more chunks than the prepared stash is
served.

NBD through libnbd's Python binding and fio's nbd engine (or, without it,
libnbd pattern writes). Sizes are the issue's scaled down by four (a
64 MiB range reservation instead of 256 MiB).
"""

import errno
import gc
import json
import os
import random
import subprocess
import threading
import time

import pytest

from harness import (CHUNK, MiB, bind_export, check_space, clean_env, connect, disconnect, events_since,
                     expect_enospc, export_uri, fill, fio_has_nbd, last_seq, pattern, release, reservations, reserve,
                     space, wait_until)

import nbd  # noqa: E402  (python3-libnbd; a missing package must fail, not skip)


ENOSPC_BUDGET = 0.010  # seconds: an uncovered write on a full pool fails within this


class Fio:
    """fio random writes with crc32c verify through the nbd engine, on
    [offset, offset+size) of one export (one job, one connection)."""

    def __init__(self, tmp_path, uri, offset, size, seed):
        self.tmp = tmp_path
        self.uri, self.offset, self.size, self.seed = uri, offset, size, seed
        self.proc = None

    def args(self, out, verify_only):
        return ["fio", "--name=space", "--ioengine=nbd", f"--uri={self.uri}", "--rw=randwrite",
                "--bsrange=4k-256k", "--iodepth=8", f"--offset={self.offset}", f"--size={self.size}",
                "--verify=crc32c", "--verify_fatal=1", f"--randseed={self.seed}",
                "--verify_state_save=0", "--output-format=json", f"--output={out}",
                "--verify_only" if verify_only else "--do_verify=1"]

    def start(self, verify_only=False):
        self.out = self.tmp / f"fio-{self.seed}-{'v' if verify_only else 'w'}.json"
        self.verify_only = verify_only
        self.proc = subprocess.Popen(self.args(self.out, verify_only), cwd=self.tmp, env=clean_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return self

    @property
    def running(self):
        return self.proc.poll() is None

    def wait(self, timeout=90):
        try:
            text = self.proc.communicate(timeout=timeout)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            pytest.fail(f"fio on {self.uri} did not finish within {timeout}s (a hang)")
        what = "verify" if self.verify_only else "write+verify"
        assert self.proc.returncode == 0, \
            f"fio {what} on {self.uri} [{self.offset}, +{self.size}) failed:\n{text}"
        job = json.loads(self.out.read_text())["jobs"][0]
        assert job["error"] == 0, job
        if not self.verify_only:
            assert job["write"]["io_bytes"] == self.size, f"fio wrote {job['write']['io_bytes']}"
        assert job["read"]["io_bytes"] == self.size, "fio did not read back what it wrote"
        return job


class PatternJob:
    """Fio's job without fio: offset-stamped blocks of 4-256 KiB written in
    a seeded random order through libnbd (in a thread), flushed, then every
    block read back and compared."""

    def __init__(self, tmp_path, uri, offset, size, seed):
        self.uri, self.offset, self.size, self.seed = uri, offset, size, seed
        self.tag = str(seed % 10)

    def start(self, verify_only=False):
        self.verify_only, self.error = verify_only, None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        return self

    def _run(self):
        try:
            rng = random.Random(self.seed)
            blocks, off, end = [], self.offset, self.offset + self.size
            while off < end:
                n = min(rng.choice([4096, 65536, 262144]), end - off)
                blocks.append((off, n))
                off += n
            h = nbd.NBD()
            h.connect_uri(self.uri)
            if not self.verify_only:
                order = blocks[:]
                rng.shuffle(order)
                for off, n in order:
                    h.pwrite(pattern(self.tag, off, n), off)
                h.flush()
            for off, n in blocks:
                if h.pread(n, off) != pattern(self.tag, off, n):
                    raise AssertionError(f"block {off}+{n} reads other data than was written")
            h.shutdown()
        except Exception as e:  # reported by wait()
            self.error = e

    @property
    def running(self):
        return self.thread.is_alive()

    def wait(self, timeout=90):
        self.thread.join(timeout)
        if self.thread.is_alive():
            pytest.fail(f"pattern job on {self.uri} did not finish within {timeout}s (a hang)")
        what = "verify" if self.verify_only else "write+verify"
        assert self.error is None, \
            f"{what} on {self.uri} [{self.offset}, +{self.size}) failed: {self.error!r}"


Job = Fio if fio_has_nbd() else PatternJob


def run_job(tmp_path, uri, offset, size, seed, verify_only=False):
    return Job(tmp_path, uri, offset, size, seed).start(verify_only).wait()


def test_full_pool_keeps_reservations_and_fails_uncovered_writes_fast(make_remapd, tmp_path):
    """A 192 MiB pool under 576 MiB of volumes: A holds a 64 MiB range
    reservation, B a 48 MiB pooled one bound to an export, C none, D is a
    32 MiB filler. C writes until ENOSPC while B's writes draw on its
    reservation; with the pool full every covered write succeeds (fio
    verify), every uncovered one fails with ENOSPC within 10 ms, and every
    byte still reads back."""
    d = make_remapd(pool_size="192M")
    assert space(d)["capacityBytes"] == 192 * MiB
    for name, size in (("A", 128 * MiB), ("B", 128 * MiB), ("C", 256 * MiB), ("D", 64 * MiB)):
        d.create_volume(name, size)
    assert d.pool()["provisionedBytes"] == 576 * MiB

    rA = reserve(d, "A", {"offsetBytes": 32 * MiB, "lengthBytes": 64 * MiB, "name": "a-range"})
    assert (rA["kind"], rA["bytes"], rA["usedBytes"], rA["offsetBytes"], rA["lengthBytes"], rA["name"]) \
        == ("range", 64 * MiB, 0, 32 * MiB, 64 * MiB, "a-range"), rA
    assert rA.get("expiresAt") is None, rA
    rB = reserve(d, "B", {"bytes": 48 * MiB})
    assert (rB["kind"], rB["bytes"], rB["usedBytes"]) == ("pooled", 48 * MiB, 0), rB
    bind_export(d, "B", rB["id"], name="B-res")
    exports = {e["name"]: e for e in d.get_ok("/v1/exports")["exports"]}
    assert {"A", "B", "C", "D", "B-res"} <= set(exports), exports
    assert exports["B-res"]["volume"] == "B" and exports["B-res"]["reservation"] == rB["id"], exports

    pool = space(d)
    assert (pool["allocatedBytes"], pool["reservedBytes"], pool["freeBytes"]) == (0, 112 * MiB, 80 * MiB), pool
    for name, reserved, guaranteed in (("A", 64 * MiB, 64 * MiB), ("B", 48 * MiB, 48 * MiB), ("C", 0, 0)):
        v = d.volume(name)
        assert (v["reservedBytes"], v["guaranteedWritableBytes"]) == (reserved, guaranteed), v

    # D takes 32 MiB of the 80 free.
    hD = connect(d, "D")
    for off in range(0, 32 * MiB, MiB):
        hD.pwrite(pattern("D", off, MiB), off)
    hD.flush()
    disconnect(d, hD)

    # B writes the first half of its reservation while C fills the pool.
    seq0 = last_seq(d)
    refused = []  # (volume, offset) of every write refused for space

    def refuse(h, vol, offset, length=4096, flags=0):
        refused.append((vol, offset))
        return expect_enospc(h, offset, length, flags)

    b1 = Job(tmp_path, export_uri(d, "B-res"), 0, 24 * MiB, seed=11).start()
    hC = connect(d, "C")
    c_end = 0
    while True:
        assert c_end < 256 * MiB, "C wrote its whole size: nothing ever ran out"
        try:
            hC.pwrite(pattern("C", c_end, MiB), c_end)
        except nbd.Error as e:
            assert e.errnum == errno.ENOSPC, f"C's write at {c_end} failed with {e}, not ENOSPC"
            refused.append(("C", c_end))
            break
        c_end += MiB
    b1.wait()
    hC.flush()
    assert c_end == 48 * MiB, \
        f"C got {c_end / MiB:g} MiB before ENOSPC; the free space was 48 MiB (reservations leaked or were taken)"
    pool = space(d)
    assert (pool["allocatedBytes"], pool["reservedBytes"], pool["freeBytes"]) == \
        (104 * MiB, 88 * MiB, 0), pool

    # With the pool full, writes that nothing covers fail with ENOSPC: C,
    # A outside its range, and B through its own export (the reservation
    # is bound to B-res, and still has 24 MiB).
    hA = connect(d, "A")
    hB = connect(d, "B")
    refuse(hC, "C", 100 * MiB)
    refuse(hA, "A", 0)
    refuse(hA, "A", 96 * MiB)
    refuse(hB, "B", 64 * MiB)
    assert reservations(d, "B")[0]["usedBytes"] == 24 * MiB
    # Overwrites of allocated chunks and reads keep working.
    hC.pwrite(pattern("C", 0, MiB), 0)
    assert hC.pread(4096, 47 * MiB) == pattern("C", 47 * MiB, 4096)

    # Every covered write succeeds on the full pool: the rest of B's
    # reservation and all of A's range, while C keeps being refused.
    b2 = Job(tmp_path, export_uri(d, "B-res"), 24 * MiB, 24 * MiB, seed=12).start()
    fa = Job(tmp_path, export_uri(d, "A"), 32 * MiB, 64 * MiB, seed=13).start()
    rng = random.Random(1)
    during = 0
    while b2.running or fa.running:
        refuse(hC, "C", rng.randrange(800, 4000) * CHUNK, rng.choice([512, 4096, 65536]))
        during += 1
        time.sleep(0.005)
    b2.wait()
    fa.wait()
    assert during > 0
    pool = space(d)
    assert (pool["allocatedBytes"], pool["reservedBytes"], pool["freeBytes"]) == (192 * MiB, 0, 0), pool
    assert [(r["id"], r["usedBytes"]) for r in reservations(d, "A")] == [(rA["id"], 64 * MiB)]
    assert [(r["id"], r["usedBytes"]) for r in reservations(d, "B")] == [(rB["id"], 48 * MiB)]
    assert d.volume("A")["allocatedBytes"] == 64 * MiB and d.volume("B")["allocatedBytes"] == 48 * MiB

    # Each refused request on the quiet, full pool fails within 10 ms.
    latencies = []
    offsets = rng.sample(range(800, 4000), 60)  # C wrote chunks 0-767
    gc.disable()
    try:
        for i, chunk in enumerate(offsets):
            length = [512, 4096, 65536, MiB][i % 4]
            flags = nbd.CMD_FLAG_FUA if i % 5 == 0 else 0
            latencies.append((refuse(hC, "C", chunk * CHUNK, length, flags), chunk * CHUNK, length))
    finally:
        gc.enable()
    slow = [(round(dt * 1000, 2), off, n) for dt, off, n in latencies if dt >= ENOSPC_BUDGET]
    assert not slow, f"ENOSPC took >= 10 ms for (ms, offset, length): {slow}"
    # pool.no-space events (rate-limited by the daemon to one a second per
    # pool) name refused writes only.
    no_space = [e for e in events_since(d, seq0) if e["type"] == "pool.no-space"]
    assert no_space, "no pool.no-space event for the refused writes"
    assert no_space[0].get("volume") == "C" and no_space[0].get("offsetBytes") == 48 * MiB, no_space[0]
    for e in no_space:
        assert e.get("pool") == "default" and (e.get("volume"), e.get("offsetBytes")) in refused, e

    # Everything reads back: fio verifies A and B, the patterns C and D.
    for h in (hA, hB, hC):
        disconnect(d, h)
    run_job(tmp_path, export_uri(d, "B-res"), 0, 24 * MiB, seed=11, verify_only=True)
    run_job(tmp_path, export_uri(d, "B"), 24 * MiB, 24 * MiB, seed=12, verify_only=True)
    run_job(tmp_path, export_uri(d, "A"), 32 * MiB, 64 * MiB, seed=13, verify_only=True)
    hA, hB, hC, hD = (connect(d, n) for n in "ABCD")
    assert hA.pread(32 * MiB, 0) == bytes(32 * MiB) and hA.pread(32 * MiB, 96 * MiB) == bytes(32 * MiB)
    assert hB.pread(16 * MiB, 48 * MiB) == bytes(16 * MiB)
    for off in range(0, 48 * MiB, MiB):
        assert hC.pread(MiB, off) == pattern("C", off, MiB), f"C differs at {off}"
    assert hC.pread(MiB, 48 * MiB) == bytes(MiB)
    for off in range(0, 32 * MiB, MiB):
        assert hD.pread(MiB, off) == pattern("D", off, MiB), f"D differs at {off}"
    assert d.running


def test_space_freed_elsewhere_is_usable_on_the_same_connection(make_remapd):
    """C runs out; a volume delete, a reservation release and C's own TRIM
    each give space back that C's next writes use on the same NBD
    connection, with no reconnect."""
    d = make_remapd(pool_size="32M")
    d.create_volume("C", 64 * MiB)
    d.create_volume("D", 16 * MiB)
    d.create_volume("E", 16 * MiB)
    hD = connect(d, "D")
    for off in range(0, 8 * MiB, MiB):
        hD.pwrite(pattern("D", off, MiB), off)
    hD.flush()
    disconnect(d, hD)
    r = reserve(d, "E", {"bytes": 4 * MiB})

    hC = connect(d, "C")
    end = fill(hC, 0, "C", limit=64 * MiB)
    assert end == 20 * MiB, f"C got {end / MiB:g} MiB of the 20 MiB free"
    expect_enospc(hC, end)
    assert space(d)["freeBytes"] == 0

    # A volume delete: its 8 MiB are back at once (204 means "back in the pool").
    d.delete_volume("D")
    assert space(d)["freeBytes"] == 8 * MiB
    end2 = fill(hC, end, "C", limit=64 * MiB)
    assert end2 - end == 8 * MiB, f"after deleting D, C wrote {(end2 - end) / MiB:g} MiB, expected 8"

    # A release: the unused 4 MiB are back.
    release(d, "E", r["id"])
    assert space(d)["freeBytes"] == 4 * MiB
    end3 = fill(hC, end2, "C", limit=64 * MiB)
    assert end3 - end2 == 4 * MiB, f"after the release, C wrote {(end3 - end2) / MiB:g} MiB, expected 4"

    # C's own TRIM: the chunks come back at the next commit (FLUSH forces it).
    hC.trim(2 * MiB, 0)
    hC.flush()
    assert wait_until(lambda: space(d)["freeBytes"] == 2 * MiB, timeout=3), d.pool()
    end4 = fill(hC, end3, "C", limit=64 * MiB)
    assert end4 - end3 == 2 * MiB, f"after TRIM, C wrote {(end4 - end3) / MiB:g} MiB, expected 2"
    hC.flush()

    assert hC.pread(2 * MiB, 0) == bytes(2 * MiB)
    for off in range(2 * MiB, end4, MiB):
        assert hC.pread(MiB, off) == pattern("C", off, MiB), f"C differs at {off}"
    pool = space(d)
    assert (pool["allocatedBytes"], pool["reservedBytes"], pool["freeBytes"]) == (32 * MiB, 0, 0), pool
    assert d.volume("C")["allocatedBytes"] == 32 * MiB


def test_a_request_needing_more_chunks_than_the_stash_is_served(make_remapd):
    """Writes draw on a stash of prepared chunks (1,024). A request needing
    more used to fail with ENOSPC though the pool had plenty: a 16 MiB write
    into a pool of 4 KiB chunks (4,096 chunks), a 64 MiB WRITE_ZEROES with
    NO_HOLE over holes. The stash grows for the request instead."""
    d = make_remapd(pool_size="256M")
    status, _, body = d.api("POST", "/v1/pools", body={
        "name": "small", "chunkSizeBytes": 4096,
        "suppliers": [{"kind": "file", "path": str(d.state_dir / "pools" / "small.img"), "sizeBytes": 256 * MiB}]})
    assert status == 201, body
    status, _, body = d.api("POST", "/v1/volumes", body={"name": "w", "sizeBytes": 128 * MiB, "pool": "small"})
    assert status == 201, body
    h = d.nbd("w")
    data = os.urandom(32 * MiB)
    h.pwrite(data, 0)
    h.zero(64 * MiB, 64 * MiB, nbd.CMD_FLAG_NO_HOLE)
    h.flush()
    assert h.pread(32 * MiB, 0) == data
    assert d.volume("w")["allocatedBytes"] == 96 * MiB
    # Past the pool's free space it is still ENOSPC, at once.
    status, _, body = d.api("POST", "/v1/volumes", body={"name": "big", "sizeBytes": 512 * MiB, "pool": "small"})
    assert status == 201, body
    with pytest.raises(nbd.Error) as failure:
        d.nbd("big").zero(256 * MiB, 0, nbd.CMD_FLAG_NO_HOLE)
    assert failure.value.errnum == errno.ENOSPC
    check_space(d.pool("small"))
