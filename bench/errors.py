"""The one exception type for bad input: the CLI prints it as one line and exits 2."""

from __future__ import annotations


class MpbenchError(Exception):
    """Bad input (a suite file, a flag, a results file): shown to the user without a traceback."""

    exit_code = 2


class SuiteError(MpbenchError):
    """A suite file (or a flag that overrides it) is not valid."""


class ModelError(MpbenchError):
    """A model name or checkpoint directory cannot be used."""


class ResultsError(MpbenchError):
    """A run directory or results file cannot be read."""
