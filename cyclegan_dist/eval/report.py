"""The experiment report: a table of finished runs, a translation grid and loss/FID curves.

``write_report(runs, out_dir)`` writes ``report.md``, ``grid.png`` (a row of photos, then one row per run with
its translations of the same photos) and ``curves.png`` (losses and FID/MiFID over steps), reading only what
training left in each run directory: ``config.yaml``, ``metrics.jsonl``, ``checkpoints/`` (best, else latest).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cyclegan_dist.config import load_config
from cyclegan_dist.data.demo import demo_root
from cyclegan_dist.data.streams import iter_domain
from cyclegan_dist.data.transforms import normalize
from cyclegan_dist.errors import UserError
from cyclegan_dist.eval.samples import compose
from cyclegan_dist.models import count_parameters
from cyclegan_dist.models.io import load_generator
from cyclegan_dist.rundir import RunDir, atomic_write
from cyclegan_dist.tables import format_table

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
    run = RunDir(run_dir)
    run_dir = run.path
    if not run.config.is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml): has the job started?")
    config = load_config(run.config)
    records = run.metrics()
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
    rows = [[r.name, r.experiment, r.generator, f"{r.params:,}", f"{r.steps:,}", _fmt(r.gpu_hours, 3),
             _fmt(r.img_per_s, 1), _fmt(r.fid, 1), _fmt(r.mifid, 1)]
            for r in sorted(runs, key=lambda r: (r.mifid is None, r.mifid or 0.0))]
    table = format_table(["run", "exp", "generator", "params", "steps", "GPU-hours", "img/s", "FID", "MiFID"], rows,
                         markdown=True, right=range(3, 9))
    lines = [f"# {title}", "", f"Written {dt.datetime.now().isoformat(timespec='seconds')}"
             + (f" by `{command}`" if command else "") + ".", "", table, "",
             "FID and MiFID: the best in-training evaluation of each run (MiFID as Kaggle scores it).", "",
             f"![translations]({grid.name})", "", "Rows: photos, then each run's translation of the same photos.",
             "", f"![curves]({curves.name})", "", "One row per run: its losses, then FID/MiFID over steps.", ""]
    path = out_dir / "report.md"
    atomic_write(path, "\n".join(lines))
    return path


def _fmt(value: float | None, digits: int) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


@torch.no_grad()
def _grid(runs: list[RunSummary], path: Path, n_photos: int) -> Path:
    """A row of photos, then one row per run with its translation of the same photos (labelled)."""
    import io

    config = load_config(RunDir(runs[0].run_dir).config)
    root = Path(config.data.root) if config.data.root else demo_root(config.data)
    photos = [image for _, image in itertools.islice(iter_domain(root, config.data.domain_a, size=GRID_SIZE), n_photos)]
    x = torch.stack(photos)  # uint8
    rows, labels = [normalize(x)], [f"{config.data.domain_a} (input)"]
    for run in runs:
        generator, _ = load_generator(run.run_dir)
        crop = load_config(RunDir(run.run_dir).config).data.crop_size
        y = generator(_resize(normalize(x), crop)).float()
        rows.append(_resize(y, GRID_SIZE).clamp(-1, 1))
        labels.append(f"{run.name} ({run.generator})")
    buf = io.BytesIO()
    compose(rows, labels, "the same photos, translated by each run").save(buf, format="PNG")
    return atomic_write(path, buf.getvalue())


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic (antialiased), as every image that enters or leaves a network here."""
    if x.shape[-1] == size:
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)


def _curves(runs: list[RunSummary], path: Path) -> Path:
    """One row per run: its generator / discriminator / cycle losses, then FID and MiFID (when any run was
    evaluated), over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(("loss/G",), "generator loss"), (("loss/D", "loss/D_A", "loss/D_B"), "discriminator losses"),
              (("loss/cycle_A", "loss/cycle_B"), "cycle losses")]
    if any("eval/fid" in r for run in runs for r in run.metrics):  # no evaluation ran: no empty panel
        panels.append((("eval/fid", "eval/mifid"), "FID / MiFID"))
    fig, axes = plt.subplots(len(runs), len(panels), figsize=(4.2 * len(panels), 2.8 * len(runs)), squeeze=False)
    for row, run in zip(axes, runs):
        for ax, (keys, label) in zip(row, panels):
            for key in keys:
                points = [(r["step"], r[key]) for r in run.metrics if isinstance(r.get(key), (int, float))]
                if points:
                    marker = "o" if key.startswith("eval/") or len(points) == 1 else None
                    ax.plot(*zip(*points), marker=marker, markersize=3, label=key.split("/")[1])
            ax.set_title(f"{run.name}: {label}", fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
