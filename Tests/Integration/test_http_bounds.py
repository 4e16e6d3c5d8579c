"""The REST server stays reachable under abuse (issue 11).

Slow clients (slowloris) from one address cannot hold the TCP API's
connections (`--http-max-connections-per-ip`); a request must be complete
within `--http-request-timeout` seconds however slowly its bytes trickle
in; the connections of a listener are capped (`--http-max-connections`);
event streams have their own cap (`--http-max-event-streams`, 503
`too-many-streams` beyond it); and /metrics does not grow a series per
made-up method. Long responses (event streams, snapshot content) are not
cut by the short request timeout.

All of 127.0.0.0/8 is loopback on Linux: a client socket bound to
127.0.0.2 is "another address" for the per-IP limit.
"""

import http.client
import json
import re
import socket
import time

import pytest

from harness import MiB, assert_problem, curl_api, faults, free_port, wait_until


def tcp_remapd(make_remapd, *flags, pool_size=None):
    """A daemon with the TCP API on 127.0.0.1; returns (daemon, port, token)."""
    port = free_port()
    kwargs = {"pool_size": pool_size} if pool_size else {}
    d = make_remapd(extra_args=["--api-listen", f"127.0.0.1:{port}", *flags], **kwargs)
    token = (d.state_dir / "api.token").read_text().strip()
    return d, port, token


def authorized_get(port, token, path="/v1/health", source="127.0.0.2", timeout=5):
    """GET over TCP from `source` with the token: (status, body, seconds)."""
    started = time.monotonic()
    status, _, body = curl_api(["--interface", source, "-H", f"Authorization: Bearer {token}"],
                               f"http://127.0.0.1:{port}", "GET", path, timeout=timeout)
    return status, body, time.monotonic() - started


def slow_connection(port, source="127.0.0.1", first=b"GET /v1/health HTTP/1.1\r\nHo"):
    """A connection that sends the start of a request and stops."""
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    s.sendall(first)
    return s


def closed_by_server(s, timeout):
    """Whether the server closes `s` within `timeout` seconds."""
    s.settimeout(timeout)
    try:
        while True:
            data = s.recv(4096)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except (socket.timeout, TimeoutError):
        return False


def close_all(sockets):
    for s in sockets:
        try:
            s.close()
        except OSError:
            pass


@pytest.mark.timeout(120)
def test_slowloris_from_one_address_does_not_lock_out_the_api(make_remapd):
    """300 connections from 127.0.0.1 that never finish their request: the
    ones over the per-IP limit (32 by default) are closed at once, and an
    authenticated request from 127.0.0.2 is answered promptly."""
    d, port, token = tcp_remapd(make_remapd)
    slow = [slow_connection(port) for _ in range(300)]
    try:
        status, body, seconds = authorized_get(port, token, timeout=5)
        assert status == 200 and body == {"status": "ok"}, (status, body)
        assert seconds < 2, f"the API took {seconds:.1f} s to answer while 300 slow clients were connected"
        # The connections over the limit were closed by the server.
        time.sleep(0.5)
        still_open = [s for s in slow if not closed_by_server(s, 0.01)]
        assert len(still_open) <= 32, f"{len(still_open)} slow connections from one address held"
        # The unix socket has no address: its clients are not limited per IP.
        unix = []
        for _ in range(40):
            u = socket.socket(socket.AF_UNIX)
            u.connect(str(d.api_sock))
            u.sendall(b"GET /v1/health HTTP/1.1\r\nHo")
            unix.append(u)
        time.sleep(0.3)
        assert not any(closed_by_server(u, 0.01) for u in unix), "unix clients were closed by a per-IP limit"
        status, _, body = d.api("GET", "/v1/health", timeout=5)
        assert status == 200, (status, body)
        close_all(unix)
    finally:
        close_all(slow)
    # The refusals are logged, not once per connection.
    lines = [line for line in d.last_output().splitlines() if "--http-max-connections-per-ip" in line]
    assert len(lines) == 1, lines


