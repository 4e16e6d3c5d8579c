"""remapctl's snapshot, clone, revert, export, import and operation commands
against a live daemon.

Data goes in and comes out over NBD (libnbd's Python binding) in whole
64 KiB chunks of seeded random bytes, so every test knows exactly what each
image must read. `--json` output is parsed and compared with what the REST
API (curl) answers; API errors must be exit 1 with one line
`remapctl: <detail> (<code>, HTTP <n>)`, command-line mistakes exit 2.
"""

import random
import re

import pytest

import harness
from harness import CHUNK, MiB, REMAPCTL, chunk_ranges, file_sha256, ok, run, sha256, wait_operation, wait_until
from test_remapctl_full import ERROR_LINE, api_error, bash_complete, ok_json, table, usage_error
from test_remapctl_space import field

VOLUME_SIZE = 64 * MiB


# ------------------------------------------------------------------ helpers

def chunk_data(seed, index):
    """The 64 KiB written to chunk `index` in round `seed`."""
    return random.Random(f"{seed}/{index}").randbytes(CHUNK)


def nbd_connect(d, export):
    import nbd
    h = nbd.NBD()
    h.set_handle_name(f"snap-{export}")
    h.set_export_name(export)
    h.connect_unix(str(d.nbd_sock))
    return h


def write_chunks(d, volume, chunks, seed, model=None):
    """Writes chunk_data(seed, i) to each chunk i of `volume` and flushes;
    the NBD connection is closed again so that the volume is not in use."""
    h = nbd_connect(d, volume)
    try:
        for i in chunks:
            data = chunk_data(seed, i)
            h.pwrite(data, i * CHUNK)
            if model is not None:
                model[i * CHUNK:(i + 1) * CHUNK] = data
        h.flush()
    finally:
        h.shutdown()


def read_all(d, export):
    """Every byte of `export`, read over NBD on a connection closed afterwards."""
    h = nbd_connect(d, export)
    try:
        return harness.read_all(h, h.get_size())
    finally:
        h.shutdown()


def error_status(p, status):
    """Exit 1 with one error line naming HTTP `status`; returns (detail, code)."""
    err = p.stderr.decode()
    assert p.returncode == 1, f"exit {p.returncode} (want 1)\nstdout: {p.stdout.decode()}\nstderr: {err}"
    assert p.stdout.decode() == "", p.stdout.decode()
    lines = err.splitlines()
    assert len(lines) == 1, f"want exactly one line on stderr, got: {err!r}"
    match = ERROR_LINE.match(lines[0])
    assert match and int(match["status"]) == status, lines[0]
    return match["detail"], match["code"]


def rest_snapshot(d, ident):
    return d.get_ok(f"/v1/snapshots/{ident.replace('@', '%40')}")


def volume_with_data(d, name, chunks, seed=1, size=VOLUME_SIZE):
    """A volume holding chunk_data(seed, i) in each of `chunks`; returns its model."""
    d.create_volume(name, size)
    model = bytearray(size)
    write_chunks(d, name, chunks, seed, model)
    return model


def supplier_dir(d):
    """Where remapd accepts import sources: its supplier directory (the default)."""
    path = d.state_dir / "pools"
    assert path.is_dir(), path
    return path


# ------------------------------------------------------------------ create, list, show, delete

