"""No value escapes its line in the sbatch script: hostile but legal values (spaces, $(...), backticks, ';', quotes)
are rendered by ``submit --dry-run``, the script is parsed by ``bash -n`` and then run by bash with a stub ``srun``
that records its arguments: every value arrives intact as one argument, and nothing in it ran."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from helpers import ROOT, _env

SCRIPT_START, SCRIPT_END = "the sbatch script submitit would write:\n", "\ndry run: nothing submitted"
HOSTILE = ["r r", "r$(touch MARK)", "r`touch MARK`", "r;touch MARK", "r'q\"uote", "r&&touch MARK", "r|touch MARK",
           "r>MARK", "r*?[", "r\\n", "r #x", "r!x"]  # ($VAR and ~ are expanded by the launcher on purpose)

STUB = """#!{python}
import json, os, sys
with open(os.environ["STUB_OUT"], "w") as f:
    json.dump({{"argv": sys.argv[1:], "PYTHONPATH": os.environ.get("PYTHONPATH")}}, f)
"""


@pytest.mark.parametrize("root_name", HOSTILE)
def test_hostile_run_root_stays_one_argument(tmp_path, root_name):
    run_root = tmp_path / root_name
    out = subprocess.run([sys.executable, "-m", "launcher", "submit", "--exp", "smoke", "--cluster", "testcluster",
                          "--gpus", "2", "--name", "demo", "--run-root", str(run_root), "--dry-run"],
                         capture_output=True, text=True, cwd=tmp_path, env=_env({"PYTHONPATH": str(ROOT)}),
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    script = out.stdout[out.stdout.index(SCRIPT_START) + len(SCRIPT_START):out.stdout.index(SCRIPT_END)]
    path = tmp_path / "job.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0, script

    stubs = tmp_path / "stubs"
    stubs.mkdir()
    srun = stubs / "srun"
    srun.write_text(STUB.format(python=sys.executable))
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    record = tmp_path / "srun.json"
    env = {"PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "STUB_OUT": str(record), "HOME": str(tmp_path)}
    ran = subprocess.run(["bash", str(path)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(record.read_text())
    argv, folder = seen["argv"], seen["argv"][-1]
    assert os.path.dirname(folder) == str(run_root / ".submitit"), argv  # the job folder: one argument, intact
    assert argv[argv.index("--output") + 1] == os.path.join(folder, "%j_%t_log.out"), argv
    assert seen["PYTHONPATH"].split(os.pathsep)[0] == os.path.join(folder, "code")  # then the caller's own
    assert not list(tmp_path.rglob("MARK")), "a value ran as a command"


@pytest.mark.parametrize("key, value", [("account", "lab\nsrun rm -rf ~"), ("setup", ["module load x\nrm -rf ~"]),
                                        ("sbatch_extra", {"comment": "a\nb"})])
def test_a_profile_value_with_a_newline_is_refused(tmp_path, key, value):
    """A newline in a profile value would end its #SBATCH or shell line; the profile is refused, naming the key."""
    import yaml

    profile = yaml.safe_load((ROOT / "slurm" / "clusters" / "testcluster.yaml").read_text())
    profile[key] = value
    path = tmp_path / "mycluster.yaml"
    path.write_text(yaml.safe_dump(profile))
    out = subprocess.run([sys.executable, "-m", "launcher", "submit", "--exp", "smoke", "--cluster", str(path),
                          "--gpus", "2", "--dry-run"], capture_output=True, text=True, cwd=tmp_path,
                         env=_env({"PYTHONPATH": str(ROOT)}), timeout=120)
    assert out.returncode == 2 and f"'{key}" in out.stderr and "control character" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "#SBATCH" not in out.stdout


def test_a_refused_submission_leaves_nothing_behind(tmp_path):
    """sbatch says no (a stub that fails as sbatch does): one line naming sbatch's reason, exit 2, and neither the
    run directory nor the job folder nor the code snapshot is left under the run root."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, body in (("sbatch", "echo 'sbatch: error: Batch job submission failed: Invalid account' >&2; exit 1"),
                       ("srun", "exit 0")):
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    root = tmp_path / "runs"
    out = subprocess.run([sys.executable, "-m", "launcher", "submit", "--exp", "smoke", "--cluster", "testcluster",
                          "--gpus", "2", "--name", "refused", "--run-root", str(root)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300,
                         env=_env({"PYTHONPATH": str(ROOT), "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}"}))
    assert out.returncode == 2, out.stderr[-2000:]
    assert "sbatch refused the job" in out.stderr and "Invalid account" in out.stderr
    assert "Traceback" not in out.stderr
    assert not root.exists() or not list(root.rglob("*")), sorted(root.rglob("*"))
