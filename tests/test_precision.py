"""Mixed precision, loss scaling, channels_last and torch.compile change speed (or range), not the training.

Every step here is built by the loop's own functions (tests/workers/common.py: ``build_step``), so what runs is
what a GPU run runs, on the CPU:

* bf16 autocast follows the fp32 run of the same seed and data.
* fp16: CPU float16 autocast with the loop's ONE GradScaler shared by opt_G and opt_D (train/guard.py): an
  overflow in one network skips only that network's update and halves the scale once, before the other network's
  backward; the unscaled gradients the optimizers see are fp32's up to fp16's rounding. Through the real CLI, a
  loss scale that starts far too high backs off by one halving per overflow, and the run completes.
* ``train.channels_last`` through the real CLI gives the default run's weights; ``train.compile`` (default and
  reduce-overhead) gives the eager step's losses and weights and compiles nothing after the first step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cyclegan_dist.config import load_config
from cyclegan_dist.train.build import build_pairs
from cyclegan_dist.train.guard import MIN_LOSS_SCALE

from helpers import TINY, loss_records, read_metrics, result_json, run_cli
from workers.common import (
    build_step,
    capture_grads,
    dead_biases,
    global_batch,
    relative_distance,
    tiny_config,
    train_k_steps,
)

# one xdist worker runs the group (shared fixtures)
pytestmark = [pytest.mark.xdist_group("precision"), pytest.mark.precision]


@pytest.fixture(autouse=True)
def one_thread():
    """In-process steps on one thread, like the subprocesses (OMP_NUM_THREADS=1): two OpenMP threads on busy shared
    cores spin in barriers and make a 5 s test take minutes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------------------ bf16

BF16_STEPS = 10
TRACKED = ("loss/G", "loss/D", "loss/cycle_A", "loss/cycle_B", "loss/idt_A", "loss/idt_B")
BF16_UNIT_ROUNDOFF = 2.0 ** -8  # 8 significant bits
FIRST_STEP_TOL = 1e-2  # every loss term at step 1 (identical weights: only the forward's rounding)
TRAJECTORY_FACTOR = 2.5  # later steps: bf16's drift may be this many times the drift of a roundoff-sized control


def _rel(run, ref, step: int, key: str) -> float:
    return abs(run.losses[step][key] - ref.losses[step][key]) / abs(ref.losses[step][key])


def drift(run, ref) -> float:
    """Mean relative difference of the tracked loss terms over steps 2..K: how far two runs drift apart."""
    values = [_rel(run, ref, s, k) for s in range(1, len(ref.losses)) for k in TRACKED]
    return sum(values) / len(values)


def first_step_error(run, ref) -> float:
    return max(_rel(run, ref, 0, k) for k in ref.losses[0])


@pytest.fixture(scope="module")
def bf16_runs():
    """Same seed, same batches, 10 real steps each: fp32; bf16 autocast; the control (fp32 from weights perturbed
    by bf16's unit roundoff); and two negative controls whose arithmetic is really wrong (lambda_cycle 10% off;
    the LR doubled, as when the LR scaling is applied twice)."""
    runs = {}
    for name, overrides, perturb, steps in (("fp32", (), 0.0, BF16_STEPS),
                                            ("bf16", ('train.mixed_precision="bf16"',), 0.0, BF16_STEPS),
                                            ("control", (), BF16_UNIT_ROUNDOFF, BF16_STEPS),
                                            ("wrong_lambda", ("loss.lambda_cycle=11",), 0.0, 1),
                                            ("wrong_lr", ("train.lr=4e-4",), 0.0, BF16_STEPS)):
        runs[name] = train_k_steps(tiny_config(*overrides), steps, 4, perturb=perturb)
    return runs


