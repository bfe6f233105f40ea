"""``prepare``: image folders (or the Kaggle layout) -> WebDataset shards + ``index.json``.

Each domain becomes ``<domain>-000000.tar, ...`` with ``shard_size`` samples per tar, each sample
``{__key__, ppm}`` (``format="raw"``, the default: uncompressed 8-bit RGB, read without decoding and without a
second JPEG generation; 245 KB for 286 x 286) or ``{__key__, jpg}`` (``format="jpeg"``: several times smaller,
slower to load: ``benchmarks/RESULTS.md``, "Reading (CPU, 2026-12-02, session 5)", Loader; an RGB JPEG that needs
no resize keeps its original bytes).
Keys come from the relative path (deterministic, sorted walk).
The whole root is written in a hidden sibling temp dir and renamed into place at the end, so a crash or
a refused re-run never leaves a half-written or corrupted shard root behind. ``--out s3://bucket/prefix`` writes
the root locally, then uploads it, ``index.json`` last (``data/remote.py``). Each shard's size and sha256 go into
the index (what a remote root's node-local copy is checked against).

Resizing at prepare time (``--resize 286``: shorter side to 286, aspect kept) is what makes the loader
fast on large photos; the loader still resizes to ``load_size`` square as the reference does.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from cyclegan_dist.data import remote
from cyclegan_dist.data.shards import (
    INDEX_NAME,
    INDEX_VERSION,
    SHARD_FORMATS,
    check_domain_name,
    file_digest,
    sanitize_key,
    shard_name,
)
from cyclegan_dist.errors import UserError
from cyclegan_dist.images import (
    IMAGE_EXTS,
    JPEG_QUALITY,
    encode_jpeg,
    encode_raw,
    from_array,
    open_image,
    resize_shorter,
    to_rgb,
    upright,
)
from cyclegan_dist.rundir import atomic_write_json

log = logging.getLogger(__name__)
_SHOW = 5  # how many skipped names a warning lists
RAW_WARN_GB = 4.0  # raw shards of unresized photos beyond this: a warning naming --resize / --format jpeg


def list_images(folder) -> list[tuple[str, Path]]:
    """Recursive, sorted ``(relative posix path, path)`` of image files; hidden files are ignored."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise UserError(f"image folder {folder} does not exist: check the path")
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: pass a directory of images")
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if not fn.startswith(".") and os.path.splitext(fn)[1].lower() in IMAGE_EXTS:
                p = Path(dirpath) / fn
                out.append((p.relative_to(folder).as_posix(), p))
    out.sort(key=lambda t: t[0])
    if not out:
        raise UserError(f"image folder {folder} has no images ({', '.join(IMAGE_EXTS)}): "
                        "point it at a folder of images")
    return out


def _process(item, resize, min_size, quality, fmt):
    """(name, payload) -> ("ok", name, encoded bytes, (w, h)) | ("corrupt", name) | ("small", name)."""
    name, payload = item
    if not isinstance(payload, (str, Path, bytes, bytearray, memoryview, np.ndarray, Image.Image)):
        raise TypeError(f"unsupported image payload {type(payload).__name__} for {name!r}")
    raw = None
    try:
        if isinstance(payload, (str, Path)):
            raw = Path(payload).read_bytes()
        elif isinstance(payload, (bytes, bytearray, memoryview)):
            raw = bytes(payload)
        if raw is not None:
            img = open_image(raw)
        elif isinstance(payload, np.ndarray):
            img = from_array(payload)
        else:
            img = payload
            img.load()
        src_format, mode = img.format, img.mode
        img, rotated = upright(img)
        img = to_rgb(img)
    except Exception:  # corrupt, truncated, unsupported mode, decompression bomb: skipped and counted
        return ("corrupt", name)
    w, h = img.size
    if min(w, h) < min_size:
        return ("small", name)
    if resize:
        img = resize_shorter(img, resize)
    if fmt == "raw":
        data = encode_raw(img)
    elif raw is not None and src_format == "JPEG" and mode == "RGB" and not rotated and img.size == (w, h):
        data = raw  # already an RGB JPEG at the right size: keep the bytes (no generation loss)
    else:
        data = encode_jpeg(img, quality)
    return ("ok", name, data, img.size)


