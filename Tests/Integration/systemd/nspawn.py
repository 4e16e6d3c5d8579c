"""A throwaway systemd machine for remap's systemd integration tests.

The host's own /usr is booted with `systemd-nspawn --directory=/
--volatile=yes --boot`: the container's root is an empty tmpfs and /usr is
the host's /usr bind-mounted read-only, so the init that runs is the host's
installed systemd (Debian package `systemd`; it need not be the host's PID 1)
and nothing has to be debootstrapped. Boot takes well under a second.
Nothing the container does reaches the host's /etc, /var or /run.

Files get into the container with bind mounts: the repo's unit files onto
/etc/systemd/system/ (read-only, byte for byte), the daemon binary into
/usr/local/bin, the directories of its shared libraries outside /usr (the
Swift runtime in /opt/swift) at their own paths, and a host directory as
/var/lib/remap (the default pool file is fallocated: 4 GiB on disk rather
than in the container's tmpfs, i.e. in RAM).

Commands run inside with nsenter(1) into the container's namespaces, so
`systemctl`, `journalctl` and `curl` there talk to the container's systemd
and sockets.

The host needs no systemd of its own running: nspawn runs with
--register=no --keep-unit (no machined, no bus), and the container's
readiness and leader PID are learnt from nspawn's own sd_notify messages
(NOTIFY_SOCKET pointed at a datagram socket of ours, --notify-ready=yes:
READY=1 once the container's systemd has booted BOOT_UNIT).

Used by Tests/Integration/test_systemd.py. By hand, to poke at a booted
machine with remapd installed (as root, from the repo root):

    /usr/bin/python3 Tests/Integration/systemd/nspawn.py [path/to/remapd]
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

# What the container's systemd boots: sysinit, sockets, basic; none of the
# host's multi-user services (its /etc is empty anyway).
BOOT_UNIT = "basic.target"

# The environment of commands run in the container: nothing of ours leaks in.
CONTAINER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
    "TERM": "dumb",
}

_SYSTEMD_VARS = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
                 "WATCHDOG_USEC", "WATCHDOG_PID")


class BootError(RuntimeError):
    pass


def missing_packages():
    """Debian packages whose tools this needs and that are not installed."""
    missing = []
    if shutil.which("systemd-nspawn") is None:
        missing.append("systemd-container")
    if shutil.which("nsenter") is None:
        missing.append("util-linux")
    if not any(Path(p).exists() for p in ("/usr/lib/systemd/systemd", "/lib/systemd/systemd")):
        missing.append("systemd")
    return missing


def library_dirs_outside_usr(binary):
    """Directories of binary's shared libraries (per ldd) that a container
    sharing only the host's /usr would not see, e.g. the Swift runtime in
    /opt/swift/usr/lib/swift/linux."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=30)
    dirs = []
    for line in out.stdout.splitlines():
        if "=>" not in line:
            continue
        target = line.split("=>", 1)[1].strip().split(" (", 1)[0].strip()
        if not target.startswith("/"):
            continue  # "not found": the in-container check reports it
        d = str(Path(os.path.realpath(target)).parent)
        if not d.startswith("/usr/") and d not in dirs:
            dirs.append(d)
    # One bind per top-level tree (/opt/swift/usr/lib/... -> /opt/swift):
    # RUNPATHs and dlopen()ed siblings keep working.
    tops = []
    for d in dirs:
        parts = Path(d).parts
        top = str(Path(*parts[:3])) if len(parts) >= 3 else d
        if top not in tops:
            tops.append(top)
    return tops


