"""Any causal-LM or masked-LM architecture transformers has (issue 20): tiny seeded configs of
Llama, Qwen2, Mistral, Gemma2, RoBERTa, ModernBERT and DeBERTa-v2, each saved by the test as a
safetensors checkpoint and run the way a user's would be: every workload its family has, every
precision mode this CPU runs (fp8 and fp8_rowwise included), numerics with verdicts, and one
compiled case. Then the FLOP count of every preset against torch's FlopCounterMode, the family
decision, the long-position check of rotary models, and the bad checkpoints that must stop a run
before it starts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from runs import cli
from torch.utils.flop_counter import FlopCounterMode

from bench.engine.device import Device
from bench.engine.families import CAUSAL_LM, MASKED_LM, family_of
from bench.engine.flops import analytic_flops
from bench.engine.models import PRESETS, ModelSpec, resolve_model, tiny_shape
from bench.engine.modes import PRECISION_MODES
from bench.engine.numerics.analyzer import NumericsAnalyzer
from bench.engine.numerics.metrics import parameter_group
from bench.engine.suite import parse_suite
from bench.errors import ModelError
from bench.results.rundir import load_run

CPU = Device(torch.device("cpu"))

# tiny_shape: 2 layers, 64 wide, 4 heads of 16 (2 KV heads where the architecture groups them),
# every Linear's dimensions divisible by 16, so fp8's filter converts all of them but the head.
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", dict(num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "mistral": ("MistralConfig", dict(num_key_value_heads=2, head_dim=16, sliding_window=32)),
    # Gemma2: logit soft-capping, pre- and post-norms, alternating sliding-window layers.
    "gemma2": ("Gemma2Config", dict(num_key_value_heads=2, head_dim=16, sliding_window=32)),
    # RoBERTa's position ids start after its padding id (1): 514 embeddings, 512 positions.
    "roberta": (
        "RobertaConfig",
        dict(max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0),
    ),
    "modernbert": (
        "ModernBertConfig",
        dict(global_attn_every_n_layers=2, local_attention=16, cls_token_id=1, sep_token_id=2),
    ),
    # DeBERTa-v3's attention: disentangled relative positions, no absolute position input.
    "deberta-v2": (
        "DebertaV2Config",
        dict(
            relative_attention=True,
            position_buckets=32,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            share_att_key=True,
            norm_rel_ebd="layer_norm",
            type_vocab_size=0,
        ),
    ),
}
CAUSAL = ("llama", "qwen2", "mistral", "gemma2")
CPU_MODES = [name for name, mode in PRECISION_MODES.items() if mode.unsupported_reason(CPU) is None]


def save_checkpoint(arch: str, directory: Path, **overrides: Any) -> Path:
    """A tiny seeded model of `arch`, saved as a user's checkpoint would be (safetensors, the
    config naming its architecture)."""
    import transformers

    config_class, extra = ARCHITECTURES[arch]
    config = getattr(transformers, config_class)(**tiny_shape(**{**extra, **overrides}))
    family = CAUSAL_LM if arch in CAUSAL else MASKED_LM
    torch.manual_seed(0)
    model = family.auto_class().from_config(config)
    path = directory / arch
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {arch: save_checkpoint(arch, root) for arch in ARCHITECTURES}


def write_suite(
    path: Path, model: Path, workloads: list[str], precisions: list[str], numerics: bool = True
) -> Path:
    """A one-shape sweep of a checkpoint, with numerics (3 steps, no fp64 reference: the
    numerics themselves are tests/test_numerics.py's) unless `numerics` is false."""
    path.write_text(
        f"""
[suite]
name = "arch"
seed = 0
[sweep]
models = [{json.dumps(str(model))}]
workloads = {json.dumps(workloads)}
precisions = {json.dumps(precisions)}
batch_sizes = [2]
seq_lens = [32]
generate_new_tokens = 4
[timing]
warmup = 1
iterations = 2
max_warmup = 2
[numerics]
enabled = {json.dumps(numerics)}
train_steps = 3
fp64_max_parameters = 0
"""
    )
    return path


# ---------------------------------------------------------------------------------------------
# Every architecture, every workload, every CPU precision mode, numerics, compiled
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_an_architecture_runs_every_workload_and_mode(
    arch: str, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    workloads = ["train", "infer"] + (["generate"] if arch in CAUSAL else [])
    suite = write_suite(tmp_path / "arch.toml", checkpoints[arch], workloads, CPU_MODES)
    ran = cli(
        "run", str(suite), "--out", str(tmp_path / "run"), "--isolate", "none", "-q", "--no-report"
    )
    assert ran.returncode == 0, ran.stderr
    results = load_run(tmp_path / "run").results
    assert len(results) == len(workloads) * len(CPU_MODES)
    for result in results:
        case = f"{result.case.workload} {result.case.precision}"
        assert result.status == "ok", (case, result.reason)
        assert result.case.family == arch, case  # the architecture, from the checkpoint's config
        # Every mode gets a verdict (generate: its prefill's, a forward pass). A training run may
        # legitimately go wrong (pure fp16 is non-finite at step 0: tests/test_numerics.py).
        assert result.numerics["verdict"] in ("ok", "warn", "diverged", "nan"), (
            case,
            result.numerics,
        )
        if result.case.precision in ("fp32", "amp_bf16", "bf16") or result.case.workload != "train":
            assert result.numerics["verdict"] in ("ok", "warn"), (case, result.numerics)
        if result.case.precision.startswith("fp8"):
            details = result.details
            # All Linear layers but the output head (kept in high precision: fp8's filter).
            assert details["fp8_linear_layers"] == details["linear_layers"] - 1, (case, details)


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_an_architecture_compiles(arch: str, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    # Numerics run eagerly whatever the execution (test above): this is about tracing and
    # code generation of each architecture.
    suite = write_suite(tmp_path / "arch.toml", checkpoints[arch], ["infer"], ["bf16"], False)
    out = tmp_path / "run"
    ran = cli(
        "run",
        str(suite),
        "--out",
        str(out),
        "--execution",
        "compiled",
        "--isolate",
        "none",
        "-q",
        "--no-report",
    )
    assert ran.returncode == 0, ran.stderr
    [result] = load_run(out).results
    assert result.status == "ok" and result.case.execution == "compiled", result.reason


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_a_checkpoint_resolves_to_its_family_and_weights(
    arch: str, checkpoints: dict[str, Path]
) -> None:
    spec = resolve_model(str(checkpoints[arch]))
    assert spec.family is (CAUSAL_LM if arch in CAUSAL else MASKED_LM)
    assert spec.model_type == arch
    assert spec.rotary == (arch in ("llama", "qwen2", "mistral", "gemma2", "modernbert"))
    model = spec.build(seed=123)  # the seed does not matter: the weights are the checkpoint's
    saved = family_of(model.config).auto_class().from_pretrained(checkpoints[arch])
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), saved.parameters()))
    # The gradient SQNR groups know every parameter of every architecture.
    unknown = [n for n, _ in model.named_parameters() if parameter_group(n) == "other"]
    assert unknown == []
    # fp8's filter keeps the output head a plain Linear, tied or not.
    prepared = PRECISION_MODES["fp8"].prepare(model, CPU, "train").model
    assert type(prepared.get_output_embeddings()) is torch.nn.Linear


