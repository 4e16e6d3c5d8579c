"""Clones of snapshots (issue 6): the clone object, idempotent create and
errors; writes to a clone never change its snapshot or the origin, and
the origin's never reach the clone; clones of clones.

Every test drives the real daemon: REST over the unix socket (curl), data
through libnbd's Python binding, and `qemu-img compare` between the NBD
exports (`VOLUME@SNAPSHOT` for snapshots) and local raw files; the model
they are checked against, chunk for chunk, is in snapshots.py.
"""

from harness import CHUNK, assert_problem, connect, disconnect
from snapshots import (Model, SIZE, assert_images, assert_usage, clone, pool_check, pwrite, rand, snap_path,
                       snapshot, take, write_p1, write_p2, write_p3)


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
