import math

import torch

from cyclegan_dist.image_pool import ImagePool
from cyclegan_dist.losses import gan_loss, l1_loss
from cyclegan_dist.train.schedule import lr_factor, scaled_lr


def test_lsgan_on_known_inputs():
    pred = torch.tensor([[0.0, 1.0], [0.5, 2.0]])
    assert gan_loss(pred, True, "lsgan").item() == (1 + 0 + 0.25 + 1) / 4
    assert gan_loss(pred, False, "lsgan").item() == (0 + 1 + 0.25 + 4) / 4


def test_vanilla_is_bce_on_logits():
    pred = torch.tensor([0.0, 2.0])
    expected = (-math.log(0.5) - math.log(1 / (1 + math.exp(-2.0)))) / 2
    assert abs(gan_loss(pred, True, "vanilla").item() - expected) < 1e-6


def test_losses_run_in_fp32_under_bf16():
    a = torch.randn(2, 3, 4, 4).bfloat16()
    assert gan_loss(a, True).dtype == torch.float32 and l1_loss(a, a * 0).dtype == torch.float32
    assert abs(l1_loss(torch.ones(4), torch.zeros(4)).item() - 1.0) < 1e-7


def test_pool_fills_then_mixes_and_is_reproducible():
    def run(seed):
        pool, outs = ImagePool(3, seed=seed), []
        for i in range(20):
            outs.append(pool.query(torch.full((1, 1, 2, 2), float(i))).flatten()[0].item())
        return outs

    first = run(0)
    assert first[:3] == [0.0, 1.0, 2.0]  # filling: returned unchanged
    assert any(v < i for i, v in enumerate(first))  # later: sometimes an older image comes back
    assert run(0) == first and run(1) != first


def test_pool_state_round_trip():
    pool = ImagePool(4, seed=0)
    for i in range(6):
        pool.query(torch.full((2, 1, 2, 2), float(i)))
    copy = ImagePool(4, seed=99)
    copy.load_state_dict(pool.state_dict())
    x = torch.full((3, 1, 2, 2), 7.0)
    assert torch.equal(pool.query(x), copy.query(x))


def test_pool_size_zero_is_identity():
    x = torch.randn(2, 3, 4, 4)
    assert ImagePool(0).query(x) is x


def test_schedule_constant_then_linear():
    total = 200
    assert lr_factor(0, total, 0.5) == 1.0 and lr_factor(100, total, 0.5) == 1.0
    assert abs(lr_factor(150, total, 0.5) - (1 - 50 / 101)) < 1e-12
    assert 0 < lr_factor(199, total, 0.5) < 0.02
    values = [lr_factor(s, total, 0.5) for s in range(total)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert lr_factor(0, 10, 1.0) == 1.0 and lr_factor(1, 10, 1.0) < 1.0 and lr_factor(9, 10, 0.0) == 1.0


def test_lr_scaling_with_world_size():
    assert scaled_lr(2e-4, "none", 8) == 2e-4
    assert scaled_lr(2e-4, "linear", 8) == 2e-4 * 8
    assert abs(scaled_lr(2e-4, "sqrt", 4) - 4e-4) < 1e-15