def test_snapshot_create_list_show_delete(remapd):
    d = remapd
    written = [0, 1, 2, 7, 500, 1023]
    volume_with_data(d, "vm1", written)
    d.create_volume("other", VOLUME_SIZE)

    out = ok(d.ctl("snapshot", "create", "vm1", "s1"))
    assert out.startswith("snapshot vm1@s1 created\n"), out
    s1 = rest_snapshot(d, "vm1@s1")
    assert field(out, "id") == s1["id"]
    assert field(out, "export") == "vm1@s1" == s1["exportName"]
    assert (s1["name"], s1["volume"], s1["pool"], s1["sizeBytes"]) == ("s1", "vm1", "default", VOLUME_SIZE)
    # Mapped chunks: unique + shared is what the snapshot maps; nothing reserved without range reservations.
    assert s1["uniqueBytes"] + s1["sharedBytes"] == len(written) * CHUNK, s1
    assert s1["reservedBytes"] == 0, s1

    # Taking it again is idempotent: 200, the same snapshot.
    again = ok(d.ctl("snapshot", "create", "vm1", "s1"))
    assert again.startswith("snapshot vm1@s1 exists\n") and field(again, "id") == s1["id"], again
    assert ok_json(d.ctl("snapshot", "create", "vm1", "s1", "--json"))["id"] == s1["id"]

    s2 = ok_json(d.ctl("snapshot", "create", "vm1", "s2", "--json"))
    assert s2 == rest_snapshot(d, s2["id"])
    o1 = ok_json(d.ctl("snapshot", "create", "other", "s1", "--json"))
    assert o1["volume"] == "other" and o1["id"] not in (s1["id"], s2["id"])

    # show by VOLUME@NAME and by ID, tables and JSON.
    assert ok_json(d.ctl("snapshot", "show", "vm1@s1", "--json")) == rest_snapshot(d, s1["id"])
    assert ok_json(d.ctl("snapshot", "show", s1["id"], "--json"))["name"] == "s1"
    shown = ok(d.ctl("snapshot", "show", "vm1@s2"))
    assert field(shown, "snapshot") == "vm1@s2" and field(shown, "id") == s2["id"], shown
    assert field(shown, "size") == f"64 MiB ({VOLUME_SIZE} bytes)", shown
    for name in ("unique", "shared", "reserved", "created", "volume", "pool"):
        field(shown, name)

    # list VOLUME: oldest first; list: every volume's.
    header, rows = table(ok(d.ctl("snapshot", "list", "vm1")))
    assert header == ["SNAPSHOT", "ID", "SIZE", "UNIQUE", "SHARED", "RESERVED", "CREATED"], header
    assert [(r["SNAPSHOT"], r["ID"]) for r in rows] == [("vm1@s1", s1["id"]), ("vm1@s2", s2["id"])], rows
    assert rows[0]["SIZE"] == "64 MiB", rows
    listed = ok_json(d.ctl("snapshot", "list", "vm1", "--json"))
    assert listed == d.get_ok("/v1/volumes/vm1/snapshots")
    assert [s["name"] for s in listed["snapshots"]] == ["s1", "s2"]
    _, rows = table(ok(d.ctl("snapshot", "list")))
    assert sorted(r["SNAPSHOT"] for r in rows) == ["other@s1", "vm1@s1", "vm1@s2"], rows
    assert {s["id"] for s in ok_json(d.ctl("snapshot", "list", "--json"))["snapshots"]} == \
        {s1["id"], s2["id"], o1["id"]}
    assert table(ok(d.ctl("snapshot", "list", "other")))[1][0]["SNAPSHOT"] == "other@s1"

    # delete by VOLUME@NAME and by ID.
    assert ok(d.ctl("snapshot", "delete", "vm1@s1")) == "snapshot vm1@s1 deleted\n"
    api_error(d.ctl("snapshot", "show", "vm1@s1"), "not-found", 404)
    api_error(d.ctl("snapshot", "delete", "vm1@s1"), "not-found", 404)
    assert ok_json(d.ctl("snapshot", "delete", s2["id"], "--json")) == {"deleted": s2["id"]}
    assert ok_json(d.ctl("snapshot", "list", "vm1", "--json")) == {"snapshots": []}
    assert table(ok(d.ctl("snapshot", "list", "vm1")))[1] == []
    # The volume itself is untouched.
    assert d.volume("vm1")["allocatedBytes"] == len(written) * CHUNK


