"""Differentiable augmentation of what a discriminator sees (Zhao et al., "Differentiable Augmentation for
Data-Efficient GAN Training", NeurIPS 2020), written from the paper's definitions for images in [-1, 1]:

* ``color``: brightness ``x + (u - 0.5)``; saturation ``(x - mean_c) * 2u + mean_c`` (mean over channels);
  contrast ``(x - mean) * (u + 0.5) + mean`` (mean over channels and pixels); one ``u ~ U[0, 1)`` per image each.
* ``translation``: a shift by up to 1/8 of the image side in each direction (integers, uniform), zero padding.
* ``cutout``: a square of half the image side set to zero, centred uniformly (clipped at the border).

Every operation is differentiable in ``x`` (the generator learns through it) and applied on the device; the random
parameters are drawn from a ``torch.Generator`` of the run (checkpointed with it, so resume stays exact) and held
in :class:`AugmentParams`, so the same transform can be applied to several batches when asked. The paper's
recipe, used in :mod:`cyclegan_dist.train.step`: every batch a discriminator sees — real, fake, pooled fake, in the
G step and the D step alike — gets its own fresh draw.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cyclegan_dist.config import LossConfig

# the names loss.diffaugment accepts (defined once, by the config's type), in the order they are applied
POLICIES: tuple[str, ...] = typing.get_args(typing.get_args(typing.get_type_hints(LossConfig)["diffaugment"])[0])
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


@dataclass
class AugmentParams:
    """The random draws of one augmentation of a batch (CPU tensors; moved to the images' device when applied)."""

    brightness: torch.Tensor | None = None  # N
    saturation: torch.Tensor | None = None  # N
    contrast: torch.Tensor | None = None  # N
    shift: torch.Tensor | None = None  # N x 2 (dy, dx), integers
    cutout: torch.Tensor | None = None  # N x 2 (cy, cx), integers


def sample(policy: tuple[str, ...], n: int, height: int, width: int, generator: torch.Generator) -> AugmentParams:
    """Draw the parameters of ``policy`` for ``n`` images, in a fixed order (so a generator state replays them)."""
    p = AugmentParams()
    if "color" in policy:
        p.brightness, p.saturation, p.contrast = (torch.rand(n, generator=generator) for _ in range(3))
    if "translation" in policy:
        sy, sx = int(height * TRANSLATION_RATIO + 0.5), int(width * TRANSLATION_RATIO + 0.5)
        dy = torch.randint(-sy, sy + 1, (n,), generator=generator)
        dx = torch.randint(-sx, sx + 1, (n,), generator=generator)
        p.shift = torch.stack([dy, dx], 1)
    if "cutout" in policy:
        size_y, size_x = _cutout_size(height, width)
        cy = torch.randint(0, height + (1 - size_y % 2), (n,), generator=generator)
        cx = torch.randint(0, width + (1 - size_x % 2), (n,), generator=generator)
        p.cutout = torch.stack([cy, cx], 1)
    return p


def apply(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """``x`` (N x C x H x W, [-1, 1]) augmented by the drawn parameters; differentiable in ``x``."""
    n, _, h, w = x.shape
    view = (n, 1, 1, 1)
    if p.brightness is not None:
        x = x + (p.brightness.to(x.device, x.dtype) - 0.5).view(view)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (p.saturation.to(x.device, x.dtype) * 2).view(view) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (p.contrast.to(x.device, x.dtype) + 0.5).view(view) + mean
    if p.shift is not None:
        x = _translate(x, p.shift.to(x.device))
    if p.cutout is not None:
        size_y, size_x = _cutout_size(h, w)
        top, left = (p.cutout.to(x.device) - torch.tensor([size_y // 2, size_x // 2], device=x.device)).unbind(1)
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        top, left = top.view(n, 1, 1), left.view(n, 1, 1)
        inside = (ys >= top) & (ys < top + size_y) & (xs >= left) & (xs < left + size_x)
        x = x * (~inside).unsqueeze(1).to(x.dtype)
    return x


def _cutout_size(height: int, width: int) -> tuple[int, int]:
    return int(height * CUTOUT_RATIO + 0.5), int(width * CUTOUT_RATIO + 0.5)


def _translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift each image by (dy, dx) pixels, filling with zeros: a gather from a zero-padded copy."""
    n, c, h, w = x.shape
    pad_y, pad_x = int(shift[:, 0].abs().max()), int(shift[:, 1].abs().max())
    padded = F.pad(x, (pad_x, pad_x, pad_y, pad_y))
    ys = (torch.arange(h, device=x.device).view(1, h) - shift[:, :1] + pad_y)  # N x H
    xs = (torch.arange(w, device=x.device).view(1, w) - shift[:, 1:] + pad_x)  # N x W
    rows = padded.gather(2, ys.view(n, 1, h, 1).expand(n, c, h, padded.shape[3]))
    return rows.gather(3, xs.view(n, 1, 1, w).expand(n, c, h, w))


class DiffAugment:
    """The augmentation of a run: its policy, the domains it applies to and its RNG (a checkpointed generator)."""

    def __init__(self, policy: tuple[str, ...], domains: tuple[str, ...] = ("a", "b"), seed: int = 0) -> None:
        unknown = [p for p in policy if p not in POLICIES]
        if unknown:
            raise ValueError(f"unknown DiffAugment policy {unknown[0]!r}; valid: {', '.join(POLICIES)}")
        self.policy = tuple(p for p in POLICIES if p in policy)
        self.domains = tuple(domains)
        self.generator = torch.Generator().manual_seed(int(seed))

    @property
    def enabled(self) -> bool:
        return bool(self.policy)

    def __call__(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        """A fresh draw for this batch of images of ``domain`` ("a" photos, "b" paintings); identity when off."""
        if not self.policy or domain not in self.domains:
            return x
        return apply(x, sample(self.policy, x.shape[0], x.shape[2], x.shape[3], self.generator))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
