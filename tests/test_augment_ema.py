"""DiffAugment, the generators' EMA and the strokes demo style: their definitions, and that they keep what the
project promises (exact resume, off = the reference step bit for bit, export uses the EMA)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cyclegan_dist.augment import DiffAugment, apply, sample
from cyclegan_dist.data.demo import ensure_demo_shards
from cyclegan_dist.data.styles import colour, strokes
from cyclegan_dist.image_pool import ImagePool
from cyclegan_dist.images import ImageSource
from cyclegan_dist.train.build import build_pairs
from cyclegan_dist.train.ema import GeneratorEMA
from cyclegan_dist.train.step import StepParts, train_step

from helpers import TINY, latest_checkpoint, result_json, run_cli
from workers.common import global_batch, tiny_config

ALL = ("color", "translation", "cutout")


def images(n=4, size=32, seed=0, grad=False):
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return x.requires_grad_(grad)


# ------------------------------------------------------------------------------------------------ DiffAugment


def test_diffaugment_ops_shapes_ranges_and_gradients():
    x = images(grad=True)
    g = torch.Generator().manual_seed(1)
    for policy in (("color",), ("translation",), ("cutout",), ALL):
        y = apply(x, sample(policy, 4, 32, 32, g))
        assert y.shape == x.shape and y.dtype == x.dtype and not torch.equal(y, x), policy
        (grad,) = torch.autograd.grad(y.sum(), x)
        assert grad.abs().sum() > 0, f"{policy}: no gradient reaches the input"
    shifted = apply(x, sample(("translation",), 4, 32, 32, torch.Generator().manual_seed(2)))
    values = set(x.detach().flatten().tolist()) | {0.0}
    assert set(shifted.detach().flatten().tolist()) <= values  # moved pixels and zero padding, nothing new
    cut = apply(x, sample(("cutout",), 4, 32, 32, torch.Generator().manual_seed(3))).detach()
    zeros = (cut == 0).all(dim=1).float().mean(dim=(1, 2))  # the square covers at most (16 x 16) / (32 x 32)
    assert ((zeros > 0.05) & (zeros <= 0.25 + 1e-6)).all(), zeros
    bright = apply(x, sample(("color",), 4, 32, 32, torch.Generator().manual_seed(4))).detach()
    assert bright.abs().max() < 4  # brightness +-0.5, saturation x [0, 2), contrast x [0.5, 1.5)


def test_diffaugment_same_parameters_same_transform():
    """One draw applied to a real and a fake batch transforms both alike (the translation and the cutout square
    land in the same places); the generator's state replays the same draws."""
    real, fake = images(seed=5), images(seed=6)
    p = sample(ALL, 4, 32, 32, torch.Generator().manual_seed(7))
    a, b = apply(real, p), apply(fake, p)
    assert torch.equal(apply(real, p), a)
    assert torch.equal((a == 0).all(1), (b == 0).all(1))  # the same pixels cut out and padded
    aug = DiffAugment(ALL, seed=8)
    state = aug.state_dict()
    first = aug(real, "a")
    aug.load_state_dict(state)
    assert torch.equal(aug(real, "a"), first)
    assert torch.equal(DiffAugment(ALL, domains=("b",), seed=8)(real, "a"), real)  # not this domain: untouched
    with pytest.raises(ValueError, match="unknown DiffAugment policy"):
        DiffAugment(("colour",))


def _one_step(augment) -> tuple[dict, dict]:
    config = tiny_config()
    gens, discs = build_pairs(config.model, config.seed)
    t = config.train
    opt_G = torch.optim.Adam(gens.parameters(), lr=t.lr, betas=(t.beta1, t.beta2))
    opt_D = torch.optim.Adam(discs.parameters(), lr=t.lr, betas=(t.beta1, t.beta2))
    parts = StepParts(gens, discs, discs, opt_G, opt_D, ImagePool(0), ImagePool(0), config.loss, augment=augment)
    losses = train_step(parts, *global_batch(0, 2, data_seed=1))
    return {k: float(v) for k, v in losses.items()}, {k: v.clone() for k, v in gens.state_dict().items()}


def test_diffaugment_off_is_the_reference_step_bit_for_bit_and_on_changes_it():
    torch.manual_seed(0)
    plain = _one_step(None)
    torch.manual_seed(0)
    off = _one_step(DiffAugment((), seed=0))
    assert plain[0] == off[0] and all(torch.equal(plain[1][k], off[1][k]) for k in plain[1])
    torch.manual_seed(0)
    on = _one_step(DiffAugment(ALL, seed=0))
    assert on[0]["loss/D"] != plain[0]["loss/D"] and on[0]["loss/cycle_A"] == plain[0]["loss/cycle_A"]


# ------------------------------------------------------------------------------------------------ EMA


def test_ema_update_rule_and_round_trip():
    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema = GeneratorEMA(net, decay=0.75)
    for value in (2.0, 4.0, 8.0):  # the first update copies, then ema = 0.75 ema + 0.25 w
        with torch.no_grad():
            net.weight.fill_(value)
        ema.update(net)
    assert torch.allclose(ema.generators.weight, torch.full((1, 2), (0.75 * 2 + 0.25 * 4) * 0.75 + 0.25 * 8))
    again = GeneratorEMA(net, decay=0.75)
    again.load_state_dict(ema.state_dict())
    assert torch.equal(again.generators.weight, ema.generators.weight)
    assert again.state_dict()["n_averaged"] == 3
    with pytest.raises(ValueError):
        GeneratorEMA(net, decay=1.0)


