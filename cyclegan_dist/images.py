"""Images in and out, one way everywhere (no torch here): decoding, the RGB policy, resizing, JPEG, sources.

* **Decoding** (:func:`open_image`, :func:`decode`): full and strict (a truncated file raises, whatever
  ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` says), EXIF orientation applied.
* **RGB policy** (:func:`to_rgb`): alpha is composited over white; grey, palette, CMYK and YCbCr are converted;
  16-bit and 32-bit grey are rescaled to 8 bits (not clipped); float grey is taken as 0..1 (or 0..255).
* **Resize** (:func:`resize`): bicubic (PIL's, antialiased when shrinking), the reference's method, for every
  photo that enters a network (training crops, evaluation, export, reports); aspect not kept unless asked.
* **Raw** (:func:`encode_raw`, :func:`raw_rgb`): binary PPM (``P6``), uncompressed 8-bit RGB behind a short text
  header: the shards' default member (no decoding in the loader, no second JPEG generation); every image tool
  reads it.
* **JPEG** (:func:`encode_jpeg`): quality 95, chroma 4:4:4 (no subsampling: 4:2:0 smears the fine colour
  texture generators produce, ~20/255 mean error instead of ~3 on a noisy output, for ~2x the bytes).
* **Sources** (:class:`ImageSource`): a folder (recursive), a ``.zip``, or WebDataset shards (a folder of
  ``<set>-NNNNNN.tar``, one set of a shard root by name, a ``.tar``, a glob, a brace pattern or a list), yielding
  ``(name, uint8 H x W x 3)`` in a stable order. Unreadable images are skipped, counted and reported once; a
  source with no readable image is a :class:`UserError`.
* **Zip limits** (:func:`check_zip_member`, :func:`read_zip_member`): every zip member is judged by the sizes its
  central directory declares before a byte of it is inflated (a member too large, or compressed too well, to be
  an image is a :class:`UserError`), then read through a stream that never holds more than the limit, so memory
  follows the input, not what a zip claims to expand to.
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
from PIL import Image, ImageFile, ImageOps

from cyclegan_dist.errors import UserError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SHARD_IMAGE_FIELDS = ("ppm", "jpg", "jpeg", "png", "webp")
_PPM_HEADER = re.compile(rb"P6[ \t\r\n]+(\d+)[ \t\r\n]+(\d+)[ \t\r\n]+255[ \t\r\n]")
RESIZE_METHOD = "bicubic"
JPEG_QUALITY = 95
JPEG_MAGIC = b"\xff\xd8\xff"  # start of image, then the first marker
JPEG_SUBSAMPLING = "4:4:4"
_PIL_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}

# Zip members of a photo source (FID, export, collect). One member at most ZIP_PHOTO_MAX_BYTES: an uncompressed
# 8-bit RGB photo (BMP/TIFF/PPM) of 22 megapixels is 64 MiB, JPEG/PNG/WebP photos of any camera are far smaller,
# and FID and export shrink every image to 299 or 256 pixels anyway.
ZIP_PHOTO_MAX_BYTES = 64 * 2**20
# Inflated/compressed size of a photo member at most ZIP_PHOTO_MAX_RATIO: deflate cannot exceed ~1032:1, which a
# flat uncompressed BMP reaches (measured 1028:1; a flat 24-megapixel JPEG ~450:1), so more is bzip2/lzma of
# degenerate data, not a photo.
ZIP_PHOTO_MAX_RATIO = 1100
# The ratio is judged from this inflated size up: a smaller member cannot amplify much, and small non-images that
# zips carry (.DS_Store, mostly zeros) legitimately compress far better than any image.
ZIP_RATIO_FROM = 64 * 2**10


# ------------------------------------------------------------------------------------------ decoding


class _strict_decoding:
    """Truncated images must raise, even if some other module set ``LOAD_TRUNCATED_IMAGES``."""

    def __enter__(self):
        self.saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False

    def __exit__(self, *exc):
        ImageFile.LOAD_TRUNCATED_IMAGES = self.saved


def open_image(data: bytes) -> Image.Image:
    """Decode fully (raises on corrupt or truncated data); the image keeps its own mode and orientation."""
    with _strict_decoding():
        img = Image.open(io.BytesIO(data))
        img.load()
    return img


def upright(img: Image.Image) -> tuple[Image.Image, bool]:
    """Apply an EXIF orientation tag (phone photos); returns (image, whether it changed)."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block means "no orientation"
        orientation = 1
    if orientation in (None, 1):
        return img, False
    return ImageOps.exif_transpose(img), True


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, by the one policy of the module docstring."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        a = np.nan_to_num(np.asarray(img).astype(np.float64))
        if mode == "F":
            hi = 1.0 if a.size and a.max() <= 1.0 else 255.0
        elif mode.startswith("I;16") or (a.size and a.max() > 255):
            hi = 65535.0
        else:
            hi = 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if mode in ("P", "PA") and (mode == "PA" or "transparency" in img.info):
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def decode(data: bytes) -> Image.Image:
    """Encoded bytes -> upright 8-bit RGB PIL image; raises on corrupt or truncated data."""
    return to_rgb(upright(open_image(data))[0])


