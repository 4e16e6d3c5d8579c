"""Changed ranges between snapshots (issue 6, Done-when 5): exactly the
chunks of a known write pattern, merged; without a base, the ranges that
hold data; the errors.

Every test drives the real daemon: REST over the unix socket (curl) and
data through libnbd's Python binding; the model the writes are recorded
in is in snapshots.py.
"""

from harness import CHUNK, KiB, MiB, assert_problem, chunk_ranges, connect, disconnect
from snapshots import Model, SIZE, changes, chunks_of, pwrite, rand, snap_path, snapshot, take, write_p1


def test_changes_between_snapshots_are_exactly_the_chunks_written(make_remapd):
    """Done-when 5: a known write pattern between S1 and S2 (whole chunks,
    sub-chunk pieces, a write straddling two chunks, holes, a chunk written
    twice); changes(S2, base=S1) lists exactly those chunks, merged; with no
    base, the ranges that hold data."""
    d = make_remapd()
    m = Model()
    d.create_volume("v", SIZE)
    m.create("v", SIZE)
    h = connect(d, "v")
    write_p1(h, m, "v")
    p1 = m.chunks("v")
    s1 = take(d, "v", "s1")

    written = set()

    def w(offset, data):
        pwrite(h, m, "v", offset, data)
        written.update(chunks_of(offset, len(data)))

    w(0, rand(1, 4 * KiB))                          # chunk 0, sub-chunk
    w(1 * CHUNK + 60 * KiB, rand(2, 8 * KiB))       # straddles 1/2
    w(10 * CHUNK, rand(3, 3 * CHUNK))               # whole 10-12
    w(13 * CHUNK + 512, rand(4, 512))               # 13: merges with 10-12
    w(33 * CHUNK + 100, rand(5, 100))               # unaligned, 33
    w(33 * CHUNK + 40 * KiB, rand(6, 4 * KiB))      # 33 again
    w(90 * CHUNK, rand(7, CHUNK))                   # a hole at S1
    w(91 * CHUNK + 32 * KiB, rand(8, 4 * KiB))      # a hole, sub-chunk: merges with 90
    w(SIZE - 4 * KiB, rand(9, 4 * KiB))             # the last chunk
    h.flush()
    assert written == {0, 1, 2, 10, 11, 12, 13, 33, 90, 91, 255}
    s2 = take(d, "v", "s2")
    # Written after S2: must not show up between S1 and S2.
    w2 = chunks_of(50 * CHUNK, CHUNK) | chunks_of(5 * CHUNK, 100)
    pwrite(h, m, "v", 50 * CHUNK, rand(10, CHUNK))
    pwrite(h, m, "v", 5 * CHUNK, rand(11, 100))
    h.flush()
    disconnect(d, h)

    expected = chunk_ranges(written)
    assert expected == [(0, 3 * CHUNK), (10 * CHUNK, 4 * CHUNK), (33 * CHUNK, CHUNK),
                        (90 * CHUNK, 2 * CHUNK), (255 * CHUNK, CHUNK)]
    for base in ("s1", "v@s1", s1["id"]):
        body, ranges = changes(d, "v@s2", base=base)
        assert ranges == expected, f"changes(s2, base={base}): {ranges}, expected {expected}"
        assert (body["snapshot"], body["base"], body["sizeBytes"], body["granularityBytes"]) == \
            (s2["id"], s1["id"], SIZE, CHUNK), body
        assert body["changedBytes"] == len(written) * CHUNK
    # The other way round, the same chunks differ.
    assert changes(d, s1["id"], base=s2["id"])[1] == expected
    # A snapshot against itself: nothing.
    body, ranges = changes(d, "v@s2", base="v@s2")
    assert ranges == [] and body["changedBytes"] == 0

    # Without a base: the ranges that hold data.
    body, ranges = changes(d, "v@s1")
    assert body["base"] is None and ranges == chunk_ranges(p1), (ranges, chunk_ranges(p1))
    assert body["changedBytes"] == len(p1) * CHUNK == snapshot(d, "v@s1")["sharedBytes"] \
        + snapshot(d, "v@s1")["uniqueBytes"]
    assert changes(d, "v@s2")[1] == chunk_ranges(p1 | written)
    # S3 after the later writes: only those differ from S2.
    take(d, "v", "s3")
    assert changes(d, "v@s3", base="s2")[1] == chunk_ranges(w2)
    assert changes(d, "v@s3", base="s1")[1] == chunk_ranges(written | w2)

    # Errors: unknown snapshot or base 404, a base in another pool 400.
    status, headers, problem = d.api("GET", snap_path("v@nope") + "/changes")
    assert_problem(status, headers, problem, 404, "not-found")
    status, headers, problem = d.api("GET", snap_path("v@s2") + "/changes?base=nope")
    assert_problem(status, headers, problem, 404, "not-found")
    spec = {"name": "other", "suppliers": [{"kind": "file", "path": str(d.state_dir / "pools" / "other.img"),
                                            "sizeBytes": 16 * MiB}]}
    status, _, body = d.api("POST", "/v1/pools", body=spec)
    assert status == 201, body
    d.create_volume("o", SIZE, pool="other")
    take(d, "o", "os", pool="other")
    status, headers, problem = d.api("GET", snap_path("v@s2") + "/changes?base=o@os")
    assert_problem(status, headers, problem, 400, "invalid-argument")
