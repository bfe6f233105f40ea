"""One CycleGAN update: the generators' step with the discriminators frozen, then the discriminators' step.

Exactly the reference order (junyanz ``CycleGANModel.optimize_parameters``): forward both cycles; G loss =
GAN(D_A(G_A(A))) + GAN(D_B(G_B(B))) + lambda_cycle (|G_B(G_A(A)) - A| + |G_A(G_B(B)) - B|)
+ lambda_identity (|G_A(B) - B| + |G_B(A) - A|); G step; then each D on a real image and a pooled fake,
0.5 x (GAN(real, 1) + GAN(fake, 0)); D step.

During the G step the discriminators are frozen and called through their unwrapped modules, so DDP does not
wait for gradients that never come; the D step calls the wrapped module once. With DiffAugment on
(``loss.diffaugment``) every image a discriminator sees, real or fake, in either step, gets a fresh augmentation
(differentiable, so the generators learn through it); off, the step is exactly the reference's.
Returns detached loss tensors (no host sync here: the loop reduces them when it logs).

:func:`prepare_step` wires the step as the loop runs it (``prepare``, the non-finite guard, the backward and
autocast of the precision); the loop's ``Session``, ``benchmarks/`` and the tests all call it, so all of them run
the same thing.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
from torch import nn

from cyclegan_dist.config import Config, LossConfig
from cyclegan_dist.data.transforms import normalize
from cyclegan_dist.image_pool import ImagePool
from cyclegan_dist.losses import gan_loss, l1_loss
from cyclegan_dist.train.build import Networks
from cyclegan_dist.train.guard import NonFiniteGuard, guard_mode
from cyclegan_dist.train.runtime import Runtime


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


@dataclass
class StepParts:
    """What one step needs; the loop builds it once (wrapped modules, optimizers, pools, backward)."""

    generators: nn.Module  # GeneratorPair, possibly wrapped (DDP / DeepSpeed engine)
    discriminators: nn.Module  # DiscriminatorPair, possibly wrapped
    discriminators_plain: nn.Module  # the unwrapped DiscriminatorPair, used in the G step
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    pool_A: ImagePool  # fakes of domain A (G_B's output), for D_B
    pool_B: ImagePool  # fakes of domain B (G_A's output), for D_A
    loss: LossConfig
    backward: Callable[[torch.Tensor], None] = lambda loss: loss.backward()
    backward_D: Callable[[torch.Tensor], None] | None = None  # DeepSpeed: D's own engine (default: backward)
    autocast: Callable[[], ContextManager] = nullcontext
    # ("G" | "D", optimizer): the optimizer step and zero_grad; the loop's is NonFiniteGuard.step (train/guard.py)
    optimizer_step: Callable[[str, torch.optim.Optimizer], None] = lambda name, opt: _plain_step(opt)
    augment: Callable[[torch.Tensor, str], torch.Tensor] | None = None  # DiffAugment(images, "a" | "b")
    after_G: Callable[[], None] | None = None  # after the generators' update (the EMA)


def train_step(parts: StepParts, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
    cfg = parts.loss
    identity = cfg.lambda_identity > 0

    # ---- generators, discriminators frozen
    set_requires_grad(parts.discriminators_plain, False)
    with parts.autocast():
        out = parts.generators(real_A, real_B, identity=identity)
        D, aug = parts.discriminators_plain, parts.augment or _identity
        loss_G_A = gan_loss(D.D_A(aug(out["fake_B"], "b")), True, cfg.gan_mode)
        loss_G_B = gan_loss(D.D_B(aug(out["fake_A"], "a")), True, cfg.gan_mode)
        loss_cycle_A = l1_loss(out["rec_A"], real_A) * cfg.lambda_cycle
        loss_cycle_B = l1_loss(out["rec_B"], real_B) * cfg.lambda_cycle
        loss_G = loss_G_A + loss_G_B + loss_cycle_A + loss_cycle_B
        if identity:
            loss_idt_A = l1_loss(out["idt_A"], real_B) * cfg.lambda_identity
            loss_idt_B = l1_loss(out["idt_B"], real_A) * cfg.lambda_identity
            loss_G = loss_G + loss_idt_A + loss_idt_B
    parts.backward(loss_G)
    parts.optimizer_step("G", parts.opt_G)
    if parts.after_G is not None:
        parts.after_G()
    set_requires_grad(parts.discriminators_plain, True)

    # ---- discriminators, on pooled fakes
    fake_B = parts.pool_B.query(out["fake_B"].detach())
    fake_A = parts.pool_A.query(out["fake_A"].detach())
    with parts.autocast():
        pred = parts.discriminators(aug(real_B, "b"), aug(fake_B, "b"), aug(real_A, "a"), aug(fake_A, "a"))
        loss_D_A = (gan_loss(pred["D_A_real"], True, cfg.gan_mode)
                    + gan_loss(pred["D_A_fake"], False, cfg.gan_mode)) * cfg.d_loss_weight
        loss_D_B = (gan_loss(pred["D_B_real"], True, cfg.gan_mode)
                    + gan_loss(pred["D_B_fake"], False, cfg.gan_mode)) * cfg.d_loss_weight
        loss_D = loss_D_A + loss_D_B
    (parts.backward_D or parts.backward)(loss_D)
    parts.optimizer_step("D", parts.opt_D)

    losses = {
        "loss/G_A": loss_G_A, "loss/G_B": loss_G_B, "loss/cycle_A": loss_cycle_A, "loss/cycle_B": loss_cycle_B,
        "loss/D_A": loss_D_A, "loss/D_B": loss_D_B, "loss/G": loss_G, "loss/D": loss_D,
    }
    if identity:
        losses["loss/idt_A"] = loss_idt_A
        losses["loss/idt_B"] = loss_idt_B
    return {name: value.detach() for name, value in losses.items()}


def _identity(x: torch.Tensor, domain: str) -> torch.Tensor:
    return x


def _plain_step(optimizer: torch.optim.Optimizer) -> None:
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@dataclass
class PreparedStep:
    """One step as the loop runs it: call it with two [-1, 1] batches (or the loader's batch through ``inputs``)."""

    gens: nn.Module  # prepared: DDP-wrapped, or a DeepSpeed engine
    discs: nn.Module
    gens_plain: nn.Module  # the unwrapped pairs (weights, samples, checkpoints)
    discs_plain: nn.Module
    opt_G: torch.optim.Optimizer  # Accelerate's wrappers: what checkpoints save and restore
    opt_D: torch.optim.Optimizer
    guard: NonFiniteGuard
    parts: StepParts
    device: torch.device
    memory_format: torch.memory_format

    def __call__(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
        return train_step(self.parts, real_A, real_B)

    def inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The loader's uint8 crops as the networks' input: on the device, flipped, in [-1, 1], laid out."""
        out = []
        for domain in ("A", "B"):
            x = normalize(batch[domain].to(self.device, non_blocking=True), batch[domain + "_flip"])
            out.append(x if self.memory_format is torch.contiguous_format else
                       x.contiguous(memory_format=self.memory_format))
        return out[0], out[1]


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
    return PreparedStep(gens, discs, rt.unwrap(gens), discs_plain, opt_G, opt_D, guard, parts, rt.device,
                        nets.memory_format)
