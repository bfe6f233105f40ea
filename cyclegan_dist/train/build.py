"""What every rank builds before ``prepare``: the networks (initialised, optionally pretrained, laid out and
compiled as configured), their optimizers and this rank's image pools. Shared by the loop and the benchmarks.

The two generators and the two discriminators are one module each (:class:`GeneratorPair`,
:class:`DiscriminatorPair`), so that one training step makes one forward call per wrapped module (what DDP and
DeepSpeed expect), while each network keeps the reference ``state_dict`` layout under its own attribute (``G_A``,
``G_B``, ``D_A``, ``D_B``). Naming follows the reference: G_A maps domain A (photos) to B (paintings), G_B maps B
to A; D_A judges images of domain B (real B vs G_A's fakes), D_B judges domain A.
"""


from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cyclegan_dist.config import ModelConfig, TrainConfig
from cyclegan_dist.image_pool import ImagePool
from cyclegan_dist.models import build_discriminator, build_generator, init_weights
from cyclegan_dist.train.schedule import scaled_lr


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


@dataclass
class Networks:
    gens: GeneratorPair
    discs: DiscriminatorPair
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    pool_A: ImagePool  # fakes of domain A (G_B's output), for D_B
    pool_B: ImagePool  # fakes of domain B (G_A's output), for D_A
    base_lr: float  # train.lr scaled for the world size: the schedule's base
    memory_format: torch.memory_format


def adam(params, train: TrainConfig, lr: float, device_type: str) -> torch.optim.Adam:
    """The reference Adam; fused (one kernel per step, and the non-finite guard's device-side skip) where torch
    has it for ``device_type`` and no DeepSpeed engine wraps it."""
    fused = train.fused_adam and not train.deepspeed and device_type in ("cpu", "cuda")
    return torch.optim.Adam(params, lr=lr, betas=(train.beta1, train.beta2), fused=fused or None)


def build_networks(model: ModelConfig, train: TrainConfig, *, pool_size: int, seed: int, rank: int, world: int,
                   device_type: str = "cpu") -> Networks:
    gens, discs = build_pairs(model, seed)
    if model.init_from:  # start from pretrained generators (junyanz .pth files), e.g. for fine-tuning
        from cyclegan_dist.models.io import load_junyanz_pair, load_weights

        for name, weights in load_junyanz_pair(model.init_from).items():
            load_weights(getattr(gens, name), weights, where=model.init_from)
    memory = torch.channels_last if train.channels_last else torch.contiguous_format
    gens.to(memory_format=memory)
    discs.to(memory_format=memory)
    if train.compile != "no":
        for net in (gens.G_A, gens.G_B, discs.D_A, discs.D_B):
            net.compile(mode=None if train.compile == "default" else train.compile)
    base_lr = scaled_lr(train.lr, train.lr_scaling, world)
    opt_G = adam(gens.parameters(), train, base_lr, device_type)
    opt_D = adam(discs.parameters(), train, base_lr, device_type)
    pool_A = ImagePool(pool_size, seed=seed * 1000 + 2 * rank)
    pool_B = ImagePool(pool_size, seed=seed * 1000 + 2 * rank + 1)
    return Networks(gens, discs, opt_G, opt_D, pool_A, pool_B, base_lr, memory)
