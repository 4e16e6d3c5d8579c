"""`remapd check` (issue 10, "An offline checker"): the metadata of a stopped
daemon is verified read-only, like thin_check. Clean after normal use with
snapshots, clones and reservations and after kill -9 in the middle of
writes; refused (exit 2) while a remapd runs or without metadata; the
database and its WAL are not changed; corruptions injected with the sqlite3
CLI are each reported (exit 1) with a line naming them, in the text and the
JSON report alike.
"""

import hashlib
import json
import os
import threading

import nbd
import pytest

from harness import CHUNK, DEFAULT_POOL_SIZE, REMAPD, MiB, connect, disconnect, run
from snapshots import clone, delete_snapshot, rand, take

POOL_CHUNKS = DEFAULT_POOL_SIZE // CHUNK


def findings(report):
    return report["findings"] + [f for pool in report["pools"] for f in pool["findings"]]


def text_and_json(d):
    """The text report and the JSON one, which must say the same: the same
    exit status, and a line for every finding."""
    text = d.check_command()
    as_json = d.check_command("--json")
    assert text.returncode == as_json.returncode, (text, as_json)
    report = json.loads(as_json.stdout)
    lines = text.stdout.decode().splitlines()
    for f in findings(report):
        assert any(line.startswith(f"{f['severity']} {f['kind']}: {f['detail']}") for line in lines), \
            f"no line for {f} in:\n{text.stdout.decode()}"
    assert lines[-1].endswith(f"checked: {report['errorCount']} error(s), {report['noteCount']} note(s)"), lines
    assert report["ok"] == (report["errorCount"] == 0)
    assert (text.returncode == 0) == report["ok"]
    return text.returncode, lines, report


def assert_figures_match_the_api(d, report):
    """The figures the check counted from the durable state are those the
    restarted daemon reports."""
    [figures] = report["pools"]
    pool = d.pool("default")
    for key in ("capacityBytes", "allocatedBytes", "reservedBytes", "freeBytes"):
        assert figures[key] == pool[key], f"{key}: check {figures} vs API {pool}"
    assert figures["capacityChunks"] == POOL_CHUNKS
    assert figures["allocatedBytes"] + figures["reservedBytes"] + figures["freeBytes"] == figures["capacityBytes"]


def write(d, name, offsets, seed, length=CHUNK):
    h = connect(d, name)
    for i, offset in enumerate(offsets):
        h.pwrite(rand(seed + i, length), offset)
    h.flush()
    disconnect(d, h)


def busy_state(d):
    """Volumes, snapshots, a clone, a revert, pooled, range and thick
    reservations, a TRIM, a deleted snapshot and a deleted volume."""
    d.create_volume("v", 32 * MiB)
    write(d, "v", range(0, 32 * MiB, 4 * MiB), 1, length=4 * MiB)
    take(d, "v", "s1")
    write(d, "v", [CHUNK * i for i in (1, 5, 9, 77)], 100)
    take(d, "v", "s2")
    write(d, "v", [0, 8 * MiB], 200, length=2 * MiB)
    clone(d, "v@s1", "c")
    write(d, "c", [CHUNK * i for i in (3, 4, 300)], 300)
    take(d, "c", "cs")
    status, _, body = d.api("POST", "/v1/volumes", body={"name": "thick", "sizeBytes": 8 * MiB, "reservation": "thick"})
    assert status == 201, body
    write(d, "thick", [0, 3 * CHUNK], 400)
    status, _, body = d.api("POST", "/v1/volumes", body={"name": "pooled", "sizeBytes": 16 * MiB,
                                                         "reservation": {"bytes": 4 * MiB}})
    assert status == 201, body
    write(d, "pooled", [0, CHUNK], 500)
    d.create_volume("r", 16 * MiB)
    status, _, body = d.api("POST", "/v1/volumes/r/reservations", body={"offsetBytes": 0, "lengthBytes": 2 * MiB})
    assert status == 201, body
    write(d, "r", [0, 5 * CHUNK, 40 * CHUNK], 600)
    take(d, "r", "rs")  # sticky: copy-on-write space for what the range holds
    write(d, "r", [CHUNK * i for i in (6, 7, 8)], 650)
    take(d, "r", "rs2")  # more of it
    status, _, body = d.api("POST", "/v1/volumes/v/revert", body={"snapshot": "s2"})
    assert status == 200, body
    delete_snapshot(d, "v@s1")
    h = connect(d, "c")
    h.trim(2 * CHUNK, 3 * CHUNK)
    h.flush()
    disconnect(d, h)
    d.create_volume("gone", 4 * MiB)
    write(d, "gone", [0], 700)
    d.delete_volume("gone")


