"""Run ``train_k_steps`` in this process (plain, or one rank under torchrun) and save what it saw.

    python tests/workers/step_worker.py OUT_DIR --steps K --global-batch N [--negative-control] [--set KEY=VALUE ...]
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/workers/step_worker.py OUT_DIR ...

Each rank writes OUT_DIR/rank-<r>.pt (a dict of the ``Run`` fields). With ``--negative-control`` the same process
then trains a second time from scratch, rank 1 reading other data than its share of the global batch, and writes
OUT_DIR/negative/rank-<r>.pt (one torchrun start for both). Finally it leaves the process group and exits with
``os._exit`` (gloo sometimes aborts at interpreter teardown after a finished run).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root (not necessarily installed)

from common import tiny_config, train_k_steps


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--global-batch", type=int, required=True)
    parser.add_argument("--data-seed", type=int, default=1)
    parser.add_argument("--negative-control", action="store_true")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[])
    args = parser.parse_args()
    config = tiny_config("train.deterministic=true", *args.overrides)
    save(train_k_steps(config, args.steps, args.global_batch, args.data_seed), args.out)
    if args.negative_control:
        save(train_k_steps(config, args.steps, args.global_batch, args.data_seed, rank1_data_seed=args.data_seed + 1),
             args.out / "negative")
    return 0


def save(run, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result = dataclasses.asdict(run)
    result["g_output_dtypes"] = sorted(str(d) for d in run.g_output_dtypes)
    tmp = out / f"rank-{run.rank}.pt.tmp"
    torch.save(result, tmp)
    tmp.rename(out / f"rank-{run.rank}.pt")


def leave_and_exit(code: int) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    leave_and_exit(main())  # an exception propagates normally, with its traceback
