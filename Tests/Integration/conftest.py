"""The fixtures of remap's integration tests.

The daemon is driven the way a user drives it: it is started as a process,
its REST API is called with curl over the unix socket, the CLI is remapctl,
and the data path is exercised with qemu-img/qemu-io/nbdinfo and libnbd's
Python binding. What the tests share besides fixtures (the `Remapd` class,
the checks, the clients) is in harness.py.
"""

import pytest

from harness import Remapd


# -------------------------------------------------------------------- fixtures

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach every daemon's log to the report of a failed test."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for i, d in enumerate(getattr(item, "_remapd_instances", [])):
            rep.sections.append((f"remapd log #{i} ({d.log_path})", d.log()))


@pytest.fixture
def make_remapd(request, tmp_path):
    """Factory: make_remapd(name="s", start=True, **kwargs) -> Remapd."""
    instances = []
    request.node._remapd_instances = instances

    def factory(name="s", start=True, state_dir=None, **kwargs):
        kwargs.setdefault("log_path", tmp_path / f"{name}-remapd.log")
        d = Remapd(state_dir or tmp_path / name, **kwargs)
        instances.append(d)
        if start:
            d.start()
        return d

    yield factory
    for d in instances:
        d.cleanup()


@pytest.fixture
def remapd(make_remapd):
    """A running daemon with a fresh state dir and a 512 MiB default pool."""
    return make_remapd()


@pytest.fixture(scope="module")
def shared_remapd(tmp_path_factory):
    """One daemon for a module of cheap tests; restarted if a test killed it."""
    d = Remapd(tmp_path_factory.mktemp("shared") / "s")
    d.start()
    yield d
    d.cleanup()


@pytest.fixture
def rd_shared(request, shared_remapd):
    request.node._remapd_instances = [shared_remapd]
    if not shared_remapd.running:
        shared_remapd.start()
    yield shared_remapd
    shared_remapd.close_handles()
