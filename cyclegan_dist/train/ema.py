"""An exponential moving average of the generators (``train.ema_decay`` > 0): what sample grids, the in-training
FID/MiFID, ``export`` and ``collect`` use by default (``--raw-weights`` picks the trained ones).

Built on torch's public ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn(decay)``: a copy of
the GeneratorPair kept in fp32 outside DDP, updated after every generator step as ``ema = decay * ema +
(1 - decay) * weights`` (the first update copies the weights). Its state is saved in every checkpoint, so a
resumed run continues the same average.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class GeneratorEMA:
    def __init__(self, generators: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be within (0, 1), got {decay}")
        self.decay = decay
        self.average = AveragedModel(generators, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.average.requires_grad_(False)

    @property
    def generators(self) -> nn.Module:
        """The averaged GeneratorPair (``.G_A``, ``.G_B``), for inference."""
        return self.average.module

    @torch.no_grad()
    def update(self, generators: nn.Module) -> None:
        self.average.update_parameters(generators)

    def state_dict(self) -> dict:
        return self.average.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.average.load_state_dict(state)
