"""Faults injected through remapd's seam (issue 10): every supplier read,
write, fdatasync and fallocate and every metadata commit passes through one
place, which `remapd --fault-injection` (debug builds only) lets a test fail
at the Nth call or at random (`PUT /v1/debug/faults`).

What the contract promises when they fail (DESIGN.md, "When the hardware
fails"; docs/api-v1.md, "Pool states"):

- a failed metadata commit keeps its mappings: every FLUSH fails until a
  commit succeeds, and then everything acknowledged is durable (defect 2);
- a failed write-back is kept per supplier: the pool is degraded, every FLUSH
  on it fails until an operator clears it, and a FLUSH on another pool never
  sees the error (defect 3);
- ENOSPC from the host filesystem reaches the writer as ENOSPC; a failed
  write maps no chunk; a failed copy on write changes neither the volume nor
  its snapshot; zeroing that fails is retried, also at start-up.

Real devices failing (nbdkit's error filter behind a loop device, full
tmpfs) are in test_device_faults.py.
"""

import errno
import json
import os
import time

import pytest

from harness import CHUNK, MiB, check_space, faults, make_pool, wait_until

import nbd  # noqa: F401


def clear_faults(d):
    status, _, body = d.api("DELETE", "/v1/debug/faults")
    assert status == 204, (status, body)


def nbd_errno(fn, *args):
    """The errno an NBD call fails with, or None when it succeeds."""
    try:
        fn(*args)
    except nbd.Error as e:
        return getattr(errno, e.errno) if isinstance(e.errno, str) else e.errno
    return None


def pool_check(d, pool="default", timeout=10.0):
    """GET /v1/pools/{pool}/check once it is clean (reclaim is asynchronous),
    else the last answer."""
    def clean():
        status, _, body = d.api("GET", f"/v1/pools/{pool}/check")
        assert status == 200, body
        return body if body["ok"] else None
    result = wait_until(clean, timeout=timeout, interval=0.2)
    if result:
        return result
    return d.api("GET", f"/v1/pools/{pool}/check")[2]


@pytest.fixture
def faulty(make_remapd):
    """A daemon with the fault seam on."""
    return make_remapd(extra_args=["--fault-injection"])


# ---------------------------------------------------------------- defect 2

def test_defect2_failed_commit_keeps_its_mappings_and_flush_fails_until_one_succeeds(faulty):
    """On main a failed commit dropped its mappings: later writes went in
    place, their FLUSH answered OK, and after a restart the chunks read
    zeros. Now the changes stay pending and FLUSH fails until a commit
    holding them succeeds."""
    d = faulty
    d.create_volume("v", 16 * MiB)
    h = d.nbd("v")
    faults(d, {"target": "metadata-commit", "error": "ENOSPC"})
    first = os.urandom(CHUNK)
    h.pwrite(first, 0)                 # a new chunk: its mapping is pending
    assert nbd_errno(h.flush) == errno.ENOSPC
    second = os.urandom(4096)
    h.pwrite(second, 8192)             # in place, into the same chunk
    assert nbd_errno(h.flush) == errno.ENOSPC, "a FLUSH answered OK while the mapping was not durable"
    assert nbd_errno(h.flush) == errno.ENOSPC
    status, _, body = d.api("GET", "/metrics")
    assert "remap_metadata_commit_failures_total" in body
    clear_faults(d)
    h.flush()
    expected = bytearray(first)
    expected[8192:8192 + 4096] = second
    d.restart(kill9=True)
    h = d.nbd("v")
    assert h.pread(CHUNK, 0) == expected, "data acknowledged by a FLUSH that answered OK was lost"
    assert pool_check(d)["ok"]
    check_space(d.pool())


def test_defect2_a_periodic_retry_makes_the_kept_changes_durable(faulty):
    """Without any later FLUSH, the changes of a failed commit are retried
    (every second) and become durable once commits work again."""
    d = faulty
    d.create_volume("v", 16 * MiB)
    h = d.nbd("v")
    faults(d, {"target": "metadata-commit", "error": "EIO", "count": 1})
    data = os.urandom(CHUNK)
    h.pwrite(data, CHUNK)
    assert nbd_errno(h.flush) == errno.EIO
    # The retry commits it; a FLUSH then has nothing of its own to add.
    time.sleep(2.5)
    h.flush()
    d.restart(kill9=True)
    assert d.nbd("v").pread(CHUNK, CHUNK) == data


