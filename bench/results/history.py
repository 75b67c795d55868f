"""The history store: every run added to a database, so the CI gate and the trend page can see
many runs, not one baseline (README, "History and trends").

One class, `HistoryStore`, reads and writes it through SQLAlchemy Core. The database is an
embedded SQLite file by default (`reports/history.db`, or the MPBENCH_DB variable), so nothing
needs setting up; a team points `--db postgresql://USER@HOST/DB` at a shared PostgreSQL server
(the `postgres` extra installs the driver, psycopg 3).

Tables (schema version SCHEMA_VERSION):
  mpbench_schema  one row per applied migration (version, applied_at, mpbench version): the
                  database's schema version is the largest. A database of a newer version is
                  refused (upgrade mpbench); an older one is migrated when opened, in one
                  transaction, under a lock (MIGRATIONS).
  runs            one row per run: its identity (`run_key`: sha256 of env.json and every case
                  result, unique, so adding a run twice stores it once), the suite (name, sha256,
                  text), the device (kind, model, slug, compute capability, GPU UUID) and the
                  software around it (driver, CUDA, torch, transformers, torchao, Python, torch
                  threads), the git commit of the code under test, the host, when it started,
                  when it was added and from where, and the whole env.json.
  case_results    one row per case of a run: the case's fields, status, reason, numerics verdict,
                  the metrics of HISTORY_METRICS as columns (for SQL readers: dashboards, ad-hoc
                  queries), and the whole result line (`result_json`, per-step samples included),
                  from which `results()` rebuilds CaseResults for the gate's one-baseline rule.

An add is one transaction: a run is stored whole or not at all. Two writers at once are safe:
SQLite takes its write lock when the transaction begins (BEGIN IMMEDIATE; the other waits up to
LOCK_TIMEOUT_S), PostgreSQL serialises adds on an advisory lock, and the unique run key turns a
duplicate that slips past either into a no-op. Every database fault is a ResultsError (exit 2)
naming the database without its password.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import __version__
from bench.errors import ResultsError
from bench.results.manifest import RunManifest
from bench.results.rundir import Run
from bench.results.schema import CaseResult, finite_or_none

SCHEMA_VERSION = 2
DEFAULT_DB_PATH = Path("reports") / "history.db"
DB_ENV_VAR = "MPBENCH_DB"
LOCK_TIMEOUT_S = 60.0  # how long a writer waits for another's transaction (SQLite)
CONNECT_TIMEOUT_S = 10  # a server that does not answer (PostgreSQL)
_PG_LOCK_KEY = 0x6D706265  # "mpbe": the advisory lock every PostgreSQL writer takes

# The metrics every case row carries, as (column, unit). Values are those of one run: its median
# step, its peak memory, its numerics pass.
HISTORY_METRICS: dict[str, str] = {
    "throughput": "samples/s",  # batch / median step
    "step_time": "s",  # median step
    "peak_memory": "bytes",
    "energy_per_sample": "J",  # NVML energy over the timed steps / samples (GPU only)
    "mfu": "",  # counted FLOPs per step / median step / the dtype's dense peak
    "max_rel_loss_div": "",  # training: largest |loss - fp32 loss| / |fp32 loss| of the pass
    "logits_sqnr_db": "dB",  # inference: SQNR of the logits against fp32
    "grad_sqnr_db": "dB",  # training: first-step gradient SQNR against fp32, all parameters
}
# The environment of a run that a change point or a failing check names when it changed, as
# (field, label), in the order they are shown.
ENVIRONMENT_FIELDS: tuple[tuple[str, str], ...] = (
    ("device_uuid", "GPU"),
    ("driver", "driver"),
    ("cuda", "CUDA"),
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("torchao", "torchao"),
    ("python", "Python"),
    ("torch_threads", "torch threads"),
    ("git_commit", "commit"),
    ("suite_sha256", "suite.toml"),
    ("hostname", "host"),
)


def _sqlalchemy() -> Any:
    """SQLAlchemy, imported when a store opens (the other commands do not pay for it)."""
    import sqlalchemy

    return sqlalchemy


# ---------------------------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------------------------


def resolve_url(given: str | None) -> str:
    """The database URL: `given`, else $MPBENCH_DB, else reports/history.db. A plain path is an
    SQLite file; `postgresql://` and `postgres://` use psycopg 3 (the `postgres` extra)."""
    text = given or os.environ.get(DB_ENV_VAR) or str(DEFAULT_DB_PATH)
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser()}"
    for prefix in ("postgresql://", "postgres://"):
        if text.startswith(prefix):
            return "postgresql+psycopg://" + text[len(prefix) :]
    return text


def display_url(url: str) -> str:
    """The URL for messages: the password hidden, an SQLite file as its path."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///") :] or ":memory:"
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL: show it without anything after '@'
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}" if "@" in rest else url


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL (None for other databases and in-memory ones)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


