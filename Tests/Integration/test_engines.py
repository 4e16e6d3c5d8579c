"""The two I/O engines: io_uring, and the portable threads engine remapd
falls back to where io_uring is unavailable."""

from pathlib import Path

import pytest

from harness import MiB

SYSCTL = Path("/proc/sys/kernel/io_uring_disabled")


def test_engine_is_reported_and_selectable(make_remapd):
    d = make_remapd(extra_args=["--engine", "threads"])
    assert d.get_ok("/v1/version")["engine"] == "threads"
    d.create_volume("v", 4 * MiB)
    h = d.nbd("v")
    h.pwrite(b"t" * 8192, 4096)
    h.flush()
    assert h.pread(8192, 4096) == b"t" * 8192


def test_bad_engine_name_is_a_usage_error(make_remapd):
    d = make_remapd(start=False, extra_args=["--engine", "warp"])
    d.start(wait=False)
    assert d.proc.wait(timeout=30) != 0
    assert "--engine" in d.log()


def test_falls_back_to_threads_when_io_uring_is_disabled(make_remapd):
    try:
        before = SYSCTL.read_text().strip()
        SYSCTL.write_text("2")
    except OSError as error:
        pytest.skip(f"cannot disable io_uring here: {error}")
    try:
        d = make_remapd(extra_args=["--engine", "auto"])
        assert d.get_ok("/v1/version")["engine"] == "threads"
        lines = [line for line in d.log().splitlines() if "io_uring is unavailable" in line]
        assert len(lines) == 1 and "threads engine" in lines[0]
        d.create_volume("v", 4 * MiB)
        h = d.nbd("v")
        h.pwrite(b"f" * 65536, 0)
        h.flush()
        assert h.pread(65536, 0) == b"f" * 65536
    finally:
        SYSCTL.write_text(before)
