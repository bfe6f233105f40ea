"""Generators with the exact module layout of junyanz/pytorch-CycleGAN-and-pix2pix.

``state_dict`` keys and shapes match the reference ``ResnetGenerator`` and ``UnetGenerator``
(``model.N...``, ``model.10.conv_block.1.weight``, ``model.model.1.model.3...``), so the reference
pretrained ``latest_net_G.pth`` files load with ``load_state_dict(strict=True)``.

Normalisation, as the reference ``get_norm_layer``:

* ``instance``: ``InstanceNorm2d(affine=False, track_running_stats=False)`` (no parameters, no buffers);
* ``batch``: ``BatchNorm2d(affine=True, track_running_stats=True)``;
* ``none``: ``nn.Identity`` in the same slot, so the indices in the ``Sequential`` do not move.

Convolutions followed by a norm carry a bias only with ``instance`` (the reference ``use_bias``); note
that this makes them bias-free with ``none`` too, exactly as in the reference.

The models know nothing of devices, distribution or precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cyclegan_dist.errors import UserError

NORMS: tuple[str, ...] = ("instance", "batch", "none")

GENERATORS: tuple[str, ...] = (
    "resnet_9blocks",
    "resnet_6blocks",
    "unet_256",
    "unet_128",
    "unet_64",
    "unet_32",
)

NormFactory = Callable[[int], nn.Module]

_LEGACY_INSTANCE_NORM_KEYS = ("running_mean", "running_var", "num_batches_tracked")


class _ContiguousGrad(torch.autograd.Function):
    """Identity forward; makes the incoming gradient contiguous in backward.

    torch 2.14's CPU ``instance_norm`` backward is wrong when the gradient arriving at its output is
    channels_last and the batch holds one image (the reference default): ~100% gradient error. Feeding it a
    contiguous gradient is exact. Used only on the CPU with a channels_last input (it costs one copy).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()  # not a view: the next layer's ReLU works in place

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class InstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` that ignores running-statistics entries when it does not track them.

    Checkpoints written by the reference code before it switched to ``track_running_stats=False``
    (and by PyTorch < 0.4) hold ``running_mean`` / ``running_var`` / ``num_batches_tracked`` for every
    InstanceNorm. The reference drops them on load (``BaseModel.__patch_instance_norm_state_dict``);
    this does the same here, so such files load with ``strict=True``. The entries are meaningless
    for a layer that always normalises with the statistics of its input.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if x.device.type == "cpu" and x.requires_grad and not x.is_contiguous():
            y = _ContiguousGrad.apply(y)
        return y

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        if not self.track_running_stats:
            for name in _LEGACY_INSTANCE_NORM_KEYS:
                state_dict.pop(prefix + name, None)  # a private copy made by load_state_dict
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def unknown_choice(kind: str, value: object, valid: tuple[str, ...]) -> UserError:
    return UserError(f"unknown {kind} {value!r}; valid values: {', '.join(valid)}")


def check_norm(norm: str) -> str:
    """Return ``norm`` if it is one of :data:`NORMS`, else raise :class:`UserError`."""
    if norm not in NORMS:
        raise unknown_choice("norm", norm, NORMS)
    return norm


def norm_factory(norm: str) -> NormFactory:
    """The reference ``get_norm_layer``: a callable ``num_features -> nn.Module``."""
    check_norm(norm)
    if norm == "instance":
        return lambda c: InstanceNorm2d(c, affine=False, track_running_stats=False)
    if norm == "batch":
        return lambda c: nn.BatchNorm2d(c, affine=True, track_running_stats=True)
    return lambda c: nn.Identity()


def conv_bias(norm: str) -> bool:
    """The reference ``use_bias``: convolutions followed by a norm have a bias only with InstanceNorm."""
    return check_norm(norm) == "instance"


def check_positive(**values: int) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{key} must be a positive integer, got {value!r}")


# --------------------------------------------------------------------------------------------- ResNet


class ResnetBlock(nn.Module):
    """``x + conv_block(x)``; ``conv_block`` = pad, conv3, norm, ReLU, [Dropout(0.5)], pad, conv3, norm."""

    def __init__(self, dim: int, norm_layer: NormFactory, use_dropout: bool, use_bias: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=use_bias),
            norm_layer(dim),
            nn.ReLU(True),
        ]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=use_bias),
            norm_layer(dim),
        ]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """c7s1-ngf, two stride-2 downsamplings, ``n_blocks`` residual blocks, two transposed-conv
    upsamplings, c7s1-output_nc, Tanh. Output size equals input size when both sides are multiples of 4.
    """

    n_downsampling = 2

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 64,
        norm: str = "instance",
        use_dropout: bool = False,
        n_blocks: int = 9,
    ) -> None:
        super().__init__()
        norm_layer, use_bias = norm_factory(norm), conv_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=use_bias),
            norm_layer(ngf),
            nn.ReLU(True),
        ]
        for i in range(self.n_downsampling):
            c = ngf * 2**i
            layers += [
                nn.Conv2d(c, c * 2, kernel_size=3, stride=2, padding=1, bias=use_bias),
                norm_layer(c * 2),
                nn.ReLU(True),
            ]
        width = ngf * 2**self.n_downsampling
        layers += [ResnetBlock(width, norm_layer, use_dropout, use_bias) for _ in range(n_blocks)]
        for i in range(self.n_downsampling):
            c = ngf * 2 ** (self.n_downsampling - i)
            layers += [
                nn.ConvTranspose2d(c, c // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=use_bias),
                norm_layer(c // 2),
                nn.ReLU(True),
            ]
        layers += [
            nn.ReflectionPad2d(3),
            nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0),  # always biased, as the reference
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# ---------------------------------------------------------------------------------------------- U-Net


class UnetSkipConnectionBlock(nn.Module):
    """One level of the U-Net: ``x -> [x, up(sub(down(x)))]`` (the outermost level returns no skip).

    ``self.model`` layouts (indices are what the reference keys rely on):

    * outermost: ``[downconv, submodule, ReLU, upconv, Tanh]``
    * middle:    ``[LeakyReLU, downconv, downnorm, submodule, ReLU, upconv, upnorm, (Dropout)]``
    * innermost: ``[LeakyReLU, downconv, ReLU, upconv, upnorm]``
    """

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        norm: str,
        input_nc: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        norm_layer, use_bias = norm_factory(norm), conv_bias(norm)
        self.outermost = outermost
        in_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(in_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        up_in = inner_nc if innermost else inner_nc * 2  # the sub-level returns [x, y]: twice the width

        layers: list[nn.Module]
        if outermost:
            assert submodule is not None
            upconv = nn.ConvTranspose2d(up_in, outer_nc, kernel_size=4, stride=2, padding=1)
            layers = [downconv, submodule, nn.ReLU(True), upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(up_in, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            layers = [nn.LeakyReLU(0.2, True), downconv, nn.ReLU(True), upconv, norm_layer(outer_nc)]
        else:
            assert submodule is not None
            upconv = nn.ConvTranspose2d(up_in, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            layers = [
                nn.LeakyReLU(0.2, True),
                downconv,
                norm_layer(inner_nc),
                submodule,
                nn.ReLU(True),
                upconv,
                norm_layer(outer_nc),
            ]
            if use_dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:  # fixed at construction: no data-dependent control flow
            return self.model(x)
        # The leading LeakyReLU is in-place, as in the reference, so it rewrites ``x`` too: the skip half
        # of the concatenation carries the *activated* features. The reference's pretrained weights
        # expect exactly that, so the in-place flag is part of the architecture; ``x`` is always a
        # tensor the parent level produced, never the caller's input.
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """The reference U-Net: ``num_downs`` stride-2 levels; an input of 2**num_downs pixels reaches 1x1.

    Width ngf, 2ngf, 4ngf, then 8ngf for the remaining ``num_downs - 4`` levels; dropout (if asked for)
    only in the ``num_downs - 5`` middle 8ngf levels. Spatial sides must be multiples of 2**num_downs.
    """

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        num_downs: int = 8,
        ngf: int = 64,
        norm: str = "instance",
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        if num_downs < 5:
            raise UserError(f"a U-Net needs num_downs >= 5, got {num_downs}")
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, norm, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, norm, submodule=block, use_dropout=use_dropout)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, norm, submodule=block)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, norm, submodule=block)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, norm, submodule=block)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, norm, input_nc=input_nc, submodule=block, outermost=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# -------------------------------------------------------------------------------------------- factory


def build_generator(
    name: str,
    input_nc: int = 3,
    output_nc: int = 3,
    ngf: int = 64,
    norm: str = "instance",
    use_dropout: bool = False,
) -> nn.Module:
    """Build a generator by its reference name (see :data:`GENERATORS`), weights not yet initialised
    (call :func:`cyclegan_dist.models.init_weights`)."""
    if name not in GENERATORS:
        raise unknown_choice("generator", name, GENERATORS)
    check_norm(norm)
    check_positive(input_nc=input_nc, output_nc=output_nc, ngf=ngf)
    kind, _, size = name.partition("_")
    if kind == "resnet":
        n_blocks = int(size.removesuffix("blocks"))
        return ResnetGenerator(input_nc, output_nc, ngf, norm, use_dropout, n_blocks=n_blocks)
    num_downs = int(math.log2(int(size)))
    return UnetGenerator(input_nc, output_nc, num_downs, ngf, norm, use_dropout)


def count_parameters(net: nn.Module) -> int:
    """Number of parameter elements (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in net.parameters())
