"""A tiny suite (both families, both workloads, a skipped precision) that runs in seconds."""

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
"""
