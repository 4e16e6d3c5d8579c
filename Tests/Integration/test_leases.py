"""Leases: reservations with a TTL (docs/api-v1.md, "Reservations,
exports, events (honest space)"; DESIGN.md, "The contract" 1). They end on
time, no sooner and not much later; a renew keeps one alive; the written
part of an expired range lease stays; reservation.expired events; across
kill -9 and SIGTERM restarts.

Every test drives the real daemon: REST over the unix socket, NBD through
libnbd's Python binding.
"""

import time

import pytest

from harness import (CHUNK, MiB, assert_problem, connect, events_since, last_seq, parse_time, pattern, reservations,
                     reserve, space, wait_until)


TTL = 5     # seconds: a renew about once a second keeps a lease alive with 3 s to spare for slow calls
LATE = 1.5  # seconds past its TTL a lease may still be listed (expiry runs on a timer)


def at_phase(phase):
    """Sleep until the wall clock's fraction of a second is `phase`:
    a lease made late in a second shows whether its TTL is cut short by
    whole-second rounding."""
    time.sleep((phase - time.time() % 1) % 1)


def test_lease_expires_after_ttl_and_renew_extends_it(make_remapd):
    """Leases (ttlSeconds=5) end no sooner than 5 s after they were asked
    for, and no later than 5 s + 1.5 s after they were made; renewing keeps
    one alive; the written part of an expired range lease stays;
    reservation.expired events name them. Each bound is taken from the
    times the calls were made and answered, so a slow call (a loaded
    machine) never looks like a lease ended early or late."""
    d = make_remapd(pool_size="32M")
    d.create_volume("v", 16 * MiB)
    seq = last_seq(d)
    kept = reserve(d, "v", {"bytes": MiB})
    assert kept.get("expiresAt") is None
    at_phase(0.9)
    asked, made = {}, {}
    asked["pooled"] = time.time()
    pooled = reserve(d, "v", {"bytes": 4 * MiB, "ttlSeconds": TTL})
    made["pooled"] = asked["ranged"] = time.time()
    ranged = reserve(d, "v", {"offsetBytes": 8 * MiB, "lengthBytes": 2 * MiB, "ttlSeconds": TTL})
    made["ranged"] = asked["renewed"] = time.time()
    renewed = reserve(d, "v", {"bytes": MiB, "ttlSeconds": TTL, "name": "renewed"})
    answered = time.time()
    for r in (pooled, ranged, renewed):
        assert asked["pooled"] + TTL - 1.05 <= parse_time(r["expiresAt"]) <= answered + TTL + 1, r
    reserved = space(d)["reservedBytes"]
    # (Unless the answer came so late that a lease may have ended meanwhile.)
    assert reserved == 8 * MiB or time.time() >= asked["pooled"] + TTL, reserved
    # Part of the range is written: that part stays when the lease ends.
    h = connect(d, "v")
    h.pwrite(pattern("v", 8 * MiB, CHUNK), 8 * MiB)
    h.flush()

    leases = {pooled["id"]: "pooled", ranged["id"]: "ranged"}
    gone = set()
    last_renew = asked["renewed"]
    while True:
        now = time.time()
        # About once a second, late in it (the new TTL must not be cut short
        # by whole-second rounding); at once when a slow call made it wait.
        if now >= last_renew + 0.5 and now % 1 >= 0.8 or now >= last_renew + 1.5:
            previous, last_renew = last_renew, now
            status, _, body = d.api("POST", f"/v1/volumes/v/reservations/{renewed['id']}/renew", body={})
            assert status == 200, f"renew {last_renew - previous:.2f}s after the last one (ttl {TTL}) -> {status} {body}"
            assert parse_time(body["expiresAt"]) >= last_renew + TTL - 1.05, body
        # The daemon answered the listing at some moment between these two.
        before = time.time()
        ids = {r["id"] for r in reservations(d, "v")}
        after = time.time()
        for rid, what in leases.items():
            if rid in ids:
                late = before - made[what] - TTL
                assert late <= LATE, \
                    f"the {what} lease (ttl {TTL}) still there {before - made[what]:.2f}s after it was made"
            elif rid not in gone:
                gone.add(rid)
                early = asked[what] + TTL - after
                assert early <= 0.05, f"the {what} lease (ttl {TTL}) ended {early:.2f}s before its TTL"
        if renewed["id"] not in ids:
            assert after - last_renew >= TTL, \
                f"the renewed lease ended {after - last_renew:.2f}s after its last renew (ttl {TTL})"
            pytest.fail(f"no renew for {after - last_renew:.2f}s (ttl {TTL}): the test was too slow to renew")
        # Without its renews the renewed lease would be gone by now.
        if len(gone) == len(leases) and before > answered + TTL + LATE:
            break
        time.sleep(0.1)
    ids = {r["id"] for r in reservations(d, "v")}
    assert ids == {kept["id"], renewed["id"]}, "the renewed lease must still be there"
    t = time.time()
    status, _, body = d.api("POST", f"/v1/volumes/v/reservations/{renewed['id']}/renew", body={"ttlSeconds": 60})
    assert status == 200 and parse_time(body["expiresAt"]) >= t + 60 - 1.05, body

    assert wait_until(lambda: space(d)["allocatedBytes"] == CHUNK, timeout=10), d.pool()
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
