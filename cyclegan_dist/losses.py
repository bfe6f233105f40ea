"""CycleGAN objectives: LSGAN (or vanilla BCE) adversarial loss, L1 cycle and identity losses.

Losses are computed in fp32 whatever the autocast dtype, so bf16/fp16 runs stay numerically close to fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GAN_MODES = ("lsgan", "vanilla")


def gan_loss(prediction: torch.Tensor, target_is_real: bool, mode: str = "lsgan") -> torch.Tensor:
    """Adversarial loss of a PatchGAN prediction map against an all-real or all-fake target.

    lsgan: mean squared error to 1 (real) or 0 (fake), as the reference ``GANLoss('lsgan')``.
    vanilla: binary cross-entropy on logits, as ``GANLoss('vanilla')``.
    """
    prediction = prediction.float()
    target = torch.full_like(prediction, 1.0 if target_is_real else 0.0)
    if mode == "lsgan":
        return F.mse_loss(prediction, target)
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(prediction, target)
    raise ValueError(f"unknown gan mode {mode!r}; valid: {GAN_MODES}")


def l1_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error in fp32 (cycle-consistency and identity terms)."""
    return F.l1_loss(output.float(), target.float())
