"""`python -m bench` runs the mpbench CLI."""

from bench.cli import main

raise SystemExit(main())
