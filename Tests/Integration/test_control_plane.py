"""The complete control plane (issue 3): pools, suppliers, PATCH, paging,
every error code, concurrency, durability of 2xx answers, /metrics."""

import http.client
import json
import os
import random
import re
import socket
import threading

import pytest

from harness import CHUNK, MiB, assert_accounting, check_space, assert_problem, file_supplier, wait_until


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over remapd's unix socket: a second, independent client."""

    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def call(sock_path, method, path, body=None):
    conn = UnixHTTPConnection(str(sock_path))
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, (json.loads(data) if data else None)
    finally:
        conn.close()


# ------------------------------------------------------------------ pools

def test_pool_lifecycle(remapd):
    d = remapd
    spec = {"name": "fast", "chunkSizeBytes": 131072,
            "suppliers": [file_supplier(d.state_dir / "pools" / "fast-a.img"),
                          file_supplier(d.state_dir / "pools" / "fast-b.img", 32 * MiB, preallocate=False)]}
    status, _, pool = d.api("POST", "/v1/pools", body=spec)
    assert status == 201, pool
    assert pool["capacityBytes"] == 96 * MiB and pool["chunkSizeBytes"] == 131072
    assert [s["preallocated"] for s in pool["suppliers"]] == [True, False]
    assert os.stat(spec["suppliers"][0]["path"]).st_blocks * 512 >= 64 * MiB  # allocated on the host
    assert os.stat(spec["suppliers"][1]["path"]).st_blocks == 0                # sparse
    # Idempotent: the same spec again answers 200 with the same pool.
    status, _, again = d.api("POST", "/v1/pools", body=spec)
    assert status == 200 and again["suppliers"] == pool["suppliers"]
    status, headers, body = d.api("POST", "/v1/pools", body={**spec, "chunkSizeBytes": 65536})
    assert_problem(status, headers, body, 409, "already-exists")
    # Grow online; the new space is usable at once.
    status, _, grown = d.api("POST", "/v1/pools/fast/suppliers",
                             body=file_supplier(d.state_dir / "pools" / "fast-c.img", 16 * MiB))
    assert status == 201 and grown["capacityBytes"] == 112 * MiB and len(grown["suppliers"]) == 3
    d.create_volume("v", 256 * MiB, pool="fast")
    p = d.pool("fast")
    assert p["provisionedBytes"] == 256 * MiB and p["volumeCount"] == 1
    assert p["overcommitRatio"] == pytest.approx(256 / 112)
    status, headers, body = d.api("DELETE", "/v1/pools/fast")
    assert_problem(status, headers, body, 409, "in-use")
    d.restart(kill9=True)
    assert d.pool("fast")["capacityBytes"] == 112 * MiB
    d.delete_volume("v")
    status, _, _ = d.api("DELETE", "/v1/pools/fast")
    assert status == 204
    assert not any(os.path.exists(s["path"]) for s in grown["suppliers"])
    status, headers, body = d.api("GET", "/v1/pools/fast")
    assert_problem(status, headers, body, 404, "not-found")


@pytest.mark.parametrize("supplier,code", [
    ({"kind": "file", "path": "/etc/remap-test.img", "sizeBytes": 1 << 24}, "invalid-argument"),
    ({"kind": "file", "path": "POOLS/../escape.img", "sizeBytes": 1 << 24}, "invalid-argument"),
    ({"kind": "file", "path": "relative.img", "sizeBytes": 1 << 24}, "invalid-argument"),
    ({"kind": "file", "path": "POOLS/tiny.img", "sizeBytes": 4096}, "invalid-argument"),
    ({"kind": "file", "path": "POOLS/default.img", "sizeBytes": 1 << 24}, "already-exists"),
    ({"kind": "file", "path": "POOLS/x.img"}, "invalid-argument"),
    ({"kind": "block", "path": "/etc/passwd"}, "invalid-argument"),
    ({"kind": "block", "path": "/dev/nonexistent-remap"}, "invalid-argument"),
    ({"kind": "tape", "path": "/dev/st0"}, "invalid-argument"),
    ({"kind": "file", "path": "POOLS/y.img", "sizeBytes": 1 << 24, "extra": 1}, "invalid-argument"),
])
def test_bad_suppliers_are_refused_and_change_nothing(remapd, supplier, code):
    d = remapd
    supplier = {k: (v.replace("POOLS", str(d.state_dir / "pools")) if isinstance(v, str) else v)
                for k, v in supplier.items()}
    before = sorted(os.listdir(d.state_dir / "pools"))
    status = {"invalid-argument": 400, "already-exists": 409}[code]
    for path, body in (("/v1/pools", {"name": "p", "suppliers": [supplier]}),
                       ("/v1/pools/default/suppliers", supplier)):
        st, headers, problem = d.api("POST", path, body=body)
        assert_problem(st, headers, problem, status, code)
    assert sorted(os.listdir(d.state_dir / "pools")) == before
    assert [p["name"] for p in d.get_ok("/v1/pools")["pools"]] == ["default"]
    assert len(d.pool()["suppliers"]) == 1


