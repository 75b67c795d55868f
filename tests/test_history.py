"""The history store (SQLite and a real PostgreSQL server), the gate against history, the
`mpbench history` commands and the trend page.

PostgreSQL: the tests create a throwaway database on the server named by
MPBENCH_TEST_POSTGRES_URL (`.ci/run` starts one) and skip, saying so, where it is unset. No
database is mocked.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from runs import A100, H100, cli, edit_results, make_env, mpbench_command, scale_timing, write_run

from bench.analysis.history import (
    MIN_HISTORY_RUNS,
    build_series,
    check_history,
    latest_changes,
)
from bench.analysis.thresholds import resolve_config
from bench.errors import ResultsError
from bench.results import history as history_module
from bench.results.history import HistoryStore, resolve_url, run_key
from bench.results.rundir import load_run

PG_ENV = "MPBENCH_TEST_POSTGRES_URL"
SUITE = """[suite]
name = "fixture"
[sweep]
models = ["gpt2-tiny", "bert-tiny"]
workloads = ["train", "infer"]
precisions = ["fp32", "amp_bf16", "bf16"]
batch_sizes = [8]
seq_lens = [64]
"""
SLOW_CASE = "gpt2-tiny/train/fp32/bs8/seq64"


# ---------------------------------------------------------------------------------------------
# Databases and runs
# ---------------------------------------------------------------------------------------------


def _postgres_admin() -> Any:
    from sqlalchemy import create_engine

    admin = os.environ.get(PG_ENV)
    if not admin:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (.ci/run starts a throwaway server)")
    return create_engine(resolve_url(admin), isolation_level="AUTOCOMMIT")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the test server, dropped afterwards."""
    from sqlalchemy.engine import make_url

    engine = _postgres_admin()
    name = f"mpbench_test_{uuid.uuid4().hex[:12]}"
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(engine.url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test once on an SQLite file and once on the PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "history.db")
    return request.getfixturevalue("postgres_url")


def history_run(
    root: Path,
    index: int,
    factor: float = 1.0,
    gpu: dict[str, Any] | None = A100,
    suite: str = SUITE,
    status: dict[str, str] | None = None,
    **versions: str,
) -> Path:
    """Run number `index` of a series: its own day, seed and timing factor."""
    env = make_env(gpu, **versions)
    env["started_at"] = f"2026-12-{index + 1:02d}T12:00:00+00:00"
    env["suite_sha256"] = "fixture-sha"
    path = write_run(root / f"run-{index}", env=env, seed=index, suite_toml=suite, status=status)
    edit_results(path, lambda r: scale_timing(r, factor))
    return path


def series_of_runs(root: Path, count: int, noise: float = 0.02, seed: int = 1) -> list[Path]:
    """`count` A/A runs whose whole-run speed moves by `noise` (relative sd) between runs."""
    rng = random.Random(seed)
    return [history_run(root, i, rng.gauss(1.0, noise)) for i in range(count)]


def add_all(url: str, paths: list[Path]) -> None:
    with HistoryStore(url) as store:
        for path in paths:
            store.add(load_run(path))


def gate(current: Path, url: str, window: int = 20) -> Any:
    run = load_run(current)
    config = resolve_config([None], device_kind=run.identity.kind)
    with HistoryStore(url, create=False) as store:
        return check_history(run, store, config, window)


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------


def test_add_stores_a_run_once_and_reads_it_back(db_url: str, tmp_path: Path) -> None:
    path = history_run(tmp_path, 0)
    run = load_run(path)
    with HistoryStore(db_url) as store:
        first = store.add(run, commit="abc123", source=str(path))
        again = store.add(load_run(path))
        assert first.added and not again.added and again.run.id == first.run.id
        assert [r.id for r in store.runs()] == [first.run.id]
        stored = store.runs()[0]
        assert stored.device_model == A100["name"] and stored.suite == "fixture"
        assert stored.environment["git_commit"] == "abc123"
        assert stored.environment["device_uuid"] == A100["uuid"]
        assert len(store.cases([stored.id])) == len(run.results)
        back = store.as_run(stored)
    assert [r.to_dict() for r in back.results] == [r.to_dict() for r in run.results]
    assert back.identity == run.identity and run_key(back) == run_key(run)


