"""Start the worker scripts of this folder: in a plain process, or as N gloo ranks under torchrun."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from helpers import ROOT, _env

WORKERS = Path(__file__).resolve().parent


def run_worker(script: str, *args, nproc: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python tests/workers/SCRIPT ARGS`` (nproc 1) or ``python -m torch.distributed.run --standalone
    --nproc_per_node N tests/workers/SCRIPT ARGS``; fails with both output streams when the exit code is not 0."""
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [sys.executable, *launcher, str(WORKERS / script), *map(str, args)]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, env=_env({"OMP_NUM_THREADS": "1"}),
                         timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}")
    return out


def load_ranks(out_dir: Path, world_size: int) -> list[dict]:
    """The ``rank-<r>.pt`` files a step_worker run wrote, checking that it ran with ``world_size`` ranks."""
    found = sorted(p.name for p in out_dir.glob("rank-*.pt"))
    assert found == [f"rank-{r}.pt" for r in range(world_size)], f"expected {world_size} rank files, got {found}"
    ranks = [torch.load(out_dir / f"rank-{r}.pt", weights_only=False) for r in range(world_size)]
    for r, result in enumerate(ranks):
        assert (result["world_size"], result["rank"]) == (world_size, r), (result["world_size"], result["rank"])
    return ranks
