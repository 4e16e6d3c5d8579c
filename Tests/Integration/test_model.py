"""Model-based test of the whole data path with snapshots (issue 10).

A seeded random sequence of operations against the real daemon: NBD WRITE
of 512 B to 4 MiB at every alignment (some FUA), TRIM, WRITE_ZEROES with
and without NO_HOLE and FAST_ZERO, FLUSH, snapshot create/delete, clone,
clone delete, revert (refused while a client is connected), range
reservations and their release, an origin volume deleted under its
snapshots, and kill -9 with writes in flight. After every step the daemon
is compared with the model (model.py): a random range of a random image
byte for byte (and now and then whole images), the identity capacity =
allocated + reserved + free, `GET /v1/pools/default/check`; after every
commit (FLUSH, control-plane change, restart) the pool's and every image's
figures exactly. After a kill -9 every sector of every image must hold a
value the contract allows. The pool (32 MiB under up to 6 snapshots and 2
clones of 3 volumes of 4-16 MiB) runs out of space now and then: a write
may fail with ENOSPC only when it needs more chunks outside live range
reservations than the pool had free.

The faults variant runs the same walk on `remapd --fault-injection`,
switching random fault rules (EIO, ENOSPC, short writes, delays on
supplier writes, syncs, allocations and metadata commits) on and off.

Fixed cases run first: the copy-on-write scenario of issue 10 defect 1
(P1/S1/P2/S2/P3 on a 64 MiB volume, also across kill -9). The
test_found_* tests are the smallest scenarios of the defects the walk found
(each fails until its defect is fixed).

REMAP_MODEL_SEED=N replays a run (printed on failure); REMAP_MODEL_STEPS
and REMAP_MODEL_SECONDS bound it (the walk stops at whichever comes first).
"""

import os
import random
from random import Random

import pytest

from harness import CHUNK, KiB, MiB, connect, faults
from model import VOLUME_SIZES, ModelFailure, World

import nbd  # noqa: E402

STEPS = int(os.environ.get("REMAP_MODEL_STEPS", "6000"))
SECONDS = float(os.environ.get("REMAP_MODEL_SECONDS", "100"))
MIN_STEPS = min(STEPS, 1500)
POOL_SIZE = "32M"
FIXED_POOL = 192 * MiB


def seed_of():
    return int(os.environ.get("REMAP_MODEL_SEED") or random.randrange(1 << 30))


