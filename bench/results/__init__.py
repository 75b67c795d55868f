"""The results layer: the schema of a case result, the run directory, and readers for every
input format (results.jsonl, baselines, pytest-benchmark files).

It imports nothing from the rest of mpbench but `bench.errors`: the engine writes through it, and
analysis, views and the CLI read through it.
"""
