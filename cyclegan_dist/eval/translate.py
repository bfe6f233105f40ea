"""``translate``: photos of any size and format in, the generator's images out, names kept (one command).

* **Sources** (:func:`open_inputs`): a folder (recursive) or a ``.zip`` (listed by
  :class:`~cyclegan_dist.images.ImageSource`: names with the image extensions of ``images.IMAGE_EXTS``), a glob of
  image files (``'photos/*.jpg'``, ``**`` recursive), one image file (any format PIL reads), or WebDataset shards
  (as ``ImageSource`` reads them). A file that does not decode is skipped, reported through ``on_skip`` and
  counted; the others are translated.
* **Sizes**: the shorter side is resized to ``size`` (bicubic, aspect kept; default the run's training size,
  ``data.crop_size`` of the checkpoint's config, else 256), or with ``full_res`` the image keeps its size and is
  translated in overlapping tiles (:mod:`cyclegan_dist.eval.tiles`). Sides the architecture does not take are
  reflect-padded and cropped back: an output has the size of its (resized) input.
* **Batches**: consecutive images of the same size share a forward pass (at most ``batch_size``); decoding and
  encoding run in a thread pool beside it.
* **Outputs** (:func:`plan_outputs`): a folder (sub-folders kept; each file written to a temporary name, then
  renamed) or a ``.zip`` (written under a temporary name, renamed over ``dst`` once complete). ``fmt`` ``auto``
  keeps JPEG for ``.jpg``/``.jpeg`` inputs and writes PNG otherwise; ``jpeg`` or ``png`` force one. A source file
  is never overwritten, and ``dst`` may not lie inside a source folder.

torch is imported only once the paths have been checked: a mistake in a path is reported in a fraction of a second.
"""

from __future__ import annotations

import glob as globlib
import io
import itertools
import os
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from cyclegan_dist.errors import UserError
from cyclegan_dist.images import (
    IMAGE_EXTS,
    JPEG_QUALITY,
    ZIP_PHOTO_MAX_BYTES,
    ImageSource,
    decode,
    encode_jpeg,
    from_array,
    is_image_name,
    read_zip_member,
    resize_shorter,
)

FORMATS = ("auto", "jpeg", "png")
JPEG_SUFFIXES = (".jpg", ".jpeg")
DEFAULT_OVERLAP_FRACTION = 4  # --overlap default: a quarter of the tile
SkipHandler = Callable[[str, str], None]


# ------------------------------------------------------------------------------------------------ inputs


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


# ------------------------------------------------------------------------------------------------ outputs


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


# ------------------------------------------------------------------------------------------------ one call


@dataclass
class TranslateResult:
    checkpoint: str  # the weights file used
    generator: str
    out: str
    translated: int = 0
    n_skipped: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why)
    size: str = ""  # how images were sized, in words
    device: str = "cpu"
    seconds: float = 0.0


def training_size(checkpoint: str | os.PathLike, direction: str = "AtoB", raw_weights: bool = False) -> tuple[int, str]:
    """(the short side a generator was trained at, where that came from): ``data.crop_size`` of the
    ``config.yaml`` beside its weights (run and checkpoint directories), else the default crop size (exported
    generators, junyanz files)."""
    from cyclegan_dist.config import DataConfig, read_yaml_mapping
    from cyclegan_dist.models.io import generator_file
    from cyclegan_dist.rundir import CONFIG

    weights = generator_file(checkpoint, direction, raw_weights=raw_weights)
    config = weights.parent / CONFIG
    if config.is_file():
        data = read_yaml_mapping(config).get("data")
        crop = data.get("crop_size") if isinstance(data, dict) else None
        if isinstance(crop, int) and not isinstance(crop, bool) and crop > 0:
            return crop, f"data.crop_size of {config}"
    default = DataConfig().crop_size
    return default, f"the default {default}: no run config beside {weights.name}"


