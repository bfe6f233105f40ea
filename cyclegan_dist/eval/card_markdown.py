"""The model card for people (``MODEL_CARD.md``), rendered from the facts of :mod:`cyclegan_dist.eval.card_facts`:
the model, its training, data, compute and evaluation, the sample grid, how to load the generator in a few lines
of plain PyTorch (and onnxruntime when ``generator.onnx`` is there), the intended use and the limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cyclegan_dist.eval.card_facts import CARD_YAML
from cyclegan_dist.eval.card_samples import snippet_size
from cyclegan_dist.eval.formats import FILE_NAMES
from cyclegan_dist.models.io import EXPORT_ARCH, EXPORT_WEIGHTS
from cyclegan_dist.tables import format_table

CARD_MD = "MODEL_CARD.md"
UNKNOWN, NOT_MEASURED = "unknown", "not measured"


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
