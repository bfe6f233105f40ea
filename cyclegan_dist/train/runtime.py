"""The distributed runtime: the Accelerator, the stop flag, RNG state. Knows nothing of CycleGAN.

On a machine without CUDA the Accelerator runs on the CPU and, under ``torchrun`` or
``accelerate launch --multi_gpu``, joins a gloo process group from the environment (RANK, WORLD_SIZE, ...).
"""

from __future__ import annotations

import os
import random
import threading
from datetime import timedelta
from pathlib import Path

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


STOP_CHECK_EVERY = 10  # steps between the ranks' agreement on a stop (each check is a host-device sync)


def stop_requested(accelerator, step: int) -> bool:
    """True on every rank, at the same step, once any rank was asked to stop (a tiny all-reduce every
    STOP_CHECK_EVERY steps when distributed; a SLURM warning comes minutes before the end)."""
    flag = _STOP.is_set()
    if accelerator.num_processes == 1:
        return flag
    if step % STOP_CHECK_EVERY:
        return False
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)


def make_accelerator(train: TrainConfig):
    """One Accelerator for both models (DDP or a single process)."""
    from accelerate import Accelerator

    cpu = _check_precision(train)
    return Accelerator(cpu=cpu, mixed_precision=train.mixed_precision, kwargs_handlers=_handlers(cpu))


def make_accelerators(train: TrainConfig):
    """(accelerator for the generators, accelerator for the discriminators): the same object under DDP.

    Under DeepSpeed each model needs an engine of its own, so each gets an Accelerator with its own
    DeepSpeed plugin ("G" and "D", from the same ZeRO config); they share the process group and state.
    """
    ds_config = deepspeed_config_path(train)
    if ds_config is None:
        accelerator = make_accelerator(train)
        return accelerator, accelerator
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    cpu = _check_precision(train)
    plugins = {name: DeepSpeedPlugin(hf_ds_config=_read_ds_config(ds_config, train)) for name in ("G", "D")}
    # Accelerate turns DeepSpeed off when cpu=True; on a CPU machine DeepSpeed itself runs on gloo instead.
    handlers = _handlers(cpu, always=True)
    acc_G = Accelerator(mixed_precision=train.mixed_precision, deepspeed_plugins=plugins, kwargs_handlers=handlers)
    acc_D = Accelerator(mixed_precision=train.mixed_precision, kwargs_handlers=handlers)
    return acc_G, acc_D


def deepspeed_config_path(train: TrainConfig) -> str | None:
    """train.deepspeed, or the config file of ``accelerate launch --config_file configs/accelerate/deepspeed_*.yaml``."""
    if train.deepspeed:
        return train.deepspeed
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if not path:
            raise UserError("accelerate launch asked for DeepSpeed without deepspeed_config_file; "
                            "use configs/accelerate/deepspeed_zero2.yaml or set train.deepspeed=configs/deepspeed/zero2.json")
        return path
    return None


def _read_ds_config(path: str, train: TrainConfig) -> dict:
    import json

    try:
        config = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"train.deepspeed: {path} does not exist (see configs/deepspeed/zero2.json)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"train.deepspeed: {path} is not valid JSON: {exc}") from None
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2):
        raise UserError(f"{path}: ZeRO stage {stage} is not supported here; use stage 1 or 2")
    config["train_micro_batch_size_per_gpu"] = train.batch_size  # no data loader passes through prepare()
    config.pop("train_batch_size", None)
    return config


def _check_precision(train: TrainConfig) -> bool:
    cpu = not torch.cuda.is_available()
    if not cpu:
        torch.backends.cudnn.benchmark = True  # fixed crop sizes: let cuDNN pick the fastest kernels (as the reference)
    if train.mixed_precision == "fp16" and cpu:
        raise UserError(
            "train.mixed_precision=fp16 needs a CUDA GPU; on the CPU PyTorch would silently run fp32. "
            "Use train.mixed_precision=bf16 (or no)."
        )
    return cpu


def _handlers(cpu: bool, always: bool = False) -> list:
    from accelerate.utils import InitProcessGroupKwargs

    if not always and int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # a process group only when there are several ranks
        return []
    return [InitProcessGroupKwargs(backend="gloo" if cpu else "nccl", timeout=timedelta(minutes=30))]


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
