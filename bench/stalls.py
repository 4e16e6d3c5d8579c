#!/usr/bin/env python3
"""remap engine-thread stalls (issue 11, Done-when item 5).

Every control-plane command runs on the engine thread, between two data
requests; while it runs, no NBD request of any pool is served. This bench
measures, for each kind of command, how long it holds that thread, on a pool
of 16 M chunks (a 64 GiB sparse file cut into 4 KiB chunks) with a volume of
1,000 snapshots:

- from inside: remapd times every command its engine thread runs
  (`remap_engine_command_seconds{command=...}`, `_max`, and the CPU time of
  the longest run, `remap_engine_command_cpu_seconds_max`, in /metrics; a
  command's commit completions count as part of it). For each API call the
  engine commands it ran are found from the counts in /metrics around it;
  the table gives the largest run of those (since start: a command that
  several calls use shows its worst over all of them). The check is on CPU
  time: the command's own work; its wall time also counts the time other
  processes of a shared machine held the CPU, and is shown beside it.
- from outside: a separate process reads 4 KiB at random offsets of another
  volume of the same pool, one read at a time, over its own NBD connection,
  for the whole run; the longest read overlapping a call is the stall that
  call caused (plus the machine's own noise: the quiet baseline says how
  much). The volume is never written: its reads are answered by the engine
  thread without disk I/O, so the disk (and other load on it) stays out of
  the figure.

Set-up (not timed): pool 'big' (--chunks of --chunk-size, sparse file), volume
'reader' (256 MiB, never written), volume 'vol' (4 GiB: 1 GiB written sequentially
and --scattered random 4 KiB writes) and --snapshots snapshots of it, each
after one more 4 KiB write. Then each command runs --repeat times:

  pool create (a second pool of 16 M chunks), add supplier (+16 M chunks),
  grow supplier (+16 M chunks), pool check (big), pool delete; volume
  create, resize (grow, shrink), delete (plain, with --written bytes of
  data, and a clone in the family of 1,000); snapshot create, delete (just taken, and an old one), clone,
  revert, changes (with and without base); reservation create/delete
  (pooled and range); export create/delete; list and get calls.

Prints the tables and writes them with the machine's description to
bench/STALLS.md (not on failure).  Needs ~3 GiB free under --dir.  Without
--remapd it builds remapd with `swift build -c release` (as bench/run.py).

  /usr/bin/python3 bench/stalls.py [--remapd PATH] [--dir DIR] [--chunks 16777216] [--chunk-size 4096]
      [--snapshots 1000] [--scattered 16384] [--written 256M] [--repeat 5] [--results bench/STALLS.md | '']
"""

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
import run as common  # noqa: E402  Server, UnixHTTPConnection, helpers
import snapshots  # noqa: E402  Api (one persistent connection), tables, machine description

log = common.log
BenchError = common.BenchError
MiB = 1 << 20
GiB = 1 << 30
BOUND = 0.010  # the target: no command holds the engine thread longer
SLOW = 0.0005  # the reader keeps every read slower than this


# --------------------------------------------------------------------------
# The reader: its own process, so neither the GIL nor this script's work
# delays its reads.

def reader_main(uri, size, out):
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    rng = random.Random(7)
    slow, count, first = [], 0, time.monotonic()
    while not stop.is_set():
        offset = rng.randrange(size // 4096) * 4096
        started = time.monotonic()
        h.pread(4096, offset)
        took = time.monotonic() - started
        count += 1
        if took > SLOW:
            slow.append((started, took))
    h.shutdown()
    with open(out, "w") as f:
        json.dump({"count": count, "seconds": time.monotonic() - first, "slow": slow}, f)


class Reader:
    def __init__(self, uri, size, workdir):
        self.out = os.path.join(workdir, "reader.json")
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--reader", uri, str(size), self.out],
                                        stdin=subprocess.PIPE)
        self.result = None

    def stop(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)
        if self.process.returncode != 0:
            raise BenchError(f"the reader exited with status {self.process.returncode}")
        with open(self.out) as f:
            self.result = json.load(f)
        return self.result

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def longest(self, windows):
        """The longest read that overlapped one of `windows` ((start, end) pairs); SLOW when none was slower."""
        longest = 0.0
        for started, took in self.result["slow"]:
            if any(started < end and started + took > begin for begin, end in windows):
                longest = max(longest, took)
        return longest


