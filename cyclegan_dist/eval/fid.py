"""FID and MiFID exactly as Kaggle scores them, plus an on-disk cache of real statistics (docs/architecture.md,
"Where each concern lives (once)": FID / MiFID).

* FID: the pytorch-fid / TTUR algorithm with ``scipy.linalg.sqrtm``: if ``sqrtm(sigma1 @ sigma2)`` is not finite,
  retry with ``1e-6`` added to both diagonals; a complex result is accepted (real part taken) only when its
  diagonal's imaginary part is within 1e-3 of zero, else ``ValueError``.
* Memorization distance (Kaggle's ``cosine_distance(features1=generated, features2=training)``): drop all-zero rows
  of both sets, L2-normalise rows, ``d_ij = 1 - |cos(g_i, t_j)|``, then the mean over GENERATED images ``i`` of
  ``min_j d_ij``. (torchmetrics' MiFID takes the min/mean the other way round: not this.)
  Kaggle drops rows whose *sum* is 0; Inception pool features are non-negative, so that is the same as all-zero.
* MiFID = FID / (d_thr + 1e-14), with d_thr = d if d < 0.1 else 1.
* Round-off: the FID of a set against itself is 0 up to ``sqrtm``'s round-off (of the order of 1e-4), which may
  be negative. The reported FID is clamped at 0; MiFID divides the round-off's magnitude, so a memorised
  set scores a huge positive MiFID (as Kaggle's formula gives for a positive round-off), never a negative one.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg

MIFID_THRESHOLD = 0.1
MIFID_EPS = 1e-14


def statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of ``N x D`` features in float64; covariance as ``np.cov(rowvar=False)`` (N-1)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need an N x D feature array with N >= 2 to compute statistics, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance ``|mu1-mu2|^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))`` between two Gaussians."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: sqrtm(sigma1 @ sigma2) is not finite; adding {eps} to the covariance diagonals")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: sqrtm has a large imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _sqrtm(a: np.ndarray) -> np.ndarray:
    # Singular products are normal here (fewer images than 2048 dims); we check finiteness/imaginary parts
    # ourselves, as the reference does with disp=False, so scipy's "singular matrix" warning is noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        return scipy.linalg.sqrtm(a)


def _nonzero_rows(f: np.ndarray) -> np.ndarray:
    return f[np.any(f != 0, axis=1)]


def memorization_distance(gen_features, train_features, chunk: int = 2048) -> float:
    """Kaggle's MiFID memorization term: mean over generated of min over training of ``1 - |cos|``."""
    g = _nonzero_rows(np.asarray(gen_features, dtype=np.float64))
    t = _nonzero_rows(np.asarray(train_features, dtype=np.float64))
    if len(g) == 0 or len(t) == 0:
        raise ValueError(f"memorization distance needs non-zero features: {len(g)} generated, {len(t)} training rows")
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    mins = np.empty(len(g))
    for i in range(0, len(g), chunk):
        mins[i:i + chunk] = (1.0 - np.abs(g[i:i + chunk] @ t.T)).min(axis=1)
    return float(mins.mean())


def mifid(fid: float, d: float, eps: float = MIFID_EPS, threshold: float = MIFID_THRESHOLD) -> float:
    """MiFID = FID / (d_thr + eps), d_thr = d if d < threshold else 1."""
    d_thr = d if d < threshold else 1.0
    return float(fid / (d_thr + eps))


def compute_fid_mifid(gen_features, real_features=None, train_features=None, *, real_stats=None,
                      threshold: float = MIFID_THRESHOLD, eps: float = MIFID_EPS) -> dict:
    """FID(generated, real), memorization distance(generated, train; train defaults to real) and MiFID.

    ``real_stats=(mu, sigma)`` skips recomputing the real statistics (e.g. from :class:`RealStatsCache`).
    """
    gen = np.asarray(gen_features, dtype=np.float64)
    if real_stats is None:
        if real_features is None:
            raise ValueError("give real_features or real_stats")
        real_stats = statistics(real_features)
    if train_features is None:
        train_features = real_features
    if train_features is None:
        raise ValueError("give train_features (or real_features) for the memorization distance")
    mu_g, sigma_g = statistics(gen)
    raw = frechet_distance(mu_g, sigma_g, *real_stats)
    d = memorization_distance(gen, train_features)
    return {
        "fid": max(raw, 0.0),
        "mifid": mifid(abs(raw), d, eps=eps, threshold=threshold),
        "memorization_distance": d,
        "memorization_distance_thresholded": d if d < threshold else 1.0,
        "threshold": threshold,
        "n_generated": len(gen),
        "n_train": len(train_features),
    }


def _compact(features) -> np.ndarray:
    """float32 when that is lossless (Inception features come out of a float32 network), else float64."""
    f = np.asarray(features, dtype=np.float64)
    f32 = f.astype(np.float32)
    return f32 if np.array_equal(f32.astype(np.float64), f) else f


class RealStatsCache:
    """``(mu, sigma, features)`` of a real image set, cached as ``<dir>/<slug>-<sha>.npz`` keyed by a string.

    Build the key from the data set identity, the resolution/preprocessing and the Inception file hash
    (:meth:`make_key`). Files are written to a temp file and ``os.replace``d; read with ``allow_pickle=False``;
    the key is stored inside and checked, and an unreadable file counts as a miss.
    """

    def __init__(self, cache_dir: str | os.PathLike):
        self.dir = Path(cache_dir).expanduser()

    @staticmethod
    def make_key(dataset_id: str, resolution: str | int, inception_hash: str) -> str:
        return f"{dataset_id}|res={resolution}|inception={inception_hash}"

    def path(self, key: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key.split("|", 1)[0])[-60:].strip("_") or "stats"
        return self.dir / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"

    def load(self, key: str):
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                if str(z["key"]) != key:
                    return None
                return z["mu"].astype(np.float64), z["sigma"].astype(np.float64), z["features"].astype(np.float64)
        except Exception as e:  # noqa: BLE001 - a damaged cache is only a miss
            warnings.warn(f"ignoring unreadable FID statistics cache {p}: {type(e).__name__}: {e}")
            return None

    def save(self, key: str, mu, sigma, features) -> Path:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, key=np.array(key), mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64),
                         features=_compact(features))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return p

    def get_or_compute(self, key: str, compute_features):
        """``(mu, sigma, features, hit)``; on a miss, ``compute_features()`` -> features, then saved."""
        hit = self.load(key)
        if hit is not None:
            return (*hit, True)
        feats = np.asarray(compute_features(), dtype=np.float64)
        mu, sigma = statistics(feats)
        self.save(key, mu, sigma, feats)
        return mu, sigma, feats, False
