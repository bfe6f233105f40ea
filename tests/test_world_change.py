"""Resume on another number of ranks keeps the data order and the schedule (issue 23 B): the global stream is the
unit, progress and the LR curve are counted in images.

Real torchrun runs of gloo ranks on the CPU, the product's CLI: 4 ranks for 2 steps, then 2 ranks for 2, then 4 again
to the end, against one uninterrupted 4-rank run with the same global batch (8 = 4 x 2 = 2 x 4). Checked:

* the samples of every step (``train.log_sample_keys``, per rank and step), concatenated in rank order, are equal:
  the same samples in the same order, not only the same multiset;
* the LR logged at every image count is equal (``train.lr_scaling=linear`` and a decay from the first step, so a
  wrong count or a wrong scale shows);
* the final weights differ only by summation order: ``relative_distance`` <= 0.1, as in tests/test_parity.py (why:
  its docstring; DDP averages 4 sums of 2 images vs 2 sums of 4, Adam turns rounding noise of tiny gradients into
  +-lr moves, dead biases are left out). The image pool is off (its swaps are per rank) and there is no dropout.

A changed global batch is allowed only with ``train.keep_global_batch=false``, logged as an event; the run then ends
after the same number of images, with the LR of each image count.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cyclegan_dist import checkpoint as ckpt
from cyclegan_dist.config import load_config
from cyclegan_dist.errors import UserError
from cyclegan_dist.train.build import build_pairs
from cyclegan_dist.train.resume import fit_global_batch
from cyclegan_dist.train.schedule import Schedule
from cyclegan_dist.train.state import TrainState

from helpers import events, latest_checkpoint, read_metrics, result_json, run_torchrun
from workers.common import TINY as DETERMINISTIC
from workers.common import dead_biases, relative_distance

STEPS = 6
SETTINGS = [*DETERMINISTIC, "model.ngf=8", "model.ndf=8", "data.num_workers=0", "train.sample_every=0",
            "wandb.mode=disabled", "train.batch_size=2", f"train.steps={STEPS}", "train.lr_decay_fraction=1.0",
            "train.lr_scaling=linear", "train.log_every=1", "train.checkpoint_every=2", "train.log_sample_keys=true"]

pytestmark = pytest.mark.xdist_group("world_change")  # one worker: the runs share a module fixture


def train(nproc: int, run_dir: Path, *overrides: str, stop_after: int | None = None) -> dict:
    stop = ["--stop-after", stop_after] if stop_after else []
    out = run_torchrun(nproc, "train", "--json", "--quiet", "--config", "smoke", "--run-dir", run_dir, *stop,
                       "--set", *SETTINGS, *overrides, timeout=600)
    return result_json(out.stdout)


def step_samples(run_dir: Path) -> dict[int, list[str]]:
    """Step -> the keys of its samples: domain A then B, each with every rank's share in rank order."""
    shares: dict[int, dict[int, list[str]]] = {}
    for path in sorted((run_dir / "sample_keys").glob("rank-*.jsonl")):
        rank = int(path.stem.split("-")[1])
        for line in path.read_text().splitlines():
            record = json.loads(line)
            shares.setdefault(record["step"], {})[rank] = record
    return {step: [key for domain in "AB" for rank in sorted(by_rank) for key in by_rank[rank][domain]]
            for step, by_rank in shares.items()}


def lr_by_images(run_dir: Path) -> dict[int, float]:
    return {r["images_seen"]: r["lr"] for r in read_metrics(run_dir) if "lr" in r}