@pytest.mark.parametrize("body", [
    {"name": "p", "suppliers": []},
    {"name": "p"},
    {"name": "p", "suppliers": "x"},
    {"name": "p", "chunkSizeBytes": 3000, "suppliers": [{"kind": "file", "path": "POOLS/a.img", "sizeBytes": 1 << 24}]},
    {"name": "p", "chunkSizeBytes": 8 << 20, "suppliers": [{"kind": "file", "path": "POOLS/a.img", "sizeBytes": 1 << 24}]},
    {"name": "../p", "suppliers": [{"kind": "file", "path": "POOLS/a.img", "sizeBytes": 1 << 24}]},
    {"name": "p", "suppliers": [{"kind": "file", "path": "POOLS/a.img", "sizeBytes": 1 << 24},
                                {"kind": "file", "path": "POOLS/a.img", "sizeBytes": 1 << 24}]},
])
def test_bad_pool_specs(remapd, body):
    text = json.dumps(body).replace("POOLS", str(remapd.state_dir / "pools"))
    status, headers, problem = remapd.api("POST", "/v1/pools", raw_body=text)
    assert_problem(status, headers, problem, 400, "invalid-argument")
    assert not os.path.exists(remapd.state_dir / "pools" / "a.img")


# ---------------------------------------------------------------- volumes

def test_patch_grow_shrink_labels(remapd):
    d = remapd
    d.api("POST", "/v1/volumes", body={"name": "v", "sizeBytes": 4 * MiB, "labels": {"app": "db"}})
    h = d.nbd("v")
    h.pwrite(b"\xab" * (4 * MiB), 0)
    h.flush()
    h.shutdown()
    d.close_handles()
    status, _, v = d.api("PATCH", "/v1/volumes/v", body={"sizeBytes": 8 * MiB})
    assert status == 200 and v["sizeBytes"] == 8 * MiB and v["labels"] == {"app": "db"}
    status, headers, body = d.api("PATCH", "/v1/volumes/v", body={"sizeBytes": 1 * MiB + 512})
    assert_problem(status, headers, body, 409, "shrink-not-allowed")
    assert d.volume("v")["sizeBytes"] == 8 * MiB
    # While a client is connected a shrink is refused: it would pull data from under it.
    busy = d.nbd("v")
    status, headers, body = d.api("PATCH", "/v1/volumes/v?allowShrink=true", body={"sizeBytes": 1 * MiB})
    assert_problem(status, headers, body, 409, "in-use")
    busy.shutdown()
    d.close_handles()
    status, _, v = d.api("PATCH", "/v1/volumes/v?allowShrink=true", body={"sizeBytes": 1 * MiB + 512})
    assert status == 200 and v["sizeBytes"] == 1 * MiB + 512
    assert v["allocatedBytes"] == 1 * MiB + CHUNK  # the chunks past the end are freed
    assert_accounting(d)
    # Growing again shows zeros past the old end, also inside the kept last chunk.
    d.api("PATCH", "/v1/volumes/v", body={"sizeBytes": 4 * MiB, "labels": {"tier": "gold"}})
    h = d.nbd("v")
    assert h.pread(1 * MiB + 512, 0) == b"\xab" * (1 * MiB + 512)
    assert h.pread(3 * MiB - 512, 1 * MiB + 512) == bytes(3 * MiB - 512)
    h.shutdown()
    d.close_handles()
    d.restart(kill9=True)
    v = d.volume("v")
    assert v["sizeBytes"] == 4 * MiB and v["labels"] == {"tier": "gold"}
    assert_accounting(d)


