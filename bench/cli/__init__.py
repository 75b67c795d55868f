"""The `mpbench` command line (bench.cli.main), the top of the import graph: it drives the engine,
then reads the run back through bench.results and shows it with bench.views."""