def test_defect2_volume_delete_and_patch_commits_are_retried_not_dropped(faulty):
    d = faulty
    d.create_volume("gone", 8 * MiB)
    d.create_volume("grown", 8 * MiB)
    h = d.nbd("gone")
    h.pwrite(os.urandom(4 * CHUNK), 0)
    h.flush()
    d.close_handles()
    before = d.pool()["allocatedBytes"]
    faults(d, {"target": "metadata-commit", "error": "EIO", "count": 2})
    status, _, body = d.api("DELETE", "/v1/volumes/gone")
    assert status == 500 and "retried" in body["detail"], (status, body)
    status, _, body = d.api("PATCH", "/v1/volumes/grown", body={"sizeBytes": 16 * MiB})
    assert status == 500 and "retried" in body["detail"], (status, body)
    # In effect at once: the deletion and the new size stand.
    assert d.api("GET", "/v1/volumes/gone")[0] == 404
    assert d.volume("grown")["sizeBytes"] == 16 * MiB
    # The next commit carries both; then they are durable.
    status, _, body = d.api("POST", "/v1/volumes", body={"name": "later", "sizeBytes": MiB})
    assert status == 201, body
    d.restart(kill9=True)
    assert d.api("GET", "/v1/volumes/gone")[0] == 404
    assert d.volume("grown")["sizeBytes"] == 16 * MiB
    assert d.volume("later")["sizeBytes"] == MiB
    assert d.pool()["allocatedBytes"] == before - 4 * CHUNK
    assert pool_check(d)["ok"]


# ---------------------------------------------------------------- defect 3

def test_defect3_a_failed_write_back_is_kept_and_reaches_only_its_pool(faulty):
    """On main FLUSH synced every supplier of every pool: the EIO of one
    pool's fdatasync went to whichever FLUSH came first, once, and the next
    FLUSH on the failing pool answered OK."""
    d = faulty
    make_pool(d, "failing")
    d.create_volume("good", 8 * MiB)
    d.create_volume("bad", 8 * MiB, pool="failing")
    good, bad = d.nbd("good"), d.nbd("bad")
    flushed = os.urandom(CHUNK)
    bad.pwrite(flushed, 0)
    bad.flush()
    faults(d, {"target": "supplier-sync", "error": "EIO", "pool": "failing", "count": 1})
    good.pwrite(os.urandom(CHUNK), 0)
    bad.pwrite(os.urandom(CHUNK), CHUNK)
    assert nbd_errno(good.flush) is None, "a FLUSH on a healthy pool got another pool's error"
    assert nbd_errno(bad.flush) == errno.EIO
    # The fault fired once (as Linux reports it); remap keeps it.
    assert nbd_errno(bad.flush) == errno.EIO, "the write-back error was forgotten after one report"
    assert nbd_errno(bad.pwrite, os.urandom(4096), 0) == errno.EIO
    assert nbd_errno(bad.trim, CHUNK, 0) == errno.EIO
    assert bad.pread(CHUNK, 0) == flushed, "reads of a degraded pool must keep working"
    pool = d.pool("failing")
    assert pool["state"] == "degraded" and "fdatasync" in pool["stateReason"], pool
    assert [s["state"] for s in pool["suppliers"]] == ["failed"]
    assert d.pool()["state"] == "online"
    good.pwrite(os.urandom(CHUNK), CHUNK)
    good.flush()
    events = d.get_ok("/v1/events")["events"]
    assert any(e["type"] == "pool.degraded" and e["pool"] == "failing" for e in events), events
    metrics = d.api("GET", "/metrics")[2]
    assert 'remap_pool_state{pool="failing",state="degraded"} 1' in metrics
    assert 'remap_pool_state{pool="default",state="online"} 1' in metrics
    # Changes that need the pool's storage are refused.
    status, _, body = d.api("POST", "/v1/volumes", body={"name": "x", "sizeBytes": MiB, "pool": "failing"})
    assert status == 409 and body["code"] == "pool-unavailable", body
    # Cleared: writes and FLUSH work again, and the data flushed before is there.
    status, _, body = d.api("POST", "/v1/pools/failing/clear-errors")
    assert status == 200 and body["state"] == "online", body
    again = os.urandom(CHUNK)
    bad.pwrite(again, 2 * CHUNK)
    bad.flush()
    d.restart(kill9=True)
    bad = d.nbd("bad")
    assert bad.pread(CHUNK, 0) == flushed
    assert bad.pread(CHUNK, 2 * CHUNK) == again
    assert d.pool("failing")["state"] == "online"


