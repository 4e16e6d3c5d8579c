#!/usr/bin/python3
"""Writes the seed corpus of the fuzz targets (Tests/Fuzz/corpus/TARGET/NAME).

Each seed is a small, meaningful input: a request of every REST endpoint
(docs/api-v1.md), every NBD option, every NBD command with each of its flags.
The seeds are committed; run this again after changing it (it rewrites the
corpus directories). Input formats: Sources/RemapFuzz/HTTPFuzzing.swift and
NBDFuzzing.swift.
"""
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, seeds):
    directory = os.path.join(HERE, "corpus", target)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    for name, data in seeds.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


# --- REST ---------------------------------------------------------------

def http(method, target, body=b"", headers=None):
    head = f"{method} {target}\n".encode()
    if body and headers is None:
        headers = {"Content-Type": "application/json"}
    for name, value in (headers or {}).items():
        head += f"{name}: {value}\n".encode()
    return head + b"\n" + body


def http_seeds():
    supplier = b'{"kind": "file", "path": "/var/lib/remap/pools/p2.img", "sizeBytes": 1073741824, "preallocate": false}'
    return {
        "health": http("GET", "/v1/health"),
        "version": http("GET", "/v1/version"),
        "limits": http("GET", "/v1/limits"),
        "metrics": http("GET", "/metrics"),
        "pools-list": http("GET", "/v1/pools"),
        "pools-create": http("POST", "/v1/pools", b'{"name": "fast", "chunkSizeBytes": 65536, "suppliers": [' + supplier
                             + b', {"kind": "block", "path": "/dev/vdb"}]}'),
        "pool-get": http("GET", "/v1/pools/default"),
        "pool-patch-queue": http("PATCH", "/v1/pools/default", b'{"onNoSpace": {"queueSeconds": 30}, "lowSpaceThresholds": [80, 90, 95]}'),
        "pool-patch-error": http("PATCH", "/v1/pools/default", b'{"onNoSpace": "error"}'),
        "pool-delete": http("DELETE", "/v1/pools/fast"),
        "pool-check": http("GET", "/v1/pools/default/check"),
        "pool-clear-errors": http("POST", "/v1/pools/default/clear-errors", b"{}"),
        "supplier-add": http("POST", "/v1/pools/default/suppliers", supplier),
        "supplier-grow": http("PATCH", "/v1/pools/default/suppliers/0f6e", b'{"sizeBytes": 2147483648}'),
        "volumes-list": http("GET", "/v1/volumes?pool=default&label=app%3Ddb&limit=2"),
        "volumes-page": http("GET", "/v1/volumes?limit=1&pageToken=61"),
        "volumes-label-key": http("GET", "/v1/volumes?label=tier"),
        "volume-create": http("POST", "/v1/volumes", b'{"name": "vm1", "sizeBytes": 1073741824, "pool": "default", "labels": {"app": "db"}}'),
        "volume-create-thick": http("POST", "/v1/volumes", b'{"name": "vm2", "sizeBytes": 4096, "reservation": "thick"}'),
        "volume-create-reserved": http("POST", "/v1/volumes", b'{"name": "vm3", "sizeBytes": 8192, "reservation": {"bytes": 4096}}'),
        "volume-import": http("POST", "/v1/volumes", b'{"name": "img", "source": {"file": "/tmp/disk.raw"}, "pool": "default"}'),
        "volume-get": http("GET", "/v1/volumes/vm1"),
        "volume-patch": http("PATCH", "/v1/volumes/vm1?allowShrink=true", b'{"sizeBytes": 2097152, "labels": {"app": "web"}}'),
        "volume-delete": http("DELETE", "/v1/volumes/vm1"),
        "volume-snapshot": http("POST", "/v1/volumes/vm1/snapshots", b'{"name": "s1"}'),
        "volume-snapshots": http("GET", "/v1/volumes/vm1/snapshots"),
        "volume-revert": http("POST", "/v1/volumes/vm1/revert", b'{"snapshot": "vm1@s1"}'),
        "reservations-list": http("GET", "/v1/volumes/vm1/reservations"),
        "reservation-pooled": http("POST", "/v1/volumes/vm1/reservations", b'{"bytes": 1048576, "ttlSeconds": 60, "name": "backup"}'),
        "reservation-range": http("POST", "/v1/volumes/vm1/reservations", b'{"offsetBytes": 0, "lengthBytes": 65536}'),
        "reservation-get": http("GET", "/v1/volumes/vm1/reservations/r-1"),
        "reservation-delete": http("DELETE", "/v1/volumes/vm1/reservations/r-1"),
        "reservation-renew": http("POST", "/v1/volumes/vm1/reservations/r-1/renew", b'{"ttlSeconds": 120}'),
        "reservation-renew-empty": http("POST", "/v1/volumes/vm1/reservations/r-1/renew"),
        "exports-list": http("GET", "/v1/exports"),
        "export-create": http("POST", "/v1/exports", b'{"volume": "vm1", "reservation": "r-1", "name": "vm1-backup"}'),
        "export-delete": http("DELETE", "/v1/exports/vm1-backup"),
        "events": http("GET", "/v1/events?since=5"),
        "events-stream": http("GET", "/v1/events", headers={"Accept": "text/event-stream", "Last-Event-ID": "7"}),
        "snapshots": http("GET", "/v1/snapshots?volume=vm1"),
        "snapshot-get": http("GET", "/v1/snapshots/vm1%40s1"),
        "snapshot-delete": http("DELETE", "/v1/snapshots/vm1@s1"),
        "snapshot-clone": http("POST", "/v1/snapshots/vm1@s1/clone", b'{"name": "vm1-test", "labels": {"env": "test"}}'),
        "snapshot-changes": http("GET", "/v1/snapshots/vm1@s2/changes?base=vm1@s1"),
        "snapshot-content-range": http("GET", "/v1/snapshots/1048576/content", headers={"Range": "bytes=512-1023"}),
        "snapshot-content-suffix": http("GET", "/v1/snapshots/4096/content", headers={"Range": "bytes=-100"}),
        "snapshot-content-beyond": http("GET", "/v1/snapshots/4096/content", headers={"Range": "bytes=5000-"}),
        "operations": http("GET", "/v1/operations"),
        "operation-get": http("GET", "/v1/operations/op-1"),
        "operation-cancel": http("DELETE", "/v1/operations/op-1"),
        "faults-get": http("GET", "/v1/debug/faults"),
        "faults-put": http("PUT", "/v1/debug/faults", b'{"rules": [{"target": "supplier-write", "error": "ENOSPC", "pool": "default", '
                           b'"after": 2, "count": 3, "probability": 0.5, "seed": 42}, {"target": "metadata-commit", "error": "delay", "delayMs": 10}]}'),
        "faults-delete": http("DELETE", "/v1/debug/faults"),
        "wrong-media-type": http("POST", "/v1/volumes", b"name=vm1", {"Content-Type": "application/x-www-form-urlencoded"}),
        "nested-json": http("POST", "/v1/volumes", b'{"name": "a", "sizeBytes": 512, "labels": {"k": "v"}, "reservation": {"bytes": [[[{}]]]}}'),
        "size-text": b"64KiB",
    }


