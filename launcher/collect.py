"""``launcher collect``: finished runs -> checked Kaggle submissions ``<out>/<exp>-<run>.zip``.

For each finished run (state as ``gather`` decides it) the generator of its best checkpoint (``checkpoints/best``,
written by the in-training MiFID evaluation; else the newest complete one) translates the photos (default: the
run's own photo domain, ``data.root`` + ``data.domain_a``, or the embedded demo set's ``photo`` shards) into a zip
of 256x256 JPEGs, on the cluster as a 1-GPU job (the run's SLURM profile) or here. The zip is written under a
temporary name, checked as Kaggle would check it, and renamed to its final name only when its entries are valid.
The 7,000-10,000 count rule is a warning below 7,000 (a --limit, or a photo set smaller than Kaggle's) and an
error above 10,000. Beside each zip written, ``<out>/<exp>-<run>.generator/`` holds the generator that made it
(``generator.safetensors`` + ``generator.yaml``, as ``export --generator-only`` writes them) and its model card
(``MODEL_CARD.md``, ``model_card.yaml``, ``samples.png``; GPU-hours from the launcher's job records), written here
after the export, also for an export job; a card that fails is a warning, the zip stays. ``--missing-ok`` (what
``submit --then`` uses): named runs that did not complete are skipped and printed as ``missing: ...`` lines.
Nothing here imports torch at module level: the export itself (:func:`export_run`) and the card import it when
they run.
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cyclegan_dist.errors import UserError
from launcher import clusters, gather, runs

EXPORT_TIME = "01:00:00"  # default time limit of an export job
CARD_SUFFIX = ".generator"  # <out>/<exp>-<run>.generator/: the generator behind <exp>-<run>.zip and its model card
GPU_HOURS_HOW = "the launcher's job records: wall time of every attempt x GPUs"


# ------------------------------------------------------------------------------------------ which runs


def known_experiments(run_root: Path) -> list[str]:
    """The experiments on the config search path and those that have runs under ``run_root``."""
    from cyclegan_dist.config import known_experiments as on_search_path

    return sorted(set(on_search_path()) | {r.experiment for r in runs.iter_runs(run_root)})


def select_runs(run_root: Path, experiments: list[str] | None, names: list[str] | None = None) -> list[dict[str, Any]]:
    """gather rows of the finished runs to use, in experiment order (as given), then submission order.

    Finished = COMPLETED. A run named with ``--run`` may also be one that ended otherwise (failed, cancelled,
    stopped after its requeues) as long as it has a complete checkpoint. Every mistake is a UserError."""
    experiments = experiments or None
    if experiments:
        known = known_experiments(run_root)
        unknown = [e for e in experiments if e not in known]
        if unknown:
            raise UserError(f"unknown experiment{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                            f"known: {', '.join(known)} (runs under {run_root})")
    every = gather.collect(run_root, experiments)
    rows = every
    if names:
        chosen = []
        for name in names:
            row = named_row(every, name, experiments, run_root)
            if row["state"] != "COMPLETED" and (row["state"] not in gather.TERMINAL or not row["latest_checkpoint"]):
                raise UserError(f"run {row['experiment']}/{row['run']} is {row['state']}"
                                + ("" if row["state"] not in gather.TERMINAL else " and has no complete checkpoint")
                                + ": nothing to use yet")
            if row not in chosen:
                chosen.append(row)
        rows = chosen
    else:
        rows = [r for r in rows if r["state"] == "COMPLETED"]
    for row in rows:
        if not row["latest_checkpoint"]:
            raise UserError(f"run {row['experiment']}/{row['run']} is {row['state']} but has no complete checkpoint "
                            f"under {row['run_dir']}/checkpoints")
    where = f"under {run_root}"
    if not rows:
        raise UserError(f"no finished run {_of(experiments)}{where}{_states_hint(every)}")
    if experiments:
        for exp in experiments if not names else []:
            if not any(r["experiment"] == exp for r in rows):
                mine = [r for r in every if r["experiment"] == exp]
                raise UserError(f"no finished run of {exp} {where}{_states_hint(mine)}")
        order = {e: i for i, e in enumerate(experiments)}
        rows.sort(key=lambda r: order[r["experiment"]])  # stable: submission order within an experiment
    return rows


def named_row(every: list[dict[str, Any]], name: str, experiments: list[str] | None, run_root: Path
              ) -> dict[str, Any]:
    """The gather row ``--run name`` means (name, <exp>/<name> or run directory); a UserError otherwise."""
    hits = [r for r in every if name in (r["run"], f"{r['experiment']}/{r['run']}", r["run_dir"])]
    if not hits:
        where = f" of {', '.join(experiments)}" if experiments else ""
        known = ", ".join(r["run"] for r in every[-10:]) or "none"
        raise UserError(f"--run {name}: no such run{where} under {run_root} (runs: {known})")
    if len(hits) > 1:
        matches = ", ".join(h["experiment"] + "/" + h["run"] for h in hits)
        raise UserError(f"--run {name} matches several runs ({matches}); give <exp>/<run>")
    return hits[0]


def select_completed(run_root: Path, experiments: list[str] | None, names: list[str] | None
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``--missing-ok``: of the runs named with ``--run``, those that completed (with a checkpoint) and those that
    did not (missing), each in the order named. Without names: :func:`select_runs`, nothing missing."""
    if not names:
        return select_runs(run_root, experiments), []
    every = gather.collect(run_root, experiments or None)
    found: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    for name in names:
        row = named_row(every, name, experiments, run_root)
        if row not in found and row not in missing:
            (found if row["state"] == "COMPLETED" and row["latest_checkpoint"] else missing).append(row)
    if not found:
        raise UserError(f"none of the {len(missing)} runs named with --run completed under {run_root} "
                        f"({'; '.join(missing_lines(missing))}); `python -m launcher status` shows them")
    return found, missing


