"""Writing and reading whole files: a file is written whole or not at all, and a failure is one
line naming the file, the OS's reason and the free space left (exit code 3).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bench.errors import OutputError, ResultsError


def _free_space(directory: Path) -> str:
    """'12.0 KiB free' on the file system holding `directory`, or '' where it cannot be read."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return ""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if free >= size:
            return f"{free / size:.1f} {unit} free"
    return f"{free} bytes free"


def output_error(path: Path, exc: OSError) -> OutputError:
    """One line naming the file, the OS's reason and the free space left in its directory."""
    free = _free_space(path.parent)
    return OutputError(
        f"cannot write {path}: {exc.strerror or exc}"
        + (f" ({free} in {path.parent})" if free else "")
    )


def write_text_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing: a temp file renamed into place, removed if the write fails."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise output_error(path, exc) from None


def read_json_file(path: Path, what: str = "file") -> Any:
    """Parse a JSON file; unreadable or invalid JSON is a ResultsError naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc})") from None


def write_json(path: Path, data: Any) -> None:
    """A JSON file (env.json, max_batch.json), written whole or not at all."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
