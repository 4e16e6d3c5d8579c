"""Abusive NBD clients that are well-formed: each is held to a bound (reply
bytes queued, options, an incomplete payload's time, connections, file
descriptors) while every other client, and the REST API, keeps being
served."""

import errno
import os
import socket
import struct
import threading
import time

import pytest

from harness import MiB, wait_until
from test_nbd_protocol import CMD_READ, CMD_WRITE, OPT_LIST, REQ_MAGIC, Raw
from test_nbd_robustness import closes, healthy, raw_socket


def rss(d):
    """The daemon's resident memory, in bytes."""
    for line in open(f"/proc/{d.proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def cpu_share(d, seconds=1.0):
    """The share of one core the daemon used over `seconds` (utime + stime)."""
    def ticks():
        fields = open(f"/proc/{d.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    before = ticks()
    time.sleep(seconds)
    return (ticks() - before) / os.sysconf("SC_CLK_TCK") / seconds


def open_fds(d):
    return len(os.listdir(f"/proc/{d.proc.pid}/fd"))


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


def test_replies_never_read_drop_the_connection(make_remapd):
    """A client that takes no byte of its replies for --nbd-reply-timeout
    (3 s here) is dropped, with one log line each, and what it held is let
    go; another client is served meanwhile, and one that reads slowly but
    steadily is not dropped."""
    d = make_remapd(extra_args=["--nbd-reply-timeout", "3"])
    d.create_volume("v", 64 * MiB)
    healthy(d)
    baseline = rss(d)
    requests = b"".join(request_header(CMD_READ, i, (i % 2) * 32 * MiB, 32 * MiB) for i in range(8))
    stalled = [pipelined(d, requests)[0] for _ in range(3)]
    slow = Raw(d.nbd_sock)
    slow.export_name("v")
    slow.s.sendall(b"".join(request_header(CMD_READ, i, 0, 4 * MiB) for i in range(4)))
    started = time.monotonic()
    healthy(d)
    assert rss(d) - baseline > 64 * MiB, "the stalled clients hold their replies first"
    # The slow client takes a little of its replies every second, for longer
    # than the timeout.
    taken = 0
    while time.monotonic() - started < 5:
        taken += len(slow.s.recv(256 * 1024))
        time.sleep(1)
    assert wait_until(lambda: d.last_output().count("no byte of its replies read for 3 s") == 3, timeout=5), \
        d.last_output()
    assert time.monotonic() - started < 8
    for r in stalled:
        assert closes(r.s, timeout=5)  # what was queued in the socket, then the end
        r.close()
    assert wait_until(lambda: rss(d) - baseline < 48 * MiB, timeout=5), (rss(d) - baseline) // MiB
    # The slow reader was not dropped: the rest of its replies arrive.
    slow.s.settimeout(10)
    want = 4 * (16 + 4 * MiB)
    while taken < want:
        chunk = slow.s.recv(1 << 20)
        assert chunk, f"the slow reader was dropped after {taken} of {want} bytes"
        taken += len(chunk)
    slow.close()
    healthy(d)


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


# ------------------------------------------------------------------ connections

def test_connections_over_the_cap_are_closed(make_remapd):
    """Beyond --nbd-max-connections a client is closed before the greeting,
    with one log line for the whole burst; the others are served."""
    d = make_remapd(extra_args=["--nbd-max-connections", "8"])
    d.create_volume("v", 64 * MiB)
    held = [Raw(d.nbd_sock) for _ in range(7)]
    held.append(Raw(d.nbd_sock))
    held[-1].export_name("v")
    refused = []
    for _ in range(20):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(d.nbd_sock))
        refused.append(s)
    for s in refused:
        assert closes(s, timeout=5)  # no greeting: closed at once
        s.close()
    # Still served: the eight held, and a ninth once one of them leaves.
    handle = held[-1].request(CMD_READ, 0, 512)
    assert held[-1].simple_reply(512)[:2] == (0, handle)
    held.pop(0).close()
    assert wait_until(lambda: _greeted(d), timeout=5)
    log = d.last_output()
    assert log.count("connection limit (8) reached") == 1, log
    for r in held:
        r.close()


def _greeted(d):
    try:
        raw_socket(d).close()
        return True
    except (OSError, AssertionError):
        return False


# ------------------------------------------------------------------ file descriptors

@pytest.fixture
def few_fds(make_remapd):
    """A daemon limited to 256 file descriptors (prlimit)."""
    d = make_remapd(start=False, extra_args=["--nbd-handshake-timeout", "60"])
    command = d.command
    d.command = lambda: ["prlimit", "--nofile=256", "--", *command()]
    d.start()
    d.create_volume("v", 64 * MiB)
    return d


def api_answers(d):
    status, _, body = d.api("GET", "/v1/health", timeout=3)
    return status == 200 and body == {"status": "ok"}


def test_nbd_connections_cannot_take_the_last_descriptors(few_fds):
    """300 NBD clients at a 256-descriptor limit: remapd keeps descriptors
    for the API and its files, closes the clients beyond, and does not spin."""
    d = few_fds
    clients = []
    for _ in range(300):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(d.nbd_sock))
        clients.append(s)
    time.sleep(0.5)
    assert api_answers(d)
    share = cpu_share(d)
    print(f"CPU share with NBD at the descriptor ceiling {share:.1%}")
    assert share < 0.1, f"remapd used {share:.0%} of a core with its descriptors used up"
    assert open_fds(d) < 256
    greeted = sum(1 for s in clients if _greeted_not_closed(s))
    assert 100 < greeted < 256, greeted
    for s in clients:
        s.close()
    assert wait_until(lambda: _greeted(d), timeout=5)
    healthy(d)


