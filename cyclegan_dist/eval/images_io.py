"""Read image sets for evaluation: a directory, a .zip (e.g. Kaggle's images.zip) or WebDataset shards.

Every source yields ``(name, image)`` with ``image`` a uint8 ``H x W x 3`` RGB array, in a stable order
(directory and zip: sorted names; shards: shard order, then tar order). Any PIL mode is converted to RGB
(L, LA, P, RGBA: alpha dropped, CMYK, 16-bit grey scaled by 1/257). Unreadable images are skipped and counted, with
one warning at the end; a source with no readable image raises :class:`UserError` naming the path.

Which kind a source is:
  * a directory containing ``*.tar`` files at its top level -> shards (all of them; if their names show several
    sets, e.g. ``monet-000000.tar`` and ``photo-000000.tar``, you must pick one: ``DIR/monet-*.tar``);
  * another directory -> images (``.jpg .jpeg .png``, any case, recursive);
  * a ``.zip`` file -> images inside it (``__MACOSX/`` and dot-files ignored);
  * a ``.tar`` file, a glob (``shards/monet-*.tar``), a brace pattern (``monet-{000000..000003}.tar``) or a
    list of tar paths -> shards. Each sample needs ``__key__`` and a ``jpg`` (or ``jpeg``/``png``) field.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import re
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from cyclegan_dist.errors import UserError

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
SHARD_IMAGE_FIELDS = ("jpg", "jpeg", "png")


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """A PIL image of any mode as a uint8 ``H x W x 3`` RGB array."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im).astype(np.float64)
        if im.mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / 257.0  # 16-bit range -> 8-bit
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)


def decode_image(data: bytes | io.IOBase) -> np.ndarray:
    """Decode (fully) an encoded image; raises on damaged data."""
    f = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    with Image.open(f) as im:
        im.load()
        return to_rgb_array(im)


def _is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.lower().endswith(IMAGE_EXTS) and not base.startswith(".")


def _has_glob(s: str) -> bool:
    return any(c in s for c in "*?[") or re.search(r"\{[^}]*(\.\.|,)[^}]*\}", s) is not None


def _shard_group(name: str) -> str:
    m = re.match(r"^(.*?)[-_.]?\d+\.tar$", name)
    return m.group(1) if m else name[:-4]


