"""End-to-end training through the real CLI: one process, two gloo ranks (torchrun), exact resume, errors.

Each run is a subprocess (a fresh Accelerator and process group per run), on the embedded demo data set.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from helpers import (
    TINY,
    generator_weights,
    latest_checkpoint,
    list_complete,
    loss_records,
    result_json,
    run_cli,
    run_torchrun,
)


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def assert_rate_matches_step_time(run_dir: Path, records: list[dict]) -> None:
    """img/s is the images of all ranks over the logged step time: batch_size x world_size / step_time_s."""
    batch = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["batch_size"]
    for r in records:
        assert r["img_per_s"] == pytest.approx(batch * r["world_size"] / r["step_time_s"], rel=1e-9), (batch, r)


def test_one_process_run_writes_everything(tmp_path):
    run_dir = tmp_path / "run"
    out = run_cli("train", "--json", "--config", "smoke", "--run-dir", run_dir, "--set", *TINY,
                  "train.steps=6", "train.log_every=2", "train.checkpoint_every=3", "train.sample_every=6",
                  "wandb.mode=offline")
    result = result_json(out.stdout)
    assert result["status"] == "completed" and result["step"] == 6 and result["world_size"] == 1
    records = loss_records(run_dir)
    assert [r["step"] for r in records] == [2, 4, 6]
    for key in ("loss/G_A", "loss/cycle_A", "loss/idt_B", "loss/D_A", "lr", "img_per_s", "world_size"):
        assert key in records[-1]
    assert all(r["world_size"] == 1 for r in records)
    assert_rate_matches_step_time(run_dir, records)
    assert [p.name for p in list_complete(run_dir)] == ["step-00000003", "step-00000006"]
    assert (run_dir / "samples" / "step-00000006.png").is_file()
    assert (run_dir / "config.yaml").read_text().startswith("experiment: smoke")
    assert list((run_dir / "wandb").glob("offline-run-*")), "offline W&B run missing"
    assert json.loads((run_dir / "wandb-run.json").read_text())["id"] == result["wandb_id"]


def test_resume_is_bit_exact(tmp_path):
    common = [*TINY, "train.log_every=1", "train.checkpoint_every=2", "loss.pool_size=3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_cli("train", "--config", "smoke", "--run-dir", straight, "--set", *common, "train.steps=8")
    run_cli("train", "--config", "smoke", "--run-dir", split, "--stop-after", "3", "--set", *common, "train.steps=8")
    assert latest_checkpoint(split).name == "step-00000003"  # the stop wrote its own checkpoint
    run_cli("train", "--config", "smoke", "--run-dir", split, "--set", *common, "train.steps=8")
    assert latest_checkpoint(split).name == "step-00000008"
    assert_bit_identical(generator_weights(latest_checkpoint(straight)), generator_weights(latest_checkpoint(split)))
    a = torch.load(latest_checkpoint(straight) / "state.pt", weights_only=True)
    b = torch.load(latest_checkpoint(split) / "state.pt", weights_only=True)
    assert_bit_identical(a["discriminators"], b["discriminators"])
    steps = [r["step"] for r in loss_records(split)]
    assert steps == list(range(1, 9)), "metrics must continue without gaps or duplicates"


def test_two_gloo_ranks_train_identical_weights(tmp_path):
    run_dir = tmp_path / "ddp"
    run_torchrun(2, "train", "--config", "smoke", "--run-dir", run_dir, "--set", *TINY,
                 "train.steps=4", "train.log_every=2", "train.checkpoint_every=4")
    records = loss_records(run_dir)
    assert records and all(r["world_size"] == 2 for r in records)
    assert_rate_matches_step_time(run_dir, records)
    ckpt = latest_checkpoint(run_dir)
    ranks = [torch.load(ckpt / f"rank-{r:05d}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["digest"] == ranks[1]["digest"], "ranks ended with different weights"
    assert not torch.equal(ranks[0]["pool_A"]["images"], ranks[1]["pool_A"]["images"]), "ranks saw the same data"


def test_incompatible_checkpoint_names_the_difference(tmp_path):
    run_dir = tmp_path / "run"
    run_cli("train", "--config", "smoke", "--run-dir", run_dir, "--set", *TINY, "train.steps=2")
    out = run_cli("train", "--config", "smoke", "--run-dir", run_dir, "--set", *TINY, "train.steps=4",
                  "model.ngf=16", check=False)
    assert out.returncode == 2
    assert "model.ngf: 8 -> 16" in out.stderr and "Traceback" not in out.stderr
    assert latest_checkpoint(run_dir).name == "step-00000002", "the old checkpoint must stay"


@pytest.mark.parametrize("args, message", [
    (["--set", "train.stepz=3"], "unknown key 'train.stepz'"),
    (["--config", "nope"], "config file nope not found"),
    (["--set", "data.root=/no/such/shards"], "/no/such/shards"),
    (["--set", "train.nonfinite_skip=device", "train.fused_adam=false"], "needs train.fused_adam=true"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    base = ["train", "--run-dir", tmp_path / "r"]
    if "--config" not in args:
        base += ["--config", "smoke"]
    out = run_cli(*base, *args, check=False)
    assert out.returncode == 2, out.stderr
    assert message.lower() in out.stderr.lower() and "Traceback" not in out.stderr


def test_smoke_training_beats_the_identity_baseline(tmp_path):
    """The demo's quality check: translation PSNR of G(x) vs T(x) on held-out crops, before and after."""
    out = run_cli("train", "--json", "--config", "smoke", "--run-dir", tmp_path / "smoke", "--set", "train.steps=300",
                  "data.num_workers=0", "train.sample_every=0", "wandb.mode=disabled")
    result = result_json(out.stdout)
    assert result["psnr_after"] > result["psnr_identity"] + 1.5, result
    assert result["psnr_after"] > result["psnr_before"] + 3.0, result


def test_a_failed_start_leaves_no_empty_run_directory(tmp_path):
    """A run that fails before writing anything (here: --resume names no checkpoint) removes the directories it
    made for itself (the run directory and its new parents), and leaves one that already existed alone."""
    out = run_cli("train", "--config", "smoke", "--run-dir", tmp_path / "new" / "exp" / "run", "--resume",
                  tmp_path / "nothing", "--set", *TINY, check=False)
    assert out.returncode == 2 and "not a complete checkpoint" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    out = run_cli("train", "--config", "smoke", "--run-dir", tmp_path / "kept", "--resume", tmp_path / "nothing",
                  "--set", *TINY, check=False)
    assert out.returncode == 2 and (tmp_path / "kept").is_dir() and not list((tmp_path / "kept").iterdir())
