"""Shared fixtures: tiny suites that run in seconds on a 2-core CPU."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from tiny import TINY_SUITE

# transformers warns about generation defaults and config quirks; tests read our output only.
logging.getLogger("transformers").setLevel(logging.ERROR)

# Under pytest-xdist each worker process gets one thread, and so do the processes the tests
# start (mpbench workers, torchrun ranks inherit the environment): two workers on two cores
# with two threads each would only fight over them. The tiny models run no faster on two.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def tiny_suite_path(tmp_path: Path) -> Path:
    """A suite of both families, both workloads, a skipped precision, two batch sizes."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SUITE, encoding="utf-8")
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first (a stable sort: file order otherwise): each runs for tens of seconds
    with few other processes to share the cores, and pytest-xdist's workers then steal the short
    tests to even out the end, instead of one worker finishing a 40 s test while the other idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