class ImageSource:
    """One image set. Iterate it for ``(name, uint8 HxWx3)``; afterwards ``n_read``/``n_skipped`` hold the counts.

    ``split_by_node``: for shards only, give each distributed rank every ``world_size``-th shard
    (``webdataset.split_by_node``, which reads ``RANK``/``WORLD_SIZE`` from the environment or torch.distributed).
    Off by default: evaluation normally wants the whole set, even when run inside a distributed job.
    """

    def __init__(self, source: str | os.PathLike | Sequence[str | os.PathLike], *, split_by_node: bool = False):
        self.split_by_node = split_by_node
        self.names: list[str] | None = None
        self.urls: list[str] = []
        self.n_read = 0
        self.n_skipped = 0
        self._first_errors: list[str] = []
        if isinstance(source, (list, tuple)):
            self.kind, self.path = "shards", ",".join(str(s) for s in source)
            self.urls = self._tar_paths([str(s) for s in source], self.path)
            return
        s = str(source)
        self.path = s
        p = Path(s).expanduser()
        if p.is_dir():
            tars = sorted(x for x in p.iterdir() if x.is_file() and x.name.endswith(".tar"))
            if tars:
                groups = sorted({_shard_group(t.name) for t in tars})
                if len(groups) > 1:
                    hint = " or ".join(f"'{p / g}-*.tar'" for g in groups[:3])
                    raise UserError(f"{p} holds shards of several sets ({', '.join(groups)}); pass one of them, e.g. {hint}")
                self.kind, self.urls = "shards", [str(t) for t in tars]
            else:
                self.kind, self.root = "dir", p
                self.names = sorted(x.relative_to(p).as_posix() for x in p.rglob("*")
                                    if x.is_file() and _is_image_name(x.name))
                if not self.names:
                    raise UserError(f"no images ({', '.join(IMAGE_EXTS)}) found under directory {p}")
        elif p.is_file() and zipfile.is_zipfile(p):
            self.kind, self.root = "zip", p
            with zipfile.ZipFile(p) as z:
                self.names = sorted(n for n in z.namelist()
                                    if not n.endswith("/") and not n.startswith("__MACOSX/") and _is_image_name(n))
            if not self.names:
                raise UserError(f"no images ({', '.join(IMAGE_EXTS)}) found in zip file {p}")
        elif p.is_file() and p.name.endswith(".tar"):
            self.kind, self.urls = "shards", [str(p)]
        elif _has_glob(s):
            self.kind = "shards"
            self.urls = self._tar_paths([s], s)
        elif p.is_file():
            raise UserError(f"{p} is neither a directory, a .zip of images nor a .tar shard")
        else:
            raise UserError(f"image source not found: {p} (expected a directory, a .zip, or .tar shards)")

    @staticmethod
    def _tar_paths(patterns: list[str], shown: str) -> list[str]:
        import braceexpand

        out: list[str] = []
        for pat in patterns:
            for piece in braceexpand.braceexpand(os.path.expanduser(pat)):
                hits = sorted(glob.glob(piece)) if _has_glob(piece) else [piece]
                missing = [h for h in hits if not os.path.isfile(h)]
                if missing:
                    raise UserError(f"shard file not found: {missing[0]} (from {shown})")
                out.extend(hits)
        if not out:
            raise UserError(f"no shard files match {shown}")
        return out

    @property
    def count(self) -> int | None:
        """Number of candidate images when known up front (directory, zip), else None."""
        return len(self.names) if self.names is not None else None

    def fingerprint(self) -> str:
        """A string identifying this set and its content version (paths, sizes, mtimes), for cache keys."""
        h = hashlib.sha256()
        if self.kind == "dir":
            root = self.root.resolve()
            h.update(str(root).encode())
            for n in self.names:
                st = (root / n).stat()
                h.update(f"\0{n}\0{st.st_size}\0{st.st_mtime_ns}".encode())
            ident = str(root)
        else:
            files = [self.root] if self.kind == "zip" else [Path(u) for u in self.urls]
            for f in files:
                st = f.stat()
                h.update(f"\0{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
            ident = str(files[0].resolve()) + (f"+{len(files) - 1}" if len(files) > 1 else "")
        return f"{self.kind}:{ident}:{h.hexdigest()[:16]}"

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        self.n_read = self.n_skipped = 0
        self._first_errors = []
        gen = {"dir": self._iter_dir, "zip": self._iter_zip, "shards": self._iter_shards}[self.kind]
        for name, img in gen():
            self.n_read += 1
            yield name, img
        if self.n_skipped:
            warnings.warn(f"{self.path}: skipped {self.n_skipped} unreadable image(s) of "
                          f"{self.n_read + self.n_skipped}; first: {'; '.join(self._first_errors)}")
        if self.n_read == 0:
            raise UserError(f"no readable images in {self.path} ({self.n_skipped} unreadable)")

    def _skip(self, name: str, err: BaseException | str) -> None:
        self.n_skipped += 1
        if len(self._first_errors) < 3:
            msg = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
            self._first_errors.append(f"{name} ({msg})")

    def _iter_dir(self):
        for n in self.names:
            try:
                img = decode_image((self.root / n).read_bytes())
            except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
                self._skip(n, e)
                continue
            yield n, img

    def _iter_zip(self):
        with zipfile.ZipFile(self.root) as z:
            for n in self.names:
                try:
                    img = decode_image(z.read(n))
                except Exception as e:  # noqa: BLE001
                    self._skip(n, e)
                    continue
                yield n, img

    def _iter_shards(self):
        import webdataset

        def on_error(exn: Exception) -> bool:
            self._skip("<shard>", exn)
            return True  # continue with the next sample / shard

        ds = webdataset.WebDataset(
            self.urls,
            shardshuffle=False,
            nodesplitter=webdataset.split_by_node if self.split_by_node else _all_shards,
            empty_check=False,
            handler=on_error,
        )
        for sample in ds:
            key = str(sample.get("__key__", "?"))
            data = next((sample[k] for k in SHARD_IMAGE_FIELDS if k in sample), None)
            if data is None:
                self._skip(key, f"no {'/'.join(SHARD_IMAGE_FIELDS)} field; fields {sorted(sample)}")
                continue
            try:
                img = decode_image(data)
            except Exception as e:  # noqa: BLE001
                self._skip(key, e)
                continue
            yield key, img


def _all_shards(urls):
    """Node splitter that keeps every shard (evaluation reads the whole set)."""
    yield from urls


def iter_images(source, **kwargs) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, uint8 HxWx3)`` from a directory, zip or shards; see :class:`ImageSource`."""
    return iter(ImageSource(source, **kwargs))


def read_images(source, **kwargs) -> tuple[list[str], list[np.ndarray]]:
    """All images of a (small) source in memory."""
    names, images = [], []
    for n, im in iter_images(source, **kwargs):
        names.append(n)
        images.append(im)
    return names, images
