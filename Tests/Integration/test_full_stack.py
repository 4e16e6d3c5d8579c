"""The whole stack a user builds on a remap volume: nbdfuse exposes the
export as a file, losetup makes it a block device, XFS lives on it.

mkfs.xfs (which discards the whole device in one request), a few hundred
files of random sizes, fstrim after deleting half of them (the pool gets the
space back), xfs_repair -n, then everything detached, the daemon restarted,
re-attached from scratch, and every file's checksum compared.

Needs root, /dev/fuse and loop devices; skipped (with the reason) only when
those are missing. The tools are required: nbdfuse (libnbd-bin), fusermount3
(fuse3), losetup/mount (mount), mkfs.xfs/xfs_repair (xfsprogs), fstrim
(util-linux).
"""

import os
import random
import shutil
import subprocess
import time

import pytest

from harness import CHUNK, MiB, assert_accounting, clean_env, file_sha256, fuse_loop_unavailable, run, sha256, wait_until

VOLUME_SIZE = 512 * MiB      # XFS wants at least 300 MB
N_FILES = 300
MAX_FILE = 1 * MiB
TOOLS = {"nbdfuse": "libnbd-bin", "fusermount3": "fuse3", "losetup": "mount",
         "mount": "mount", "umount": "mount", "mkfs.xfs": "xfsprogs",
         "xfs_repair": "xfsprogs", "fstrim": "util-linux"}


pytestmark = pytest.mark.skipif(fuse_loop_unavailable() is not None,
                                reason=str(fuse_loop_unavailable()))


def sh(*cmd, timeout=120, check=True):
    p = run(list(cmd), timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))}: exit {p.returncode}\n"
                             f"{p.stdout.decode(errors='replace')}{p.stderr.decode(errors='replace')}")
    return p


