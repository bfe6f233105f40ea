"""``python -m benchmarks.overhead``: what our training loop costs on top of the bare math, per step.

Three arms, the same config, models, seed and data loader (``setup_data(config).loader``), interleaved:

* ``ours``: the real ``cyclegan_dist.train.loop.train`` (Accelerate, prepare, autocast, LR schedule, loss
  accumulation, logging to metrics.jsonl every ``--log-every`` steps, stop checks) with no checkpoints or samples
  inside the timed window;
* ``bare-ref``: a bare loop of the reference step (``benchmarks.reference_step``: plain Adam steps, no
  Accelerate, no logging): ``batch = next(loader); model.set_input(...); model.optimize_parameters()``;
* ``bare-step``: the same bare loop around our ``train_step`` with plain parts (no Accelerate, no guard; the
  loop's own Adam, fused where torch has it), to split the overhead into "the step" and "the loop". In lockstep
  it steps *ours'* own networks, optimizers and pools (both arms train the same weights in turn): two instances
  of the same model differ in speed by up to ~0.7% on this CPU (where their tensors lie in memory; measured
  A/A, 2026-12-02), which is more than the loop's fixed cost, so only the same instance isolates the loop.

What is timed, honestly: the loop's own per-step time in steady state, from the entry of step ``warmup`` to the
entry of step ``warmup + window`` (a multiple of the logging period, so the window holds exactly
window/log_every logging events). Entries are recorded by a wrapper around ``train.step.train_step`` (the loop itself
is not modified). Start-up (Accelerator, data workers, the demo PSNR evaluation) and the final checkpoint lie
outside the window. Two ways to interleave the arms (``--mode``):

* ``lockstep`` (default on a CPU): one real training run; just after each of its steps one step of every bare
  arm runs (their order rotating), timed on its own; our iteration i is entry(i+1) - entry(i) minus the bare
  steps inside it. The arms alternate every few milliseconds, so load from other processes hits all
  alike (on a shared CPU, whole runs of identical code differ by 2x from one minute to the next);
* ``runs`` (default on a GPU): whole runs, interleaved, with a device synchronisation at the window's edges
  only, so our loop keeps its CPU/GPU overlap (lockstep synchronises around every step).

Overhead = median over repetitions of (ours / bare-ref) - 1; goal <= 3%.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.common import (
    Ratio,
    Report,
    add_common_args,
    apply_threads,
    command_string,
    fmt,
    interleaved,
    median,
    parse_with_quick,
    sync,
)

# imported once: the loop's step is patched during a run (``_train_with``), the bare arms keep the original
from cyclegan_dist.train.step import StepParts, train_step


class StepClock:
    """Wall-clock at the entry of every step; synchronises the device at the window's two edges only."""

    def __init__(self, device, start: int, end: int) -> None:
        self.device, self.start, self.end = device, start, end
        self.entries: list[float] = []

    def tick(self) -> None:
        if len(self.entries) in (self.start, self.end):
            sync(self.device)
        self.entries.append(time.perf_counter())

    def per_step(self) -> float:
        if len(self.entries) <= self.end:
            raise RuntimeError(f"the run made {len(self.entries)} steps, the window needs {self.end + 1}")
        return (self.entries[self.end] - self.entries[self.start]) / (self.end - self.start)


def bench_config(args, steps: int):
    from cyclegan_dist.config import load_config

    overrides = [
        f"train.steps={steps}", f"train.log_every={args.log_every}", "train.checkpoint_every=0", "train.sample_every=0",
        f"train.batch_size={args.batch[0]}", "train.mixed_precision='no'", f"wandb.mode={args.wandb}",
        "eval.every=0", "eval.at_end=false",
    ]
    if args.size:
        overrides += [f"data.crop_size={args.size}", f"data.load_size={args.load_size or args.size}"]
    if args.ngf:
        overrides += [f"model.ngf={args.ngf}", f"model.ndf={args.ngf}"]
    if args.workers is not None:
        overrides.append(f"data.num_workers={args.workers}")
    return load_config(args.config, overrides + list(args.overrides))


