# remap — build, run and test. Two commands do everything on a fresh Debian 12:
#   make run    installs what is missing, builds, starts remapd on ./.remap
#   make test   installs what the tests need, builds, runs every test
SHELL := /bin/bash
export PATH := /opt/swift/usr/bin:$(PATH)

SWIFT ?= swift
STATE_DIR ?= .remap
POOL_SIZE ?= 4G

# Debian packages: what the build links against, and what the tests drive.
BUILD_PACKAGES := pkg-config libmicrohttpd-dev liburing-dev libsystemd-dev libsqlite3-dev libgnutls28-dev
RUN_PACKAGES := curl qemu-utils libnbd-bin
TEST_PACKAGES := $(RUN_PACKAGES) python3 python3-pytest python3-pytest-timeout python3-libnbd nbdkit fio xfsprogs fuse3 gnutls-bin \
	sqlite3 systemd systemd-container

APT_INSTALL = missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

.PHONY: all deps test-deps contract-deps build build-debug run test unit-test integration-test bench bench-snapshots bench-stalls soak fuzz clean

all: build

deps:
	@$(call APT_INSTALL,$(BUILD_PACKAGES) $(RUN_PACKAGES))

test-deps:
	@$(call APT_INSTALL,$(BUILD_PACKAGES) $(TEST_PACKAGES))

build: deps
	$(SWIFT) build -c release

build-debug:
	$(SWIFT) build --build-tests

# Starts remapd in the foreground on a local state directory; on first start
# it creates pool 'default' on a $(POOL_SIZE) file there. Ctrl-C stops it.
run: build
	./.build/release/remapd --state-dir $(STATE_DIR) --default-pool-size $(POOL_SIZE)

# Contract-test tools in a venv of the system Python; reinstalled only when
# the requirements change.
CONTRACT_VENV := .build/venv
CONTRACT_REQUIREMENTS := Tests/Contract/requirements.txt

$(CONTRACT_VENV)/.installed: $(CONTRACT_REQUIREMENTS)
	@$(call APT_INSTALL,python3-venv)
	@[ -x $(CONTRACT_VENV)/bin/pip ] || /usr/bin/python3 -m venv $(CONTRACT_VENV)
	$(CONTRACT_VENV)/bin/pip install -q --disable-pip-version-check -r $(CONTRACT_REQUIREMENTS)
	@touch $@

contract-deps: $(CONTRACT_VENV)/.installed

unit-test: build-debug
	$(SWIFT) test --skip-build

# The data-path tests run once more on the portable threads engine first;
# the full suite (io_uring where the kernel allows it) runs last, so the
# output ends with its summary.
DATA_PATH_TESTS := Tests/Integration/test_nbd_data.py Tests/Integration/test_nbd_protocol.py Tests/Integration/test_nbd_robustness.py \
	Tests/Integration/test_nbd_bounds.py \
	Tests/Integration/test_full_pool.py Tests/Integration/test_reservations.py Tests/Integration/test_leases.py \
	Tests/Integration/test_thresholds.py Tests/Integration/test_queued_writes.py Tests/Integration/test_events.py \
	Tests/Integration/test_snapshot_create.py Tests/Integration/test_snapshot_delete.py Tests/Integration/test_clones.py \
	Tests/Integration/test_snapshot_revert.py Tests/Integration/test_snapshot_changes.py Tests/Integration/test_snapshot_space.py \
	Tests/Integration/test_snapshot_content.py Tests/Integration/test_volume_import.py \
	Tests/Integration/test_integrity.py Tests/Integration/test_faults.py \
	Tests/Integration/test_model.py

integration-test: build-debug contract-deps
	REMAP_ENGINE=threads REMAPD=$(CURDIR)/.build/debug/remapd REMAPCTL=$(CURDIR)/.build/debug/remapctl \
	  /usr/bin/python3 -m pytest -q -ra $(DATA_PATH_TESTS)
	REMAPD=$(CURDIR)/.build/debug/remapd REMAPCTL=$(CURDIR)/.build/debug/remapctl \
	  /usr/bin/python3 -m pytest -q -ra Tests/Integration

test: test-deps
	$(MAKE) --no-print-directory unit-test
	$(MAKE) --no-print-directory integration-test

