"""Where ``translate`` writes (``--out``) and under which names: a folder (sub-folders kept; each file written to a
temporary name, then renamed) or a ``.zip`` (written under a temporary name, renamed over ``dst`` once complete).

``fmt`` ``auto`` keeps JPEG for ``.jpg``/``.jpeg`` inputs and writes PNG otherwise; ``jpeg`` or ``png`` force one
(:func:`plan_outputs`, :func:`encode_as`). A source file is never overwritten, and ``dst`` may not lie inside a source
folder (:func:`check_destination`).
"""

from __future__ import annotations

import io
import os
import time
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from cyclegan_dist.errors import UserError
from cyclegan_dist.eval.translate_inputs import Inputs
from cyclegan_dist.images import encode_jpeg

FORMATS = ("auto", "jpeg", "png")
JPEG_SUFFIXES = (".jpg", ".jpeg")


def safe_relative(name: str) -> str:
    """A source name as a path inside the output: ``/``-separated, no absolute part, no ``..`` (a zip's
    ``../x.jpg`` stays inside)."""
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".", "..", "/")]
    return "/".join(parts) or "image"


def output_suffix(name: str, fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose from {', '.join(FORMATS)}")
    suffix = PurePosixPath(name).suffix
    if fmt == "png" or (fmt == "auto" and suffix.lower() not in JPEG_SUFFIXES):
        return ".png"
    return suffix if suffix.lower() in JPEG_SUFFIXES else ".jpg"


def output_name(name: str, fmt: str) -> str:
    """``a/b.png`` -> ``a/b.png`` (auto, png), ``a/b.jpg`` (jpeg); ``a/b.JPG`` keeps its suffix as JPEG."""
    rel = PurePosixPath(safe_relative(name))
    return rel.with_suffix(output_suffix(name, fmt)).as_posix()


def plan_outputs(names: list[str], fmt: str) -> dict[str, str]:
    """Source name -> output name. Two sources that would share a name (``a.bmp`` and ``a.png`` -> ``a.png``)
    keep their whole name instead (``a.bmp.png``)."""
    plain = {n: output_name(n, fmt) for n in names}
    taken = Counter(plain.values())
    out = {}
    for n, o in plain.items():
        suffix = PurePosixPath(o).suffix
        rel = safe_relative(n)
        out[n] = o if taken[o] == 1 or rel == o else rel + suffix
    clash = [o for o, k in Counter(out.values()).items() if k > 1]
    if clash:
        raise UserError(f"several inputs would be written to {clash[0]}; rename them or translate them separately")
    return out


class FolderOutput:
    """Files under ``root``; each written to a temporary name in its folder, then renamed."""

    def __init__(self, root: Path) -> None:
        self.root, self.count = root, 0

    def add(self, name: str, data: bytes) -> None:
        from cyclegan_dist.rundir import atomic_write

        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
        self.count += 1

    def close(self, ok: bool) -> None:
        pass


class ZipOutput:
    """Members of a zip written as ``.<name>.<pid>.partial`` and renamed over ``path`` by ``close(True)`` (when it
    holds an image); ``close(False)`` deletes it: an existing zip is replaced whole or not at all."""

    def __init__(self, path: Path) -> None:
        self.path, self.count = path, 0
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED)  # JPEG and PNG do not compress

    def add(self, name: str, data: bytes) -> None:
        info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
        info.external_attr = 0o644 << 16
        self.zip.writestr(info, data)
        self.count += 1

    def close(self, ok: bool) -> None:
        from cyclegan_dist.rundir import fsync_dir, fsync_file

        self.zip.close()
        if ok and self.count:
            fsync_file(self.tmp)
            os.replace(self.tmp, self.path)
            fsync_dir(self.path.parent)
        else:
            self.tmp.unlink(missing_ok=True)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_destination(inputs: Inputs, dst: Path, planned: dict[str, str] | None) -> str:
    """'zip' or 'dir' for ``dst``; UserError when it would overwrite a source or lie inside a source folder."""
    target = dst.resolve()
    as_zip = dst.suffix.lower() == ".zip" and not dst.is_dir()
    if as_zip and dst.exists() and not zipfile.is_zipfile(dst):
        raise UserError(f"--out {dst} exists and is not a zip: not replacing it; choose another name")
    if not as_zip and dst.exists() and not dst.is_dir():
        raise UserError(f"--out {dst} is a file; give a folder or a name ending in .zip")
    if inputs.kind == "dir" and _inside(target, inputs.root.resolve()):
        raise UserError(f"--out {dst} lies inside the source folder {inputs.root}: choose a folder outside it "
                        "(the outputs would mix with the photos)")
    sources = {f.resolve() for f in inputs.files()}
    writes = [target] if as_zip else [(target / o).resolve() for o in (planned or {}).values()]
    clash = next((w for w in writes if w in sources), None)
    if clash is not None:
        raise UserError(f"--out {dst} would overwrite the source file {clash}; choose another output")
    return "zip" if as_zip else "dir"


def encode_as(out_name: str, image: np.ndarray, quality: int) -> bytes:
    """uint8 ``H x W x 3`` -> the bytes of ``out_name``: PNG for a ``.png`` name, else JPEG at ``quality``."""
    if out_name.endswith(".png"):
        buf = io.BytesIO()
        Image.fromarray(image, "RGB").save(buf, format="PNG")
        return buf.getvalue()
    return encode_jpeg(image, quality)
