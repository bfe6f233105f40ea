"""The embedded demo data set: no download, deterministic, built in seconds on first use.

Sources are real photos that ship inside pip packages (skimage.data, sklearn sample images, matplotlib's
grace_hopper.jpg; never the skimage images that download). Each source image is cut along its longer
side into three bands, one for "photo" crops, one for "painting" crops, one for held-out test crops
(which band is which rotates from image to image), so the two training domains never show the same
pixels (unpaired) and the test set is disjoint from both. Crops have scale/aspect jitter and flips and
are resized to ``size`` x ``size``; each of the three sets has its own RNG stream.

"painting" = T(crop), the ``data.demo_style`` transform; the default, :func:`~cyclegan_dist.data.styles.colour`, is
a fixed, invertible colour transform toward warm ochre tones (3x3 matrix + offset, gamma, S-curve contrast) followed
by a small Gaussian blur and a light posterization. The colour part dominates, so identity PSNR(x, T(x)) is low
(about 15 dB) while a generator that learns the colour mapping gets well above it (a global affine colour fit:
~25 dB).

The held-out pairs ``(x, T(x))`` live in ``<root>/eval-pairs.npy`` (uint8, shape 2xNxSxSx3);
``demo_eval_pairs(root)`` returns them as [-1, 1] tensors for a PSNR check of G: photo -> painting.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from cyclegan_dist.cache import cache_root
from cyclegan_dist.data.shards import INDEX_NAME
from cyclegan_dist.data.styles import STYLES, painting_transform
from cyclegan_dist.errors import UserError
from cyclegan_dist.images import resize

log = logging.getLogger(__name__)

DEMO_VERSION = 3  # 2: JPEGs with 4:4:4 chroma (cyclegan_dist.images); 3: raw (PPM) members, prepare's default
DEMO_SEED = 20240601
EVAL_PAIRS = "eval-pairs.npy"
DOMAINS = ("photo", "painting")
_DEFAULTS = (600, 300, 64)  # photos, paintings, test pairs


def _source_images() -> list[tuple[str, np.ndarray]]:
    """Photos shipped inside pip packages (no network)."""
    import matplotlib
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    out = [(n, getattr(sd, n)()) for n in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")]
    left, right = sd.stereo_motorcycle()[:2]
    out += [("stereo_motorcycle_left", left), ("stereo_motorcycle_right", right)]
    out += [(n, getattr(sd, n)()) for n in ("retina", "immunohistochemistry")]
    for name, im in zip(("china", "flower"), load_sample_images().images):
        out.append((name, im))
    gh = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not gh.is_file():
        from matplotlib import cbook

        gh = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    with Image.open(gh) as im:
        out.append(("grace_hopper", np.asarray(im.convert("RGB"))))
    return [(n, np.ascontiguousarray(a[..., :3]).astype(np.uint8)) for n, a in out]


def _band(shape, which: int, i: int):
    """(y0, y1, x0, x1) of band ``which`` (0 photo, 1 painting, 2 test) of image i: 45/35/20 % of the
    longer side, order rotated per image."""
    h, w = shape[:2]
    frac = (0.45, 0.35, 0.20)
    order = [(i + j) % 3 for j in range(3)]  # band slot -> set
    slot = order.index(which)
    edges = np.concatenate([[0.0], np.cumsum([frac[order[s]] for s in range(3)])])
    L = max(h, w)
    a, b = int(round(edges[slot] * L)), int(round(edges[slot + 1] * L))
    return (a, b, 0, w) if h >= w else (0, h, a, b)


def _crops(images, which: int, n: int, size: int) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([DEMO_SEED, which])))
    out = np.empty((n, size, size, 3), np.uint8)
    for t in range(n):
        i = int(rng.integers(len(images)))
        img = images[i][1]
        y0, y1, x0, x1 = _band(img.shape, which, i)
        bh, bw = y1 - y0, x1 - x0
        s = min(bh, bw) * rng.uniform(0.35, 1.0)
        ar = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw = int(max(8, min(bw, round(s * np.sqrt(ar)))))
        ch = int(max(8, min(bh, round(s / np.sqrt(ar)))))
        cx = x0 + int(rng.integers(0, bw - cw + 1))
        cy = y0 + int(rng.integers(0, bh - ch + 1))
        crop = resize(Image.fromarray(img[cy : cy + ch, cx : cx + cw]), size)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out[t] = np.asarray(crop)
    return out


def _params(size, n_photo, n_paint, n_test, style) -> dict:
    transform = "painterly-v1" if style == "colour" else f"{style}-v1"
    return {"version": DEMO_VERSION, "size": size, "n_photo": n_photo, "n_painting": n_paint, "n_test": n_test,
            "seed": DEMO_SEED, "transform": transform, "style": style, "eval_pairs": EVAL_PAIRS,
            "domains": list(DOMAINS)}


def _read_demo_params(root: Path):
    try:
        return json.loads((root / INDEX_NAME).read_text()).get("demo")
    except (OSError, ValueError, AttributeError):
        return None


def _is_built(root: Path, params: dict) -> bool:
    stored = _read_demo_params(root)
    return (isinstance(stored, dict) and all(stored.get(k) == v for k, v in params.items())
            and (root / EVAL_PAIRS).is_file())


def ensure_demo_shards(root=None, size: int = 64, n_train: int = _DEFAULTS[0], n_test: int = _DEFAULTS[2],
                       n_paintings: int | None = None, style: str = "colour") -> Path:
    """Build (once) and return the demo shard root: domains "photo" (``n_train`` crops) and "painting"
    (``n_paintings`` crops, default ``n_train // 2``, painted by ``style``), plus ``n_test`` held-out pairs.

    ``root`` is the shard root itself; default ``<cache_root()>/demo-<size>-v<DEMO_VERSION>`` (non-default
    counts add ``-<photo>-<painting>-<test>`` to the name, a style other than ``colour`` ``-<style>``).
    Built in a temp dir and renamed: concurrent callers (several ranks) are safe, a second call is instant.
    """
    size, n_photo, n_test = int(size), int(n_train), int(n_test)
    n_paint = n_photo // 2 if n_paintings is None else int(n_paintings)
    if size < 8 or min(n_photo, n_paint, n_test) < 1:
        raise UserError(f"demo data: need size >= 8 and counts >= 1, got size={size} n_train={n_photo} "
                        f"n_paintings={n_paint} n_test={n_test}")
    if style not in STYLES:
        raise UserError(f"data.demo_style={style!r} is not valid; choose one of: {', '.join(STYLES)}")
    params = _params(size, n_photo, n_paint, n_test, style)
    if root is None:
        name = f"demo-{size}-v{DEMO_VERSION}"
        if (n_photo, n_paint, n_test) != _DEFAULTS:
            name += f"-{n_photo}-{n_paint}-{n_test}"
        if style != "colour":
            name += f"-{style}"
        root = cache_root() / name
    root = Path(root).expanduser().absolute()
    if _is_built(root, params):
        return root
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and _read_demo_params(root) is None)):
        raise UserError(f"{root} exists and is not a demo shard root: choose another path (or remove it)")
    log.info("building the demo data set in %s", root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.build-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _build(tmp, params)
        try:
            os.replace(tmp, root)  # onto a missing or empty dir
        except OSError:
            if _is_built(root, params):  # another process won the race: same bytes, use theirs
                return root
            old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(root, old)  # a stale demo root (other params/version)
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def demo_root(data) -> Path:
    """The demo shard root a run's ``DataConfig`` (``data.root: null``) trains on, built on first use."""
    return ensure_demo_shards(size=data.demo_size, n_train=data.demo_photos, n_paintings=data.demo_paintings,
                              style=data.demo_style)


def _build(out: Path, params: dict) -> None:
    from cyclegan_dist.data.prepare import prepare_shards

    images = _source_images()
    size = params["size"]
    photos = _crops(images, 0, params["n_photo"], size)
    paint_src = _crops(images, 1, params["n_painting"], size)
    test = _crops(images, 2, params["n_test"], size)
    paint = painting_transform(params["style"])
    paintings = np.stack([paint(c) for c in paint_src])
    prepare_shards(
        {"photo": [(f"photo_{i:05d}", a) for i, a in enumerate(photos)],
         "painting": [(f"painting_{i:05d}", a) for i, a in enumerate(paintings)]},
        out, shard_size=200, progress=False, workers=1, timestamp=False,
        extra={"demo": dict(params, sources=[n for n, _ in images])},
    )
    pairs = np.stack([test, np.stack([paint(c) for c in test])])
    np.save(out / EVAL_PAIRS, pairs, allow_pickle=False)


def demo_eval_pairs(root=None, size: int | None = None):
    """Held-out ``(x, t)``: float tensors Nx3xSxS in [-1, 1], ``t = T(x)`` (the set's style), resized to ``size``
    (bicubic, as every image that enters a network); root None = the default demo set."""
    import torch

    from cyclegan_dist.data.transforms import eval_image, normalize

    root = ensure_demo_shards() if root is None else Path(root).expanduser()
    path = root / EVAL_PAIRS
    if not path.is_file():
        raise UserError(f"{path} not found: {root} is not a demo shard root (build one with ensure_demo_shards)")
    pairs = np.load(path, allow_pickle=False)
    size = size or pairs.shape[2]
    x, t = (normalize(torch.stack([eval_image(a, size) for a in part])) for part in pairs)
    return x, t
