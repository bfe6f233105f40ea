"""The human summary a training run ends with (``--json`` prints the machine-readable result instead)."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

from cyclegan_dist.rundir import RunDir


def format_duration(seconds: float | None) -> str:
    """``1h02m03s``, ``4m05s``, ``6s`` (``?`` when unknown)."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def wandb_sync_command(run_dir: str | Path, wandb_info: dict | None) -> str | None:
    """``wandb sync <offline run dir>`` for an offline W&B run, else None."""
    if not wandb_info or wandb_info.get("mode") != "offline":
        return None
    found = sorted(glob.glob(str(Path(run_dir) / "wandb" / f"offline-run-*-{wandb_info.get('id')}")))
    target = found[-1] if found else wandb_info.get("dir")
    return f"wandb sync {target}" if target else None


def human_summary(result: dict[str, Any]) -> str:
    status = result.get("status", "?")
    steps = f"{result.get('start_step', 0)} -> {result.get('step')}"
    metrics = result.get("metrics") or {}
    done = result.get("step", 0) - result.get("start_step", 0)
    lines = [f"{status.upper()}: steps {steps} on {result.get('world_size', 1)} rank(s) in "
             f"{format_duration(result.get('wall_time_s'))}"
             + (f", {metrics['img_per_s']:.1f} img/s (last period)" if metrics.get("img_per_s") else "")]
    if result.get("error"):
        lines.append(f"  why: {result['error']}")
    losses = [(k, metrics[k]) for k in ("loss/G", "loss/D", "loss/cycle_A", "loss/cycle_B") if k in metrics]
    if losses:
        lines.append("  final losses: " + ", ".join(f"{k.split('/')[1]} {v:.4g}" for k, v in losses))
    best = result.get("best")
    if best:
        lines.append(f"  best MiFID: {best['eval/mifid']:.2f} at step {best['step']} ({best['checkpoint']})")
    elif result.get("eval"):
        lines.append(f"  MiFID: {result['eval']['eval/mifid']:.2f}, FID {result['eval']['eval/fid']:.2f}")
    if "psnr_after" in result:
        lines.append("  translation PSNR of G(x) vs T(x) on held-out demo photos: "
                     f"{result.get('psnr_before', float('nan')):.2f} "
                     f"dB before, {result['psnr_after']:.2f} dB after; "
                     f"doing nothing scores {result['psnr_identity']:.2f} dB")
    run = RunDir(result["run_dir"])
    lines.append(f"  run directory: {run.path}")
    lines.append(f"  metrics: {run.metrics_path}")
    lines.append(f"  events and warnings: {run.events_path}")
    if result.get("checkpoint"):
        lines.append(f"  newest checkpoint: {result['checkpoint']}")
    if result.get("samples"):
        lines.append(f"  sample grid: {result['samples']}")
    sync = wandb_sync_command(run.path, result.get("wandb"))
    if sync:
        lines.append(f"  W&B (offline): upload with `{sync}`")
    elif (result.get("wandb") or {}).get("url"):
        lines.append(f"  W&B: {result['wandb']['url']}")
    warnings = result.get("warnings") or []
    if warnings:
        lines.append(f"  {len(warnings)} warning(s), the last: {warnings[-1]['service']}: {warnings[-1]['message']}")
    if status == "stopped":
        lines.append(f"  continue with: python -m cyclegan_dist train --run-dir {run.path} --resume auto (same config)")
    if status == "completed" and result.get("checkpoint"):
        lines.append(f"  next: python -m cyclegan_dist export --checkpoint {run.path} --photos PHOTOS --out images.zip"
                     " (a Kaggle submission), or python -m launcher report to compare runs")
    if done == 0 and status == "completed":
        lines.append("  (nothing to train: the run had reached train.steps already; raise train.steps to train longer)")
    return "\n".join(lines)