def test_bf16_autocast_tracks_fp32(bf16_runs):
    """bf16 autocast follows the fp32 run as closely as bf16's rounding explains, on any CPU (AVX2, AVX-512, AMX).

    Step 1 starts from identical weights, so only the forward's rounding differs: every loss term within 1e-2
    (bf16's unit roundoff is 2^-8 = 0.4% per operation, accumulated in fp32 over ~20 layers; measured <= 3.8e-3 at
    ATEN_CPU_CAPABILITY avx2 and default, and <= 4.5e-3 for the control below).
    Afterwards the runs' trajectories separate chaotically whatever the precision: Adam's first steps are ~lr x
    sign(g), so rounding-level gradient differences move near-zero-gradient weights by +-lr, and the adversarial
    terms amplify it (loss/D alone differs by up to 8% after 10 steps on AVX2). So later steps are judged against a
    control run measured here, on this CPU: fp32 started from weights perturbed by +-2^-8 (a rounding of bf16's
    size). bf16's drift (the mean relative difference of loss/G, loss/D and the cycle/identity L1 terms over steps
    2..10) must stay within 2.5x the control's; measured ratios 0.96 (avx2) and 0.98 (default), drifts ~0.006.
    """
    fp32, bf16, control = bf16_runs["fp32"], bf16_runs["bf16"], bf16_runs["control"]
    assert fp32.g_output_dtypes == {torch.float32}
    assert bf16.g_output_dtypes == {torch.bfloat16}, "the generators did not run under bf16 autocast"
    assert first_step_error(bf16, fp32) > 1e-5, "bf16 gave fp32's exact losses: autocast did not change the arithmetic"
    assert first_step_error(bf16, fp32) <= FIRST_STEP_TOL
    assert drift(control, fp32) > 0, "the control run did not differ from fp32: the perturbation did nothing"
    assert drift(bf16, fp32) <= TRAJECTORY_FACTOR * drift(control, fp32), (drift(bf16, fp32), drift(control, fp32))


def test_bf16_checks_fail_when_the_arithmetic_is_wrong(bf16_runs):
    """The negative controls: the same two checks catch a 10% error in one loss weight (step 1: measured 0.10) and a
    doubled LR (drift measured ~0.03, 5x the control's), so the tolerances above are not vacuous."""
    fp32, control = bf16_runs["fp32"], bf16_runs["control"]
    assert first_step_error(bf16_runs["wrong_lambda"], fp32) > FIRST_STEP_TOL
    assert drift(bf16_runs["wrong_lr"], fp32) > TRAJECTORY_FACTOR * drift(control, fp32)


# ------------------------------------------------------------------------------------------------------------ fp16

INIT_SCALE = 2.0 ** 10
# ||g_fp16 - g_fp32|| / ||g_fp32|| per network, dead conv biases left out (their true gradient is 0): measured 0.13 (G),
# 0.04 (D) after float16's forward and backward; a gradient unscaled by a wrong power of 2 is off by >= 0.5
FP16_GRAD_TOL = 0.25


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: v.detach().clone() for n, v in module.state_dict().items()}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _grad_error(grads: dict, reference: dict, skip: set[str]) -> float:
    keys = sorted(k for k in reference if k not in skip)
    assert keys and set(reference) == set(grads)
    flat = [torch.cat([d[k].double().flatten() for k in keys]) for d in (grads, reference)]
    return float((flat[0] - flat[1]).norm() / flat[1].norm())


