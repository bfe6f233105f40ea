"""What one training step runs with, wired as the loop wires it: the non-finite guard and the ``StepParts``
(used by the loop's ``Session`` and by ``benchmarks/step.py``, so both time the same thing)."""

from __future__ import annotations

import torch

from cyclegan_dist.train.guard import NonFiniteGuard
from cyclegan_dist.train.runtime import Runtime
from cyclegan_dist.train.step import StepParts


def new_guard(rt: Runtime, optimizer: torch.optim.Optimizer) -> NonFiniteGuard:
    """The non-finite guard; it skips on the device with fused Adam on CUDA (see ``train/guard.py``)."""
    fused = bool(getattr(optimizer, "defaults", {}).get("fused"))
    return NonFiniteGuard(rt.device, device_skip=fused and rt.scaler is None and rt.device.type == "cuda")


def step_parts(rt: Runtime, gens, discs, opt_G, opt_D, pool_A, pool_B, loss, guard: NonFiniteGuard, *,
               augment=None, after_G=None) -> StepParts:
    """What ``train_step`` runs with, as the loop runs it (the prepared modules and optimizers; Accelerate's
    per-step wrappers only where they do something: ``Runtime.direct_calls``)."""
    return StepParts(gens, discs, rt.unwrap(discs), rt.stepping(opt_G), rt.stepping(opt_D), pool_A, pool_B, loss,
                     backward=rt.backward_of(rt.acc_G), backward_D=rt.backward_of(rt.acc_D), autocast=rt.autocast,
                     guard=guard.check, augment=augment, after_G=after_G)
