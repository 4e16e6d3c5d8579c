"""Snapshots, clones, revert, changed blocks, raw export and import (issue 6;
docs/api-v1.md, "Snapshots and clones").

Every test drives the real daemon: REST over the unix socket (curl), data
through libnbd's Python binding, and `qemu-img compare` between the NBD
exports (`VOLUME@SNAPSHOT` for snapshots) and local raw files. A model
(`Model`) keeps, for every image, the bytes it must read and which
physical chunk each virtual chunk maps (labels, shared by copy on write),
so the pool's allocation, each image's allocation and a snapshot's
unique/shared bytes are predicted exactly, chunk for chunk.

The kill -9 variants are in test_snapshot_crash.py.
"""

import errno
import json
import os
import subprocess
import time
import uuid
from random import Random

import pytest

from harness import (CHUNK, KiB, MiB, REMAPCTL, assert_problem, check_space, chunk_ranges, clean_env, connect,
                     disconnect, first_difference, qemu_img_compare, read_all, run, sha256, space, wait_operation,
                     wait_until)

import nbd  # noqa: E402  (python3-libnbd; a missing package must fail, not skip)

SNAPSHOT_FIELDS = {"id", "name", "volume", "pool", "sizeBytes", "createdAt", "exportName",
                   "uniqueBytes", "sharedBytes", "reservedBytes"}
CHECK_FIELDS = {"pool", "ok", "usedChunks", "referencedChunks", "leakedChunks", "leakedCount",
                "unbackedChunks", "unbackedCount", "conflicts", "conflictCount"}
# =================================================================== the model

