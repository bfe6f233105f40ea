"""What every rank builds before ``accelerator.prepare``: networks (initialised, optionally pretrained, laid out
and compiled as configured), their optimizers and this rank's image pools. Shared by the loop and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cyclegan_dist.config import Config
from cyclegan_dist.image_pool import ImagePool
from cyclegan_dist.train.modules import DiscriminatorPair, GeneratorPair, build_pairs
from cyclegan_dist.train.schedule import scaled_lr


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


def build_networks(config: Config, rank: int, world: int) -> Networks:
    t = config.train
    gens, discs = build_pairs(config.model, config.seed)
    if config.model.init_from:  # start from pretrained generators (junyanz .pth files), e.g. for fine-tuning
        from cyclegan_dist.eval.generator_io import load_junyanz_pair, load_weights

        for name, weights in load_junyanz_pair(config.model.init_from).items():
            load_weights(getattr(gens, name), weights, where=config.model.init_from)
    memory = torch.channels_last if t.channels_last else torch.contiguous_format
    gens.to(memory_format=memory)
    discs.to(memory_format=memory)
    if t.compile:
        for net in (gens.G_A, gens.G_B, discs.D_A, discs.D_B):
            net.compile()
    base_lr = scaled_lr(t.lr, t.lr_scaling, world)
    opt_G = torch.optim.Adam(gens.parameters(), lr=base_lr, betas=(t.beta1, t.beta2))
    opt_D = torch.optim.Adam(discs.parameters(), lr=base_lr, betas=(t.beta1, t.beta2))
    pool_A = ImagePool(config.loss.pool_size, seed=config.seed * 1000 + 2 * rank)
    pool_B = ImagePool(config.loss.pool_size, seed=config.seed * 1000 + 2 * rank + 1)
    return Networks(gens, discs, opt_G, opt_D, pool_A, pool_B, base_lr, memory)
