#!/usr/bin/env python3
"""remap snapshot benchmark (issue 6, Done-when items 1 and 7).

1. Snapshot creation time: POST /v1/volumes/{v}/snapshots, timed end to end
   over the API unix socket on one persistent HTTP/1.1 connection (no process
   start-up in the figure), for volumes of the same size (16 GiB): 'small'
   with 16 MiB mapped, 'big' with 16 GiB mapped by sequential 1 MiB writes
   (its chunk map is a few long extents) and, unless --no-scattered,
   'scattered' with 16 GiB mapped by 64 KiB writes in random order (one
   extent per chunk: the worst map to share or copy).  --creates snapshots
   per row, interleaved with the reference ('small') row, each deleted
   (untimed) before the next, after 3 untimed warm-ups; median and max; the
   server's own time for each request from /metrics
   (remap_http_request_duration_seconds_sum of its route, read before and
   after); the first snapshot after the data was written is shown apart.
   An extra row (not a Done-when item, --no-under-writes skips it): the same
   creations on 'big' while fio writes 4k blocks at random into it.
7. 1,000 snapshots of one volume, on a freshly started remapd: two equal
   volumes 'one' and 'many' (--read-size, 1 GiB, prefilled with 64 KiB
   writes in random order), each with a first snapshot s0000; both then get
   the same 999 writes of 64 KiB of random bytes into chunks not written
   since (so each snapshot differs from the next), and 'many' takes a
   snapshot after each write: they differ only in the number of snapshots.
   fio 4k random read IOPS (nbd engine, QD32, after one unmeasured
   sequential pass) of each volume, its oldest snapshot (export
   VOLUME@SNAPSHOT, read-only) and 'many''s newest, in the same interleaved
   rounds, so load drift on the machine stays out of the ratio 'many'/'one';
   the server's CPU time per read; 'many' also read while it had only 1
   snapshot; remapd's VmRSS / RssAnon with 1 snapshot each and with 1,000
   on 'many', per snapshot; snapshot creation time as the count grows.
   Extras (not Done-when items): REST reads whose answers cover 'many'
   (GET volume, snapshot list, /metrics) and the NBD read latency at QD1
   while /metrics is scraped; then (unless --no-restart) remapd is
   restarted: time until its API answers, memory, one read run of each
   oldest snapshot.

remapd runs on its own state directory, sockets and a sparse file pool in a
temporary directory (default under bench/), removed at the end, also on
error or Ctrl-C.  Prints the tables and writes them with the machine's
description and the commands to bench/SNAPSHOTS.md (not on failure).
About 6 minutes; needs 19 GiB free (the two 16 GiB volumes exist one after
the other; deleting one returns its blocks to the host).  Without --remapd
it builds remapd with `swift build -c release` (as bench/run.py does).

  /usr/bin/python3 bench/snapshots.py [--remapd PATH] [--source TEXT] [--dir DIR] [--big 16G] [--small 16M]
      [--creates 20] [--snapshots 1000] [--read-size 1G] [--read-layout random|sequential]
      [--runtime 8] [--repeat 2] [--only creation|many] [--no-scattered] [--no-under-writes]
      [--no-restart] [--results bench/SNAPSHOTS.md | ''] [--perf DIR] [--dry-run]
"""

import argparse
import datetime
import http.client
import json
import os
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
import run as common  # noqa: E402  bench/run.py: Server, UnixHTTPConnection, helpers

CHUNK = common.CHUNK
log = common.log
BenchError = common.BenchError


# --------------------------------------------------------------------------
# REST over the unix socket, one persistent connection.

class Api:
    """HTTP/1.1 client on remapd's API socket that keeps its connection open,
    so a timed request costs one request/response on an open socket."""

    def __init__(self, path):
        self.path = path
        self.connection = None
        self.connects = 0

    def close(self):
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def request(self, method, path, body=None):
        """Returns (status, parsed JSON or text or None, seconds, reconnected)."""
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in range(2):
            reconnected = self.connection is None
            if self.connection is None:
                self.connection = common.UnixHTTPConnection(self.path)
                self.connection.connect()
                self.connects += 1
            try:
                started = time.perf_counter()
                self.connection.request(method, path, body=payload, headers=headers)
                response = self.connection.getresponse()
                data = response.read()
                seconds = time.perf_counter() - started
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt:
                    raise
                continue  # the server closed an idle keep-alive connection
            if response.will_close:
                self.close()
            kind = response.getheader("Content-Type", "")
            if data and "json" in kind:
                data = json.loads(data)
            elif data:
                data = data.decode(errors="replace")
            else:
                data = None
            return response.status, data, seconds, reconnected
        raise AssertionError("unreachable")

    def call(self, method, path, body=None, expect=(200, 201, 204)):
        status, data, _, _ = self.request(method, path, body)
        if status not in expect:
            raise BenchError(f"remapd: {method} {path}: HTTP {status} {data}")
        return data

    def route_seconds(self):
        """{route: (count, sum of seconds)} from remap_http_request_duration_seconds."""
        _, text, _, _ = self.request("GET", "/metrics")
        routes = {}
        for line in (text or "").splitlines():
            m = re.match(r'remap_http_request_duration_seconds_(sum|count)\{route="([^"]*)"\} (\S+)', line)
            if m:
                count, total = routes.get(m.group(2), (0, 0.0))
                if m.group(1) == "sum":
                    total = float(m.group(3))
                else:
                    count = int(float(m.group(3)))
                routes[m.group(2)] = (count, total)
        return routes


def server_seconds(before, after, exclude=("/metrics",)):
    """The server-side time of the one request answered between two /metrics reads."""
    changed = [(r, after[r][1] - before.get(r, (0, 0.0))[1]) for r in after
               if r not in exclude and after[r][0] - before.get(r, (0, 0.0))[0] == 1]
    return changed[0][1] if len(changed) == 1 else None


# --------------------------------------------------------------------------

