"""Writing a command's output files: '-' means stdout; an OS error is an OutputError (exit 3)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from bench.results.files import output_error


def write_file(path: Path, write: Callable[[Path], None]) -> None:
    """Create the parent directory and write the file; OS errors become one-line OutputErrors."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
    except OSError as exc:
        raise output_error(path, exc) from None


def write_output(target: str, text: str) -> None:
    """Text to a file, or to stdout when `target` is '-'."""
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_file(Path(target), lambda p: p.write_text(text, encoding="utf-8"))
