"""The facts of a model card, as one dict of plain YAML-able values (``None`` = unknown), and the file that holds
them for programs (``model_card.yaml``).

The facts come from what training left (read only): the checkpoint's ``config.yaml`` (else the run's), its
``complete`` marker (step, world size), the run's ``metrics.jsonl`` (the FID/MiFID of the checkpoint's step, else of
the last evaluation before it), the shard root's ``index.json`` (domains and counts; the demo set's counts come from
the config). GPU-hours are the caller's (the launcher's job records); without them,
:func:`cyclegan_dist.eval.report.summarize` estimates them from the metrics. A bare weights file (no run around it)
gets the facts its files tell and ``None`` for the rest. :mod:`cyclegan_dist.eval.model_card` writes them.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cyclegan_dist.config import DataConfig, read_yaml_mapping
from cyclegan_dist.data.demo import DOMAINS as DEMO_DOMAINS
from cyclegan_dist.data.shards import read_index
from cyclegan_dist.errors import UserError
from cyclegan_dist.eval.formats import FILE_NAMES, size_unit
from cyclegan_dist.models import count_parameters
from cyclegan_dist.models.io import ARCH_KEYS, EXPORT_ARCH, EXPORT_WEIGHTS, generator_file
from cyclegan_dist.rundir import CHECKPOINTS, COMPLETE, CONFIG, RunDir, read_json

CARD_YAML = "model_card.yaml"
CARD_VERSION = 1


def card_facts(out: Path, source: str | os.PathLike, net: torch.nn.Module, arch: Any, *, direction: str = "AtoB",
               raw_weights: bool = False, gpu_hours: float | None = None, gpu_hours_how: str | None = None,
               submission: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The card's facts as plain YAML-able values (``None`` = unknown); ``samples`` is filled by the caller."""
    src = Path(source).expanduser().absolute()
    weights = generator_file(src, direction, raw_weights)
    checkpoint = _checkpoint_of(weights)
    run = _run_of(checkpoint)
    config = _config_of(checkpoint, run, weights)
    marker = read_json(checkpoint / COMPLETE) if checkpoint else None
    step = marker.get("step") if marker else None
    records = RunDir(run).metrics() if run else []
    data = data_facts(config, direction)
    experiment = _get(config, "experiment")
    name = f"{experiment}/{run.name}" if run and experiment else (run.name if run else src.name)
    ema = weights.name.endswith("_ema.safetensors")
    if gpu_hours is None and run is not None:
        gpu_hours, gpu_hours_how = _estimated_gpu_hours(run)
    return {
        "model_card_version": CARD_VERSION,
        "name": name,
        "written": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "task": f"{data['input_domain']} -> {data['output_domain']}" if data["input_domain"] else None,
        "direction": direction,
        "generator": {**{k: getattr(arch, k) for k in ARCH_KEYS}, "parameters": count_parameters(net),
                      "size_unit": size_unit(arch.generator),
                      "weights": "EMA" if ema else ("trained (no EMA)" if checkpoint else None)},
        "files": [f for f in (EXPORT_WEIGHTS, EXPORT_ARCH, *FILE_NAMES.values()) if (out / f).is_file()],
        "source": {"path": str(src), "run": str(run) if run else None,
                   "checkpoint": checkpoint.name if checkpoint else None, "weights_file": weights.name},
        "training": training_facts(config, step, marker, records),
        "data": data,
        "compute": {"gpu_hours": None if gpu_hours is None else float(f"{float(gpu_hours):.4g}"),
                    "how": gpu_hours_how if gpu_hours is not None else None},
        "evaluation": evaluation_facts(records, step, config, ema, raw_weights),
        **({"submission": dict(submission)} if submission else {}),
        "samples": None,
    }


# ------------------------------------------------------------------------------------------------ the source


def _checkpoint_of(weights: Path) -> Path | None:
    """The complete checkpoint the weights come from (the one ``load_generator`` chose), if any."""
    return weights.parent if (weights.parent / COMPLETE).is_file() else None


def _run_of(checkpoint: Path | None) -> Path | None:
    if checkpoint is None or checkpoint.parent.name != CHECKPOINTS:
        return None
    run = checkpoint.parent.parent
    return run if (run / CONFIG).is_file() or RunDir(run).metrics_path.is_file() else None


def _config_of(checkpoint: Path | None, run: Path | None, weights: Path) -> dict[str, Any] | None:
    """The training config as written (raw mapping: a card also reads configs of other versions)."""
    places = [checkpoint / CONFIG if checkpoint else None, run / CONFIG if run else None,
              weights.parent / CONFIG if weights.suffix == ".safetensors" else None]
    for path in places:
        if path is not None and path.is_file():
            try:
                return read_yaml_mapping(path)
            except UserError:
                continue
    return None


def _get(config: Mapping[str, Any] | None, dotted: str, default: Any = None) -> Any:
    value: Any = config
    for key in dotted.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return default
        value = value[key]
    return value


# ------------------------------------------------------------------------------------------------ facts


