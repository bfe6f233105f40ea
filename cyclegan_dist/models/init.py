"""Weight initialisation as the reference ``init_weights`` (junyanz/pytorch-CycleGAN-and-pix2pix).

* Conv / ConvTranspose / Linear weights: ``normal`` N(0, gain), ``xavier`` xavier_normal(gain),
  ``kaiming`` kaiming_normal(a=0, fan_in; the gain is ignored, as in the reference), ``orthogonal``
  orthogonal(gain); their biases 0.
* BatchNorm (any ``_BatchNorm``, so SyncBatchNorm too) weights N(1, gain), biases 0.
* InstanceNorm with ``affine=False`` has nothing to initialise.

With ``generator`` every draw comes from it, in module order, and is made on the generator's device
then copied in: the result depends only on the generator's seed, not on the global RNG nor on the
device or dtype the model already lives on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import init

from cyclegan_dist.models.generators import unknown_choice

INIT_TYPES: tuple[str, ...] = ("normal", "xavier", "kaiming", "orthogonal")

_Draw = Callable[[torch.Tensor, "torch.Generator | None"], None]


def _weight_draw(init_type: str, gain: float) -> _Draw:
    if init_type == "normal":
        return lambda t, g: init.normal_(t, 0.0, gain, generator=g)
    if init_type == "xavier":
        return lambda t, g: init.xavier_normal_(t, gain=gain, generator=g)
    if init_type == "kaiming":
        return lambda t, g: init.kaiming_normal_(t, a=0, mode="fan_in", generator=g)
    return lambda t, g: init.orthogonal_(t, gain=gain, generator=g)


@torch.no_grad()
def _fill(param: torch.Tensor, draw: _Draw, generator: torch.Generator | None) -> None:
    if generator is None:
        draw(param, None)
        return
    scratch = torch.empty(param.shape, dtype=torch.float32, device=generator.device)
    draw(scratch, generator)
    param.copy_(scratch)


def init_weights(
    net: nn.Module,
    init_type: str = "normal",
    init_gain: float = 0.02,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Initialise ``net`` in place as the reference does and return it."""
    if init_type not in INIT_TYPES:
        raise unknown_choice("init_type", init_type, INIT_TYPES)
    weight_draw = _weight_draw(init_type, init_gain)

    def bn_draw(t: torch.Tensor, g: torch.Generator | None) -> None:
        init.normal_(t, 1.0, init_gain, generator=g)

    for module in net.modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            if module.weight is not None:
                _fill(module.weight, weight_draw, generator)
            if module.bias is not None:
                with torch.no_grad():
                    module.bias.zero_()
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.weight is not None:
                _fill(module.weight, bn_draw, generator)
            if module.bias is not None:
                with torch.no_grad():
                    module.bias.zero_()
    return net