# Benchmark: fio over NBD (unix socket) against remapd, nbdkit, qemu-nbd raw
# and qcow2, and fio on the file itself; prints one table and writes
# bench/RESULTS.md (see bench/README.md). About 10 minutes; needs 8.5 GiB
# free under bench/. Options through BENCH_ARGS, e.g. BENCH_ARGS="--repeat 1".
BENCH_PACKAGES := $(RUN_PACKAGES) fio nbdkit python3
BENCH_ARGS ?=

bench: deps
	@$(call APT_INSTALL,$(BENCH_PACKAGES))
	/usr/bin/python3 bench/run.py $(BENCH_ARGS)

# Snapshots: creation time for 16 MiB vs 16 GiB mapped, and reads of a
# volume and its oldest snapshot with 1 and 1,000 snapshots; prints tables
# and writes bench/SNAPSHOTS.md. About 7 minutes; needs 18 GiB free.
bench-snapshots: deps
	@$(call APT_INSTALL,$(BENCH_PACKAGES))
	$(SWIFT) build -c release --product remapd
	/usr/bin/python3 bench/snapshots.py --remapd $(CURDIR)/.build/release/remapd $(SNAPSHOT_BENCH_ARGS)

# Engine-thread stalls (issue 11): how long each control-plane command holds
# the engine thread (its own timing, from /metrics, and the longest 4k read
# of a concurrent NBD reader) on a pool of 16 M chunks with a volume of
# 1,000 snapshots; prints tables and writes bench/STALLS.md. About 10
# minutes; needs 3 GiB free. Options through STALLS_BENCH_ARGS (--help).
bench-stalls: deps
	@$(call APT_INSTALL,$(BENCH_PACKAGES))
	$(SWIFT) build -c release --product remapd
	/usr/bin/python3 bench/stalls.py --remapd $(CURDIR)/.build/release/remapd $(STALLS_BENCH_ARGS)

# Soak (issue 10): ROUNDS rounds of mixed NBD load over several connections
# with snapshots, clones and reservations in flight, kill -9 at a random
# moment, then every flushed write and every snapshot, the accounting
# identity, the pool check and `remapd check`; one line per round and a
# summary (rounds, wall time, failures, lost writes, changed snapshots).
# About 1.5 s per round on the debug build. Options through SOAK_ARGS,
# e.g. SOAK_ARGS="--seed 42 --keep"; `make test` runs 5 rounds
# (Tests/Integration/test_soak.py).
ROUNDS ?= 100
SOAK_ARGS ?=

soak: test-deps
	$(SWIFT) build --product remapd
	REMAPD=$(CURDIR)/.build/debug/remapd /usr/bin/python3 Tests/Soak/soak.py --rounds $(ROUNDS) $(SOAK_ARGS)

# Fuzzing (README "Fuzzing"): each parser of client bytes (FUZZ_TARGETS)
# under libFuzzer with AddressSanitizer for FUZZ_SECONDS, from the committed
# corpus; prints executions, coverage and findings per target, and fails
# when one crashed or hung. Built apart (.build-fuzz) with the sanitizers;
# not part of `make test`, which replays the committed inputs instead.
# More libFuzzer flags through FUZZ_ARGS, e.g. FUZZ_ARGS="-seed=1".
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= http nbd-handshake nbd-transmission
FUZZ_ARGS ?=
FUZZ_BUILD := .build-fuzz

# `--sanitize fuzzer --sanitize address` alone would hand swiftc the two as
# separate flags, in an order that changes from run to run, and the last
# one wins: coverage or ASan would be missing. `--sanitize fuzzer` is kept
# so SwiftPM links libFuzzer's main in place of remap-fuzz's own.
fuzz: deps
	$(SWIFT) build --product remap-fuzz --scratch-path $(FUZZ_BUILD) --sanitize fuzzer \
	  -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING
	/usr/bin/python3 Tests/Fuzz/run_fuzzers.py --binary $(FUZZ_BUILD)/debug/remap-fuzz --build $(FUZZ_BUILD) \
	  --seconds $(FUZZ_SECONDS) --targets "$(FUZZ_TARGETS)" -- $(FUZZ_ARGS)

clean:
	rm -rf .build $(FUZZ_BUILD)