def test_list_filters_and_paging(remapd):
    d = remapd
    for i in range(7):
        d.api("POST", "/v1/volumes", body={"name": f"v{i}", "sizeBytes": MiB, "labels": {"parity": "even" if i % 2 == 0 else "odd"}})
    status, _, page = d.api("GET", "/v1/volumes?label=parity=odd")
    assert [v["name"] for v in page["volumes"]] == ["v1", "v3", "v5"] and "nextPageToken" not in page
    status, _, page = d.api("GET", "/v1/volumes?label=parity")
    assert len(page["volumes"]) == 7
    names, token = [], None
    while True:
        status, _, page = d.api("GET", "/v1/volumes?limit=3" + (f"&pageToken={token}" if token else ""))
        assert status == 200 and len(page["volumes"]) <= 3
        names += [v["name"] for v in page["volumes"]]
        token = page.get("nextPageToken")
        if not token:
            break
    assert names == [f"v{i}" for i in range(7)]
    status, _, page = d.api("GET", "/v1/volumes?pool=nope")
    assert page["volumes"] == []
    for query in ("limit=0", "limit=1001", "limit=x", "pageToken=zz", "bogus=1", "limit=1&limit=2"):
        status, headers, body = d.api("GET", f"/v1/volumes?{query}")
        assert_problem(status, headers, body, 400, "invalid-argument")


# ------------------------------------------------------------- error codes

def test_every_error_code(remapd):
    d = remapd
    status, headers, body = d.api("PUT", "/v1/volumes")
    assert_problem(status, headers, body, 405, "method-not-allowed")
    assert headers.get("allow") == "GET, POST"
    status, headers, body = d.api("POST", "/v1/volumes", raw_body='{"name":"x","sizeBytes":1048576}',
                                  headers={"Content-Type": "text/plain"})
    assert_problem(status, headers, body, 415, "unsupported-media-type")
    big = json.dumps({"name": "x", "sizeBytes": 1048576, "labels": {"k": "v" * (2 << 20)}})
    status, headers, body = d.api("POST", "/v1/volumes", raw_body=big)
    assert_problem(status, headers, body, 413, "payload-too-large")
    status, headers, body = d.api("GET", "/v1/nothing")
    assert_problem(status, headers, body, 404, "not-found")
    status, headers, body = d.api("POST", "/v1/volumes", body={"name": "x", "sizeBytes": 1 << 20, "labels": {"bad key": "v"}})
    assert_problem(status, headers, body, 400, "invalid-argument")
    status, headers, body = d.api("PATCH", "/v1/volumes/none", body={"sizeBytes": 1 << 20})
    assert_problem(status, headers, body, 404, "not-found")
    d.create_volume("x", MiB)
    status, headers, body = d.api("PATCH", "/v1/volumes/x", body={})
    assert_problem(status, headers, body, 400, "invalid-argument")
    h = d.nbd("x")
    status, headers, body = d.api("DELETE", "/v1/volumes/x")
    assert_problem(status, headers, body, 409, "in-use")
    h.shutdown()
    assert [v["name"] for v in d.volumes()] == ["x"]
    assert d.pool()["allocatedBytes"] == 0


# ------------------------------------------------------------ concurrency

