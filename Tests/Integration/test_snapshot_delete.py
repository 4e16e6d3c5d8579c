"""What frees a snapshot's chunks (issue 6, Done-when 3): deleting an
origin, its snapshot and a clone of it in every order frees exactly what
nobody references; a shrink keeps what a snapshot shares; a pool holding
only snapshots is not deleted.

Every test drives the real daemon: REST over the unix socket (curl), data
through libnbd's Python binding (sha256 of every image), and nbdinfo for
an export that must be gone; the model they are checked against, chunk
for chunk, is in snapshots.py.
"""

import pytest

from harness import CHUNK, KiB, MiB, assert_problem, connect, disconnect, run, space
from snapshots import (Model, SIZE, assert_images, assert_reads, assert_usage, clone, delete_snapshot, pool_check,
                       pwrite, rand, snap_path, take)


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
