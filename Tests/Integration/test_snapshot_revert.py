"""Reverting a volume to a snapshot (issue 6): it reads the snapshot, by
name, `VOLUME@NAME` and id; refused (409) while a client is connected to
the volume; every error; durable over kill -9; a thick volume stays fully
backed.

Every test drives the real daemon: REST over the unix socket (curl), data
through libnbd's Python binding, and `qemu-img compare` between the NBD
exports (`VOLUME@SNAPSHOT` for snapshots) and local raw files; the model
they are checked against, chunk for chunk, is in snapshots.py.
"""

import uuid

import pytest

from harness import CHUNK, MiB, assert_problem, connect, disconnect, space
from snapshots import (Model, SIZE, assert_images, assert_reads, assert_usage, pool_check, rand, snapshot, take,
                       write_p1, write_p2, write_p3)

import nbd  # noqa: E402  (python3-libnbd; a missing package must fail, not skip)


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
