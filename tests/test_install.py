"""A wheel install works from any directory: configs and cluster profiles are package data, and a job submitted
from the install runs from it (a snapshot of the installed packages). Built and installed for real, into a fresh
venv that borrows this environment's dependencies (``--system-site-packages``), so it costs seconds, not the
minutes of a torch download."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from launcher.runs import read_manifest

from helpers import ROOT, TINY, _env, events, result_json

RUN = [*TINY, "train.steps=4", "train.log_every=2"]


def run(cmd: list, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = _env({"PYTHONPATH": ""})
    env.pop("PYTHONPATH")
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    assert out.returncode == 0, f"{cmd} exited {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", work / "dist", ROOT],
        cwd=work)
    (wheel,) = (work / "dist").glob("cyclegan_dist-*.whl")
    run([sys.executable, "-m", "venv", "--system-site-packages", work / "venv"], cwd=work)
    python = work / "venv" / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], cwd=work)
    return python


def test_wheel_trains_and_submits_from_an_empty_directory(venv, tmp_path):
    where = run([venv, "-c", "import cyclegan_dist, launcher; print(cyclegan_dist.__file__, launcher.__file__)"],
                cwd=tmp_path).stdout.split()
    assert all("/venv/lib/" in w for w in where), f"not the wheel's packages: {where}"

    out = run([venv, "-m", "cyclegan_dist", "train", "--config", "smoke", "--json", "--set", *RUN], cwd=tmp_path)
    result = result_json(out.stdout)
    assert result["status"] == "completed" and result["step"] == 4
    assert (tmp_path / "runs" / "smoke" / "local" / "checkpoints" / "step-00000004" / "complete").is_file()
    listing = run([venv, "-m", "cyclegan_dist", "configs"], cwd=tmp_path).stdout
    assert "resnet9" in listing and "/venv/lib/" in listing

    out = run([venv, "-m", "launcher", "submit", "--exp", "smoke", "--cluster", "local", "--gpus", "0", "--name", "w",
               "--set", *RUN], cwd=tmp_path)
    run_dir = tmp_path / "runs" / "smoke" / "w"
    manifest = read_manifest(run_dir)
    snapshot = Path(manifest["code"]["snapshot"])
    assert ("/venv/lib/" in manifest["code"]["source"]
            and (snapshot / "cyclegan_dist" / "configs" / "smoke.yaml").is_file())
    starts = events(run_dir, "start")
    assert starts and starts[0]["code"]["path"] == str(snapshot), starts
    assert events(run_dir)[-1]["event"] == "completed", out.stdout[-2000:]
