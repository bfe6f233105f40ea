"""``status`` and ``gather``: one summary per run from its manifest, job events, metrics, checkpoints, W&B file.

Everything is read from the run directory (plus squeue/sacct for live state), so both work from a fresh
shell on any login node that sees the run root. ``gather`` writes the table as CSV and JSON too.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cyclegan_dist.rundir import step_of
from cyclegan_dist.summary import format_duration, wandb_sync_command
from cyclegan_dist.tables import format_table
from launcher import runs, scheduler
from launcher.runs import Run

LOWER_IS_BETTER_PREFIXES = ("loss/", "eval/fid", "eval/mifid")
HIGHER_IS_BETTER_PREFIXES = ("eval/psnr",)
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "INTERRUPTED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "ENDED", "LOST"}


def run_state(sched: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """The scheduler's word while the job is alive; afterwards the run's own record wins for success."""
    state = sched.get("state")
    last = events[-1]["event"] if events else None
    if state in scheduler.ACTIVE:
        return state
    if last == "completed":
        return "COMPLETED"
    if last == "cancelled":  # a SIGTERM ended it, with a checkpoint (`launcher resume RUN` continues it): the
        return state if state in ("TIMEOUT", "PREEMPTED", "NODE_FAIL") else "CANCELLED"  # scheduler may say why
    if state == "CANCELLED":
        return state
    if last in ("refused", "stopped"):
        return "INTERRUPTED"  # a complete checkpoint is there: `launcher resume RUN` continues it
    if state and state not in ("ENDED", "COMPLETED"):
        return state  # FAILED, CANCELLED, TIMEOUT, ...
    by_event = {"failed": "FAILED", "requeued": "REQUEUED"}
    if last in by_event:
        return by_event[last]
    if state == "COMPLETED":
        return "COMPLETED"
    if last == "start":
        return "LOST" if state == "ENDED" else "UNKNOWN"
    return "ENDED" if state == "ENDED" else ("UNKNOWN" if sched else "SUBMITTED")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def metric_summary(records: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Last value of every metric, and the best (value, step) of losses / FID / MiFID (min) and PSNR (max)."""
    last: dict[str, float] = {}
    best: dict[str, dict[str, float]] = {}
    for rec in records:
        step = rec.get("step")
        for key, value in rec.items():
            if key in ("step", "time") or not _is_number(value):
                continue
            last[key] = value
            lower = key.startswith(LOWER_IS_BETTER_PREFIXES)
            higher = key.startswith(HIGHER_IS_BETTER_PREFIXES) and not key.endswith("_identity")
            if not (lower or higher):
                continue
            old = best.get(key)
            if old is None or (value < old["value"] if lower else value > old["value"]):
                best[key] = {"value": value, "step": step}
    return last, best


def wandb_summary(run: Run) -> dict[str, Any]:
    info = run.rundir.wandb_info() or {}
    wid = info.get("id")
    mode = info.get("mode") or run.manifest.get("wandb", {}).get("mode")
    out = {"wandb_id": wid, "wandb_mode": mode, "wandb_url": info.get("url"),
           "wandb_group": info.get("group") or run.manifest.get("wandb", {}).get("group"),
           "wandb_project": info.get("project") or run.manifest.get("wandb", {}).get("project"),
           "wandb_dirs": [], "wandb_sync": None}
    if wid and mode == "offline":
        out["wandb_dirs"] = sorted(glob.glob(str(run.dir / "wandb" / f"offline-run-*-{wid}"))) or (
            [info["dir"]] if info.get("dir") else [])
        out["wandb_sync"] = wandb_sync_command(run.dir, {**info, "mode": mode})
    return out


