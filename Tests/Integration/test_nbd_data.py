"""The NBD data path, driven by qemu-img, qemu-io, nbdinfo and libnbd."""

import errno
import os
import random
import re
import socket
import subprocess

import pytest

from harness import (CHUNK, GiB, KiB, MiB, assert_accounting, check_space, assert_problem,
                     chunks_touched, nbdinfo_json, qemu_img_compare, qemu_io, run, wait_until)

import nbd  # noqa: E402  (python3-libnbd; a missing package must fail, not skip)

IMAGE_SIZE = 64 * MiB


@pytest.fixture(scope="module")
def random_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "img.raw"
    subprocess.run(f"head -c 64M /dev/urandom > {path}", shell=True, check=True)
    assert path.stat().st_size == IMAGE_SIZE
    yield path
    path.unlink()


def qemu_img_write(src, uri):
    """Write a raw file into an existing export (qemu-img flushes at the end)."""
    run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, uri],
        check=True, timeout=120)


def alloc_is(d, name, expected, timeout=3.0):
    """Wait briefly for the published accounting to reach `expected` bytes for the
    volume; return (volume, pool) for assertions."""
    wait_until(lambda: d.volume(name)["allocatedBytes"] == expected, timeout=timeout)
    return d.volume(name), d.pool()


def align_of(h):
    """The export's minimum block size (1 when none is advertised)."""
    try:
        m = h.get_block_size(nbd.SIZE_MINIMUM)
    except nbd.Error:
        m = 0
    return max(1, m)


# ------------------------------------------------------------------ (a) data + allocation

def test_write_64mib_compare_and_allocation(remapd, random_image):
    d = remapd
    d.create_volume("v1", GiB)
    assert d.pool()["allocatedBytes"] == 0
    uri = d.nbd_uri("v1")

    qemu_img_write(random_image, uri)
    # The 1 GiB volume equals the 64 MiB image followed by zeros.
    qemu_img_compare(random_image, uri)

    vol, pool = alloc_is(d, "v1", IMAGE_SIZE)
    assert vol["allocatedBytes"] == IMAGE_SIZE, vol
    assert pool["allocatedBytes"] == IMAGE_SIZE, pool
    check_space(pool)
    assert vol["sizeBytes"] == GiB


