"""A model of remap's data path with snapshots, against which the real
daemon is checked byte for byte (test_model.py, Tests/Soak/soak.py).

Two halves:

* **Data** (the contract, DESIGN.md "Durability like a disk with a write
  cache"). Every image (volume, snapshot, clone) has its current content
  and, for a crash, the values each 512-byte sector may hold: what it held
  at the image's last durable point (`base`) and every value written since
  (`recs`, in issue order). A write acknowledged before a completed FLUSH
  of its volume, or written with FUA, is durable: after a crash a sector
  holds the latest durable value or any value written after it, nothing
  else. A snapshot takes its volume's `base` and `recs` (the same records:
  a FLUSH of the volume after the snapshot makes what it captured durable
  too); a clone takes copies of its snapshot's (its own FLUSH makes them
  durable); TRIM and WRITE_ZEROES are writes of zeros. A failed write's
  range holds old or new data per sector (resolved by reading it back) and
  both stay possible after a crash.

* **Chunks** (the implementation's bookkeeping, docs/api-v1.md): which
  physical chunk (a label) each virtual chunk of each image maps, which
  chunks are reserved-unwritten (range reservations), and the
  copy-on-write space that snapshots set aside for range reservations
  (sticky). From it come the pool's allocated/reserved/free figures, each
  image's usage, and how many chunks an operation needs from free space
  (so a write that must succeed is known: one whose new chunks lie inside
  live range reservations or fit in the free space the pool reported).
  After a crash the chunk state is learnt back from what the daemon shows
  (base:allocation and content) among the states each chunk went through
  since it was last made durable (its FLUSH; FUA); when that cannot tell them
  apart, the exact accounting checks are switched off for the rest of the
  run (`Model.inexact`) and the chunk counts as needing space.
"""

import bisect
import collections
import errno
import itertools
import random
import select
import time

from harness import CHUNK, KiB, MiB, Api, block_status, check_space, disconnect, export_uri, read_all

import nbd  # noqa: E402  (python3-libnbd; a missing package must fail, not skip)

SECTOR = 512
ZERO_SECTOR = bytes(SECTOR)
ZERO_CHUNK = bytes(CHUNK)


class ModelFailure(AssertionError):
    pass


def errname(code):
    return errno.errorcode.get(code, str(code))


# =================================================================== data

class Rec:
    """A value written to [start, end) (bytes, whole sectors): `data`, or
    zeros when None. `durable` once acknowledged before a completed FLUSH
    (or FUA); `failed` for a write that got an error, and for the old bytes
    of its range (never durable); `acked`: when it was acknowledged (an
    event number, for FLUSHes racing with writes)."""

    __slots__ = ("start", "end", "data", "durable", "failed", "acked")

    def __init__(self, start, end, data, durable=False, failed=False):
        self.start, self.end, self.data = start, end, data
        self.durable, self.failed = durable, failed
        self.acked = None

    def value(self, sector):
        if self.data is None:
            return ZERO_SECTOR
        o = sector * SECTOR - self.start
        return bytes(self.data[o:o + SECTOR])

    def copy(self):
        return Rec(self.start, self.end, self.data, self.durable, self.failed)


