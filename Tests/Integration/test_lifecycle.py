"""Starting, stopping and restarting the daemon."""

import json
import os
import re
import socket
import subprocess

import pytest

from harness import GiB, MiB, REMAPD, CurlError, check_space, clean_env, curl_api, free_port, run, wait_until


def test_ready_means_both_sockets_exist(remapd):
    assert remapd.api_sock.exists()
    assert remapd.nbd_sock.exists()
    assert (remapd.state_dir / "pools" / "default.img").exists()


def test_sigterm_exits_0_and_removes_sockets(remapd):
    remapd.terminate()  # asserts exit 0 and both sockets gone
    assert (remapd.state_dir / "pools" / "default.img").exists(), "pool file must stay"


def test_sigterm_with_connected_clients(remapd):
    d = remapd
    d.create_volume("v", 8 * MiB)
    h = d.nbd("v")
    h.pwrite(b"\x33" * 4096, 0)
    h.flush()
    d.terminate()  # an idle connected client must not keep the daemon alive
    d.close_handles()
    d.start()
    assert d.nbd("v").pread(4096, 0) == b"\x33" * 4096


def _wait_exit(proc, timeout=10):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def _assert_still_serving(d):
    assert d.running, "first daemon died"
    assert d.api_sock.exists(), "first daemon's API socket was removed"
    assert d.nbd_sock.exists(), "first daemon's NBD socket was removed"
    assert d.api("GET", "/v1/health")[0] == 200
    assert [v["name"] for v in d.volumes()] == ["v"]
    p = run(["nbdinfo", "--json", d.nbd_uri("v")], timeout=30)
    assert p.returncode == 0, p.stderr.decode()
    assert json.loads(p.stdout)["exports"][0]["export-size"] == 8 * MiB


@pytest.mark.parametrize("sockets", ["same-sockets", "other-sockets"])
def test_second_daemon_on_same_state_dir_fails(make_remapd, tmp_path, sockets):
    first = make_remapd("first")
    first.create_volume("v", 8 * MiB)
    kw = {}
    if sockets == "same-sockets":
        kw = {"api_socket": first.api_sock, "nbd_socket": first.nbd_sock}
    else:
        kw = {"api_socket": tmp_path / "a2.sock", "nbd_socket": tmp_path / "n2.sock"}
    second = make_remapd("second", start=False, state_dir=first.state_dir, **kw)
    second.start(wait=False)

    rc = _wait_exit(second.proc)
    assert rc is not None, "second daemon on the same state dir is still running"
    assert rc != 0, "second daemon must fail, not exit 0"
    assert second.last_output().strip(), "second daemon must say why it fails"

    _assert_still_serving(first)
    if sockets == "other-sockets":
        assert not (tmp_path / "a2.sock").exists(), "failed daemon left its socket behind"
    # The first one still stops cleanly.
    first.terminate()


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_restart_keeps_volumes(remapd, how):
    d = remapd
    d.create_volume("a", GiB)
    d.create_volume("b", 8 * MiB)
    d.create_volume("c", 16 * MiB)
    h = d.nbd("b")
    h.pwrite(b"\x5c" * (3 * 64 * 1024), 64 * 1024)
    h.flush()
    d.close_handles()
    d.delete_volume("c")
    vols = d.volumes()
    pools = d.get_ok("/v1/pools")

    d.restart(kill9=(how == "kill9"))  # kill -9 right after the 2xx: still durable

    assert d.volumes() == vols
    assert d.get_ok("/v1/pools") == pools
    assert d.volume("b")["allocatedBytes"] == 3 * 64 * 1024
    check_space(d.pool())
    assert d.api("GET", "/v1/volumes/c")[0] == 404
    assert d.nbd("b").pread(3 * 64 * 1024, 64 * 1024) == b"\x5c" * (3 * 64 * 1024)

    # And once more, to catch state that only survives one restart.
    d.restart()
    assert d.volumes() == vols


