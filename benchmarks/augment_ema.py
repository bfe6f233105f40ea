"""Better paintings at equal compute? The reference semantics vs DiffAugment vs generator EMA vs both, on a
data-poor demo setting (600 photos, 30 paintings: the 7,038 vs 300 of the Kaggle task, scaled down), for both
demo styles and both small generators, several seeds. Not a test: minutes of CPU per run.

    python -m benchmarks.augment_ema --out docs/augment-ema            # the full table (3 seeds, both styles)
    python -m benchmarks.augment_ema --quick --out /tmp/ae              # 1 seed, 1 style, few steps (a smoke)

Each run is the real CLI (``python -m cyclegan_dist train --json``) with the same steps, seed and data per setting.
Scores, on the demo set's held-out crops (disjoint from both training domains):
* PSNR(G(x), T(x)) in dB, the translation quality against the known painting transform T (EMA weights when on);
* FID of the translated held-out photos against the painting set (the real FID Inception; with this few images
  FID is biased upward, but comparable between settings, which all see the same images).
Writes ``results.md`` (mean +- std over seeds per style x generator x setting, the goal check), ``results.json``
and ``grid.png`` (per style: photos, T(photos), then each setting's translation, seed 0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cyclegan_dist.tables import format_table

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "reference": [],
    "diffaugment": ["loss.diffaugment=color,translation,cutout"],
    "ema": ["train.ema_decay=0.99"],
    "diffaugment+ema": ["loss.diffaugment=color,translation,cutout", "train.ema_decay=0.99"],
}
MODELS = ("resnet9-small", "unet-small")
STYLES = ("colour", "strokes")
GOAL_DB = 1.0


def run_one(out: Path, exp: str, style: str, setting: str, seed: int, args) -> dict:
    run_dir = out / "runs" / f"{style}-{exp}-{setting}-s{seed}"
    cmd = [sys.executable, "-m", "cyclegan_dist", "train", "--json", "--quiet", "--config", exp, "--run-dir",
           str(run_dir), "--resume", "never", "--archive", "--set", f"seed={seed}", f"train.steps={args.steps}",
           f"data.demo_style={style}", f"data.demo_photos={args.photos}", f"data.demo_paintings={args.paintings}",
           "data.num_workers=0", "train.sample_every=0", "eval.at_end=false", "eval.every=0", "wandb.mode=disabled",
           f"train.checkpoint_every={args.steps}", *SETTINGS[setting]]
    if args.reuse and (done := finished_run(run_dir, args.steps)) is not None:
        return {"style": style, "model": exp, "setting": setting, "seed": seed, "run_dir": str(run_dir),
                **done, "seconds": 0.0, "reused": True}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    return {"style": style, "model": exp, "setting": setting, "seed": seed, "run_dir": str(run_dir),
            "psnr": result["psnr_after"], "psnr_identity": result["psnr_identity"],
            "psnr_before": result["psnr_before"], "seconds": round(time.monotonic() - t0, 1)}


def finished_run(run_dir: Path, steps: int) -> dict | None:
    """The scores of a run that already completed ``steps`` steps (from its metrics.jsonl), else None."""
    try:
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    ended = any(e.get("event") == "train_end" and e.get("status") == "completed" and e.get("step") == steps
                for e in events)
    psnr = [m for m in metrics if "eval/psnr" in m]
    if not ended or not psnr or psnr[-1]["step"] != steps:
        return None
    return {"psnr": psnr[-1]["eval/psnr"], "psnr_identity": psnr[-1]["eval/psnr_identity"],
            "psnr_before": psnr[0]["eval/psnr"] if psnr[0]["step"] == 0 else None}


def previous_fids(out: Path) -> dict[str, float]:
    """run_dir -> FID from an earlier results.json in ``out`` (for --reuse)."""
    try:
        rows = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return {}
    return {r["run_dir"]: r["fid"] for r in rows if r.get("fid") is not None}


def translated_features(row: dict, inception, size: int):
    """Inception features of the held-out photos translated by the run's generator (EMA when it kept one)."""
    import torch

    from cyclegan_dist.config import load_config
    from cyclegan_dist.data.demo import demo_eval_pairs, demo_root
    from cyclegan_dist.data.transforms import to_uint8
    from cyclegan_dist.models.io import load_generator

    config = load_config(Path(row["run_dir"]) / "config.yaml")
    d = config.data
    root = demo_root(d)
    x, _ = demo_eval_pairs(root, size=d.crop_size)
    generator, _ = load_generator(row["run_dir"])
    with torch.inference_mode():
        y = to_uint8(generator(x))
    return inception(y)