def test_clear_errors_keeps_the_state_while_the_supplier_still_fails(faulty):
    d = faulty
    d.create_volume("v", 8 * MiB)
    h = d.nbd("v")
    faults(d, {"target": "supplier-sync", "error": "EIO"})
    h.pwrite(os.urandom(4096), 0)
    assert nbd_errno(h.flush) == errno.EIO
    status, _, body = d.api("POST", "/v1/pools/default/clear-errors")
    assert status == 409 and body["code"] == "supplier-failed", body
    assert d.pool()["state"] == "degraded"
    clear_faults(d)
    status, _, body = d.api("POST", "/v1/pools/default/clear-errors", body={})
    assert status == 200 and body["state"] == "online"
    status, _, body = d.api("POST", "/v1/pools/default/clear-errors", body={"force": True})
    assert status == 400 and body["code"] == "invalid-argument", body
    assert d.api("POST", "/v1/pools/nope/clear-errors")[0] == 404


# ---------------------------------------------------------------- related faults

def test_a_full_host_filesystem_is_enospc_for_the_writer_and_maps_nothing(faulty):
    d = faulty
    d.create_volume("v", 8 * MiB)
    h = d.nbd("v")
    h.pwrite(os.urandom(CHUNK), 0)
    h.flush()
    before = d.pool()["allocatedBytes"]
    faults(d, {"target": "supplier-write", "error": "ENOSPC"})
    assert nbd_errno(h.pwrite, os.urandom(3 * CHUNK), CHUNK) == errno.ENOSPC
    assert nbd_errno(h.pwrite, os.urandom(100), 5 * CHUNK + 7) == errno.ENOSPC
    assert d.volume("v")["allocatedBytes"] == CHUNK, "a failed write kept its chunks"
    pool = check_space(d.pool())
    assert pool["state"] == "online", "ENOSPC from the host is not a device failure"
    clear_faults(d)
    # The chunks the failed writes took are zeroed and free again.
    assert pool_check(d)["ok"]
    assert d.pool()["allocatedBytes"] == before
    h.pwrite(b"x" * CHUNK, CHUNK)
    h.flush()
    assert pool_check(d)["ok"]
    assert d.pool()["allocatedBytes"] == before + CHUNK


def test_a_failed_write_maps_no_chunk_and_degrades_the_pool(faulty):
    d = faulty
    d.create_volume("v", 8 * MiB)
    h = d.nbd("v")
    faults(d, {"target": "supplier-write", "error": "EIO", "count": 1})
    assert nbd_errno(h.pwrite, os.urandom(2 * CHUNK), 0) == errno.EIO
    pool = check_space(d.pool())
    assert pool["state"] == "degraded"
    assert d.volume("v")["allocatedBytes"] == 0
    assert h.pread(2 * CHUNK, 0) == bytes(2 * CHUNK)
    assert d.api("POST", "/v1/pools/default/clear-errors")[0] == 200
    assert pool_check(d)["ok"], "the failed write's chunks were not given back"
    assert d.pool()["allocatedBytes"] == 0


def test_a_failed_copy_on_write_changes_neither_the_volume_nor_its_snapshot(faulty):
    d = faulty
    d.create_volume("v", 8 * MiB)
    h = d.nbd("v")
    old = os.urandom(4 * CHUNK)
    h.pwrite(old, 0)
    h.flush()
    assert d.api("POST", "/v1/volumes/v/snapshots", body={"name": "s"})[0] == 201
    # Reading the shared chunk for a partial copy fails, then writing a whole copy.
    faults(d, {"target": "supplier-read", "error": "EIO", "count": 1},
           {"target": "supplier-write", "error": "EIO", "count": 1})
    assert nbd_errno(h.pwrite, b"n" * 100, 10) == errno.EIO
    assert h.pread(4 * CHUNK, 0) == old
    assert nbd_errno(h.pwrite, b"n" * CHUNK, CHUNK) == errno.EIO
    assert h.pread(4 * CHUNK, 0) == old, "a failed copy on write changed the volume"
    assert d.nbd("v@s").pread(4 * CHUNK, 0) == old
    assert d.api("POST", "/v1/pools/default/clear-errors")[0] == 200
    # Now the copy happens, and the snapshot still reads the old data.
    h.pwrite(b"n" * CHUNK, CHUNK)
    h.flush()
    assert d.nbd("v@s").pread(4 * CHUNK, 0) == old
    expected = bytearray(old)
    expected[CHUNK:2 * CHUNK] = b"n" * CHUNK
    assert h.pread(4 * CHUNK, 0) == expected
    assert pool_check(d)["ok"]
    check_space(d.pool())


