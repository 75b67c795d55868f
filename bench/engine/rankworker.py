"""One rank of a `mpbench run --nproc N` launch: `torchrun ... -m bench.engine.rankworker`.

The parent (`mpbench run --nproc N`) writes the run directory and starts torchrun
(bench.engine.supervisor.TorchrunChild). Every rank joins the process group; rank 0 reads the
suite from RUN_DIR/suite.toml, connects back to the parent and serves its cases like any worker
(bench.engine.executors.serve), running each on every rank (RankGroupExecutor); the other ranks
follow rank 0 (follow_sweep). When a rank fails or dies, rank 0 reports the case and leaves, and
the parent starts a fresh launch for the next case.
"""

from __future__ import annotations

import argparse
import os
import socket
from multiprocessing.connection import Connection
from pathlib import Path

from bench.engine.device import resolve_device
from bench.engine.executors import (
    InProcessExecutor,
    RankGroupExecutor,
    follow_sweep,
    quiet_transformers,
    runner_factory,
    serve,
)
from bench.engine.parallel import (
    Launch,
    destroy_process_group,
    exit_rank,
    init_process_group,
    rank_device,
)
from bench.engine.suite import parse_suite
from bench.engine.supervisor import RANK0_ADDRESS_ENV, die_with_parent
from bench.errors import EXIT_RANK_LOST
from bench.results.manifest import SUITE_FILE, RunManifest


def connect(address: str) -> Connection:
    """Rank 0's connection to the parent (a Unix socket in the parent's private directory)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address)
    return Connection(sock.detach())


def main(argv: list[str] | None = None) -> int:
    """Join the group; rank 0 serves the parent's cases, the others follow rank 0."""
    parser = argparse.ArgumentParser(prog="python -m bench.engine.rankworker")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--case-timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    die_with_parent()  # never outlive torchrun
    quiet_transformers()
    launch = Launch.from_env()
    device = resolve_device(rank_device(args.device, launch))
    device.activate()
    backend = init_process_group(device, launch, args.case_timeout)
    if not launch.leader:
        code = follow_sweep(device, launch)
        destroy_process_group()
        exit_rank(code)
    manifest = RunManifest.read(args.run_dir)
    suite = parse_suite(manifest.suite_text or "", str(args.run_dir / SUITE_FILE))
    local = InProcessExecutor(suite, device, runner_factory())
    group = RankGroupExecutor(local, suite, launch, backend, args.run_dir)
    serve(connect(os.environ[RANK0_ADDRESS_ENV]), group)
    if group.broken is not None:
        # The group lost a rank: tearing it down could wait on collectives that never end. The
        # case is reported; leave, and torchrun stops the others.
        exit_rank(EXIT_RANK_LOST)
    group.close()
    destroy_process_group()
    exit_rank(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