def test_snapshot_reads_the_past_and_is_read_only(remapd):
    import nbd
    d = remapd
    model = volume_with_data(d, "vm1", [0, 3, 4, 900])
    ok(d.ctl("snapshot", "create", "vm1", "before"))
    before = bytes(model)
    write_chunks(d, "vm1", [3, 5], seed=2, model=model)

    assert read_all(d, "vm1@before") == before
    assert read_all(d, "vm1") == bytes(model)
    # Overwriting chunk 3 copied it: the snapshot now holds it alone.
    assert ok_json(d.ctl("snapshot", "show", "vm1@before", "--json"))["uniqueBytes"] == CHUNK

    h = nbd_connect(d, "vm1@before")
    try:
        assert h.is_read_only()
        with pytest.raises(nbd.Error) as exc:
            h.pwrite(b"x" * 512, 0)
        assert exc.value.errnum == 1, exc.value  # EPERM
        # Deleting a snapshot an NBD client reads is refused.
        api_error(d.ctl("snapshot", "delete", "vm1@before"), "in-use", 409)
    finally:
        h.shutdown()
    ok(d.ctl("snapshot", "delete", "vm1@before"))


# ------------------------------------------------------------------ clone

def test_clone_reads_the_snapshot_and_writes_alone(remapd):
    d = remapd
    model = volume_with_data(d, "base", [0, 10, 11, 12, 700])
    snap = ok_json(d.ctl("snapshot", "create", "base", "gold", "--json"))
    pool_before = d.pool()["allocatedBytes"]

    out = ok(d.ctl("snapshot", "clone", "base@gold", "c1", "--label", "app=db", "--label", "tier=gold"))
    assert out.startswith("volume c1 created from base@gold\n"), out
    assert field(out, "origin snapshot") == snap["id"], out
    clone = d.volume("c1")
    assert clone["originSnapshot"] == snap["id"], clone
    assert clone["labels"] == {"app": "db", "tier": "gold"}, clone
    assert clone["sizeBytes"] == VOLUME_SIZE and clone["pool"] == "default", clone
    # The clone shares the snapshot's chunks: the pool holds nothing more.
    assert d.pool()["allocatedBytes"] == pool_before
    assert field(ok(d.ctl("volume", "show", "c1")), "origin snapshot") == snap["id"]

    assert sha256(read_all(d, "c1")) == sha256(bytes(model))

    # Writes to the clone touch neither the snapshot nor the volume.
    clone_model = bytearray(model)
    write_chunks(d, "c1", [10, 20], seed=3, model=clone_model)
    assert read_all(d, "c1") == bytes(clone_model)
    assert read_all(d, "base@gold") == bytes(model)
    assert read_all(d, "base") == bytes(model)

    # Cloning again with the same spec is idempotent (by ID too); a taken name is refused.
    again = ok_json(d.ctl("snapshot", "clone", snap["id"], "c1", "--label", "tier=gold", "--label", "app=db",
                          "--json"))
    assert again["name"] == "c1" and again["originSnapshot"] == snap["id"], again
    assert ok(d.ctl("snapshot", "clone", "base@gold", "c1", "--label", "app=db", "--label", "tier=gold")) \
        .startswith("volume c1 exists\n")
    api_error(d.ctl("snapshot", "clone", "base@gold", "base"), "already-exists", 409)
    # remapd treats other labels as another spec, like volume create.
    api_error(d.ctl("snapshot", "clone", "base@gold", "c1"), "already-exists", 409)
    api_error(d.ctl("snapshot", "clone", "base@nope", "c2"), "not-found", 404)
    usage_error(d.ctl("snapshot", "clone", "base@gold", "c2", "--label", "novalue"))

    # The clone outlives its snapshot.
    ok(d.ctl("snapshot", "delete", "base@gold"))
    assert read_all(d, "c1") == bytes(clone_model)


# ------------------------------------------------------------------ revert