def test_a_failed_add_leaves_nothing(db_url: str, tmp_path: Path) -> None:
    """One transaction: a database fault on the last case row stores no part of the run."""
    from sqlalchemy import create_engine, text

    path = history_run(tmp_path, 0)
    with HistoryStore(db_url) as store:
        store.add(load_run(history_run(tmp_path / "other", 1)))
    engine = create_engine(resolve_url(db_url))
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER boom BEFORE INSERT ON case_results WHEN NEW.case_id = "
                    f"'{SLOW_CASE}' BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN IF NEW.case_id = "
                    f"'{SLOW_CASE}' THEN RAISE EXCEPTION 'disk on fire'; END IF; RETURN NEW; "
                    "END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER boom BEFORE INSERT ON case_results FOR EACH ROW "
                    "EXECUTE FUNCTION boom()"
                )
            )
    engine.dispose()
    with HistoryStore(db_url) as store:
        with pytest.raises(ResultsError, match="disk on fire") as err:
            store.add(load_run(path))
        assert str(path) in str(err.value)
        assert len(store.runs()) == 1 and len(store.cases([r.id for r in store.runs()])) == 12


def test_a_half_written_run_is_refused(db_url: str, tmp_path: Path) -> None:
    torn = history_run(tmp_path, 0)
    with open(torn / "results.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"schema": 5, "case": {"id"')  # a crash mid-line
    short = history_run(tmp_path, 1)
    edit_results(short, lambda r: None if r["case"]["id"] == SLOW_CASE else r)
    result = cli("history", "add", str(torn), "--db", db_url)
    assert result.returncode == 2 and "half-written" in result.stderr
    assert str(torn) in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = cli("history", "add", str(short), "--db", db_url)
    assert result.returncode == 2 and "1 of its suite's 12 cases missing" in result.stderr
    with HistoryStore(db_url, create=False) as store:
        assert store.runs() == []


def test_a_newer_schema_is_refused_and_an_older_one_migrated(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import create_engine, text

    with HistoryStore(db_url) as store:
        store.add(load_run(history_run(tmp_path, 0)))
        assert store.schema_version == history_module.SCHEMA_VERSION
    # An mpbench one version newer opens it: the step runs once, in a transaction, and is recorded.
    applied = []
    newer = history_module.SCHEMA_VERSION + 1

    def to_newer(conn: Any, metadata: Any, tables: Any) -> None:
        conn.execute(text("CREATE TABLE annotations (run_id INTEGER, note TEXT)"))
        applied.append(newer)

    monkeypatch.setattr(history_module, "SCHEMA_VERSION", newer)
    monkeypatch.setitem(history_module.MIGRATIONS, newer, to_newer)
    with HistoryStore(db_url) as store:
        assert store.schema_version == newer and len(store.runs()) == 1
    with HistoryStore(db_url) as store:
        pass
    assert applied == [newer]
    monkeypatch.undo()
    # Back on this version: the database is newer than this mpbench reads.
    result = cli("history", "list", "--db", db_url)
    assert result.returncode == 2
    assert f"schema version {newer} is newer" in result.stderr
    assert "upgrade mpbench" in result.stderr
    engine = create_engine(resolve_url(db_url))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 1
    engine.dispose()


def test_a_url_that_does_not_connect_is_one_line_without_the_password(tmp_path: Path) -> None:
    url = "postgresql://mpbench:s3cret@127.0.0.1:9/history"
    result = cli("history", "add", str(history_run(tmp_path, 0)), "--db", url)
    assert result.returncode == 2
    assert "127.0.0.1:9" in result.stderr and "s3cret" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = cli("check", str(tmp_path / "run-0"), "--history", url)
    assert result.returncode == 2 and "s3cret" not in result.stderr


def test_missing_files_and_foreign_databases_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.db"
    result = cli("history", "list", "--db", str(missing))
    assert result.returncode == 2 and str(missing) in result.stderr and not missing.exists()
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE runs (id INTEGER)")
    result = cli("history", "list", "--db", str(foreign))
    assert result.returncode == 2 and "not an mpbench history database" in result.stderr
    result = cli("history", "add", str(tmp_path / "no-run"), "--db", str(tmp_path / "h.db"))
    assert result.returncode == 2 and "no-run" in result.stderr


def test_default_database_is_reports_history_db_or_mpbench_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MPBENCH_DB", raising=False)
    run = history_run(tmp_path / "runs", 0)
    assert cli("history", "add", str(run), cwd=tmp_path).returncode == 0
    assert (tmp_path / "reports" / "history.db").is_file()
    monkeypatch.setenv("MPBENCH_DB", str(tmp_path / "team.db"))
    assert cli("history", "add", str(run)).returncode == 0
    assert (tmp_path / "team.db").is_file()
    assert resolve_url("postgresql://u@h/db").startswith("postgresql+psycopg://")


@pytest.mark.slow
def test_two_writers_at_once_store_every_run_once(db_url: str, tmp_path: Path) -> None:
    """Two `mpbench history add` processes at the same moment, overlapping in one run."""
    paths = [history_run(tmp_path, i) for i in range(3)]
    env = {**os.environ, "MPBENCH_DB": db_url}
    procs = [
        subprocess.Popen(
            [*mpbench_command(), "history", "add", *map(str, chosen)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for chosen in (paths[:2], paths[1:])
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    with HistoryStore(db_url, create=False) as store:
        runs = store.runs()
        assert len(runs) == 3 and len({r.run_key for r in runs}) == 3
        assert len(store.cases([r.id for r in runs])) == 36
    text = "".join(out for out, _ in outputs)
    assert text.count("history: added") == 3 and text.count("already stored") == 1


# ---------------------------------------------------------------------------------------------
# The gate against history
# ---------------------------------------------------------------------------------------------


def test_the_gate_judges_against_the_spread_and_names_what_changed(
    db_url: str, tmp_path: Path
) -> None:
    add_all(db_url, series_of_runs(tmp_path / "history", 6))
    slowed = history_run(tmp_path, 6, 1.6, torch="2.14.0")
    checked = gate(slowed, db_url)
    assert checked.rule == "history" and checked.exit_code == 1
    assert len(checked.assessment.regressions) == 12
    finding = checked.assessment.findings_for(SLOW_CASE)[0]
    assert finding.what == "throughput" and "between-run spread of the 6 runs" in finding.delta.test
    assert "as the whole run is: its median case -37" in finding.delta.test
    assert any(
        n.startswith("whole run: the median of the 12 cases' throughput -37")
        and n.endswith("outside the spread of their medians")
        for n in checked.assessment.notes
    )
    last = checked.last_good[SLOW_CASE]
    assert last.run.id == 6 and [str(c) for c in last.changes] == ["torch 2.13.0 -> 2.14.0"]
    assert any(
        "last good run #6" in n and "torch 2.13.0 -> 2.14.0" in n for n in checked.notes
    ) or any("last good run #6" in n for n in checked.assessment.notes)
    # An A/A run passes, and CURRENT already in the store is left out of its own window.
    same = history_run(tmp_path, 7, 1.01)
    add_all(db_url, [same])
    checked = gate(same, db_url)
    assert checked.exit_code == 0 and [r.id for r in checked.window] == list(range(1, 7))


def test_between_run_noise_fails_one_baseline_but_not_the_history_gate(tmp_path: Path) -> None:
    """Whole runs moving 12% (a shared CPU, a host-bound GPU case): a run 25% slower than the
    baseline is 'significant' on its steps, yet inside the history's between-run spread."""
    url = str(tmp_path / "h.db")
    factors = [1.0, 0.88, 1.12, 0.92, 1.1, 0.95, 1.05, 0.9]
    add_all(url, [history_run(tmp_path / "h", i, f) for i, f in enumerate(factors)])
    current = history_run(tmp_path, 8, 1.25)
    assert gate(current, url).exit_code == 0
    baseline = cli(
        "check",
        str(current),
        "--baseline",
        str(tmp_path / "h" / "run-0"),
        "--threshold",
        "throughput=-10",
    )
    assert baseline.returncode == 1


def test_short_or_empty_history_says_so(tmp_path: Path) -> None:
    url = str(tmp_path / "h.db")
    first = history_run(tmp_path, 0)
    add_all(url, [first])
    checked = gate(first, url)
    assert checked.rule == "none" and checked.exit_code == 0
    assert "no earlier run of suite fixture" in checked.notes[0]
    slow = history_run(tmp_path, 2, 2.0)
    checked = gate(slow, url)
    assert checked.rule == "one-baseline" and checked.exit_code == 1
    assert f"needs {MIN_HISTORY_RUNS}" in checked.assessment.notes[0]
    # With two earlier runs, a timing regression must be one against each: slower than a fast
    # latest run but not than the one before is inside the spread they already show.
    add_all(url, [history_run(tmp_path, 1, 0.8)])
    within = gate(history_run(tmp_path / "again", 2, 1.0), url)
    assert within.rule == "one-baseline" and within.exit_code == 0
    assert "against each of the 2 runs" in within.assessment.notes[0]
    assert any("within the earlier runs' spread" in f.message for f in within.assessment.findings)
    assert gate(slow, url).exit_code == 1
    other = history_run(tmp_path / "other", 3, suite=SUITE.replace('"fixture"', '"other"'))
    edit_results(other, lambda r: r)
    env = json.loads((other / "env.json").read_text())
    env["suite"] = "other"
    (other / "env.json").write_text(json.dumps(env))
    assert gate(other, url).rule == "none"


def test_status_and_numerics_rules_are_todays(tmp_path: Path) -> None:
    url = str(tmp_path / "h.db")
    add_all(url, series_of_runs(tmp_path / "h", 6))
    broken = history_run(tmp_path, 6, status={SLOW_CASE: "error"})
    edit_results(broken, _worse_verdict("bert-tiny/train/bf16/bs8/seq64"))
    checked = gate(broken, url)
    whats = {f.case_id: f.what for f in checked.assessment.findings if f.fails}
    assert whats == {SLOW_CASE: "status", "bert-tiny/train/bf16/bs8/seq64": "verdict"}
    assert checked.last_good[SLOW_CASE].run.id == 6


def _worse_verdict(case_id: str) -> Any:
    def edit(result: dict[str, Any]) -> dict[str, Any]:
        if result["case"]["id"] == case_id:
            result["numerics"] = {**result["numerics"], "verdict": "diverged"}
        return result

    return edit


def test_series_stay_per_device_and_suite_and_name_the_change(tmp_path: Path) -> None:
    url = str(tmp_path / "h.db")
    runs = [history_run(tmp_path / "a", i, 1.0 + 0.01 * (i % 2)) for i in range(5)]
    runs += [history_run(tmp_path / "b", i, 1.5, driver="580.1") for i in range(5, 10)]
    runs += [history_run(tmp_path / "h100", i, 3.0, gpu=H100) for i in range(3)]
    for path in runs[5:10]:
        env = json.loads((path / "env.json").read_text())
        env["gpu"]["driver"] = "580.1"
        (path / "env.json").write_text(json.dumps(env))
    add_all(url, runs)
    with HistoryStore(url, create=False) as store:
        stored = store.runs()
        series = build_series(stored, store.cases([r.id for r in stored], SLOW_CASE))
    groups = {(s.device_model, s.suite) for s in series}
    assert groups == {(A100["name"], "fixture"), (H100["name"], "fixture")}
    a100 = next(s for s in series if s.metric == "throughput" and s.device_model == A100["name"])
    assert len(a100.points) == 10 and len(a100.changes) == 1
    change = a100.changes[0]
    assert change.before.id == 5 and change.after.id == 6 and change.worse
    assert [str(c) for c in change.changes] == ["driver 550.54.15 -> 580.1"]
    assert latest_changes(series)[0].metric in ("throughput", "step_time")


# ---------------------------------------------------------------------------------------------
# Commands and the trend page
# ---------------------------------------------------------------------------------------------


def test_history_commands(tmp_path: Path) -> None:
    db = str(tmp_path / "h.db")
    paths = series_of_runs(tmp_path / "runs", 6)
    result = cli("history", "add", *map(str, paths), "--db", db, "--commit", "feedbeef")
    assert result.returncode == 0 and result.stdout.count("added") == 6
    again = cli("history", "add", str(paths[0]), "--db", db)
    assert again.returncode == 0 and "already stored as run #1" in again.stdout
    slowed = history_run(tmp_path, 6, 1.7, torch="2.14.0")
    check = cli("check", str(slowed), "--history", db, "--junit", str(tmp_path / "j.xml"))
    assert check.returncode == 1, check.stderr
    said = " ".join(check.stdout.split())
    assert "last good run #6" in said and "torch 2.13.0 -> 2.14.0; commit feedbeef -> none" in said
    assert (tmp_path / "j.xml").is_file()
    assert cli("history", "add", str(slowed), "--db", db).returncode == 0
    listing = cli("history", "list", "--db", db)
    assert listing.returncode == 0 and "#7" in listing.stdout and "feedbeef" in listing.stdout
    show = cli("history", "show", SLOW_CASE, "--db", db)
    assert show.returncode == 0 and "▼" in show.stdout and "torch 2.13.0 -> 2.14.0" in show.stdout
    assert cli("history", "show", "no/such/case", "--db", db).returncode == 2
    page = tmp_path / "trend.html"
    report = cli("history", "report", "--db", db, "--out", str(page))
    assert report.returncode == 0, report.stderr
    html = page.read_text(encoding="utf-8")
    assert html.count("<svg") == 12 and "torch 2.13.0 -&gt; 2.14.0" in html
    assert "Runs that changed things" in html and "http://" not in html.replace(
        "http://www.w3.org", ""
    )
    assert "<script" not in html and "https://" not in html


def test_check_needs_a_baseline_or_a_history(tmp_path: Path) -> None:
    run = history_run(tmp_path, 0)
    assert cli("check", str(run)).returncode == 2
    assert cli("check", str(run), "--history", "x.db", "--baseline", str(run)).returncode == 2
    assert cli("check", str(run), "--history", "x.db", "--window", "0").returncode == 2


def test_run_history_adds_a_finished_run_only(tmp_path: Path) -> None:
    from rich.console import Console

    from bench.cli.history import add_run_to_history

    db = str(tmp_path / "h.db")
    run = history_run(tmp_path, 0)
    console = Console(record=True, width=200)
    assert add_run_to_history(db, run, 0, console) == 0
    assert add_run_to_history(db, run, 130, console) == 130
    text = console.export_text()
    assert "added" in text and "did not finish (exit 130)" in text
    bad = add_run_to_history("postgresql://u:pw@127.0.0.1:9/x", run, 0, console)
    assert bad == 2 and "pw@" not in console.export_text()


def test_a_run_sharing_no_case_with_its_suites_history_is_refused(tmp_path: Path) -> None:
    """Another sweep stored under the same suite name: nothing to judge it against (exit 2)."""
    from runs import fixture_cases

    db = str(tmp_path / "h.db")
    add_all(db, series_of_runs(tmp_path / "h", 5))
    env = make_env(A100)
    env["started_at"] = "2026-12-20T12:00:00+00:00"
    other = write_run(tmp_path / "other", fixture_cases(("bert-mini",)), env=env, suite_toml=SUITE)
    result = cli("check", str(other), "--history", db)
    assert result.returncode == 2 and "no case in common" in result.stderr