def test_32_concurrent_clients_3000_requests(remapd):
    d = remapd
    sock = d.api_sock
    errors, server_errors = [], []
    owned = {}  # client -> {name: size} it believes exist at the end

    def client(index):
        rng = random.Random(index)
        mine = {}
        for _ in range(3000 // 32 + 1):
            op = rng.random()
            if rng.random() < 0.2:
                name = f"shared-{rng.randrange(4)}"  # contended across clients
            else:
                name = f"c{index}-{rng.randrange(5)}"
            try:
                if op < 0.35:
                    size = rng.choice([1, 2, 4]) * MiB
                    status, body = call(sock, "POST", "/v1/volumes", {"name": name, "sizeBytes": size})
                    if status in (200, 201) and not name.startswith("shared"):
                        mine[name] = body["sizeBytes"]
                    ok = {200, 201, 409}
                elif op < 0.6:
                    status, body = call(sock, "GET", f"/v1/volumes/{name}")
                    ok = {200, 404}
                elif op < 0.8:
                    status, body = call(sock, "PATCH", f"/v1/volumes/{name}", {"labels": {"n": str(rng.random())}})
                    ok = {200, 404}
                else:
                    status, body = call(sock, "DELETE", f"/v1/volumes/{name}")
                    if status == 204:
                        mine.pop(name, None)
                    ok = {204, 404}
            except Exception as exc:  # noqa: BLE001 - every failure is reported
                errors.append(f"{name}: {exc!r}")
                continue
            if status >= 500:
                server_errors.append((name, status, body))
            elif status not in ok:
                errors.append((name, status, body))
        owned[index] = mine

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not server_errors, server_errors[:5]
    assert not errors, errors[:5]
    volumes = d.get_ok("/v1/volumes?limit=1000")["volumes"]
    names = [v["name"] for v in volumes]
    assert len(names) == len(set(names)), "duplicated volume"
    assert len({v["id"] for v in volumes}) == len(volumes)
    expected = {name: size for mine in owned.values() for name, size in mine.items()}
    actual = {v["name"]: v["sizeBytes"] for v in volumes if not v["name"].startswith("shared")}
    assert actual == expected, "lost or phantom volume"
    pool = assert_accounting(d)
    assert pool["provisionedBytes"] == sum(v["sizeBytes"] for v in volumes)
    assert pool["volumeCount"] == len(volumes)
    d.restart(kill9=True)
    assert sorted(v["name"] for v in d.get_ok("/v1/volumes?limit=1000")["volumes"]) == sorted(names)


# --------------------------------------------------------------- durability

def test_2xx_survives_kill9_immediately(remapd):
    d = remapd
    for round_ in range(5):
        status, _, v = d.api("POST", "/v1/volumes", body={"name": f"k{round_}", "sizeBytes": MiB, "labels": {"r": str(round_)}})
        assert status == 201
        d.kill9()
        d.start()
        assert d.volume(f"k{round_}")["id"] == v["id"]
        status, _, _ = d.api("PATCH", f"/v1/volumes/k{round_}", body={"sizeBytes": 2 * MiB})
        assert status == 200
        d.kill9()
        d.start()
        assert d.volume(f"k{round_}")["sizeBytes"] == 2 * MiB
    status, _, _ = d.api("POST", "/v1/pools", body={
        "name": "q", "suppliers": [file_supplier(d.state_dir / "pools" / "q.img", 16 * MiB)]})
    assert status == 201
    d.kill9()
    d.start()
    assert d.pool("q")["capacityBytes"] == 16 * MiB
    status, _, _ = d.api("DELETE", "/v1/volumes/k0")
    assert status == 204
    d.kill9()
    d.start()
    status, _, _ = d.api("GET", "/v1/volumes/k0")
    assert status == 404


# ------------------------------------------------------------------ metrics

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*)?\})? (-?[0-9.e+-]+|\+Inf|NaN)$')


def parse_metrics(text):
    """A strict reader of the Prometheus text format 0.0.4."""
    types, samples = {}, []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter", "histogram"), line
            assert name not in types, f"family declared twice: {name}"
            types[name] = kind
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name = m.group(1)
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"sample before its TYPE: {line}"
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        samples.append((name, labels, float(m.group(m.lastindex))))
    return types, samples


