"""Metadata never runs out: when the state directory's filesystem is nearly
full, remapd gives up its reserve file (so commits still fit) and refuses
new chunks with ENOSPC until space returns."""

import errno
import os
import subprocess
import time

import pytest

import nbd

from harness import MiB, wait_until


@pytest.fixture
def small_filesystem(tmp_path):
    mount = tmp_path / "fs"
    mount.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(mount)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)])


def free_bytes(filesystem):
    stat = os.statvfs(filesystem)
    return stat.f_bavail * stat.f_frsize


def fill_leaving(filesystem, name, bytes_left):
    """A file taking all of `filesystem`'s free space but `bytes_left`."""
    filler = filesystem / name
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, free_bytes(filesystem) - bytes_left)
    return filler


def volume_on_a_filling_filesystem(make_remapd, filesystem):
    """A daemon with 1 MiB flushed to volume v, whose state filesystem is
    then filled but for ~16 MiB, so it gives up its reserve."""
    d = make_remapd(state_dir=filesystem / "state", pool_size="32M")
    assert (d.state_dir / "metadata.reserve").stat().st_size == 64 * MiB
    d.create_volume("v", 16 * MiB)
    h = d.nbd("v")
    h.pwrite(b"a" * MiB, 0)
    h.flush()
    filler = fill_leaving(filesystem, "filler", 16 * MiB)
    assert wait_until(lambda: not (d.state_dir / "metadata.reserve").exists(), timeout=5)
    # The name goes before the space does: wait for the filesystem to get it back.
    assert wait_until(lambda: free_bytes(filesystem) > 64 * MiB, timeout=5), free_bytes(filesystem)
    return d, h, filler


def test_nearly_full_metadata_filesystem_refuses_new_chunks(make_remapd, small_filesystem):
    d, h, filler = volume_on_a_filling_filesystem(make_remapd, small_filesystem)
    started = time.monotonic()
    with pytest.raises(nbd.Error) as failure:
        h.pwrite(b"b" * 65536, 8 * MiB)  # needs a new chunk
    assert failure.value.errnum == errno.ENOSPC and time.monotonic() - started < 1
    h.pwrite(b"c" * 65536, 0)  # an allocated chunk: still fine
    h.flush()
    assert h.pread(65536, 0) == b"c" * 65536
    # Space returns: the reserve comes back and new chunks are allowed again.
    filler.unlink()
    assert wait_until(lambda: (d.state_dir / "metadata.reserve").exists(), timeout=5)
    h.pwrite(b"d" * 65536, 8 * MiB)
    h.flush()
    assert h.pread(65536, 8 * MiB) == b"d" * 65536


def test_a_state_filesystem_too_full_for_the_reserve_still_starts(make_remapd, small_filesystem):
    """After giving up its reserve, a daemon restarted while the state
    filesystem is still nearly full used to refuse to start (the reserve
    could not be allocated). It starts short instead: reads and in-place
    writes work, new chunks get ENOSPC, and the reserve returns with space."""
    d, h, filler = volume_on_a_filling_filesystem(make_remapd, small_filesystem)
    # The reserve's 64 MiB came back to the filesystem: take them too.
    second = fill_leaving(small_filesystem, "filler2", 16 * MiB)
    d.restart(kill9=True)
    assert wait_until(lambda: "nearly full at start" in d.last_output(), timeout=5), d.last_output()
    h = d.nbd("v")
    assert h.pread(MiB, 0) == b"a" * MiB
    h.pwrite(b"c" * 65536, 0)
    h.flush()
    with pytest.raises(nbd.Error) as failure:
        h.pwrite(b"b" * 65536, 8 * MiB)
    assert failure.value.errnum == errno.ENOSPC
    filler.unlink()
    second.unlink()
    assert wait_until(lambda: (d.state_dir / "metadata.reserve").exists(), timeout=5)
    h.pwrite(b"d" * 65536, 8 * MiB)
    h.flush()
    assert h.pread(65536, 8 * MiB) == b"d" * 65536