@pytest.mark.parametrize("overflow", [None, "G", "D"])
def test_one_grad_scaler_for_two_optimizers(overflow):
    """One real fp16 step (float16 autocast, the GradScaler, fused Adam, the guard, as the loop builds them);
    ``overflow`` names the network whose gradient is forced to inf in its backward.

    The scaler skips exactly that network's update (weights and Adam state as they were), halves the scale once,
    before D's backward when G overflowed; the guard counts the skip; the other network steps on gradients that,
    unscaled, are the fp32 step's within fp16's rounding (FP16_GRAD_TOL).
    """
    A, B = global_batch(0, 2, data_seed=1)
    fp32 = build_step(tiny_config())
    reference = {"G": [], "D": []}
    capture_grads(fp32.opt_G, fp32.gens, reference["G"])
    capture_grads(fp32.opt_D, fp32.discs, reference["D"])
    fp32.step(A, B)

    built = build_step(tiny_config('train.mixed_precision="fp16"', f"train.fp16_init_scale={INIT_SCALE}"))
    scaler = built.rt.scaler
    assert built.guard.mode == "scaler" and scaler is not None
    nets = {"G": (built.gens, built.opt_G), "D": (built.discs, built.opt_D)}
    start = {name: _weights(module) for name, (module, _) in nets.items()}
    seen, scales, dtypes = {"G": [], "D": []}, {}, set()
    for name, (module, opt) in nets.items():
        capture_grads(opt, module, seen[name])
        opt.register_step_pre_hook(lambda _o, _a, _k, name=name: scales.__setitem__(name, scaler.get_scale()))
    built.gens.G_A.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype))
    if overflow is not None:  # the first conv of G_A / D_A: its gradient becomes inf in that network's backward
        param = built.gens.G_A.model[1].weight if overflow == "G" else built.discs.D_A.model[0].weight
        param.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    built.step(A, B)

    assert dtypes == {torch.float16}, "the generators did not run under float16 autocast"
    halved = INIT_SCALE / 2
    assert scales["G"] == INIT_SCALE
    assert scales["D"] == (halved if overflow == "G" else INIT_SCALE), "D's backward used the wrong scale"
    assert scaler.get_scale() == (INIT_SCALE if overflow is None else halved), "scale not halved once"
    assert built.guard.read().item() == (overflow is not None), "the guard did not count the scaler's skip"
    for name, (module, opt) in nets.items():
        after = _weights(module)
        if overflow == name:
            assert _equal(after, start[name]), f"{name} stepped on an overflowing gradient"
            assert all(int(s["step"]) == 0 and not s["exp_avg"].any() for s in opt.state.values()), "Adam state moved"
        else:
            assert not _equal(after, start[name]), f"{name} did not step"
            assert _grad_error(seen[name][0], reference[name][0], dead_biases(module)) <= FP16_GRAD_TOL


def test_fp16_training_backs_off_and_completes(tmp_path):
    """The real CLI in fp16 on the CPU, the loss scale starting at 2^24, far above what the gradients allow: the
    first steps overflow. Each overflow skips its update and halves the scale exactly once (growing back needs 2000
    clean optimizer steps, 1000 training steps), no overflow counts as a non-finite failure, the scale stays within
    [MIN_LOSS_SCALE, 2^24] over 200 steps, the run completes and every checkpoint holds finite weights."""
    init = 2.0 ** 24
    run_dir = tmp_path / "fp16"
    out = run_cli("train", "--json", "--config", "smoke", "--run-dir", run_dir, "--set", *TINY,
                  "train.steps=200", "train.log_every=10", "train.checkpoint_every=100", "train.mixed_precision=fp16",
                  f"train.fp16_init_scale={init}", env={"OMP_NUM_THREADS": "1"})
    result = result_json(out.stdout)
    assert result["status"] == "completed" and result["step"] == 200, result
    assert out.stderr.count("mixed_precision=fp16 on the CPU") == 1, out.stderr[-2000:]
    records = [r for r in read_metrics(run_dir) if "amp/loss_scale" in r]
    assert [r["step"] for r in records] == list(range(10, 201, 10))
    skips = sum(r["amp/overflow_skips"] for r in records)
    assert skips >= 1, "a 2^24 loss scale never overflowed: the scaler is not scaling"
    assert records[-1]["amp/loss_scale"] == init / 2 ** skips, "not one halving per overflow skip"
    scales = [r["amp/loss_scale"] for r in records]
    assert all(MIN_LOSS_SCALE <= a <= init for a in scales) and scales == sorted(scales, reverse=True)
    assert not [e for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
                if e.get("service") == "nonfinite"], "an fp16 overflow was treated as a failure"
    for ckpt in sorted((run_dir / "checkpoints").glob("step-*")):
        weights = load_file(ckpt / "G_A.safetensors")
        assert all(torch.isfinite(v).all() for v in weights.values()), ckpt


# --------------------------------------------------------------------------------------- channels_last, compile

CLI_TINY = [*TINY, "train.steps=2", "train.log_every=1", "train.lr_decay_fraction=0", "train.checkpoint_every=0"]
FIRST_LOSS_TOL = 1e-4  # relative, every loss term of step 1 (identical weights: only the forward's rounding)
SPEED_WEIGHT_TOL = 0.3  # relative_distance of the generators after 2 steps


