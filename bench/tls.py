#!/usr/bin/env python3
"""What TLS costs NBD over TCP: nbdcopy through one connection, 256 MiB
written then read back, against remapd plain (--nbd-insecure) and with TLS
(pre-shared key), and nbdkit's memory plugin plain and with TLS for scale.

Prints one table: MiB/s of the transfer (wall clock, client included) and
the server's CPU seconds per GiB moved (user + system, from /proc), each the
median of --repeat runs. Data read back is compared with what was written.
Files live under --dir (tmpfs by default, so the disk does not count).
See bench/TLS.md.
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 256 << 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_port(port, proc):
    for _ in range(100):
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def measure(proc, uri, work, repeat):
    """[(write MiB/s, read MiB/s, write CPU-s/GiB, read CPU-s/GiB)] over `repeat` runs."""
    source, back = os.path.join(work, "src.raw"), os.path.join(work, "back.raw")
    runs = []
    for _ in range(repeat):
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        subprocess.run(["nbdcopy", "--connections=1", source, uri], check=True)
        c1, t1 = cpu_seconds(proc.pid), time.monotonic()
        subprocess.run(["nbdcopy", "--connections=1", uri, back], check=True)
        c2, t2 = cpu_seconds(proc.pid), time.monotonic()
        if subprocess.run(["cmp", "-s", source, back]).returncode != 0:
            raise SystemExit(f"{uri}: data read back differs")
        gib = SIZE / (1 << 30)
        runs.append((SIZE / (1 << 20) / (t1 - t0), SIZE / (1 << 20) / (t2 - t1), (c1 - c0) / gib, (c2 - c1) / gib))
    return runs


def remapd(binary, work, tls, repeat):
    state, port = os.path.join(work, "state"), free_port()
    shutil.rmtree(state, ignore_errors=True)
    keys = os.path.join(work, "keys.psk")
    security = ["--nbd-tls-psk", keys] if tls else ["--nbd-insecure"]
    proc = subprocess.Popen([binary, "--state-dir", state, "--default-pool-size", "512M",
                             "--nbd-listen", f"127.0.0.1:{port}", *security],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        subprocess.run(["curl", "-sf", "--unix-socket", os.path.join(state, "api.sock"),
                        "-H", "Content-Type: application/json", "-d", f'{{"name":"v","sizeBytes":{SIZE}}}',
                        "http://localhost/v1/volumes"], check=True, stdout=subprocess.DEVNULL)
        uri = f"nbds://alice@127.0.0.1:{port}/v?tls-psk-file={keys}" if tls else f"nbd://127.0.0.1:{port}/v"
        return measure(proc, uri, work, repeat)
    finally:
        proc.terminate()
        proc.wait()


def nbdkit(work, tls, repeat):
    port, keys = free_port(), os.path.join(work, "keys.psk")
    security = ["--tls=require", f"--tls-psk={keys}"] if tls else []
    proc = subprocess.Popen(["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), *security, "memory", str(SIZE)])
    try:
        wait_for_port(port, proc)
        uri = f"nbds://alice@127.0.0.1:{port}/?tls-psk-file={keys}" if tls else f"nbd://127.0.0.1:{port}/"
        return measure(proc, uri, work, repeat)
    finally:
        proc.terminate()
        proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--remapd", default=os.path.join(REPO, ".build/release/remapd"))
    parser.add_argument("--dir", default="/dev/shm")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="remap-tls-bench-", dir=args.dir)
    try:
        subprocess.run(["psktool", "-u", "alice", "-p", os.path.join(work, "keys.psk")],
                       check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(work, "src.raw"), "wb") as f:
            f.write(os.urandom(SIZE))
        rows = [("remapd, plain TCP", remapd(args.remapd, work, False, args.repeat)),
                ("remapd, TLS (PSK)", remapd(args.remapd, work, True, args.repeat)),
                ("nbdkit memory, plain TCP", nbdkit(work, False, args.repeat)),
                ("nbdkit memory, TLS (PSK)", nbdkit(work, True, args.repeat))]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"nbdcopy --connections=1, {SIZE >> 20} MiB, median of {args.repeat}; server CPU s per GiB moved\n")
    print("| server | write MiB/s | read MiB/s | write CPU s/GiB | read CPU s/GiB |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in rows:
        columns = [statistics.median(run[i] for run in runs) for i in range(4)]
        print(f"| {name} | {columns[0]:.0f} | {columns[1]:.0f} | {columns[2]:.2f} | {columns[3]:.2f} |")


if __name__ == "__main__":
    main()