def final_generators(run_dir: Path) -> dict:
    return ckpt.load_shared(latest_checkpoint(run_dir))["generators"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    whole = train(4, root / "whole")
    assert (whole["status"], whole["step"], whole["world_size"]) == ("completed", STEPS, 4), whole
    phases = [train(4, root / "phased", stop_after=2), train(2, root / "phased", stop_after=2),
              train(4, root / "phased")]
    return root, whole, phases


def test_four_two_four_ranks_train_on_the_same_samples_with_the_same_lr(runs):
    root, _, phases = runs
    assert [(p["status"], p["start_step"], p["step"], p["world_size"]) for p in phases] == [
        ("stopped", 0, 2, 4), ("stopped", 2, 4, 2), ("completed", 4, 6, 4)]
    whole, phased = step_samples(root / "whole"), step_samples(root / "phased")
    assert sorted(whole) == sorted(phased) == list(range(STEPS))
    assert all(len(whole[s]) == 2 * 8 for s in whole)  # 8 images per step, a key per domain
    assert phased == whole
    lr_whole, lr_phased = lr_by_images(root / "whole"), lr_by_images(root / "phased")
    assert sorted(lr_whole) == [8 * s for s in range(1, STEPS + 1)]
    assert lr_phased == lr_whole
    assert len(set(lr_whole.values())) == STEPS  # it decays every step: a shifted count would show
    changes = [e for e in events(root / "phased", "world_change")]
    assert len(changes) == 2 and "4 images per rank keep the global batch of 8" in changes[0]["message"], changes


def test_the_weights_differ_only_by_summation_order(runs):
    root, _, _ = runs
    config = load_config("smoke", [*SETTINGS])
    gens, _ = build_pairs(config.model, config.seed)
    start = gens.state_dict()
    distance = relative_distance(final_generators(root / "phased"), final_generators(root / "whole"), start,
                                 skip=dead_biases(gens))
    assert distance <= 0.1, distance


def test_a_changed_global_batch_needs_the_flag_and_keeps_the_image_count(runs, tmp_path):
    """2 ranks x 2 after 2 steps of 4 x 2: the global batch halves, the run ends after the same 48 images (step 2 +
    32 / 4 = 10), with the LR curve's factor the uninterrupted run had at each image count it also reaches."""
    root, _, _ = runs
    run_dir = tmp_path / "changed"
    train(4, run_dir, stop_after=2)
    result = train(2, run_dir, "train.keep_global_batch=false")
    assert (result["status"], result["start_step"], result["step"]) == ("completed", 2, 10), result
    records = [r for r in read_metrics(run_dir) if "lr" in r]
    assert [r["images_seen"] for r in records] == [8, 16] + [16 + 4 * k for k in range(1, 9)]
    assert events(run_dir, "train_start")[-1]["end_step"] == 10  # what status and launcher resume read
    (change,) = events(run_dir, "global_batch_change")
    assert "from 8 to 4 images per step" in change["message"] and "at step 10" in change["message"]
    # one LR curve in images for both runs: the LR of a step is base x factor(images seen before it), the base
    # scaled with the global batch (train.lr_scaling=linear: lr x global batch / train.batch_size)
    curve = Schedule.plan(STEPS, 1.0, batch=8)
    for run, batches in ((root / "whole", [8] * STEPS), (run_dir, [8, 8] + [4] * 8)):
        records = [r for r in read_metrics(run) if "lr" in r]
        assert len(records) == len(batches)
        expected = [2e-4 * g / 2 * curve.factor(r["images_seen"] - g) for r, g in zip(records, batches)]
        assert [r["lr"] for r in records] == pytest.approx(expected, rel=1e-12), run


def test_a_global_batch_the_ranks_cannot_share_is_one_clear_error(tmp_path):
    config = load_config("smoke", [*SETTINGS])
    state = TrainState(step=2, global_batch=8, run_id="r", wandb_id="w", schedule=Schedule.plan(6, 1.0, 8),
                       pool_A=None, pool_B=None, samples=16)
    with pytest.raises(UserError) as err:
        fit_global_batch(state, config.train, world=3, saved_world=4, source=tmp_path / "step-00000002")
    message = str(err.value)
    assert "global batch is 8 images per step (4 ranks x 2)" in message and "3 ranks cannot share" in message
    assert "train.keep_global_batch=false" in message
    assert fit_global_batch(state, config.train, world=8, saved_world=4, source=tmp_path) != []  # 1 image per rank
    assert state.global_batch == 8
