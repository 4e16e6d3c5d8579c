"""remapctl against a live daemon, command by command, for the whole v1 API.

Every command is run through the real binary; `--json` output is parsed and
compared with what the REST API (curl) answers for the same object, errors
are checked for the one-line format `remapctl: <detail> (<code>, HTTP <n>)`
and exit status 1, and command-line mistakes for exit status 2.
"""

import json
import os
import re
import shlex
import shutil
import socket
import threading

import pytest

from harness import DEFAULT_POOL_SIZE, GiB, MiB, REMAPCTL, check_space, free_port, ok, run

ERROR_LINE = re.compile(r"^remapctl: (?P<detail>.+) \((?P<code>[a-z][a-z-]*), HTTP (?P<status>\d{3})\)$")


# ------------------------------------------------------------------ helpers

def ok_json(p):
    text = ok(p)
    try:
        return json.loads(text)
    except ValueError as error:
        raise AssertionError(f"--json output is not JSON ({error}): {text!r}")


def api_error(p, code, status):
    """Exit 1, nothing on stdout, and exactly one error line naming code and status."""
    err = p.stderr.decode()
    assert p.returncode == 1, f"exit {p.returncode} (want 1)\nstdout: {p.stdout.decode()}\nstderr: {err}"
    assert p.stdout.decode() == "", f"stdout must be empty on error: {p.stdout.decode()!r}"
    lines = err.splitlines()
    assert len(lines) == 1, f"want exactly one line on stderr, got: {err!r}"
    match = ERROR_LINE.match(lines[0])
    assert match, f"error line not in the form 'remapctl: <detail> (<code>, HTTP <status>)': {lines[0]!r}"
    assert (match["code"], int(match["status"])) == (code, status), lines[0]
    assert match["detail"].strip(), lines[0]
    return match["detail"]


def usage_error(p):
    err = p.stderr.decode()
    assert p.returncode == 2, f"exit {p.returncode} (want 2)\nstdout: {p.stdout.decode()}\nstderr: {err}"
    assert err.strip(), "a usage error says why"
    assert p.stdout.decode() == "", p.stdout.decode()
    return err