def training_facts(config: Mapping[str, Any] | None, step: int | None, marker: Mapping[str, Any] | None,
                   records: list[dict[str, Any]]) -> dict[str, Any]:
    world = (marker or {}).get("world_size") or next(
        (r["world_size"] for r in reversed(records) if isinstance(r.get("world_size"), int)), None)
    batch = _get(config, "train.batch_size")
    # the metrics' count (right after a resume on another number of ranks, too), else steps x batch x ranks
    seen = next((r["images_seen"] for r in reversed(records)
                 if isinstance(r.get("images_seen"), int) and r.get("step") == step), None)
    if seen is not None and world:
        batch = seen // max(step, 1) // world if seen % (max(step, 1) * world) == 0 else batch
    return {
        "experiment": _get(config, "experiment"), "seed": _get(config, "seed"),
        "steps": step, "planned_steps": _get(config, "train.steps"),
        "batch_size_per_rank": batch, "world_size": world,
        "images_seen": seen if seen is not None else (step * batch * world if step is not None and batch and world
                                                     else None),
        "lr": _get(config, "train.lr"), "lr_scaling": _get(config, "train.lr_scaling"),
        "lr_decay_fraction": _get(config, "train.lr_decay_fraction"),
        "mixed_precision": _get(config, "train.mixed_precision"),
        "discriminator": _get(config, "model.discriminator"), "gan_mode": _get(config, "loss.gan_mode"),
        "lambda_cycle": _get(config, "loss.lambda_cycle"), "lambda_identity": _get(config, "loss.lambda_identity"),
        "ema_decay": _get(config, "train.ema_decay"), "diffaugment": _get(config, "loss.diffaugment"),
        "init_from": _get(config, "model.init_from"),
    }


def data_facts(config: Mapping[str, Any] | None, direction: str) -> dict[str, Any]:
    """Domains (input/output of this direction) and their image counts, the training size."""
    data = _get(config, "data")
    if not isinstance(data, Mapping):
        return {"source": None, "root": None, "input_domain": None, "output_domain": None, "images": None,
                "training_size": None, "load_size": None, "note": None}
    d = DataConfig()
    extra: dict[str, Any] = {}
    if data.get("root") is None:
        source, root, names = "demo", None, DEMO_DOMAINS
        extra["demo"] = {"size": data.get("demo_size", d.demo_size), "style": data.get("demo_style", d.demo_style),
                         "photos": data.get("demo_photos", d.demo_photos),
                         "paintings": data.get("demo_paintings", d.demo_paintings)}
        counts = [extra["demo"]["photos"], extra["demo"]["paintings"]]
        note = (f"the embedded demo set: crops of photos shipped with scikit-image, scikit-learn and matplotlib; its "
                f"'paintings' are such crops through a fixed '{extra['demo']['style']}' transform, not real paintings")
    else:
        source, root = "shards", str(data["root"])
        names, note = (data.get("domain_a", d.domain_a), data.get("domain_b", d.domain_b)), None
        try:
            domains = read_index(Path(os.path.expandvars(root)).expanduser())["domains"]
            counts = [(domains.get(n) or {}).get("count") for n in names]
        except UserError as exc:
            counts, note = [None, None], f"counts unknown: {exc}"
    if direction == "BtoA":
        names, counts = names[::-1], counts[::-1]
    return {"source": source, "root": root, "input_domain": names[0], "output_domain": names[1],
            "images": {names[0]: counts[0], names[1]: counts[1]},
            "training_size": data.get("crop_size", d.crop_size), "load_size": data.get("load_size", d.load_size),
            "note": note, **extra}


def evaluation_facts(records: list[dict[str, Any]], step: int | None, config: Mapping[str, Any] | None, ema: bool,
                     raw_weights: bool) -> dict[str, Any]:
    """FID/MiFID of the checkpoint's step, else of the last evaluation before it; None = not measured."""
    def last(key: str) -> dict[str, Any]:
        hits = [r for r in records if r.get(key) is not None and step is not None and r.get("step", 0) <= step]
        return hits[-1] if hits else {}

    scored, psnr = last("eval/mifid"), last("eval/psnr")
    note = None
    if scored and raw_weights and (_get(config, "train.ema_decay") or 0) > 0 and not ema:
        note = "measured on the run's EMA generator; these files hold the trained (raw) weights"
    return {"fid": scored.get("eval/fid"), "mifid": scored.get("eval/mifid"), "step": scored.get("step"),
            "n_generated": scored.get("eval/n_generated"), "n_real": scored.get("eval/n_real"),
            "size": scored.get("eval/size"), "note": note,
            "psnr_db": psnr.get("eval/psnr"), "psnr_identity_db": psnr.get("eval/psnr_identity")}


def _estimated_gpu_hours(run: Path) -> tuple[float | None, str | None]:
    """summarize()'s estimate: the logged wall time x ranks (None when the metrics cannot tell)."""
    from cyclegan_dist.eval.report import summarize

    try:
        hours = summarize(run).gpu_hours
    except Exception:  # noqa: BLE001 - an estimate never fails the card
        return None, None
    return (hours, "estimated from metrics.jsonl: logged wall time x ranks") if hours is not None else (None, None)
