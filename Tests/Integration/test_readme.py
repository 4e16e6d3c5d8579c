"""The README's walk-through, run verbatim.

The commands between the walkthrough markers of README.md are run with bash
in a fresh directory where remapd serves `.remap` exactly as `make run` starts
it, and `.build/release/remapctl` is the built client.
"""

import json
import os
import re
import subprocess

from harness import REMAPCTL, REPO_ROOT, MiB, Remapd, clean_env


def walkthrough():
    text = (REPO_ROOT / "README.md").read_text()
    match = re.search(r"<!-- walkthrough:start -->\s*```sh\n(.*?)```\s*<!-- walkthrough:end -->", text, re.S)
    assert match, "README.md has no walk-through between the markers"
    return match.group(1)


def test_readme_walkthrough_runs_verbatim(tmp_path):
    work = tmp_path / "w"
    (work / ".build" / "release").mkdir(parents=True)
    os.symlink(REMAPCTL, work / ".build" / "release" / "remapctl")
    # As `make run` starts it: --state-dir .remap, sockets in it.
    daemon = Remapd(work / ".remap", pool_size="1G", log_path=tmp_path / "remapd.log")
    daemon.start()
    try:
        script = walkthrough()
        p = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, capture_output=True,
                           timeout=300, env=clean_env())
        out, err = p.stdout.decode(), p.stderr.decode()
        assert p.returncode == 0, f"walk-through failed:\n{out}\n{err}\n{daemon.log()}"
        docs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        pools = [d for d in docs if "capacityBytes" in d]
        assert [pool["allocatedBytes"] for pool in pools] == [0, 64 * MiB]
        volume = [d for d in docs if d.get("name") == "demo" and "allocatedBytes" in d][-1]
        assert volume["allocatedBytes"] == 64 * MiB
        assert "Images are identical." in out
        assert "demo" in out  # remapctl volume list
        assert daemon.pool()["allocatedBytes"] == 0  # after the delete
    finally:
        daemon.terminate(check=False)
        daemon.cleanup()