@pytest.mark.timeout(60)
def test_a_request_must_be_complete_within_the_request_timeout(make_remapd):
    """One header byte every 0.4 s keeps a connection busy but never
    completes the request: it is closed after --http-request-timeout
    seconds (2 here), not kept alive by the trickle."""
    d, port, token = tcp_remapd(make_remapd, "--http-request-timeout", "2")
    s = slow_connection(port, first=b"G")
    started = time.monotonic()
    closed = False
    try:
        for byte in b"ET /v1/health HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            time.sleep(0.4)
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if closed_by_server(s, 0.001):
                closed = True
                break
            if time.monotonic() - started > 8:
                break
        elapsed = time.monotonic() - started
        assert closed, f"a trickling client was still connected after {elapsed:.1f} s"
        assert 1.5 < elapsed < 4, f"closed after {elapsed:.1f} s, expected about 2"
    finally:
        s.close()
    # A kept-alive connection has the same time for its next request.
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(f"GET /v1/health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        time.sleep(0.3)
        assert s.recv(4096).startswith(b"HTTP/1.1 200"), "the first request was not answered"
        started = time.monotonic()
        assert closed_by_server(s, 5), "an idle kept-alive connection was not closed"
        assert time.monotonic() - started < 3.5
    finally:
        s.close()


@pytest.mark.timeout(60)
def test_a_slow_answer_is_not_cut_by_the_request_timeout(make_remapd):
    """The request timeout ends when the request is in, not when its answer
    is ready: a volume create whose metadata commit takes 2.5 s (request
    timeout 1 s) is answered, on a fresh connection and on a kept-alive one
    that idled most of its second. (Before, the connection was shut mid-answer
    and the client saw it closed without a response, as schemathesis did.)"""
    d, port, token = tcp_remapd(make_remapd, "--http-request-timeout", "1", "--fault-injection")
    faults(d, {"target": "metadata-commit", "error": "delay", "delayMs": 2500})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        for name in ("fresh", "kept-alive"):
            if name == "kept-alive":
                conn.request("GET", "/v1/health", headers=headers)
                response = conn.getresponse()
                response.read()
                assert response.status == 200
                time.sleep(0.7)
            started = time.monotonic()
            conn.request("POST", "/v1/volumes", headers=headers,
                         body=json.dumps({"name": name, "sizeBytes": 8 * MiB}))
            response = conn.getresponse()
            body = response.read()
            assert response.status == 201, (name, response.status, body)
            assert time.monotonic() - started > 2, "the commit was not delayed: the test shows nothing"
    finally:
        conn.close()


@pytest.mark.timeout(60)
def test_the_connection_cap_holds_and_frees_itself(make_remapd):
    """--http-max-connections 8 with 4 per IP: two addresses fill the
    server; a connection from a third is closed at once (libmicrohttpd
    refuses over its cap) until the slow ones miss their deadline (2 s),
    then it is served."""
    d, port, token = tcp_remapd(make_remapd, "--http-max-connections", "8",
                                "--http-max-connections-per-ip", "4", "--http-request-timeout", "2")
    slow = [slow_connection(port, source) for source in ("127.0.0.3", "127.0.0.4") for _ in range(4)]
    started = time.monotonic()
    try:
        time.sleep(0.2)
        assert not any(closed_by_server(s, 0.01) for s in slow), "a connection under the caps was closed"
        ninth = slow_connection(port, "127.0.0.5")
        assert closed_by_server(ninth, 1), "a ninth connection was kept over a cap of 8"
        ninth.close()

        def served():
            try:
                return authorized_get(port, token, source="127.0.0.5", timeout=2)[0] == 200
            except AssertionError:
                return False
        assert wait_until(served, timeout=6, interval=0.2), "the cap did not free itself"
        seconds = time.monotonic() - started
        assert 1.5 < seconds < 4, f"served after {seconds:.1f} s, expected about 2"
    finally:
        close_all(slow)


def open_stream(port, token, source="127.0.0.2", timeout=10):
    """An SSE follower over TCP: (connection, response)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    conn.request("GET", "/v1/events", headers={"Accept": "text/event-stream",
                                               "Authorization": f"Bearer {token}"})
    return conn, conn.getresponse()


@pytest.mark.timeout(60)
def test_event_streams_have_their_own_cap(make_remapd):
    """--http-max-event-streams 4: the fifth follower gets 503 too-many-streams
    (problem JSON, Retry-After) while other requests are served; a follower
    that leaves frees its place at once."""
    d, port, token = tcp_remapd(make_remapd, "--http-max-event-streams", "4")
    followers = []
    try:
        for index in range(4):
            conn, resp = open_stream(port, token, source=f"127.0.1.{index + 1}")
            assert resp.status == 200, (resp.status, resp.read())
            followers.append(conn)
        conn, resp = open_stream(port, token)
        body = resp.read()
        assert resp.status == 503, (resp.status, body)
        assert_problem(503, {k.lower(): v for k, v in resp.getheaders()}, json.loads(body), 503, "too-many-streams")
        assert resp.getheader("Retry-After"), resp.getheaders()
        conn.close()
        status, body, seconds = authorized_get(port, token)
        assert status == 200 and seconds < 2, (status, body, seconds)
        # The JSON form of /v1/events is not a stream: it is still answered.
        status, body, _ = authorized_get(port, token, path="/v1/events")
        assert status == 200 and "events" in body, (status, body)
        # The cap is per listener: the unix socket has its own.
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(str(d.api_sock))
        s.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200"), "the unix listener's streams were counted with TCP's"
        s.close()
        # A follower that leaves gives its place back promptly.
        followers.pop().close()

        def admitted():
            conn, resp = open_stream(port, token)
            if resp.status == 200:
                followers.append(conn)
                return True
            resp.read()
            conn.close()
            return False
        assert wait_until(admitted, timeout=3, interval=0.2), "a freed stream place was not given back"
    finally:
        for conn in followers:
            conn.close()


@pytest.mark.timeout(60)
def test_event_streams_outlive_the_request_timeout(make_remapd):
    """The request timeout bounds receiving a request, not answering it: a
    follower with no event for 4 s (request timeout 1 s) stays connected
    and gets the next event."""
    d, port, token = tcp_remapd(make_remapd, "--http-request-timeout", "1")
    d.create_volume("v", 8 * MiB)
    conn, resp = open_stream(port, token, timeout=15)
    try:
        assert resp.status == 200
        time.sleep(4)
        status, _, body = d.api("POST", "/v1/volumes/v/snapshots", body={"name": "late"})
        assert status == 201, (status, body)
        fields = {}
        while "data" not in fields:
            line = resp.readline().decode()
            assert line, "the event stream was closed"
            key, _, value = line.rstrip("\r\n").partition(":")
            if key:
                fields[key] = value.strip()
        assert fields.get("event") == "snapshot.created" and "late" in fields["data"], fields
    finally:
        conn.close()


@pytest.mark.timeout(90)
def test_slow_content_download_outlives_the_request_timeout(make_remapd):
    """A snapshot's content read at about 1 MiB/s for 4 s (request timeout
    1 s) arrives whole."""
    d, port, token = tcp_remapd(make_remapd, "--http-request-timeout", "1", pool_size="64M")
    d.create_volume("v", 4 * MiB)
    pattern = bytes(range(256)) * (4 * MiB // 256)
    h = d.nbd("v")
    h.pwrite(pattern, 0)
    h.flush()
    h.shutdown()
    status, _, body = d.api("POST", "/v1/volumes/v/snapshots", body={"name": "s"})
    assert status == 201, (status, body)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    started = time.monotonic()
    s.sendall(f"GET /v1/snapshots/v@s/content HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
              "Connection: close\r\n\r\n".encode())
    received = bytearray()
    try:
        while True:
            data = s.recv(64 * 1024)
            if not data:
                break
            received += data
            time.sleep(len(data) / MiB)
    finally:
        s.close()
    seconds = time.monotonic() - started
    head, _, content = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert content == pattern, f"{len(content)} of {len(pattern)} bytes after {seconds:.1f} s"
    assert seconds > 2.5, seconds


def test_metrics_method_label_is_bounded(rd_shared):
    """Made-up methods are counted as `other`: 300 of them add no series."""
    d = rd_shared
    for index in range(300):
        curl_api(["--unix-socket", str(d.api_sock)], "http://localhost", f"X{index}Y", "/v1/health")
    status, _, text = d.api("GET", "/metrics")
    assert status == 200
    methods = {m.group(1) for m in re.finditer(r'^remap_http_requests_total\{.*method="([^"]*)"', text, re.M)}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS",
                       "CONNECT", "TRACE", "other"}, sorted(methods)[:10]
    assert "other" in methods
