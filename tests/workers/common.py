"""The real training step, wired exactly as ``cyclegan_dist.train.loop`` wires it, on fixed synthetic batches.

Used in-process by tests/test_precision.py and, through ``step_worker.py``, in plain and torchrun subprocesses by
tests/test_parity.py. ``Runtime`` (its Accelerator) -> ``build_pairs`` -> Adam x2 -> ``accelerator.prepare`` ->
``StepParts(backward=accelerator.backward, autocast=accelerator.autocast)`` -> ``train_step``; only the data
differs from the loop: each step's global batch is a pure function of (data_seed, step), and rank r of W takes
rows [r*b, (r+1)*b) of it (b = global_batch / W), so any world size sees the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import torch
from torch import nn

from cyclegan_dist.config import Config, load_config
from cyclegan_dist.image_pool import ImagePool
from cyclegan_dist.train.modules import build_pairs
from cyclegan_dist.train.runtime import Runtime
from cyclegan_dist.train.schedule import scaled_lr
from cyclegan_dist.train.step import StepParts, train_step

# Tiny and deterministic: no pool (its random swaps are per rank), no dropout (the default), 32x32 images.
TINY = ("model.generator=resnet_6blocks", "model.ngf=8", "model.ndf=8", "loss.pool_size=0", "model.use_dropout=false",
        "data.crop_size=32")


def tiny_config(*overrides: str) -> Config:
    return load_config("smoke", [*TINY, *overrides])


def global_batch(step: int, size: int, data_seed: int, crop: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole (all ranks) batch of ``step``: smooth-ish images in [-1, 1], a pure function of (seed, step)."""
    g = torch.Generator().manual_seed(data_seed * 100_003 + step)
    low = torch.rand(2, size, 3, crop // 4, crop // 4, generator=g) * 2 - 1
    up = torch.nn.functional.interpolate(low.flatten(0, 1), size=(crop, crop), mode="bilinear", align_corners=False)
    noise = (torch.rand(2, size, 3, crop, crop, generator=g) * 2 - 1) * 0.1
    images = (up.view(2, size, 3, crop, crop) + noise).clamp(-1, 1)
    return images[0].contiguous(), images[1].contiguous()


def dead_biases(module: nn.Module) -> set[str]:
    """Names of conv biases that feed an ``InstanceNorm2d(affine=False)``: mathematically without effect.

    The reference keeps them (``use_bias`` with instance norm). Their true gradient is exactly 0, so the computed
    one is rounding noise (~1e-7 of the gradient scale, its sign set by summation order) and Adam's first steps,
    ``lr * g / (|g| + 1e-8)``, turn that noise into full +-lr moves: two runs that differ only in float rounding
    move these biases in unrelated directions. They change nothing the network computes, so weight comparisons
    leave them out.
    """
    names = set()
    for prefix, seq in module.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (name, conv), (_, norm) in pairwise(children):
            if (isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and conv.bias is not None
                    and isinstance(norm, nn.InstanceNorm2d) and not norm.affine):
                names.add(f"{prefix}.{name}.bias" if prefix else f"{name}.bias")
    return names


def relative_distance(weights: dict, reference: dict, start: dict, skip: set[str] = frozenset()) -> float:
    """``||weights - reference|| / ||reference - start||`` over all tensors but ``skip``: how far two runs ended
    apart, relative to how far training moved the weights (two independent updates of equal size give ~1-1.4)."""
    keys = sorted(k for k in reference if k not in skip)
    assert keys and set(keys) <= set(weights) and set(keys) <= set(start)

    def flat(d: dict) -> torch.Tensor:
        return torch.cat([d[k].detach().float().flatten().cpu() for k in keys])

    return float((flat(weights) - flat(reference)).norm() / (flat(reference) - flat(start)).norm())


@dataclass
class Run:
    """What a run of ``train_k_steps`` returns (plain tensors and floats, on the CPU)."""

    world_size: int
    rank: int
    losses: list[dict[str, float]] = field(default_factory=list)
    grads_G: list[dict[str, torch.Tensor]] = field(default_factory=list)  # per step, as the optimizer sees them
    grads_D: list[dict[str, torch.Tensor]] = field(default_factory=list)  # (after backward: DDP-averaged)
    generators: dict[str, torch.Tensor] = field(default_factory=dict)  # weights after the last step
    discriminators: dict[str, torch.Tensor] = field(default_factory=dict)
    g_output_dtypes: set = field(default_factory=set)  # dtype of G_A's output inside the step


def perturb_(modules, relative: float, seed: int = 1234) -> None:
    """Multiply every weight by (1 +- ``relative``), the sign drawn per element from ``seed``: an fp32 network that
    differs from the original by a rounding of that size (bf16's unit roundoff is 2^-8)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.mul_(1 + relative * (torch.randint(0, 2, p.shape, generator=g).float() * 2 - 1))


def train_k_steps(config: Config, steps: int, global_size: int, data_seed: int = 1, rank1_data_seed: int | None = None,
                  accelerator=None, perturb: float = 0.0) -> Run:
    """``steps`` real training steps; ``rank1_data_seed`` feeds rank 1 other data (the negative control);
    ``perturb`` starts from weights perturbed by that relative amount (see :func:`perturb_`)."""
    accelerator = accelerator if accelerator is not None else Runtime(config.train).acc_G
    world, rank = accelerator.num_processes, accelerator.process_index
    assert global_size % world == 0, (global_size, world)
    b = global_size // world
    t = config.train
    gens, discs = build_pairs(config.model, config.seed)
    if perturb:
        perturb_((gens, discs), perturb)
    lr = scaled_lr(t.lr, t.lr_scaling, world)
    opt_G = torch.optim.Adam(gens.parameters(), lr=lr, betas=(t.beta1, t.beta2))
    opt_D = torch.optim.Adam(discs.parameters(), lr=lr, betas=(t.beta1, t.beta2))
    gens, discs, opt_G, opt_D = accelerator.prepare(gens, discs, opt_G, opt_D)
    gens_plain, discs_plain = accelerator.unwrap_model(gens), accelerator.unwrap_model(discs)
    run = Run(world_size=world, rank=rank)
    gens_plain.G_A.register_forward_hook(lambda _m, _i, out: run.g_output_dtypes.add(out.dtype))

    def capture(module, into):
        into.append({n: p.grad.detach().clone().cpu() for n, p in module.named_parameters() if p.grad is not None})

    def step_G():
        capture(gens_plain, run.grads_G)
        opt_G.step()
        opt_G.zero_grad(set_to_none=True)

    def step_D():
        capture(discs_plain, run.grads_D)
        opt_D.step()
        opt_D.zero_grad(set_to_none=True)

    parts = StepParts(gens, discs, discs_plain, opt_G, opt_D, ImagePool(0), ImagePool(0), config.loss,
                      backward=accelerator.backward, autocast=accelerator.autocast, step_G=step_G, step_D=step_D)
    for step in range(steps):
        seed = rank1_data_seed if (rank == 1 and rank1_data_seed is not None) else data_seed
        A, B = global_batch(step, global_size, seed, config.data.crop_size)
        A, B = A[rank * b:(rank + 1) * b].to(accelerator.device), B[rank * b:(rank + 1) * b].to(accelerator.device)
        losses = train_step(parts, A, B)
        run.losses.append({k: float(v) for k, v in losses.items()})
    run.generators = {k: v.detach().clone().cpu() for k, v in gens_plain.state_dict().items()}
    run.discriminators = {k: v.detach().clone().cpu() for k, v in discs_plain.state_dict().items()}
    return run
