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
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
from torch import nn

from cyclegan_dist.config import LossConfig
from cyclegan_dist.image_pool import ImagePool
from cyclegan_dist.losses import gan_loss, l1_loss


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
