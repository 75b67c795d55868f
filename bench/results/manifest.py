"""A run's manifest: what a run directory says about itself beside its results.

On disk it is two files, written once when a run starts (their formats are the README's
"Results format"):
  env.json    the environment (device, CPU, GPU, driver, library versions, TF32 flags, git commit)
              and the run's shape: the suite's name and sha256, the device, the shard, the world
              size and backend of a data-parallel launch, the worker isolation, and the display
              facts of every precision mode (`precisions`: order, colour, compute dtype)
  suite.toml  the resolved suite as run (flags applied), loadable again by the engine

`RunManifest` is the one class that reads and writes them. Resume, merge, report, compare,
check and the data-parallel launches all read a run through it, never the files themselves.
The engine fills it in (bench.engine.session); everything here is plain data, so the views can
read the precision modes' facts without importing the engine.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.errors import ResultsError
from bench.results.files import read_json_file, write_json, write_text_atomic
from bench.results.identity import DeviceIdentity
from bench.results.schema import display_order

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENV_FILE = "env.json"
SUITE_FILE = "suite.toml"

# env.json keys the manifest types; every other key is environment, kept as written.
_SHAPE_KEYS = ("suite", "suite_sha256", "device", "shard", "world_size", "backend", "isolate")
_PRECISIONS_KEY = "precisions"


@dataclass(frozen=True)
class PrecisionStyle:
    """How the views show one precision mode: its place in tables, its colour and line style,
    and the dtype its matmuls run in. The engine's mode owns these facts (bench.engine.modes);
    a run records them, the views read them here."""

    name: str
    order: int
    color: str
    dashed: bool = False
    compute_dtype: str | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str) -> PrecisionStyle:
        """One entry of env.json's `precisions` list."""
        if not isinstance(data, dict):
            raise ResultsError(f"{where}: precisions: each entry must be an object")
        name, order, color = data.get("name"), data.get("order"), data.get("color")
        if not isinstance(name, str) or not isinstance(color, str):
            raise ResultsError(f"{where}: precisions: each entry needs a name and a colour")
        if not isinstance(order, int) or isinstance(order, bool):
            raise ResultsError(f"{where}: precisions.{name}.order: must be an integer")
        dtype = data.get("compute_dtype")
        return cls(name, order, color, bool(data.get("dashed")), dtype if dtype else None)

    def to_dict(self) -> dict[str, Any]:
        """The env.json form."""
        return {
            "name": self.name,
            "order": self.order,
            "color": self.color,
            "dashed": self.dashed,
            "compute_dtype": self.compute_dtype,
        }