def test_short_reads_and_writes_are_completed(faulty):
    d = faulty
    d.create_volume("v", 8 * MiB)
    h = d.nbd("v")
    faults(d, {"target": "supplier-write", "error": "short", "probability": 0.5, "seed": 7},
           {"target": "supplier-read", "error": "short", "probability": 0.5, "seed": 8})
    data = os.urandom(2 * MiB)
    base = 4321 * 512
    for offset in range(0, len(data), 256 * 1024):
        h.pwrite(data[offset:offset + 256 * 1024], base + offset)
    h.flush()
    for offset in range(0, len(data), 100_000):
        assert h.pread(min(100_000, len(data) - offset), base + offset) == data[offset:offset + 100_000]
    state = d.get_ok("/v1/debug/faults")
    assert all(rule["hits"] > 0 for rule in state["rules"]), state
    assert d.pool()["state"] == "online"


def test_zeroing_that_fails_is_retried_and_the_check_clears(faulty):
    d = faulty
    d.create_volume("v", 8 * MiB)
    h = d.nbd("v")
    h.pwrite(os.urandom(8 * CHUNK), 0)
    h.flush()
    faults(d, {"target": "supplier-allocate", "error": "EIO", "count": 2})
    h.trim(8 * CHUNK, 0)
    h.flush()
    # Held back until zeroed: never reused unzeroed, never leaked for good.
    check = pool_check(d, timeout=15)
    assert check["ok"], f"chunks whose zeroing failed were not retried: {check}"
    assert d.get_ok("/v1/debug/faults")["rules"][0]["hits"] == 2
    pool = check_space(d.pool())
    assert pool["allocatedBytes"] == 0
    assert pool["state"] == "online"


def test_zeroing_that_fails_at_start_is_not_fatal(make_remapd):
    d = make_remapd(extra_args=["--fault-injection"])
    d.create_volume("v", 8 * MiB)
    h = d.nbd("v")
    h.pwrite(os.urandom(8 * CHUNK), 0)
    h.flush()
    # The TRIM's chunks are marked dirty; kill -9 before they are reclaimed
    # would leave them for the next start, which must zero them.
    faults(d, {"target": "supplier-allocate", "error": "EIO"})
    h.trim(8 * CHUNK, 0)
    h.flush()
    d.kill9()
    d.close_handles()
    os.environ["REMAP_FAULTS"] = json.dumps({"rules": [{"target": "supplier-allocate", "error": "EIO", "count": 1}]})
    try:
        d.start()
    finally:
        del os.environ["REMAP_FAULTS"]
    assert "tried again later" in d.last_output()
    assert d.pool()["state"] == "online"
    assert pool_check(d, timeout=15)["ok"]
    assert d.nbd("v").pread(8 * CHUNK, 0) == bytes(8 * CHUNK)
    assert d.pool()["allocatedBytes"] == 0


def test_fault_routes_exist_only_with_the_flag(remapd):
    assert remapd.api("GET", "/v1/debug/faults")[0] == 404
    assert remapd.api("PUT", "/v1/debug/faults", body={"rules": []})[0] == 404


def test_bad_fault_rules_are_refused(faulty):
    d = faulty
    for body in ({"rules": [{"target": "disk", "error": "EIO"}]},
                 {"rules": [{"target": "supplier-write", "error": "EIO", "probability": 3}]},
                 {"rules": "all"}, {"other": []}):
        status, _, answer = d.api("PUT", "/v1/debug/faults", body=body)
        assert status == 400 and answer["code"] == "invalid-argument", (body, status, answer)
    assert d.get_ok("/v1/debug/faults")["rules"] == []


