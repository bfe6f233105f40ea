"""Model cards: what an exported generator is, how it was trained and how to load it, beside its files.

:func:`write_model_card` writes three files into a directory that :func:`cyclegan_dist.models.io.export_generator`
filled (``generator.safetensors`` + ``generator.yaml``, maybe ``generator.onnx`` / ``generator.torchscript.pt``):

* ``model_card.yaml``: the facts, for programs (``yaml.safe_load``); ``null`` where a fact is unknown;
* ``MODEL_CARD.md``: the same facts for people, with how to load the generator in a few lines of plain PyTorch
  (and onnxruntime when ``generator.onnx`` is there), the intended use and the limits;
* ``samples.png``: a few real photos and their translations. A grid that fails never fails the card: the card
  says that it is missing, and why.

Both texts are rendered from one dict (:func:`card_facts`). The facts come from what training left (read only):
the checkpoint's ``config.yaml`` (else the run's), its ``complete`` marker (step, world size), the run's
``metrics.jsonl`` (the FID/MiFID of the checkpoint's step, else of the last evaluation before it), the shard
root's ``index.json`` (domains and counts; the demo set's counts come from the config). GPU-hours are the caller's
(the launcher's job records); without them, :func:`cyclegan_dist.eval.report.summarize` estimates them from the
metrics. A bare weights file (no run around it) gets a card with what its files tell and ``unknown`` for the rest.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from cyclegan_dist.config import DataConfig, read_yaml_mapping
from cyclegan_dist.data.demo import DOMAINS as DEMO_DOMAINS
from cyclegan_dist.data.demo import demo_root
from cyclegan_dist.data.shards import read_index
from cyclegan_dist.data.streams import iter_domain
from cyclegan_dist.data.transforms import eval_image, normalize
from cyclegan_dist.errors import UserError
from cyclegan_dist.eval.formats import FILE_NAMES, size_unit
from cyclegan_dist.eval.samples import compose
from cyclegan_dist.models import count_parameters
from cyclegan_dist.models.io import ARCH_KEYS, EXPORT_ARCH, EXPORT_WEIGHTS, generator_file, load_generator
from cyclegan_dist.rundir import CHECKPOINTS, COMPLETE, CONFIG, RunDir, atomic_write, read_json
from cyclegan_dist.tables import format_table

CARD_MD, CARD_YAML, SAMPLES_PNG = "MODEL_CARD.md", "model_card.yaml", "samples.png"
CARD_VERSION = 1
N_SAMPLES = 4
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # scikit-image's bundled photos (no download)
MAX_TILE = 256  # pixels: the grid shows larger translations smaller
UNKNOWN, NOT_MEASURED = "unknown", "not measured"


# ------------------------------------------------------------------------------------------------ public


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
    return {
        "experiment": _get(config, "experiment"), "seed": _get(config, "seed"),
        "steps": step, "planned_steps": _get(config, "train.steps"),
        "batch_size_per_rank": batch, "world_size": world,
        "images_seen": step * batch * world if step is not None and batch and world else None,
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


# ------------------------------------------------------------------------------------------------ samples


@torch.inference_mode()
def write_samples(out: Path, net: torch.nn.Module, facts: Mapping[str, Any], n: int = N_SAMPLES) -> dict[str, Any]:
    """``samples.png`` (inputs, then their translations at the training size); on any failure ``{"file": None,
    "missing": why}`` and no stale grid left behind."""
    path = out / SAMPLES_PNG
    try:
        size = snippet_size(facts)
        x, inputs = sample_inputs(facts, n, size)
        if facts["generator"]["input_nc"] == 1:
            x = x.mean(dim=1, keepdim=True)
        y = net(x).float().clamp(-1, 1)
        if y.shape[1] == 1:
            y = y.repeat(1, 3, 1, 1)
        shown = [_show(t) for t in (x.repeat(1, 3 // x.shape[1], 1, 1), y)]
        step = facts["training"]["steps"]
        title = (f"{facts['name']}" + (f", step {step:,}" if step is not None else "")
                 + f": real inputs and their translations at {size} px")
        data = facts["data"]
        labels = [f"{data['input_domain'] or 'input'} (input)", f"-> {data['output_domain'] or 'output'}"]
        buf = io.BytesIO()
        compose(shown, labels, title).save(buf, format="PNG")
        atomic_write(path, buf.getvalue())
    except Exception as exc:  # noqa: BLE001 - a grid never fails an export; the card says why it is missing
        if path.is_file():
            path.unlink()
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        return {"file": None, "missing": reason[:300]}
    return {"file": SAMPLES_PNG, "inputs": inputs, "size": size}


def sample_inputs(facts: Mapping[str, Any], n: int, size: int) -> tuple[torch.Tensor, str]:
    """``n`` real images in [-1, 1] (n x 3 x size x size) and where they come from: the first images of the run's
    input domain when its data is readable here, else scikit-image's photos."""
    data = facts["data"]
    why = ""
    if data["source"] is not None:
        domain = data["input_domain"]
        try:
            if data["source"] == "demo":
                demo = data["demo"]
                root = demo_root(DataConfig(demo_size=demo["size"], demo_style=demo["style"],
                                            demo_photos=demo["photos"], demo_paintings=demo["paintings"]))
                where = "the demo set"
            else:
                root = Path(os.path.expandvars(data["root"])).expanduser()
                where = str(root)
            images = [image for _, image in itertools.islice(iter_domain(root, domain, size=size), n)]
            if images:
                return normalize(torch.stack(images)), f"the first {len(images)} images of {domain} in {where}"
            why = f" ({domain} holds no image)"
        except UserError as exc:
            why = f" ({domain} is not readable here: {exc})"
    import skimage.data

    images = [eval_image(getattr(skimage.data, name)(), size) for name in SAMPLE_PHOTOS[:n]]
    return normalize(torch.stack(images)), f"scikit-image's photos {', '.join(SAMPLE_PHOTOS[:n])}{why}"


