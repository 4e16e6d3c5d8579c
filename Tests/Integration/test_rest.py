"""REST control plane: health, version, pools, volumes, and bad input."""

import os
from datetime import datetime

import pytest

from harness import (CHUNK, DEFAULT_POOL_SIZE, GiB, MiB, check_space,
                      assert_problem)

VOLUME_FIELDS = {"id", "name", "pool", "sizeBytes", "allocatedBytes", "createdAt", "exportName"}
POOL_FIELDS = {"name", "chunkSizeBytes", "capacityBytes", "allocatedBytes", "freeBytes", "suppliers"}


def check_volume(v, name, size, pool="default"):
    assert isinstance(v, dict), v
    missing = VOLUME_FIELDS - v.keys()
    assert not missing, f"volume lacks {missing}: {v}"
    assert v["name"] == name
    assert v["sizeBytes"] == size and isinstance(v["sizeBytes"], int)
    assert v["pool"] == pool
    assert isinstance(v["allocatedBytes"], int) and v["allocatedBytes"] >= 0
    assert isinstance(v["id"], str) and v["id"], v
    assert v["exportName"] == name, "every volume is an NBD export named after it"
    assert isinstance(v["createdAt"], str), v
    # RFC 3339 / ISO 8601 timestamp.
    datetime.fromisoformat(v["createdAt"].replace("Z", "+00:00"))


def test_health(remapd):
    status, headers, body = remapd.api("GET", "/v1/health")
    assert status == 200
    assert headers.get("content-type", "").startswith("application/json")
    assert body == {"status": "ok"}


def test_version(remapd):
    status, headers, body = remapd.api("GET", "/v1/version")
    assert status == 200, body
    assert headers.get("content-type", "").startswith("application/json")
    for key in ("version", "api", "engine"):
        assert key in body, f"version lacks {key}: {body}"
        assert body[key], body


def test_limits_are_reported_with_their_defaults(remapd):
    body = remapd.get_ok("/v1/limits")
    assert body == {
        "nbdMaxConnections": 1024, "nbdReplyQueueBytes": 64 * 1024 * 1024, "nbdMaxOptions": 16384,
        "nbdHandshakeTimeoutSeconds": 30, "nbdRequestTimeoutSeconds": 30, "nbdReplyTimeoutSeconds": 60,
        "httpMaxConnections": 512, "httpMaxConnectionsPerIP": 32, "httpRequestTimeoutSeconds": 10,
        "httpMaxEventStreams": 64, "maxChunksPerPool": 1 << 28,
    }


def test_limits_follow_the_flags(make_remapd):
    # The default pool is made within the limit too (512 chunks of 64 KiB).
    d = make_remapd(pool_size="32M", extra_args=["--nbd-max-connections", "7", "--nbd-reply-queue", "40M",
                                                 "--http-max-event-streams", "3", "--max-chunks-per-pool", "1000"])
    body = d.get_ok("/v1/limits")
    assert (body["nbdMaxConnections"], body["nbdReplyQueueBytes"], body["httpMaxEventStreams"],
            body["maxChunksPerPool"]) == (7, 40 * 1024 * 1024, 3, 1000)


