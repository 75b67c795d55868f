"""The engine: suite -> cases -> runner -> results.jsonl.

It measures (device, precision modes, models, workloads, the timed loop, workers, numerics
passes) and writes through bench.results; it never imports analysis, views or the CLI.
"""