def to_array(img: Image.Image) -> np.ndarray:
    """A PIL image (any mode, by the RGB policy) -> uint8 ``H x W x 3``."""
    return np.asarray(to_rgb(img), dtype=np.uint8)


def from_array(a: np.ndarray) -> Image.Image:
    """uint8 ``H x W x 3`` (or ``H x W`` grey, ``H x W x 4`` RGBA, by the RGB policy) -> RGB PIL image."""
    a = np.asarray(a)
    if a.dtype != np.uint8:
        raise UserError(f"an image array must be uint8, got {a.dtype}")
    if a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[2] not in (3, 4):  # CHW
        a = a.transpose(1, 2, 0)
    modes = {2: "L", 3: "RGB", 4: "RGBA"}
    channels = 2 if a.ndim == 2 else a.shape[2] if a.ndim == 3 else 0
    if channels not in modes:
        raise UserError(f"an image array must be HxW, HxWx3 or HxWx4, got shape {a.shape}")
    return to_rgb(Image.fromarray(np.ascontiguousarray(a), modes[channels]))


# ------------------------------------------------------------------------------------------ resize, JPEG


def resize(img: Image.Image, size: int | tuple[int, int]) -> Image.Image:
    """``size`` x ``size`` (or ``(w, h)``), bicubic; the image itself when it has that size already."""
    wh = (size, size) if isinstance(size, int) else tuple(size)
    return img if img.size == wh else img.resize(wh, Image.BICUBIC)


def resize_shorter(img: Image.Image, side: int) -> Image.Image:
    """Shorter side to ``side`` pixels, aspect kept, bicubic."""
    w, h = img.size
    scale = side / min(w, h)
    return resize(img, (max(1, round(w * scale)), max(1, round(h * scale))))


def encode_raw(img: Image.Image | np.ndarray) -> bytes:
    """Uncompressed 8-bit RGB as binary PPM (``P6 W H 255`` then the H x W x 3 bytes)."""
    if not isinstance(img, Image.Image):
        img = from_array(img)
    buf = io.BytesIO()
    to_rgb(img).save(buf, format="PPM")
    return buf.getvalue()


def raw_rgb(data: bytes) -> np.ndarray | None:
    """A complete 8-bit binary PPM -> its uint8 H x W x 3 pixels (a read-only view of ``data``, no copy); None
    for anything else (other formats, comments in the header, a wrong length: :func:`decode` then decides, and a
    truncated file raises there)."""
    m = _PPM_HEADER.match(data, 0, 64)
    if m is None:
        return None
    w, h = int(m.group(1)), int(m.group(2))
    if len(data) - m.end() != w * h * 3 or w * h == 0:
        return None
    return np.frombuffer(data, np.uint8, offset=m.end()).reshape(h, w, 3)


def encode_jpeg(img: Image.Image | np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """RGB JPEG at ``quality``, chroma subsampling :data:`JPEG_SUBSAMPLING`."""
    if not isinstance(img, Image.Image):
        img = from_array(img)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality), subsampling=_PIL_SUBSAMPLING[JPEG_SUBSAMPLING])
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ shards


def sample_image_bytes(sample: dict) -> bytes:
    """The encoded image of a WebDataset sample (``jpg``/``.jpg`` ...); KeyError if it has none."""
    for ext in SHARD_IMAGE_FIELDS:
        for key in (ext, "." + ext):
            if key in sample:
                value = sample[key]
                return value.getvalue() if hasattr(value, "getvalue") else bytes(value)
    raise KeyError(f"sample {sample.get('__key__')!r} has no {'/'.join(SHARD_IMAGE_FIELDS)} member")


