"""Model cards beside exported generators and collected submissions, from a real (tiny) run: its facts match
what training left, its PyTorch and ONNX snippets run as written, a bare weights file gets "unknown", a failing
sample grid leaves a card that says why, and ``launcher collect`` writes one beside each zip (a card that fails is
a warning, never a lost zip). No mocks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from cyclegan_dist.errors import UserError
from cyclegan_dist.eval.model_card import CARD_MD, CARD_YAML, SAMPLES_PNG, write_model_card
from cyclegan_dist.eval.samples import PAD
from cyclegan_dist.models import build_generator, count_parameters
from cyclegan_dist.models.io import export_generator, load_generator
from cyclegan_dist.rundir import RunDir

from helpers import TINY, job_env, launcher, require_extra, tiny_shard_root

pytestmark = [pytest.mark.xdist_group("model_card")]  # one worker: the module's run is shared

EXP, RUN = "unet-small", "mc"
RUN_SET = [*TINY, "train.steps=4", "train.log_every=2", "eval.num_photos=8", "data.domain_b=monet",
           "train.ema_decay=0.5"]
CPU = {"CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """One finished U-Net run on a small real shard set (real Inception FID/MiFID at its end), run here."""
    work = tmp_path_factory.mktemp("model-card")
    shards = tiny_shard_root(work / "shards")
    out = launcher("submit", "--exp", EXP, "--cluster", "local", "--gpus", "0", "--name", RUN,
                   "--set", *RUN_SET, f"data.root={shards}", cwd=work, env=CPU, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return work


def run_dir(work: Path) -> Path:
    return work / "runs" / EXP / RUN


def run_snippets(folder: Path, check: str) -> list[dict]:
    """Every python block of MODEL_CARD.md, run as written in ``folder``, then ``check`` (prints one JSON line)."""
    blocks = re.findall(r"```python\n(.*?)```", (folder / CARD_MD).read_text(), re.S)
    results = []
    for code in blocks:
        proc = subprocess.run([sys.executable, "-c", code + check], capture_output=True, text=True, cwd=folder,
                              env={**job_env(), **CPU}, timeout=300)
        assert proc.returncode == 0, code + proc.stderr[-3000:]
        results.append({"code": code, **json.loads(proc.stdout.strip().splitlines()[-1])})
    return results


# what each snippet left in y, against this package's loader on the same x
CHECK = """
import json as _json, numpy as _np, torch as _torch
from cyclegan_dist.models.io import load_generator as _load
_x = _torch.as_tensor(_np.asarray(x))
with _torch.inference_mode():
    _ref = _load(".")[0](_x).numpy()
_y = _np.asarray(y)
print(_json.dumps({"shape": list(_y.shape), "finite": bool(_np.isfinite(_y).all()),
                   "max_diff": float(_np.abs(_y - _ref).max())}))
