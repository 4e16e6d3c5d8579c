"""Taking snapshots (issue 6, Done-when 2): snapshot objects, names,
listings and every error; P1/S1/P2/S2/P3 consistency; snapshot exports
are read-only. The kill -9 variants are in test_snapshot_crash.py.

Every test drives the real daemon: REST over the unix socket (curl), data
through libnbd's Python binding, and `qemu-img compare` between the NBD
exports (`VOLUME@SNAPSHOT` for snapshots) and local raw files; the model
they are checked against, chunk for chunk, is in snapshots.py.
"""

import json
import uuid

from harness import CHUNK, MiB, assert_problem, connect, disconnect, run, space
from snapshots import (Model, SIZE, assert_images, assert_read_only, assert_usage, delete_snapshot, pool_check, rand,
                       snap_path, snapshot, take, write_p1, write_p2, write_p3)


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