def test_clean_after_normal_use_and_figures_match_the_restarted_daemon(remapd):
    d = remapd
    busy_state(d)
    d.terminate()
    rc, lines, report = text_and_json(d)
    assert rc == 0, "\n".join(lines)
    assert report["errorCount"] == 0 and report["volumeCount"] == 5 and report["snapshotCount"] == 4, report
    [pool] = report["pools"]
    assert pool["ok"] and pool["volumeCount"] == 5 and pool["snapshotCount"] == 4, pool
    assert pool["mappedChunks"] > 0 and pool["reservedChunks"] > 0 and pool["unwrittenChunks"] > 0, pool
    assert lines[0].startswith("pool 'default': capacity 8192 chunks of 64 KiB (512 MiB), mapped "), lines
    assert lines[0].endswith(": ok"), lines
    d.start()
    assert_figures_match_the_api(d, report)


def test_clean_after_kill9_in_the_middle_of_writes(remapd):
    """kill -9 while pipelined writes, TRIMs and a snapshot are in flight on
    two volumes: the durable state is clean (notes allowed), and the
    restarted daemon counts what the check counted."""
    d = remapd
    d.create_volume("a", 64 * MiB)
    d.create_volume("b", 64 * MiB)
    write(d, "a", range(0, 16 * MiB, 4 * MiB), 1, length=4 * MiB)
    take(d, "a", "before")
    stop = threading.Event()
    handles = [connect(d, "a"), connect(d, "b")]

    done = [0, 0]

    def load(n, h):
        """Pipelined writes of 4-80 KiB, TRIMs and FLUSHes, 16 in flight."""
        i = 0
        pending = []  # (cookie, buffer): a buffer lives until its write completes
        try:
            while not stop.is_set():
                offset = (n * 7919 + i * 104729) % (64 * MiB // 4096) * 4096
                length = min(4096 * (1 + i % 20), 64 * MiB - offset)
                if i % 16 == 15:
                    pending.append((h.aio_flush(), None))
                elif i % 11 == 0:
                    pending.append((h.aio_trim(length, offset), None))
                else:
                    buffer = nbd.Buffer.from_bytearray(bytearray(rand(n * 100000 + i, length)))
                    pending.append((h.aio_pwrite(buffer, offset), buffer))
                i += 1
                while h.aio_in_flight() >= 16:
                    h.poll(1)
                pending = [(c, b) for c, b in pending if not h.aio_command_completed(c)]
                done[n] = i
        except nbd.Error:
            pass  # the daemon is gone

    threads = [threading.Thread(target=load, args=(n, h)) for n, h in enumerate(handles)]
    for t in threads:
        t.start()
    wait = threading.Event()
    wait.wait(1.0)
    take(d, "a", "during")
    wait.wait(0.5)
    d.kill9()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert min(done) > 100, f"the load hardly ran: {done}"
    assert (d.state_dir / "metadata.db-wal").exists(), "kill -9 should leave a WAL for the check to read"
    report = d.check()
    d.close_handles()
    assert report["volumeCount"] == 2 and report["snapshotCount"] == 2, report
    d.start()
    assert_figures_match_the_api(d, report)


def test_refused_while_running_or_without_metadata(remapd, tmp_path):
    d = remapd
    p = d.check_command()
    assert p.returncode == 2, p
    assert b"a remapd is running on" in p.stderr and b"remapd.lock" in p.stderr, p.stderr
    assert p.stdout == b""

    empty = tmp_path / "empty"
    empty.mkdir()
    p = run([REMAPD, "check", "--state-dir", empty])
    assert p.returncode == 2 and b"holds no metadata" in p.stderr, p
    p = run([REMAPD, "check", "--state-dir", tmp_path / "nothing-here"])
    assert p.returncode == 2 and b"is not a directory" in p.stderr, p
    (empty / "metadata.db").write_bytes(b"this is not an SQLite database" * 100)
    p = run([REMAPD, "check", "--state-dir", empty])
    assert p.returncode == 2 and b"cannot read" in p.stderr, p
    p = run([REMAPD, "check"])
    assert p.returncode == 64 and b"--state-dir" in p.stderr, p


def digests(directory):
    """sha256 of every file of the state directory but the pool files and
    the -shm index (a WAL reader may write its read marks there)."""
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
            for name in sorted(os.listdir(directory))
            if (directory / name).is_file() and not name.endswith("-shm")}


