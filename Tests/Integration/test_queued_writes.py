"""onNoSpace queueing (docs/api-v1.md, "Reservations, exports, events (honest
space)"; DESIGN.md, "The contract" 1): a write with no space waits up to
queueSeconds for a pool to grow (supplier PATCH or a new supplier) or a
reservation to be released, then succeeds; else ENOSPC on time; a
supplier's PATCH only grows it.

Every test drives the real daemon: REST over the unix socket, NBD through
libnbd's Python binding.
"""

import errno
import os
import time

import pytest

from harness import (CHUNK, MiB, assert_problem, check_space, connect, events_since, expect_enospc, fill, last_seq,
                     make_pool, pattern, release, reserve)

import nbd  # noqa: E402  (python3-libnbd; a missing package must fail, not skip)


def aio_wait(h, cookies, timeout):
    """Pump `h` until every cookie completed or `timeout`; return
    {cookie: None | nbd.Error} for the completed ones."""
    done = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(cookies) and time.monotonic() < deadline:
        h.poll(50)
        for c in cookies:
            if c in done:
                continue
            try:
                if h.aio_command_completed(c):
                    done[c] = None
            except nbd.Error as e:
                done[c] = e
    return done


def test_queued_write_waits_for_a_grown_pool_then_succeeds(make_remapd):
    d = make_remapd(pool_size="1M")
    pool = make_pool(d, "q", 16 * CHUNK, chunkSizeBytes=CHUNK)
    sid = pool["suppliers"][0]["id"]
    status, _, pool = d.api("PATCH", "/v1/pools/q", body={"onNoSpace": {"queueSeconds": 5}})
    assert status == 200 and pool["onNoSpace"] == {"queueSeconds": 5}, pool
    d.create_volume("v", 8 * MiB, pool="q")
    h = connect(d, "v")
    reader = connect(d, "v")
    h.pwrite(pattern("v", 0, MiB), 0)
    h.flush()
    assert check_space(d.pool("q"))["freeBytes"] == 0
    seq = last_seq(d)

    for grow in ("patch", "post"):
        off = (2 if grow == "patch" else 3) * MiB
        data = pattern("v", off, 4096)
        buf = nbd.Buffer.from_bytearray(bytearray(data))
        t0 = time.monotonic()
        cookie = h.aio_pwrite(buf, off)
        assert aio_wait(h, [cookie], 1.0) == {}, f"{grow}: the write did not wait for space"
        # Reads (another connection) are served meanwhile.
        t1 = time.monotonic()
        assert reader.pread(4096, 0) == pattern("v", 0, 4096)
        assert time.monotonic() - t1 < 0.5
        if grow == "patch":
            status, _, pool = d.api("PATCH", f"/v1/pools/q/suppliers/{sid}", body={"sizeBytes": 32 * CHUNK})
        else:
            status, _, pool = d.api("POST", "/v1/pools/q/suppliers", body={
                "kind": "file", "path": str(d.state_dir / "pools" / "q2.img"), "sizeBytes": 16 * CHUNK})
        assert status in (200, 201), pool
        done = aio_wait(h, [cookie], 6.0)
        assert done == {cookie: None}, f"{grow}: queued write -> {done}"
        assert time.monotonic() - t0 < 5.0
        assert h.pread(4096, off) == data
        pool = check_space(d.pool("q"))
        assert pool["capacityBytes"] == (32 if grow == "patch" else 48) * CHUNK, pool
        # Fill the new space so the next round starts full again.
        filled = fill(h, 4 * MiB if grow == "patch" else 6 * MiB, "v", step=CHUNK)
        assert check_space(d.pool("q"))["freeBytes"] == 0, filled
    grown = [e for e in events_since(d, seq) if e["type"] == "pool.grown"]
    assert len(grown) == 2 and all(e.get("pool") == "q" for e in grown), grown
    d.restart()
    pool = check_space(d.pool("q"))
    assert pool["capacityBytes"] == 48 * CHUNK and pool["onNoSpace"] == {"queueSeconds": 5}, pool


