"""An exponential moving average of the generators (``train.ema_decay`` > 0): what sample grids, the in-training
FID/MiFID, ``export`` and ``collect`` use by default (``--raw-weights`` picks the trained ones).

Built on torch's public ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``: a copy of the
GeneratorPair kept in fp32 outside DDP, updated after every generator step as ``ema = beta * ema + (1 - beta) *
weights`` (the first update copies the weights). Its state, with the update count, is saved in every checkpoint, so
a resumed run continues the same average.

The warm-up (``train.ema_rampup``, the StyleGAN2-ADA rule): the average's half-life, in images, is at most
``ema_rampup`` x the images seen so far, so at update ``n`` (>= 1 after the first copy)

    beta_n = min(ema_decay, 0.5 ** (1 / (ema_rampup * n)))

(the batch size cancels out: n steps of B images, a half-life of rampup x n x B images). Early in a run the EMA
follows the generator closely (its horizon is a few percent of the run); once ``0.5 ** (1 / (rampup * n))`` passes
``ema_decay`` it is the plain EMA. ``ema_rampup`` = 0 turns the warm-up off.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def ema_beta(decay: float, rampup: float, updates: int) -> float:
    """The averaging weight of the ``updates``-th update after the first copy (see the module docstring)."""
    if rampup <= 0:
        return decay
    return min(decay, 0.5 ** (1.0 / (rampup * max(updates, 1))))


class GeneratorEMA:
    def __init__(self, generators: nn.Module, decay: float, rampup: float = 0.0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be within (0, 1), got {decay}")
        if rampup < 0:
            raise ValueError(f"EMA rampup must be >= 0, got {rampup}")
        self.decay, self.rampup = decay, rampup
        self.updates = 0  # kept on the host (the average's n_averaged lives on the device: no sync per step)
        self.average = AveragedModel(generators, multi_avg_fn=self._average, use_buffers=True)
        self.average.requires_grad_(False)

    def _average(self, averaged, current, num_averaged) -> None:
        get_ema_multi_avg_fn(ema_beta(self.decay, self.rampup, self.updates))(averaged, current, num_averaged)

    @property
    def beta(self) -> float:
        """The weight the next update gives the average."""
        return ema_beta(self.decay, self.rampup, self.updates)

    @property
    def generators(self) -> nn.Module:
        """The averaged GeneratorPair (``.G_A``, ``.G_B``), for inference."""
        return self.average.module

    @torch.no_grad()
    def update(self, generators: nn.Module) -> None:
        self.average.update_parameters(generators)
        self.updates += 1

    def state_dict(self) -> dict:
        return self.average.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.average.load_state_dict(state)
        self.updates = int(self.average.n_averaged)