def defect1_cow_after_two_snapshots(d):
    """Issue 10 defect 1 through the model: P1 in 4 MiB writes, S1, 300
    random 4 KiB writes (P2), S2, P3 over the whole volume: every image
    reads what the model says, the figures are exact, also after kill -9."""
    status, _, body = d.api("POST", "/v1/pools", body={
        "name": "fixed", "suppliers": [{"kind": "file", "path": str(d.state_dir / "pools" / "fixed.img"),
                                        "sizeBytes": FIXED_POOL}]})
    assert status == 201, body
    w = World(d, 1, pool="fixed", label="fixed case (defect 1)")
    size = 64 * MiB
    v = w.create_volume(size, name="cow")
    rng = Random(1)
    for off in range(0, size, 4 * MiB):
        assert w.op_write(v, off, rng.randbytes(4 * MiB), fua=False)
    assert w.op_flush(v)
    s1 = w.op_snapshot(v, "S1")
    for _ in range(300):
        assert w.op_write(v, rng.randrange(size // (4 * KiB)) * 4 * KiB, rng.randbytes(4 * KiB), fua=False)
    assert w.op_flush(v)
    s2 = w.op_snapshot(v, "S2")
    for off in range(0, size, 4 * MiB):
        assert w.op_write(v, off, rng.randbytes(4 * MiB), fua=False)
    assert w.op_flush(v)
    for img in (v, s1, s2):
        w.verify_image(img)
    w.check(exact=True)
    w.op_crash(inflight=0)
    w.check(exact=True)
    for img in (s2, s1):
        w.op_delete_snapshot(img)
    w.delete_volume(v)
    w.check(exact=True)
    w.api.close()
    assert d.api("DELETE", "/v1/pools/fixed")[0] == 204


def walk(d, faults):
    seed = seed_of()
    w = World(d, seed, faults=faults)
    for size in VOLUME_SIZES[:3]:
        w.create_volume(size)
    try:
        elapsed = w.run(STEPS, SECONDS, min_steps=MIN_STEPS)
    except ModelFailure:
        raise
    except Exception as e:  # an unexpected error: with the seed and the operations
        w.fail(f"{type(e).__name__}: {e}")
    stats = dict(sorted(w.stats.items()))
    exact = "on throughout" if w.m.inexact is None else f"off from step {w.m.inexact_step}: {w.m.inexact!r}"
    print(f"REMAP_MODEL_SEED={seed}: {w.step} steps in {elapsed:.1f}s; exact accounting {exact}; {stats}")
    # The walk really did what it claims.
    least = {"write": 200, "trim": 30, "flush": 40, "snapshot": 15, "delete-snapshot": 8, "clone": 2,
             "revert": 4, "reserve": 10, "release": 3, "crash": 3}     # per 1000 steps
    if faults:      # a degraded pool refuses changes that need its storage
        least.update({"fault-phases": 3, "reserve": 5, "clone": 1, "revert": 2})
    short = {k: w.stats[k] for k, n in least.items() if w.stats[k] < n * w.step / 1000}
    if not w.stats["enospc"] and not faults and w.step >= 2000:
        short["enospc"] = 0
    assert not short, f"REMAP_MODEL_SEED={seed}: too few of {short} in {w.step} steps: {stats}"
    return w


@pytest.mark.timeout(240)
def test_random_walk_matches_the_model(make_remapd):
    d = make_remapd(pool_size=POOL_SIZE)
    defect1_cow_after_two_snapshots(d)
    walk(d, faults=False)


@pytest.mark.timeout(240)
def test_random_walk_with_faults_matches_the_model(make_remapd):
    d = make_remapd(pool_size=POOL_SIZE, extra_args=["--fault-injection"])
    defect1_cow_after_two_snapshots(d)
    walk(d, faults=True)


# ------------------------------------------------------------------ defects the walk found
# Each is the smallest scenario that shows one; they fail until it is fixed.

def held(d, snapshot):
    """Chunks of copy-on-write space the snapshot's volume holds."""
    return d.get_ok(f"/v1/snapshots/{snapshot}")["reservedBytes"] // CHUNK


def test_found_a_write_into_a_reserved_chunk_cut_by_kill9_leaves_it_reserved(make_remapd):
    """A write into a reserved-unwritten chunk, then kill -9 before a
    commit: the volume reads the write after the restart, and a FLUSH makes
    it durable, but the chunk stays reserved-unwritten: a snapshot reads
    zeros there and releasing the reservation turns the flushed bytes into
    zeros."""
    d = make_remapd(pool_size="16M")
    d.create_volume("v", MiB)
    status, _, r = d.api("POST", "/v1/volumes/v/reservations", body={"offsetBytes": 0, "lengthBytes": 4 * CHUNK})
    assert status == 201, r
    data = os.urandom(CHUNK)
    connect(d, "v", meta=True).pwrite(data, 0)
    d.restart(kill9=True)
    h = connect(d, "v", meta=True)
    got = h.pread(CHUNK, 0)
    if got != data:
        return      # the write was lost, which is allowed: nothing to check
    h.flush()
    assert d.volume("v")["reservedBytes"] == 3 * CHUNK, "a chunk that holds data still counts as reserved-unwritten"
    status, _, body = d.api("POST", "/v1/volumes/v/snapshots", body={"name": "s"})
    assert status == 201, body
    assert connect(d, "v@s", meta=True).pread(CHUNK, 0) == data, "the snapshot does not read what its volume reads"
    assert d.api("DELETE", f"/v1/volumes/v/reservations/{r['id']}")[0] == 204
    assert h.pread(CHUNK, 0) == data, "releasing the reservation lost flushed data"


def test_found_a_failed_write_leaves_bytes_in_reserved_chunks(make_remapd):
    """A write into reserved-unwritten chunks that fails part way: the bytes
    that landed are what the volume reads, so they are written; a snapshot
    must read them too."""
    d = make_remapd(pool_size="16M", extra_args=["--fault-injection"])
    d.create_volume("v", MiB)
    h = connect(d, "v", meta=True)
    h.pwrite(os.urandom(CHUNK), 4 * CHUNK)
    status, _, r = d.api("POST", "/v1/volumes/v/reservations", body={"offsetBytes": 0, "lengthBytes": 8 * CHUNK})
    assert status == 201, r
    h.flush()
    faults(d, {"target": "supplier-write", "error": "EIO", "after": 1, "count": 1})
    with pytest.raises(nbd.Error):
        h.pwrite(os.urandom(8 * CHUNK), 0)
    d.api("DELETE", "/v1/debug/faults")
    assert d.api("POST", "/v1/pools/default/clear-errors", body={})[0] == 200
    volume = h.pread(8 * CHUNK, 0)
    d.close_handles()
    status, _, body = d.api("POST", "/v1/volumes/v/snapshots", body={"name": "s"})
    assert status == 201, body
    assert connect(d, "v@s", meta=True).pread(8 * CHUNK, 0) == volume, "the snapshot does not read what its volume reads"


def test_found_a_snapshot_delete_answered_500_lets_writes_change_it(make_remapd):
    """A snapshot delete whose commit fails (500) gives the volume the
    snapshot's chunks at once; a write then goes in place into a chunk the
    durable metadata still gives the snapshot; after kill -9 the snapshot
    is back and must read what it held."""
    d = make_remapd(pool_size="16M", extra_args=["--fault-injection"])
    d.create_volume("v", MiB)
    held_data = os.urandom(CHUNK)
    h = connect(d, "v", meta=True)
    h.pwrite(held_data, 0)
    h.flush()
    assert d.api("POST", "/v1/volumes/v/snapshots", body={"name": "s"})[0] == 201
    faults(d, {"target": "metadata-commit", "error": "EIO"})
    assert d.api("DELETE", "/v1/snapshots/v@s")[0] == 500
    h.pwrite(b"\xee" * 4096, 0)
    d.restart(kill9=True)
    if d.api("GET", "/v1/snapshots/v@s")[0] == 200:
        assert connect(d, "v@s", meta=True).pread(CHUNK, 0) == held_data, "the snapshot came back with other bytes"


def test_found_a_failed_copy_on_write_loses_sticky_space_over_kill9(make_remapd):
    """A copy on write into a range reservation that fails draws on the
    copy-on-write space the snapshot set aside; it comes back only once
    the chunk is zeroed (not while the pool is degraded). A commit and a
    kill -9 in between lose it: the range then holds less than it needs."""
    d = make_remapd(pool_size="16M", extra_args=["--fault-injection"])
    d.create_volume("v", MiB)
    d.create_volume("w", MiB)
    assert d.api("POST", "/v1/volumes/v/reservations", body={"offsetBytes": 0, "lengthBytes": 4 * CHUNK})[0] == 201
    h = connect(d, "v", meta=True)
    h.pwrite(os.urandom(4 * CHUNK), 0)
    h.flush()
    assert d.api("POST", "/v1/volumes/v/snapshots", body={"name": "s"})[0] == 201
    assert held(d, "v@s") == 4
    faults(d, {"target": "supplier-write", "error": "EIO"})
    with pytest.raises(nbd.Error):
        h.pwrite(os.urandom(CHUNK), 0)
    d.api("DELETE", "/v1/debug/faults")
    assert d.api("POST", "/v1/volumes/w/snapshots", body={"name": "t"})[0] == 201   # a commit
    d.restart(kill9=True)
    assert held(d, "v@s") == 4, "the range reservation lost copy-on-write space to a write that failed"


def test_found_a_short_write_that_fails_tears_a_sector(make_remapd):
    """A supplier write cut short mid-sector, whose rest then fails: every
    sector must hold its old or its new bytes, never a mix."""
    d = make_remapd(pool_size="16M", extra_args=["--fault-injection"])
    d.create_volume("v", MiB)
    h = connect(d, "v", meta=True)
    old = os.urandom(CHUNK)
    h.pwrite(old, 0)
    h.flush()
    faults(d, {"target": "supplier-write", "error": "short", "probability": 0.7, "seed": 3},
           {"target": "supplier-write", "error": "ENOSPC", "probability": 0.3, "seed": 5})
    for _ in range(40):
        new = os.urandom(CHUNK)
        try:
            h.pwrite(new, 0)
            old = new
            continue
        except nbd.Error:
            pass
        got = h.pread(CHUNK, 0)
        torn = [s for s in range(0, CHUNK, 512) if got[s:s + 512] not in (old[s:s + 512], new[s:s + 512])]
        assert not torn, f"sectors at {torn[:4]} hold part old, part new bytes"
        old = got


def written_range_and_snapshot(make_remapd):
    """Volume v (1 MiB) all written under a range reservation, flushed, and
    its snapshot s (which holds copy-on-write space for the whole range)."""
    d = make_remapd(pool_size="16M")
    d.create_volume("v", MiB)
    assert d.api("POST", "/v1/volumes/v/reservations", body={"offsetBytes": 0, "lengthBytes": MiB})[0] == 201
    h = connect(d, "v", meta=True)
    h.pwrite(os.urandom(MiB), 0)
    h.flush()
    d.close_handles()
    assert d.api("POST", "/v1/volumes/v/snapshots", body={"name": "s"})[0] == 201
    return d


def test_found_sticky_space_stays_after_the_snapshot_and_clone_are_gone(make_remapd):
    """A snapshot of a volume with a written range reservation sets aside
    copy-on-write space; a clone of it shares the chunks too. Once both are
    deleted nothing is shared, and the space must come back."""
    d = written_range_and_snapshot(make_remapd)
    assert d.api("POST", "/v1/snapshots/v@s/clone", body={"name": "c"})[0] == 201
    assert d.api("DELETE", "/v1/snapshots/v@s")[0] == 204
    assert d.api("DELETE", "/v1/volumes/c")[0] == 204
    assert d.volume("v")["reservedBytes"] == 0, "copy-on-write space held for chunks nothing shares any more"
    assert d.pool()["reservedBytes"] == 0


def test_found_copy_on_write_space_a_snapshot_delete_gave_back_returns_after_kill9(make_remapd):
    """Deleting the only snapshot of a volume with a written range
    reservation gives its copy-on-write space back (204); after kill -9
    the volume holds it again, for chunks nothing shares."""
    d = written_range_and_snapshot(make_remapd)
    assert d.api("DELETE", "/v1/snapshots/v@s")[0] == 204
    assert d.volume("v")["reservedBytes"] == 0
    d.restart(kill9=True)
    assert d.volume("v")["reservedBytes"] == 0, "the copy-on-write space came back with the restart"
    assert d.pool()["reservedBytes"] == 0


def test_found_a_copy_on_write_lost_in_kill9_brings_back_the_other_images_bytes(make_remapd):
    """A chunk shared by a volume and a clone only (their snapshot is
    deleted): the volume copies it on write; the clone, now its only
    holder, writes into it in place; a kill -9 before the copy's mapping is
    committed gives the volume the old chunk back, and it must read its
    own bytes, never the clone's."""
    d = make_remapd(pool_size="16M")
    d.create_volume("v", MiB)
    old = os.urandom(CHUNK)
    h = connect(d, "v", meta=True)
    h.pwrite(old, 0)
    h.flush()
    d.close_handles()
    assert d.api("POST", "/v1/volumes/v/snapshots", body={"name": "s"})[0] == 201
    assert d.api("POST", "/v1/snapshots/v@s/clone", body={"name": "c"})[0] == 201
    assert d.api("DELETE", "/v1/snapshots/v@s")[0] == 204
    connect(d, "v", meta=True).pwrite(os.urandom(4096), 0)
    clone_bytes = os.urandom(4096)
    connect(d, "c", meta=True).pwrite(clone_bytes, 8192)
    d.restart(kill9=True)
    got = connect(d, "v", meta=True).pread(4096, 8192)
    assert got != clone_bytes, "after kill -9 the volume reads the clone's write"
    assert got == old[8192:12288]
