"""Learning rate: constant, then linear decay to zero, counted in steps; optional scaling with world size.

The reference (junyanz ``--lr_policy linear``) keeps the LR for ``n_epochs`` and decays it linearly over
``n_epochs_decay``: ``1 - max(0, epoch - n_epochs) / (n_epochs_decay + 1)``. Here the same rule runs per step,
so the LR is a pure function of the step and needs no scheduler state in the checkpoint.

Scaling with world size (``train.lr_scaling``): the global batch is ``batch_size x world_size`` since
``batch_size`` is per rank. ``none`` keeps the reference LR; ``linear`` multiplies it by world_size (Goyal et
al.); ``sqrt`` by sqrt(world_size) (the usual choice for Adam).
"""

from __future__ import annotations

import math

import torch


def decay_steps(total_steps: int, decay_fraction: float) -> int:
    return int(round(total_steps * decay_fraction))


def lr_factor(step: int, total_steps: int, decay_fraction: float) -> float:
    """Multiplier of the base LR at 0-based ``step``: 1 for the constant part, then linear toward 0."""
    decay = decay_steps(total_steps, decay_fraction)
    constant = total_steps - decay
    return 1.0 - max(0, step - constant) / float(decay + 1)


def scaled_lr(base_lr: float, scaling: str, world_size: int) -> float:
    if scaling == "none":
        return base_lr
    if scaling == "linear":
        return base_lr * world_size
    if scaling == "sqrt":
        return base_lr * math.sqrt(world_size)
    raise ValueError(f"unknown lr scaling {scaling!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
