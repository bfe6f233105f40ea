"""The Kaggle "I'm Something of a Painter Myself" submission: write ``images.zip`` and check it before uploading.

Kaggle's rule: the notebook outputs ``images.zip`` holding 7,000-10,000 images of 256x256 (the constants below).
:class:`SubmissionWriter` streams JPEGs into the zip, flat, with unique names, under a temporary name that only
replaces the final one once complete. :func:`check_submission` checks, per entry: stored at the top level (no
folders: the safe layout), a ``.jpg``/``.jpeg`` name, JPEG by content (magic bytes and PIL's format, not the
extension), RGB (not grey scale / CMYK), exactly ``size`` and, if so, decodes completely (CRC included); names
unique; and the total count within ``[min_count, max_count]``. Before any entry is inflated, the zip's central
directory must declare sizes a submission can have (:data:`SUBMISSION_MEMBER_MAX` and :data:`SUBMISSION_MAX_RATIO`
per entry, :data:`SUBMISSION_TOTAL_MAX` in all, at most ``max_count`` + :data:`SUBMISSION_ENTRY_SLACK` entries),
else a :class:`UserError`; entries are then read through a bounded stream.
"""

from __future__ import annotations

import io
import math
import os
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from cyclegan_dist.errors import UserError
from cyclegan_dist.images import JPEG_MAGIC, check_zip_member, read_zip_member
from cyclegan_dist.rundir import fsync_dir, fsync_file

KAGGLE_MIN, KAGGLE_MAX = 7000, 10000
KAGGLE_SIZE = 256
KAGGLE_NAME = "images.zip"
JPEG_FORMATS = ("JPEG", "MPO")  # MPO = multi-picture JPEG, still a JPEG stream

# Limits read from the zip's central directory before anything is inflated (a zip bomb fails in milliseconds).
# One entry of a 256x256 submission: the largest such JPEG (random noise, quality 100, no chroma subsampling) is
# 263 KiB; 2 MiB leaves room for metadata (EXIF, ICC profiles). Scaled by the pixel count for a larger --size.
SUBMISSION_MEMBER_MAX = 2 * 2**20
# Inflated/compressed size of one entry: JPEG data is entropy-coded already, deflate gains ~1.0x on a photo and
# ~6x on a flat-colour 256x256 JPEG; above 50x the entry is not a JPEG (judged from ZIP_RATIO_FROM bytes up).
SUBMISSION_MAX_RATIO = 50
# Entries beyond max_count that are still checked one by one (the report then says how many there are too many);
# a zip with more is refused unread.
SUBMISSION_ENTRY_SLACK = 1000
# All entries together: Kaggle's most images (plus the slack) of the largest size each (21.5 GiB for 256x256).
SUBMISSION_TOTAL_MAX = (KAGGLE_MAX + SUBMISSION_ENTRY_SLACK) * SUBMISSION_MEMBER_MAX

# problem category -> how it reads in a message
CATEGORIES = {
    "nested": "are not at the top level of the zip (folders are not wanted)",
    "directory": "are directory entries",
    "bad_name": "do not have a .jpg/.jpeg name",
    "not_jpeg": "are not JPEG files by content",
    "undecodable": "cannot be read or decoded",
    "not_rgb": "are not RGB",
    "wrong_size": "have the wrong size",
    "duplicate": "are duplicate names",
}


@dataclass
class SubmissionReport:
    path: str
    size: tuple[int, int]
    count: int = 0  # file entries (directories excluded)
    n_good: int = 0  # entries with no problem
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bad: dict[str, list[str]] = field(default_factory=dict)  # category -> ["name (detail)", ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = (f"{self.path}: {self.count} files, {self.n_good} valid {self.size[0]}x{self.size[1]} RGB JPEGs")
        lines = [("OK " if self.ok else "INVALID ") + head]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


_FIX = "not a submission image (a zip bomb?): rebuild the zip from the exported JPEGs"


