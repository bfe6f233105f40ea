"""The experiment report: a table of finished runs, a translation grid and loss/FID curves.

``write_report(runs, out_dir)`` writes ``report.md``, ``report.html``, ``grid.png`` (a row of photos, then one row
per run with its translations of the same photos) and ``curves.png`` (losses and FID/MiFID over steps), reading
only what training left in each run directory: ``config.yaml``, ``metrics.jsonl``, ``checkpoints/`` (best, else
latest). Both documents come from the same facts: one table (:data:`COLUMNS`), one set of translations (grid.png
and the page's gallery), the sections the caller passes (the launcher's winner); ``report_html`` renders the page.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cyclegan_dist.config import load_config
from cyclegan_dist.data.remote import readable_root
from cyclegan_dist.data.streams import iter_domain
from cyclegan_dist.data.transforms import normalize, to_uint8
from cyclegan_dist.errors import UserError
from cyclegan_dist.eval.report_html import Gallery, Section, Table, page
from cyclegan_dist.eval.samples import compose
from cyclegan_dist.images import encode_jpeg
from cyclegan_dist.models import count_parameters
from cyclegan_dist.models.io import load_generator
from cyclegan_dist.rundir import RunDir, atomic_write

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


RUNS_NOTE = "FID and MiFID: the best in-training evaluation of each run (MiFID as Kaggle scores it)."
CURVES_NOTE = "One row per run: its losses, then FID/MiFID over steps."

# The runs table, defined once (report.md and report.html render it): header, cell of a run, aligned right.
COLUMNS: tuple[tuple[str, Callable[[RunSummary], str], bool], ...] = (
    ("run", lambda r: r.name, False), ("exp", lambda r: r.experiment, False),
    ("generator", lambda r: r.generator, False), ("params", lambda r: f"{r.params:,}", True),
    ("steps", lambda r: f"{r.steps:,}", True), ("GPU-hours", lambda r: _fmt(r.gpu_hours, 3), True),
    ("img/s", lambda r: _fmt(r.img_per_s, 1), True), ("FID", lambda r: _fmt(r.fid, 1), True),
    ("MiFID", lambda r: _fmt(r.mifid, 1), True),
)


def runs_table(runs: Sequence[RunSummary]) -> Table:
    """One row per run, the lowest MiFID first (runs without one last)."""
    ordered = sorted(runs, key=lambda r: (r.mifid is None, r.mifid or 0.0))
    return Table(headers=tuple(header for header, _, _ in COLUMNS),
                 rows=tuple(tuple(cell(r) for _, cell, _ in COLUMNS) for r in ordered),
                 right=frozenset(i for i, (_, _, right) in enumerate(COLUMNS) if right))


def write_report(runs: list[RunSummary], out_dir: Path, n_photos: int = 6, title: str = "CycleGAN experiments",
                 command: str | None = None, sections: Sequence[Section] = ()) -> Path:
    """report.md, report.html (the same table, ``sections`` and pictures in one self-contained page), grid.png and
    curves.png in ``out_dir``; each file written whole (temp name, then rename). Returns report.md's path."""
    if not runs:
        raise UserError("no finished runs to report on")
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = translate_photos(runs, n_photos)
    grid = _grid(shown, out_dir / "grid.png")
    curves = _curves(runs, out_dir / "curves.png")
    table = runs_table(runs)
    written = dt.datetime.now().isoformat(timespec="seconds")
    atomic_write(out_dir / "report.html", page(
        title=title, written=written, command=command, runs=table, runs_note=RUNS_NOTE, sections=sections,
        gallery=gallery(shown), curves=curves.read_bytes(), curves_note=CURVES_NOTE))
    lines = [f"# {title}", "", f"Written {written}" + (f" by `{command}`" if command else "") + ".", "",
             table.markdown(), "", RUNS_NOTE, "",
             "The same report as one page, with a gallery that puts the runs side by side: [report.html](report.html).",
             "", f"![translations]({grid.name})", "", "Rows: photos, then each run's translation of the same photos.",
             "", f"![curves]({curves.name})", "", CURVES_NOTE]
    for section in sections:
        lines += section.markdown()
    path = out_dir / "report.md"
    atomic_write(path, "\n".join(lines) + "\n")
    return path


def _fmt(value: float | None, digits: int) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


@dataclass
class Translations:
    """The same photos and each run's translation of them: ``rows[0]`` the photos, then one row per run, each
    N x 3 x GRID_SIZE x GRID_SIZE in [-1, 1]; ``labels`` name the rows."""

    rows: list[torch.Tensor]
    labels: list[str]


@torch.no_grad()
def translate_photos(runs: Sequence[RunSummary], n_photos: int) -> Translations:
    """The first ``n_photos`` photos of the first run's data, and each run's generator applied to them (at its
    crop size, shown at GRID_SIZE)."""
    config = load_config(RunDir(runs[0].run_dir).config)
    root = readable_root(config.data)  # the demo set, a directory, or the node-local copy of a remote root
    photos = [image for _, image in itertools.islice(iter_domain(root, config.data.domain_a, size=GRID_SIZE), n_photos)]
    x = torch.stack(photos)  # uint8
    rows, labels = [normalize(x)], [f"{config.data.domain_a} (input)"]
    for run in runs:
        generator, _ = load_generator(run.run_dir)
        crop = load_config(RunDir(run.run_dir).config).data.crop_size
        y = generator(_resize(normalize(x), crop)).float()
        rows.append(_resize(y, GRID_SIZE).clamp(-1, 1))
        labels.append(f"{run.name} ({run.generator})")
    return Translations(rows, labels)


def _grid(shown: Translations, path: Path) -> Path:
    """A row of photos, then one row per run with its translation of the same photos (labelled)."""
    buf = io.BytesIO()
    compose(shown.rows, shown.labels, "the same photos, translated by each run").save(buf, format="PNG")
    return atomic_write(path, buf.getvalue())


def gallery(shown: Translations) -> Gallery:
    """The same translations for report.html: per photo, the photo then each run's translation (JPEG, as Kaggle
    receives them)."""
    tiles = [to_uint8(row) for row in shown.rows]  # N x H x W x 3 each
    photos = tuple(tuple(encode_jpeg(row[j]) for row in tiles) for j in range(len(tiles[0])))
    return Gallery(labels=tuple(shown.labels), photos=photos)


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
