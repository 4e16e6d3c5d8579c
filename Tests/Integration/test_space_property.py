"""Property test of honest space: thousands of seeded random operations on
a small pool (64 chunks of 64 KiB under up to six volumes of 4-32 chunks),
each followed by a full comparison of the daemon's accounting with a model,
with two `kill -9` restarts at random points.

Operations: create (plain, thick, default-pooled) and delete volumes;
writes through a volume's own export or an export bound to a pooled
reservation; TRIM (+FLUSH); FLUSH; pooled reservations (some leases of 1-2 s,
some bound to an export); range reservations; release; renew; read-back;
"consume" (write a bound reservation's whole remainder on a full pool);
"fill range" (write a range reservation's whole range); "fill pool".

The model knows each chunk's state (hole, data, or reserved-unwritten of a
range reservation) and every reservation's remaining chunks, and predicts:
a covered write must succeed, a write beyond (free + what may still expire)
must fail with ENOSPC; a reservation that fits must get 201, one that cannot
507. After every step: capacity == allocated + reserved + free, and each of
those, each volume's allocated/reserved/guaranteedWritable bytes and each
reservation's bytes/usedBytes equal the model's; leases end within their
TTL (+2 s) and not before.

Set REMAP_SPACE_SEED / REMAP_SPACE_STEPS to reproduce or lengthen a run.
"""

import collections
import errno
import os
import random
import time

import pytest

from harness import CHUNK, GiB, Api, check_space, export_uri, parse_time, wait_until

import nbd  # noqa: E402

SEED = int(os.environ.get("REMAP_SPACE_SEED", "20261125"))
STEPS = int(os.environ.get("REMAP_SPACE_STEPS", "5000"))
TIME_BUDGET = float(os.environ.get("REMAP_SPACE_SECONDS", "75"))
MIN_STEPS = 600
POOL_CHUNKS = 64
MAX_VOLUMES = 6
KILLS = 2
LEASE_GRACE = 2.0   # a lease may outlive its expiresAt by this much (sweeper period)
HOLE, DATA = 0, 1   # chunk states; a reservation id (str) = reserved-unwritten, owned by that range


class ModelError(AssertionError):
    pass


class Vol:
    def __init__(self, name, n):
        self.name, self.n = name, n
        self.state = [HOLE] * n
        self.data = bytearray(n * CHUNK)
        self.handle = None
        self.default = None   # id of the "default" pooled reservation
        self.thick = None     # id of the "thick" range reservation

    @property
    def size(self):
        return self.n * CHUNK


class Res:
    def __init__(self, rid, vol, kind, count, first=None, ttl=None, expires=None, name=None):
        self.id, self.vol, self.kind, self.count, self.first = rid, vol, kind, count, first
        self.remaining = count if kind == "pooled" else 0   # pooled only; range: derived
        self.ttl, self.expires, self.name = ttl, expires, name
        self.original_ttl = ttl
        self.renewable = False  # only these leases get renewed; the others must expire
        self.export = None
        self.handle = None

    @property
    def lease(self):
        return self.ttl is not None

    def chunks(self):
        return range(self.first, self.first + self.count)