def check_zip_limits(path: Path, infos: list[zipfile.ZipInfo], max_count: int, size: tuple[int, int]) -> int:
    """UserError (naming the zip, the entry, its size and the limit) when the central directory declares more
    entries, bytes or compression than a submission can have; else the per-entry byte limit. Inflates nothing."""
    scale = max(1, math.ceil(size[0] * size[1] / KAGGLE_SIZE**2))
    member_max, total_max = SUBMISSION_MEMBER_MAX * scale, SUBMISSION_TOTAL_MAX * scale
    most = max(max_count, KAGGLE_MAX)
    entries_max = most + SUBMISSION_ENTRY_SLACK
    if len(infos) > entries_max:
        raise UserError(f"{path}: {len(infos):,} entries, over the limit of {entries_max:,} ({most:,} images at most, "
                        f"plus {SUBMISSION_ENTRY_SLACK:,}); refused unread: rebuild the zip with at most "
                        f"{max_count:,} JPEGs")
    what = f"a {size[0]}x{size[1]} JPEG"
    for info in infos:
        check_zip_member(path, info, member_max, SUBMISSION_MAX_RATIO, what, _FIX)
    total = sum(i.file_size for i in infos)
    if total > total_max:
        largest = max(infos, key=lambda i: i.file_size)
        raise UserError(f"{path}: its {len(infos):,} entries would inflate to {total:,} bytes in all, over the "
                        f"{total_max:,}-byte limit ({KAGGLE_MAX + SUBMISSION_ENTRY_SLACK:,} entries of at most "
                        f"{member_max:,}; the largest here: {largest.filename!r}, {largest.file_size:,} bytes); {_FIX}")
    return member_max


def _check_entry(z: zipfile.ZipFile, info: zipfile.ZipInfo, size: tuple[int, int],
                 max_bytes: int = SUBMISSION_MEMBER_MAX) -> list[tuple[str, str]]:
    """[(category, detail)] for one file entry; [] when it is fine. Reads at most ``max_bytes`` of it."""
    out: list[tuple[str, str]] = []
    name = info.filename
    if "/" in name.rstrip("/") or "\\" in name:
        out.append(("nested", ""))
    if not name.lower().endswith((".jpg", ".jpeg")):
        out.append(("bad_name", ""))
    try:
        data = read_zip_member(z, info, max_bytes)  # streamed, bounded, checks the CRC
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - BadZipFile, zlib.error, RuntimeError (encrypted), ...
        return out + [("undecodable", f"{type(e).__name__}: {e}")]
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, mode, wh = im.format, im.mode, im.size
            if tuple(wh) == tuple(size):  # a wrong size is wrong already: not decoded (a few KB can declare 100 MP)
                im.load()
    except Exception as e:  # noqa: BLE001
        kind = "JPEG" if data.startswith(JPEG_MAGIC) else "not JPEG"
        return out + [("undecodable", f"{kind}, {type(e).__name__}: {e}")]
    if not data.startswith(JPEG_MAGIC) or fmt not in JPEG_FORMATS:
        out.append(("not_jpeg", f"content is {fmt or 'unknown'}"))
    if mode != "RGB":
        out.append(("not_rgb", f"mode {mode}"))
    if tuple(wh) != tuple(size):
        out.append(("wrong_size", f"{wh[0]}x{wh[1]}"))
    return out


