"""Checkpoints: everything needed to continue a run, written durably by every rank, loaded with
``weights_only=True``. The layout is ``cyclegan_dist.rundir``'s.

Order of a save: rank 0 makes ``.tmp-step-N/``; every rank writes and fsyncs its ``rank-R.pt``; rank 0 writes and
fsyncs ``state.pt``, the generators (safetensors) and ``config.yaml``; then the ``complete`` marker (fsynced),
the rename to ``step-N/``, an fsync of ``checkpoints/``, ``latest``, and pruning. A crash at any point leaves
either no checkpoint ``step-N`` or a complete one. Pruning keeps the newest ``keep_last`` checkpoints of *this*
run (same run id) and the ones named in ``protect`` (the best); it never deletes another run's checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

from cyclegan_dist.rundir import (
    COMPLETE,
    CONFIG,
    STATE,
    RunDir,
    atomic_write,
    fsync_dir,
    fsync_file,
    rank_file,
    step_dir_name,
)


def save_checkpoint(run: RunDir, step: int, *, rank: int, world_size: int, run_id: str,
                    barrier: Callable[[], None], shared_state: Callable[[], dict[str, Any]] | None,
                    rank_state: dict[str, Any], generators: dict[str, dict[str, torch.Tensor]] | None = None,
                    config_yaml: str | None = None, keep_last: int = 3, protect: tuple[str, ...] = ()) -> Path:
    """Write checkpoint ``step`` coherently from every rank (a collective); returns its final path.

    ``shared_state`` is called on rank 0 only (pass None elsewhere); ``generators`` maps a file name
    (``G_A.safetensors`` ...) to weights, written by rank 0."""
    root = run.checkpoints
    final, tmp = root / step_dir_name(step), root / f".tmp-{step_dir_name(step)}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    _save(rank_state, tmp / rank_file(rank))
    if rank == 0:
        _save(shared_state(), tmp / STATE)
        for name, weights in (generators or {}).items():
            save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / name))
            fsync_file(tmp / name)
        if config_yaml is not None:
            atomic_write(tmp / CONFIG, config_yaml)
    barrier()
    if rank == 0:
        atomic_write(tmp / COMPLETE, json.dumps({"step": step, "world_size": world_size, "run_id": run_id,
                                                 "time": time.time()}))
        if final.exists():  # the same step saved again (e.g. the final step after a stop): replace it
            old = root / f".old-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            shutil.rmtree(old)
        tmp.rename(final)
        fsync_dir(root)
        run.write_latest(final.name)
        prune(run, keep_last, run_id, protect)
    barrier()
    return final


def _save(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def prune(run: RunDir, keep_last: int, run_id: str, protect: tuple[str, ...] = ()) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints of run ``run_id`` (``protect`` is kept)."""
    mine = run.complete_checkpoints(run_id=run_id)
    for path in mine[: max(0, len(mine) - keep_last)]:
        if path.name not in protect:
            shutil.rmtree(path, ignore_errors=True)


def load_shared(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(Path(path) / STATE, map_location=map_location, weights_only=True)


def load_rank(path: Path, rank: int, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    file = Path(path) / rank_file(rank)
    if not file.is_file():
        return None  # world size changed: this rank starts fresh pools and RNG
    with torch.serialization.safe_globals(_deepspeed_globals()):
        return torch.load(file, map_location=map_location, weights_only=True)


def _deepspeed_globals() -> list:
    """DeepSpeed's ZeRO optimizer state holds its loss-scaler object and stage enum: allow exactly those."""
    if "deepspeed" not in sys.modules:  # only a DeepSpeed run writes them, and it has imported deepspeed
        return []
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, in state_dict order: equal across ranks iff weights are equal."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