def _train_with(config, scratch: Path, step_hook) -> None:
    """The real training loop (unmodified) with ``train_step`` replaced by ``step_hook`` for the run, in a
    throw-away run directory. ``step_hook`` calls the original step itself."""
    import cyclegan_dist.train.loop as loop
    import cyclegan_dist.train.step as step_module

    original = step_module.train_step
    run_dir = Path(tempfile.mkdtemp(prefix="ours-", dir=scratch))
    step_module.train_step = step_hook
    try:
        loop.train(config, run_dir, resume="never")
    finally:
        step_module.train_step = original
        shutil.rmtree(run_dir, ignore_errors=True)


def run_ours(config, clock: StepClock, scratch: Path) -> float:
    import cyclegan_dist.train.step as step_module

    original = step_module.train_step

    def clocked(parts, real_A, real_B):
        clock.tick()
        return original(parts, real_A, real_B)

    _train_with(config, scratch, clocked)
    return clock.per_step()


def device_inputs(batch: dict, device) -> tuple:
    """The loader's uint8 crops as the networks' input on the device, as the loop makes them."""
    from cyclegan_dist.data.transforms import normalize

    return tuple(normalize(batch[d].to(device, non_blocking=True), batch[d + "_flip"]) for d in ("A", "B"))


class BareArm:
    """A bare loop's state: its own data loader (same config and stream) and model; ``one_step`` = one iteration.

    Its stream starts ``offset`` samples in: items of the same distribution as ours', never the very item ours
    read just before (in lockstep the second reader of an item finds its bytes in the CPU caches: measured ~60 us
    per 8 px sample, 2026-12-02)."""

    def __init__(self, config, device: torch.device, make_step: Callable[[torch.device], Callable[[dict], Any]],
                 offset: int = 0):
        from cyclegan_dist.train.data_setup import setup_data

        self.data = setup_data(config.data, seed=config.seed)
        self.step = make_step(device)
        self.loader = iter(self.data.loader(offset, batch_size=config.train.batch_size, rank=0, world=1))

    def one_step(self) -> None:
        self.step(next(self.loader))

    def close(self) -> None:
        self.loader = None  # stops the workers now


def make_ref_step(config):
    from benchmarks.reference_step import build_reference

    def make(device):
        model = build_reference(config, device)

        def step(batch):
            model.set_input(*device_inputs(batch, device))
            model.optimize_parameters()

        return step

    return make


def make_our_bare_step(config):
    from cyclegan_dist.image_pool import ImagePool
    from cyclegan_dist.train.build import adam, build_pairs

    def make(device):
        t = config.train
        gens, discs = build_pairs(config.model, config.seed)
        gens.to(device)
        discs.to(device)
        # the loop's own Adam (fused where torch has it): the same step function as ours, so ours - bare-step
        # is the loop's cost alone
        parts = StepParts(gens, discs, discs, adam(gens.parameters(), t, t.lr, device.type),
                          adam(discs.parameters(), t, t.lr, device.type),
                          ImagePool(config.loss.pool_size, seed=0), ImagePool(config.loss.pool_size, seed=1),
                          config.loss)

        def step(batch):
            train_step(parts, *device_inputs(batch, device))

        return step

    return make


BARE = {"bare-ref": make_ref_step, "bare-step": make_our_bare_step}


def shared_bare_step(parts):
    """Lockstep's bare-step: our ``train_step`` on ours' own modules, optimizers and pools, called plainly."""

    plain = StepParts(parts.generators, parts.discriminators, parts.discriminators_plain,
                      getattr(parts.opt_G, "optimizer", parts.opt_G), getattr(parts.opt_D, "optimizer", parts.opt_D),
                      parts.pool_A, parts.pool_B, parts.loss)

    def make(device):
        return lambda batch: train_step(plain, *device_inputs(batch, device))

    return make


def run_bare(config, name: str, clock: StepClock, steps: int, device) -> float:
    """Mode ``runs``: a whole bare loop on its own."""
    from cyclegan_dist.train.runtime import seed_everything

    seed_everything(config.seed, 0)
    arm = BareArm(config, device, BARE[name](config))
    try:
        for _ in range(steps):
            clock.tick()
            arm.one_step()
    finally:
        arm.close()
    return clock.per_step()