"""


def card(folder: Path) -> dict:
    return yaml.safe_load((folder / CARD_YAML).read_text())


# ------------------------------------------------------------------------------------------------ collect


def test_collect_writes_the_generator_and_its_card_beside_the_zip(work):
    out = launcher("collect", "--run", RUN, "--here", "--limit", "4", "--out", "subs", cwd=work, env=CPU, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    subs = work / "subs"
    folder = subs / f"{EXP}-{RUN}.generator"
    assert sorted(p.name for p in subs.iterdir()) == [folder.name, f"{EXP}-{RUN}.zip"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [CARD_MD, CARD_YAML, SAMPLES_PNG, "generator.safetensors", "generator.yaml"])
    assert f"model card of {EXP}/{RUN}: {folder / CARD_MD}" in out.stdout

    facts, run = card(folder), RunDir(run_dir(work))
    best = run.best()
    assert best and facts["source"]["checkpoint"] == best["checkpoint"] == "step-00000004"
    assert facts["name"] == f"{EXP}/{RUN}" and facts["task"] == "photo -> monet"
    assert facts["source"]["weights_file"] == "G_A_ema.safetensors" and facts["generator"]["weights"] == "EMA"
    net, _ = load_generator(folder)
    assert facts["generator"]["generator"] == "unet_32" and facts["generator"]["ngf"] == 8
    assert facts["generator"]["parameters"] == count_parameters(net) == count_parameters(load_generator(run.path)[0])
    t = facts["training"]
    assert (t["experiment"], t["steps"], t["planned_steps"], t["batch_size_per_rank"], t["world_size"]) == (
        EXP, 4, 4, 4, 1)
    assert t["images_seen"] == 16 and t["ema_decay"] == 0.5 and t["diffaugment"] == []
    assert facts["data"]["images"] == {"photo": 12, "monet": 10} and facts["data"]["training_size"] == 32
    scored = [r for r in run.metrics() if r.get("eval/mifid") is not None]
    assert facts["evaluation"]["step"] == 4 and facts["evaluation"]["mifid"] == scored[-1]["eval/mifid"]
    assert facts["evaluation"]["fid"] == scored[-1]["eval/fid"] and facts["evaluation"]["n_generated"] == 8

    status = json.loads(launcher("status", "--json", cwd=work, env=CPU, timeout=300).stdout)
    row = next(r for r in status if r["run"] == RUN)
    assert facts["compute"]["gpu_hours"] == pytest.approx(row["wall_time_s"] * row["world_size"] / 3600, rel=1e-3)
    assert facts["compute"]["how"].startswith("the launcher's job records")
    assert facts["submission"]["file"] == f"{EXP}-{RUN}.zip" and facts["submission"]["images"] == 4
    assert facts["samples"]["file"] == SAMPLES_PNG
    assert facts["samples"]["inputs"] == f"the first 4 images of photo in {work / 'shards'}"

    text = (folder / CARD_MD).read_text()
    assert f"MiFID {facts['evaluation']['mifid']:.2f}" in text and "| photo  | input  |     12 |" in text
    assert "![real inputs and their translations](samples.png)" in text and "How to load it: ONNX" not in text
    with Image.open(folder / SAMPLES_PNG) as grid:  # 32 px crops shown at 96 px: inputs, then translations
        assert grid.format == "PNG" and grid.size[1] == 18 + 2 * (96 + PAD) + PAD
    (result,) = run_snippets(folder, CHECK)
    assert result["shape"] == [1, 3, 32, 32] and result["finite"] and result["max_diff"] == 0


def test_a_card_that_cannot_be_written_is_a_warning_and_the_zip_stays(work):
    subs = work / "blocked"
    subs.mkdir()
    (subs / f"{EXP}-{RUN}.generator").write_text("a file where the card's folder would go")
    out = launcher("collect", "--run", RUN, "--here", "--limit", "4", "--out", "blocked", cwd=work, env=CPU,
                   timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"warning: {EXP}/{RUN}: model card not written in {subs / (EXP + '-' + RUN + '.generator')}: " \
           in out.stderr
    assert (subs / f"{EXP}-{RUN}.zip").is_file() and "model card of" not in out.stdout


# ------------------------------------------------------------------------------------------------ export


def test_export_directory_card_with_a_tested_onnx_snippet(work, tmp_path):
    require_extra("onnx")
    from cyclegan_dist.eval.formats import export_format

    out = export_generator(run_dir(work), tmp_path / "export")  # what `export --generator-only` does, then the card
    net, arch = load_generator(out)
    export_format(net, "onnx", out, arch.generator)
    path = write_model_card(out, run_dir(work))
    assert path == out / CARD_MD
    facts = card(out)
    assert facts["files"] == ["generator.safetensors", "generator.yaml", "generator.onnx"]
    assert facts["compute"]["how"].startswith("estimated from metrics.jsonl") and facts["compute"]["gpu_hours"] > 0
    assert "submission" not in facts
    results = run_snippets(out, CHECK)
    assert [("onnxruntime" in r["code"]) for r in results] == [False, True]
    for r in results:
        assert r["shape"] == [1, 3, 32, 32] and r["finite"] and r["max_diff"] <= 1e-4, r


def test_btoa_raw_weights_card(work, tmp_path):
    out = export_generator(run_dir(work), tmp_path / "btoa", "BtoA", raw_weights=True)
    write_model_card(out, run_dir(work), direction="BtoA", raw_weights=True, gpu_hours=2.5, gpu_hours_how="a test")
    facts = card(out)
    assert facts["task"] == "monet -> photo" and facts["source"]["weights_file"] == "G_B.safetensors"
    assert facts["generator"]["weights"] == "trained (no EMA)"
    assert facts["evaluation"]["note"].startswith("measured on the run's EMA generator")
    assert facts["compute"] == {"gpu_hours": 2.5, "how": "a test"}
    assert facts["samples"]["inputs"].startswith("the first 4 images of monet in ")
    assert "2.50 GPU-hours (a test;" in (out / CARD_MD).read_text()


# ------------------------------------------------------------------------------------------------ no run


def bare_weights(path: Path, in_nc: int = 3) -> Path:
    torch.manual_seed(0)
    net = build_generator("resnet_6blocks", in_nc, 3, 4, "instance", False)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_a_bare_weights_file_gets_unknown_for_what_it_cannot_tell(tmp_path):
    source = bare_weights(tmp_path / "w" / "mine.safetensors")
    out = export_generator(source, tmp_path / "export")
    write_model_card(out, source)
    facts = card(out)
    assert facts["name"] == "mine.safetensors" and facts["task"] is None
    assert facts["generator"]["generator"] == "resnet_6blocks" and facts["generator"]["weights"] is None
    assert all(v is None for v in facts["training"].values())
    assert facts["data"]["source"] is None and facts["compute"] == {"gpu_hours": None, "how": None}
    assert facts["evaluation"]["fid"] is None and facts["evaluation"]["mifid"] is None
    assert facts["samples"]["inputs"] == "scikit-image's photos astronaut, chelsea, coffee, rocket"
    text = (out / CARD_MD).read_text()
    for phrase in ("FID: not measured. MiFID: not measured.", "GPU-hours: unknown.", "Training data: unknown",
                   "Training: unknown"):
        assert phrase in text, phrase
    (result,) = run_snippets(out, CHECK)
    assert result["shape"] == [1, 3, 256, 256] and result["finite"] and result["max_diff"] == 0


def test_a_failing_grid_leaves_a_card_that_says_why(tmp_path):
    out = tmp_path / "export"
    export_generator(bare_weights(tmp_path / "rgb.safetensors"), out)
    write_model_card(out, out)
    assert (out / SAMPLES_PNG).is_file()
    two = bare_weights(tmp_path / "two.safetensors", in_nc=2)  # a 2-channel generator: no photo fits it
    export_generator(two, out)
    write_model_card(out, two)
    facts = card(out)
    assert facts["generator"]["input_nc"] == 2 and facts["samples"]["file"] is None
    assert facts["samples"]["missing"].startswith("RuntimeError: ")
    assert not (out / SAMPLES_PNG).exists()  # no stale grid of the other generator
    assert f"The sample grid is missing: {facts['samples']['missing']}." in (out / CARD_MD).read_text()
    (result,) = run_snippets(out, CHECK)  # the snippet still loads it
    assert result["shape"] == [1, 3, 256, 256] and result["max_diff"] == 0


def test_no_generator_there_is_a_one_line_user_error(tmp_path):
    with pytest.raises(UserError, match=r"holds no generator.safetensors: export the generator there first") as e:
        write_model_card(tmp_path, tmp_path)
    assert "\n" not in str(e.value) and not list(tmp_path.iterdir())
