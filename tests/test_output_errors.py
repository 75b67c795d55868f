"""A full disk never tears results.jsonl, never ends in a traceback, and never exits 0.

ResultsWriter rolls a failed append back to the last whole line and raises OutputError (exit 3,
one line naming the file and the free space); a report that cannot be written makes `mpbench
run` exit 3 and leaves no temp file. End to end on a real tiny tmpfs where this machine lets the
test mount one, else skipped (the unit tests below cover the logic everywhere)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from runs import fixture_cases, ok_result, write_run

from bench.errors import EXIT_OUTPUT, OutputError
from bench.results import rundir
from bench.results.files import write_text_atomic
from bench.results.rundir import RESULTS_FILE, ResultsWriter, read_results

SUITE = """
[suite]
name = "disk"

[sweep]
models = ["gpt2-tiny"]
workloads = ["infer"]
precisions = ["fp32", "amp_bf16", "bf16"]
batch_sizes = [1, 2, 3, 4, 5, 6, 7, 8]
seq_lens = [16]

[timing]
warmup = 0
iterations = 2

[numerics]
enabled = false
"""


def test_a_failed_append_is_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    run = write_run(tmp_path / "run", fixture_cases()[:2])
    path = run / RESULTS_FILE
    before = path.read_bytes()
    real_write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        if len(data) > 100:  # a results line: half of it lands, then the disk is full
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(rundir.os, "write", half_then_full)
    result = ok_result(fixture_cases()[2], 0.01, random.Random(0))
    with pytest.raises(OutputError) as info:
        ResultsWriter(run).append(result)
    message = str(info.value)
    assert message.startswith(f"cannot write {path}: No space left on device (")
    assert f"free in {run})" in message and info.value.exit_code == EXIT_OUTPUT
    assert path.read_bytes() == before  # the torn half line is gone
    assert len(read_results(path)[0]) == 2


def test_an_atomic_write_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "index.html"
    target.write_text("old")

    def full(self: Path, *args: object, **kwargs: object) -> None:
        Path.write_bytes(self, b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OutputError, match="No space left on device"):
        write_text_atomic(target, "<html>new</html>")
    assert target.read_bytes() == b"old" and not (tmp_path / "index.html.tmp").exists()


@contextlib.contextmanager
def tiny_filesystem(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted for the test, or a skip where mounting is not allowed."""
    mount = tmp_path / f"fs-{size}"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def mpbench_run(suite: Path, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", "run", str(suite), "--out", str(out), "--isolate", "none"]
        + list(flags),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_results_on_a_full_disk(tmp_path: Path) -> None:
    suite = tmp_path / "disk.toml"
    suite.write_text(SUITE)
    with tiny_filesystem(tmp_path, "24k") as mount:
        out = mount / "run"
        proc = mpbench_run(suite, out, "-q")
        assert proc.returncode == EXIT_OUTPUT, proc.stderr
        assert "Traceback" not in proc.stderr
        error = [line for line in proc.stderr.splitlines() if line.startswith("mpbench: error:")]
        assert len(error) == 1
        assert f"cannot write {out / RESULTS_FILE}: No space left on device" in error[0]
        assert f"free in {out})" in error[0] and "--resume" in error[0]
        text = (out / RESULTS_FILE).read_text()
        assert text.endswith("\n")
        lines = [json.loads(line) for line in text.splitlines()]  # every line whole
        assert 0 < len(lines) < 24 and f"The {len(lines)} result(s) before it" in error[0]


def test_a_report_that_does_not_fit_fails_the_run(tmp_path: Path) -> None:
    suite = tmp_path / "disk.toml"
    suite.write_text(SUITE.replace("[1, 2, 3, 4, 5, 6, 7, 8]", "[1]"))
    with tiny_filesystem(tmp_path, "48k") as mount:
        out = mount / "run"
        proc = mpbench_run(suite, out)
        assert proc.returncode == EXIT_OUTPUT, proc.stderr
        assert "report not written" in proc.stderr and "No space left on device" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(read_results(out / RESULTS_FILE)[0]) == 3  # the results are all there
        assert not list(out.glob("*.tmp")) and not (out / "index.html").exists()
