"""A user's whole path through the CLI: image folders -> shards -> train -> export images.zip -> validate -> FID."""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import skimage.data
from PIL import Image

from helpers import TINY, require_extra, run_cli

require_extra("metrics")


def write_folder(folder, image: np.ndarray, n: int, size: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        y, x = rng.integers(0, image.shape[0] - size), rng.integers(0, image.shape[1] - size)
        Image.fromarray(image[y:y + size, x:x + size]).save(folder / f"img{i:03d}.jpg", quality=92)


def test_folders_to_submission(tmp_path):
    write_folder(tmp_path / "photos", skimage.data.astronaut(), 10, 120, 0)
    write_folder(tmp_path / "paintings", skimage.data.coffee(), 8, 120, 1)
    shards = tmp_path / "shards"
    run_cli("prepare", "--photos", tmp_path / "photos", "--paintings", tmp_path / "paintings", "--out", shards,
            "--resize", "40", "--shard-size", "4")
    index = json.loads((shards / "index.json").read_text())
    assert index["domains"]["photo"]["count"] == 10 and index["domains"]["monet"]["count"] == 8

    again = run_cli("prepare", "--photos", tmp_path / "photos", "--paintings", tmp_path / "paintings",
                    "--out", shards, check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr  # nothing already written is touched
    assert json.loads((shards / "index.json").read_text()) == index

    run_dir = tmp_path / "run"  # the shipped small config trains on prepare's domains (photo, monet) as it is
    run_cli("train", "--config", "smoke", "--run-dir", run_dir, "--set", f"data.root={shards}", *TINY,
            "train.steps=2")

    images = tmp_path / "images.zip"
    out = run_cli("export", "--checkpoint", run_dir, "--photos", f"{shards}/photo-*.tar", "--out", images, "--quiet")
    with zipfile.ZipFile(images) as zf:
        names = zf.namelist()
        assert len(names) == 10 and all(n.endswith(".jpg") and "/" not in n for n in names)
        with zf.open(names[0]) as f:
            assert Image.open(f).size == (256, 256)
    assert "7000" in out.stdout + out.stderr or "7,000" in out.stdout + out.stderr  # the count warning
    bad = run_cli("validate-submission", images, check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    ok = run_cli("validate-submission", images, "--min-count", "10")
    assert "OK" in ok.stdout

    scores = tmp_path / "scores.json"
    run_cli("fid", "--generated", images, "--real", tmp_path / "paintings", "--json", scores, "--quiet",
            "--cache-dir", tmp_path / "fid-cache")
    result = json.loads(scores.read_text())
    # every exported image against every painting; MiFID = FID / (d_thr + 1e-14), d_thr = d below 0.1, else 1
    assert (result["n_generated"], result["n_real"], result["n_train"]) == (10, 8, 8), result
    d, threshold = result["memorization_distance"], result["threshold"]
    assert threshold == 0.1 and result["memorization_distance_thresholded"] == (d if d < threshold else 1.0), result
    assert math.isfinite(result["fid"]) and result["mifid"] == result["fid"] / (
        result["memorization_distance_thresholded"] + 1e-14), result
