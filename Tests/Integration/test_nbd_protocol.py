"""NBD handshake and transmission at the byte level (raw sockets), for the
options and commands that qemu/libnbd do not exercise by default:
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, unknown options and commands, and a
full pool."""

import errno
import os
import socket
import struct
import time

import pytest

from harness import CHUNK, MiB, assert_accounting, wait_until

import nbd  # noqa: E402  (python3-libnbd; a missing package must fail, not skip)

INIT_MAGIC = b"NBDMAGIC"
OPT_MAGIC = 0x49484156454F5054  # IHAVEOPT
REPLY_MAGIC = 0x3E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3

REP_ACK = 1
REP_SERVER = 2
REP_ERR_UNSUP = (1 << 31) + 1

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3

NBD_EINVAL = 22
NBD_ENOSPC = 28


class Raw:
    """A hand-driven NBD client connection."""

    def __init__(self, path, no_zeroes=True):
        """`path` is the unix socket, or (host, port) for TCP."""
        if isinstance(path, tuple):
            self.s = socket.create_connection(path, timeout=10)
        else:
            self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.s.settimeout(10)
            self.s.connect(str(path))
        greeting = self.recv(18)
        assert greeting[:8] == INIT_MAGIC, greeting
        assert struct.unpack(">Q", greeting[8:16])[0] == OPT_MAGIC, greeting
        (hflags,) = struct.unpack(">H", greeting[16:18])
        assert hflags & FLAG_FIXED_NEWSTYLE, "server must be fixed newstyle"
        self.no_zeroes = no_zeroes and bool(hflags & FLAG_NO_ZEROES)
        cflags = FLAG_FIXED_NEWSTYLE | (FLAG_NO_ZEROES if self.no_zeroes else 0)
        self.s.sendall(struct.pack(">I", cflags))
        self.handle = 0

    def recv(self, n):
        buf = b""
        while len(buf) < n:
            part = self.s.recv(n - len(buf))
            if not part:
                raise EOFError(f"connection closed after {len(buf)}/{n} bytes")
            buf += part
        return buf

    def option(self, opt, data=b""):
        self.s.sendall(struct.pack(">QII", OPT_MAGIC, opt, len(data)) + data)

    def reply(self):
        magic, opt, rtype, length = struct.unpack(">QIII", self.recv(20))
        assert magic == REPLY_MAGIC, hex(magic)
        return opt, rtype, self.recv(length)

    def export_name(self, name):
        self.option(OPT_EXPORT_NAME, name.encode())
        size, tflags = struct.unpack(">QH", self.recv(10))
        if not self.no_zeroes:
            self.recv(124)
        return size, tflags

    def request(self, cmd, offset=0, length=0, data=b"", flags=0):
        self.handle += 1
        self.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd, self.handle, offset, length)
                       + data)
        return self.handle

    def simple_reply(self, read_len=0):
        magic, err, handle = struct.unpack(">IIQ", self.recv(16))
        assert magic == SIMPLE_REPLY_MAGIC, hex(magic)
        data = self.recv(read_len) if err == 0 and read_len else b""
        return err, handle, data

    def closed_by_server(self, timeout=5):
        self.s.settimeout(timeout)
        try:
            return self.s.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self):
        self.s.close()


def test_opt_export_name_and_simple_replies(remapd):
    d = remapd
    d.create_volume("v", 4 * MiB)
    c = Raw(d.nbd_sock)
    size, tflags = c.export_name("v")
    assert size == 4 * MiB
    assert tflags & 1, "NBD_FLAG_HAS_FLAGS"
    assert not tflags & 2, "not read-only"

    data = os.urandom(8192)
    h = c.request(CMD_WRITE, CHUNK - 4096, len(data), data)
    assert c.simple_reply() == (0, h, b"")
    h = c.request(CMD_FLUSH)
    assert c.simple_reply() == (0, h, b"")
    h = c.request(CMD_READ, CHUNK - 4096, len(data))
    assert c.simple_reply(len(data)) == (0, h, data)

    # A read past the end is EINVAL and the connection goes on.
    h = c.request(CMD_READ, 4 * MiB, 4096)
    err, rh, _ = c.simple_reply(4096)
    assert (err, rh) == (NBD_EINVAL, h)
    # An unknown command is EINVAL and the connection goes on.
    h = c.request(0x77, 0, 0)
    err, rh, _ = c.simple_reply()
    assert (err, rh) == (NBD_EINVAL, h)
    h = c.request(CMD_READ, 0, 512)
    assert c.simple_reply(512) == (0, h, bytes(512))

    c.request(CMD_DISC)
    assert c.closed_by_server()
    c.close()
    assert d.volume("v")["allocatedBytes"] == 2 * CHUNK
    assert_accounting(d)