def test_a_deletion_whose_commit_failed_leaves_what_it_shares_untouched(faulty):
    """Found by the model test: a snapshot delete answered 500 (its commit
    failed, kept and retried) gave the volume the snapshot's chunks at once;
    the volume's writes then changed them in place, and a kill -9 brought the
    snapshot back with those bytes. Until a deletion is durable the deleted
    image's chunks stay shared: writes copy them."""
    d = faulty
    d.create_volume("v", 4 * MiB)
    h = d.nbd("v")
    old = os.urandom(4 * MiB)
    h.pwrite(old, 0)
    h.flush()
    for name in ("s", "t"):
        assert d.api("POST", "/v1/volumes/v/snapshots", body={"name": name})[0] == 201
    # A clone of t shares t's chunks with v; delete t for good so that v and
    # the clone share them directly.
    assert d.api("POST", "/v1/snapshots/v@t/clone", body={"name": "c"})[0] == 201
    assert d.api("DELETE", "/v1/snapshots/v@t")[0] == 204
    faults(d, {"target": "metadata-commit", "error": "EIO"})
    status, _, body = d.api("DELETE", "/v1/snapshots/v@s")
    assert status == 500 and "retried" in body["detail"], (status, body)
    d.close_handles()
    status, _, body = d.api("DELETE", "/v1/volumes/v")
    assert status == 500, (status, body)
    c = d.nbd("c")
    for offset in range(0, 4 * MiB, 3 * CHUNK):
        c.pwrite(b"n" * 4096, offset + 100)   # acknowledged, not flushed (commits fail)
    d.restart(kill9=True)
    # Neither deletion became durable: both come back as they were.
    assert d.nbd("v@s").pread(4 * MiB, 0) == old, "a snapshot whose deletion failed came back changed"
    assert d.nbd("v").pread(4 * MiB, 0) == old, "a volume whose deletion failed came back changed"
    assert pool_check(d)["ok"]
    check_space(d.pool())


def test_a_failed_write_into_a_reserved_chunk_leaves_it_reading_the_same_everywhere(faulty):
    """A reserved-unwritten chunk reads zeros. A write into it that fails
    may leave bytes inside its own range; the volume, a snapshot of it and
    the chunk after the reservation's release must all read the same."""
    d = faulty
    d.create_volume("v", 4 * MiB)
    status, _, body = d.api("POST", "/v1/volumes/v/reservations", body={"offsetBytes": 0, "lengthBytes": MiB})
    assert status == 201, body
    h = d.nbd("v")
    faults(d, {"target": "supplier-write", "error": "short", "count": 1},
           {"target": "supplier-write", "error": "EIO", "count": 1})
    assert nbd_errno(h.pwrite, b"x" * 8192, 4096) == errno.EIO
    assert d.api("POST", "/v1/pools/default/clear-errors")[0] == 200
    seen = h.pread(CHUNK, 0)
    assert seen[:4096] == bytes(4096) and seen[4096 + 8192:] == bytes(CHUNK - 4096 - 8192), \
        "bytes outside the failed write's range changed"
    assert d.api("POST", "/v1/volumes/v/snapshots", body={"name": "s"})[0] == 201
    assert d.nbd("v@s").pread(CHUNK, 0) == seen
    h.pwrite(b"y" * 512, 0)
    h.flush()
    expected = bytearray(seen)
    expected[:512] = b"y" * 512
    assert h.pread(CHUNK, 0) == expected
    d.restart(kill9=True)
    assert d.nbd("v").pread(CHUNK, 0) == expected
    assert d.nbd("v@s").pread(CHUNK, 0) == seen


