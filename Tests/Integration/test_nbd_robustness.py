"""Malformed and hostile NBD clients (raw sockets): each gets the right
error or a clean close, and every other client keeps being served."""

import socket
import struct
import threading
import time

import pytest

from harness import MiB
from test_nbd_protocol import (CMD_READ, CMD_WRITE, NBD_EINVAL, OPT_MAGIC, REQ_MAGIC, Raw)


@pytest.fixture
def served(make_remapd):
    d = make_remapd(extra_args=["--nbd-handshake-timeout", "2"])
    d.create_volume("v", 64 * MiB)
    return d


def healthy(d):
    """A well-behaved client still gets served, and so does the API."""
    h = d.nbd("v")
    h.pwrite(b"ok" * 2048, 0)
    assert h.pread(4096, 0) == b"ok" * 2048
    h.shutdown()
    d.close_handles()
    assert d.get_ok("/v1/health") == {"status": "ok"}


def raw_socket(d):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(d.nbd_sock))
    assert s.recv(18)[:8] == b"NBDMAGIC"
    return s


def closes(s, timeout=10):
    s.settimeout(timeout)
    try:
        while True:
            if s.recv(4096) == b"":
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


@pytest.mark.parametrize("payload", [
    struct.pack(">I", 0),                                      # no FIXED_NEWSTYLE
    struct.pack(">I", 0xFFFFFFFF),                             # unknown client flags
    struct.pack(">I", 1) + struct.pack(">QII", 0xDEADBEEF, 7, 0),          # bad option magic
    struct.pack(">I", 1) + struct.pack(">QII", OPT_MAGIC, 7, 1 << 30),     # absurd option length
])
def test_malformed_handshakes_are_closed(served, payload):
    s = raw_socket(served)
    s.sendall(payload)
    assert closes(s)
    healthy(served)


def test_malformed_option_contents_get_errors_and_stay_in_sync(served):
    r = Raw(served.nbd_sock)
    # GO whose declared name length overruns the data; INFO with an odd count.
    r.option(7, struct.pack(">I", 100) + b"v")
    _, rtype, _ = r.reply()
    assert rtype == (1 << 31) + 3  # NBD_REP_ERR_INVALID
    r.option(6, struct.pack(">I", 1) + b"v" + struct.pack(">H", 3) + b"\0\0")
    _, rtype, _ = r.reply()
    assert rtype == (1 << 31) + 3
    r.option(10, struct.pack(">I", 1) + b"v" + struct.pack(">I", 1) + struct.pack(">I", 15) + b"base:allocation")
    _, rtype, _ = r.reply()
    assert rtype == (1 << 31) + 3  # meta context before structured replies
    size, _ = r.export_name("v")
    assert size == 64 * MiB
    r.close()
    healthy(served)


def test_transmission_errors_keep_the_stream_in_sync(served):
    r = Raw(served.nbd_sock)
    r.export_name("v")
    checks = [
        (lambda: r.request(99), NBD_EINVAL),                                 # unknown command
        (lambda: r.request(CMD_READ, 0, 4096, flags=1 << 9), NBD_EINVAL),      # unknown flag
        (lambda: r.request(CMD_READ, 0, 64 * MiB), NBD_EINVAL),             # over 32 MiB
        (lambda: r.request(CMD_READ, 64 * MiB - 512, 1024), NBD_EINVAL),    # past the end
        (lambda: r.request(CMD_READ, 2**64 - 512, 1024), NBD_EINVAL),       # offset overflow
        (lambda: r.request(CMD_READ, 0, 0), NBD_EINVAL),                    # empty
        # A write that is refused still has its payload read and skipped.
        (lambda: r.request(CMD_WRITE, 64 * MiB, 4096, data=b"x" * 4096), NBD_EINVAL),
        (lambda: r.request(CMD_WRITE, 0, 33 * MiB, data=b"y" * (33 * MiB)), NBD_EINVAL),
        (lambda: r.request(CMD_WRITE, 0, 4096, data=b"z" * 4096, flags=1 << 2), NBD_EINVAL),  # DF on a write
    ]
    for send, expected in checks:
        handle = send()
        err, got, _ = r.simple_reply()
        assert (got, err) == (handle, expected)
    handle = r.request(CMD_WRITE, 4096, 4096, data=b"w" * 4096)
    assert r.simple_reply() == (0, handle, b"")
    handle = r.request(CMD_READ, 4096, 4096)
    assert r.simple_reply(4096) == (0, handle, b"w" * 4096)
    r.close()
    healthy(served)


def test_bad_request_magic_closes_only_that_client(served):
    r = Raw(served.nbd_sock)
    r.export_name("v")
    r.s.sendall(struct.pack(">IHHQQI", 0x12345678, 0, CMD_READ, 1, 0, 512))
    assert r.closed_by_server()
    healthy(served)


@pytest.mark.parametrize("cut", [1, 10, 27])
def test_truncated_request_then_hangup(served, cut):
    r = Raw(served.nbd_sock)
    r.export_name("v")
    r.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_WRITE, 1, 0, 1 << 20)[:cut])
    r.close()
    healthy(served)
    status, _, _ = served.api("DELETE", "/v1/volumes/v")
    assert status == 204  # the dropped client does not hold the volume


def test_huge_write_length_then_hangup_is_cleaned_up(served):
    r = Raw(served.nbd_sock)
    r.export_name("v")
    r.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_WRITE, 1, 0, 0xFFFFFFFF) + b"q" * 100000)
    r.close()
    healthy(served)


def test_idle_handshakes_time_out_and_do_not_block_others(served):
    idle = [raw_socket(served) for _ in range(50)]
    healthy(served)  # served while 50 clients sit in the handshake
    started = time.monotonic()
    assert all(closes(s, timeout=15) for s in idle)
    assert time.monotonic() - started < 12
    # An idle client that did choose an export may stay.
    r = Raw(served.nbd_sock)
    r.export_name("v")
    time.sleep(3)
    handle = r.request(CMD_READ, 0, 512)
    assert r.simple_reply(512)[:2] == (0, handle)
    r.close()


def test_many_misbehaving_clients_at_once(served):
    def misbehave(i):
        try:
            s = raw_socket(served)
            s.sendall(struct.pack(">I", 1) + struct.pack(">QII", OPT_MAGIC, 1, 1) + b"v")
            s.recv(10)
            s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_WRITE, i, 0, 65536) + b"p" * (i * 97 % 65536))
            s.close()
        except OSError:
            pass

    threads = [threading.Thread(target=misbehave, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    healthy(served)
