"""What a snapshot costs (issue 6, Done-when 4): a snapshot of a range
reservation holds the copy-on-write space of the reserved range (sticky),
or is refused with 507 when the pool cannot back it; the range stays
writable in a full pool; the space comes back when the snapshot goes;
uniqueBytes/sharedBytes follow every write.

Every test drives the real daemon: REST over the unix socket (curl), data
through libnbd's Python binding (sha256 of every image), and nbdinfo for
a snapshot export that must not exist; the checks are in snapshots.py.
"""

import errno
import time

import pytest

from harness import (CHUNK, KiB, MiB, assert_problem, connect, disconnect, first_difference, read_all, run, sha256,
                     space, wait_until)
from snapshots import SIZE, assert_reads, delete_snapshot, pool_check, rand, snapshot, take

import nbd  # noqa: E402  (python3-libnbd; a missing package must fail, not skip)


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