def test_volume_revert(remapd):
    d = remapd
    model = volume_with_data(d, "vm1", [0, 1, 50])
    snap = ok_json(d.ctl("snapshot", "create", "vm1", "s1", "--json"))
    at_s1 = bytes(model)
    write_chunks(d, "vm1", [1, 2, 51], seed=9)
    assert read_all(d, "vm1") != at_s1

    out = ok(d.ctl("volume", "revert", "vm1", "vm1@s1"))
    assert out.startswith("volume vm1 reverted to vm1@s1\n") and field(out, "name") == "vm1", out
    assert read_all(d, "vm1") == at_s1
    assert d.volume("vm1")["allocatedBytes"] == 3 * CHUNK
    # The snapshot stays; revert by plain name and by ID too, with --json.
    write_chunks(d, "vm1", [7], seed=10)
    assert ok_json(d.ctl("volume", "revert", "vm1", "s1", "--json"))["name"] == "vm1"
    assert read_all(d, "vm1") == at_s1
    write_chunks(d, "vm1", [8], seed=11)
    ok(d.ctl("volume", "revert", "vm1", snap["id"]))
    assert read_all(d, "vm1") == at_s1
    assert rest_snapshot(d, "vm1@s1")["id"] == snap["id"]

    # An NBD client on the volume: in-use.
    h = nbd_connect(d, "vm1")
    try:
        api_error(d.ctl("volume", "revert", "vm1", "s1"), "in-use", 409)
    finally:
        h.shutdown()
    api_error(d.ctl("volume", "revert", "vm1", "nope"), "not-found", 404)
    api_error(d.ctl("volume", "revert", "nope", "s1"), "not-found", 404)
    usage_error(d.ctl("volume", "revert", "vm1"))


# ------------------------------------------------------------------ changes

def test_snapshot_changes(remapd):
    d = remapd
    first = [0, 1, 2, 9, 100, 101, 1023]
    later = [2, 3, 4, 50, 1022]
    volume_with_data(d, "vm1", first)
    s1 = ok_json(d.ctl("snapshot", "create", "vm1", "s1", "--json"))
    write_chunks(d, "vm1", later, seed=2)
    s2 = ok_json(d.ctl("snapshot", "create", "vm1", "s2", "--json"))

    # Against a base: exactly the chunks written in between, merged.
    answer = ok_json(d.ctl("snapshot", "changes", "vm1@s2", "--base", "vm1@s1", "--json"))
    assert answer["snapshot"] == s2["id"] and answer["base"] == s1["id"], answer
    assert answer["granularityBytes"] == CHUNK and answer["sizeBytes"] == VOLUME_SIZE, answer
    expected = chunk_ranges(later)
    assert [(r["offsetBytes"], r["lengthBytes"]) for r in answer["ranges"]] == expected, answer
    assert answer["changedBytes"] == len(later) * CHUNK
    # The base by plain name and by ID: the same ranges.
    for base in ("s1", s1["id"]):
        other = ok_json(d.ctl("snapshot", "changes", s2["id"], "--base", base, "--json"))
        assert other["ranges"] == answer["ranges"], (base, other)

    # The table: one row per range, then the total.
    out = ok(d.ctl("snapshot", "changes", "vm1@s2", "--base", "vm1@s1"))
    lines = out.splitlines()
    assert re.split(r"\s{2,}", lines[0].strip()) == ["OFFSET", "LENGTH", "SIZE"], out
    rows = [re.split(r"\s+", line.strip()) for line in lines[1:-1]]
    assert [(int(r[0]), int(r[1])) for r in rows] == expected, out
    assert lines[-1] == (f"total: {len(expected)} ranges, {len(later) * 64} KiB ({len(later) * CHUNK} bytes) "
                         f"of 64 MiB may differ from vm1@s1"), out

    # Without a base: where the snapshot holds data.
    data = ok_json(d.ctl("snapshot", "changes", "vm1@s2", "--json"))
    assert data["base"] is None, data
    assert [(r["offsetBytes"], r["lengthBytes"]) for r in data["ranges"]] == chunk_ranges(first + later), data
    assert data["changedBytes"] == len(set(first + later)) * CHUNK
    out = ok(d.ctl("snapshot", "changes", "vm1@s1"))
    assert out.splitlines()[-1].endswith("of 64 MiB mapped; the rest reads zeros"), out

    # The snapshot against itself: nothing.
    none = ok_json(d.ctl("snapshot", "changes", "vm1@s1", "--base", "vm1@s1", "--json"))
    assert none["ranges"] == [] and none["changedBytes"] == 0, none
    assert ok(d.ctl("snapshot", "changes", "vm1@s1", "--base", "s1")).splitlines()[-1].startswith("total: 0 ranges")

    api_error(d.ctl("snapshot", "changes", "vm1@nope"), "not-found", 404)
    api_error(d.ctl("snapshot", "changes", "vm1@s2", "--base", "vm1@nope"), "not-found", 404)
    usage_error(d.ctl("snapshot", "changes", "vm1@s2", "--base", ""))


