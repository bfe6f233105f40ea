"""The distributed runtime: the Accelerator, the stop flag, RNG state. Knows nothing of CycleGAN.

On a machine without CUDA the Accelerator runs on the CPU and, under ``torchrun`` or
``accelerate launch --multi_gpu``, joins a gloo process group from the environment (RANK, WORLD_SIZE, ...).
"""

from __future__ import annotations

import os
import random
import threading
from datetime import timedelta

import numpy as np
import torch

from cyclegan_dist.config import TrainConfig
from cyclegan_dist.errors import UserError

_STOP = threading.Event()


def request_stop() -> None:
    """Ask the running training loop to checkpoint and return at the next step (signal-handler safe)."""
    _STOP.set()


def clear_stop() -> None:
    _STOP.clear()


def stop_requested(accelerator) -> bool:
    """True on every rank as soon as any rank was asked to stop (one tiny all-reduce when distributed)."""
    flag = _STOP.is_set()
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)


def make_accelerator(train: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    cpu = not torch.cuda.is_available()
    if train.mixed_precision == "fp16" and cpu:
        raise UserError(
            "train.mixed_precision=fp16 needs a CUDA GPU; on the CPU PyTorch would silently run fp32. "
            "Use train.mixed_precision=bf16 (or no)."
        )
    handlers = []
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a process group only when there are several ranks
        handlers.append(InitProcessGroupKwargs(backend="gloo" if cpu else "nccl", timeout=timedelta(minutes=30)))
    return Accelerator(cpu=cpu, mixed_precision=train.mixed_precision, kwargs_handlers=handlers)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    np_state = np.random.get_state()
    state["numpy"] = (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int, rank: int) -> None:
    random.seed(seed * 1000 + rank)
    np.random.seed((seed * 1000 + rank) % 2**32)
    torch.manual_seed(seed * 1000 + rank)


def finish_distributed(accelerator) -> None:
    """Leave the process group cleanly (avoids gloo's rare abort at interpreter exit)."""
    import torch.distributed as dist

    accelerator.wait_for_everyone()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
