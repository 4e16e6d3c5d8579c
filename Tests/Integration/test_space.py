"""Honest space: reservations, bound exports, ENOSPC on a full pool, leases,
events, low-space thresholds and the onNoSpace queue (docs/api-v1.md,
"Reservations, exports, events (honest space)"; DESIGN.md, "The contract" 1).

Every test drives the real daemon: REST over the unix socket, NBD through
libnbd's Python binding and fio's nbd engine (or, without it, libnbd
pattern writes). Sizes are the issue's scaled down by four (a 64 MiB range
reservation instead of 256 MiB) so the file runs in about a minute and a
half.
"""

import collections
import errno
import gc
import http.client
import json
import os
import random
import socket
import subprocess
import threading
import time
from urllib.parse import quote

import pytest

from harness import (CHUNK, MiB, Api, assert_problem, bind_export, check_space, clean_env, connect, disconnect,
                     events_since, expect_enospc, export_uri, fill, fio_has_nbd, last_seq, make_pool, parse_time,
                     pattern, release, reservations, reserve, space, wait_until)

import nbd  # noqa: E402  (python3-libnbd; a missing package must fail, not skip)

ENOSPC_BUDGET = 0.010  # seconds: an uncovered write on a full pool fails within this


# =================================================================== helpers

def aio_wait(h, cookies, timeout):
    """Pump `h` until every cookie completed or `timeout`; return
    {cookie: None | nbd.Error} for the completed ones."""
    done = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(cookies) and time.monotonic() < deadline:
        h.poll(50)
        for c in cookies:
            if c in done:
                continue
            try:
                if h.aio_command_completed(c):
                    done[c] = None
            except nbd.Error as e:
                done[c] = e
    return done


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


# ============================================================ 1. the fill test

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


# ============================================= 2. space freed elsewhere is usable

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


# ===================================================== 3. refusal and the race

def test_reservation_refused_with_507_when_it_cannot_be_backed(make_remapd):
    d = make_remapd(pool_size="32M")
    d.create_volume("v", 64 * MiB)
    d.create_volume("w", 64 * MiB)
    h = connect(d, "v")
    h.pwrite(b"\x11" * (4 * MiB), 0)
    h.flush()
    before = space(d)
    assert before["freeBytes"] == 28 * MiB

    t0 = time.monotonic()
    p = reserve(d, "v", {"bytes": 28 * MiB + 1}, expect=507)
    assert time.monotonic() - t0 < 1.0, "a 507 must be decided at once"
    assert (p["requestedBytes"], p["availableBytes"]) == (28 * MiB + CHUNK, 28 * MiB), p
    p = reserve(d, "w", {"offsetBytes": 8 * MiB, "lengthBytes": 30 * MiB}, expect=507)
    assert (p["requestedBytes"], p["availableBytes"]) == (30 * MiB, 28 * MiB), p
    # Nothing changed.
    assert d.pool() == before
    assert reservations(d, "v") == [] and reservations(d, "w") == []

    # Exactly what is free can be reserved; then not one chunk more.
    r = reserve(d, "v", {"bytes": 28 * MiB})
    assert space(d)["freeBytes"] == 0
    p = reserve(d, "w", {"bytes": 1}, expect=507)
    assert (p["requestedBytes"], p["availableBytes"]) == (CHUNK, 0), p
    p = reserve(d, "w", {"offsetBytes": 0, "lengthBytes": CHUNK}, expect=507)
    assert p["availableBytes"] == 0, p
    # A thick or pooled volume create is refused the same way, and creates nothing.
    for spec in ({"reservation": "thick"}, {"reservation": {"bytes": MiB}}):
        status, headers, body = d.api("POST", "/v1/volumes", body={"name": "x", "sizeBytes": MiB, **spec})
        assert_problem(status, headers, body, 507, "insufficient-space")
        assert (body["requestedBytes"], body["availableBytes"]) == (MiB, 0), body
        assert d.api("GET", "/v1/volumes/x")[0] == 404
    release(d, "v", r["id"])
    assert space(d) == before


