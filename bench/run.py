#!/usr/bin/env python3
"""remap benchmark: fio over NBD (unix socket) against remapd and its peers.

Workloads (fio, one job, one NBD connection):
  4k randread QD32, 4k randwrite QD32, 1M sequential read QD8,
  1M sequential write QD8, and 4k randwrite QD32 where every write
  allocates (one write per fresh 64 KiB chunk, random order).

Targets, all on files in one directory on a real filesystem:
  remap, overwrite       volume prefilled, then measured
  remap, first writes    a fresh volume for every write job
  nbdkit file            nbdkit -U SOCK file FILE (prefilled raw file)
  qemu-nbd raw           qemu-nbd -f raw --cache=none --aio=io_uring (same file)
  qemu-nbd qcow2         a fresh qcow2 for every write job (first writes)
  fio io_uring direct    fio --ioengine=io_uring --direct=1 on the raw file (the limit)

Prints one table (IOPS for 4k, MiB/s for 1M, each with its ratio to remap)
and writes it with the machine's description to bench/RESULTS.md.
Every server is stopped and every file removed at the end, also on error
or Ctrl-C.  See bench/README.md.
"""

import argparse
import datetime
import hashlib
import http.client
import json
import os
import random
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
CHUNK = 64 * 1024  # remap's default chunk size and qcow2's default cluster size

# name, fio rw, block size, queue depth, unit shown
WORKLOADS = [
    ("randread", "randread", "4k", 32, "IOPS"),
    ("randwrite", "randwrite", "4k", 32, "IOPS"),
    ("read", "read", "1M", 8, "MiB/s"),
    ("write", "write", "1M", 8, "MiB/s"),
    ("alloc", "randwrite", "4k", 32, "IOPS"),  # replayed: one write per fresh chunk
]
HEADINGS = {
    "randread": ("4k randread", "QD32 IOPS"),
    "randwrite": ("4k randwrite", "QD32 IOPS"),
    "read": ("1M seq read", "QD8 MiB/s"),
    "write": ("1M seq write", "QD8 MiB/s"),
    "alloc": ("4k write/fresh chunk", "QD32 IOPS"),
}
WRITES = ("randwrite", "write", "alloc")

# Rows of the table: key, label, reference row for the ratio column.
TARGETS = [
    ("remap", "remap, overwrite", "remap"),
    ("remap-first", "remap, first writes", "remap"),
    ("nbdkit", "nbdkit file", "remap"),
    ("qemu-raw", "qemu-nbd raw", "remap"),
    ("qemu-qcow2", "qemu-nbd qcow2, first writes", "remap-first"),
    ("direct", "fio io_uring direct (limit)", "remap"),
    ("buffered", "fio io_uring buffered", "remap"),  # optional: --targets ...,buffered
]
DEFAULT_TARGETS = ["remap", "remap-first", "nbdkit", "qemu-raw", "qemu-qcow2", "direct"]
# Which workloads each target runs.
TARGET_WORKLOADS = {
    "remap": ["randread", "randwrite", "read", "write"],
    "remap-first": ["randwrite", "write", "alloc"],
    "nbdkit": ["randread", "randwrite", "read", "write"],
    "qemu-raw": ["randread", "randwrite", "read", "write"],
    "qemu-qcow2": ["randwrite", "write", "alloc"],
    "direct": ["randread", "randwrite", "read", "write"],
    "buffered": ["randread", "randwrite", "read", "write"],
}


class BenchError(Exception):
    pass


class Interrupted(BaseException):
    pass


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_size(text):
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    factor = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    return int(text.rstrip("KMGT")) * factor


def human_size(n):
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def remove(path):
    """Unlinks a bench file; says so when the filesystem takes long (e.g. mounted with 'discard')."""
    started = time.monotonic()
    os.unlink(path)
    if time.monotonic() - started > 2:
        log(f"removing {os.path.basename(path)} took {time.monotonic() - started:.1f} s")


def fresh_socket(directory, name):
    """A socket path with no stale socket file left by an earlier server."""
    path = os.path.join(directory, name)
    if os.path.lexists(path):
        os.unlink(path)
    return path


def run(argv, **kwargs):
    return subprocess.run(argv, check=True, text=True, **kwargs)


def output(argv):
    try:
        return subprocess.run(argv, check=True, text=True, capture_output=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as error:
        return f"unknown ({error})"


# --------------------------------------------------------------------------
# Servers: every process we start is registered and stopped in `finally`.

class Server:
    live = []

    def __init__(self, name, argv, logpath):
        self.name = name
        self.argv = argv
        self.logpath = logpath
        self.logfile = open(logpath, "w")
        log(f"starting {name}: {shlex.join(argv)}")
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logfile,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        Server.live.append(self)

    @property
    def pid(self):
        return self.process.pid

    def check_alive(self):
        if self.process.poll() is not None:
            raise BenchError(f"{self.name} exited with status {self.process.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines=30):
        try:
            with open(self.logpath) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self):
        if self in Server.live:
            Server.live.remove(self)
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {self.pid}) ignored SIGTERM for 30 s; killing it")
                self.process.kill()
                self.process.wait()
        self.logfile.close()
        if time.monotonic() - started > 2:
            log(f"{self.name} took {time.monotonic() - started:.1f} s to stop")
        return self.process.returncode

    @classmethod
    def stop_all(cls):
        for server in list(reversed(cls.live)):
            try:
                server.stop()
            except Exception as error:  # keep stopping the others
                log(f"stopping {server.name}: {error}")