def painting_features(style: str, args, inception, size: int):
    import numpy as np

    from cyclegan_dist.data.demo import ensure_demo_shards
    from cyclegan_dist.images import ImageSource

    root = ensure_demo_shards(size=args.demo_size, n_train=args.photos, n_paintings=args.paintings, style=style)
    return inception(np.stack([image for _, image in ImageSource(root, domain="painting")]))


def summarize(rows: list[dict]) -> tuple[list[list], list[str]]:
    table, verdicts = [], []
    for style in dict.fromkeys(r["style"] for r in rows):
        for model in dict.fromkeys(r["model"] for r in rows):
            mine = [r for r in rows if r["style"] == style and r["model"] == model]
            if not mine:
                continue
            means = {}
            for setting in SETTINGS:
                runs = [r for r in mine if r["setting"] == setting]
                if not runs:
                    continue
                psnr, fid = [r["psnr"] for r in runs], [r["fid"] for r in runs if r.get("fid") is not None]
                means[setting] = statistics.mean(psnr)
                reference = [r["psnr"] for r in mine if r["setting"] == "reference"]
                gain = f"{statistics.mean(psnr) - statistics.mean(reference):+.2f}" if reference else "—"
                table.append([style, model, setting, len(runs), _pm(psnr, 2), _pm(fid, 1), gain])
            if "reference" in means and "diffaugment+ema" in means:
                gain = means["diffaugment+ema"] - means["reference"]
                verdicts.append(f"{style}, {model}: DiffAugment+EMA {gain:+.2f} dB over the reference "
                                f"({'MET' if gain >= GOAL_DB else 'NOT MET'}: goal >= +{GOAL_DB:.0f} dB)")
    return table, verdicts


