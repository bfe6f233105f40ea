"""Speed never bought with quality: a short real training per variant, same steps, seed and data, reporting
steps/s and the translation PSNR of G(x) against T(x) on the demo set's held-out crops, so a fast path that
stops translating (bf16 runs whose outputs are not translated) shows at once.

    python -m benchmarks.train_quality --variants fp32,bf16+cl+graphs --steps 2000     # on a GPU (gpu.sh)
    python -m benchmarks.train_quality --quick                                         # CPU smoke: 10 steps

A variant is benchmarks.step's ``PRECISION[+cl][+compile|+graphs|+autotune]``. Each run is the real CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import PRECISIONS, Report, command_string
from benchmarks.step import Variant

ROOT = Path(__file__).resolve().parent.parent
HEADERS = ["variant", "steps", "steps/s", "img/s", "vs fp32", "PSNR before", "PSNR after", "identity", "wall s"]


def train(variant: Variant, args, scratch: Path) -> dict:
    run_dir = scratch / variant.name
    size = args.size
    cmd = [sys.executable, "-m", "cyclegan_dist", "train", "--json", "--quiet", "--config", args.config, "--run-dir",
           str(run_dir), "--set", f"train.steps={args.steps}", f"train.log_every={max(1, args.steps // 10)}",
           f"train.mixed_precision={PRECISIONS[variant.precision]}",
           f"train.channels_last={str(variant.channels_last).lower()}",
           f"train.compile={variant.compile}", "train.sample_every=0", f"train.checkpoint_every={args.steps}",
           "eval.every=0", "eval.at_end=false", "wandb.mode=disabled", f"data.num_workers={args.workers}",
           f"seed={args.seed}", *([f"data.demo_size={size + size // 8}", f"data.load_size={size + size // 8}",
                                   f"data.crop_size={size}"] if size else [])]
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout[out.stdout.index("{"):])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    periods = [r["step_time_s"] for r in records if "step_time_s" in r][1:] or [records[-1]["step_time_s"]]
    step_s = statistics.median(periods)  # past the first period (compilation, warm-up)
    return {"variant": variant.name, "steps": result["step"], "steps_per_s": 1 / step_s,
            "img_per_s": statistics.median(r["img_per_s"] for r in records if "img_per_s" in r),
            "psnr_before": result["psnr_before"], "psnr_after": result["psnr_after"],
            "psnr_identity": result["psnr_identity"], "wall_s": time.monotonic() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_quality", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="resnet9", help="experiment (default resnet9; --quick: smoke)")
    p.add_argument("--variants", default="fp32,bf16+cl+graphs")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--size", type=int, default=256, help="crop size of the demo data (0: the config's)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="CPU smoke: smoke config, 10 steps, fp32 vs bf16+cl")
    p.add_argument("--json", dest="json_out")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    if args.quick:
        args.config, args.variants, args.steps, args.size, args.workers = "smoke", "fp32,bf16+cl", 10, 0, 0
    variants = [Variant.parse(v) for v in args.variants.split(",")]
    with tempfile.TemporaryDirectory(prefix="cyclegan-quality-") as scratch:
        rows = [train(v, args, Path(scratch)) for v in variants]
    base = next((r for r in rows if r["variant"] == "fp32"), rows[0])
    report = Report("train_quality", f"Speed and translation quality: {args.steps} real training steps per variant "
                    f"({args.config}, demo data{f', {args.size} px' if args.size else ''}, seed {args.seed})",
                    command_string("benchmarks.train_quality"), HEADERS)
    for r in rows:
        report.rows.append({**r, "steps/s": f"{r['steps_per_s']:.2f}", "img/s": f"{r['img_per_s']:.1f}",
                            "vs fp32": f"{r['steps_per_s'] / base['steps_per_s']:.2f}",
                            "PSNR before": f"{r['psnr_before']:.2f}", "PSNR after": f"{r['psnr_after']:.2f}",
                            "identity": f"{r['psnr_identity']:.2f}", "wall s": f"{r['wall_s']:.0f}"})
    worst = min(rows, key=lambda r: r["psnr_after"])
    report.notes += [
        "steps/s: the median of the logging periods after the first (compilation and warm-up excluded)",
        "PSNR of G(x) against T(x) on the demo set's held-out crops (dB); 'identity' = PSNR(x, T(x)), doing nothing",
        f"quality kept: {'yes' if all(r['psnr_after'] >= base['psnr_after'] - 1.0 for r in rows) else 'NO'} "
        f"(every variant within 1 dB of fp32's {base['psnr_after']:.2f} dB; the lowest: {worst['variant']} "
        f"{worst['psnr_after']:.2f} dB)"]
    report.emit(args.json_out, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
