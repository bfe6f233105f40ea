"""Where ``translate`` reads photos (``--in``): a folder (recursive) or a ``.zip`` (listed by
:class:`~cyclegan_dist.images.ImageSource`: names with the image extensions of ``images.IMAGE_EXTS``), a glob of
image files (``'photos/*.jpg'``, ``**`` recursive), one image file (any format PIL reads), or WebDataset shards (as
``ImageSource`` reads them). Each image keeps its name relative to the source (``/``-separated) for the output.

A file that does not decode is not an error here: it is yielded as the exception that made it unreadable, and
:func:`unreadable_reason` says why in one line.
"""

from __future__ import annotations

import glob as globlib
import itertools
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError

from cyclegan_dist.errors import UserError
from cyclegan_dist.images import IMAGE_EXTS, ZIP_PHOTO_MAX_BYTES, ImageSource, is_image_name, read_zip_member


@dataclass
class Inputs:
    """What ``--in`` names: ``kind`` dir | zip | files | shards; ``names`` (relative, ``/``-separated) are known
    up front except for shards; ``files`` are the source files on disk (never overwritten)."""

    kind: str
    shown: str
    names: list[str] | None = None
    root: Path | None = None
    paths: list[Path] = field(default_factory=list)
    source: ImageSource | None = None

    @property
    def count(self) -> int | None:
        return len(self.names) if self.names is not None else None

    def files(self) -> list[Path]:
        if self.kind == "dir":
            return [self.root / n for n in self.names]
        if self.kind == "zip":
            return [self.root]
        if self.kind == "files":
            return list(self.paths)
        return [Path(u) for u in self.source.urls]

    def __iter__(self) -> Iterator[tuple[str, bytes | np.ndarray | Exception]]:
        """``(name, encoded bytes | decoded uint8 H x W x 3 | the exception that made it unreadable)``."""
        if self.kind in ("dir", "files"):
            paths = self.files()
            for name, path in zip(self.names, paths):
                try:
                    yield name, path.read_bytes()
                except OSError as e:
                    yield name, e
        elif self.kind == "zip":
            with zipfile.ZipFile(self.root) as z:
                for name in self.names:
                    try:
                        yield name, read_zip_member(z, z.getinfo(name), ZIP_PHOTO_MAX_BYTES)
                    except Exception as e:  # noqa: BLE001 - BadZipFile, CRC errors, encrypted, oversized members
                        yield name, e
        else:
            yield from self.source  # its unreadable samples are counted in source.n_skipped


def _glob_base(pattern: str) -> Path:
    """The folder a glob's matches are named relative to: its leading parts without wildcards."""
    parts = Path(pattern).expanduser().parts
    fixed = list(itertools.takewhile(lambda part: not any(c in part for c in "*?["), parts[:-1]))
    return Path(*fixed) if fixed else Path(".")


def open_inputs(src: str | os.PathLike) -> Inputs:
    """``--in`` -> :class:`Inputs`; a path that names nothing, or no images, is a :class:`UserError`."""
    shown = str(src)
    p = Path(shown).expanduser()
    if p.is_dir() or (p.is_file() and (zipfile.is_zipfile(p) or p.name.endswith(".tar"))):
        source = ImageSource(p)
        if source.kind == "shards":
            return Inputs("shards", shown, source=source)
        return Inputs(source.kind, shown, names=list(source.names), root=source.root, source=source)
    if p.is_file():
        return Inputs("files", shown, names=[p.name], root=p.parent, paths=[p])
    if any(c in shown for c in "*?["):
        hits = sorted(Path(h) for h in globlib.glob(str(p), recursive=True) if os.path.isfile(h))
        images = [h for h in hits if is_image_name(h.name)]
        if not images and hits and all(h.name.endswith(".tar") for h in hits):
            return Inputs("shards", shown, source=ImageSource(shown))
        if not images:
            raise UserError(f"--in {shown}: no image files ({', '.join(IMAGE_EXTS)}) match")
        base = _glob_base(shown)
        return Inputs("files", shown, names=[h.relative_to(base).as_posix() for h in images], root=base,
                      paths=images)
    raise UserError(f"--in {shown}: not found (give a folder, a .zip, a glob such as 'photos/*.jpg' in quotes, "
                    "or an image file)")


def unreadable_reason(err: BaseException) -> str:
    """Why a file was skipped, in one line."""
    if isinstance(err, UnidentifiedImageError):
        return "not an image PIL can read"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
