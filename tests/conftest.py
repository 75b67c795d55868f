"""Shared fixtures: tiny suites that run in seconds on a 2-core CPU."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from tiny import TINY_SUITE

# transformers warns about generation defaults and config quirks; tests read our output only.
logging.getLogger("transformers").setLevel(logging.ERROR)


@pytest.fixture
def tiny_suite_path(tmp_path: Path) -> Path:
    """A suite of both families, both workloads, a skipped precision, two batch sizes."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SUITE, encoding="utf-8")
    return path
