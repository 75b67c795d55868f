"""Suite parsing, validation messages and case expansion."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.engine.suite import BUILTIN_SUITES, builtin_suite_path, load_suite, parse_suite
from bench.errors import SuiteError

REPO = Path(__file__).resolve().parent.parent


def test_tiny_suite_expands_to_the_full_cross_product(tiny_suite_path: Path) -> None:
    suite = load_suite(tiny_suite_path)
    cases = suite.cases("cpu")
    assert len(cases) == 2 * 2 * 4 * 2 * 1
    ids = [c.id for c in cases]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "gpt2-tiny/train/fp32/bs1/seq16"
    # precisions of one shape run back to back, then the batch size grows
    assert [c.precision for c in cases[:4]] == ["fp32", "tf32", "amp_bf16", "bf16"]
    assert cases[4].batch_size == 2
    assert {c.family for c in cases} == {"gpt2", "bert"}


def test_overrides_replace_sweep_lists(tiny_suite_path: Path) -> None:
    suite = load_suite(tiny_suite_path, {"precisions": ["fp32"], "batch_sizes": [4]})
    assert {c.precision for c in suite.cases("cpu")} == {"fp32"}
    assert {c.batch_size for c in suite.cases("cpu")} == {4}


@pytest.mark.parametrize("name", BUILTIN_SUITES)
def test_builtin_suites_load_and_match_the_copies_in_suites_dir(name: str) -> None:
    packaged = builtin_suite_path(name)
    assert load_suite(name).name == name
    assert (REPO / "suites" / f"{name}.toml").read_text() == packaged.read_text()


def test_builtin_suite_loads_from_another_working_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_suite("smoke").name == "smoke"


def test_resolved_suite_round_trips_through_toml(tiny_suite_path: Path) -> None:
    suite = load_suite(tiny_suite_path, {"batch_sizes": [3]})
    again = parse_suite(suite.to_toml())
    assert again.sweep == suite.sweep
    assert again.timing == suite.timing
    assert [c.id for c in again.cases("cpu")] == [c.id for c in suite.cases("cpu")]


BASE = '[sweep]\nmodels = ["gpt2-tiny"]\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            BASE + "batch_size = [1]\n",
            "sweep.batch_size: unknown key (did you mean 'batch_sizes'?)",
        ),
        ("[sweeps]\nmodels = []\n", "sweeps: unknown key (did you mean 'sweep'?)"),
        (
            BASE + 'precisions = ["fp32", "fp64"]\n',
            "sweep.precisions: must be a non-empty list from: fp32",
        ),
        (
            BASE + 'workloads = ["training"]\n',
            "sweep.workloads: must be a non-empty list from: train",
        ),
        (
            BASE + "batch_sizes = [1, 0]\n",
            "sweep.batch_sizes: must be a non-empty list of positive integers; got 0",
        ),
        (BASE + "batch_sizes = [1.5]\n", "got 1.5"),
        (
            BASE + 'batch_sizes = "8"\n',
            "sweep.batch_sizes: must be a non-empty list of positive integers; got '8'",
        ),
        (BASE + "seq_lens = []\n", "sweep.seq_lens: must be a non-empty list"),
        (BASE + "seq_lens = [4096]\n", "4096 is longer than gpt2-tiny's 256 positions"),
        ('[sweep]\nmodels = ["gpt3-huge"]\n', "sweep.models[0]: model 'gpt3-huge' is not a preset"),
        ("[sweep]\nmodels = []\n", "sweep.models: must be a non-empty list"),
        ("[suite]\nname = 'x'\n", "missing [sweep] table"),
        (BASE + "[timing]\niterations = 1\n", "timing.iterations: must be an integer >= 2; got 1"),
        (
            BASE + "[timing]\nwarmup = true\n",
            "timing.warmup: must be a non-negative integer; got True",
        ),
        (BASE + "[suite]\nseed = -1\n", "suite.seed: must be a non-negative integer"),
        ("[sweep\nmodels = 1\n", "TOML syntax error"),
        ("sweep = 3\n", "sweep: must be a table"),
        (
            BASE + 'workloads = ["generate"]\ngenerate_new_tokens = 250\nseq_lens = [64]\n',
            "exceeds gpt2-tiny's 256 positions",
        ),
    ],
)
def test_bad_suites_name_file_key_and_what_is_allowed(text: str, expected: str) -> None:
    with pytest.raises(SuiteError) as info:
        parse_suite(text, source="bad.toml")
    message = str(info.value)
    assert message.startswith("bad.toml: ")
    assert expected in message


def test_toml_syntax_error_names_the_line() -> None:
    with pytest.raises(SuiteError, match=r"line 3"):
        parse_suite('[sweep]\nmodels = ["gpt2-tiny"]\nbatch_sizes = [1,,]\n', source="bad.toml")


def test_override_errors_name_the_flag(tiny_suite_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"^--batch-sizes: must be .*; got -2"):
        load_suite(tiny_suite_path, {"batch_sizes": [2, -2]})
    with pytest.raises(SuiteError, match=r"^--precisions: .*; got 'fp64'"):
        load_suite(tiny_suite_path, {"precisions": ["fp64"]})


def test_missing_suite_file_and_unknown_builtin() -> None:
    with pytest.raises(SuiteError, match="no such suite file"):
        load_suite("nope/missing.toml")
    with pytest.raises(SuiteError, match="built-in: smoke, standard, ci, full"):
        load_suite("smok")


def test_text_data_path_is_checked(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="suite.data: text file .* does not exist"):
        parse_suite(BASE + '[suite]\ndata = "text:missing.txt"\n', "s.toml", tmp_path)
    (tmp_path / "corpus.txt").write_text("hello world")
    suite = parse_suite(BASE + '[suite]\ndata = "text:corpus.txt"\n', "s.toml", tmp_path)
    assert suite.info.data == f"text:{(tmp_path / 'corpus.txt').resolve()}"