def test_create_then_kill9_is_durable(remapd):
    d = remapd
    v = d.create_volume("quick", MiB)
    d.kill9()
    d.start()
    assert d.volume("quick") == v


@pytest.mark.parametrize("arg,size", [("1G", GiB), ("268435456", 256 * MiB), ("256M", 256 * MiB)])
def test_default_pool_size_formats(make_remapd, arg, size):
    d = make_remapd(pool_size=arg)
    pool = d.pool()
    assert pool["capacityBytes"] == size
    assert pool["freeBytes"] == size
    assert os.stat(d.state_dir / "pools" / "default.img").st_size == size


@pytest.mark.parametrize("args", [["--default-pool-size", "banana"],
                                  ["--default-pool-size", "0"],
                                  ["--nbd-max-connections", "0"],
                                  ["--nbd-reply-queue", "1M"],
                                  ["--nbd-reply-queue", "lots"],
                                  ["--http-request-timeout", "0"],
                                  ["--max-chunks-per-pool", "-1"],
                                  ["--log-level", "verbose"],
                                  ["--log-level", "trace"],
                                  ["--no-such-flag"]])
def test_bad_flags_fail_clearly(tmp_path, args):
    if not REMAPD.exists():
        pytest.fail(f"remapd binary not found at {REMAPD}")
    state = tmp_path / "s"
    cmd = [REMAPD, "--state-dir", state, "--api-socket", tmp_path / "api.sock",
           "--nbd-socket", tmp_path / "nbd.sock", *args]
    p = run(cmd, timeout=30)
    assert p.returncode != 0, f"{args}: exit 0\n{p.stderr.decode()}"
    assert p.stderr.decode().strip(), "must say what is wrong"
    assert not (tmp_path / "api.sock").exists()


def test_log_level_debug_logs_each_request_and_warning_hides_info(make_remapd):
    """Every line starts with its journal priority (<3> error … <7> debug)
    before today's "remapd: " text. --log-level debug adds one line per API
    request (method, path, status, milliseconds); the default (info) has
    none; --log-level warning leaves out the info and notice lines and keeps
    the warnings."""
    request = re.compile(r"<7>remapd: HTTP API: GET /v1/volumes/no-such 404 \d+\.\d{3} ms")
    debug = make_remapd("debug", extra_args=["--log-level", "debug"])
    debug.api("GET", "/v1/volumes/no-such")
    lines = debug.last_output().splitlines()
    assert len([line for line in lines if request.fullmatch(line)]) == 1, lines
    assert any(line.startswith("<5>remapd: serving ") for line in lines), lines
    assert any(line.startswith("<6>remapd: REST API on ") for line in lines), lines

    default = make_remapd("info")
    default.api("GET", "/v1/volumes/no-such")
    lines = default.last_output().splitlines()
    assert any(line.startswith("<6>remapd: REST API on ") for line in lines), lines
    assert not any("HTTP API: GET" in line for line in lines), lines

    port = free_port()
    quiet = make_remapd("warning", extra_args=["--log-level", "warning", "--nbd-listen", f"127.0.0.1:{port}",
                                               "--nbd-insecure"])
    quiet.api("GET", "/v1/volumes/no-such")
    quiet.terminate()
    lines = [line for line in quiet.last_output().splitlines() if line]
    assert any(line.startswith("<4>remapd: WARNING: NBD on TCP 127.0.0.1:") for line in lines), lines
    assert all(line.startswith(("<4>remapd: ", "<3>remapd: ")) for line in lines), lines


def test_state_dir_that_is_a_file_fails_clearly(tmp_path):
    if not REMAPD.exists():
        pytest.fail(f"remapd binary not found at {REMAPD}")
    f = tmp_path / "notadir"
    f.write_text("x")
    p = run([REMAPD, "--state-dir", f, "--api-socket", tmp_path / "api.sock",
             "--nbd-socket", tmp_path / "nbd.sock", "--default-pool-size", "64M"], timeout=30)
    assert p.returncode != 0
    assert p.stderr.decode().strip()


