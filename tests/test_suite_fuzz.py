"""Property test: any document thrown at the suite loader loads or raises SuiteError, nothing else."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.engine.suite import builtin_suite_path, parse_suite, toml_value
from bench.errors import SuiteError

KNOWN_KEYS = {
    "suite": ["name", "description", "seed", "data"],
    "sweep": [
        "models",
        "workloads",
        "precisions",
        "batch_sizes",
        "seq_lens",
        "generate_new_tokens",
    ],
    "timing": ["warmup", "iterations"],
    "numerics": ["enabled", "train_steps", "batch_size", "seq_len", "warn_rel_div", "noise_floor"],
    "check": ["throughput", "peak_memory", "divergence"],
}
WORDS = [
    "gpt2-tiny",
    "bert-tiny",
    "train",
    "infer",
    "generate",
    "fp32",
    "bf16",
    "fp8",
    "random",
    "text:nope.txt",
    "text:" + "b" * 300,
    "./missing",
    "org/model",
    "",
    "\x00",
    "a" * 300,
]

scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(WORDS),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def documents(draw) -> str:
    """A TOML document built mostly from the real schema's tables and keys, with wrong values."""
    lines = []
    tables = draw(st.lists(st.sampled_from([*KNOWN_KEYS, "extra"]), unique=True, max_size=5))
    if draw(st.booleans()):  # half the documents have a valid sweep to get deeper
        lines += [
            "[sweep]",
            f"models = {toml_value(draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=2)))}",
        ]
        tables = [t for t in tables if t != "sweep"]
    for table in tables:
        lines.append(f"[{table}]")
        keys = KNOWN_KEYS.get(table, ["x"]) + [draw(st.from_regex(r"[a-z_]{1,8}", fullmatch=True))]
        for key in draw(st.lists(st.sampled_from(keys), unique=True, max_size=6)):
            # Mostly plausible values (so validation gets past the first key), some wild ones.
            plausible = st.lists(st.sampled_from(WORDS), min_size=1, max_size=3) | st.lists(
                st.integers(-2, 5000), min_size=1, max_size=3
            )
            lines.append(f"{key} = {toml_value(draw(plausible | values))}")
    return "\n".join(lines) + "\n"


@st.composite
def mutated_smoke(draw) -> str:
    """The smoke suite with a few characters deleted, replaced or inserted."""
    text = builtin_suite_path("smoke").read_text()
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["delete", "insert", "replace"]))
        char = draw(st.sampled_from(list("[]=\"',0-9.x\n ") + ["1", "-", "{", "}"]))
        if op == "delete":
            text = text[:pos] + text[pos + 1 :]
        elif op == "insert":
            text = text[:pos] + char + text[pos:]
        else:
            text = text[:pos] + char + text[pos + 1 :]
    return text


def load_or_suite_error(text: str) -> None:
    try:
        suite = parse_suite(text, source="fuzz.toml")
    except SuiteError as exc:
        assert str(exc).startswith("fuzz.toml"), str(exc)
        return
    assert suite.cases("cpu")  # a loaded suite always has cases


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_random_documents_load_or_raise_suite_error(text: str) -> None:
    load_or_suite_error(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_smoke())
def test_mutated_smoke_suite_loads_or_raises_suite_error(text: str) -> None:
    load_or_suite_error(text)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_loads_or_raises_suite_error(text: str) -> None:
    load_or_suite_error(text)
