"""CycleGAN networks, ``state_dict``-compatible with junyanz/pytorch-CycleGAN-and-pix2pix.

They know nothing of devices, distribution or precision: build, :func:`init_weights`, then hand them
to the training code.
"""

from cyclegan_dist.models.discriminators import (
    DISCRIMINATORS,
    NLayerDiscriminator,
    PixelDiscriminator,
    build_discriminator,
)
from cyclegan_dist.models.generators import (
    GENERATORS,
    NORMS,
    ResnetBlock,
    ResnetGenerator,
    UnetGenerator,
    UnetSkipConnectionBlock,
    build_generator,
    count_parameters,
)
from cyclegan_dist.models.init import INIT_TYPES, init_weights

__all__ = [
    "DISCRIMINATORS",
    "GENERATORS",
    "INIT_TYPES",
    "NORMS",
    "NLayerDiscriminator",
    "PixelDiscriminator",
    "ResnetBlock",
    "ResnetGenerator",
    "UnetGenerator",
    "UnetSkipConnectionBlock",
    "build_discriminator",
    "build_generator",
    "count_parameters",
    "init_weights",
]