def test_tcp_listeners(make_remapd):
    api_port, nbd_port = free_port(), free_port()
    d = make_remapd(extra_args=["--api-listen", f"127.0.0.1:{api_port}",
                                "--nbd-listen", f"127.0.0.1:{nbd_port}", "--nbd-insecure"])
    d.create_volume("t", 8 * MiB)
    base = f"http://127.0.0.1:{api_port}"
    # TCP needs the bearer token from the state dir's api.token (mode 0600).
    token_file = d.state_dir / "api.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    for headers in ([], ["-H", "Authorization: Bearer wrong"], ["-H", f"Authorization: Bearer {token}x"]):
        status, hdrs, body = curl_api(headers, base, "GET", "/v1/volumes")
        assert status == 401 and body["code"] == "unauthorized", (headers, status, body)
        assert hdrs.get("content-type", "").startswith("application/problem+json")
    auth = ["-H", f"Authorization: Bearer {token}"]
    status, _, body = curl_api(auth, base, "GET", "/v1/health")
    assert status == 200 and body == {"status": "ok"}
    status, _, body = curl_api(auth, base, "GET", "/v1/volumes/t")
    assert status == 200 and body["sizeBytes"] == 8 * MiB
    # The unix socket needs no token: its permissions are the access control.
    assert oct((d.state_dir / "api.sock").stat().st_mode & 0o777) == oct(0o660)
    p = run(["nbdinfo", "--json", f"nbd://127.0.0.1:{nbd_port}/t"], timeout=30)
    assert p.returncode == 0, p.stderr.decode()
    assert json.loads(p.stdout)["exports"][0]["export-size"] == 8 * MiB
    d.terminate()
    # The TCP ports are closed after a clean stop.
    for port in (api_port, nbd_port):
        s = socket.socket()
        s.settimeout(2)
        with pytest.raises(OSError):
            s.connect(("127.0.0.1", port))
        s.close()


def test_socket_activated_tcp_api_needs_the_token(tmp_path):
    """systemd may hand remapd a TCP socket named 'api': it is served like
    --api-listen, with the bearer token, never open like the unix socket."""
    port = free_port()
    state = tmp_path / "s"
    launcher = subprocess.Popen(
        ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=api", str(REMAPD),
         "--state-dir", str(state), "--nbd-socket", str(tmp_path / "nbd.sock"), "--default-pool-size", "64M"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env())
    try:
        base = f"http://127.0.0.1:{port}"
        # The first connection starts remapd; it answers once it is up.
        def answers():
            try:
                return curl_api([], base, "GET", "/v1/health", timeout=5)
            except CurlError:
                return None
        assert wait_until(answers, timeout=30), "remapd did not answer on the activated socket"
        status, _, body = curl_api([], base, "GET", "/v1/volumes")
        assert status == 401 and body["code"] == "unauthorized", (status, body)
        token = (state / "api.token").read_text().strip()
        status, _, body = curl_api(["-H", f"Authorization: Bearer {token}"], base, "GET", "/v1/volumes")
        assert status == 200, (status, body)
    finally:
        launcher.terminate()
        try:
            launcher.wait(timeout=15)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()


def test_api_socket_group_and_mode(make_remapd):
    """--api-socket-group gives the API socket to a group; mode 0660."""
    import grp
    d = make_remapd(extra_args=["--api-socket-group", "daemon"])
    st = d.api_sock.stat()
    assert st.st_gid == grp.getgrnam("daemon").gr_gid
    assert st.st_mode & 0o777 == 0o660
    bad = make_remapd(name="bad", start=False, extra_args=["--api-socket-group", "no-such-group-remap"])
    bad.start(wait=False)
    assert bad.proc.wait(timeout=30) != 0 and "no such group" in bad.log()
