"""Where a run starts: which checkpoint (if any) it continues from, and restoring it.

``--resume auto`` continues from the newest complete checkpoint of the run directory; ``never`` starts over,
but refuses a directory that holds checkpoints of an earlier run (it would mix the two runs' checkpoints and
metrics) unless ``--archive`` moves that run aside into ``archive/<time>/``; a checkpoint directory continues
from that checkpoint. A checkpoint made with an incompatible config is refused with the differences named.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cyclegan_dist import checkpoint as ckpt
from cyclegan_dist.config import Config, diff_configs
from cyclegan_dist.errors import UserError
from cyclegan_dist.rundir import RunDir, is_checkpoint

log = logging.getLogger("cyclegan_dist.train")

# Keys whose change makes a checkpoint unusable (the networks, the objective, the data stream, the optimizer).
# The LR may change on resume (train.lr, train.lr_scaling: the new value applies from the resumed step on).
INCOMPATIBLE = ("model", "loss", "seed", "data.domain_a", "data.domain_b", "data.crop_size", "data.load_size",
                "train.batch_size", "train.beta1", "train.beta2", "train.deepspeed")


def choose_start(run: RunDir, resume: str, *, archive: bool, is_main: bool, barrier) -> Path | None:
    """The checkpoint to continue from (None: start at step 0). Collective when ``archive`` moves files."""
    if resume == "auto":
        return run.latest()
    if resume != "never":
        path = Path(resume)
        if not is_checkpoint(path):
            raise UserError(f"--resume {resume}: not a complete checkpoint directory (no 'complete' marker); "
                            f"use --resume auto or one of {[str(p) for p in run.complete_checkpoints()]}")
        return path
    earlier = run.complete_checkpoints()
    if earlier and not archive:
        names = ", ".join(p.name for p in earlier[-3:]) + (f" (+{len(earlier) - 3} more)" if len(earlier) > 3 else "")
        raise UserError(f"--resume never: {run.path} holds checkpoints of an earlier run ({names}); starting over "
                        "there would mix the two runs. Use a new --run-dir, or add --archive to move the earlier run "
                        f"aside into {run.path / 'archive'}/, or --resume auto to continue it")
    if (earlier or run.metrics_path.exists()) and archive:
        if is_main:
            moved = run.archive()
            log.warning("moved the earlier run in %s aside into %s", run.path, moved)
        barrier()
    return None


def check_compatible(saved: dict[str, Any], config: Config, source: Path) -> None:
    differences = [d for d in diff_configs(saved, config.to_dict())
                   if any(d == key or d.startswith((key + ".", key + ":")) for key in INCOMPATIBLE)]
    if differences:
        raise UserError(f"checkpoint {source} was made with a different config: {'; '.join(differences)}. Use the "
                        "original config, a new --run-dir, or --resume never --archive to start over here.")


def load(source: Path, rank: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(rank 0's shared state, this rank's state or None when the world size changed)."""
    return ckpt.load_shared(source), ckpt.load_rank(source, rank)


def restore_optimizers(shared: dict, mine: dict | None, opt_G, opt_D, scaler, *, sharded: bool, world: int,
                       rank: int, source: Path) -> None:
    """Optimizer (and fp16 scaler) state, after ``prepare``. ZeRO: this rank's slice, same world size only."""
    if sharded:
        if mine is None or shared["world_size"] != world:
            raise UserError(f"{source} holds ZeRO optimizer slices of {shared['world_size']} ranks; "
                            f"resume it with the same number of ranks (now {world})")
        for opt, name in ((opt_G, "opt_G"), (opt_D, "opt_D")):
            slices = [None] * world
            slices[rank] = mine[name]  # DeepSpeed takes a list indexed by rank; this rank's slice is enough
            opt.optimizer.load_state_dict(slices, load_from_fp32_weights=True)
    else:
        opt_G.load_state_dict(shared["opt_G"])
        opt_D.load_state_dict(shared["opt_D"])
    if scaler is not None and shared.get("scaler") is not None:
        scaler.load_state_dict(shared["scaler"])
