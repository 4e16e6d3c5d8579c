"""Abusive NBD clients that are well-formed: each is held to a bound (reply
bytes queued, options, an incomplete payload's time) while every other
client, and the REST API, keeps being served."""

import struct
import threading
import time

import pytest

from conftest import MiB, wait_until
from test_nbd_protocol import CMD_READ, CMD_WRITE, OPT_LIST, REQ_MAGIC, Raw
from test_nbd_robustness import closes, healthy, raw_socket


def rss(d):
    """The daemon's resident memory, in bytes."""
    for line in open(f"/proc/{d.proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def watch_rss(d, bound, seconds, done=lambda: False):
    """RSS growth over `baseline` for `seconds` (or until done()); fails as
    soon as it passes `bound`, so an unbounded daemon does not eat the
    machine. Returns the largest growth seen."""
    baseline, peak = d.baseline_rss, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not done():
        peak = max(peak, rss(d) - baseline)
        assert peak < bound, f"RSS grew by {peak // MiB} MiB (bound {bound // MiB} MiB)"
        time.sleep(0.05)
    return peak


@pytest.fixture
def served(make_remapd):
    d = make_remapd(extra_args=["--nbd-request-timeout", "2", "--nbd-max-options", "1000"])
    d.create_volume("v", 64 * MiB)
    healthy(d)  # warm up: the first client's allocations are not the abuser's
    d.baseline_rss = rss(d)
    return d


def pipelined(d, requests):
    """A client in transmission that sends `requests` (bytes) from a thread
    and never reads, until the test reads the replies itself."""
    r = Raw(d.nbd_sock)
    r.export_name("v")
    r.s.settimeout(60)
    sender = threading.Thread(target=r.s.sendall, args=(requests,), daemon=True)
    sender.start()
    return r, sender


CMD_CACHE = 5


def request_header(command, cookie, offset, length):
    return struct.pack(">IHHQQI", REQ_MAGIC, 0, command, cookie, offset, length)


# ------------------------------------------------------------------ reply queue

@pytest.mark.parametrize("command,count,length", [
    (CMD_READ, 12, 32 * MiB),   # a few huge replies
    (CMD_READ, 30000, 4096),    # many reads
    (CMD_CACHE, 500000, 4096),  # very many 16-byte replies
], ids=["huge-reads", "many-reads", "many-small-replies"])
def test_unread_replies_stop_the_connection_reading(served, command, count, length):
    """Requests whose replies the client does not read: remapd stops taking
    that connection's requests once 64 MiB of replies (and reads in flight)
    are queued, and goes on as the client reads them."""
    d = served
    span = 64 * MiB // length
    requests = b"".join(request_header(command, i, (i % span) * length, length) for i in range(count))
    r, sender = pipelined(d, requests)
    peak = watch_rss(d, 160 * MiB, 2.0)
    healthy(d)  # another client is served meanwhile
    peak = max(peak, watch_rss(d, 160 * MiB, 0.5))
    # Reading the replies lets the rest through (answered as they complete).
    data_length = length if command == CMD_READ else 0
    replies = r.s.makefile("rb")
    cookies = set()
    for _ in range(count):
        magic, err, cookie = struct.unpack(">IIQ", replies.read(16))
        assert (magic, err) == (0x67446698, 0)
        assert len(replies.read(data_length)) == data_length
        cookies.add(cookie)
    assert cookies == set(range(count))
    sender.join(10)
    assert not sender.is_alive()
    r.close()
    print(f"peak RSS growth {peak // MiB} MiB")


# ------------------------------------------------------------------ options

def test_options_are_capped_per_handshake(served):
    """More options than --nbd-max-options before choosing an export: the
    client is closed, with one log line, and its replies never pile up."""
    d = served
    s = raw_socket(d)
    s.sendall(struct.pack(">I", 1))
    options = struct.pack(">QII", 0x49484156454F5054, OPT_LIST, 0) * 20000
    sender = threading.Thread(target=lambda: _send_ignoring_close(s, options), daemon=True)
    sender.start()
    watch_rss(d, 48 * MiB, 1.0)
    healthy(d)
    assert closes(s, timeout=10)
    assert d.last_output().count("more than 1000 options") == 1, d.last_output()
    s.close()


def _send_ignoring_close(s, data):
    try:
        s.sendall(data)
    except OSError:
        pass


def test_options_within_the_cap_are_answered(served):
    """The cap counts options, not connections: a client under it is served."""
    d = served
    r = Raw(d.nbd_sock)
    for _ in range(900):
        r.option(OPT_LIST)
    for _ in range(900):
        while r.reply()[1] != 1:  # SERVER replies, then the ACK
            pass
    size, _ = r.export_name("v")
    assert size == 64 * MiB
    r.close()


# ------------------------------------------------------------------ stalled payloads

def test_incomplete_write_payload_times_out(served):
    """A WRITE whose payload stops one byte short holds its buffer only for
    --nbd-request-timeout (2 s here), then the connection is dropped."""
    d = served
    stalled = []
    for i in range(4):
        r = Raw(d.nbd_sock)
        r.export_name("v")
        r.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_WRITE, 1, 0, 32 * MiB) + b"s" * (32 * MiB - 1))
        stalled.append(r)
    started = time.monotonic()
    healthy(d)
    assert all(closes(r.s, timeout=8) for r in stalled)
    assert time.monotonic() - started < 6
    # The buffers are gone with their connections.
    assert wait_until(lambda: rss(d) - d.baseline_rss < 48 * MiB, timeout=5), rss(d) - d.baseline_rss
    assert d.last_output().count("incomplete after 2 s") == 4, d.last_output()
    healthy(d)


def test_slow_but_moving_payload_is_not_a_stall(served):
    """The timeout is for a payload that stays incomplete: one that arrives
    in pieces within it is written."""
    d = served
    r = Raw(d.nbd_sock)
    r.export_name("v")
    r.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_WRITE, 7, 0, 8192) + b"a" * 4096)
    time.sleep(1)
    r.s.sendall(b"a" * 4096)
    assert r.simple_reply() == (0, 7, b"")
    r.close()
