"""A volume imported from a raw file (issue 6, Done-when 6): an operation
whose progress reaches 1.0; only the file's data is allocated; the volume
is in use while the import runs; bad sources; out of space (the volume
goes); cancel.

Every test drives the real daemon: REST over the unix socket (curl), data
through libnbd's Python binding, and `qemu-img compare` between the NBD
exports (`VOLUME@SNAPSHOT` for snapshots) and local raw files; the model
they are checked against, chunk for chunk, is in snapshots.py.
"""

import os
import uuid

import pytest

from harness import (CHUNK, KiB, MiB, assert_problem, chunk_ranges, qemu_img_compare, run, space, wait_operation,
                     wait_until)
from snapshots import assert_reads, changes, chunks_of, pool_check, rand, take


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