@dataclass(frozen=True)
class RunManifest:
    """env.json and suite.toml of a run, typed. `environment` holds env.json's other keys as
    the engine wrote them (bench.engine.env); absent fields are None."""

    suite_name: str = ""
    suite_text: str | None = None  # the resolved suite.toml; None where the run has none
    suite_sha256: str | None = None
    device: str | None = None  # "cpu", "cuda:0"
    shard: str | None = None  # "2/4" for `--shard 2/4`
    world_size: int | None = None  # ranks of a data-parallel launch
    backend: str | None = None  # its process group's: "nccl" or "gloo"
    isolate: str | None = None  # none | model | case
    precisions: tuple[PrecisionStyle, ...] = ()
    environment: dict[str, Any] = field(default_factory=dict)

    # -- reading ------------------------------------------------------------------------------

    @classmethod
    def from_env(
        cls, env: Any, suite_text: str | None = None, where: str = ENV_FILE
    ) -> RunManifest:
        """The manifest from an env.json object (and the suite text); wrong types in the fields
        it types are a ResultsError naming `where` and the key."""
        if not isinstance(env, dict):
            raise ResultsError(f"{where}: not a JSON object")

        def text(key: str) -> str | None:
            value = env.get(key)
            if value is not None and not isinstance(value, str):
                raise ResultsError(f"{where}: {key}: must be a string; got {value!r}")
            return value

        world_size = env.get("world_size")
        if world_size is not None and (
            not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1
        ):
            raise ResultsError(
                f"{where}: world_size: must be a positive integer; got {world_size!r}"
            )
        styles = env.get(_PRECISIONS_KEY) or []
        if not isinstance(styles, list):
            raise ResultsError(f"{where}: precisions: must be a list")
        return cls(
            suite_name=text("suite") or "",
            suite_text=suite_text,
            suite_sha256=text("suite_sha256"),
            device=text("device"),
            shard=text("shard"),
            world_size=world_size,
            backend=text("backend"),
            isolate=text("isolate"),
            precisions=tuple(PrecisionStyle.from_dict(s, where) for s in styles),
            environment={k: v for k, v in env.items() if k not in (*_SHAPE_KEYS, _PRECISIONS_KEY)},
        )

    @classmethod
    def read(cls, run_dir: Path) -> RunManifest:
        """A run directory's manifest; a missing env.json or suite.toml reads as empty (a run
        that stopped before writing them, a bare results file), an unreadable one is a
        ResultsError naming it."""
        run_dir = Path(run_dir)
        env_path, suite_path = run_dir / ENV_FILE, run_dir / SUITE_FILE
        env = read_json_file(env_path, "env.json") if env_path.is_file() else {}
        suite_text = None
        if suite_path.is_file():
            try:
                suite_text = suite_path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ResultsError(f"{suite_path}: cannot read the run's suite ({exc})") from None
        return cls.from_env(env, suite_text, str(env_path))

    @classmethod
    def read_complete(cls, run_dir: Path, what: str) -> RunManifest:
        """A manifest that must have both files (resume, merge); `what` names the operation in
        the error."""
        run_dir = Path(run_dir)
        if not (run_dir / SUITE_FILE).is_file() or not (run_dir / ENV_FILE).is_file():
            raise ResultsError(
                f"{what} {run_dir}: not an mpbench run directory (needs {ENV_FILE} and "
                f"{SUITE_FILE})"
            )
        return cls.read(run_dir)

    # -- writing ------------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, Any]:
        """The env.json object: the environment with the run's shape (world size and backend
        only for a data-parallel launch, precisions only where recorded)."""
        env = {"suite": self.suite_name, **self.environment, "device": self.device}
        env.update(suite_sha256=self.suite_sha256, isolate=self.isolate, shard=self.shard)
        if self.world_size is not None:
            env.update(world_size=self.world_size, backend=self.backend)
        if self.precisions:
            env[_PRECISIONS_KEY] = [s.to_dict() for s in self.precisions]
        return env

    def write(self, run_dir: Path) -> None:
        """Write env.json and suite.toml into `run_dir` (each whole or not at all)."""
        write_json(Path(run_dir) / ENV_FILE, self.env)
        if self.suite_text is not None:
            write_text_atomic(Path(run_dir) / SUITE_FILE, self.suite_text)

    def replace(self, **changes: Any) -> RunManifest:
        """A copy with some fields changed."""
        return replace(self, **changes)

    # -- what readers ask ---------------------------------------------------------------------

    @property
    def identity(self) -> DeviceIdentity:
        """The device and software the run recorded."""
        return DeviceIdentity.from_env(self.env)

    @property
    def complete(self) -> bool:
        """Both files are there: an mpbench run directory, not a bare results file."""
        return bool(self.environment or self.device) and self.suite_text is not None

    def suite_table(self, name: str, where: str = SUITE_FILE) -> dict[str, Any] | None:
        """A table of the recorded suite ([check], [numerics]), if any."""
        if not self.suite_text:
            return None
        try:
            doc = tomllib.loads(self.suite_text)
        except tomllib.TOMLDecodeError as exc:
            raise ResultsError(f"{where}: TOML syntax error: {exc}") from None
        table = doc.get(name)
        if table is not None and not isinstance(table, dict):
            raise ResultsError(f"{where}: {name}: must be a table ([{name}])")
        return table

    def styles(self) -> PrecisionStyles:
        """The precision modes' display facts this run recorded."""
        return PrecisionStyles(self.precisions)


class PrecisionStyles:
    """Display facts by precision name, as recorded by runs. `shown()` makes them the ones in
    use while a run is analysed and drawn: precisions sort by their recorded order
    (bench.results.schema.precision_rank) and plots take their colours (bench.views.svg). A
    precision no run described (older runs, pytest-benchmark files) keeps the documented order
    and a spare colour."""

    def __init__(self, styles: tuple[PrecisionStyle, ...] | list[PrecisionStyle] = ()) -> None:
        self._by_name = {s.name: s for s in styles}

    @contextlib.contextmanager
    def shown(self) -> Iterator[PrecisionStyles]:
        """These styles in use inside (their order for sorting, their colours for plots)."""
        token = _SHOWN.set(self)
        try:
            with display_order({name: s.order for name, s in self._by_name.items()}):
                yield self
        finally:
            _SHOWN.reset(token)

    def merged(self, other: PrecisionStyles) -> PrecisionStyles:
        """These styles, with the other run's for the precisions these lack."""
        return PrecisionStyles([*other._by_name.values(), *self._by_name.values()])

    def get(self, precision: str) -> PrecisionStyle | None:
        """The recorded style of a precision, if any."""
        return self._by_name.get(precision)

    def dashed(self, precision: str) -> bool:
        """Drawn dashed (a pure-dtype twin of an amp mode)."""
        style = self._by_name.get(precision)
        return bool(style and style.dashed)


_SHOWN: ContextVar[PrecisionStyles | None] = ContextVar("precision_styles_shown", default=None)


def shown_styles() -> PrecisionStyles:
    """The styles in use (`PrecisionStyles.shown`); none recorded outside one."""
    return _SHOWN.get() or PrecisionStyles()
