"""DeepSpeed ZeRO-2 through Accelerate on 2 CPU ranks (gloo): one engine per model, equal weights, exact resume."""

from __future__ import annotations

import os

import torch

from cyclegan_dist.checkpoint import load_rank

from helpers import (
    ROOT,
    TINY,
    latest_checkpoint,
    loss_records,
    read_metrics,
    require_extra,
    result_json,
    run_torchrun,
    warnings_of,
)

require_extra("deepspeed")

ZERO2 = [*TINY, "train.log_every=1", "train.deepspeed=deepspeed/zero2.json", "loss.pool_size=2"]


def test_zero2_two_ranks_equal_weights_and_exact_resume(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_torchrun(2, "train", "--config", "smoke", "--run-dir", straight, "--set", *ZERO2, "train.steps=4")
    records = loss_records(straight)
    assert [r["world_size"] for r in records] == [2, 2, 2, 2]
    ckpt = latest_checkpoint(straight)
    ranks = [load_rank(ckpt, r) for r in (0, 1)]
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


def test_zero2_skips_and_counts_a_nonfinite_step(tmp_path):
    """A NaN forced into G's loss at step 3 under ZeRO-2 on 2 CPU ranks (injected from outside, through a
    sitecustomize module that wraps the GAN loss): ZeRO-2 frees ``p.grad``, so DeepSpeed's own optimizer finds the
    non-finite gradient norm and skips the update; the loop counts it (train/skipped_steps), warns with the loss
    named, goes on (train.on_nonfinite=skip) and completes with finite weights on equal ranks."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import cyclegan_dist.losses as losses\n"
        "original, calls = losses.gan_loss, [0]\n"
        "def poisoned(*args, **kwargs):\n"
        "    calls[0] += 1\n"
        "    loss = original(*args, **kwargs)\n"
        "    return loss * float('nan') if calls[0] == 13 else loss  # 6 calls a step: G_A's loss of step 3\n"
        "losses.gan_loss = poisoned\n")
    run_dir = tmp_path / "run"
    out = run_torchrun(2, "train", "--json", "--config", "smoke", "--run-dir", run_dir, "--set", *ZERO2,
                       "train.steps=5", "train.on_nonfinite=skip",
                       env={"PYTHONPATH": f"{inject}{os.pathsep}{ROOT}"})
    result = result_json(out.stdout)
    assert result["status"] == "completed" and result["step"] == 5
    records = {r["step"]: r for r in read_metrics(run_dir) if "train/skipped_steps" in r}
    assert [records[s]["train/skipped_steps"] for s in range(1, 6)] == [0, 0, 1, 0, 0]
    warnings = warnings_of(run_dir, "nonfinite")
    assert len(warnings) == 1 and "loss/G_A" in warnings[0]["message"] and "up to step 3" in warnings[0]["message"]
    ckpt = latest_checkpoint(run_dir)
    ranks = [load_rank(ckpt, r) for r in (0, 1)]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["generators"].values())