def run_lockstep(config, names: list[str], start: int, end: int, device, scratch: Path) -> dict[str, list[float]]:
    """Mode ``lockstep``: one real training run; just after each of its steps one step of every bare arm runs
    (order rotating), timed on its own. Our iteration i = entry(i+1) - entry(i) -
    the bare steps inside it. Arms alternate every few milliseconds, so bursts of load from other processes hit
    all alike. Returns the per-step times of every arm (seconds)."""
    import cyclegan_dist.train.step as step_module

    offsets = {n: 10**6 * (k + 1) for k, n in enumerate(names)}
    bare = {n: BareArm(config, device, BARE[n](config), offsets[n]) for n in names if n != "bare-step"}
    ours: list[float] = []
    spent: dict[str, list[float]] = {n: [] for n in names}
    state = {"i": 0, "entry": None, "embedded": 0.0}
    original = step_module.train_step

    def clocked(parts, real_A, real_B):
        if "bare-step" in names and "bare-step" not in bare:  # at ours' first step, outside the window
            bare["bare-step"] = BareArm(config, device, shared_bare_step(parts), offsets["bare-step"])
        sync(device)
        now = time.perf_counter()
        i = state["i"]
        if state["entry"] is not None and start < i <= end:
            ours.append(now - state["entry"] - state["embedded"])
        def bare_steps() -> float:
            embedded = 0.0
            for n in names[i % len(names):] + names[: i % len(names)]:
                t0 = time.perf_counter()
                bare[n].one_step()
                sync(device)
                dt = time.perf_counter() - t0
                embedded += dt
                if start <= i < end:
                    spent[n].append(dt)
            return embedded

        # the bare steps run just after ours, so that each arm's loading follows a step and each arm's step
        # follows its own loading (run before ours, a bare arm's loading would follow ours' and find the decoder
        # warm in the CPU caches: ~0.1-0.25 ms per 8 px batch, measured 2026-12-02)
        out = original(parts, real_A, real_B)
        state.update(i=i + 1, entry=now, embedded=bare_steps())
        return out

    try:
        _train_with(config, scratch, clocked)
    finally:
        for arm in bare.values():
            arm.close()
    if len(ours) != end - start:
        raise RuntimeError(f"timed {len(ours)} of our steps, expected {end - start}")
    return {"ours": ours, **spent}


