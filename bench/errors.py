"""mpbench's exceptions for the user: the CLI prints each as one line and exits with its code.

This module is the bottom of the import graph: every layer may import it, it imports nothing.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_REGRESSION = 1  # `mpbench check` only: a regression was found
EXIT_USAGE = 2  # bad input: nothing ran (or, for check/compare/report, nothing was judged)
EXIT_OUTPUT = 3  # an output file could not be written (disk full, permissions); results kept
EXIT_RANK_LOST = 4  # a data-parallel rank died or hung: that case is recorded, the run stopped
EXIT_INTERRUPTED = 130  # Ctrl-C: finished cases are kept
EXIT_TERMINATED = 143  # SIGTERM: finished cases are kept


class MpbenchError(Exception):
    """Bad input (a suite file, a flag, a results file): shown to the user without a traceback."""

    exit_code = EXIT_USAGE


class SuiteError(MpbenchError):
    """A suite file (or a flag that overrides it) is not valid."""


class ModelError(MpbenchError):
    """A model name or checkpoint directory cannot be used."""


class ResultsError(MpbenchError):
    """A run directory or results file cannot be read."""


class OutputError(MpbenchError):
    """An output file could not be written (disk full, read-only, permissions).

    Everything written before it is intact: results.jsonl is rolled back to its last whole line.
    """

    exit_code = EXIT_OUTPUT
