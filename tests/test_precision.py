"""Mixed precision, loss scaling, channels_last and torch.compile change speed (or range), not the training.

* bf16 autocast on the CPU follows the fp32 run of the same seed and data (in-process, the real step).
* fp16 loss scaling with two optimizers: the loop shares Accelerate's ONE GradScaler between opt_G and opt_D.
  Each ``AcceleratedOptimizer.step()`` does ``scaler.step(opt); scaler.update()``, and D's backward runs after G's
  step, so an overflow in one network skips only that network's step, halves the scale once, and the other
  network's gradients are scaled and unscaled with the same (possibly just halved) scale. On the CPU Accelerate
  refuses fp16, so the test gives a CPU ``Accelerator`` a GradScaler before ``prepare``: ``prepare`` hands
  ``accelerator.scaler`` to each ``AcceleratedOptimizer`` (accelerator.py ``_prepare_one`` -> ``prepare_optimizer``:
  ``AcceleratedOptimizer(optimizer, scaler=self.scaler)``) and ``accelerator.backward`` does
  ``self.scaler.scale(loss).backward()`` whenever ``self.scaler`` is set: exactly the fp16 code path on a GPU.
* fp16 through the CLI on a CPU machine is a one-line user error.
* ``train.channels_last`` / ``train.compile`` through the real CLI give the default run's weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cyclegan_dist.config import load_config
from cyclegan_dist.image_pool import ImagePool
from cyclegan_dist.train.modules import build_pairs
from cyclegan_dist.train.step import StepParts, train_step

from helpers import read_metrics, run_cli
from workers.common import (
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


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state; give each in-process Accelerator a clean one, and clean up."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def _new_accelerator(mixed_precision: str):
    from accelerate.state import AcceleratorState

    from cyclegan_dist.train.runtime import Runtime

    AcceleratorState._reset_state(True)
    return Runtime(tiny_config(f'train.mixed_precision="{mixed_precision}"').train).acc_G


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
    from accelerate.state import AcceleratorState

    runs = {}
    for name, overrides, perturb, steps in (("fp32", (), 0.0, BF16_STEPS),
                                            ("bf16", ('train.mixed_precision="bf16"',), 0.0, BF16_STEPS),
                                            ("control", (), BF16_UNIT_ROUNDOFF, BF16_STEPS),
                                            ("wrong_lambda", ("loss.lambda_cycle=11",), 0.0, 1),
                                            ("wrong_lr", ("train.lr=4e-4",), 0.0, BF16_STEPS)):
        config = tiny_config(*overrides)
        runs[name] = train_k_steps(config, steps, 4, accelerator=_new_accelerator(config.train.mixed_precision),
                                   perturb=perturb)
    AcceleratorState._reset_state(True)
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


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: v.detach().clone() for n, v in module.state_dict().items()}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _optimizers(config, gens, discs):
    t = config.train
    return (torch.optim.Adam(gens.parameters(), lr=t.lr, betas=(t.beta1, t.beta2)),
            torch.optim.Adam(discs.parameters(), lr=t.lr, betas=(t.beta1, t.beta2)))


def _plain_step(config, A, B) -> dict:
    """The reference: one step in plain fp32 torch, no Accelerator, no scaler."""
    gens, discs = build_pairs(config.model, config.seed)
    opt_G, opt_D = _optimizers(config, gens, discs)
    seen = {}

    def stepper(name, opt, module):
        def step():
            seen[f"grads_{name}"] = _grads(module)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    parts = StepParts(gens, discs, discs, opt_G, opt_D, ImagePool(0), ImagePool(0), config.loss,
                      step_G=stepper("G", opt_G, gens), step_D=stepper("D", opt_D, discs))
    train_step(parts, A, B)
    return {**seen, "G": _weights(gens), "D": _weights(discs)}


@pytest.mark.parametrize("overflow", [None, "G", "D"])
def test_one_grad_scaler_for_two_optimizers(fresh_accelerate_state, overflow):
    """One real step with a shared GradScaler; ``overflow`` names the network whose gradient is forced to inf.

    Scaling by a power of two is exact in floating point (no overflow, no subnormals here), so the gradients each
    optimizer sees, divided by the scale in force at its backward, must EQUAL the plain fp32 gradients, and the
    networks that step must end bit-identical to the plain fp32 step.
    """
    from accelerate import Accelerator

    config = tiny_config()
    A, B = global_batch(0, 2, data_seed=1)
    reference = _plain_step(config, A, B)

    accelerator = Accelerator(cpu=True)
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    gens, discs = build_pairs(config.model, config.seed)
    start = {"G": _weights(gens), "D": _weights(discs)}
    gens, discs, opt_G, opt_D = accelerator.prepare(gens, discs, *_optimizers(config, gens, discs))
    assert opt_G.scaler is accelerator.scaler and opt_D.scaler is accelerator.scaler, "prepare did not share it"
    gens_plain, discs_plain = accelerator.unwrap_model(gens), accelerator.unwrap_model(discs)
    if overflow is not None:  # the first conv of G_A / D_A: its gradient becomes inf in that network's backward
        param = gens_plain.G_A.model[1].weight if overflow == "G" else discs_plain.D_A.model[0].weight
        param.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    seen = {}

    def stepper(name, opt, module):
        def step():
            seen[f"scale_{name}"] = accelerator.scaler.get_scale()  # the scale this network's backward used
            seen[f"grads_{name}"] = _grads(module)
            opt.step()  # AcceleratedOptimizer: scaler.step(opt) (unscale, skip on inf) then scaler.update()
            seen[f"skipped_{name}"] = opt.step_was_skipped
            opt.zero_grad(set_to_none=True)
        return step

    parts = StepParts(gens, discs, discs_plain, opt_G, opt_D, ImagePool(0), ImagePool(0), config.loss,
                      backward=accelerator.backward, autocast=accelerator.autocast,
                      step_G=stepper("G", opt_G, gens_plain), step_D=stepper("D", opt_D, discs_plain))
    train_step(parts, A, B)

    after = {"G": _weights(gens_plain), "D": _weights(discs_plain)}
    halved = INIT_SCALE / 2
    assert seen["scale_G"] == INIT_SCALE
    assert seen["scale_D"] == (halved if overflow == "G" else INIT_SCALE), "D's backward used the wrong scale"
    assert accelerator.scaler.get_scale() == (INIT_SCALE if overflow is None else halved), "scale not halved once"
    for net in ("G", "D"):
        assert seen[f"skipped_{net}"] == (overflow == net)
        if overflow == net:
            assert not torch.isfinite(torch.cat([g.flatten() for g in seen[f"grads_{net}"].values()])).all()
            assert _equal(after[net], start[net]), f"{net} stepped on an overflowing gradient"
        else:
            scale = seen[f"scale_{net}"]
            unscaled = {k: g / scale for k, g in seen[f"grads_{net}"].items()}
            assert _equal(unscaled, reference[f"grads_{net}"]), f"{net}'s gradients were not scaled by {scale}"
            assert not _equal(after[net], start[net]), f"{net} did not step"
            assert _equal(after[net], reference[net]), f"{net}'s step differs from the plain fp32 step"


def test_fp16_on_cpu_is_a_clear_user_error(tmp_path):
    out = run_cli("train", "--config", "smoke", "--run-dir", tmp_path / "r", "--set", "train.mixed_precision=fp16",
                  "wandb.mode=disabled", check=False, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 2, out.stderr[-3000:]
    assert "use train.mixed_precision=bf16" in out.stderr.lower()
    assert "Traceback" not in out.stderr


# --------------------------------------------------------------------------------------- channels_last, compile

CLI_TINY = ["model.ngf=8", "model.ndf=8", "data.num_workers=0", "train.sample_every=0", "wandb.mode=disabled",
            "train.steps=2", "train.log_every=1", "train.lr_decay_fraction=0", "train.checkpoint_every=0"]
FIRST_LOSS_TOL = 1e-4  # relative, every loss term of step 1 (identical weights: only the forward's rounding)
SPEED_WEIGHT_TOL = 0.3  # relative_distance of the generators after 2 steps


def _train(run_dir: Path, *extra: str) -> tuple[dict[int, dict], dict[str, torch.Tensor]]:
    out = run_cli("train", "--json", "--config", "smoke", "--run-dir", run_dir, "--set", *CLI_TINY, *extra,
                  env={"OMP_NUM_THREADS": "1"})
    result = json.loads(out.stdout[out.stdout.index("{"):])
    assert result["status"] == "completed" and result["world_size"] == 1
    losses = {r["step"]: r for r in read_metrics(run_dir) if "loss/G" in r}
    ckpt = Path(result["checkpoint"])
    weights = {f"{net}.{k}": v for net in ("G_A", "G_B") for k, v in load_file(ckpt / f"{net}.safetensors").items()}
    return losses, weights


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("speed") / "default")


SPEED_OPTIONS = {"channels_last": ("train.channels_last=true", "channels_last: true"),
                 "compile": ("train.compile=default", "compile: default"),
                 "compile-reduce-overhead": ("train.compile=reduce-overhead", "compile: reduce-overhead")}


@pytest.mark.parametrize("option", ["channels_last", pytest.param("compile", marks=pytest.mark.slow),
                                    pytest.param("compile-reduce-overhead", marks=pytest.mark.slow)])
def test_speed_options_change_speed_not_results(default_run, tmp_path, option):
    """Two steps of the real CLI with a speed option against the default run (reduce-overhead: on a CPU the same
    Inductor code as default, CUDA graphs being GPU-only; the GPU run of benchmarks/gpu.sh covers the graphs).

    Step 1's losses come from identical weights: only the kernels' rounding differs (channels_last: other conv
    kernels; compile: fused Inductor code), measured <= 1e-6 relative; bound 1e-4. The weights after 2 steps are
    compared as in test_parity.py (relative_distance, dead conv biases left out): the kernels' ~1e-6 differences
    make Adam move the weights whose gradient is near 0 differently; measured 0.056 (channels_last) and 0.107
    (compile); unrelated updates give ~1 (test_parity's negative control), so the bound is 0.3.
    """
    override, written = SPEED_OPTIONS[option]
    losses, weights = _train(tmp_path / option, override)
    ref_losses, ref_weights = default_run
    assert written in (tmp_path / option / "config.yaml").read_text()
    assert sorted(losses) == sorted(ref_losses) == [1, 2]
    for key, value in ref_losses[1].items():
        if key.startswith("loss/"):
            assert abs(losses[1][key] - value) <= FIRST_LOSS_TOL * abs(value), (key, losses[1][key], value)
    config = load_config("smoke", CLI_TINY)
    gens, _ = build_pairs(config.model, config.seed)  # the runs' common starting point
    distance = relative_distance(weights, ref_weights, gens.state_dict(), skip=dead_biases(gens))
    assert distance <= SPEED_WEIGHT_TOL, distance
