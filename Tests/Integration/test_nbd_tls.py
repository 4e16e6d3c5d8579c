"""NBD over TCP needs a credential: TLS (NBD_OPT_STARTTLS) with pre-shared
keys or X.509 certificates, or an explicit --nbd-insecure.

Driven with real clients: nbdinfo/nbdcopy (libnbd, nbds:// URIs), qemu-img
(tls-creds-psk, tls-creds-x509), libnbd's Python binding, and a hand-driven
socket for the exact replies a plain client gets. Keys come from psktool and
certificates from certtool (gnutls-bin), made fresh for each module.
"""

import hashlib
import os
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from harness import REMAPD, MiB, clean_env, free_port, run, wait_until
from test_nbd_protocol import OPT_ABORT, OPT_EXPORT_NAME, OPT_LIST, REP_ACK, Raw

import nbd  # noqa: E402  (python3-libnbd; a missing package must fail, not skip)

OPT_STARTTLS, OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY = 5, 6, 7, 8
REP_ERR_POLICY = (1 << 31) + 2
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_TLS_REQD = (1 << 31) + 5


# ------------------------------------------------------------------ credentials

@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """PSK files: `good` (user alice, as psktool writes it; also a qemu psk
    dir), `wrong` (alice with another key) and `stranger` (an unknown user)."""
    base = tmp_path_factory.mktemp("psk")
    qemu_dir = base / "qemu"
    qemu_dir.mkdir()
    good = qemu_dir / "keys.psk"
    run(["psktool", "-u", "alice", "-p", good], check=True)
    good.chmod(0o600)
    wrong = base / "wrong.psk"
    run(["psktool", "-u", "alice", "-p", wrong], check=True)
    stranger = base / "stranger.psk"
    run(["psktool", "-u", "mallory", "-p", stranger], check=True)
    assert good.read_text().split(":")[0] == "alice"
    return {"good": good, "qemu_dir": qemu_dir, "wrong": wrong, "stranger": stranger}


def certtool(*args):
    run(["certtool", *args], check=True)


def make_ca(d, name):
    d.mkdir(parents=True, exist_ok=True)
    (d / "ca.info").write_text(f"cn = {name}\nca\ncert_signing_key\nexpiration_days = 2\n")
    certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", d / "ca-key.pem")
    certtool("--generate-self-signed", "--load-privkey", d / "ca-key.pem", "--template", d / "ca.info",
             "--outfile", d / "ca-cert.pem")
    return d