def iter_tar_samples(urls: Sequence[str], on_error=None, rank: int = 0, world_size: int = 1) -> Iterator[dict]:
    """Samples of local tars in order, through webdataset's public pipeline stages; tar ``i`` goes to
    ``rank == i % world_size``. ``on_error(exception) -> bool`` (True: go on) handles unreadable data."""
    import webdataset as wds

    def split(src):
        yield from (s for i, s in enumerate(src) if i % world_size == rank)

    pipeline = wds.DataPipeline(wds.SimpleShardList(list(urls)), split, wds.tarfile_to_samples(
        handler=on_error or wds.reraise_exception))
    yield from pipeline


# ------------------------------------------------------------------------------------------ zip limits


def check_zip_member(zip_path: str | os.PathLike, info: zipfile.ZipInfo, max_bytes: int, max_ratio: float,
                     what: str, fix: str) -> None:
    """UserError when the central directory entry ``info`` declares more than ``max_bytes`` inflated, or a ratio
    inflated/compressed above ``max_ratio`` (from :data:`ZIP_RATIO_FROM` bytes up). Reads nothing but ``info``:
    call it before opening the member. ``what`` names what the member should be, ``fix`` what to do."""
    size, packed = info.file_size, info.compress_size
    if size > max_bytes:
        raise UserError(f"{zip_path}: member {info.filename!r} would inflate to {size:,} bytes, over the "
                        f"{max_bytes:,}-byte limit for {what}; {fix}")
    if size >= ZIP_RATIO_FROM and size > max_ratio * packed:
        raise UserError(f"{zip_path}: member {info.filename!r} would inflate {packed:,} bytes to {size:,} (ratio "
                        f"{size / max(packed, 1):,.0f}:1), over the {max_ratio:,}:1 limit for {what}; {fix}")


def read_zip_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> bytes:
    """A member's bytes, streamed (never more than ``max_bytes + 1`` inflated, whatever its headers say), CRC
    checked; UserError when it holds more than ``max_bytes``."""
    with z.open(info) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UserError(f"{z.filename}: member {info.filename!r} inflates to more than {max_bytes:,} bytes (the "
                        f"limit), although its header says {info.file_size:,}: a damaged or hostile zip")
    return data


def _check_photo_member(zip_path, info: zipfile.ZipInfo) -> None:
    check_zip_member(zip_path, info, ZIP_PHOTO_MAX_BYTES, ZIP_PHOTO_MAX_RATIO, "a photo",
                     "not an image this tool reads (a zip bomb?): remove it from the zip, or if it really is a "
                     "photo, unpack the zip and pass the folder")


# ------------------------------------------------------------------------------------------ sources


def is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.lower().endswith(IMAGE_EXTS) and not base.startswith(".")


def _has_glob(s: str) -> bool:
    return any(c in s for c in "*?[") or re.search(r"\{[^}]*(\.\.|,)[^}]*\}", s) is not None


def _shard_group(name: str) -> str:
    m = re.match(r"^(.*?)[-_.]?\d+\.tar$", name)
    return m.group(1) if m else name[:-4]


def _expand_tars(patterns: list[str], shown: str) -> list[str]:
    import braceexpand

    out: list[str] = []
    for pattern in patterns:
        for piece in braceexpand.braceexpand(os.path.expanduser(pattern)):
            hits = sorted(glob.glob(piece)) if _has_glob(piece) else [piece]
            missing = [h for h in hits if not os.path.isfile(h)]
            if missing:
                raise UserError(f"shard file not found: {missing[0]} (from {shown})")
            out.extend(hits)
    if not out:
        raise UserError(f"no shard files match {shown}")
    return out


