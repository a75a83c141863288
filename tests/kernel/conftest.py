"""Real-kernel tests: they load tcptop's BPF programs and drive real TCP traffic (root only)."""

import os

import pytest

from tcptop.engines import EngineOptions
from tcptop.engines.core.engine import CoreEngine


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="real-kernel tests load BPF programs: run as root")
        for item in items:
            if "tests/kernel" in str(item.fspath):
                item.add_marker(skip)


@pytest.fixture(scope="module")
def engine():
    """One live engine for a module's tests; each test finds its own flows by 4-tuple."""
    e = CoreEngine(EngineOptions(interval_s=0.2))
    yield e
    e.close()


@pytest.fixture
def nspair(request):
    from kit import NsPair
    pair = NsPair.create(request.node.name[5:13].replace("_", ""))
    yield pair
    pair.close()
