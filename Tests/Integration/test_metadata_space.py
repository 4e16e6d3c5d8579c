"""Metadata never runs out: when the state directory's filesystem is nearly
full, remapd gives up its reserve file (so commits still fit) and refuses
new chunks with ENOSPC until space returns."""

import errno
import os
import subprocess
import time

import pytest

import nbd

from conftest import MiB, wait_until


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


def test_nearly_full_metadata_filesystem_refuses_new_chunks(make_remapd, small_filesystem):
    d = make_remapd(state_dir=small_filesystem / "state", pool_size="32M")
    assert (d.state_dir / "metadata.reserve").stat().st_size == 64 * MiB
    d.create_volume("v", 16 * MiB)
    h = d.nbd("v")
    h.pwrite(b"a" * MiB, 0)
    h.flush()
    # Fill the filesystem but for ~16 MiB.
    stat = os.statvfs(small_filesystem)
    filler = small_filesystem / "filler"
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, stat.f_bavail * stat.f_frsize - 16 * MiB)
    assert wait_until(lambda: not (d.state_dir / "metadata.reserve").exists(), timeout=5)
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
    d = make_remapd(state_dir=small_filesystem / "state", pool_size="32M")
    d.create_volume("v", 16 * MiB)
    h = d.nbd("v")
    h.pwrite(b"a" * MiB, 0)
    h.flush()
    stat = os.statvfs(small_filesystem)
    filler = small_filesystem / "filler"
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, stat.f_bavail * stat.f_frsize - 16 * MiB)
    assert wait_until(lambda: not (d.state_dir / "metadata.reserve").exists(), timeout=5)
    # The reserve's 64 MiB came back to the filesystem: take them too.
    stat = os.statvfs(small_filesystem)
    with open(small_filesystem / "filler2", "wb") as f:
        os.posix_fallocate(f.fileno(), 0, stat.f_bavail * stat.f_frsize - 16 * MiB)
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
    (small_filesystem / "filler2").unlink()
    assert wait_until(lambda: (d.state_dir / "metadata.reserve").exists(), timeout=5)
    h.pwrite(b"d" * 65536, 8 * MiB)
    h.flush()
    assert h.pread(65536, 8 * MiB) == b"d" * 65536
