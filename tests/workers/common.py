"""The real training step, built by the loop's own functions, on fixed synthetic batches.

Used in-process by tests/test_precision.py and tests/test_faults.py and, through ``step_worker.py``, in plain and
torchrun subprocesses by tests/test_parity.py. :func:`build_step` calls what ``train/session.py`` calls:
``Runtime`` -> ``build_networks`` (fused Adam, compile, channels_last as configured) -> ``prepare_step`` (prepare,
the guard, the step's parts) -> ``train_step``. What a test needs to see (gradients as the optimizer sees them,
the loss scale at each optimizer step, output dtypes) it captures with hooks, never by replacing a part. Only the
data differs from the loop: each step's global batch is a pure function of (data_seed, step), and rank r of W
takes rows [r*b, (r+1)*b) of it (b = global_batch / W), so any world size sees the same samples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from itertools import pairwise

import torch
from torch import nn

from cyclegan_dist.config import Config, load_config
from cyclegan_dist.train.build import build_networks
from cyclegan_dist.train.runtime import Runtime
from cyclegan_dist.train.step import PreparedStep, prepare_step

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


def new_runtime(config: Config) -> Runtime:
    """A Runtime in a test process that may already have made one: Accelerate keeps one process-wide state, which a
    single process may reset (a rank of a process group keeps it)."""
    from accelerate.state import AcceleratorState

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state(True)
    return Runtime(config.train)


@dataclass
class Built:
    """One rank's step as the loop builds it (``prepare_step``), on inputs moved to its device."""

    rt: Runtime
    prepared: PreparedStep

    @property
    def gens(self) -> nn.Module:  # the unwrapped pairs
        return self.prepared.gens_plain

    @property
    def discs(self) -> nn.Module:
        return self.prepared.discs_plain

    @property
    def opt_G(self) -> torch.optim.Optimizer:  # the optimizers the guard steps
        return self.prepared.parts.opt_G

    @property
    def opt_D(self) -> torch.optim.Optimizer:
        return self.prepared.parts.opt_D

    @property
    def guard(self):
        return self.prepared.guard

    def step(self, A: torch.Tensor, B: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.prepared(A.to(self.rt.device), B.to(self.rt.device))


def build_step(config: Config, rt: Runtime | None = None, perturb: float = 0.0) -> Built:
    """What ``Session.__init__`` builds for the step, in the same order (fresh run, no resume)."""
    rt = rt if rt is not None else new_runtime(config)
    nets = build_networks(config.model, config.train, pool_size=config.loss.pool_size, seed=config.seed,
                          rank=rt.rank, world=rt.world, device_type=rt.device.type)
    if perturb:
        perturb_((nets.gens, nets.discs), perturb)
    return Built(rt, prepare_step(rt, config, nets))


def capture_grads(optimizer: torch.optim.Optimizer, module: nn.Module, into: list) -> None:
    """Append, at each ``optimizer.step()``, the gradients it is about to apply (a step pre-hook: after DDP's
    averaging and fp16's unscaling)."""
    def hook(_opt, _args, _kwargs):
        into.append({n: p.grad.detach().clone().cpu() for n, p in module.named_parameters() if p.grad is not None})
    optimizer.register_step_pre_hook(hook)


def train_k_steps(config: Config, steps: int, global_size: int, data_seed: int = 1, rank1_data_seed: int | None = None,
                  rt: Runtime | None = None, perturb: float = 0.0) -> Run:
    """``steps`` real training steps; ``rank1_data_seed`` feeds rank 1 other data (the negative control);
    ``perturb`` starts from weights perturbed by that relative amount (see :func:`perturb_`)."""
    built = build_step(config, rt, perturb)
    world, rank = built.rt.world, built.rt.rank
    assert global_size % world == 0, (global_size, world)
    b = global_size // world
    run = Run(world_size=world, rank=rank)
    built.gens.G_A.register_forward_hook(lambda _m, _i, out: run.g_output_dtypes.add(out.dtype))
    capture_grads(built.opt_G, built.gens, run.grads_G)
    capture_grads(built.opt_D, built.discs, run.grads_D)
    for step in range(steps):
        seed = rank1_data_seed if (rank == 1 and rank1_data_seed is not None) else data_seed
        A, B = global_batch(step, global_size, seed, config.data.crop_size)
        losses = built.step(A[rank * b:(rank + 1) * b], B[rank * b:(rank + 1) * b])
        run.losses.append({k: float(v) for k, v in losses.items()})
    run.generators = {k: v.detach().clone().cpu() for k, v in built.gens.state_dict().items()}
    run.discriminators = {k: v.detach().clone().cpu() for k, v in built.discs.state_dict().items()}
    return run
