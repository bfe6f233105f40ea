"""Models: junyanz-compatible layout and sizes, shapes, precision/memory formats, init, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cyclegan_dist.errors import UserError
from cyclegan_dist.models import (
    DISCRIMINATORS,
    GENERATORS,
    NORMS,
    build_discriminator,
    build_generator,
    count_parameters,
    init_weights,
)


def meta(build, *args, **kwargs) -> nn.Module:
    """Build without allocating or initialising weights (counts and keys only)."""
    with torch.device("meta"):
        return build(*args, **kwargs)


def keys(net: nn.Module) -> list[str]:
    return list(net.state_dict())


# --------------------------------------------------------------------------------- sizes and layout


def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def test_required_parameter_counts() -> None:
    assert count_parameters(meta(build_generator, "resnet_9blocks")) == 11_378_179
    assert count_parameters(meta(build_generator, "unet_256")) == 54_409_603
    assert count_parameters(meta(build_discriminator, "basic")) == 2_764_737


def test_parameter_counts_follow_reference_formula() -> None:
    # ResNet: each residual block is two 3x3 256->256 convs with bias (InstanceNorm => use_bias).
    block = 2 * conv(256, 256, 3)
    assert count_parameters(meta(build_generator, "resnet_6blocks")) == 11_378_179 - 3 * block
    # U-Net: unet_128 has one 8ngf middle level less: down conv 512->512, up convT 1024->512, 4x4.
    level = conv(512, 512, 4) + conv(1024, 512, 4)
    assert count_parameters(meta(build_generator, "unet_128")) == 54_409_603 - level
    # PatchGAN with 3 layers written out: C64 C128 C256 C512(stride 1) -> 1.
    basic = conv(3, 64, 4) + conv(64, 128, 4) + conv(128, 256, 4) + conv(256, 512, 4) + conv(512, 1, 4)
    assert basic == 2_764_737
    assert count_parameters(meta(build_discriminator, "n_layers", n_layers=3)) == basic
    assert count_parameters(meta(build_discriminator, "pixel")) == conv(3, 64, 1) + conv(64, 128, 1) + conv(128, 1, 1)


def test_resnet_key_layout() -> None:
    sd = meta(build_generator, "resnet_9blocks").state_dict()
    ks = list(sd)
    assert ks[0] == "model.1.weight" and ks[-1] == "model.26.bias"
    assert "model.10.conv_block.1.weight" in sd and "model.18.conv_block.5.weight" in sd
    assert sd["model.10.conv_block.5.weight"].shape == (256, 256, 3, 3)
    assert sd["model.19.weight"].shape == (256, 128, 3, 3)  # ConvTranspose2d: (in, out, k, k)
    assert sd["model.22.weight"].shape == (128, 64, 3, 3)
    assert sd["model.26.weight"].shape == (3, 64, 7, 7)
    # InstanceNorm(affine=False, track_running_stats=False) has no state at all.
    assert not any(k.startswith("model.2.") for k in ks)
    dropout = keys(meta(build_generator, "resnet_6blocks", use_dropout=True))
    assert "model.10.conv_block.6.weight" in dropout and "model.10.conv_block.5.weight" not in dropout


def test_unet_key_layout() -> None:
    sd = meta(build_generator, "unet_256").state_dict()
    ks = list(sd)
    assert ks[:3] == ["model.model.0.weight", "model.model.0.bias", "model.model.1.model.1.weight"]
    innermost = "model.model.1" + ".model.3" * 6  # 8 levels: outermost, 6 in between, innermost
    assert sd[innermost + ".model.1.weight"].shape == (512, 512, 4, 4)  # innermost down conv
    assert sd[innermost + ".model.3.weight"].shape == (512, 512, 4, 4)  # innermost up convT (no skip)
    assert innermost + ".model.3.model.1.weight" not in sd
    assert sd["model.model.1.model.5.weight"].shape == (256, 64, 4, 4)  # convT 2*2ngf -> ngf
    assert sd["model.model.3.weight"].shape == (128, 3, 4, 4)  # outermost convT, biased
    assert "model.model.3.bias" in sd
    assert len(ks) == 32
    assert len(keys(meta(build_generator, "unet_128"))) == 28


def test_discriminator_key_layout() -> None:
    sd = meta(build_discriminator, "basic").state_dict()
    assert list(sd) == [f"model.{i}.{p}" for i in (0, 2, 5, 8, 11) for p in ("weight", "bias")]
    assert sd["model.11.weight"].shape == (1, 512, 4, 4)
    assert keys(meta(build_discriminator, "pixel"))[0] == "net.0.weight"


def test_norm_variants_follow_reference_use_bias() -> None:
    batch = meta(build_generator, "resnet_6blocks", norm="batch").state_dict()
    assert "model.1.bias" not in batch  # BatchNorm => no conv bias
    assert {"model.2.weight", "model.2.bias", "model.2.running_mean", "model.2.num_batches_tracked"} <= set(batch)
    none = meta(build_generator, "resnet_6blocks", norm="none").state_dict()
    assert "model.1.bias" not in none and "model.2.weight" not in none  # reference: use_bias only for instance
    assert "model.23.bias" in none  # the final conv always has a bias (index 23 with 6 blocks)
    assert isinstance(meta(build_generator, "resnet_6blocks", norm="none").model[2], nn.Identity)


# ------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("resnet_9blocks", 256),
        ("resnet_6blocks", 128),
        ("resnet_6blocks", 64),
        ("unet_256", 256),
        ("unet_128", 128),
        ("unet_64", 64),
        ("unet_32", 32),
    ],
)
def test_generator_keeps_spatial_size(name: str, size: int) -> None:
    g = build_generator(name, ngf=4).eval()
    with torch.no_grad():
        y = g(torch.randn(1, 3, size, size))
    assert y.shape == (1, 3, size, size)
    assert y.abs().max() <= 1.0  # Tanh


def test_resnet_non_square_and_channels() -> None:
    g = build_generator("resnet_6blocks", input_nc=1, output_nc=2, ngf=4)
    assert g(torch.randn(2, 1, 36, 52)).shape == (2, 2, 36, 52)


def test_discriminator_output_shapes() -> None:
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert build_discriminator("basic", ndf=4)(x).shape == (1, 1, 30, 30)  # the 70x70 PatchGAN grid
        assert build_discriminator("n_layers", ndf=4, n_layers=2)(x).shape == (1, 1, 62, 62)
        assert build_discriminator("pixel", ndf=4)(x).shape == (1, 1, 256, 256)


@pytest.mark.parametrize(("name", "size"), [("resnet_6blocks", 32), ("unet_32", 32)])
def test_channels_last_and_bf16_autocast(name: str, size: int) -> None:
    torch.manual_seed(0)
    g = init_weights(build_generator(name, ngf=8)).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, size, size).to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = g(x.contiguous())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = g(x)
    assert y.shape == x.shape and y.dtype == torch.bfloat16
    assert torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() < 0.1
    y.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in g.parameters())


def test_dropout_flag() -> None:
    r = build_generator("resnet_6blocks", ngf=4, use_dropout=True)
    assert any(isinstance(m, nn.Dropout) for m in r.modules())
    assert not any(isinstance(m, nn.Dropout) for m in build_generator("resnet_6blocks", ngf=4).modules())
    u = build_generator("unet_128", ngf=4, use_dropout=True)
    assert sum(isinstance(m, nn.Dropout) for m in u.modules()) == 2  # the num_downs - 5 middle levels


# ---------------------------------------------------------------------------------------- init


def test_normal_init_statistics() -> None:
    g = init_weights(build_generator("resnet_6blocks", ngf=16, norm="batch"), "normal", 0.02)
    w = g.model[10].conv_block[1].weight  # 64*64*9 values
    assert abs(w.mean().item()) < 2e-3 and abs(w.std().item() - 0.02) < 1e-3
    bn = g.model[2]
    assert abs(bn.weight.mean().item() - 1.0) < 0.01 and bn.bias.abs().max() == 0
    assert g.model[23].bias.abs().max() == 0


@pytest.mark.parametrize("init_type", ["normal", "xavier", "kaiming", "orthogonal"])
def test_init_deterministic_with_generator(init_type: str) -> None:
    nets = [build_discriminator("basic", ndf=8, norm="batch") for _ in range(3)]  # construction uses the global RNG
    before = torch.get_rng_state()
    a, b, c = (
        init_weights(net, init_type, generator=torch.Generator().manual_seed(seed)).state_dict()
        for net, seed in zip(nets, (0, 0, 1))
    )
    assert torch.equal(before, torch.get_rng_state())  # init does not touch the global RNG
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.0.weight"], c["model.0.weight"])
    assert all(a[k].abs().max() == 0 for k in a if k.endswith("bias"))


def test_init_matches_reference_order_with_global_seed() -> None:
    """Seeded generator == global seed + the reference ``net.apply(init_func)`` (same draws, same order)."""
    ours = init_weights(build_generator("unet_32", ngf=4, norm="batch"), generator=torch.Generator().manual_seed(3))

    def reference_init(m: nn.Module) -> None:  # the reference rule, by class name
        name = m.__class__.__name__
        if hasattr(m, "weight") and ("Conv" in name or "Linear" in name):
            nn.init.normal_(m.weight.data, 0.0, 0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias.data, 0.0)
        elif "BatchNorm2d" in name:
            nn.init.normal_(m.weight.data, 1.0, 0.02)
            nn.init.constant_(m.bias.data, 0.0)

    ref = build_generator("unet_32", ngf=4, norm="batch")
    torch.manual_seed(3)
    ref.apply(reference_init)
    a, b = ours.state_dict(), ref.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- state_dict round trip


@pytest.mark.parametrize(
    ("kind", "name", "norm"),
    [
        ("G", "resnet_6blocks", "instance"),
        ("G", "unet_32", "batch"),
        ("D", "basic", "instance"),
        ("D", "pixel", "none"),
    ],
)
def test_state_dict_round_trip(kind: str, name: str, norm: str) -> None:
    build = (
        (lambda: build_generator(name, ngf=4, norm=norm))
        if kind == "G"
        else (lambda: build_discriminator(name, ndf=4, norm=norm))
    )
    a = init_weights(build(), generator=torch.Generator().manual_seed(0))
    if norm == "batch":  # give the running stats non-default values
        a.train()
        with torch.no_grad():
            a(torch.randn(2, 3, 32, 32))
    b = build()
    b.load_state_dict(a.state_dict(), strict=True)
    a.eval(), b.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_legacy_instance_norm_stats_are_ignored_on_load() -> None:
    """Old reference checkpoints carry InstanceNorm running stats; they load with strict=True."""
    g = build_generator("resnet_6blocks", ngf=4)
    sd = g.state_dict()
    for prefix in ("model.2.", "model.10.conv_block.2."):
        sd[prefix + "running_mean"] = torch.zeros(4 if prefix == "model.2." else 16)
        sd[prefix + "running_var"] = torch.ones(4 if prefix == "model.2." else 16)
        sd[prefix + "num_batches_tracked"] = torch.tensor(0)
    build_generator("resnet_6blocks", ngf=4).load_state_dict(sd, strict=True)
    assert "model.2.running_mean" in sd  # the caller's dict is not modified
    sd["model.1.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="model.1.extra"):
        build_generator("resnet_6blocks", ngf=4).load_state_dict(sd, strict=True)


# ---------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "bad", "valid"),
    [
        (lambda: build_generator("resnet_12blocks"), "resnet_12blocks", GENERATORS),
        (lambda: build_generator("unet_256", norm="group"), "group", NORMS),
        (lambda: build_discriminator("multiscale"), "multiscale", DISCRIMINATORS),
        (lambda: build_discriminator(norm="layer"), "layer", NORMS),
        (lambda: init_weights(nn.Conv2d(1, 1, 1), "uniform"), "uniform", ("normal", "xavier", "kaiming", "orthogonal")),
    ],
)
def test_unknown_names_raise_user_error(call, bad: str, valid: tuple[str, ...]) -> None:
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert repr(bad) in message and all(v in message for v in valid)


def test_bad_sizes_raise_user_error() -> None:
    with pytest.raises(UserError, match="ngf"):
        build_generator("resnet_6blocks", ngf=0)
    with pytest.raises(UserError, match="n_layers"):
        build_discriminator("n_layers", n_layers=0)


def test_instance_norm_gradient_is_right_for_channels_last_at_batch_one():
    """torch's CPU instance_norm backward is wrong for a channels_last gradient at batch 1; ours is not."""
    from cyclegan_dist.models.generators import InstanceNorm2d

    torch.manual_seed(0)
    x = torch.randn(1, 16, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(1, 16, 8, 8)
    norm = InstanceNorm2d(16, affine=False, track_running_stats=False)
    (expected,) = torch.autograd.grad(norm(x), x, g)
    (got,) = torch.autograd.grad(norm(x), x, g.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, expected, atol=1e-6)
    net = build_generator("resnet_6blocks", ngf=4)
    inp = torch.randn(1, 3, 16, 16)
    grads = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        net.zero_grad()
        net.to(memory_format=fmt)(inp.contiguous(memory_format=fmt)).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-6)