def block_stat_path(directory):
    """/sys/class/block/DEV/stat of the device holding `directory`, or None."""
    source = common.output(["findmnt", "-n", "-o", "SOURCE", "-T", directory])
    path = f"/sys/class/block/{os.path.basename(os.path.realpath(source))}/stat"
    return path if source.startswith("/dev/") and os.path.exists(path) else None


def device_busy_share(stat_path, seconds=0.5):
    """Share of `seconds` the block device had I/O in flight (io_ticks)."""
    def ticks():
        with open(stat_path) as f:
            return int(f.read().split()[9])
    t0 = ticks()
    time.sleep(seconds)
    return (ticks() - t0) / (1000 * seconds)


def settle_disk(directory, limit=30):
    """Waits (up to `limit` s) until the disk under `directory` has been idle for 1 s: writeback of
    the data just written otherwise lands in the fdatasync of the next commits.  Returns the seconds
    waited (None when the device's statistics are not available)."""
    stat_path = block_stat_path(directory)
    if stat_path is None:
        return None
    started, calm = time.monotonic(), 0
    while time.monotonic() - started < limit and calm < 2:
        calm = calm + 1 if device_busy_share(stat_path) < 0.05 else 0
    return time.monotonic() - started


def rss_kib(pid):
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def ms(seconds):
    return "-" if seconds is None else f"{1000 * seconds:.2f}"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def p90(values):
    values = sorted(v for v in values if v is not None)
    return values[min(len(values) - 1, int(0.9 * len(values)))] if values else None


def fmt_iops(value):
    return "-" if value is None else (f"{value / 1000:.1f}k" if value >= 10000 else f"{value:.0f}")


def ratio(a, b):
    return "-" if a is None or b in (None, 0) else f"{a / b:.2f}x"


def text_table(head, rows):
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    out = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(head, widths)))]
    for row in rows:
        out.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(out)


def markdown_table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