class Container:
    """One booted systemd under systemd-nspawn.

    binds / binds_ro: {host path: container path}; tmpfs: container paths
    that get an empty tmpfs.
    """

    def __init__(self, name, workdir, binds=None, binds_ro=None, tmpfs=(), boot_unit=BOOT_UNIT):
        self.name = name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.binds = dict(binds or {})
        self.binds_ro = dict(binds_ro or {})
        self.tmpfs = list(tmpfs)
        self.boot_unit = boot_unit
        self.log_path = self.workdir / f"{name}-console.log"
        self.proc = None
        self.leader = None
        self._notify = None
        self._notify_dir = None

    # ------------------------------------------------------------------ boot

    def command(self):
        cmd = ["systemd-nspawn", "--quiet",
               "--directory=/", "--volatile=yes",
               f"--machine={self.name}",
               "--register=no", "--keep-unit",
               "--private-network",
               "--notify-ready=yes",
               "--console=read-only"]
        for path in self.tmpfs:
            cmd.append(f"--tmpfs={path}:mode=0755")
        for host, inside in self.binds_ro.items():
            cmd.append(f"--bind-ro={host}:{inside}")
        for host, inside in self.binds.items():
            cmd.append(f"--bind={host}:{inside}")
        # Arguments after --boot go to the container's systemd, which takes
        # kernel command line options from them in a container.
        cmd += ["--boot", "--",
                f"systemd.unit={self.boot_unit}",
                "systemd.firstboot=off",   # empty /etc: no interactive wizard
                "systemd.show_status=0"]
        return cmd

    def boot(self, timeout=60.0):
        """Starts nspawn and waits until the container's systemd is up."""
        self._notify_dir = tempfile.mkdtemp(prefix="remap-nspawn-")
        notify_path = os.path.join(self._notify_dir, "notify")
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(notify_path)
        env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_VARS}
        env["NOTIFY_SOCKET"] = notify_path
        with open(self.log_path, "ab") as log:
            log.write((" ".join(self.command()) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, env=env,
                                         start_new_session=True)
        ready = False
        deadline = time.monotonic() + timeout
        while not ready:
            if self.proc.poll() is not None:
                raise BootError(f"systemd-nspawn exited with {self.proc.returncode} while booting\n"
                                f"--- console ({self.log_path}) ---\n{self.console()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise BootError(f"container did not finish booting {self.boot_unit} in {timeout:.0f}s "
                                f"(leader pid {self.leader})\n"
                                f"--- console ({self.log_path}) ---\n{self.console()}")
            self._notify.settimeout(min(left, 0.5))
            try:
                message = self._notify.recv(4096).decode("utf-8", "replace")
            except socket.timeout:
                continue
            for line in message.splitlines():
                if line.startswith("X_NSPAWN_LEADER_PID="):
                    self.leader = int(line.split("=", 1)[1])
                elif line == "READY=1":
                    ready = True
        if self.leader is None:
            raise BootError("systemd-nspawn sent READY=1 but never X_NSPAWN_LEADER_PID")
        return self

    def console(self, limit=8000):
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-limit:]

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None and self.leader is not None

    # -------------------------------------------------------------- commands

    def run(self, *cmd, check=True, timeout=30, input=None):
        """Runs cmd inside the container; returns a CompletedProcess (text)."""
        assert self.running, f"container {self.name} is not running"
        full = (["nsenter", f"--target={self.leader}",
                 "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup",
                 "--", "/usr/bin/env", "-i"]
                + [f"{k}={v}" for k, v in CONTAINER_ENV.items()]
                + [str(c) for c in cmd])
        proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"in container {self.name}: `{' '.join(map(str, cmd))}` exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def systemctl(self, *args, check=True, timeout=30):
        return self.run("systemctl", "--no-pager", "--no-ask-password", *args,
                        check=check, timeout=timeout)

    def show(self, unit, *props):
        """`systemctl show` properties of unit as a dict of strings."""
        out = self.systemctl("show", unit, *[f"--property={p}" for p in props]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args, lines=300):
        """The container's journal (text, monotonic timestamps)."""
        r = self.run("journalctl", "--no-pager", "--quiet", "-o", "short-monotonic",
                     "-n", str(lines), *args, check=False)
        return r.stdout + r.stderr

    def write(self, path, text):
        """Writes a file inside the container (e.g. a drop-in under its /etc)."""
        self.run("mkdir", "-p", str(Path(path).parent))
        self.run("sh", "-c", 'cat > "$1"', "sh", str(path), input=text)

    # -------------------------------------------------------------- teardown

    def terminate(self, timeout=15.0):
        """Shuts the container down: SIGTERM to nspawn (a clean poweroff of
        the container's systemd); if that takes longer than timeout, SIGKILL
        to the container's init (which ends every process in its PID
        namespace), then to nspawn. Safe to call twice, and on a container
        that never booted."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    with open(self.log_path, "ab") as log:
                        log.write(b"\n===== test harness: no poweroff in time; SIGKILL to the container\n")
                    if self.leader:
                        try:
                            os.kill(self.leader, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    try:
                        self.proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait(timeout=10)
        finally:
            if self._notify is not None:
                self._notify.close()
                self._notify = None
            if self._notify_dir:
                shutil.rmtree(self._notify_dir, ignore_errors=True)
                self._notify_dir = None

    def __enter__(self):
        return self.boot()

    def __exit__(self, *exc):
        self.terminate()


def remap_container(name, workdir, remapd, unit_dir):
    """A Container with remap installed the way a package would install it:
    the unit files of unit_dir (the repo's systemd/) in /etc/systemd/system,
    the binary remapd as /usr/local/bin/remapd (the units' ExecStart), and
    the libraries it links from outside /usr at their own paths. The state
    directory /var/lib/remap is workdir/state on the host."""
    workdir = Path(workdir)
    bindir = workdir / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(remapd, bindir / "remapd")
    state = workdir / "state"
    state.mkdir(exist_ok=True)
    binds_ro = {str(bindir): "/usr/local/bin"}
    for d in library_dirs_outside_usr(remapd):
        binds_ro[d] = d
    for unit in ("remapd.service", "remapd.socket"):
        binds_ro[str(Path(unit_dir) / unit)] = f"/etc/systemd/system/{unit}"
    return Container(name, workdir, binds={str(state): "/var/lib/remap"}, binds_ro=binds_ro)


if __name__ == "__main__":
    import sys
    repo = Path(__file__).resolve().parents[3]
    binary = Path(sys.argv[1] if len(sys.argv) > 1 else repo / ".build/debug/remapd").resolve()
    work = Path(tempfile.mkdtemp(prefix="remap-systemd-"))
    c = remap_container("remap-manual", work, binary, repo / "systemd")
    try:
        c.boot()
        print(f"booted (leader pid {c.leader}); the units are installed, not enabled. Enter with\n"
              f"  nsenter -t {c.leader} -m -u -i -n -p -C bash\n"
              f"console log: {c.log_path}")
        input("Enter stops the container: ")
    finally:
        c.terminate()
        shutil.rmtree(work, ignore_errors=True)
