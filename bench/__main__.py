"""`python -m bench` runs the mpbench CLI."""

from bench.cli.main import main

raise SystemExit(main())
