"""The event log (docs/api-v1.md, "Reservations, exports, events (honest
space)"; DESIGN.md, "The contract" 1): the server-sent event stream of GET
/v1/events resumes after Last-Event-ID and agrees with polling; bad
`since`.

REST over the unix socket with http.client (the stream stays open).
"""

import http.client
import json
import socket

from harness import CHUNK, MiB, assert_problem, events_since, last_seq, release, reserve


def open_stream(d, last_event_id=None, timeout=5):
    conn = http.client.HTTPConnection("localhost", timeout=timeout)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(d.api_sock))
    conn.sock = s
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    conn.request("GET", "/v1/events", headers=headers)
    resp = conn.getresponse()
    assert resp.status == 200, (resp.status, resp.read())
    assert resp.getheader("Content-Type", "").startswith("text/event-stream"), resp.getheaders()
    return conn, resp


def next_event(resp):
    """The next SSE event: (id, event, data as JSON); comments skipped."""
    fields = {}
    while True:
        line = resp.readline().decode()
        assert line, "the event stream ended"
        line = line.rstrip("\r\n")
        if not line:
            if "data" in fields:
                return int(fields["id"]), fields.get("event"), json.loads(fields["data"])
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        fields[key] = value[1:] if value.startswith(" ") else value


def test_events_stream_resumes_with_last_event_id(make_remapd):
    d = make_remapd(pool_size="32M")
    d.create_volume("v", 8 * MiB)
    seq = last_seq(d)
    conn, resp = open_stream(d, last_event_id=seq)
    try:
        ids = [reserve(d, "v", {"bytes": CHUNK})["id"] for _ in range(3)]
        for rid in ids:
            release(d, "v", rid)
        got = []
        while len(got) < 3:
            sid, kind, data = next_event(resp)
            assert sid == data["seq"] and kind == data["type"], (sid, kind, data)
            assert sid > seq, f"event {sid} is not after Last-Event-ID {seq}"
            if kind == "reservation.released":
                got.append((sid, data["reservation"]))
        assert [rid for _, rid in got] == ids, got
    finally:
        conn.close()
    # Resuming after the first released event replays the other two.
    conn, resp = open_stream(d, last_event_id=got[0][0])
    try:
        replay = []
        while len(replay) < 2:
            sid, kind, data = next_event(resp)
            if kind == "reservation.released":
                replay.append((sid, data["reservation"]))
        assert replay == got[1:], (replay, got)
    finally:
        conn.close()
    polled = [(e["seq"], e.get("reservation")) for e in events_since(d, seq) if e["type"] == "reservation.released"]
    assert polled == got, (polled, got)
    for bad in ("x", "-1", ""):
        status, headers, problem = d.api("GET", f"/v1/events?since={bad}")
        assert_problem(status, headers, problem, 400, "invalid-argument")