def issue(ca, d, role, template):
    """`role`-key.pem and `role`-cert.pem in `d`, signed by `ca`, with ca-cert.pem beside them."""
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{role}.info").write_text(template + "expiration_days = 2\nencryption_key\nsigning_key\n")
    certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", d / f"{role}-key.pem")
    certtool("--generate-certificate", "--load-privkey", d / f"{role}-key.pem",
             "--load-ca-certificate", ca / "ca-cert.pem", "--load-ca-privkey", ca / "ca-key.pem",
             "--template", d / f"{role}.info", "--outfile", d / f"{role}-cert.pem")
    (d / f"{role}-key.pem").chmod(0o600)
    (d / "ca-cert.pem").write_bytes((ca / "ca-cert.pem").read_bytes())
    (d / f"{role}.info").unlink()
    return d


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1/localhost (the `server` dir,
    as qemu's tls-creds-x509 and nbdkit --tls-certificates want it), a client
    certificate (`client`), a client with no certificate (`anonymous`: the
    CA only) and a client certified by an impostor CA (`rogue`)."""
    base = tmp_path_factory.mktemp("pki")
    ca = make_ca(base / "ca", "remap test CA")
    # Same name as the real CA, so clients offer its certificates to the server.
    other = make_ca(base / "other-ca", "remap test CA")
    server = issue(ca, base / "server", "server",
                   "cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\n")
    client = issue(ca, base / "client", "client", "cn = backup client\ntls_www_client\n")
    rogue = issue(other, base / "rogue", "client", "cn = intruder\ntls_www_client\n")
    # The rogue trusts the real CA (it wants to talk to the real server).
    (rogue / "ca-cert.pem").write_bytes((ca / "ca-cert.pem").read_bytes())
    anonymous = base / "anonymous"
    anonymous.mkdir()
    (anonymous / "ca-cert.pem").write_bytes((ca / "ca-cert.pem").read_bytes())
    return {"server": server, "client": client, "rogue": rogue, "anonymous": anonymous}


# ------------------------------------------------------------------ daemons and clients

def tls_daemon(make_remapd, *credential_args, name="s", extra=()):
    port = free_port()
    d = make_remapd(name=name, extra_args=["--nbd-listen", f"127.0.0.1:{port}", *credential_args, *extra])
    d.port = port
    return d


def psk_uri(d, keys_file, export="", user="alice"):
    return f"nbds://{user}@127.0.0.1:{d.port}/{export}?tls-psk-file={keys_file}"


def x509_uri(d, client_dir, export=""):
    return f"nbds://127.0.0.1:{d.port}/{export}?tls-certificates={client_dir}"


def qemu_psk(d, keys, export):
    """qemu-img arguments: the tls-creds-psk object and an nbd image over it."""
    return ["--object", f"tls-creds-psk,id=tls0,endpoint=client,dir={keys['qemu_dir']},username=alice",
            "--image-opts",
            f"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={d.port},export={export},tls-creds=tls0"]


def qemu_x509(d, client_dir, export):
    return ["--object", f"tls-creds-x509,id=tls0,endpoint=client,dir={client_dir}",
            "--image-opts",
            f"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={d.port},export={export},tls-creds=tls0"]


def random_image(path, size):
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def read_back(uri, path):
    """The export's bytes through nbdcopy, as a sha256."""
    p = run(["nbdcopy", uri, path], timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tls_threads(d):
    """Threads terminating TLS in the daemon now."""
    count = 0
    for task in Path(f"/proc/{d.proc.pid}/task").iterdir():
        try:
            count += (task / "comm").read_text().strip() == "remap-tls"
        except FileNotFoundError:
            pass
    return count


def tcp_raw(d):
    return Raw(("127.0.0.1", d.port))


def refused_option(c, option, data=b""):
    c.option(option, data)
    opt, rtype, message = c.reply()
    assert opt == option
    return rtype, message.decode()


# ------------------------------------------------------------------ no credential, no TCP

def start_remapd(tmp_path, *args):
    return run([REMAPD, "--state-dir", tmp_path / "s", "--api-socket", tmp_path / "api.sock",
                "--nbd-socket", tmp_path / "nbd.sock", "--default-pool-size", "64M", *args], timeout=30)


def test_nbd_listen_without_credentials_refuses_to_start(tmp_path):
    port = free_port()
    p = start_remapd(tmp_path, "--nbd-listen", f"127.0.0.1:{port}")
    err = p.stderr.decode()
    assert p.returncode != 0, f"remapd served NBD on TCP without any credential:\n{err}"
    for hint in ("--nbd-listen", "--nbd-tls-psk", "--nbd-tls-certificates", "--nbd-insecure"):
        assert hint in err, f"the refusal must name {hint}: {err}"
    assert not (tmp_path / "api.sock").exists()


@pytest.mark.parametrize("args, says", [
    (["--nbd-insecure", "--nbd-tls-psk", "{psk}"], "--nbd-insecure"),
    (["--nbd-tls-psk", "{psk}", "--nbd-tls-certificates", "{certs}"], "not both"),
    (["--nbd-tls-verify-peer", "--nbd-tls-psk", "{psk}"], "--nbd-tls-certificates"),
    (["--nbd-tls-psk", "{psk}", "NO-LISTEN"], "--nbd-listen"),
    (["--nbd-tls-psk", "{missing}"], "cannot read"),
    (["--nbd-tls-psk", "{malformed}"], "line 2"),
    (["--nbd-tls-psk", "{short}"], "at least 16"),
    (["--nbd-tls-certificates", "{missing}"], "server-cert.pem"),
    (["--nbd-tls-certificates", "{anonymous}"], "server-cert.pem"),
])
def test_bad_tls_settings_refuse_to_start_clearly(tmp_path, keys, pki, args, says):
    (tmp_path / "malformed.psk").write_text("alice:" + "ab" * 32 + "\nbob=" + "cd" * 32 + "\n")
    (tmp_path / "short.psk").write_text("alice:abcdef\n")
    values = {"psk": keys["good"], "certs": pki["server"], "missing": tmp_path / "nope",
              "malformed": tmp_path / "malformed.psk", "short": tmp_path / "short.psk",
              "anonymous": pki["anonymous"]}
    args = [a.format(**values) for a in args]
    listen = [] if "NO-LISTEN" in args else ["--nbd-listen", f"127.0.0.1:{free_port()}"]
    p = start_remapd(tmp_path, *listen, *[a for a in args if a != "NO-LISTEN"])
    err = p.stderr.decode()
    assert p.returncode != 0, f"{args}: remapd started\n{err}"
    assert says in err, f"{args}: {err}"


def test_socket_activated_tcp_nbd_is_refused(tmp_path):
    """systemd could hand remapd a TCP socket named 'nbd': it would be served
    like the unix socket, without TLS. remapd refuses to start instead."""
    port = free_port()
    launcher = subprocess.Popen(
        ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=nbd", str(REMAPD),
         "--state-dir", str(tmp_path / "s"), "--api-socket", str(tmp_path / "api.sock"),
         "--default-pool-size", "64M"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    s = None
    try:
        # The first connection starts remapd.
        s = wait_until(lambda: _connect(port), timeout=10)
        assert s, "systemd-socket-activate did not listen"
        greeting = b""
        try:
            greeting = s.recv(18)
        except OSError:
            pass
        assert not greeting.startswith(b"NBDMAGIC"), "plain NBD served on an activated TCP socket"
        rc = launcher.wait(timeout=30)
        err = launcher.stderr.read().decode()
        assert rc != 0 and "not a unix socket" in err, (rc, err)
    finally:
        if s:
            s.close()
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


def _connect(port):
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        return None


def test_insecure_serves_plain_tcp_and_says_so_loudly(make_remapd):
    d = tls_daemon(make_remapd, "--nbd-insecure")
    d.create_volume("v", 8 * MiB)
    p = run(["nbdinfo", "--size", f"nbd://127.0.0.1:{d.port}/v"], timeout=30)
    assert p.returncode == 0 and p.stdout.decode().strip() == str(8 * MiB), p.stderr.decode()
    warnings = [line for line in d.log().splitlines() if "WARNING" in line and "WITHOUT TLS" in line]
    assert len(warnings) == 1, d.log()
    # No TLS on offer: STARTTLS is refused for policy, and the rest works plainly.
    c = tcp_raw(d)
    assert refused_option(c, OPT_STARTTLS)[0] == REP_ERR_POLICY
    c.option(OPT_LIST)
    assert c.reply()[1] != REP_ERR_TLS_REQD
    c.close()


# ------------------------------------------------------------------ pre-shared keys

@pytest.mark.parametrize("engine", ["io_uring", "threads"])
def test_psk_nbdcopy_writes_and_reads_back_over_tls(make_remapd, keys, tmp_path, engine):
    if engine == "io_uring" and os.environ.get("REMAP_ENGINE") == "threads":
        pytest.skip("the threads engine run covers this")
    d = tls_daemon(make_remapd, "--nbd-tls-psk", str(keys["good"]), extra=["--engine", engine])
    d.create_volume("v", 8 * MiB)
    assert f"nbds://127.0.0.1:{d.port}" in d.log() and "requires TLS pre-shared keys" in d.log()

    p = run(["nbdinfo", "--list", "--json", psk_uri(d, keys["good"])], timeout=30)
    assert p.returncode == 0, p.stderr.decode()
    assert '"export-name": "v"' in p.stdout.decode()

    source = tmp_path / "src.raw"
    digest = random_image(source, 8 * MiB)
    p = run(["nbdcopy", source, psk_uri(d, keys["good"], "v")], timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    assert d.volume("v")["allocatedBytes"] == 8 * MiB
    assert read_back(psk_uri(d, keys["good"], "v"), tmp_path / "back.raw") == digest
    # The unix socket stays plain: the same bytes without TLS.
    assert read_back(d.nbd_uri("v"), tmp_path / "unix.raw") == digest
    # Every tunnel ended with its connection.
    assert wait_until(lambda: tls_threads(d) == 0, timeout=10), tls_threads(d)

    # A client still connected over TLS when remapd stops: a clean stop.
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)
    h.connect_uri(psk_uri(d, keys["good"], "v"))
    assert h.pread(4096, 0) == source.read_bytes()[:4096]
    h.pwrite(b"\x5a" * 4096, 0)
    h.flush()
    d.terminate()
    del h


def test_plain_client_cannot_list_or_read_a_tls_server(make_remapd, keys):
    d = tls_daemon(make_remapd, "--nbd-tls-psk", str(keys["good"]))
    d.create_volume("secret", 4 * MiB)
    # libnbd without TLS: no list, no export, no size.
    for args in (["--list", f"nbd://127.0.0.1:{d.port}/"], ["--size", f"nbd://127.0.0.1:{d.port}/secret"]):
        p = run(["nbdinfo", *args], timeout=30)
        assert p.returncode != 0, f"plain nbdinfo {args} got: {p.stdout.decode()}"
        assert "secret" not in p.stdout.decode()

    # Every option but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD.
    c = tcp_raw(d)
    info = struct.pack(">I", 6) + b"secret" + struct.pack(">H", 0)
    for option, data in ((OPT_LIST, b""), (OPT_INFO, info), (OPT_GO, info),
                         (OPT_STRUCTURED_REPLY, b""), (0x7777, b"junk")):
        rtype, message = refused_option(c, option, data)
        assert rtype == REP_ERR_TLS_REQD, (option, hex(rtype), message)
        assert "TLS" in message
    # STARTTLS with data is invalid (and changes nothing).
    assert refused_option(c, OPT_STARTTLS, b"x")[0] == REP_ERR_INVALID
    # EXPORT_NAME cannot be answered with an error: the server hangs up.
    c.option(OPT_EXPORT_NAME, b"secret")
    assert c.closed_by_server()
    c.close()

    # ABORT is still honoured before TLS.
    c = tcp_raw(d)
    c.option(OPT_ABORT)
    try:
        assert c.reply()[:2] == (OPT_ABORT, REP_ACK)
    except EOFError:
        pass
    assert c.closed_by_server()
    c.close()

    # A client that pipelines options after STARTTLS is speaking plaintext
    # where TLS must be: dropped, nothing listed.
    c = tcp_raw(d)
    c.s.sendall(struct.pack(">QII", 0x49484156454F5054, OPT_STARTTLS, 0)
                + struct.pack(">QII", 0x49484156454F5054, OPT_LIST, 0))
    assert c.closed_by_server()
    c.close()

    # The unix socket is plain: it lists, and refuses STARTTLS for policy.
    c = Raw(d.nbd_sock)
    assert refused_option(c, OPT_STARTTLS)[0] == REP_ERR_POLICY
    c.option(OPT_LIST)
    assert c.reply()[1] != REP_ERR_TLS_REQD
    c.close()


def test_wrong_psk_or_unknown_user_fails_and_others_go_on(make_remapd, keys, tmp_path):
    d = tls_daemon(make_remapd, "--nbd-tls-psk", str(keys["good"]))
    d.create_volume("v", 4 * MiB)
    for uri in (psk_uri(d, keys["wrong"], "v"), psk_uri(d, keys["stranger"], "v", user="mallory")):
        p = run(["nbdinfo", "--size", uri], timeout=30)
        assert p.returncode != 0, f"{uri} was let in: {p.stdout.decode()}"
    assert "TLS handshake failed" in d.log()
    p = run(["nbdinfo", "--size", psk_uri(d, keys["good"], "v")], timeout=30)
    assert p.returncode == 0 and p.stdout.decode().strip() == str(4 * MiB), p.stderr.decode()
    assert wait_until(lambda: tls_threads(d) == 0, timeout=10), tls_threads(d)


def test_qemu_img_over_psk(make_remapd, keys, tmp_path):
    d = tls_daemon(make_remapd, "--nbd-tls-psk", str(keys["good"]))
    d.create_volume("vm", 6 * MiB)
    p = run(["qemu-img", "info", *qemu_psk(d, keys, "vm")], timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    assert "virtual size: 6 MiB" in p.stdout.decode(), p.stdout.decode()

    source = tmp_path / "disk.raw"
    digest = random_image(source, 6 * MiB)
    target = qemu_psk(d, keys, "vm")
    p = run(["qemu-img", "convert", "-n", "-f", "raw", source, target[0], target[1],
             "--target-image-opts", target[3]], timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    assert read_back(psk_uri(d, keys["good"], "vm"), tmp_path / "back.raw") == digest


def test_stalled_starttls_client_is_dropped_at_the_handshake_deadline(make_remapd, keys):
    """A client that gets the STARTTLS ACK and never shakes hands holds a
    TLS thread only until the handshake deadline; others are served meanwhile."""
    d = tls_daemon(make_remapd, "--nbd-tls-psk", str(keys["good"]), extra=["--nbd-handshake-timeout", "2"])
    d.create_volume("v", 4 * MiB)
    stalled = []
    for _ in range(3):
        c = tcp_raw(d)
        c.option(OPT_STARTTLS)
        assert c.reply()[:2] == (OPT_STARTTLS, REP_ACK)
        stalled.append(c)
    assert wait_until(lambda: tls_threads(d) == 3, timeout=5), tls_threads(d)
    p = run(["nbdinfo", "--size", psk_uri(d, keys["good"], "v")], timeout=30)
    assert p.returncode == 0, p.stderr.decode()
    for c in stalled:
        assert c.closed_by_server(timeout=10)
        c.close()
    assert wait_until(lambda: tls_threads(d) == 0, timeout=10), tls_threads(d)


def test_tls_clients_cannot_take_the_descriptors_kept_for_the_api(make_remapd, keys):
    """A TLS client needs three descriptors (its socket and the tunnel's
    pair), but is admitted with one: at a 256-descriptor limit, 150 clients
    admitted, then starting TLS, get their tunnels only below the
    descriptors kept for the API and files; the others are dropped, and the
    API and a new client are served."""
    port = free_port()
    d = make_remapd(start=False, extra_args=["--nbd-listen", f"127.0.0.1:{port}", "--nbd-tls-psk", str(keys["good"]),
                                             "--nbd-handshake-timeout", "60"])
    d.port = port
    command = d.command
    d.command = lambda: ["prlimit", "--nofile=256", "--", *command()]
    d.start()
    d.create_volume("v", 4 * MiB)
    clients = [tcp_raw(d) for _ in range(150)]  # all admitted: one descriptor each
    for c in clients:
        c.option(OPT_STARTTLS)
    acked = 0
    for c in clients:
        try:
            acked += c.reply()[:2] == (OPT_STARTTLS, REP_ACK)
        except (OSError, AssertionError, struct.error):
            pass
    assert acked == 150, acked  # the ACK comes before the tunnel
    assert wait_until(lambda: d.api("GET", "/v1/health", timeout=3)[0] == 200, timeout=10)
    # The last 32 stay free (a few may be the API's and files' own).
    fds = len(os.listdir(f"/proc/{d.proc.pid}/fd"))
    assert fds < 256 - 24, fds
    tunnels = tls_threads(d)
    assert 40 < tunnels < 100, tunnels  # (256 - 32) / 3 at most, less what the daemon has open
    # One line for the whole shortage, not one per client dropped.
    assert d.last_output().count("no file descriptors left for TLS connections") == 1, d.last_output()
    for c in clients[:20]:
        c.close()
    assert wait_until(lambda: run(["nbdinfo", "--size", psk_uri(d, keys["good"], "v")], timeout=30).returncode == 0,
                      timeout=20)
    for c in clients[20:]:
        c.close()


# ------------------------------------------------------------------ X.509 certificates

def test_x509_nbdinfo_nbdcopy_and_qemu_img(make_remapd, pki, tmp_path):
    d = tls_daemon(make_remapd, "--nbd-tls-certificates", str(pki["server"]))
    d.create_volume("v", 4 * MiB)
    # Without client verification remapd says clients are not authenticated.
    assert "not authenticated" in d.log()

    for who in ("client", "anonymous"):
        p = run(["nbdinfo", "--size", x509_uri(d, pki[who], "v")], timeout=30)
        assert p.returncode == 0 and p.stdout.decode().strip() == str(4 * MiB), (who, p.stderr.decode())
    p = run(["qemu-img", "info", *qemu_x509(d, pki["client"], "v")], timeout=60)
    assert p.returncode == 0 and "virtual size: 4 MiB" in p.stdout.decode(), p.stderr.decode()

    source = tmp_path / "src.raw"
    digest = random_image(source, 4 * MiB)
    target = qemu_x509(d, pki["client"], "v")
    p = run(["qemu-img", "convert", "-n", "-f", "raw", source, target[0], target[1],
             "--target-image-opts", target[3]], timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    assert read_back(x509_uri(d, pki["client"], "v"), tmp_path / "back.raw") == digest

    # A plain client gets nothing here either.
    p = run(["nbdinfo", "--list", f"nbd://127.0.0.1:{d.port}/"], timeout=30)
    assert p.returncode != 0


def test_x509_verify_peer_requires_a_client_certificate_from_the_ca(make_remapd, pki):
    d = tls_daemon(make_remapd, "--nbd-tls-certificates", str(pki["server"]), "--nbd-tls-verify-peer")
    d.create_volume("v", 4 * MiB)
    assert "not authenticated" not in d.log()
    p = run(["nbdinfo", "--size", x509_uri(d, pki["client"], "v")], timeout=30)
    assert p.returncode == 0 and p.stdout.decode().strip() == str(4 * MiB), p.stderr.decode()
    for who in ("anonymous", "rogue"):
        p = run(["nbdinfo", "--size", x509_uri(d, pki[who], "v")], timeout=30)
        assert p.returncode != 0, f"{who} client was let in: {p.stdout.decode()}"
        p = run(["qemu-img", "info", *qemu_x509(d, pki[who], "v")], timeout=60)
        assert p.returncode != 0, f"{who} qemu-img was let in: {p.stdout.decode()}"
    failures = [line for line in d.log().splitlines() if "TLS handshake failed" in line]
    assert len(failures) >= 3 and not all("Certificate is required" in line for line in failures), failures
    p = run(["qemu-img", "info", *qemu_x509(d, pki["client"], "v")], timeout=60)
    assert p.returncode == 0, p.stderr.decode()