def check_submission(zip_path: str | os.PathLike, min_count: int = KAGGLE_MIN, max_count: int = KAGGLE_MAX,
                     size: tuple[int, int] = (KAGGLE_SIZE, KAGGLE_SIZE), progress: bool = False,
                     show: int = 5) -> SubmissionReport:
    """Validate a submission zip; the report lists problems (first ``show`` bad names per kind) and totals."""
    p = Path(zip_path).expanduser()
    rep = SubmissionReport(path=str(p), size=(int(size[0]), int(size[1])))
    if not p.is_file():
        rep.problems.append(f"{p} does not exist or is not a file")
        return rep
    if not zipfile.is_zipfile(p):
        rep.problems.append(f"{p} is not a zip file")
        return rep
    if p.name != KAGGLE_NAME:
        rep.notes.append(f"Kaggle expects the notebook output to be named {KAGGLE_NAME} (this is {p.name})")
    bad: dict[str, list[str]] = {}
    bad_entries: set[str] = set()
    try:
        with zipfile.ZipFile(p) as z:
            infos = z.infolist()
            member_max = check_zip_limits(p, infos, max_count, rep.size)  # before anything is inflated
            files = [i for i in infos if not i.is_dir()]
            rep.count = len(files)
            for i in infos:
                if i.is_dir():
                    bad.setdefault("directory", []).append(i.filename)
            for name, n in sorted(Counter(i.filename for i in files).items()):
                if n > 1:
                    bad.setdefault("duplicate", []).append(f"{name} (x{n})")
                    bad_entries.add(name)
            it = files
            if progress:
                from tqdm.auto import tqdm

                it = tqdm(files, desc="checking", unit="img")
            for info in it:
                for cat, detail in _check_entry(z, info, rep.size, member_max):
                    bad.setdefault(cat, []).append(f"{info.filename} ({detail})" if detail else info.filename)
                    bad_entries.add(info.filename)
    except zipfile.BadZipFile as e:
        rep.problems.append(f"{p} is a damaged zip file: {e}")
        return rep
    rep.n_good = sum(1 for i in files if i.filename not in bad_entries)
    rep.bad = bad
    if rep.count < min_count or rep.count > max_count:
        rep.problems.append(f"{rep.count} files; Kaggle wants between {min_count} and {max_count}")
    for cat, text in CATEGORIES.items():
        names = bad.get(cat)
        if not names:
            continue
        if cat == "wrong_size":
            text = f"are not {rep.size[0]}x{rep.size[1]}"
        more = f", ... ({len(names) - show} more)" if len(names) > show else ""
        rep.problems.append(f"{len(names)} entries {text}: {', '.join(names[:show])}{more}")
    return rep


def validate_submission(zip_path: str | os.PathLike, min_count: int = KAGGLE_MIN, max_count: int = KAGGLE_MAX,
                        size: tuple[int, int] = (KAGGLE_SIZE, KAGGLE_SIZE), progress: bool = False) -> list[str]:
    """The problems with a submission zip ([] = valid). See :func:`check_submission` for the full report."""
    return check_submission(zip_path, min_count, max_count, size, progress).problems


class UniqueNames:
    """``<stem>.jpg`` for any name/key (folders dropped), made unique (case-insensitively) with ``-1``, ``-2``..."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def make(self, name: str) -> str:
        base = str(name).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
        stem = "".join(c if c.isprintable() and c not in ':*?"<>|' else "_" for c in stem).strip(" .") or "image"
        candidate, i = f"{stem}.jpg", 0
        while candidate.lower() in self.used:
            i += 1
            candidate = f"{stem}-{i}.jpg"
        self.used.add(candidate.lower())
        return candidate


class SubmissionWriter:
    """``with SubmissionWriter(out) as w: w.add(name, jpeg_bytes)``: a flat zip of JPEGs, stored (JPEGs do not
    compress), written to ``<out>.tmp`` and renamed over ``out`` only when the block ends without an error, so an
    interrupted export neither leaves a half zip under the final name nor destroys an existing one."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out).expanduser()
        if self.out.is_dir():
            raise UserError(f"--out {self.out} is a directory; give a .zip file name (e.g. {self.out / KAGGLE_NAME})")
        self.tmp = self.out.with_name(self.out.name + ".tmp")
        self.names = UniqueNames()
        self.count = 0

    def __enter__(self) -> "SubmissionWriter":
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED)
        return self

    def add(self, name: str, jpeg: bytes) -> str:
        info = zipfile.ZipInfo(self.names.make(name), date_time=time.localtime()[:6])
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16
        self._zip.writestr(info, jpeg)
        self.count += 1
        return info.filename

    def __exit__(self, exc_type, exc, tb) -> None:
        self._zip.close()
        if exc_type is None and self.count == 0:
            self.tmp.unlink(missing_ok=True)
            raise UserError("no photos to export (the photo source is empty)")
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)
            return
        fsync_file(self.tmp)
        os.replace(self.tmp, self.out)
        fsync_dir(self.out.parent)
