"""Analysis of results: one run (summary: speedups, savings, headline points, recommendation;
series: the data behind the figures) and two runs (compare; the CI gate: thresholds, compatibility, assessment). It reads bench.results and
never imports the engine, the views or the CLI; every view reads it, so every view agrees.
"""
