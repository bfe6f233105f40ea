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


def test_zero2_resumes_on_another_number_of_ranks(tmp_path):
    """ZeRO slices saved by 2 ranks re-sliced for 1, then 1's for 2 again (DeepSpeed's elastic checkpoint, merged from
    every saved rank's file): the run goes on with the same samples and LR, and ends where an uninterrupted 2-rank run
    ends up to summation order (relative_distance <= 0.1, as tests/test_parity.py and tests/test_world_change.py;
    the image pool off). A lost optimizer state (Adam restarted) moves the weights ~lr per step the other way."""
    from cyclegan_dist.checkpoint import load_shared
    from cyclegan_dist.config import load_config
    from cyclegan_dist.train.build import build_pairs

    from workers.common import TINY as DETERMINISTIC
    from workers.common import dead_biases, relative_distance

    settings = [*ZERO2, *DETERMINISTIC, "model.ngf=8", "model.ndf=8", "train.batch_size=2", "train.steps=6"]
    straight, changed = tmp_path / "straight", tmp_path / "changed"
    run_torchrun(2, "train", "--config", "smoke", "--run-dir", straight, "--set", *settings)
    for nproc, stop in ((2, ["--stop-after", "2"]), (1, ["--stop-after", "2"]), (2, [])):
        run_torchrun(nproc, "train", "--config", "smoke", "--run-dir", changed, *stop, "--set", *settings)
    assert [r["world_size"] for r in loss_records(changed)] == [2, 2, 1, 1, 2, 2]
    config = load_config("smoke", settings)
    gens, _ = build_pairs(config.model, config.seed)
    final = [load_shared(latest_checkpoint(run))["generators"] for run in (changed, straight)]
    assert relative_distance(*final, gens.state_dict(), skip=dead_biases(gens)) <= 0.1


def test_zero2_on_fewer_ranks_passes_over_a_checkpoint_whose_unread_rank_file_is_damaged(tmp_path):
    """Resumed on 1 rank, a ZeRO run merges the slices of both saved ranks, so a damaged rank-1 file of the newest
    checkpoint (which no rank of the new run reads as its own) makes --resume auto pass it over, named, for the older
    one, instead of failing in the restore."""
    from test_damaged_checkpoints import flip

    from helpers import list_complete

    run_dir = tmp_path / "run"
    settings = [*ZERO2, "train.checkpoint_every=2", "train.keep_last=5"]
    run_torchrun(2, "train", "--config", "smoke", "--run-dir", run_dir, "--set", *settings, "train.steps=4")
    older, newest = list_complete(run_dir)
    flip(newest / "rank-00001.pt")
    out = run_torchrun(1, "train", "--json", "--config", "smoke", "--run-dir", run_dir, "--set", *settings,
                       "train.steps=6")
    assert (result_json(out.stdout)["start_step"], result_json(out.stdout)["status"]) == (2, "completed")
    (warning,) = warnings_of(run_dir, "checkpoint")
    assert list(warning["files"]) == [str(newest / "rank-00001.pt")] and f"resuming from {older}" in warning["message"]