# ---------------------------------------------------------------------------------------------
# What a run contributes
# ---------------------------------------------------------------------------------------------


def utc_time(text: Any) -> str | None:
    """An ISO 8601 time as UTC 'YYYY-MM-DDTHH:MM:SS+00:00' (naive times are taken as UTC)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def run_key(run: Run) -> str:
    """The run's identity: sha256 of its env.json and every case result, canonical JSON. The
    same run read from another copy of its directory has the same key."""
    results = sorted((r.to_dict() for r in run.latest()), key=lambda d: d["case"]["id"])
    doc = {"env": run.env, "results": results}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def run_environment(manifest: RunManifest, commit: str | None = None) -> dict[str, Any]:
    """ENVIRONMENT_FIELDS of a run, from its env.json (`commit` overrides the recorded one)."""
    env = manifest.env
    identity = manifest.identity
    gpu = env.get("gpu") if isinstance(env.get("gpu"), dict) else {}
    versions = env.get("versions") if isinstance(env.get("versions"), dict) else {}

    def text(value: Any) -> str | None:
        return str(value) if value not in (None, "") else None

    return {
        "device_uuid": text(gpu.get("uuid")),
        "driver": identity.driver,
        "cuda": identity.cuda,
        "torch": identity.torch,
        "transformers": identity.transformers,
        "torchao": text(versions.get("torchao")),
        "python": text(versions.get("python")),
        "torch_threads": identity.torch_threads,
        "git_commit": commit or text(env.get("git_commit")),
        "suite_sha256": manifest.suite_sha256,
        "hostname": identity.hostname,
    }


def case_metrics(result: CaseResult) -> dict[str, float | None]:
    """HISTORY_METRICS of one case result (None where it has no such figure)."""
    values: dict[str, float | None] = dict.fromkeys(HISTORY_METRICS)
    if result.ok:
        values["throughput"] = finite_or_none(result.samples_per_s)
        values["step_time"] = finite_or_none(result.median_s)
        values["peak_memory"] = finite_or_none(result.peak_bytes)
        if result.telemetry is not None:
            values["energy_per_sample"] = finite_or_none(result.telemetry.energy_per_sample_j)
        flops = result.flops
        if flops is not None and flops.peak_tflops and result.median_s:
            values["mfu"] = finite_or_none(
                flops.per_step / result.median_s / (flops.peak_tflops * 1e12)
            )
    numerics = result.numerics or {}
    values["max_rel_loss_div"] = finite_or_none(numerics.get("max_rel_div"))
    values["logits_sqnr_db"] = finite_or_none(numerics.get("sqnr_db"))
    grads = numerics.get("grad_sqnr_db")
    if isinstance(grads, dict):
        values["grad_sqnr_db"] = finite_or_none(grads.get("overall"))
    return values


# ---------------------------------------------------------------------------------------------
# Rows read back
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredRun:
    """A run as the store holds it (`id` numbers runs in the order they were added)."""

    id: int
    run_key: str
    suite: str
    suite_sha256: str | None
    device_kind: str | None
    device_model: str
    device_slug: str
    compute_capability: str | None
    started_at: str  # UTC, ISO 8601
    added_at: str
    source: str | None
    cases: int
    environment: dict[str, Any] = field(default_factory=dict)  # ENVIRONMENT_FIELDS

    @property
    def label(self) -> str:
        """'#12 (2026-12-01 10:00, commit abc1234)' for tables and messages."""
        when = self.started_at[:16].replace("T", " ")
        commit = self.environment.get("git_commit")
        return f"#{self.id} ({when}" + (f", commit {commit[:12]}" if commit else "") + ")"


@dataclass(frozen=True)
class StoredCase:
    """One case of a stored run: status, verdict and HISTORY_METRICS (no per-step samples)."""

    run_id: int
    case_id: str
    model: str
    workload: str
    precision: str
    status: str
    verdict: str | None
    unstable: bool | None
    metrics: dict[str, float | None]


@dataclass(frozen=True)
class AddOutcome:
    """What `add` did: the run as stored, and whether it was new (False: already there)."""

    run: StoredRun
    added: bool


# ---------------------------------------------------------------------------------------------
# Tables and migrations
# ---------------------------------------------------------------------------------------------


def _tables() -> tuple[Any, Any, Any, Any]:
    """(metadata, mpbench_schema, runs, case_results) of the current schema."""
    sa = _sqlalchemy()
    metadata = sa.MetaData()
    versions = sa.Table(
        "mpbench_schema",
        metadata,
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("applied_at", sa.String(40), nullable=False),
        sa.Column("mpbench", sa.String(40), nullable=False),
    )
    runs = sa.Table(
        "runs",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_key", sa.String(64), nullable=False, unique=True),
        sa.Column("suite", sa.String(200), nullable=False),
        sa.Column("suite_sha256", sa.String(64)),
        sa.Column("suite_text", sa.Text),
        sa.Column("device_kind", sa.String(20)),
        sa.Column("device_model", sa.String(200), nullable=False),
        sa.Column("device_slug", sa.String(200), nullable=False),
        sa.Column("compute_capability", sa.String(20)),
        sa.Column("device_uuid", sa.String(100)),
        sa.Column("driver", sa.String(100)),
        sa.Column("cuda", sa.String(40)),
        sa.Column("torch", sa.String(100)),
        sa.Column("transformers", sa.String(100)),
        sa.Column("torchao", sa.String(100)),
        sa.Column("python", sa.String(40)),
        sa.Column("torch_threads", sa.Integer),
        sa.Column("git_commit", sa.String(100)),
        sa.Column("hostname", sa.String(200)),
        sa.Column("started_at", sa.String(40), nullable=False),
        sa.Column("added_at", sa.String(40), nullable=False),
        sa.Column("source", sa.Text),
        sa.Column("cases", sa.Integer, nullable=False),
        sa.Column("env_json", sa.Text, nullable=False),
        sa.Index("runs_series", "device_slug", "suite", "started_at"),
    )
    metric_columns = [
        sa.Column(name, sa.BigInteger if name == "peak_memory" else sa.Float)
        for name in HISTORY_METRICS
    ]
    cases = sa.Table(
        "case_results",
        metadata,
        sa.Column(
            "run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("case_id", sa.String(300), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),  # order in the run's results file
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("workload", sa.String(40), nullable=False),
        sa.Column("precision", sa.String(40), nullable=False),
        sa.Column("batch_size", sa.Integer),
        sa.Column("seq_len", sa.Integer),
        sa.Column("compiled", sa.Boolean, nullable=False),  # execution == "compiled" (v1)
        sa.Column("execution", sa.String(20)),  # eager, compiled or graphs (v2)
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("verdict", sa.String(20)),
        sa.Column("timing_method", sa.String(40)),
        sa.Column("unstable", sa.Boolean),
        *metric_columns,
        sa.Column("result_json", sa.Text, nullable=False),
        sa.Index("case_results_case", "case_id"),
    )
    return metadata, versions, runs, cases


def _migrate_to_1(conn: Any, metadata: Any, tables: Sequence[Any]) -> None:
    """Version 1: the runs and case_results tables."""
    metadata.create_all(conn, tables=list(tables), checkfirst=True)


def _migrate_to_2(conn: Any, metadata: Any, tables: Sequence[Any]) -> None:
    """Version 2: case_results.execution (eager, compiled or graphs), filled for the stored
    rows from `compiled` (a database created at version 2 has the column already)."""
    sa = _sqlalchemy()
    columns = {c["name"] for c in sa.inspect(conn).get_columns("case_results")}
    if "execution" not in columns:
        conn.execute(sa.text("ALTER TABLE case_results ADD COLUMN execution VARCHAR(20)"))
    conn.execute(
        sa.text(
            "UPDATE case_results SET execution = CASE WHEN compiled THEN 'compiled' "
            "ELSE 'eager' END WHERE execution IS NULL"
        )
    )


# version -> the step that brings a database from version - 1 to it. A later version adds its
# step here (ALTER TABLE ..., never a rewrite of stored rows' meaning) and bumps SCHEMA_VERSION.
MIGRATIONS = {1: _migrate_to_1, 2: _migrate_to_2}


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """The first line of a database error, without SQLAlchemy's background link."""
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()
    return text[0] if text else type(inner).__name__


