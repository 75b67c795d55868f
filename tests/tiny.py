"""A tiny suite (both families, both workloads, a skipped precision) that runs in seconds: a short
warm-up cap and a 3-step numerics pass without the fp64 reference, since the tests that use it
test the plumbing; tests/test_numerics.py tests the numerics themselves."""

TINY_SUITE = """
[suite]
name = "tiny"
seed = 0

[sweep]
models = ["gpt2-tiny", "bert-tiny"]
workloads = ["train", "infer"]
precisions = ["fp32", "tf32", "amp_bf16", "bf16"]
batch_sizes = [1, 2]
seq_lens = [16]

[timing]
warmup = 1
iterations = 3
max_warmup = 4

[numerics]
train_steps = 3
fp64_max_parameters = 0
"""
