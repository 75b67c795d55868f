"""Integrations with other tools: the pytest-benchmark plugin (`pytest --mpbench-suite`)."""