def summarize(run: Run, sched: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    events = run.job_events()
    records = run.rundir.metrics()
    state = run_state(sched, events)
    last, best = metric_summary(records)
    total = run.manifest.get("config", {}).get("train", {}).get("steps")
    total = runs.end_step(run.events(), total) if total else total
    ckpts = run.rundir.complete_checkpoints()
    step = max([records[-1].get("step", 0) if records else 0] + [step_of(c) for c in ckpts[-1:]])
    running = state in scheduler.ACTIVE and state not in ("PENDING", "REQUEUED", "REQUEUE_HOLD")
    spans = runs.attempts(events, [r["time"] for r in records if _is_number(r.get("time"))],
                          now=now if running else None)
    wall = sum(end - start for start, end in spans)
    gpus = run.manifest.get("resources", {}).get("gpus", 0)
    # each attempt at its own number of GPUs (a resume may use another: the manifest holds the newest)
    ranks = [e.get("world_size") or gpus for e in events if e.get("event") == "start"]
    gpu_seconds = sum((end - start) * w for (start, end), w in zip(spans, ranks)) if gpus else 0.0
    marked = run.rundir.best()
    best_ckpt = str(run.rundir.checkpoints / marked["checkpoint"]) if marked else None
    best_by = "eval/mifid" if marked else None
    rate = step_rate(records)
    eta = (total - step) / rate if running and rate and total and step < total else None
    return {
        "run": run.name, "experiment": run.experiment, "seed": run.manifest.get("seed"), "state": state,
        "job_id": run.job_id, "executor": run.executor, "cluster": run.manifest.get("cluster", {}).get("name"),
        "step": step, "total_steps": total, "requeues": runs.requeue_count(events),
        "world_size": run.manifest.get("resources", {}).get("world_size"), "gpus": gpus,
        "attempts": len(spans), "wall_time_s": round(wall, 1), "gpu_hours": round(gpu_seconds / 3600, 4),
        "img_per_s": last.get("img_per_s"), "steps_per_s": rate, "eta_s": eta, "last_problem": last_problem(run),
        "last": last, "best": best,
        "latest_checkpoint": str(ckpts[-1]) if ckpts else None, "best_checkpoint": best_ckpt, "best_by": best_by,
        **wandb_summary(run),
        "submitted_at": run.manifest.get("submitted_at"), "git_commit": run.manifest.get("git", {}).get("commit"),
        "git_dirty": run.manifest.get("git", {}).get("dirty"), "run_dir": str(run.dir),
        "log": run.manifest.get("job", {}).get("log"),
    }


def step_rate(records: list[dict[str, Any]], window: int = 4) -> float | None:
    """Steps per second of wall time over the last few logging periods (logging and checkpoints included)."""
    timed = [r for r in records if "loss/G" in r and _is_number(r.get("time"))][-window:]
    if len(timed) < 2 or timed[-1]["time"] <= timed[0]["time"] or timed[-1]["step"] <= timed[0]["step"]:
        return None
    return (timed[-1]["step"] - timed[0]["step"]) / (timed[-1]["time"] - timed[0]["time"])


def last_problem(run: Run) -> str | None:
    """The run's newest warning or failure, as one line: what said it, and what."""
    events = run.events()
    for event in reversed(events):
        if event.get("event") in ("resubmitted", "not_resubmitted", "node_failed"):
            return recovery_line(event, events)
        if event.get("event") == "warning":
            return f"{event.get('service')}: {event.get('message')}"
        if event.get("event") == "failed":
            rank = f" (rank {event['rank']})" if "rank" in event else ""
            return f"failed{rank}: {event.get('error')}"
        if event.get("event") == "cancelled":
            return f"cancelled at step {event.get('step')}, checkpoint {Path(event.get('checkpoint') or '-').name}"
    return None


def recovery_line(event: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """``node cg-node2 failed (attempt 1): job 57 --exclude=cg-node2`` (launcher/recovery.py's events)."""
    failed = [e.get("node") for e in events
              if e.get("event") == "node_failed" and e.get("job_id") == event.get("job_id")]
    what = f"node {','.join(map(str, failed))} failed" if failed else "requeue without scontrol"
    head = f"{what} (attempt {event.get('attempt')})"
    if event["event"] == "resubmitted":
        exclude = ",".join(event.get("exclude") or [])
        return f"{head}: job {event.get('job')}" + (f" --exclude={exclude}" if exclude else "")
    if event["event"] == "not_resubmitted":
        return f"{head}: not resubmitted ({event.get('reason')})"
    return head


def collect(run_root: Path, experiments: list[str] | None = None) -> list[dict[str, Any]]:
    found = list(runs.iter_runs(run_root, experiments))
    chained = [step["job_id"] for r in found for step in r.manifest.get("then", []) if step.get("job_id")]
    info, steps = scheduler.states_and_jobs(found, chained)  # one squeue (+ at most one sacct) for everything
    rows = [summarize(r, info.get(str(r.dir), {})) for r in found]
    for row, run in zip(rows, found):
        if run.manifest.get("then"):
            row["then"] = [{**step, "state": steps.get(step["job_id"], {}).get("state", "UNKNOWN")}
                           for step in run.manifest["then"]]
    return rows


def chain_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per ``--then`` chain of the rows shown: ``then: collect 125 (PENDING, after 123), report 126 ...``."""
    from launcher.chain import describe_chain

    seen, lines = set(), []
    for row in rows:
        chain = row.get("then")
        key = tuple(step["job_id"] for step in chain or [])
        if chain and key not in seen:
            seen.add(key)
            lines.append(describe_chain(chain, {step["job_id"]: step["state"] for step in chain}))
    return lines


# ------------------------------------------------------------------------------------------ output


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Fixed-width text table; ``columns`` are (header, key) with dotted keys into nested dicts."""
    def get(row: dict[str, Any], key: str) -> Any:
        value: Any = row
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    return format_table([h for h, _ in columns], [[get(r, k) for _, k in columns] for r in rows])


STATUS_COLUMNS = [("RUN", "run"), ("EXP", "experiment"), ("JOB", "job_id"), ("STATE", "state"),
                  ("STEP", "progress"), ("IMG/S", "img_per_s"), ("ETA", "eta"), ("GPU_H", "gpu_hours"),
                  ("REQUEUES", "requeues"), ("LOSS_G", "last.loss/G"), ("LOSS_D", "last.loss/D"), ("LAST", "problem")]
GATHER_COLUMNS = [("RUN", "run"), ("EXP", "experiment"), ("SEED", "seed"), ("STATE", "state"), ("STEP", "progress"),
                  ("WALL_H", "wall_h"), ("GPU_H", "gpu_hours"), ("LOSS_G", "last.loss/G"),
                  ("BEST_LOSS_G", "best.loss/G.value"),
                  ("FID", "last.eval/fid"), ("W&B", "wandb_ref")]


def with_display_fields(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["progress"] = f"{row['step']}/{row['total_steps']}" if row.get("total_steps") else str(row["step"])
    row["wall_h"] = round(row["wall_time_s"] / 3600, 3)
    row["eta"] = format_duration(row["eta_s"]) if row.get("eta_s") is not None else None
    problem = row.get("last_problem")
    row["problem"] = (problem[:57] + "...") if problem and len(problem) > 60 else problem
    offline = f"{row['wandb_id']} ({row['wandb_mode']})" if row.get("wandb_id") else None
    row["wandb_ref"] = row.get("wandb_url") or offline
    return row


def flat(row: dict[str, Any]) -> dict[str, Any]:
    """One CSV row: nested last/best metrics become ``last.loss/G``, ``best.loss/G`` (+ ``best.loss/G.step``)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key == "last":
            out.update({f"last.{k}": v for k, v in value.items()})
        elif key == "best":
            for k, v in value.items():
                out[f"best.{k}"] = v["value"]
                out[f"best.{k}.step"] = v["step"]
        elif isinstance(value, list):
            out[key] = " ".join(map(str, value))
        else:
            out[key] = value
    return out


def write_outputs(rows: list[dict[str, Any]], out_dir: Path, stem: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / f"{stem}.json", out_dir / f"{stem}.csv"
    json_path.write_text(json.dumps(rows, indent=1) + "\n")
    flats = [flat(r) for r in rows]
    fields: list[str] = []
    for r in flats:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(flats)
    csv_path.write_text(buf.getvalue())
    return csv_path, json_path
