"""What clients send stays where it belongs (issue 11).

Supplier paths cannot get a directory made outside `--supplier-dir`
through a symlink; a NUL in a path or label is refused rather than
truncated; an import source that is not a regular file (a FIFO) is refused
without hanging an API thread; text a client chose cannot forge log lines;
JSON bodies are parsed strictly (no trailing commas, no duplicate keys);
metadata.db and its WAL are readable by the daemon's user only.
"""

import os
import socket
import stat
import struct
import time

import pytest

from harness import MiB, assert_problem


def create_pool(d, name, path, size=64 * MiB):
    return d.api("POST", "/v1/pools", body={
        "name": name, "suppliers": [{"kind": "file", "path": str(path), "sizeBytes": size}]})


# ------------------------------------------------------------------ supplier paths

def test_no_directory_is_made_outside_the_supplier_dir(remapd, tmp_path):
    """A symlink in --supplier-dir pointing outside: a supplier under a new
    directory below it is refused before anything is created there."""
    d = remapd
    outside = tmp_path / "outside"
    outside.mkdir()
    (d.state_dir / "pools" / "link").symlink_to(outside)
    status, headers, body = create_pool(d, "esc", d.state_dir / "pools" / "link" / "new" / "deeper" / "esc.img")
    assert_problem(status, headers, body, 400, "invalid-argument")
    assert "outside the supplier directory" in body["detail"], body
    assert list(outside.iterdir()) == [], f"created outside --supplier-dir: {list(outside.iterdir())}"
    # New directories inside the supplier directory are still made.
    status, _, body = create_pool(d, "inside", d.state_dir / "pools" / "a" / "b" / "in.img")
    assert status == 201, (status, body)
    assert (d.state_dir / "pools" / "a" / "b" / "in.img").exists()


def test_nul_in_a_supplier_path_is_refused(remapd):
    d = remapd
    pools = d.state_dir / "pools"
    status, headers, body = create_pool(d, "nul", f"{pools}/x.img\u0000.tail")
    assert_problem(status, headers, body, 400, "invalid-argument")
    assert "NUL" in body["detail"] and "suppliers[0].path" in body["detail"], body
    assert not (pools / "x.img").exists(), "a file was created at the path cut at the NUL"
    status, headers, body = d.api("POST", "/v1/pools/default/suppliers",
                                  body={"kind": "file", "path": f"{pools}/y.img\u0000", "sizeBytes": 64 * MiB})
    assert_problem(status, headers, body, 400, "invalid-argument")
    assert not (pools / "y.img").exists()
    status, headers, body = d.api("POST", "/v1/volumes", body={"name": "imp", "source": {"file": f"{pools}/default.img\u0000x"}})
    assert_problem(status, headers, body, 400, "invalid-argument")
    assert "source.file" in body["detail"], body


def test_nul_in_a_label_is_refused(remapd):
    """Labels are stored in SQLite as C strings would cut them: a NUL is
    refused at the API (create and patch), and nothing is stored."""
    d = remapd
    status, headers, body = d.api("POST", "/v1/volumes", body={"name": "v", "sizeBytes": MiB,
                                                               "labels": {"app": "db\u0000evil"}})
    assert_problem(status, headers, body, 400, "invalid-argument")
    assert "NUL" in body["detail"] and "app" in body["detail"], body
    d.create_volume("v", MiB)
    status, headers, body = d.api("PATCH", "/v1/volumes/v", body={"labels": {"app": "\u0000"}})
    assert_problem(status, headers, body, 400, "invalid-argument")
    d.restart()
    assert d.volume("v")["labels"] == {}


# ------------------------------------------------------------------ imports