@pytest.mark.parametrize("arg,size", [("1.5G", 3 * GiB // 2), ("4GiB", 4 * GiB), ("0.25g", GiB // 4),
                                      ("256 MiB", 256 * MiB), ("1073741824", GiB)])
def test_default_pool_size_takes_the_sizes_remapctl_takes(make_remapd, arg, size):
    """remapd's --default-pool-size reads sizes as remapctl's --size does: one grammar."""
    d = make_remapd(pool_size=arg)
    pool = d.pool()
    assert (pool["capacityBytes"], pool["freeBytes"]) == (size, size), pool


def test_default_pool(remapd):
    body = remapd.get_ok("/v1/pools")
    assert isinstance(body.get("pools"), list), body
    names = [p["name"] for p in body["pools"]]
    assert names.count("default") == 1, body
    listed = next(p for p in body["pools"] if p["name"] == "default")

    pool = remapd.pool("default")
    assert POOL_FIELDS <= pool.keys(), f"pool lacks {POOL_FIELDS - pool.keys()}: {pool}"
    assert pool == listed
    assert pool["chunkSizeBytes"] == CHUNK
    assert pool["capacityBytes"] == DEFAULT_POOL_SIZE
    assert pool["allocatedBytes"] == 0
    assert pool["freeBytes"] == DEFAULT_POOL_SIZE
    check_space(pool)

    assert len(pool["suppliers"]) == 1, pool
    sup = pool["suppliers"][0]
    assert {"id", "kind", "path", "sizeBytes"} <= sup.keys(), sup
    assert sup["kind"] == "file"
    expected = remapd.state_dir / "pools" / "default.img"
    assert os.path.realpath(sup["path"]) == os.path.realpath(expected)
    assert sup["sizeBytes"] == DEFAULT_POOL_SIZE
    st = os.stat(expected)
    assert st.st_size == DEFAULT_POOL_SIZE
    # The pool file is fallocated: its blocks are really there.
    assert st.st_blocks * 512 >= DEFAULT_POOL_SIZE, \
        f"pool file not fallocated: {st.st_blocks * 512} bytes allocated"


def test_unknown_pool_get(remapd):
    assert_problem(*remapd.api("GET", "/v1/pools/nope"), 404, "not-found")


def test_volume_crud(remapd):
    assert remapd.volumes() == []

    status, headers, v = remapd.api("POST", "/v1/volumes", body={"name": "v1", "sizeBytes": GiB})
    assert status == 201, v
    assert headers.get("content-type", "").startswith("application/json")
    check_volume(v, "v1", GiB)
    assert v["allocatedBytes"] == 0

    v2 = remapd.create_volume("v2", 16 * MiB, pool="default")
    check_volume(v2, "v2", 16 * MiB)
    assert v2["id"] != v["id"]

    vols = remapd.volumes()
    assert sorted(x["name"] for x in vols) == ["v1", "v2"]
    assert next(x for x in vols if x["name"] == "v1") == v

    assert remapd.volume("v1") == v
    assert remapd.volume("v2") == v2

    # Thin: creating volumes allocates nothing from the pool.
    pool = remapd.pool()
    assert pool["allocatedBytes"] == 0
    check_space(pool)

    status, _, body = remapd.api("DELETE", "/v1/volumes/v1")
    assert status == 204, body
    assert body in ("", None), f"204 must have no body: {body!r}"
    assert_problem(*remapd.api("GET", "/v1/volumes/v1"), 404, "not-found")
    assert [x["name"] for x in remapd.volumes()] == ["v2"]
    assert_problem(*remapd.api("DELETE", "/v1/volumes/v1"), 404, "not-found")


def test_create_is_idempotent(remapd):
    v = remapd.create_volume("data", 64 * MiB)
    again = remapd.create_volume("data", 64 * MiB, expect=200)
    assert again == v, "same spec again must return the existing volume"
    assert len(remapd.volumes()) == 1

    status, headers, body = remapd.api("POST", "/v1/volumes",
                                       body={"name": "data", "sizeBytes": 128 * MiB})
    assert_problem(status, headers, body, 409, "already-exists")
    assert remapd.volumes() == [v]


def test_name_of_128_chars_is_accepted(remapd):
    name = "n" * 128
    v = remapd.create_volume(name, MiB)
    check_volume(v, name, MiB)
    assert remapd.volume(name) == v


def test_volume_larger_than_pool_is_thin(remapd):
    v = remapd.create_volume("big", 4 * DEFAULT_POOL_SIZE)
    check_volume(v, "big", 4 * DEFAULT_POOL_SIZE)


# ---------------------------------------------------------------- bad input
#
# Each case: (id, request kwargs, expected status, expected code).
# They run against one daemon that holds one volume "keep"; every case must
# leave the volume list and the pool exactly as they were.

def post(body=None, raw=None, headers=None):
    kw = {"method": "POST", "path": "/v1/volumes", "headers": headers}
    if raw is not None:
        kw["raw_body"] = raw
    else:
        kw["body"] = body
    return kw


BAD_INPUT = [
    ("malformed-json", post(raw='{"name": "x", "sizeBytes": '), 400, "invalid-argument"),
    ("malformed-json-trailing", post(raw='{"name": "x", "sizeBytes": 1048576}}'), 400, "invalid-argument"),
    ("empty-body", post(raw=""), 400, "invalid-argument"),
    ("json-array", post(raw='[{"name": "x", "sizeBytes": 1048576}]'), 400, "invalid-argument"),
    ("json-string", post(raw='"x"'), 400, "invalid-argument"),
    ("json-number", post(raw="42"), 400, "invalid-argument"),
    ("json-null", post(raw="null"), 400, "invalid-argument"),
    ("missing-size", post({"name": "x"}), 400, "invalid-argument"),
    ("size-null", post({"name": "x", "sizeBytes": None}), 400, "invalid-argument"),
    ("size-negative", post({"name": "x", "sizeBytes": -MiB}), 400, "invalid-argument"),
    ("size-zero", post({"name": "x", "sizeBytes": 0}), 400, "invalid-argument"),
    ("size-string", post({"name": "x", "sizeBytes": "1048576"}), 400, "invalid-argument"),
    ("size-string-suffix", post({"name": "x", "sizeBytes": "1G"}), 400, "invalid-argument"),
    ("size-fractional", post({"name": "x", "sizeBytes": 1048576.5}), 400, "invalid-argument"),
    ("size-bool", post({"name": "x", "sizeBytes": True}), 400, "invalid-argument"),
    ("size-not-512-multiple", post({"name": "x", "sizeBytes": 1000}), 400, "invalid-argument"),
    ("size-not-512-multiple-large", post({"name": "x", "sizeBytes": MiB + 1}), 400, "invalid-argument"),
    ("size-overflows-int64", post(raw='{"name": "x", "sizeBytes": 18446744073709551616}'), 400, "invalid-argument"),
    ("missing-name", post({"sizeBytes": MiB}), 400, "invalid-argument"),
    ("name-null", post({"name": None, "sizeBytes": MiB}), 400, "invalid-argument"),
    ("name-number", post({"name": 5, "sizeBytes": MiB}), 400, "invalid-argument"),
    ("name-empty", post({"name": "", "sizeBytes": MiB}), 400, "invalid-argument"),
    ("name-slash", post({"name": "a/b", "sizeBytes": MiB}), 400, "invalid-argument"),
    ("name-leading-slash", post({"name": "/x", "sizeBytes": MiB}), 400, "invalid-argument"),
    ("name-dotdot", post({"name": "..", "sizeBytes": MiB}), 400, "invalid-argument"),
    ("name-dotdot-slash", post({"name": "../etc", "sizeBytes": MiB}), 400, "invalid-argument"),
    ("name-too-long", post({"name": "n" * 129, "sizeBytes": MiB}), 400, "invalid-argument"),
    ("name-at", post({"name": "a@b", "sizeBytes": MiB}), 400, "invalid-argument"),
    ("unknown-field", post({"name": "x", "sizeBytes": MiB, "color": "red"}), 400, "invalid-argument"),
    ("unknown-pool", post({"name": "x", "sizeBytes": MiB, "pool": "nope"}), 404, "not-found"),
    ("duplicate-name-other-size", post({"name": "keep", "sizeBytes": 2 * MiB}), 409, "already-exists"),
    ("wrong-content-type", post(raw='{"name": "x", "sizeBytes": 1048576}',
                                headers={"Content-Type": "text/plain"}), 415, "unsupported-media-type"),
    ("payload-too-large", post(raw='{"name": "x", "sizeBytes": 1048576, "pad": "'
                                   + "a" * (8 * MiB) + '"}'), 413, "payload-too-large"),
    ("get-unknown-volume", {"method": "GET", "path": "/v1/volumes/nope"}, 404, "not-found"),
    ("delete-unknown-volume", {"method": "DELETE", "path": "/v1/volumes/nope"}, 404, "not-found"),
    ("put-volumes", {"method": "PUT", "path": "/v1/volumes", "body": {"name": "x", "sizeBytes": MiB}},
     405, "method-not-allowed"),
    ("delete-pools", {"method": "DELETE", "path": "/v1/pools"}, 405, "method-not-allowed"),
    ("post-health", {"method": "POST", "path": "/v1/health", "body": {}}, 405, "method-not-allowed"),
    ("unknown-path", {"method": "GET", "path": "/v1/nothing-here"}, 404, "not-found"),
]


@pytest.fixture
def rest_state(rd_shared):
    """The shared daemon with exactly one volume, 'keep' (1 MiB)."""
    d = rd_shared
    for v in d.volumes():
        if v["name"] != "keep":
            d.delete_volume(v["name"])
    if not any(v["name"] == "keep" for v in d.volumes()):
        d.create_volume("keep", MiB)
    return d


@pytest.mark.parametrize("kwargs,status,code",
                         [pytest.param(*c[1:], id=c[0]) for c in BAD_INPUT])
def test_bad_input_is_rejected_and_changes_nothing(rest_state, kwargs, status, code):
    d = rest_state
    before_vols = d.volumes()
    before_pools = d.get_ok("/v1/pools")

    resp = d.api(**kwargs)
    assert_problem(*resp, status, code)

    assert d.running, "daemon died on bad input"
    assert d.api("GET", "/v1/health")[0] == 200
    assert d.volumes() == before_vols
    assert d.get_ok("/v1/pools") == before_pools
    if kwargs.get("method") == "POST":
        # Nothing half-created under a name that may have slipped through.
        assert_problem(*d.api("GET", "/v1/volumes/x"), 404, "not-found")


def test_bad_input_survives_restart(rest_state):
    """After a storm of bad requests, the persisted state is just 'keep'."""
    d = rest_state
    for case in BAD_INPUT:
        d.api(**case[1])
    before = d.volumes()
    d.restart()
    assert d.volumes() == before
    assert [v["name"] for v in before] == ["keep"]
