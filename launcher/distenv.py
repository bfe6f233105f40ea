"""torch.distributed's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) from the job's.

Inside a SLURM task or a submitit local task, :func:`export_torch_env` uses submitit's
``TorchDistributedEnvironment`` (SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID / SLURM_JOB_NODELIST, or
submitit's SUBMITIT_LOCAL_* variables) so that ``Accelerator()`` joins the process group from the env alone,
on one node or many. No torchrun. Each task then sees one GPU: the ``LOCAL_RANK``-th of the GPUs SLURM gave
the node (unless SLURM already bound exactly one GPU to the task).

``python -m launcher.distenv`` prints what a task would export, as JSON (a debugging aid in sbatch scripts).
"""

from __future__ import annotations

import json
import os

EXPORTED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "CUDA_VISIBLE_DEVICES")


def in_slurm_step() -> bool:
    return "SLURM_JOB_ID" in os.environ and "SLURM_PROCID" in os.environ


def export_torch_env() -> dict[str, str]:
    """Export the torch.distributed variables for this task; returns them."""
    if "SUBMITIT_EXECUTOR" not in os.environ and in_slurm_step():
        os.environ["SUBMITIT_EXECUTOR"] = "slurm"  # a plain sbatch/srun task (slurm/templates/train.sbatch)
    from submitit.helpers import TorchDistributedEnvironment

    dist = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    devices = select_device(os.environ.get("CUDA_VISIBLE_DEVICES"), dist.local_rank, dist.local_world_size)
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    return {k: os.environ[k] for k in EXPORTED if k in os.environ}


def select_device(visible: str | None, local_rank: int, local_world_size: int) -> str | None:
    """The CUDA_VISIBLE_DEVICES value for this task (None: leave it as it is).

    Unset or empty stays as it is (no GPU: CPU ranks). One device: SLURM bound it to this task already.
    Several: take the ``local_rank``-th (SLURM's ids, which need not be 0..n-1).
    """
    if visible is None or not visible.strip():
        return None
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if len(ids) <= 1:
        return None
    if local_rank >= len(ids):
        raise RuntimeError(f"local rank {local_rank} of {local_world_size} tasks, but only {len(ids)} GPUs are "
                           f"visible (CUDA_VISIBLE_DEVICES={visible}): request one GPU per task")
    return ids[local_rank]


if __name__ == "__main__":
    print(json.dumps(export_torch_env(), sort_keys=True))