class Stack:
    """Attaches and detaches volume -> nbdfuse file -> loop device -> mount,
    and always undoes whatever is still attached."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.fuse_dir = tmp_path / "fuse"
        self.mnt = tmp_path / "xfs"
        self.fuse_dir.mkdir()
        self.mnt.mkdir()
        self.nbdfuse = None
        self.loop = None
        self.mounted = False
        self.attaches = 0

    @property
    def file(self):
        return self.fuse_dir / "disk"

    def attach(self, uri):
        self.attaches += 1
        pidfile = self.tmp / f"nbdfuse-{self.attaches}.pid"
        log = open(self.tmp / f"nbdfuse-{self.attaches}.log", "wb")
        self.nbdfuse = subprocess.Popen(
            ["nbdfuse", "-P", str(pidfile), str(self.file), uri],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=clean_env())
        log.close()
        ready = wait_until(lambda: (pidfile.exists() and pidfile.read_text().strip()
                                    and self.file.exists()) or self.nbdfuse.poll() is not None,
                           timeout=15)
        if self.nbdfuse.poll() is not None or not ready:
            out = (self.tmp / f"nbdfuse-{self.attaches}.log").read_text(errors="replace")
            pytest.fail(f"nbdfuse did not come up (exit {self.nbdfuse.poll()}):\n{out}")
        assert self.file.stat().st_size == VOLUME_SIZE
        p = sh("losetup", "--find", "--show", self.file)
        self.loop = p.stdout.decode().strip()
        assert self.loop.startswith("/dev/loop"), self.loop
        return self.loop

    def mount(self):
        sh("mount", "-t", "xfs", self.loop, self.mnt)
        self.mounted = True

    def umount(self):
        if self.mounted:
            sh("umount", self.mnt)
            self.mounted = False

    def detach(self):
        """Undo everything, in order; tolerant, so it can run in finally."""
        errors = []
        if self.mounted:
            if run(["umount", self.mnt]).returncode != 0:
                run(["umount", "-l", self.mnt])
                errors.append("umount failed (lazy umount used)")
            self.mounted = False
        if self.loop:
            for _ in range(50):
                if run(["losetup", "-d", self.loop]).returncode == 0:
                    break
                time.sleep(0.1)
            else:
                errors.append(f"losetup -d {self.loop} failed")
            self.loop = None
        if self.nbdfuse is not None:
            if self.nbdfuse.poll() is None:
                if run(["fusermount3", "-u", self.fuse_dir]).returncode != 0:
                    run(["fusermount3", "-u", "-z", self.fuse_dir])
                    errors.append("fusermount3 -u failed (lazy unmount used)")
                try:
                    self.nbdfuse.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.nbdfuse.kill()
                    self.nbdfuse.wait()
                    errors.append("nbdfuse did not exit after fusermount3 -u")
            self.nbdfuse = None
        return errors


def settled_accounting(d, timeout=8.0):
    """Chunks freed by a TRIM leave the pool at the next commit (a FLUSH, or
    the 5 s timer): wait for that, then check the accounting exactly."""
    def consistent():
        pool = d.pool()
        return pool["allocatedBytes"] == sum(v["allocatedBytes"] for v in d.volumes())
    wait_until(consistent, timeout=timeout, interval=0.2)
    return assert_accounting(d)


def test_xfs_on_loop_on_nbdfuse(make_remapd, tmp_path):
    missing = [f"{tool} ({pkg})" for tool, pkg in TOOLS.items() if not shutil.which(tool)]
    assert not missing, f"tools missing (Debian packages): {', '.join(missing)}"

    d = make_remapd(pool_size="1G")
    d.create_volume("fs", VOLUME_SIZE)
    uri = d.nbd_uri("fs")
    stack = Stack(tmp_path)
    try:
        loop = stack.attach(uri)
        # mkfs.xfs discards the whole device first (one 512 MiB TRIM).
        sh("mkfs.xfs", "-f", "-q", loop)
        # Its discard is served (not refused for its length), so what stays
        # allocated is XFS's metadata, not the whole device.
        after_mkfs = d.volume("fs")["allocatedBytes"]
        assert after_mkfs < 64 * MiB, f"mkfs.xfs left {after_mkfs} bytes allocated"
        stack.mount()

        rng = random.Random(2024)
        files = {}
        total = 0
        for i in range(N_FILES):
            sub = stack.mnt / f"d{i % 7}"
            sub.mkdir(exist_ok=True)
            size = rng.choice([0, 1, 511, 4096, 65536 + 3]) if i % 10 == 0 else rng.randint(1, MAX_FILE)
            data = rng.randbytes(size)
            path = sub / f"f{i:04d}.bin"
            path.write_bytes(data)
            files[path.relative_to(stack.mnt)] = sha256(data)
            total += size
        sh("sync", "-f", stack.mnt)
        for rel, digest in files.items():
            assert file_sha256(stack.mnt / rel) == digest, f"{rel} differs right after writing"

        assert wait_until(lambda: d.volume("fs")["allocatedBytes"] >= total, timeout=5), \
            f"volume allocation {d.volume('fs')['allocatedBytes']} < {total} bytes of file data"
        full = d.volume("fs")["allocatedBytes"]
        assert_accounting(d)

        # Delete about half the data, fstrim: the pool gets the space back.
        deleted = 0
        for i, rel in enumerate(sorted(files)):
            if i % 2 == 0:
                deleted += (stack.mnt / rel).stat().st_size
                (stack.mnt / rel).unlink()
                del files[rel]
        sh("sync", "-f", stack.mnt)
        p = sh("fstrim", "-v", stack.mnt)
        assert "trimmed" in p.stdout.decode(), p.stdout.decode()
        sh("sync", "-f", stack.mnt)     # a FLUSH: the freed chunks are committed
        expected_drop = deleted * 7 // 10   # files are mostly whole 64 KiB chunks
        dropped = wait_until(lambda: full - d.volume("fs")["allocatedBytes"] >= expected_drop,
                             timeout=10)
        now = d.volume("fs")["allocatedBytes"]
        assert dropped, (f"fstrim after deleting {deleted} bytes freed only {full - now} "
                         f"bytes (allocated {full} -> {now})")
        assert now % CHUNK == 0
        settled_accounting(d)

        stack.umount()
        sh("xfs_repair", "-n", loop, timeout=300)

        # Detach everything and restart the daemon: what comes back is on disk.
        errors = stack.detach()
        assert not errors, errors
        settled_accounting(d)
        before = d.volume("fs")["allocatedBytes"]
        d.restart()
        assert d.volume("fs")["allocatedBytes"] == before, "allocation changed across a restart"
        assert_accounting(d)

        loop = stack.attach(uri)
        sh("xfs_repair", "-n", loop, timeout=300)
        stack.mount()
        present = {p.relative_to(stack.mnt) for p in stack.mnt.rglob("*.bin")}
        assert present == set(files), (f"missing: {sorted(set(files) - present)[:5]}, "
                                       f"unexpected: {sorted(present - set(files))[:5]}")
        bad = [str(rel) for rel, digest in sorted(files.items()) if file_sha256(stack.mnt / rel) != digest]
        assert not bad, f"{len(bad)} files differ after remount: {bad[:10]}"
        stack.umount()
    finally:
        errors = stack.detach()
    assert not errors, errors
    assert not os.path.ismount(stack.fuse_dir) and not os.path.ismount(stack.mnt)
