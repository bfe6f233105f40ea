"""CPU threads per process: 1 vs torch's default vs the CPUs the process may use, on a quiet and a loaded machine.

    python -m benchmarks.threads [--configs smoke,resnet9-128] [--loads 0,2] [--reps 5] [--window 10]

The real step (``benchmarks/step.py: build_ours``, the loop's own wiring) of each config runs windows of
``--window`` steps at each thread count, the arms interleaved and rotated every repetition. ``--loads N`` runs
the same with N busy processes spinning beside it (a shared CI or login machine; they stop with the benchmark).
The figure is steps/s and the ratio over 1 thread (> 1: faster than one thread). The training's default
(``cyclegan_dist/train/cpu_threads.py``) is chosen from these figures.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time

import torch

from benchmarks.common import Ratio, Report, command_string, interleaved, median
from cyclegan_dist.config import load_config
from cyclegan_dist.train.cpu_threads import usable_cpus

CONFIGS = {  # name -> (experiment, overrides)
    "smoke": ("smoke", []),
    "resnet9-128": ("resnet9", ["data.crop_size=128", "data.load_size=143", "train.batch_size=1"]),
}
HEADERS = ["config", "load", "threads", "arm", "steps/s", "vs 1 thread", "range"]


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def measure(config_name: str, arms: dict[str, int], reps: int, window: int) -> dict[str, list[float]]:
    from benchmarks.step import build_ours

    experiment, overrides = CONFIGS[config_name]
    config = load_config(experiment, [*overrides, "train.mixed_precision=no", "loss.pool_size=50"])
    ours = build_ours(config)
    size, batch = config.data.crop_size, config.train.batch_size
    g = torch.Generator().manual_seed(0)
    A, B = (torch.rand(batch, 3, size, size, generator=g) * 2 - 1 for _ in range(2))
    for threads in set(arms.values()):  # warm-up at every thread count
        torch.set_num_threads(threads)
        ours.step(A, B)

    def arm(threads: int):
        def window_time() -> float:
            torch.set_num_threads(threads)
            start = time.perf_counter()
            for _ in range(window):
                ours.step(A, B)
            return (time.perf_counter() - start) / window
        return window_time

    return interleaved({name: arm(t) for name, t in arms.items()}, reps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="smoke,resnet9-128")
    p.add_argument("--loads", default="0,2", help="busy processes beside the benchmark, comma-separated")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--window", type=int, default=10, help="steps per timed window")
    p.add_argument("--quick", action="store_true", help="smoke only, no load, 2 reps of 2 steps (CI)")
    p.add_argument("--json", dest="json_out")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    if args.quick:
        args.configs, args.loads, args.reps, args.window = "smoke", "0", 2, 2
    default = torch.get_num_threads()  # torch's choice, before any set_num_threads
    arms = {"one": 1, "torch default": default, "usable CPUs": usable_cpus()}
    report = Report("threads", "CPU threads per process: 1 vs torch's default vs the usable CPUs",
                    command_string("benchmarks.threads"), HEADERS)
    for load in (int(x) for x in args.loads.split(",")):
        stop = mp.Event()
        hogs = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(load)]
        for h in hogs:
            h.start()
        try:
            for name in args.configs.split(","):
                times = measure(name, arms, args.reps, args.window)
                for arm, threads in arms.items():
                    ratio = Ratio.of(times["one"], times[arm])
                    report.rows.append({"config": name, "load": load, "threads": threads, "arm": arm,
                                        "steps/s": f"{1 / median(times[arm]):.2f}", "vs 1 thread": ratio.text(),
                                        "range": ratio.spread(), "seconds_per_step": times[arm]})
        finally:
            stop.set()
            for h in hogs:
                h.join(timeout=10)
    report.notes.append(f"usable CPUs here: {usable_cpus()} (affinity {len(os.sched_getaffinity(0))}, "
                        f"os.cpu_count {os.cpu_count()}); torch's default: {default} threads")
    report.emit(args.json_out, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