# --------------------------------------------------------------------------

METRIC_KEYS = {"seconds_sum": "sum", "seconds_count": "count", "seconds_max": "max", "cpu_seconds_max": "cpu"}


def engine_metrics(api):
    """{command: {"count", "sum", "max" (wall), "cpu" (max CPU, None for the tick)}} from /metrics."""
    _, text, _, _ = api.request("GET", "/metrics")
    commands = {}
    for line in (text or "").splitlines():
        m = re.match(r'remap_engine_command_(seconds_sum|seconds_count|seconds_max|cpu_seconds_max)\{command="([^"]*)"\} (\S+)$', line)
        if m:
            entry = commands.setdefault(m.group(2), {"count": 0, "sum": 0.0, "max": 0.0, "cpu": None})
            entry[METRIC_KEYS[m.group(1)]] = float(m.group(3))
    return commands


def worst(entry):
    """The figure a command is judged by: its CPU time (its own work; wall time on a shared machine also
    counts the time other processes had the CPU), or the wall time where CPU is not measured (the tick)."""
    return entry["max"] if entry["cpu"] is None else entry["cpu"]


class Bench:
    def __init__(self, args, workdir):
        self.args = args
        self.workdir = workdir
        self.server = None
        self.api = None
        self.reader = None
        self.rows = []        # (label, engine commands, wall seconds list, windows)
        self.notes = []
        self.baseline_windows = []
        # What the metrics read itself runs on the engine thread, counted out of every delta.
        self.metrics_own = {}

    # ------------------------------------------------------------ set-up

    def start(self):
        state = os.path.join(self.workdir, "state")
        self.suppliers = os.path.join(state, "pools")
        self.api_path = os.path.join(state, "api.sock")
        self.nbd_path = os.path.join(state, "nbd.sock")
        self.server = common.Server("remapd", [self.args.remapd, "--state-dir", state, "--default-pool-size", "64M"],
                                    os.path.join(self.workdir, "remapd.log"))
        deadline = time.monotonic() + 60
        self.api = snapshots.Api(self.api_path)
        while True:
            self.server.check_alive()
            if os.path.exists(self.api_path):
                try:
                    if self.api.request("GET", "/v1/health")[0] == 200:
                        break
                except OSError:
                    self.api.close()
            if time.monotonic() > deadline:
                raise BenchError(f"remapd did not come up:\n{self.server.log_tail()}")
            time.sleep(0.1)
        self.version = self.api.call("GET", "/v1/version")

    def uri(self, name):
        return f"nbd+unix:///{name}?socket={self.nbd_path}"

    def supplier(self, name, size):
        return {"kind": "file", "path": os.path.join(self.suppliers, name), "sizeBytes": size, "preallocate": False}

    def set_up(self):
        import nbd
        args = self.args
        log(f"pool 'big': {args.chunks} chunks of {args.chunk_size} bytes (sparse file)")
        self.api.call("POST", "/v1/pools", {"name": "big", "chunkSizeBytes": args.chunk_size,
                                            "suppliers": [self.supplier("big.img", args.chunks * args.chunk_size)]})
        self.api.call("POST", "/v1/volumes", {"name": "reader", "sizeBytes": 256 * MiB, "pool": "big"})
        self.api.call("POST", "/v1/volumes", {"name": "vol", "sizeBytes": 4 * GiB, "pool": "big"})
        rng = random.Random(1)
        block = os.urandom(MiB)
        log(f"volume 'vol': 1 GiB sequential, {args.scattered} scattered 4 KiB writes, {args.snapshots} snapshots")
        h = nbd.NBD()
        h.connect_uri(self.uri("vol"))
        for offset in range(0, GiB, MiB):
            h.pwrite(block, offset)
        for _ in range(args.scattered):
            h.pwrite(block[:4096], rng.randrange(GiB // 4096, 4 * GiB // 4096) * 4096)
        h.flush()
        started = time.monotonic()
        for i in range(args.snapshots):
            h.pwrite(os.urandom(4096), rng.randrange(4 * GiB // 4096) * 4096)
            h.flush()
            self.api.call("POST", "/v1/volumes/vol/snapshots", {"name": f"s{i:04d}"})
            if (i + 1) % 200 == 0:
                log(f"  {i + 1} snapshots ({time.monotonic() - started:.0f} s)")
        h.shutdown()
        self.snapshot_ids = {s["name"]: s["id"] for s in self.api.call("GET", "/v1/volumes/vol/snapshots")["snapshots"]}
        pool = self.api.call("GET", "/v1/pools/big")
        self.notes.append(f"pool 'big': {pool['capacityBytes'] // args.chunk_size} chunks of {args.chunk_size} bytes, "
                          f"{pool['allocatedBytes'] // args.chunk_size} allocated; volume 'vol' with "
                          f"{len(self.snapshot_ids)} snapshots, {self.api.call('GET', '/v1/volumes/vol')['allocatedBytes'] // MiB} MiB mapped")
        snapshots.settle_disk(self.workdir)

    # ------------------------------------------------------------ measuring

    def calibrate(self):
        """What a /metrics read runs on the engine thread, to count it out of deltas."""
        before = engine_metrics(self.api)
        after = engine_metrics(self.api)
        self.metrics_own = {name: after[name]["count"] - before.get(name, {}).get("count", 0) for name in after}

    def timed(self, label, method, path, body=None, expect=(200, 201, 204)):
        """One call, with the engine commands it ran and its window for the reader."""
        before = engine_metrics(self.api)
        started = time.monotonic()
        try:
            status, data, _, _ = self.api.request(method, path, body)
        except (OSError, http.client.HTTPException) as error:
            raise BenchError(f"{method} {path} ({label}): {type(error).__name__}: {error}") from error
        ended = time.monotonic()
        after = engine_metrics(self.api)
        if status not in expect:
            raise BenchError(f"remapd: {method} {path}: HTTP {status} {data}")
        ran = {name for name in after
               if after[name]["count"] - before.get(name, {}).get("count", 0) > self.metrics_own.get(name, 0)}
        for row in self.rows:
            if row["label"] == label:
                break
        else:
            row = {"label": label, "commands": set(), "walls": [], "windows": []}
            self.rows.append(row)
        row["commands"] |= ran - {"tick", "commit", "supplier-io"}
        row["walls"].append(ended - started)
        row["windows"].append((started, ended))
        return data

    def write_volume(self, name, size):
        """A volume of `size` bytes in 'big', written through (not timed)."""
        import nbd
        self.api.call("POST", "/v1/volumes", {"name": name, "sizeBytes": size, "pool": "big"})
        h = nbd.NBD()
        h.connect_uri(self.uri(name))
        block = os.urandom(MiB)
        for offset in range(0, size, MiB):
            h.pwrite(block, offset)
        h.flush()
        h.shutdown()

    def quiet(self, seconds):
        started = time.monotonic()
        time.sleep(seconds)
        self.baseline_windows.append((started, time.monotonic()))

    def commands(self):
        args = self.args
        big_chunks = args.chunks * args.chunk_size
        self.calibrate()
        self.quiet(5)
        for i in range(args.repeat):
            log(f"round {i + 1} of {args.repeat}")
            name = f"p{i}"
            self.timed("POST /v1/pools (16 M chunks)", "POST", "/v1/pools",
                       {"name": name, "chunkSizeBytes": args.chunk_size, "suppliers": [self.supplier(f"{name}-a.img", big_chunks)]})
            pool = self.timed("POST /v1/pools/{name}/suppliers (+16 M chunks)", "POST", f"/v1/pools/{name}/suppliers",
                              self.supplier(f"{name}-b.img", big_chunks))
            supplier = pool["suppliers"][1]["id"]
            self.timed("PATCH /v1/pools/{name}/suppliers/{id} (+16 M chunks)", "PATCH",
                       f"/v1/pools/{name}/suppliers/{supplier}", {"sizeBytes": 2 * big_chunks})
            self.timed(f"GET /v1/pools/{{name}}/check (16 M chunks, {len(self.snapshot_ids)} snapshots)", "GET",
                       "/v1/pools/big/check")
            self.timed("GET /v1/pools/{name}/check (48 M chunks, empty)", "GET", f"/v1/pools/{name}/check")
            self.timed("DELETE /v1/pools/{name}", "DELETE", f"/v1/pools/{name}")

            self.timed("POST /v1/volumes (64 GiB, thin)", "POST", "/v1/volumes", {"name": f"t{i}", "sizeBytes": 64 * GiB, "pool": "big"})
            self.timed("PATCH /v1/volumes/{name} grow (volume of 1,000 snapshots)", "PATCH", "/v1/volumes/vol",
                       {"sizeBytes": 5 * GiB})
            self.timed("PATCH /v1/volumes/{name}?allowShrink=true shrink (volume of 1,000 snapshots)", "PATCH",
                       "/v1/volumes/vol?allowShrink=true", {"sizeBytes": 4 * GiB})
            self.timed("DELETE /v1/volumes/{name} (plain)", "DELETE", f"/v1/volumes/t{i}")
            self.write_volume(f"w{i}", args.written)
            self.timed(f"DELETE /v1/volumes/{{name}} ({args.written // MiB} MiB written: {args.written // args.chunk_size} chunks)",
                       "DELETE", f"/v1/volumes/w{i}")

            self.timed("POST /v1/volumes/{name}/snapshots", "POST", "/v1/volumes/vol/snapshots", {"name": f"x{i}"})
            self.timed("DELETE /v1/snapshots/{id} (just taken)", "DELETE", f"/v1/snapshots/vol@x{i}")
            self.timed("DELETE /v1/snapshots/{id} (an old one)", "DELETE", f"/v1/snapshots/vol@s{i + 1:04d}")
            middle = f"s{len(self.snapshot_ids) // 2:04d}"
            self.timed("POST /v1/snapshots/{id}/clone", "POST", f"/v1/snapshots/vol@{middle}/clone", {"name": f"c{i}"})
            self.timed("DELETE /v1/volumes/{name} (a clone in the family)", "DELETE", f"/v1/volumes/c{i}")
            self.timed("POST /v1/volumes/{name}/revert", "POST", "/v1/volumes/vol/revert",
                       {"snapshot": f"s{len(self.snapshot_ids) - 1 - i:04d}"})
            last, first = f"s{len(self.snapshot_ids) - 1:04d}", f"s{len(self.snapshot_ids) // 4:04d}"
            self.timed("GET /v1/snapshots/{id}/changes?base=", "GET", f"/v1/snapshots/vol@{last}/changes?base=vol@{first}")
            self.timed("GET /v1/snapshots/{id}/changes (no base)", "GET", f"/v1/snapshots/vol@{last}/changes")

            for label, spec in (("pooled 1 GiB", {"bytes": GiB}), ("range 1 GiB", {"offsetBytes": 0, "lengthBytes": GiB})):
                reservation = self.timed(f"POST /v1/volumes/{{name}}/reservations ({label})", "POST",
                                         "/v1/volumes/vol/reservations", spec)
                self.timed(f"DELETE /v1/volumes/{{name}}/reservations/{{id}} ({label})", "DELETE",
                           f"/v1/volumes/vol/reservations/{reservation['id']}")
            export = self.timed("POST /v1/exports", "POST", "/v1/exports", {"volume": "vol"})
            self.timed("DELETE /v1/exports/{name}", "DELETE", f"/v1/exports/{export['name']}")

            for path in ("/v1/pools", "/v1/pools/big", "/v1/volumes", "/v1/volumes/vol", "/v1/volumes/vol/snapshots",
                         f"/v1/snapshots/vol@{middle}", "/v1/snapshots", "/v1/volumes/vol/reservations", "/v1/exports",
                         "/v1/events", "/metrics"):
                self.timed(f"GET {path}", "GET", path)
            self.quiet(1)
        self.final = engine_metrics(self.api)

    # ------------------------------------------------------------ results

    def table(self):
        head = ["API call", "runs", "engine commands it ran", "longest engine run, CPU ms", "wall ms",
                "longest 4k read, ms", "median call, ms"]
        rows = []
        for row in self.rows:
            commands = sorted(row["commands"])
            entries = [self.final[c] for c in commands if c in self.final]
            cpu = max((e["cpu"] or 0.0 for e in entries), default=0.0)
            wall = max((e["max"] for e in entries), default=0.0)
            row["read"] = self.reader.longest(row["windows"])
            rows.append([row["label"], len(row["walls"]), ", ".join(commands) or "-", f"{1000 * cpu:.2f}", f"{1000 * wall:.2f}",
                         "<0.5" if row["read"] <= SLOW else f"{1000 * row['read']:.1f}",
                         f"{1000 * statistics.median(row['walls']):.1f}"])
        return head, rows

    def engine_table(self):
        head = ["engine command", "runs", "mean wall, ms", "max wall, ms", "max CPU, ms"]
        rows = [[name, int(m["count"]), f"{1000 * m['sum'] / m['count']:.3f}" if m["count"] else "-", f"{1000 * m['max']:.2f}",
                 "-" if m["cpu"] is None else f"{1000 * m['cpu']:.2f}"]
                for name, m in sorted(self.final.items(), key=lambda item: -worst(item[1]))]
        return head, rows

    def checks(self):
        worst_engine = max(self.final.items(), key=lambda item: worst(item[1]))
        worst_wall = max(self.final.items(), key=lambda item: item[1]["max"])
        worst_read = max(self.rows, key=lambda row: row["read"])
        baseline = self.reader.longest(self.baseline_windows)
        return [
            f"- [{'x' if worst(worst_engine[1]) < BOUND else ' '}] every engine command under 10 ms (CPU time of its "
            f"longest run; wall time for the tick): longest {worst_engine[0]} {1000 * worst(worst_engine[1]):.2f} ms "
            f"{'PASS' if worst(worst_engine[1]) < BOUND else 'FAIL'} (longest wall time: {worst_wall[0]} "
            f"{1000 * worst_wall[1]['max']:.2f} ms)",
            f"- [{'x' if worst_read['read'] < BOUND else ' '}] from outside, no 4k read waited 10 ms during a call: "
            f"longest {1000 * worst_read['read']:.1f} ms ({worst_read['label']}); "
            f"{'PASS' if worst_read['read'] < BOUND else 'FAIL'} "
            f"(the same reader's longest read in {sum(e - b for b, e in self.baseline_windows):.0f} s without calls: "
            f"{1000 * baseline:.1f} ms)",
        ]


def write_results(bench, args, machine, elapsed, path):
    head, rows = bench.table()
    engine_head, engine_rows = bench.engine_table()
    result = bench.reader.result
    lines = ["# remap engine-thread stalls", "",
             "Written by `make bench-stalls` (`/usr/bin/python3 bench/stalls.py`): issue 11, Done-when item 5 — the "
             "worst-case engine-thread stall of each control-plane command, on a pool of 16 M chunks with a volume "
             "of 1,000 snapshots; none above 10 ms.", "",
             "## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in machine]
    lines += ["- the machine is shared: other work (builds, tests) may run beside the bench; the load average "
              "above says how much"]
    lines += ["", "## Method", "",
              "- remapd (release build) runs on its own state directory in a temporary directory, removed at the end. "
              f"Pool 'big': one sparse file supplier of {args.chunks * args.chunk_size // GiB} GiB in "
              f"{args.chunk_size}-byte chunks ({args.chunks} chunks). Volume 'reader' (256 MiB) is read; "
              f"volume 'vol' (4 GiB) has 1 GiB written sequentially, {args.scattered} random 4 KiB writes, and "
              f"{args.snapshots} snapshots, each taken after one more random 4 KiB write.",
              "- Engine time: remapd times every command its engine thread runs (`remap_engine_command_seconds`, "
              "`remap_engine_command_seconds_max` and `remap_engine_command_cpu_seconds_max` in /metrics; the "
              "completions of the commits a command submits count as part of it). The engine commands an API call "
              "ran are those whose count in /metrics grew across the call (beyond what the /metrics read itself "
              "runs); 'longest engine run' is the largest maximum of those at the end, i.e. the worst over every "
              "run of them in the bench (several calls share some, e.g. volumeInfos): its CPU time (the command's "
              "own work, which the check uses) and its wall time (which also counts the time other processes of "
              "this shared machine held the CPU).",
              "- From outside: a separate process reads 4 KiB at random offsets of 'reader', one read at a time, on "
              "its own NBD connection, for the whole run; 'longest 4k read' is the longest read overlapping one of "
              "the row's calls. 'reader' is never written, so its reads are answered on the engine thread without "
              "disk I/O: the figure is the engine's responsiveness, not the shared disk's. It includes the "
              "machine's own noise (other processes holding the 2 CPUs): the last check line gives the same "
              "reader's longest read while no call ran.",
              f"- Each call runs {args.repeat} times, in rounds (every call once per round); calls go over one "
              "persistent HTTP/1.1 connection on the API unix socket. Calls that change the set-up: the old snapshot "
              "deleted is a different one each round, and each revert goes to another recent snapshot.", ""]
    lines += [f"- {note}" for note in bench.notes]
    lines += ["", "## Results", "", f"Whole run {elapsed / 60:.1f} min. The reader did {result['count']} reads "
              f"({result['count'] / result['seconds']:.0f}/s).", "",
              snapshots.markdown_table(head, rows), "",
              "Every engine command, by its longest run:", "",
              snapshots.markdown_table(engine_head, engine_rows), ""]
    lines += bench.checks()
    lines += ["", "## Known costs the rows do not show", "",
              "Work that still grows with a size on the engine thread (each a few nanoseconds per item in a "
              "release build; none is reached by the calls above beyond what the table shows):", "",
              "- a range reservation over holes, and a thick volume's creation or growth, map each chunk they "
              "back (reserved-unwritten): per chunk of holes;",
              "- shrinking a volume unmaps each chunk cut off, and a revert or cut lets go of each chunk another "
              "volume or clone of the family maps at the same place (none when only snapshots share them): per "
              "such chunk;",
              "- the data path: a TRIM or WRITE_ZEROES unmaps per chunk of the request (at most 32 MiB), and a "
              "FLUSH's commit completes per mapping it made durable;",
              "- after a pool check, the allocator's first change copies its bitmap (copy-on-write): 2 MiB for "
              "16 M chunks, 32 MiB at the 2^28 limit; adding or growing a supplier by N chunks sets N/64 words; "
              "taking back freed chunks clears a word per 64 chunks of a run.",
              "",
              "Not on the engine thread, but slow with 1,000 snapshots: the usage figures of a family "
              "(`uniqueBytes`, `sharedBytes`, `guaranteedWritableBytes`) are counted on the API thread with a "
              "byte per chunk of the pool and a pass over every snapshot's mappings, then cached until the "
              "family changes; the 'median call' column shows it for GET of snapshots, clone, revert and "
              "resize.", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--reader":
        return reader_main(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--remapd", help="remapd binary (default: build with 'swift build -c release', use .build/release/remapd)")
    parser.add_argument("--source", help="what --remapd was built from, for STALLS.md (default: this tree's git state)")
    parser.add_argument("--dir", default=BENCH_DIR, help="where the temporary directory is made (real filesystem; default bench/)")
    parser.add_argument("--chunks", type=int, default=1 << 24, help="chunks of pool 'big' (default 16 M)")
    parser.add_argument("--chunk-size", type=int, default=4096, help="its chunk size (default 4096)")
    parser.add_argument("--snapshots", type=int, default=1000, help="snapshots of volume 'vol' (default 1000)")
    parser.add_argument("--scattered", type=int, default=16384, help="random 4 KiB writes into 'vol' (default 16384)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each call (default 5)")
    parser.add_argument("--written", type=common.parse_size, default=256 * MiB,
                        help="data in the volume whose deletion is timed (default 256M)")
    parser.add_argument("--results", default=os.path.join(BENCH_DIR, "STALLS.md"), help="results file ('' for none)")
    args = parser.parse_args()
    if args.snapshots < 20 or args.repeat > args.snapshots // 4:
        parser.error("--snapshots must be at least 20 and 4 times --repeat")
    try:
        import nbd  # noqa: F401
    except ImportError:
        sys.exit("bench: needs libnbd's Python binding (Debian: python3-libnbd); run with /usr/bin/python3")
    if common.output(["findmnt", "-n", "-o", "FSTYPE", "-T", args.dir]) == "tmpfs":
        sys.exit(f"bench: {args.dir} is on tmpfs")
    stat = os.statvfs(args.dir)
    if stat.f_bavail * stat.f_frsize < 3 * GiB:
        sys.exit(f"bench: {args.dir} has less than 3 GiB free")

    commit = args.source or common.source_state()
    args.remapd = os.path.abspath(args.remapd or common.build_remapd())

    def interrupted(signum, frame):
        raise common.Interrupted(signal.Signals(signum).name)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupted)
    workdir = tempfile.mkdtemp(prefix=".run-stalls-", dir=args.dir)
    bench = Bench(args, workdir)
    load_start = open("/proc/loadavg").read().split()[:3]
    started = time.monotonic()
    failure = None
    log(f"directory {workdir}; load average {' '.join(load_start)}")
    try:
        bench.start()
        bench.set_up()
        bench.reader = Reader(bench.uri("reader"), 256 * MiB, workdir)
        time.sleep(1)
        bench.commands()
        bench.reader.stop()
        bench.server.check_alive()
        bench.server.stop()
    except common.Interrupted as name:
        failure = f"interrupted by {name}"
    except (BenchError, subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError, http.client.HTTPException) as error:
        failure = f"{type(error).__name__}: {error}"
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        if bench.reader is not None:
            bench.reader.kill()
        if failure and bench.server is not None:
            log(f"remapd log tail:\n{bench.server.log_tail()}")
        common.Server.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
    if failure:
        log(f"FAILED: {failure}")
        return 1
    elapsed = time.monotonic() - started
    load = f"{' '.join(load_start)} at the start, {' '.join(open('/proc/loadavg').read().split()[:3])} at the end"
    machine = snapshots.machine_description(args.dir, args.remapd, bench.version, commit, load)
    head, rows = bench.table()
    print(snapshots.text_table(head, rows))
    print()
    print(snapshots.text_table(*bench.engine_table()))
    print("\n".join(bench.checks()))
    if args.results:
        write_results(bench, args, machine, elapsed, args.results)
        log(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
