"""DeepSpeed ZeRO-2 through Accelerate on 2 CPU ranks (gloo): one engine per model, equal weights, exact resume."""

from __future__ import annotations

import pytest
import torch

from helpers import latest_checkpoint, read_metrics, run_torchrun

pytest.importorskip("deepspeed", reason="the 'deepspeed' extra is not installed (pip install -e '.[deepspeed]')")

ZERO2 = ["model.ngf=8", "model.ndf=8", "data.num_workers=0", "train.sample_every=0", "wandb.mode=disabled",
         "train.log_every=1", "train.deepspeed=deepspeed/zero2.json", "loss.pool_size=2"]


def test_zero2_two_ranks_equal_weights_and_exact_resume(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_torchrun(2, "train", "--config", "smoke", "--run-dir", straight, "--set", *ZERO2, "train.steps=4")
    records = [r for r in read_metrics(straight) if "loss/G" in r]
    assert [r["world_size"] for r in records] == [2, 2, 2, 2]
    ckpt = latest_checkpoint(straight)
    ranks = [torch.load(ckpt / f"rank-{r:05d}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["digest"] == ranks[1]["digest"], "ZeRO ranks ended with different weights"
    assert "opt_G" in ranks[0] and "opt_G" in ranks[1], "each rank must save its optimizer slice"

    run_torchrun(2, "train", "--config", "smoke", "--run-dir", split, "--stop-after", "2", "--set", *ZERO2,
                 "train.steps=4")
    assert latest_checkpoint(split).name == "step-00000002"
    run_torchrun(2, "train", "--config", "smoke", "--run-dir", split, "--set", *ZERO2, "train.steps=4")
    a = torch.load(latest_checkpoint(straight) / "state.pt", weights_only=True)
    b = torch.load(latest_checkpoint(split) / "state.pt", weights_only=True)
    for part in ("generators", "discriminators"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