class Image:
    """A volume, clone or snapshot: its bytes, what a crash may leave of
    them, and its chunk map."""

    def __init__(self, name, kind, size, family, origin=None):
        assert kind in ("volume", "clone", "snapshot")
        self.name, self.kind, self.size, self.family = name, kind, size, family
        self.origin = origin          # a snapshot's volume (Image), None once deleted
        self.nchunks = -(-size // CHUNK)
        self.cur = bytearray(size)
        self.base = None              # bytes at the last durable point; None: equals cur
        self.recs = []
        self.map = [None] * self.nchunks
        self.unwritten = set()        # reserved-unwritten chunks (range reservations)
        self.ranges = {}              # reservation id -> (first chunk, count)
        self.sticky = {}              # reservation id -> copy-on-write chunks held for it
        self.hist = {}                # chunk -> [(label, unwritten)] since it was last made durable
        self.handle = None

    @property
    def writable(self):
        return self.kind != "snapshot"

    def chunk_len(self, c):
        return min(CHUNK, self.size - c * CHUNK)

    def chunk_bytes(self, c, data=None):
        data = self.cur if data is None else data
        return bytes(data[c * CHUNK:c * CHUNK + self.chunk_len(c)])

    def range_of(self, c):
        for rid, (first, count) in self.ranges.items():
            if first <= c < first + count:
                return rid
        return None

    def state(self, c):
        return (self.map[c], c in self.unwritten)

    # ------------------------------------------------------------ data

    def record(self, start, data, length, durable=False, failed=False):
        """A write of `data` (None: zeros) at `start`; updates cur. Returns
        its record."""
        if self.base is None:
            self.base = bytes(self.cur)
        rec = Rec(start, start + length, data, durable, failed)
        self.recs.append(rec)
        if not failed:
            self.cur[start:start + length] = data if data is not None else bytes(length)
        return rec

    def fold(self):
        """Durable records at the head of `recs` become part of `base` (a
        volume written without pause never gets to collapse)."""
        n = 0
        while n < len(self.recs) and self.recs[n].durable:
            n += 1
        if not n:
            return
        base = bytearray(self.base)
        for r in self.recs[:n]:
            base[r.start:r.end] = r.data if r.data is not None else bytes(r.end - r.start)
        self.base, self.recs = bytes(base), self.recs[n:]

    def record_failed(self, start, data, length, observed):
        """A write that failed: the range now reads `observed` (each sector
        old or new, checked by the caller); after a crash either may be
        there, also after later FLUSHes."""
        if self.base is None:
            self.base = bytes(self.cur)
        self.recs.append(Rec(start, start + length, bytes(self.cur[start:start + length]), failed=True))
        self.recs.append(Rec(start, start + length, data, failed=True))
        self.cur[start:start + length] = observed

    def collapse(self):
        """Everything acknowledged is durable: the content is the new base.
        Failed writes stay possible until a durable write covers them."""
        if any(not r.durable and not r.failed for r in self.recs):
            return False
        keep = []
        for i, r in enumerate(self.recs):
            if r.failed and not any(d.durable and d.start <= r.start and r.end <= d.end
                                    for d in self.recs[i + 1:]):
                keep.append(r)
        self.recs = keep
        self.base = bytes(self.cur) if keep else None
        return True

    def crash_problems(self, observed):
        """Sectors of `observed` (what the image reads after a crash) that
        the contract does not allow."""
        problems = []
        diff = []
        for c in range(self.nchunks):
            a, b = c * CHUNK, c * CHUNK + self.chunk_len(c)
            if observed[a:b] != self.cur[a:b]:
                for s in range(a // SECTOR, b // SECTOR):
                    if observed[s * SECTOR:(s + 1) * SECTOR] != self.cur[s * SECTOR:(s + 1) * SECTOR]:
                        diff.append(s)
        if not diff:
            return problems
        if self.base is None:
            return [(s, "not written since the last FLUSH") for s in diff]
        undecided = dict.fromkeys(diff)
        for r in reversed(self.recs):
            lo = bisect.bisect_left(diff, r.start // SECTOR)
            hi = bisect.bisect_left(diff, r.end // SECTOR)
            for s in diff[lo:hi]:
                if s not in undecided:
                    continue
                got = observed[s * SECTOR:(s + 1) * SECTOR]
                if r.value(s) == got:
                    del undecided[s]
                elif r.durable:
                    del undecided[s]
                    problems.append((s, "older than data made durable by a FLUSH or FUA"))
        for s in undecided:
            if self.base[s * SECTOR:(s + 1) * SECTOR] != observed[s * SECTOR:(s + 1) * SECTOR]:
                problems.append((s, "a value never written there since the last FLUSH"))
        return sorted(problems)

    def allowed(self, s):
        """The values sector s may hold after a crash."""
        values = []
        for r in reversed(self.recs):
            if r.start <= s * SECTOR < r.end:
                values.append(r.value(s))
                if r.durable:
                    return values
        return values + [bytes(self.base[s * SECTOR:(s + 1) * SECTOR])]



def pieces(img, off, length):
    """(chunk, start, end, whole) for each chunk [off, off+length) touches."""
    out = []
    pos, end = off, off + length
    while pos < end:
        c = pos // CHUNK
        stop = min((c + 1) * CHUNK, end)
        out.append((c, pos, stop, pos == c * CHUNK and stop - pos == img.chunk_len(c)))
        pos = stop
    return out


# =================================================================== chunks

class Model:
    """Every image of one pool, and the pool's chunks."""

    def __init__(self, capacity_chunks):
        self.capacity = capacity_chunks
        self.images = {}
        self.labels = itertools.count(1)
        self.families = itertools.count(1)
        self.cow_log = []      # (image, chunk, reservation, new label): sticky draws not made durable yet
        self.unsure = set()    # (image name, chunk) whose mapping the model does not know
        self.inexact = None    # why exact accounting is off, or None

    # ------------------------------------------------------------ basics

    def label(self):
        return next(self.labels)

    def family(self):
        return next(self.families)

    def others(self, img):
        return [o for o in self.images.values() if o is not img]

    def shared(self, img, c, label=None):
        label = img.map[c] if label is None else label
        if label is None:
            return False
        return any(c < o.nchunks and o.map[c] == label for o in self.others(img))

    def set_state(self, img, c, label, unwritten):
        """Changes what img's chunk c maps; call before changing its bytes."""
        old = img.state(c)
        new = (label, unwritten)
        if old == new:
            return
        img.hist.setdefault(c, [old]).append(new)
        img.map[c] = label
        if unwritten:
            img.unwritten.add(c)
        else:
            img.unwritten.discard(c)

    def forget_history(self):
        """After a restart: every image is what the daemon showed."""
        for img in self.images.values():
            img.hist.clear()
        self.cow_log.clear()

    def make_inexact(self, why, step=None):
        if self.inexact is None:
            self.inexact, self.inexact_step = why, step

    # ------------------------------------------------------------ figures

    def referenced(self):
        return {L for img in self.images.values() for L in img.map if L is not None}

    def figures(self):
        """(allocated, reserved) chunks once nothing is being reclaimed."""
        unwritten = sum(len(img.unwritten) for img in self.images.values())
        sticky = sum(sum(img.sticky.values()) for img in self.images.values())
        return len(self.referenced()) - unwritten, unwritten + sticky

    def free_settled(self):
        allocated, reserved = self.figures()
        return self.capacity - allocated - reserved

    def usage(self, img):
        """(mapped, shared) chunks of an image."""
        mapped = shared = 0
        for c, L in enumerate(img.map):
            if L is None:
                continue
            mapped += 1
            shared += self.shared(img, c)
        return mapped, shared

    # ------------------------------------------------------------ writes

    def plan_write(self, img, off, length):
        """[(chunk, kind)] and the chunks the write needs from free space
        (none inside a live range reservation: the contract)."""
        plan, need = [], 0
        for c, _, _, _ in pieces(img, off, length):
            if img.map[c] is None:
                kind = "new"
            elif c in img.unwritten:
                kind = "unwritten"
            elif self.shared(img, c):
                kind = "cow"
            else:
                kind = "inplace"
            if img.range_of(c) is None and (kind in ("new", "cow") or (img.name, c) in self.unsure):
                need += 1
            plan.append((c, kind))
        return plan, need

    def cow(self, img, c):
        """img's chunk c goes to a new chunk (copy on write), drawing on
        its range reservation's sticky space first."""
        L = self.label()
        rid = img.range_of(c)
        drew = rid is not None and img.sticky.get(rid, 0) > 0
        if drew:
            img.sticky[rid] -= 1
        self.set_state(img, c, L, False)
        if drew:
            self.cow_log.append((img, c, rid, L))

    def apply_write(self, img, off, data, plan, durable=False):
        for c, kind in plan:
            if kind == "new":
                self.set_state(img, c, self.label(), False)
            elif kind == "cow":
                self.cow(img, c)
            elif kind == "unwritten":
                self.set_state(img, c, img.map[c], False)
            self.unsure.discard((img.name, c))
        img.record(off, data, len(data), durable=durable)

    def plan_zero(self, img, off, length, nohole):
        """[(chunk, start, end, kind)] of a TRIM / WRITE_ZEROES, the chunks it
        needs from free space, and whether it would copy a shared chunk
        on write without changing its bytes (the copy could not be told
        from the original after a crash: such operations are not made)."""
        plan, need, blind = [], 0, False
        for c, s, e, whole in pieces(img, off, length):
            L = img.map[c]
            in_range = img.range_of(c) is not None
            if L is not None and self.shared(img, c) and (not whole or nohole or in_range):
                kind = "zcow"
                need += not in_range
                blind |= not any(img.cur[s:e])
            elif nohole and L is None:
                kind = "clean"
                need += not in_range
            elif L is None:
                kind = "none"
            elif whole and not nohole and not in_range:
                kind = "unmap"
            elif whole and not nohole:
                kind = "rereserve"
            else:
                kind = "inplace"
            if (img.name, c) in self.unsure and kind not in ("none",):
                need += kind not in ("zcow", "clean") and not in_range
                blind = True
            plan.append((c, s, e, kind))
        return plan, need, blind

    def apply_zero_piece(self, img, c, s, e, kind):
        if kind == "zcow":
            self.cow(img, c)
        elif kind == "clean":
            self.set_state(img, c, self.label(), False)
        elif kind == "unmap":
            self.set_state(img, c, None, False)
        elif kind == "rereserve":
            self.set_state(img, c, img.map[c], True)

    def apply_zero(self, img, off, length, plan, durable=False):
        for c, s, e, kind in plan:
            self.apply_zero_piece(img, c, s, e, kind)
        img.record(off, None, length, durable=durable)

    # ------------------------------------------------------------ durability

    def flush(self, img):
        """A FLUSH of img completed: everything acknowledged on it is
        durable, and so is what its snapshots captured."""
        for r in img.recs:
            if not r.failed:
                r.durable = True
        img.collapse()
        img.hist.clear()
        for o in self.images.values():
            if o.kind == "snapshot" and o.origin is img:
                for r in o.recs:
                    if not r.failed:
                        r.durable = True
                o.collapse()
                o.hist.clear()
        self.cow_log = [entry for entry in self.cow_log if entry[0] is not img]

    def made_durable(self, img, chunks):
        """A FUA request: the mappings of its chunks are durable."""
        for c in chunks:
            img.hist.pop(c, None)
        self.cow_log = [entry for entry in self.cow_log if entry[0] is not img or entry[1] not in chunks]

    # ------------------------------------------------------------ control plane

    def add_volume(self, name, size):
        img = Image(name, "volume", size, self.family())
        self.images[name] = img
        return img

    def snapshot_needs(self, vol):
        """Copy-on-write space a snapshot of vol must set aside: (extra
        chunks from free space, per-range need)."""
        extra, needs = 0, {}
        for rid, (first, count) in vol.ranges.items():
            need = sum(1 for c in range(first, first + count) if vol.map[c] is not None and c not in vol.unwritten)
            needs[rid] = need
            extra += max(0, need - vol.sticky.get(rid, 0))
        return extra, needs

    def snapshot(self, vol, name):
        _, needs = self.snapshot_needs(vol)
        for rid, need in needs.items():
            if rid in vol.sticky or need > 0:
                vol.sticky[rid] = max(vol.sticky.get(rid, 0), need)
        snap = Image(name, "snapshot", vol.size, vol.family, origin=vol)
        snap.cur = bytearray(vol.cur)
        snap.base = vol.base
        snap.recs = list(vol.recs)
        snap.map = [None if c in vol.unwritten else L for c, L in enumerate(vol.map)]
        # Its chunks are its volume's rows until then: lost with them.
        snap.hist = {c: [(None, False) if u else (L, False) for L, u in states] for c, states in vol.hist.items()}
        self.images[name] = snap
        for c in range(vol.nchunks):
            if (vol.name, c) in self.unsure and c not in vol.unwritten:
                self.unsure.add((name, c))
        return snap

    def shrink_sticky(self, family):
        """After an image of `family` went (snapshot, clone or volume):
        copy-on-write space no longer needed goes back."""
        for m in self.images.values():
            if m.family != family or m.kind == "snapshot":
                continue
            for rid, (first, count) in m.ranges.items():
                if rid not in m.sticky:
                    continue
                need = sum(1 for c in range(first, first + count)
                           if m.map[c] is not None and c not in m.unwritten and self.shared(m, c))
                m.sticky[rid] = min(m.sticky[rid], need)

    def delete(self, img):
        del self.images[img.name]
        for o in self.images.values():
            if o.origin is img:
                o.origin = None
        self.unsure = {u for u in self.unsure if u[0] != img.name}
        self.shrink_sticky(img.family)

    def clone(self, snap, name):
        c = Image(name, "clone", snap.size, snap.family)
        c.cur = bytearray(snap.cur)
        c.base = snap.base
        c.recs = [r.copy() for r in snap.recs]
        c.map = list(snap.map)
        c.hist = {ch: list(states) for ch, states in snap.hist.items()}
        self.images[name] = c
        self.unsure |= {(name, ch) for (n, ch) in self.unsure if n == snap.name}
        return c

    def revert_plan(self, vol, snap):
        """What a revert of vol to snap does to vol's range reservations:
        (chunks needed from free space, keep, fresh, drop)."""
        keep, fresh, drop = [], [], []
        shared_in_ranges = 0
        for rid, (first, count) in vol.ranges.items():
            for c in range(first, first + count):
                in_snap = snap.map[c] is not None
                if c in vol.unwritten:
                    (drop if in_snap else keep).append(c)
                elif not in_snap:
                    fresh.append((rid, c))
                shared_in_ranges += in_snap
        held = sum(vol.sticky.values())
        return len(fresh) + max(0, shared_in_ranges - held), keep, fresh, drop

    def revert(self, vol, snap):
        _, keep, fresh, _ = self.revert_plan(vol, snap)
        kept = {c: vol.map[c] for c in keep}
        vol.map = list(snap.map)
        vol.unwritten = set()
        for c, L in kept.items():
            vol.map[c] = L
            vol.unwritten.add(c)
        for _, c in fresh:
            vol.map[c] = self.label()
            vol.unwritten.add(c)
        for rid, (first, count) in vol.ranges.items():
            need = sum(1 for c in range(first, first + count)
                       if vol.map[c] is not None and c not in vol.unwritten and self.shared(vol, c))
            if rid in vol.sticky or need > 0:
                vol.sticky[rid] = need
        vol.cur = bytearray(snap.cur)
        vol.base = snap.base
        vol.recs = list(snap.recs)
        vol.hist = {c: list(states) for c, states in snap.hist.items() if c not in vol.unwritten}
        self.unsure = {u for u in self.unsure if u[0] != vol.name}
        self.unsure |= {(vol.name, ch) for (n, ch) in self.unsure if n == snap.name and ch not in vol.unwritten}

    def reserve_needs(self, vol, first, count):
        """What a range reservation of chunks first+count needs: (holes to
        back now, chunks shared with a snapshot or clone whose copy on write
        it must hold space for)."""
        chunks = range(first, first + count)
        return [c for c in chunks if vol.map[c] is None], sum(self.shared(vol, c) for c in chunks)

    def reserve(self, vol, rid, first, count):
        holes, shared = self.reserve_needs(vol, first, count)
        for c in holes:
            vol.map[c] = self.label()
            vol.unwritten.add(c)
            vol.hist.pop(c, None)            # the reservation is durable: so is its backing
        vol.ranges[rid] = (first, count)
        if shared:
            vol.sticky[rid] = shared

    def release(self, vol, rid):
        first, count = vol.ranges.pop(rid)
        vol.sticky.pop(rid, None)
        for c in range(first, first + count):
            if c in vol.unwritten:
                vol.unwritten.discard(c)
                vol.map[c] = None
                vol.hist.pop(c, None)

    # ------------------------------------------------------------ after a crash

    def reconcile(self, img, c, candidates, mapped, content, holders):
        """Chooses which of `candidates` ((label, unwritten) states, oldest
        first) img's chunk c is in, from what the daemon shows, and makes
        it the chunk's state: a hole is a hole; a chunk other images map
        too (`holders`: label -> their bytes) is it when the bytes are
        exactly theirs; a chunk only this image had (whose bytes writes in
        flight may have changed) is it when the bytes are none of those.
        Returns (verdict, state): verdict "ok", "rereserve" (data or
        reserved-unwritten, the same chunk: a TRIM will settle it) or why
        it could not tell."""
        fits = []
        for state in dict.fromkeys(candidates):
            label = state[0]
            if label is None:
                ok = not mapped
            elif label in holders:
                ok = mapped and holders[label] == content
            else:
                ok = mapped and content not in [holders[s[0]] for s in candidates if s[0] in holders]
            if ok:
                fits.append(state)
        labels = list(dict.fromkeys(label for label, _ in fits))
        if len(labels) > 1:
            if any(L in holders for L in labels):
                return f"chunk {c} of {img.name} could be any of {fits}", None
            fits = [s for s in fits if s[0] == labels[-1]]    # private chunks are alike for the books
        if not fits:
            return (f"chunk {c} of {img.name} is {'mapped' if mapped else 'a hole'} with bytes that fit none "
                    f"of the states it went through: {candidates}"), None
        state = fits[-1]
        verdict = "ok"
        if len({s[1] for s in fits}) > 1:
            # Written, or reserved-unwritten (which reads zeros): bytes say
            # written; zeros could be either, and a TRIM will settle it.
            state, verdict = (state[0], False), "ok" if any(content) else "rereserve"
        img.map[c] = state[0]
        img.unwritten.discard(c)
        if state[1]:
            img.unwritten.add(c)
        return verdict, state

    def holders(self, img, c):
        """Chunks other images map at c (label -> bytes)."""
        return {o.map[c]: o.chunk_bytes(c) for o in self.others(img) if c < o.nchunks and o.map[c] is not None}


# =================================================================== the daemon side

def allocation(h, size):
    """Per chunk: mapped (True) or a hole (False), from base:allocation."""
    flags = [None] * (-(-size // CHUNK))
    for off, n, fl in block_status(h, 0, size):
        for c in range(off // CHUNK, -(-(off + n) // CHUNK)):
            flags[c] = not fl & nbd.STATE_HOLE
    return flags


def aio_wait(handles, timeout=0.02):
    """Waits up to `timeout` for the sockets of libnbd `handles` and lets
    each do its work. Returns (handles whose socket is gone, [(handle,
    nbd.Error)] for those that failed doing it)."""
    rd, wr, fds, gone, failed = [], [], {}, [], []
    for h in handles:
        try:
            fd, direction = h.aio_get_fd(), h.aio_get_direction()
        except nbd.Error:
            gone.append(h)
            continue
        fds[fd] = h
        if direction & nbd.AIO_DIRECTION_READ:
            rd.append(fd)
        if direction & nbd.AIO_DIRECTION_WRITE:
            wr.append(fd)
    r, w, _ = select.select(rd, wr, [], timeout)
    for fd in set(r) | set(w):
        h = fds[fd]
        try:
            if fd in r:
                h.aio_notify_read()
            if fd in w and not h.aio_is_dead():
                h.aio_notify_write()
        except nbd.Error as e:
            failed.append((h, e))
    return gone, failed


# Operation weights of the random walk.
OPS = {"write": 36, "trim": 7, "zero": 7, "flush": 7, "read": 4, "snapshot": 4, "delete_snapshot": 3,
       "clone": 1.5, "delete_clone": 1.2, "revert": 1.5, "reserve": 3, "release": 2, "crash": 0.8,
       "replace_volume": 0.3}
FAULT_OPS = {"faults_on": 1.2, "faults_off": 0.8}
# Operations that need the pool's storage and may answer 500 under metadata-commit faults.
FAULT_SAFE_CONTROL = ("snapshot", "delete_snapshot", "reserve", "release")
CONTROL_OPS = ("snapshot", "delete_snapshot", "clone", "delete_clone", "revert", "reserve", "release",
               "replace_volume")

SIZES = {                          # how long an I/O is, in weighted families
    "sector": (lambda r: 512 * r.randint(1, 7), 10),
    "4k": (lambda r: 4 * KiB * r.randint(1, 15), 14),
    "sub-chunk": (lambda r: 512 * r.randint(1, 127), 14),
    "chunk": (lambda r: CHUNK, 10),
    "chunks": (lambda r: CHUNK * r.randint(2, 5) + r.choice([0, 512 * r.randint(1, 127)]), 12),
    "big": (lambda r: 512 * r.randint(256, 2048), 6),
    "huge": (lambda r: 512 * r.randint(2048, 8192), 3),
}


class World:
    """The daemon, the model, and the operations that keep them in step.
    Every public op_* makes one operation and checks what the daemon said
    against the model; `check` compares everything after it."""

    def __init__(self, d, seed, pool="default", faults=False, label="REMAP_MODEL_SEED"):
        self.d = d
        self.seed = seed
        self.rng = random.Random(seed)
        self.pool = pool
        self.faults = faults
        self.seed_name = label
        self.api = Api(d.api_sock)
        pool_info = self.call_ok("GET", f"/v1/pools/{pool}")
        assert pool_info["chunkSizeBytes"] == CHUNK, pool_info
        self.m = Model(pool_info["capacityBytes"] // CHUNK)
        self.free_hint = pool_info["freeBytes"] // CHUNK
        self.log = collections.deque(maxlen=50)
        self.journal = []              # every operation, written next to the daemon's log on failure
        self.journal_path = d.log_path.parent / f"{d.log_path.stem}-{pool}-operations.log"
        self.stats = collections.Counter()
        self.step = 0
        self.counter = 0
        self.faults_on = False
        self.undurable = []            # control-plane changes answered 500 (not durable yet)
        self.rereserve = set()         # (image, chunk): data or reserved-unwritten, settle with a TRIM
        self.last_pool = pool_info

    # ------------------------------------------------------------ helpers

    def fail(self, msg):
        with open(self.journal_path, "w") as f:
            f.write("\n".join(self.journal) + "\n")
        raise ModelFailure(f"{msg}\n{self.seed_name}={self.seed} (step {self.step}); every operation in "
                           f"{self.journal_path}; the last ones:\n  " + "\n  ".join(self.log))

    def note(self, text):
        self.log.append(f"[{self.step}] {text}")
        self.journal.append(self.log[-1])

    def call(self, method, path, body=None):
        return self.api(method, path, body)

    def call_ok(self, method, path, body=None, expect=200):
        status, _, result = self.call(method, path, body)
        if status != expect:
            raise ModelFailure(f"{method} {path} {body} -> {status} {result}")
        return result

    def name(self, prefix):
        self.counter += 1
        return f"{prefix}{self.counter}"

    def handle(self, img):
        if img.handle is None:
            h = nbd.NBD()
            h.set_handle_name(f"model-{img.name}")
            h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
            h.connect_uri(export_uri(self.d, img.name))
            self.d._handles.append(h)
            img.handle = h
        return img.handle

    def close(self, img):
        h, img.handle = img.handle, None
        if h is not None:
            disconnect(self.d, h)

    def images(self, kind=None):
        return [img for img in self.m.images.values() if kind is None or img.kind == kind]

    def writable(self):
        return [img for img in self.m.images.values() if img.writable]

    def pick(self, items):
        return self.rng.choice(items) if items else None

    def pick_range(self, img, max_len=None):
        r = self.rng
        family = r.choices(list(SIZES), [w for _, w in SIZES.values()])[0]
        length = min(SIZES[family][0](r), img.size, max_len or img.size)
        length -= length % SECTOR
        length = max(length, SECTOR)
        align = r.choice(["chunk", "4k", "sector", "straddle", "end-of-chunk"])
        sectors = img.size // SECTOR
        if align == "chunk":
            off = r.randrange(0, img.nchunks) * CHUNK
        elif align == "4k":
            off = r.randrange(0, img.size // (4 * KiB)) * 4 * KiB
        elif align == "straddle":
            off = r.randrange(1, img.nchunks + 1) * CHUNK - (length // 2 // SECTOR) * SECTOR
        elif align == "end-of-chunk":
            off = r.randrange(1, img.nchunks + 1) * CHUNK - length
        else:
            off = r.randrange(0, sectors) * SECTOR
        off = max(0, min(off, img.size - length))
        return off, length

    def expect_error(self, what, e, allowed):
        if e.errnum not in allowed:
            self.fail(f"{what} failed with {errname(e.errnum)} ({e}); allowed here: "
                      f"{[errname(a) for a in allowed] or 'none'}")

    def io_errors(self):
        """What a data-path request may fail with, besides running out of space."""
        return (errno.EIO, errno.ENOSPC) if self.faults_on or self.pool_degraded() else ()

    def pool_degraded(self):
        return self.faults and self.last_pool.get("state") not in (None, "online")

    # ------------------------------------------------------------ checks

    def get_pool(self):
        status, _, pool = self.call("GET", f"/v1/pools/{self.pool}")
        if status != 200:
            self.fail(f"GET pool -> {status} {pool}")
        try:
            check_space(pool)
        except AssertionError as e:
            self.fail(f"accounting identity broken: {e}")
        if pool["capacityBytes"] != self.m.capacity * CHUNK:
            self.fail(f"capacity changed: {pool}")
        self.last_pool = pool
        return pool

    def pool_check(self, timeout=3.0, settled=False):
        """GET /v1/pools/{pool}/check is ok (reclaim is asynchronous: poll)."""
        deadline = time.monotonic() + timeout
        while True:
            status, _, body = self.call("GET", f"/v1/pools/{self.pool}/check")
            if status != 200:
                self.fail(f"pool check -> {status} {body}")
            good = body.get("ok") is True and (not settled or body["usedChunks"] == body["referencedChunks"])
            if good or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if not good:
            self.fail(f"pool check not clean after {timeout}s: {body}")
        return body

    def check(self, exact=False):
        """After every step: the identity, the pool check, a random range of
        a random image; after commits also the exact figures."""
        pool = self.get_pool()
        self.free_hint = pool["freeBytes"] // CHUNK
        if not self.faults_on and not self.pool_degraded():
            self.pool_check()
        img = self.pick(self.images())
        if img is not None:
            off, length = self.pick_range(img, max_len=1 * MiB)
            self.verify_range(img, off, length)
        if exact and not self.faults_on and not self.pool_degraded() and self.m.inexact is None:
            self.check_figures()

    def verify_range(self, img, off, length, what="read"):
        h = self.handle(img)
        got = b"".join(h.pread(min(4 * MiB, off + length - o), o) for o in range(off, off + length, 4 * MiB))
        want = bytes(img.cur[off:off + length])
        if got != want:
            bad = [o for o in range(0, length, SECTOR) if got[o:o + SECTOR] != want[o:o + SECTOR]]
            self.fail(f"{what}: {img.kind} {img.name} reads other bytes than the model at {off}+{length}: "
                      f"{len(bad)} sectors differ, first at byte {off + bad[0]} (chunk {(off + bad[0]) // CHUNK}"
                      f", {'zeros' if not any(got[bad[0]:bad[0] + SECTOR]) else 'data'} where the model has "
                      f"{'zeros' if not any(want[bad[0]:bad[0] + SECTOR]) else 'data'})")

    def verify_image(self, img):
        self.verify_range(img, 0, img.size, what="whole-image read")

    def check_figures(self):
        """Once reclaim has settled: pool, volume and snapshot figures are
        exactly the model's."""
        self.stats["exact-checks"] += 1
        allocated, reserved = self.m.figures()
        referenced = len(self.m.referenced())
        deadline = time.monotonic() + 3.0
        while True:
            pool = self.get_pool()
            got = (pool["allocatedBytes"] // CHUNK, pool["reservedBytes"] // CHUNK)
            if got == (allocated, reserved) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if got != (allocated, reserved):
            self.fail(f"pool allocated/reserved chunks {got}, the model says {(allocated, reserved)} "
                      f"(referenced {referenced}): {pool}\n{self.diagnose()}")
        body = self.pool_check(settled=True)
        if body["referencedChunks"] != referenced:
            self.fail(f"pool check: {body['referencedChunks']} chunks referenced, the model says {referenced}: {body}")
        self.free_hint = pool["freeBytes"] // CHUNK
        vols = {v["name"]: v for v in self.call_ok("GET", f"/v1/volumes?pool={self.pool}&limit=1000")["volumes"]}
        want_vols = {img.name for img in self.images() if img.kind != "snapshot"}
        if set(vols) != want_vols:
            self.fail(f"volumes {sorted(vols)}, the model has {sorted(want_vols)}")
        for name, v in vols.items():
            img = self.m.images[name]
            mapped, shared = self.m.usage(img)
            sticky = sum(img.sticky.values())
            want = ((mapped - len(img.unwritten)) * CHUNK, (len(img.unwritten) + sticky) * CHUNK,
                    min(img.size, (mapped - shared + sticky) * CHUNK))
            have = (v["allocatedBytes"], v["reservedBytes"], v["guaranteedWritableBytes"])
            if have != want:
                self.fail(f"{img.kind} {name}: allocated/reserved/guaranteedWritable bytes {have}, the model says {want}")
        snaps = {f"{s['volume']}@{s['name']}": s for s in self.call_ok("GET", "/v1/snapshots")["snapshots"]
                 if s["pool"] == self.pool}
        want_snaps = {img.name for img in self.images("snapshot")}
        if set(snaps) != want_snaps:
            self.fail(f"snapshots {sorted(snaps)}, the model has {sorted(want_snaps)}")
        for name, s in snaps.items():
            img = self.m.images[name]
            mapped, shared = self.m.usage(img)
            held = sum(img.origin.sticky.values()) if img.origin is not None else 0
            want = ((mapped - shared) * CHUNK, shared * CHUNK, held * CHUNK)
            have = (s["uniqueBytes"], s["sharedBytes"], s["reservedBytes"])
            if have != want:
                self.fail(f"snapshot {name}: unique/shared/reserved bytes {have}, the model says {want}")

    def diagnose(self):
        """Where the daemon's chunk maps differ from the model's (for a failure message)."""
        lines = [f"pool check: {self.call('GET', f'/v1/pools/{self.pool}/check')[2]}"]
        for img in self.m.images.values():
            mapped = allocation(self.handle(img), img.size)
            diff = [c for c in range(img.nchunks) if mapped[c] != (img.map[c] is not None)]
            if diff:
                lines.append(f"{img.kind} {img.name}: chunks {diff[:20]} are {['hole', 'mapped'][mapped[diff[0]]]}"
                             f"... in the daemon, the model says {[img.map[c] for c in diff[:20]]}")
            if img.kind != "snapshot":
                v = self.call("GET", f"/v1/volumes/{img.name}")[2]
                lines.append(f"{img.kind} {img.name}: daemon allocated {v.get('allocatedBytes', 0) // CHUNK} reserved "
                             f"{v.get('reservedBytes', 0) // CHUNK}; model mapped {self.m.usage(img)} unwritten "
                             f"{len(img.unwritten)} sticky {img.sticky}")
            else:
                s = self.call("GET", f"/v1/snapshots/{img.name}")[2]
                lines.append(f"snapshot {img.name}: daemon unique {s.get('uniqueBytes', 0) // CHUNK} shared "
                             f"{s.get('sharedBytes', 0) // CHUNK}; model (mapped, shared) {self.m.usage(img)}")
        return "\n".join(lines)

    def committed(self):
        """A commit succeeded: control-plane changes answered 500 are durable now."""
        self.undurable.clear()

    # ------------------------------------------------------------ data path

    def describe(self, img, off, length):
        out = []
        for c, _, _, _ in pieces(img, off, length):
            rid = img.range_of(c)
            out.append(f"{c}: {'hole' if img.map[c] is None else 'unwritten' if c in img.unwritten else 'shared' if self.m.shared(img, c) else 'own'}"
                       + (f" in range {rid[:10]} (sticky {img.sticky.get(rid)})" if rid else ""))
        return "; ".join(out)

    def must_fit(self, need):
        return need <= self.free_hint

    def op_write(self, img=None, off=None, data=None, fua=None):
        img = img or self.pick(self.writable())
        if img is None:
            return
        if off is None:
            off, length = self.pick_range(img)
            data = self.rng.randbytes(length)
        length = len(data)
        fua = self.rng.random() < 0.1 if fua is None else fua
        plan, need = self.m.plan_write(img, off, length)
        must = self.must_fit(need)
        self.note(f"write {img.name} {off}+{length}{' FUA' if fua else ''} need {need} free>={self.free_hint}")
        try:
            self.handle(img).pwrite(data, off, nbd.CMD_FLAG_FUA if fua else 0)
        except nbd.Error as e:
            self.stats["write-error"] += 1
            self.failed_write(img, off, data, e, must, need)
            return False
        self.m.apply_write(img, off, data, plan, durable=fua)
        if fua:
            self.m.made_durable(img, [c for c, _ in plan])
        self.stats["write"] += 1
        return True

    def failed_write(self, img, off, data, e, must, need):
        length = len(data)
        self.note(f"  -> {errname(e.errnum)}")
        if e.errnum == errno.ENOSPC and not self.faults_on:
            if must:
                self.fail(f"write of {img.name} {off}+{length} got ENOSPC, but it needs {need} new chunks "
                          f"outside range reservations and the pool had {self.free_hint} free; chunks: "
                          f"{self.describe(img, off, length)}")
            self.stats["enospc"] += 1
            self.verify_range(img, off, length, what="after a write that got ENOSPC (it must change nothing)")
            return
        self.expect_error(f"write of {img.name} {off}+{length}", e, self.io_errors())
        # Its range holds old or new bytes per sector. It should map no
        # chunk (one whose FUA commit failed does): learn what it did.
        h = self.handle(img)
        got = h.pread(length, off)
        for o in range(0, length, SECTOR):
            new, old = data[o:o + SECTOR], bytes(img.cur[off + o:off + o + SECTOR])
            if got[o:o + SECTOR] not in (new, old):
                torn = next((i for i in range(1, SECTOR) if got[o:o + i] == new[:i] and got[o + i:o + SECTOR] == old[i:]),
                            None)
                self.fail(f"after a failed write ({errname(e.errnum)}) the sector at byte {off + o} of {img.name} "
                          "holds neither the old nor the new data"
                          + (f": its first {torn} bytes are new, the rest old (a torn sector)" if torn else ""))
        mapped = allocation(h, img.size)
        after = bytearray(img.cur)
        after[off:off + length] = got
        for c, kind in self.m.plan_write(img, off, length)[0]:
            if kind == "new" and mapped[c]:
                self.m.set_state(img, c, self.m.label(), False)
            elif kind == "cow" and img.chunk_bytes(c, after) != img.chunk_bytes(c):
                self.m.cow(img, c)
            elif kind == "unwritten" and any(img.chunk_bytes(c, after)):
                self.m.set_state(img, c, img.map[c], False)   # it holds bytes: written
            elif kind == "unwritten":
                self.rereserve.add((img.name, c))     # zeros: written or not, a TRIM settles it
        img.record_failed(off, data, length, got)
        self.stats[f"write-{errname(e.errnum)}"] += 1

    def op_zero(self, kind=None, img=None, off=None, length=None):
        img = img or self.pick(self.writable())
        if img is None:
            return
        kind = kind or self.rng.choice(["trim", "trim", "zero", "zero-nohole", "zero-fast", "zero-fast-nohole"])
        nohole = kind.endswith("nohole")
        for _ in range(8 if off is None else 1):
            if off is None or _:
                off, length = self.pick_range(img)
            plan, need, blind = self.m.plan_zero(img, off, length, nohole)
            if not blind:
                break
        else:
            self.stats["zero-skipped"] += 1
            return
        fua = self.rng.random() < 0.1
        flags = (nbd.CMD_FLAG_FUA if fua else 0) | (nbd.CMD_FLAG_NO_HOLE if nohole else 0) \
            | (nbd.CMD_FLAG_FAST_ZERO if "fast" in kind else 0)
        must = self.must_fit(need)
        self.note(f"{kind} {img.name} {off}+{length}{' FUA' if fua else ''} need {need} free>={self.free_hint} "
                  f"{[(c, k) for c, _, _, k in plan if k not in ('inplace', 'none')][:8]}")
        h = self.handle(img)
        try:
            if kind == "trim":
                h.trim(length, off, flags)
            else:
                h.zero(length, off, flags)
        except nbd.Error as e:
            self.failed_zero(img, off, length, plan, kind, e, must, need)
            return False
        self.m.apply_zero(img, off, length, plan, durable=fua)
        if fua:
            self.m.made_durable(img, [c for c, _, _, _ in plan])
        self.stats[kind] += 1
        return True

    def failed_zero(self, img, off, length, plan, kind, e, must, need):
        self.stats[f"{kind}-{errname(e.errnum)}"] += 1
        self.note(f"  -> {errname(e.errnum)}")
        if e.errnum == errno.ENOTSUP and "fast" in kind:
            # NBD: a fast zero that cannot be fast SHOULD NOT alter the export.
            self.verify_range(img, off, length, what=f"after {kind} answered ENOTSUP")
            return
        space = e.errnum == errno.ENOSPC and not self.faults_on
        if space and must:
            self.fail(f"{kind} of {img.name} {off}+{length} got ENOSPC, but it needs {need} new chunks "
                      f"outside range reservations and the pool had {self.free_hint} free; chunks: "
                      f"{self.describe(img, off, length)}")
        if not space:
            self.expect_error(f"{kind} of {img.name} {off}+{length}", e, self.io_errors())
        # Part of it may be done: learn piece by piece which.
        h = self.handle(img)
        got = h.pread(length, off)
        for o in range(0, length, SECTOR):
            if any(got[o:o + SECTOR]) and got[o:o + SECTOR] != img.cur[off + o:off + o + SECTOR]:
                self.fail(f"after a failed {kind} ({errname(e.errnum)}) byte {off + o} of {img.name} holds "
                          "neither its old bytes nor zeros")
        mapped = allocation(h, img.size)
        # NO_HOLE backs the holes first, all or nothing: if that ran out of
        # space nothing else was done.
        if space and any(k == "clean" and not mapped[c] for c, _, _, k in plan):
            self.verify_range(img, off, length, what=f"after {kind} found no space for its holes")
            return
        for c, s, e_, k in plan:
            if k == "zcow":
                done = not any(got[s - off:e_ - off])   # it had bytes: a copy of zeros shows
            elif k == "clean":
                done = mapped[c]
            elif k == "unmap":
                done = not mapped[c]
            elif k == "rereserve":
                # Zeroed and reserved-unwritten again, unless the zeroing
                # failed (then it still has its bytes, or zeros: a TRIM will tell).
                done = not any(got[s - off:e_ - off])
                if done and not space:
                    self.rereserve.add((img.name, c))
            else:
                continue
            if done:
                self.m.apply_zero_piece(img, c, s, e_, k)
        img.record_failed(off, None, length, got)

    def op_trim(self):
        return self.op_zero(kind="trim")

    def op_flush(self, img=None):
        img = img or self.pick(self.writable())
        if img is None:
            return
        self.note(f"flush {img.name}")
        try:
            self.handle(img).flush()
        except nbd.Error as e:
            # EIO, or ENOSPC while metadata commits find the state filesystem full.
            self.note(f"  -> {errname(e.errnum)}")
            self.expect_error(f"FLUSH of {img.name}", e, self.io_errors())
            self.stats["flush-EIO"] += 1
            return False
        self.m.flush(img)
        self.committed()
        self.stats["flush"] += 1
        return True

    def op_read(self):
        img = self.pick(self.images())
        if img is not None:
            self.note(f"read all of {img.name}")
            self.verify_image(img)

    # ------------------------------------------------------------ control plane

    def control(self, what, method, path, body, ok):
        """A control-plane call: (status, result). 500 is allowed only with
        faults on (a metadata commit that failed: in effect, not durable)."""
        status, _, result = self.call(method, path, body)
        if status == 500 and self.faults_on:
            self.note("  -> 500")
            self.stats["control-500"] += 1
            return status, result
        if status == 409 and self.pool_degraded() and result.get("code") == "pool-unavailable":
            self.stats["control-409"] += 1
            return status, result
        if status not in ok:
            self.fail(f"{what}: {method} {path} {body} -> {status} {result}")
        return status, result

    def op_snapshot(self, vol=None, name=None):
        vol = vol or self.pick(self.writable())
        if vol is None or len(self.images("snapshot")) >= 6:
            return
        name = name or self.name("s")
        extra, _ = self.m.snapshot_needs(vol)
        self.note(f"snapshot {vol.name}@{name} extra {extra} free>={self.free_hint}")
        status, body = self.control("snapshot", "POST", f"/v1/volumes/{vol.name}/snapshots", {"name": name},
                                    (201, 507))
        if self.refused(status, body, f"snapshot of {vol.name}", extra, vol.family):
            return
        if self.m.inexact is None and not self.faults and extra > self.m.free_settled():
            self.fail(f"snapshot of {vol.name} taken though it needs {extra} chunks of copy-on-write space "
                      f"and at most {self.m.free_settled()} were free")
        snap = self.m.snapshot(vol, f"{vol.name}@{name}")
        self.after_control(status, ("snapshot", snap))
        self.stats["snapshot"] += 1
        return snap

    def refused(self, status, body, what, need, family=None):
        """A 507 is right only when the change needs more chunks than were
        free, or while a deletion in the family is not durable."""
        if status != 507:
            return False
        if self.must_fit(need) and not self.leaving(family):
            self.fail(f"{what} refused with 507 but needs {need} chunks and {self.free_hint} were free: {body}")
        self.stats[f"{what.split()[0]}-507"] += 1
        return True

    def leaving(self, family):
        """A snapshot of `family` whose deletion answered 500 is gone for the
        API but not for the pool until a commit succeeds (a crash would bring
        it back): its chunks still count as shared, so a range reservation
        or a revert may need copy-on-write space the model does not count."""
        return family is not None and any(change[0] == "delete" and change[1].family == family
                                          for change in self.undurable)

    def after_control(self, status, change):
        if status == 500:
            self.undurable.append(change)      # in effect; durable at the next commit that succeeds
        else:
            self.committed()

    def op_delete_snapshot(self, snap=None):
        snap = snap or self.pick(self.images("snapshot"))
        if snap is None:
            return
        self.close(snap)
        self.note(f"delete snapshot {snap.name}")
        status, _ = self.control("delete snapshot", "DELETE", f"/v1/snapshots/{snap.name}", None, (204,))
        self.m.delete(snap)
        self.after_control(status, ("delete", snap))
        self.stats["delete-snapshot"] += 1


    def op_clone(self, snap=None):
        snap = snap or self.pick(self.images("snapshot"))
        if snap is None or len(self.images("clone")) >= 2:
            return
        name = self.name("c")
        self.note(f"clone {snap.name} as {name}")
        self.control("clone", "POST", f"/v1/snapshots/{snap.name}/clone", {"name": name}, (201,))
        c = self.m.clone(snap, name)
        self.committed()
        self.stats["clone"] += 1
        return c

    def delete_volume(self, img):
        self.close(img)
        self.note(f"delete {img.kind} {img.name}")
        self.control("delete volume", "DELETE", f"/v1/volumes/{img.name}", None, (204,))
        self.m.delete(img)
        self.committed()

    def op_delete_clone(self):
        img = self.pick(self.images("clone"))
        if img is not None:
            self.delete_volume(img)
            self.stats["delete-clone"] += 1

    def op_replace_volume(self):
        """An origin volume goes (its snapshots stay); a new one comes."""
        vols = self.images("volume")
        if len(vols) < 2:
            return
        self.delete_volume(self.pick(vols))
        self.create_volume(self.rng.choice(VOLUME_SIZES))
        self.stats["replace-volume"] += 1

    def create_volume(self, size, name=None):
        name = name or self.name("v")
        self.note(f"create volume {name} of {size}")
        self.control("create volume", "POST", "/v1/volumes", {"name": name, "sizeBytes": size, "pool": self.pool},
                     (201,))
        img = self.m.add_volume(name, size)
        self.committed()
        return img

    def op_revert(self):
        vol = self.pick([v for v in self.writable()
                         if any(s.origin is v for s in self.images("snapshot"))])
        if vol is None:
            return
        snap = self.pick([s for s in self.images("snapshot") if s.origin is vol])
        needed, _, _, _ = self.m.revert_plan(vol, snap)
        # Refused while an NBD client is connected, and nothing changes.
        self.handle(vol)
        status, _, body = self.call("POST", f"/v1/volumes/{vol.name}/revert", {"snapshot": snap.name})
        if status != 409 or body.get("code") != "in-use":
            self.fail(f"revert of {vol.name} with a client connected -> {status} {body}")
        self.verify_range(vol, 0, min(vol.size, 256 * KiB), what="after a refused revert")
        self.close(vol)
        self.note(f"revert {vol.name} to {snap.name} needs {needed} free>={self.free_hint}")
        status, body = self.control("revert", "POST", f"/v1/volumes/{vol.name}/revert",
                                    {"snapshot": snap.name}, (200, 507))
        if self.refused(status, body, f"revert of {vol.name}", needed, vol.family):
            return
        self.m.revert(vol, snap)
        self.committed()
        self.stats["revert"] += 1

    def op_reserve(self, vol=None, first=None, count=None):
        vol = vol or self.pick(self.writable())
        if vol is None or len(vol.ranges) >= 3:
            return
        if first is None:
            count = self.rng.randint(1, min(24, vol.nchunks))
            first = self.rng.randrange(0, vol.nchunks - count + 1)
        if any(f < first + count and first < f + n for f, n in vol.ranges.values()):
            return
        # Any byte range that covers these chunks (sizes round to whole chunks).
        off = first * CHUNK + self.rng.choice([0, 512 * self.rng.randrange(0, CHUNK // 512)])
        end = min(vol.size, (first + count) * CHUNK) - self.rng.choice([0, 512 * self.rng.randrange(0, 8)])
        end = max(end, (first + count - 1) * CHUNK + 512, off + 512)
        holes, shared = self.m.reserve_needs(vol, first, count)
        need = len(holes) + shared + sum((vol.name, c) in self.m.unsure for c in range(first, first + count))
        self.note(f"reserve {vol.name} chunks {first}+{count} ({off}+{end - off}) need {need} free>={self.free_hint}")
        status, body = self.control("reserve", "POST", f"/v1/volumes/{vol.name}/reservations",
                                    {"offsetBytes": off, "lengthBytes": end - off}, (201, 507))
        if self.refused(status, body, f"range reservation on {vol.name}", need, vol.family) or status == 409:
            return
        if status == 500:
            rid = self.find_reservation(vol, first, count)
        else:
            rid = body["id"]
            if (body.get("kind"), body.get("offsetBytes"), body.get("bytes")) != ("range", first * CHUNK, count * CHUNK):
                self.fail(f"range reservation {first}+{count} chunks: {body}")
        if rid is not None:
            self.m.reserve(vol, rid, first, count)
        self.after_control(status, ("reserve", vol, rid, first, count))
        self.stats["reserve"] += 1

    def find_reservation(self, vol, first, count):
        for r in self.call_ok("GET", f"/v1/volumes/{vol.name}/reservations")["reservations"]:
            if r.get("kind") == "range" and r["offsetBytes"] // CHUNK == first and r["id"] not in vol.ranges:
                return r["id"]
        return None

    def op_release(self):
        vol = self.pick([v for v in self.writable() if v.ranges])
        if vol is None:
            return
        rid = self.rng.choice(sorted(vol.ranges))
        self.note(f"release {rid} of {vol.name} {vol.ranges[rid]}")
        status, _ = self.control("release", "DELETE", f"/v1/volumes/{vol.name}/reservations/{rid}", None, (204,))
        if status == 409:
            return
        first, count = vol.ranges[rid]
        self.m.release(vol, rid)
        unsure = [c for c in range(first, first + count) if (vol.name, c) in self.rereserve]
        if unsure:
            # Written or reserved-unwritten (unknown): a release unmapped only the latter.
            mapped = allocation(self.handle(vol), vol.size)
            for c in unsure:
                self.rereserve.discard((vol.name, c))
                if (vol.map[c] is not None) != mapped[c]:
                    vol.map[c] = self.m.label() if mapped[c] else None
        self.after_control(status, ("release", vol, rid, first, count))
        self.stats["release"] += 1

    # ------------------------------------------------------------ crash

    def op_crash(self, inflight=None):
        """kill -9 (half of the time with up to `inflight` writes in flight),
        restart, and check every image against what the contract allows;
        then carry on from what the daemon shows."""
        if inflight is None:
            inflight = self.rng.randint(1, 6) if self.rng.random() < 0.5 else 0
        count, inflight = inflight, []
        # All on one image, one connection: the daemon plans them in the
        # order the model does (writes in flight on images that share a
        # chunk could be planned in either order).
        img = self.pick(self.writable())
        if count and img is not None:
            for _ in range(count):
                off, length = self.pick_range(img)
                data = self.rng.randbytes(length)
                plan, _ = self.m.plan_write(img, off, length)
                buf = nbd.Buffer.from_bytearray(bytearray(data))
                inflight.append((buf, self.handle(img).aio_pwrite(buf, off)))
                self.note(f"  in flight: write {img.name} {off}+{length} {[(c, k) for c, k in plan if k != 'inplace']}")
                # Its fate is learnt after the restart, like an unflushed write's.
                self.m.apply_write(img, off, data, plan)
        self.note(f"kill -9 with {len(inflight)} writes in flight")
        self.stats["crash"] += 1
        self.stats["inflight-at-kill"] += len(inflight)
        for img in self.m.images.values():
            img.handle = None
        self.d.restart(kill9=True)
        self.api.close()
        self.after_restart()

    def run(self, steps, budget, ops=None, min_steps=0):
        ops = dict(ops or OPS)
        if self.faults:
            ops.update(FAULT_OPS)
        names, weights = list(ops), list(ops.values())
        start = time.monotonic()
        while self.step < steps:
            if time.monotonic() - start > budget and self.step >= min_steps:
                break
            self.step += 1
            op = self.rng.choices(names, weights)[0]
            while self.faults_on and op in CONTROL_OPS and op not in FAULT_SAFE_CONTROL:
                op = self.rng.choices(names, weights)[0]
            before = self.m.inexact
            getattr(self, f"op_{op}")()
            self.stats["steps"] += 1
            self.check(exact=op in CONTROL_OPS or op in ("flush", "crash"))
            if before is None and self.m.inexact is not None:
                self.note(f"exact accounting off: {self.m.inexact}")
        if self.faults_on:
            self.op_faults_off()
        for img in self.m.images.values():
            self.verify_image(img)
        return time.monotonic() - start

    def after_restart(self):
        self.last_pool = {}
        self.faults_on = False                 # a restart starts without rules
        if self.undurable:
            self.settle_undurable()
        seen = {}
        for img in list(self.m.images.values()):
            h = self.handle(img)
            observed = read_all(h, img.size)
            problems = img.crash_problems(observed)
            if problems:
                s, why = problems[0]
                value = observed[s * SECTOR:(s + 1) * SECTOR]
                where = [o.name for o in self.m.images.values() if o.cur[s * SECTOR:(s + 1) * SECTOR] == value]
                found = next((f"{o.name} at byte {i}" for o in self.m.images.values() if any(value)
                              for i in [o.cur.find(value)] if i >= 0), None)
                self.fail(f"after kill -9, {img.kind} {img.name} has {len(problems)} sectors the contract does not "
                          f"allow; first: byte {s * SECTOR} (chunk {s * SECTOR // CHUNK}): {why} "
                          f"({'zeros' if not any(value) else 'data'}; what {where} held there" if where else
                          f"({'zeros' if not any(value) else 'data'}; " + (f"found in {found})" if found else
                                                                           "found nowhere in the model)"))
            seen[img.name] = (observed, allocation(h, img.size))
        # Which chunk each image maps now: one of the states it went through
        # since it was last made durable.
        chosen = {}
        holders = {(img.name, c): self.m.holders(img, c) for img in self.m.images.values() for c in img.hist}
        for img in list(self.m.images.values()):
            observed, mapped = seen[img.name]
            for c in sorted(img.hist):
                verdict, state = self.m.reconcile(img, c, img.hist[c], mapped[c], img.chunk_bytes(c, observed),
                                                  holders[img.name, c])
                chosen[img.name, c] = state
                if state != img.hist[c][-1]:
                    self.note(f"  {img.name} chunk {c}: {state} of {img.hist[c]} ({verdict})")
                if verdict == "rereserve":
                    self.rereserve.add((img.name, c))
                elif verdict != "ok":
                    self.m.make_inexact(step=self.step, why=verdict)
                    self.m.unsure.add((img.name, c))
            for c in range(img.nchunks):
                if c not in img.hist and (img.map[c] is not None) != mapped[c]:
                    self.m.make_inexact(step=self.step, why=f"chunk {c} of {img.name} is {'mapped' if mapped[c] else 'a hole'} "
                                        "after kill -9 and did not change since it was made durable")
                    self.m.unsure.add((img.name, c))
                    img.map[c] = self.m.label() if mapped[c] else None
                    img.unwritten.discard(c)
        # A copy on write that was lost took its draw on sticky space with it.
        for img, c, rid, label in self.m.cow_log:
            state = chosen.get((img.name, c))
            hist = img.hist.get(c, [])
            if img.name not in self.m.images or state is None or rid not in img.sticky:
                continue
            made = next((i for i, st in enumerate(hist) if st[0] == label), None)
            if made is not None and max(i for i, st in enumerate(hist) if st == state) < made:
                img.sticky[rid] += 1
        for img in self.m.images.values():
            img.cur = bytearray(seen[img.name][0])
        self.m.forget_history()
        self.settle_rereserve()
        # What the images read now is what they hold: make it durable.
        for img in self.writable():
            if not self.op_flush(img):
                self.fail(f"FLUSH of {img.name} failed after the restart")
        for img in self.writable():
            img.recs, img.base = [], None
        self.committed()
        # Writes cut by the kill on images that share chunks can leave the
        # sharing in a state the bytes cannot tell (each image reads right):
        # then the figures are no longer the model's to predict.
        referenced = self.pool_check(settled=True)["referencedChunks"]
        if referenced != len(self.m.referenced()):
            self.m.make_inexact(step=self.step, why=f"after kill -9 the daemon references {referenced} chunks, "
                                                    f"the model {len(self.m.referenced())}")

    def settle_rereserve(self):
        """Chunks that are data or reserved-unwritten (the model cannot tell):
        a TRIM makes them reserved-unwritten whichever they are."""
        for name, c in sorted(self.rereserve):
            img = self.m.images.get(name)
            if img is not None and img.range_of(c) is not None:
                self.op_zero("trim", img, c * CHUNK, img.chunk_len(c))
        self.rereserve.clear()

    def settle_undurable(self):
        """Control-plane changes answered 500 were in effect but not durable:
        after the restart each is there or not; follow the daemon."""
        for change in self.undurable:
            kind = change[0]
            if kind in ("snapshot", "delete"):
                snap = change[1]
                status, _, _ = self.call("GET", f"/v1/snapshots/{snap.name}")
                there = status == 200
                if kind == "snapshot" and not there and snap.name in self.m.images:
                    self.note(f"snapshot {snap.name} (answered 500) did not survive the restart")
                    self.m.delete(snap)
                    self.m.make_inexact(step=self.step, why=f"snapshot {snap.name} (answered 500) was lost")
                elif kind == "delete" and there and snap.name not in self.m.images:
                    self.note(f"deleted snapshot {snap.name} (answered 500) is back after the restart")
                    self.m.images[snap.name] = snap
                    self.m.make_inexact(step=self.step, why=f"snapshot {snap.name} (deleted, 500) came back")
            else:
                vol, rid, first, count = change[1:]
                if vol.name not in self.m.images or rid is None:
                    continue
                ids = {r["id"] for r in self.call_ok("GET", f"/v1/volumes/{vol.name}/reservations")["reservations"]}
                if kind == "reserve" and rid not in ids and rid in vol.ranges:
                    self.note(f"reservation {rid} (answered 500) did not survive the restart")
                    self.m.release(vol, rid)
                    self.m.make_inexact(step=self.step, why=f"reservation {rid} (answered 500) was lost")
                elif kind == "release" and rid in ids and rid not in vol.ranges:
                    self.note(f"released reservation {rid} (answered 500) is back after the restart")
                    mapped = allocation(self.handle(vol), vol.size)
                    for c in range(first, first + count):
                        if vol.map[c] is None and mapped[c]:
                            vol.map[c] = self.m.label()
                            vol.unwritten.add(c)
                    vol.ranges[rid] = (first, count)
                    self.m.make_inexact(step=self.step, why=f"reservation {rid} (released, 500) came back")
        self.undurable.clear()

    # ------------------------------------------------------------ faults

    def op_faults_on(self):
        if self.faults_on:
            return
        r = self.rng
        errors = {"supplier-write": ["EIO", "ENOSPC", "short", "delay"], "supplier-sync": ["EIO", "delay"],
                  "supplier-allocate": ["EIO", "ENOSPC", "delay"], "metadata-commit": ["EIO", "ENOSPC", "delay"]}
        rules = []
        for _ in range(r.randint(1, 3)):
            target = r.choice(["supplier-write", "supplier-write", "supplier-sync", "supplier-allocate",
                               "metadata-commit"])
            rule = {"target": target, "error": r.choice(errors[target]), "after": r.randint(0, 20),
                    "probability": r.choice([0.05, 0.2, 0.5, 1.0]), "seed": r.randrange(1 << 31)}
            if target != "metadata-commit":
                rule["pool"] = self.pool
            if r.random() < 0.5:
                rule["count"] = r.randint(1, 5)
            if rule["error"] == "delay":
                rule["delayMs"] = r.randint(1, 30)
            rules.append(rule)
        self.note(f"faults on: {rules}")
        body = self.call_ok("PUT", "/v1/debug/faults", {"rules": rules})
        if len(body.get("rules", [])) != len(rules) or not isinstance(body.get("calls"), dict):
            self.fail(f"PUT /v1/debug/faults answered {body}")
        self.faults_on = True
        self.stats["fault-phases"] += 1

    def op_faults_off(self):
        """Rules cleared, errors cleared: the pool is online, every FLUSH
        works, the pool check is clean and writes work again."""
        if not self.faults_on:
            return
        body = self.call_ok("GET", "/v1/debug/faults")
        self.stats["faults-hit"] += sum(rule.get("hits", 0) for rule in body.get("rules", []))
        self.note(f"faults off after {body}")
        self.call_ok("DELETE", "/v1/debug/faults", expect=204)
        self.faults_on = False
        pool = self.get_pool()
        if pool.get("state") != "online":
            self.stats["degraded"] += 1
            self.note(f"pool {pool.get('state')}: {pool.get('stateReason')}; clear-errors")
            cleared = self.call_ok("POST", f"/v1/pools/{self.pool}/clear-errors", {})
            if cleared.get("state") != "online":
                self.fail(f"clear-errors left the pool {cleared.get('state')}: {cleared}")
            self.get_pool()
        self.settle_rereserve()
        for img in self.writable():
            if not self.op_flush(img):
                self.fail(f"FLUSH of {img.name} failed after the faults were cleared")
        self.pool_check(timeout=15.0, settled=True)
        for img in self.writable():                  # writes work again
            off, length = self.pick_range(img, max_len=64 * KiB)
            self.free_hint = self.get_pool()["freeBytes"] // CHUNK
            if self.m.plan_write(img, off, length)[1] <= self.free_hint:
                self.op_write(img, off, self.rng.randbytes(length), fua=True)


VOLUME_SIZES = (16 * MiB, 8 * MiB + 20 * KiB, 4 * MiB, 6 * MiB)