def _show(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] <= MAX_TILE:
        return x
    return torch.nn.functional.interpolate(x, size=(MAX_TILE, MAX_TILE), mode="bicubic", antialias=True,
                                           align_corners=False).clamp(-1, 1)


def snippet_size(facts: Mapping[str, Any]) -> int:
    """The training size (else 256), rounded up to a size the generator takes."""
    unit = facts["generator"]["size_unit"]
    size = facts["data"]["training_size"] or 256
    return unit * -(-int(size) // unit)


# ------------------------------------------------------------------------------------------------ the card


def pytorch_snippet(facts: Mapping[str, Any]) -> str:
    """Plain PyTorch + safetensors + the package's generator builder, run in the export directory."""
    size, unit = snippet_size(facts), facts["generator"]["size_unit"]
    channels = facts["generator"]["input_nc"]
    return f'''import torch, yaml
from safetensors.torch import load_file
from cyclegan_dist.models import build_generator  # the layout of junyanz's networks.define_G

arch = yaml.safe_load(open("{EXPORT_ARCH}"))
G = build_generator(arch.pop("generator"), **arch).eval()
G.load_state_dict(load_file("{EXPORT_WEIGHTS}"))
x = torch.rand(1, {channels}, {size}, {size}) * 2 - 1  # a photo, N x C x H x W in [-1, 1]; H, W multiples of {unit}
with torch.inference_mode():
    y = G(x)  # in [-1, 1]; as 8-bit pixels: ((y + 1) * 127.5).round().clamp(0, 255).byte()
'''


def onnx_snippet(facts: Mapping[str, Any]) -> str:
    size, channels = snippet_size(facts), facts["generator"]["input_nc"]
    return f'''import numpy as np, onnxruntime

session = onnxruntime.InferenceSession("{FILE_NAMES['onnx']}", providers=["CPUExecutionProvider"])
x = np.random.uniform(-1, 1, (1, {channels}, {size}, {size})).astype(np.float32)  # a photo, as for PyTorch
y = session.run(["painting"], {{"photo": x}})[0]  # in [-1, 1]
'''


def render_markdown(facts: Mapping[str, Any]) -> str:
    g, t, d, c, e, s = (facts[k] for k in ("generator", "training", "data", "compute", "evaluation", "samples"))
    src = facts["source"]
    origin = (f"checkpoint `{src['checkpoint']}` of the run `{src['run']}`" if src["run"]
              else f"checkpoint `{src['checkpoint']}`" if src["checkpoint"] else f"`{src['path']}`")
    what = f"translates {facts['task']}" if facts["task"] else f"translates its input domain ({facts['direction']})"
    lines = [f"# Model card: {facts['name']}", "",
             f"A CycleGAN generator that {what}, exported from {origin} ({src['weights_file']}). "
             f"The same facts, for programs: `{CARD_YAML}`. Written {facts['written']}.", "",
             "## Model", "", _pairs([
                 ("architecture", f"{g['generator']} (ngf {g['ngf']}, norm {g['norm']}, {g['input_nc']} -> "
                                  f"{g['output_nc']} channels{', dropout' if g['use_dropout'] else ''})"),
                 ("parameters", f"{g['parameters']:,}"),
                 ("weights", g["weights"]),
                 ("input size", f"any height and width that are multiples of {g['size_unit']}"
                                + (f"; trained at {d['training_size']} px" if d["training_size"] else "")),
                 ("files", ", ".join(f"`{f}`" for f in facts["files"]))]), "",
             "## Training", "", (_pairs(_training_rows(t)) if t["experiment"] or t["steps"] is not None
                                 else f"Training: {UNKNOWN} (no config or checkpoint beside the weights)."), "",
             "## Data", "", _data_text(d), "",
             "## Compute", "",
             (f"{_hours(c['gpu_hours'])} GPU-hours ({c['how']}; rank-hours where the ranks ran on CPUs)."
              if c["gpu_hours"] is not None else f"GPU-hours: {UNKNOWN}."), "",
             "## Evaluation", "", _evaluation_text(e), "",
             "## Samples", "",
             (f"![real inputs and their translations]({s['file']})\n\nTop: {s['inputs']}, at {s['size']} px. "
              "Bottom: their translations." if s["file"] else f"The sample grid is missing: {s['missing']}."), ""]
    if facts.get("submission"):
        sub = facts["submission"]
        lines += ["## Submission", "", _pairs([(k, sub[k]) for k in sub]), ""]
    lines += ["## How to load it: PyTorch", "",
              "In this directory, with `torch`, `safetensors`, `pyyaml` and this package installed "
              "(`build_generator` builds the reference architecture; junyanz's `networks.define_G` with the same "
              "arguments loads the same state_dict):", "", "```python", pytorch_snippet(facts).rstrip(), "```", ""]
    if FILE_NAMES["onnx"] in facts["files"]:
        lines += ["## How to load it: ONNX", "", "With `numpy` and `onnxruntime` only (input `photo`, output "
                  "`painting`; dynamic batch and image size):", "", "```python", onnx_snippet(facts).rstrip(), "```",
                  ""]
    lines += ["## Intended use and limits", "", *intended_use(facts), ""]
    return "\n".join(lines)


def intended_use(facts: Mapping[str, Any]) -> list[str]:
    d, t = facts["data"], facts["training"]
    images = d["images"] or {}
    target = d["output_domain"] or "its target domain"
    trained = (f"Trained on {images.get(d['output_domain']):,} {target} and "
               f"{images.get(d['input_domain']):,} {d['input_domain']} images"
               if None not in (images.get(d["output_domain"]), images.get(d["input_domain"])) and images
               else f"Training data: {UNKNOWN}")
    size = f"{d['training_size']} px crops" if d["training_size"] else "an unknown size"
    steps = f", {t['steps']:,} steps" if t["steps"] is not None else ""
    kaggle = "a Kaggle \"I'm Something of a Painter Myself\" submission, or " if facts["direction"] == "AtoB" else ""
    out = [f"- Intended use: {facts['task'] or 'image-to-image'} style transfer of whole images near the training "
           f"size ({size}); e.g. {kaggle}research on unpaired translation.",
           f"- {trained}{steps}: it imitates the colours and textures of that small set, not an artist.",
           "- Not for faces or identity: it does not keep a person's likeness and must not be used to identify, "
           "verify or depict real people, nor to pass images off as an artist's work.",
           "- CycleGAN limits: it changes colour and texture, rarely geometry; inputs unlike the training photos "
           "(night, close-ups, text, other sizes) give colour casts, repeated textures or artifacts; the cycle loss "
           "lets it hide detail in faint patterns instead of painting it.",
           "- MiFID: FID divided by a memorization term (the generated images' distance to the training paintings in "
           "Inception features). A low score does not prove the model does not copy paintings, and the in-training "
           "score (a few translated crops against the training paintings) is not the Kaggle leaderboard's."]
    if d["source"] == "demo":
        out.append("- The demo set's \"paintings\" are photos through a fixed transform: this generator checks the "
                   "pipeline; it is not a painter.")
    return out


def _hours(hours: float) -> str:
    return f"{hours:,.2f}" if hours >= 0.01 else "< 0.01"


def _pairs(rows: list[tuple[str, Any]]) -> str:
    return format_table(["", ""], [(k, UNKNOWN if v is None or v == "" else str(v).replace("|", "/"))
                                   for k, v in rows], markdown=True)


def _training_rows(t: Mapping[str, Any]) -> list[tuple[str, Any]]:
    def num(v: Any) -> Any:
        return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else v

    planned = f" of {t['planned_steps']:,} planned" if t["planned_steps"] is not None else ""
    batch = (f"{t['batch_size_per_rank']} per rank x {t['world_size']} rank{'s' if t['world_size'] > 1 else ''}"
             if t["world_size"]
             else t["batch_size_per_rank"])
    losses = (f"{t['gan_mode']} GAN, cycle {t['lambda_cycle']}, identity {t['lambda_identity']}"
              if t["gan_mode"] else None)
    ema = None if t["ema_decay"] is None else (f"decay {t['ema_decay']}" if t["ema_decay"] else "off")
    aug = None if t["diffaugment"] is None else (", ".join(t["diffaugment"]) or "off")
    lr = None if t["lr"] is None else f"{t['lr']:g}" + (
        f" (lr_scaling {t['lr_scaling']}; linear decay to 0 over the last {t['lr_decay_fraction']:.0%} of the steps)"
        if isinstance(t["lr_decay_fraction"], (int, float)) else "")
    precision = "fp32" if t["mixed_precision"] == "no" else t["mixed_precision"]
    return [("experiment", t["experiment"]), ("seed", t["seed"]),
            ("steps", None if t["steps"] is None else f"{t['steps']:,}{planned}"), ("batch", batch),
            ("images seen", num(t["images_seen"])), ("learning rate", lr), ("precision", precision),
            ("discriminator", t["discriminator"]), ("losses", losses), ("generator EMA", ema), ("DiffAugment", aug),
            ("initialised from", t["init_from"] or ("random" if t["experiment"] else None))]


def _data_text(d: Mapping[str, Any]) -> str:
    if d["source"] is None:
        return f"Training data: {UNKNOWN} (no training config beside the weights)."
    rows = [(name, "input" if name == d["input_domain"] else "output", UNKNOWN if n is None else f"{n:,}")
            for name, n in d["images"].items()]
    where = "the embedded demo set" if d["source"] == "demo" else f"the shard root `{d['root']}`"
    text = (format_table(["domain", "role", "images"], rows, markdown=True, right=[2]) + "\n\n"
            f"From {where}; trained on random {d['training_size']} px crops of images resized to {d['load_size']} px.")
    return text + (f" Note: {d['note']}." if d["note"] else "")


def _evaluation_text(e: Mapping[str, Any]) -> str:
    if e["mifid"] is None:
        text = f"FID: {NOT_MEASURED}. MiFID: {NOT_MEASURED}."
    else:
        fid = NOT_MEASURED if e["fid"] is None else f"{e['fid']:.2f}"
        text = (f"FID {fid}, MiFID {e['mifid']:.2f} (in-training evaluation at step {e['step']:,}: "
                f"{e['n_generated'] or UNKNOWN} photos translated at {e['size'] or UNKNOWN} px against "
                f"{e['n_real'] or UNKNOWN} training paintings; Kaggle scores 7,000-10,000 256 px images against "
                "its own set).")
    if e["note"]:
        text += f" Note: {e['note']}."
    if e["psnr_db"] is not None:
        text += (f"\n\nTranslation PSNR on the demo set's held-out pairs: {e['psnr_db']:.2f} dB "
                 f"(doing nothing: {e['psnr_identity_db']:.2f} dB).")
    return text