# --- NBD ----------------------------------------------------------------

OPTION_MAGIC = 0x49484156454F5054
REQUEST_MAGIC = 0x25609513
EXPORT_NAME, ABORT, LIST, STARTTLS, INFO, GO, STRUCTURED_REPLY, LIST_META, SET_META = 1, 2, 3, 5, 6, 7, 8, 9, 10
READ, WRITE, DISC, FLUSH, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS = 0, 1, 2, 3, 4, 5, 6, 7
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO = 1, 2, 4, 8, 16
EXPORTS = ["disk", "disk@base", "thin", "thin-bound"]


def string(text):
    data = text.encode()
    return struct.pack(">I", len(data)) + data


def option(code, data=b""):
    return struct.pack(">QII", OPTION_MAGIC, code, len(data)) + data


def info(code, name, requests=()):
    return option(code, string(name) + struct.pack(">H", len(requests)) + b"".join(struct.pack(">H", r) for r in requests))


def meta(code, name, queries):
    return option(code, string(name) + struct.pack(">I", len(queries)) + b"".join(string(q) for q in queries))


def request(command, offset=0, length=0, flags=0, cookie=1):
    return struct.pack(">IHHQQI", REQUEST_MAGIC, flags, command, cookie, offset, length)


FLAGS = struct.pack(">I", 3)  # fixed newstyle, no zeroes


