"""CI smoke of the benchmarks: each runs end to end at a tiny size (``--quick``) and prints its table.

These assert the tables' structure and the math checks, never speed (CI machines are shared and noisy).
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from helpers import ROOT, _env, run_cli


def table(stdout: str, first_header: str) -> tuple[list[str], list[list[str]]]:
    """The Markdown table whose header starts with ``| first_header``: (headers, rows)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header}"))
    split = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    headers = split(lines[start])
    assert set(lines[start + 1]) <= set("|-:"), lines[start + 1]  # ":" aligns a column
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(split(line))
    assert rows and all(len(r) == len(headers) for r in rows)
    return headers, rows


def bench(module: str, *args, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_cli(*args, module=module, timeout=timeout)


# ------------------------------------------------------------------------------------------- in-process


def test_variant_names_and_ratios():
    from benchmarks.common import Ratio, interleaved, markdown_table
    from benchmarks.step import Variant

    v = Variant.parse("bf16+cl+compile")
    assert (v.precision, v.channels_last, v.compile, v.cudnn) == ("bf16", True, "default", False)
    assert v.name == "bf16+cl+compile" and Variant.parse("fp32").name == "fp32"
    assert Variant.parse("bf16+graphs").compile == "reduce-overhead"
    assert Variant.parse("fp32+autotune").name == "fp32+autotune"
    with pytest.raises(SystemExit):
        Variant.parse("fp8+cl")
    with pytest.raises(SystemExit):
        Variant.parse("bf16+fast")
    order = []
    interleaved({"a": lambda: order.append("a") or 1.0, "b": lambda: order.append("b") or 1.0}, 4)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]  # the order rotates every repetition
    r = Ratio.of([2.0, 4.0, 3.0], [1.0, 2.0, 3.0])
    assert (r.median, r.low, r.high) == (2.0, 1.0, 2.0)
    assert markdown_table(["x", "yy"], [[1, 2]]).splitlines()[1] == "|---|----|"


# ---------------------------------------------------------------------------------------------- end to end


def test_step_quick(tmp_path):
    from benchmarks.step import HEADERS

    out = bench("benchmarks.step", "--quick", "--threads", "1", "--model", "resnet9,unet", "--variants", "fp32,bf16+cl",
                "--json", tmp_path / "step.json")
    headers, rows = table(out.stdout, "model")
    assert headers == HEADERS
    assert [(r[0], r[5]) for r in rows] == [("resnet9", "fp32"), ("resnet9", "bf16+cl"), ("unet", "fp32"),
                                            ("unet", "bf16+cl")]
    assert "goal fp32 ours/ref" in out.stdout
    data = json.loads((tmp_path / "step.json").read_text())
    assert data["benchmark"] == "step" and data["machine"]["torch"] and "--quick" in data["command"]
    for row, printed in zip(data["rows"], rows):  # the median of the per-repetition ratios, within their range
        assert row["ratio_low"] <= row["ratio_median"] <= row["ratio_high"], row
        assert printed[headers.index("ratio")] == f"{row['ratio_median']:.2f}", printed
        if row["variant"] == "fp32":  # our step and the reference step are the same math: the same losses
            assert row["loss_rel_diff"] < 1e-5, row
        else:
            assert row["cl_grad_err"] is not None and row["nchw_grad_err"] < 1e-2


def _forward_conv_flops(net: torch.nn.Module, size: int, batch: int) -> tuple[int, int]:
    """(all convolutions, the first one): 2 x multiply-adds of one forward, counted from the layers' shapes."""
    counts = []

    def hook(m, inputs, out):
        taps = m.kernel_size[0] * m.kernel_size[1] // m.groups
        counts.append(2 * (inputs[0].numel() * m.out_channels if isinstance(m, torch.nn.ConvTranspose2d)
                           else out.numel() * m.in_channels) * taps)

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.no_grad():
        net(torch.zeros(batch, 3, size, size))
    for h in handles:
        h.remove()
    return sum(counts), counts[0]


