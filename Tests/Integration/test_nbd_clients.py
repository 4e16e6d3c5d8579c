"""Real NBD clients against a remap export: nbdinfo, nbdcopy, qemu-img,
qemu-io, fio's nbd engine, nbdsh and libnbd's Python binding.

Every feature the export advertises is exercised by a client that uses it,
and each check looks at what the feature must change: the bytes read back,
the allocation map (base:allocation) and the pool accounting on REST.

Chunks are 64 KiB: a chunk is allocated on its first write; TRIM and
WRITE_ZEROES without NO_HOLE free whole chunks and zero the partial ones;
WRITE_ZEROES with NO_HOLE leaves the range backed.
"""

import errno
import json
import os
import random
import re
import subprocess

import pytest

import harness
from harness import (CHUNK, MiB, assert_accounting, block_status, chunks_touched, clean_env, fio_has_nbd,
                     nbdinfo_json, qemu_io, read_all, run, wait_until)

import nbd  # noqa: E402  (python3-libnbd; a missing package must fail, not skip)

MAX_PAYLOAD = 32 * MiB
HOLE_ZERO = nbd.STATE_HOLE | nbd.STATE_ZERO


# ------------------------------------------------------------------ helpers

def connect(d, name):
    """A libnbd handle with base:allocation and full info requested; shut down at teardown."""
    return harness.connect(d, name, meta=True, full_info=True)


def volume_alloc(d, name):
    return d.volume(name)["allocatedBytes"]


def expect_alloc(d, name, expected, timeout=3.0):
    """The volume's published allocation reaches `expected` (freed chunks are
    returned at the next commit, which a FLUSH forces)."""
    wait_until(lambda: volume_alloc(d, name) == expected, timeout=timeout)
    got = volume_alloc(d, name)
    assert got == expected, (f"volume {name}: allocatedBytes {got} ({got / CHUNK:g} chunks), "
                             f"expected {expected} ({expected / CHUNK:g} chunks)")
    assert_accounting(d)


def merge(extents):
    """Merge adjacent (offset, length, kind) runs of the same kind."""
    out = []
    for off, length, kind in extents:
        if length == 0:
            continue
        if out and out[-1][2] == kind and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + length, kind)
        else:
            out.append((off, length, kind))
    return out


def allocation_map(h, size):
    """[(offset, length, 'data'|'hole')] merged; holes must read as zeros."""
    runs = []
    for off, n, fl in block_status(h, 0, size):
        if fl & nbd.STATE_HOLE:
            assert fl & nbd.STATE_ZERO, f"hole at {off}+{n} without the zero bit: flags {fl}"
            runs.append((off, n, "hole"))
        else:
            runs.append((off, n, "data"))
    return merge(runs)