def test_two_clients_racing_for_the_last_space_get_one_201_and_one_507(make_remapd):
    d = make_remapd(pool_size="32M")
    d.create_volume("v", 64 * MiB)
    d.create_volume("w", 64 * MiB)
    h = connect(d, "v")
    h.pwrite(b"\x22" * (2 * MiB), 0)
    h.flush()
    disconnect(d, h)
    free = space(d)["freeBytes"]
    assert free == 30 * MiB
    half = free // 2 + CHUNK  # two of these do not fit
    specs = [
        ({"bytes": half}, {"bytes": half}),
        ({"bytes": half}, {"offsetBytes": 0, "lengthBytes": half}),
        ({"offsetBytes": 16 * MiB, "lengthBytes": half}, {"offsetBytes": 0, "lengthBytes": half}),
    ]
    apis = [Api(d.api_sock), Api(d.api_sock)]
    for a in apis:
        a.ok("GET", "/v1/health")  # connect before the barrier
    for round_ in range(21):
        spec_v, spec_w = specs[round_ % 3]
        targets = [("v", spec_v), ("w", spec_w)] if round_ % 2 else [("w", spec_w), ("v", spec_v)]
        barrier = threading.Barrier(2)
        results = [None, None]

        def racer(i):
            vol, spec = targets[i]
            barrier.wait()
            results[i] = apis[i]("POST", f"/v1/volumes/{vol}/reservations", spec)

        threads = [threading.Thread(target=racer, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert all(r is not None for r in results), f"round {round_}: a request hung"
        statuses = sorted(r[0] for r in results)
        assert statuses == [201, 507], f"round {round_}: {targets} -> {[(r[0], r[2]) for r in results]}"
        won = next(i for i in range(2) if results[i][0] == 201)
        lost = results[1 - won]
        winner = results[won][2]
        assert_problem(lost[0], lost[1], lost[2], 507, "insufficient-space")
        assert lost[2]["availableBytes"] == free - winner["bytes"], (winner, lost[2])
        pool = space(d)
        assert (pool["reservedBytes"], pool["freeBytes"]) == (winner["bytes"], free - winner["bytes"]), pool
        assert d.api("DELETE", f"/v1/volumes/{targets[won][0]}/reservations/{winner['id']}")[0] == 204
        # A range reservation's chunks come back at the next commit.
        assert wait_until(lambda: space(d)["freeBytes"] == free, timeout=3), d.pool()
    for a in apis:
        a.close()


def test_a_write_and_a_reservation_racing_for_the_last_space_never_both_win(make_remapd):
    """A write needing one new chunk and a reservation of all the free space
    race: exactly one of them gets it, every time."""
    d = make_remapd(pool_size="4M")
    d.create_volume("v", 64 * MiB)
    d.create_volume("f", 4 * MiB)
    hf = connect(d, "f")
    hf.pwrite(b"\x05" * (3 * MiB), 0)
    hf.flush()
    free = space(d)["freeBytes"]
    assert free == MiB
    h = connect(d, "v")
    api = Api(d.api_sock)
    api.ok("GET", "/v1/health")
    outcomes = collections.Counter()
    rng = random.Random(7)
    for round_ in range(20):
        off = round_ * MiB
        jitter = rng.uniform(0, 0.004)  # the write is faster than HTTP: let either win
        barrier = threading.Barrier(2)
        result = {}

        def writer():
            barrier.wait()
            time.sleep(jitter)
            try:
                h.pwrite(b"\x06" * 4096, off)
                result["write"] = "ok"
            except nbd.Error as e:
                result["write"] = "ENOSPC" if e.errnum == errno.ENOSPC else repr(e)

        def reserver():
            barrier.wait()
            result["reserve"] = api("POST", "/v1/volumes/f/reservations", {"bytes": free})

        threads = [threading.Thread(target=writer), threading.Thread(target=reserver)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(result) == 2, f"round {round_}: something hung: {result}"
        status, _, body = result["reserve"]
        outcome = (result["write"], status)
        assert outcome in (("ok", 507), ("ENOSPC", 201)), f"round {round_}: {outcome} {body}"
        outcomes[outcome] += 1
        pool = space(d)
        if status == 201:
            assert (pool["reservedBytes"], pool["freeBytes"]) == (free, 0), pool
            release(d, "f", body["id"])
        else:
            assert body["availableBytes"] == free - CHUNK, body
            assert (pool["reservedBytes"], pool["freeBytes"]) == (0, free - CHUNK), pool
            h.trim(CHUNK, off)
            h.flush()
        assert wait_until(lambda: space(d)["freeBytes"] == free, timeout=3), d.pool()
    api.close()
    assert d.volume("v")["allocatedBytes"] == 0


def test_reservation_objects_names_rounding_and_bad_input(make_remapd):
    d = make_remapd(pool_size="32M")
    d.create_volume("v", 16 * MiB)
    r = reserve(d, "v", {"bytes": 1, "name": "tiny"})
    assert (r["kind"], r["bytes"], r["usedBytes"], r["name"]) == ("pooled", CHUNK, 0, "tiny"), r
    # Same name, same spec: the same reservation (200); another spec: 409.
    again = reserve(d, "v", {"bytes": 1, "name": "tiny"}, expect=200)
    assert again["id"] == r["id"], (r, again)
    status, headers, body = d.api("POST", "/v1/volumes/v/reservations", body={"bytes": 2 * CHUNK, "name": "tiny"})
    assert_problem(status, headers, body, 409, "already-exists")
    rr = reserve(d, "v", {"offsetBytes": 2 * MiB, "lengthBytes": CHUNK + 1})
    assert (rr["kind"], rr["bytes"], rr["offsetBytes"], rr["lengthBytes"]) == \
        ("range", 2 * CHUNK, 2 * MiB, 2 * CHUNK), rr
    assert d.get_ok(f"/v1/volumes/v/reservations/{rr['id']}") == rr
    assert sorted(x["id"] for x in reservations(d, "v")) == sorted([r["id"], rr["id"]])
    assert space(d)["reservedBytes"] == 3 * CHUNK
    v = d.volume("v")
    assert (v["reservedBytes"], v["guaranteedWritableBytes"]) == (3 * CHUNK, 3 * CHUNK), v

    before = d.pool()
    for body in ({"bytes": 0}, {"bytes": -1}, {"bytes": "1"}, {}, {"bytes": 1, "offsetBytes": 0},
                 {"offsetBytes": 0}, {"lengthBytes": CHUNK}, {"offsetBytes": 0, "lengthBytes": 0},
                 {"offsetBytes": 16 * MiB - CHUNK, "lengthBytes": 2 * CHUNK},
                 {"bytes": 1, "ttlSeconds": 0}, {"bytes": 1, "ttlSeconds": 31536001},
                 {"bytes": 1, "bogus": 1}, {"bytes": 1, "name": "../x"}):
        status, headers, problem = d.api("POST", "/v1/volumes/v/reservations", body=body)
        assert_problem(status, headers, problem, 400, "invalid-argument")
    status, headers, problem = d.api("POST", "/v1/volumes/nope/reservations", body={"bytes": 1})
    assert_problem(status, headers, problem, 404, "not-found")
    status, headers, problem = d.api("GET", "/v1/volumes/v/reservations/r-nope")
    assert_problem(status, headers, problem, 404, "not-found")
    status, headers, problem = d.api("DELETE", "/v1/volumes/v/reservations/r-nope")
    assert_problem(status, headers, problem, 404, "not-found")
    status, headers, problem = d.api("POST", f"/v1/volumes/v/reservations/{r['id']}/renew", body={})
    assert_problem(status, headers, problem, 400, "invalid-argument")  # no TTL
    assert d.pool() == before

    release(d, "v", r["id"])
    status, headers, problem = d.api("GET", f"/v1/volumes/v/reservations/{r['id']}")
    assert_problem(status, headers, problem, 404, "not-found")
    release(d, "v", rr["id"])
    assert space(d)["reservedBytes"] == 0 and d.volume("v")["allocatedBytes"] == 0


def test_exports_default_name_listing_in_use_and_errors(make_remapd):
    d = make_remapd(pool_size="32M")
    d.create_volume("v", 8 * MiB)
    d.create_volume("w", 8 * MiB)
    r = reserve(d, "v", {"bytes": MiB})
    rw = reserve(d, "w", {"offsetBytes": 0, "lengthBytes": MiB})
    name = bind_export(d, "v", r["id"])
    assert name == f"v+{r['id']}"
    unbound = d.api("POST", "/v1/exports", body={"volume": "v", "name": "v-extra"})
    assert unbound[0] == 201 and unbound[2].get("reservation") is None, unbound
    names = {e["name"] for e in d.get_ok("/v1/exports")["exports"]}
    assert names == {"v", "w", name, "v-extra"}, names
    for body, code, status in (
            ({"volume": "nope"}, "not-found", 404),
            ({"volume": "v", "reservation": "r-nope"}, None, None),
            ({"volume": "v", "reservation": rw["id"]}, None, None),       # another volume's
            ({"volume": "w", "reservation": rw["id"]}, None, None),       # a range reservation
            ({"volume": "v", "name": "v-extra"}, "already-exists", 409),
            ({"volume": "v", "bogus": 1}, "invalid-argument", 400)):
        st, headers, problem = d.api("POST", "/v1/exports", body=body)
        if code:
            assert_problem(st, headers, problem, status, code)
        else:
            assert 400 <= st < 500 and headers.get("content-type", "").startswith("application/problem+json"), \
                f"{body} -> {st} {problem}"

    h = connect(d, name)
    h.pwrite(b"\x33" * CHUNK, 0)
    st, headers, problem = d.api("DELETE", f"/v1/exports/{quote(name, safe='')}")
    assert_problem(st, headers, problem, 409, "in-use")
    disconnect(d, h)
    assert wait_until(lambda: d.api("DELETE", f"/v1/exports/{quote(name, safe='')}")[0] == 204, timeout=3)
    assert d.api("DELETE", "/v1/exports/v-extra")[0] == 204
    st, headers, problem = d.api("DELETE", "/v1/exports/v")  # a volume's own export
    assert 400 <= st < 500, (st, problem)
    assert {e["name"] for e in d.get_ok("/v1/exports")["exports"]} == {"v", "w"}
    assert reservations(d, "v")[0]["usedBytes"] == CHUNK


def test_volume_create_thick_and_default_reservations(make_remapd):
    d = make_remapd(pool_size="16M")
    status, _, thick = d.api("POST", "/v1/volumes", body={"name": "t", "sizeBytes": 4 * MiB, "reservation": "thick"})
    assert status == 201, thick
    [r] = reservations(d, "t")
    assert (r["name"], r["kind"], r["offsetBytes"], r["bytes"]) == ("thick", "range", 0, 4 * MiB), r
    status, _, v = d.api("POST", "/v1/volumes", body={"name": "p", "sizeBytes": 8 * MiB, "reservation": {"bytes": 2 * MiB}})
    assert status == 201, v
    [rp] = reservations(d, "p")
    assert (rp["name"], rp["kind"], rp["bytes"]) == ("default", "pooled", 2 * MiB), rp
    pool = space(d)
    assert (pool["reservedBytes"], pool["freeBytes"]) == (6 * MiB, 10 * MiB), pool
    assert d.volume("t")["guaranteedWritableBytes"] == 4 * MiB
    assert d.volume("p")["guaranteedWritableBytes"] == 2 * MiB

    # Fill the pool from a third volume; t and p keep what they were promised,
    # p through its own export (the default reservation covers every export).
    d.create_volume("x", 32 * MiB)
    hx = connect(d, "x")
    assert fill(hx, 0, "x", limit=32 * MiB) == 10 * MiB
    ht, hp = connect(d, "t"), connect(d, "p")
    ht.pwrite(pattern("t", 0, 4 * MiB), 0)
    hp.pwrite(pattern("p", 0, 2 * MiB), 4 * MiB)
    expect_enospc(hp, 0)                               # p's reservation is used up
    expect_enospc(hx, 10 * MiB)
    ht.flush()
    hp.flush()
    assert ht.pread(4 * MiB, 0) == pattern("t", 0, 4 * MiB)
    assert hp.pread(2 * MiB, 4 * MiB) == pattern("p", 0, 2 * MiB)
    pool = space(d)
    assert (pool["allocatedBytes"], pool["reservedBytes"], pool["freeBytes"]) == (16 * MiB, 0, 0), pool

    # A thick volume's reservation follows it when it grows, or the grow is refused.
    disconnect(d, hx)
    d.delete_volume("x")
    status, _, body = d.api("PATCH", "/v1/volumes/t", body={"sizeBytes": 6 * MiB})
    assert status == 200, body
    [r] = reservations(d, "t")
    assert (r["bytes"], r["usedBytes"]) == (6 * MiB, 4 * MiB), r
    assert space(d)["reservedBytes"] == 2 * MiB
    status, headers, body = d.api("PATCH", "/v1/volumes/t", body={"sizeBytes": 64 * MiB})
    assert_problem(status, headers, body, 507, "insufficient-space")
    assert d.volume("t")["sizeBytes"] == 6 * MiB


def test_writes_draw_on_the_bound_reservation_then_the_default_then_free_space(make_remapd):
    d = make_remapd(pool_size="2M")  # 32 chunks
    status, _, v = d.api("POST", "/v1/volumes", body={"name": "v", "sizeBytes": 4 * MiB,
                                                      "reservation": {"bytes": 4 * CHUNK}})
    assert status == 201, v
    [default] = reservations(d, "v")
    bound = reserve(d, "v", {"bytes": 4 * CHUNK})
    export = bind_export(d, "v", bound["id"])
    d.create_volume("f", 4 * MiB)
    hf = connect(d, "f")
    assert fill(hf, 0, "f", step=CHUNK, limit=4 * MiB) == 24 * CHUNK

    def used():
        return {r["id"]: r["usedBytes"] // CHUNK for r in reservations(d, "v")}

    hb, hv = connect(d, export), connect(d, "v")
    hb.pwrite(b"\x01" * CHUNK, 0)                     # bound first
    assert used() == {bound["id"]: 1, default["id"]: 0}
    hv.pwrite(b"\x02" * CHUNK, CHUNK)                 # own export: the default only
    assert used() == {bound["id"]: 1, default["id"]: 1}
    hb.pwrite(b"\x03" * (5 * CHUNK), 2 * CHUNK)       # 3 from bound, then 2 from the default
    assert used() == {bound["id"]: 4, default["id"]: 3}
    hb.pwrite(b"\x04" * CHUNK, 7 * CHUNK)             # the default's last chunk
    assert used() == {bound["id"]: 4, default["id"]: 4}
    pool = space(d)
    assert (pool["reservedBytes"], pool["freeBytes"]) == (0, 0), pool
    expect_enospc(hb, 8 * CHUNK)
    expect_enospc(hv, 8 * CHUNK)
    assert hb.pread(8 * CHUNK, 0) == b"\x01" * CHUNK + b"\x02" * CHUNK + b"\x03" * (5 * CHUNK) + b"\x04" * CHUNK


def test_overlapping_range_reservations_each_keep_their_guarantee(make_remapd):
    """Two range reservations share chunks; releasing the first must not
    take the backing from under the second (its range stays writable on a
    full pool)."""
    d = make_remapd(pool_size="8M")
    d.create_volume("v", 8 * MiB)
    d.create_volume("f", 8 * MiB)
    r1 = reserve(d, "v", {"offsetBytes": 0, "lengthBytes": 2 * MiB})
    r2 = reserve(d, "v", {"offsetBytes": MiB, "lengthBytes": 2 * MiB})
    assert space(d)["reservedBytes"] == 3 * MiB
    hf = connect(d, "f")
    assert fill(hf, 0, "f", limit=8 * MiB) == 5 * MiB
    release(d, "v", r1["id"])
    # The chunks only r1 backed come back at the next commit.
    assert wait_until(lambda: space(d)["freeBytes"] == MiB, timeout=3), d.pool()
    assert space(d)["reservedBytes"] == 2 * MiB
    # Take the freed MiB with f, then r2's whole range must still be writable.
    assert fill(hf, 5 * MiB, "f", limit=8 * MiB) == 6 * MiB
    hv = connect(d, "v")
    hv.pwrite(pattern("v", MiB, 2 * MiB), MiB)
    hv.flush()
    assert hv.pread(2 * MiB, MiB) == pattern("v", MiB, 2 * MiB)
    expect_enospc(hv, 0)
    [left] = reservations(d, "v")
    assert (left["id"], left["usedBytes"]) == (r2["id"], 2 * MiB), left
    pool = space(d)
    assert (pool["allocatedBytes"], pool["reservedBytes"], pool["freeBytes"]) == (8 * MiB, 0, 0), pool


# ========================================== 5. release with writes in flight

def test_release_with_writes_in_flight_returns_exactly_the_unused_part(make_remapd):
    """DELETE of a pooled reservation while aio writes drawing on it are in
    flight: every write succeeds, and once the last one completed the pool
    got back exactly what was not used (never twice, never leaked)."""
    d = make_remapd(pool_size="256M")
    d.create_volume("v", 256 * MiB)
    cap = space(d)["capacityBytes"]
    block = MiB
    allocated = 0
    hit = 0
    for attempt in range(3):
        base = attempt * 64 * MiB
        r = reserve(d, "v", {"bytes": 64 * MiB})
        export = bind_export(d, "v", r["id"], name=f"v-r{attempt}")
        h = connect(d, export)
        seq = last_seq(d)
        n = 40
        bufs = [nbd.Buffer.from_bytearray(bytearray(pattern("v", base + i * block, block))) for i in range(n)]
        cookies = [h.aio_pwrite(bufs[i], base + i * block) for i in range(n)]

        deleted = threading.Event()
        done = threading.Event()
        samples, problems = [], []

        def deleter():
            api = Api(d.api_sock)
            try:
                status, _, body = api("DELETE", f"/v1/volumes/v/reservations/{r['id']}")
                if status != 204:
                    problems.append(f"DELETE -> {status} {body}")
                deleted.set()
                while not done.is_set():
                    p = api.ok("GET", "/v1/pools/default")
                    samples.append(p)
                    time.sleep(0.002)
            except Exception as e:  # reported by the main thread
                problems.append(repr(e))
                deleted.set()
            finally:
                api.close()

        t = threading.Thread(target=deleter)
        t.start()
        in_flight_at_delete = None
        results = {}
        deadline = time.monotonic() + 30
        while len(results) < n and time.monotonic() < deadline:
            h.poll(1)
            if in_flight_at_delete is None and deleted.is_set():
                in_flight_at_delete = h.aio_in_flight()
            for c in cookies:
                if c not in results:
                    try:
                        if h.aio_command_completed(c):
                            results[c] = None
                    except nbd.Error as e:
                        results[c] = e
        done.set()
        t.join(10)
        assert not problems, problems
        assert len(results) == n, f"{n - len(results)} writes never completed (a hang)"
        failed = {i: results[c] for i, c in enumerate(cookies) if results[c] is not None}
        assert not failed, f"writes failed: {failed}"
        if in_flight_at_delete is None:
            in_flight_at_delete = 0
        hit += in_flight_at_delete > 0
        for p in samples:
            check_space(p)

        allocated += n * block
        pool = space(d)
        assert (pool["allocatedBytes"], pool["reservedBytes"], pool["freeBytes"]) == \
            (allocated, 0, cap - allocated), f"attempt {attempt}: {pool}"
        status, _, _ = d.api("GET", f"/v1/volumes/v/reservations/{r['id']}")
        assert status == 404
        released = [e for e in events_since(d, seq) if e["type"] == "reservation.released"]
        assert [e.get("reservation") for e in released] == [r["id"]], released
        for i in range(n):
            assert h.pread(block, base + i * block) == pattern("v", base + i * block, block)
        disconnect(d, h)
    assert hit > 0, "the DELETE never overlapped writes in flight (test too slow to race)"
    assert d.volume("v")["allocatedBytes"] == allocated


# ============================================================== 6. leases

def at_phase(phase):
    """Sleep until the wall clock's fraction of a second is `phase`:
    a lease made late in a second shows whether its TTL is cut short by
    whole-second rounding."""
    while abs(time.time() % 1 - phase) > 0.02:
        time.sleep(0.005)


def test_lease_expires_after_ttl_and_renew_extends_it(make_remapd):
    """Leases (ttlSeconds=2) end no sooner than 2 s after they were asked
    for, and no later than 2 s + 1.5 s after; renewing keeps one alive;
    the written part of an expired range lease stays; reservation.expired
    events name them."""
    d = make_remapd(pool_size="32M")
    d.create_volume("v", 16 * MiB)
    seq = last_seq(d)
    at_phase(0.9)
    asked = {}
    asked["pooled"] = time.time()
    pooled = reserve(d, "v", {"bytes": 4 * MiB, "ttlSeconds": 2})
    asked["ranged"] = time.time()
    ranged = reserve(d, "v", {"offsetBytes": 8 * MiB, "lengthBytes": 2 * MiB, "ttlSeconds": 2})
    kept = reserve(d, "v", {"bytes": MiB})
    asked["renewed"] = time.time()
    renewed = reserve(d, "v", {"bytes": MiB, "ttlSeconds": 2, "name": "renewed"})
    answered = time.time()
    for r in (pooled, ranged, renewed):
        assert asked["pooled"] + 2 - 1.05 <= parse_time(r["expiresAt"]) <= answered + 2 + 1, r
    assert kept.get("expiresAt") is None
    assert space(d)["reservedBytes"] == 8 * MiB
    # Part of the range is written: that part stays when the lease ends.
    h = connect(d, "v")
    h.pwrite(pattern("v", 8 * MiB, CHUNK), 8 * MiB)
    h.flush()

    leases = {pooled["id"]: "pooled", ranged["id"]: "ranged"}
    gone = {}
    last_renew = asked["renewed"]
    next_renew = answered + 0.8
    while time.time() - asked["pooled"] < 7:
        now = time.time()
        ids = {r["id"] for r in reservations(d, "v")}
        for rid, what in leases.items():
            if rid not in ids and rid not in gone:
                gone[rid] = now
                early = asked[what] + 2 - now
                assert early <= 0.05, f"the {what} lease (ttl 2) ended {early:.2f}s before its TTL"
        assert renewed["id"] in ids, \
            f"the renewed lease ended {now - last_renew:.2f}s after its last renew (ttl 2)"
        if now >= next_renew:
            # Renew late in a second too: the new TTL must not be cut short.
            at_phase(0.9)
            last_renew = time.time()
            status, _, body = d.api("POST", f"/v1/volumes/v/reservations/{renewed['id']}/renew", body={})
            assert status == 200, f"renew -> {status} {body}"
            assert parse_time(body["expiresAt"]) >= last_renew + 2 - 1.05, body
            next_renew = last_renew + 1.0
        time.sleep(0.1)
    for rid, what in leases.items():
        assert rid in gone, f"the {what} lease (ttl 2) still there after 7 s"
        assert gone[rid] - asked[what] <= 2 + 1.5 + 0.2, \
            f"the {what} lease ended {gone[rid] - asked[what]:.2f}s after it was made (ttl 2)"
    ids = {r["id"] for r in reservations(d, "v")}
    assert ids == {kept["id"], renewed["id"]}, "the renewed lease must still be there"
    status, _, body = d.api("POST", f"/v1/volumes/v/reservations/{renewed['id']}/renew", body={"ttlSeconds": 60})
    assert status == 200 and parse_time(body["expiresAt"]) >= time.time() + 58, body

    assert wait_until(lambda: space(d)["allocatedBytes"] == CHUNK, timeout=3), d.pool()
    assert space(d)["reservedBytes"] == 2 * MiB
    assert h.pread(CHUNK, 8 * MiB) == pattern("v", 8 * MiB, CHUNK)
    assert h.pread(MiB, 9 * MiB) == bytes(MiB)
    expired = [e for e in events_since(d, seq) if e["type"] == "reservation.expired"]
    assert sorted(e.get("reservation") for e in expired) == sorted([pooled["id"], ranged["id"]]), expired
    assert all(e.get("volume") == "v" for e in expired), expired
    status, headers, problem = d.api("POST", f"/v1/volumes/v/reservations/{pooled['id']}/renew", body={})
    assert_problem(status, headers, problem, 404, "not-found")


@pytest.mark.parametrize("how", ["kill9", "sigterm"])
def test_lease_expires_across_a_restart(make_remapd, how):
    d = make_remapd(pool_size="32M")
    d.create_volume("v", 16 * MiB)
    short = reserve(d, "v", {"bytes": 4 * MiB, "ttlSeconds": 2})
    survives = reserve(d, "v", {"bytes": 2 * MiB, "ttlSeconds": 8})
    kept = reserve(d, "v", {"offsetBytes": 0, "lengthBytes": MiB})
    long = reserve(d, "v", {"bytes": CHUNK, "ttlSeconds": 100})
    # A renew's TTL is a 2xx change too: renewing without ttlSeconds
    # afterwards must mean the same before and after the restart.
    status, _, body = d.api("POST", f"/v1/volumes/v/reservations/{long['id']}/renew", body={"ttlSeconds": 200})
    assert status == 200, body
    t = time.time()
    status, _, body = d.api("POST", f"/v1/volumes/v/reservations/{long['id']}/renew", body={})
    assert status == 200, body
    default_ttl = next((ttl for ttl in (100, 200) if abs(parse_time(body["expiresAt"]) - t - ttl) <= 1.5), None)
    assert default_ttl, f"renew without ttlSeconds after a TTL of 100 and a renew of 200: {body}"
    assert space(d)["reservedBytes"] == 7 * MiB + CHUNK
    if how == "kill9":
        d.kill9()
    else:
        d.terminate()
    time.sleep(3)
    d.start()
    assert wait_until(lambda: {r["id"] for r in reservations(d, "v")} == {survives["id"], kept["id"], long["id"]},
                      timeout=2), reservations(d, "v")
    pool = space(d)
    assert pool["reservedBytes"] == 3 * MiB + CHUNK and pool["allocatedBytes"] == 0, pool
    [s] = [r for r in reservations(d, "v") if r["id"] == survives["id"]]
    assert s["expiresAt"] == survives["expiresAt"], (s, survives)
    events = events_since(d, 0)
    assert short["id"] in [e.get("reservation") for e in events if e["type"] == "reservation.expired"], events
    # The surviving lease still ends on time after the restart.
    assert wait_until(lambda: {r["id"] for r in reservations(d, "v")} == {kept["id"], long["id"]}, timeout=8), \
        reservations(d, "v")
    assert space(d)["reservedBytes"] == MiB + CHUNK
    t = time.time()
    status, _, body = d.api("POST", f"/v1/volumes/v/reservations/{long['id']}/renew", body={})
    assert status == 200, body
    assert abs(parse_time(body["expiresAt"]) - t - default_ttl) <= 1.5, \
        f"renew without ttlSeconds gave {parse_time(body['expiresAt']) - t:.0f} s after the restart, " \
        f"{default_ttl} s before it: {body}"


# ============================================ 7. thresholds and the queue

def low_space(d, since, pool):
    return [e for e in events_since(d, since) if e["type"] == "pool.low-space" and e.get("pool") == pool]


def test_low_space_threshold_events_fire_once_per_crossing(make_remapd):
    d = make_remapd(pool_size="1M")
    make_pool(d, "t", 100 * CHUNK, chunkSizeBytes=CHUNK)  # 1 chunk = 1 %
    assert d.pool("t")["lowSpaceThresholds"] == [80, 90, 95]
    status, _, pool = d.api("PATCH", "/v1/pools/t", body={"lowSpaceThresholds": [50, 75]})
    assert status == 200 and pool["lowSpaceThresholds"] == [50, 75], pool
    d.create_volume("v", 8 * MiB, pool="t")
    d.create_volume("w", 8 * MiB, pool="t")
    h = connect(d, "v")
    seq = last_seq(d)

    def write_chunks(first, count):
        for c in range(first, first + count):
            h.pwrite(b"\x44" * CHUNK, c * CHUNK)
        h.flush()

    def seen(expect):
        """The low-space events so far, by threshold, once they settled
        (the daemon may look at the pool on a timer)."""
        def get():
            return [50 if 50 <= e.get("percent", -1) < 75 else 75 if e.get("percent", -1) >= 75 else None
                    for e in low_space(d, seq, "t")]
        wait_until(lambda: get() == expect, timeout=1.5)
        time.sleep(0.6)
        return get()

    def committed(percent):
        p = check_space(d.pool("t"))
        return (p["allocatedBytes"] + p["reservedBytes"]) // CHUNK == percent

    write_chunks(0, 40)                               # 40 %
    assert seen([]) == []
    r = reserve(d, "w", {"bytes": 15 * CHUNK})        # 55 %: committed = allocated + reserved
    assert seen([50]) == [50]
    write_chunks(40, 5)                               # 60 %
    h.trim(8 * CHUNK, 37 * CHUNK)                     # 52 %, still above
    h.flush()
    assert wait_until(lambda: committed(52), timeout=3), d.pool("t")
    write_chunks(37, 8)                               # 60 % again
    assert seen([50]) == [50], "crossing upward again without dropping below fired again"

    release(d, "w", r["id"])                          # 45 %: below
    assert committed(45)
    assert seen([50]) == [50]
    write_chunks(45, 10)                              # 55 %: a second crossing
    assert seen([50, 50]) == [50, 50]
    write_chunks(55, 25)                              # 80 %: crosses 75
    assert seen([50, 50, 75]) == [50, 50, 75]
    assert low_space(d, seq, "default") == []

    # A dip below and back that lasts a moment is still a crossing.
    h.trim(40 * CHUNK, 40 * CHUNK)                    # 40 %
    h.flush()
    assert wait_until(lambda: committed(40), timeout=3), d.pool("t")
    write_chunks(40, 20)                              # 60 % at once
    assert seen([50, 50, 75, 50]) == [50, 50, 75, 50], \
        "a short dip below 50 % and back up gave no second pool.low-space event"

    for body in ({"lowSpaceThresholds": [0]}, {"lowSpaceThresholds": [101]}, {"lowSpaceThresholds": "x"},
                 {"onNoSpace": {"queueSeconds": 0}}, {"onNoSpace": {"queueSeconds": 301}},
                 {"onNoSpace": "wait"}, {"bogus": 1}, {}, {"lowSpaceThresholds": [50, 50]},
                 {"lowSpaceThresholds": list(range(1, 12))}):
        status, headers, problem = d.api("PATCH", "/v1/pools/t", body=body)
        assert_problem(status, headers, problem, 400, "invalid-argument")
    assert d.pool("t")["lowSpaceThresholds"] == [50, 75] and d.pool("t")["onNoSpace"] == "error"


def test_queued_write_waits_for_a_grown_pool_then_succeeds(make_remapd):
    d = make_remapd(pool_size="1M")
    pool = make_pool(d, "q", 16 * CHUNK, chunkSizeBytes=CHUNK)
    sid = pool["suppliers"][0]["id"]
    status, _, pool = d.api("PATCH", "/v1/pools/q", body={"onNoSpace": {"queueSeconds": 5}})
    assert status == 200 and pool["onNoSpace"] == {"queueSeconds": 5}, pool
    d.create_volume("v", 8 * MiB, pool="q")
    h = connect(d, "v")
    reader = connect(d, "v")
    h.pwrite(pattern("v", 0, MiB), 0)
    h.flush()
    assert check_space(d.pool("q"))["freeBytes"] == 0
    seq = last_seq(d)

    for grow in ("patch", "post"):
        off = (2 if grow == "patch" else 3) * MiB
        data = pattern("v", off, 4096)
        buf = nbd.Buffer.from_bytearray(bytearray(data))
        t0 = time.monotonic()
        cookie = h.aio_pwrite(buf, off)
        assert aio_wait(h, [cookie], 1.0) == {}, f"{grow}: the write did not wait for space"
        # Reads (another connection) are served meanwhile.
        t1 = time.monotonic()
        assert reader.pread(4096, 0) == pattern("v", 0, 4096)
        assert time.monotonic() - t1 < 0.5
        if grow == "patch":
            status, _, pool = d.api("PATCH", f"/v1/pools/q/suppliers/{sid}", body={"sizeBytes": 32 * CHUNK})
        else:
            status, _, pool = d.api("POST", "/v1/pools/q/suppliers", body={
                "kind": "file", "path": str(d.state_dir / "pools" / "q2.img"), "sizeBytes": 16 * CHUNK})
        assert status in (200, 201), pool
        done = aio_wait(h, [cookie], 6.0)
        assert done == {cookie: None}, f"{grow}: queued write -> {done}"
        assert time.monotonic() - t0 < 5.0
        assert h.pread(4096, off) == data
        pool = check_space(d.pool("q"))
        assert pool["capacityBytes"] == (32 if grow == "patch" else 48) * CHUNK, pool
        # Fill the new space so the next round starts full again.
        filled = fill(h, 4 * MiB if grow == "patch" else 6 * MiB, "v", step=CHUNK)
        assert check_space(d.pool("q"))["freeBytes"] == 0, filled
    grown = [e for e in events_since(d, seq) if e["type"] == "pool.grown"]
    assert len(grown) == 2 and all(e.get("pool") == "q" for e in grown), grown
    d.restart()
    pool = check_space(d.pool("q"))
    assert pool["capacityBytes"] == 48 * CHUNK and pool["onNoSpace"] == {"queueSeconds": 5}, pool


def test_queued_write_is_released_by_a_reservation_release(make_remapd):
    d = make_remapd(pool_size="1M")
    make_pool(d, "q", 16 * CHUNK, chunkSizeBytes=CHUNK)
    d.api("PATCH", "/v1/pools/q", body={"onNoSpace": {"queueSeconds": 5}})
    d.create_volume("v", 8 * MiB, pool="q")
    d.create_volume("w", 8 * MiB, pool="q")
    r = reserve(d, "w", {"bytes": 2 * CHUNK})
    h = connect(d, "v")
    for c in range(14):
        h.pwrite(b"\x55" * CHUNK, c * CHUNK)
    cookie = h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(b"\x66" * 4096)), 20 * CHUNK)
    assert aio_wait(h, [cookie], 1.0) == {}, "the write did not wait for space"
    release(d, "w", r["id"])
    assert aio_wait(h, [cookie], 4.0) == {cookie: None}
    assert h.pread(4096, 20 * CHUNK) == b"\x66" * 4096
    pool = check_space(d.pool("q"))
    assert (pool["allocatedBytes"], pool["reservedBytes"], pool["freeBytes"]) == (15 * CHUNK, 0, CHUNK), pool


@pytest.mark.parametrize("queue", [1, 2])
def test_queued_write_fails_with_enospc_after_queue_seconds(make_remapd, queue):
    d = make_remapd(pool_size="1M")
    make_pool(d, "q", 16 * CHUNK, chunkSizeBytes=CHUNK)
    status, _, pool = d.api("PATCH", "/v1/pools/q", body={"onNoSpace": {"queueSeconds": queue}})
    assert status == 200, pool
    d.create_volume("v", 8 * MiB, pool="q")
    h = connect(d, "v")
    h.pwrite(b"\x77" * MiB, 0)
    seq = last_seq(d)
    t0 = time.monotonic()
    with pytest.raises(nbd.Error) as exc:
        h.pwrite(b"\x78" * 4096, 4 * MiB)
    waited = time.monotonic() - t0
    assert exc.value.errnum == errno.ENOSPC, exc.value
    assert queue - 0.2 <= waited <= queue + 1.5, f"failed after {waited:.2f}s with queueSeconds={queue}"
    no_space = [e for e in events_since(d, seq) if e["type"] == "pool.no-space"]
    assert no_space and no_space[0].get("volume") == "v" and no_space[0].get("offsetBytes") == 4 * MiB, no_space
    # Back to "error": at once again.
    status, _, pool = d.api("PATCH", "/v1/pools/q", body={"onNoSpace": "error"})
    assert status == 200 and pool["onNoSpace"] == "error", pool
    assert expect_enospc(h, 5 * MiB) < 0.1
    assert h.pread(4096, 0) == b"\x77" * 4096
    check_space(d.pool("q"))


def test_supplier_patch_is_grow_only(make_remapd):
    d = make_remapd(pool_size="1M")
    pool = make_pool(d, "g", 16 * CHUNK, chunkSizeBytes=CHUNK)
    sid = pool["suppliers"][0]["id"]
    for body in ({"sizeBytes": 8 * CHUNK}, {"sizeBytes": "x"}, {}, {"sizeBytes": 32 * CHUNK, "bogus": 1}):
        status, headers, problem = d.api("PATCH", f"/v1/pools/g/suppliers/{sid}", body=body)
        assert_problem(status, headers, problem, 400, "invalid-argument")
    status, headers, problem = d.api("PATCH", "/v1/pools/g/suppliers/nope", body={"sizeBytes": 32 * CHUNK})
    assert_problem(status, headers, problem, 404, "not-found")
    assert d.pool("g")["capacityBytes"] == 16 * CHUNK
    status, _, pool = d.api("PATCH", f"/v1/pools/g/suppliers/{sid}", body={"sizeBytes": 20 * CHUNK})
    assert status == 200 and pool["capacityBytes"] == 20 * CHUNK and pool["freeBytes"] == 20 * CHUNK, pool
    assert pool["suppliers"][0]["sizeBytes"] == 20 * CHUNK
    assert os.path.getsize(pool["suppliers"][0]["path"]) == 20 * CHUNK
    d.restart(kill9=True)
    assert check_space(d.pool("g"))["capacityBytes"] == 20 * CHUNK


# ======================================================== events: the stream

def open_stream(d, last_event_id=None, timeout=5):
    conn = http.client.HTTPConnection("localhost", timeout=timeout)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(d.api_sock))
    conn.sock = s
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    conn.request("GET", "/v1/events", headers=headers)
    resp = conn.getresponse()
    assert resp.status == 200, (resp.status, resp.read())
    assert resp.getheader("Content-Type", "").startswith("text/event-stream"), resp.getheaders()
    return conn, resp


def next_event(resp):
    """The next SSE event: (id, event, data as JSON); comments skipped."""
    fields = {}
    while True:
        line = resp.readline().decode()
        assert line, "the event stream ended"
        line = line.rstrip("\r\n")
        if not line:
            if "data" in fields:
                return int(fields["id"]), fields.get("event"), json.loads(fields["data"])
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        fields[key] = value[1:] if value.startswith(" ") else value


def test_events_stream_resumes_with_last_event_id(make_remapd):
    d = make_remapd(pool_size="32M")
    d.create_volume("v", 8 * MiB)
    seq = last_seq(d)
    conn, resp = open_stream(d, last_event_id=seq)
    try:
        ids = [reserve(d, "v", {"bytes": CHUNK})["id"] for _ in range(3)]
        for rid in ids:
            release(d, "v", rid)
        got = []
        while len(got) < 3:
            sid, kind, data = next_event(resp)
            assert sid == data["seq"] and kind == data["type"], (sid, kind, data)
            assert sid > seq, f"event {sid} is not after Last-Event-ID {seq}"
            if kind == "reservation.released":
                got.append((sid, data["reservation"]))
        assert [rid for _, rid in got] == ids, got
    finally:
        conn.close()
    # Resuming after the first released event replays the other two.
    conn, resp = open_stream(d, last_event_id=got[0][0])
    try:
        replay = []
        while len(replay) < 2:
            sid, kind, data = next_event(resp)
            if kind == "reservation.released":
                replay.append((sid, data["reservation"]))
        assert replay == got[1:], (replay, got)
    finally:
        conn.close()
    polled = [(e["seq"], e.get("reservation")) for e in events_since(d, seq) if e["type"] == "reservation.released"]
    assert polled == got, (polled, got)
    for bad in ("x", "-1", ""):
        status, headers, problem = d.api("GET", f"/v1/events?since={bad}")
        assert_problem(status, headers, problem, 400, "invalid-argument")


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