def test_ema_warmup_follows_the_stylegan_rule_and_survives_a_reload():
    """beta_n = min(decay, 0.5 ** (1 / (rampup * n))): the average's half-life is at most rampup x the steps so far,
    so on a weight that grows linearly the warmed-up EMA lags by about a constant fraction of the run, the plain one
    by ~1 / (1 - decay) steps; a reloaded average continues with the same beta."""
    decay, rampup, steps = 0.99, 0.05, 300
    net = torch.nn.Linear(1, 1, bias=False)
    warm, plain = GeneratorEMA(net, decay, rampup), GeneratorEMA(net, decay)
    expected, betas = None, []
    for t in range(1, steps + 1):
        with torch.no_grad():
            net.weight.fill_(float(t))
        if expected is not None:
            betas.append(warm.beta)
        warm.update(net)
        plain.update(net)
        if expected is None:
            expected = float(t)
        else:  # by hand, in float64: beta from the half-life rule
            beta = min(decay, 0.5 ** (1 / (rampup * (t - 1))))
            expected = beta * expected + (1 - beta) * t
    assert betas[0] == pytest.approx(0.5 ** 20) and betas[-1] < decay and betas == sorted(betas)
    assert warm.generators.weight.item() == pytest.approx(expected, rel=1e-5)
    lag_warm, lag_plain = steps - warm.generators.weight.item(), steps - plain.generators.weight.item()
    assert 0 < lag_warm < 0.1 * steps < lag_plain  # warmed up: ~7% of the run behind; plain: ~100 steps behind
    again = GeneratorEMA(net, decay, rampup)
    again.load_state_dict(warm.state_dict())
    assert again.updates == steps and again.beta == warm.beta
    assert GeneratorEMA(net, 0.5, rampup=1000.0).beta == 0.5  # the warm-up never exceeds the configured decay


def test_resume_is_exact_with_ema_and_diffaugment_and_export_uses_the_ema(tmp_path):
    common = [*TINY, "train.log_every=1", "train.checkpoint_every=2", "loss.pool_size=3", "train.ema_decay=0.9",
              "loss.diffaugment=color,translation,cutout", "train.steps=8"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_cli("train", "--config", "smoke", "--run-dir", straight, "--set", *common)
    run_cli("train", "--config", "smoke", "--run-dir", split, "--stop-after", "3", "--set", *common)
    run_cli("train", "--config", "smoke", "--run-dir", split, "--set", *common)
    a, b = latest_checkpoint(straight), latest_checkpoint(split)
    for name in ("G_A.safetensors", "G_B.safetensors", "G_A_ema.safetensors", "G_B_ema.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs after resume"
    raw, ema = load_file(a / "G_A.safetensors"), load_file(a / "G_A_ema.safetensors")
    assert raw.keys() == ema.keys() and any(not torch.equal(raw[k], ema[k]) for k in raw)

    def export(*flags):
        out = tmp_path / f"x{len(flags)}.zip"
        run_cli("export", "--checkpoint", straight, "--photos", f"{ensure_demo_shards(size=40)}/photo-*.tar",
                "--out", out, "--limit", "2", "--quiet", *flags)
        with zipfile.ZipFile(out) as z:
            return {n: z.read(n) for n in z.namelist()}

    by_ema, by_raw = export(), export("--raw-weights")
    assert by_ema.keys() == by_raw.keys() and by_ema != by_raw  # EMA by default; --raw-weights the trained ones
    summary = result_json(run_cli("train", "--json", "--config", "smoke", "--run-dir", straight, "--set",
                                  *common).stdout)
    assert summary["status"] == "completed" and summary["step"] == 8  # nothing left to train


# ------------------------------------------------------------------------------------------------ strokes


def test_strokes_style_deterministic_and_held_out_pairs_disjoint(tmp_path):
    rng = np.random.default_rng(0)
    crop = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    assert np.array_equal(strokes(crop), strokes(crop.copy())) and not np.array_equal(strokes(crop), colour(crop))
    kw = dict(size=32, n_train=40, n_test=8, n_paintings=10, style="strokes")
    a, b = ensure_demo_shards(tmp_path / "a", **kw), ensure_demo_shards(tmp_path / "b", **kw)
    for name in sorted(p.name for p in a.iterdir()):  # byte-identical builds
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    demo = json.loads((a / "index.json").read_text())["demo"]
    assert demo["style"] == "strokes" and demo["transform"] == "strokes-v1"
    pairs = np.load(a / "eval-pairs.npy")
    x, t = pairs
    assert np.array_equal(t, np.stack([strokes(c) for c in x]))
    train = np.stack([image for domain in ("photo", "painting") for _, image in ImageSource(a, domain=domain)])
    train = train.astype(np.float64)
    held = x.astype(np.float64)
    rms = np.sqrt(((held[:, None] - train[None]) ** 2).mean(axis=(2, 3, 4)))
    assert rms.min() > 8, "a held-out crop is (nearly) a training image"