def _greeted_not_closed(s):
    """True if the server greeted this client, False if it closed it; a
    client left hanging fails the test (socket.timeout)."""
    s.settimeout(5)
    try:
        return s.recv(18)[:8] == b"NBDMAGIC"
    except ConnectionResetError:
        return False


def test_descriptor_exhaustion_backs_off(few_fds):
    """When something else holds every descriptor (here: idle API clients),
    NBD's accept backs off instead of spinning, a waiting client is closed
    rather than left hanging, and service resumes once descriptors are free."""
    d = few_fds
    idle = []
    # One at a time, each accepted before the next: none is left waiting on
    # the API's listener once the last descriptor is taken (libmicrohttpd
    # spins on a client it cannot accept, which is no part of this test).
    while open_fds(d) < 256:
        before = open_fds(d)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(d.api_sock))
        idle.append(s)
        assert wait_until(lambda: open_fds(d) > before, timeout=5, interval=0.002), open_fds(d)
    waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    waiting.connect(str(d.nbd_sock))
    share = cpu_share(d, 1.5)
    print(f"CPU share at EMFILE {share:.1%}")
    assert share < 0.1, f"remapd used {share:.0%} of a core at EMFILE"
    assert closes(waiting, timeout=3)  # closed, not left in the backlog
    assert d.last_output().count("out of file descriptors") == 1, d.last_output()
    for s in idle:
        s.close()
    assert wait_until(lambda: api_answers(d), timeout=10)
    assert wait_until(lambda: _greeted(d), timeout=5)
    healthy(d)


def test_zeroing_a_snapshotted_range_copies_in_bounded_memory(make_remapd):
    """WRITE_ZEROES with NO_HOLE over chunks a snapshot shares writes zeros
    into new chunks (copy on write). One request may span 4 GiB: its copies
    go a window at a time, not all at once (512 MiB of 64 KiB chunks used
    to take 512 MiB of buffers)."""
    import nbd
    d = make_remapd(pool_size="1280M")
    d.create_volume("v", 512 * MiB)
    h = d.nbd("v")
    h.zero(512 * MiB, 0, nbd.CMD_FLAG_NO_HOLE)  # maps every chunk (clean)
    h.pwrite(b"\x01" * 4096, 0)
    h.flush()
    status, _, body = d.api("POST", "/v1/volumes/v/snapshots", body={"name": "s"})
    assert status == 201, body
    d.baseline_rss = rss(d)
    done = threading.Event()
    failure = []

    def zero():
        try:
            h.zero(512 * MiB, 0, nbd.CMD_FLAG_NO_HOLE)
        except Exception as e:  # noqa: BLE001 - reported by the test
            failure.append(e)
        done.set()
    threading.Thread(target=zero, daemon=True).start()
    peak = watch_rss(d, 160 * MiB, 120, done.is_set)
    assert done.wait(120) and not failure, failure
    assert h.pread(4096, 0) == bytes(4096)
    s = d.nbd("v@s")
    assert s.pread(4096, 0) == b"\x01" * 4096
    print(f"RSS grew by at most {peak // MiB} MiB")


def test_zeroing_a_snapshotted_range_that_runs_out_of_space_answers_once(make_remapd):
    """The windowed copies of a WRITE_ZEROES with NO_HOLE that find no space
    part way: the request gets ENOSPC once, the connection goes on, the
    snapshot keeps its bytes and the pool's figures add up."""
    import nbd
    from harness import check_space
    d = make_remapd(pool_size="12M")
    d.create_volume("v", 8 * MiB)
    h = d.nbd("v")
    data = os.urandom(8 * MiB)
    h.pwrite(data, 0)
    h.flush()
    status, _, body = d.api("POST", "/v1/volumes/v/snapshots", body={"name": "s"})
    assert status == 201, body
    with pytest.raises(nbd.Error) as failure:
        h.zero(8 * MiB, 0, nbd.CMD_FLAG_NO_HOLE)  # 8 MiB of copies, 4 MiB free
    assert failure.value.errnum == errno.ENOSPC
    assert h.pread(4096, 8 * MiB - 4096) in (data[-4096:], bytes(4096))
    h.flush()
    assert d.nbd("v@s").pread(8 * MiB, 0) == data
    check_space(d.pool())
