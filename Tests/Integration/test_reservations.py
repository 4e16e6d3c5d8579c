"""Reservations and the exports bound to them (docs/api-v1.md, "Reservations,
exports, events (honest space)"; DESIGN.md, "The contract" 1): 507 when the
pool cannot back one (decided at once, nothing changed), races for the last
space (two clients; a write and a reservation), objects, names, rounding
and bad input, exports, thick and default reservations of a new volume, the
order writes draw on reservations, overlapping ranges, a release with
writes in flight.

Every test drives the real daemon: REST over the unix socket, NBD through
libnbd's Python binding.
"""

import collections
import errno
import random
import threading
import time
from urllib.parse import quote

from harness import (Api, CHUNK, MiB, assert_problem, bind_export, check_space, connect, disconnect, events_since,
                     expect_enospc, fill, last_seq, pattern, release, reservations, reserve, space, wait_until)

import nbd  # noqa: E402  (python3-libnbd; a missing package must fail, not skip)


def test_reservation_refused_with_507_when_it_cannot_be_backed(make_remapd):
    d = make_remapd(pool_size="32M")
    d.create_volume("v", 64 * MiB)
    d.create_volume("w", 64 * MiB)
    h = connect(d, "v")
    h.pwrite(b"\x11" * (4 * MiB), 0)
    h.flush()
    before = space(d)
    assert before["freeBytes"] == 28 * MiB

    t0 = time.monotonic()
    p = reserve(d, "v", {"bytes": 28 * MiB + 1}, expect=507)
    assert time.monotonic() - t0 < 1.0, "a 507 must be decided at once"
    assert (p["requestedBytes"], p["availableBytes"]) == (28 * MiB + CHUNK, 28 * MiB), p
    p = reserve(d, "w", {"offsetBytes": 8 * MiB, "lengthBytes": 30 * MiB}, expect=507)
    assert (p["requestedBytes"], p["availableBytes"]) == (30 * MiB, 28 * MiB), p
    # Nothing changed.
    assert d.pool() == before
    assert reservations(d, "v") == [] and reservations(d, "w") == []

    # Exactly what is free can be reserved; then not one chunk more.
    r = reserve(d, "v", {"bytes": 28 * MiB})
    assert space(d)["freeBytes"] == 0
    p = reserve(d, "w", {"bytes": 1}, expect=507)
    assert (p["requestedBytes"], p["availableBytes"]) == (CHUNK, 0), p
    p = reserve(d, "w", {"offsetBytes": 0, "lengthBytes": CHUNK}, expect=507)
    assert p["availableBytes"] == 0, p
    # A thick or pooled volume create is refused the same way, and creates nothing.
    for spec in ({"reservation": "thick"}, {"reservation": {"bytes": MiB}}):
        status, headers, body = d.api("POST", "/v1/volumes", body={"name": "x", "sizeBytes": MiB, **spec})
        assert_problem(status, headers, body, 507, "insufficient-space")
        assert (body["requestedBytes"], body["availableBytes"]) == (MiB, 0), body
        assert d.api("GET", "/v1/volumes/x")[0] == 404
    release(d, "v", r["id"])
    assert space(d) == before


