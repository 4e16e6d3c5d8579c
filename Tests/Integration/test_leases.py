"""Leases: reservations with a TTL (docs/api-v1.md,
"Reservations, exports, events (honest space)"; DESIGN.md, "The contract" 1). They end on time, no sooner and
not much later; a renew keeps one alive; the written part of an expired
range lease stays; reservation.expired events; across kill -9 and SIGTERM
restarts.

Every test drives the real daemon: REST over the unix socket, NBD through
libnbd's Python binding.
"""

import time

import pytest

from harness import (CHUNK, MiB, assert_problem, connect, events_since, last_seq, parse_time, pattern, reservations,
                     reserve, space, wait_until)


def at_phase(phase):
    """Sleep until the wall clock's fraction of a second is `phase`:
    a lease made late in a second shows whether its TTL is cut short by
    whole-second rounding."""
    while abs(time.time() % 1 - phase) > 0.02:
        time.sleep(0.005)


def test_lease_expires_after_ttl_and_renew_extends_it(make_remapd):
    """Leases (ttlSeconds=2) end no sooner than 2 s after they were asked
    for, and no later than 2 s + 1.5 s after; renewing keeps one alive;
    the written part of an expired range lease stays; reservation.expired
    events name them."""
    d = make_remapd(pool_size="32M")
    d.create_volume("v", 16 * MiB)
    seq = last_seq(d)
    at_phase(0.9)
    asked = {}
    asked["pooled"] = time.time()
    pooled = reserve(d, "v", {"bytes": 4 * MiB, "ttlSeconds": 2})
    asked["ranged"] = time.time()
    ranged = reserve(d, "v", {"offsetBytes": 8 * MiB, "lengthBytes": 2 * MiB, "ttlSeconds": 2})
    kept = reserve(d, "v", {"bytes": MiB})
    asked["renewed"] = time.time()
    renewed = reserve(d, "v", {"bytes": MiB, "ttlSeconds": 2, "name": "renewed"})
    answered = time.time()
    for r in (pooled, ranged, renewed):
        assert asked["pooled"] + 2 - 1.05 <= parse_time(r["expiresAt"]) <= answered + 2 + 1, r
    assert kept.get("expiresAt") is None
    assert space(d)["reservedBytes"] == 8 * MiB
    # Part of the range is written: that part stays when the lease ends.
    h = connect(d, "v")
    h.pwrite(pattern("v", 8 * MiB, CHUNK), 8 * MiB)
    h.flush()

    leases = {pooled["id"]: "pooled", ranged["id"]: "ranged"}
    gone = {}
    last_renew = asked["renewed"]
    next_renew = answered + 0.8
    while time.time() - asked["pooled"] < 7:
        now = time.time()
        ids = {r["id"] for r in reservations(d, "v")}
        for rid, what in leases.items():
            if rid not in ids and rid not in gone:
                gone[rid] = now
                early = asked[what] + 2 - now
                assert early <= 0.05, f"the {what} lease (ttl 2) ended {early:.2f}s before its TTL"
        assert renewed["id"] in ids, \
            f"the renewed lease ended {now - last_renew:.2f}s after its last renew (ttl 2)"
        if now >= next_renew:
            # Renew late in a second too: the new TTL must not be cut short.
            at_phase(0.9)
            last_renew = time.time()
            status, _, body = d.api("POST", f"/v1/volumes/v/reservations/{renewed['id']}/renew", body={})
            assert status == 200, f"renew -> {status} {body}"
            assert parse_time(body["expiresAt"]) >= last_renew + 2 - 1.05, body
            next_renew = last_renew + 1.0
        time.sleep(0.1)
    for rid, what in leases.items():
        assert rid in gone, f"the {what} lease (ttl 2) still there after 7 s"
        assert gone[rid] - asked[what] <= 2 + 1.5 + 0.2, \
            f"the {what} lease ended {gone[rid] - asked[what]:.2f}s after it was made (ttl 2)"
    ids = {r["id"] for r in reservations(d, "v")}
    assert ids == {kept["id"], renewed["id"]}, "the renewed lease must still be there"
    status, _, body = d.api("POST", f"/v1/volumes/v/reservations/{renewed['id']}/renew", body={"ttlSeconds": 60})
    assert status == 200 and parse_time(body["expiresAt"]) >= time.time() + 58, body

    assert wait_until(lambda: space(d)["allocatedBytes"] == CHUNK, timeout=3), d.pool()
    assert space(d)["reservedBytes"] == 2 * MiB
    assert h.pread(CHUNK, 8 * MiB) == pattern("v", 8 * MiB, CHUNK)
    assert h.pread(MiB, 9 * MiB) == bytes(MiB)
    expired = [e for e in events_since(d, seq) if e["type"] == "reservation.expired"]
    assert sorted(e.get("reservation") for e in expired) == sorted([pooled["id"], ranged["id"]]), expired
    assert all(e.get("volume") == "v" for e in expired), expired
    status, headers, problem = d.api("POST", f"/v1/volumes/v/reservations/{pooled['id']}/renew", body={})
    assert_problem(status, headers, problem, 404, "not-found")


