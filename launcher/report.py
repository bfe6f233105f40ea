"""``launcher report``: finished runs -> ``<out>/<name>/report.md``, ``report.html``, ``grid.png``, ``curves.png``,
and the winner.

The table, grid and curves are ``cyclegan_dist.eval.report`` (``summarize`` + ``write_report``); this module picks
the runs (as ``collect`` does: COMPLETED runs, or those named with ``--run``), gives each its GPU-hours from the
launcher's records (job wall time x GPUs over every attempt; x ranks for CPU runs), and appends the answer to
the comparison: which experiment (generator) has the lower MiFID, with mean +- std over seeds per experiment
(a ``Section``, which ``write_report`` puts in both documents). With ``--missing-ok`` (what ``submit --then``
uses) the named runs that did not complete are left out and listed (``missing: <exp> seed N (<state>)``) in a
section of their own. No torch at module level.
"""

from __future__ import annotations

import math
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cyclegan_dist.errors import UserError
from cyclegan_dist.eval.report_html import Section, Table, Text
from launcher.collect import missing_lines, select_completed, select_runs


def default_name(experiments: Sequence[str]) -> str:
    return "_vs_".join(experiments)


def launcher_gpu_hours(row: dict[str, Any]) -> float | None:
    """From gather: job wall time (every attempt) x GPUs; for a run on CPU ranks, x ranks (rank-hours).
    None when the launcher has no wall time (no job events): summarize() then estimates it from the metrics."""
    if not row.get("wall_time_s"):
        return None
    if row.get("gpus"):
        return float(row["gpu_hours"])
    return row["wall_time_s"] * int(row.get("world_size") or 1) / 3600


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _pm(values: list[float], digits: int = 1) -> str:
    if not values:
        return "—"
    mean, std = mean_std(values)
    return f"{mean:,.{digits}f}" + (f" ± {std:,.{digits}f}" if std is not None else "")


def per_experiment(summaries: Sequence[Any], order: Sequence[str]) -> list[dict[str, Any]]:
    """One entry per experiment (in ``order``): generator(s), runs, MiFID/FID values of the runs that have them."""
    out = []
    for exp in order:
        mine = [s for s in summaries if s.experiment == exp]
        if not mine:
            continue
        ok = [s for s in mine if s.mifid is not None and math.isfinite(s.mifid)]
        out.append({"experiment": exp, "generator": ", ".join(sorted({s.generator for s in mine})), "runs": len(mine),
                    "mifid": [s.mifid for s in ok], "fid": [s.fid for s in ok if s.fid is not None]})
    return out


def winner_report(summaries: Sequence[Any], order: Sequence[str]) -> tuple[Section, str]:
    """The section "which generator has the lower MiFID?" (for report.md and report.html) and the one-line verdict."""
    groups = per_experiment(summaries, order)
    table = Table(headers=("exp", "generator", "runs", "runs with MiFID", "MiFID", "FID"),
                  rows=tuple((g["experiment"], g["generator"], str(g["runs"]), str(len(g["mifid"])), _pm(g["mifid"]),
                              _pm(g["fid"])) for g in groups),
                  right=frozenset(range(2, 6)))
    scored = sorted((g for g in groups if g["mifid"]), key=lambda g: mean_std(g["mifid"])[0])
    missing = [g["experiment"] for g in groups if not g["mifid"]]
    if not scored:
        verdict = "no winner: no run has an MiFID evaluation (set eval.at_end=true or eval.every=N)"
    elif len(groups) == 1:
        g = scored[0]
        verdict = f"one experiment only ({g['experiment']}, MiFID {_pm(g['mifid'])}): nothing to compare"
    else:
        best, rest = scored[0], scored[1:]
        others = "; ".join(f"{g['experiment']} ({g['generator']}) {_pm(g['mifid'])}" for g in rest)
        verdict = (f"winner: {best['experiment']} ({best['generator']}), MiFID {_pm(best['mifid'])} vs {others}"
                   if rest else f"winner by default: {best['experiment']} ({best['generator']}), MiFID "
                   f"{_pm(best['mifid'])}")
        if rest:
            runner = rest[0]
            gap = mean_std(runner["mifid"])[0] - mean_std(best["mifid"])[0]
            spreads = [mean_std(g["mifid"])[1] for g in (best, runner)]
            singles = [g["experiment"] for g in (best, runner) if len(g["mifid"]) < 2]
            if singles:
                verdict += (f" (one run of {' and '.join(singles)}: the seed-to-seed spread is unknown; "
                            "--seeds 0,1,2 tells)")
            elif gap <= max(spreads):
                verdict += f" (the gap, {gap:,.1f}, is within one standard deviation: not conclusive)"
    if missing:
        verdict += f"; without an MiFID: {', '.join(missing)}"
    section = Section("Which generator has the lower MiFID?", (
        Text("Per experiment over its runs (seeds): mean ± sample standard deviation of each run's best MiFID/FID."),
        table, Text(f"{verdict[0].upper() + verdict[1:]}.", strong=True),
        Text("GPU-hours: job wall time of every attempt × GPUs, from the launcher's records (runs on CPU ranks: "
             "× ranks, i.e. rank-hours)."),
    ))
    return section, verdict


def winner_section(summaries: Sequence[Any], order: Sequence[str]) -> tuple[list[str], str]:
    """Markdown lines of :func:`winner_report` and the one-line verdict."""
    section, verdict = winner_report(summaries, order)
    return section.markdown(), verdict


def make_report(run_root: Path, experiments: list[str] | None, names: list[str] | None, name: str | None,
                out: Path, missing_ok: bool = False) -> Path:
    missing: list[dict[str, Any]] = []
    if missing_ok:  # runs of a sweep that did not complete: named in the report, not an error
        rows, missing = select_completed(run_root, experiments, names)
    else:
        rows = select_runs(run_root, experiments, names)
    order = list(dict.fromkeys(experiments or [r["experiment"] for r in rows]))
    order = [e for e in order if any(r["experiment"] == e for r in rows)]
    name = name or default_name(order)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+=-]*", name):
        raise UserError(f"--name {name!r}: use letters, digits and . _ + = - (it names a directory)")
    from cyclegan_dist.eval.report import summarize, write_report

    summaries = [summarize(Path(r["run_dir"]), r["run"], launcher_gpu_hours(r)) for r in rows]
    out_dir = out / name
    command = shlex.join(["python", "-m", "launcher", *sys.argv[1:]])
    section, verdict = winner_report(summaries, order)
    sections = [section]
    if missing:
        sections.append(Section("Runs that did not complete", (
            Text("Named for this report, left out of it: their jobs ended without completing "
                 "(`python -m launcher status` and `logs` tell why; `resume` continues one)."),
            *(Text(line) for line in missing_lines(missing)))))
    path = write_report(summaries, out_dir, title=f"CycleGAN experiments: {' vs '.join(order)}", command=command,
                        sections=sections)
    print(verdict)
    for line in missing_lines(missing):
        print(line)
    return path