def test_queued_write_is_released_by_a_reservation_release(make_remapd):
    d = make_remapd(pool_size="1M")
    make_pool(d, "q", 16 * CHUNK, chunkSizeBytes=CHUNK)
    d.api("PATCH", "/v1/pools/q", body={"onNoSpace": {"queueSeconds": 5}})
    d.create_volume("v", 8 * MiB, pool="q")
    d.create_volume("w", 8 * MiB, pool="q")
    r = reserve(d, "w", {"bytes": 2 * CHUNK})
    h = connect(d, "v")
    for c in range(14):
        h.pwrite(b"\x55" * CHUNK, c * CHUNK)
    cookie = h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(b"\x66" * 4096)), 20 * CHUNK)
    assert aio_wait(h, [cookie], 1.0) == {}, "the write did not wait for space"
    release(d, "w", r["id"])
    assert aio_wait(h, [cookie], 4.0) == {cookie: None}
    assert h.pread(4096, 20 * CHUNK) == b"\x66" * 4096
    pool = check_space(d.pool("q"))
    assert (pool["allocatedBytes"], pool["reservedBytes"], pool["freeBytes"]) == (15 * CHUNK, 0, CHUNK), pool


@pytest.mark.parametrize("queue", [1, 2])
def test_queued_write_fails_with_enospc_after_queue_seconds(make_remapd, queue):
    d = make_remapd(pool_size="1M")
    make_pool(d, "q", 16 * CHUNK, chunkSizeBytes=CHUNK)
    status, _, pool = d.api("PATCH", "/v1/pools/q", body={"onNoSpace": {"queueSeconds": queue}})
    assert status == 200, pool
    d.create_volume("v", 8 * MiB, pool="q")
    h = connect(d, "v")
    h.pwrite(b"\x77" * MiB, 0)
    seq = last_seq(d)
    t0 = time.monotonic()
    with pytest.raises(nbd.Error) as exc:
        h.pwrite(b"\x78" * 4096, 4 * MiB)
    waited = time.monotonic() - t0
    assert exc.value.errnum == errno.ENOSPC, exc.value
    assert queue - 0.2 <= waited <= queue + 1.5, f"failed after {waited:.2f}s with queueSeconds={queue}"
    no_space = [e for e in events_since(d, seq) if e["type"] == "pool.no-space"]
    assert no_space and no_space[0].get("volume") == "v" and no_space[0].get("offsetBytes") == 4 * MiB, no_space
    # Back to "error": at once again.
    status, _, pool = d.api("PATCH", "/v1/pools/q", body={"onNoSpace": "error"})
    assert status == 200 and pool["onNoSpace"] == "error", pool
    assert expect_enospc(h, 5 * MiB) < 0.1
    assert h.pread(4096, 0) == b"\x77" * 4096
    check_space(d.pool("q"))


def test_supplier_patch_is_grow_only(make_remapd):
    d = make_remapd(pool_size="1M")
    pool = make_pool(d, "g", 16 * CHUNK, chunkSizeBytes=CHUNK)
    sid = pool["suppliers"][0]["id"]
    for body in ({"sizeBytes": 8 * CHUNK}, {"sizeBytes": "x"}, {}, {"sizeBytes": 32 * CHUNK, "bogus": 1}):
        status, headers, problem = d.api("PATCH", f"/v1/pools/g/suppliers/{sid}", body=body)
        assert_problem(status, headers, problem, 400, "invalid-argument")
    status, headers, problem = d.api("PATCH", "/v1/pools/g/suppliers/nope", body={"sizeBytes": 32 * CHUNK})
    assert_problem(status, headers, problem, 404, "not-found")
    assert d.pool("g")["capacityBytes"] == 16 * CHUNK
    status, _, pool = d.api("PATCH", f"/v1/pools/g/suppliers/{sid}", body={"sizeBytes": 20 * CHUNK})
    assert status == 200 and pool["capacityBytes"] == 20 * CHUNK and pool["freeBytes"] == 20 * CHUNK, pool
    assert pool["suppliers"][0]["sizeBytes"] == 20 * CHUNK
    assert os.path.getsize(pool["suppliers"][0]["path"]) == 20 * CHUNK
    d.restart(kill9=True)
    assert check_space(d.pool("g"))["capacityBytes"] == 20 * CHUNK