class Bench:
    def __init__(self, args, workdir):
        self.args = args
        self.workdir = workdir
        self.state = os.path.join(workdir, "state")
        self.server = None
        self.api = None
        self.pool = "snapbench"
        self.commands = []          # (what, command) shown in SNAPSHOTS.md
        self.creation = []          # rows of item 1: dicts
        self.growth = []            # item 7: per-snapshot creation seconds, in order
        self.reads = {}             # (export key, snapshots) -> list of fio results
        self.memory = {}            # label -> rss dict
        self.metadata = {}          # label -> bytes of metadata.db*
        self.notes = []
        self.perf_reports = []
        self.version = None
        self.restart_seconds = None
        self.control = []           # (label, seconds list)
        self.settle_waits = []
        self.latency = []           # QD1 read latency without / with /metrics scrapes

    # ---- server

    def launch(self):
        """Starts remapd on the state directory; returns seconds until its API answered."""
        os.makedirs(os.path.join(self.state, "pools"), exist_ok=True)
        argv = [self.args.remapd, "--state-dir", self.state, "--default-pool-size", "64M"]
        started = time.monotonic()
        self.server = common.Server("remapd", argv, os.path.join(self.workdir, "remapd.log"))
        if not any(what == "server" for what, _ in self.commands):
            self.commands.append(("server", shlex.join(argv).replace(self.workdir, "DIR")))
        api_path = os.path.join(self.state, "api.sock")
        deadline = time.monotonic() + 120
        while True:
            self.server.check_alive()
            if os.path.exists(api_path) and os.path.exists(os.path.join(self.state, "nbd.sock")):
                try:
                    self.api = Api(api_path)
                    if self.api.request("GET", "/v1/health")[0] == 200:
                        break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise BenchError(f"remapd did not come up:\n{self.server.log_tail()}")
            time.sleep(0.02)
        return time.monotonic() - started

    def stop(self):
        self.api.close()
        code = self.server.stop()
        if code not in (0, -signal.SIGTERM):
            raise BenchError(f"remapd exited with status {code} on SIGTERM:\n{self.server.log_tail()}")

    def start(self):
        self.launch()
        self.version = self.api.call("GET", "/v1/version")
        a = self.args
        pool_size = a.big + a.small + 2 * (a.read_size + (a.snapshots + 64) * CHUNK) + (1 << 30)
        pool_size -= pool_size % CHUNK
        spec = {"name": self.pool, "suppliers": [{"kind": "file", "path": os.path.join(self.state, "pools", "snapbench.img"),
                                                  "sizeBytes": pool_size, "preallocate": False}]}
        self.api.call("POST", "/v1/pools", spec)
        self.commands.append(("pool", "POST /v1/pools " + json.dumps(spec).replace(self.workdir, "DIR")))
        self.commands.append(("volumes", 'POST /v1/volumes {"name": NAME, "sizeBytes": SIZE, "pool": "snapbench"}'))
        self.commands.append(("snapshot creation (timed: request sent until the whole response is read, one keep-alive "
                              "connection, http.client over AF_UNIX)",
                              'POST /v1/volumes/NAME/snapshots {"name": SNAP}   -> 201; GET /metrics before and after '
                              '(server time: delta of remap_http_request_duration_seconds_sum of the route); '
                              'then DELETE /v1/snapshots/NAME%40SNAP (untimed)'))

    def uri(self, export):
        return f"nbd+unix:///{export.replace('@', '%40')}?socket={os.path.join(self.state, 'nbd.sock')}"

    def create_volume(self, name, size):
        self.api.call("POST", "/v1/volumes", {"name": name, "sizeBytes": size, "pool": self.pool}, expect=(201,))

    def pool_file_on_disk(self):
        """Bytes the sparse pool file holds on the host."""
        return os.stat(os.path.join(self.state, "pools", "snapbench.img")).st_blocks * 512

    def delete_volume(self, name):
        deadline = time.monotonic() + 60
        while True:
            status, body, _, _ = self.api.request("DELETE", f"/v1/volumes/{name}")
            if status in (204, 404):
                log(f"deleted volume {name}; pool file holds {self.pool_file_on_disk() / (1 << 30):.2f} GiB on the host")
                return
            if status == 409 and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            raise BenchError(f"deleting volume {name}: HTTP {status} {body}")

    def allocated(self, name):
        return self.api.call("GET", f"/v1/volumes/{name}")["allocatedBytes"]

    # ---- snapshots (or, with --dry-run, stand-ins on existing endpoints)

    def snapshot(self, volume, name, server_time=True):
        """Creates a snapshot; returns (end-to-end seconds, server seconds, reconnected)."""
        before = self.api.route_seconds() if server_time else None
        if self.args.dry_run:
            status, body, seconds, reconnected = self.api.request("GET", f"/v1/volumes/{volume}")
            expected = 200
        else:
            status, body, seconds, reconnected = self.api.request("POST", f"/v1/volumes/{volume}/snapshots", {"name": name})
            expected = 201
        if status != expected:
            raise BenchError(f"snapshot {volume}@{name}: HTTP {status} {body}")
        if not self.args.dry_run and body.get("exportName") != f"{volume}@{name}":
            raise BenchError(f"snapshot {volume}@{name}: unexpected answer {body}")
        return seconds, server_seconds(before, self.api.route_seconds()) if server_time else None, reconnected

    def delete_snapshot(self, volume, name):
        if self.args.dry_run:
            return
        deadline = time.monotonic() + 60
        while True:
            status, body, _, _ = self.api.request("DELETE", f"/v1/snapshots/{volume}%40{name}")
            if status == 204:
                return
            if status == 409 and time.monotonic() < deadline:  # a reader is still leaving
                time.sleep(0.1)
                continue
            raise BenchError(f"deleting snapshot {volume}@{name}: HTTP {status} {body}")

    def export(self, volume, snapshot):
        return volume if self.args.dry_run else f"{volume}@{snapshot}"

    # ---- fio

    def fio(self, argv, what=None, timeout=1800):
        if what:
            self.commands.append((what, shlex.join(argv).replace(self.workdir, "DIR")))
        log(shlex.join(argv))
        completed = subprocess.run(argv, text=True, capture_output=True, timeout=timeout)
        self.server.check_alive()
        if completed.returncode != 0:
            raise BenchError(f"fio failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}")
        return completed

    def write_data(self, volume, size, layout):
        uri = self.uri(volume)
        if layout == "sequential":
            argv = ["fio", "--name=fill", "--ioengine=nbd", f"--uri={uri}", "--rw=write", "--bs=1M", "--iodepth=8",
                    f"--size={size}", "--end_fsync=1"]
        else:  # every 64 KiB chunk written once, in random order: one extent per chunk
            argv = ["fio", "--name=fill", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite", f"--bs={CHUNK}",
                    "--iodepth=32", f"--size={size}", "--randseed=2018", "--end_fsync=1"]
        started = time.monotonic()
        self.fio(argv, f"write {common.human_size(size)} into volume '{volume}' ({layout})")
        took = time.monotonic() - started
        allocated = self.allocated(volume)
        if allocated != size:
            raise BenchError(f"volume {volume}: allocatedBytes {allocated} after writing {size} bytes")
        log(f"{volume}: {common.human_size(size)} mapped ({layout}) in {took:.1f} s ({size / took / (1 << 20):.0f} MiB/s); "
            f"pool file holds {self.pool_file_on_disk() / (1 << 30):.2f} GiB on the host")
        return took

    def randread(self, key, export, size):
        uri = self.uri(export)
        warm = ["fio", "--name=warm", "--ioengine=nbd", f"--uri={uri}", "--readonly", "--rw=read", "--bs=1M",
                "--iodepth=8", f"--size={size}"]
        self.fio(warm)
        json_path = os.path.join(self.workdir, f"read-{len(self.reads.get(key, []))}-" + re.sub(r"[^a-z0-9]+", "-", key) + ".json")
        argv = ["fio", "--name=randread", "--ioengine=nbd", f"--uri={uri}", "--readonly", "--rw=randread", "--bs=4k",
                "--iodepth=32", f"--size={size}", f"--runtime={self.args.runtime}", "--time_based",
                "--randseed=7", "--output-format=json", f"--output={json_path}"]
        if not any(w == "4k random read" for w, _ in self.commands):
            self.commands.append(("4k random read", shlex.join(argv).replace(self.workdir, "DIR")
                                  + "   (preceded by an unmeasured pass: " + shlex.join(warm).replace(self.workdir, "DIR") + ")"))
        perf = self.perf_start("randread-" + re.sub(r"[^a-z0-9]+", "-", key), self.args.runtime)
        cpu_before = common.process_cpu_seconds(self.server.pid)
        busy_before, children_before, started = common.machine_busy_seconds(), common.children_cpu_seconds(), time.monotonic()
        self.fio(argv, timeout=self.args.runtime + 180)
        elapsed = time.monotonic() - started
        cpu = common.process_cpu_seconds(self.server.pid) - cpu_before
        others = max(0.0, common.machine_busy_seconds() - busy_before - (common.children_cpu_seconds() - children_before) - cpu)
        self.perf_finish(perf)
        with open(json_path) as f:
            text = f.read()
        job = json.loads(text[text.index("{"):])["jobs"][0]
        if job["error"] or job["read"]["total_ios"] == 0:
            raise BenchError(f"fio randread {export}: error {job['error']}, {job['read']['total_ios']} reads")
        result = {"iops": job["read"]["iops"], "ios": job["read"]["total_ios"], "cpu_us": 1e6 * cpu / job["read"]["total_ios"],
                  "others": others / (elapsed * os.cpu_count())}
        self.reads.setdefault(key, []).append(result)
        log(f"randread {export} ({key}): {result['iops']:,.0f} IOPS, {result['cpu_us']:.1f} µs server CPU/read, "
            f"rest of the machine {100 * result['others']:.0f}% busy")

    # ---- perf

    def perf_start(self, name, seconds):
        if not self.args.perf:
            return None
        os.makedirs(self.args.perf, exist_ok=True)
        data = os.path.join(self.args.perf, f"{name}.perf.data")
        argv = ["perf", "record", "-q", "-g", "-F", "999", "-p", str(self.server.pid), "-o", data]
        if seconds is not None:
            argv += ["--", "sleep", str(seconds)]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if seconds is None:
            time.sleep(0.5)  # perf attaches
        return process, data, seconds

    def perf_finish(self, perf):
        if perf is None:
            return
        process, data, seconds = perf
        if seconds is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        report = data.removesuffix(".perf.data") + ".txt"
        with open(report, "w") as f:
            subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none", "--percent-limit", "0.5",
                            "--sort", "dso,symbol"], stdout=f, stderr=subprocess.DEVNULL)
        self.perf_reports.append(report)

    # ---- item 1

    def measure_creation(self, volumes, note=""):
        """volumes: [(name, mapped, layout)]; interleaved so drift hits all rows alike.  The first
        volume is the reference of the others (ratio, checks)."""
        if not note:
            waited = settle_disk(self.workdir)
            if waited is not None:
                log(f"waited {waited:.1f} s for the disk to settle")
                self.settle_waits.append(waited)
        results = {name: {"volume": name, "mapped": mapped, "layout": layout, "times": [], "server": [], "note": note,
                          "first": None, "reconnects": 0, "reference": volumes[0][0]}
                   for name, mapped, layout in volumes}
        if not note:
            for name in results:  # the first snapshot after the data was written, apart
                results[name]["first"] = self.snapshot(name, "first")[0]
                self.delete_snapshot(name, "first")
        for name in results:  # warm-up, not counted
            for i in range(3):
                self.snapshot(name, f"warm{i}")
                self.delete_snapshot(name, f"warm{i}")
        perf = self.perf_start("create-" + "-".join(results) + ("-under-writes" if note else ""), 3)
        names = list(results)
        for i in range(self.args.creates):
            for name in (names if i % 2 == 0 else list(reversed(names))):
                seconds, server, reconnected = self.snapshot(name, f"t{i:03d}")
                results[name]["times"].append(seconds)
                results[name]["server"].append(server)
                results[name]["reconnects"] += int(reconnected)
                self.delete_snapshot(name, f"t{i:03d}")
        self.perf_finish(perf)
        for r in results.values():
            log(f"snapshot of {r['volume']} {note}: median {ms(median(r['times']))} ms, max {ms(max(r['times']))} ms, "
                f"server median {ms(median(r['server']))} ms; first after writing {ms(r['first'])} ms")
            self.creation.append(r)

    def measure_under_writes(self, name, mapped, layout):
        """Not a Done-when item: the same creations while fio writes 4k blocks at random into the volume."""
        seconds = 6 + self.args.creates // 4
        argv = ["fio", "--name=load", "--ioengine=nbd", f"--uri={self.uri(name)}", "--rw=randwrite", "--bs=4k",
                "--iodepth=32", f"--size={self.args.big}", f"--runtime={seconds}", "--time_based"]
        self.commands.append(("background writes during the 'under 4k random writes' row",
                              shlex.join(argv).replace(self.workdir, "DIR")))
        log(shlex.join(argv))
        load = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(2)
            self.measure_creation([(name, mapped, layout)], note="under fio 4k random writes QD32")
        finally:
            _, err = load.communicate(timeout=seconds + 120)
        if load.returncode != 0:
            raise BenchError(f"background fio failed: {err}")
        self.server.check_alive()

    def phase_creation(self):
        a = self.args
        self.create_volume("small", a.big)  # same size; only what is mapped differs
        self.create_volume("big", a.big)
        self.write_data("small", a.small, "sequential")
        took = self.write_data("big", a.big, "sequential")
        self.notes.append(f"Writing {common.human_size(a.big)} sequentially (fio, nbd engine, 1 MiB QD8, ending with FLUSH) took "
                          f"{took:.0f} s ({a.big / took / (1 << 20):.0f} MiB/s).")
        self.measure_creation([("small", a.small, "sequential 1M"), ("big", a.big, "sequential 1M")])
        if not a.no_under_writes:
            self.measure_under_writes("big", a.big, "sequential 1M")
        self.delete_volume("big")
        if not a.no_scattered:
            self.create_volume("scattered", a.big)
            took = self.write_data("scattered", a.big, "random 64K")
            self.notes.append(f"Writing {common.human_size(a.big)} as {a.big // CHUNK} 64 KiB writes in random order (fio, QD32, "
                              f"ending with FLUSH) took {took:.0f} s.")
            self.measure_creation([("small", a.small, "sequential 1M"),
                                   ("scattered", a.big, "random 64K, 1 extent/chunk")])
            self.delete_volume("scattered")
        self.delete_volume("small")

    # ---- item 7

    def sample_memory(self, label):
        time.sleep(1)  # let the allocator settle after the last request
        self.memory[label] = rss_kib(self.server.pid)
        self.metadata[label] = {f: os.path.getsize(os.path.join(self.state, f)) for f in os.listdir(self.state)
                                if f.startswith("metadata.db")}
        log(f"memory ({label}): VmRSS {mib(self.memory[label]['VmRSS'])}, RssAnon {mib(self.memory[label].get('RssAnon', 0))}, "
            f"metadata {sum(self.metadata[label].values()) / (1 << 20):.1f} MiB")

    def read_round(self, exports, size, rounds):
        for round_number in range(rounds):
            order = exports if round_number % 2 == 0 else list(reversed(exports))
            for key, export in order:
                self.randread(key, export, size)

    def phase_many(self):
        """Two equal volumes: 'one' keeps 1 snapshot, 'many' gets n.  Both get the same n-1 fresh 64 KiB writes
        after their first snapshot, so they differ only in the number of snapshots; their reads are measured
        in the same rounds (interleaved), which keeps load drift on this shared machine out of the ratio."""
        import nbd  # python3-libnbd
        a = self.args
        size, n = a.read_size, a.snapshots
        name = lambda i: f"s{i:04d}"
        for volume in ("one", "many"):
            self.create_volume(volume, size)
            self.write_data(volume, size, "random 64K, 1 extent/chunk" if a.read_layout == "random" else "sequential")
            seconds = self.snapshot(volume, name(0))[0]
            if volume == "many":
                self.growth.append(seconds)
        rng = random.Random(1000)
        chunks = rng.sample(range(size // CHUNK), min(n - 1, size // CHUNK))
        payloads = [rng.randbytes(CHUNK) for _ in range(min(n - 1, 64))]
        handles = {}
        for volume in ("one", "many"):
            handles[volume] = nbd.NBD()
            handles[volume].connect_uri(self.uri(volume))
        self.commands.append((f"between snapshots", f"libnbd pwrite of 64 KiB of random bytes into a chunk not written since "
                              f"the prefill (chunks chosen with random.Random(1000)), the same {n - 1} writes into 'one' and "
                              f"'many'; 'many' takes a snapshot after each (POST /v1/volumes/many/snapshots "
                              f"{{\"name\": \"sNNNN\"}}); FLUSH at the end"))
        try:
            for i in range(1, n):
                handles["one"].pwrite(payloads[i % len(payloads)], chunks[(i - 1) % len(chunks)] * CHUNK)
            handles["one"].flush()
            exports1 = [("one", "one"), ("one@oldest", self.export("one", name(0))),
                        ("many@1", "many"), ("many@1 oldest", self.export("many", name(0)))]
            self.read_round(exports1, size, 1)
            self.sample_memory("each volume 1 snapshot")

            perf = None
            started = time.monotonic()
            for i in range(1, n):
                handles["many"].pwrite(payloads[i % len(payloads)], chunks[(i - 1) % len(chunks)] * CHUNK)
                if i == n - 100:
                    perf = self.perf_start(f"create-snapshots-{n - 99}-{n}", None)
                seconds, _, _ = self.snapshot("many", name(i), server_time=False)
                self.growth.append(seconds)
                if i % 100 == 0:
                    log(f"{i + 1} snapshots of 'many'; last creation {ms(seconds)} ms")
            self.perf_finish(perf)
            handles["many"].flush()
        finally:
            for handle in handles.values():
                handle.shutdown()
            handles.clear()
        took = time.monotonic() - started
        self.notes.append(f"Before each pair of creation rows the script waited until the disk had been idle for 1 s "
                          f"(io_ticks in /sys/class/block/DEV/stat; writeback of the data just written): "
                          f"{', '.join(f'{w:.0f} s' for w in self.settle_waits)} (at most 30 s)." if self.settle_waits else "")
        self.notes.append(f"Making snapshots 2..{n} of 'many' (one 64 KiB pwrite through libnbd, then the POST, each time) "
                          f"took {took:.1f} s.")
        if not a.dry_run:
            listed = self.api.call("GET", "/v1/volumes/many/snapshots")["snapshots"]
            if len(listed) != n or listed[0]["name"] != name(0):
                raise BenchError(f"'many' lists {len(listed)} snapshots, oldest {listed[0]['name'] if listed else None}")
            for volume in ("one", "many"):
                allocated = self.allocated(volume)
                if allocated != size:
                    raise BenchError(f"volume {volume}: allocatedBytes {allocated}, expected {size}")
        self.sample_memory(f"'many' {n} snapshots")
        exports = [("one", "one"), ("one@oldest", self.export("one", name(0))), ("many", "many"),
                   ("many@oldest", self.export("many", name(0))), ("many@newest", self.export("many", name(n - 1)))]
        self.read_round(exports, size, a.repeat)
        self.sample_memory(f"'many' {n} snapshots, after reads")
        if not a.dry_run:
            self.measure_control_plane(name(0))
        if not a.no_restart:
            # Maps rebuilt from metadata: do they still share pages, do reads stay as fast?
            self.stop()
            self.restart_seconds = self.launch()
            log(f"remapd restarted with {n + 1} snapshots: API answered after {self.restart_seconds:.2f} s")
            self.sample_memory(f"after a restart")
            self.read_round([("one@oldest restarted", self.export("one", name(0))),
                             ("many@oldest restarted", self.export("many", name(0)))], size, 1)
            self.sample_memory(f"after a restart and reads")

    def measure_control_plane(self, oldest):
        """Not a Done-when item: REST reads whose answer covers a snapshotted volume, and what one
        GET /metrics scrape does to NBD read latency (the engine thread answers both)."""
        n = self.args.snapshots
        paths = [("GET /v1/volumes/one (1 snapshot)", "/v1/volumes/one"),
                 (f"GET /v1/volumes/many ({n} snapshots)", "/v1/volumes/many"),
                 ("GET /v1/volumes (both)", "/v1/volumes"),
                 (f"GET /v1/volumes/many/snapshots ({n} listed)", "/v1/volumes/many/snapshots"),
                 (f"GET /v1/snapshots/many@s{n - 1:04d}", f"/v1/snapshots/many%40s{n - 1:04d}"),
                 ("GET /metrics", "/metrics"),
                 ("GET /v1/health (no volume)", "/v1/health")]
        for label, path in paths:
            times = []
            for _ in range(7):
                status, body, seconds, _ = self.api.request("GET", path)
                if status != 200:
                    raise BenchError(f"GET {path}: HTTP {status} {body}")
                times.append(seconds)
            self.control.append((label, times[2:]))
            log(f"{label}: median {ms(median(times[2:]))} ms")
        # NBD read latency at QD1 on the oldest snapshot of 'many', without and with a scrape every 250 ms.
        seconds = 6
        for scrape in (False, True):
            json_path = os.path.join(self.workdir, f"latency-{int(scrape)}.json")
            argv = ["fio", "--name=latency", "--ioengine=nbd", f"--uri={self.uri(self.export('many', oldest))}", "--readonly",
                    "--rw=randread", "--bs=4k", "--iodepth=1", f"--size={self.args.read_size}", f"--runtime={seconds}",
                    "--time_based", "--percentile_list=50:99:99.9:100", "--output-format=json", f"--output={json_path}"]
            if not scrape:
                self.commands.append(("read latency (QD1), without and with GET /metrics every 250 ms",
                                      shlex.join(argv).replace(self.workdir, "DIR")))
            log(shlex.join(argv) + ("   (+ GET /metrics every 250 ms)" if scrape else ""))
            process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            scrapes = []
            try:
                if scrape:
                    time.sleep(1)
                    while process.poll() is None and len(scrapes) < 4 * (seconds - 2):
                        scrapes.append(self.api.request("GET", "/metrics")[2])
                        time.sleep(0.25)
            finally:
                _, err = process.communicate(timeout=seconds + 120)
            if process.returncode != 0:
                raise BenchError(f"fio latency failed: {err}")
            with open(json_path) as f:
                text = f.read()
            job = json.loads(text[text.index("{"):])["jobs"][0]
            pct = job["read"]["clat_ns"]["percentile"]
            self.latency.append({"scrape": scrape, "iops": job["read"]["iops"], "scrapes": scrapes,
                                 "p50": pct.get("50.000000"), "p99": pct.get("99.000000"), "p999": pct.get("99.900000"),
                                 "max": job["read"]["clat_ns"]["max"]})
            log(f"read latency QD1 {'with' if scrape else 'without'} scrapes: p50 {pct.get('50.000000') / 1000:.0f} µs, "
                f"p99.9 {pct.get('99.900000') / 1000:.0f} µs, max {job['read']['clat_ns']['max'] / 1000:.0f} µs")

    # ---- results

    def best(self, key):
        runs = self.reads.get(key)
        return max(runs, key=lambda r: r["iops"]) if runs else None

    def creation_table(self):
        head = ["volume", "mapped", "written as", "median ms", "p90 ms", "max ms", "server median ms", "server max ms",
                "first after writing, ms", "median ratio", "max ratio"]
        rows = []
        reference = None
        for r in self.creation:
            if r["volume"] == r["reference"] and not r["note"]:
                reference = r
            is_reference = reference is r
            med, mx = median(r["times"]), max(r["times"])
            srv = [x for x in r["server"] if x is not None]
            rows.append([r["volume"] + (f" ({r['note']})" if r["note"] else ""), common.human_size(r["mapped"]), r["layout"],
                         ms(med), ms(p90(r["times"])), ms(mx), ms(median(srv)), ms(max(srv) if srv else None), ms(r["first"]),
                         "" if is_reference else ratio(med, median(reference["times"])),
                         "" if is_reference else ratio(mx, max(reference["times"]))])
        return head, rows

    def creation_checks(self):
        checks = []
        reference = None
        for r in self.creation:
            if r["note"]:
                continue
            if r["volume"] == r["reference"]:
                reference = r
                continue
            pair = reference["times"] + r["times"]
            med_ratio = median(r["times"]) / median(reference["times"])
            ok_time, ok_ratio = max(pair) < 0.010, med_ratio < 2
            what = f"{common.human_size(reference['mapped'])} mapped vs {common.human_size(r['mapped'])} mapped ({r['volume']})"
            checks.append(f"- [{'x' if ok_time else ' '}] every timed creation under 10 ms, {what}: "
                          f"max {ms(max(pair))} ms {'PASS' if ok_time else 'FAIL'}")
            checks.append(f"- [{'x' if ok_ratio else ' '}] median ratio < 2x, {what}: {med_ratio:.2f}x "
                          f"{'PASS' if ok_ratio else 'FAIL'}")
        return checks

    def read_table(self):
        n = self.args.snapshots
        head = ["export", "'one': 1 snapshot", f"'many': {n} snapshots", "ratio", "'many' when it had 1",
                "server µs/read, 'one'", "server µs/read, 'many'", "busy elsewhere (each run)"]
        rows = []
        for label, one_key, many_key, before_key in (
                ("the volume", "one", "many", "many@1"),
                ("its oldest snapshot (@s0000)", "one@oldest", "many@oldest", "many@1 oldest"),
                (f"its newest snapshot ('one': @s0000, 'many': @s{n - 1:04d})", "one@oldest", "many@newest", None),
                ("oldest snapshot after a restart (1 run each)", "one@oldest restarted", "many@oldest restarted", None)):
            one, many = self.best(one_key), self.best(many_key)
            if one is None or many is None:
                continue
            before = self.best(before_key) if before_key else None
            runs = self.reads.get(one_key, []) + self.reads.get(many_key, [])
            rows.append([label, fmt_iops(one["iops"]), fmt_iops(many["iops"]), ratio(many["iops"], one["iops"]),
                         fmt_iops(before["iops"]) if before else "", f"{one['cpu_us']:.1f}", f"{many['cpu_us']:.1f}",
                         " ".join(f"{100 * r['others']:.0f}%" for r in runs)])
        return head, rows

    def memory_table(self):
        n = self.args.snapshots
        head = ["remapd", "VmRSS", "RssAnon", "metadata.db", "metadata.db-wal"]
        rows = [[label, mib(m["VmRSS"]), mib(m.get("RssAnon", 0)),
                 f"{self.metadata[label].get('metadata.db', 0) / (1 << 20):.1f} MiB",
                 f"{self.metadata[label].get('metadata.db-wal', 0) / (1 << 20):.1f} MiB"]
                for label, m in self.memory.items()]
        one = self.memory.get("each volume 1 snapshot")
        for label in (f"'many' {n} snapshots", f"'many' {n} snapshots, after reads"):
            many = self.memory.get(label)
            if one and many:
                rows.append([f"per snapshot: ({label} - each volume 1 snapshot) / {n - 1}",
                             f"{(many['VmRSS'] - one['VmRSS']) * 1024 / (n - 1):,.0f} B",
                             f"{(many.get('RssAnon', 0) - one.get('RssAnon', 0)) * 1024 / (n - 1):,.0f} B", "", ""])
        return head, rows

    def growth_table(self):
        g = self.growth
        if len(g) < 20:
            return None
        parts = [("snapshot 1", g[:1]), (f"snapshots 2-{min(100, len(g))}", g[1:100])]
        if len(g) >= 200:
            parts.append((f"snapshots {len(g) - 99}-{len(g)}", g[-100:]))
        head = ["creation of snapshot number ... of 'many'", "median ms", "p90 ms", "max ms"]
        return head, [[label, ms(median(v)), ms(p90(v)), ms(max(v))] for label, v in parts]

    def tables(self, render):
        out = []
        if self.creation:
            out += ["Snapshot creation, POST /v1/volumes/{v}/snapshots end to end over the unix socket "
                    f"({self.args.creates} per row, each deleted before the next; every volume is "
                    f"{common.human_size(self.args.big)} in size; ratio: to the 'small' row measured with it):", "",
                    render(*self.creation_table()), ""]
            out += self.creation_checks() + [""]
        if self.reads:
            out += [f"4k random read, fio nbd engine QD32, {self.args.runtime} s per run; two equal {common.human_size(self.args.read_size)} "
                    f"volumes, 'one' with 1 snapshot and 'many' with {self.args.snapshots}, read in the same rounds "
                    f"(interleaved, best of {self.args.repeat}); ratio = 'many' / 'one':", "",
                    render(*self.read_table()), ""]
        if self.memory:
            out += ["Memory (remapd's /proc/PID/status, 1 s after the last request):", "", render(*self.memory_table()), ""]
        if self.restart_seconds is not None:
            out += [f"Restart with {self.args.snapshots} snapshots: remapd answered GET /v1/health "
                    f"{self.restart_seconds:.2f} s after it was started.", ""]
        if self.control:
            out += [f"REST reads with 'many' at {self.args.snapshots} snapshots (not a Done-when item; end to end, median "
                    f"and max of 5 after 2 untimed):", "",
                    render(["request", "median ms", "max ms"], [[l, ms(median(t)), ms(max(t))] for l, t in self.control]), ""]
        if self.latency:
            rows = []
            for r in self.latency:
                rows.append(["with GET /metrics every 250 ms" if r["scrape"] else "alone", f"{r['iops']:,.0f}",
                             f"{r['p50'] / 1000:.0f}", f"{r['p99'] / 1000:.0f}", f"{r['p999'] / 1000:.0f}", f"{r['max'] / 1000:.0f}",
                             f"{len(r['scrapes'])}, median {ms(median(r['scrapes']))} ms" if r["scrapes"] else ""])
            out += [f"4k random read of many@s0000 at QD1 (fio, 6 s), alone and while GET /metrics is scraped "
                    f"(not a Done-when item):", "",
                    render(["reads", "IOPS", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "scrapes"], rows), ""]
        growth = self.growth_table()
        if growth:
            out += [render(*growth), ""]
        return "\n".join(out)


def machine_description(workdir, binary, version, commit, load):
    cpu = "unknown"
    for line in common.output(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            cpu = line.split(":", 1)[1].strip()
    with open("/proc/meminfo") as f:
        memory = next(f"{int(l.split()[1]) / (1 << 20):.1f} GiB" for l in f if l.startswith("MemTotal:"))
    return [
        ("date", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")),
        ("CPU", f"{cpu}, {os.cpu_count()} cores"),
        ("memory", memory),
        ("kernel", os.uname().release),
        ("load average (1/5/15 min)", load),
        ("bench directory filesystem", common.output(["findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "-T", workdir])),
        ("fio", common.output(["fio", "--version"])),
        ("remapd", f"{binary}, git {commit}" + (f", engine {version.get('engine')}" if version else "")),
    ]


def write_results(bench, args, machine, elapsed, path):
    lines = ["# remap snapshot benchmark", "",
             "Written by `make bench-snapshots` (`/usr/bin/python3 bench/snapshots.py`): issue 6, Done-when items 1 "
             "(snapshot creation time at 16 MiB and 16 GiB mapped) and 7 (1,000 snapshots: reads and memory).", "",
             "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in machine]
    lines += ["", "## Method", ""]
    lines += ["- " + line for line in (
        "remapd runs on its own state directory and sockets in a temporary directory under bench/, with a pool "
        "'snapbench' on a sparse file supplier (`preallocate: false`); everything is removed at the end.",
        "Creation time is measured in Python around one request on a persistent HTTP/1.1 connection over the API "
        "unix socket (`http.client` on AF_UNIX): from sending the request to having read the whole 201 response. "
        "No process start-up (curl) is in the figure. The server's part is the increase of "
        "`remap_http_request_duration_seconds_sum` of the route between two GET /metrics around the request.",
        "All volumes of item 1 are the same size; they differ only in what is mapped. The 16 GiB are real data "
        "written through NBD (fio's nbd engine; fio's buffers are not zeros), and `allocatedBytes` is checked "
        "to equal the bytes written before measuring. Each timed snapshot is deleted (untimed) before the next, "
        "rows are interleaved with their reference row, and 3 untimed warm-ups come first.",
        "Item 7 runs on a freshly started remapd (the one of item 1 is stopped), so its memory figures do not "
        "carry item 1's allocations. Random reads: fio nbd engine, 4k, QD32, time based, one job and one NBD "
        "connection, after one unmeasured 1 MiB sequential pass over the export (page cache warm, as in "
        "bench/run.py's read jobs); exports are alternated between rounds and the best round is shown. The server "
        "CPU per read (user+system of remapd over the job / reads) is less sensitive to other load on this "
        "shared 2-core machine than IOPS.",
        "Item 7 uses two equal volumes, 'one' and 'many', prefilled alike; both take snapshot s0000, then both get "
        "the same 999 writes of 64 KiB (random bytes, each into a chunk not written since the prefill), and 'many' "
        "takes a snapshot after each write; so they differ only in the number of snapshots, and their reads are "
        "measured in the same interleaved rounds (load drift on this shared machine stays out of the ratio).",
        "Memory: VmRSS and RssAnon from /proc/PID/status, 1 s after the last request; 'per snapshot' is the growth "
        "from 'each volume 1 snapshot' (taken after one read run of every export, so I/O buffers have grown "
        "already) to 'many' with all its snapshots, over N-1. metadata.db sizes are shown for information (the WAL "
        "is checkpointed at SQLite's discretion, so they do not give a per-snapshot figure).",
    )]
    lines += ["", "## Results", "", f"Whole run {elapsed / 60:.1f} min.", "", bench.tables(markdown_table), "## Notes", ""]
    lines += [f"- {n}" for n in bench.notes if n]
    lines += ["", "## Commands", "", "Temporary paths shown as DIR.", "", "```"]
    lines += [f"# {what}\n{command}" for what, command in bench.commands]
    lines += ["```", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--remapd", help="remapd binary (default: build with 'swift build -c release', use .build/release/remapd)")
    parser.add_argument("--source", help="what --remapd was built from, for SNAPSHOTS.md (default: this tree's git state)")
    parser.add_argument("--dir", default=BENCH_DIR, help="where the temporary directory is made (real filesystem; default bench/)")
    parser.add_argument("--big", type=common.parse_size, default=common.parse_size("16G"), help="mapped bytes of the big volume")
    parser.add_argument("--small", type=common.parse_size, default=common.parse_size("16M"), help="mapped bytes of the small one")
    parser.add_argument("--creates", type=int, default=20, help="timed snapshot creations per volume (default 20)")
    parser.add_argument("--no-scattered", action="store_true", help="skip the 16 GiB volume written in random 64 KiB order")
    parser.add_argument("--no-restart", action="store_true", help="skip restarting remapd with the snapshots at the end")
    parser.add_argument("--no-under-writes", action="store_true",
                        help="skip the extra row: creation while fio writes into the big volume")
    parser.add_argument("--snapshots", type=int, default=1000, help="snapshots of the read volume (default 1000)")
    parser.add_argument("--read-size", type=common.parse_size, default=common.parse_size("1G"), help="read volume (default 1G)")
    parser.add_argument("--read-layout", choices=["random", "sequential"], default="random",
                        help="prefill of the item-7 volumes: 64 KiB writes in random order (default; one extent per "
                             "chunk) or 1 MiB sequential writes (a few long extents)")
    parser.add_argument("--runtime", type=int, default=8, help="seconds per random-read job (default 8)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of read jobs, best shown (default 2)")
    parser.add_argument("--only", choices=["creation", "many"], help="run one part only")
    parser.add_argument("--results", default=os.path.join(BENCH_DIR, "SNAPSHOTS.md"), help="results file ('' for none)")
    parser.add_argument("--perf", metavar="DIR", help="perf record -g remapd during the timed creations and read jobs into DIR")
    parser.add_argument("--dry-run", action="store_true",
                        help="exercise the script without the snapshot API: GET volume instead of POST snapshot, "
                             "the volume instead of VOLUME@SNAPSHOT")
    args = parser.parse_args()
    for name in ("big", "small", "read_size"):
        if getattr(args, name) % CHUNK:
            parser.error(f"--{name.replace('_', '-')} must be a multiple of 64 KiB")
    if args.snapshots < 2:
        parser.error("--snapshots must be at least 2")
    for tool in ("fio", "findmnt"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is missing (Debian: fio util-linux)")
    try:
        import nbd  # noqa: F401
    except ImportError:
        sys.exit("bench: needs libnbd's Python binding (Debian: python3-libnbd); run with /usr/bin/python3")
    # The two big volumes exist one after the other; deleting one returns its blocks to the host.
    need = (0 if args.only == "many" else args.big + args.small) + 2 * args.read_size + (2 << 30)
    stat = os.statvfs(args.dir)
    if stat.f_bavail * stat.f_frsize < need:
        sys.exit(f"bench: {args.dir} has {stat.f_bavail * stat.f_frsize >> 30} GiB free, needs {need >> 30} GiB "
                 f"(use --big 4G for a smaller run)")
    if common.output(["findmnt", "-n", "-o", "FSTYPE", "-T", args.dir]) == "tmpfs":
        sys.exit(f"bench: {args.dir} is on tmpfs")

    commit = args.source or common.source_state()
    binary = os.path.abspath(args.remapd or common.build_remapd())
    args.remapd = binary

    def interrupted(signum, frame):
        raise common.Interrupted(signal.Signals(signum).name)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupted)
    workdir = tempfile.mkdtemp(prefix=".run-snapshots-", dir=args.dir)
    bench = Bench(args, workdir)
    load_start = open("/proc/loadavg").read().split()[:3]
    started = time.monotonic()
    failure = None
    log(f"directory {workdir}; load average {' '.join(load_start)}")
    try:
        bench.start()
        if args.only != "many":
            bench.phase_creation()
        if args.only != "creation":
            if args.only != "many":
                bench.stop()  # item 7 measures memory: start from a fresh process, not one that served 32 GiB of writes
                bench.launch()
            bench.phase_many()
        bench.server.check_alive()
        bench.stop()
    except common.Interrupted as name:
        failure = f"interrupted by {name}"
    except (BenchError, subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError, http.client.HTTPException) as error:
        failure = f"{type(error).__name__}: {error}"
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        if failure and bench.server is not None:
            log(f"remapd log tail:\n{bench.server.log_tail()}")
        common.Server.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
    elapsed = time.monotonic() - started
    load = f"{' '.join(load_start)} at the start, {' '.join(open('/proc/loadavg').read().split()[:3])} at the end"
    if args.dry_run:
        bench.notes.insert(0, "DRY RUN: no snapshot API used (GET volume timed instead of POST snapshot; reads of the volume "
                              "instead of VOLUME@SNAPSHOT). These numbers say nothing about snapshots.")
    if bench.api is not None:
        bench.notes.append(f"HTTP connections opened to the API socket during the whole run: {bench.api.connects} "
                           "(requests share one keep-alive connection while the server keeps it open).")
        reconnects = sum(r["reconnects"] for r in bench.creation)
        if reconnects:
            bench.notes.append(f"{reconnects} timed creations included opening a new connection (the server closed the old one).")
    print()
    print(bench.tables(text_table))
    for report in bench.perf_reports:
        print(f"perf profile: {report}")
    if failure:
        print(f"\nbench FAILED: {failure}", file=sys.stderr)
        return 1
    if args.results:
        write_results(bench, args, machine_description(args.dir, binary, bench.version, commit, load), elapsed, args.results)
        log(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