@pytest.mark.parametrize("stop", ["kill9", "sigterm", "checkpointed"])
def test_the_check_changes_nothing(remapd, stop):
    d = remapd
    busy_state(d)
    if stop == "kill9":
        d.kill9()
    else:
        d.terminate()
    if stop == "checkpointed":
        # The WAL folded into the database, as in a copy of a state directory:
        # the check must leave no empty -wal or -shm behind.
        sqlite(d, "PRAGMA wal_checkpoint(TRUNCATE)")
    names = sorted(os.listdir(d.state_dir))
    before = digests(d.state_dir)
    assert "metadata.db" in before
    if stop == "kill9":
        assert "metadata.db-wal" in before
    if stop == "checkpointed":
        assert not [name for name in names if name.startswith("metadata.db-")], names
    for _ in range(2):
        d.check()
        assert run([REMAPD, "check", "--state-dir", d.state_dir]).returncode == 0
    assert digests(d.state_dir) == before
    assert sorted(os.listdir(d.state_dir)) == names, "the check must create no file"
    d.start()
    d.volume("v")


def sqlite(d, sql):
    run(["sqlite3", d.state_dir / "metadata.db", sql], check=True)


def query(d, sql):
    p = run(["sqlite3", "-separator", " ", d.state_dir / "metadata.db", sql], check=True)
    return [line.split(" ") for line in p.stdout.decode().split("\n") if line]


def two_volumes(d):
    d.create_volume("a", 4 * MiB)
    d.create_volume("b", 4 * MiB)
    write(d, "a", [0, CHUNK], 1)
    write(d, "b", [0], 2)
    d.terminate()
    keys = dict(query(d, "SELECT name, key FROM volumes"))
    return int(keys["a"]), int(keys["b"])


def mapping_past_the_pool(d, a, b):
    sqlite(d, f"INSERT INTO mappings(volume, virtual_chunk, physical_chunk) VALUES({a}, 7, {POOL_CHUNKS + 5})")
    return "chunk-beyond-capacity", "volume 'a' maps physical chunks past the pool's capacity of 8192 chunks", [POOL_CHUNKS + 5]


def chunk_mapped_by_two_volumes(d, a, b):
    [[physical]] = query(d, f"SELECT physical_chunk FROM mappings WHERE volume = {a} AND virtual_chunk = 1")
    sqlite(d, f"INSERT INTO mappings(volume, virtual_chunk, physical_chunk) VALUES({b}, 3, {physical})")
    return ("chunk-conflict", "physical chunks mapped by volume 'a' and volume 'b', which are not snapshots or clones of one another",
            [int(physical)])


def rows_of_a_layer_nobody_has(d, a, b):
    sqlite(d, "INSERT INTO mappings(volume, virtual_chunk, physical_chunk) VALUES(9999, 0, 100), (9999, 1, 101)")
    return "leaked-rows", "layer 9999 has mapping rows but no volume or snapshot reaches it (they map nothing)", []


