"""remapctl's honest-space commands against a live daemon: reservations,
volume reservations, pool settings and growth, extra exports, events.

Every command runs through the real binary. `--json` output is parsed and
compared with what the REST API (curl) answers for the same object; API
errors must be exit 1 with one line `remapctl: <detail> (<code>, HTTP <n>)`,
command-line mistakes exit 2. `events --follow` runs as a subprocess whose
standard output is read line by line with a deadline.
"""

import calendar
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time

import pytest

from harness import CHUNK, DEFAULT_POOL_SIZE, MiB, REMAPCTL, clean_env, last_seq, ok, reserve, run, wait_until

LOW_SPACE_BYTES = 420 * MiB  # 82% of the 512 MiB default pool: crosses the 80% threshold
from test_remapctl_full import api_error, bash_complete, ok_json, table, usage_error  # noqa: E402  (shared remapctl checks)

FOLLOW_DEADLINE = 5.0


# ------------------------------------------------------------------ helpers

def field(text, name):
    """The value of `name:` in a `remapctl ... show` field list."""
    match = re.search(rf"^{re.escape(name)}:\s+(.*)$", text, re.M)
    assert match, f"no field {name!r} in:\n{text}"
    return match[1]


def rest_reservation(d, volume, rid):
    return d.get_ok(f"/v1/volumes/{volume}/reservations/{rid}")


def rest_reservations(d, volume):
    return d.get_ok(f"/v1/volumes/{volume}/reservations")["reservations"]


def committed(pool):
    return pool["allocatedBytes"] + pool["reservedBytes"]


