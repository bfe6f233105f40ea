"""Shard root layout, ``index.json``, and strict image decoding (no torch import here).

A shard root holds, per domain, WebDataset tars ``<domain>-000000.tar, <domain>-000001.tar, ...`` whose
samples are ``{__key__, jpg}`` (RGB JPEG bytes), plus ``index.json``::

    {"version": 1,
     "domains": {"photo": {"count": N, "shards": [{"url": "photo-000000.tar", "nsamples": n}, ...],
                           "min_size": [w, h], "max_size": [w, h], "skipped_corrupt": c, "skipped_small": s},
                 ...},
     "resize": 286 | null, "created": "2024-...Z" | null}

``url`` is relative to the root. Everything that reads a root goes through :func:`read_index` and
:func:`shard_list`, which turn a missing/damaged root into a :class:`UserError` that says to run
``python -m cyclegan_dist prepare``.
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from cyclegan_dist.errors import UserError

INDEX_NAME = "index.json"
INDEX_VERSION = 1
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PREPARE_HINT = "run `python -m cyclegan_dist prepare --photos DIR --paintings DIR --out ROOT` (or --kaggle DIR)"
_DOMAIN_RE = re.compile(r"^[A-Za-z0-9_]+$")


def shard_name(domain: str, i: int) -> str:
    return f"{domain}-{i:06d}.tar"


def check_domain_name(name: str) -> str:
    if not isinstance(name, str) or not _DOMAIN_RE.match(name):
        raise UserError(f"invalid domain name {name!r}: use letters, digits and '_' only (e.g. photo, monet)")
    return name


# ----------------------------------------------------------------------------------------------- index


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to ``path`` via a temp file in the same directory and ``os.replace``."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"  # plain open: honours umask
    try:
        with open(tmp, "x") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_index(root) -> dict:
    """Load and check ``root/index.json``; every problem is a UserError naming the path."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"shard root {root} does not exist (or is not a directory): {PREPARE_HINT}")
    path = root / INDEX_NAME
    if not path.is_file():
        raise UserError(f"{path} not found: {root} is not a shard root; {PREPARE_HINT}")
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({e}); {PREPARE_HINT} again with --overwrite") from None
    if not isinstance(index, dict) or index.get("version") != INDEX_VERSION or not isinstance(index.get("domains"), dict):
        raise UserError(f"{path} is not a version-{INDEX_VERSION} shard index; {PREPARE_HINT} again with --overwrite")
    return index


def shard_list(root, index: dict, domain: str) -> list[dict]:
    """``[{"url": absolute path, "nsamples": n}, ...]`` of one domain; checks the files exist."""
    root = Path(root).expanduser().resolve()
    doms = index["domains"]
    if domain not in doms:
        raise UserError(
            f"domain {domain!r} is not in shard root {root} (it has: {', '.join(sorted(doms)) or 'none'}); "
            f"set data.domain_a/domain_b to one of those, or {PREPARE_HINT} with --domains"
        )
    entry = doms[domain]
    shards = []
    for s in entry.get("shards", []):
        path = root / s["url"]
        if not path.is_file():
            raise UserError(
                f"shard {path} is listed in {root / INDEX_NAME} but does not exist; the shard root is incomplete: "
                f"{PREPARE_HINT} again with --overwrite"
            )
        shards.append({"url": str(path), "nsamples": int(s["nsamples"])})
    if sum(s["nsamples"] for s in shards) != int(entry.get("count", -1)) or not shards:
        raise UserError(
            f"{root / INDEX_NAME}: domain {domain!r} has count {entry.get('count')} but its shards hold "
            f"{sum(s['nsamples'] for s in shards)} samples; {PREPARE_HINT} again with --overwrite"
        )
    return shards


def verify_shard(url: str, nsamples: int) -> None:
    """Check that a tar is complete: ``nsamples`` samples and no member cut short (truncated copy).

    Walks the tar headers with wids' mmap reader (fast: headers only). A damaged tar is a UserError.
    """
    from wids.wids import IndexedTarSamples

    why = None
    with open(url, "rb") as stream:
        try:
            itf = IndexedTarSamples(path=url, stream=stream)
        except Exception as e:  # struct.error / ValueError / UnicodeDecodeError from a cut or foreign file
            why = f"unreadable tar ({type(e).__name__}: {e})"
        else:
            try:
                mm = itf.reader.mmapped_file
                cut = [n for n, off, size in itf.reader.by_index if off + 512 + size > len(mm)]
                if cut:
                    why = f"truncated: member {cut[0]} is cut short"
                elif len(itf) != nsamples:
                    why = f"has {len(itf)} samples, the index says {nsamples} (truncated or replaced)"
            finally:
                itf.close()
    if why:
        raise UserError(f"shard {url} is damaged: {why}; {PREPARE_HINT} again with --overwrite")


# ------------------------------------------------------------------------------------------- decoding


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16/32-bit integer and float greyscale are rescaled (not clipped),
    alpha is composited over white, palette/CMYK/L/LA/1/YCbCr converted."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        a = np.asarray(img).astype(np.float64)
        if mode == "F":
            hi = 1.0 if a.size and np.nanmax(a) <= 1.0 else 255.0
        elif mode.startswith("I;16") or (a.size and a.max() > 255):
            hi = 65535.0
        else:
            hi = 255.0
        a = np.clip(np.nan_to_num(a) / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if mode in ("P", "PA") and (mode == "PA" or "transparency" in img.info):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


class _strict_decoding:
    """Truncated images must raise, even if some other module set ``LOAD_TRUNCATED_IMAGES``."""

    def __enter__(self):
        self.saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False

    def __exit__(self, *exc):
        ImageFile.LOAD_TRUNCATED_IMAGES = self.saved


def open_image(data: bytes) -> Image.Image:
    """Decode fully (raises on corrupt or truncated data); returns the image in its own mode."""
    with _strict_decoding():
        img = Image.open(io.BytesIO(data))
        img.load()
    return img


def decode_rgb(data: bytes) -> Image.Image:
    """Bytes -> fully decoded 8-bit RGB PIL image; raises on corrupt or truncated data."""
    return to_rgb8(open_image(data))


def exif_upright(img: Image.Image) -> tuple[Image.Image, bool]:
    """Apply an EXIF orientation tag (phone photos); returns (image, whether it changed)."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    if orientation in (None, 1):
        return img, False
    return ImageOps.exif_transpose(img), True


def encode_jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def sanitize_key(name: str) -> str:
    """A WebDataset-safe key from a relative path: no dots (they split key/extension), no slashes."""
    p = str(name).replace("\\", "/")
    if Path(p).suffix.lower() in IMAGE_EXTS:
        p = p[: -len(Path(p).suffix)]
    parts = [re.sub(r"[^A-Za-z0-9_-]", "_", part) for part in p.split("/") if part]
    return "__".join(parts)