def test_a_hub_id_in_the_local_cache_runs_from_there(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub id resolves through the local Hugging Face cache (its layout: refs/main names the
    snapshot), never the network."""
    import shutil

    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--acme--tiny-llama" / "snapshots" / "0123abcd"
    shutil.copytree(checkpoints["llama"], snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = resolve_model("acme/tiny-llama")
    assert (spec.name, spec.ref, spec.family) == ("acme-tiny-llama", "acme/tiny-llama", CAUSAL_LM)
    assert spec.path == snapshot.resolve()


# ---------------------------------------------------------------------------------------------
# FLOPs of every preset: analytic vs counted
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PRESETS))
def test_analytic_flops_match_the_counted_ones_for_every_preset(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A training step (forward, loss, backward) and a forward pass on the meta device, at full
    size, counted by FlopCounterMode: the analytic figure MFU uses is within 2%."""
    import transformers.masking_utils

    # With no KV cache transformers looks for packed sequences in the position ids, a data-
    # dependent check that meta tensors cannot answer; none is packed here.
    monkeypatch.setattr(
        transformers.masking_utils, "find_packed_sequence_indices", lambda *a, **k: None
    )
    spec = PRESETS[name]
    model = spec.skeleton()
    seq_len = min(128, spec.max_positions)
    ids = torch.randint(0, 100, (1, seq_len))
    batch = {k: v.to("meta") for k, v in spec.family.batch(ids, spec, 0, True).items()}
    with FlopCounterMode(display=False) as train:
        model(**batch).loss.backward()
    with FlopCounterMode(display=False) as infer, torch.no_grad():
        model(input_ids=batch["input_ids"], **spec.family.forward_kwargs())
    assert train.get_total_flops() == pytest.approx(
        analytic_flops(spec, "train", 1, seq_len), rel=0.02
    )
    assert infer.get_total_flops() == pytest.approx(
        analytic_flops(spec, "infer", 1, seq_len), rel=0.02
    )


# ---------------------------------------------------------------------------------------------
# The family, from the config
# ---------------------------------------------------------------------------------------------


def test_the_family_comes_from_the_config() -> None:
    import transformers as tf

    assert family_of(tf.LlamaConfig()) is CAUSAL_LM
    assert family_of(tf.ModernBertConfig()) is MASKED_LM
    assert family_of(tf.BertConfig()) is MASKED_LM  # an encoder type: masked unless it decodes
    assert family_of(tf.BertConfig(is_decoder=True)) is CAUSAL_LM
    assert family_of(tf.RobertaConfig(architectures=["RobertaForCausalLM"])) is CAUSAL_LM
    assert family_of(tf.LlamaConfig(architectures=["LlamaForCausalLM"])) is CAUSAL_LM
    assert family_of(tf.T5Config()) is None  # seq2seq
    assert family_of(tf.ViTConfig()) is None  # vision


# ---------------------------------------------------------------------------------------------
# Rotary models at long positions
# ---------------------------------------------------------------------------------------------


def test_rotary_models_report_late_positions_against_early_ones(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """A 2304-token bf16 forward of a Llama-shaped model: logits at 2048+ vs the first 512."""
    path = save_checkpoint("llama", tmp_path, max_position_embeddings=4096)
    suite = parse_suite(
        f"""
[suite]
name = "long"
[sweep]
models = [{json.dumps(str(path))}, {json.dumps(str(checkpoints["roberta"]))}]
workloads = ["infer"]
precisions = ["fp32", "bf16"]
batch_sizes = [1]
seq_lens = [16]
[numerics]
batch_size = 1
seq_len = 2304
fp64_max_parameters = 0
"""
    )
    analyzer = NumericsAnalyzer(suite, CPU)
    by_case = {(c.model, c.precision): analyzer.for_case(c) for c in suite.cases("cpu")}
    check = by_case[("llama", "bf16")]["long_positions"]
    assert check["run"] and check["late_positions"] == [2048, 2304]
    assert math.isfinite(check["late"]["sqnr_db"]) and math.isfinite(check["early"]["sqnr_db"])
    assert check["late_drop_db"] == pytest.approx(
        check["early"]["sqnr_db"] - check["late"]["sqnr_db"]
    )
    roberta = by_case[("roberta", "bf16")]
    assert "long_positions" not in roberta  # learned positions: no rotary check
    assert roberta["seq_len"] == 512  # the numerics pass stops at RoBERTa's positions


# ---------------------------------------------------------------------------------------------
# Bad checkpoints: one line, exit 2, before any case runs
# ---------------------------------------------------------------------------------------------


def _remote_code(tmp_path: Path) -> Path:
    path = tmp_path / "custom"
    path.mkdir()
    (path / "config.json").write_text(
        json.dumps({"model_type": "my_model", "auto_map": {"AutoConfig": "modeling.MyConfig"}})
    )
    return path


def _seq2seq(tmp_path: Path) -> Path:
    import transformers

    path = tmp_path / "t5"
    config = transformers.T5Config(
        d_model=16, num_layers=1, num_heads=2, d_ff=32, architectures=["T5ForConditionalGeneration"]
    )
    config.save_pretrained(path)
    return path


def _encoder_without_head(tmp_path: Path) -> Path:
    """BertModel saved where a BertForMaskedLM is expected: the MLM head's weights are missing."""
    import transformers

    config = transformers.BertConfig(**tiny_shape(architectures=["BertForMaskedLM"]))
    path = tmp_path / "headless"
    transformers.BertModel(config).save_pretrained(path, safe_serialization=True)
    config.save_pretrained(path)  # the config says masked LM; the weights are the body only
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_remote_code, "needs remote code (trust_remote_code); mpbench never runs code"),
        (_seq2seq, "model_type 't5' (T5ForConditionalGeneration) is neither a causal nor a masked"),
        (_encoder_without_head, "weight(s) of its masked-lm model (cls.predictions"),
    ],
)
def test_a_checkpoint_mpbench_cannot_run_stops_the_run_with_one_line(
    make: Any, message: str, tmp_path: Path
) -> None:
    path = make(tmp_path)
    with pytest.raises(ModelError, match=None) as info:
        resolve_model(str(path))
    assert message in str(info.value)
    out = tmp_path / "run"
    ran = cli("run", "--models", str(path), "--out", str(out), "-q")
    assert ran.returncode == 2 and message in ran.stderr, ran.stderr
    assert ran.stderr.count("\n") == 1 and "Traceback" not in ran.stderr
    assert not out.exists()  # nothing ran, nothing written


def test_a_preset_spec_is_the_same_architecture_as_its_config() -> None:
    """Every preset names the architecture its config builds and the family that runs it."""
    for name, spec in PRESETS.items():
        assert isinstance(spec, ModelSpec)
        config = spec.config()
        assert config.model_type == spec.model_type, name
        assert family_of(config) is spec.family, name
        assert spec.parameters() > 0
