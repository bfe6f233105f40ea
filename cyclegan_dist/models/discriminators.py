"""Discriminators with the exact module layout of junyanz/pytorch-CycleGAN-and-pix2pix.

* ``basic``: the 70x70 PatchGAN, ``NLayerDiscriminator`` with 3 layers (the ``n_layers`` argument is
  ignored, as in the reference ``define_D``);
* ``n_layers``: the same with ``n_layers`` stride-2 layers;
* ``pixel``: the 1x1 PixelGAN. Its ``Sequential`` is named ``net`` (keys ``net.0.weight``...), not
  ``model``, as in the reference.

No sigmoid at the end: the losses (LSGAN, or BCE-with-logits) take raw scores.
"""

from __future__ import annotations

import torch
from torch import nn

from cyclegan_dist.errors import UserError
from cyclegan_dist.models.generators import (
    check_norm,
    check_positive,
    conv_bias,
    norm_factory,
    unknown_choice,
)

DISCRIMINATORS: tuple[str, ...] = ("basic", "n_layers", "pixel")


class NLayerDiscriminator(nn.Module):
    """PatchGAN: C64 (no norm), then C128, C256... (stride 2, widths capped at 8*ndf), one stride-1
    layer, and a 1-channel 4x4 output conv. With 3 layers each output sees a 70x70 patch."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance") -> None:
        super().__init__()
        norm_layer, use_bias = norm_factory(norm), conv_bias(norm)
        kw, padw = 4, 1
        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=kw, stride=2, padding=padw, bias=use_bias),
                norm_layer(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, kernel_size=kw, stride=1, padding=padw, bias=use_bias),
            norm_layer(ndf * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * mult, 1, kernel_size=kw, stride=1, padding=padw),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PixelDiscriminator(nn.Module):
    """1x1 PatchGAN (PixelGAN): one score per pixel."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, norm: str = "instance") -> None:
        super().__init__()
        norm_layer, use_bias = norm_factory(norm), conv_bias(norm)
        self.net = nn.Sequential(
            nn.Conv2d(input_nc, ndf, kernel_size=1, stride=1, padding=0),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, kernel_size=1, stride=1, padding=0, bias=use_bias),
            norm_layer(ndf * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, kernel_size=1, stride=1, padding=0, bias=use_bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_discriminator(
    name: str = "basic",
    input_nc: int = 3,
    ndf: int = 64,
    n_layers: int = 3,
    norm: str = "instance",
) -> nn.Module:
    """Build a discriminator by its reference name (see :data:`DISCRIMINATORS`), weights not yet
    initialised (call :func:`cyclegan_dist.models.init_weights`)."""
    if name not in DISCRIMINATORS:
        raise unknown_choice("discriminator", name, DISCRIMINATORS)
    check_norm(norm)
    check_positive(input_nc=input_nc, ndf=ndf)
    if name == "pixel":
        return PixelDiscriminator(input_nc, ndf, norm)
    if name == "basic":
        return NLayerDiscriminator(input_nc, ndf, 3, norm)
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise UserError(f"n_layers must be a positive integer, got {n_layers!r}")
    return NLayerDiscriminator(input_nc, ndf, n_layers, norm)