class Follower:
    """`remapctl events --follow` as a subprocess, its lines in a queue."""

    def __init__(self, d, *args):
        self.proc = subprocess.Popen(
            [str(REMAPCTL), "events", "--follow", *args, "--socket", str(d.api_sock)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
        self.lines = queue.Queue()
        self.stderr = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()

    @staticmethod
    def _pump(stream, sink):
        for raw in iter(stream.readline, b""):
            sink(raw.decode("utf-8", "replace").rstrip("\n"))

    def wait_for(self, predicate, timeout=FOLLOW_DEADLINE):
        """The first line satisfying predicate within timeout; every line seen."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching event line within {timeout}s; lines: {seen}; "
                                     f"stderr: {self.stderr}; exit: {self.proc.poll()}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            seen.append(line)
            if predicate(line):
                return line, seen

    def interrupt(self):
        """Ctrl-C: remapctl must exit 0."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("events --follow did not exit within 10 s of SIGINT")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def follow(request):
    """Factory for followers, all stopped at teardown."""
    started = []

    def start(d, *args):
        f = Follower(d, *args)
        started.append(f)
        return f

    yield start
    for f in started:
        f.stop()


# ------------------------------------------------------------------ reservations

def test_reservation_create_list_show_renew_delete(remapd):
    d = remapd
    d.create_volume("vm1", 256 * MiB)

    created = ok_json(d.ctl("reservation", "create", "vm1", "--bytes", "1M", "--name", "backup",
                            "--ttl", "10m", "--json"))
    rid = created["id"]
    assert created == rest_reservation(d, "vm1", rid)
    assert (created["volume"], created["name"], created["kind"]) == ("vm1", "backup", "pooled")
    assert created["bytes"] == MiB and created["usedBytes"] == 0
    assert "expiresAt" in created, created

    # The same name and spec again: 200, the same reservation, said to exist.
    out = ok(d.ctl("reservation", "create", "vm1", "--bytes", "1M", "--name", "backup", "--ttl", "10m"))
    assert out.splitlines()[0] == f"reservation {rid} exists", out
    assert len(rest_reservations(d, "vm1")) == 1

    out = ok(d.ctl("reservation", "show", "vm1", rid))
    assert field(out, "id") == rid
    assert field(out, "kind") == "pooled"
    assert field(out, "size") == "1.0 MiB (1048576 bytes)"
    assert field(out, "expires") == created["expiresAt"]
    assert ok_json(d.ctl("reservation", "show", "vm1", rid, "--json")) == rest_reservation(d, "vm1", rid)

    header, rows = table(ok(d.ctl("reservation", "list", "vm1")))
    assert header == ["ID", "NAME", "KIND", "SIZE", "USED", "EXPIRES"], header
    assert rows == [{"ID": rid, "NAME": "backup", "KIND": "pooled", "SIZE": "1.0 MiB", "USED": "0 B",
                     "EXPIRES": created["expiresAt"]}], rows
    assert ok_json(d.ctl("reservation", "list", "vm1", "--json")) == d.get_ok("/v1/volumes/vm1/reservations")

    renewed = ok_json(d.ctl("reservation", "renew", "vm1", rid, "--ttl", "2h", "--json"))
    assert renewed == rest_reservation(d, "vm1", rid)
    assert renewed["expiresAt"] > created["expiresAt"], (created, renewed)
    out = ok(d.ctl("reservation", "renew", "vm1", rid))
    assert out.splitlines()[0] == f"reservation {rid} renewed", out

    assert ok_json(d.ctl("reservation", "delete", "vm1", rid, "--json")) == {"deleted": rid}
    assert d.api("GET", f"/v1/volumes/vm1/reservations/{rid}")[0] == 404
    assert rest_reservations(d, "vm1") == []
    api_error(d.ctl("reservation", "delete", "vm1", rid), "not-found", 404)
    api_error(d.ctl("reservation", "show", "vm1", rid), "not-found", 404)
    api_error(d.ctl("reservation", "list", "nosuchvolume"), "not-found", 404)


def test_reservation_range_is_chunk_rounded(remapd):
    d = remapd
    d.create_volume("vm1", 64 * MiB)
    created = ok_json(d.ctl("reservation", "create", "vm1", "--offset", "0", "--length", "100K", "--json"))
    assert created == rest_reservation(d, "vm1", created["id"])
    assert created["kind"] == "range"
    assert created["offsetBytes"] == 0
    assert created["bytes"] == 2 * CHUNK, created  # 100 KiB rounded up to whole 64 KiB chunks
    assert "expiresAt" not in created, created

    out = ok(d.ctl("reservation", "create", "vm1", "--offset", "1M", "--length", "1M", "--name", "r2"))
    assert out.splitlines()[0].startswith("reservation ") and out.splitlines()[0].endswith(" created"), out
    assert field(out, "kind") == "range"
    assert field(out, "offset") == "1.0 MiB (1048576 bytes)"
    assert field(out, "expires") == "never"

    _, rows = table(ok(d.ctl("reservation", "list", "vm1")))
    assert sorted(r["KIND"] for r in rows) == ["range", "range"], rows
    assert {r["EXPIRES"] for r in rows} == {"never"}, rows

    # Renewing a reservation without a lease is refused by remapd.
    api_error(d.ctl("reservation", "renew", "vm1", created["id"]), "invalid-argument", 400)


def test_oversized_reservation_is_507_insufficient_space(remapd):
    d = remapd
    d.create_volume("vm1", 2 * DEFAULT_POOL_SIZE)
    before = d.pool()
    detail = api_error(d.ctl("reservation", "create", "vm1", "--bytes", "1G"), "insufficient-space", 507)
    assert detail.strip(), detail
    assert rest_reservations(d, "vm1") == []
    assert d.pool()["reservedBytes"] == before["reservedBytes"]
    # --json changes nothing about errors.
    api_error(d.ctl("reservation", "create", "vm1", "--bytes", "1G", "--json"), "insufficient-space", 507)


def test_reservation_with_another_spec_under_a_taken_name_is_refused(remapd):
    d = remapd
    d.create_volume("vm1", 64 * MiB)
    ok(d.ctl("reservation", "create", "vm1", "--bytes", "1M", "--name", "n"))
    api_error(d.ctl("reservation", "create", "vm1", "--bytes", "2M", "--name", "n"), "already-exists", 409)


@pytest.mark.parametrize("args", [
    ["reservation", "create", "vm1"],
    ["reservation", "create", "vm1", "--bytes", "1M", "--offset", "0", "--length", "1M"],
    ["reservation", "create", "vm1", "--offset", "0"],
    ["reservation", "create", "vm1", "--length", "1M"],
    ["reservation", "create", "vm1", "--bytes", "0"],
    ["reservation", "create", "vm1", "--bytes", "lots"],
    ["reservation", "create", "vm1", "--bytes", "1M", "--ttl", "5x"],
    ["reservation", "create", "vm1", "--bytes", "1M", "--ttl", "0"],
    ["reservation", "create", "vm1", "--bytes", "1M", "--name", ""],
    ["reservation", "create"],
    ["reservation", "show", "vm1"],
    ["reservation", "renew", "vm1", "r-1", "--ttl", "-5"],
    ["reservation", "delete"],
])
def test_reservation_usage_errors(remapd, args):
    usage_error(remapd.ctl(*args))


@pytest.mark.parametrize("ttl, seconds", [("90", 90), ("90s", 90), ("10m", 600), ("2h", 7200),
                                          ("1d", 86400), ("1h30m", 5400)])
def test_ttl_units(remapd, ttl, seconds):
    d = remapd
    d.create_volume("vm1", 64 * MiB)
    created = ok_json(d.ctl("reservation", "create", "vm1", "--bytes", "64K", "--ttl", ttl, "--json"))
    if "ttlSeconds" in created:
        assert created["ttlSeconds"] == seconds, created
    expires = calendar.timegm(time.strptime(created["expiresAt"], "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(expires - (time.time() + seconds)) < 30, (created, seconds)


# ------------------------------------------------------------------ volumes and pools

def test_volume_create_with_reservations(remapd):
    d = remapd
    thick = ok_json(d.ctl("volume", "create", "thick1", "--size", "8M", "--reservation", "thick", "--json"))
    assert thick == d.volume("thick1")
    assert thick["guaranteedWritableBytes"] == 8 * MiB, thick
    [r] = rest_reservations(d, "thick1")
    assert (r["name"], r["kind"], r["bytes"]) == ("thick", "range", 8 * MiB), r

    out = ok(d.ctl("volume", "create", "pooled1", "--size", "64M", "--reservation", "16M"))
    assert out.splitlines()[0] == "volume pooled1 created", out
    assert field(out, "reserved") == "16 MiB (16777216 bytes)", out
    assert field(out, "guaranteed writable") == "16 MiB (16777216 bytes)", out
    [r] = rest_reservations(d, "pooled1")
    assert (r["name"], r["kind"], r["bytes"]) == ("default", "pooled", 16 * MiB), r

    thin = ok_json(d.ctl("volume", "create", "thin1", "--size", "8M", "--reservation", "none", "--json"))
    assert thin == d.volume("thin1")
    assert rest_reservations(d, "thin1") == []

    out = ok(d.ctl("volume", "show", "pooled1"))
    assert field(out, "reserved") == "16 MiB (16777216 bytes)", out
    assert ok_json(d.ctl("volume", "show", "thick1", "--json")) == d.volume("thick1")

    pool = d.pool()
    assert pool["reservedBytes"] == 8 * MiB + 16 * MiB, pool
    assert pool["capacityBytes"] == pool["allocatedBytes"] + pool["reservedBytes"] + pool["freeBytes"], pool

    # More than the pool holds: insufficient-space, and no volume is left behind.
    api_error(d.ctl("volume", "create", "huge", "--size", "1G", "--reservation", "thick"),
              "insufficient-space", 507)
    assert d.api("GET", "/v1/volumes/huge")[0] == 404
    usage_error(d.ctl("volume", "create", "bad", "--size", "8M", "--reservation", "lots"))


def test_pool_list_and_show_reserved_and_settings(remapd):
    d = remapd
    d.create_volume("vm1", 64 * MiB)
    reserve(d, "vm1", {"bytes": 32 * MiB})
    header, rows = table(ok(d.ctl("pool", "list")))
    assert {"RESERVED", "ON-NO-SPACE", "THRESHOLDS"} <= set(header), header
    row = next(r for r in rows if r["NAME"] == "default")
    assert row["RESERVED"] == "32 MiB", row
    assert row["ON-NO-SPACE"] == "error", row
    assert row["THRESHOLDS"] == "80,90,95", row
    assert ok_json(d.ctl("pool", "list", "--json")) == d.get_ok("/v1/pools")

    out = ok(d.ctl("pool", "show", "default"))
    assert field(out, "reserved") == "32 MiB (33554432 bytes)", out
    assert field(out, "on no space").startswith("error"), out
    assert field(out, "low-space at") == "80%, 90%, 95% committed", out
    assert ok_json(d.ctl("pool", "show", "default", "--json")) == d.pool()


def test_pool_set(remapd):
    d = remapd
    updated = ok_json(d.ctl("pool", "set", "default", "--on-no-space", "queue:30", "--thresholds", "70,85,95",
                            "--json"))
    assert updated == d.pool()
    assert updated["onNoSpace"] == {"queueSeconds": 30}, updated
    assert updated["lowSpaceThresholds"] == [70, 85, 95], updated
    _, rows = table(ok(d.ctl("pool", "list")))
    assert rows[0]["ON-NO-SPACE"] == "queue:30" and rows[0]["THRESHOLDS"] == "70,85,95", rows

    out = ok(d.ctl("pool", "set", "default", "--on-no-space", "queue:2m"))
    assert out.splitlines()[0] == "pool default updated", out
    assert d.pool()["onNoSpace"] == {"queueSeconds": 120}
    assert d.pool()["lowSpaceThresholds"] == [70, 85, 95], "settings not given are kept"

    ok(d.ctl("pool", "set", "default", "--on-no-space", "error"))
    assert d.pool()["onNoSpace"] == "error"

    api_error(d.ctl("pool", "set", "default", "--on-no-space", "queue:1000"), "invalid-argument", 400)
    api_error(d.ctl("pool", "set", "nosuchpool", "--thresholds", "80"), "not-found", 404)
    for args in (["default"], ["default", "--on-no-space", "wait"], ["default", "--thresholds", "a,b"],
                 ["default", "--on-no-space", "queue:"], []):
        usage_error(d.ctl("pool", "set", *args))


def test_pool_grow_supplier_by_path_id_and_file_name(remapd):
    d = remapd
    path = d.state_dir / "pools" / "grow-a.img"
    status, _, pool = d.api("POST", "/v1/pools", body={
        "name": "g", "suppliers": [{"kind": "file", "path": str(path), "sizeBytes": 64 * MiB}]})
    assert status == 201, pool
    sid = pool["suppliers"][0]["id"]

    grown = ok_json(d.ctl("pool", "grow", "g", "--supplier", str(path), "--size", "96M", "--json"))
    assert grown == d.pool("g")
    assert grown["capacityBytes"] == 96 * MiB and grown["suppliers"][0]["sizeBytes"] == 96 * MiB, grown
    assert path.stat().st_size == 96 * MiB

    out = ok(d.ctl("pool", "grow", "g", "--supplier", sid, "--size", "+32M"))
    assert out.splitlines()[0] == "pool g grown", out
    assert field(out, "capacity") == "128 MiB (134217728 bytes)", out

    ok(d.ctl("pool", "grow", "g", "--supplier", "grow-a.img", "--size", "160M"))
    assert d.pool("g")["capacityBytes"] == 160 * MiB

    added = ok_json(d.ctl("pool", "grow", "g", "--add-file", str(d.state_dir / "pools" / "grow-b.img"),
                          "--size", "32M", "--json"))
    assert added == d.pool("g")
    assert added["capacityBytes"] == 192 * MiB and len(added["suppliers"]) == 2, added

    # Unknown supplier: one line, exit 1, nothing changed.
    p = d.ctl("pool", "grow", "g", "--supplier", "/nowhere.img", "--size", "1G")
    assert p.returncode == 1 and len(p.stderr.decode().splitlines()) == 1, p
    assert p.stderr.decode().startswith("remapctl: ") and "/nowhere.img" in p.stderr.decode(), p
    # Smaller is refused by remapd.
    api_error(d.ctl("pool", "grow", "g", "--supplier", sid, "--size", "64M"), "invalid-argument", 400)
    assert d.pool("g")["capacityBytes"] == 192 * MiB

    for args in (["g", "--size", "1G"], ["g", "--supplier", sid], ["g", "--supplier", sid, "--add-file", "/x",
                                                                    "--size", "1G"],
                 ["g", "--add-file", "/x", "--size", "+1G"], ["g", "--supplier", sid, "--size", "+"]):
        usage_error(d.ctl("pool", "grow", *args))


# ------------------------------------------------------------------ exports

def test_export_create_list_delete_and_connect(remapd):
    d = remapd
    d.create_volume("vm1", 16 * MiB)
    rid = reserve(d, "vm1", {"bytes": 4 * MiB, "name": "w"})["id"]

    created = ok_json(d.ctl("export", "create", "vm1", "--reservation", rid, "--name", "vm1-w", "--json"))
    assert created == {"name": "vm1-w", "volume": "vm1", "reservation": rid}, created
    listed = d.get_ok("/v1/exports")["exports"]
    assert created in listed, listed
    assert {"vm1", "vm1-w"} <= {e["name"] for e in listed}, listed
    assert ok_json(d.ctl("export", "list", "--json")) == d.get_ok("/v1/exports")

    out = ok(d.ctl("export", "create", "vm1", "--reservation", rid))
    default_name = f"vm1+{rid}"
    assert out.splitlines()[0] == f"export {default_name} created", out
    assert field(out, "reservation") == rid
    assert field(out, "uri") == f"nbd+unix:///{default_name}?socket={d.nbd_sock}", out

    header, rows = table(ok(d.ctl("export", "list")))
    assert header == ["NAME", "VOLUME", "RESERVATION", "URI"], header
    by_name = {r["NAME"]: r for r in rows}
    assert by_name["vm1-w"] == {"NAME": "vm1-w", "VOLUME": "vm1", "RESERVATION": rid,
                                "URI": f"nbd+unix:///vm1-w?socket={d.nbd_sock}"}, rows
    assert by_name["vm1"]["RESERVATION"] == "-", rows

    # The URI works with a real NBD client; a write through the bound export
    # lands in vm1 and draws on the reservation, as `reservation list` shows.
    import nbd
    h = nbd.NBD()
    h.connect_uri(by_name["vm1-w"]["URI"])
    h.pwrite(b"\xab" * CHUNK, 0)
    h.flush()
    h.shutdown()
    assert d.volume("vm1")["allocatedBytes"] == CHUNK
    assert rest_reservation(d, "vm1", rid)["usedBytes"] == CHUNK
    _, rows = table(ok(d.ctl("reservation", "list", "vm1")))
    assert [(r["ID"], r["USED"]) for r in rows] == [(rid, "64 KiB")], rows
    out = ok(d.ctl("export", "create", "vm1", "--name", "vm1-x"))
    assert field(out, "uri") == f"nbd+unix:///vm1-x?socket={d.nbd_sock}", out

    assert ok_json(d.ctl("export", "delete", "vm1-w", "--json")) == {"deleted": "vm1-w"}
    assert "vm1-w" not in {e["name"] for e in d.get_ok("/v1/exports")["exports"]}
    api_error(d.ctl("export", "delete", "vm1-w"), "not-found", 404)
    out = ok(d.ctl("export", "delete", default_name))
    assert out == f"export {default_name} deleted\n", out
    api_error(d.ctl("export", "create", "nosuchvolume"), "not-found", 404)
    usage_error(d.ctl("export", "create"))
    usage_error(d.ctl("export", "create", "vm1", "--reservation", ""))


def test_export_uri_with_explicit_and_unknown_socket(remapd, tmp_path):
    d = remapd
    d.create_volume("vm1", MiB)
    out = ok(d.ctl("export", "create", "vm1", "--name", "e1", "--nbd-socket", "/run/elsewhere/nbd.sock"))
    assert field(out, "uri") == "nbd+unix:///e1?socket=/run/elsewhere/nbd.sock", out
    # An API socket with no nbd.sock next to it: the guess is printed, with a note saying so.
    link = tmp_path / "api-link.sock"
    os.symlink(d.api_sock, link)
    p = run([REMAPCTL, "export", "list", "--socket", link], timeout=30)
    _, rows = table(ok(p))
    assert any(r["URI"] == f"nbd+unix:///e1?socket={tmp_path}/nbd.sock" for r in rows), rows
    assert "no socket at" in p.stderr.decode(), p.stderr.decode()


# ------------------------------------------------------------------ events

def test_events_list_matches_rest(remapd):
    d = remapd
    d.create_volume("vm1", DEFAULT_POOL_SIZE)
    rid = reserve(d, "vm1", {"bytes": LOW_SPACE_BYTES})["id"]
    ok(d.ctl("reservation", "delete", "vm1", rid))

    rest = d.get_ok("/v1/events")
    assert ok_json(d.ctl("events", "--json")) == rest
    types = [e["type"] for e in rest["events"]]
    assert "pool.low-space" in types and "reservation.released" in types, rest

    header, rows = table(ok(d.ctl("events")))
    assert header == ["SEQ", "TIME", "TYPE", "POOL/VOLUME", "DETAIL"], header
    assert [int(r["SEQ"]) for r in rows] == [e["seq"] for e in rest["events"]], rows
    low = next(r for r in rows if r["TYPE"] == "pool.low-space")
    assert low["POOL/VOLUME"] == "default", low
    released = next(r for r in rows if r["TYPE"] == "reservation.released")
    assert released["POOL/VOLUME"] == "default/vm1" and rid in released["DETAIL"], released

    newest = rest["lastSeq"]
    assert ok_json(d.ctl("events", "--since", str(newest), "--json")) == d.get_ok(f"/v1/events?since={newest}")
    assert table(ok(d.ctl("events", "--since", str(newest))))[1] == []
    usage_error(d.ctl("events", "--since", "-1"))
    usage_error(d.ctl("events", "--since", "x"))


def test_events_follow_prints_a_low_space_event_as_it_happens(remapd, follow):
    d = remapd
    d.create_volume("vm1", DEFAULT_POOL_SIZE)
    f = follow(d)
    time.sleep(1.0)  # let it connect; events before that may or may not be shown
    started = time.monotonic()
    reserve(d, "vm1", {"bytes": LOW_SPACE_BYTES})
    line, _ = f.wait_for(lambda text: "pool.low-space" in text)
    assert time.monotonic() - started < FOLLOW_DEADLINE
    [event] = [e for e in d.get_ok("/v1/events")["events"] if e["type"] == "pool.low-space"]
    assert line.split()[0] == str(event["seq"]), line
    assert event["time"] in line and "default" in line, line
    assert f.interrupt() == 0, f.stderr


def test_events_follow_json_lines_match_rest(remapd, follow):
    d = remapd
    d.create_volume("vm1", DEFAULT_POOL_SIZE)
    # --since makes the test independent of when the stream connects.
    f = follow(d, "--json", "--since", str(last_seq(d)))
    rid = reserve(d, "vm1", {"bytes": LOW_SPACE_BYTES})["id"]
    line, _ = f.wait_for(lambda text: "pool.low-space" in text)
    event = json.loads(line)
    assert event in d.get_ok("/v1/events")["events"], event
    ok(d.ctl("reservation", "delete", "vm1", rid))
    line, _ = f.wait_for(lambda text: "reservation.released" in text)
    assert json.loads(line)["reservation"] == rid, line
    assert f.interrupt() == 0


def test_events_follow_survives_a_daemon_restart(remapd, follow):
    d = remapd
    d.create_volume("vm1", DEFAULT_POOL_SIZE)
    f = follow(d, "--since", str(last_seq(d)))
    reserve(d, "vm1", {"bytes": LOW_SPACE_BYTES})
    f.wait_for(lambda text: "pool.low-space" in text)
    d.restart()
    # remapd numbers events from 1 again after a restart; remapctl must
    # still show the new daemon's events, e.g. crossing the 90% threshold.
    reserve(d, "vm1", {"bytes": 48 * MiB})
    def is_90_percent_crossing(text):
        events = {str(e["seq"]): e for e in d.get_ok("/v1/events")["events"]}
        event = events.get(text.split()[0])
        return event is not None and event["type"] == "pool.low-space" and event.get("percent") == 90 \
            and event["type"] in text

    f.wait_for(is_90_percent_crossing, timeout=15)
    assert f.proc.poll() is None, "the follower must keep running"
    assert f.interrupt() == 0


def test_events_follow_waits_while_remapd_serves_all_its_streams(make_remapd, follow):
    """With --http-max-event-streams 1 taken, a second follower is told 503
    too-many-streams: it says so once and tries again instead of exiting,
    and shows the events made meanwhile once the first follower leaves."""
    d = make_remapd(extra_args=["--http-max-event-streams", "1"])
    d.create_volume("vm1", DEFAULT_POOL_SIZE)
    since = str(last_seq(d))
    first = follow(d, "--since", since)
    first_rid = reserve(d, "vm1", {"bytes": MiB})["id"]
    ok(d.ctl("reservation", "delete", "vm1", first_rid))
    first.wait_for(lambda text: first_rid in text)  # the slot is taken
    second = follow(d, "--since", since)
    assert wait_until(lambda: any("too-many-streams" in line or "event streams" in line for line in second.stderr),
                      timeout=10), second.stderr
    assert second.proc.poll() is None, f"the second follower exited: {second.stderr}"
    rid = reserve(d, "vm1", {"bytes": LOW_SPACE_BYTES})["id"]
    assert first.interrupt() == 0
    line, seen = second.wait_for(lambda text: "pool.low-space" in text, timeout=20)
    assert any(first_rid in text for text in seen), seen  # nothing before it missed
    ok(d.ctl("reservation", "delete", "vm1", rid))
    second.wait_for(lambda text: "reservation.released" in text and rid in text)
    assert sum("reconnecting" in line for line in second.stderr) == 1, second.stderr
    assert second.interrupt() == 0


def test_events_follow_without_a_daemon_is_one_line_exit_1(make_remapd):
    d = make_remapd(start=False)
    p = run([REMAPCTL, "events", "--follow", "--socket", d.api_sock], timeout=30)
    assert p.returncode == 1, p
    lines = p.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("remapctl: cannot connect"), lines


# ------------------------------------------------------------------ completion

def test_completion_knows_the_new_commands(tmp_path):
    p = run([REMAPCTL, "--generate-completion-script", "bash"], timeout=30)
    script = ok(p)
    for word in ("reservation", "export", "events", "follow", "renew", "on-no-space", "thresholds",
                 "add-file", "nbd-socket", "ttl"):
        assert word in script, f"bash completion lacks {word}"


def test_bash_completes_reservation_ids_exports_and_suppliers(remapd, tmp_path):
    d = remapd
    d.create_volume("vm1", 16 * MiB)
    r1 = reserve(d, "vm1", {"bytes": MiB})["id"]
    r2 = reserve(d, "vm1", {"bytes": MiB, "name": "two"})["id"]
    status, _, body = d.api("POST", "/v1/exports", body={"volume": "vm1", "name": "vm1-extra"})
    assert status == 201, body
    script = tmp_path / "remapctl.bash"
    script.write_text(ok(run([REMAPCTL, "--generate-completion-script", "bash"], timeout=30)))

    def complete(words, current):
        return bash_complete(script, words, current)

    sock = str(d.api_sock)
    assert complete(["remapctl", "reservation", "show", "vm1", "", "--socket", sock], 4) == sorted([r1, r2])
    assert complete(["remapctl", "--socket", sock, "reservation", "renew", "vm1", ""], 6) == sorted([r1, r2])
    assert complete(["remapctl", "reservation", "list", "", "--socket", sock], 3) == ["vm1"]
    assert "vm1-extra" in complete(["remapctl", "export", "delete", "", "--socket", sock], 3)
    pool = d.pool()
    assert complete(["remapctl", "pool", "grow", "default", "--supplier", "", "--socket", sock], 5) == sorted(
        [pool["suppliers"][0]["id"], pool["suppliers"][0]["path"]])
