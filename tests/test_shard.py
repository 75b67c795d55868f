"""Sharded sweeps: `mpbench run --shard I/N` splits the cases by id, `mpbench merge` joins the
shards into one run that report, compare and check read, and refuses what does not belong
together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runs import mpbench

from bench.engine.suite import Shard, load_suite, parse_shard
from bench.errors import SuiteError
from bench.results.rundir import load_run

SUITE = """
[suite]
name = "shards"

[sweep]
models = ["gpt2-tiny"]
workloads = ["infer"]
precisions = ["fp32", "bf16"]
batch_sizes = [1, 2, 4]
seq_lens = [16]

[timing]
warmup = 1
max_warmup = 1
iterations = 2

[numerics]
enabled = false
"""


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_shards_cover_every_case_exactly_once(count: int) -> None:
    cases = load_suite("smoke").cases("cpu")
    ids = [c.id for c in cases]
    parts = [
        [c.id for c in load_suite("smoke").cases("cpu", Shard(i, count))]
        for i in range(1, 1 + count)
    ]
    assert sorted(sum(parts, [])) == sorted(ids)
    assert all(len(p) > 0 for p in parts)  # 8 comparison groups: no shard of up to 8 is empty


def test_a_shapes_precisions_stay_in_one_shard_and_shards_are_balanced() -> None:
    suite = load_suite("smoke")
    groups = {}
    for index in (1, 2, 3):
        for case in suite.cases("cpu", Shard(index, 3)):
            key = (case.model, case.workload, case.seq_len, case.batch_size)
            groups.setdefault(key, set()).add(index)
    assert len(groups) == 8 and all(len(owners) == 1 for owners in groups.values())
    sizes = [len(suite.cases("cpu", Shard(i, 3))) for i in (1, 2, 3)]
    assert max(sizes) - min(sizes) <= 9  # at most one group (9 precisions) apart


def test_more_shards_than_groups_is_an_error_naming_the_count() -> None:
    with pytest.raises(SuiteError, match=r"--shard 9/9: suite smoke has 8 comparison group"):
        load_suite("smoke").cases("cpu", Shard(9, 9))


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/0", "-1/2", ""])
def test_a_bad_shard_is_an_error_naming_the_flag(text: str) -> None:
    with pytest.raises(SuiteError, match=r"--shard: expected I/N with 1 <= I <= N"):
        parse_shard(text)


def _run(suite: Path, out: Path, *flags: str) -> int:
    return mpbench(
        "run", str(suite), "--device", "cpu", "--isolate", "none", "-q", "--out", str(out), *flags
    )


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> dict[str, Path]:
    """The suite run whole, as shard 1/2 and as shard 2/2."""
    root = tmp_path_factory.mktemp("shards")
    suite = root / "shards.toml"
    suite.write_text(SUITE)
    runs = {"whole": root / "whole", "1": root / "s1", "2": root / "s2"}
    assert _run(suite, runs["whole"], "--no-report") == 0
    assert _run(suite, runs["1"], "--shard", "1/2", "--no-report") == 0
    assert _run(suite, runs["2"], "--shard", "2/2", "--no-report") == 0
    runs["suite"] = suite
    return runs


def test_merged_shards_hold_the_unsharded_runs_cases(sharded, tmp_path: Path) -> None:
    shard_ids = [{r.case.id for r in load_run(sharded[k]).results} for k in ("1", "2")]
    assert shard_ids[0] and shard_ids[1] and not shard_ids[0] & shard_ids[1]
    assert json.loads((sharded["1"] / "env.json").read_text())["shard"] == "1/2"
    out = tmp_path / "merged"
    assert mpbench("merge", str(sharded["1"]), str(sharded["2"]), "--out", str(out), "-q") == 0
    merged = load_run(out)
    whole = load_run(sharded["whole"])
    assert sorted(r.case.id for r in merged.results) == sorted(r.case.id for r in whole.results)
    assert len(merged.results) == 6 and (out / "index.html").is_file()
    assert [m["shard"] for m in merged.env["merged_from"]] == ["1/2", "2/2"]
    # report, compare and check read the merged run like any other.
    assert mpbench("report", str(out)) == 0
    assert mpbench("compare", str(sharded["whole"]), str(out)) == 0
    assert mpbench("check", str(out), "--baseline", str(sharded["whole"])) in (0, 1)


def test_merge_refuses_overlapping_shards(sharded, tmp_path: Path, capsys) -> None:
    code = mpbench("merge", str(sharded["1"]), str(sharded["1"]), "--out", str(tmp_path / "m"))
    assert code == 2 and "the runs overlap" in capsys.readouterr().err
    code = mpbench("merge", str(sharded["whole"]), str(sharded["2"]), "--out", str(tmp_path / "n"))
    assert code == 2 and "is in both" in capsys.readouterr().err
    assert not (tmp_path / "m").exists() and not (tmp_path / "n").exists()


def test_merge_refuses_another_suite_or_device(sharded, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other"
    suite = tmp_path / "other.toml"
    suite.write_text(SUITE.replace("iterations = 2", "iterations = 3"))
    assert _run(suite, other, "--shard", "2/2", "--no-report") == 0
    code = mpbench("merge", str(sharded["1"]), str(other), "--out", str(tmp_path / "m"))
    assert code == 2 and "ran another suite" in capsys.readouterr().err
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("results.jsonl", "suite.toml"):
        (moved / name).write_text((sharded["2"] / name).read_text())
    env = json.loads((sharded["2"] / "env.json").read_text())
    env["device_name"] = env["cpu"]["model"] = "Another CPU"
    (moved / "env.json").write_text(json.dumps(env))
    code = mpbench("merge", str(sharded["1"]), str(moved), "--out", str(tmp_path / "n"))
    assert code == 2 and "a merged run holds one device model" in capsys.readouterr().err


def test_merge_names_missing_shards_and_refuses_mixed_splits(sharded, tmp_path, capsys) -> None:
    three = tmp_path / "three"
    assert _run(sharded["suite"], three, "--shard", "1/3", "--no-report") == 0
    four = tmp_path / "four"
    assert _run(sharded["suite"], four, "--shard", "2/3", "--no-report") == 0
    assert mpbench("merge", str(three), str(four), "--out", str(tmp_path / "m"), "--no-report") == 0
    owned = len(load_suite(sharded["suite"]).cases("cpu", Shard(3, 3)))
    assert owned == 2  # 3 groups of 2 precisions: shard 3 of 3 holds one group
    assert "shard 3/3: 2 case(s) of the suite have no result" in capsys.readouterr().err
    code = mpbench("merge", str(sharded["1"]), str(four), "--out", str(tmp_path / "n"))
    assert code == 2 and "different numbers of shards" in capsys.readouterr().err


def test_merge_passes_on_a_shards_torn_line_and_keeps_suite_order(
    sharded, tmp_path, capsys
) -> None:
    torn = tmp_path / "torn"
    torn.mkdir()
    for name in ("env.json", "suite.toml"):
        (torn / name).write_text((sharded["2"] / name).read_text())
    lines = (sharded["2"] / "results.jsonl").read_text().splitlines()
    (torn / "results.jsonl").write_text(lines[0] + "\n" + lines[1][:40])
    out = tmp_path / "m"
    assert mpbench("merge", str(sharded["1"]), str(torn), "--out", str(out), "--no-report") == 0
    err = capsys.readouterr().err
    assert (
        "truncated last line" in err and "shard 2/2: 1 case(s) of the suite have no result" in err
    )
    suite_ids = [c.id for c in load_suite(sharded["suite"]).cases("cpu")]
    merged_ids = [r.case.id for r in load_run(out).results]
    assert merged_ids == [i for i in suite_ids if i in merged_ids]


def test_resume_keeps_the_shard_and_refuses_another(sharded, capsys) -> None:
    before = sorted(r.case.id for r in load_run(sharded["1"]).results)
    assert mpbench("run", "--resume", str(sharded["1"]), "--device", "cpu", "-q") == 0
    assert sorted(r.case.id for r in load_run(sharded["1"]).results) == before  # not shard 2's
    code = mpbench("run", "--resume", str(sharded["1"]), "--shard", "2/2", "--device", "cpu")
    assert code == 2 and "started as shard 1/2" in capsys.readouterr().err
