"""The Kaggle competition's layouts (monet_jpg/photo_jpg folders or the TFRecords) into shards."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cyclegan_dist.cli import build_parser
from cyclegan_dist.data.prepare import prepare_shards
from cyclegan_dist.errors import UserError

from helpers import jpeg_bytes, jpeg_folder, photo_crop, read_tar


def _square_jpegs(d: Path, n: int, start: int, odd: int | None = None) -> None:
    d.mkdir(parents=True)
    for i in range(n):
        s = 100 if i == odd else 256
        square = np.asarray(Image.fromarray(photo_crop(start + i)).resize((s, s)))
        (d / f"{start + i:04x}.jpg").write_bytes(jpeg_bytes(square))


def _write_tfrec(path: Path, names: list[str]) -> None:
    from tfrecord.writer import TFRecordWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    w = TFRecordWriter(str(path))
    for i, name in enumerate(names):
        data = jpeg_bytes(np.asarray(Image.fromarray(photo_crop(60 + i)).resize((256, 256))))
        w.write({"image_name": (name.encode(), "byte"), "image": (data, "byte"), "target": (b"monet", "byte")})
    w.close()


def test_kaggle_jpg_layout_preferred_with_warnings(tmp_path, caplog):
    k = tmp_path / "kaggle"
    _square_jpegs(k / "photo_jpg", 4, 0)
    _square_jpegs(k / "monet_jpg", 3, 100, odd=1)
    _write_tfrec(k / "monet_tfrec" / "monet00-2.tfrec", ["zzz", "yyy"])  # ignored: jpg dirs win
    parser = build_parser()
    args = parser.parse_args(["prepare", "--kaggle", str(k), "--out", str(tmp_path / "o"), "--no-progress"])
    with caplog.at_level(logging.WARNING):
        assert args.func(args) == 0
    idx = json.loads((tmp_path / "o" / "index.json").read_text())
    assert {d: v["count"] for d, v in idx["domains"].items()} == {"photo": 4, "monet": 3}
    assert "has 3 JPEGs, the competition has 300" in caplog.text and "the competition has 7038" in caplog.text
    assert "1 image(s)" in caplog.text and "not 256x256" in caplog.text
    assert sorted(read_tar(tmp_path / "o" / "monet-000000.tar")) == ["0064.ppm", "0065.ppm", "0066.ppm"]


# tfrecord leaks the file of a bad record
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_kaggle_tfrec_layout(tmp_path, caplog):
    from cyclegan_dist.data.kaggle import kaggle_sources

    k = tmp_path / "kaggle"
    _write_tfrec(k / "photo_tfrec" / "photo00-3.tfrec", ["p0", "p1", "p2"])
    _write_tfrec(k / "photo_tfrec" / "photo01-2.tfrec", ["p3", "p4"])
    _write_tfrec(k / "monet_tfrec" / "monet00-2.tfrec", ["m0", "m1"])
    src = kaggle_sources(k)
    assert src["photo"].kind == "tfrec" and src["monet"].kind == "tfrec"
    with caplog.at_level(logging.WARNING):
        idx = prepare_shards({"photo": src["photo"], "monet": src["monet"]}, tmp_path / "o", progress=False)
    assert idx["domains"]["photo"]["count"] == 5 and idx["domains"]["monet"]["count"] == 2
    assert "found 5 images" in caplog.text and "found 2 images" in caplog.text
    assert sorted(read_tar(tmp_path / "o" / "photo-000000.tar")) == [f"p{i}.ppm" for i in range(5)]
    with pytest.raises(UserError, match="photo_jpg .*gan-getting-started"):
        kaggle_sources(jpeg_folder(tmp_path / "notkaggle", 1))
    (k / "monet_tfrec" / "bad.tfrec").write_bytes(b"\x05" * 40)
    with pytest.raises(UserError, match="bad.tfrec"):
        list(kaggle_sources(k)["monet"])
