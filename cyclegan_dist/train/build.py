"""What every rank builds before ``prepare``: the networks (initialised, optionally pretrained, laid out and
compiled as configured), their optimizers and this rank's image pools. Shared by the loop and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cyclegan_dist.config import ModelConfig, TrainConfig
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