def wait_for_nbd(server, uri, expected_size, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        server.check_alive()
        probe = subprocess.run(["nbdinfo", "--size", uri], text=True, capture_output=True)
        if probe.returncode == 0:
            size = int(probe.stdout.strip())
            if size != expected_size:
                raise BenchError(f"{server.name}: export size {size}, expected {expected_size}")
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{server.name} did not serve {uri} within {timeout} s: {probe.stderr.strip()}\n{server.log_tail()}")
        time.sleep(0.1)


# --------------------------------------------------------------------------
# remapd's REST API over its unix socket.

class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Remapd:
    def __init__(self, binary, workdir, pool_size):
        self.state = os.path.join(workdir, "remap-state")
        self.api = os.path.join(self.state, "api.sock")
        self.nbd = os.path.join(self.state, "nbd.sock")
        self.pool_file = os.path.join(self.state, "pools", "default.img")
        self.server = Server("remapd", [binary, "--state-dir", self.state, "--default-pool-size", str(pool_size)],
                             os.path.join(workdir, "remapd.log"))
        deadline = time.monotonic() + 120  # the pool file is allocated on first start
        while True:
            self.server.check_alive()
            if os.path.exists(self.api) and os.path.exists(self.nbd):
                try:
                    if self.request("GET", "/v1/health")[0] == 200:
                        break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise BenchError(f"remapd did not come up:\n{self.server.log_tail()}")
            time.sleep(0.1)
        self.version = self.request("GET", "/v1/version")[1]

    def request(self, method, path, body=None):
        connection = UnixHTTPConnection(self.api)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            return response.status, (json.loads(data) if data else None)
        finally:
            connection.close()

    def uri(self, name):
        return f"nbd+unix:///{name}?socket={self.nbd}"

    def create_volume(self, name, size):
        status, body = self.request("POST", "/v1/volumes", {"name": name, "sizeBytes": size})
        if status != 201:
            raise BenchError(f"remapd: creating volume {name}: HTTP {status} {body}")

    def volume(self, name):
        status, body = self.request("GET", f"/v1/volumes/{name}")
        if status != 200:
            raise BenchError(f"remapd: GET volume {name}: HTTP {status} {body}")
        return body

    def delete_volume(self, name):
        deadline = time.monotonic() + 30
        while True:
            self.server.check_alive()
            status, body = self.request("DELETE", f"/v1/volumes/{name}")
            if status in (204, 404):
                return
            if status == 409 and time.monotonic() < deadline:  # the NBD client is still leaving
                time.sleep(0.1)
                continue
            raise BenchError(f"remapd: deleting volume {name}: HTTP {status} {body}")

    def stop(self):
        code = self.server.stop()
        if code not in (0, -signal.SIGTERM):
            raise BenchError(f"remapd exited with status {code} on SIGTERM:\n{self.server.log_tail()}")


# --------------------------------------------------------------------------
# fio

class Bench:
    def __init__(self, args, workdir):
        self.args = args
        self.workdir = workdir
        self.size = args.size
        self.alloc_size = args.alloc_size
        self.results = {}       # (target, workload) -> list of result dicts
        self.commands = {}      # (target, workload) -> fio command line
        self.notes = []
        self.remapd = None
        self.perf_reports = []
        self.version = None
        self.warm_command = None

    # ---- helpers

    def drop_cache(self, path):
        """Writes back and drops the page cache of one file (not the whole machine's)."""
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    def alloc_iolog(self):
        """A fio replay log: one 4k write into every 64 KiB chunk of the
        region, chunks in random order, at a random 4k offset inside each."""
        path = os.path.join(self.workdir, "alloc.iolog")
        if not os.path.exists(path):
            rng = random.Random(2018)
            chunks = list(range(self.alloc_size // CHUNK))
            rng.shuffle(chunks)
            with open(path, "w") as f:
                f.write("fio version 2 iolog\nalloc.0.0 add\nalloc.0.0 open\n")
                for c in chunks:
                    f.write(f"alloc.0.0 write {c * CHUNK + rng.randrange(CHUNK // 4096) * 4096} 4096\n")
                f.write("alloc.0.0 close\n")
        return path

    def fio_argv(self, workload, engine_args, fresh, json_path):
        _, rw, bs, qd, _ = next(w for w in WORKLOADS if w[0] == workload)
        argv = ["fio", f"--name={workload}"] + engine_args + [f"--iodepth={qd}"]
        if workload == "alloc":
            # Replay: every write is the first into its chunk; ends when all are written.
            argv += [f"--size={self.alloc_size}", f"--read_iolog={self.alloc_iolog()}", "--replay_no_stall=1"]
        else:
            argv += [f"--rw={rw}", f"--bs={bs}", f"--size={self.size}", f"--runtime={self.args.runtime}"]
            if not fresh:
                argv += ["--time_based"]
            # fresh: not time based, so no block is written twice (fio's random
            # map); the job ends when the region is covered or at the runtime.
        if workload in WRITES:
            argv += ["--end_fsync=1"]  # the final FLUSH/fsync is inside the measured time
        argv += ["--output-format=json", f"--output={json_path}"]
        return argv

    def fio(self, target, workload, engine_args, fresh=False, cache_files=(), server=None):
        policy = self.args.cache
        if policy == "mixed":
            policy = "cold" if workload in WRITES else "warm"
        if policy == "cold":
            for path in cache_files:
                self.drop_cache(path)
        elif not fresh:
            # warm: one unmeasured sequential read pass over the region through
            # the same server, so buffered servers start with it in page cache.
            warm = ["fio", "--name=warm"] + engine_args + ["--rw=read", "--bs=1M", "--iodepth=8", f"--size={self.size}"]
            self.warm_command = shlex.join(warm)
            subprocess.run(warm, check=True, stdout=subprocess.DEVNULL, timeout=600)
        json_path = os.path.join(self.workdir, f"{target}-{workload}.json")
        argv = self.fio_argv(workload, engine_args, fresh, json_path)
        self.commands[(target, workload)] = shlex.join(argv)
        log(f"{target:12} {workload:9} {shlex.join(argv)}")
        perf = self.start_perf(target, workload, server)
        cpu_before = process_cpu_seconds(server.pid) if server else None
        busy_before, children_before, started = machine_busy_seconds(), children_cpu_seconds(), time.monotonic()
        limit = self.args.runtime + 180
        try:
            completed = subprocess.run(argv, text=True, capture_output=True, timeout=limit)
            elapsed = time.monotonic() - started
            fio_cpu = children_cpu_seconds() - children_before
            busy = machine_busy_seconds() - busy_before
            cpu_used = process_cpu_seconds(server.pid) - cpu_before if server else 0.0
        except subprocess.TimeoutExpired:
            raise BenchError(f"fio {target} {workload} did not finish within {limit} s (server hung?)")
        finally:
            self.finish_perf(perf)
        if server is not None:
            server.check_alive()
        # CPU the rest of the machine used meanwhile (other processes, kernel
        # threads such as writeback, and steal), as a share of all CPUs.
        others = max(0.0, busy - fio_cpu - cpu_used) / (elapsed * os.cpu_count())
        if completed.returncode != 0:
            raise BenchError(f"fio {target} {workload} failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}")
        with open(json_path) as f:
            text = f.read()
        job = json.loads(text[text.index("{"):])["jobs"][0]  # the nbd engine prints a line before the JSON
        if job["error"]:
            raise BenchError(f"fio {target} {workload}: error {job['error']}")
        stats = job["write"] if workload in WRITES else job["read"]
        result = {
            "iops": stats["iops"],
            "mibs": stats["bw_bytes"] / (1 << 20),
            "ios": stats["total_ios"],
            "runtime_ms": stats["runtime"],
            "bytes": stats["io_bytes"],
            "server_cpu_s": cpu_used if server is not None else None,
            "fio_cpu_s": fio_cpu,
            "others": others,
        }
        if result["ios"] == 0:
            raise BenchError(f"fio {target} {workload} did no I/O")
        self.results.setdefault((target, workload), []).append(result)
        unit = next(w[4] for w in WORKLOADS if w[0] == workload)
        shown = f"{result['iops']:,.0f} IOPS" if unit == "IOPS" else f"{result['mibs']:,.0f} MiB/s"
        log(f"{target:12} {workload:9} {shown} ({result['ios']} I/Os in {result['runtime_ms']} ms; "
            f"rest of the machine busy {100 * others:.0f}%)")
        return result

    def start_perf(self, target, workload, server):
        if not self.args.perf or server is None or not target.startswith("remap"):
            return None
        os.makedirs(self.args.perf, exist_ok=True)
        data = os.path.join(self.args.perf, f"{target}-{workload}.perf.data")
        seconds = max(1, min(self.args.runtime - 2, 8))
        argv = ["perf", "record", "-q", "-g", "-F", "999", "-p", str(server.pid), "-o", data, "--", "sleep", str(seconds)]
        return (subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), data)

    def finish_perf(self, perf):
        if perf is None:
            return
        process, data = perf
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        report = data.removesuffix(".perf.data") + ".txt"
        with open(report, "w") as f:
            subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none",
                            "--percent-limit", "0.5", "--sort", "dso,symbol"], stdout=f, stderr=subprocess.DEVNULL)
        self.perf_reports.append(report)

    # ---- phases; each removes its files before the next starts (disk budget)

    def phase_raw(self):
        """fio direct, nbdkit and qemu-nbd raw on one prefilled raw file."""
        if not {"direct", "buffered", "nbdkit", "qemu-raw"} & set(self.args.targets):
            return
        raw = os.path.join(self.workdir, "raw.img")
        try:
            run(["fallocate", "-l", str(self.size), raw])
            log(f"prefilling {raw}")
            run(["fio", "--name=prefill", f"--filename={raw}", "--ioengine=io_uring", "--direct=1", "--rw=write",
                 "--bs=1M", "--iodepth=8", f"--size={self.size}", "--end_fsync=1"], stdout=subprocess.DEVNULL)
            if "direct" in self.args.targets:
                for workload in TARGET_WORKLOADS["direct"]:
                    self.repeat(lambda w=workload: self.fio(
                        "direct", w, ["--ioengine=io_uring", "--direct=1", f"--filename={raw}"], cache_files=[raw]))
            if "buffered" in self.args.targets:
                for workload in TARGET_WORKLOADS["buffered"]:
                    self.repeat(lambda w=workload: self.fio(
                        "buffered", w, ["--ioengine=io_uring", "--direct=0", "--invalidate=0", f"--filename={raw}"], cache_files=[raw]))
            if "nbdkit" in self.args.targets:
                sock = fresh_socket(self.workdir, "nbdkit.sock")
                server = Server("nbdkit", ["nbdkit", "-f", "-U", sock, "file", raw],
                                os.path.join(self.workdir, "nbdkit.log"))
                uri = f"nbd+unix:///bench?socket={sock}"
                wait_for_nbd(server, uri, self.size)
                for workload in TARGET_WORKLOADS["nbdkit"]:
                    self.repeat(lambda w=workload: self.fio(
                        "nbdkit", w, ["--ioengine=nbd", f"--uri={uri}"], cache_files=[raw], server=server))
                server.stop()
            if "qemu-raw" in self.args.targets:
                sock = fresh_socket(self.workdir, "qemu-raw.sock")
                server = Server("qemu-nbd raw", ["qemu-nbd", "-k", sock, "-f", "raw", "--cache=none", "--aio=io_uring",
                                                 "-x", "bench", "-t", raw], os.path.join(self.workdir, "qemu-raw.log"))
                uri = f"nbd+unix:///bench?socket={sock}"
                wait_for_nbd(server, uri, self.size)
                for workload in TARGET_WORKLOADS["qemu-raw"]:
                    self.repeat(lambda w=workload: self.fio(
                        "qemu-raw", w, ["--ioengine=nbd", f"--uri={uri}"], cache_files=[raw], server=server))
                server.stop()
        finally:
            if os.path.exists(raw):
                remove(raw)

    def phase_qcow2(self):
        """qemu-nbd on a fresh qcow2 image for every write job."""
        if "qemu-qcow2" not in self.args.targets:
            return
        image = os.path.join(self.workdir, "fresh.qcow2")
        sock = os.path.join(self.workdir, "qemu-qcow2.sock")
        uri = f"nbd+unix:///bench?socket={sock}"

        def once(workload):
            size = self.alloc_size if workload == "alloc" else self.size
            run(["qemu-img", "create", "-q", "-f", "qcow2", image, str(size)])
            fresh_socket(self.workdir, "qemu-qcow2.sock")
            server = Server("qemu-nbd qcow2", ["qemu-nbd", "-k", sock, "-f", "qcow2", "--cache=none", "--aio=io_uring",
                                               "-x", "bench", "-t", image], os.path.join(self.workdir, "qemu-qcow2.log"))
            try:
                wait_for_nbd(server, uri, size)
                self.fio("qemu-qcow2", workload, ["--ioengine=nbd", f"--uri={uri}"], fresh=True, server=server)
            finally:
                server.stop()
                remove(image)

        for workload in TARGET_WORKLOADS["qemu-qcow2"]:
            self.repeat(lambda w=workload: once(w))

    def phase_remap(self):
        if not {"remap", "remap-first"} & set(self.args.targets):
            return
        self.remapd = remapd = Remapd(self.args.remapd, self.workdir, self.args.pool_size)
        self.version = remapd.version
        try:
            self.check_remap_data(remapd)
            name = "bench"
            uri = remapd.uri(name)
            if "remap" in self.args.targets:
                remapd.create_volume(name, self.size)
                log("prefilling the remap volume (overwrite runs)")
                run(["fio", "--name=prefill", "--ioengine=nbd", f"--uri={uri}", "--rw=write", "--bs=1M", "--iodepth=8",
                     f"--size={self.size}", "--end_fsync=1"], stdout=subprocess.DEVNULL)
                allocated = remapd.volume(name)["allocatedBytes"]
                if allocated != self.size:
                    raise BenchError(f"remap volume after prefill: allocatedBytes {allocated}, expected {self.size}")
                for workload in TARGET_WORKLOADS["remap"]:
                    self.repeat(lambda w=workload: self.fio(
                        "remap", w, ["--ioengine=nbd", f"--uri={uri}"], cache_files=[remapd.pool_file],
                        server=remapd.server))
                remapd.delete_volume(name)
            if "remap-first" in self.args.targets:
                def once(workload):
                    size = self.alloc_size if workload == "alloc" else self.size
                    remapd.create_volume(name, size)
                    result = self.fio("remap-first", workload, ["--ioengine=nbd", f"--uri={uri}"], fresh=True,
                                      cache_files=[remapd.pool_file], server=remapd.server)
                    allocated = remapd.volume(name)["allocatedBytes"]
                    result["allocating_writes"] = min(result["ios"], allocated // CHUNK)
                    remapd.delete_volume(name)

                for workload in TARGET_WORKLOADS["remap-first"]:
                    self.repeat(lambda w=workload: once(w))
        finally:
            self.remapd = None
            try:
                remapd.stop()
            finally:
                shutil.rmtree(remapd.state, ignore_errors=True)  # the pool file: free the disk for the next phase

    def check_remap_data(self, remapd):
        """Not measured: fio writes mixed-size random data and reads it back."""
        if self.args.no_verify:
            return
        size = min(self.size, 512 << 20)
        remapd.create_volume("verify", size)
        argv = ["fio", "--name=verify", "--ioengine=nbd", f"--uri={remapd.uri('verify')}", "--rw=randwrite",
                "--bsrange=4k-1M", "--iodepth=32", f"--size={size}", "--verify=crc32c", "--do_verify=1",
                "--verify_fatal=1", "--end_fsync=1"]
        log(f"checking remap's data: {shlex.join(argv)}")
        completed = subprocess.run(argv, text=True, capture_output=True, timeout=300)
        remapd.server.check_alive()
        if completed.returncode != 0:
            raise BenchError(f"remap returned wrong data or failed:\n{completed.stdout}\n{completed.stderr}")
        remapd.delete_volume("verify")
        if not any(note.startswith("Data check") for note in self.notes):
            self.notes.append(f"Data check before measuring: `{shlex.join(argv)}` passed in every round (crc32c of every block read back).")

    def repeat(self, once):
        once()  # repetitions are whole rounds, see main()

    # ---- results

    def best_run(self, target, workload):
        runs = self.results.get((target, workload))
        if not runs:
            return None
        return max(runs, key=lambda r: r[metric(workload)])

    def best(self, target, workload):
        run = self.best_run(target, workload)
        return run[metric(workload)] if run else None


CACHE_POLICY = {
    "mixed": "Read jobs are preceded by one unmeasured sequential read pass over the region through the same server, "
             "so buffered servers read from page cache (their steady state: the region fits in RAM many times); "
             "write jobs start with the file's page cache written back and dropped (see bench/README.md for why: "
             "random 4k buffered writes into a cache filled by sequential reads (large folios) run several times "
             "slower on this kernel, for any buffered server).",
    "warm": "Every job except first-write ones is preceded by one unmeasured sequential read pass over the region "
            "through the same server, so buffered servers start with the region in page cache.",
    "cold": "Every job starts with the file's page cache written back and dropped; buffered servers warm it during "
            "the job.",
}


def metric(workload):
    unit = next(w[4] for w in WORKLOADS if w[0] == workload)
    return "iops" if unit == "IOPS" else "mibs"


def machine_busy_seconds():
    """CPU time all CPUs spent not idle (steal included), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid):
    """User + system CPU time of a process and all its threads (io_uring workers included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_rows(bench):
    workloads = [w[0] for w in WORKLOADS]
    rows = []
    for key, label, _ in TARGETS:
        if key not in DEFAULT_TARGETS and not any(k[0] == key for k in bench.results):
            continue
        cells = []
        for workload in workloads:
            run = bench.best_run(key, workload)
            if run is None or run["server_cpu_s"] is None:
                cells.append("-")
            else:
                cells.append(f"{1e6 * run['server_cpu_s'] / run['ios']:.1f}")
        rows.append((label, cells))
    return workloads, rows


def cpu_text_table(bench):
    workloads, rows = cpu_rows(bench)
    label_width = max(len(label) for label, _ in rows) + 2
    lines = ["server CPU time per I/O (µs; user+system of the server process, all threads)",
             " " * label_width + "".join(f"{HEADINGS[w][0]:>22}" for w in workloads)]
    for label, cells in rows:
        lines.append(f"{label:<{label_width}}" + "".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


def others_rows(bench):
    workloads = [w[0] for w in WORKLOADS]
    rows = []
    for key, label, _ in TARGETS:
        if key not in DEFAULT_TARGETS and not any(k[0] == key for k in bench.results):
            continue
        cells = []
        for workload in workloads:
            run = bench.best_run(key, workload)
            cells.append("-" if run is None else f"{100 * run['others']:.0f}%")
        rows.append((label, cells))
    return workloads, rows


def others_markdown_table(bench):
    workloads, rows = others_rows(bench)
    head = "| target | " + " | ".join(HEADINGS[w][0] for w in workloads) + " |"
    rule = "|---|" + "---:|" * len(workloads)
    return "\n".join([head, rule] + ["| " + label + " | " + " | ".join(cells) + " |" for label, cells in rows])


def cpu_markdown_table(bench):
    workloads, rows = cpu_rows(bench)
    head = "| target | " + " | ".join(HEADINGS[w][0] for w in workloads) + " |"
    rule = "|---|" + "---:|" * len(workloads)
    return "\n".join([head, rule] + ["| " + label + " | " + " | ".join(cells) + " |" for label, cells in rows])


def format_value(value):
    if value is None:
        return "-"
    if value >= 10000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}"


def table_rows(bench):
    workloads = [w[0] for w in WORKLOADS]
    rows = []
    for key, label, reference in TARGETS:
        if key not in DEFAULT_TARGETS and not any(k[0] == key for k in bench.results):
            continue
        cells = []
        for workload in workloads:
            value = bench.best(key, workload)
            # The fresh-chunk column exists only for first-write rows.
            ref_key = "remap-first" if workload == "alloc" else reference
            ref = bench.best(ref_key, workload)
            if value is None:
                cells.append(("-", ""))
            elif ref_key == key or ref is None:
                cells.append((format_value(value), ""))
            else:
                cells.append((format_value(value), f"{value / ref:.2f}x"))
        rows.append((label, cells))
    return workloads, rows


def text_table(bench):
    workloads, rows = table_rows(bench)
    label_width = max(len(label) for label, _ in rows) + 2
    col = 22
    lines = [" " * label_width + "".join(f"{HEADINGS[w][0]:<{col}}" for w in workloads),
             " " * label_width + "".join(f"{HEADINGS[w][1] + '  ratio':<{col}}" for w in workloads)]
    for label, cells in rows:
        lines.append(f"{label:<{label_width}}" + "".join(f"{v:>8} {r:>6}{'':<{col - 15}}" for v, r in cells))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(bench):
    workloads, rows = table_rows(bench)
    head = "| target | " + " | ".join(f"{HEADINGS[w][0]} {HEADINGS[w][1]} | ratio" for w in workloads) + " |"
    rule = "|---|" + "---:|---:|" * len(workloads)
    body = ["| " + label + " | " + " | ".join(f"{v} | {r}" for v, r in cells) + " |" for label, cells in rows]
    return "\n".join([head, rule] + body)


def target_checks(bench):
    b = bench.best
    checks = []

    def check(text, value, bound, factor=1.0, strict=False):
        if value is None or bound is None:
            checks.append(f"- [ ] {text}: not measured")
            return
        ok = value > factor * bound if strict else value >= factor * bound
        checks.append(f"- [{'x' if ok else ' '}] {text}: {format_value(value)} vs {format_value(factor * bound)} "
                      f"({value / bound:.2f}x) {'PASS' if ok else 'FAIL'}")

    def best_peer(workload):
        values = [v for v in (b("nbdkit", workload), b("qemu-raw", workload)) if v is not None]
        return max(values) if values else None

    check("remap 4k randread >= best of nbdkit, qemu-nbd raw", b("remap", "randread"), best_peer("randread"))
    check("remap 4k randwrite (overwrite) >= best of nbdkit, qemu-nbd raw", b("remap", "randwrite"), best_peer("randwrite"))
    check("remap first-write 4k randwrite >= 0.8x its overwrite", b("remap-first", "randwrite"), b("remap", "randwrite"), 0.8)
    check("remap first-write 4k randwrite > qemu-nbd qcow2 first writes", b("remap-first", "randwrite"),
          b("qemu-qcow2", "randwrite"), strict=True)
    check("remap 1M seq read >= 0.9x best of nbdkit, qemu-nbd raw", b("remap", "read"), best_peer("read"), 0.9)
    check("remap 1M seq write (overwrite) >= 0.9x best of nbdkit, qemu-nbd raw", b("remap", "write"), best_peer("write"), 0.9)
    return checks


def source_state():
    """The git commit of the remapd sources, and a hash of their uncommitted changes."""
    commit = output(["git", "-C", REPO, "rev-parse", "--short=12", "HEAD"])
    if output(["git", "-C", REPO, "status", "--porcelain", "--", "Sources", "Package.swift"]):
        diff = subprocess.run(["sh", "-c", "git diff HEAD -- Sources Package.swift; "
                               "git ls-files --others --exclude-standard -z -- Sources | xargs -0r cat"],
                              cwd=REPO, capture_output=True).stdout
        commit += f" with uncommitted changes in Sources (sha256 of diff + new files {hashlib.sha256(diff).hexdigest()[:12]})"
    return commit


def machine_description(workdir, remapd_binary, version, load, commit):
    cpu = "unknown"
    for line in output(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            cpu = line.split(":", 1)[1].strip()
    memory = "unknown"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    fs = output(["findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "-T", workdir])
    return [
        ("date", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")),
        ("CPU", f"{cpu}, {os.cpu_count()} cores"),
        ("memory", memory),
        ("kernel", os.uname().release),
        ("load average (1/5/15 min) during the run", load),
        ("OS", output(["sh", "-c", ". /etc/os-release && echo \"$PRETTY_NAME\""])),
        ("bench directory filesystem", f"{fs}"),
        ("fio", output(["fio", "--version"])),
        ("nbdkit", output(["nbdkit", "--version"])),
        ("qemu-nbd", output(["qemu-nbd", "--version"]).splitlines()[0]),
        ("remapd", f"{remapd_binary}, git {commit}" + (f", engine {version.get('engine')}" if version else "")),
    ]


def write_results(bench, args, machine, elapsed, path):
    lines = ["# remap benchmark results", "",
             "Written by `make bench` (`bench/run.py`); see `bench/README.md` for what is measured and how.", "",
             "## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in machine]
    lines += ["", "## Results", "",
              f"Test region {human_size(args.size)} (the 'write/fresh chunk' column: {human_size(args.alloc_size)}, "
              f"{args.alloc_size // CHUNK} writes), {args.runtime} s per time-based job, "
              f"best of {args.repeat} rounds (every job once per round; even rounds run the phases in reverse "
              f"order: remap, qcow2, raw-file peers); whole run {elapsed / 60:.1f} min. "
              "4k columns are IOPS, 1M columns MiB/s. Ratio = row / remap: overwrite rows against "
              "'remap, overwrite'; 'qemu-nbd qcow2, first writes' and the fresh-chunk column against "
              "'remap, first writes'; 'remap, first writes' against 'remap, overwrite'.", "",
              markdown_table(bench), "", "Plain text, as printed:", "", "```", text_table(bench), "```", "",
              "Server CPU time per I/O in µs (user + system time of the server process and all its threads, "
              "io_uring workers included, over the job, divided by the job's I/Os). fio's own CPU is not counted; "
              "the direct row has no server.", "", cpu_markdown_table(bench), "",
              "CPU the rest of the machine used during each shown run (other processes, kernel threads such as "
              "writeback, interrupts, steal), as a share of all CPUs: a quality mark for the throughput figures "
              "(this machine is shared).", "", others_markdown_table(bench), "",
              "## Targets", ""]
    lines += target_checks(bench)
    lines += ["", "## Notes", ""]
    lines += [f"- {note}" for note in bench.notes]
    lines += ["", "## fio command lines", "",
              "Temporary paths are those of this run. " + CACHE_POLICY[args.cache] +
              (f" The warm-up pass: `{bench.warm_command}` (engine options as in the job)." if bench.warm_command else "")
              + " Dropping a file's cache: `fsync` + `posix_fadvise(DONTNEED)` on that file only.", "", "```"]
    order = [t[0] for t in TARGETS]
    for key in sorted(bench.commands, key=lambda k: (order.index(k[0]), [w[0] for w in WORKLOADS].index(k[1]))):
        lines.append(bench.commands[key])
    lines += ["```", ""]
    server_lines = [
        f"fallocate -l {args.size} RAW; fio --name=prefill --filename=RAW --ioengine=io_uring --direct=1 --rw=write "
        f"--bs=1M --iodepth=8 --size={args.size} --end_fsync=1",
        "nbdkit -f -U SOCK file RAW",
        "qemu-nbd -k SOCK -f raw --cache=none --aio=io_uring -x bench -t RAW",
        "qemu-img create -q -f qcow2 QCOW2 SIZE; qemu-nbd -k SOCK -f qcow2 --cache=none --aio=io_uring -x bench -t QCOW2",
        f"remapd --state-dir DIR --default-pool-size {human_size(args.pool_size)}; "
        "POST /v1/volumes {\"name\": \"bench\", \"sizeBytes\": N}",
        f"overwrite runs, prefill: fio --name=prefill --ioengine=nbd --uri=URI --rw=write --bs=1M --iodepth=8 "
        f"--size={args.size} --end_fsync=1",
        "first-write runs: DELETE /v1/volumes/bench, then POST again, before every job",
    ]
    lines += ["Servers:", "", "```"] + server_lines + ["```", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def build_remapd():
    env = dict(os.environ)
    env["PATH"] = "/opt/swift/usr/bin:" + env.get("PATH", "")
    log("building remapd: swift build -c release")
    run(["swift", "build", "-c", "release"], cwd=REPO, env=env)
    return os.path.join(REPO, ".build", "release", "remapd")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--remapd", help="remapd binary (default: build with 'swift build -c release' and use .build/release/remapd)")
    parser.add_argument("--dir", default=BENCH_DIR,
                        help="where the temporary bench directory is made (a real filesystem, not tmpfs; default bench/)")
    parser.add_argument("--size", type=parse_size, default=parse_size("2G"), help="test region (default 2G)")
    parser.add_argument("--alloc-size", type=parse_size, default=None,
                        help="region of the one-write-per-fresh-chunk job (default 2x --size)")
    parser.add_argument("--pool-size", type=parse_size, default=parse_size("8G"), help="remapd's default pool (default 8G)")
    parser.add_argument("--runtime", type=int, default=10, help="seconds per job (default 10)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="rounds of every job, alternately in opposite order; the best run is shown (default 2)")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                        help="comma-separated, of: " + ", ".join(t[0] for t in TARGETS) + " (default: all but buffered)")
    parser.add_argument("--results", default=os.path.join(BENCH_DIR, "RESULTS.md"), help="results file ('' for none)")
    parser.add_argument("--perf", metavar="DIR", help="record perf profiles of remapd during its jobs into DIR")
    parser.add_argument("--cache", choices=["mixed", "warm", "cold"], default="mixed",
                        help="page cache at the start of each job: warm (one unmeasured sequential read pass over the "
                             "region through the server first), cold (the file's cache written back and dropped), or "
                             "mixed (default): warm for read jobs, cold for write jobs")
    parser.add_argument("--no-verify", action="store_true", help="skip the data check of remap before measuring")
    parser.add_argument("--allow-tmpfs", action="store_true")
    args = parser.parse_args()
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - {t[0] for t in TARGETS}
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if args.alloc_size is None:
        args.alloc_size = 2 * args.size
    for name in ("size", "alloc_size"):
        if getattr(args, name) % CHUNK:
            parser.error(f"--{name.replace('_', '-')} must be a multiple of 64 KiB")
    if max(args.size, args.alloc_size) > args.pool_size:
        parser.error("--size and --alloc-size must fit in --pool-size")

    for tool in ("fio", "nbdkit", "qemu-nbd", "qemu-img", "nbdinfo", "fallocate", "findmnt"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is missing (Debian: fio nbdkit qemu-utils libnbd-bin util-linux)")
    engines = output(["fio", "--enghelp"])
    if "\tnbd" not in engines and "\nnbd" not in engines:
        sys.exit("bench: this fio has no nbd engine (fio >= 3.19 built with libnbd)")

    fstype = output(["findmnt", "-n", "-o", "FSTYPE", "-T", args.dir])
    if fstype == "tmpfs" and not args.allow_tmpfs:
        sys.exit(f"bench: {args.dir} is on tmpfs; use --dir on a real filesystem")
    peak = max(args.size, args.alloc_size, args.pool_size) + (256 << 20)  # the phases run one after the other
    stat = os.statvfs(args.dir)
    if stat.f_bavail * stat.f_frsize < peak + (1 << 30):
        sys.exit(f"bench: {args.dir} has less than {human_size(peak + (1 << 30))} free")

    commit = source_state()  # before building: the tree the binary is built from
    remapd_binary = args.remapd or build_remapd()
    if not os.access(remapd_binary, os.X_OK):
        sys.exit(f"bench: {remapd_binary} is not executable")
    remapd_binary = os.path.abspath(remapd_binary)

    def interrupted(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupted)

    workdir = tempfile.mkdtemp(prefix=".run-", dir=args.dir)
    args.remapd = remapd_binary
    bench = Bench(args, workdir)
    started = time.monotonic()
    load_start = open("/proc/loadavg").read().split()[:3]
    failure = None
    log(f"bench directory {workdir} ({fstype}); region {human_size(args.size)}, {args.runtime} s per job, best of {args.repeat}")
    try:
        # Each round runs every job once; the second round runs the phases in
        # the opposite order, so that load from elsewhere on the machine
        # drifting over the run does not always favour the same targets.
        phases = [bench.phase_raw, bench.phase_qcow2, bench.phase_remap]
        for round_number in range(args.repeat):
            log(f"round {round_number + 1} of {args.repeat}")
            for phase in (phases if round_number % 2 == 0 else list(reversed(phases))):
                phase()
    except Interrupted as signal_name:
        failure = f"interrupted by {signal_name}"
    except (BenchError, subprocess.CalledProcessError, OSError) as error:
        failure = str(error)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        Server.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
    elapsed = time.monotonic() - started
    load_end = open("/proc/loadavg").read().split()[:3]
    bench.load = f"{' '.join(load_start)} at the start, {' '.join(load_end)} at the end"

    first = bench.results.get(("remap-first", "randwrite"))
    if first and "allocating_writes" in first[0]:
        r = max(first, key=lambda x: x["iops"])
        bench.notes.insert(0, f"'remap, first writes' 4k randwrite: {r['ios']} writes into a fresh volume, each 4k block "
                              f"at most once; {r['allocating_writes']} of them ({100 * r['allocating_writes'] / r['ios']:.0f}%) "
                              f"allocated a chunk, the rest landed in chunks allocated earlier in the same run. "
                              f"The 'write/fresh chunk' column is the case where every write allocates.")
    bench.notes += [
        "Page cache: remapd and nbdkit's file plugin use buffered I/O on their file; qemu-nbd (--cache=none) and "
        "fio direct use O_DIRECT. " + CACHE_POLICY[args.cache],
        "'fio io_uring direct (limit)' is the O_DIRECT limit of the file on this disk; a buffered server reading "
        "from page cache can exceed it.",
        "Write jobs run with --end_fsync=1: the final FLUSH (fsync) is inside the measured time, so buffered "
        "servers pay for writing their dirty pages back.",
        f"The fresh-chunk job replays a fio iolog (version 2) of {args.alloc_size // CHUNK} writes of 4 KiB: one per "
        "64 KiB chunk of the region, chunks in random order (Python random.Random(2018).shuffle), each at a random "
        "4 KiB-aligned offset inside its chunk; see Bench.alloc_iolog in bench/run.py.",
        "First-write jobs (fresh volume / fresh qcow2) are not time based: each block is written at most once "
        "and the job ends when the region is covered or at the runtime limit.",
        "nbdkit, qemu-nbd raw and fio direct share one preallocated, prefilled raw file; qcow2 images and remap's "
        "pool are made in the same directory.",
        *([("This is a VM whose free memory is reported to the hypervisor (virtio-balloon free page reporting): "
             "page-cache pages touched for the first time fault in slowly, which limits buffered writes to uncached "
             "pages (first writes through remapd or nbdkit) far below O_DIRECT speed; `--targets ...,buffered` adds "
             "a plain buffered fio row to see it.")] if os.path.exists("/sys/module/page_reporting") else []),
        f"One fio job and one NBD connection per measurement, on a {os.cpu_count()}-core machine where fio and the "
        "server share the CPUs.",
    ]

    print()
    print(text_table(bench))
    print()
    print(cpu_text_table(bench))
    print()
    print("\n".join(target_checks(bench)))
    for report in bench.perf_reports:
        print(f"perf profile: {report}")
    if failure:
        print(f"\nbench FAILED: {failure}", file=sys.stderr)
        if args.results:
            log(f"not writing {args.results}: the run did not complete")
    elif args.results and bench.results:
        write_results(bench, args, machine_description(args.dir, remapd_binary, bench.version, bench.load, commit), elapsed, args.results)
        log(f"wrote {args.results}")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