@pytest.mark.parametrize("how", ["kill9", "sigterm"])
def test_lease_expires_across_a_restart(make_remapd, how):
    d = make_remapd(pool_size="32M")
    d.create_volume("v", 16 * MiB)
    short = reserve(d, "v", {"bytes": 4 * MiB, "ttlSeconds": 2})
    survives = reserve(d, "v", {"bytes": 2 * MiB, "ttlSeconds": 8})
    kept = reserve(d, "v", {"offsetBytes": 0, "lengthBytes": MiB})
    long = reserve(d, "v", {"bytes": CHUNK, "ttlSeconds": 100})
    # A renew's TTL is a 2xx change too: renewing without ttlSeconds
    # afterwards must mean the same before and after the restart.
    status, _, body = d.api("POST", f"/v1/volumes/v/reservations/{long['id']}/renew", body={"ttlSeconds": 200})
    assert status == 200, body
    t = time.time()
    status, _, body = d.api("POST", f"/v1/volumes/v/reservations/{long['id']}/renew", body={})
    assert status == 200, body
    default_ttl = next((ttl for ttl in (100, 200) if abs(parse_time(body["expiresAt"]) - t - ttl) <= 1.5), None)
    assert default_ttl, f"renew without ttlSeconds after a TTL of 100 and a renew of 200: {body}"
    assert space(d)["reservedBytes"] == 7 * MiB + CHUNK
    if how == "kill9":
        d.kill9()
    else:
        d.terminate()
    time.sleep(3)
    d.start()
    assert wait_until(lambda: {r["id"] for r in reservations(d, "v")} == {survives["id"], kept["id"], long["id"]},
                      timeout=2), reservations(d, "v")
    pool = space(d)
    assert pool["reservedBytes"] == 3 * MiB + CHUNK and pool["allocatedBytes"] == 0, pool
    [s] = [r for r in reservations(d, "v") if r["id"] == survives["id"]]
    assert s["expiresAt"] == survives["expiresAt"], (s, survives)
    events = events_since(d, 0)
    assert short["id"] in [e.get("reservation") for e in events if e["type"] == "reservation.expired"], events
    # The surviving lease still ends on time after the restart.
    assert wait_until(lambda: {r["id"] for r in reservations(d, "v")} == {kept["id"], long["id"]}, timeout=8), \
        reservations(d, "v")
    assert space(d)["reservedBytes"] == MiB + CHUNK
    t = time.time()
    status, _, body = d.api("POST", f"/v1/volumes/v/reservations/{long['id']}/renew", body={})
    assert status == 200, body
    assert abs(parse_time(body["expiresAt"]) - t - default_ttl) <= 1.5, \
        f"renew without ttlSeconds gave {parse_time(body['expiresAt']) - t:.0f} s after the restart, " \
        f"{default_ttl} s before it: {body}"
