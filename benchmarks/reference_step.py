"""The baseline: one CycleGAN step written the way junyanz/pytorch-CycleGAN-and-pix2pix writes it.

A plain-PyTorch transcription of the reference ``CycleGANModel`` (``models/cycle_gan_model.py``), its
``GANLoss`` and ``ImagePool`` (``models/networks.py``, ``util/image_pool.py``): fp32, no Accelerate, no
autocast, one Adam over ``chain(G_A, G_B)`` and one over ``chain(D_A, D_B)``::

    forward()                                  # fake_B, rec_A, fake_A, rec_B
    set_requires_grad([D_A, D_B], False)
    optimizer_G.zero_grad(); backward_G(); optimizer_G.step()
    set_requires_grad([D_A, D_B], True)
    optimizer_D.zero_grad(); backward_D_A(); backward_D_B(); optimizer_D.step()

It uses the project's own network classes (same ``state_dict`` layout as the reference), built by
``build_pairs`` from the same seed, so the math is the same as ``cyclegan_dist.train.step.train_step`` and
the two can be compared weight for weight (see ``benchmarks.step``'s math check).
"""

from __future__ import annotations

import itertools
import random

import torch
from torch import nn

from cyclegan_dist.config import Config


class GANLoss(nn.Module):
    """The reference GANLoss: targets are 0-dim buffers expanded to the prediction's shape."""

    def __init__(self, gan_mode: str, target_real_label: float = 1.0, target_fake_label: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("real_label", torch.tensor(target_real_label))
        self.register_buffer("fake_label", torch.tensor(target_fake_label))
        if gan_mode == "lsgan":
            self.loss = nn.MSELoss()
        elif gan_mode == "vanilla":
            self.loss = nn.BCEWithLogitsLoss()
        else:
            raise NotImplementedError(f"gan mode {gan_mode} not implemented")

    def forward(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        target = (self.real_label if target_is_real else self.fake_label).expand_as(prediction)
        return self.loss(prediction, target)


class ImagePool:
    """The reference ImagePool (python ``random``; an own ``random.Random`` here, for reproducibility)."""

    def __init__(self, pool_size: int, seed: int = 0) -> None:
        self.pool_size = pool_size
        self.num_imgs = 0
        self.images: list[torch.Tensor] = []
        self.random = random.Random(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.pool_size == 0:
            return images
        return_images = []
        for image in images:
            image = torch.unsqueeze(image.data, 0)
            if self.num_imgs < self.pool_size:
                self.num_imgs += 1
                self.images.append(image)
                return_images.append(image)
            elif self.random.uniform(0, 1) > 0.5:
                random_id = self.random.randint(0, self.pool_size - 1)
                tmp = self.images[random_id].clone()
                self.images[random_id] = image
                return_images.append(tmp)
            else:
                return_images.append(image)
        return torch.cat(return_images, 0)


class ReferenceCycleGAN:
    """``CycleGANModel`` for training: ``set_input`` then ``optimize_parameters``."""

    def __init__(self, G_A: nn.Module, G_B: nn.Module, D_A: nn.Module, D_B: nn.Module, device, *,
                 lr: float = 2e-4, beta1: float = 0.5, lambda_A: float = 10.0, lambda_B: float = 10.0,
                 lambda_identity: float = 0.5, pool_size: int = 50, gan_mode: str = "lsgan", seed: int = 0) -> None:
        self.device = torch.device(device)
        self.netG_A, self.netG_B = G_A.to(self.device), G_B.to(self.device)
        self.netD_A, self.netD_B = D_A.to(self.device), D_B.to(self.device)
        self.lambda_A, self.lambda_B, self.lambda_idt = lambda_A, lambda_B, lambda_identity
        self.fake_A_pool = ImagePool(pool_size, seed=2 * seed)
        self.fake_B_pool = ImagePool(pool_size, seed=2 * seed + 1)
        self.criterionGAN = GANLoss(gan_mode).to(self.device)
        self.criterionCycle = nn.L1Loss()
        self.criterionIdt = nn.L1Loss()
        self.optimizer_G = torch.optim.Adam(itertools.chain(self.netG_A.parameters(), self.netG_B.parameters()),
                                            lr=lr, betas=(beta1, 0.999))
        self.optimizer_D = torch.optim.Adam(itertools.chain(self.netD_A.parameters(), self.netD_B.parameters()),
                                            lr=lr, betas=(beta1, 0.999))

    def set_input(self, real_A: torch.Tensor, real_B: torch.Tensor) -> None:
        self.real_A = real_A.to(self.device)
        self.real_B = real_B.to(self.device)

    def forward(self) -> None:
        self.fake_B = self.netG_A(self.real_A)  # G_A(A)
        self.rec_A = self.netG_B(self.fake_B)  # G_B(G_A(A))
        self.fake_A = self.netG_B(self.real_B)  # G_B(B)
        self.rec_B = self.netG_A(self.fake_A)  # G_A(G_B(B))

    def backward_D_basic(self, netD: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        pred_real = netD(real)
        loss_D_real = self.criterionGAN(pred_real, True)
        pred_fake = netD(fake.detach())
        loss_D_fake = self.criterionGAN(pred_fake, False)
        loss_D = (loss_D_real + loss_D_fake) * 0.5
        loss_D.backward()
        return loss_D

    def backward_D_A(self) -> None:
        fake_B = self.fake_B_pool.query(self.fake_B)
        self.loss_D_A = self.backward_D_basic(self.netD_A, self.real_B, fake_B)

    def backward_D_B(self) -> None:
        fake_A = self.fake_A_pool.query(self.fake_A)
        self.loss_D_B = self.backward_D_basic(self.netD_B, self.real_A, fake_A)

    def backward_G(self) -> None:
        lambda_idt, lambda_A, lambda_B = self.lambda_idt, self.lambda_A, self.lambda_B
        if lambda_idt > 0:
            self.idt_A = self.netG_A(self.real_B)
            self.loss_idt_A = self.criterionIdt(self.idt_A, self.real_B) * lambda_B * lambda_idt
            self.idt_B = self.netG_B(self.real_A)
            self.loss_idt_B = self.criterionIdt(self.idt_B, self.real_A) * lambda_A * lambda_idt
        else:
            self.loss_idt_A = 0
            self.loss_idt_B = 0
        self.loss_G_A = self.criterionGAN(self.netD_A(self.fake_B), True)
        self.loss_G_B = self.criterionGAN(self.netD_B(self.fake_A), True)
        self.loss_cycle_A = self.criterionCycle(self.rec_A, self.real_A) * lambda_A
        self.loss_cycle_B = self.criterionCycle(self.rec_B, self.real_B) * lambda_B
        self.loss_G = (self.loss_G_A + self.loss_G_B + self.loss_cycle_A + self.loss_cycle_B + self.loss_idt_A
                       + self.loss_idt_B)
        self.loss_G.backward()

    @staticmethod
    def set_requires_grad(nets, requires_grad: bool = False) -> None:
        for net in nets if isinstance(nets, list) else [nets]:
            if net is not None:
                for param in net.parameters():
                    param.requires_grad = requires_grad

    def optimize_parameters(self) -> None:
        self.forward()
        self.set_requires_grad([self.netD_A, self.netD_B], False)
        self.optimizer_G.zero_grad()
        self.backward_G()
        self.optimizer_G.step()
        self.set_requires_grad([self.netD_A, self.netD_B], True)
        self.optimizer_D.zero_grad()
        self.backward_D_A()
        self.backward_D_B()
        self.optimizer_D.step()

    def parameters(self) -> dict[str, torch.Tensor]:
        """All weights by the names ``GeneratorPair``/``DiscriminatorPair`` give them (for the math check)."""
        out = {}
        for prefix, net in (("G_A", self.netG_A), ("G_B", self.netG_B), ("D_A", self.netD_A), ("D_B", self.netD_B)):
            out.update({f"{prefix}.{k}": v for k, v in net.named_parameters()})
        return out


def build_reference(config: Config, device) -> ReferenceCycleGAN:
    """The reference model for ``config``: the same four networks as ``build_pairs(config.model, config.seed)``
    (so the same initial weights), fp32, contiguous, with the reference's loss weights."""
    from cyclegan_dist.train.build import build_pairs

    loss, t = config.loss, config.train
    if loss.d_loss_weight != 0.5:
        raise ValueError("the reference step hard-codes the D loss weight 0.5")
    gens, discs = build_pairs(config.model, config.seed)
    lam = loss.lambda_cycle
    return ReferenceCycleGAN(
        gens.G_A, gens.G_B, discs.D_A, discs.D_B, device, lr=t.lr, beta1=t.beta1, lambda_A=lam, lambda_B=lam,
        lambda_identity=(loss.lambda_identity / lam) if lam else 0.0,  # ours is the effective weight
        pool_size=loss.pool_size, gan_mode=loss.gan_mode, seed=config.seed,
    )
