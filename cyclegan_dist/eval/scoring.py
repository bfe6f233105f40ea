"""Scores of image sets as Kaggle computes them: Inception features (real sets cached on disk) -> FID / MiFID.

Used by ``python -m cyclegan_dist fid`` (:func:`score_sources`) and by the in-training evaluation
(``cyclegan_dist.train.evaluation``), which share :func:`real_statistics` and the cache layout.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cyclegan_dist.cache import fid_stats_dir
from cyclegan_dist.errors import UserError
from cyclegan_dist.eval.fid import RealStatsCache, compute_fid_mifid, statistics


def real_statistics(cache: RealStatsCache | None, dataset_id: str, resolution: str | int, inception_sha1: str,
                    features: Callable[[], np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """``(mu, sigma, features, cache hit)`` of a real set, from ``cache`` (keyed by the set's identity, the
    resolution/preprocessing and the Inception file) or computed by ``features()`` and stored."""
    if cache is None:
        feats = np.asarray(features(), dtype=np.float64)
        return (*statistics(feats), feats, False)
    return cache.get_or_compute(RealStatsCache.make_key(dataset_id, resolution, inception_sha1), features)


def score_sources(generated: str, real: str, train: str | None = None, *, inception: str | None = None,
                  device=None, batch_size: int = 64, cache_dir: str | os.PathLike | None = None,
                  use_cache: bool = True, progress: bool = True) -> dict[str, Any]:
    """FID(generated, real), the memorization distance to ``train`` (default: ``real``) and MiFID, plus counts,
    cache hits and the Inception file used. Each source is anything ``cyclegan_dist.images.ImageSource`` reads."""
    from cyclegan_dist.eval.inception import INCEPTION_SIZE, RESIZE_METHOD, InceptionFeatures
    from cyclegan_dist.images import ImageSource

    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    gen_src, real_src = ImageSource(generated), ImageSource(real)  # path mistakes fail before the network loads
    for label, src in (("--generated", gen_src), ("--real", real_src)):
        _enough_images(label, src.path, src.count)
    same = train is None or os.path.abspath(train) == os.path.abspath(real)
    train_src = None if same else ImageSource(train)
    net = InceptionFeatures(inception, device=device, batch_size=batch_size, progress=progress)
    cache = RealStatsCache(Path(cache_dir) if cache_dir else fid_stats_dir()) if use_cache else None

    def real_set(src, label):
        return real_statistics(cache, src.fingerprint(), f"{INCEPTION_SIZE}-{RESIZE_METHOD}", net.sha1,
                               lambda: net.from_iterable(src, total=src.count, desc=label))

    mu, sigma, real_feats, real_hit = real_set(real_src, "real")
    train_feats, train_hit = (real_feats, real_hit) if train_src is None else real_set(train_src, "train")[2:]
    gen_feats = net.from_iterable(gen_src, total=gen_src.count, desc="generated")
    _enough_images("--generated", gen_src.path, len(gen_feats))  # after unreadable images were skipped
    result = compute_fid_mifid(gen_feats, real_feats, train_feats, real_stats=(mu, sigma))
    result.update(n_real=len(real_feats), generated=str(generated), real=str(real), train=str(train or real),
                  skipped_generated=gen_src.n_skipped, real_cache_hit=bool(real_hit), train_cache_hit=bool(train_hit),
                  inception=str(net.path), inception_sha1=net.sha1, device=str(net.device))
    return result


MIN_IMAGES_FOR_FID = 2  # a covariance needs two samples
MEANINGFUL_IMAGES_FOR_FID = 2048  # the 2048-d features' covariance is full rank from here on


def _enough_images(label: str, path: str, count: int | None) -> None:
    """FID needs at least 2 images (one line, not a numpy traceback); fewer than 2,048 is allowed but biased."""
    if count is not None and count < MIN_IMAGES_FOR_FID:
        raise UserError(f"{label} {path}: {count} readable image(s); FID needs at least {MIN_IMAGES_FOR_FID} (a "
                        f"covariance), and >= {MEANINGFUL_IMAGES_FOR_FID:,} for a value worth comparing")