def test_metrics(remapd):
    d = remapd
    d.create_volume("m", 8 * MiB)
    h = d.nbd("m")
    h.pwrite(b"x" * 65536, 0)
    h.pread(4096, 0)
    h.flush()
    h.set_strict_mode(0)  # let the out-of-range read reach the server
    try:
        h.pread(4096, 16 * MiB)
    except Exception:  # noqa: BLE001 - out of range on purpose
        pass
    h.shutdown()
    d.close_handles()
    status, headers, text = d.api("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    types, samples = parse_metrics(text)

    def value(name, **labels):
        found = [v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in labels.items())]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    pool = d.pool()
    assert value("remap_pool_allocated_bytes", pool="default") == pool["allocatedBytes"] == 65536
    assert value("remap_pool_capacity_bytes", pool="default") == pool["capacityBytes"]
    assert value("remap_pool_provisioned_bytes", pool="default") == 8 * MiB
    assert value("remap_volume_allocated_bytes", volume="m") == 65536
    assert value("remap_nbd_requests_total", command="write") == 1
    assert value("remap_nbd_bytes_total", command="write") == 65536
    assert value("remap_nbd_bytes_total", command="read") == 4096
    assert value("remap_nbd_errors_total", command="read", error="EINVAL") == 1
    assert value("remap_nbd_request_duration_seconds_count", command="write") == 1
    assert types["remap_nbd_request_duration_seconds"] == "histogram"
    buckets = [(l["le"], v) for n, l, v in samples
               if n == "remap_nbd_request_duration_seconds_bucket" and l["command"] == "read"]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and buckets[-1][0] == "+Inf" and counts[-1] == 2
    assert value("remap_http_requests_total", route="/v1/volumes", method="POST", status="201") == 1
    check_space(pool)


def test_metrics_show_the_space_accounting(remapd):
    """capacity = allocated + reserved + free, the same numbers as REST."""
    d = remapd
    d.create_volume("r", 8 * MiB)
    status, _, _ = d.api("POST", "/v1/volumes/r/reservations", body={"bytes": 2 * MiB})
    assert status == 201
    status, _, _ = d.api("POST", "/v1/volumes/r/reservations", body={"offsetBytes": 4 * MiB, "lengthBytes": MiB})
    assert status == 201
    h = d.nbd("r")
    h.pwrite(b"x" * 65536, 4 * MiB)  # a reserved chunk becomes data
    h.flush()
    _, _, text = d.api("GET", "/metrics")
    _, samples = parse_metrics(text)
    got = {(n, l.get("volume") or l.get("pool")): v for n, l, v in samples}
    pool, volume = d.pool(), d.volume("r")
    for field in ("capacity", "allocated", "reserved", "free"):
        assert got[(f"remap_pool_{field}_bytes", "default")] == pool[f"{field}Bytes"], field
    assert pool["reservedBytes"] == 2 * MiB + MiB - 65536
    assert pool["capacityBytes"] == pool["allocatedBytes"] + pool["reservedBytes"] + pool["freeBytes"]
    assert got[("remap_volume_reserved_bytes", "r")] == volume["reservedBytes"]
    assert got[("remap_volume_guaranteed_writable_bytes", "r")] == volume["guaranteedWritableBytes"]


def test_reclaim_keeps_preallocated_space_and_returns_sparse_space_to_the_host(remapd):
    """TRIM of whole chunks: a preallocated supplier keeps its blocks
    (zero-range), a sparse one gives them back to the host (punch hole)."""
    d = remapd
    sparse = d.state_dir / "pools" / "sparse.img"
    status, _, _ = d.api("POST", "/v1/pools", body={"name": "thin", "suppliers": [
        {"kind": "file", "path": str(sparse), "sizeBytes": 64 * MiB, "preallocate": False}]})
    assert status == 201
    dense = d.state_dir / "pools" / "default.img"
    for name, pool, path in (("t1", "thin", sparse), ("t2", "default", dense)):
        d.create_volume(name, 32 * MiB, pool=pool)
        h = d.nbd(name)
        h.pwrite(os.urandom(8 * MiB), 0)
        h.flush()
        blocks_written = os.stat(path).st_blocks * 512
        h.trim(8 * MiB, 0)
        h.flush()
        h.shutdown()
        d.close_handles()
        assert wait_until(lambda: d.volume(name)["allocatedBytes"] == 0 and d.pool(pool)["allocatedBytes"] == 0, timeout=10)
        blocks_after = os.stat(path).st_blocks * 512
        if path == sparse:
            assert blocks_written >= 8 * MiB and blocks_after <= blocks_written - 8 * MiB, (blocks_written, blocks_after)
        else:
            assert blocks_after == blocks_written >= 512 * MiB, (blocks_written, blocks_after)