@pytest.mark.parametrize("generator", ["resnet_9blocks", "unet_128"])
def test_step_flops_match_the_analytic_count(generator):
    """The FLOPs behind MFU (torch's FlopCounterMode over one real step) equal a count from the layer shapes: six
    generator calls (fake, reconstruction and identity, per direction), each forward + grad-weight + grad-input,
    minus the first layer's grad-input of the four calls on real images; two frozen-D calls in G's step (forward +
    grad-input) and four in D's (forward + grad-weight + grad-input, minus the first layer's on its inputs, which need
    no gradient)."""
    from benchmarks.step import count_step_flops
    from cyclegan_dist.config import load_config
    from cyclegan_dist.train.build import build_pairs

    size, batch = 128, 2
    config = load_config("smoke", [f"model.generator={generator}", "model.ngf=8", "model.ndf=8",
                                   f"data.crop_size={size}", "data.load_size=143"])
    gens, discs = build_pairs(config.model, 0)
    f_g, f_g1 = _forward_conv_flops(gens.G_A, size, batch)
    f_d, f_d1 = _forward_conv_flops(discs.D_A, size, batch)
    assert count_step_flops(config, batch, size) == 18 * f_g + 16 * f_d - 4 * f_g1 - 4 * f_d1


def test_threads_quick(tmp_path):
    """1 vs torch's default vs the usable CPUs on the real smoke step; the ratio of the one-thread arm is 1."""
    out = bench("benchmarks.threads", "--quick", "--json", tmp_path / "threads.json")
    data = json.loads((tmp_path / "threads.json").read_text())
    assert [r["arm"] for r in data["rows"]] == ["one", "torch default", "usable CPUs"]
    assert data["rows"][0]["threads"] == 1 and data["rows"][0]["vs 1 thread"] == "1.00"
    assert all(len(r["seconds_per_step"]) == 2 for r in data["rows"]) and "| smoke" in out.stdout


def test_overhead_quick(tmp_path):
    from benchmarks.overhead import HEADERS

    out = bench("benchmarks.overhead", "--quick", "--threads", "1", "--json", tmp_path / "overhead.json")
    headers, rows = table(out.stdout, "arm")
    assert headers == HEADERS
    assert [r[0] for r in rows] == ["ours", "bare-ref", "bare-step"]
    assert rows[1][headers.index("vs bare-ref")] == "1.000"
    assert "goal framework overhead <= 3%" in out.stdout
    data = json.loads((tmp_path / "overhead.json").read_text())
    assert all(len(r["per_step_s"]) == 2 for r in data["rows"])  # --quick: 2 repetitions


def test_fixed_cost_quick(tmp_path):
    """The tiny-network loop against the bare step on the same networks; the guard timed on real parameter lists."""
    from benchmarks.fixed_cost import HEADERS

    out = bench("benchmarks.fixed_cost", "--quick", "--threads", "1", "--json", tmp_path / "fixed.json")
    headers, rows = table(out.stdout, "arm")
    assert headers == HEADERS and [r[0] for r in rows] == ["ours", "bare-step"]
    assert "goal loop fixed cost <= 100 us per step:" in out.stdout and "a logging event" in out.stdout
    data = json.loads((tmp_path / "fixed.json").read_text())
    assert len(data["fixed_cost_reps_us"]) == 2 and data["guard"][0]["model"] == "unet_32"
    from cyclegan_dist.config import load_config
    from cyclegan_dist.train.build import build_pairs

    gens, discs = build_pairs(load_config("base", ["model.generator=unet_32"]).model, 0)
    assert data["guard"][0]["tensors"] == len([*gens.parameters(), *discs.parameters()])


def test_profile_step_compares_op_counts():
    out = bench("benchmarks.profile_step", "--model", "unet", "--size", "32", "--rounds", "2", "--steps", "1",
                "--threads", "1", "--shapes")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line.startswith("aten::")}
    assert "median self CPU time per step" in out.stdout
    # the optimizers differ (fused Adam vs the reference's per-tensor ops), the networks' convolutions do not
    changed = out.stdout.split("ops whose call count differs: ")[1].splitlines()[0].split(", ")
    assert {"aten::_fused_adam_", "aten::sqrt"} <= set(changed)
    assert not {"aten::convolution", "aten::convolution_backward", "aten::instance_norm"} & set(changed)
    assert all(len(v) >= 6 for v in rows.values()) and rows  # (shapes,) calls, calls, ms, ms, diff, signs
    assert any(line.startswith("aten::") and " [[" in line for line in out.stdout.splitlines())  # --shapes rows