def handshake_seeds():
    structured = option(STRUCTURED_REPLY) + meta(SET_META, "disk", ["base:allocation"])
    return {
        "flags-only": FLAGS,
        "flags-zeroes": struct.pack(">I", 1) + option(EXPORT_NAME, b"disk"),
        "flags-bad": struct.pack(">I", 4),
        "export-name": FLAGS + option(EXPORT_NAME, b"disk") + request(READ, 0, 4096) + request(DISC),
        "export-name-snapshot": FLAGS + option(EXPORT_NAME, b"disk@base"),
        "export-name-unknown": FLAGS + option(EXPORT_NAME, b"nope"),
        "abort": FLAGS + option(ABORT),
        "list": FLAGS + option(LIST) + option(ABORT),
        "list-with-data": FLAGS + option(LIST, b"x"),
        "starttls": FLAGS + option(STARTTLS),
        "info-all": FLAGS + info(INFO, "thin", [0, 1, 2, 3]) + option(ABORT),
        "info-unknown": FLAGS + info(INFO, "missing"),
        "info-truncated": FLAGS + option(INFO, string("disk")),
        "go": FLAGS + info(GO, "disk", [3]) + request(FLUSH) + request(DISC),
        "go-snapshot": FLAGS + info(GO, "disk@base") + request(WRITE, 0, 4, cookie=2) + b"abcd",
        "go-bound": FLAGS + info(GO, "thin-bound") + request(WRITE, 0, 4096) + bytes(4096),
        "structured": FLAGS + structured + info(GO, "disk") + request(BLOCK_STATUS, 0, 1 << 20),
        "structured-twice": FLAGS + option(STRUCTURED_REPLY) + option(STRUCTURED_REPLY),
        "meta-before-structured": FLAGS + meta(LIST_META, "disk", []),
        "meta-list": FLAGS + option(STRUCTURED_REPLY) + meta(LIST_META, "disk", ["base:"]) + meta(LIST_META, "disk@base", []),
        "meta-set-other": FLAGS + option(STRUCTURED_REPLY) + meta(SET_META, "thin", ["qemu:dirty-bitmap:x"]),
        "unknown-option": FLAGS + option(99, b"\x00\x01"),
        "bad-magic": FLAGS + b"IHAVEOPS" + struct.pack(">II", GO, 0),
        "huge-option": FLAGS + struct.pack(">QII", OPTION_MAGIC, INFO, 0xFFFFFFFF),
    }


def transmission_seeds():
    # The first byte chooses the export (bits 0-1, EXPORTS) and structured
    # replies with base:allocation (bit 2).
    disk, snapshot, thin, bound, structured = 0, 1, 2, 3, 4
    return {
        "read": bytes([disk]) + request(READ, 4096, 8192),
        "read-structured": bytes([structured | disk]) + request(READ, 0, 65536),
        "read-df": bytes([structured | disk]) + request(READ, 0, 16384, DF),
        "read-snapshot": bytes([snapshot]) + request(READ, 512 << 10, 8192) + request(READ, (1 << 20) - 512, 512),
        "read-beyond": bytes([disk]) + request(READ, 1 << 20, 1),
        "read-zero-length": bytes([disk]) + request(READ, 0, 0),
        "read-too-large": bytes([disk]) + request(READ, 0, 64 << 20),
        "write": bytes([disk]) + request(WRITE, 8192, 512) + b"\x5a" * 512,
        "write-fua": bytes([disk]) + request(WRITE, 4000, 200, FUA) + b"\x33" * 200,
        "write-partial-payload": bytes([disk]) + request(WRITE, 0, 4096) + b"\x01" * 100,
        "write-readonly": bytes([snapshot]) + request(WRITE, 0, 16) + bytes(16) + request(READ, 0, 16),
        "write-thin": bytes([thin]) + b"".join(request(WRITE, i * 65536, 4096, cookie=i) + bytes(4096) for i in range(6)),
        "write-bound": bytes([bound]) + request(WRITE, 4096, 4096) + b"\xff" * 4096,
        "write-bad-flags": bytes([disk]) + request(WRITE, 0, 8, REQ_ONE) + bytes(8),
        "flush": bytes([disk]) + request(FLUSH),
        "trim": bytes([disk]) + request(TRIM, 0, 8192) + request(TRIM, 5000, 100),
        "trim-readonly": bytes([snapshot]) + request(TRIM, 0, 4096),
        "write-zeroes": bytes([disk]) + request(WRITE_ZEROES, 0, 4096),
        "write-zeroes-no-hole": bytes([thin]) + request(WRITE_ZEROES, 0, 65536, NO_HOLE),
        "write-zeroes-fast": bytes([disk]) + request(WRITE_ZEROES, 512 << 10, 12288, FAST_ZERO | FUA),
        "cache": bytes([disk]) + request(CACHE, 0, 4096),
        "block-status": bytes([structured | disk]) + request(BLOCK_STATUS, 0, 1 << 20),
        "block-status-one": bytes([structured | snapshot]) + request(BLOCK_STATUS, 4096, 65536, REQ_ONE),
        "block-status-simple": bytes([disk]) + request(BLOCK_STATUS, 0, 4096),
        "unknown-command": bytes([structured | disk]) + request(42, 0, 1),
        "bad-magic": bytes([disk]) + b"\x00" * 28,
        "disconnect": bytes([disk]) + request(DISC) + request(READ, 0, 512),
        "pipelined": bytes([structured | thin]) + b"".join(
            request(WRITE, 4096 * i, 4096, cookie=i) + bytes([i]) * 4096 + request(READ, 4096 * i, 4096, cookie=100 + i) for i in range(4)
        ) + request(TRIM, 0, 8192, cookie=9) + request(FLUSH, cookie=10),
    }


if __name__ == "__main__":
    write("http", http_seeds())
    write("nbd-handshake", handshake_seeds())
    write("nbd-transmission", transmission_seeds())