class ImageSource:
    """One image set: iterate it for ``(name, uint8 H x W x 3)``; afterwards ``n_read``/``n_skipped`` hold the
    counts. ``domain`` picks the tars ``<domain>-*.tar`` of a directory that holds several sets (a shard root)."""

    def __init__(self, source: str | os.PathLike | Sequence[str | os.PathLike], domain: str | None = None):
        self.names: list[str] | None = None
        self.urls: list[str] = []
        self.n_read = self.n_skipped = 0
        self._errors: list[str] = []
        if isinstance(source, (list, tuple)):
            self.kind, self.path = "shards", ",".join(map(str, source))
            self.urls = _expand_tars([str(s) for s in source], self.path)
            return
        self.path = str(source)
        p = Path(self.path).expanduser()
        if p.is_dir():
            tars = sorted(x for x in p.iterdir() if x.is_file() and x.name.endswith(".tar")
                          and (domain is None or _shard_group(x.name) == domain))
            if tars:
                groups = sorted({_shard_group(t.name) for t in tars})
                if len(groups) > 1:
                    hint = " or ".join(f"'{p / g}-*.tar'" for g in groups[:3])
                    raise UserError(f"{p} holds shards of several sets ({', '.join(groups)}); pass one, e.g. {hint}")
                self.kind, self.urls = "shards", [str(t) for t in tars]
            else:
                self.kind, self.root = "dir", p
                self.names = sorted(x.relative_to(p).as_posix() for x in p.rglob("*")
                                    if x.is_file() and is_image_name(x.name))
                if not self.names:
                    raise UserError(f"no images ({', '.join(IMAGE_EXTS)}) found under directory {p}")
        elif p.is_file() and zipfile.is_zipfile(p):
            self.kind, self.root = "zip", p
            with zipfile.ZipFile(p) as z:
                infos = [i for i in z.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX/")
                         and is_image_name(i.filename)]
            for info in infos:  # from the central directory, before anything is inflated
                _check_photo_member(p, info)
            self.names = sorted(i.filename for i in infos)
            if not self.names:
                raise UserError(f"no images ({', '.join(IMAGE_EXTS)}) found in zip file {p}")
        elif p.is_file() and p.name.endswith(".tar"):
            self.kind, self.urls = "shards", [str(p)]
        elif _has_glob(self.path):
            self.kind, self.urls = "shards", _expand_tars([self.path], self.path)
        elif p.is_file():
            raise UserError(f"{p} is neither a directory, a .zip of images nor a .tar shard")
        else:
            raise UserError(f"image source not found: {p} (expected a directory, a .zip, or .tar shards)")

    @property
    def count(self) -> int | None:
        """Number of candidate images when known up front (directory, zip), else None."""
        return len(self.names) if self.names is not None else None

    def fingerprint(self) -> str:
        """This set and its content version (paths, sizes, mtimes), for cache keys."""
        h = hashlib.sha256()
        if self.kind == "dir":
            root = self.root.resolve()
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
        self._errors = []
        for name, data in {"dir": self._dir, "zip": self._zip, "shards": self._shards}[self.kind]():
            try:
                image = to_array(decode(data))
            except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
                self._skip(name, e)
                continue
            self.n_read += 1
            yield name, image
        if self.n_skipped:
            warnings.warn(f"{self.path}: skipped {self.n_skipped} unreadable image(s) of "
                          f"{self.n_read + self.n_skipped}; first: {'; '.join(self._errors)}", stacklevel=2)
        if self.n_read == 0:
            raise UserError(f"no readable images in {self.path} ({self.n_skipped} unreadable)")

    def _skip(self, name: str, err: BaseException | str) -> None:
        self.n_skipped += 1
        if len(self._errors) < 3:
            self._errors.append(f"{name} ({err if isinstance(err, str) else f'{type(err).__name__}: {err}'})")

    def _dir(self):
        for n in self.names:
            try:
                yield n, (self.root / n).read_bytes()
            except OSError as e:
                self._skip(n, e)

    def _zip(self):
        with zipfile.ZipFile(self.root) as z:
            for n in self.names:
                try:
                    info = z.getinfo(n)
                    _check_photo_member(self.root, info)  # again: the zip may have been replaced since
                    data = read_zip_member(z, info, ZIP_PHOTO_MAX_BYTES)
                except UserError:
                    raise
                except Exception as e:  # noqa: BLE001 - BadZipFile, CRC errors, encrypted entries, a vanished name
                    self._skip(n, e)
                    continue
                yield n, data

    def _shards(self):
        def on_error(exn: Exception) -> bool:
            self._skip("<shard>", exn)
            return True

        for sample in iter_tar_samples(self.urls, on_error):
            key = str(sample.get("__key__", "?"))
            try:
                yield key, sample_image_bytes(sample)
            except KeyError as e:
                self._skip(key, str(e))


def read_images(source, **kwargs) -> tuple[list[str], list[np.ndarray]]:
    """All images of a (small) source in memory."""
    names, images = [], []
    for name, image in ImageSource(source, **kwargs):
        names.append(name)
        images.append(image)
    return names, images