def missing_lines(missing: list[dict[str, Any]]) -> list[str]:
    """``missing: <exp> seed N (<state>)`` for each run of a sweep that did not complete."""
    why = {"COMPLETED": "COMPLETED, no checkpoint", "ENDED": "ENDED, never started or no record of its end"}
    return [f"missing: {r['experiment']} seed {r['seed']} ({why.get(r['state'], r['state'])})" for r in missing]


def _of(experiments: list[str] | None) -> str:
    return f"of {', '.join(experiments)} " if experiments else ""


def _states_hint(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return " (none submitted: `python -m launcher submit --exp ...` queues one; or check --run-root)"
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return f" ({states}; `python -m launcher status` shows them)"


# ------------------------------------------------------------------------------------------ photos


def run_config(row: dict[str, Any]) -> dict[str, Any]:
    """The run's resolved config: its config.yaml (written by training; includes resume --set), else the manifest's."""
    path = Path(row["run_dir"]) / "config.yaml"
    if path.is_file():
        try:
            raw = yaml.safe_load(path.read_text())
            if isinstance(raw, dict):
                return raw
        except yaml.YAMLError:
            pass
    return runs.read_manifest(Path(row["run_dir"])).get("config", {})


def default_photos(config: dict[str, Any]) -> str:
    """The run's photo domain as a shard glob: ``<data.root>/<domain_a>-*.tar``, or the demo set's photo shards."""
    data = config.get("data", {})
    if data.get("root") and "://" in str(data["root"]):  # s3:// or https://: the job reads it through its node cache
        return f"{str(data['root']).rstrip('/')}/{data.get('domain_a', 'photo')}-*.tar"
    if data.get("root"):
        root = Path(os.path.expandvars(str(data["root"]))).expanduser()
        return str(root / f"{data.get('domain_a', 'photo')}-*.tar")
    from cyclegan_dist.config import DataConfig, from_dict
    from cyclegan_dist.data.demo import demo_root

    return str(demo_root(from_dict(data, DataConfig, where="the run's config", prefix="data.")) / "photo-*.tar")


def check_photos(source: str) -> None:
    """Fail here (a UserError naming the path) rather than in a job; a remote root: its index must be readable."""
    from cyclegan_dist.data import remote
    from cyclegan_dist.images import ImageSource

    if remote.is_remote(source):
        remote.read_remote_index(source.rstrip("/").rpartition("/")[0])
        return
    ImageSource(source)


# ------------------------------------------------------------------------------------------ the export


def export_run(run_dir: str, photos: str, out_zip: str, limit: int | None = None, batch_size: int = 16,
               progress: bool = False) -> dict[str, Any]:
    """Export one run's best generator over ``photos`` into ``out_zip`` and check it; here or in a job.

    Returns {checkpoint, best, images, errors, warnings, path (None unless written), device, seconds}."""
    import dataclasses

    from cyclegan_dist.data.remote import local_source
    from cyclegan_dist.eval.export import export_submission
    from cyclegan_dist.rundir import RunDir, resolve_checkpoint

    ckpt = resolve_checkpoint(run_dir)
    best = RunDir(run_dir).best()
    result = export_submission(run_dir, local_source(photos), out_zip, batch_size=batch_size, limit=limit,
                               progress=progress)
    return {**dataclasses.asdict(result), "checkpoint": str(ckpt),
            "best": best is not None and best["checkpoint"] == ckpt.name}


# ------------------------------------------------------------------------------------------ where it runs


@dataclass
class Item:
    row: dict[str, Any]
    photos: str
    out: Path
    where: str = "here"  # here | cluster
    profile: clusters.Profile | None = None  # the SLURM profile of an export job
    job: Any = None
    result: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None
    card: Path | None = None  # MODEL_CARD.md beside the zip, once written

    @property
    def card_dir(self) -> Path:
        return self.out.with_name(self.out.stem + CARD_SUFFIX)

    @property
    def label(self) -> str:
        return f"{self.row['experiment']}/{self.row['run']}"


def export_profile(run: runs.Run, cluster: str) -> clusters.Profile:
    """The SLURM profile an export job of ``run`` goes to: ``--cluster`` when given, else the run's own profile,
    else the default SLURM profile (``--cluster auto`` rules)."""
    if cluster not in ("auto", "slurm"):
        profile = clusters.resolve_cluster(cluster)
    else:
        info = run.manifest.get("cluster", {})
        profile = None
        if info.get("executor") == "slurm":
            path = Path(info.get("path") or "")
            profile = clusters.load_profile(path if path.is_file() else info.get("name", "default"))
        if profile is None:
            profile = clusters.resolve_cluster("slurm")
    if profile.executor != "slurm":
        raise UserError(f"--on-cluster: profile {profile.name} is not a SLURM profile; use --here")
    if not clusters.have_sbatch():
        raise UserError("--on-cluster: sbatch/srun are not on PATH here; run from a login node, or use --here")
    return profile


def decide_where(run: runs.Run, here: bool, on_cluster: bool) -> str:
    if here:
        return "here"
    if on_cluster:
        return "cluster"
    return "cluster" if clusters.have_sbatch() and run.executor == "slurm" else "here"


def submit_export(item: Item, run: runs.Run, run_root: Path, cluster: str, time_limit: str, limit: int | None,
                  batch_size: int) -> None:
    """One SLURM job (1 task, 1 GPU) running :func:`export_run`; submitit's files in <run_root>/.submitit/."""
    from launcher.executors import make_executor
    from launcher.snapshot import take_snapshot
    from launcher.submit import job_env
    from launcher.submitit_adapter import sbatch_message, submission_env

    profile = item.profile
    assert profile is not None
    resources = clusters.Resources(gpus=1, nodes=1, tasks_per_node=1, cpus_per_task=profile.cpus_per_task)
    folder = run_root / ".submitit" / f"collect-{runs.timestamp()}-{secrets.token_hex(3)}"
    env = job_env(take_snapshot(folder)["path"])
    partition = run.manifest.get("cluster", {}).get("partition") if cluster in ("auto", "slurm") else None
    executor = make_executor(profile, resources, folder, f"export-{item.row['run']}",
                             time_min=clusters.parse_time(time_limit), partition=partition, env=env)
    from submitit.core.utils import FailedJobError

    try:
        with submission_env(env):
            item.job = executor.submit(export_run, item.row["run_dir"], item.photos, str(item.out), limit, batch_size)
    except FailedJobError as exc:
        raise UserError(f"sbatch refused the export job of {item.label}: {sbatch_message(exc)}") from None
    item.where = f"job {item.job.job_id}"
    print(f"submitted export of {item.label}: job {item.job.job_id} on {profile.name} "
          f"(log {folder / f'{item.job.job_id}_0_log.out'})", flush=True)


def wait_export(item: Item) -> None:
    try:
        item.result = item.job.result()
    except Exception as exc:  # noqa: BLE001 - submitit re-raises the job's error (or its failure) here
        item.failure = job_error(str(exc)) + f" (log {item.job.paths.stdout})"


def job_error(text: str) -> str:
    """The last line of the job's traceback in submitit's message (the error itself), else its last line."""
    blocks = text.split("----------------------")
    body = blocks[1] if len(blocks) >= 3 else text
    lines = [ln.strip() for ln in body.strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else "the job failed"
    for prefix in ("cyclegan_dist.errors.UserError: ", "submitit.core.utils.UncompletedJobError: "):
        line = line.removeprefix(prefix)
    return line[:400]


def run_here(item: Item, limit: int | None, batch_size: int) -> None:
    try:
        item.result = export_run(item.row["run_dir"], item.photos, str(item.out), limit, batch_size,
                                 progress=sys.stderr.isatty())
    except UserError as exc:
        item.failure = str(exc)


def write_card(item: Item) -> None:
    """The generator that made the zip (its checkpoint, as the export chose it) and its model card, into
    ``item.card_dir``; any failure is a warning (printed), never a lost zip."""
    from cyclegan_dist.eval.model_card import write_model_card
    from cyclegan_dist.models.io import export_generator
    from launcher.report import launcher_gpu_hours

    res = item.result
    check = "valid" if not res.get("warnings") else "valid, with warnings: " + "; ".join(res["warnings"])
    submission = {"file": item.out.name, "images": res.get("images"), "photos": item.photos, "check": check}
    try:
        export_generator(res["checkpoint"], item.card_dir)
        hours = launcher_gpu_hours(item.row)
        item.card = write_model_card(item.card_dir, res["checkpoint"], gpu_hours=hours,
                                     gpu_hours_how=GPU_HOURS_HOW if hours is not None else None, submission=submission)
    except Exception as exc:  # noqa: BLE001 - the card is extra: the zip is written and checked already
        why = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line
        print(f"warning: {item.label}: model card not written in {item.card_dir}: {why}", file=sys.stderr)
        return
    print(f"model card of {item.label}: {item.card}", flush=True)


# ------------------------------------------------------------------------------------------ the command


COLUMNS = [("RUN", "run"), ("EXP", "experiment"), ("WHERE", "where"), ("CHECKPOINT", "checkpoint"),
           ("IMAGES", "images"), ("VALID", "valid"), ("PATH", "path")]


def collect_submissions(run_root: Path, experiments: list[str] | None, names: list[str] | None, *,
                        photos: str | None, out_dir: Path, here: bool, on_cluster: bool, cluster: str,
                        limit: int | None, batch_size: int, time_limit: str, missing_ok: bool = False) -> int:
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    clusters.parse_time(time_limit)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; give a directory (submissions go in as <exp>-<run>.zip)")
    if missing_ok:
        rows, missing = select_completed(run_root, experiments, names)
        for line in missing_lines(missing):
            print(line, flush=True)
    else:
        rows = select_runs(run_root, experiments, names)
    if photos is not None:
        check_photos(photos)
        photos = os.path.abspath(os.path.expanduser(photos))  # a job's working directory may differ
    planned: list[tuple[Item, runs.Run]] = []
    for row in rows:
        source = photos or default_photos(run_config(row))
        if photos is None:
            check_photos(source)
        run = runs.Run(Path(row["run_dir"]), runs.read_manifest(Path(row["run_dir"])))
        item = Item(row, source, out_dir / f"{row['experiment']}-{row['run']}.zip", decide_where(run, here, on_cluster))
        if item.where == "cluster":
            item.profile = export_profile(run, cluster)  # every profile mistake before the first sbatch
        planned.append((item, run))
    out_dir.mkdir(parents=True, exist_ok=True)
    for item, run in planned:  # queue the jobs first, export here while they run
        if item.where == "cluster":
            submit_export(item, run, run_root, cluster, time_limit, limit, batch_size)
    items = [item for item, _ in planned]
    for item in items:
        if item.where == "here":
            print(f"exporting {item.label} here from {item.photos}" + (f" (first {limit})" if limit else ""),
                  flush=True)
            run_here(item, limit, batch_size)
    for item in items:
        if item.job is not None:
            wait_export(item)
    for item in items:
        if not item.failure and item.result.get("path"):
            write_card(item)
    return _summarize(items)


def _summarize(items: list[Item]) -> int:
    table_rows, bad = [], 0
    for item in items:
        res = item.result
        if item.failure:
            print(f"problem: {item.label}: export failed: {item.failure}", file=sys.stderr)
        for warning in res.get("warnings", []):
            print(f"warning: {item.label}: {warning}", file=sys.stderr)
        for error in res.get("errors", []):
            print(f"problem: {item.label}: {error}", file=sys.stderr)
        ok = not item.failure and not res.get("errors")
        bad += not ok
        ckpt = Path(res["checkpoint"]).name + (" (best)" if res.get("best") else " (latest)") if res else None
        valid = "NO" if not ok else ("yes, count warning" if res.get("warnings") else "yes")
        table_rows.append({"run": item.row["run"], "experiment": item.row["experiment"], "where": item.where,
                           "checkpoint": ckpt, "images": res.get("images"), "valid": valid,
                           "path": res.get("path") or ("export failed" if item.failure else "not written")})
    print(gather.table(table_rows, COLUMNS))
    if bad:
        print(f"{bad} of {len(items)} submission{'s' if len(items) > 1 else ''} not written", file=sys.stderr)
    return 1 if bad else 0