def supplier_file_deleted(d, a, b):
    (d.state_dir / "pools" / "default.img").unlink()
    return "supplier-missing", f"supplier {d.state_dir}/pools/default.img of pool 'default' does not exist", []


def unwritten_mark_without_reservation(d, a, b):
    sqlite(d, f"UPDATE mappings SET unwritten = 1 WHERE volume = {b}")
    return "unwritten-orphan", None, [0]


@pytest.mark.parametrize("corrupt", [mapping_past_the_pool, chunk_mapped_by_two_volumes, rows_of_a_layer_nobody_has,
                                     supplier_file_deleted, unwritten_mark_without_reservation],
                         ids=lambda f: f.__name__)
def test_each_corruption_is_reported(make_remapd, corrupt):
    d = make_remapd()
    a, b = two_volumes(d)
    assert d.check()["ok"]
    kind, detail, sample = corrupt(d, a, b)
    rc, lines, report = text_and_json(d)
    [found] = [f for f in findings(report) if f["kind"] == kind]
    if detail is not None:
        assert found["detail"] == detail, found
    assert found["sample"] == sample, found
    if found["severity"] == "note":
        # A note (what a crash may leave; the engine repairs it at start): exit 0.
        assert rc == 0 and report["ok"] and report["noteCount"] == 1, lines
        d.start()
        d.terminate()
        assert d.check()["noteCount"] == 0, "the engine clears the mark at start"
        return
    assert rc == 1, lines
    assert not report["ok"] and report["errorCount"] == 1, lines
    assert any(line.startswith(f"error {kind}: ") for line in lines), lines
    pool_ok = [p["ok"] for p in report["pools"]]
    assert pool_ok == [kind == "leaked-rows"], report  # leaked rows belong to no pool


def test_a_copy_of_a_state_directory_is_checked_without_a_lock_file(remapd, tmp_path):
    """A copy (a backup) has no remapd.lock: it is checked as it is, and no
    lock file is made in it."""
    d = remapd
    busy_state(d)
    d.kill9()
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("metadata.db", "metadata.db-wal", "metadata.db-shm"):
        (copy / name).write_bytes((d.state_dir / name).read_bytes())
    p = run([REMAPD, "check", "--state-dir", copy, "--json"])
    assert p.returncode == 0, p
    assert json.loads(p.stdout)["pools"] == d.check()["pools"]
    assert sorted(os.listdir(copy)) == ["metadata.db", "metadata.db-shm", "metadata.db-wal"]


def test_help():
    p = run([REMAPD, "--help"])
    assert p.returncode == 0
    out = p.stdout.decode()
    assert "remapd check --state-dir <state-dir> [--json]" in out and "SUBCOMMANDS:" in out, out
    p = run([REMAPD, "check", "--help"])
    assert p.returncode == 0
    out = p.stdout.decode()
    assert "USAGE: remapd check --state-dir <state-dir> [--json]" in out, out
    assert "Exit status: 0 no errors (notes allowed), 1 errors found, 2 nothing checked" in " ".join(out.split()), out


def test_shrinking_past_a_sticky_range_reservation_keeps_no_copy_on_write_space(remapd):
    """A range reservation with written chunks made sticky by a snapshot,
    then a shrink that cuts the whole range off: the range reservation ends,
    and so must the copy-on-write space it held (found by remapd check: it
    stayed reserved for nothing, also across restarts)."""
    d = remapd
    d.create_volume("v", 16 * MiB)
    status, _, body = d.api("POST", "/v1/volumes/v/reservations", body={"offsetBytes": 8 * MiB, "lengthBytes": MiB})
    assert status == 201, body
    write(d, "v", [8 * MiB, 8 * MiB + CHUNK], 1)
    take(d, "v", "s")
    status, _, body = d.api("PATCH", "/v1/volumes/v?allowShrink=true", body={"sizeBytes": 4 * MiB})
    assert status == 200, body
    d.terminate()
    report = d.check_command("--json")
    assert report.returncode == 0, report.stdout.decode()
    d.start()
    assert d.pool()["reservedBytes"] == 0 and d.volume("v")["reservedBytes"] == 0