# ------------------------------------------------------------------ export

def export_pattern(d):
    """A mostly empty 64 MiB volume: whole random chunks, one chunk with a
    single random 4 KiB block (the rest zeros), and one written all zeros."""
    chunks = [0, 1, 2, 300, 301, 1023]
    model = volume_with_data(d, "vm1", chunks)
    h = nbd_connect(d, "vm1")
    try:
        block = random.Random("block").randbytes(4096)
        h.pwrite(block, 600 * CHUNK + 8192)
        model[600 * CHUNK + 8192:600 * CHUNK + 12288] = block
        h.pwrite(bytes(CHUNK), 700 * CHUNK)
        h.flush()
    finally:
        h.shutdown()
    ok(d.ctl("snapshot", "create", "vm1", "s1"))
    return model, len(chunks) * CHUNK + 4096


def test_snapshot_export_writes_an_identical_sparse_file(remapd, tmp_path):
    d = remapd
    model, data_bytes = export_pattern(d)
    snapshot_sum = sha256(read_all(d, "vm1@s1"))
    assert snapshot_sum == sha256(bytes(model))

    target = tmp_path / "vm1.raw"
    p = d.ctl("snapshot", "export", "vm1@s1", target, "--no-progress")
    out = ok(p)
    assert p.stderr.decode() == "", p.stderr.decode()
    assert out.startswith("snapshot vm1@s1 exported\n") and field(out, "file") == str(target), out
    assert target.stat().st_size == VOLUME_SIZE
    assert file_sha256(target) == snapshot_sum
    allocated = target.stat().st_blocks * 512
    # Only the data takes disk: not the holes, nor the zero blocks of fetched chunks.
    assert allocated <= data_bytes + 256 * 1024, (allocated, data_bytes)
    assert allocated < VOLUME_SIZE // 16, allocated
    assert not (tmp_path / "vm1.raw.part").exists()

    # An existing file is left alone without --force.
    before = file_sha256(target)
    p = d.ctl("snapshot", "export", "vm1@s1", target)
    assert p.returncode == 1 and p.stdout == b"", p
    err = p.stderr.decode()
    assert err.startswith("remapctl: ") and "already exists" in err and "--force" in err and \
        len(err.splitlines()) == 1, err
    assert file_sha256(target) == before

    # --force replaces it; --json says what was fetched and written and shows no progress.
    target.write_bytes(b"old content")
    p = d.ctl("snapshot", "export", "vm1@s1", target, "--force", "--json", "--progress")
    summary = ok_json(p)
    assert p.stderr.decode() == ""
    snap = rest_snapshot(d, "vm1@s1")
    changes = d.get_ok(f"/v1/snapshots/{snap['id']}/changes")
    assert summary == {"snapshot": snap["id"], "name": "vm1@s1", "file": str(target), "sizeBytes": VOLUME_SIZE,
                       "ranges": len(changes["ranges"]), "fetchedBytes": changes["changedBytes"],
                       "writtenBytes": data_bytes}, summary
    assert file_sha256(target) == snapshot_sum
    assert target.stat().st_blocks * 512 <= data_bytes + 256 * 1024

    # A relative FILE is written relative to the working directory; by ID works too.
    work = tmp_path / "work"
    work.mkdir()
    p = run([REMAPCTL, "snapshot", "export", snap["id"], "rel.raw", "--socket", d.api_sock], cwd=work)
    assert field(ok(p), "file") == str(work / "rel.raw")
    assert file_sha256(work / "rel.raw") == snapshot_sum


def test_snapshot_export_progress(remapd, tmp_path):
    d = remapd
    _, data_bytes = export_pattern(d)
    p = d.ctl("snapshot", "export", "vm1@s1", tmp_path / "a.raw", "--progress")
    ok(p)
    lines = p.stderr.decode().splitlines()
    assert lines, "no progress with --progress"
    # The last line: everything fetched of everything, 100 %, a rate and the time taken.
    assert re.match(r"^export vm1@s1  \S+ \S+ / \S+ \S+  100%  .*/s  in [0-9.ms]+$", lines[-1]), lines
    # Not a terminal and no --progress: no progress.
    p = d.ctl("snapshot", "export", "vm1@s1", tmp_path / "b.raw")
    ok(p)
    assert p.stderr.decode() == ""


