"""``python -m benchmarks.profile_step``: where our training step and the reference's differ, op by op.

Builds both arms exactly as ``benchmarks.step`` does (ours as the loop wires it, the reference
``benchmarks.reference_step`` on the same networks from the same seed), then profiles them with
``torch.profiler`` in alternating rounds (ref, ours, ref, ours, ...) and prints, per ATen op, the calls per step
and the median self time per step of each arm, largest differences first. Equal call counts with time
differences that change sign from round to round mean the same work timed on a noisy machine; a different count,
or a difference with one sign in every round, is a real difference to fix.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.common import apply_threads, median


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="unet", choices=("resnet9", "unet"))
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--variant", default="fp32", help="ours' variant, as in benchmarks.step (default fp32)")
    p.add_argument("--rounds", type=int, default=4, help="profiled rounds per arm (default 4)")
    p.add_argument("--steps", type=int, default=2, help="steps per round (default 2)")
    p.add_argument("--top", type=int, default=15, help="ops to list (default 15)")
    p.add_argument("--shapes", action="store_true",
                   help="one row per op and input shapes (finds which call of an op differs)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return p.parse_args(argv)


def profile_round(step, steps: int, shapes: bool) -> tuple[dict[str, float], dict[str, float]]:
    """(self CPU microseconds per step, calls per step) for each op (and its input shapes) over ``steps`` steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=shapes) as prof:
        for _ in range(steps):
            step()
    averages = prof.key_averages(group_by_input_shape=shapes)
    key = (lambda e: f"{e.key} {e.input_shapes[:3]}") if shapes else (lambda e: e.key)
    return ({key(e): e.self_cpu_time_total / steps for e in averages}, {key(e): e.count / steps for e in averages})


def main(argv=None) -> int:
    from benchmarks.reference_step import build_reference
    from benchmarks.step import Variant, bench_config, build_ours

    args = parse_args(argv)
    apply_threads(args.threads)
    config = bench_config(args.model, args.size, args.batch, Variant.parse(args.variant), None)
    ours = build_ours(config)
    ref = build_reference(config, ours.device)
    g = torch.Generator().manual_seed(1234)
    real_A = torch.rand(args.batch, 3, args.size, args.size, generator=g) * 2 - 1
    real_B = torch.rand(args.batch, 3, args.size, args.size, generator=g) * 2 - 1

    def ref_step() -> None:
        ref.set_input(real_A, real_B)
        ref.optimize_parameters()

    arms = {"reference": ref_step, "ours": lambda: ours.step(real_A, real_B)}
    for _ in range(2):  # warm-up: allocator, kernels, compilation
        for step in arms.values():
            step()
    times: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
    calls: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for name, step in arms.items():
            t, c = profile_round(step, args.steps, args.shapes)
            times[name].append(t)
            calls[name] = c
    ops = set(calls["reference"]) | set(calls["ours"])

    def per_step(name: str, op: str) -> float:
        return median([t.get(op, 0.0) for t in times[name]])

    def signs(op: str) -> str:
        d = [o.get(op, 0.0) - r.get(op, 0.0) for r, o in zip(times["reference"], times["ours"])]
        return "".join("+" if x > 0 else "-" if x < 0 else "=" for x in d)

    diff = {op: per_step("ours", op) - per_step("reference", op) for op in ops}
    total = {name: median([sum(t.values()) for t in times[name]]) for name in arms}
    print(f"{args.model} {config.model.generator} {args.size}px batch {args.batch}, ours {args.variant}: median self "
          f"CPU time per step: reference {total['reference'] / 1e3:.1f} ms, ours {total['ours'] / 1e3:.1f} ms "
          f"({args.rounds} rounds of {args.steps} steps, alternating)")
    width = 100 if args.shapes else 52
    print(f"{'op':{width}s} {'calls ref':>9s} {'calls ours':>10s} {'ref ms':>8s} {'ours ms':>8s} {'diff ms':>8s}  "
          "per round")
    for op in sorted(ops, key=lambda k: -abs(diff[k]))[:args.top]:
        print(f"{op[:width]:{width}s} {calls['reference'].get(op, 0):9.0f} {calls['ours'].get(op, 0):10.0f} "
              f"{per_step('reference', op) / 1e3:8.2f} {per_step('ours', op) / 1e3:8.2f} {diff[op] / 1e3:+8.2f}  "
              f"{signs(op)}")
    changed = sorted({op.split(" [", 1)[0] if args.shapes else op  # op names, not every shape
                      for op in ops if calls["reference"].get(op, 0) != calls["ours"].get(op, 0)})
    print("ops whose call count differs: " + (", ".join(changed) if changed else "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