def test_a_release_while_a_write_into_the_range_is_in_flight_keeps_the_write(faulty):
    """Found by the soak: a range reservation released (or expired) while a
    write into one of its reserved-unwritten chunks was in flight unmapped
    the chunk under the write; the write was acknowledged, a FLUSH too, and
    the volume read zeros there. A write makes the chunks it reaches data
    when it is planned."""
    d = faulty
    d.create_volume("v", 4 * MiB)
    status, _, body = d.api("POST", "/v1/volumes/v/reservations", body={"offsetBytes": 0, "lengthBytes": MiB})
    assert status == 201, body
    h = d.nbd("v")
    faults(d, {"target": "supplier-write", "error": "delay", "delayMs": 800, "count": 2})
    data = os.urandom(2 * CHUNK)
    buffer = nbd.Buffer.from_bytearray(bytearray(data))
    cookie = h.aio_pwrite(buffer, CHUNK - 4096)
    time.sleep(0.2)
    assert d.api("DELETE", f"/v1/volumes/v/reservations/{body['id']}")[0] == 204
    while not h.aio_command_completed(cookie):
        h.poll(1)
    h.flush()
    assert h.pread(2 * CHUNK, CHUNK - 4096) == data
    d.restart(kill9=True)
    assert d.nbd("v").pread(2 * CHUNK, CHUNK - 4096) == data, "an acknowledged, flushed write was lost"
    assert pool_check(d)["ok"]


def test_a_failed_copy_on_write_in_a_range_does_not_double_its_copy_on_write_space(faulty):
    """Found by test_model's faults walk (REMAP_MODEL_SEED=666330411): a
    range reservation of one chunk, written, then snapshotted, holds one
    chunk of copy-on-write space. A copy on write into it that fails owes
    that chunk back to it (it returns once zeroed); a second snapshot then
    counted only the chunks left, not the one owed, and set another aside:
    two chunks held for a range of one, in memory, in metadata and in the
    pool's reserved bytes (`remapd check`: reservation-overdrawn)."""
    d = faulty
    d.create_volume("v", 8 * MiB)
    status, _, body = d.api("POST", "/v1/volumes/v/reservations", body={"offsetBytes": 0, "lengthBytes": CHUNK})
    assert status == 201, body
    h = d.nbd("v")
    h.pwrite(b"a" * CHUNK, 0)
    h.flush()
    assert d.api("POST", "/v1/volumes/v/snapshots", body={"name": "s1"})[0] == 201
    reserved = d.pool()["reservedBytes"]
    faults(d, {"target": "supplier-write", "error": "EIO", "count": 1})
    assert nbd_errno(h.pwrite, b"b" * CHUNK, 0) == errno.EIO
    assert d.api("POST", "/v1/pools/default/clear-errors")[0] == 200
    assert d.api("POST", "/v1/volumes/v/snapshots", body={"name": "s2"})[0] == 201
    assert pool_check(d)["ok"], pool_check(d)
    assert wait_until(lambda: d.pool()["reservedBytes"] == reserved, timeout=10, interval=0.2), \
        f"reserved {d.pool()['reservedBytes']} bytes, {reserved} before the failed write"
    check_space(d.pool())
    d.restart(kill9=True)
    assert pool_check(d)["ok"], pool_check(d)
    assert d.pool()["reservedBytes"] == reserved
    # The range stays writable, and the copy on write takes the chunk held for it.
    h = d.nbd("v")
    h.pwrite(b"c" * CHUNK, 0)
    h.flush()
    assert d.nbd("v@s1").pread(CHUNK, 0) == b"a" * CHUNK
    assert d.nbd("v@s2").pread(CHUNK, 0) == b"a" * CHUNK
    assert pool_check(d)["ok"]



def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_with_deadline(h, data, offset, seconds=20):
    """An NBD write that must end (either way) within `seconds`: its errno, or None."""
    buffer = nbd.Buffer.from_bytearray(bytearray(data))
    cookie = h.aio_pwrite(buffer, offset)
    deadline = time.monotonic() + seconds
    while True:
        try:
            if h.aio_command_completed(cookie):
                return None
        except nbd.Error as e:
            return getattr(errno, e.errno) if isinstance(e.errno, str) else e.errno
        assert time.monotonic() < deadline, f"a write at {offset} did not end in {seconds} s"
        h.poll(1)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("error", ["EIO", "ENOSPC"])