class World:
    """The daemon, the model, and the operations that keep them in step."""

    def __init__(self, d, rng):
        self.d, self.rng = d, rng
        self.api = Api(d.api_sock)
        self.free = POOL_CHUNKS
        self.vols = {}
        self.res = {}
        self.dirty = {}          # (vol, chunk) -> draw source of an unflushed write
        self.counter = 0
        self.log = collections.deque(maxlen=40)
        self.stats = collections.Counter()

    # ------------------------------------------------------------ helpers

    def fail(self, msg):
        raise ModelError(f"{msg}\nseed {SEED}; last operations:\n  " + "\n  ".join(self.log))

    def note(self, text):
        self.log.append(f"[{self.stats['steps']}] {text}")

    def call(self, method, path, body=None):
        return self.api(method, path, body)

    def open(self, export):
        h = nbd.NBD()
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        h.connect_uri(export_uri(self.d, export))
        self.d._handles.append(h)
        return h

    def close(self, h):
        if h is None:
            return
        try:
            h.shutdown()
        except nbd.Error:
            pass
        if h in self.d._handles:
            self.d._handles.remove(h)

    def range_owner(self, vol, c):
        for r in self.res.values():
            if r.vol == vol.name and r.kind == "range" and r.first <= c < r.first + r.count:
                return r.id
        return None

    def leases_remaining(self, exclude=()):
        return sum(r.remaining for r in self.res.values() if r.lease and r.id not in exclude)

    def vol_res(self, vol):
        return [r for r in self.res.values() if r.vol == vol.name]

    # ------------------------------------------------------------ model updates

    def apply_write(self, vol, chunks, via):
        for c in chunks:
            s = vol.state[c]
            if s == HOLE:
                src = None
                for rid in (via, vol.default):
                    if rid and rid in self.res and self.res[rid].remaining > 0:
                        self.res[rid].remaining -= 1
                        src = rid
                        break
                if src is None:
                    self.free -= 1
                    src = "free"
                vol.state[c] = DATA
                self.dirty.setdefault((vol.name, c), src)
            elif s == DATA:
                self.dirty.setdefault((vol.name, c), None)
            else:
                vol.state[c] = DATA
                self.dirty.setdefault((vol.name, c), ("range", s))

    def apply_trim(self, vol, off, length):
        for c in range(-(-off // CHUNK), (off + length) // CHUNK):
            if vol.state[c] == DATA:
                owner = self.range_owner(vol, c)
                if owner:
                    vol.state[c] = owner        # TRIM inside a range keeps the backing
                else:
                    vol.state[c] = HOLE
                    self.free += 1
        vol.data[off:off + length] = bytes(length)

    def apply_release(self, r):
        vol = self.vols[r.vol]
        if r.kind == "pooled":
            self.free += r.remaining
        else:
            for c in r.chunks():
                if vol.state[c] == r.id:
                    vol.state[c] = HOLE
                    self.free += 1
        del self.res[r.id]
        if vol.default == r.id:
            vol.default = None
        if vol.thick == r.id:
            vol.thick = None

    def expected(self):
        alloc = {v.name: sum(1 for s in v.state if s == DATA) for v in self.vols.values()}
        unwritten = {v.name: sum(1 for s in v.state if isinstance(s, str)) for v in self.vols.values()}
        pooled = collections.Counter()
        for r in self.res.values():
            if r.kind == "pooled":
                pooled[r.vol] += r.remaining
        return alloc, unwritten, pooled

    # ------------------------------------------------------------ the check

    def snapshot(self):
        res = {}
        for name in sorted(self.vols):
            status, _, body = self.call("GET", f"/v1/volumes/{name}/reservations")
            if status != 200:
                self.fail(f"GET reservations of {name} -> {status} {body}")
            res[name] = {r["id"]: r for r in body["reservations"]}
        status, _, pool = self.call("GET", "/v1/pools/p")
        if status != 200:
            self.fail(f"GET /v1/pools/p -> {status} {pool}")
        status, _, body = self.call("GET", "/v1/volumes?pool=p&limit=1000")
        vols = {v["name"]: v for v in body["volumes"]}
        again = {}
        for name in sorted(self.vols):
            again[name] = {r["id"]: r for r in self.call("GET", f"/v1/volumes/{name}/reservations")[2]["reservations"]}
        return pool, vols, res, again

    def check(self, what):
        """Compare everything the daemon publishes with the model; retry
        briefly (freed chunks are published at the commit after a FLUSH,
        a lease may end between two GETs) before failing."""
        deadline = time.monotonic() + 2.0
        while True:
            pool, vols, res, again = self.snapshot()
            problems = self.compare(pool, vols, res, again)
            if not problems:
                return
            if time.monotonic() > deadline:
                self.fail(f"after {what}: " + "; ".join(problems) + f"\npool: {pool}")
            time.sleep(0.05)

    def compare(self, pool, vols, res, again):
        try:
            check_space(pool)
        except AssertionError as e:
            self.fail(f"pool identity broken: {e}")
        if res != again:
            return ["reservations changed during the snapshot"]
        if set(vols) != set(self.vols):
            self.fail(f"volumes {sorted(vols)} != model {sorted(self.vols)}")
        now = time.time()
        # Reservations: ended leases leave the model; nothing else may vanish.
        for name, server in res.items():
            model_ids = {r.id for r in self.res.values() if r.vol == name}
            extra = set(server) - model_ids
            if extra:
                self.fail(f"unknown reservations on {name}: {[server[i] for i in extra]}")
            for rid in model_ids - set(server):
                r = self.res[rid]
                if not r.lease:
                    self.fail(f"reservation {rid} ({r.kind}) of {name} vanished")
                if now < r.expires - 1.0:
                    self.fail(f"lease {rid} ended {r.expires - now:.1f}s before its expiresAt")
                self.note(f"lease {rid} expired ({now - r.expires:+.1f}s)")
                self.stats["expired"] += 1
                self.apply_release(r)
            for rid in set(server) & model_ids:
                r = self.res[rid]
                if r.lease and now > r.expires + LEASE_GRACE:
                    self.fail(f"lease {rid} still there {now - r.expires:.1f}s after its expiresAt")
        problems = []
        alloc, unwritten, pooled = self.expected()
        exp_alloc = sum(alloc.values())
        exp_reserved = sum(unwritten.values()) + sum(pooled.values())
        got = (pool["allocatedBytes"] // CHUNK, pool["reservedBytes"] // CHUNK, pool["freeBytes"] // CHUNK)
        if got != (exp_alloc, exp_reserved, self.free) or pool["capacityBytes"] != POOL_CHUNKS * CHUNK:
            problems.append(f"pool allocated/reserved/free chunks {got} != model "
                            f"{(exp_alloc, exp_reserved, self.free)}")
        for name, v in vols.items():
            mv = self.vols[name]
            want = (alloc[name] * CHUNK, (unwritten[name] + pooled[name]) * CHUNK,
                    min(mv.size, (alloc[name] + unwritten[name] + pooled[name]) * CHUNK))
            have = (v.get("allocatedBytes"), v.get("reservedBytes"), v.get("guaranteedWritableBytes"))
            if have != want:
                problems.append(f"volume {name} allocated/reserved/guaranteedWritable {have} != {want}")
            for rid, sr in res[name].items():
                r = self.res[rid]
                left = r.remaining if r.kind == "pooled" else sum(1 for c in r.chunks() if mv.state[c] == rid)
                want_r = (r.kind, r.count * CHUNK, (r.count - left) * CHUNK,
                          r.first * CHUNK if r.kind == "range" else None)
                have_r = (sr.get("kind"), sr.get("bytes"), sr.get("usedBytes"), sr.get("offsetBytes"))
                if have_r != want_r:
                    problems.append(f"reservation {rid} kind/bytes/usedBytes/offsetBytes {have_r} != {want_r}")
                if r.lease and sr.get("expiresAt") and abs(parse_time(sr["expiresAt"]) - r.expires) > 1.0:
                    problems.append(f"lease {rid} expiresAt {sr['expiresAt']} != model {r.expires}")
        return problems

    # ------------------------------------------------------------ data path

    def write(self, vol, off, length, export=None, must=None, aio=None):
        """One write; the model decides whether it must succeed or fail.
        With `aio` (a list), the write is only sent (kept in flight for a
        kill), and only if it cannot fail."""
        h = export.handle if export else vol.handle
        first, last = off // CHUNK, (off + length - 1) // CHUNK
        chunks = range(first, last + 1)
        need = sum(1 for c in chunks if vol.state[c] == HOLE)
        via = export.id if export else None
        lower = self.free + sum(self.res[r].remaining for r in {via, vol.default} if r and r in self.res)
        upper = lower + self.leases_remaining(exclude={via, vol.default})
        data = self.rng.randbytes(length)
        self.note(f"{'aio ' if aio is not None else ''}write {vol.name}{'/' + export.export if export else ''} "
                  f"{off}+{length} need {need} lower {lower} upper {upper}")
        if aio is not None:
            if need > lower:
                return False
            buf = nbd.Buffer.from_bytearray(bytearray(data))
            aio.append((h, buf, h.aio_pwrite(buf, off)))
            # Its fate is learnt after the kill, like an unflushed write's.
            self.apply_write(vol, chunks, via)
            vol.data[off:off + length] = data
            return True
        try:
            h.pwrite(data, off)
            ok = True
        except nbd.Error as e:
            if e.errnum != errno.ENOSPC:
                self.fail(f"write {vol.name} {off}+{length} failed with {e}, not ENOSPC")
            ok = False
        if ok:
            if need > upper:
                self.fail(f"write of {need} new chunks succeeded with only {upper} available")
            self.apply_write(vol, chunks, via)
            vol.data[off:off + length] = data
            self.stats["writes"] += 1
        else:
            if need <= lower:
                self.fail(f"covered write ({need} new chunks, {lower} available) got ENOSPC")
            if need > 1:
                self.fail("internal: a write that may fail must need one new chunk")
            self.stats["enospc"] += 1
        if must is not None and ok != must:
            self.fail(f"write expected to {'succeed' if must else 'fail'}")
        return ok

    def hole_write_target(self, vol):
        holes = [c for c in range(vol.n) if vol.state[c] == HOLE]
        if not holes:
            return None
        c = self.rng.choice(holes)
        length = self.rng.choice([512, 4096, CHUNK])
        return c * CHUNK + self.rng.randrange(0, CHUNK - length + 1), length

    # ------------------------------------------------------------ operations

    def op_create_volume(self):
        if len(self.vols) >= MAX_VOLUMES:
            return self.op_delete_volume()
        self.counter += 1
        name = f"v{self.counter}"
        n = self.rng.randint(4, 32)
        kind = self.rng.choices(["plain", "thick", "default"], [70, 15, 15])[0]
        body = {"name": name, "sizeBytes": n * CHUNK, "pool": "p"}
        need = 0
        if kind == "thick":
            body["reservation"] = "thick"
            need = n
        elif kind == "default":
            k = self.rng.randint(1, n)
            body["reservation"] = {"bytes": k * CHUNK}
            need = k
        self.note(f"create {name} {n} chunks {kind} need {need} free {self.free}")
        status, _, v = self.call("POST", "/v1/volumes", body)
        self.expect_space_answer(status, v, need, f"create {name}")
        if status != 201:
            self.counter -= 1
            return
        vol = Vol(name, n)
        self.vols[name] = vol
        vol.handle = self.open(name)
        if kind != "plain":
            [sr] = self.call("GET", f"/v1/volumes/{name}/reservations")[2]["reservations"]
            if kind == "thick":
                r = Res(sr["id"], name, "range", n, first=0, name="thick")
                vol.thick = r.id
                for c in range(n):
                    vol.state[c] = r.id
            else:
                r = Res(sr["id"], name, "pooled", need, name="default")
                vol.default = r.id
            self.res[r.id] = r
        self.free -= need

    def expect_space_answer(self, status, body, need, what):
        """201 when `need` chunks fit in the free space, 507 when they cannot
        even if every lease ended; either in between."""
        certain_fit = need <= self.free
        certain_not = need > self.free + self.leases_remaining()
        if status == 201:
            if certain_not:
                self.fail(f"{what}: 201 for {need} chunks with {self.free} free")
            return
        if status != 507:
            self.fail(f"{what}: {status} {body}")
        if certain_fit:
            self.fail(f"{what}: 507 for {need} chunks with {self.free} free: {body}")
        if body.get("code") != "insufficient-space" or body["availableBytes"] >= body["requestedBytes"]:
            self.fail(f"{what}: bad 507 body {body}")
        if body["availableBytes"] < self.free * CHUNK:
            self.fail(f"{what}: 507 says {body['availableBytes']} available, model has {self.free} chunks")
        self.stats["507"] += 1

    def op_delete_volume(self):
        if len(self.vols) < 2:
            return self.op_create_volume()
        # Volumes holding leases are spared, mostly: the leases should get to expire.
        pick = [v for v in sorted(self.vols)
                if not any(r.lease for r in self.vol_res(self.vols[v])) or self.rng.random() < 0.02]
        if not pick:
            return
        vol = self.vols[self.rng.choice(pick)]
        self.note(f"delete {vol.name}")
        for r in self.vol_res(vol):
            self.unbind(r)
        self.close(vol.handle)
        vol.handle = None
        ok = wait_until(lambda: self.call("DELETE", f"/v1/volumes/{vol.name}")[0] == 204, timeout=3, interval=0.05)
        if not ok:
            self.fail(f"DELETE {vol.name}: {self.call('DELETE', f'/v1/volumes/{vol.name}')}")
        for r in self.vol_res(vol):
            if r.kind == "pooled":
                self.free += r.remaining
            del self.res[r.id]
        self.free += sum(1 for s in vol.state if s != HOLE)
        del self.vols[vol.name]
        self.dirty = {k: v for k, v in self.dirty.items() if k[0] != vol.name}

    def unbind(self, r):
        if r.export is None:
            return
        self.close(r.handle)
        r.handle = None
        ok = wait_until(lambda: self.call("DELETE", f"/v1/exports/{r.export}")[0] == 204, timeout=3, interval=0.05)
        if not ok:
            self.fail(f"DELETE export {r.export}: {self.call('DELETE', f'/v1/exports/{r.export}')}")
        r.export = None

    def pick_vol(self):
        return self.vols[self.rng.choice(sorted(self.vols))] if self.vols else None

    def op_write(self):
        vol = self.pick_vol()
        if not vol:
            return self.op_create_volume()
        bound = [r for r in self.vol_res(vol) if r.export]
        export = self.rng.choice(bound) if bound and self.rng.random() < 0.5 else None
        shape = self.rng.random()
        if shape < 0.4:
            length = self.rng.randint(1, 16) * 512
            off = self.rng.randrange(0, vol.size - length + 1)
        elif shape < 0.7:
            length = self.rng.randint(1, 3 * CHUNK)
            off = self.rng.randrange(0, vol.size - length + 1)
        else:
            k = self.rng.randint(1, 3)
            c = self.rng.randrange(0, vol.n - k + 1)
            off, length = c * CHUNK, k * CHUNK
        need = sum(1 for c in range(off // CHUNK, (off + length - 1) // CHUNK + 1) if vol.state[c] == HOLE)
        lower = self.free + sum(self.res[r].remaining for r in {export and export.id, vol.default}
                                if r and r in self.res)
        if need > lower and need > 1:
            target = self.hole_write_target(vol)
            off, length = target
        self.write(vol, off, length, export)
        # Read back what was just written (the same connection).
        h = export.handle if export else vol.handle
        got = h.pread(length, off)
        if got != bytes(vol.data[off:off + length]):
            self.fail(f"read back {vol.name} {off}+{length} differs")

    def op_trim(self):
        vol = self.pick_vol()
        if not vol:
            return
        length = self.rng.randint(1, 4 * CHUNK)
        off = self.rng.randrange(0, vol.size - length + 1)
        if self.rng.random() < 0.5:
            off, length = off // CHUNK * CHUNK, max(CHUNK, length // CHUNK * CHUNK)
            length = min(length, vol.size - off)
        self.note(f"trim {vol.name} {off}+{length} + flush")
        vol.handle.trim(length, off)
        self.apply_trim(vol, off, length)
        vol.handle.flush()
        self.dirty.clear()

    def op_flush(self):
        vol = self.pick_vol()
        if not vol:
            return
        self.note(f"flush {vol.name}")
        vol.handle.flush()
        self.dirty.clear()

    def op_reserve_pooled(self):
        vol = self.pick_vol()
        if not vol:
            return
        k = self.rng.randint(1, 12)
        body = {"bytes": k * CHUNK - self.rng.randrange(0, CHUNK)}
        ttl = None
        if self.rng.random() < 0.35:
            ttl = self.rng.choice([1, 2])
            body["ttlSeconds"] = ttl
        self.note(f"reserve pooled {vol.name} {k} chunks ttl {ttl} free {self.free}")
        t0 = time.time()
        status, _, r = self.call("POST", f"/v1/volumes/{vol.name}/reservations", body)
        self.expect_space_answer(status, r, k, f"reserve {k} on {vol.name}")
        if status != 201:
            if r["requestedBytes"] != k * CHUNK:
                self.fail(f"507 requestedBytes {r['requestedBytes']} for {k} chunks")
            return
        if (r.get("kind"), r.get("bytes"), r.get("usedBytes")) != ("pooled", k * CHUNK, 0):
            self.fail(f"new reservation {r}")
        expires = None
        if ttl:
            if not r.get("expiresAt"):
                self.fail(f"lease without expiresAt: {r}")
            expires = parse_time(r["expiresAt"])
            if not t0 + ttl - 1.05 <= expires <= time.time() + ttl + 1.0:
                self.fail(f"lease of {ttl}s expires at {r['expiresAt']} (now {time.time():.1f})")
        elif r.get("expiresAt"):
            self.fail(f"expiresAt on a reservation without TTL: {r}")
        res = Res(r["id"], vol.name, "pooled", k, ttl=ttl, expires=expires)
        res.renewable = bool(ttl) and self.rng.random() < 0.5
        self.res[res.id] = res
        self.stats["leases"] += bool(ttl)
        self.free -= k
        self.stats["reserved"] += 1
        if not ttl and self.rng.random() < 0.4:
            status, _, e = self.call("POST", "/v1/exports", {"volume": vol.name, "reservation": res.id})
            if status != 201 or e.get("name") != f"{vol.name}+{res.id}":
                self.fail(f"bind export -> {status} {e}")
            res.export = e["name"]
            res.handle = self.open(res.export)
            self.note(f"bound {res.export}")

    def op_reserve_range(self):
        vol = self.pick_vol()
        if not vol or vol.thick:
            return
        k = self.rng.randint(1, min(8, vol.n))
        first = self.rng.randrange(0, vol.n - k + 1)
        if any(self.range_owner(vol, c) for c in range(first, first + k)) or any(
                r.kind == "range" and r.vol == vol.name and r.first < first + k and first < r.first + r.count
                for r in self.res.values()):
            return
        need = sum(1 for c in range(first, first + k) if vol.state[c] == HOLE)
        body = {"offsetBytes": first * CHUNK, "lengthBytes": k * CHUNK - self.rng.randrange(0, CHUNK)}
        self.note(f"reserve range {vol.name} {first}+{k} need {need} free {self.free}")
        status, _, r = self.call("POST", f"/v1/volumes/{vol.name}/reservations", body)
        self.expect_space_answer(status, r, need, f"range {first}+{k} on {vol.name}")
        if status != 201:
            if r["requestedBytes"] not in (need * CHUNK, k * CHUNK):
                self.fail(f"507 requestedBytes {r['requestedBytes']}: need {need}, range {k} chunks")
            return
        res = Res(r["id"], vol.name, "range", k, first=first)
        self.res[res.id] = res
        for c in res.chunks():
            if vol.state[c] == HOLE:
                vol.state[c] = res.id
                self.free -= 1
        self.stats["reserved"] += 1

    def op_release(self):
        # Leases end by themselves (that is what is tested with them); only
        # a few renewable ones are released early.
        pick = [r for r in sorted(self.res)
                if not self.res[r].lease or (self.res[r].renewable and self.rng.random() < 0.1)]
        if not pick:
            return
        r = self.res[self.rng.choice(pick)]
        self.note(f"release {r.id} ({r.kind}, {r.vol}, remaining {r.remaining})")
        self.unbind(r)
        status, _, body = self.call("DELETE", f"/v1/volumes/{r.vol}/reservations/{r.id}")
        if status == 404 and r.lease and time.time() >= r.expires - 1.0:
            self.stats["expired"] += 1
        elif status != 204:
            self.fail(f"DELETE reservation {r.id} -> {status} {body}")
        self.apply_release(r)
        self.stats["released"] += 1

    def op_renew(self):
        leases = [r for r in self.res.values() if r.lease and r.renewable]
        if not leases or self.rng.random() < 0.1:
            plain = [r for r in self.res.values() if not r.lease]
            if plain:
                r = self.rng.choice(plain)
                status, _, body = self.call("POST", f"/v1/volumes/{r.vol}/reservations/{r.id}/renew", {})
                if status != 400:
                    self.fail(f"renew of a reservation without TTL -> {status} {body}")
            return
        r = self.rng.choice(leases)
        ttl = self.rng.choice([None, 1, 2, 3])
        t0 = time.time()
        self.note(f"renew {r.id} ttl {ttl}")
        status, _, body = self.call("POST", f"/v1/volumes/{r.vol}/reservations/{r.id}/renew",
                                    {} if ttl is None else {"ttlSeconds": ttl})
        if status == 404:
            if t0 < r.expires - 1.0:
                self.fail(f"renew of {r.id}: 404 {r.expires - t0:.1f}s before it should end")
            return  # the next check sees it gone
        if status != 200:
            self.fail(f"renew {r.id} -> {status} {body}")
        expires = parse_time(body["expiresAt"])
        # Without ttlSeconds: "the original TTL" (docs) or the last one.
        wants = {ttl} if ttl else {r.ttl, r.original_ttl}
        if not any(t0 + want - 1.05 <= expires <= time.time() + want + 1.0 for want in wants):
            want = wants
            self.fail(f"renewed {r.id} for {want}s (asked {ttl}) between {t0:.3f} and {time.time():.3f}: {body}")
        if ttl:
            r.ttl = ttl
        r.expires = expires
        self.stats["renewed"] += 1

    def op_consume(self):
        """A bound pooled reservation's whole remainder is writable through
        its export, also when the pool is otherwise full."""
        bound = [r for r in self.res.values() if r.export and r.remaining > 0]
        if not bound:
            return
        r = self.rng.choice(bound)
        vol = self.vols[r.vol]
        holes = [c for c in range(vol.n) if vol.state[c] == HOLE][:r.remaining]
        self.note(f"consume {r.id}: {len(holes)} of {r.remaining} remaining, free {self.free}")
        for c in holes:
            self.write(vol, c * CHUNK, CHUNK, r, must=True)
        self.stats["consumed"] += 1

    def op_fill_range(self):
        ranges = [r for r in self.res.values() if r.kind == "range"]
        if not ranges:
            return
        r = self.rng.choice(ranges)
        vol = self.vols[r.vol]
        self.note(f"fill range {r.id} {r.first}+{r.count}, free {self.free}")
        for c in r.chunks():
            self.write(vol, c * CHUNK, CHUNK, must=True)
        self.stats["filled-ranges"] += 1

    def op_fill_pool(self):
        vol = self.pick_vol()
        if not vol:
            return
        self.note(f"fill pool from {vol.name}, free {self.free}")
        for _ in range(16):
            target = self.hole_write_target(vol)
            if target is None or not self.write(vol, *target):
                break

    def op_read(self):
        vol = self.pick_vol()
        if not vol:
            return
        self.verify_data(vol)

    def verify_data(self, vol, skip=()):
        got = vol.handle.pread(vol.size, 0)
        for c in range(vol.n):
            if c in skip:
                continue
            a, b = c * CHUNK, (c + 1) * CHUNK
            if got[a:b] != vol.data[a:b]:
                self.fail(f"{vol.name} chunk {c} ({vol.state[c]}) reads other data than written")

    # ------------------------------------------------------------ crash

    def holes(self, h, size):
        out = []

        def cb(ctx, off, entries, err):
            if ctx == nbd.CONTEXT_BASE_ALLOCATION:
                out.append((off, list(entries)))
            return 0

        flags = [None] * (size // CHUNK)
        pos = 0
        while pos < size:
            out.clear()
            h.block_status(min(size - pos, GiB), pos, cb)
            _, entries = out[0]
            for i in range(0, len(entries), 2):
                n, fl = entries[i], entries[i + 1]
                for c in range(pos // CHUNK, min(size, pos + n) // CHUNK):
                    flags[c] = bool(fl & nbd.STATE_HOLE)
                pos += n
                if pos >= size:
                    break
        return flags

    def crash(self):
        in_flight = []
        flushed = self.rng.random() < 0.3
        if flushed:
            for v in self.vols.values():
                v.handle.flush()
            self.dirty.clear()
        else:
            # The kill lands after a burst of unflushed writes (some drawing
            # on reservations), so their fate and their draws are tested.
            for _ in range(self.rng.randint(5, 25)):
                self.op_write()
            # ...and, half of the time, with writes in flight.
            if self.rng.random() < 0.5 and self.vols:
                for _ in range(self.rng.randint(1, 12)):
                    vol = self.pick_vol()
                    bound = [r for r in self.vol_res(vol) if r.export]
                    export = self.rng.choice(bound) if bound and self.rng.random() < 0.5 else None
                    target = self.hole_write_target(vol) if self.rng.random() < 0.7 else None
                    off, length = target or (self.rng.randrange(0, vol.n) * CHUNK, CHUNK)
                    self.write(vol, off, length, export, aio=in_flight)
                self.stats["in-flight-at-kill"] += sum(h.aio_in_flight() for h in {h for h, _, _ in in_flight})
        self.note(f"kill -9 ({'after a flush' if flushed else f'{len(self.dirty)} unflushed chunks'})")
        self.stats["kills"] += 1
        self.stats["unflushed-at-kill"] += len(self.dirty)
        self.d.kill9()
        self.d.close_handles()
        for v in self.vols.values():
            v.handle = None
        for r in self.res.values():
            r.handle = None
        time.sleep(self.rng.uniform(0, 1.5))
        self.d.start()
        self.api.close()
        names = {e["name"] for e in self.call("GET", "/v1/exports")[2]["exports"]}
        for v in self.vols.values():
            v.handle = self.open(v.name)
        for r in self.res.values():
            if r.export:
                if r.export not in names:
                    self.fail(f"bound export {r.export} lost in the restart")
                r.handle = self.open(r.export)
        # Unflushed writes may or may not have survived: learn their fate
        # and undo the draws of the lost ones; everything else must be exact.
        for v in self.vols.values():
            dirty = {c: src for (name, c), src in self.dirty.items() if name == v.name}
            hole = self.holes(v.handle, v.size)
            for c in range(v.n):
                if c in dirty:
                    continue
                if v.state[c] == HOLE and not hole[c]:
                    self.fail(f"{v.name} chunk {c} mapped after the restart; it was a hole")
                if v.state[c] == DATA and hole[c]:
                    self.fail(f"{v.name} chunk {c}: flushed data lost in kill -9")
            for c, src in dirty.items():
                owner = self.range_owner(v, c)
                if owner:
                    # Backed either way (range): rewrite it to know its state.
                    data = self.rng.randbytes(CHUNK)
                    v.handle.pwrite(data, c * CHUNK)
                    v.data[c * CHUNK:(c + 1) * CHUNK] = data
                    v.state[c] = DATA
                    continue
                if hole[c]:
                    if v.state[c] != HOLE:
                        self.stats["lost-unflushed"] += 1
                    v.state[c] = HOLE
                    if isinstance(src, tuple):
                        self.free += 1  # its range was released since: the backing went back
                    elif src in self.res:
                        self.res[src].remaining += 1
                    elif src is not None:
                        self.free += 1
                    elif src is None:
                        self.fail(f"{v.name} chunk {c}: written and flushed before, a hole after kill -9")
                    v.data[c * CHUNK:(c + 1) * CHUNK] = bytes(CHUNK)
                else:
                    v.data[c * CHUNK:(c + 1) * CHUNK] = v.handle.pread(CHUNK, c * CHUNK)
            self.verify_data(v)
            v.handle.flush()
        self.dirty.clear()
        self.check("kill -9 and restart")


OPS = [("write", 30), ("trim", 6), ("flush", 3), ("create_volume", 6), ("delete_volume", 2),
       ("reserve_pooled", 9), ("reserve_range", 6), ("release", 6), ("renew", 3), ("consume", 3),
       ("fill_range", 2), ("fill_pool", 3), ("read", 2)]


@pytest.mark.timeout(240)
def test_random_operations_keep_space_honest(make_remapd):
    d = make_remapd(pool_size="1M")
    status, _, pool = Api(d.api_sock)("POST", "/v1/pools", {
        "name": "p", "chunkSizeBytes": CHUNK,
        "suppliers": [{"kind": "file", "path": str(d.state_dir / "pools" / "p.img"),
                       "sizeBytes": POOL_CHUNKS * CHUNK}]})
    assert status == 201, pool
    rng = random.Random(SEED)
    w = World(d, rng)
    for _ in range(3):
        w.op_create_volume()
    w.check("setup")
    kill_at = sorted(rng.sample(range(STEPS // 5, STEPS * 4 // 5), KILLS))
    names, weights = zip(*OPS)
    start = time.monotonic()
    step = 0
    while step < STEPS:
        if time.monotonic() - start > TIME_BUDGET and step >= MIN_STEPS:
            break
        step += 1
        w.stats["steps"] = step
        if kill_at and step >= kill_at[0]:
            kill_at.pop(0)
            w.crash()
        op = rng.choices(names, weights)[0]
        getattr(w, f"op_{op}")()
        w.stats[op] += 1
        w.check(op)
    for _ in kill_at:
        w.crash()
    for v in w.vols.values():
        w.verify_data(v)
    elapsed = time.monotonic() - start
    print(f"seed {SEED}: {step} steps in {elapsed:.1f}s: {dict(w.stats)}")
    # The run really exercised what it claims to.
    for key, least in (("kills", KILLS), ("enospc", 5), ("507", 3), ("expired", 2), ("renewed", 3),
                       ("consumed", 3), ("filled-ranges", 3), ("released", 10)):
        assert w.stats[key] >= least, f"only {w.stats[key]} {key} in the run: {dict(w.stats)}"
    assert step >= MIN_STEPS, f"only {step} steps in {elapsed:.0f}s"
