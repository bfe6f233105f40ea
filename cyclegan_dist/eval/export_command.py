"""CLI sub-command ``export``: a trained generator -> Kaggle ``images.zip`` (or the generator alone).

``cli.py`` registers it with :func:`add_export_parser`; ``func(args)`` returns the exit code:
0 written (and valid, or only the 7,000-10,000 count missed on a partial export without ``--strict``);
2 a user error or an invalid submission.
"""

from __future__ import annotations

import argparse
import sys
import time

KAGGLE_MIN, KAGGLE_MAX = 7000, 10000


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help="translate photos with a trained generator into a Kaggle images.zip",
        description="Translate every photo with a generator (reference test mode: bicubic resize to 256x256) and "
                    "write the results as 256x256 RGB JPEGs, flat, into a zip (atomically: an existing zip is only "
                    "replaced once the new one is complete); then check it as Kaggle would. "
                    "--checkpoint is a run directory (its best checkpoint, else the newest), a checkpoint directory, "
                    "an exported generator directory, a .safetensors file, or a junyanz .pth file.")
    p.add_argument("--checkpoint", required=True, metavar="CKPT_OR_RUN_DIR", help="where the generator comes from")
    p.add_argument("--photos", metavar="SOURCE",
                   help="photos: a directory, a .zip, or WebDataset shards (a .tar, a glob such as "
                        "'shards/photo-*.tar', or a directory holding only the photo shards)")
    p.add_argument("--out", metavar="ZIP", help="output zip (Kaggle wants images.zip)")
    p.add_argument("--direction", choices=("AtoB", "BtoA"), default="AtoB",
                   help="AtoB = G_A, photo -> painting (default); BtoA = G_B")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per forward pass (default 16)")
    p.add_argument("--device", metavar="DEV", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--limit", type=int, metavar="N", help="export only the first N photos (a quick test)")
    p.add_argument("--quality", type=int, default=95, metavar="Q", help="JPEG quality 1-100 (default 95)")
    p.add_argument("--size", type=int, default=256, metavar="PX", help="output side in pixels (default 256)")
    p.add_argument("--bf16", action="store_true", help="run the generator under bfloat16 autocast")
    p.add_argument("--validate", action=argparse.BooleanOptionalAction, default=True,
                   help="check the zip as a Kaggle submission afterwards (default: on)")
    p.add_argument("--strict", action="store_true",
                   help="fail (exit 2) on any validation problem, including the 7,000-10,000 count of a partial export")
    p.add_argument("--generator-only", metavar="OUTDIR",
                   help="instead of images, write generator.safetensors + generator.yaml into OUTDIR")
    arch = p.add_argument_group("architecture of a bare .pth/.safetensors file (default: read off its keys)")
    arch.add_argument("--generator", metavar="NAME", help="resnet_9blocks, resnet_6blocks, unet_256, ...")
    arch.add_argument("--ngf", type=int, metavar="N", help="generator width")
    arch.add_argument("--norm", choices=("instance", "batch", "none"))
    arch.add_argument("--config", metavar="YAML", help="a run config.yaml or generator.yaml giving the architecture")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_export)
    return p


def run_export(args: argparse.Namespace) -> int:
    from cyclegan_dist.errors import UserError

    if args.generator_only:
        from cyclegan_dist.eval.generator_io import export_generator

        if args.generator or args.ngf or args.norm or args.config:
            raise UserError("--generator-only takes the architecture from the checkpoint; "
                            "drop --generator/--ngf/--norm/--config")
        out = export_generator(args.checkpoint, args.generator_only, args.direction)
        print(f"wrote {out / 'generator.safetensors'} and {out / 'generator.yaml'} ({args.direction})")
        return 0
    if not args.photos or not args.out:
        raise UserError("export needs --photos SOURCE and --out images.zip (or --generator-only OUTDIR)")
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--limit", args.limit, 1), ("--size", args.size, 1)):
        if value is not None and value < low:
            raise UserError(f"{flag} must be >= {low}, got {value}")

    from cyclegan_dist.eval.export import export_zip
    from cyclegan_dist.eval.generator_io import describe, load_generator
    from cyclegan_dist.eval.images_io import ImageSource

    photos = ImageSource(args.photos)  # path mistakes fail before the network is loaded
    device = _device(args.device)
    net, mc = load_generator(args.checkpoint, args.direction, device, config=args.config,
                             generator=args.generator, ngf=args.ngf, norm=args.norm)
    print(f"generator {describe(mc)} from {args.checkpoint} ({args.direction}) on {device}", file=sys.stderr)
    start = time.perf_counter()
    count = export_zip(net, photos, args.out, batch_size=args.batch_size, size=args.size, quality=args.quality,
                       device=device, progress=not args.quiet, limit=args.limit, bf16=args.bf16, total=photos.count)
    took = time.perf_counter() - start
    print(f"wrote {count} images ({args.size}x{args.size} JPEG, quality {args.quality}) to {args.out} "
          f"in {took:.1f}s ({count / max(took, 1e-9):.1f} img/s)")
    if not args.validate:
        return 0
    return _validate(args.out, count, partial=args.limit is not None or count < KAGGLE_MIN,
                     strict=args.strict, size=args.size, progress=not args.quiet)


def _validate(path: str, count: int, *, partial: bool, strict: bool, size: int, progress: bool) -> int:
    """Check the zip as a submission; count problems of a partial export are warnings unless strict."""
    try:
        from cyclegan_dist.eval.submission import check_submission
    except ImportError:  # the checker is optional: the zip is written either way
        print("note: cyclegan_dist.eval.submission is not available; zip not validated", file=sys.stderr)
        return 0
    report = check_submission(path, KAGGLE_MIN, KAGGLE_MAX, size=(size, size), progress=progress)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if report.ok:
        print(f"valid submission: {report.count} {size}x{size} RGB JPEGs")
        return 0
    content = bool(report.bad)  # anything wrong with the entries themselves (never expected from export_zip)
    for problem in report.problems:
        print(f"{'warning' if partial and not strict and not content else 'problem'}: {problem}", file=sys.stderr)
    if content or strict or not partial:
        print(f"{path} is not a valid Kaggle submission", file=sys.stderr)
        return 2
    print(f"({count} images: fine for a test, but Kaggle wants {KAGGLE_MIN}-{KAGGLE_MAX}; "
          "--strict makes this an error)", file=sys.stderr)
    return 0


def _device(name: str | None):
    import torch

    from cyclegan_dist.eval.commands import parse_device

    return parse_device(name) or torch.device("cuda" if torch.cuda.is_available() else "cpu")