@pytest.mark.timeout(60)
def test_import_from_a_fifo_is_refused_at_once(remapd):
    """Opening a FIFO for reading blocks until a writer comes: the source is
    opened non-blocking and must be a regular file."""
    d = remapd
    fifo = d.state_dir / "pools" / "pipe"
    os.mkfifo(fifo)
    started = time.monotonic()
    status, headers, body = d.api("POST", "/v1/volumes", body={"name": "f", "source": {"file": str(fifo)}}, timeout=10)
    assert_problem(status, headers, body, 400, "invalid-argument")
    assert "not a regular file" in body["detail"], body
    assert time.monotonic() - started < 3
    assert d.api("GET", "/v1/volumes/f")[0] == 404
    # A regular file still imports.
    image = d.state_dir / "pools" / "disk.raw"
    image.write_bytes(b"\x01" * MiB)
    status, _, body = d.api("POST", "/v1/volumes", body={"name": "r", "source": {"file": str(image)}})
    assert status == 202, (status, body)


# ------------------------------------------------------------------ logs

def test_client_text_cannot_forge_log_lines(remapd):
    """An NBD client asking (NBD_OPT_EXPORT_NAME) for an export whose name
    holds a newline and a terminal escape: the daemon logs the name escaped,
    on one line."""
    d = remapd
    name = b"x\nremapd: forged line\x1b[2K"
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(str(d.nbd_sock))
    greeting = b""
    while len(greeting) < 18:
        greeting += s.recv(18 - len(greeting))
    assert greeting[:16] == b"NBDMAGICIHAVEOPT", greeting
    s.sendall(struct.pack(">I", 1) + b"IHAVEOPT" + struct.pack(">II", 1, len(name)) + name)
    try:
        while s.recv(4096):
            pass
    except OSError:
        pass
    s.close()
    time.sleep(0.3)
    lines = d.last_output().splitlines()
    assert not any(line.startswith("remapd: forged") for line in lines), lines
    assert any("x\\nremapd: forged line\\x1b[2K" in line for line in lines), lines
    assert not any("\x1b" in line for line in lines), lines


# ------------------------------------------------------------------ strict JSON

@pytest.mark.parametrize("body, what", [
    ('{"name": "a", "sizeBytes": 1048576,}', "trailing comma"),
    ('{"name": "a", "sizeBytes": 1048576, "labels": {"k": "v",}}', "trailing comma"),
    ('{"name": "a", "sizeBytes": 1048576, "name": "b"}', "duplicate key 'name'"),
    ('{"name": "a", "sizeBytes": 1048576, "labels": {"k": "1", "k": "2"}}', "duplicate key 'k'"),
])
def test_json_is_parsed_strictly(rd_shared, body, what):
    d = rd_shared
    status, headers, problem = d.api("POST", "/v1/volumes", raw_body=body)
    assert_problem(status, headers, problem, 400, "invalid-argument")
    assert what in problem["detail"], problem
    assert d.api("GET", "/v1/volumes/a")[0] == 404
    assert d.api("GET", "/v1/volumes/b")[0] == 404


def test_json_numbers_keep_their_meaning(rd_shared):
    """An integral number written with a fraction or exponent is still an
    integer, as before the strict parser; 1.5 is not."""
    d = rd_shared
    status, _, body = d.api("POST", "/v1/volumes", raw_body='{"name": "n1", "sizeBytes": 1.048576e6}')
    assert status == 201 and body["sizeBytes"] == MiB, (status, body)
    status, headers, body = d.api("POST", "/v1/volumes", raw_body='{"name": "n2", "sizeBytes": 1048576.5}')
    assert_problem(status, headers, body, 400, "invalid-argument")
    d.delete_volume("n1")


# ------------------------------------------------------------------ metadata files

def test_metadata_files_are_private(make_remapd):
    """metadata.db, -wal and -shm are mode 0600 under umask 022, and files
    left more open by an older remapd are tightened at start."""
    old = os.umask(0o022)
    try:
        d = make_remapd()
        d.create_volume("v", MiB)
        files = [d.state_dir / name for name in ("metadata.db", "metadata.db-wal", "metadata.db-shm")]
        modes = {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files if f.exists()}
        assert modes == {f.name: "0o600" for f in files}, modes
        d.terminate()
        for f in files:
            if f.exists():
                f.chmod(0o644)
        d.start()
        d.create_volume("w", MiB)
        modes = {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files if f.exists()}
        assert modes and set(modes.values()) == {"0o600"}, modes
    finally:
        os.umask(old)