def _pm(values: list[float], digits: int) -> str:
    if not values:
        return "—"
    mean = statistics.mean(values)
    return f"{mean:.{digits}f}" + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def grid(rows: list[dict], out: Path, n: int = 6) -> Path:
    """Per style: the held-out photos, T(photos), then each setting's translation (resnet9-small, seed 0)."""
    import io

    import torch

    from cyclegan_dist.config import load_config
    from cyclegan_dist.data.demo import demo_eval_pairs, demo_root
    from cyclegan_dist.eval.samples import compose
    from cyclegan_dist.models.io import load_generator
    from cyclegan_dist.rundir import atomic_write

    picture_rows, labels = [], []
    for style in dict.fromkeys(r["style"] for r in rows):
        chosen = {r["setting"]: r for r in rows if r["style"] == style and r["seed"] == min(x["seed"] for x in rows)
                  and r["model"] == rows[0]["model"]}
        d = load_config(Path(next(iter(chosen.values()))["run_dir"]) / "config.yaml").data
        root = demo_root(d)
        x, t = demo_eval_pairs(root, size=d.crop_size)
        x, t = x[:n], t[:n]
        picture_rows += [x, t]
        labels += [f"{style}: photo", f"{style}: T(photo)"]
        for setting, row in chosen.items():
            generator, _ = load_generator(row["run_dir"])
            with torch.inference_mode():
                picture_rows.append(generator(x).float().clamp(-1, 1))
            labels.append(f"{setting} ({row['psnr']:.1f} dB)")
    buf = io.BytesIO()
    compose(picture_rows, labels, f"{rows[0]['model']}, seed {min(r['seed'] for r in rows)}, "
            f"{rows[0].get('steps', '')} steps: translations of held-out photos").save(buf, format="PNG")
    return atomic_write(out / "grid.png", buf.getvalue())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.augment_ema", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--styles", default=",".join(STYLES))
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--photos", type=int, default=600)
    p.add_argument("--paintings", type=int, default=30)
    p.add_argument("--demo-size", type=int, default=40)
    p.add_argument("--parallel", type=int, default=2, help="training processes at once (one thread each)")
    p.add_argument("--reuse", action="store_true",
                   help="keep the scores of runs in --out that already completed --steps steps (resume a table)")
    p.add_argument("--no-fid", action="store_true",
                   help="no Inception: PSNR, and with --reuse the FIDs an earlier call wrote to --out's results.json")
    p.add_argument("--quick", action="store_true", help="1 seed, the strokes style, resnet9-small, 40 steps")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.styles, args.models, args.steps = "0", "strokes", "resnet9-small", 40
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(m, s, setting, seed) for s in args.styles.split(",") for m in args.models.split(",")
            for setting in SETTINGS for seed in seeds]
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    rows = []
    with ThreadPoolExecutor(args.parallel) as pool:
        for i, row in enumerate(pool.map(lambda j: run_one(args.out, *j, args), jobs), 1):
            row["steps"] = args.steps
            rows.append(row)
            took = "reused" if row.get("reused") else f"{row['seconds']:.0f} s"
            print(f"[{i}/{len(jobs)}] {row['style']} {row['model']} {row['setting']} seed {row['seed']}: "
                  f"PSNR {row['psnr']:.2f} dB ({took})", flush=True)
    known = previous_fids(args.out) if args.reuse else {}
    for row in rows:  # a reused run has the weights an earlier call scored: its FID stands
        if row.get("reused") and row["run_dir"] in known:
            row["fid"] = known[row["run_dir"]]
    missing = [row for row in rows if row.get("fid") is None]
    if missing and not args.no_fid:
        from cyclegan_dist.eval.fid import compute_fid_mifid
        from cyclegan_dist.eval.inception import InceptionFeatures

        inception = InceptionFeatures(batch_size=32)
        paintings = {style: painting_features(style, args, inception, args.demo_size)
                     for style in dict.fromkeys(row["style"] for row in missing)}
        for row in missing:
            scores = compute_fid_mifid(translated_features(row, inception, args.demo_size), paintings[row["style"]])
            row["fid"] = scores["fid"]
    table, verdicts = summarize(rows)
    headers = ["style", "generator", "setting", "seeds", "PSNR G(x) vs T(x) (dB)", "FID vs paintings", "PSNR vs ref"]
    command = "python -m benchmarks.augment_ema " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([
        "# DiffAugment and generator EMA on a data-poor demo task", "",
        f"- command: `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{(time.monotonic() - t0) / 60:.0f} min on {os.cpu_count()} cores)",
        f"- data: the demo set with {args.photos} photos and {args.paintings} paintings ({args.demo_size} px, "
        f"crop 32), styles {args.styles}; "
        f"{args.steps} steps per run, batch 4, seeds {args.seeds}",
        "- settings: reference = junyanz semantics; diffaugment = color,translation,cutout on every image a "
        "discriminator sees; ema = generator EMA, decay 0.99, with its warm-up (train.ema_rampup 0.05, the "
        "default), scored with the EMA weights; both",
        "- identity baseline PSNR(x, T(x)): " + ", ".join(
            f"{s} {statistics.mean([r['psnr_identity'] for r in rows if r['style'] == s]):.2f} dB"
            for s in dict.fromkeys(r['style'] for r in rows)),
        "", format_table(headers, table, markdown=True, right=(3,)), "", *[f"- {v}" for v in verdicts], "",
        "![translations](grid.png)", ""])
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    grid(rows, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
