"""Data-parallel training is the same training: 2 gloo ranks x batch b == 1 process x batch 2b.

Both sides run the real code path (the ``Runtime``'s Accelerator -> ``prepare`` -> ``train_step``, see
tests/workers/common.py) on the same fixed batches: rank r of 2 takes rows [r*b, (r+1)*b) of the 1-process batch.
The image pool is off (its random swaps are per rank) and there is no dropout; InstanceNorm is per sample and every
loss is a mean over the batch, so the mean of the two ranks' gradients IS the big-batch gradient, mathematically.
In floating point it differs only by summation order (DDP averages two half-batch sums; one process sums 2b samples).

Tolerances (fp32):
* gradients of the first step (the DDP-averaged ones, as the optimizer sees them): |g_ddp - g_1| <= 1e-5 x max|g_1|
  per network (G pair, D pair). Summation-order noise is ~1e-7 relative; measured 2.2e-6 (G), 8.4e-7 (D).
  The negative control (rank 1 fed other data) is off by ~1.0 x max|g_1|.
* weights after 3 steps: relative_distance (||w_ddp - w_1|| / ||w_1 - w_0||, tests/workers/common.py) <= 0.1, with
  the conv biases that feed an affine-free InstanceNorm left out (their gradient is exactly 0 in exact arithmetic, so
  Adam turns their rounding noise into random +-lr moves that change nothing the network computes).
  Not bit-exact, and not elementwise: Adam's first steps are ~lr * sign(g), so any weight whose gradient is
  below the rounding noise moves by +-lr either way, and these tiny forward differences then flip a few ReLU/L1
  kinks, which makes later gradients differ by 1e-3 (step 2) to 1e-2 (step 3) of their scale. Measured 0.012 (G),
  0.0015 (D); the negative control gives 0.9-1.2 (unrelated updates), so 0.1 still tells right from wrong.
"""

from __future__ import annotations

import math

import pytest
import torch

from cyclegan_dist.train.build import build_pairs

from helpers import TINY, read_metrics, run_torchrun
from workers.common import dead_biases, relative_distance, tiny_config
from workers.launch import load_ranks, run_worker

STEPS, GLOBAL_BATCH = 3, 4  # 1 process x 4 images == 2 ranks x 2 images
GRAD_TOL = 1e-5  # x the largest gradient of the network
WEIGHT_TOL = 0.1  # relative_distance after STEPS steps


# one xdist worker runs the group (shared fixtures)
pytestmark = [pytest.mark.xdist_group("parity"), pytest.mark.precision]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One plain process (batch 4) and one torchrun of 2 ranks (batch 2 each, then the negative control)."""
    root = tmp_path_factory.mktemp("parity")
    run_worker("step_worker.py", root / "one", "--steps", STEPS, "--global-batch", GLOBAL_BATCH)
    run_worker("step_worker.py", root / "two", "--steps", STEPS, "--global-batch", GLOBAL_BATCH, "--negative-control",
               nproc=2)
    config = tiny_config()
    gens, discs = build_pairs(config.model, config.seed)
    return {
        "one": load_ranks(root / "one", 1)[0],
        "two": load_ranks(root / "two", 2),
        "negative": load_ranks(root / "two" / "negative", 2),
        "start": {"generators": gens.state_dict(), "discriminators": discs.state_dict()},
        "dead": {"generators": dead_biases(gens), "discriminators": dead_biases(discs)},
    }


def grad_error(grads: dict, reference: dict) -> float:
    """max |grads - reference| over all tensors, relative to the largest reference gradient."""
    assert grads.keys() == reference.keys() and reference
    scale = max(float(g.abs().max()) for g in reference.values())
    return max(float((grads[k] - reference[k]).abs().max()) for k in reference) / scale


@pytest.mark.parametrize("net", ["G", "D"])
def test_ddp_gradients_equal_the_big_batch_gradients(runs, net):
    one, (rank0, rank1) = runs["one"], runs["two"]
    assert one[f"grads_{net}"][0], "no gradients captured"
    assert grad_error(rank0[f"grads_{net}"][0], one[f"grads_{net}"][0]) <= GRAD_TOL
    assert grad_error(rank1[f"grads_{net}"][0], rank0[f"grads_{net}"][0]) == 0, "DDP gave the ranks different grads"


@pytest.mark.parametrize("kind", ["generators", "discriminators"])
def test_ddp_weights_follow_the_big_batch_weights(runs, kind):
    one, (rank0, rank1) = runs["one"], runs["two"]
    for name in rank0[kind]:
        assert torch.equal(rank0[kind][name], rank1[kind][name]), f"{name}: the ranks' replicas drifted apart"
    start, dead = runs["start"][kind], runs["dead"][kind]
    assert dead, "expected conv biases before InstanceNorm in the reference architecture"
    assert relative_distance(rank0[kind], one[kind], start, skip=dead) <= WEIGHT_TOL


def test_negative_control_different_data_on_rank_1_does_not_match(runs):
    """The same comparisons fail when rank 1 trains on other samples: the tolerances are not vacuous."""
    one, (rank0, _) = runs["one"], runs["negative"]
    for net in ("G", "D"):
        assert grad_error(rank0[f"grads_{net}"][0], one[f"grads_{net}"][0]) > 100 * GRAD_TOL
    for kind in ("generators", "discriminators"):
        distance = relative_distance(rank0[kind], one[kind], runs["start"][kind], skip=runs["dead"][kind])
        assert distance > 5 * WEIGHT_TOL, (kind, distance)


@pytest.mark.parametrize("scaling, factor", [("linear", 2.0), ("sqrt", math.sqrt(2.0))])
def test_lr_scales_with_world_size_in_the_real_loop(tmp_path, scaling, factor):
    run_dir = tmp_path / scaling
    run_torchrun(2, "train", "--config", "smoke", "--run-dir", run_dir, "--set", *TINY, "train.steps=2",
                 "train.log_every=1", "train.lr_decay_fraction=0", "train.checkpoint_every=0",
                 f"train.lr_scaling={scaling}", env={"OMP_NUM_THREADS": "1"})
    records = [r for r in read_metrics(run_dir) if "lr" in r]
    assert [r["step"] for r in records] == [1, 2]
    base = tiny_config().train.lr
    for record in records:
        assert record["world_size"] == 2
        assert record["lr"] == pytest.approx(base * factor, rel=1e-12)
