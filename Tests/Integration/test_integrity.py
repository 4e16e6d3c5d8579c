"""Acknowledged data is never lost (issue 10): the three defects found by
probing main, each as the scenario that showed it, against the real daemon
with libnbd.

The model-based test of the whole data path is test_model.py; the faults
injected through the daemon's seam are test_faults.py; faults of real
devices (a failing block device, full filesystems) are test_device_faults.py.
"""

from random import Random

from harness import CHUNK, MiB, read_all, sha256
from snapshots import take

import nbd  # noqa: E402  (python3-libnbd; a missing package must fail, not skip)


def bad_chunks(h, expected):
    """Virtual chunks whose content differs from `expected`."""
    bad = []
    for offset in range(0, len(expected), 4 * MiB):
        got = h.pread(4 * MiB, offset)
        for c in range(0, 4 * MiB, CHUNK):
            if got[c:c + CHUNK] != expected[offset + c:offset + c + CHUNK]:
                bad.append((offset + c) // CHUNK)
    return bad


def snapshotted(make_remapd, pool_size, size, seed):
    """A daemon whose volume v of `size` bytes is full of flushed random
    data, with snapshot v@s sharing all of it."""
    d = make_remapd(pool_size=pool_size)
    d.create_volume("v", size)
    h = d.nbd("v")
    data = Random(seed).randbytes(size)
    h.pwrite(data, 0)
    h.flush()
    take(d, "v", "s")
    return d, h, data


def test_defect1_overwrite_after_two_snapshots_never_changes_them(remapd):
    """P1 (4 MiB writes), S1, 300 random 4 KiB writes (P2), S2, P3 over the
    whole volume: the snapshots read P1 and P2. On main the overwrite went
    in place into tens of shared chunks: a write that ran out of prepared
    chunks part way was retried with the shared chunks it had put back
    still marked as the volume's own."""
    d = remapd
    size = 64 * MiB
    d.create_volume("v", size)
    h = d.nbd("v")
    rng = Random(1)
    p1 = rng.randbytes(size)
    for offset in range(0, size, 4 * MiB):
        h.pwrite(p1[offset:offset + 4 * MiB], offset)
    h.flush()
    take(d, "v", "S1")
    p2 = bytearray(p1)
    for _ in range(300):
        offset = rng.randrange(size // 4096) * 4096
        data = rng.randbytes(4096)
        h.pwrite(data, offset)
        p2[offset:offset + 4096] = data
    h.flush()
    take(d, "v", "S2")
    p3 = rng.randbytes(size)
    for offset in range(0, size, 4 * MiB):
        h.pwrite(p3[offset:offset + 4 * MiB], offset)
    h.flush()

    for name, expected in (("v@S1", p1), ("v@S2", bytes(p2)), ("v", p3)):
        bad = bad_chunks(d.nbd(name), expected)
        assert not bad, f"{name}: {len(bad)} chunks changed, e.g. {bad[:8]}"
    status, _, check = d.api("GET", "/v1/pools/default/check")
    assert status == 200 and check["ok"], check
    d.restart(kill9=True)
    for name, expected in (("v@S1", p1), ("v@S2", bytes(p2)), ("v", p3)):
        assert sha256(read_all(d.nbd(name), size)) == sha256(expected), f"{name} changed across kill -9"


def test_a_zeroing_that_finds_no_space_is_answered_once(make_remapd):
    """Found by the model test: a TRIM or WRITE_ZEROES over part of a chunk
    shared with a snapshot zeroes it through a copy on write; when that
    found no space at once, the request was answered twice and the NBD
    stream broke."""
    import errno
    d, h, data = snapshotted(make_remapd, "4M", 4 * MiB, 2)
    for zero in (lambda: h.zero(100, 10), lambda: h.trim(100, CHUNK + 10), lambda: h.zero(CHUNK, 4000)):
        try:
            zero()
        except nbd.Error as e:
            assert e.errnum == errno.ENOSPC, e
        else:
            raise AssertionError("zeroing part of a shared chunk in a full pool succeeded")
        # The stream is intact: the next requests are answered, each once.
        assert h.pread(CHUNK, 0) == data[:CHUNK]
    h.flush()
    assert d.nbd("v@s").pread(4 * MiB, 0) == data


def fill(d, name, size):
    """Writes volume `name` until the pool has no space left (ENOSPC)."""
    import errno
    d.create_volume(name, size)
    h = d.nbd(name)
    for offset in range(0, size, CHUNK):
        try:
            h.pwrite(b"f" * CHUNK, offset)
        except nbd.Error as e:
            assert e.errnum == errno.ENOSPC, e
            return
    raise AssertionError("the pool never filled")


def test_a_range_reserved_after_a_snapshot_covers_its_copies_on_write(make_remapd):
    """Found by the model test: a range reservation made over chunks a
    snapshot shares did not hold the space their copies on write need, so
    a write it covers could fail with ENOSPC. Now it holds it (sticky, as a
    snapshot of an already reserved range does), or is refused with 507."""
    d, h, old = snapshotted(make_remapd, "8M", 2 * MiB, 3)
    status, _, body = d.api("POST", "/v1/volumes/v/reservations", body={"offsetBytes": 0, "lengthBytes": 2 * MiB})
    assert status == 201, body
    assert d.volume("v")["reservedBytes"] == 2 * MiB, d.volume("v")
    fill(d, "filler", 8 * MiB)
    new = Random(4).randbytes(2 * MiB)
    for offset in range(0, 2 * MiB, 4096 * 3):
        h.pwrite(new[offset:offset + 4096], offset)   # a write covered by the reservation never fails for space
    h.flush()
    assert d.nbd("v@s").pread(2 * MiB, 0) == old
    pool = d.pool()
    assert pool["capacityBytes"] == pool["allocatedBytes"] + pool["reservedBytes"] + pool["freeBytes"], pool


def test_a_range_reservation_the_pool_cannot_copy_for_is_refused(make_remapd):
    d, _, _ = snapshotted(make_remapd, "4M", 2 * MiB, 5)
    fill(d, "filler", 4 * MiB)
    before = d.pool()
    status, _, body = d.api("POST", "/v1/volumes/v/reservations", body={"offsetBytes": 0, "lengthBytes": MiB})
    assert status == 507 and body["code"] == "insufficient-space", body
    after = d.pool()
    assert (after["reservedBytes"], after["freeBytes"]) == (before["reservedBytes"], before["freeBytes"])
    assert d.api("GET", "/v1/volumes/v/reservations")[2]["reservations"] == []


def test_a_reserved_chunk_reads_the_same_in_the_volume_its_snapshot_and_after_release(remapd):
    """Found by the model test: a write into a reserved-unwritten chunk that
    was not committed before a kill -9 left its bytes in the chunk, which
    stayed unwritten: the volume read those bytes, a snapshot of it read
    zeros, and a later partial write exposed them. Unwritten chunks read
    zeros now, and their first partial write fills the whole chunk."""
    d = remapd
    d.create_volume("v", 4 * MiB)
    status, _, body = d.api("POST", "/v1/volumes/v/reservations", body={"offsetBytes": 0, "lengthBytes": MiB})
    assert status == 201, body
    reservation = body["id"]
    h = d.nbd("v")
    h.pwrite(b"A" * 4096, 0)          # not flushed: the chunk's "written" mark is not durable
    d.restart(kill9=True)
    h = d.nbd("v")
    seen = h.pread(CHUNK, 0)
    take(d, "v", "s")
    assert d.nbd("v@s").pread(CHUNK, 0) == seen, "the snapshot reads other bytes than its volume did"
    h.pwrite(b"B" * 4096, 8192)       # a partial write into the same chunk
    h.flush()
    expected = bytearray(seen)
    expected[8192:8192 + 4096] = b"B" * 4096
    assert h.pread(CHUNK, 0) == expected, "a partial write exposed bytes the chunk did not read before"
    status, _, _ = d.api("DELETE", f"/v1/volumes/v/reservations/{reservation}")
    assert status == 204
    assert h.pread(CHUNK, 0) == expected