def test_two_clients_racing_for_the_last_space_get_one_201_and_one_507(make_remapd):
    d = make_remapd(pool_size="32M")
    d.create_volume("v", 64 * MiB)
    d.create_volume("w", 64 * MiB)
    h = connect(d, "v")
    h.pwrite(b"\x22" * (2 * MiB), 0)
    h.flush()
    disconnect(d, h)
    free = space(d)["freeBytes"]
    assert free == 30 * MiB
    half = free // 2 + CHUNK  # two of these do not fit
    specs = [
        ({"bytes": half}, {"bytes": half}),
        ({"bytes": half}, {"offsetBytes": 0, "lengthBytes": half}),
        ({"offsetBytes": 16 * MiB, "lengthBytes": half}, {"offsetBytes": 0, "lengthBytes": half}),
    ]
    apis = [Api(d.api_sock), Api(d.api_sock)]
    for a in apis:
        a.ok("GET", "/v1/health")  # connect before the barrier
    for round_ in range(21):
        spec_v, spec_w = specs[round_ % 3]
        targets = [("v", spec_v), ("w", spec_w)] if round_ % 2 else [("w", spec_w), ("v", spec_v)]
        barrier = threading.Barrier(2)
        results = [None, None]

        def racer(i):
            vol, spec = targets[i]
            barrier.wait()
            results[i] = apis[i]("POST", f"/v1/volumes/{vol}/reservations", spec)

        threads = [threading.Thread(target=racer, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert all(r is not None for r in results), f"round {round_}: a request hung"
        statuses = sorted(r[0] for r in results)
        assert statuses == [201, 507], f"round {round_}: {targets} -> {[(r[0], r[2]) for r in results]}"
        won = next(i for i in range(2) if results[i][0] == 201)
        lost = results[1 - won]
        winner = results[won][2]
        assert_problem(lost[0], lost[1], lost[2], 507, "insufficient-space")
        assert lost[2]["availableBytes"] == free - winner["bytes"], (winner, lost[2])
        pool = space(d)
        assert (pool["reservedBytes"], pool["freeBytes"]) == (winner["bytes"], free - winner["bytes"]), pool
        assert d.api("DELETE", f"/v1/volumes/{targets[won][0]}/reservations/{winner['id']}")[0] == 204
        # A range reservation's chunks come back at the next commit.
        assert wait_until(lambda: space(d)["freeBytes"] == free, timeout=3), d.pool()
    for a in apis:
        a.close()


def test_a_write_and_a_reservation_racing_for_the_last_space_never_both_win(make_remapd):
    """A write needing one new chunk and a reservation of all the free space
    race: exactly one of them gets it, every time."""
    d = make_remapd(pool_size="4M")
    d.create_volume("v", 64 * MiB)
    d.create_volume("f", 4 * MiB)
    hf = connect(d, "f")
    hf.pwrite(b"\x05" * (3 * MiB), 0)
    hf.flush()
    free = space(d)["freeBytes"]
    assert free == MiB
    h = connect(d, "v")
    api = Api(d.api_sock)
    api.ok("GET", "/v1/health")
    outcomes = collections.Counter()
    rng = random.Random(7)
    for round_ in range(20):
        off = round_ * MiB
        jitter = rng.uniform(0, 0.004)  # the write is faster than HTTP: let either win
        barrier = threading.Barrier(2)
        result = {}

        def writer():
            barrier.wait()
            time.sleep(jitter)
            try:
                h.pwrite(b"\x06" * 4096, off)
                result["write"] = "ok"
            except nbd.Error as e:
                result["write"] = "ENOSPC" if e.errnum == errno.ENOSPC else repr(e)

        def reserver():
            barrier.wait()
            result["reserve"] = api("POST", "/v1/volumes/f/reservations", {"bytes": free})

        threads = [threading.Thread(target=writer), threading.Thread(target=reserver)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(result) == 2, f"round {round_}: something hung: {result}"
        status, _, body = result["reserve"]
        outcome = (result["write"], status)
        assert outcome in (("ok", 507), ("ENOSPC", 201)), f"round {round_}: {outcome} {body}"
        outcomes[outcome] += 1
        pool = space(d)
        if status == 201:
            assert (pool["reservedBytes"], pool["freeBytes"]) == (free, 0), pool
            release(d, "f", body["id"])
        else:
            assert body["availableBytes"] == free - CHUNK, body
            assert (pool["reservedBytes"], pool["freeBytes"]) == (0, free - CHUNK), pool
            h.trim(CHUNK, off)
            h.flush()
        assert wait_until(lambda: space(d)["freeBytes"] == free, timeout=3), d.pool()
    api.close()
    assert d.volume("v")["allocatedBytes"] == 0


def test_reservation_objects_names_rounding_and_bad_input(make_remapd):
    d = make_remapd(pool_size="32M")
    d.create_volume("v", 16 * MiB)
    r = reserve(d, "v", {"bytes": 1, "name": "tiny"})
    assert (r["kind"], r["bytes"], r["usedBytes"], r["name"]) == ("pooled", CHUNK, 0, "tiny"), r
    # Same name, same spec: the same reservation (200); another spec: 409.
    again = reserve(d, "v", {"bytes": 1, "name": "tiny"}, expect=200)
    assert again["id"] == r["id"], (r, again)
    status, headers, body = d.api("POST", "/v1/volumes/v/reservations", body={"bytes": 2 * CHUNK, "name": "tiny"})
    assert_problem(status, headers, body, 409, "already-exists")
    rr = reserve(d, "v", {"offsetBytes": 2 * MiB, "lengthBytes": CHUNK + 1})
    assert (rr["kind"], rr["bytes"], rr["offsetBytes"], rr["lengthBytes"]) == \
        ("range", 2 * CHUNK, 2 * MiB, 2 * CHUNK), rr
    assert d.get_ok(f"/v1/volumes/v/reservations/{rr['id']}") == rr
    assert sorted(x["id"] for x in reservations(d, "v")) == sorted([r["id"], rr["id"]])
    assert space(d)["reservedBytes"] == 3 * CHUNK
    v = d.volume("v")
    assert (v["reservedBytes"], v["guaranteedWritableBytes"]) == (3 * CHUNK, 3 * CHUNK), v

    before = d.pool()
    for body in ({"bytes": 0}, {"bytes": -1}, {"bytes": "1"}, {}, {"bytes": 1, "offsetBytes": 0},
                 {"offsetBytes": 0}, {"lengthBytes": CHUNK}, {"offsetBytes": 0, "lengthBytes": 0},
                 {"offsetBytes": 16 * MiB - CHUNK, "lengthBytes": 2 * CHUNK},
                 {"bytes": 1, "ttlSeconds": 0}, {"bytes": 1, "ttlSeconds": 31536001},
                 {"bytes": 1, "bogus": 1}, {"bytes": 1, "name": "../x"}):
        status, headers, problem = d.api("POST", "/v1/volumes/v/reservations", body=body)
        assert_problem(status, headers, problem, 400, "invalid-argument")
    status, headers, problem = d.api("POST", "/v1/volumes/nope/reservations", body={"bytes": 1})
    assert_problem(status, headers, problem, 404, "not-found")
    status, headers, problem = d.api("GET", "/v1/volumes/v/reservations/r-nope")
    assert_problem(status, headers, problem, 404, "not-found")
    status, headers, problem = d.api("DELETE", "/v1/volumes/v/reservations/r-nope")
    assert_problem(status, headers, problem, 404, "not-found")
    status, headers, problem = d.api("POST", f"/v1/volumes/v/reservations/{r['id']}/renew", body={})
    assert_problem(status, headers, problem, 400, "invalid-argument")  # no TTL
    assert d.pool() == before

    release(d, "v", r["id"])
    status, headers, problem = d.api("GET", f"/v1/volumes/v/reservations/{r['id']}")
    assert_problem(status, headers, problem, 404, "not-found")
    release(d, "v", rr["id"])
    assert space(d)["reservedBytes"] == 0 and d.volume("v")["allocatedBytes"] == 0


def test_exports_default_name_listing_in_use_and_errors(make_remapd):
    d = make_remapd(pool_size="32M")
    d.create_volume("v", 8 * MiB)
    d.create_volume("w", 8 * MiB)
    r = reserve(d, "v", {"bytes": MiB})
    rw = reserve(d, "w", {"offsetBytes": 0, "lengthBytes": MiB})
    name = bind_export(d, "v", r["id"])
    assert name == f"v+{r['id']}"
    unbound = d.api("POST", "/v1/exports", body={"volume": "v", "name": "v-extra"})
    assert unbound[0] == 201 and unbound[2].get("reservation") is None, unbound
    names = {e["name"] for e in d.get_ok("/v1/exports")["exports"]}
    assert names == {"v", "w", name, "v-extra"}, names
    for body, code, status in (
            ({"volume": "nope"}, "not-found", 404),
            ({"volume": "v", "reservation": "r-nope"}, None, None),
            ({"volume": "v", "reservation": rw["id"]}, None, None),       # another volume's
            ({"volume": "w", "reservation": rw["id"]}, None, None),       # a range reservation
            ({"volume": "v", "name": "v-extra"}, "already-exists", 409),
            ({"volume": "v", "bogus": 1}, "invalid-argument", 400)):
        st, headers, problem = d.api("POST", "/v1/exports", body=body)
        if code:
            assert_problem(st, headers, problem, status, code)
        else:
            assert 400 <= st < 500 and headers.get("content-type", "").startswith("application/problem+json"), \
                f"{body} -> {st} {problem}"

    h = connect(d, name)
    h.pwrite(b"\x33" * CHUNK, 0)
    st, headers, problem = d.api("DELETE", f"/v1/exports/{quote(name, safe='')}")
    assert_problem(st, headers, problem, 409, "in-use")
    disconnect(d, h)
    assert wait_until(lambda: d.api("DELETE", f"/v1/exports/{quote(name, safe='')}")[0] == 204, timeout=3)
    assert d.api("DELETE", "/v1/exports/v-extra")[0] == 204
    st, headers, problem = d.api("DELETE", "/v1/exports/v")  # a volume's own export
    assert 400 <= st < 500, (st, problem)
    assert {e["name"] for e in d.get_ok("/v1/exports")["exports"]} == {"v", "w"}
    assert reservations(d, "v")[0]["usedBytes"] == CHUNK


def test_volume_create_thick_and_default_reservations(make_remapd):
    d = make_remapd(pool_size="16M")
    status, _, thick = d.api("POST", "/v1/volumes", body={"name": "t", "sizeBytes": 4 * MiB, "reservation": "thick"})
    assert status == 201, thick
    [r] = reservations(d, "t")
    assert (r["name"], r["kind"], r["offsetBytes"], r["bytes"]) == ("thick", "range", 0, 4 * MiB), r
    status, _, v = d.api("POST", "/v1/volumes", body={"name": "p", "sizeBytes": 8 * MiB, "reservation": {"bytes": 2 * MiB}})
    assert status == 201, v
    [rp] = reservations(d, "p")
    assert (rp["name"], rp["kind"], rp["bytes"]) == ("default", "pooled", 2 * MiB), rp
    pool = space(d)
    assert (pool["reservedBytes"], pool["freeBytes"]) == (6 * MiB, 10 * MiB), pool
    assert d.volume("t")["guaranteedWritableBytes"] == 4 * MiB
    assert d.volume("p")["guaranteedWritableBytes"] == 2 * MiB

    # Fill the pool from a third volume; t and p keep what they were promised,
    # p through its own export (the default reservation covers every export).
    d.create_volume("x", 32 * MiB)
    hx = connect(d, "x")
    assert fill(hx, 0, "x", limit=32 * MiB) == 10 * MiB
    ht, hp = connect(d, "t"), connect(d, "p")
    ht.pwrite(pattern("t", 0, 4 * MiB), 0)
    hp.pwrite(pattern("p", 0, 2 * MiB), 4 * MiB)
    expect_enospc(hp, 0)                               # p's reservation is used up
    expect_enospc(hx, 10 * MiB)
    ht.flush()
    hp.flush()
    assert ht.pread(4 * MiB, 0) == pattern("t", 0, 4 * MiB)
    assert hp.pread(2 * MiB, 4 * MiB) == pattern("p", 0, 2 * MiB)
    pool = space(d)
    assert (pool["allocatedBytes"], pool["reservedBytes"], pool["freeBytes"]) == (16 * MiB, 0, 0), pool

    # A thick volume's reservation follows it when it grows, or the grow is refused.
    disconnect(d, hx)
    d.delete_volume("x")
    status, _, body = d.api("PATCH", "/v1/volumes/t", body={"sizeBytes": 6 * MiB})
    assert status == 200, body
    [r] = reservations(d, "t")
    assert (r["bytes"], r["usedBytes"]) == (6 * MiB, 4 * MiB), r
    assert space(d)["reservedBytes"] == 2 * MiB
    status, headers, body = d.api("PATCH", "/v1/volumes/t", body={"sizeBytes": 64 * MiB})
    assert_problem(status, headers, body, 507, "insufficient-space")
    assert d.volume("t")["sizeBytes"] == 6 * MiB


def test_writes_draw_on_the_bound_reservation_then_the_default_then_free_space(make_remapd):
    d = make_remapd(pool_size="2M")  # 32 chunks
    status, _, v = d.api("POST", "/v1/volumes", body={"name": "v", "sizeBytes": 4 * MiB,
                                                      "reservation": {"bytes": 4 * CHUNK}})
    assert status == 201, v
    [default] = reservations(d, "v")
    bound = reserve(d, "v", {"bytes": 4 * CHUNK})
    export = bind_export(d, "v", bound["id"])
    d.create_volume("f", 4 * MiB)
    hf = connect(d, "f")
    assert fill(hf, 0, "f", step=CHUNK, limit=4 * MiB) == 24 * CHUNK

    def used():
        return {r["id"]: r["usedBytes"] // CHUNK for r in reservations(d, "v")}

    hb, hv = connect(d, export), connect(d, "v")
    hb.pwrite(b"\x01" * CHUNK, 0)                     # bound first
    assert used() == {bound["id"]: 1, default["id"]: 0}
    hv.pwrite(b"\x02" * CHUNK, CHUNK)                 # own export: the default only
    assert used() == {bound["id"]: 1, default["id"]: 1}
    hb.pwrite(b"\x03" * (5 * CHUNK), 2 * CHUNK)       # 3 from bound, then 2 from the default
    assert used() == {bound["id"]: 4, default["id"]: 3}
    hb.pwrite(b"\x04" * CHUNK, 7 * CHUNK)             # the default's last chunk
    assert used() == {bound["id"]: 4, default["id"]: 4}
    pool = space(d)
    assert (pool["reservedBytes"], pool["freeBytes"]) == (0, 0), pool
    expect_enospc(hb, 8 * CHUNK)
    expect_enospc(hv, 8 * CHUNK)
    assert hb.pread(8 * CHUNK, 0) == b"\x01" * CHUNK + b"\x02" * CHUNK + b"\x03" * (5 * CHUNK) + b"\x04" * CHUNK


def test_overlapping_range_reservations_each_keep_their_guarantee(make_remapd):
    """Two range reservations share chunks; releasing the first must not
    take the backing from under the second (its range stays writable on a
    full pool)."""
    d = make_remapd(pool_size="8M")
    d.create_volume("v", 8 * MiB)
    d.create_volume("f", 8 * MiB)
    r1 = reserve(d, "v", {"offsetBytes": 0, "lengthBytes": 2 * MiB})
    r2 = reserve(d, "v", {"offsetBytes": MiB, "lengthBytes": 2 * MiB})
    assert space(d)["reservedBytes"] == 3 * MiB
    hf = connect(d, "f")
    assert fill(hf, 0, "f", limit=8 * MiB) == 5 * MiB
    release(d, "v", r1["id"])
    # The chunks only r1 backed come back at the next commit.
    assert wait_until(lambda: space(d)["freeBytes"] == MiB, timeout=3), d.pool()
    assert space(d)["reservedBytes"] == 2 * MiB
    # Take the freed MiB with f, then r2's whole range must still be writable.
    assert fill(hf, 5 * MiB, "f", limit=8 * MiB) == 6 * MiB
    hv = connect(d, "v")
    hv.pwrite(pattern("v", MiB, 2 * MiB), MiB)
    hv.flush()
    assert hv.pread(2 * MiB, MiB) == pattern("v", MiB, 2 * MiB)
    expect_enospc(hv, 0)
    [left] = reservations(d, "v")
    assert (left["id"], left["usedBytes"]) == (r2["id"], 2 * MiB), left
    pool = space(d)
    assert (pool["allocatedBytes"], pool["reservedBytes"], pool["freeBytes"]) == (8 * MiB, 0, 0), pool


def test_release_with_writes_in_flight_returns_exactly_the_unused_part(make_remapd):
    """DELETE of a pooled reservation while aio writes drawing on it are in
    flight: every write succeeds, and once the last one completed the pool
    got back exactly what was not used (never twice, never leaked)."""
    d = make_remapd(pool_size="256M")
    d.create_volume("v", 256 * MiB)
    cap = space(d)["capacityBytes"]
    block = MiB
    allocated = 0
    hit = 0
    for attempt in range(3):
        base = attempt * 64 * MiB
        r = reserve(d, "v", {"bytes": 64 * MiB})
        export = bind_export(d, "v", r["id"], name=f"v-r{attempt}")
        h = connect(d, export)
        seq = last_seq(d)
        n = 40
        bufs = [nbd.Buffer.from_bytearray(bytearray(pattern("v", base + i * block, block))) for i in range(n)]
        cookies = [h.aio_pwrite(bufs[i], base + i * block) for i in range(n)]

        deleted = threading.Event()
        done = threading.Event()
        samples, problems = [], []

        def deleter():
            api = Api(d.api_sock)
            try:
                status, _, body = api("DELETE", f"/v1/volumes/v/reservations/{r['id']}")
                if status != 204:
                    problems.append(f"DELETE -> {status} {body}")
                deleted.set()
                while not done.is_set():
                    p = api.ok("GET", "/v1/pools/default")
                    samples.append(p)
                    time.sleep(0.002)
            except Exception as e:  # reported by the main thread
                problems.append(repr(e))
                deleted.set()
            finally:
                api.close()

        t = threading.Thread(target=deleter)
        t.start()
        in_flight_at_delete = None
        results = {}
        deadline = time.monotonic() + 30
        while len(results) < n and time.monotonic() < deadline:
            h.poll(1)
            if in_flight_at_delete is None and deleted.is_set():
                in_flight_at_delete = h.aio_in_flight()
            for c in cookies:
                if c not in results:
                    try:
                        if h.aio_command_completed(c):
                            results[c] = None
                    except nbd.Error as e:
                        results[c] = e
        done.set()
        t.join(10)
        assert not problems, problems
        assert len(results) == n, f"{n - len(results)} writes never completed (a hang)"
        failed = {i: results[c] for i, c in enumerate(cookies) if results[c] is not None}
        assert not failed, f"writes failed: {failed}"
        if in_flight_at_delete is None:
            in_flight_at_delete = 0
        hit += in_flight_at_delete > 0
        for p in samples:
            check_space(p)

        allocated += n * block
        pool = space(d)
        assert (pool["allocatedBytes"], pool["reservedBytes"], pool["freeBytes"]) == \
            (allocated, 0, cap - allocated), f"attempt {attempt}: {pool}"
        status, _, _ = d.api("GET", f"/v1/volumes/v/reservations/{r['id']}")
        assert status == 404
        released = [e for e in events_since(d, seq) if e["type"] == "reservation.released"]
        assert [e.get("reservation") for e in released] == [r["id"]], released
        for i in range(n):
            assert h.pread(block, base + i * block) == pattern("v", base + i * block, block)
        disconnect(d, h)
    assert hit > 0, "the DELETE never overlapped writes in flight (test too slow to race)"
    assert d.volume("v")["allocatedBytes"] == allocated
