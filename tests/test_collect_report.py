"""``launcher collect`` and ``launcher report`` on two real smoke-size runs (ResNet-9 vs U-Net, real Inception
FID/MiFID at the end), submitted through ``launcher submit --cluster local``. No mocks.

The runs are submitted one after the other so that the first computes the real statistics of the demo paintings
(cached under $CYCLEGAN_DIST_CACHE, shared with the other tests) and the second reads them.
"""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from slurm_helpers import NEEDS_SLURM, sh

from helpers import TINY, launcher, read_metrics, tiny_shard_root, wait_for

pytestmark = [pytest.mark.xdist_group("collect")]  # one xdist worker runs the group (shared fixtures)

RUN = [*TINY, "train.steps=4", "train.log_every=2", "eval.num_photos=8", "data.domain_b=monet"]
RUNS = {"r9": "resnet9-small", "un": "unet-small"}  # run name -> experiment
CPU = {"CUDA_VISIBLE_DEVICES": ""}  # the local runs train on this machine's CPU ranks


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Two runs (ResNet-9, U-Net) on a small real shard set, side by side on this machine (local executor)."""
    work = tmp_path_factory.mktemp("collect-report")
    shards = tiny_shard_root(work / "shards")  # real images, few: the real Inception scores them in seconds
    t0 = time.monotonic()
    for name, exp in RUNS.items():
        out = launcher("submit", "--exp", exp, "--cluster", "local", "--gpus", "0", "--name", name, "--detach",
                       "--set", *RUN, f"data.root={shards}", cwd=work, env=CPU, timeout=600)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]

    def both_completed() -> bool:  # both jobs (their local controllers too) have ended
        status = json.loads(launcher("status", "--json", cwd=work, env=CPU, timeout=300).stdout or "[]")
        assert not any(r["state"] == "FAILED" for r in status), status
        return len(status) == len(RUNS) and all(r["state"] == "COMPLETED" for r in status)

    wait_for(both_completed, "both runs to complete", 600, interval=1)
    print(f"two runs: {time.monotonic() - t0:.0f} s")
    return work


def best_mifid(run_dir: Path) -> float:
    return min(r["eval/mifid"] for r in read_metrics(run_dir) if "eval/mifid" in r)


def test_collect_here_writes_checked_zips(work):
    from cyclegan_dist.eval.submission import check_submission

    out = launcher("collect", "--exp", ",".join(RUNS.values()), "--here", "--limit", "12", cwd=work, env=CPU,
                   timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    print(out.stdout, out.stderr)
    sub = work / "submissions"
    zips = sorted(p.name for p in sub.iterdir() if not p.name.endswith(".generator"))  # beside each zip: its card
    assert zips == sorted(f"{exp}-{name}.zip" for name, exp in RUNS.items())  # no temporary file left over
    for name, exp in RUNS.items():
        row = next(line for line in out.stdout.splitlines() if line.startswith(f"{name} "))
        ckpt = (work / "runs" / exp / name / "checkpoints" / "best").read_text().strip()
        assert ckpt == "step-00000004"
        assert row.split()[1:] == [exp, "here", ckpt, "(best)", "12", "yes,", "count", "warning",
                                   str(sub / f"{exp}-{name}.zip")]
        assert f"warning: {exp}/{name}: 12 images; Kaggle wants 7000-10000" in out.stderr
        path = sub / f"{exp}-{name}.zip"
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            assert len(names) == len(set(names)) == 12 and all("/" not in n and n.endswith(".jpg") for n in names)
            for n in names:
                with Image.open(io.BytesIO(z.read(n))) as im:
                    assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (256, 256))
        report = check_submission(path)
        assert not report.bad and report.n_good == 12
        assert report.problems == ["12 files; Kaggle wants between 7000 and 10000"]


def test_report_table_winner_grid_curves(work):
    out = launcher("report", "--exp", ",".join(RUNS.values()), cwd=work, env=CPU, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    folder = work / "reports" / "resnet9-small_vs_unet-small"
    text = (folder / "report.md").read_text()
    print(text)
    assert f"wrote {folder / 'report.md'}, {folder / 'report.html'}" in out.stdout
    page = (folder / "report.html").read_text()  # the launcher's winner section reaches the page too
    assert "Which generator has the lower MiFID?" in page and all(name in page for name in RUNS)
    number = r"[\d,]+\.\d"
    for name, exp, generator in (("r9", "resnet9-small", "resnet_9blocks"), ("un", "unet-small", "unet_32")):
        cells = next([c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
                     if line.startswith("|") and line.strip("|").split("|")[0].strip() == name)
        assert cells[:3] == [name, exp, generator] and cells[4] == "4"
        assert re.fullmatch(r"[\d.]+", cells[5]), cells  # GPU-hours (rank-hours here) from the launcher
        fid, mifid = cells[7:9]
        assert re.fullmatch(number, fid) and re.fullmatch(number, mifid), cells
        assert float(mifid.replace(",", "")) == pytest.approx(best_mifid(work / "runs" / exp / name), abs=0.06)
    scores = {exp: best_mifid(work / "runs" / exp / name) for name, exp in RUNS.items()}
    winner = min(scores, key=scores.get)
    assert f"**Winner: {winner} (" in text and "seed-to-seed spread is unknown" in text
    assert out.stdout.startswith(f"winner: {winner} (")
    from cyclegan_dist.eval.samples import LABEL_WIDTH, PAD

    with Image.open(folder / "grid.png") as grid:
        assert grid.format == "PNG"  # labels, then 6 photos a row, 128 px tiles; rows: photos + one per run
        assert grid.size == (LABEL_WIDTH + 6 * (128 + PAD) + PAD, 18 + (1 + len(RUNS)) * (128 + PAD) + PAD)
        grid.load()
    with Image.open(folder / "curves.png") as curves:  # one row of four panels per run
        assert curves.format == "PNG" and curves.size[0] == pytest.approx(1.5 * len(RUNS) * curves.size[1], rel=0.05)
        curves.load()


def test_winner_over_seeds():
    from cyclegan_dist.eval.report import RunSummary
    from launcher.report import winner_section

    def runs(exp: str, generator: str, mifids: list) -> list:
        return [RunSummary(f"{exp}-s{i}", exp, Path("."), generator=generator, fid=m, mifid=m)
                for i, m in enumerate(mifids)]

    lines, verdict = winner_section(runs("a", "resnet_9blocks", [10, 12, 14]) + runs("b", "unet_256", [20, 22]),
                                    ["a", "b"])
    assert verdict == "winner: a (resnet_9blocks), MiFID 12.0 ± 2.0 vs b (unet_256) 21.0 ± 1.4"
    assert "| a | resnet_9blocks | 3 | 3 | 12.0 ± 2.0 | 12.0 ± 2.0 |" in lines
    _, verdict = winner_section(runs("a", "g1", [10, 30]) + runs("b", "g2", [15, 16]), ["a", "b"])
    assert verdict.startswith("winner: b (g2)") and "within one standard deviation: not conclusive" in verdict
    _, verdict = winner_section(runs("a", "g1", [None]) + runs("b", "g2", [None]), ["a", "b"])
    assert verdict.startswith("no winner")


def test_bad_inputs_one_error_line(work, tmp_path):
    cases = [(("collect", "--exp", "nosuch", "--here", "--out", str(tmp_path / "s")),
              "error: unknown experiment 'nosuch'; known: "),
             (("report", "--exp", "smoke", "--out", str(tmp_path / "r")), "error: no finished run of smoke under "),
             (("collect", "--exp", "resnet9-small", "--run", "nope", "--out", str(tmp_path / "s")),
              "error: --run nope: no such run"),
             (("collect", "--photos", str(tmp_path / "missing"), "--out", str(tmp_path / "s")),
              "error: image source not found")]
    for args, message in cases:
        out = launcher(*args, cwd=work, env=CPU, timeout=60)
        assert (out.returncode == 2 and out.stderr.startswith(message)
                and out.stderr.count("\n") == 1), (args, out.stderr)
    empty = launcher("report", cwd=tmp_path, env=CPU, timeout=60)
    assert empty.returncode == 2 and empty.stderr.startswith("error: no finished run under "), empty.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "r").exists() and not (tmp_path / "reports").exists()


@NEEDS_SLURM
def test_collect_on_cluster_as_a_one_gpu_job(work, slurm_cluster):
    out = launcher("collect", "--run", "r9", "--on-cluster", "--cluster", "testcluster", "--limit", "4",
                   "--out", "on-cluster", cwd=work, env=CPU, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    job = re.search(r"submitted export of resnet9-small/r9: job (\d+) on testcluster", out.stdout)
    assert job, out.stdout
    assert f"job {job.group(1)}" in out.stdout.splitlines()[-1]

    def accounting() -> str:
        return sh("sacct", "-n", "-X", "-P", "-j", job.group(1), "-o", "State,AllocTRES", check=False)

    wait_for(lambda: "COMPLETED" in accounting(), f"sacct to record job {job.group(1)} COMPLETED", 60,
             interval=1)  # the accounting record may lag behind the job's end
    tres = accounting()
    assert "COMPLETED" in tres and "gres/gpu=1" in tres, tres
    with zipfile.ZipFile(work / "on-cluster" / "resnet9-small-r9.zip") as z:
        assert len(z.namelist()) == 4
