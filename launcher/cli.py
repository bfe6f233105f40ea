"""Submit CycleGAN runs to SLURM (or this machine) with submitit; status, gather, cancel, collect, report.

  python -m launcher submit --exp resnet9 --gpus 8
  python -m launcher submit --exp resnet9,unet --seeds 0,1,2 --gpus 16 --cluster mycluster --time 24:00:00
  python -m launcher submit --exp smoke                 # no sbatch here: runs on this machine, follows the log
  python -m launcher status
  python -m launcher gather --exp resnet9
  python -m launcher cancel RUN
  python -m launcher collect --exp resnet9,unet        # best checkpoints -> submissions/<exp>-<run>.zip, checked
  python -m launcher report --exp resnet9,unet         # reports/resnet9_vs_unet/: report.md, report.html, pictures

GPUs: one task (rank) per GPU; --gpus N fills nodes of the profile's gpus_per_node (N must fill whole nodes).
Default: one full node on SLURM; on this machine all its CUDA GPUs, or one CPU rank when it has none.
--gpus 0 runs --cpu-ranks N CPU processes (gloo). A local run may use at most the GPUs this machine has.
A mistake in the input prints one line (error: ...) and exits 2, with nothing submitted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cyclegan_dist.errors import UserError
from launcher import clusters, runs


def _run_root(args: argparse.Namespace) -> Path:
    profile_root = None
    if not args.run_root:
        from launcher import clusters

        try:
            profile_root = clusters.resolve_cluster(args.cluster).run_root
        except UserError:
            profile_root = None
    return runs.resolve_run_root(args.run_root, profile_root)


def cmd_submit(args: argparse.Namespace) -> int:
    from launcher import chain, submit

    steps, then_limit = chain.parse_then(getattr(args, "then", None)), getattr(args, "then_limit", None)
    plan = submit.plan(args) if args.command == "submit" else submit.plan_resume(args, _run_root(args))
    local = plan.profile.executor == "local"
    if steps and local and args.detach:
        raise UserError("--then on this machine runs the steps after the training, in the foreground: drop --detach "
                        "(or run `python -m launcher collect`/`report` once the runs have ended)")
    if then_limit is not None and (then_limit < 1 or "collect" not in steps):
        raise UserError("--then-limit N: N >= 1, and only with --then collect (the photos the collect step exports)")
    print(submit.describe(plan))
    out_dir = chain.outputs_dir()
    if steps:
        print("then: " + ", ".join(f"{s} ({'here, after the training' if local else 'a CPU job after the training'})"
                                   for s in steps) + f"; outputs under {out_dir}/submissions and {out_dir}/reports")
    if args.dry_run:
        print(submit.plan_details(plan))
        script = submit.sbatch_preview(plan)
        if script:
            print("the sbatch script submitit would write" + (" (one array task per run)" if len(plan.runs) > 1 else "")
                  + ":\n" + script)
        print("dry run: nothing submitted")
        return 0
    submitted, jobs = submit.submit(plan)
    for run in submitted:
        verb = "submitted" if args.command == "submit" else "resumed"
        print(f"{verb} {run.experiment}/{run.name}: job {run.job_id}  (log {run.manifest['job']['log']})")
    if steps and not local:
        queued = chain.submit_chain(plan, submitted, jobs, steps, out_dir, then_limit)
        print(chain.describe_chain(queued, {}, unknown="queued"))
    if local and not args.detach:
        print("following the log (Ctrl-C stops the run with a checkpoint)", flush=True)
        from launcher.localrun import follow_local

        code = follow_local(submitted, jobs)
        _print_status(plan.run_root, [r.experiment for r in submitted], names={r.name for r in submitted})
        if steps and code != 130:  # not after a Ctrl-C
            code = chain.run_local(plan, steps, out_dir, then_limit) or code
        return code
    if local:
        print("running in the background on this machine; `python -m launcher status` shows progress")
    return 0


def _print_status(run_root: Path, experiments: list[str] | None, names: set[str] | None = None,
                  as_json: bool = False) -> list[dict]:
    from launcher import gather

    rows = [r for r in gather.collect(run_root, experiments) if names is None or r["run"] in names]
    if as_json:
        print(json.dumps(rows, indent=1))
    elif rows:
        print(gather.table([gather.with_display_fields(r) for r in rows], gather.STATUS_COLUMNS))
    else:
        print(f"no runs under {run_root}" + (f" for {', '.join(experiments)}" if experiments else ""))
    if not as_json:
        for line in gather.chain_lines(rows):
            print(line)
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    from launcher import gather
    from launcher.submit import split_list

    names = set(args.runs) if args.runs else None
    run_root, experiments = _run_root(args), split_list(args.exp) or None
    if not args.watch:
        _print_status(run_root, experiments, names, args.json)
        return 0
    try:  # refresh in place until every run has ended
        while True:
            sys.stdout.write("\033[H\033[J" if sys.stdout.isatty() else "\n")
            print(time.strftime("%Y-%m-%d %H:%M:%S"), f"(every {args.watch:g} s; Ctrl-C stops watching)")
            rows = _print_status(run_root, experiments, names)
            if rows and all(r["state"] in gather.TERMINAL for r in rows):
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def cmd_gather(args: argparse.Namespace) -> int:
    from launcher import gather
    from launcher.submit import split_list

    run_root = _run_root(args)
    experiments = split_list(args.exp) or None
    rows = gather.collect(run_root, experiments)
    if not args.all:
        rows = [r for r in rows if r["state"] in gather.TERMINAL]
    if not rows:
        raise UserError(f"no finished runs under {run_root}" + (f" for {', '.join(experiments)}" if experiments else "")
                        + " (--all includes runs still pending or running)")
    print(gather.table([gather.with_display_fields(r) for r in rows], gather.GATHER_COLUMNS))
    out = Path(args.out).expanduser().absolute() if args.out else run_root
    stem = "gather-" + ("-".join(experiments) if experiments else "all")
    csv_path, json_path = gather.write_outputs(rows, out, stem)
    for r in rows:
        if r.get("wandb_sync"):
            print(f"{r['run']}: W&B offline; upload with: {r['wandb_sync']}")
    print(f"wrote {csv_path} and {json_path}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from launcher import gather, scheduler

    run_root = _run_root(args)
    for name in args.runs:
        for run in runs.find_runs(run_root, name):
            state = gather.run_state(scheduler.states([run]).get(str(run.dir), {}), run.job_events())
            if state not in scheduler.ACTIVE and state not in ("UNKNOWN", "SUBMITTED"):
                print(f"{run.experiment}/{run.name}: {state}, nothing to cancel")
                continue
            how = scheduler.cancel(run)
            print(f"cancelled {run.experiment}/{run.name} ({how}); it saves a checkpoint if it can")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from launcher import logs

    run = runs.find_run(_run_root(args), args.run)
    if args.follow:
        return logs.follow(run, args.rank)
    logs.show(run, args.lines, args.rank)
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from launcher import collect
    from launcher.submit import split_list

    return collect.collect_submissions(
        _run_root(args), split_list(args.exp) or None, split_list(args.runs) or None, photos=args.photos,
        out_dir=Path(args.out).expanduser().absolute(), here=args.here, on_cluster=args.on_cluster,
        cluster=args.cluster, limit=args.limit, batch_size=args.batch_size, time_limit=args.time,
        missing_ok=args.missing_ok)


def cmd_report(args: argparse.Namespace) -> int:
    from cyclegan_dist.rundir import check_name
    from launcher import report
    from launcher.submit import split_list

    if args.name is not None:
        check_name("--name", args.name)  # reports/<name>/
    path = report.make_report(_run_root(args), split_list(args.exp) or None, split_list(args.runs) or None,
                              args.name, Path(args.out).expanduser().absolute(), missing_ok=args.missing_ok)
    print(f"wrote {path}, {path.parent / 'report.html'}, {path.parent / 'grid.png'}, {path.parent / 'curves.png'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launcher", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_submit, add_resume, add_status, add_gather, add_cancel, add_collect, add_report, add_logs,
                add_clusters):
        add(sub)
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-root",
                   help="where runs live (default: $CYCLEGAN_RUN_ROOT, the profile's run_root, ./runs)")
    p.add_argument("--cluster", default="auto",
                   help="auto | slurm | local | a profile name (./slurm/clusters, the shipped ones) | a YAML path")


def _resources(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpus", type=int, help="total GPUs = ranks (0: CPU ranks); default one node / all local GPUs")
    p.add_argument("--gpus-per-node", type=int, help="override the profile's gpus_per_node")
    p.add_argument("--cpu-ranks", type=int, help="CPU processes for --gpus 0 (default 1)")
    p.add_argument("--cpus-per-task", type=int, help="override the profile's cpus_per_task")
    p.add_argument("--time", help="time limit, SLURM syntax (e.g. 24:00:00); overrides the profile")
    p.add_argument("--partition", help="override the profile's partition")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run, e.g. --set train.steps=2000 data.root=/data/shards")
    p.add_argument("--detach", action="store_true", help="local executor: do not follow the log")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and show the plan and the sbatch script (works without sbatch); submit nothing")
    p.add_argument("--no-snapshot", action="store_true",
                   help="jobs run the live code, not a copy taken at submission (development only)")
    _common(p)
    p.set_defaults(func=cmd_submit)


def add_submit(sub) -> None:
    p = sub.add_parser("submit", help="validate and queue runs (a job array for a sweep)")
    p.add_argument("--exp", action="append", required=True, metavar="EXP[,EXP...]",
                   help="experiments (configs/*.yaml stems, e.g. resnet9,unet) or YAML paths")
    p.add_argument("--seeds", action="append", metavar="S[,S...]", help="seeds (default: the config's seed)")
    p.add_argument("--name", help="run name (a prefix within a sweep); default <exp>-s<seed>-<timestamp>")
    _then(p, "the runs of this submission; outputs in ./submissions and ./reports/<sweep name>")
    _resources(p)


def add_resume(sub) -> None:
    p = sub.add_parser("resume", help="a new job for a stopped/failed/cancelled run: continues its checkpoints")
    p.add_argument("run", metavar="RUN")
    _then(p, "this run; outputs in ./submissions and ./reports/<run name>")
    _resources(p)


def _then(p, which: str) -> None:
    p.add_argument("--then", action="append", metavar="STEP[,STEP...]",
                   help="collect,report: queue these steps after the training (SLURM: CPU jobs with "
                   f"--dependency=afterany on the training jobs; local: here, after the training) for {which}")
    p.add_argument("--then-limit", type=int, metavar="N", help="--then collect: only the first N photos (a test)")


def add_status(sub) -> None:
    p = sub.add_parser("status", help="table of runs: job, state, step/total, img/s, ETA, GPU-hours, requeues, "
                       "last losses, last warning or error")
    p.add_argument("runs", nargs="*", metavar="RUN", help="only these runs")
    p.add_argument("--exp", action="append", help="only these experiments")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--watch", type=float, nargs="?", const=5.0, default=None, metavar="SECONDS",
                   help="refresh in place every SECONDS (default 5) until every run has ended")
    _common(p)
    p.set_defaults(func=cmd_status)


def add_gather(sub) -> None:
    p = sub.add_parser("gather", help="finished runs -> table + CSV + JSON (metrics, checkpoints, W&B, GPU-hours)")
    p.add_argument("--exp", action="append", help="only these experiments")
    p.add_argument("--out", help="directory for gather-<exp>.csv/.json (default: the run root)")
    p.add_argument("--all", action="store_true", help="include runs still pending or running")
    _common(p)
    p.set_defaults(func=cmd_gather)


def add_cancel(sub) -> None:
    p = sub.add_parser("cancel", help="stop runs (SIGTERM: they checkpoint if they can); RUN may be an array job id")
    p.add_argument("runs", nargs="+", metavar="RUN")
    _common(p)
    p.set_defaults(func=cmd_cancel)


def add_collect(sub) -> None:
    p = sub.add_parser("collect", help="finished runs' best generators -> checked Kaggle submission zips")
    p.add_argument("--exp", action="append", metavar="EXP[,EXP...]", help="experiments (default: all)")
    p.add_argument("--run", dest="runs", nargs="+", action="extend", metavar="RUN",
                   help="only these runs (also a failed/stopped run that has a complete checkpoint)")
    p.add_argument("--photos", metavar="SHARDS|DIR|ZIP",
                   help="photos to translate (default: the run's photo domain, data.root + data.domain_a)")
    p.add_argument("--out", default="submissions", help="directory for <exp>-<run>.zip and <exp>-<run>.generator/ (the "
                   "generator + its model card); default: ./submissions")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--here", action="store_true", help="export on this machine (default without sbatch, "
                       "or for runs that ran here)")
    where.add_argument("--on-cluster", action="store_true", help="export as a 1-GPU job on the run's SLURM profile "
                       "(default for SLURM runs where sbatch exists; --cluster NAME picks another profile)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N photos (a quick test)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per forward pass (default 16)")
    p.add_argument("--time", default="01:00:00", help="time limit of an export job (default 01:00:00)")
    _missing_ok(p)
    _common(p)
    p.set_defaults(func=cmd_collect)


def add_report(sub) -> None:
    p = sub.add_parser("report", help="finished runs -> report.md and report.html (table, winner, "
                       "gallery), grid.png, curves.png")
    p.add_argument("--exp", action="append", metavar="EXP[,EXP...]", help="experiments to compare (default: all)")
    p.add_argument("--run", dest="runs", nargs="+", action="extend", metavar="RUN", help="only these runs")
    p.add_argument("--name", help="report name (default: the experiments joined by _vs_)")
    p.add_argument("--out", default="reports", help="directory for <name>/ (default: ./reports)")
    _missing_ok(p)
    _common(p)
    p.set_defaults(func=cmd_report)


def _missing_ok(p: argparse.ArgumentParser) -> None:
    p.add_argument("--missing-ok", action="store_true", help="runs named with --run that did not complete are "
                   "left out and listed as missing (what --then uses), instead of an error")


def add_logs(sub) -> None:
    p = sub.add_parser("logs", help="every rank's log of a run's job: the last lines, or followed live (-f)")
    p.add_argument("run", metavar="RUN")
    p.add_argument("-n", "--lines", type=int, default=40, help="lines per rank (default 40)")
    p.add_argument("--rank", type=int, metavar="N", help="only rank N")
    p.add_argument("-f", "--follow", action="store_true", help="follow the logs while the job runs (Ctrl-C stops)")
    _common(p)
    p.set_defaults(func=cmd_logs)


def add_clusters(sub) -> None:
    p = sub.add_parser("clusters", help="the cluster profiles found, and where (search order)")
    p.set_defaults(func=cmd_clusters)

def cmd_clusters(args: argparse.Namespace) -> int:
    print("cluster profiles (--cluster NAME); search path (first match wins): "
          + ", ".join(map(str, clusters.profile_search_path())))
    for name, path in clusters.known_profiles().items():
        print(f"  {name:<16} {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
