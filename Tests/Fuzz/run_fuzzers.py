#!/usr/bin/python3
"""Runs each fuzz target for a bounded time (`make fuzz`; see README "Fuzzing").

For each target: libFuzzer starts from the committed corpus
(Tests/Fuzz/corpus/TARGET and Tests/Fuzz/regressions/TARGET, read only)
plus a scratch corpus under the build directory (first, so new inputs go
there and are kept for the next run), with the target's dictionary. Its
output goes to BUILD/logs/TARGET.log; a crash, hang or leak is written to
BUILD/findings/TARGET/, with a copy of the log. Prints one line per target (executions, speed,
coverage, corpus, finding) and exits 1 if any target found something.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# The NBD targets' engine frees a connection's memory on its own threads,
# after the input returned, so libFuzzer sees most inputs "leak" and stops
# the world for a LeakSanitizer scan after each (129 against 836 exec/s for
# nbd-transmission): they run without the per-input leak check.
TARGET_FLAGS = {
    "nbd-handshake": ["-detect_leaks=0"],
    "nbd-transmission": ["-detect_leaks=0"],
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True, help="remap-fuzz built with -sanitize=fuzzer,address -DFUZZING")
    parser.add_argument("--build", required=True, help="directory for scratch corpora, logs and findings")
    parser.add_argument("--seconds", type=int, default=60, help="per target")
    parser.add_argument("--targets", default="http nbd-handshake nbd-transmission")
    parser.add_argument("extra", nargs="*", help="more libFuzzer flags")
    args = parser.parse_args()

    failed = False
    rows = []
    for target in args.targets.split():
        scratch = os.path.join(args.build, "corpus", target)
        findings = os.path.join(args.build, "findings", target)
        logs = os.path.join(args.build, "logs")
        for directory in (scratch, findings, logs):
            os.makedirs(directory, exist_ok=True)
        corpora = [scratch] + [d for d in (os.path.join(HERE, "corpus", target), os.path.join(HERE, "regressions", target))
                               if os.path.isdir(d)]
        dictionary = os.path.join(HERE, ("nbd" if target.startswith("nbd") else target) + ".dict")
        command = [args.binary, target, f"-max_total_time={args.seconds}", "-timeout=30", "-print_final_stats=1",
                   f"-dict={dictionary}", f"-artifact_prefix={findings}/"] + TARGET_FLAGS.get(target, []) + args.extra + corpora
        log = os.path.join(logs, target + ".log")
        before = set(os.listdir(findings))
        print(f"fuzzing {target} for {args.seconds} s (log: {log})", flush=True)
        # Swift's backtracer reads other threads' stacks, which AddressSanitizer
        # reports as an error of its own; libFuzzer prints the crash's stack.
        with open(log, "w") as out:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, REMAP_FUZZ_TARGET=target, SWIFT_BACKTRACE="enable=no")).returncode
        text = open(log, errors="replace").read()
        found = sorted(name for name in set(os.listdir(findings)) - before if not name.endswith(".log"))
        stats = dict(re.findall(r"^stat::(\w+):\s+(\d+)", text, re.M))
        progress = re.findall(r"^#\d+\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)", text, re.M)
        cov, ft, corpus, size = progress[-1] if progress else ("?", "?", "?", "?")
        runs = stats.get("number_of_executed_units", "?")
        speed = stats.get("average_exec_per_sec", "?")
        if code != 0 or found:
            failed = True
            # The next run overwrites the log: keep it with what it found.
            for name in found:
                shutil.copyfile(log, os.path.join(findings, name + ".log"))
            result = "FOUND " + (", ".join(os.path.join(findings, f) for f in found) or f"exit status {code}, see the log")
        else:
            result = "nothing found"
        rows.append((target, runs, speed, cov, ft, f"{corpus} ({size})", result))

    header = ("target", "executions", "exec/s", "cov", "ft", "corpus", "result")
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    if failed:
        print("\nA finding is an input that crashed or hung remapd's parser: fix the cause, then add the input to "
              "Tests/Fuzz/regressions/TARGET/ with a line in Tests/Fuzz/regressions/README.md (see README \"Fuzzing\").")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
