"""remapctl, the command-line client, against a live daemon."""

import json

import pytest

from harness import DEFAULT_POOL_SIZE, GiB, MiB, REMAPCTL, ok, run


def one_line_error(p, code=1):
    err = p.stderr.decode()
    assert p.returncode == code, f"exit {p.returncode} (want {code})\nstderr: {err}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"want exactly one line on stderr, got: {err!r}"
    return lines[0]


def test_pool_list_and_show(remapd):
    out = ok(remapd.ctl("pool", "list"))
    assert "default" in out

    out = ok(remapd.ctl("pool", "show", "default"))
    assert "default" in out

    pools = json.loads(ok(remapd.ctl("pool", "list", "--json")))
    assert pools == remapd.get_ok("/v1/pools")
    pool = json.loads(ok(remapd.ctl("pool", "show", "default", "--json")))
    assert pool == remapd.pool()
    assert pool["capacityBytes"] == DEFAULT_POOL_SIZE


def test_volume_lifecycle(remapd):
    d = remapd
    out = ok(d.ctl("volume", "create", "v1", "--size", "1G"))
    assert "v1" in out
    v = d.volume("v1")
    assert v["sizeBytes"] == GiB
    assert v["pool"] == "default"

    created = json.loads(ok(d.ctl("volume", "create", "v2", "--size", "512M",
                                  "--pool", "default", "--json")))
    assert created == d.volume("v2")
    assert created["sizeBytes"] == 512 * MiB

    out = ok(d.ctl("volume", "list"))
    assert "v1" in out and "v2" in out
    listed = json.loads(ok(d.ctl("volume", "list", "--json")))
    assert listed == d.get_ok("/v1/volumes")

    out = ok(d.ctl("volume", "show", "v1"))
    assert "v1" in out
    shown = json.loads(ok(d.ctl("volume", "show", "v1", "--json")))
    assert shown == v

    ok(d.ctl("volume", "delete", "v1"))
    assert [x["name"] for x in d.volumes()] == ["v2"]
    out = ok(d.ctl("volume", "list"))
    assert "v2" in out and "v1" not in out.split()


def test_size_suffixes(remapd):
    d = remapd
    for name, arg, size in [("a", "1G", GiB), ("b", "512M", 512 * MiB),
                            ("c", "1073741824", GiB), ("d", "64K", 64 * 1024)]:
        ok(d.ctl("volume", "create", name, "--size", arg))
        assert d.volume(name)["sizeBytes"] == size, arg


def test_idempotent_create_and_conflict(remapd):
    d = remapd
    ok(d.ctl("volume", "create", "v", "--size", "1G"))
    ok(d.ctl("volume", "create", "v", "--size", "1G"))
    p = d.ctl("volume", "create", "v", "--size", "2G")
    line = one_line_error(p, 1)
    assert d.volume("v")["sizeBytes"] == GiB
    assert line


def test_not_found_is_exit_1_with_one_line(remapd):
    d = remapd
    for args in (["volume", "show", "nope"], ["volume", "delete", "nope"],
                 ["pool", "show", "nope"]):
        p = d.ctl(*args)
        line = one_line_error(p, 1)
        assert p.stdout.decode().strip() == "", f"{args}: nothing on stdout on error"
        assert "nope" in line or "not" in line.lower(), line
    p = d.ctl("volume", "create", "x", "--size", "1G", "--pool", "nope")
    one_line_error(p, 1)
    assert d.volumes() == []


def test_server_side_validation_is_exit_1(remapd):
    p = remapd.ctl("volume", "create", "a@b", "--size", "1G")
    assert p.returncode in (1, 2), p
    assert len([x for x in p.stderr.decode().splitlines() if x.strip()]) >= 1
    assert remapd.volumes() == []


@pytest.mark.parametrize("size", ["banana", "12Q", "1.5.G", ""])
def test_bad_size_is_usage_error(remapd, size):
    p = remapd.ctl("volume", "create", "v", "--size", size)
    assert p.returncode == 2, f"exit {p.returncode}: {p.stderr.decode()}"
    assert p.stderr.decode().strip(), "a usage error says why"
    assert remapd.volumes() == []


@pytest.mark.parametrize("args", [["frobnicate"], ["volume", "frobnicate"], ["volume", "create"],
                                  ["volume", "create", "v"], ["volume", "show"]])
def test_usage_errors_are_exit_2(remapd, args):
    p = remapd.ctl(*args)
    assert p.returncode == 2, f"{args}: exit {p.returncode}: {p.stderr.decode()}"
    assert remapd.volumes() == []


def test_daemon_not_running_is_exit_1(make_remapd):
    d = make_remapd(start=False)
    if not REMAPCTL.exists():
        pytest.fail(f"remapctl binary not found at {REMAPCTL}")
    p = run([REMAPCTL, "volume", "list", "--socket", d.api_sock], timeout=30)
    one_line_error(p, 1)


def test_socket_option_before_subcommand(remapd):
    """The documented form: remapctl --socket S pool list."""
    p = run([REMAPCTL, "--socket", remapd.api_sock, "pool", "list"], timeout=30)
    assert "default" in ok(p)
    p = run([REMAPCTL, "--socket", remapd.api_sock, "--json", "volume", "list"], timeout=30)
    assert json.loads(ok(p)) == {"volumes": []}
