"""Low-space thresholds (docs/api-v1.md, "Reservations, exports, events
(honest space)"; DESIGN.md, "The contract" 1): a pool.low-space event once
per upward crossing of each threshold, counting allocated and reserved
space; the thresholds' bad input.

Every test drives the real daemon: REST over the unix socket, NBD through
libnbd's Python binding.
"""

import time

from harness import (CHUNK, MiB, assert_problem, check_space, connect, events_since, last_seq, make_pool, release,
                     reserve, wait_until)


def low_space(d, since, pool):
    return [e for e in events_since(d, since) if e["type"] == "pool.low-space" and e.get("pool") == pool]


def test_low_space_threshold_events_fire_once_per_crossing(make_remapd):
    d = make_remapd(pool_size="1M")
    make_pool(d, "t", 100 * CHUNK, chunkSizeBytes=CHUNK)  # 1 chunk = 1 %
    assert d.pool("t")["lowSpaceThresholds"] == [80, 90, 95]
    status, _, pool = d.api("PATCH", "/v1/pools/t", body={"lowSpaceThresholds": [50, 75]})
    assert status == 200 and pool["lowSpaceThresholds"] == [50, 75], pool
    d.create_volume("v", 8 * MiB, pool="t")
    d.create_volume("w", 8 * MiB, pool="t")
    h = connect(d, "v")
    seq = last_seq(d)

    def write_chunks(first, count):
        for c in range(first, first + count):
            h.pwrite(b"\x44" * CHUNK, c * CHUNK)
        h.flush()

    def seen(expect):
        """The low-space events so far, by threshold, once they settled
        (the daemon may look at the pool on a timer)."""
        def get():
            return [50 if 50 <= e.get("percent", -1) < 75 else 75 if e.get("percent", -1) >= 75 else None
                    for e in low_space(d, seq, "t")]
        wait_until(lambda: get() == expect, timeout=1.5)
        time.sleep(0.6)
        return get()

    def committed(percent):
        p = check_space(d.pool("t"))
        return (p["allocatedBytes"] + p["reservedBytes"]) // CHUNK == percent

    write_chunks(0, 40)                               # 40 %
    assert seen([]) == []
    r = reserve(d, "w", {"bytes": 15 * CHUNK})        # 55 %: committed = allocated + reserved
    assert seen([50]) == [50]
    write_chunks(40, 5)                               # 60 %
    h.trim(8 * CHUNK, 37 * CHUNK)                     # 52 %, still above
    h.flush()
    assert wait_until(lambda: committed(52), timeout=3), d.pool("t")
    write_chunks(37, 8)                               # 60 % again
    assert seen([50]) == [50], "crossing upward again without dropping below fired again"

    release(d, "w", r["id"])                          # 45 %: below
    assert committed(45)
    assert seen([50]) == [50]
    write_chunks(45, 10)                              # 55 %: a second crossing
    assert seen([50, 50]) == [50, 50]
    write_chunks(55, 25)                              # 80 %: crosses 75
    assert seen([50, 50, 75]) == [50, 50, 75]
    assert low_space(d, seq, "default") == []

    # A dip below and back that lasts a moment is still a crossing.
    h.trim(40 * CHUNK, 40 * CHUNK)                    # 40 %
    h.flush()
    assert wait_until(lambda: committed(40), timeout=3), d.pool("t")
    write_chunks(40, 20)                              # 60 % at once
    assert seen([50, 50, 75, 50]) == [50, 50, 75, 50], \
        "a short dip below 50 % and back up gave no second pool.low-space event"

    for body in ({"lowSpaceThresholds": [0]}, {"lowSpaceThresholds": [101]}, {"lowSpaceThresholds": "x"},
                 {"onNoSpace": {"queueSeconds": 0}}, {"onNoSpace": {"queueSeconds": 301}},
                 {"onNoSpace": "wait"}, {"bogus": 1}, {}, {"lowSpaceThresholds": [50, 50]},
                 {"lowSpaceThresholds": list(range(1, 12))}):
        status, headers, problem = d.api("PATCH", "/v1/pools/t", body=body)
        assert_problem(status, headers, problem, 400, "invalid-argument")
    assert d.pool("t")["lowSpaceThresholds"] == [50, 75] and d.pool("t")["onNoSpace"] == "error"