def unreadable_reason(err: BaseException) -> str:
    """Why a file was skipped, in one line."""
    if isinstance(err, UnidentifiedImageError):
        return "not an image PIL can read"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def check_options(*, size: int | None, full_res: bool, tile: int | None, overlap: int | None, batch_size: int,
                  fmt: str, quality: int) -> None:
    """The option mistakes, as one-line UserErrors, before anything is read."""
    for flag, value in (("--batch-size", batch_size), ("--size", size), ("--tile", tile)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if overlap is not None and overlap < 0:
        raise UserError(f"--overlap must be >= 0, got {overlap}")
    if full_res and size is not None:
        raise UserError("--size and --full-res exclude each other: --full-res keeps every image's own size")
    if not full_res and (tile is not None or overlap is not None):
        raise UserError("--tile and --overlap apply to --full-res only: add --full-res or drop them")
    if not 1 <= quality <= 100:
        raise UserError(f"--quality must be within 1..100, got {quality}")
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose from {', '.join(FORMATS)}")


@dataclass(frozen=True)
class Sizing:
    """How images meet the generator: shorter side resized to ``size``, or (``size`` None) full resolution in
    ``tile`` x ``tile`` tiles overlapping by ``overlap``; sides padded to multiples of ``unit`` either way."""

    unit: int
    size: int | None
    tile: int = 0
    overlap: int = 0

    def prepare(self, payload: bytes | np.ndarray) -> np.ndarray:
        img = decode(payload) if isinstance(payload, bytes) else from_array(payload)
        return np.asarray(img if self.size is None else resize_shorter(img, self.size), dtype=np.uint8)

    def translate(self, net, images: list[np.ndarray], batch_size: int, bf16: bool) -> list[np.ndarray]:
        """Images of one shape -> the generator's images of that shape."""
        from cyclegan_dist.eval.tiles import translate_padded, translate_tiled

        if self.size is None:
            return [translate_tiled(net, a, self.tile, self.overlap, self.unit, batch_size, bf16) for a in images]
        return list(translate_padded(net, images, self.unit, bf16))


def choose_sizing(generator: str, trained: int, origin: str, size: int | None, full_res: bool, tile: int | None,
                  overlap: int | None) -> tuple[Sizing, str]:
    """(the Sizing, how it was chosen in words) for a generator trained at ``trained`` px (said by ``origin``)."""
    from cyclegan_dist.eval.formats import size_unit
    from cyclegan_dist.eval.tiles import check_tiling, round_up

    unit = size_unit(generator)
    if not full_res:
        how = f"shorter side {size}" if size is not None else f"shorter side {trained} ({origin})"
        return Sizing(unit, size or trained), how
    tile = round_up(tile or trained, unit)
    overlap = tile // DEFAULT_OVERLAP_FRACTION if overlap is None else overlap
    check_tiling(tile, overlap)
    return Sizing(unit, None, tile, overlap), f"full resolution, {tile}x{tile} tiles overlapping by {overlap} px"


def translate_source(checkpoint: str | os.PathLike, src: str | os.PathLike, dst: str | os.PathLike, *,
                     direction: str = "AtoB", size: int | None = None, full_res: bool = False,
                     tile: int | None = None, overlap: int | None = None, batch_size: int = 8, fmt: str = "auto",
                     quality: int = JPEG_QUALITY, device=None, bf16: bool = False, raw_weights: bool = False,
                     progress: bool = True, on_skip: SkipHandler | None = None, workers: int = 4) -> TranslateResult:
    """Translate every image of ``src`` into ``dst`` (the module docstring says how); a file that cannot be read
    is reported by ``on_skip(name, why)`` and counted in the result, the others are written."""
    start = time.perf_counter()
    check_options(size=size, full_res=full_res, tile=tile, overlap=overlap, batch_size=batch_size, fmt=fmt,
                  quality=quality)
    if not Path(checkpoint).expanduser().exists():
        raise UserError(f"--checkpoint {checkpoint}: not found (a run or checkpoint directory, an exported "
                        "generator directory, a .safetensors or a junyanz .pth file)")
    inputs = open_inputs(src)
    dst = Path(dst).expanduser()
    planned = plan_outputs(inputs.names, fmt) if inputs.names is not None else None
    kind = check_destination(inputs, dst, planned)

    import torch

    from cyclegan_dist.models.io import describe, generator_file, load_generator

    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    found = generator_file(checkpoint, direction, raw_weights=raw_weights)
    net, mc = load_generator(checkpoint, direction, device, raw_weights=raw_weights)
    sizing, how = choose_sizing(mc.generator, *training_size(checkpoint, direction, raw_weights), size, full_res,
                                tile, overlap)
    result = TranslateResult(checkpoint=str(found), generator=describe(mc), out=str(dst), size=how, device=str(device))

    def skip(name: str, err: BaseException | str, count: int = 1) -> None:
        why = err if isinstance(err, str) else unreadable_reason(err)
        result.skipped.append((name, why))
        result.n_skipped += count
        if on_skip is not None:
            on_skip(name, why)

    def encode(name: str, image: np.ndarray) -> tuple[str, bytes]:
        out_name = planned[name] if planned is not None else output_name(name, fmt)
        return out_name, _encode_png(image) if out_name.endswith(".png") else encode_jpeg(image, quality)

    writer = ZipOutput(dst) if kind == "zip" else FolderOutput(dst)
    ok = False
    try:
        result.translated = _translate_all(inputs, net, sizing, writer, encode, skip, batch_size, bf16, progress,
                                           workers)
        ok = True
    finally:
        writer.close(ok)
    result.seconds = round(time.perf_counter() - start, 1)
    return result


def _translate_all(inputs: Inputs, net, sizing: Sizing, writer: FolderOutput | ZipOutput, encode, skip,
                   batch_size: int, bf16: bool, progress: bool, workers: int) -> int:
    """The loop: read in order, decode and resize in threads, translate runs of one shape, encode in threads,
    write; returns the number written."""
    from tqdm.auto import tqdm

    def prepare(item: tuple[str, bytes | np.ndarray | Exception]) -> tuple[str, np.ndarray | Exception]:
        name, payload = item
        try:
            return name, payload if isinstance(payload, Exception) else sizing.prepare(payload)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
            return name, e

    # full resolution: a few images decoded at a time (each may be large; its tiles fill the batches)
    per_chunk = batch_size if sizing.size is not None else max(1, workers)
    bar = tqdm(total=inputs.count, desc="translate", unit="img", disable=not progress)
    pool = ThreadPoolExecutor(max(1, workers))
    # images.decode sets PIL's global LOAD_TRUNCATED_IMAGES to False around each call and restores it after: with
    # several decoding threads the restores could interleave, so it is False for the whole loop instead.
    truncated_ok, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        items = iter(inputs)
        while chunk := list(itertools.islice(items, per_chunk)):
            good = []
            for name, image in pool.map(prepare, chunk):
                if isinstance(image, Exception):
                    skip(name, image)
                else:
                    good.append((name, image))
            for _, same_shape in itertools.groupby(good, key=lambda pair: pair[1].shape):
                names, images = zip(*same_shape)
                outs = sizing.translate(net, list(images), batch_size, bf16)
                for out_name, data in pool.map(encode, names, outs):
                    writer.add(out_name, data)
            bar.update(len(chunk))
        if inputs.kind == "shards" and inputs.source.n_skipped:
            n = inputs.source.n_skipped
            skip(f"{n} shard sample(s)", "unreadable (the warning above names the first)", count=n)
    finally:
        pool.shutdown(wait=True)
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok
        bar.close()
    return writer.count
