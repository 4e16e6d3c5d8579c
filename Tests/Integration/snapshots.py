"""What the snapshot tests share (issue 6; docs/api-v1.md, "Snapshots and
clones"): a model (`Model`) that keeps, for every image, the bytes it must
read and which physical chunk each virtual chunk maps (labels, shared by
copy on write), so the pool's allocation, each image's allocation and a
snapshot's unique/shared bytes are predicted exactly, chunk for chunk; the
snapshot calls of the REST API; the checks of images (sha256 over NBD,
qemu-img compare, read-only exports), of usage figures and of the pool
(`pool_check`); and the write patterns P1, P2, P3 of a 16 MiB volume.

Used by test_snapshot_*.py, test_clones.py, test_volume_import.py and
test_check.py.
"""

import errno
import time
import uuid
from random import Random

import pytest

from harness import (CHUNK, KiB, MiB, check_space, connect, disconnect, first_difference, qemu_img_compare, read_all,
                     sha256, wait_until)

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


# =================================================================== the API and the checks

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
