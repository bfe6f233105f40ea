"""Reader for the Kaggle "I'm Something of a Painter Myself" (gan-getting-started) layout.

::

    DIR/monet_jpg/*.jpg    DIR/photo_jpg/*.jpg          (preferred when present)
    DIR/monet_tfrec/*.tfrec DIR/photo_tfrec/*.tfrec     (features image_name, image (JPEG), target: bytes)

TFRecords are read with the PyPI ``tfrecord`` package (no TensorFlow). The expected counts (300 Monet,
7,038 photos) and size (256x256) are checked: anything unexpected is a warning, not an error, because
a user may well prepare a subset or a differently sized copy on purpose.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

from PIL import Image

from cyclegan_dist.errors import UserError

log = logging.getLogger(__name__)

EXPECTED_COUNTS = {"monet": 300, "photo": 7038}
EXPECTED_SIZE = (256, 256)
TFREC_FEATURES = {"image_name": "byte", "image": "byte", "target": "byte"}


class KaggleDomain:
    """Iterable of ``(name, jpeg bytes)`` for one Kaggle domain; warns on unexpected count/size at the end."""

    def __init__(self, domain: str, kind: str, files: list[Path]):
        self.domain, self.kind, self.files = domain, kind, files
        self.where = files[0].parent if files else None

    def __len__(self):  # only known without reading for the jpg layout (used for the progress bar)
        if self.kind != "jpg":
            raise TypeError("length of a TFRecord source is unknown until read")
        return len(self.files)

    def _records(self):
        if self.kind == "jpg":
            for f in self.files:
                yield f.name, f.read_bytes()
            return
        try:
            from tfrecord.reader import tfrecord_loader
        except ImportError:
            raise UserError(
                f"reading {self.where} needs the `tfrecord` package: pip install tfrecord "
                "(or use the monet_jpg/ photo_jpg/ folders of the Kaggle download)"
            ) from None
        for f in self.files:
            i = 0
            try:
                for rec in tfrecord_loader(str(f), None, TFREC_FEATURES):
                    name = bytes(rec["image_name"]).decode("utf-8", "replace") or f"{f.stem}_{i:05d}"
                    i += 1
                    yield name, bytes(rec["image"])
            except UserError:
                raise
            except Exception as e:
                raise UserError(
                    f"cannot read TFRecord file {f} after {i} records ({type(e).__name__}: {e}): "
                    "the file is damaged or not a TFRecord; download it again"
                ) from None

    def __iter__(self):
        n, off_size, first_off = 0, 0, None
        for name, data in self._records():
            n += 1
            try:
                size = Image.open(io.BytesIO(data)).size  # header only
            except Exception:
                size = None  # corrupt: prepare skips and counts it
            if size is not None and size != EXPECTED_SIZE:
                off_size += 1
                first_off = first_off or f"{name} {size[0]}x{size[1]}"
            yield name, data
        expected = EXPECTED_COUNTS.get(self.domain)
        if self.kind == "tfrec" and expected is not None and n != expected:  # jpg: warned when listed
            log.warning(
                "kaggle %s: found %d images in %s, the competition has %d; continuing with what is there",
                self.domain, n, self.where, expected,
            )
        if off_size:
            log.warning(
                "kaggle %s: %d image(s) in %s are not %dx%d (first: %s); they are used as they are",
                self.domain, off_size, self.where, *EXPECTED_SIZE, first_off,
            )


def kaggle_sources(root) -> dict[str, KaggleDomain]:
    """``{"photo": KaggleDomain, "monet": KaggleDomain}`` for a Kaggle download folder."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"--kaggle {root} does not exist: point it at the unzipped gan-getting-started folder")
    out = {}
    for domain in ("photo", "monet"):
        jpg_dir, tfrec_dir = root / f"{domain}_jpg", root / f"{domain}_tfrec"
        jpgs = sorted(p for p in jpg_dir.glob("*") if p.suffix.lower() in (".jpg", ".jpeg")) if jpg_dir.is_dir() else []
        tfrecs = sorted(tfrec_dir.glob("*.tfrec")) if tfrec_dir.is_dir() else []
        if jpgs:
            out[domain] = KaggleDomain(domain, "jpg", jpgs)
        elif tfrecs:
            out[domain] = KaggleDomain(domain, "tfrec", tfrecs)
        else:
            raise UserError(
                f"--kaggle {root}: neither {jpg_dir} (JPEGs) nor {tfrec_dir} (*.tfrec) has any file; "
                "point --kaggle at the unzipped gan-getting-started folder"
            )
        expected = EXPECTED_COUNTS[domain]
        if out[domain].kind == "jpg" and len(jpgs) != expected:
            log.warning("kaggle %s: %s has %d JPEGs, the competition has %d", domain, jpg_dir, len(jpgs), expected)
    return out
