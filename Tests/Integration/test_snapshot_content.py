"""A snapshot's bytes out of the daemon (issue 6, Done-when 6):
GET /v1/snapshots/{ref}/content with curl (Range, 206, 416) and
`remapctl snapshot export` into a sparse file.

Every test drives the real daemon: REST over the unix socket (curl), data
through libnbd's Python binding, and `qemu-img compare` between the NBD
exports (`VOLUME@SNAPSHOT` for snapshots) and local raw files; the model
they are checked against, chunk for chunk, is in snapshots.py.
"""

import subprocess

import pytest

from harness import (CHUNK, KiB, MiB, REMAPCTL, clean_env, connect, disconnect, first_difference, qemu_img_compare,
                     read_all, sha256)
from snapshots import Model, assert_reads, pwrite, rand, snap_path, snapshot, take


def curl_content(d, ref, out, range_header=None, timeout=120):
    """GET /v1/snapshots/{ref}/content with curl over the unix socket into
    `out`; returns (status, headers)."""
    hfile = out.with_suffix(".headers")
    cmd = ["curl", "-sS", "--unix-socket", str(d.api_sock), "-D", str(hfile), "-o", str(out),
           "-w", "%{http_code}", "--max-time", str(timeout)]
    if range_header:
        cmd += ["-H", f"Range: {range_header}"]
    cmd.append(f"http://localhost{snap_path(ref)}/content")
    p = subprocess.run(cmd, capture_output=True, timeout=timeout + 10, env=clean_env())
    assert p.returncode == 0, f"curl: {p.stderr.decode()}"
    status = int(p.stdout.decode()[-3:])
    headers = {}
    blocks = [b for b in hfile.read_text("latin-1").replace("\r\n", "\n").split("\n\n") if b.strip()]
    for line in blocks[-1].split("\n")[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


def test_content_streams_the_snapshot_byte_for_byte_with_ranges(remapd, tmp_path):
    """Done-when 6 (curl): /content is the snapshot (not the volume written
    after it), byte for byte; Range gives 206 with Content-Range, past the
    end 416 with bytes */SIZE, several ranges the whole image."""
    d = remapd
    m = Model()
    size = 8 * MiB + 512 * 3   # not a whole number of chunks
    d.create_volume("v", size)
    m.create("v", size)
    h = connect(d, "v")
    pwrite(h, m, "v", 0, rand(1, 1 * MiB))
    pwrite(h, m, "v", 3 * MiB + 4 * KiB + 7, rand(2, 70 * KiB))
    pwrite(h, m, "v", size - 1000, rand(3, 1000))
    h.flush()
    take(d, "v", "s")
    m.copy("v", "v@s")
    pwrite(h, m, "v", 0, rand(4, 2 * MiB))     # after the snapshot
    h.flush()
    disconnect(d, h)
    image = m.bytes("v@s")
    assert_reads(d, "v@s", image)
    hs = connect(d, "v@s")
    nbd_sha = sha256(read_all(hs, size))
    disconnect(d, hs)

    out = tmp_path / "s.raw"
    for ref in ("v@s", "v%40s", snapshot(d, "v@s")["id"]):
        status, headers = curl_content(d, ref, out)
        assert status == 200, (status, headers)
        assert headers.get("content-type", "").split(";")[0] == "application/octet-stream", headers
        assert headers.get("content-length") == str(size), headers
        assert headers.get("accept-ranges") == "bytes", headers
        assert out.stat().st_size == size
        got = out.read_bytes()
        assert sha256(got) == nbd_sha == sha256(image), f"content differs at byte {first_difference(got, image)}"
    qemu_img_compare(out, d.nbd_uri("v@s"))

    cases = [("bytes=0-0", 0, 0), ("bytes=0-65535", 0, CHUNK - 1),
             (f"bytes={3 * MiB}-{3 * MiB + 100 * KiB}", 3 * MiB, 3 * MiB + 100 * KiB),
             (f"bytes={size - 10}-{size + 5000}", size - 10, size - 1),   # clamped to the end
             (f"bytes={5 * MiB + 3}-", 5 * MiB + 3, size - 1),
             ("bytes=-1000", size - 1000, size - 1),
             (f"bytes=-{size + 10}", 0, size - 1),
             (f"bytes={size - 1}-{size - 1}", size - 1, size - 1)]
    for header, first, last in cases:
        status, headers = curl_content(d, "v@s", out, header)
        assert status == 206, (header, status, headers)
        assert headers.get("content-range") == f"bytes {first}-{last}/{size}", (header, headers)
        assert headers.get("content-length") == str(last - first + 1), (header, headers)
        got = out.read_bytes()
        assert got == image[first:last + 1], f"{header}: wrong bytes (first difference at " \
                                             f"{first_difference(got, image[first:last + 1])})"
    for header in (f"bytes={size}-", f"bytes={size}-{size + 10}", f"bytes={size + CHUNK}-"):
        status, headers = curl_content(d, "v@s", out, header)
        assert status == 416, (header, status, headers)
        assert headers.get("content-range") == f"bytes */{size}", (header, headers)
    # Several ranges: the whole image.
    status, headers = curl_content(d, "v@s", out, "bytes=0-9,100-199")
    assert status == 200 and out.read_bytes() == image, (status, headers)
    status, headers = curl_content(d, "v@nope", out)
    assert status == 404, status
    # The volume itself is not a snapshot.
    status, headers = curl_content(d, "v", out)
    assert status == 404, status


def test_remapctl_snapshot_export_writes_a_sparse_identical_file(remapd, tmp_path):
    """Done-when 6 (file export): `remapctl snapshot export` makes a file
    identical to the snapshot whose holes are where the snapshot has
    holes."""
    if not REMAPCTL.exists():
        pytest.fail(f"remapctl binary not found at {REMAPCTL}")
    d = remapd
    m = Model()
    size = 64 * MiB
    d.create_volume("v", size)
    m.create("v", size)
    h = connect(d, "v")
    pwrite(h, m, "v", 0, rand(1, MiB))
    pwrite(h, m, "v", 40 * MiB + 4 * KiB, rand(2, 4 * KiB))
    h.flush()
    disconnect(d, h)
    take(d, "v", "s")
    m.copy("v", "v@s")
    out = tmp_path / "export.raw"
    p = d.ctl("snapshot", "export", "v@s", str(out), timeout=120)
    assert p.returncode == 0, f"remapctl snapshot export: {p.stdout.decode()}{p.stderr.decode()}"
    assert out.stat().st_size == size
    assert sha256(out.read_bytes()) == sha256(m.bytes("v@s"))
    qemu_img_compare(out, d.nbd_uri("v@s"))
    allocated = out.stat().st_blocks * 512
    data = m.mapped_bytes("v@s")
    assert allocated <= data + 2 * CHUNK, \
        f"exported file has {allocated} bytes allocated, the snapshot holds {data}: holes were written"
    assert allocated >= MiB
