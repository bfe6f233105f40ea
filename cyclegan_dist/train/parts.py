"""What one training step runs with, wired as the loop wires it: the prepared networks, the non-finite guard and
the ``StepParts``. :func:`prepare_step` is called by the loop's ``Session``, by ``benchmarks/`` and by the tests,
so all of them run the same thing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from cyclegan_dist.config import Config
from cyclegan_dist.train.build import Networks
from cyclegan_dist.train.guard import NonFiniteGuard, guard_mode
from cyclegan_dist.train.runtime import Runtime
from cyclegan_dist.train.step import StepParts, train_step


@dataclass
class PreparedStep:
    gens: torch.nn.Module  # prepared: DDP-wrapped, or a DeepSpeed engine
    discs: torch.nn.Module
    gens_plain: torch.nn.Module  # the unwrapped pairs (weights, samples, checkpoints)
    discs_plain: torch.nn.Module
    opt_G: torch.optim.Optimizer  # Accelerate's wrappers: what checkpoints save and restore
    opt_D: torch.optim.Optimizer
    guard: NonFiniteGuard
    parts: StepParts

    def __call__(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
        return train_step(self.parts, real_A, real_B)


def prepare_step(rt: Runtime, config: Config, nets: Networks, *, augment=None,
                 after_G: Callable[[], None] | None = None) -> PreparedStep:
    """``prepare`` the networks (weights already loaded) and wire the step: the guard (``train/guard.py``), the
    torch optimizers inside Accelerate's wrappers (DeepSpeed's wrappers under DeepSpeed: ``Runtime.stepping``),
    the backward and autocast of this precision."""
    t = config.train
    gens, discs, opt_G, opt_D = rt.prepare(nets.gens, nets.discs, nets.opt_G, nets.opt_D)
    mode = guard_mode(device_type=rt.device.type, setting=t.nonfinite_skip, fused_adam=t.fused_adam,
                      scaler=rt.scaler is not None, deepspeed=rt.deepspeed)
    guard = NonFiniteGuard(mode, rt.device, scaler=rt.scaler, engines=(gens, discs) if rt.deepspeed else ())
    discs_plain = rt.unwrap(discs)
    parts = StepParts(gens, discs, discs_plain, rt.stepping(opt_G), rt.stepping(opt_D), nets.pool_A, nets.pool_B,
                      config.loss, backward=rt.backward_of(rt.acc_G), backward_D=rt.backward_of(rt.acc_D),
                      autocast=rt.autocast, optimizer_step=guard.step, augment=augment, after_G=after_G)
    return PreparedStep(gens, discs, rt.unwrap(gens), discs_plain, opt_G, opt_D, guard, parts)