class HistoryStore:
    """A history database: open it (creating or migrating its tables), add runs, read series.

    Use as a context manager, or call `close()`. `create=False` refuses an SQLite file that does
    not exist yet (readers), instead of leaving an empty database behind a typo.
    """

    def __init__(self, url: str | None = None, create: bool = True) -> None:
        self.url = resolve_url(url)
        self.where = display_url(self.url)
        path = sqlite_path(self.url)
        if path is not None:
            if not path.exists() and not create:
                raise ResultsError(
                    f"{self.where}: no history database here (add runs to it with "
                    f"`mpbench history add RUN_DIR --db {self.where}`)"
                )
            if create:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise ResultsError(
                        f"{self.where}: cannot create its directory ({exc.strerror})"
                    ) from None
        self._engine = self._make_engine()
        self.metadata, self._versions, self._runs, self._cases = _tables()
        self._open()

    # -- connection ---------------------------------------------------------------------------

    def _make_engine(self) -> Any:
        sa = _sqlalchemy()
        try:
            if self.url.startswith("sqlite"):
                engine = sa.create_engine(
                    self.url, connect_args={"timeout": LOCK_TIMEOUT_S}, poolclass=sa.pool.NullPool
                )
                sa.event.listen(engine, "connect", _sqlite_connect)
                sa.event.listen(engine, "begin", _sqlite_begin)
                return engine
            args = {"connect_timeout": CONNECT_TIMEOUT_S} if "postgresql" in self.url else {}
            return sa.create_engine(self.url, connect_args=args, poolclass=sa.pool.NullPool)
        except ModuleNotFoundError as exc:
            raise ResultsError(
                f"{self.where}: the database driver is not installed ({exc.name}); for "
                "PostgreSQL: pip install 'mpbench[postgres]'"
            ) from None
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ValueError) as exc:
            raise ResultsError(f"{self.where}: not a database URL I can use ({exc})") from None

    @contextlib.contextmanager
    def _transaction(self, what: str, write: bool = False) -> Iterator[Any]:
        """One transaction; a writing one is serialised against other writers. A database fault
        is one line naming the database."""
        sa = _sqlalchemy()
        try:
            with self._engine.connect() as conn:
                conn.execution_options(mpbench_write=write)
                with conn.begin():
                    if write and conn.dialect.name == "postgresql":
                        conn.execute(
                            sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY}
                        )
                    yield conn
        except sa.exc.OperationalError as exc:
            if "locked" in str(exc.orig).lower():
                raise ResultsError(
                    f"{self.where}: {what}: the database stayed locked by another writer for "
                    f"{LOCK_TIMEOUT_S:g} s; nothing was changed, try again"
                ) from None
            raise ResultsError(f"{self.where}: {what}: {_reason(exc)}") from None
        except sa.exc.DBAPIError as exc:
            raise ResultsError(f"{self.where}: {what}: {_reason(exc)}") from None

    def _version(self, conn: Any) -> int:
        """The database's schema version; 0 for an empty database."""
        sa = _sqlalchemy()
        inspector = sa.inspect(conn)
        if inspector.has_table("mpbench_schema"):
            return int(conn.execute(sa.select(sa.func.max(self._versions.c.version))).scalar() or 0)
        if inspector.has_table("runs"):
            raise ResultsError(
                f"{self.where}: holds a 'runs' table but no mpbench_schema table: not an mpbench "
                "history database"
            )
        return 0

    def _open(self) -> None:
        """Check the schema version; create or migrate the tables (one writing transaction,
        which looks again: another process may have migrated meanwhile)."""
        sa = _sqlalchemy()
        with self._transaction("cannot open the history database") as conn:
            version = self._version(conn)
        if version > SCHEMA_VERSION:
            raise ResultsError(
                f"{self.where}: history schema version {version} is newer than this mpbench "
                f"({__version__}) reads (version {SCHEMA_VERSION}); upgrade mpbench"
            )
        if version == SCHEMA_VERSION:
            return
        with self._transaction("cannot create the history tables", write=True) as conn:
            version = self._version(conn)
            self.metadata.create_all(conn, tables=[self._versions], checkfirst=True)
            for step in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[step](conn, self.metadata, [self._runs, self._cases])
                conn.execute(
                    sa.insert(self._versions).values(
                        version=step, applied_at=_now(), mpbench=__version__
                    )
                )

    def close(self) -> None:
        """Release the connections."""
        self._engine.dispose()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        """The database's schema version (after opening: SCHEMA_VERSION)."""
        sa = _sqlalchemy()
        with self._transaction("cannot read the schema version") as conn:
            return int(conn.execute(sa.select(sa.func.max(self._versions.c.version))).scalar())

    # -- writing ------------------------------------------------------------------------------

    def add(
        self,
        run: Run,
        commit: str | None = None,
        source: str | None = None,
        expected_ids: Collection[str] | None = None,
    ) -> AddOutcome:
        """Store a run whole, or find it already stored (a no-op). Refused (ResultsError): a run
        with no suite name or start time, a torn results file, or, when `expected_ids` is given
        (the cases its suite expands to), a run that lacks some of them."""
        sa = _sqlalchemy()
        name = source or str(run.path)
        self._check_whole(run, name, expected_ids)
        key = run_key(run)
        row, case_rows = self._rows(run, key, commit, name)
        try:
            with self._transaction(f"cannot add {name}", write=True) as conn:
                found = self._find(conn, key)
                if found is not None:
                    return AddOutcome(found, added=False)
                run_id = conn.execute(sa.insert(self._runs).values(**row)).inserted_primary_key[0]
                if case_rows:
                    conn.execute(
                        sa.insert(self._cases), [{**c, "run_id": run_id} for c in case_rows]
                    )
                stored = self._find(conn, key)
        except ResultsError:
            # Two writers with the same run on PostgreSQL: the unique key stopped the second.
            with self._transaction(f"cannot add {name}") as conn:
                found = self._find(conn, key)
            if found is not None:
                return AddOutcome(found, added=False)
            raise
        return AddOutcome(stored, added=True)

    @staticmethod
    def _check_whole(run: Run, name: str, expected_ids: Collection[str] | None) -> None:
        """Refuse what would store part of a run, or a run no series can place."""
        if not run.manifest.suite_name or not run.manifest.complete:
            raise ResultsError(
                f"{name}: not an mpbench run directory (needs env.json and suite.toml with a "
                "suite name); only whole runs go into the history"
            )
        if run.warnings:
            raise ResultsError(
                f"{name}: half-written ({run.warnings[0]}); finish it with `mpbench run --resume "
                f"{name}` before adding it"
            )
        if not run.results:
            raise ResultsError(f"{name}: no case finished; nothing to add")
        if expected_ids is not None:
            missing = sorted(set(expected_ids) - set(run.by_id()))
            if missing:
                raise ResultsError(
                    f"{name}: half-written ({len(missing)} of its suite's {len(expected_ids)} "
                    f"cases missing, e.g. {missing[0]}); finish it with `mpbench run --resume "
                    f"{name}` before adding it"
                )

    @staticmethod
    def _rows(
        run: Run, key: str, commit: str | None, source: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The runs row and the case_results rows of a run."""
        manifest = run.manifest
        identity = manifest.identity
        results = run.latest()
        started = utc_time(run.env.get("started_at")) or min(
            (t for t in (utc_time(r.started_at) for r in results) if t), default=None
        )
        if started is None:
            raise ResultsError(f"{source}: records no start time (env.json started_at)")
        if not identity.known:
            raise ResultsError(f"{source}: env.json does not say which device the run used")
        row = {
            "run_key": key,
            "suite": manifest.suite_name,
            "suite_sha256": manifest.suite_sha256,
            "suite_text": manifest.suite_text,
            "device_kind": identity.kind,
            "device_model": identity.name,
            "device_slug": identity.slug,
            "compute_capability": identity.compute_capability,
            **run_environment(manifest, commit),
            "started_at": started,
            "added_at": _now(),
            "source": source,
            "cases": len(results),
            "env_json": json.dumps(run.env, sort_keys=True, default=str),
        }
        case_rows = []
        for position, result in enumerate(results):
            case = result.case
            timing = result.timing
            metrics = case_metrics(result)
            if metrics["peak_memory"] is not None:
                metrics["peak_memory"] = int(metrics["peak_memory"])
            case_rows.append(
                {
                    "case_id": case.id,
                    "position": position,
                    "model": case.model,
                    "workload": case.workload,
                    "precision": case.precision,
                    "batch_size": case.batch_size,
                    "seq_len": case.seq_len,
                    "compiled": case.execution == "compiled",
                    "execution": case.execution,
                    "status": result.status,
                    "reason": result.reason,
                    "verdict": result.verdict,
                    "timing_method": timing.method if timing is not None else None,
                    "unstable": timing.unstable if timing is not None else None,
                    **metrics,
                    "result_json": json.dumps(result.to_dict(), allow_nan=True, default=str),
                }
            )
        return row, case_rows

    # -- reading ------------------------------------------------------------------------------

    def _stored(self, row: Any) -> StoredRun:
        environment = {name: getattr(row, name) for name, _ in ENVIRONMENT_FIELDS}
        return StoredRun(
            id=row.id,
            run_key=row.run_key,
            suite=row.suite,
            suite_sha256=row.suite_sha256,
            device_kind=row.device_kind,
            device_model=row.device_model,
            device_slug=row.device_slug,
            compute_capability=row.compute_capability,
            started_at=row.started_at,
            added_at=row.added_at,
            source=row.source,
            cases=row.cases,
            environment=environment,
        )

    def _run_columns(self) -> list[Any]:
        skip = ("env_json", "suite_text")
        return [c for c in self._runs.c if c.name not in skip]

    def _find(self, conn: Any, key: str) -> StoredRun | None:
        sa = _sqlalchemy()
        query = sa.select(*self._run_columns()).where(self._runs.c.run_key == key)
        row = conn.execute(query).first()
        return self._stored(row) if row is not None else None

    def find(self, run: Run) -> StoredRun | None:
        """The stored copy of a run, if it was added."""
        with self._transaction("cannot read runs") as conn:
            return self._find(conn, run_key(run))

    def runs(
        self,
        device_slug: str | None = None,
        suite: str | None = None,
        before: str | None = None,
    ) -> list[StoredRun]:
        """Stored runs, oldest first (by start time, then id); of one device model and suite
        where given, and started before `before` (UTC ISO) where given."""
        sa = _sqlalchemy()
        query = sa.select(*self._run_columns())
        if device_slug is not None:
            query = query.where(self._runs.c.device_slug == device_slug)
        if suite is not None:
            query = query.where(self._runs.c.suite == suite)
        if before is not None:
            query = query.where(self._runs.c.started_at < before)
        query = query.order_by(self._runs.c.started_at, self._runs.c.id)
        with self._transaction("cannot read runs") as conn:
            return [self._stored(row) for row in conn.execute(query)]

    def cases(self, run_ids: Sequence[int], case_id: str | None = None) -> list[StoredCase]:
        """The case rows of these runs (of one case id where given), without their samples."""
        sa = _sqlalchemy()
        if not run_ids:
            return []
        c = self._cases.c
        columns = [c.run_id, c.case_id, c.model, c.workload, c.precision, c.status, c.verdict]
        columns += [c.unstable, *(c[name] for name in HISTORY_METRICS)]
        query = sa.select(*columns).where(c.run_id.in_(list(run_ids)))
        if case_id is not None:
            query = query.where(c.case_id == case_id)
        with self._transaction("cannot read case results") as conn:
            rows = conn.execute(query.order_by(c.run_id, c.case_id)).all()
        return [
            StoredCase(
                row.run_id,
                row.case_id,
                row.model,
                row.workload,
                row.precision,
                row.status,
                row.verdict,
                row.unstable,
                {name: _float(getattr(row, name)) for name in HISTORY_METRICS},
            )
            for row in rows
        ]

    def results(self, run_id: int) -> list[CaseResult]:
        """Every case result of a stored run, rebuilt from its result lines."""
        sa = _sqlalchemy()
        c = self._cases.c
        query = sa.select(c.result_json).where(c.run_id == run_id).order_by(c.position)
        with self._transaction("cannot read case results") as conn:
            rows = conn.execute(query).all()
        return [
            CaseResult.from_dict(json.loads(row.result_json), f"{self.where}: run #{run_id}")
            for row in rows
        ]

    def as_run(self, stored: StoredRun) -> Run:
        """A stored run as a Run (its manifest and results), for the one-baseline rule."""
        sa = _sqlalchemy()
        query = sa.select(self._runs.c.env_json, self._runs.c.suite_text).where(
            self._runs.c.id == stored.id
        )
        with self._transaction("cannot read a run") as conn:
            row = conn.execute(query).one()
        where = f"{self.where}: run #{stored.id}"
        manifest = RunManifest.from_env(json.loads(row.env_json), row.suite_text, where)
        return Run(Path(stored.source or where), manifest, self.results(stored.id), source=where)


def _float(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    """Let SQLAlchemy's 'begin' event issue BEGIN itself (pysqlite would defer it)."""
    dbapi_connection.isolation_level = None
    dbapi_connection.execute("PRAGMA foreign_keys = ON")


def _sqlite_begin(conn: Any) -> None:
    """A writing transaction takes the write lock when it begins: two writers then queue instead
    of failing when the second upgrades a read lock (SQLite's deadlock rule); readers do not
    lock (a read-only copy of the file stays readable)."""
    write = conn.get_execution_options().get("mpbench_write")
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
