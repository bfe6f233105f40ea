"""The pictures people look at: grid labels are never cut by the images; curves have no empty FID panel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFont

from cyclegan_dist.eval.report import RunSummary, _curves
from cyclegan_dist.eval.samples import compose


def test_a_long_run_label_is_drawn_whole_left_of_the_images():
    """The label is black text; the images (grey here) are pasted after it: if the label column were too narrow,
    the images would cover its end and its last black pixel would stop short of the text's width."""
    label = "smoke-s0-20261204-200156 (unet_32) with a long suffix"
    rows = [torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 32, 32)]
    picture = np.asarray(compose(rows, [label, "photo (input)"], "title").convert("L"))
    width = ImageFont.load_default().getlength(label)
    band = picture[18:18 + picture.shape[0] // 2]  # the first row's band, below the title line
    black_columns = np.nonzero((band < 60).any(axis=0))[0]
    assert black_columns.max() >= width - 4, (black_columns.max(), width)
    grey = np.nonzero((np.abs(band.astype(int) - 127) <= 2).sum(axis=0) > 10)[0]  # image columns
    assert grey.min() > black_columns.max(), "an image covers the label"


def _run(tmp_path: Path, name: str, evaluated: bool) -> RunSummary:
    metrics = [{"step": s, "loss/G": 1.0 / s, "loss/D": 0.5, "loss/cycle_A": 0.2, "loss/cycle_B": 0.3}
               for s in (1, 2, 3)]
    if evaluated:
        metrics.append({"step": 3, "eval/fid": 100.0, "eval/mifid": 120.0})
    return RunSummary(name=name, experiment="smoke", run_dir=tmp_path, metrics=metrics)


def test_curves_leave_out_the_fid_panel_when_nothing_was_evaluated(tmp_path):
    """Four panels a row (the fourth: FID / MiFID) when any run was evaluated, three otherwise (figure width
    4.2 in per panel at 100 dpi)."""
    with_eval = _curves([_run(tmp_path, "a", True), _run(tmp_path, "b", False)], tmp_path / "with.png")
    without = _curves([_run(tmp_path, "a", False)], tmp_path / "without.png")
    assert Image.open(with_eval).size[0] == 4 * 420 and Image.open(without).size[0] == 3 * 420
