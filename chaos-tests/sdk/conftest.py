"""pytest wiring of the chaos tests: the LATHE_CHAOS_TESTS=0 switch and the fixtures. The helpers
themselves live in chaos_helpers.py (a module name of its own, so this directory can be collected in
the same pytest run as coordinator/tests/sdk, whose tests import their own `conftest`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from chaos_helpers import API_KEY, CHAOS_ENABLED, LatheServer, RetryCounter, install_retry_counter  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if CHAOS_ENABLED:
        return
    skip = pytest.mark.skip(reason="LATHE_CHAOS_TESTS=0")
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(skip)


@pytest.fixture
def sdk_env(tmp_path, monkeypatch):
    """The SDK environment of protocol §9, with HOME inside the test's tmp dir."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TINKER_API_KEY", API_KEY)
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Never the public service, whatever a client is given.
    monkeypatch.setenv("TINKER_BASE_URL", "http://127.0.0.1:9")
    return home


@pytest.fixture
def servers(tmp_path):
    """Makes LatheServers under tmp_path and stops every one at the end."""
    made: list[LatheServer] = []

    def make(name: str, **kw) -> LatheServer:
        root = tmp_path / name
        root.mkdir()
        s = LatheServer(root, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


@pytest.fixture
def retries(monkeypatch) -> RetryCounter:
    return install_retry_counter(monkeypatch)