def test_unaligned_write_allocates_touched_chunks(remapd):
    d = remapd
    d.create_volume("u", 16 * MiB)
    uri = d.nbd_uri("u")
    off, length = MiB - 512, 100 * KiB + 3
    qemu_io(uri, f"write -P 0xab {off} {length}")

    expected = chunks_touched(off, length) * CHUNK
    assert expected == 3 * CHUNK
    vol, pool = alloc_is(d, "u", expected)
    assert vol["allocatedBytes"] == expected, vol
    assert pool["allocatedBytes"] == expected, pool
    check_space(pool)

    # The written bytes are there, and the rest of the touched chunks is zeros.
    h = d.nbd("u")
    first = (off // CHUNK) * CHUNK
    data = h.pread(3 * CHUNK, first)
    rel = off - first
    assert data[:rel] == bytes(rel)
    assert data[rel:rel + length] == b"\xab" * length
    assert data[rel + length:] == bytes(3 * CHUNK - rel - length)


# ------------------------------------------------------------------ (b)(c) durability

@pytest.mark.parametrize("how", ["kill9", "sigterm"])
def test_data_survives_restart(remapd, random_image, how):
    d = remapd
    d.create_volume("v1", GiB)
    uri = d.nbd_uri("v1")
    qemu_img_write(random_image, uri)  # completes with a FLUSH
    vol_before, pool_before = alloc_is(d, "v1", IMAGE_SIZE)

    d.restart(kill9=(how == "kill9"))

    qemu_img_compare(random_image, uri)
    vol_after = d.volume("v1")
    pool_after = d.pool()
    assert vol_after == vol_before
    assert pool_after == pool_before
    assert pool_after["allocatedBytes"] == IMAGE_SIZE
    assert_accounting(d)


def test_flushed_and_fua_writes_survive_kill9(remapd):
    d = remapd
    d.create_volume("dur", 8 * MiB)
    h = d.nbd("dur")
    assert h.can_flush(), "export must advertise FLUSH"
    assert h.can_fua(), "export must advertise FUA"
    a = max(align_of(h), 512)
    flushed = os.urandom(3 * a)
    fua = os.urandom(5 * a)
    h.pwrite(flushed, CHUNK - a)          # spans a chunk boundary
    h.flush()
    h.pwrite(fua, 4 * CHUNK + 2 * a, nbd.CMD_FLAG_FUA)  # FUA, no flush after it

    d.restart(kill9=True)

    h = d.nbd("dur")
    assert h.pread(len(flushed), CHUNK - a) == flushed
    assert h.pread(len(fua), 4 * CHUNK + 2 * a) == fua
    expected = (chunks_touched(CHUNK - a, len(flushed))
                + chunks_touched(4 * CHUNK + 2 * a, len(fua))) * CHUNK
    assert d.volume("dur")["allocatedBytes"] == expected
    pool = d.pool()
    assert pool["allocatedBytes"] == expected
    check_space(pool)


# ------------------------------------------------------------------ (d) delete + isolation

def test_delete_frees_chunks_and_new_volume_reads_zeros(make_remapd, tmp_path):
    # A 16 MiB pool: the first volume fills all of it, so the second volume's
    # chunks are necessarily the first one's old chunks.
    pool_size = 16 * MiB
    d = make_remapd(pool_size="16M")
    assert d.pool()["capacityBytes"] == pool_size

    d.create_volume("old", 32 * MiB)
    qemu_io(d.nbd_uri("old"), f"write -P 0xa5 0 {pool_size}")
    pool = d.pool()
    assert pool["allocatedBytes"] == pool_size, pool
    assert pool["freeBytes"] == 0, pool
    check_space(pool)

    d.delete_volume("old")
    assert wait_until(lambda: d.pool()["allocatedBytes"] == 0, timeout=3), d.pool()
    pool = d.pool()
    assert pool["freeBytes"] == pool_size
    check_space(pool)
    # Its export is gone.
    assert run(["nbdinfo", d.nbd_uri("old")]).returncode != 0

    new = d.create_volume("new", 32 * MiB)
    assert new["allocatedBytes"] == 0
    zeros = tmp_path / "zeros.raw"
    with open(zeros, "wb") as f:
        f.truncate(32 * MiB)
    qemu_img_compare(zeros, d.nbd_uri("new"))

    # Write one small block into each chunk: every chunk of the pool gets
    # allocated (reusing 'old's chunks); everything else must read zeros.
    h = d.nbd("new")
    a = max(align_of(h), 512)
    nchunks = pool_size // CHUNK
    mark = b"\x5a" * a
    for i in range(nchunks):
        h.pwrite(mark, i * CHUNK + 7 * a)
    h.flush()
    assert d.volume("new")["allocatedBytes"] == pool_size
    for i in range(nchunks):
        data = h.pread(CHUNK, i * CHUNK)
        assert data[7 * a:8 * a] == mark
        assert data[:7 * a] == bytes(7 * a), f"chunk {i}: old data leaked before the write"
        assert data[8 * a:] == bytes(CHUNK - 8 * a), f"chunk {i}: old data leaked after the write"
    assert b"\xa5" not in h.pread(pool_size, 0)


def test_delete_while_connected_is_in_use(remapd):
    d = remapd
    d.create_volume("busy", 8 * MiB)
    h = d.nbd("busy")
    h.pwrite(b"\x01" * 4096, 0)
    before = d.volumes()

    assert_problem(*d.api("DELETE", "/v1/volumes/busy"), 409, "in-use")
    assert d.volumes() == before
    # The client is not disturbed.
    assert h.pread(4096, 0) == b"\x01" * 4096

    h.shutdown()
    d._handles.remove(h)

    def deleted():
        status = d.api("DELETE", "/v1/volumes/busy")[0]
        return status == 204
    assert wait_until(deleted, timeout=3, interval=0.1), "DELETE after disconnect must succeed"
    assert d.volumes() == []
    assert wait_until(lambda: d.pool()["allocatedBytes"] == 0, timeout=3), d.pool()


# ------------------------------------------------------------------ (e)(f) exports

def test_unknown_export_is_refused_and_daemon_keeps_serving(remapd):
    d = remapd
    d.create_volume("real", 8 * MiB)

    p = run(["nbdinfo", d.nbd_uri("nope")], timeout=30)
    assert p.returncode != 0, p.stdout
    err = p.stderr.decode()
    # libnbd reports NBD_REP_ERR_UNKNOWN as ENOENT ("No such file or directory").
    assert re.search(r"no such file or directory|unknown|not found", err, re.I), err

    # The same through libnbd, checking the errno precisely.
    h = nbd.NBD()
    with pytest.raises(nbd.Error) as exc:
        h.connect_uri(d.nbd_uri("nope"))
    assert exc.value.errnum == errno.ENOENT, exc.value

    assert d.running
    assert d.api("GET", "/v1/health")[0] == 200
    info = nbdinfo_json(d.nbd_uri("real"))
    assert info["exports"][0]["export-size"] == 8 * MiB


def test_garbage_on_nbd_socket_does_not_hurt(remapd):
    d = remapd
    d.create_volume("real", 8 * MiB)
    h = d.nbd("real")  # a client that is already connected
    h.pwrite(b"\x07" * 4096, 0)

    payloads = [b"", b"\x00", b"GET / HTTP/1.1\r\n\r\n", os.urandom(4096),
                # client flags, then a bogus option header with a huge length
                b"\x00\x00\x00\x03" + b"IHAVEOPT" + b"\x00\x00\x00\x07" + b"\xff\xff\xff\xff"]
    for payload in payloads:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(str(d.nbd_sock))
        try:
            s.recv(18)  # server greeting
            if payload:
                s.sendall(payload)
        except OSError:
            pass
        s.close()

    assert d.running, "daemon died on garbage input"
    assert h.pread(4096, 0) == b"\x07" * 4096
    assert nbdinfo_json(d.nbd_uri("real"))["exports"][0]["export-size"] == 8 * MiB
    assert d.api("GET", "/v1/health")[0] == 200


def test_nbdinfo_list_shows_volumes(remapd):
    d = remapd
    d.create_volume("alpha", 8 * MiB)
    d.create_volume("beta", 16 * MiB)
    info = nbdinfo_json("--list", d.nbd_list_uri())
    exports = {e["export-name"]: e for e in info["exports"]}
    assert set(exports) == {"alpha", "beta"}, info
    assert exports["alpha"]["export-size"] == 8 * MiB
    assert exports["beta"]["export-size"] == 16 * MiB

    d.delete_volume("beta")
    info = nbdinfo_json("--list", d.nbd_list_uri())
    assert [e["export-name"] for e in info["exports"]] == ["alpha"]

    # The plain (non-JSON) listing a user reads.
    p = run(["nbdinfo", "--list", d.nbd_list_uri()], timeout=30)
    assert p.returncode == 0, p.stderr
    assert 'export="alpha"' in p.stdout.decode()


def test_nbdinfo_export_details(remapd):
    d = remapd
    d.create_volume("v", GiB)
    e = nbdinfo_json(d.nbd_uri("v"))["exports"][0]
    assert e["export-size"] == GiB
    assert e["is_read_only"] is False
    assert e["can_flush"] is True
    assert e["can_fua"] is True


# ------------------------------------------------------------------ (g) libnbd scripted checks

def test_libnbd_unwritten_reads_zeros(remapd):
    d = remapd
    size = 64 * MiB
    d.create_volume("z", size)
    h = d.nbd("z")
    assert h.get_size() == size
    assert not h.is_read_only()
    assert h.pread(MiB, 0) == bytes(MiB)
    assert h.pread(CHUNK, size - CHUNK) == bytes(CHUNK)
    assert h.pread(3 * CHUNK, 17 * CHUNK) == bytes(3 * CHUNK)
    assert d.volume("z")["allocatedBytes"] == 0, "reads must not allocate"


def test_libnbd_unaligned_roundtrip_across_chunks(remapd):
    d = remapd
    region = 16 * CHUNK
    d.create_volume("rt", 16 * MiB)
    h = d.nbd("rt")
    a = align_of(h)
    model = bytearray(region)
    rng = random.Random(1234)
    # (offset, length) pairs in units of the minimum block size when one is
    # advertised, else in bytes; none is chunk-aligned, several cross chunks.
    if a == 1:
        writes = [(CHUNK - 3, 7), (5 * CHUNK - 12345, 2 * CHUNK + 999), (11 * CHUNK + 1, 100),
                  (9 * CHUNK - 1, 2)]
    else:
        writes = [(CHUNK - 3 * a, 7 * a), (5 * CHUNK - 11 * a, 2 * CHUNK + 13 * a),
                  (11 * CHUNK + a, 3 * a), (9 * CHUNK - a, 2 * a)]
    touched = set()
    for off, length in writes:
        data = bytes(rng.getrandbits(8) for _ in range(length))
        h.pwrite(data, off)
        model[off:off + length] = data
        touched.update(range(off // CHUNK, (off + length - 1) // CHUNK + 1))
        assert h.pread(length, off) == data
    h.flush()
    assert h.pread(region, 0) == bytes(model)
    # Overwrite part of an already-written range: no new chunk.
    off, length = writes[1][0] + 5 * max(a, 1), 4 * max(a, 1)
    data = b"\xee" * length
    h.pwrite(data, off)
    model[off:off + length] = data
    assert h.pread(region, 0) == bytes(model)
    assert d.volume("rt")["allocatedBytes"] == len(touched) * CHUNK


def test_libnbd_flush_and_fua(remapd):
    d = remapd
    d.create_volume("f", 8 * MiB)
    h = d.nbd("f")
    assert h.can_flush() and h.can_fua()
    data = os.urandom(64 * KiB)
    h.pwrite(data, 2 * CHUNK, nbd.CMD_FLAG_FUA)
    h.flush()
    h.pwrite(data[::-1], 3 * CHUNK)
    h.flush()
    assert h.pread(2 * CHUNK, 2 * CHUNK) == data + data[::-1]


def test_libnbd_out_of_range_is_einval_and_connection_survives(remapd):
    d = remapd
    size = 8 * MiB
    d.create_volume("oor", size)
    h = d.nbd("oor")
    h.pwrite(b"\x42" * 4096, 0)
    h.set_strict_mode(0)  # let the bad requests reach the server
    step = max(4096, align_of(h))

    with pytest.raises(nbd.Error) as exc:
        h.pread(step, size)
    assert exc.value.errnum == errno.EINVAL, exc.value

    with pytest.raises(nbd.Error) as exc:
        h.pread(2 * step, size - step)  # straddles the end
    assert exc.value.errnum == errno.EINVAL, exc.value

    with pytest.raises(nbd.Error) as exc:
        h.pwrite(b"\x01" * step, size)
    assert exc.value.errnum in (errno.EINVAL, errno.ENOSPC), exc.value

    # Still connected and serving.
    assert h.pread(4096, 0) == b"\x42" * 4096
    assert h.pread(step, size - step) == bytes(step)
    h.pwrite(b"\x43" * 4096, 4096)
    h.flush()
    assert h.pread(8192, 0) == b"\x42" * 4096 + b"\x43" * 4096
    # Nothing was allocated past the end.
    assert d.volume("oor")["allocatedBytes"] == CHUNK


def test_libnbd_concurrent_aio(remapd):
    d = remapd
    d.create_volume("aio", 16 * MiB)
    h = d.nbd("aio")
    a = max(align_of(h), 512)
    n = 4
    length = 2 * CHUNK + 4 * a
    offsets = [i * 3 * CHUNK + a for i in range(n)]  # disjoint, each crossing chunk boundaries
    datas = [os.urandom(length) for _ in range(n)]

    cookies = [h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(datas[i])), offsets[i])
               for i in range(n)]
    assert h.aio_in_flight() >= 1
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c in cookies:
        assert h.aio_command_completed(c)

    flush_cookie = h.aio_flush()
    while h.aio_in_flight() > 0:
        h.poll(-1)
    assert h.aio_command_completed(flush_cookie)

    bufs = [nbd.Buffer(length) for _ in range(n)]
    cookies = [h.aio_pread(bufs[i], offsets[i]) for i in range(n)]
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for i, c in enumerate(cookies):
        assert h.aio_command_completed(c)
        assert bytes(bufs[i].to_bytearray()) == datas[i], f"aio read {i} differs"

    expected = sum(chunks_touched(o, length) for o in offsets) * CHUNK
    assert d.volume("aio")["allocatedBytes"] == expected


def test_two_clients_see_each_others_writes(remapd):
    d = remapd
    d.create_volume("shared", 8 * MiB)
    h1 = d.nbd("shared")
    h2 = d.nbd("shared")
    if not h1.can_multi_conn():
        pytest.skip("export does not advertise multi-conn")
    h1.pwrite(b"\x11" * 8192, CHUNK)
    h1.flush()
    assert h2.pread(8192, CHUNK) == b"\x11" * 8192


def test_kill9_with_unflushed_writes_keeps_exact_accounting(remapd):
    """Writes after the last FLUSH may or may not survive a kill -9, but the
    flushed ones must, and the accounting must come back exact."""
    d = remapd
    d.create_volume("a", 64 * MiB)
    h = d.nbd("a")
    block = b"\x6b" * 4096
    for i in range(100):
        h.pwrite(block, i * CHUNK)
    h.flush()
    for i in range(100, 300):
        h.pwrite(block, i * CHUNK + 8192)

    d.restart(kill9=True)

    vol = d.volume("a")
    assert 100 * CHUNK <= vol["allocatedBytes"] <= 300 * CHUNK, vol
    assert vol["allocatedBytes"] % CHUNK == 0
    assert_accounting(d)
    h = d.nbd("a")
    for i in range(100):
        assert h.pread(4096, i * CHUNK) == block, f"flushed chunk {i} lost"
    # Each later chunk is either wholly there as written or still a hole.
    n_kept = 0
    for i in range(100, 300):
        got = h.pread(CHUNK, i * CHUNK)
        if got == bytes(CHUNK):
            continue
        assert got == bytes(8192) + block + bytes(CHUNK - 8192 - 4096), f"chunk {i} corrupt"
        n_kept += 1
    # allocatedBytes counts chunks; a mapped chunk that reads zeros is possible
    # only if the data write was lost after the mapping committed (it must not).
    assert vol["allocatedBytes"] == (100 + n_kept) * CHUNK

    # And it is writable and consistent after the restart.
    h.pwrite(block, 500 * CHUNK)
    h.flush()
    assert_accounting(d)
