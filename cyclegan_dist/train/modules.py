"""The two generators and the two discriminators as one module each, so that one training step makes one
forward call per wrapped module (what DDP and DeepSpeed expect), while each network keeps the reference
``state_dict`` layout under its own attribute (``G_A``, ``G_B``, ``D_A``, ``D_B``).

Naming follows the reference: G_A maps domain A (photos) to B (paintings), G_B maps B to A; D_A judges
images of domain B (real B vs G_A's fakes), D_B judges domain A.
"""

from __future__ import annotations

import torch
from torch import nn

from cyclegan_dist.config import ModelConfig
from cyclegan_dist.models import build_discriminator, build_generator, init_weights


class GeneratorPair(nn.Module):
    def __init__(self, G_A: nn.Module, G_B: nn.Module) -> None:
        super().__init__()
        self.G_A = G_A
        self.G_B = G_B

    def forward(self, real_A: torch.Tensor, real_B: torch.Tensor, identity: bool = True) -> dict[str, torch.Tensor]:
        fake_B = self.G_A(real_A)
        rec_A = self.G_B(fake_B)
        fake_A = self.G_B(real_B)
        rec_B = self.G_A(fake_A)
        out = {"fake_B": fake_B, "rec_A": rec_A, "fake_A": fake_A, "rec_B": rec_B}
        if identity:
            out["idt_A"] = self.G_A(real_B)  # G_A should leave images already in domain B unchanged
            out["idt_B"] = self.G_B(real_A)
        return out


class DiscriminatorPair(nn.Module):
    def __init__(self, D_A: nn.Module, D_B: nn.Module) -> None:
        super().__init__()
        self.D_A = D_A
        self.D_B = D_B

    def forward(
        self, real_B: torch.Tensor, fake_B: torch.Tensor, real_A: torch.Tensor, fake_A: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {
            "D_A_real": self.D_A(real_B),
            "D_A_fake": self.D_A(fake_B),
            "D_B_real": self.D_B(real_A),
            "D_B_fake": self.D_B(fake_A),
        }


def build_pairs(model: ModelConfig, seed: int) -> tuple[GeneratorPair, DiscriminatorPair]:
    """Build and initialise all four networks from one seed, identically on every rank."""
    init_rng = torch.Generator().manual_seed(seed)

    def gen(in_nc: int, out_nc: int) -> nn.Module:
        net = build_generator(model.generator, in_nc, out_nc, model.ngf, model.norm, model.use_dropout)
        return init_weights(net, model.init_type, model.init_gain, generator=init_rng)

    def disc(channels: int) -> nn.Module:
        net = build_discriminator(model.discriminator, channels, model.ndf, model.n_layers_d, model.norm)
        return init_weights(net, model.init_type, model.init_gain, generator=init_rng)

    G_A, G_B = gen(model.input_nc, model.output_nc), gen(model.output_nc, model.input_nc)
    return GeneratorPair(G_A, G_B), DiscriminatorPair(disc(model.output_nc), disc(model.input_nc))