def test_chunk_preparation_that_fails_fails_the_writes_that_need_it_without_spinning(faulty, error):
    """Found by test_model's faults walk: with every metadata commit
    failing, a write that needed more clean chunks than the stash held
    waited for their preparation, whose failure woke it to start the next
    one at once: a write that never ended and a core spinning, 1.4 million
    log lines in minutes. Now the write fails with the commit's error,
    preparation is tried again a second later, one log line says so, and
    writes work again once commits do. A full state filesystem (ENOSPC)
    reaches the writer as ENOSPC; a range reservation meanwhile is answered
    500 with the reason, not left waiting."""
    d = faulty
    d.create_volume("v", 256 * MiB)
    h = d.nbd("v")
    faults(d, {"target": "metadata-commit", "error": error})
    data = os.urandom(MiB)
    # The stash holds 1,024 prepared chunks (64 MiB of 64 KiB chunks): writes past it need more.
    failed = None
    for index in range(192):
        failed = write_with_deadline(h, data, index * MiB)
        if failed:
            break
    assert failed == getattr(errno, error), f"192 MiB of writes into fresh chunks ended with {failed}"
    assert index >= 32, f"only {index} MiB written before the failure: the stash was not used"
    cpu = cpu_seconds(d.proc.pid)
    time.sleep(7)  # past the periodic commit's interval: it fails, and is retried every second
    for _ in range(5):
        assert write_with_deadline(h, data, index * MiB) == getattr(errno, error)
    status, _, body = d.api("POST", "/v1/volumes/v/reservations",
                            body={"offsetBytes": 192 * MiB, "lengthBytes": 64 * MiB}, timeout=20)
    # Answered at once: by the failed preparation, or by its own commit failing.
    assert status == 500 and ("preparing chunks" in body.get("detail", "")
                              or "committing metadata" in body.get("detail", "")), (status, body)
    assert cpu_seconds(d.proc.pid) - cpu < 1, "remapd kept a core busy while preparation failed"
    failures = d.log().count("preparing chunks of pool 'default' failed")
    assert failures == 1, f"{failures} log lines for one failure"
    retries = d.log().count("periodic metadata commit failed")
    assert retries <= 1, f"{retries} log lines for the periodic commit failing each second"
    clear_faults(d)
    assert d.api("POST", "/v1/pools/default/clear-errors")[0] == 200
    assert wait_until(lambda: write_with_deadline(h, data, index * MiB) is None, timeout=10, interval=0.5), \
        "writes still fail after the faults ended"
    h.flush()
    assert h.pread(MiB, index * MiB) == data
    assert "preparing chunks of pool 'default' works again" in d.log()
    assert pool_check(d)["ok"]


def test_a_range_reservation_sets_no_space_aside_for_a_chunk_being_let_go_of(faulty):
    """Found by test_model's faults walk (pool reserved one chunk above the
    model): a chunk another image lets go of stays shared until that change
    is durable. A range reservation made meanwhile set copy-on-write space
    aside for it, and nothing gave the space back once the release was
    durable and the chunk the volume's alone. A range reservation now counts
    only the chunks other images map."""
    d = faulty
    d.create_volume("v", 8 * MiB)
    h = d.nbd("v")
    h.pwrite(b"a" * CHUNK, 0)
    h.flush()
    assert d.api("POST", "/v1/volumes/v/snapshots", body={"name": "s"})[0] == 201
    for name in ("c1", "c2"):
        status, _, body = d.api("POST", "/v1/snapshots/v@s/clone", body={"name": name})
        assert status == 201, body
    # The origin copies its chunk; the snapshot goes: the clones alone share it.
    h.pwrite(b"b" * CHUNK, 0)
    h.flush()
    status, _, body = d.api("DELETE", "/v1/snapshots/v@s")
    assert status == 204, body
    reserved = d.pool()["reservedBytes"]
    c1 = d.nbd("c1")
    c1.trim(CHUNK, 0)  # not durable until the next commit
    status, _, body = d.api("POST", "/v1/volumes/c2/reservations", body={"offsetBytes": 0, "lengthBytes": CHUNK})
    assert status == 201, body
    c1.flush()
    # The chunk is c2's alone: the range needs no copy-on-write space.
    assert wait_until(lambda: d.pool()["reservedBytes"] == reserved, timeout=10, interval=0.2), \
        f"reserved {d.pool()['reservedBytes'] - reserved} bytes for a range over a chunk nobody shares"
    check_space(d.pool())
    d.restart(kill9=True)
    assert d.pool()["reservedBytes"] == reserved
    assert pool_check(d)["ok"]
    c2 = d.nbd("c2")
    c2.pwrite(b"c" * CHUNK, 0)
    c2.flush()
    assert c2.pread(CHUNK, 0) == b"c" * CHUNK
