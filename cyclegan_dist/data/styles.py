"""The demo data set's "painting" transforms T: deterministic functions of a photo crop (uint8 H x W x 3).

* ``colour`` (the smoke default): a fixed colour mapping toward warm ochre tones (3x3 matrix + offset, gamma,
  S-curve contrast), a small Gaussian blur and a light posterization. Pixel-aligned: a network with skip
  connections (U-Net) learns it quickly, which is why it tells little about style.
* ``strokes``: a painting-like texture on top of the same palette: a Kuwahara filter (each pixel takes the mean
  of the least varied of its four neighbouring quadrants, which flattens regions into brush-like patches while
  keeping edges), strokes oriented along the local edge direction (a line-integral smear of the flattened image),
  a fixed canvas weave, and a coarser posterization. Not pixel-aligned at the scale of a stroke: the generator
  must synthesize texture, as with real paintings.

Both are pure functions of their input (no RNG): the held-out pairs (x, T(x)) of the demo set measure how well a
generator learned T, as PSNR.
"""

from __future__ import annotations

import numpy as np

STYLES = ("colour", "strokes")

# colour mapping: out_c = sum_j M[c, j] * in_j + OFFSET[c], then gamma, S-curve
_M = np.array([[0.35, 0.75, 0.10], [0.10, 0.50, 0.35], [0.25, -0.05, 0.40]])
_OFFSET = np.array([0.12, 0.06, -0.06])
_GAMMA, _CONTRAST, _BLUR_SIGMA, _LEVELS = 0.7, 2.2, 0.7, 12
_KUWAHARA_RADIUS, _STROKE_LENGTH, _STROKE_LEVELS, _CANVAS = 2, 3, 8, 0.06


def _check(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"a demo painting transform expects uint8 HxWx3, got {img.dtype} {img.shape}")
    return img


def blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an H x W x C float array, reflect padding, radius ceil(3 sigma)."""
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    for axis in (0, 1):
        pad = [(0, 0)] * a.ndim
        pad[axis] = (r, r)
        p = np.pad(a, pad, mode="reflect" if a.shape[axis] > r else "edge")
        n = a.shape[axis]
        a = sum(k[i] * np.take(p, np.arange(i, i + n), axis=axis) for i in range(2 * r + 1))
    return a


def palette(img: np.ndarray) -> np.ndarray:
    """The colour part, float H x W x 3 in [0, 1]."""
    x = img.astype(np.float64) / 255.0
    y = np.stack([sum(_M[c, j] * x[..., j] for j in range(3)) + _OFFSET[c] for c in range(3)], axis=-1)
    y = np.clip(y, 0.0, 1.0) ** _GAMMA
    return 0.5 + 0.5 * np.tanh(_CONTRAST * (y - 0.5)) / np.tanh(0.5 * _CONTRAST)


def _to_uint8(y: np.ndarray, levels: int) -> np.ndarray:
    y = np.round(np.clip(y, 0.0, 1.0) * (levels - 1)) / (levels - 1)
    return (y * 255.0 + 0.5).astype(np.uint8)


def colour(img: np.ndarray) -> np.ndarray:
    return _to_uint8(blur(palette(_check(img)), _BLUR_SIGMA), _LEVELS)


def _box_mean(a: np.ndarray, r: int) -> np.ndarray:
    """Mean over the (r+1) x (r+1) window whose bottom-right corner is each pixel (edge padding)."""
    p = np.pad(a, [(r, 0), (r, 0)] + [(0, 0)] * (a.ndim - 2), mode="edge")
    c = np.cumsum(np.cumsum(p, axis=0), axis=1)
    c = np.pad(c, [(1, 0), (1, 0)] + [(0, 0)] * (a.ndim - 2))
    h, w = a.shape[:2]
    k = r + 1
    return (c[k:k + h, k:k + w] - c[:h, k:k + w] - c[k:k + h, :w] + c[:h, :w]) / (k * k)


def kuwahara(y: np.ndarray, r: int = _KUWAHARA_RADIUS) -> np.ndarray:
    """Each pixel: the mean colour of the quadrant (of four (r+1)^2 windows touching it) with the lowest
    luminance variance."""
    lum = y @ np.array([0.299, 0.587, 0.114])
    h, w = lum.shape
    means, variances = [], []
    for dy in (0, r):
        for dx in (0, r):  # the window whose bottom-right corner is (i + dy, j + dx)
            m = np.roll(_box_mean(y, r), (-dy, -dx), axis=(0, 1))
            ml = np.roll(_box_mean(lum, r), (-dy, -dx), axis=(0, 1))
            ml2 = np.roll(_box_mean(lum ** 2, r), (-dy, -dx), axis=(0, 1))
            means.append(m)
            variances.append(ml2 - ml ** 2)
    best = np.argmin(np.stack(variances), axis=0)
    return np.take_along_axis(np.stack(means), best[None, ..., None], axis=0)[0]


def _edge_tangents(lum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (x, y) along the edges (perpendicular to the smoothed gradient); horizontal where flat."""
    gy, gx = np.gradient(blur(lum[..., None], 1.0)[..., 0])
    norm = np.hypot(gx, gy)
    safe = np.maximum(norm, 1e-12)
    return np.where(norm > 1e-6, -gy / safe, 1.0), np.where(norm > 1e-6, gx / safe, 0.0)


def _smear(y: np.ndarray, tx: np.ndarray, ty: np.ndarray, length: int) -> np.ndarray:
    """Average of samples along each pixel's stroke direction (nearest-pixel steps, both ways)."""
    h, w = y.shape[:2]
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    acc = np.zeros_like(y)
    for t in range(-length, length + 1):
        si = np.clip(np.rint(ii + t * ty).astype(int), 0, h - 1)
        sj = np.clip(np.rint(jj + t * tx).astype(int), 0, w - 1)
        acc += y[si, sj]
    return acc / (2 * length + 1)


def canvas(h: int, w: int) -> np.ndarray:
    """A fixed woven texture in [-1, 1] (H x W x 1): the same for every image of a size."""
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    weave = np.sin(i * 2.1) * np.sin(j * 2.1) + 0.5 * np.sin((i + 2 * j) * 0.9)
    return (weave / 1.5)[..., None]


def strokes(img: np.ndarray) -> np.ndarray:
    y = palette(_check(img))
    flat = kuwahara(y)
    tx, ty = _edge_tangents(flat @ np.array([0.299, 0.587, 0.114]))
    painted = _smear(flat, tx, ty, _STROKE_LENGTH)
    painted = painted * (1.0 + _CANVAS * canvas(*painted.shape[:2]))
    return _to_uint8(painted, _STROKE_LEVELS)


def painting_transform(style: str):
    if style not in STYLES:
        raise ValueError(f"unknown demo style {style!r}; valid: {', '.join(STYLES)}")
    return colour if style == "colour" else strokes