def test_loader_quick(tmp_path):
    from benchmarks.loader import HEADERS

    out = bench("benchmarks.loader", "--quick", "--threads", "1", "--data-dir", tmp_path / "data",
                "--json", tmp_path / "loader.json")
    headers, rows = table(out.stdout, "data")
    assert headers == HEADERS
    assert [(r[0], r[2], r[3]) for r in rows] == [(kind, shards, workers) for kind in ("kaggle", "large")
                                                  for shards in ("raw", "jpeg") for workers in ("0", "1")]
    assert "goal >= 3x (kaggle, raw shards)" in out.stdout and "feeding: at" in out.stdout
    data = json.loads((tmp_path / "loader.json").read_text())
    assert set(data["feeding"]["per_core"]) == {"kaggle/raw", "kaggle/jpeg", "large/raw", "large/jpeg"}
    for shards in ("raw", "jpeg"):
        assert json.loads((tmp_path / "data" / "large" / f"shards-{shards}" / "index.json").read_text())[
            "format"] == shards


def test_gpu_script_quick_on_cpu(tmp_path):
    """benchmarks/gpu.sh --quick: every section runs on the CPU and lands in the results file."""
    results = tmp_path / "RESULTS.md"
    out = subprocess.run(["bash", "benchmarks/gpu.sh", "--quick", "--out", str(tmp_path / "out"),
                          "--results", str(results)],
                         capture_output=True, text=True, cwd=ROOT, env=_env(None), timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = results.read_text()
    assert text.lstrip().startswith("# gpu.sh --quick")
    for title in ("## Training step", "## Data loading", "## Framework overhead", "## Speed and translation quality"):
        assert text.count(title) >= 1, title
    assert "FAILED" not in text and "skipped" not in text
    assert "## Loop fixed cost per step" in text and "goal loop fixed cost <= 100 us" in text and "peak GB" in text
    for name in ("step-fp32", "step-fast", "loader", "overhead", "fixed-cost", "quality"):
        assert json.loads((tmp_path / "out" / f"{name}.json").read_text())["rows"]
    checks = json.loads((tmp_path / "out" / "correctness.json").read_text())
    assert {c["check"] for c in checks} == {"fp16-overflow", "bf16-parity", "device-skip", "gloo"}
    assert all(c["status"] == "PASS" for c in checks), checks
    assert "## Correctness checks" in text
    quality = json.loads((tmp_path / "out" / "quality.json").read_text())["rows"]
    assert [r["variant"] for r in quality] == ["fp32", "bf16+cl"] and all(r["psnr_after"] > 0 for r in quality)
    assert not (ROOT / "benchmarks" / "RESULTS.md").read_text().count(str(tmp_path))  # --quick never writes there


def test_augment_ema_table_and_reuse(tmp_path):
    """benchmarks.augment_ema end to end at a tiny size (real CLI runs, no Inception): one row per setting, the
    goal verdict and the grid; a second call with --reuse trains nothing and gives the same scores."""
    args = ["--out", tmp_path, "--seeds", "0", "--styles", "strokes", "--models", "resnet9-small", "--steps", "4",
            "--photos", "40", "--paintings", "8", "--no-fid"]
    first = bench("benchmarks.augment_ema", *args)
    headers, rows = table(first.stdout, "style")
    assert [r[headers.index("setting")] for r in rows] == ["reference", "diffaugment", "ema", "diffaugment+ema"]
    assert "DiffAugment+EMA" in first.stdout and "goal >= +1 dB" in first.stdout
    assert (tmp_path / "grid.png").stat().st_size > 0
    scores = {r["setting"]: r["psnr"] for r in json.loads((tmp_path / "results.json").read_text())}
    again = bench("benchmarks.augment_ema", *args, "--reuse")
    assert again.stdout.count("(reused)") == 4
    assert {r["setting"]: r["psnr"] for r in json.loads((tmp_path / "results.json").read_text())} == scores
