"""A short soak (issue 10): Tests/Soak/soak.py for a few rounds of mixed
NBD load with snapshots, clones and reservations in flight, kill -9 at a
random moment, and a check of every flushed write, every snapshot, the
identity, the pool check and `remapd check` after each kill. `make soak
ROUNDS=N` runs the long one. REMAP_SOAK_SEED replays a run's workload."""

import os
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Soak"))

from soak import POOL_SIZE, soak  # noqa: E402

ROUNDS = int(os.environ.get("REMAP_SOAK_ROUNDS", "5"))


@pytest.mark.timeout(240)
def test_short_soak_loses_nothing(make_remapd):
    seed = int(os.environ.get("REMAP_SOAK_SEED") or random.randrange(1 << 30))
    d = make_remapd(pool_size=POOL_SIZE)
    lines = []
    summary = soak(d, ROUNDS, seed, out=lambda line: (lines.append(line), print(line)))
    assert (summary["failures"], summary["lost"], summary["changed"]) == (0, 0, 0), \
        f"REMAP_SOAK_SEED={seed}:\n" + "\n".join(lines)
    assert summary["acked"] >= 100 * ROUNDS and summary["flush-acked"] >= ROUNDS, summary
    assert summary["snapshot"] >= 1 and summary["inflight-at-kill"] >= ROUNDS, summary
