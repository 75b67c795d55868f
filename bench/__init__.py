"""mpbench: precision benchmarking and analysis for transformer training and inference."""

__version__ = "0.1.0"