def expected_map(size, data_chunks):
    runs = [(i * CHUNK, CHUNK, "data" if i in data_chunks else "hole")
            for i in range(size // CHUNK)]
    return merge(runs)


def chunks_of(ranges):
    out = set()
    for off, length in ranges:
        out.update(range(off // CHUNK, (off + length - 1) // CHUNK + 1))
    return out


def nonzero_chunks(data):
    zero = bytes(CHUNK)
    return {i for i in range(len(data) // CHUNK) if data[i * CHUNK:(i + 1) * CHUNK] != zero}


def nbdinfo_map(uri):
    """nbdinfo --map --json, merged, as (offset, length, 'data'|'hole')."""
    p = run(["nbdinfo", "--map", "--json", uri], timeout=60)
    assert p.returncode == 0, f"nbdinfo --map {uri}: {p.stderr.decode()}"
    runs = []
    for e in json.loads(p.stdout):
        if e["type"] == 0:
            assert e["description"] == "data", e
            runs.append((e["offset"], e["length"], "data"))
        elif e["type"] == 3:
            assert e["description"] == "hole,zero", e
            runs.append((e["offset"], e["length"], "hole"))
        else:
            pytest.fail(f"unexpected base:allocation type in nbdinfo --map: {e}")
    return merge(runs)


def write_sparse_image(path, size, data_chunks, zero_chunks=(), seed=1):
    """A sparse raw file: random data in `data_chunks`, explicit zero bytes
    (not holes) in `zero_chunks`, holes elsewhere. Returns its bytes."""
    rng = random.Random(seed)
    image = bytearray(size)
    with open(path, "wb") as f:
        f.truncate(size)
        for i in sorted(data_chunks):
            block = rng.randbytes(CHUNK)
            image[i * CHUNK:(i + 1) * CHUNK] = block
            f.seek(i * CHUNK)
            f.write(block)
        for i in sorted(zero_chunks):
            f.seek(i * CHUNK)
            f.write(bytes(CHUNK))
    return bytes(image)


FLAG_NAMES = ("can_trim", "can_zero", "can_fast_zero", "can_df", "can_cache",
              "can_multi_conn", "can_flush", "can_fua")


# ------------------------------------------------------------------ nbdinfo

def test_nbdinfo_list_shows_every_export_with_its_features(remapd):
    d = remapd
    d.create_volume("alpha", 8 * MiB)
    d.create_volume("beta", 48 * MiB)

    p = run(["nbdinfo", "--list", d.nbd_list_uri()], timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode()
    assert "using structured packets" in out, out
    for name, size in (("alpha", 8 * MiB), ("beta", 48 * MiB)):
        assert f'export="{name}":' in out, out
        section = out.split(f'export="{name}":', 1)[1].split('export="', 1)[0]
        assert f"export-size: {size}" in section, section
        assert "base:allocation" in section, section
        for flag in FLAG_NAMES:
            assert f"{flag}: true" in section, f"{flag} not true for {name}:\n{section}"
        assert "is_read_only: false" in section, section

    info = nbdinfo_json("--list", d.nbd_list_uri())
    assert info["structured"] is True, info
    exports = {e["export-name"]: e for e in info["exports"]}
    assert set(exports) == {"alpha", "beta"}, info
    assert exports["alpha"]["export-size"] == 8 * MiB
    assert exports["beta"]["export-size"] == 48 * MiB


def test_nbdinfo_json_reports_every_feature(remapd):
    d = remapd
    d.create_volume("v", 256 * MiB)
    info = nbdinfo_json(d.nbd_uri("v"))
    assert info["protocol"] == "newstyle-fixed", info
    assert info["structured"] is True, "structured replies must be negotiated"
    (e,) = info["exports"]
    assert e["export-name"] == "v"
    assert e["export-size"] == 256 * MiB
    assert e["is_read_only"] is False
    for flag in FLAG_NAMES:
        assert e.get(flag) is True, f"{flag} is {e.get(flag)!r}: {e}"
    assert "base:allocation" in e.get("contexts", []), e
    # NBD_INFO_DESCRIPTION: a human-readable description of the export.
    assert isinstance(e.get("description"), str) and e["description"].strip(), \
        f"no export description: {e}"
    assert e["block_size_maximum"] == MAX_PAYLOAD, e
    assert 1 <= e["block_size_minimum"] <= 4096, e
    assert e["block_size_minimum"] <= e["block_size_preferred"] <= e["block_size_maximum"], e


def test_nbdinfo_map_shows_holes_and_data_and_trim_makes_holes(remapd):
    d = remapd
    size = 8 * MiB
    d.create_volume("m", size)
    uri = d.nbd_uri("m")

    assert nbdinfo_map(uri) == [(0, size, "hole")], "a fresh volume is one hole"

    writes = [(0, CHUNK),                   # chunk 0, whole
              (200000, 1000),               # inside chunk 3
              (MiB - 100, 200),             # chunks 15 and 16
              (size - 512, 512)]            # the last chunk
    qemu_io(uri, *[f"write -P 0x5c {o} {n}" for o, n in writes])
    data = chunks_of(writes)
    assert data == {0, 3, 15, 16, 127}
    assert nbdinfo_map(uri) == expected_map(size, data)
    expect_alloc(d, "m", len(data) * CHUNK)

    # The plain output a user reads says the same.
    p = run(["nbdinfo", "--map", uri], timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    lines = [ln.split() for ln in p.stdout.decode().splitlines() if ln.strip()]
    assert ["0", str(CHUNK), "0", "data"] == lines[0][:4], lines
    assert any(ln[2:4] == ["3", "hole,zero"] for ln in lines), lines

    # TRIM chunk 3 and chunks 15-16 (whole chunks): they become holes again.
    qemu_io(uri, f"discard {3 * CHUNK} {CHUNK}", f"discard {15 * CHUNK} {2 * CHUNK}")
    data -= {3, 15, 16}
    assert nbdinfo_map(uri) == expected_map(size, data)
    expect_alloc(d, "m", len(data) * CHUNK)
    h = connect(d, "m")
    assert h.pread(3 * CHUNK, 15 * CHUNK - CHUNK) == bytes(3 * CHUNK)


# ------------------------------------------------------------------ nbdcopy

@pytest.mark.parametrize("connections", [1, 4])
def test_nbdcopy_round_trip(remapd, tmp_path, connections):
    d = remapd
    size = 32 * MiB
    nchunks = size // CHUNK
    rng = random.Random(connections)
    data_chunks = set(rng.sample(range(nchunks), nchunks // 2))
    data_chunks |= set(range(100, 140))     # a long run too
    zero_chunks = set(rng.sample(sorted(set(range(nchunks)) - data_chunks), 40))
    src = tmp_path / "src.raw"
    image = write_sparse_image(src, size, data_chunks, zero_chunks, seed=connections)

    d.create_volume("cp", size)
    uri = d.nbd_uri("cp")
    p = run(["nbdcopy", f"--connections={connections}", "--flush", src, uri], timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    # Zeros (holes and zero-filled blocks of the source) take no space.
    expect_alloc(d, "cp", len(data_chunks) * CHUNK)

    out = tmp_path / "out.raw"
    p = run(["nbdcopy", f"--connections={connections}", uri, out], timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    assert out.stat().st_size == size
    assert run(["cmp", src, out]).returncode == 0, "nbdcopy round trip differs"
    assert out.read_bytes() == image

    h = connect(d, "cp")
    assert allocation_map(h, size) == expected_map(size, data_chunks)


# ------------------------------------------------------------------ qemu-img

def test_qemu_img_convert_compare_map(remapd, tmp_path):
    d = remapd
    size = 16 * MiB
    src = tmp_path / "src.raw"
    rng = random.Random(7)
    # Unaligned pieces of data; everything else is a hole or zeros.
    writes = [(100, 5000), (3 * MiB + 12345, 70000), (5 * MiB, 2 * CHUNK),
              (9 * MiB - 1, 2), (size - 4096, 4096)]
    image = bytearray(size)
    with open(src, "wb") as f:
        f.truncate(size)
        for off, n in writes:
            block = bytes(rng.randrange(1, 256) for _ in range(n))
            image[off:off + n] = block
            f.seek(off)
            f.write(block)
    data = chunks_of(writes)

    d.create_volume("q", size)
    uri = d.nbd_uri("q")
    run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, uri], check=True)
    p = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri])
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
    assert "identical" in p.stdout.decode(), p.stdout.decode()

    p = run(["qemu-img", "map", "--output=json", "-f", "raw", uri], check=True)
    runs = merge([(e["start"], e["length"], "data" if e["data"] else "hole")
                  for e in json.loads(p.stdout)])
    assert runs == expected_map(size, data), f"qemu-img map: {runs}"
    for e in json.loads(p.stdout):
        if not e["data"]:
            assert e["zero"] is True, f"an unallocated range must read as zeros: {e}"
    expect_alloc(d, "q", len(data) * CHUNK)

    # compare notices one changed byte (so the identical verdict above means something).
    qemu_io(uri, "write -P 0x01 6000000 1")
    p = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri])
    out = p.stdout.decode()
    assert p.returncode == 1, out + p.stderr.decode()
    m = re.search(r"mismatch at offset (\d+)", out)
    assert m and 6000000 - 4096 < int(m.group(1)) <= 6000000, out


# ------------------------------------------------------------------ qemu-io

def test_qemu_io_battery(remapd):
    d = remapd
    size = 4 * MiB
    d.create_volume("io", size)
    uri = d.nbd_uri("io")
    model = bytearray(size)

    def put(off, n, byte):
        model[off:off + n] = bytes([byte]) * n

    # Unaligned write and reads around it.
    qemu_io(uri, "read -P 0 0 4M",
            "write -P 0xab 1234 5555", "read -P 0xab 1234 5555",
            "read -P 0 0 1234", f"read -P 0 6789 {CHUNK - 6789}")
    put(1234, 5555, 0xab)
    expect_alloc(d, "io", CHUNK)

    # FUA write.
    qemu_io(uri, "write -f -P 0xcd 70000 3000", "read -P 0xcd 70000 3000", "read -P 0xab 1234 5555")
    put(70000, 3000, 0xcd)
    expect_alloc(d, "io", 2 * CHUNK)

    # Fill chunks 2-5, then zero 2-3 keeping them allocated (NO_HOLE) and
    # 4-5 allowing unmap: those are freed.
    qemu_io(uri, f"write -P 0xee {2 * CHUNK} {4 * CHUNK}")
    put(2 * CHUNK, 4 * CHUNK, 0xee)
    expect_alloc(d, "io", 6 * CHUNK)
    qemu_io(uri, f"write -z {2 * CHUNK} {2 * CHUNK}", f"read -P 0 {2 * CHUNK} {2 * CHUNK}")
    put(2 * CHUNK, 2 * CHUNK, 0)
    expect_alloc(d, "io", 6 * CHUNK)
    qemu_io(uri, f"write -z -u {4 * CHUNK} {2 * CHUNK}", f"read -P 0 {4 * CHUNK} {2 * CHUNK}")
    put(4 * CHUNK, 2 * CHUNK, 0)
    expect_alloc(d, "io", 4 * CHUNK)

    # Zeroing holes without unmap backs them (NO_HOLE reserves the space).
    qemu_io(uri, f"write -z {10 * CHUNK} {2 * CHUNK}", f"read -P 0 {10 * CHUNK} {2 * CHUNK}")
    expect_alloc(d, "io", 6 * CHUNK)

    # Fast zero (no slow fallback) with unmap on a written chunk.
    qemu_io(uri, f"write -P 0x77 {13 * CHUNK} {CHUNK}")
    expect_alloc(d, "io", 7 * CHUNK)
    qemu_io(uri, f"write -z -u -n {13 * CHUNK} {CHUNK}", f"read -P 0 {13 * CHUNK} {CHUNK}")
    expect_alloc(d, "io", 6 * CHUNK)

    # Discard a whole chunk (freed) and part of chunk 0 (reads zeros, stays).
    qemu_io(uri, f"write -P 0x99 {12 * CHUNK} {CHUNK}")
    expect_alloc(d, "io", 7 * CHUNK)
    qemu_io(uri, f"discard {12 * CHUNK} {CHUNK}", f"read -P 0 {12 * CHUNK} {CHUNK}",
            "discard 1300 1000", "read -P 0 1300 1000",
            "read -P 0xab 1234 66", "read -P 0xab 2300 4489")
    put(1300, 1000, 0)
    expect_alloc(d, "io", 6 * CHUNK)

    # Eight asynchronous unaligned writes, one flush, then read them back.
    aio = []
    for i in range(8):
        off, n, byte = (32 + i) * CHUNK + 100 + i, 60000 - i, 0x11 + i
        aio.append(f"aio_write -P {byte:#x} {off} {n}")
        put(off, n, byte)
    reads = [f"read -P {0x11 + i:#x} {(32 + i) * CHUNK + 100 + i} {60000 - i}" for i in range(8)]
    qemu_io(uri, *aio, "aio_flush", *reads)
    expect_alloc(d, "io", 14 * CHUNK)

    # Everything, byte for byte, through another client.
    h = connect(d, "io")
    assert h.pread(size, 0) == bytes(model)


# ------------------------------------------------------------------ fio

FIO_JOB = ["--name=verify", "--ioengine=nbd", "--rw=randwrite", "--bsrange=512-256k",
           "--numjobs=4", "--size=16M", "--offset_increment=16M", "--iodepth=16",
           "--verify=crc32c", "--verify_fatal=1", "--randseed=4242",
           "--verify_state_save=0"]


def run_fio(uri, out_json, *extra, timeout=120):
    cmd = ["fio", *FIO_JOB, f"--uri={uri}", "--fsync=64",
           "--output-format=json", f"--output={out_json}", *extra]
    # fio writes no state files with verify_state_save=0; run it in the
    # test's directory anyway.
    p = run(cmd, timeout=timeout, cwd=out_json.parent)
    text = p.stdout.decode() + p.stderr.decode()
    assert p.returncode == 0, f"fio failed (exit {p.returncode}):\n{text}"
    jobs = json.loads(out_json.read_text())["jobs"]
    assert len(jobs) == 4, jobs
    for j in jobs:
        assert j["error"] == 0, j
    return jobs


@pytest.mark.skipif(not fio_has_nbd(), reason="fio has no nbd engine (fio --enghelp=nbd)")
def test_fio_random_writes_verify_over_four_connections(remapd, tmp_path):
    d = remapd
    size = 64 * MiB
    d.create_volume("fio", size)
    uri = d.nbd_uri("fio")

    # Write every block once (four jobs, four connections, 16 MiB each) and
    # verify in the same run.
    jobs = run_fio(uri, tmp_path / "w.json", "--do_verify=1")
    for j in jobs:
        assert j["write"]["io_bytes"] == 16 * MiB, j["write"]
        assert j["read"]["io_bytes"] == 16 * MiB, "fio did not verify what it wrote"
    expect_alloc(d, "fio", size)

    # A clean restart, then verify only: the same pattern from the daemon's disk.
    d.restart()
    jobs = run_fio(uri, tmp_path / "v.json", "--verify_only")
    for j in jobs:
        assert j["read"]["io_bytes"] == 16 * MiB, j["read"]
    expect_alloc(d, "fio", size)

    # The verify pass really checks: a foreign block makes it fail.
    qemu_io(uri, f"write -P 0x55 {20 * MiB} 4096")
    p = run(["fio", *FIO_JOB, f"--uri={uri}", "--verify_only"], timeout=120, cwd=tmp_path)
    assert p.returncode != 0, "fio verify did not notice a corrupted block"


# ------------------------------------------------------------------ nbdsh

def test_nbdsh_script(remapd):
    d = remapd
    d.create_volume("sh", 8 * MiB)
    script = "\n".join([
        "import nbd",
        "assert h.get_structured_replies_negotiated()",
        "assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)",
        *[f"assert h.{flag}(), '{flag}'" for flag in FLAG_NAMES],
        "h.pwrite(b'\\x5a' * 100000, 70000)",
        "h.flush()",
        "assert h.pread(100000, 70000) == b'\\x5a' * 100000",
        "ext = []",
        "h.block_status(8 * 1048576, 0, lambda m, o, e, err: ext.extend(e) or 0)",
        "assert ext[0] == 65536 and ext[1] & nbd.STATE_HOLE, ext",
        "assert ext[2] >= 65536 and ext[3] & nbd.STATE_HOLE == 0, ext",
        "h.trim(3 * 65536, 0)",
        "h.flush()",
        "print('nbdsh-ok')",
    ])
    env = clean_env()
    # nbdsh runs `python3 -m nbd`: the python3 that has the binding.
    env["PATH"] = "/usr/bin:" + env.get("PATH", "")
    p = subprocess.run(["nbdsh", "--base-allocation", "-u", d.nbd_uri("sh"), "-c", script],
                       capture_output=True, timeout=60, env=env)
    out = p.stdout.decode() + p.stderr.decode()
    assert p.returncode == 0 and "nbdsh-ok" in out, out
    expect_alloc(d, "sh", 0)


# ------------------------------------------------------------------ libnbd

def test_libnbd_negotiates_every_feature(remapd):
    d = remapd
    d.create_volume("flags", 64 * MiB)

    # The meta contexts the server lists for the export.
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(d.nbd_uri("flags"))
    d._handles.append(h)
    assert h.get_structured_replies_negotiated()
    listed = []
    n = h.opt_list_meta_context(lambda name: listed.append(name) or 0)
    assert "base:allocation" in listed and n == len(listed), listed
    h.opt_abort()

    h = connect(d, "flags")
    assert h.get_structured_replies_negotiated()
    assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    for flag in FLAG_NAMES:
        assert getattr(h, flag)(), f"{flag} must be advertised"
    assert not h.is_read_only()
    assert h.get_block_size(nbd.SIZE_MAXIMUM) == MAX_PAYLOAD
    assert h.get_export_description(), "NBD_INFO_DESCRIPTION must be sent"
    assert h.get_size() == 64 * MiB


def test_libnbd_pread_structured_with_and_without_df(remapd):
    d = remapd
    d.create_volume("df", 8 * MiB)
    h = connect(d, "df")
    payload = os.urandom(4096)
    h.pwrite(payload, CHUNK - 4096)          # the end of chunk 0; chunk 1 is a hole
    expected = payload + bytes(CHUNK - 4096)

    # DF: one content chunk for the whole read.
    chunks = []

    def cb(buf, off, status, err):
        chunks.append((off, bytes(buf), status))
        return 0

    got = h.pread_structured(CHUNK, CHUNK - 4096, cb, nbd.CMD_FLAG_DF)
    assert got == expected
    assert len(chunks) == 1, f"DF read was fragmented into {len(chunks)} chunks"
    off, buf, status = chunks[0]
    assert off == CHUNK - 4096 and buf == expected
    assert status in (nbd.READ_DATA, nbd.READ_HOLE)

    # A DF read of a hole alone.
    chunks.clear()
    assert h.pread_structured(CHUNK, 5 * CHUNK, cb, nbd.CMD_FLAG_DF) == bytes(CHUNK)
    assert len(chunks) == 1 and chunks[0][0] == 5 * CHUNK and chunks[0][1] == bytes(CHUNK)

    # Without DF the chunks may be split (data + hole) but tile the range.
    chunks.clear()
    start, length = CHUNK - 8192, 3 * CHUNK
    got = h.pread_structured(length, start, cb)
    assert got == bytes(4096) + payload + bytes(length - 8192)
    pos = start
    for off, buf, status in sorted(chunks):
        assert off == pos, f"gap or overlap in structured read at {off} (expected {pos})"
        assert status in (nbd.READ_DATA, nbd.READ_HOLE)
        if status == nbd.READ_HOLE:
            assert buf == bytes(len(buf))
        assert buf == got[off - start:off - start + len(buf)]
        pos += len(buf)
    assert pos == start + length


def test_libnbd_block_status_base_allocation(remapd):
    d = remapd
    size = 16 * MiB
    d.create_volume("bs", size)
    h = connect(d, "bs")
    assert allocation_map(h, size) == [(0, size, "hole")]

    writes = [(0, 1), (5 * CHUNK + 77, CHUNK), (100 * CHUNK, 3 * CHUNK), (size - 1, 1)]
    for off, n in writes:
        h.pwrite(b"\xc3" * n, off)
    data = chunks_of(writes)
    assert allocation_map(h, size) == expected_map(size, data)
    # Every extent boundary is a chunk boundary; holes are hole+zero, and
    # written chunks are plain data (neither hole nor zero).
    for off, n, fl in block_status(h, 0, size):
        assert off % CHUNK == 0 and n % CHUNK == 0, (off, n, fl)
        assert fl in (0, HOLE_ZERO), (off, n, fl)

    # REQ_ONE: exactly one extent, starting at the offset asked.
    got = []
    h.block_status(size - 6 * CHUNK, 6 * CHUNK,
                   lambda m, o, e, err: got.append((o, list(e))) or 0, nbd.CMD_FLAG_REQ_ONE)
    assert len(got) == 1 and got[0][0] == 6 * CHUNK and len(got[0][1]) == 2, got
    assert got[0][1][1] & nbd.STATE_HOLE == 0 and got[0][1][0] == CHUNK, got

    # A query that starts mid-extent answers from that offset.
    (first, *_rest) = block_status(h, 7 * CHUNK + 100, 10)
    assert first[0] == 7 * CHUNK + 100 and first[2] == HOLE_ZERO, first

    expect_alloc(d, "bs", len(data) * CHUNK)


def test_libnbd_zero_no_hole_allocates_zero_without_frees(remapd):
    d = remapd
    size = 16 * MiB
    d.create_volume("z", size)
    h = connect(d, "z")

    # NO_HOLE on holes: the range becomes backed (reserved) and reads zeros.
    h.zero(4 * CHUNK, 10 * CHUNK, nbd.CMD_FLAG_NO_HOLE)
    h.flush()
    expect_alloc(d, "z", 4 * CHUNK)
    assert h.pread(4 * CHUNK, 10 * CHUNK) == bytes(4 * CHUNK)
    for off, n, fl in block_status(h, 10 * CHUNK, 4 * CHUNK):
        assert not fl & nbd.STATE_HOLE, f"a NO_HOLE-zeroed range is reported as a hole: {off}+{n} {fl}"

    # Unaligned NO_HOLE: the touched chunks (29 by one byte, 30, 31 by one
    # byte) are backed.
    h.zero(CHUNK + 2, 30 * CHUNK - 1, nbd.CMD_FLAG_NO_HOLE)
    h.flush()
    expect_alloc(d, "z", 7 * CHUNK)
    assert h.pread(3 * CHUNK, 29 * CHUNK) == bytes(3 * CHUNK)

    # Zero without NO_HOLE over written data: whole chunks are freed, the
    # partial head and tail stay allocated and read zeros in the range only.
    h.pwrite(b"\x3c" * (8 * CHUNK), 40 * CHUNK)
    h.flush()
    expect_alloc(d, "z", 15 * CHUNK)
    h.zero(7 * CHUNK, 40 * CHUNK + 1000)     # chunks 41-46 whole; 40 and 47 partial
    h.flush()
    expect_alloc(d, "z", 9 * CHUNK)
    got = h.pread(8 * CHUNK, 40 * CHUNK)
    assert got[:1000] == b"\x3c" * 1000
    assert got[1000:1000 + 7 * CHUNK] == bytes(7 * CHUNK)
    assert got[1000 + 7 * CHUNK:] == b"\x3c" * (CHUNK - 1000)
    runs = allocation_map(h, size)
    assert (41 * CHUNK, 6 * CHUNK, "hole") in runs, runs

    # Zero without NO_HOLE of the NO_HOLE range frees it again.
    h.zero(4 * CHUNK, 10 * CHUNK)
    h.flush()
    expect_alloc(d, "z", 5 * CHUNK)

    # FAST_ZERO over whole chunks is fast here (an unmap): it must succeed.
    h.pwrite(b"\x01" * (2 * CHUNK), 60 * CHUNK)
    h.zero(2 * CHUNK, 60 * CHUNK, nbd.CMD_FLAG_FAST_ZERO)
    h.flush()
    assert h.pread(2 * CHUNK, 60 * CHUNK) == bytes(2 * CHUNK)
    expect_alloc(d, "z", 5 * CHUNK)
    # FAST_ZERO with NO_HOLE: either done, or refused at once with ENOTSUP
    # and nothing changed.
    h.pwrite(b"\x02" * CHUNK, 70 * CHUNK)
    try:
        h.zero(CHUNK, 70 * CHUNK, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE)
        assert h.pread(CHUNK, 70 * CHUNK) == bytes(CHUNK)
    except nbd.Error as e:
        assert e.errnum == errno.ENOTSUP, e
        assert h.pread(CHUNK, 70 * CHUNK) == b"\x02" * CHUNK
    h.flush()
    expect_alloc(d, "z", 6 * CHUNK)

    # A WRITE_ZEROES larger than the maximum block size carries no payload: served.
    h.zero(size, 0)
    h.flush()
    assert read_all(h, size, step=16 * MiB) == bytes(size)
    expect_alloc(d, "z", 0)


def test_libnbd_trim(remapd):
    d = remapd
    size = 96 * MiB
    d.create_volume("t", size)
    h = connect(d, "t")
    pattern = bytes(range(256)) * (CHUNK // 256)
    for i in range(10):
        h.pwrite(pattern, (20 + i) * CHUNK)
    h.flush()
    expect_alloc(d, "t", 10 * CHUNK)

    # Whole chunks 22-24 unmapped; partial chunks 21 and 25 read zeros in the range.
    start, length = 21 * CHUNK + 512, 4 * CHUNK
    h.trim(length, start)
    h.flush()
    expect_alloc(d, "t", 7 * CHUNK)
    got = h.pread(10 * CHUNK, 20 * CHUNK)
    expect = bytearray(pattern * 10)
    rel = start - 20 * CHUNK
    expect[rel:rel + length] = bytes(length)
    assert got == bytes(expect)
    runs = allocation_map(h, size)
    assert (22 * CHUNK, 3 * CHUNK, "hole") in runs, runs

    # Rewriting a trimmed chunk allocates it again and reads what was written.
    h.pwrite(b"\x0f" * 100, 23 * CHUNK + 50)
    assert h.pread(CHUNK, 23 * CHUNK) == bytes(50) + b"\x0f" * 100 + bytes(CHUNK - 150)
    h.flush()
    expect_alloc(d, "t", 8 * CHUNK)

    # A whole-volume TRIM in one request (mkfs does this; larger than the
    # maximum block size, but it carries no payload): served, everything freed.
    for i in range(0, size, 7 * MiB):
        h.pwrite(b"\xaa" * 4096, i)
    h.flush()
    assert volume_alloc(d, "t") > 8 * CHUNK
    h.trim(size, 0)
    h.flush()
    expect_alloc(d, "t", 0)
    assert read_all(h, size, step=16 * MiB) == bytes(size)
    assert allocation_map(h, size) == [(0, size, "hole")]


def test_libnbd_cache_and_flush(remapd):
    d = remapd
    d.create_volume("c", 8 * MiB)
    h = connect(d, "c")
    data = os.urandom(3 * CHUNK)
    h.pwrite(data, CHUNK + 7)
    h.cache(3 * CHUNK, CHUNK + 7)
    h.cache(8 * MiB, 0)            # the whole export, holes included
    h.flush()
    assert h.pread(3 * CHUNK, CHUNK + 7) == data
    expect_alloc(d, "c", chunks_touched(CHUNK + 7, 3 * CHUNK) * CHUNK)


def test_libnbd_out_of_range_is_einval_for_every_command(remapd):
    d = remapd
    size = 8 * MiB
    d.create_volume("oor", size)
    h = connect(d, "oor")
    h.pwrite(b"\x42" * 4096, 0)
    h.flush()
    h.set_strict_mode(0)   # let the bad requests reach the server

    def still_works():
        assert h.pread(4096, 0) == b"\x42" * 4096
        assert h.pread(4096, size - 4096) == bytes(4096)

    bad = [
        ("pread", lambda: h.pread(4096, size)),
        ("pread straddling", lambda: h.pread(8192, size - 4096)),
        ("pwrite", lambda: h.pwrite(b"\x01" * 4096, size)),
        ("pwrite straddling", lambda: h.pwrite(b"\x01" * 8192, size - 4096)),
        ("trim", lambda: h.trim(4096, size)),
        ("trim straddling", lambda: h.trim(2 * CHUNK, size - CHUNK)),
        ("zero", lambda: h.zero(4096, size)),
        ("zero NO_HOLE straddling", lambda: h.zero(2 * CHUNK, size - CHUNK, nbd.CMD_FLAG_NO_HOLE)),
        ("cache", lambda: h.cache(4096, size)),
        ("block_status", lambda: h.block_status(4096, size, lambda *a: 0)),
        ("pread_structured DF", lambda: h.pread_structured(4096, size, lambda *a: 0,
                                                           nbd.CMD_FLAG_DF)),
    ]
    for what, call in bad:
        with pytest.raises(nbd.Error) as exc:
            call()
        assert exc.value.errnum == errno.EINVAL, f"{what}: {exc.value}"
        still_works()

    # Nothing changed: no chunk past the end, the last chunk still a hole.
    assert h.pread(CHUNK, size - CHUNK) == bytes(CHUNK)
    h.flush()
    expect_alloc(d, "oor", CHUNK)


def test_libnbd_oversized_requests_fail_and_the_connection_stays_in_sync(remapd):
    d = remapd
    size = 64 * MiB
    d.create_volume("big", size)
    h = connect(d, "big")
    h.pwrite(b"\x24" * 4096, 8192)
    h.set_strict_mode(0)

    too_big = MAX_PAYLOAD + 4096
    with pytest.raises(nbd.Error) as exc:
        h.pwrite(b"\x99" * too_big, 0)
    assert exc.value.errnum in (errno.EINVAL, errno.ERANGE, errno.EOVERFLOW), exc.value
    # The connection is in sync: the payload was skipped, not taken for requests.
    assert h.aio_is_ready(), "the connection died after an oversized WRITE"
    assert h.pread(4096, 8192) == b"\x24" * 4096
    assert h.pread(8192, 0) == bytes(8192), "part of the refused WRITE was applied"

    with pytest.raises(nbd.Error) as exc:
        h.pread(too_big, 0)
    assert exc.value.errnum in (errno.EINVAL, errno.ERANGE, errno.EOVERFLOW), exc.value
    assert h.aio_is_ready(), "the connection died after an oversized READ"

    # The largest allowed request works, and a burst of aio after it.
    data = os.urandom(MAX_PAYLOAD)
    h.pwrite(data, 16 * MiB)
    assert h.pread(MAX_PAYLOAD, 16 * MiB) == data
    bufs = [(nbd.Buffer.from_bytearray(bytearray(os.urandom(CHUNK))), i * CHUNK + 60 * MiB)
            for i in range(16)]
    cookies = [h.aio_pwrite(b, off) for b, off in bufs]
    while h.aio_in_flight() > 0:
        h.poll(-1)
    assert all(h.aio_command_completed(c) for c in cookies)
    for b, off in bufs:
        assert h.pread(CHUNK, off) == bytes(b.to_bytearray())
    h.flush()
    expect_alloc(d, "big", CHUNK + MAX_PAYLOAD + 16 * CHUNK)


# ------------------------------------------------------------------ engines

def test_version_reports_the_engine(remapd):
    body = remapd.get_ok("/v1/version")
    assert body.get("engine") in ("io_uring", "threads"), body
    want = os.environ.get("REMAP_ENGINE")
    if want:
        assert body["engine"] == want, body


@pytest.mark.parametrize("engine", ["io_uring", "threads"])
def test_each_engine_serves_the_data_path(make_remapd, tmp_path, engine):
    env_engine = os.environ.get("REMAP_ENGINE")
    if env_engine and env_engine != engine:
        pytest.skip(f"REMAP_ENGINE={env_engine} selects the engine for this run")
    # io_uring: remapd's default (auto); it falls back to threads where the
    # kernel refuses io_uring, and then there is nothing to test here.
    d = make_remapd(extra_args=["--engine", engine] if engine == "threads" and not env_engine else [])
    running = d.get_ok("/v1/version")["engine"]
    if engine == "io_uring" and running != "io_uring" and not env_engine:
        pytest.skip(f"io_uring is unavailable on this host (remapd runs {running})")
    assert running == engine
    size = 16 * MiB
    d.create_volume("e", size)
    src = tmp_path / "e.raw"
    data_chunks = set(range(0, 256, 3))
    image = write_sparse_image(src, size, data_chunks, seed=3)
    uri = d.nbd_uri("e")
    p = run(["nbdcopy", "--connections=2", "--flush", src, uri], timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    h = connect(d, "e")
    assert read_all(h, size, step=16 * MiB) == image
    assert allocation_map(h, size) == expected_map(size, data_chunks)
    h.trim(3 * CHUNK, 0)
    h.zero(CHUNK, 9 * CHUNK, nbd.CMD_FLAG_NO_HOLE)
    h.flush()
    expect_alloc(d, "e", (len(data_chunks) - 1) * CHUNK)

    d.restart(kill9=True)
    h = connect(d, "e")
    expected = bytearray(image)
    expected[0:3 * CHUNK] = bytes(3 * CHUNK)
    expected[9 * CHUNK:10 * CHUNK] = bytes(CHUNK)
    assert read_all(h, size, step=16 * MiB) == bytes(expected)
    expect_alloc(d, "e", (len(data_chunks) - 1) * CHUNK)


def test_libnbd_pipelined_mixed_commands_keep_data_and_connection(remapd):
    """Many requests in flight on one connection, mixing WRITEs (with
    payload) and commands answered without supplier I/O (a READ of a hole,
    WRITE_ZEROES/TRIM of a hole, CACHE, BLOCK_STATUS): every reply arrives,
    the stream stays in sync and every written byte is what was sent."""
    d = remapd
    size = 64 * MiB
    d.create_volume("pipe", size)
    h = connect(d, "pipe")
    rng = random.Random(99)
    written = {}
    rbufs = []
    cookies = []
    for rnd in range(3):
        for i in range(64):
            off = (rnd * 200 + 3 * i) * CHUNK
            data = rng.randbytes(CHUNK - 512)
            written[off + 512] = data
            cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), off + 512))
            hole = off + CHUNK          # the next chunk stays a hole
            kind = i % 5
            if kind == 0:
                b = nbd.Buffer(4096)
                rbufs.append(b)
                cookies.append(h.aio_pread(b, hole + 8192))
            elif kind == 1:
                cookies.append(h.aio_zero(CHUNK, hole))
            elif kind == 2:
                cookies.append(h.aio_trim(CHUNK, hole))
            elif kind == 3:
                cookies.append(h.aio_cache(4096, hole))
            else:
                cookies.append(h.aio_block_status(CHUNK, hole, lambda *a: 0))
        while h.aio_in_flight() > 0:
            h.poll(-1)
    for c in cookies:
        assert h.aio_command_completed(c)
    for b in rbufs:
        assert bytes(b.to_bytearray()) == bytes(4096)
    bad = [off for off, data in sorted(written.items()) if h.pread(len(data), off) != data]
    assert not bad, f"{len(bad)} of {len(written)} pipelined writes read back wrong, first at {bad[:5]}"
    for off in written:
        assert h.pread(512, off - 512) == bytes(512)
    h.flush()
    expect_alloc(d, "pipe", len(written) * CHUNK)
