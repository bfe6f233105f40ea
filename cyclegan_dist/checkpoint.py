"""Checkpoints: everything needed to continue a run, written atomically, loaded with ``weights_only=True``.

Layout of ``<run_dir>/checkpoints/``::

    step-00001000/          a complete checkpoint (renamed into place only once every rank has written)
        state.pt            rank 0: networks, optimizers, grad scaler, step, config, W&B run id, world size
        rank-00000.pt ...   every rank: image pools, RNG states, data position
        G_A.safetensors     the generators alone, for inference (reference state_dict layout)
        G_B.safetensors
        config.yaml         the resolved config
        complete            marker, JSON {step, world_size, time}: written last, before the rename
    .tmp-step-00002000/     being written; never read; removed on the next save
    latest                  text: the name of the newest complete checkpoint (for people; readers scan)

The run directory must be on a file system that every rank sees (a shared file system across nodes).
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

from cyclegan_dist.errors import UserError

PREFIX = "step-"


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def list_complete(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "complete").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    complete = list_complete(run_dir)
    return complete[-1] if complete else None


def resolve_resume(run_dir: str | Path, resume: str) -> Path | None:
    """``never`` -> None; ``auto`` -> newest complete checkpoint or None; else a checkpoint directory."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if not (path / "complete").is_file():
        raise UserError(
            f"--resume {resume}: not a complete checkpoint directory (no 'complete' marker); "
            f"use --resume auto or one of {[str(p) for p in list_complete(run_dir)]}"
        )
    return path


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    rank: int,
    world_size: int,
    barrier: Callable[[], None],
    shared_state: Callable[[], dict[str, Any]] | None,
    rank_state: dict[str, Any],
    generators: dict[str, dict[str, torch.Tensor]] | None = None,
    config_yaml: str | None = None,
    keep_last: int = 3,
    protect: tuple[str, ...] = (),
) -> Path:
    """Write checkpoint ``step`` coherently from every rank; returns its final path.

    ``shared_state`` is called on rank 0 only (pass None elsewhere); ``rank_state`` is this rank's state.
    """
    root = checkpoint_root(run_dir)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{step_dir_name(step)}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier()
    torch.save(rank_state, tmp / f"rank-{rank:05d}.pt")
    if rank == 0:
        torch.save(shared_state(), tmp / "state.pt")
        for name, weights in (generators or {}).items():
            save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / f"{name}.safetensors"))
        if config_yaml is not None:
            (tmp / "config.yaml").write_text(config_yaml)
    barrier()
    if rank == 0:
        marker = {"step": step, "world_size": world_size, "time": time.time()}
        (tmp / "complete").write_text(json.dumps(marker))
        if final.exists():  # the same step saved again (e.g. the final step after a stop): replace it
            old = root / f".old-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            shutil.rmtree(old)
        tmp.rename(final)
        _fsync_dir(root)
        _write_latest(root, final.name)
        prune(run_dir, keep_last, protect)
    barrier()
    return final


def prune(run_dir: str | Path, keep_last: int, protect: tuple[str, ...] = ()) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints (names in ``protect`` are kept)."""
    complete = list_complete(run_dir)
    for path in complete[: max(0, len(complete) - keep_last)]:
        if path.name not in protect:
            shutil.rmtree(path, ignore_errors=True)


def load_shared(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path / "state.pt", map_location=map_location, weights_only=True)


def load_rank(path: Path, rank: int, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    file = path / f"rank-{rank:05d}.pt"
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


def _write_latest(root: Path, name: str) -> None:
    tmp = root / ".latest.tmp"
    tmp.write_text(name + "\n")
    os.replace(tmp, root / "latest")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
