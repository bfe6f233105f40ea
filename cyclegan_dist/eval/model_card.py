"""Model cards: what an exported generator is, how it was trained and how to load it, beside its files.

:func:`write_model_card` writes three files into a directory that :func:`cyclegan_dist.models.io.export_generator`
filled (``generator.safetensors`` + ``generator.yaml``, maybe ``generator.onnx`` / ``generator.torchscript.pt``):

* ``model_card.yaml``: the facts, for programs (``yaml.safe_load``); ``null`` where a fact is unknown
  (:mod:`cyclegan_dist.eval.card_facts` gathers them);
* ``MODEL_CARD.md``: the same facts for people, with how to load the generator in a few lines of plain PyTorch
  (and onnxruntime when ``generator.onnx`` is there), the intended use and the limits
  (:mod:`cyclegan_dist.eval.card_markdown`);
* ``samples.png``: a few real photos and their translations (:mod:`cyclegan_dist.eval.card_samples`). A grid that
  fails never fails the card: the card says that it is missing, and why.

Both texts are rendered from one dict of facts. This module is the one entry point (``export --generator-only``
and the launcher's ``collect`` call it) and the order of the writes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cyclegan_dist.errors import UserError
from cyclegan_dist.eval.card_facts import CARD_YAML, card_facts
from cyclegan_dist.eval.card_markdown import CARD_MD, render_markdown
from cyclegan_dist.eval.card_samples import N_SAMPLES, SAMPLES_PNG, write_samples
from cyclegan_dist.models.io import EXPORT_WEIGHTS, load_generator
from cyclegan_dist.rundir import atomic_write

__all__ = ["CARD_MD", "CARD_YAML", "SAMPLES_PNG", "write_model_card"]


def write_model_card(out_dir: str | os.PathLike, source: str | os.PathLike, *, direction: str = "AtoB",
                     raw_weights: bool = False, gpu_hours: float | None = None, gpu_hours_how: str | None = None,
                     submission: Mapping[str, Any] | None = None, n_samples: int = N_SAMPLES) -> Path:
    """Write ``model_card.yaml``, ``samples.png`` and ``MODEL_CARD.md`` into ``out_dir`` (an export directory)
    about the generator exported there from ``source`` (what ``export --generator-only`` or ``collect`` started
    from: a run or checkpoint directory, a weights file). ``gpu_hours`` (and how they were counted) come from the
    caller when it knows them; ``submission`` (e.g. ``{"file": ..., "images": ...}``) from ``collect``.
    Returns the path of ``MODEL_CARD.md``."""
    out = Path(out_dir).expanduser()
    if not (out / EXPORT_WEIGHTS).is_file():
        raise UserError(f"{out} holds no {EXPORT_WEIGHTS}: export the generator there first "
                        "(python -m cyclegan_dist export --generator-only DIR), then write its card")
    net, arch = load_generator(out)
    facts = card_facts(out, source, net, arch, direction=direction, raw_weights=raw_weights, gpu_hours=gpu_hours,
                       gpu_hours_how=gpu_hours_how, submission=submission)
    facts["samples"] = write_samples(out, net, facts, n_samples)
    atomic_write(out / CARD_YAML, f"# model card of {facts['name']} (the same facts as {CARD_MD})\n"
                 + yaml.safe_dump(facts, sort_keys=False, allow_unicode=True))
    return atomic_write(out / CARD_MD, render_markdown(facts))