HEADERS = ["arm", "ms/step", "img/s", "vs bare-ref", "range", "overhead"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.splitlines()[0])
    add_common_args(p, size=0, batch="4", reps=5)
    p.add_argument("--config", default="smoke", help="experiment name or YAML (default: smoke, the tiny CPU config)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="more config overrides (e.g. data.demo_size=64)")
    p.add_argument("--load-size", type=int, default=None, help="data.load_size (default: --size)")
    p.add_argument("--ngf", type=int, default=None, help="model.ngf = model.ndf (default: the config's)")
    p.add_argument("--workers", type=int, default=None, help="data.num_workers (default: the config's)")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps at the start of every run (default 5)")
    p.add_argument("--window", type=int, default=40, help="timed steps per run, a multiple of --log-every (default 40)")
    p.add_argument("--log-every", type=int, default=10, help="train.log_every (default 10)")
    p.add_argument("--wandb", default="disabled", choices=("disabled", "offline"),
                   help="W&B mode for ours (default disabled)")
    p.add_argument("--no-bare-step", action="store_true", help="skip the bare-step arm (2 arms instead of 3)")
    p.add_argument("--mode", default="auto", choices=("auto", "lockstep", "runs"),
                   help="lockstep: the bare steps run inside our run, alternating step by step (robust to load from "
                        "other processes; each step is synchronised); runs: whole runs interleaved (keeps our "
                        "loop's CPU/GPU overlap). auto: runs on CUDA, lockstep on CPU")
    args = parse_with_quick(p, argv, {"ngf": 4, "window": 8, "log_every": 4, "warmup_steps": 2, "reps": 2})
    if args.precision != ["fp32"]:
        raise SystemExit("error: the overhead benchmark compares fp32 loops (the reference has no mixed precision)")
    if args.window % args.log_every:
        raise SystemExit(f"error: --window ({args.window}) must be a multiple of --log-every ({args.log_every})")
    if len(args.batch) != 1:
        raise SystemExit("error: give one --batch")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)
    if args.device not in ("auto", "cuda" if torch.cuda.is_available() else "cpu"):
        raise SystemExit("error: the loop picks its device itself (cuda when visible); use --device auto")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start, end = args.warmup_steps, args.warmup_steps + args.window
    steps = end + 1  # the entry of step `end` closes the window; the final checkpoint comes after it
    config = bench_config(args, steps)
    scratch = Path(tempfile.mkdtemp(prefix="cyclegan-overhead-"))
    names = ["bare-ref"] + ([] if args.no_bare_step else ["bare-step"])
    mode = args.mode if args.mode != "auto" else ("runs" if device.type == "cuda" else "lockstep")
    if mode == "lockstep" and args.workers is None:
        # In lockstep a loader's workers decode its next batch while the *other* arms step: with workers, ours
        # (always right after the bare steps) would run while their workers compete for the cores. In-process
        # loading (0 workers) keeps every arm's data work inside its own step time.
        config = bench_config(argparse.Namespace(**{**vars(args), "workers": 0}), steps)
    try:
        if mode == "runs":
            arms: dict[str, Callable[[], float]] = {
                "ours": lambda: run_ours(config, StepClock(device, start, end), scratch),
            }
            for n in names:
                arms[n] = lambda n=n: run_bare(config, n, StepClock(device, start, end), steps, device)
            times = interleaved(arms, args.reps)
        else:
            times = {n: [] for n in ["ours", *names]}
            for _ in range(args.reps):
                for n, v in run_lockstep(config, names, start, end, device, scratch).items():
                    times[n].append(sum(v) / len(v))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    batch = config.train.batch_size
    report = Report("overhead", f"Framework overhead: our training loop vs a bare loop ({config.experiment}: "
                    f"{config.model.generator} ngf {config.model.ngf}, {config.data.crop_size}px, batch {batch})",
                    command_string("benchmarks.overhead"), HEADERS)
    base = times["bare-ref"]
    for name, values in times.items():
        r = Ratio.of(values, base)  # (ours time / bare time): > 1 = slower than bare
        report.rows.append({
            "arm": name, "ms/step": fmt(1e3 * median(values), 1), "img/s": fmt(batch / median(values), 2),
            "vs bare-ref": f"{r.median:.3f}", "range": f"{r.low:.3f}–{r.high:.3f}",
            "overhead": f"{100 * (r.median - 1):+.1f}%",
            "per_step_s": values, "ratio_to_bare_ref": r.median,
        })
    ours = Ratio.of(times["ours"], base)
    how = ("runs per arm, interleaved" if mode == "runs" else
           "lockstep runs (just after each step of ours one step of each bare arm, order rotating)")
    notes = [
        f"mode {mode}: {args.reps} {how}; each run trains {steps} steps and times steps {start}..{end} "
        f"({args.window} steps, {args.window // args.log_every} logging events to metrics.jsonl"
        f"{' and W&B offline' if args.wandb == 'offline' else ''}); no checkpoint or sample inside the window",
        "vs bare-ref = median over repetitions of (arm's mean step time / bare-ref's in the same repetition); "
        "overhead = that minus 1 (negative: faster than the bare loop, i.e. within noise or a faster step)",
        f"data: the config's data set and loader ({config.data.num_workers} worker(s)"
        + (", 0 in lockstep unless --workers is given: no arm's workers then run during another arm's step"
           if mode == "lockstep" else "")
        + f") in every arm; device {device.type}",
    ]
    if "bare-step" in times:
        loop_only = Ratio.of(times["ours"], times["bare-step"])
        notes.append(f"ours vs bare-step (Accelerate + loop bookkeeping only, same step function): "
                     f"{100 * (loop_only.median - 1):+.1f}% (range {100 * (loop_only.low - 1):+.1f}.."
                     f"{100 * (loop_only.high - 1):+.1f}%)")
    ok = ours.median <= 1.03
    notes.append(f"goal framework overhead <= 3%: {'MET' if ok else 'NOT MET'} ({100 * (ours.median - 1):+.1f}%, "
                 f"per-repetition range {100 * (ours.low - 1):+.1f}..{100 * (ours.high - 1):+.1f}%)")
    report.notes += notes
    report.extra["overhead"] = ours.median - 1
    report.emit(args.json_out, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