def test_snapshot_export_errors(remapd, tmp_path):
    d = remapd
    volume_with_data(d, "vm1", [0])
    ok(d.ctl("snapshot", "create", "vm1", "s1"))
    target = tmp_path / "x.raw"
    api_error(d.ctl("snapshot", "export", "vm1@nope", target), "not-found", 404)
    assert not target.exists() and not (tmp_path / "x.raw.part").exists()
    # A directory in the way is never replaced, even with --force.
    p = d.ctl("snapshot", "export", "vm1@s1", tmp_path, "--force")
    assert p.returncode == 1 and "not a regular file" in p.stderr.decode(), p
    # A directory that does not exist: one line naming the file.
    p = d.ctl("snapshot", "export", "vm1@s1", tmp_path / "no" / "x.raw")
    assert p.returncode == 1 and p.stderr.decode().startswith(f"remapctl: {tmp_path}/no/x.raw.part: "), p
    usage_error(d.ctl("snapshot", "export", "vm1@s1"))
    usage_error(d.ctl("snapshot", "export", "vm1@s1", target, "--progress", "--no-progress"))


# ------------------------------------------------------------------ import

def test_export_then_import_round_trip(remapd):
    d = remapd
    model, _ = export_pattern(d)
    source = d.volume("vm1")
    image = supplier_dir(d) / "vm1.raw"
    ok(d.ctl("snapshot", "export", "vm1@s1", image))

    out = ok(d.ctl("volume", "import", image, "--name", "imp", "--label", "from=export"))
    assert out.startswith(f"volume imp imported from {image}\n"), out
    imported = d.volume("imp")
    assert imported["sizeBytes"] == VOLUME_SIZE and imported["labels"] == {"from": "export"}, imported
    # Only chunks with data take space: the all-zero chunk and the holes do not.
    assert imported["allocatedBytes"] == 7 * CHUNK, (imported, source)
    assert sha256(read_all(d, "imp")) == sha256(bytes(model))

    # --json prints the volume; a larger --size; a relative path made absolute.
    p = run([REMAPCTL, "volume", "import", "vm1.raw", "--name", "big", "--size", "128M", "--json",
             "--socket", d.api_sock], cwd=supplier_dir(d))
    big = ok_json(p)
    assert p.stderr.decode() == ""
    assert big == d.volume("big")
    assert big["sizeBytes"] == 128 * MiB and big["allocatedBytes"] == 7 * CHUNK, big
    data = read_all(d, "big")
    assert data[:VOLUME_SIZE] == bytes(model) and data[VOLUME_SIZE:] == bytes(64 * MiB)

    # The operations are remembered, newest first.
    ops = ok_json(d.ctl("operation", "list", "--json"))["operations"]
    assert [(o["volume"], o["state"], o["kind"]) for o in ops[:2]] == \
        [("big", "succeeded", "import"), ("imp", "succeeded", "import")], ops
    assert ops[1]["source"] == str(image) and ops[1]["doneBytes"] == ops[1]["totalBytes"], ops[1]
    header, rows = table(ok(d.ctl("operation", "list")))
    assert header == ["ID", "KIND", "STATE", "VOLUME", "PROGRESS", "CREATED", "SOURCE"], header
    assert [(r["ID"], r["STATE"], r["PROGRESS"]) for r in rows[:2]] == \
        [(ops[0]["id"], "succeeded", "100%"), (ops[1]["id"], "succeeded", "100%")], rows
    shown = ok(d.ctl("operation", "show", ops[1]["id"]))
    assert field(shown, "state") == "succeeded" and field(shown, "volume") == "imp", shown
    assert ok_json(d.ctl("operation", "show", ops[1]["id"], "--json")) == d.get_ok(f"/v1/operations/{ops[1]['id']}")


