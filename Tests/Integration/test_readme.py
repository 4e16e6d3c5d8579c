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


def markdown_links(path):
    """The targets of the [text](target) links of a Markdown file, outside code."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_docs_link_only_inside_the_repository():
    """README.md and docs/*.md link only to files of the repository (a user
    has the repository, not the team's notes), and every link resolves."""
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    assert (REPO_ROOT / "docs" / "design.md") in pages
    for page in pages:
        for target in markdown_links(page):
            assert not re.match(r"[a-z]+:", target), f"{page.name} links outside the repository: {target}"
            path = target.split("#")[0]
            if not path:
                continue  # an anchor on the same page
            resolved = (page.parent / path).resolve()
            assert resolved.is_relative_to(REPO_ROOT.resolve()), f"{page.name} links outside the repository: {target}"
            assert resolved.exists(), f"{page.name} links to a missing file: {target}"