def _ordered_map(fn, items, workers):
    """``map`` over a thread pool, in order, with a bounded number of items in flight."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with cf.ThreadPoolExecutor(workers) as ex:
        pending = collections.deque()
        for item in items:
            pending.append(ex.submit(fn, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _write_domain(domain, source, tmp, shard_size, resize, min_size, quality, fmt, progress, workers):
    from tqdm import tqdm
    from webdataset import TarWriter

    if isinstance(source, (str, Path)):
        folder = Path(source).expanduser()
        items = list_images(folder)
        where = str(folder)
    else:
        folder, items, where = None, source, f"the {domain!r} source"
    try:
        total = len(items)
    except TypeError:
        total = None
    shards, keys, sizes = [], set(), []
    skipped = {"corrupt": [], "small": []}
    writer, n_in_shard = None, 0
    bar = tqdm(total=total, desc=f"prepare {domain}", unit="img", disable=not progress, leave=False)
    try:
        for res in _ordered_map(lambda it: _process(it, resize, min_size, quality, fmt), items, workers):
            bar.update(1)
            if res[0] != "ok":
                skipped[res[0]].append(res[1])
                continue
            _, name, data, size = res
            key = sanitize_key(name) or f"img{len(sizes):07d}"
            base, k = key, 1
            while key in keys:
                k += 1
                key = f"{base}_{k}"
            keys.add(key)
            if writer is None or n_in_shard >= shard_size:
                if writer is not None:
                    writer.close()
                shards.append({"url": shard_name(domain, len(shards)), "nsamples": 0})
                writer = TarWriter(str(tmp / shards[-1]["url"]), encoder=False, mtime=0)
                n_in_shard = 0
            writer.write({"__key__": key, SHARD_FORMATS[fmt]: data})
            n_in_shard += 1
            shards[-1]["nsamples"] += 1
            sizes.append(size)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    for shard in shards:  # what a remote root's node-local copy is checked against (data/remote.py)
        digest, size = file_digest(tmp / shard["url"])
        shard["bytes"], shard["sha256"] = size, digest
    for why, names in skipped.items():
        if names:
            what = ("unreadable (corrupt or truncated) image(s)" if why == "corrupt"
                    else f"image(s) smaller than min_size={min_size}")
            log.warning(
                "prepare %s: skipped %d %s from %s, first: %s",
                domain, len(names), what, where, ", ".join(map(str, names[:_SHOW])),
            )
    if not sizes:
        raise UserError(
            f"{where} has no readable image{' of at least ' + str(min_size) + ' px' if min_size else ''} "
            f"({len(skipped['corrupt'])} unreadable, {len(skipped['small'])} too small): check the folder"
        )
    arr = np.asarray(sizes)
    raw_gb = float((arr[:, 0] * arr[:, 1]).sum()) * 3 / 1e9
    if fmt == "raw" and not resize and raw_gb > RAW_WARN_GB:
        log.warning("prepare %s: raw shards hold every pixel of the originals (%.1f GB, up to %dx%d): add --resize "
                    "286 to store what training reads, or --format jpeg to keep the files' bytes", domain, raw_gb,
                    int(arr[:, 0].max()), int(arr[:, 1].max()))
    return {
        "count": int(len(sizes)),
        "shards": shards,
        "min_size": [int(arr[:, 0].min()), int(arr[:, 1].min())],
        "max_size": [int(arr[:, 0].max()), int(arr[:, 1].max())],
        "skipped_corrupt": len(skipped["corrupt"]),
        "skipped_small": len(skipped["small"]),
    }


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory: choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(
                f"--out {out} is not empty; nothing was written. Pass --overwrite to replace it, "
                "or choose another --out"
            )
        if not (out / INDEX_NAME).is_file():
            raise UserError(
                f"--out {out} is not empty and is not a shard root (no {INDEX_NAME}); refusing to replace it even "
                "with --overwrite: choose an empty or new --out"
            )


def prepare_shards(
    domains: dict,
    out_dir,
    shard_size: int = 1000,
    resize: int | None = None,
    quality: int | None = None,
    progress: bool = True,
    *,
    format: str = "raw",
    min_size: int = 0,
    overwrite: bool = False,
    workers: int | None = None,
    timestamp: bool = True,
    extra: dict | None = None,
) -> dict:
    """Write a shard root at ``out_dir`` and return its index.

    ``domains`` maps a domain name to a folder (recursive scan) or to an iterable of ``(name, payload)``
    with payload = encoded image bytes, a PIL image, or an HxWx3 uint8 array. Corrupt/truncated images and
    images whose shorter side is below ``min_size`` are skipped and counted (one warning per domain).
    ``resize`` sets the shorter side (aspect kept, bicubic). ``format`` is ``"raw"`` (PPM) or ``"jpeg"`` (at
    ``quality``, default :data:`images.JPEG_QUALITY`). ``timestamp=False`` writes ``"created": null``
    (byte-identical roots for identical input); ``extra`` is merged into the index.
    """
    if remote.is_remote(out_dir):  # s3://bucket/prefix: written here, then uploaded (data/remote.py)
        remote.check_remote_out(out_dir, overwrite)
        with tempfile.TemporaryDirectory(prefix="cyclegan-prepare-") as tmp:
            index = prepare_shards(domains, Path(tmp) / "root", shard_size, resize, quality, progress, format=format,
                                   min_size=min_size, workers=workers, timestamp=timestamp, extra=extra)
            remote.upload_root(Path(tmp) / "root", out_dir, overwrite)
        return index
    if not isinstance(domains, dict) or not domains:
        raise UserError("prepare: give at least one domain (name -> image folder)")
    for name in domains:
        check_domain_name(name)
    if int(shard_size) < 1:
        raise UserError(f"--shard-size must be >= 1, got {shard_size}")
    if resize is not None and int(resize) < 1:
        raise UserError(f"--resize must be a positive number of pixels, got {resize}")
    if format not in SHARD_FORMATS:
        raise UserError(f"--format must be one of {', '.join(SHARD_FORMATS)}, got {format!r}")
    quality = JPEG_QUALITY if quality is None else quality
    if not 1 <= int(quality) <= 100:
        raise UserError(f"--quality must be in 1..100, got {quality}")
    out = Path(out_dir).expanduser().absolute()
    _check_out_dir(out, overwrite)
    for name, src in domains.items():  # fail on a bad folder before writing anything
        if isinstance(src, (str, Path)):
            list_images(src)
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        index = {
            "version": INDEX_VERSION,
            "domains": {},
            "resize": int(resize) if resize else None,
            "format": format,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) if timestamp else None,
        }
        for name, src in domains.items():
            index["domains"][name] = _write_domain(
                name, src, tmp, int(shard_size), resize and int(resize), int(min_size), int(quality), format, progress,
                workers
            )
        index.update(extra or {})
        atomic_write_json(tmp / INDEX_NAME, index)
        _swap_in(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index


def _swap_in(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished temp root onto ``out`` (replacing an old root only when allowed)."""
    _check_out_dir(out, overwrite)  # again: something may have appeared meanwhile
    if out.is_dir() and any(out.iterdir()):
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if out.is_dir():
            out.rmdir()
        os.replace(tmp, out)