def test_import_progress_and_no_wait(remapd):
    d = remapd
    image = supplier_dir(d) / "data.raw"
    data = random.Random("import").randbytes(8 * MiB)
    image.write_bytes(data)

    p = d.ctl("volume", "import", image, "--name", "v1", "--progress")
    ok(p)
    lines = p.stderr.decode().splitlines()
    assert lines and re.match(r"^import v1  8\.0 MiB / 8\.0 MiB  100%.*  in [0-9.ms]+$", lines[-1]), lines
    assert d.volume("v1")["allocatedBytes"] == 8 * MiB

    p = d.ctl("volume", "import", image, "--name", "v2", "--no-wait")
    out = ok(p)
    assert out.startswith(f"import of {image} into volume v2 started\n"), out
    op_id = field(out, "id")
    assert out.splitlines()[-1] == f"follow it with: remapctl operation show {op_id}", out
    assert wait_operation(d, op_id)["state"] == "succeeded"

    started = ok_json(d.ctl("volume", "import", image, "--name", "v3", "--no-wait", "--json"))
    assert started["volume"]["name"] == "v3" and started["operation"]["kind"] == "import", started
    assert started["operation"]["source"] == str(image), started
    assert wait_operation(d, started["operation"]["id"])["state"] == "succeeded"
    assert sha256(read_all(d, "v3")) == sha256(data)


def test_import_errors(make_remapd, tmp_path):
    d = make_remapd(pool_size="32M")
    image = supplier_dir(d) / "big.raw"
    image.write_bytes(random.Random("big").randbytes(48 * MiB))

    # Space runs out during the import: exit 1 with remapd's reason, and the volume is gone.
    p = d.ctl("volume", "import", image, "--name", "toobig", timeout=120)
    detail, code = error_status(p, 507)
    assert detail.startswith(f"import of {image} into volume toobig failed: "), detail
    status, _, _ = d.api("GET", "/v1/volumes/toobig")
    assert status == 404
    failed = d.get_ok("/v1/operations")["operations"][0]
    assert failed["state"] == "failed" and failed["error"]["status"] == 507, failed
    assert field(ok(d.ctl("operation", "show", failed["id"])), "state") == "failed"
    assert wait_until(lambda: d.pool()["allocatedBytes"] == 0, timeout=10), d.pool()

    # Refused at once: outside the supplier directory, missing, a directory, a taken name.
    outside = tmp_path / "outside.raw"
    outside.write_bytes(b"\1" * 4096)
    api_error(d.ctl("volume", "import", outside, "--name", "x"), "invalid-argument", 400)
    api_error(d.ctl("volume", "import", supplier_dir(d) / "missing.raw", "--name", "x"), "invalid-argument", 400)
    api_error(d.ctl("volume", "import", supplier_dir(d), "--name", "x"), "invalid-argument", 400)
    small = supplier_dir(d) / "small.raw"
    small.write_bytes(b"\1" * 4096)
    d.create_volume("taken", MiB)
    error_status(d.ctl("volume", "import", small, "--name", "taken"), 409)
    assert d.volume("taken")["allocatedBytes"] == 0

    api_error(d.ctl("operation", "show", "00000000-0000-0000-0000-000000000000"), "not-found", 404)
    api_error(d.ctl("operation", "cancel", "00000000-0000-0000-0000-000000000000"), "not-found", 404)
    # Cancelling a finished operation forgets it.
    assert "forgotten" in ok(d.ctl("operation", "cancel", failed["id"]))
    api_error(d.ctl("operation", "show", failed["id"]), "not-found", 404)
    usage_error(d.ctl("operation", "cancel"))
    usage_error(d.ctl("volume", "import", small))
    usage_error(d.ctl("volume", "import", small, "--name", "y", "--size", "lots"))
    usage_error(d.ctl("operation", "show"))


# ------------------------------------------------------------------ errors, usage, completion

