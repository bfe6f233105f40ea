"""The experiment report: a table of finished runs, a translation grid and loss/FID curves.

``write_report(runs, out_dir)`` writes ``report.md``, ``grid.png`` (a row of photos, then one row per run with
its translations of the same photos) and ``curves.png`` (losses and FID/MiFID over steps), reading only what
training left in each run directory: ``config.yaml``, ``metrics.jsonl``, ``checkpoints/`` (best, else latest).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cyclegan_dist.config import load_config
from cyclegan_dist.data.demo import ensure_demo_shards
from cyclegan_dist.data.streams import iter_domain
from cyclegan_dist.errors import UserError
from cyclegan_dist.models import count_parameters
from cyclegan_dist.tracking import read_metrics

GRID_SIZE = 128


@dataclass
class RunSummary:
    name: str
    experiment: str
    run_dir: Path
    generator: str = ""
    params: int = 0
    steps: int = 0
    world_size: int = 1
    gpu_hours: float | None = None
    img_per_s: float | None = None
    fid: float | None = None
    mifid: float | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)


def summarize(run_dir: Path, name: str | None = None, gpu_hours: float | None = None) -> RunSummary:
    from cyclegan_dist.eval.generator_io import load_generator

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml): has the job started?")
    config = load_config(run_dir / "config.yaml")
    records = read_metrics(run_dir)
    losses = [r for r in records if "loss/G" in r]
    evals = [r for r in records if "eval/mifid" in r]
    generator, _ = load_generator(run_dir)
    world = losses[-1]["world_size"] if losses else 1
    if gpu_hours is None and len(losses) >= 2:  # wall time of the logged steps x ranks (one rank per GPU)
        gpu_hours = (losses[-1]["time"] - records[0]["time"]) * world / 3600
    speeds = [r["img_per_s"] for r in losses[len(losses) // 2:]]  # the second half: past warm-up
    best = min(evals, key=lambda r: r["eval/mifid"]) if evals else {}
    return RunSummary(
        name=name or run_dir.name, experiment=config.experiment, run_dir=run_dir, generator=config.model.generator,
        params=count_parameters(generator), steps=losses[-1]["step"] if losses else 0, world_size=world,
        gpu_hours=gpu_hours, img_per_s=sorted(speeds)[len(speeds) // 2] if speeds else None,
        fid=best.get("eval/fid"), mifid=best.get("eval/mifid"), metrics=records,
    )


def write_report(runs: list[RunSummary], out_dir: Path, n_photos: int = 6, title: str = "CycleGAN experiments",
                 command: str | None = None) -> Path:
    if not runs:
        raise UserError("no finished runs to report on")
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = _grid(runs, out_dir / "grid.png", n_photos)
    curves = _curves(runs, out_dir / "curves.png")
    lines = [f"# {title}", "", f"Written {dt.datetime.now().isoformat(timespec='seconds')}"
             + (f" by `{command}`" if command else "") + ".", "",
             "| run | exp | generator | params | steps | GPU-hours | img/s | FID | MiFID |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(runs, key=lambda r: (r.mifid is None, r.mifid or 0.0)):
        lines.append(f"| {r.name} | {r.experiment} | {r.generator} | {r.params:,} | {r.steps:,} | {_fmt(r.gpu_hours, 3)} "
                     f"| {_fmt(r.img_per_s, 1)} | {_fmt(r.fid, 1)} | {_fmt(r.mifid, 1)} |")
    lines += ["", "FID and MiFID: the best in-training evaluation of each run (MiFID as Kaggle scores it).", "",
              f"![translations]({grid.name})", "", "Rows: photos, then each run's translation of the same photos.",
              "", f"![curves]({curves.name})", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _fmt(value: float | None, digits: int) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


@torch.no_grad()
def _grid(runs: list[RunSummary], path: Path, n_photos: int) -> Path:
    from torchvision.utils import save_image

    from cyclegan_dist.eval.generator_io import load_generator

    config = load_config(runs[0].run_dir / "config.yaml")
    root = Path(config.data.root) if config.data.root else ensure_demo_shards(size=config.data.demo_size)
    domain = config.data.domain_a
    photos = []
    for _, image in iter_domain(root, domain, size=config.data.crop_size):
        photos.append(image)
        if len(photos) == n_photos:
            break
    x = torch.stack(photos)
    rows = [x]
    for run in runs:
        generator, _ = load_generator(run.run_dir)
        crop = load_config(run.run_dir / "config.yaml").data.crop_size
        rows.append(generator(_resize(x, crop)).float())
    images = torch.cat([_resize(r, GRID_SIZE) for r in rows])
    save_image(images, path, nrow=len(photos), normalize=True, value_range=(-1, 1), padding=2)
    return path


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _curves(runs: list[RunSummary], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss/G", "generator loss"), ("loss/D", "discriminator loss"), ("eval/fid", "FID"), ("eval/mifid", "MiFID")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, label) in zip(axes, panels):
        for run in runs:
            points = [(r["step"], r[key]) for r in run.metrics if key in r]
            if points:
                marker = "o" if key.startswith("eval/") or len(points) == 1 else None
                ax.plot(*zip(*points), marker=marker, markersize=3, label=run.name)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
