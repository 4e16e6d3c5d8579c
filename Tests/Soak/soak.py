#!/usr/bin/python3
"""The crash test grown into a soak (issue 10): round after round of mixed
NBD load with snapshots, clones and reservations in flight, then kill -9 of
remapd at a random moment, and a check of everything the contract
promises before the next round starts from what the daemon shows.

Each round: every volume (3 of 16 MiB) has 2 NBD connections with up to 8
requests each in flight (WRITE of 512 B to 1 MiB, some FUA; TRIM;
WRITE_ZEROES with and without NO_HOLE; READ checked against the model;
FLUSH), on ranges no other request in flight touches; meanwhile a second
thread takes snapshots (each read back whole once taken), deletes them,
clones them, deletes clones, and makes and releases range reservations.
After 0.3-1.5 s remapd gets SIGKILL with requests in flight. Then:

- `remapd check --state-dir DIR` exits 0 (when remapd has the subcommand);
- after the restart every sector of every volume, snapshot and clone holds
  what the contract allows (model.py): every write acknowledged before a
  completed FLUSH (or with FUA) is there, or a later one; a snapshot reads
  what it read when it was taken (only data its volume had not flushed
  then may be older); nothing reads data never written there;
- capacity = allocated + reserved + free, and `GET /v1/pools/default/check`
  is clean.

One line per round, then a summary (rounds, wall time, failures, lost
writes, changed snapshots). A failed round is counted and the soak carries
on from what the daemon shows; the exit status is 1 if any round failed.

    /usr/bin/python3 Tests/Soak/soak.py --rounds 100 [--seed N] [--keep]

(`make soak ROUNDS=N`). Tests/Integration/test_soak.py runs a short one.
"""

import argparse
import collections
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "Integration"))

from harness import CHUNK, KiB, MiB, REMAPD, Api, Remapd, check_space, export_uri, read_all, run  # noqa: E402
from model import SECTOR, Image, aio_wait, errname  # noqa: E402

import nbd  # noqa: E402

VOLUMES = 3
VOLUME_SIZE = 16 * MiB
POOL_SIZE = "192M"          # never full: 3 volumes, 4 snapshots, 2 clones, 9 ranges and their sticky space
CONNECTIONS = 2             # per volume
DEPTH = 8                   # requests in flight per connection
MAX_SNAPSHOTS = 4
MAX_CLONES = 2


class RoundFailure(Exception):
    pass


class Op:
    __slots__ = ("kind", "vol", "off", "length", "rec", "buf", "issued", "want", "slot")

    def __init__(self, kind, vol, off, length, issued):
        self.kind, self.vol, self.off, self.length, self.issued = kind, vol, off, length, issued
        self.rec = self.buf = self.want = self.slot = None


SLOT = MiB  # the largest read or write the soak makes


class Slots:
    """I/O buffers reused from round to round. Debian's libnbd 1.14 Python
    binding never lets go of a buffer given to aio_pread/aio_pwrite: a new
    one per request grew the soak by ~100 MiB a round (OOM-killed at round
    480 of 1,000). What it keeps now is a small view into a reused slot."""

    def __init__(self):
        self.free = []

    def buffer(self, op, data=None):
        op.slot = self.free.pop() if self.free else bytearray(SLOT)
        view = memoryview(op.slot)[:op.length]
        if data is not None:
            view[:] = data
        return nbd.Buffer.from_buffer(view)

    def release(self, op):
        if op.slot is not None:
            self.free.append(op.slot)
            op.slot = None