@pytest.mark.parametrize("args", [
    ["snapshot", "show", "vm1@nope"],
    ["snapshot", "show", "00000000-0000-0000-0000-000000000000"],
    ["snapshot", "delete", "vm1@nope"],
    ["snapshot", "clone", "vm1@nope", "c"],
    ["snapshot", "changes", "vm1@nope"],
    ["snapshot", "create", "nope", "s1"],
    ["snapshot", "list", "nope"],
    ["volume", "revert", "vm1", "vm1@nope"],
])
def test_unknown_snapshot_or_volume_is_exit_1(remapd, args):
    d = remapd
    d.create_volume("vm1", MiB)
    detail = api_error(d.ctl(*args), "not-found", 404)
    assert detail


@pytest.mark.parametrize("args", [
    ["snapshot", "create", "vm1"],
    ["snapshot", "create", "vm1", ""],
    ["snapshot", "show"],
    ["snapshot", "show", ""],
    ["snapshot", "delete"],
    ["snapshot", "clone", "vm1@s1"],
    ["snapshot", "changes"],
    ["snapshot", "export", "vm1@s1", ""],
    ["volume", "import", "--name", "x"],
    ["volume", "import", "f.raw", "--name", ""],
    ["operation", "show", ""],
])
def test_usage_errors_are_exit_2(remapd, args):
    usage_error(remapd.ctl(*args))


def test_invalid_snapshot_name_is_refused_by_the_daemon(remapd):
    d = remapd
    d.create_volume("vm1", MiB)
    api_error(d.ctl("snapshot", "create", "vm1", "bad/name"), "invalid-argument", 400)
    api_error(d.ctl("snapshot", "create", "vm1", "x" * 129), "invalid-argument", 400)


def test_completion(remapd, tmp_path):
    d = remapd
    d.create_volume("alpha", MiB)
    d.create_volume("beta", MiB)
    ok(d.ctl("snapshot", "create", "alpha", "mon"))
    ok(d.ctl("snapshot", "create", "alpha", "tue"))
    ok(d.ctl("snapshot", "create", "beta", "one"))
    image = supplier_dir(d) / "c.raw"
    image.write_bytes(b"\1" * 4096)
    op_id = ok_json(d.ctl("volume", "import", image, "--name", "gamma", "--no-wait", "--json"))["operation"]["id"]

    script_text = ok(run([REMAPCTL, "--generate-completion-script", "bash"], timeout=30))
    for word in ("snapshot", "operation", "revert", "import", "no-wait", "no-progress", "base", "force"):
        assert word in script_text, f"bash completion lacks {word}"
    script = tmp_path / "remapctl.bash"
    script.write_text(script_text)
    sock = str(d.api_sock)

    def complete(words, current):
        return bash_complete(script, words, current)

    every = ["alpha@mon", "alpha@tue", "beta@one"]
    assert complete(["remapctl", "snapshot", "show", "", "--socket", sock], 3) == every
    assert complete(["remapctl", "snapshot", "delete", "a", "--socket", sock], 3) == ["alpha@mon", "alpha@tue"]
    assert complete(["remapctl", "snapshot", "export", "", "--socket", sock], 3) == every
    assert complete(["remapctl", "snapshot", "clone", "b", "--socket", sock], 3) == ["beta@one"]
    assert complete(["remapctl", "snapshot", "create", "", "--socket", sock], 3) == ["alpha", "beta", "gamma"]
    assert complete(["remapctl", "snapshot", "list", "", "--socket", sock], 3) == ["alpha", "beta", "gamma"]
    assert complete(["remapctl", "volume", "revert", "alpha", "", "--socket", sock], 4) == ["mon", "tue"]
    assert complete(["remapctl", "--socket", sock, "snapshot", "changes", "alpha@tue", "--base", ""], 7) == ["mon"]
    assert complete(["remapctl", "--socket", sock, "snapshot", "changes", "x", "--base", ""], 7) == every
    assert complete(["remapctl", "operation", "show", "", "--socket", sock], 3) == [op_id]
    assert complete(["remapctl", "snap"], 1) == ["snapshot"]
    assert complete(["remapctl", "snapshot", "c"], 2) == ["changes", "clone", "create"]
    assert complete(["remapctl", "snapshot", "show", "", "--socket", str(tmp_path / "none.sock")], 3) == []
    wait_operation(d, op_id)