def table(text):
    """A remapctl table as a list of dicts keyed by the header's column titles."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = re.split(r"\s{2,}", lines[0].strip())
    rows = []
    for line in lines[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        assert len(cells) == len(header), f"row {line!r} does not fit header {header}"
        rows.append(dict(zip(header, cells)))
    return header, rows


def bash_complete(script, words, current):
    """What remapctl's bash completion `script` offers for words[current],
    the cursor at its end."""
    q = shlex.quote
    line = " ".join(words)
    driver = (f"source {q(str(script))}\n"
              f"COMP_WORDS=({' '.join(q(w) for w in words)}); COMP_CWORD={current}\n"
              f"COMP_LINE={q(line)}; COMP_POINT={len(' '.join(words[:current + 1]))}\n"
              f"_remapctl remapctl {q(words[current])} {q(words[current - 1])}\n"
              "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    env_path = f"{REMAPCTL.parent}:{os.environ.get('PATH', '')}"
    p = run(["bash", "-c", f"PATH={q(env_path)}\n{driver}"], timeout=30)
    assert p.returncode == 0, p.stderr.decode()
    return sorted(x for x in p.stdout.decode().splitlines() if x)


def supplier_path(d, name):
    return d.state_dir / "pools" / name


def rest_pages(d, query=""):
    """Every volume of GET /v1/volumes{query}, following nextPageToken by hand."""
    volumes, token, seen = [], None, set()
    while True:
        sep = "&" if query else "?"
        path = "/v1/volumes" + query + (f"{sep}pageToken={token}" if token else "")
        page = d.get_ok(path)
        volumes += page["volumes"]
        token = page.get("nextPageToken")
        if not token:
            return volumes
        assert token not in seen, f"page token {token!r} repeats"
        seen.add(token)


# ------------------------------------------------------------------ server info

def test_version_and_health(remapd):
    d = remapd
    assert ok_json(d.ctl("version", "--json")) == d.get_ok("/v1/version")
    out = ok(d.ctl("version"))
    assert re.search(r"^remapctl:\s+\S+", out, re.M), out
    assert re.search(rf"^remapd:\s+{re.escape(d.get_ok('/v1/version')['version'])}$", out, re.M), out

    assert ok(d.ctl("health")).strip() == "ok"
    assert ok_json(d.ctl("health", "--json")) == d.get_ok("/v1/health") == {"status": "ok"}


def test_metrics_prints_prometheus_text(remapd):
    d = remapd
    d.create_volume("m1", 64 * MiB)
    out = ok(d.ctl("metrics"))
    status, headers, rest = d.api("GET", "/metrics")
    assert status == 200, rest
    assert headers.get("content-type", "").startswith("text/plain"), headers

    # Counters move between the two requests; the gauges of an idle daemon do not.
    def gauges(text):
        return sorted(line for line in text.splitlines()
                      if line.startswith(("remap_pool_", "remap_volume_")))
    assert gauges(out), f"no pool/volume gauges in:\n{out}"
    assert gauges(out) == gauges(rest)
    assert "# TYPE remap_pool_capacity_bytes gauge" in out.splitlines()
    assert f'remap_pool_capacity_bytes{{pool="default"}} {DEFAULT_POOL_SIZE}' in out.splitlines()
    assert re.search(r'^remap_volume_size_bytes\{(?=.*volume="m1")(?=.*pool="default").*\} '
                     rf'{64 * MiB}$', out, re.M), out
    # --json changes nothing: the text is not JSON.
    assert gauges(ok(d.ctl("metrics", "--json"))) == gauges(out)


# ------------------------------------------------------------------ pools

def test_pool_list_shows_provisioned_and_overcommit(remapd):
    d = remapd
    d.create_volume("big", 1 * GiB)  # twice the 512 MiB pool: thin
    header, rows = table(ok(d.ctl("pool", "list")))
    assert {"NAME", "CAPACITY", "ALLOCATED", "FREE", "PROVISIONED", "OVERCOMMIT"} <= set(header), header
    row = next(r for r in rows if r["NAME"] == "default")
    assert row["CAPACITY"] == "512 MiB", row
    assert row["PROVISIONED"] == "1.0 GiB", row
    assert row["OVERCOMMIT"] == "2.00x", row

    listed = ok_json(d.ctl("pool", "list", "--json"))
    assert listed == d.get_ok("/v1/pools")
    pool = next(p for p in listed["pools"] if p["name"] == "default")
    assert pool["provisionedBytes"] == GiB
    assert pool["overcommitRatio"] == pytest.approx(2.0)
    assert pool["volumeCount"] == 1


def test_pool_create_show_delete(remapd):
    d = remapd
    a, b = supplier_path(d, "fast-a.img"), supplier_path(d, "fast-b.img")
    created = ok_json(d.ctl("pool", "create", "fast",
                            "--file", a, "--size", "64M",
                            "--file", b, "--size", "32M",
                            "--chunk-size", "128K", "--json"))
    assert created == d.pool("fast")
    assert created["name"] == "fast"
    assert created["chunkSizeBytes"] == 128 * 1024
    assert created["capacityBytes"] == 96 * MiB
    assert created["allocatedBytes"] == 0
    assert created["provisionedBytes"] == 0 and created["volumeCount"] == 0
    assert created["overcommitRatio"] == 0
    check_space(created)
    sups = created["suppliers"]
    assert [(s["kind"], os.path.realpath(s["path"]), s["sizeBytes"]) for s in sups] == [
        ("file", os.path.realpath(a), 64 * MiB), ("file", os.path.realpath(b), 32 * MiB)], sups
    assert all(s.get("preallocated") is True for s in sups), sups
    assert a.stat().st_size == 64 * MiB and b.stat().st_size == 32 * MiB
    assert a.stat().st_blocks * 512 >= 64 * MiB, "preallocated supplier is not allocated on the host"

    # The same spec again: 200 with the existing pool, reported as such.
    out = ok(d.ctl("pool", "create", "fast", "--file", a, "--size", "64M",
                   "--file", b, "--size", "32M", "--chunk-size", "128K"))
    assert out.splitlines()[0] == "pool fast exists", out

    assert ok_json(d.ctl("pool", "show", "fast", "--json")) == d.pool("fast")
    out = ok(d.ctl("pool", "show", "fast"))
    assert re.search(r"^capacity:\s+96 MiB \(100663296 bytes\)$", out, re.M), out
    assert re.search(r"^overcommit:\s+0\.00x$", out, re.M), out
    assert str(a) in out and str(b) in out, out
    _, rows = table(ok(d.ctl("pool", "list")))
    assert sorted(r["NAME"] for r in rows) == ["default", "fast"]

    assert ok_json(d.ctl("pool", "delete", "fast", "--json")) == {"deleted": "fast"}
    assert d.api("GET", "/v1/pools/fast")[0] == 404
    assert not a.exists() and not b.exists(), "file suppliers remap created are removed"
    api_error(d.ctl("pool", "delete", "fast"), "not-found", 404)
    api_error(d.ctl("pool", "show", "fast"), "not-found", 404)


def test_pool_create_without_preallocation(remapd):
    d = remapd
    path = supplier_path(d, "thin.img")
    out = ok(d.ctl("pool", "create", "thin", "--file", path, "--size", "64M", "--no-preallocate"))
    assert out.splitlines()[0] == "pool thin created", out
    pool = d.pool("thin")
    assert pool["capacityBytes"] == 64 * MiB
    assert pool["suppliers"][0]["preallocated"] is False, pool
    assert path.stat().st_size == 64 * MiB
    assert path.stat().st_blocks * 512 < 64 * MiB, "a --no-preallocate file must be sparse"


def test_pool_add_supplier(remapd):
    d = remapd
    ok(d.ctl("pool", "create", "grow", "--file", supplier_path(d, "g1.img"), "--size", "64M"))
    grown = ok_json(d.ctl("pool", "add-supplier", "grow",
                          "--file", supplier_path(d, "g2.img"), "--size", "32M", "--json"))
    assert grown == d.pool("grow")
    assert grown["capacityBytes"] == 96 * MiB
    assert len(grown["suppliers"]) == 2
    check_space(grown)

    out = ok(d.ctl("pool", "add-supplier", "grow",
                   "--file", supplier_path(d, "g3.img"), "--size", "32M", "--no-preallocate"))
    assert out.splitlines()[0] == "pool grow grown", out
    assert d.pool("grow")["capacityBytes"] == 128 * MiB

    # The new capacity is usable at once: a volume on the pool can be created.
    ok(d.ctl("volume", "create", "gv", "--size", "100M", "--pool", "grow"))
    assert d.volume("gv")["pool"] == "grow"

    api_error(d.ctl("pool", "add-supplier", "nope", "--file", supplier_path(d, "n.img"), "--size", "64M"),
              "not-found", 404)


def test_pool_delete_with_volumes_is_in_use(remapd):
    d = remapd
    ok(d.ctl("pool", "create", "busy", "--file", supplier_path(d, "busy.img"), "--size", "64M"))
    ok(d.ctl("volume", "create", "bv", "--size", "16M", "--pool", "busy"))
    api_error(d.ctl("pool", "delete", "busy"), "in-use", 409)
    assert d.pool("busy")["volumeCount"] == 1
    ok(d.ctl("volume", "delete", "bv"))
    ok(d.ctl("pool", "delete", "busy"))


def test_pool_create_refused_by_the_daemon(remapd, tmp_path):
    d = remapd
    # Outside --supplier-dir, a relative path, a chunk size that is not a power of two.
    api_error(d.ctl("pool", "create", "x", "--file", tmp_path / "outside.img", "--size", "64M"),
              "invalid-argument", 400)
    api_error(d.ctl("pool", "create", "x", "--file", "relative.img", "--size", "64M"),
              "invalid-argument", 400)
    api_error(d.ctl("pool", "create", "x", "--file", supplier_path(d, "x.img"), "--size", "64M",
                    "--chunk-size", "3K"), "invalid-argument", 400)
    api_error(d.ctl("pool", "create", "bad@name", "--file", supplier_path(d, "y.img"), "--size", "64M"),
              "invalid-argument", 400)
    # Not a block device.
    p = d.ctl("pool", "create", "x", "--block", "/dev/null")
    assert p.returncode == 1 and ERROR_LINE.match(p.stderr.decode().strip()), p.stderr.decode()
    assert [p["name"] for p in d.get_ok("/v1/pools")["pools"]] == ["default"]

    # An existing name with another spec.
    ok(d.ctl("pool", "create", "taken", "--file", supplier_path(d, "t1.img"), "--size", "64M"))
    api_error(d.ctl("pool", "create", "taken", "--file", supplier_path(d, "t2.img"), "--size", "32M"),
              "already-exists", 409)
    assert d.pool("taken")["capacityBytes"] == 64 * MiB


@pytest.mark.parametrize("args", [
    ["pool", "create", "p"],                                             # no supplier
    ["pool", "create", "p", "--file", "/a.img"],                         # --file without --size
    ["pool", "create", "p", "--file", "/a.img", "--file", "/b.img", "--size", "1G"],
    ["pool", "create", "p", "--size", "1G"],                             # --size without --file
    ["pool", "create", "p", "--file", "/a.img", "--size", "banana"],
    ["pool", "create", "p", "--file", "/a.img", "--size", "64M", "--chunk-size", "lots"],
    ["pool", "create", "p", "--block", "/dev/x", "--no-preallocate"],
    ["pool", "add-supplier", "p"],
    ["pool", "add-supplier", "p", "--file", "/a.img", "--size", "1G", "--block", "/dev/x"],
    ["pool", "add-supplier", "p", "--block", "/dev/x", "--block", "/dev/y"],
    ["pool", "show"],
    ["pool", "delete"],
])
def test_pool_usage_errors(remapd, args):
    usage_error(remapd.ctl(*args))
    assert [p["name"] for p in remapd.get_ok("/v1/pools")["pools"]] == ["default"]


# ------------------------------------------------------------------ volumes

def test_volume_create_show_with_labels(remapd):
    d = remapd
    created = ok_json(d.ctl("volume", "create", "db1", "--size", "1G",
                            "--label", "app=db", "--label", "tier=gold", "--json"))
    assert created == d.volume("db1")
    assert created["labels"] == {"app": "db", "tier": "gold"}
    assert created["sizeBytes"] == GiB and created["pool"] == "default"

    # Identical spec again: exists, 200; a different label set is another spec.
    out = ok(d.ctl("volume", "create", "db1", "--size", "1G", "--label", "tier=gold", "--label", "app=db"))
    assert out.splitlines()[0] == "volume db1 exists", out
    api_error(d.ctl("volume", "create", "db1", "--size", "1G", "--label", "app=web"), "already-exists", 409)

    shown = ok_json(d.ctl("volume", "show", "db1", "--json"))
    assert shown == d.volume("db1")
    out = ok(d.ctl("volume", "show", "db1"))
    assert re.search(r"^labels:\s+app=db,tier=gold$", out, re.M), out
    assert re.search(r"^size:\s+1\.0 GiB \(1073741824 bytes\)$", out, re.M), out

    ok(d.ctl("volume", "create", "plain", "--size", "64M"))
    assert d.volume("plain")["labels"] == {}
    out = ok(d.ctl("volume", "show", "plain"))
    assert re.search(r"^labels:\s+none$", out, re.M), out

    header, rows = table(ok(d.ctl("volume", "list")))
    assert "LABELS" in header, header
    assert {r["NAME"]: r["LABELS"] for r in rows} == {"db1": "app=db,tier=gold", "plain": "-"}


def test_volume_create_refused_by_the_daemon(remapd):
    d = remapd
    api_error(d.ctl("volume", "create", "x", "--size", "1G", "--pool", "nope"), "not-found", 404)
    api_error(d.ctl("volume", "create", "a@b", "--size", "1G"), "invalid-argument", 400)
    api_error(d.ctl("volume", "create", "x", "--size", "1000"), "invalid-argument", 400)  # not a multiple of 512
    api_error(d.ctl("volume", "create", "x", "--size", "1G", "--label", "bad key=v"), "invalid-argument", 400)
    api_error(d.ctl("volume", "create", "x", "--size", "1G", "--label", "k=" + "v" * 257), "invalid-argument", 400)
    assert d.volumes() == []


def test_volume_list_filters(remapd):
    d = remapd
    ok(d.ctl("pool", "create", "other", "--file", supplier_path(d, "o.img"), "--size", "64M"))
    specs = [("a1", "default", {"app": "db"}), ("a2", "default", {"app": "web"}),
             ("b1", "other", {"app": "db", "tier": "x"}), ("b2", "other", {})]
    for name, pool, labels in specs:
        args = ["volume", "create", name, "--size", "16M", "--pool", pool]
        for k, v in labels.items():
            args += ["--label", f"{k}={v}"]
        ok(d.ctl(*args))

    assert ok_json(d.ctl("volume", "list", "--json")) == d.get_ok("/v1/volumes")
    for args, query, names in [
        (["--pool", "other"], "?pool=other", ["b1", "b2"]),
        (["--label", "app=db"], "?label=app%3Ddb", ["a1", "b1"]),
        (["--label", "tier"], "?label=tier", ["b1"]),
        (["--pool", "default", "--label", "app=web"], "?pool=default&label=app%3Dweb", ["a2"]),
        (["--label", "app=none"], "?label=app%3Dnone", []),
    ]:
        listed = ok_json(d.ctl("volume", "list", *args, "--json"))
        assert listed == d.get_ok("/v1/volumes" + query), args
        assert [v["name"] for v in listed["volumes"]] == names, args
        _, rows = table(ok(d.ctl("volume", "list", *args)))
        assert [r["NAME"] for r in rows] == names, args


def test_volume_list_pages(remapd):
    d = remapd
    names = [f"v{i:03d}" for i in range(105)]  # more than the server's default page of 100
    for name in names:
        d.create_volume(name, MiB)
    first = d.get_ok("/v1/volumes")
    assert len(first["volumes"]) == 100 and first.get("nextPageToken"), \
        "the server's default page is 100 volumes"

    # By default remapctl follows every page and prints one document.
    listed = ok_json(d.ctl("volume", "list", "--json"))
    assert listed == {"volumes": rest_pages(d)}
    assert [v["name"] for v in listed["volumes"]] == names
    _, rows = table(ok(d.ctl("volume", "list")))
    assert [r["NAME"] for r in rows] == names

    # --limit N --all: every page, N at a time.
    assert ok_json(d.ctl("volume", "list", "--limit", "7", "--all", "--json")) == listed

    # --limit N alone: one page, its nextPageToken as the server sent it.
    page = ok_json(d.ctl("volume", "list", "--limit", "3", "--json"))
    assert page == d.get_ok("/v1/volumes?limit=3")
    assert [v["name"] for v in page["volumes"]] == names[:3]
    token = page["nextPageToken"]
    p = d.ctl("volume", "list", "--limit", "3")
    _, rows = table(ok(p))
    assert [r["NAME"] for r in rows] == names[:3]
    assert "--page-token" in p.stderr.decode() and token in p.stderr.decode(), p.stderr.decode()

    # --page-token continues where the page ended.
    second = ok_json(d.ctl("volume", "list", "--limit", "3", "--page-token", token, "--json"))
    status, _, rest = d.api("GET", "/v1/volumes?limit=3&pageToken=" + token)
    assert status == 200 and second == rest
    assert [v["name"] for v in second["volumes"]] == names[3:6]

    # The last page has no token, and no hint.
    p = d.ctl("volume", "list", "--limit", "1000")
    assert len(table(ok(p))[1]) == 105 and p.stderr.decode() == ""


def test_volume_resize(remapd):
    d = remapd
    ok(d.ctl("volume", "create", "r", "--size", "1G"))
    grown = ok_json(d.ctl("volume", "resize", "r", "--size", "2G", "--json"))
    assert grown == d.volume("r")
    assert grown["sizeBytes"] == 2 * GiB
    out = ok(d.ctl("volume", "resize", "r", "--size", "3G"))
    assert out.splitlines()[0] == "volume r resized", out
    assert re.search(r"^size:\s+3\.0 GiB \(3221225472 bytes\)$", out, re.M), out

    # Shrinking needs --allow-shrink.
    detail = api_error(d.ctl("volume", "resize", "r", "--size", "1G"), "shrink-not-allowed", 409)
    assert "r" in detail
    assert d.volume("r")["sizeBytes"] == 3 * GiB
    shrunk = ok_json(d.ctl("volume", "resize", "r", "--size", "512M", "--allow-shrink", "--json"))
    assert shrunk == d.volume("r")
    assert shrunk["sizeBytes"] == 512 * MiB
    # Same size is not a shrink.
    assert ok_json(d.ctl("volume", "resize", "r", "--size", "512M", "--json"))["sizeBytes"] == 512 * MiB

    api_error(d.ctl("volume", "resize", "nope", "--size", "1G"), "not-found", 404)
    api_error(d.ctl("volume", "resize", "r", "--size", "1000"), "invalid-argument", 400)
    usage_error(d.ctl("volume", "resize", "r", "--size", "big"))
    usage_error(d.ctl("volume", "resize", "r"))
    assert d.volume("r")["sizeBytes"] == 512 * MiB


def test_volume_shrink_frees_written_chunks(remapd):
    d = remapd
    ok(d.ctl("volume", "create", "s", "--size", "64M"))
    h = d.nbd("s")
    h.pwrite(b"\x5a" * (1 * MiB), 0)
    h.pwrite(b"\xa5" * (1 * MiB), 48 * MiB)
    h.flush()
    d.close_handles()
    before = d.volume("s")["allocatedBytes"]
    assert before == 2 * MiB, d.volume("s")
    ok(d.ctl("volume", "resize", "s", "--size", "32M", "--allow-shrink"))
    after = d.volume("s")
    assert after["sizeBytes"] == 32 * MiB
    assert after["allocatedBytes"] == 1 * MiB, "chunks past the new end are unmapped and freed"
    assert d.pool()["allocatedBytes"] == 1 * MiB


def test_volume_label(remapd):
    d = remapd
    ok(d.ctl("volume", "create", "l", "--size", "64M", "--label", "app=db", "--label", "scratch=1"))

    labelled = ok_json(d.ctl("volume", "label", "l", "tier=gold", "app=web", "--json"))
    assert labelled == d.volume("l")
    assert labelled["labels"] == {"app": "web", "scratch": "1", "tier": "gold"}

    out = ok(d.ctl("volume", "label", "l", "--remove", "scratch", "note=a=b"))
    assert out.splitlines()[0] == "volume l labelled", out
    assert d.volume("l")["labels"] == {"app": "web", "tier": "gold", "note": "a=b"}

    # Removing a key that is not there changes nothing and is not an error.
    ok(d.ctl("volume", "label", "l", "--remove", "absent"))
    assert d.volume("l")["labels"] == {"app": "web", "tier": "gold", "note": "a=b"}

    ok(d.ctl("volume", "label", "l", "--remove", "app", "--remove", "tier", "--remove", "note"))
    assert d.volume("l")["labels"] == {}
    assert d.volume("l")["sizeBytes"] == 64 * MiB, "labelling keeps the size"

    api_error(d.ctl("volume", "label", "nope", "a=b"), "not-found", 404)
    api_error(d.ctl("volume", "label", "l", "bad key=v"), "invalid-argument", 400)
    assert d.volume("l")["labels"] == {}


@pytest.mark.parametrize("args", [
    ["volume", "label", "l"],                          # nothing to do
    ["volume", "label", "l", "novalue"],
    ["volume", "label", "l", "=v"],
    ["volume", "label", "l", "a=1", "a=2"],
    ["volume", "label", "l", "a=1", "--remove", "a"],
    ["volume", "create", "x", "--size", "1G", "--label", "a=1", "--label", "a=2"],
    ["volume", "create", "x", "--size", "1G", "--label", "novalue"],
    ["volume", "create", "x", "--size", "banana"],
    ["volume", "create", "x", "--size", "12Q"],
    ["volume", "create", "x"],
    ["volume", "list", "--limit", "0"],
    ["volume", "list", "--limit", "1001"],
    ["volume", "list", "--limit", "many"],
    ["volume", "resize", "l", "--size", "0"],
    ["volume", "frobnicate"],
    ["frobnicate"],
])
def test_volume_usage_errors(remapd, args):
    remapd.create_volume("l", 64 * MiB)
    usage_error(remapd.ctl(*args))
    assert [v["name"] for v in remapd.volumes()] == ["l"]
    assert remapd.volume("l")["labels"] == {}


def test_volume_delete(remapd):
    d = remapd
    ok(d.ctl("volume", "create", "gone", "--size", "64M"))
    ok(d.ctl("volume", "create", "kept", "--size", "64M"))
    assert ok_json(d.ctl("volume", "delete", "gone", "--json")) == {"deleted": "gone"}
    assert [v["name"] for v in d.volumes()] == ["kept"]
    assert ok(d.ctl("volume", "delete", "kept")) == "volume kept deleted\n"
    assert d.volumes() == []
    for args in (["volume", "show", "gone"], ["volume", "delete", "gone"]):
        api_error(d.ctl(*args), "not-found", 404)


def test_volume_delete_with_nbd_client_is_in_use(remapd):
    d = remapd
    ok(d.ctl("volume", "create", "busy", "--size", "64M"))
    d.nbd("busy")
    api_error(d.ctl("volume", "delete", "busy"), "in-use", 409)
    api_error(d.ctl("volume", "resize", "busy", "--size", "32M", "--allow-shrink"), "in-use", 409)
    assert d.volume("busy")["sizeBytes"] == 64 * MiB
    d.close_handles()


# ------------------------------------------------------------------ contract gaps found through remapctl
# Each was a server deviation from docs/api-v1.md, found through remapctl.

def test_file_supplier_cannot_escape_through_a_symlink(remapd, tmp_path):
    d = remapd
    outside = tmp_path / "outside"
    outside.mkdir()
    (d.state_dir / "pools" / "link").symlink_to(outside)
    p = d.ctl("pool", "create", "esc", "--file", supplier_path(d, "link") / "esc.img", "--size", "64M")
    escaped = (outside / "esc.img").exists()
    if p.returncode == 0:
        ok(d.ctl("pool", "delete", "esc"))  # removes the file it made outside
    assert not escaped, "remapd created a supplier file outside --supplier-dir"
    api_error(p, "invalid-argument", 400)


def test_label_value_limit_counts_characters(remapd):
    d = remapd
    d.create_volume("u", MiB)
    ok(d.ctl("volume", "label", "u", "snow=" + "\u2603" * 256))
    assert d.volume("u")["labels"] == {"snow": "\u2603" * 256}
    api_error(d.ctl("volume", "label", "u", "snow=" + "\u2603" * 257), "invalid-argument", 400)


def test_file_supplier_too_large_for_the_filesystem(remapd):
    d = remapd
    path = supplier_path(d, "huge.img")
    p = d.ctl("pool", "create", "huge", "--file", path, "--size", "8T")
    assert not path.exists(), "a failed supplier file must be removed"
    api_error(p, "insufficient-space", 507)


# ------------------------------------------------------------------ transport and CLI

def test_global_options_before_the_subcommand(remapd):
    d = remapd
    p = run([REMAPCTL, "--socket", d.api_sock, "--json", "pool", "create", "early",
             "--file", supplier_path(d, "early.img"), "--size", "64M"], timeout=30)
    assert ok_json(p) == d.pool("early")
    p = run([REMAPCTL, "--json", "--socket", d.api_sock, "volume", "create", "e", "--size", "64M",
             "--pool", "early", "--label", "k=v"], timeout=30)
    assert ok_json(p) == d.volume("e")
    p = run([REMAPCTL, f"--socket={d.api_sock}", "volume", "label", "e", "k=w"], timeout=30)
    ok(p)
    assert d.volume("e")["labels"] == {"k": "w"}


def test_tcp_with_token(make_remapd):
    port = free_port()
    d = make_remapd(extra_args=["--api-listen", f"127.0.0.1:{port}"])
    url = f"http://127.0.0.1:{port}"
    token_file = d.state_dir / "api.token"
    p = run([REMAPCTL, "volume", "create", "t", "--size", "64M", "--url", url,
             "--token-file", token_file, "--json"], timeout=30)
    assert ok_json(p) == d.volume("t")
    p = run([REMAPCTL, "--url", url, "--token", token_file.read_text().strip(), "pool", "list", "--json"],
            timeout=30)
    assert ok_json(p) == d.get_ok("/v1/pools")
    for auth in ([], ["--token", "wrong"]):
        api_error(run([REMAPCTL, "volume", "list", "--url", url, *auth], timeout=30), "unauthorized", 401)


def test_no_daemon_is_one_line_exit_1(make_remapd):
    d = make_remapd(start=False)
    for args in (["pool", "list"], ["metrics"], ["volume", "resize", "v", "--size", "1G"]):
        p = run([REMAPCTL, *args, "--socket", d.api_sock], timeout=30)
        assert p.returncode == 1, p
        lines = p.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith("remapctl: cannot connect"), lines


def answer_once(path, response):
    """A stand-in for remapd on a unix socket at `path`: it takes one request
    and answers it with the bytes `response`, then hangs up."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve():
        with server:
            connection, _ = server.accept()
            with connection:
                request = b""
                while b"\r\n\r\n" not in request:
                    received = connection.recv(4096)
                    if not received:
                        break
                    request += received
                connection.sendall(response)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def conflict(body, content_type="application/problem+json"):
    return (f"HTTP/1.1 409 Conflict\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


@pytest.mark.parametrize("response,code", [
    (conflict(b'{"type": "urn:remap:problem:in-use", "title": "In use", "status": 409, '
              b'"detail": "volume v has NBD clients", "code": "in-use"}'), "in-use"),
    # RFC 9457 names the problem by its type; remap's code is the type's last part.
    (conflict(b'{"type": "urn:remap:problem:shrink-not-allowed", "title": "Shrink not allowed", '
              b'"status": 409, "detail": "volume v would shrink"}'), "shrink-not-allowed"),
    # Nothing says which of remap's five 409 codes it is: none is made up.
    (conflict(b"Conflict\n", "text/plain"), "http-409"),
], ids=["code", "type-only", "no-problem"])
def test_a_409_keeps_the_servers_code(tmp_path, response, code):
    """remapctl reports the code the server sent; a 409 is not always `already-exists`."""
    sock = tmp_path / "fake.sock"
    server = answer_once(sock, response)
    p = run([REMAPCTL, "volume", "delete", "v", "--socket", sock], timeout=30)
    server.join(timeout=10)
    err = p.stderr.decode()
    assert p.returncode == 1 and p.stdout == b"", (p.returncode, p.stdout, err)
    assert len(err.splitlines()) == 1 and err.rstrip("\n").endswith(f" ({code}, HTTP 409)"), err


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_generate(shell, tmp_path):
    p = run([REMAPCTL, "--generate-completion-script", shell], timeout=30)
    script = ok(p)
    for word in ("pool", "volume", "add-supplier", "resize", "label", "metrics", "allow-shrink",
                 "no-preallocate", "chunk-size", "page-token"):
        assert word in script, f"{shell} completion lacks {word}"
    checker = shutil.which(shell)
    if checker:
        path = tmp_path / f"remapctl.{shell}"
        path.write_text(script)
        check = run([checker, "-n", path], timeout=30)
        assert check.returncode == 0, check.stderr.decode()


def test_bash_completes_names_from_the_daemon(remapd, tmp_path):
    """The bash script asks remapctl, which asks the daemon on the --socket typed so far."""
    d = remapd
    d.create_volume("alpha", MiB)
    d.create_volume("beta", MiB)
    script = tmp_path / "remapctl.bash"
    script.write_text(ok(run([REMAPCTL, "--generate-completion-script", "bash"], timeout=30)))

    def complete(words, current):
        return bash_complete(script, words, current)

    sock = str(d.api_sock)
    assert complete(["remapctl", "volume", "show", "", "--socket", sock], 3) == ["alpha", "beta"]
    assert complete(["remapctl", "volume", "resize", "a", "--socket", sock], 3) == ["alpha"]
    assert complete(["remapctl", "--socket", sock, "pool", "show", ""], 5) == ["default"]
    assert complete(["remapctl", "volume", "sh"], 2) == ["show"]
    # No daemon where the words point: nothing, and no error text in the prompt.
    assert complete(["remapctl", "volume", "show", "", "--socket", str(tmp_path / "none.sock")], 3) == []
