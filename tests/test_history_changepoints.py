"""Change points and the spread test (bench.analysis.changepoints) on series with known steps,
and property tests of the store: adding runs in any order, any number of times, stores each
once."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runs import make_env, write_run

from bench.analysis.changepoints import adjusted_p_values, change_points, segments, spread_test
from bench.analysis.history import history_delta, history_deltas
from bench.results.history import HistoryStore
from bench.results.rundir import load_run


def noisy(n: int, sigma: float, seed: int) -> np.ndarray:
    return np.exp(np.random.default_rng(seed).normal(0.0, sigma, n))


def test_a_step_is_found_where_it_is_with_its_size() -> None:
    values = noisy(30, 0.02, 1)
    values[18:] *= 0.8
    (point,) = change_points(values)
    assert point.index == 18 and point.p_value < 1e-6 and not point.provisional
    assert point.change_pct == pytest.approx(-20, abs=3)
    assert [len(s) for s in segments(30, [point])] == [18, 12]


def test_noise_alone_gives_no_change_point() -> None:
    found = sum(len(change_points(noisy(40, 0.05, seed))) for seed in range(30))
    assert found <= 15  # 1,200 runs of A/A noise: under 1 per 100 measured


def test_exact_series_step_and_stay_put() -> None:
    assert change_points([1.0] * 8) == []
    (point,) = change_points([3e-3] * 4 + [4e-3] * 4)
    assert point.index == 4 and point.p_value == 0.0
    (point,) = change_points([20.5, 20.5, 20.5, 20.5, 18.0, 18.0], log=False)
    assert point.after == pytest.approx(18.0)
    # Another summation order (one thread instead of two) moves a dB figure in its 5th digit.
    assert change_points([42.1] * 5 + [42.1004] * 3, log=False) == []


def test_the_latest_value_alone_is_a_provisional_change_point() -> None:
    values = list(noisy(10, 0.02, 3)) + [0.6]
    point = change_points(values)[-1]
    assert point.index == 10 and point.provisional and point.after == pytest.approx(0.6)


def test_spread_test_is_a_prediction_interval() -> None:
    window = [1.0, 1.02, 0.98, 1.01, 0.99, 1.0]
    inside, outside = spread_test(window, 1.03), spread_test(window, 0.85)
    assert not inside.outside and inside.p_value > 0.05
    assert outside.outside and outside.z < -5 and outside.n == 6
    flat = spread_test([2.0] * 5, 2.0)
    assert not flat.outside and spread_test([2.0] * 5, 2.5).outside


def test_history_delta_flags_steps_not_noise() -> None:
    window = list(noisy(20, 0.05, 4))
    level = float(np.exp(np.mean(np.log(window))))
    noise = history_delta("throughput", window, level * 0.92)
    assert noise.significant is False and "inside the between-run spread" in noise.test
    sudden = history_delta("throughput", window, level * 0.6)
    assert sudden.significant and sudden.worse_pct > 35 and "CURRENT outside" in sudden.test
    # A 12% step, too small for one run at 5% noise, shows once three runs are behind it; the
    # change judged is the level of the last 4 runs, not CURRENT's alone.
    stepped = window + [v * 0.88 for v in noisy(2, 0.05, 5)]
    later = history_delta("throughput", stepped, level * 0.88)
    assert later.significant and "the level of the last 4 runs" in later.test
    assert later.current == pytest.approx(
        float(np.exp(np.mean(np.log([*stepped[-3:], level * 0.88]))))
    )
    # Some runs on, the step is the new normal: runs are judged against its level only.
    settled = window + [v * 0.88 for v in noisy(8, 0.05, 6)]
    now = history_delta("throughput", settled, level * 0.88)
    assert not now.significant and "since the step at run 2" in now.test


def test_one_unlucky_run_inside_a_steady_window_is_not_a_level_step() -> None:
    # Runs 10% down at 5% noise: one of them alone is noise, four together a step.
    window = list(noisy(20, 0.05, 4))
    level = float(np.exp(np.mean(np.log(window))))
    one = history_delta("throughput", window, level * 0.9)
    assert not one.significant and one.p_value > 0.01
    four = window + [level * 0.9 * v for v in noisy(3, 0.01, 8)]
    step = history_delta("throughput", four, level * 0.9)
    assert step.significant and step.p_value < 0.01 and step.worse_pct > 8


def test_adjusted_p_values_are_benjamini_hochberg() -> None:
    assert adjusted_p_values([0.004]) == [0.004]  # one test: its own p
    # sorted 0.001, 0.01, 0.02, 0.04 of 4: m p / rank = 0.004, 0.02, 0.0267, 0.04
    adjusted = adjusted_p_values([0.02, 0.001, 0.04, 0.01])
    assert adjusted == pytest.approx([0.08 / 3, 0.004, 0.04, 0.02])


def a_run_of_cases(down: dict[int, float]) -> dict[str, tuple[list[float], float]]:
    """24 cases with 20 earlier runs at 5% noise each; case i's CURRENT `down[i]` sample
    standard deviations of its own series below its level (0: at its level)."""
    run = {}
    for i in range(24):
        logs = np.log(noisy(20, 0.05, 100 + i))
        current = float(np.exp(logs.mean() - down.get(i, 0.0) * logs.std(ddof=1)))
        run[f"case-{i}"] = (np.exp(logs).tolist(), current)
    return run


def test_a_runs_cases_are_judged_as_one_family() -> None:
    # One case of 24 outside its spread at p ~ 0.0005 is what noise gives once in a few runs
    # of 24 cases: alone it is a step, with its run's other cases it is not.
    run = a_run_of_cases({0: 4.3})
    window, current = run["case-0"]
    alone = history_delta("throughput", window, current)
    assert alone.significant and alone.p_value < 0.002
    together = history_deltas("throughput", run)
    assert not together["case-0"].significant
    assert "adjusted across the run's 24 cases" in together["case-0"].test
    assert not any(d.significant for d in together.values())
    # The same move in every case (a driver or torch change) is a step in each.
    everywhere = history_deltas("throughput", a_run_of_cases(dict.fromkeys(range(24), 4.3)))
    assert all(d.significant and d.worse_pct > 10 for d in everywhere.values())


def test_a_move_of_the_whole_run_is_judged_on_the_runs_evidence() -> None:
    # Every case 2.5 of its standard deviations down (about 12% at 5% noise): alone, no case is
    # outside its spread (p ~ 0.02; one of 23 has a level step by chance), but the run's median
    # case is, far outside the spread of the runs' medians, where the cases' noise averages out.
    moved = dict.fromkeys(range(1, 24), 2.5)
    alone = [history_delta("throughput", w, c) for w, c in a_run_of_cases(moved).values()]
    assert sum(bool(d.significant) for d in alone[1:]) <= 1
    run = history_deltas("throughput", a_run_of_cases({**moved, 0: -2.5}))
    assert all(run[f"case-{i}"].significant for i in range(1, 24))
    assert "as the whole run is: its median case -1" in run["case-1"].test
    # case-0 moved up while the run moved down: the run's evidence is not its
    assert not run["case-0"].significant


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    paths = []
    for i in range(3):
        env = make_env()
        env["started_at"] = f"2026-12-0{i + 1}T00:00:00+00:00"
        paths.append(write_run(root / f"r{i}", env=env, seed=i, suite_toml='[suite]\nname="x"\n'))
    return paths


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(order=st.lists(st.integers(0, 2), min_size=1, max_size=6))
def test_adding_in_any_order_any_number_of_times_stores_each_run_once(
    three_runs: list[Path], order: list[int]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with HistoryStore(str(Path(tmp) / "h.db")) as store:
            outcomes = [store.add(load_run(three_runs[i])) for i in order]
            stored = store.runs()
            assert sorted(r.started_at for r in stored) == [r.started_at for r in stored]
            assert len(stored) == len(set(order))
            assert sum(o.added for o in outcomes) == len(set(order))
            assert len(store.cases([r.id for r in stored])) == 12 * len(set(order))