def test_opt_export_name_without_no_zeroes(remapd):
    d = remapd
    d.create_volume("v", MiB)
    c = Raw(d.nbd_sock, no_zeroes=False)
    assert c.export_name("v")[0] == MiB
    h = c.request(CMD_READ, 0, 4096)
    assert c.simple_reply(4096) == (0, h, bytes(4096))
    c.request(CMD_DISC)
    c.close()


def test_opt_export_name_unknown_closes_connection(remapd):
    d = remapd
    d.create_volume("v", MiB)
    # Seen to fail intermittently right after a start: do a few fresh starts.
    for round_ in range(5):
        if round_:
            d.restart()
        c = Raw(d.nbd_sock)
        c.option(OPT_EXPORT_NAME, b"nope")
        assert c.closed_by_server(), "server must close after EXPORT_NAME of an unknown export"
        c.close()
        assert d.running
        try:
            nxt = Raw(d.nbd_sock)
        except EOFError:
            pytest.fail(f"round {round_}: the next client was disconnected before the greeting "
                        "(after the server dropped a client for an unknown EXPORT_NAME)")
        assert nxt.export_name("v")[0] == MiB
        nxt.request(CMD_DISC)
        nxt.close()


def test_opt_list_unknown_option_and_abort(remapd):
    d = remapd
    d.create_volume("b", MiB)
    d.create_volume("a", 2 * MiB)
    c = Raw(d.nbd_sock)

    c.option(OPT_LIST)
    names = []
    while True:
        opt, rtype, data = c.reply()
        assert opt == OPT_LIST
        if rtype == REP_ACK:
            break
        assert rtype == REP_SERVER, hex(rtype)
        (n,) = struct.unpack(">I", data[:4])
        names.append(data[4:4 + n].decode())
    assert sorted(names) == ["a", "b"]

    c.option(0x7777, b"junk")
    opt, rtype, _ = c.reply()
    assert (opt, rtype) == (0x7777, REP_ERR_UNSUP)

    # Still negotiating: ask for the list again, then abort.
    c.option(OPT_LIST)
    while c.reply()[1] != REP_ACK:
        pass
    c.option(OPT_ABORT)
    try:
        opt, rtype, _ = c.reply()
        assert (opt, rtype) == (OPT_ABORT, REP_ACK)
    except EOFError:
        pass  # the spec allows closing without the ACK
    assert c.closed_by_server()
    c.close()
    assert d.running
    assert d.api("GET", "/v1/health")[0] == 200


def test_abrupt_disconnects_do_not_hurt(remapd):
    d = remapd
    d.create_volume("v", MiB)
    good = d.nbd("v")
    for cut in range(0, 5):
        c = Raw(d.nbd_sock)
        if cut >= 1:
            c.option(OPT_LIST)
        if cut >= 2:
            c.close()
            c = Raw(d.nbd_sock)
            c.export_name("v")
        if cut >= 3:
            # A write header promising more data than is ever sent.
            c.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_WRITE, 1, 0, 65536) + b"x" * 100)
        if cut >= 4:
            c.s.sendall(b"\xde\xad\xbe\xef" * 7)  # bad request magic
        c.close()
    assert d.running
    assert good.pread(512, 0) == bytes(512)
    good.pwrite(b"\x01" * 512, 0)
    assert good.pread(512, 0) == b"\x01" * 512
    good.shutdown()
    d._handles.remove(good)

    # Every client is gone: the volume is no longer in use...
    def deleted():
        return d.api("DELETE", "/v1/volumes/v")[0] == 204
    assert wait_until(deleted, timeout=3, interval=0.1), \
        f"volume still busy after all clients left: {d.api('DELETE', '/v1/volumes/v')}"
    # ...and the daemon still stops promptly and cleanly.
    d.terminate()


# ------------------------------------------------------------------ space

def test_full_pool_write_is_enospc_fast(make_remapd):
    """Running out is reported as ENOSPC, at once; reads and writes into
    already-allocated chunks keep working."""
    d = make_remapd(pool_size="1M")  # 16 chunks
    pool = d.pool()
    assert pool["capacityBytes"] == MiB
    d.create_volume("v", 8 * MiB)
    h = d.nbd("v")
    data = os.urandom(MiB)
    h.pwrite(data, 0)
    h.flush()
    pool = d.pool()
    assert pool["freeBytes"] == 0 and pool["allocatedBytes"] == MiB, pool

    t0 = time.monotonic()
    with pytest.raises(nbd.Error) as exc:
        h.pwrite(b"\x02" * 4096, 2 * MiB)
    assert exc.value.errnum == errno.ENOSPC, exc.value
    assert time.monotonic() - t0 < 5, "ENOSPC must be reported fast"

    # Overwrites of allocated chunks and reads still work on the same connection.
    h.pwrite(b"\x03" * 4096, 4096)
    assert h.pread(4096, 4096) == b"\x03" * 4096
    assert h.pread(4096, 2 * MiB) == bytes(4096)
    h.flush()
    assert d.volume("v")["allocatedBytes"] == MiB
    assert_accounting(d)