class Soak:
    """The daemon, the model of its images, the load and the checks."""

    def __init__(self, d, seed, out=print):
        self.d, self.seed, self.out = d, seed, out
        self.rng = random.Random(seed)
        self.api = Api(d.api_sock)
        self.lock = threading.Lock()
        self.images = {}                   # name -> Image (volumes, snapshots, clones)
        self.slots = Slots()
        # Volumes with a snapshot asked for and not answered: their records
        # are not folded, so a snapshot whose answer a kill cut can be
        # checked against every value the volume held since it was asked.
        self.snapshot_pending = collections.Counter()
        self.created = {}                  # snapshot name -> event when its 2xx arrived
        self.event = 0
        self.counter = 0
        self.totals = collections.Counter()
        # `remapd check` is the offline checker (issue 10); older remapds lack it.
        self.check_available = b"remapd check" in run([REMAPD, "check", "--help"]).stdout
        for i in range(VOLUMES):
            name = f"soak{i}"
            status, _, body = self.api("POST", "/v1/volumes", {"name": name, "sizeBytes": VOLUME_SIZE})
            if status not in (200, 201):
                raise RoundFailure(f"create volume {name}: {status} {body}")
            self.images[name] = Image(name, "volume", VOLUME_SIZE, family=i)
            self.images[name].frozen = True

    def tick(self):
        self.event += 1
        return self.event

    def volumes(self):
        return [img for img in self.images.values() if img.kind == "volume"]

    # ------------------------------------------------------------ a round

    def round(self, n):
        """One round; returns a dict of what happened, with "problems"."""
        stats = collections.Counter()
        problems = []
        self.journal = []          # the round's control-plane changes, for failure messages
        self.oplog = []            # every request of the round (written to a file if it fails)
        self.round_stats, self.round_problems = stats, problems
        conns = []
        for vol in self.volumes():
            for i in range(CONNECTIONS):
                h = nbd.NBD()
                h.set_handle_name(f"soak-{vol.name}-{i}")
                h.connect_uri(export_uri(self.d, vol.name))
                self.d._handles.append(h)
                conns.append({"h": h, "vol": vol, "inflight": {}, "dead": False})
        busy = {vol.name: [] for vol in self.volumes()}
        stop = threading.Event()
        control = Control(self, stop)
        kill_after = self.rng.uniform(0.3, 1.5)
        control.start()
        start = time.monotonic()
        killed = False
        try:
            while True:
                live = [c for c in conns if not c["dead"]]
                if not live:
                    break
                now = time.monotonic() - start
                if not killed and now >= kill_after:
                    stats["inflight-at-kill"] = sum(len(c["inflight"]) for c in conns)
                    self.d.kill9()
                    killed = True
                    stop.set()
                if killed and now > kill_after + 10:
                    raise RoundFailure("connections still open 10 s after the kill")
                if not killed:
                    for c in live:
                        while len(c["inflight"]) < DEPTH:
                            if not self.issue(c, busy[c["vol"].name], stats):
                                break
                self.pump(live, killed, busy, stats, problems)
                if problems and not killed:
                    break
        finally:
            stop.set()
            control.join(30)
        if not killed:
            self.d.kill9()
        self.d.close_handles()
        if control.error:
            problems.append(control.error)
        if problems:
            raise RoundFailure("; ".join(problems[:5]))
        stats["load-seconds"] = round(kill_after, 2)
        return stats

    def issue(self, c, busy, stats):
        rng, vol, h = self.rng, c["vol"], c["h"]
        r = rng.random()
        if r < 0.07:
            op = Op("flush", vol, 0, 0, self.tick())
            c["inflight"][h.aio_flush()] = op
            self.oplog.append(f"{op.issued} issue flush {vol.name}")
            stats["flush"] += 1
            return True
        kind = "write" if r < 0.7 else "read" if r < 0.82 else rng.choice(["trim", "zero", "zero-nohole"])
        length = rng.choice([512 * rng.randint(1, 16), 4 * KiB * rng.randint(1, 16), CHUNK * rng.randint(1, 4),
                             512 * rng.randint(1, 2048)])
        for _ in range(10):
            off = rng.randrange(0, (vol.size - length) // SECTOR + 1) * SECTOR
            if not any(a < off + length and off < b for a, b in busy):
                break
        else:
            return False
        with self.lock:
            op = Op(kind, vol, off, length, self.tick())
            if kind == "read":
                op.want = bytes(vol.cur[off:off + length])
                op.buf = self.slots.buffer(op)
                cookie = h.aio_pread(op.buf, off)
            else:
                fua = rng.random() < 0.08
                flags = nbd.CMD_FLAG_FUA if fua else 0
                if kind == "write":
                    data = rng.randbytes(length)
                    op.buf = self.slots.buffer(op, data)
                    cookie = h.aio_pwrite(op.buf, off, flags=flags)
                    op.rec = vol.record(off, data, length)
                else:
                    if kind == "trim":
                        cookie = h.aio_trim(length, off, flags=flags)
                    else:
                        cookie = h.aio_zero(length, off, flags=flags | (nbd.CMD_FLAG_NO_HOLE if kind == "zero-nohole" else 0))
                    op.rec = vol.record(off, None, length)
                op.rec.durable = False
                if fua:
                    op.kind += "-fua"
        busy.append((off, off + length))
        c["inflight"][cookie] = op
        self.oplog.append(f"{op.issued} issue {op.kind} {vol.name} {off}+{length}")
        stats[kind] += 1
        return True

    def pump(self, live, killed, busy, stats, problems):
        by_handle = {c["h"]: c for c in live}
        gone, failed = aio_wait(list(by_handle))
        for h in gone:
            by_handle[h]["dead"] = True
        for h, e in failed:
            if not killed:
                problems.append(f"connection to {by_handle[h]['vol'].name} failed before the kill: {e}")
        for c in live:
            self.complete(c, killed, busy, stats, problems)
            if c["h"].aio_is_dead() or c["h"].aio_is_closed():
                self.complete(c, killed, busy, stats, problems)
                if not killed and not c["dead"]:
                    problems.append(f"connection to {c['vol'].name} died before the kill")
                c["dead"] = True

    def complete(self, c, killed, busy, stats, problems):
        for cookie, op in list(c["inflight"].items()):
            try:
                if not c["h"].aio_command_completed(cookie):
                    continue
            except nbd.Error as e:
                del c["inflight"][cookie]
                self.release(busy[op.vol.name], op)
                self.slots.release(op)
                if not killed:
                    problems.append(f"{op.kind} of {op.vol.name} {op.off}+{op.length} failed before the kill: "
                                    f"{errname(e.errnum)} {e}")
                continue               # in flight at the kill: its fate is learnt after the restart
            del c["inflight"][cookie]
            self.release(busy[op.vol.name], op)
            with self.lock:
                done = self.tick()
                self.oplog.append(f"{done} done {op.kind} {op.vol.name} {op.off}+{op.length} (issued {op.issued})")
                if op.kind == "flush":
                    self.flushed(op.vol, op.issued)
                elif op.kind == "read":
                    got = bytes(op.buf.to_buffer())
                    if got != op.want:
                        bad = next(i for i in range(0, op.length, SECTOR)
                                   if got[i:i + SECTOR] != op.want[i:i + SECTOR])
                        problems.append(f"read of {op.vol.name} at {op.off + bad} returned other bytes "
                                        "than written")
                else:
                    op.rec.acked = done
                    if op.kind.endswith("-fua"):
                        op.rec.durable = True
                    stats["acked"] += 1
            self.slots.release(op)

    @staticmethod
    def release(busy, op):
        if op.kind != "flush":
            busy.remove((op.off, op.off + op.length))

    def flushed(self, vol, issued):
        """A FLUSH of vol issued at event `issued` completed: what was
        acknowledged before it is durable, and every snapshot of vol taken
        before it holds what it captured for good."""
        for r in vol.recs:
            if r.acked is not None and r.acked < issued:
                r.durable = True
        if not self.snapshot_pending[vol.name]:
            vol.fold()
        for s in self.images.values():
            if s.origin is vol and s.frozen and self.created.get(s.name, issued) < issued:
                s.base, s.recs = None, []
        self.round_stats["flush-acked"] += 1

    # ------------------------------------------------------------ after the kill

    def verify(self, control):
        """Offline check, restart, then every image against the model."""
        report = {"lost": 0, "changed": 0, "problems": []}
        if self.check_available:
            # Milliseconds normally; the limit only catches a hang (a machine
            # short of memory once made it take minutes).
            p = run([REMAPD, "check", "--state-dir", self.d.state_dir], timeout=600)
            if p.returncode != 0:
                report["problems"].append(f"remapd check exited {p.returncode}: "
                                          f"{(p.stdout + p.stderr).decode(errors='replace')[:2000]}")
        self.d.start()
        self.api.close()
        self.settle_control(control, report)
        observed = {}
        for img in list(self.images.values()):
            h = self.d.nbd(img.name)
            got = read_all(h, img.size)
            observed[img.name] = got
            bad = img.crash_problems(got)
            if bad:
                durable = sum(1 for _, why in bad if "durable" in why)
                if img.kind == "volume":
                    report["lost"] += durable
                else:
                    report["changed"] += 1
                s, why = bad[0]
                report["problems"].append(f"{img.kind} {img.name}: {len(bad)} sectors not allowed, first at byte "
                                          f"{s * SECTOR}: {why}; it reads {self.explain(got, s)}; this round: "
                                          + ", ".join(self.journal))
        pool = self.api.ok("GET", "/v1/pools/default")
        try:
            check_space(pool)
        except AssertionError as e:
            report["problems"].append(f"identity: {e}")
        deadline = time.monotonic() + 5
        while True:
            body = self.api.ok("GET", "/v1/pools/default/check")
            if body.get("ok") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not body.get("ok"):
            report["problems"].append(f"pool check: {body}")
        # The next round starts from what the daemon shows, durably.
        for img in self.images.values():
            img.cur = bytearray(observed[img.name])
            img.base, img.recs = None, []
        for img in self.images.values():
            if img.kind != "snapshot":
                self.d.nbd(img.name).flush()
        self.d.close_handles()
        self.created.clear()
        return report

    def explain(self, got, s):
        """What the bytes of sector s are, for a failure message."""
        value = got[s * SECTOR:(s + 1) * SECTOR]
        if not any(value):
            return "zeros"
        where = [img.name for img in self.images.values() if img.cur[s * SECTOR:(s + 1) * SECTOR] == value]
        return f"what {', '.join(where)} held there" if where else "data no image held there"

    def settle_control(self, control, report):
        """Control-plane calls cut by the kill happened or not: follow the
        daemon. A snapshot whose content was never read is read now."""
        snaps = {f"{s['volume']}@{s['name']}" for s in self.api.ok("GET", "/v1/snapshots")["snapshots"]}
        vols = {v["name"] for v in self.api.ok("GET", "/v1/volumes?limit=1000")["volumes"]}
        with self.lock:
            for name, img in list(self.images.items()):
                if name not in (snaps if img.kind == "snapshot" else vols):
                    if name not in control.unsure:
                        report["problems"].append(f"{img.kind} {name} (2xx) is gone after the restart")
                    del self.images[name]
            for name, img in control.unsure.items():
                if name in (snaps | vols) and name not in self.images:
                    # Created (its answer lost in the kill): what it reads is
                    # checked against what its volume may hold.
                    if img.origin is not None:
                        capture(img, img.origin, img.sent)
                    self.images[name] = img
        control.unsure.clear()
        self.snapshot_pending.clear()
        # Anything the soak no longer follows (a call that failed after it let
        # go of the image, in a failed round) is deleted, so images never pile
        # up and fill the pool over a long soak.
        for name in sorted(snaps - set(self.images)):
            self.api.ok("DELETE", f"/v1/snapshots/{name}", expect=204)
        for name in sorted(vols - set(self.images)):
            self.api.ok("DELETE", f"/v1/volumes/{name}", expect=204)


def capture(snap, vol, sent):
    """What snapshot `snap` of `vol`, asked for at event `sent`, may hold:
    every write acknowledged before that (a FLUSH of the volume later makes
    them durable in it too), and maybe those in flight then or since (as
    copies: its volume's FLUSH says nothing about whether it has them)."""
    snap.sent = sent
    snap.cur, snap.base = bytearray(vol.cur), vol.base or bytes(vol.cur)
    snap.recs = [r if r.acked is not None and r.acked < sent else r.copy() for r in vol.recs]
    for r in snap.recs:
        if r.acked is None or r.acked >= sent:
            r.durable = False


class Control(threading.Thread):
    """Snapshots, clones and range reservations while the load runs."""

    def __init__(self, soak, stop):
        super().__init__(daemon=True)
        self.soak, self.stop = soak, stop
        self.rng = random.Random(soak.rng.randrange(1 << 30))
        self.api = Api(soak.d.api_sock, timeout=10)
        self.error = None
        self.unsure = {}         # name -> Image of a create cut by the kill (or deleted: None)

    def run(self):
        try:
            while not self.stop.wait(self.rng.uniform(0.02, 0.15)):
                self.one()
        except Exception as e:    # cut by the kill, or reported by the round
            if not self.stop.wait(2.0):
                self.error = f"control plane: {type(e).__name__}: {e}"

    def call(self, method, path, body=None, ok=(200, 201, 204)):
        status, _, result = self.api(method, path, body)
        if status not in ok:
            raise RoundFailure(f"{method} {path} {body} -> {status} {result}")
        return status, result

    def one(self):
        s, rng = self.soak, self.rng
        with s.lock:
            snaps = [i for i in s.images.values() if i.kind == "snapshot"]
            clones = [i for i in s.images.values() if i.kind == "clone"]
            vols = s.volumes()
        op = rng.choice(["snapshot", "snapshot", "delete", "clone", "delete-clone", "reserve", "release"])
        if op == "snapshot" and len(snaps) < MAX_SNAPSHOTS:
            vol = rng.choice(vols)
            s.counter += 1
            name = f"{vol.name}@r{s.counter}"
            snap = Image(name, "snapshot", vol.size, vol.family, origin=vol)
            snap.frozen = False       # until read back whole
            self.unsure[name] = snap
            with s.lock:
                sent = s.tick()
                capture(snap, vol, sent)
                s.snapshot_pending[vol.name] += 1
            self.call("POST", f"/v1/volumes/{vol.name}/snapshots", {"name": name.split("@")[1]}, ok=(201,))
            with s.lock:
                capture(snap, vol, sent)
                s.created[name] = s.tick()
                s.images[name] = snap
                s.snapshot_pending[vol.name] -= 1
            del self.unsure[name]
            h = nbd.NBD()
            h.connect_uri(export_uri(s.d, name))
            try:
                got = read_all(h, snap.size)
            finally:
                h.shutdown()
            bad = snap.crash_problems(got)
            if bad:
                raise RoundFailure(f"snapshot {name} just taken: {len(bad)} sectors hold what its volume never "
                                   f"held then, first at byte {bad[0][0] * SECTOR}: {bad[0][1]}")
            with s.lock:
                snap.cur, snap.frozen = bytearray(got), True
            s.round_stats["snapshot"] += 1
            s.journal.append(f"snapshot {name}")
            s.oplog.append(f"{s.created[name]} snapshot {name} answered (asked at {sent})")
        elif op in ("delete", "delete-clone") and (snaps if op == "delete" else clones):
            img = rng.choice(snaps if op == "delete" else clones)
            self.unsure[img.name] = img
            with s.lock:
                del s.images[img.name]
            self.call("DELETE", f"/v1/snapshots/{img.name}" if op == "delete" else f"/v1/volumes/{img.name}",
                      ok=(204,))
            del self.unsure[img.name]
            s.round_stats["delete-" + img.kind] += 1
            s.journal.append(f"delete {img.name}")
        elif op == "clone" and snaps and len(clones) < MAX_CLONES:
            snap = rng.choice(snaps)
            s.counter += 1
            name = f"clone{s.counter}"
            clone = Image(name, "clone", snap.size, snap.family)
            with s.lock:
                clone.cur, clone.base = bytearray(snap.cur), snap.base
                clone.recs = [r.copy() for r in snap.recs]
            self.unsure[name] = clone
            self.call("POST", f"/v1/snapshots/{snap.name}/clone", {"name": name}, ok=(201,))
            with s.lock:
                s.images[name] = clone
            del self.unsure[name]
            s.round_stats["clone"] += 1
            s.journal.append(f"clone {snap.name} as {name}")
        elif op == "reserve":
            vol = rng.choice(vols)
            if len(self.call("GET", f"/v1/volumes/{vol.name}/reservations", ok=(200,))[1]["reservations"]) >= 3:
                return            # a few per volume: the pool must never fill
            count = rng.randint(1, 16)
            first = rng.randrange(0, vol.nchunks - count + 1)
            self.call("POST", f"/v1/volumes/{vol.name}/reservations",
                      {"offsetBytes": first * CHUNK, "lengthBytes": count * CHUNK}, ok=(201, 507))
            s.round_stats["reserve"] += 1
            s.journal.append(f"reserve {vol.name} chunks {first}+{count}")
        elif op == "release":
            vol = rng.choice(vols)
            _, body = self.call("GET", f"/v1/volumes/{vol.name}/reservations", ok=(200,))
            if body["reservations"]:
                r = rng.choice(body["reservations"])
                self.call("DELETE", f"/v1/volumes/{vol.name}/reservations/{r['id']}", ok=(204,))
                s.round_stats["release"] += 1
                s.journal.append(f"release {vol.name} chunks {r['offsetBytes'] // CHUNK}+{r['bytes'] // CHUNK}")


def soak(d, rounds, seed, out=print):
    """Runs `rounds` rounds on daemon `d` (running); returns the summary."""
    s = Soak(d, seed, out)
    started = time.monotonic()
    summary = collections.Counter()
    for n in range(1, rounds + 1):
        t0 = time.monotonic()
        problems = []
        try:
            stats = s.round(n)
        except RoundFailure as e:
            stats, problems = s.round_stats, [str(e)]
            if d.running:
                d.kill9()
            d.close_handles()
        control = Control(s, threading.Event())
        report = s.verify(control)
        problems += report["problems"]
        if problems:
            path = d.log_path.parent / f"soak-round-{n}-requests.log"
            path.write_text("\n".join(s.oplog) + "\n")
            problems.append(f"every request of the round in {path}")
        summary["lost"] += report["lost"]
        summary["changed"] += report["changed"]
        summary["failures"] += bool(problems)
        for k, v in stats.items():
            summary[k] += v
        keys = ("write", "trim", "zero", "zero-nohole", "read", "flush-acked", "snapshot", "clone", "reserve",
                "inflight-at-kill")
        line = (f"round {n}/{rounds}: {time.monotonic() - t0:.1f}s " + " ".join(f"{k} {stats[k]}" for k in keys)
                + (" ok" if not problems else " FAILED: " + " | ".join(problems)))
        out(line)
    wall = time.monotonic() - started
    summary.update({"rounds": rounds, "wall-seconds": round(wall, 1), "seed": seed,
                    "offline-check": s.check_available})
    out(f"soak: {rounds} rounds in {wall:.0f} s, seed {seed}: failures {summary['failures']}, lost writes "
        f"{summary['lost']}, changed snapshots {summary['changed']}; {summary['acked']} writes acknowledged, "
        f"{summary['flush-acked']} FLUSHes, {summary['snapshot']} snapshots, {summary['clone']} clones, "
        f"{summary['inflight-at-kill']} requests in flight at the kills; remapd check "
        f"{'after every kill' if s.check_available else 'not available in this remapd'}")
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--seed", type=int, default=None, help="replays a run's workload (the timing still varies)")
    ap.add_argument("--dir", help="state directory parent (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the state directory and log")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    top = Path(args.dir or tempfile.mkdtemp(prefix="remap-soak-"))
    d = Remapd(top / "s", pool_size=POOL_SIZE)
    d.start()
    try:
        summary = soak(d, args.rounds, seed)
    finally:
        d.cleanup(keep_pools=args.keep)  # --keep: the state can be started again to look at it
        print(f"log: {d.log_path}" if args.keep else "", end="\n" if args.keep else "")
        if not args.keep and not args.dir:
            import shutil
            shutil.rmtree(top, ignore_errors=True)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