class Model:
    """What every image (volume, snapshot `VOL@SNAP`, clone) must read, and
    which physical chunk (a label) each of its virtual chunks maps. A write
    into a chunk that another image maps too, or into a hole, gets a new
    label (copy on write / allocation); a write into a chunk only this
    image maps keeps it."""

    def __init__(self, chunk=CHUNK):
        self.chunk = chunk
        self.data = {}   # image -> bytearray
        self.maps = {}   # image -> {virtual chunk: label}
        self._labels = 0

    def _label(self):
        self._labels += 1
        return self._labels

    def create(self, name, size):
        self.data[name] = bytearray(size)
        self.maps[name] = {}

    def shared(self, name, c, label):
        return any(m.get(c) == label for other, m in self.maps.items() if other != name)

    def write(self, name, offset, data):
        self.data[name][offset:offset + len(data)] = data
        m = self.maps[name]
        for c in range(offset // self.chunk, (offset + len(data) - 1) // self.chunk + 1):
            label = m.get(c)
            if label is None or self.shared(name, c, label):
                m[c] = self._label()

    def copy(self, src, dst):
        """A snapshot or a clone: the same bytes and the same chunks."""
        self.data[dst] = bytearray(self.data[src])
        self.maps[dst] = dict(self.maps[src])

    def revert(self, vol, snap):
        self.copy(snap, vol)

    def delete(self, name):
        del self.data[name]
        del self.maps[name]

    def bytes(self, name):
        return bytes(self.data[name])

    def mapped_bytes(self, name):
        return len(self.maps[name]) * self.chunk

    def pool_bytes(self):
        return len({label for m in self.maps.values() for label in m.values()}) * self.chunk

    def pool_chunks(self):
        return self.pool_bytes() // self.chunk

    def unique_bytes(self, name):
        return sum(self.chunk for c, label in self.maps[name].items()
                     if not self.shared(name, c, label))

    def chunks(self, name):
        return set(self.maps[name])


# =================================================================== helpers

def pool_check(d, pool="default", chunks=None, backed=0, timeout=5.0):
    """GET /v1/pools/{pool}/check: ok, nothing leaked, unbacked or doubly
    referenced; once settled (chunks being reclaimed are used but not
    leaked), used = referenced (= `chunks` when given) and the pool's
    allocatedBytes is exactly that, less `backed`: the bytes of
    range-reserved chunks not written yet (mapped, so used and referenced,
    but counted as reserved)."""

    def settled():
        body = d.get_ok(f"/v1/pools/{pool}/check")
        alloc = d.pool(pool)["allocatedBytes"]
        good = body.get("usedChunks") == body.get("referencedChunks") \
            and (chunks is None or body.get("referencedChunks") == chunks) \
            and alloc + backed == body.get("usedChunks", -1) * CHUNK
        return body, alloc, good

    deadline = time.monotonic() + timeout
    body, alloc, good = settled()
    while not good and time.monotonic() < deadline:
        time.sleep(0.05)
        body, alloc, good = settled()
    assert set(body) == CHECK_FIELDS, f"pool check fields: {sorted(body)}"
    assert body["pool"] == pool, body
    assert (body["leakedCount"], body["unbackedCount"], body["conflictCount"]) == (0, 0, 0), \
        f"pool check found problems: {body}"
    assert body["leakedChunks"] == [] and body["unbackedChunks"] == [] and body["conflicts"] == [], body
    assert body["ok"] is True, body
    assert body["usedChunks"] == body["referencedChunks"], f"used != referenced after {timeout}s: {body}"
    if chunks is not None:
        assert body["referencedChunks"] == chunks, \
            f"pool check: {body['referencedChunks']} chunks referenced, the model says {chunks}: {body}"
    assert alloc + backed == body["usedChunks"] * CHUNK, \
        f"pool allocatedBytes {alloc} + {backed} backed unwritten != usedChunks {body['usedChunks']} x {CHUNK}"
    check_space(d.pool(pool))
    return body


def snap_path(ref):
    """/v1/snapshots/{ref} with `@` sent raw (the contract accepts raw and %40)."""
    return f"/v1/snapshots/{ref}"


def check_snapshot(s, volume=None, name=None, size=None, pool="default"):
    assert isinstance(s, dict) and set(s) == SNAPSHOT_FIELDS, f"snapshot fields: {s}"
    uuid.UUID(s["id"])
    if volume is not None:
        assert s["volume"] == volume, s
    if name is not None:
        assert s["name"] == name, s
    if size is not None:
        assert s["sizeBytes"] == size, s
    assert s["pool"] == pool, s
    assert s["exportName"] == f"{s['volume']}@{s['name']}", s
    assert s["createdAt"].endswith("Z") and "T" in s["createdAt"], s
    for key in ("uniqueBytes", "sharedBytes", "reservedBytes"):
        assert isinstance(s[key], int) and s[key] >= 0 and s[key] % CHUNK == 0, s
    return s


def take(d, volume, name, expect=201, pool="default"):
    status, headers, body = d.api("POST", f"/v1/volumes/{volume}/snapshots", body={"name": name})
    assert status == expect, f"snapshot {volume}@{name} -> {status} {body}"
    if expect in (200, 201):
        check_snapshot(body, volume, name, pool=pool)
    return body


def snapshot(d, ref):
    return check_snapshot(d.get_ok(snap_path(ref)))


def delete_snapshot(d, ref):
    status, _, body = d.api("DELETE", snap_path(ref))
    assert status == 204, f"DELETE snapshot {ref} -> {status} {body}"


def clone(d, ref, name, expect=201, **extra):
    status, _, body = d.api("POST", snap_path(ref) + "/clone", body={"name": name, **extra})
    assert status == expect, f"clone {ref} as {name} -> {status} {body}"
    return body


def changes(d, ref, base=None):
    path = snap_path(ref) + "/changes" + (f"?base={base}" if base is not None else "")
    body = d.get_ok(path)
    assert set(body) == {"snapshot", "base", "sizeBytes", "granularityBytes", "changedBytes", "ranges"}, body
    ranges = [(r["offsetBytes"], r["lengthBytes"]) for r in body["ranges"]]
    for r in body["ranges"]:
        assert set(r) == {"offsetBytes", "lengthBytes"} and r["lengthBytes"] > 0, body
    assert ranges == sorted(ranges), f"ranges not sorted: {ranges}"
    for (a, la), (b, _) in zip(ranges, ranges[1:]):
        assert a + la < b, f"ranges overlap or are not merged: {ranges}"
    assert body["changedBytes"] == sum(length for _, length in ranges), body
    return body, ranges


def chunks_of(offset, length, chunk=CHUNK):
    return set(range(offset // chunk, (offset + length - 1) // chunk + 1))


def assert_reads(d, name, expected, what=None):
    """Export `name` reads exactly `expected` (sha256 over NBD)."""
    h = connect(d, name)
    assert h.get_size() == len(expected), f"{name}: size {h.get_size()}, expected {len(expected)}"
    got = read_all(h, len(expected))
    disconnect(d, h)
    if sha256(got) != sha256(expected):
        off = first_difference(got, expected)
        chunk = off // CHUNK
        pytest.fail(f"{what or name}: content differs from the model first at byte {off} (chunk {chunk}): "
                    f"got {got[off:off + 16].hex()}, expected {expected[off:off + 16].hex()}")


def write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def expect_eperm(fn, what):
    try:
        fn()
    except nbd.Error as e:
        assert e.errnum == errno.EPERM, f"{what}: expected EPERM, got {e} (errno {e.errnum})"
        return
    pytest.fail(f"{what} succeeded on a read-only snapshot export")


def assert_read_only(d, name, size):
    """NBD_FLAG_READ_ONLY, and WRITE/TRIM/WRITE_ZEROES refused with EPERM by
    the server itself (libnbd's client-side checks turned off)."""
    h = connect(d, name)
    assert h.is_read_only(), f"{name}: the handshake does not say read-only"
    # libnbd refuses on its own (strict mode): EPERM too.
    expect_eperm(lambda: h.pwrite(b"\x01" * 4096, 0), f"{name}: write (libnbd strict)")
    disconnect(d, h)
    h = connect(d, name, strict=False)
    assert h.is_read_only()
    expect_eperm(lambda: h.pwrite(b"\x01" * 4096, 0), f"{name}: WRITE")
    expect_eperm(lambda: h.pwrite(b"\x02" * CHUNK, size - CHUNK, nbd.CMD_FLAG_FUA), f"{name}: WRITE+FUA")
    expect_eperm(lambda: h.trim(CHUNK, 0), f"{name}: TRIM")
    expect_eperm(lambda: h.zero(CHUNK, CHUNK), f"{name}: WRITE_ZEROES")
    # The connection is still good for reads.
    assert len(h.pread(4096, 0)) == 4096
    disconnect(d, h)


def rand(seed, n):
    return Random(seed).randbytes(n)


def pwrite(h, model, image, offset, data):
    h.pwrite(data, offset)
    model.write(image, offset, data)


def assert_images(d, model, tmp_path, names, qemu=True):
    """Every image reads what the model says (sha256 over NBD; and
    qemu-img compare against a raw file of the model)."""
    for name in names:
        expected = model.bytes(name)
        assert_reads(d, name, expected)
        if qemu:
            path = write_file(tmp_path / f"model-{name.replace('@', '_at_')}.raw", expected)
            qemu_img_compare(path, d.nbd_uri(name))
            path.unlink()


def assert_usage(d, model, volumes=(), snapshots=()):
    """allocatedBytes of volumes, uniqueBytes/sharedBytes of snapshots and
    the pool's allocatedBytes, as the model predicts."""
    for v in volumes:
        vol = d.volume(v)
        assert vol["allocatedBytes"] == model.mapped_bytes(v), \
            f"volume {v}: allocatedBytes {vol['allocatedBytes']}, model {model.mapped_bytes(v)}"
    for s in snapshots:
        info = snapshot(d, s)
        unique = model.unique_bytes(s)
        shared = model.mapped_bytes(s) - unique
        assert (info["uniqueBytes"], info["sharedBytes"]) == (unique, shared), \
            f"snapshot {s}: unique/shared {info['uniqueBytes']}/{info['sharedBytes']}, model {unique}/{shared}"
    assert wait_until(lambda: d.pool()["allocatedBytes"] == model.pool_bytes(), timeout=5), \
        f"pool allocatedBytes {d.pool()['allocatedBytes']}, model {model.pool_bytes()}"


# =================================================================== patterns

SIZE = 16 * MiB  # 256 chunks


def write_p1(h, model, image):
    """Whole chunks 0-31 (one 2 MiB write), chunks 32-47 one by one, and
    sub-chunk pieces: 4 KiB into chunk 60, 100 KiB + 512 across chunks 70-72,
    8 KiB straddling chunks 80/81, 512 bytes at the end of the volume."""
    pwrite(h, model, image, 0, rand(101, 32 * CHUNK))
    for c in range(32, 48):
        pwrite(h, model, image, c * CHUNK, rand(1000 + c, CHUNK))
    pwrite(h, model, image, 60 * CHUNK + 8 * KiB, rand(102, 4 * KiB))
    pwrite(h, model, image, 70 * CHUNK + 512, rand(103, 100 * KiB + 512))
    pwrite(h, model, image, 81 * CHUNK - 4 * KiB, rand(104, 8 * KiB))
    pwrite(h, model, image, SIZE - 512, rand(105, 512))
    h.flush()


def write_p2(h, model, image):
    """Mostly sub-chunk overwrites of shared chunks (4 KiB writes into 64 KiB
    chunks: the rest of each chunk is copied), some whole-chunk overwrites,
    writes into holes, and a chunk written twice."""
    for i, c in enumerate(range(0, 16)):
        pwrite(h, model, image, c * CHUNK + (i % 16) * 4 * KiB, rand(2000 + c, 4 * KiB))
    pwrite(h, model, image, 20 * CHUNK, rand(201, 4 * CHUNK))               # whole chunks 20-23
    pwrite(h, model, image, 40 * CHUNK + 60 * KiB, rand(202, 8 * KiB))      # straddles 40/41
    pwrite(h, model, image, 60 * CHUNK, rand(203, 512))                     # the P1 piece's chunk
    pwrite(h, model, image, 100 * CHUNK + 4 * KiB, rand(204, 4 * KiB))      # a hole
    pwrite(h, model, image, 120 * CHUNK, rand(205, 2 * CHUNK))              # holes, whole
    pwrite(h, model, image, 5 * CHUNK + 32 * KiB, rand(206, 4 * KiB))       # chunk 5 again
    h.flush()


def write_p3(h, model, image):
    for c in range(0, 8):
        pwrite(h, model, image, c * CHUNK + 12 * KiB, rand(3000 + c, 4 * KiB))
    pwrite(h, model, image, 22 * CHUNK, rand(301, 4 * CHUNK))               # whole 22-25
    pwrite(h, model, image, 71 * CHUNK + 1024, rand(302, 3 * KiB))
    pwrite(h, model, image, 130 * CHUNK + 512, rand(303, 4 * KiB))          # a hole
    pwrite(h, model, image, 255 * CHUNK, rand(304, CHUNK))                  # the last chunk
    h.flush()


# =================================================================== tests

def test_snapshot_objects_names_listing_and_errors(remapd):
    """Create (201, then 200 for the same name), get by id, VOLUME@NAME raw
    and %40, lists, NBD_OPT_LIST, in-use while read, delete, every error;
    a snapshot of a volume without reservations costs no space."""
    d = remapd
    d.create_volume("v", 4 * MiB)
    d.create_volume("w", 4 * MiB)
    h = connect(d, "v")
    h.pwrite(rand(1, 3 * CHUNK), 0)
    h.flush()
    disconnect(d, h)
    before = space(d)

    s1 = take(d, "v", "s1")
    assert s1["sizeBytes"] == 4 * MiB
    assert (s1["uniqueBytes"], s1["sharedBytes"], s1["reservedBytes"]) == (0, 3 * CHUNK, 0), s1
    assert space(d) == before, "a snapshot of a volume without reservations must cost no space"
    again = take(d, "v", "s1", expect=200)
    assert again == s1
    s2 = take(d, "v", "s2")
    assert s2["id"] != s1["id"]
    ws = take(d, "w", "s1")  # names are per volume

    assert snapshot(d, s1["id"]) == s1
    assert snapshot(d, "v@s1") == s1
    assert snapshot(d, "v%40s1") == s1
    assert snapshot(d, "w@s1") == ws
    listed = d.get_ok("/v1/volumes/v/snapshots")["snapshots"]
    assert [s["id"] for s in listed] == [s1["id"], s2["id"]], listed
    assert listed[0] == s1
    assert [s["id"] for s in d.get_ok("/v1/snapshots?volume=v")["snapshots"]] == [s1["id"], s2["id"]]
    assert {s["id"] for s in d.get_ok("/v1/snapshots")["snapshots"]} == {s1["id"], s2["id"], ws["id"]}

    # NBD_OPT_LIST lists the snapshots' exports.
    p = run(["nbdinfo", "--list", "--json", d.nbd_list_uri()], timeout=30)
    assert p.returncode == 0, p.stderr.decode()
    names = {e["export-name"] for e in json.loads(p.stdout)["exports"]}
    assert {"v", "w", "v@s1", "v@s2", "w@s1"} <= names, names

    # Errors, each changing nothing.
    for body, code in (({"name": ".bad"}, "invalid-argument"), ({"name": ""}, "invalid-argument"),
                       ({"name": "a/b"}, "invalid-argument"), ({"name": "x" * 129}, "invalid-argument"),
                       ({}, "invalid-argument"), ({"name": "ok", "extra": 1}, "invalid-argument"),
                       ({"name": 5}, "invalid-argument")):
        status, headers, problem = d.api("POST", "/v1/volumes/v/snapshots", body=body)
        assert_problem(status, headers, problem, 400, code)
    status, headers, problem = d.api("POST", "/v1/volumes/nope/snapshots", body={"name": "s"})
    assert_problem(status, headers, problem, 404, "not-found")
    for ref in ("v@nope", "nope@s1", str(uuid.uuid4())):
        status, headers, problem = d.api("GET", snap_path(ref))
        assert_problem(status, headers, problem, 404, "not-found")
        status, headers, problem = d.api("DELETE", snap_path(ref))
        assert_problem(status, headers, problem, 404, "not-found")
    status, headers, problem = d.api("GET", "/v1/volumes/nope/snapshots")
    assert_problem(status, headers, problem, 404, "not-found")
    assert len(d.get_ok("/v1/snapshots")["snapshots"]) == 3

    # In use while an NBD client reads VOLUME@SNAPSHOT.
    h = connect(d, "v@s1")
    status, headers, problem = d.api("DELETE", snap_path("v@s1"))
    assert_problem(status, headers, problem, 409, "in-use")
    disconnect(d, h)
    delete_snapshot(d, "v@s1")
    status, headers, problem = d.api("GET", snap_path(s1["id"]))
    assert_problem(status, headers, problem, 404, "not-found")
    assert run(["nbdinfo", d.nbd_uri("v@s1")]).returncode != 0, "a deleted snapshot's export still answers"
    delete_snapshot(d, s2["id"])
    assert d.get_ok("/v1/volumes/v/snapshots")["snapshots"] == []
    assert space(d) == before
    pool_check(d, chunks=3)


def test_consistency_p1_s1_p2_s2_p3_and_read_only(remapd, tmp_path):
    """Done-when 2: write P1, snapshot S1, overwrite with P2 (mostly 4 KiB
    writes into 64 KiB chunks), snapshot S2, overwrite with P3: the volume
    reads P3, v@s1 P1, v@s2 P2 (sha256 over NBD and qemu-img compare), the
    snapshots are read-only (flag and EPERM), the usage figures are exact;
    the same after kill -9 and a restart."""
    d = remapd
    m = Model()
    d.create_volume("v", SIZE)
    m.create("v", SIZE)
    h = connect(d, "v")
    write_p1(h, m, "v")
    p1_chunks = len(m.maps["v"])
    assert p1_chunks == 48 + 1 + 2 + 2 + 1, p1_chunks

    s1 = take(d, "v", "s1")
    m.copy("v", "v@s1")
    assert (s1["uniqueBytes"], s1["sharedBytes"]) == (0, p1_chunks * CHUNK), s1
    write_p2(h, m, "v")
    s2 = take(d, "v", "s2")
    m.copy("v", "v@s2")
    write_p3(h, m, "v")
    disconnect(d, h)

    images = ["v", "v@s1", "v@s2"]
    assert m.bytes("v@s1") != m.bytes("v@s2") != m.bytes("v")
    assert_images(d, m, tmp_path, images)
    assert_usage(d, m, volumes=["v"], snapshots=["v@s1", "v@s2"])
    pool_check(d, chunks=m.pool_chunks())
    for name in ("v@s1", "v@s2"):
        assert_read_only(d, name, SIZE)
    assert snapshot(d, s1["id"])["sizeBytes"] == SIZE

    d.restart(kill9=True)
    assert_images(d, m, tmp_path, images)
    for name in ("v@s1", "v@s2"):
        assert_read_only(d, name, SIZE)
    assert_usage(d, m, volumes=["v"], snapshots=["v@s1", "v@s2"])
    pool_check(d, chunks=m.pool_chunks())
    assert [s["id"] for s in d.get_ok("/v1/volumes/v/snapshots")["snapshots"]] == [s1["id"], s2["id"]]
    assert snapshot(d, "v@s1")["createdAt"] == s1["createdAt"]


@pytest.mark.parametrize("order", [("v", "v@s", "c"), ("v", "c", "v@s"), ("v@s", "v", "c"),
                                   ("v@s", "c", "v"), ("c", "v", "v@s"), ("c", "v@s", "v")],
                         ids=["origin-snapshot-clone", "origin-clone-snapshot", "snapshot-origin-clone",
                              "snapshot-clone-origin", "clone-origin-snapshot", "clone-snapshot-origin"])
def test_delete_in_every_order_frees_exactly_what_nobody_references(remapd, tmp_path, order):
    """Done-when 3: origin v, snapshot v@s, clone c of it, all three
    written after the snapshot. Deleting them in every order: what remains
    reads right, the pool's allocatedBytes is exactly the chunks the
    remaining images reference, the pool check is clean after every step,
    and again after a kill -9 and restart following every step."""
    d = remapd
    m = Model()
    d.create_volume("v", SIZE)
    m.create("v", SIZE)
    h = connect(d, "v")
    pwrite(h, m, "v", 0, rand(11, 64 * CHUNK))                         # chunks 0-63
    pwrite(h, m, "v", 100 * CHUNK + 4 * KiB, rand(12, 4 * KiB))        # chunk 100
    h.flush()
    take(d, "v", "s")
    m.copy("v", "v@s")
    for c in range(16):                                                # 16 copy-on-writes
        pwrite(h, m, "v", c * CHUNK + 8 * KiB, rand(20 + c, 4 * KiB))
    pwrite(h, m, "v", 200 * CHUNK, rand(13, CHUNK))                    # a hole
    h.flush()
    disconnect(d, h)
    c_info = clone(d, "v@s", "c")
    m.copy("v@s", "c")
    h = connect(d, "c")
    pwrite(h, m, "c", 32 * CHUNK, rand(14, 8 * CHUNK))                 # whole chunks 32-39
    pwrite(h, m, "c", 150 * CHUNK + 512, rand(15, 1024))               # a hole
    pwrite(h, m, "c", 100 * CHUNK, rand(16, 512))                      # copy-on-write of 100
    h.flush()
    disconnect(d, h)
    assert c_info["allocatedBytes"] == 65 * CHUNK
    # 65 original chunks + 17 of v's + 10 of c's.
    assert m.pool_chunks() == 92
    assert_usage(d, m, volumes=["v", "c"], snapshots=["v@s"])
    pool_check(d, chunks=92)

    remaining = ["v", "v@s", "c"]
    for name in order:
        if name == "v@s":
            delete_snapshot(d, "v@s")
        else:
            d.delete_volume(name)
        m.delete(name)
        remaining.remove(name)
        vols = [r for r in remaining if "@" not in r]
        snaps = [r for r in remaining if "@" in r]
        assert_usage(d, m, volumes=vols, snapshots=snaps)
        body = pool_check(d, chunks=m.pool_chunks())
        assert d.pool()["allocatedBytes"] == m.pool_bytes() == body["referencedChunks"] * CHUNK
        assert_images(d, m, tmp_path, remaining, qemu=False)
        if "v@s" not in remaining:
            assert run(["nbdinfo", d.nbd_uri("v@s")]).returncode != 0
        # The delete (a 2xx) is durable: the same after kill -9.
        d.restart(kill9=True)
        assert_usage(d, m, volumes=vols, snapshots=snaps)
        pool_check(d, chunks=m.pool_chunks())
        assert_images(d, m, tmp_path, remaining, qemu=False)
    pool = space(d)
    assert (pool["allocatedBytes"], pool["reservedBytes"], pool["freeBytes"]) == (0, 0, pool["capacityBytes"])
    assert d.get_ok("/v1/snapshots")["snapshots"] == []


def test_clone_writes_never_change_the_snapshot_or_the_origin(remapd, tmp_path):
    d = remapd
    m = Model()
    d.create_volume("v", SIZE)
    m.create("v", SIZE)
    h = connect(d, "v")
    write_p1(h, m, "v")
    disconnect(d, h)
    s = take(d, "v", "s")
    m.copy("v", "v@s")

    c = clone(d, "v@s", "c", labels={"role": "test"})
    m.copy("v@s", "c")
    assert c["name"] == "c" and c["exportName"] == "c" and c["pool"] == "default", c
    assert c["sizeBytes"] == SIZE and c["originSnapshot"] == s["id"], c
    assert c["labels"] == {"role": "test"}, c
    assert c["allocatedBytes"] == m.mapped_bytes("v@s"), c
    assert "originSnapshot" not in d.volume("v"), "only clones have originSnapshot"
    assert d.volume("c") == c
    # Idempotent: the same clone again is 200; a taken name is 409.
    assert clone(d, s["id"], "c", expect=200, labels={"role": "test"}) == c
    status, headers, problem = d.api("POST", snap_path("v@s") + "/clone", body={"name": "v"})
    assert_problem(status, headers, problem, 409, "already-exists")
    status, headers, problem = d.api("POST", snap_path("v@nope") + "/clone", body={"name": "x"})
    assert_problem(status, headers, problem, 404, "not-found")
    status, headers, problem = d.api("POST", snap_path("v@s") + "/clone", body={"name": "..x"})
    assert_problem(status, headers, problem, 400, "invalid-argument")
    assert_usage(d, m, volumes=["v", "c"], snapshots=["v@s"])

    # The clone is writable: sub-chunk and whole-chunk overwrites, holes.
    hc = connect(d, "c")
    assert not hc.is_read_only()
    write_p2(hc, m, "c")
    write_p3(hc, m, "c")
    disconnect(d, hc)
    assert_images(d, m, tmp_path, ["c", "v@s", "v"])
    assert m.bytes("v") == m.bytes("v@s") != m.bytes("c")
    assert_usage(d, m, volumes=["v", "c"], snapshots=["v@s"])
    pool_check(d, chunks=m.pool_chunks())

    # And the origin's writes do not reach the clone or the snapshot.
    h = connect(d, "v")
    pwrite(h, m, "v", 0, rand(77, 40 * CHUNK))
    h.flush()
    disconnect(d, h)
    assert_images(d, m, tmp_path, ["v", "v@s", "c"], qemu=False)
    # A clone can itself be snapshotted and cloned.
    take(d, "c", "cs")
    m.copy("c", "c@cs")
    c2 = clone(d, "c@cs", "c2")
    m.copy("c@cs", "c2")
    assert c2["originSnapshot"] == snapshot(d, "c@cs")["id"]
    assert_images(d, m, tmp_path, ["c@cs", "c2"], qemu=False)
    assert_usage(d, m, volumes=["v", "c", "c2"], snapshots=["v@s", "c@cs"])
    pool_check(d, chunks=m.pool_chunks())


def test_revert_reads_the_snapshot_and_is_refused_while_a_client_is_connected(remapd, tmp_path):
    d = remapd
    m = Model()
    d.create_volume("v", SIZE)
    d.create_volume("w", SIZE)
    m.create("v", SIZE)
    h = connect(d, "v")
    write_p1(h, m, "v")
    s1 = take(d, "v", "s1")
    m.copy("v", "v@s1")
    write_p2(h, m, "v")
    take(d, "v", "s2")
    m.copy("v", "v@s2")
    write_p3(h, m, "v")
    take(d, "w", "ws")

    # A client on the volume: 409 in-use, nothing changes.
    status, headers, problem = d.api("POST", "/v1/volumes/v/revert", body={"snapshot": "s1"})
    assert_problem(status, headers, problem, 409, "in-use")
    disconnect(d, h)
    assert_reads(d, "v", m.bytes("v"))
    for body, want, code in (({"snapshot": "nope"}, 404, "not-found"),
                             ({"snapshot": "w@ws"}, 404, "not-found"),     # another volume's
                             ({"snapshot": str(uuid.uuid4())}, 404, "not-found"),
                             ({}, 400, "invalid-argument"),
                             ({"snapshot": 1}, 400, "invalid-argument"),
                             ({"snapshot": "s1", "x": 1}, 400, "invalid-argument")):
        status, headers, problem = d.api("POST", "/v1/volumes/v/revert", body=body)
        assert_problem(status, headers, problem, want, code)
    status, headers, problem = d.api("POST", "/v1/volumes/nope/revert", body={"snapshot": "s1"})
    assert_problem(status, headers, problem, 404, "not-found")
    assert_reads(d, "v", m.bytes("v"))
    # A client on a snapshot of the volume does not block a revert.
    hs = connect(d, "v@s2")

    for ref in ("s1", "v@s1", s1["id"]):
        status, _, vol = d.api("POST", "/v1/volumes/v/revert", body={"snapshot": ref})
        assert status == 200, f"revert to {ref} -> {status} {vol}"
        assert vol["name"] == "v" and vol["sizeBytes"] == SIZE, vol
        m.revert("v", "v@s1")
        assert vol["allocatedBytes"] == m.mapped_bytes("v@s1"), vol
        assert_images(d, m, tmp_path, ["v", "v@s1", "v@s2"])
        assert_usage(d, m, volumes=["v"], snapshots=["v@s1", "v@s2"])
        pool_check(d, chunks=m.pool_chunks())
        # Write after the revert: copy on write again, s1 never changes.
        h = connect(d, "v")
        write_p3(h, m, "v")
        disconnect(d, h)
        assert_images(d, m, tmp_path, ["v", "v@s1"], qemu=False)
    disconnect(d, hs)
    assert snapshot(d, "v@s1") and snapshot(d, "v@s2")

    # Revert to s2, then the state survives kill -9.
    status, _, vol = d.api("POST", "/v1/volumes/v/revert", body={"snapshot": "v@s2"})
    assert status == 200, vol
    m.revert("v", "v@s2")
    d.restart(kill9=True)
    assert_images(d, m, tmp_path, ["v", "v@s1", "v@s2"])
    assert_usage(d, m, volumes=["v"], snapshots=["v@s1", "v@s2"])
    pool_check(d, chunks=m.pool_chunks())


def test_changes_between_snapshots_are_exactly_the_chunks_written(make_remapd):
    """Done-when 5: a known write pattern between S1 and S2 (whole chunks,
    sub-chunk pieces, a write straddling two chunks, holes, a chunk written
    twice); changes(S2, base=S1) lists exactly those chunks, merged; with no
    base, the ranges that hold data."""
    d = make_remapd()
    m = Model()
    d.create_volume("v", SIZE)
    m.create("v", SIZE)
    h = connect(d, "v")
    write_p1(h, m, "v")
    p1 = m.chunks("v")
    s1 = take(d, "v", "s1")

    written = set()

    def w(offset, data):
        pwrite(h, m, "v", offset, data)
        written.update(chunks_of(offset, len(data)))

    w(0, rand(1, 4 * KiB))                          # chunk 0, sub-chunk
    w(1 * CHUNK + 60 * KiB, rand(2, 8 * KiB))       # straddles 1/2
    w(10 * CHUNK, rand(3, 3 * CHUNK))               # whole 10-12
    w(13 * CHUNK + 512, rand(4, 512))               # 13: merges with 10-12
    w(33 * CHUNK + 100, rand(5, 100))               # unaligned, 33
    w(33 * CHUNK + 40 * KiB, rand(6, 4 * KiB))      # 33 again
    w(90 * CHUNK, rand(7, CHUNK))                   # a hole at S1
    w(91 * CHUNK + 32 * KiB, rand(8, 4 * KiB))      # a hole, sub-chunk: merges with 90
    w(SIZE - 4 * KiB, rand(9, 4 * KiB))             # the last chunk
    h.flush()
    assert written == {0, 1, 2, 10, 11, 12, 13, 33, 90, 91, 255}
    s2 = take(d, "v", "s2")
    # Written after S2: must not show up between S1 and S2.
    w2 = chunks_of(50 * CHUNK, CHUNK) | chunks_of(5 * CHUNK, 100)
    pwrite(h, m, "v", 50 * CHUNK, rand(10, CHUNK))
    pwrite(h, m, "v", 5 * CHUNK, rand(11, 100))
    h.flush()
    disconnect(d, h)

    expected = chunk_ranges(written)
    assert expected == [(0, 3 * CHUNK), (10 * CHUNK, 4 * CHUNK), (33 * CHUNK, CHUNK),
                        (90 * CHUNK, 2 * CHUNK), (255 * CHUNK, CHUNK)]
    for base in ("s1", "v@s1", s1["id"]):
        body, ranges = changes(d, "v@s2", base=base)
        assert ranges == expected, f"changes(s2, base={base}): {ranges}, expected {expected}"
        assert (body["snapshot"], body["base"], body["sizeBytes"], body["granularityBytes"]) == \
            (s2["id"], s1["id"], SIZE, CHUNK), body
        assert body["changedBytes"] == len(written) * CHUNK
    # The other way round, the same chunks differ.
    assert changes(d, s1["id"], base=s2["id"])[1] == expected
    # A snapshot against itself: nothing.
    body, ranges = changes(d, "v@s2", base="v@s2")
    assert ranges == [] and body["changedBytes"] == 0

    # Without a base: the ranges that hold data.
    body, ranges = changes(d, "v@s1")
    assert body["base"] is None and ranges == chunk_ranges(p1), (ranges, chunk_ranges(p1))
    assert body["changedBytes"] == len(p1) * CHUNK == snapshot(d, "v@s1")["sharedBytes"] \
        + snapshot(d, "v@s1")["uniqueBytes"]
    assert changes(d, "v@s2")[1] == chunk_ranges(p1 | written)
    # S3 after the later writes: only those differ from S2.
    take(d, "v", "s3")
    assert changes(d, "v@s3", base="s2")[1] == chunk_ranges(w2)
    assert changes(d, "v@s3", base="s1")[1] == chunk_ranges(written | w2)

    # Errors: unknown snapshot or base 404, a base in another pool 400.
    status, headers, problem = d.api("GET", snap_path("v@nope") + "/changes")
    assert_problem(status, headers, problem, 404, "not-found")
    status, headers, problem = d.api("GET", snap_path("v@s2") + "/changes?base=nope")
    assert_problem(status, headers, problem, 404, "not-found")
    spec = {"name": "other", "suppliers": [{"kind": "file", "path": str(d.state_dir / "pools" / "other.img"),
                                            "sizeBytes": 16 * MiB}]}
    status, _, body = d.api("POST", "/v1/pools", body=spec)
    assert status == 201, body
    d.create_volume("o", SIZE, pool="other")
    take(d, "o", "os", pool="other")
    status, headers, problem = d.api("GET", snap_path("v@s2") + "/changes?base=o@os")
    assert_problem(status, headers, problem, 400, "invalid-argument")


# =================================================================== sticky reservations

STICKY = 256 * MiB


def sticky_setup(d, filler_bytes):
    """Volume r (256 MiB) with a range reservation over all of it, fully
    written and flushed; volume f has `filler_bytes` written. (r is written
    first and reserved after: a 256 MiB range reservation of holes is
    checked on its own in test_range_reservation_of_256_mib_on_an_empty_volume.)"""
    d.create_volume("r", STICKY)
    d.create_volume("f", 1024 * MiB)
    h = connect(d, "r")
    blocks = []
    for i in range(STICKY // (4 * MiB)):
        data = rand(5000 + i, 4 * MiB)
        blocks.append(data)
        h.pwrite(data, i * 4 * MiB)
    h.flush()
    disconnect(d, h)
    status, _, res = d.api("POST", "/v1/volumes/r/reservations",
                           body={"offsetBytes": 0, "lengthBytes": STICKY, "name": "hot"})
    assert status == 201, res
    if filler_bytes:
        hf = connect(d, "f")
        for off in range(0, filler_bytes, MiB):
            hf.pwrite(rand(off, MiB), off)
        hf.flush()
        disconnect(d, hf)
    [r] = d.get_ok("/v1/volumes/r/reservations")["reservations"]
    assert (r["kind"], r["bytes"], r["offsetBytes"], r["lengthBytes"]) == ("range", STICKY, 0, STICKY), r
    assert d.volume("r")["guaranteedWritableBytes"] == STICKY
    return blocks


def test_range_reservation_of_256_mib_on_an_empty_volume(make_remapd):
    """The reservation of Done-when 4 made the plain way, before writing:
    256 MiB of holes backed at once in a 320 MiB pool, then written in full
    without drawing on free space."""
    d = make_remapd(pool_size="320M")
    d.create_volume("r", STICKY)
    status, _, res = d.api("POST", "/v1/volumes/r/reservations",
                           body={"offsetBytes": 0, "lengthBytes": STICKY, "name": "hot"})
    assert status == 201, f"a 256 MiB range reservation in a 320 MiB empty pool -> {status} {res}"
    pool = space(d)
    assert (pool["allocatedBytes"], pool["reservedBytes"], pool["freeBytes"]) == (0, STICKY, 64 * MiB), pool
    h = connect(d, "r")
    for off in range(0, STICKY, 4 * MiB):
        h.pwrite(rand(off, 4 * MiB), off)
    h.flush()
    disconnect(d, h)
    pool = space(d)
    assert (pool["allocatedBytes"], pool["reservedBytes"], pool["freeBytes"]) == (STICKY, 0, 64 * MiB), pool
    [r] = d.get_ok("/v1/volumes/r/reservations")["reservations"]
    assert r["usedBytes"] == STICKY, r
    pool_check(d, chunks=STICKY // CHUNK)


def test_sticky_reservation_snapshot_refused_with_507_when_the_pool_cannot_back_it(make_remapd, tmp_path):
    """Done-when 4, first branch: 320 MiB pool, 256 MiB reserved and
    written, 48 MiB of filler: 16 MiB free cannot back 256 MiB of copy on
    write, so the snapshot is refused with 507 and nothing changes; the
    reserved range stays writable."""
    d = make_remapd(pool_size="320M")
    blocks = sticky_setup(d, 48 * MiB)
    before = space(d)
    assert (before["allocatedBytes"], before["reservedBytes"], before["freeBytes"]) == \
        (304 * MiB, 0, 16 * MiB), before
    r_before = d.volume("r")

    t0 = time.monotonic()
    status, headers, problem = d.api("POST", "/v1/volumes/r/snapshots", body={"name": "nightly"})
    assert time.monotonic() - t0 < 1.0, "a 507 must be decided at once"
    assert_problem(status, headers, problem, 507, "insufficient-space")
    assert (problem.get("requestedBytes"), problem.get("availableBytes")) == (STICKY, 16 * MiB), problem
    assert d.pool() == before
    assert d.volume("r") == r_before
    assert d.get_ok("/v1/volumes/r/snapshots")["snapshots"] == []
    assert run(["nbdinfo", d.nbd_uri("r@nightly")]).returncode != 0

    # A volume without range reservations still snapshots at no cost.
    take(d, "f", "free-of-charge")
    assert d.pool() == before
    # Without a snapshot, the whole reserved range is overwritten in place.
    h = connect(d, "r")
    for i in range(STICKY // CHUNK):
        h.pwrite(rand(9000 + i, 4 * KiB), i * CHUNK + (i % 16) * 4 * KiB)
    h.flush()
    disconnect(d, h)
    pool_check(d, chunks=304 * MiB // CHUNK)


def test_sticky_reservation_snapshot_keeps_the_range_writable_in_a_full_pool(make_remapd, tmp_path):
    """Done-when 4, second branch: 544 MiB pool, 256 MiB reserved and
    written, 16 MiB of filler: the snapshot holds 256 MiB of copy-on-write
    space; another volume then fills the pool to ENOSPC, and overwriting
    all 256 MiB of the reserved range (4 KiB pieces and whole chunks) never
    gets ENOSPC. The snapshot still reads the old data."""
    d = make_remapd(pool_size="544M")
    blocks = sticky_setup(d, 16 * MiB)
    pool = space(d)
    assert (pool["allocatedBytes"], pool["reservedBytes"], pool["freeBytes"]) == \
        (272 * MiB, 0, 272 * MiB), pool

    s = take(d, "r", "nightly")
    assert s["reservedBytes"] == STICKY, s
    assert (s["uniqueBytes"], s["sharedBytes"]) == (0, STICKY), s
    pool = space(d)
    assert (pool["allocatedBytes"], pool["reservedBytes"], pool["freeBytes"]) == \
        (272 * MiB, STICKY, 16 * MiB), pool
    # Taking it again (same name) costs nothing more.
    take(d, "r", "nightly", expect=200)
    assert space(d) == pool

    # Fill the rest of the pool with f until ENOSPC.
    hf = connect(d, "f")
    end = 16 * MiB
    while True:
        assert end < 1024 * MiB, "f never ran out of space"
        try:
            hf.pwrite(rand(end, MiB), end)
        except nbd.Error as e:
            assert e.errnum == errno.ENOSPC, f"f's write at {end}: {e}"
            break
        end += MiB
    hf.flush()
    assert end == 32 * MiB, f"f got {(end - 16 * MiB) // MiB} MiB, 16 MiB were free"
    assert space(d)["freeBytes"] == 0

    # Overwrite all of the reserved range: even chunks with a 4 KiB piece
    # (copy on write of the rest), odd chunks whole. No ENOSPC.
    h = connect(d, "r")
    new_blocks = [bytearray(b) for b in blocks]
    per_block = 4 * MiB // CHUNK
    for c in range(STICKY // CHUNK):
        if c % 2 == 0:
            off, data = c * CHUNK + (c % 16) * 4 * KiB, rand(20000 + c, 4 * KiB)
        else:
            off, data = c * CHUNK, rand(20000 + c, CHUNK)
        try:
            h.pwrite(data, off)
        except nbd.Error as e:
            pytest.fail(f"overwrite of chunk {c} inside the reserved range failed: {e} (errno {e.errnum})")
        b, rel = divmod(off, 4 * MiB)
        new_blocks[b][rel:rel + len(data)] = data
        if c % 1024 == 1023:
            p = space(d)
            assert p["freeBytes"] == 0, p
    h.flush()
    # f is still refused: the snapshot's space went to r's copies only.
    try:
        hf.pwrite(b"\xee" * 4096, 200 * MiB)
        pytest.fail("f wrote into a full pool")
    except nbd.Error as e:
        assert e.errnum == errno.ENOSPC, e
    disconnect(d, hf)
    got = read_all(h, STICKY)
    assert sha256(got) == sha256(b"".join(new_blocks)), \
        f"r differs from what was written at byte {first_difference(got, b''.join(new_blocks))}"
    disconnect(d, h)
    del got
    assert_reads(d, "r@nightly", b"".join(blocks), "the snapshot after the overwrite")
    assert per_block == 64
    pool = space(d)
    assert (pool["allocatedBytes"], pool["reservedBytes"], pool["freeBytes"]) == (544 * MiB, 0, 0), pool
    s = snapshot(d, "r@nightly")
    assert (s["uniqueBytes"], s["sharedBytes"], s["reservedBytes"]) == (STICKY, 0, 0), s
    pool_check(d, chunks=544 * MiB // CHUNK)

    # Deleting the snapshot gives its 256 MiB back (at the next commit).
    delete_snapshot(d, "r@nightly")
    t0 = time.monotonic()
    assert wait_until(lambda: d.pool()["allocatedBytes"] == 288 * MiB, timeout=10), d.pool()
    print(f"snapshot delete: space back after {time.monotonic() - t0:.2f} s")
    pool = space(d)
    assert (pool["allocatedBytes"], pool["reservedBytes"], pool["freeBytes"]) == \
        (288 * MiB, 0, STICKY), pool
    pool_check(d, chunks=288 * MiB // CHUNK)


def test_sticky_snapshot_space_comes_back_when_the_snapshot_is_deleted_unused(make_remapd):
    """The copy-on-write space a snapshot holds goes back to the pool when
    it is deleted before any overwrite; a second snapshot of the same
    written range needs no more space than the first."""
    d = make_remapd(pool_size="96M")
    d.create_volume("r", 32 * MiB)
    status, _, res = d.api("POST", "/v1/volumes/r/reservations", body={"offsetBytes": 0, "lengthBytes": 16 * MiB})
    assert status == 201, res
    h = connect(d, "r")
    h.pwrite(rand(1, 8 * MiB), 0)        # half of the range written
    h.pwrite(rand(2, 4 * MiB), 20 * MiB)  # outside the range: not covered
    h.flush()
    disconnect(d, h)
    before = space(d)
    assert (before["allocatedBytes"], before["reservedBytes"], before["freeBytes"]) == \
        (12 * MiB, 8 * MiB, 76 * MiB), before
    s1 = take(d, "r", "s1")
    assert s1["reservedBytes"] == 8 * MiB, s1
    pool = space(d)
    assert (pool["reservedBytes"], pool["freeBytes"]) == (16 * MiB, 68 * MiB), pool
    s2 = take(d, "r", "s2")
    assert s2["reservedBytes"] in (0, 8 * MiB), s2
    assert space(d) == pool, "a second snapshot of the same written range must not reserve it again"
    delete_snapshot(d, "r@s2")
    delete_snapshot(d, "r@s1")
    assert space(d) == before
    pool_check(d, chunks=20 * MiB // CHUNK, backed=8 * MiB)


# =================================================================== content, export, import

def curl_content(d, ref, out, range_header=None, timeout=120):
    """GET /v1/snapshots/{ref}/content with curl over the unix socket into
    `out`; returns (status, headers)."""
    hfile = out.with_suffix(".headers")
    cmd = ["curl", "-sS", "--unix-socket", str(d.api_sock), "-D", str(hfile), "-o", str(out),
           "-w", "%{http_code}", "--max-time", str(timeout)]
    if range_header:
        cmd += ["-H", f"Range: {range_header}"]
    cmd.append(f"http://localhost{snap_path(ref)}/content")
    p = subprocess.run(cmd, capture_output=True, timeout=timeout + 10, env=clean_env())
    assert p.returncode == 0, f"curl: {p.stderr.decode()}"
    status = int(p.stdout.decode()[-3:])
    headers = {}
    blocks = [b for b in hfile.read_text("latin-1").replace("\r\n", "\n").split("\n\n") if b.strip()]
    for line in blocks[-1].split("\n")[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


def test_content_streams_the_snapshot_byte_for_byte_with_ranges(remapd, tmp_path):
    """Done-when 6 (curl): /content is the snapshot (not the volume written
    after it), byte for byte; Range gives 206 with Content-Range, past the
    end 416 with bytes */SIZE, several ranges the whole image."""
    d = remapd
    m = Model()
    size = 8 * MiB + 512 * 3   # not a whole number of chunks
    d.create_volume("v", size)
    m.create("v", size)
    h = connect(d, "v")
    pwrite(h, m, "v", 0, rand(1, 1 * MiB))
    pwrite(h, m, "v", 3 * MiB + 4 * KiB + 7, rand(2, 70 * KiB))
    pwrite(h, m, "v", size - 1000, rand(3, 1000))
    h.flush()
    take(d, "v", "s")
    m.copy("v", "v@s")
    pwrite(h, m, "v", 0, rand(4, 2 * MiB))     # after the snapshot
    h.flush()
    disconnect(d, h)
    image = m.bytes("v@s")
    assert_reads(d, "v@s", image)
    hs = connect(d, "v@s")
    nbd_sha = sha256(read_all(hs, size))
    disconnect(d, hs)

    out = tmp_path / "s.raw"
    for ref in ("v@s", "v%40s", snapshot(d, "v@s")["id"]):
        status, headers = curl_content(d, ref, out)
        assert status == 200, (status, headers)
        assert headers.get("content-type", "").split(";")[0] == "application/octet-stream", headers
        assert headers.get("content-length") == str(size), headers
        assert headers.get("accept-ranges") == "bytes", headers
        assert out.stat().st_size == size
        got = out.read_bytes()
        assert sha256(got) == nbd_sha == sha256(image), f"content differs at byte {first_difference(got, image)}"
    qemu_img_compare(out, d.nbd_uri("v@s"))

    cases = [("bytes=0-0", 0, 0), ("bytes=0-65535", 0, CHUNK - 1),
             (f"bytes={3 * MiB}-{3 * MiB + 100 * KiB}", 3 * MiB, 3 * MiB + 100 * KiB),
             (f"bytes={size - 10}-{size + 5000}", size - 10, size - 1),   # clamped to the end
             (f"bytes={5 * MiB + 3}-", 5 * MiB + 3, size - 1),
             ("bytes=-1000", size - 1000, size - 1),
             (f"bytes=-{size + 10}", 0, size - 1),
             (f"bytes={size - 1}-{size - 1}", size - 1, size - 1)]
    for header, first, last in cases:
        status, headers = curl_content(d, "v@s", out, header)
        assert status == 206, (header, status, headers)
        assert headers.get("content-range") == f"bytes {first}-{last}/{size}", (header, headers)
        assert headers.get("content-length") == str(last - first + 1), (header, headers)
        got = out.read_bytes()
        assert got == image[first:last + 1], f"{header}: wrong bytes (first difference at " \
                                             f"{first_difference(got, image[first:last + 1])})"
    for header in (f"bytes={size}-", f"bytes={size}-{size + 10}", f"bytes={size + CHUNK}-"):
        status, headers = curl_content(d, "v@s", out, header)
        assert status == 416, (header, status, headers)
        assert headers.get("content-range") == f"bytes */{size}", (header, headers)
    # Several ranges: the whole image.
    status, headers = curl_content(d, "v@s", out, "bytes=0-9,100-199")
    assert status == 200 and out.read_bytes() == image, (status, headers)
    status, headers = curl_content(d, "v@nope", out)
    assert status == 404, status
    # The volume itself is not a snapshot.
    status, headers = curl_content(d, "v", out)
    assert status == 404, status


def test_remapctl_snapshot_export_writes_a_sparse_identical_file(remapd, tmp_path):
    """Done-when 6 (file export): `remapctl snapshot export` makes a file
    identical to the snapshot whose holes are where the snapshot has
    holes."""
    if not REMAPCTL.exists():
        pytest.fail(f"remapctl binary not found at {REMAPCTL}")
    d = remapd
    m = Model()
    size = 64 * MiB
    d.create_volume("v", size)
    m.create("v", size)
    h = connect(d, "v")
    pwrite(h, m, "v", 0, rand(1, MiB))
    pwrite(h, m, "v", 40 * MiB + 4 * KiB, rand(2, 4 * KiB))
    h.flush()
    disconnect(d, h)
    take(d, "v", "s")
    m.copy("v", "v@s")
    out = tmp_path / "export.raw"
    p = d.ctl("snapshot", "export", "v@s", str(out), timeout=120)
    assert p.returncode == 0, f"remapctl snapshot export: {p.stdout.decode()}{p.stderr.decode()}"
    assert out.stat().st_size == size
    assert sha256(out.read_bytes()) == sha256(m.bytes("v@s"))
    qemu_img_compare(out, d.nbd_uri("v@s"))
    allocated = out.stat().st_blocks * 512
    data = m.mapped_bytes("v@s")
    assert allocated <= data + 2 * CHUNK, \
        f"exported file has {allocated} bytes allocated, the snapshot holds {data}: holes were written"
    assert allocated >= MiB


def import_file(d, name, path, expect=202, **extra):
    status, headers, body = d.api("POST", "/v1/volumes", body={"name": name, "source": {"file": str(path)}, **extra})
    return status, headers, body


def test_import_of_a_sparse_file_allocates_only_its_data(remapd, tmp_path):
    """Done-when 6 (import): a sparse file (truncate + a few pwrites, and a
    written all-zero stretch) becomes a volume with identical content whose
    allocatedBytes is the data rounded to chunks, not the size; the import
    is an operation whose progress reaches 1.0."""
    d = remapd
    supplier_dir = d.state_dir / "pools"
    path = supplier_dir / "disk.raw"
    size = 48 * MiB + 100                       # sizeBytes: rounded up to 512
    pieces = [(MiB + 123, rand(1, 100 * KiB)),  # chunks 16-17
              (10 * MiB, rand(2, 4 * KiB)),      # chunk 160
              (20 * MiB, rand(3, MiB)),          # chunks 320-335
              (size - 50, rand(4, 50))]          # the last chunk
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, size)
        for off, data in pieces:
            os.pwrite(fd, data, off)
        os.pwrite(fd, bytes(2 * MiB), 30 * MiB)   # written zeros: must stay unallocated
    finally:
        os.close(fd)
    expected_chunks = set()
    for off, data in pieces:
        expected_chunks |= chunks_of(off, len(data))
    content = path.read_bytes()
    vsize = (size + 511) // 512 * 512
    before = space(d)

    status, headers, body = import_file(d, "imp", path)
    assert status == 202, (status, body)
    assert set(body) == {"operation", "volume"}, body
    op, vol = body["operation"], body["volume"]
    assert headers.get("location") == f"/v1/operations/{op['id']}", headers
    uuid.UUID(op["id"])
    assert (op["kind"], op["volume"], op["source"], op["totalBytes"]) == ("import", "imp", str(path), size) \
        or (op["kind"], op["volume"], op["source"], op["totalBytes"]) == ("import", "imp", str(path), vsize), op
    assert op["state"] in ("running", "succeeded"), op
    assert (vol["name"], vol["sizeBytes"], vol["pool"]) == ("imp", vsize, "default"), vol

    op = wait_operation(d, op["id"])
    assert op["state"] == "succeeded", op
    assert op["progress"] == 1.0 and op["doneBytes"] == op["totalBytes"], op
    assert "error" not in op and op["finishedAt"] >= op["createdAt"], op
    listed = d.get_ok("/v1/operations")["operations"]
    assert listed and listed[0]["id"] == op["id"] and listed[0] == op, listed

    imported = d.volume("imp")
    assert imported["sizeBytes"] == vsize
    assert imported["allocatedBytes"] == len(expected_chunks) * CHUNK, \
        (f"imported volume allocates {imported['allocatedBytes']} bytes; the file's data covers "
         f"{len(expected_chunks)} chunks ({len(expected_chunks) * CHUNK} bytes)")
    assert space(d)["allocatedBytes"] == before["allocatedBytes"] + len(expected_chunks) * CHUNK
    assert_reads(d, "imp", content + bytes(vsize - size))
    qemu_img_compare(path, d.nbd_uri("imp"))
    # Which chunks: exactly the data's (block status of the export).
    take(d, "imp", "s")
    assert changes(d, "imp@s")[1] == chunk_ranges(expected_chunks, size=vsize)
    pool_check(d, chunks=len(expected_chunks))

    # An explicit size larger than the file: zeros after it.
    status, headers, body = import_file(d, "imp2", path, sizeBytes=64 * MiB)
    assert status == 202, body
    op2 = wait_operation(d, body["operation"]["id"])
    assert op2["state"] == "succeeded", op2
    assert d.volume("imp2")["sizeBytes"] == 64 * MiB
    assert d.volume("imp2")["allocatedBytes"] == len(expected_chunks) * CHUNK
    assert [o["id"] for o in d.get_ok("/v1/operations")["operations"]][:2] == [op2["id"], op["id"]]

    # Bad sources are 400 and create nothing; a taken name is 409.
    outside = tmp_path / "outside.raw"
    outside.write_bytes(b"x" * 4096)
    (supplier_dir / "adir").mkdir()
    for src in (supplier_dir / "missing.raw", outside, supplier_dir / "adir", "relative.raw",
                str(supplier_dir / ".." / "outside.raw")):
        status, headers, problem = import_file(d, "bad", src)
        assert_problem(status, headers, problem, 400, "invalid-argument")
    status, headers, problem = d.api("POST", "/v1/volumes", body={"name": "bad", "source": {}})
    assert_problem(status, headers, problem, 400, "invalid-argument")
    status, headers, problem = d.api("POST", "/v1/volumes", body={"name": "bad", "source": {"file": str(path),
                                                                                          "x": 1}})
    assert_problem(status, headers, problem, 400, "invalid-argument")
    status, headers, problem = import_file(d, "bad", path, reservation="thick")
    assert_problem(status, headers, problem, 400, "invalid-argument")
    status, headers, problem = import_file(d, "bad", path, sizeBytes=MiB)   # smaller than the file
    assert_problem(status, headers, problem, 400, "invalid-argument")
    status, headers, problem = import_file(d, "imp", path)
    assert_problem(status, headers, problem, 409, "already-exists")
    status, headers, problem = d.api("GET", "/v1/volumes/bad")
    assert_problem(status, headers, problem, 404, "not-found")
    status, headers, problem = d.api("GET", f"/v1/operations/{uuid.uuid4()}")
    assert_problem(status, headers, problem, 404, "not-found")
    status, headers, problem = d.api("GET", "/v1/operations/not-an-operation")
    assert_problem(status, headers, problem, 404, "not-found")
    assert len(d.get_ok("/v1/operations")["operations"]) == 2
    assert_reads(d, "imp", content + bytes(vsize - size))


def test_import_of_a_big_file_runs_as_an_operation_and_blocks_the_volume(make_remapd):
    """A 1 GiB file with 512 MiB of data: the volume exists at once, is in
    use (delete/patch 409, NBD export refused) while the import runs, and
    the operation's progress grows to 1.0."""
    d = make_remapd(pool_size="1G")
    path = d.state_dir / "pools" / "big.raw"
    size = 1024 * MiB
    data_end = 512 * MiB
    block = bytearray(rand(7, 4 * MiB))
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, data_end, 4 * MiB):
            block[:8] = off.to_bytes(8, "little")
            f.write(block)
    status, headers, body = import_file(d, "big", path)
    assert status == 202, body
    op = body["operation"]
    assert body["volume"]["sizeBytes"] == size
    state = d.get_ok(f"/v1/operations/{op['id']}")["state"]
    assert state == "running", \
        f"an import of 512 MiB of data was {state} at the first GET of its operation"
    status, headers, problem = d.api("DELETE", "/v1/volumes/big")
    assert_problem(status, headers, problem, 409, "in-use")
    status, headers, problem = d.api("PATCH", "/v1/volumes/big", body={"labels": {"a": "b"}})
    assert_problem(status, headers, problem, 409, "in-use")
    nbd_refused = run(["nbdinfo", d.nbd_uri("big")]).returncode != 0
    still_running = d.get_ok(f"/v1/operations/{op['id']}")["state"] == "running"
    assert nbd_refused or not still_running, "the export of a volume being imported must be refused"
    seen = []
    op = wait_operation(d, op["id"], timeout=120, seen=seen)
    assert op["state"] == "succeeded", op
    assert op["progress"] == 1.0
    assert any(0.0 < o["progress"] < 1.0 for o in seen) or len(seen) < 3, \
        f"progress jumped from 0 to 1: {[o['progress'] for o in seen]}"
    assert d.volume("big")["allocatedBytes"] == data_end
    qemu_img_compare(path, d.nbd_uri("big"))
    pool_check(d, chunks=data_end // CHUNK)
    status, _, body = d.api("DELETE", "/v1/volumes/big")
    assert status == 204, body


def test_import_that_runs_out_of_space_fails_and_deletes_the_volume(make_remapd):
    d = make_remapd(pool_size="16M")
    path = d.state_dir / "pools" / "full.raw"
    path.write_bytes(rand(1, 32 * MiB))
    status, headers, body = import_file(d, "full", path)
    assert status == 202, body
    op = wait_operation(d, body["operation"]["id"])
    assert op["state"] == "failed", op
    err = op.get("error")
    assert isinstance(err, dict) and err.get("status") == 507 and err.get("code") == "insufficient-space", op
    assert "finishedAt" in op and op["progress"] < 1.0, op
    status, headers, problem = d.api("GET", "/v1/volumes/full")
    assert_problem(status, headers, problem, 404, "not-found")
    assert wait_until(lambda: space(d)["allocatedBytes"] == 0, timeout=5), d.pool()
    pool_check(d, chunks=0)
    # The space is usable again: the same import into a volume that fits.
    status, headers, body = import_file(d, "again", path, sizeBytes=32 * MiB)
    assert status == 202, body
    assert wait_operation(d, body["operation"]["id"])["state"] == "failed"
    small = d.state_dir / "pools" / "small.raw"
    small.write_bytes(rand(2, 8 * MiB))
    status, headers, body = import_file(d, "small", small)
    assert status == 202, body
    assert wait_operation(d, body["operation"]["id"])["state"] == "succeeded"
    assert d.volume("small")["allocatedBytes"] == 8 * MiB
    pool_check(d, chunks=8 * MiB // CHUNK)


def test_a_running_import_can_be_cancelled_and_its_volume_goes(make_remapd):
    """DELETE /v1/operations/{id} on a running import: 200 with the operation
    as it ended (cancelled), the volume is deleted, its chunks go back to
    the pool; DELETE again forgets it (204, then 404)."""
    d = make_remapd(pool_size="1G")
    path = d.state_dir / "pools" / "cancel.raw"
    block = rand(11, 4 * MiB)
    with open(path, "wb") as f:
        for _ in range(0, 768 * MiB, 4 * MiB):
            f.write(block)
    status, _, body = import_file(d, "doomed", path)
    assert status == 202, body
    op_id = body["operation"]["id"]
    status, _, op = d.api("DELETE", f"/v1/operations/{op_id}")
    if status == 204:
        pytest.skip("the import finished before it could be cancelled")
    assert status == 200, op
    assert op["state"] == "cancelled" and "finishedAt" in op, op
    assert op["doneBytes"] < op["totalBytes"], op
    status, _, _ = d.api("GET", "/v1/volumes/doomed")
    assert status == 404
    wait_until(lambda: d.pool()["allocatedBytes"] == 0, timeout=10)
    pool_check(d, chunks=0)
    status, _, _ = d.api("DELETE", f"/v1/operations/{op_id}")
    assert status == 204
    status, _, _ = d.api("GET", f"/v1/operations/{op_id}")
    assert status == 404


def test_usage_figures_follow_every_write_after_a_snapshot(remapd):
    """uniqueBytes/sharedBytes and the volume's guaranteedWritableBytes are
    recounted after each copy on write (they are cached between changes)."""
    d = remapd
    d.create_volume("v", SIZE)
    h = connect(d, "v")
    h.pwrite(rand(21, 8 * CHUNK), 0)
    h.flush()
    take(d, "v", "s")
    assert (snapshot(d, "v@s")["uniqueBytes"], snapshot(d, "v@s")["sharedBytes"]) == (0, 8 * CHUNK)
    assert d.volume("v")["guaranteedWritableBytes"] == 0
    for written in range(1, 4):
        h.pwrite(rand(30 + written, 4 * KiB), written * CHUNK)  # a partial write: copies the chunk
        h.flush()
        s = snapshot(d, "v@s")
        assert (s["uniqueBytes"], s["sharedBytes"]) == (written * CHUNK, (8 - written) * CHUNK), s
        assert snapshot(d, "v@s") == s  # asked twice, counted once: the same answer
        assert d.volume("v")["guaranteedWritableBytes"] == written * CHUNK
    disconnect(d, h)


def test_revert_of_a_thick_volume_keeps_every_chunk_backed(make_remapd, tmp_path):
    """A thick volume (range reservation over all of it) reverted to a
    snapshot: it reads the snapshot, stays fully guaranteed-writable, and
    then overwrites all of itself in a pool that is otherwise full."""
    d = make_remapd(pool_size="64M")
    size = 4 * MiB  # 64 chunks
    status, _, body = d.api("POST", "/v1/volumes", body={"name": "t", "sizeBytes": size, "reservation": "thick"})
    assert status == 201, body
    h = connect(d, "t")
    first = rand(41, 10 * CHUNK)
    h.pwrite(first, 0)
    h.flush()
    take(d, "t", "s")
    h.pwrite(rand(42, 20 * CHUNK), 5 * CHUNK)
    h.trim(CHUNK, 0)
    h.flush()
    disconnect(d, h)

    status, _, vol = d.api("POST", "/v1/volumes/t/revert", body={"snapshot": "s"})
    assert status == 200, vol
    assert vol["guaranteedWritableBytes"] == size, vol
    assert_reads(d, "t", first + bytes(size - len(first)))
    pool = space(d)
    assert pool["allocatedBytes"] == 10 * CHUNK, pool        # the snapshot's data, shared
    assert pool["reservedBytes"] == 64 * CHUNK, pool         # 54 unwritten + 10 copy-on-write
    pool_check(d, backed=54 * CHUNK)

    # Fill the rest of the pool, then overwrite the whole thick volume.
    d.create_volume("filler", 64 * MiB)
    f = connect(d, "filler")
    with pytest.raises(nbd.Error) as full:
        for offset in range(0, 64 * MiB, MiB):
            f.pwrite(b"\xff" * MiB, offset)
    assert full.value.errno == "ENOSPC"
    disconnect(d, f)
    h = connect(d, "t")
    final = rand(43, size)
    h.pwrite(final, 0)
    h.flush()
    disconnect(d, h)
    assert_reads(d, "t", final)
    assert_reads(d, "t@s", first + bytes(size - len(first)))
    pool_check(d)


def test_shrinking_a_snapshotted_volume_keeps_the_snapshot_and_regrows_as_zeros(remapd):
    """A shrink cuts chunks the snapshot shares: they are not freed, the
    snapshot still reads them, and the volume grown again reads zeros there,
    also after kill -9 (tombstones hide the snapshot's rows)."""
    d = remapd
    d.create_volume("v", SIZE)
    h = connect(d, "v")
    tail = rand(51, 10 * CHUNK)
    h.pwrite(tail, 200 * CHUNK)
    h.flush()
    disconnect(d, h)
    take(d, "v", "s")
    before = space(d)["allocatedBytes"]
    status, _, vol = d.api("PATCH", "/v1/volumes/v?allowShrink=true", body={"sizeBytes": 100 * CHUNK})
    assert status == 200 and vol["allocatedBytes"] == 0, vol
    status, _, vol = d.api("PATCH", "/v1/volumes/v", body={"sizeBytes": SIZE})
    assert status == 200, vol
    for _ in range(2):
        assert space(d)["allocatedBytes"] == before == 10 * CHUNK
        assert_reads(d, "v", bytes(SIZE))
        assert_reads(d, "v@s", bytes(200 * CHUNK) + tail + bytes(SIZE - 210 * CHUNK))
        pool_check(d, chunks=10)
        d.restart(kill9=True)


def test_a_pool_holding_only_snapshots_is_not_deleted(remapd):
    """Snapshots outlive their volume, and their chunks live in the pool:
    deleting the pool is refused (409) until they are gone; a clone of such
    a snapshot still works (schemathesis once found it failing with 500
    after the pool had been deleted under it)."""
    d = remapd
    spec = {"name": "p2", "suppliers": [{"kind": "file", "path": str(d.state_dir / "pools" / "p2.img"),
                                         "sizeBytes": 16 * MiB}]}
    status, _, body = d.api("POST", "/v1/pools", body=spec)
    assert status == 201, body
    d.create_volume("v", 4 * MiB, pool="p2")
    h = connect(d, "v")
    data = rand(61, 2 * CHUNK)
    h.pwrite(data, 0)
    h.flush()
    disconnect(d, h)
    take(d, "v", "s", pool="p2")
    d.delete_volume("v")
    status, headers, problem = d.api("DELETE", "/v1/pools/p2")
    assert_problem(status, headers, problem, 409, "in-use")
    assert "snapshot" in problem["detail"], problem
    assert_reads(d, "v@s", data + bytes(4 * MiB - len(data)))
    status, _, clone = d.api("POST", snap_path("v@s") + "/clone", body={"name": "c"})
    assert status == 201 and clone["pool"] == "p2", clone
    assert_reads(d, "c", data + bytes(4 * MiB - len(data)))
    d.delete_volume("c")
    status, _, _ = d.api("DELETE", snap_path("v@s"))
    assert status == 204
    status, _, _ = d.api("DELETE", "/v1/pools/p2")
    assert status == 204