def _train(run_dir: Path, *extra: str) -> tuple[dict[int, dict], dict[str, torch.Tensor]]:
    out = run_cli("train", "--json", "--config", "smoke", "--run-dir", run_dir, "--set", *CLI_TINY, *extra,
                  env={"OMP_NUM_THREADS": "1"})
    result = result_json(out.stdout)
    assert result["status"] == "completed" and result["world_size"] == 1
    losses = {r["step"]: r for r in loss_records(run_dir)}
    ckpt = Path(result["checkpoint"])
    weights = {f"{net}.{k}": v for net in ("G_A", "G_B") for k, v in load_file(ckpt / f"{net}.safetensors").items()}
    return losses, weights


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("speed") / "default")


def test_channels_last_changes_speed_not_results(default_run, tmp_path):
    """Two steps of the real CLI with ``train.channels_last`` against the default run.

    Step 1's losses come from identical weights: only the kernels' rounding differs (other conv kernels), measured
    <= 1e-6 relative; bound 1e-4. The weights after 2 steps are compared as in test_parity.py (relative_distance,
    dead conv biases left out): the kernels' ~1e-6 differences make Adam move the weights whose gradient is near 0
    differently; measured 0.056; unrelated updates give ~1 (test_parity's negative control), so the bound is 0.3.
    """
    losses, weights = _train(tmp_path / "cl", "train.channels_last=true")
    ref_losses, ref_weights = default_run
    assert "channels_last: true" in (tmp_path / "cl" / "config.yaml").read_text()
    assert sorted(losses) == sorted(ref_losses) == [1, 2]
    for key, value in ref_losses[1].items():
        if key.startswith("loss/"):
            assert abs(losses[1][key] - value) <= FIRST_LOSS_TOL * abs(value), (key, losses[1][key], value)
    config = load_config("smoke", CLI_TINY)
    gens, _ = build_pairs(config.model, config.seed)  # the runs' common starting point
    distance = relative_distance(weights, ref_weights, gens.state_dict(), skip=dead_biases(gens))
    assert distance <= SPEED_WEIGHT_TOL, distance


COMPILE_STEPS = 4


@pytest.fixture(scope="module")
def eager_run():
    return train_k_steps(tiny_config(), COMPILE_STEPS, 2)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compile_changes_speed_not_results_and_never_recompiles(eager_run, mode):
    """``train.compile`` as the loop builds it (each network compiled; on a CPU reduce-overhead is the same
    Inductor code, CUDA graphs being GPU-only: benchmarks/gpu.sh checks their replay).

    After the first step, which compiles every variant a step meets (D frozen in G's step and trainable in its own;
    G_A called on a real photo, on G_B's fake, which requires grad, and on a painting for the identity loss), the
    next steps run under ``torch.compiler.set_stance("fail_on_recompile")``: any recompilation is an error. The
    losses of step 1 equal the eager step's within 1e-4 relative (Inductor's fused kernels round differently;
    measured ~1e-6) and the weights after the steps are within test_parity's weight tolerance of the eager run's.
    """
    config = tiny_config(f"train.compile={mode}")
    compiled = build_step(config)
    assert all(hasattr(net, "_compiled_call_impl") and net._compiled_call_impl is not None
               for net in (compiled.gens.G_A, compiled.gens.G_B, compiled.discs.D_A, compiled.discs.D_B))
    losses = []
    for step in range(COMPILE_STEPS):
        A, B = global_batch(step, 2, data_seed=1)
        if step == 0:
            losses.append(compiled.step(A, B))
            continue
        with torch.compiler.set_stance("fail_on_recompile"):
            losses.append(compiled.step(A, B))
    for key, value in eager_run.losses[0].items():
        assert abs(float(losses[0][key]) - value) <= FIRST_LOSS_TOL * abs(value), (key, float(losses[0][key]), value)
    gens, _ = build_pairs(config.model, config.seed)
    weights = {k: v.detach().cpu() for k, v in compiled.gens.state_dict().items()}
    distance = relative_distance(weights, eager_run.generators, gens.state_dict(), skip=dead_biases(gens))
    assert distance <= SPEED_WEIGHT_TOL, distance
