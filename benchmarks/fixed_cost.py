"""``python -m benchmarks.fixed_cost``: what the training loop costs per step on its own, in microseconds.

A step of CycleGAN networks so small that their compute is negligible (each generator a 1x1 convolution and a
tanh, each discriminator a 1x1 convolution: ~150 ops per step), so what is left to time is the loop: the real
``cyclegan_dist.train.loop.train`` (Accelerate's prepare, autocast, the non-finite guard, the LR schedule, loss
accumulation, logging to metrics.jsonl every ``--log-every`` steps, stop checks) against ``bare-step``, our
``train_step`` called with plain parts (no Accelerate, no guard, no loop) on the same networks. Goal: <= 100 us
per step, so that the loop stays within 2% of a 5 ms GPU step.

On the CPU (``lockstep``, see ``benchmarks/overhead.py``) the bare step runs on *ours'* own networks, optimizers
and pools, just after each of our steps; the figure is the median of the per-step differences over the steps
that do not log, plus each logging event's excess spread over the window. On a GPU (``runs``) whole runs are
interleaved, bare-step with its own copy of the networks.

The one part of the loop's cost that grows with the model is the guard (one pass over every gradient); it is
timed on its own for the real generators and discriminators of ``--guard-models`` and reported beside.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import (
    Report,
    add_common_args,
    apply_threads,
    command_string,
    interleaved,
    median,
    parse_with_quick,
    sync,
)
from benchmarks.overhead import StepClock, bench_config, run_bare, run_lockstep, run_ours

GOAL_US = 100.0
HEADERS = ["arm", "us/step", "range", "beyond bare-step"]


def tiny_pairs(model_config, seed: int):
    """Generators and discriminators of one 1x1 convolution each (what ``build_pairs`` returns, in miniature)."""
    from cyclegan_dist.train.build import DiscriminatorPair, GeneratorPair

    torch.manual_seed(seed)

    def generator():
        return nn.Sequential(nn.Conv2d(3, 3, 1), nn.Tanh())

    return GeneratorPair(generator(), generator()), DiscriminatorPair(nn.Conv2d(3, 1, 1), nn.Conv2d(3, 1, 1))


@contextmanager
def tiny_networks():
    """The loop and the bare arm (both through ``train/build.py``) build tiny pairs."""
    import cyclegan_dist.train.build as build

    saved = build.build_pairs
    build.build_pairs = tiny_pairs
    try:
        yield
    finally:
        build.build_pairs = saved


def logging_steps(start: int, end: int, log_every: int) -> list[bool]:
    """For each timed iteration of ours (start .. end-1): does it end with a logging event?"""
    return [(i + 1) % log_every == 0 for i in range(start, end)]


def paired_cost(ours: list[float], bare: list[float], logs: list[bool]) -> tuple[float, float]:
    """What ours costs beyond ``bare``, from per-step differences of adjacent steps (lockstep): (a typical step:
    their median over the steps that do not log, robust to the bursts of load that hit single steps on a shared
    machine; a logging event: the logging steps' mean excess over that). Seconds."""
    d = [a - b for a, b in zip(ours, bare)]
    typical = median([x for x, log in zip(d, logs) if not log])
    logging = [x - typical for x, log in zip(d, logs) if log]
    return typical, sum(logging) / max(len(logging), 1)


def guard_cost(models: list[str], device, reps: int) -> list[dict]:
    """The non-finite guard's time per training step (its G and D checks) on real networks' parameters, with
    random gradients: the part of the loop's cost that grows with the model."""
    from cyclegan_dist.config import load_config
    from cyclegan_dist.train.build import build_pairs
    from cyclegan_dist.train.guard import nonfinite

    rows = []
    for name in models:
        gens, discs = build_pairs(load_config("base", [f"model.generator={name}"]).model, 0)
        opts = {}
        for key, module in (("G", gens), ("D", discs)):
            module.to(device)
            for p in module.parameters():
                p.grad = torch.randn_like(p)
            opts[key] = torch.optim.Adam(module.parameters())

        def both():
            nonfinite(opts["G"])
            nonfinite(opts["D"])

        both()
        times = []
        for _ in range(reps):
            sync(device)
            start = time.perf_counter()
            for _ in range(10):
                both()
            sync(device)
            times.append((time.perf_counter() - start) / 10)
        tensors = sum(1 for m in (gens, discs) for _ in m.parameters())
        values = sum(p.numel() for m in (gens, discs) for p in m.parameters())
        rows.append({"model": name, "tensors": tensors, "parameters": values, "us": 1e6 * median(times)})
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fixed_cost", description=__doc__.splitlines()[0])
    add_common_args(p, size=8, batch="1", reps=5)
    p.add_argument("--warmup-steps", type=int, default=20, help="untimed steps at the start of every run (default 20)")
    p.add_argument("--window", type=int, default=1000,
                   help="timed steps per run, a multiple of --log-every (default 1000)")
    p.add_argument("--log-every", type=int, default=100, help="train.log_every (default 100)")
    p.add_argument("--wandb", default="disabled", choices=("disabled", "offline"),
                   help="W&B mode for ours (default disabled)")
    p.add_argument("--mode", default="auto", choices=("auto", "lockstep", "runs"),
                   help="auto: runs on CUDA, lockstep on CPU (see benchmarks/overhead.py)")
    p.add_argument("--guard-models", default="resnet_9blocks,unet_256",
                   help="generators whose real parameter lists the guard is timed on ('' for none)")
    args = parse_with_quick(p, argv, {"window": 20, "log_every": 10, "warmup_steps": 3, "reps": 2,
                                      "guard_models": "unet_32"})
    if args.precision != ["fp32"] or len(args.batch) != 1:
        raise SystemExit("error: the fixed cost is measured in fp32 with one --batch")
    if args.window % args.log_every:
        raise SystemExit(f"error: --window ({args.window}) must be a multiple of --log-every ({args.log_every})")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start, end = args.warmup_steps, args.warmup_steps + args.window
    steps = end + 1
    settings = argparse.Namespace(config="smoke", log_every=args.log_every, batch=args.batch, wandb=args.wandb,
                                  size=args.size, load_size=args.size, ngf=None, workers=0,
                                  overrides=["loss.pool_size=0", "model.generator=resnet_6blocks",  # replaced by
                                             "model.discriminator=pixel"])  # tiny_pairs; valid at 8 px
    config = bench_config(settings, steps)
    mode = args.mode if args.mode != "auto" else ("runs" if device.type == "cuda" else "lockstep")
    scratch = Path(tempfile.mkdtemp(prefix="cyclegan-fixed-cost-"))
    logs = logging_steps(start, end, args.log_every)
    times: dict[str, list[float]] = {"ours": [], "bare-step": []}
    fixed, typical, per_event = [], [], []
    try:
        with tiny_networks():
            if mode == "runs":
                times = interleaved({
                    "ours": lambda: run_ours(config, StepClock(device, start, end), scratch),
                    "bare-step": lambda: run_bare(config, "bare-step", StepClock(device, start, end), steps, device),
                }, args.reps)
                fixed = [1e6 * (a - b) for a, b in zip(times["ours"], times["bare-step"])]
            else:
                for _ in range(args.reps):
                    per_step = run_lockstep(config, ["bare-step"], start, end, device, scratch)
                    for name, values in per_step.items():
                        times[name].append(sum(values) / len(values))
                    step_cost, log_cost = paired_cost(per_step["ours"], per_step["bare-step"], logs)
                    typical.append(1e6 * step_cost)
                    per_event.append(1e3 * log_cost)
                    fixed.append(1e6 * step_cost + 1e6 * log_cost * sum(logs) / len(logs))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    guard_rows = guard_cost([m for m in args.guard_models.split(",") if m], device, max(args.reps, 3))

    report = Report("fixed-cost", "Loop fixed cost per step: our training loop vs the bare step on the same tiny "
                    f"networks (1x1 convolutions, {args.size}px, batch {args.batch[0]})",
                    command_string("benchmarks.fixed_cost"), HEADERS)
    for name, values in times.items():
        us = [1e6 * v for v in values]
        report.rows.append({"arm": name, "us/step": f"{median(us):.0f}", "range": f"{min(us):.0f}–{max(us):.0f}",
                            "beyond bare-step": f"{median(fixed):+.0f} us" if name == "ours" else "",
                            "per_step_s": values})
    cost = median(fixed)
    report.extra.update(fixed_cost_us=cost, fixed_cost_reps_us=fixed, guard=guard_rows)
    how = ("lockstep: per step, our step minus the bare step run just after it; median over the steps that do "
           "not log, plus each logging event's excess spread over the window" if mode == "lockstep" else
           "runs interleaved: difference of the mean step times")
    notes = [f"mode {mode}: {args.reps} runs of {steps} steps, steps {start}..{end} timed "
             f"({args.window // args.log_every} logging events each); {how}; device {device.type}",
             f"fixed cost: {cost:.0f} us per step (repetitions {', '.join(f'{v:.0f}' for v in fixed)})"]
    if typical:
        notes.append(f"split: a step that does not log {median(typical):.0f} us; a logging event (reduction, "
                     f"metrics.jsonl, progress line) {median(per_event):.2f} ms, i.e. "
                     f"{1e3 * median(per_event) / args.log_every:.0f} us per step at --log-every {args.log_every}")
    for row in guard_rows:
        notes.append(f"the guard on {row['model']}'s generators and discriminators ({row['tensors']} tensors, "
                     f"{row['parameters'] / 1e6:.1f} M values): {row['us']:.0f} us per step on {device.type} (grows "
                     "with the model; the tiny networks' share is inside the figure above)")
    verdict = "MET" if max(fixed) <= GOAL_US else "NOT MET" if min(fixed) > GOAL_US else \
        "NOT RESOLVED: the repetitions straddle the goal"
    notes.append(f"goal loop fixed cost <= {GOAL_US:.0f} us per step: {verdict} ({cost:.0f} us; repetitions "
                 f"{min(fixed):.0f}..{max(fixed):.0f})")
    report.notes += notes
    report.emit(args.json_out, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
