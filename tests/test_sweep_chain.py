"""``launcher submit --then collect,report`` on the real test SLURM: the sweep finishes itself.

Two sweeps (ResNet-9-small and U-Net-small x seeds 0,1, 2 tiny steps, no FID) are queued at once by one module
fixture. ``ok`` runs through; in ``bad`` one array task (resnet9-small seed 1) is cancelled right after the
submission. Each sweep gets a collect job and a report job (CPU, 1 task) queued by ``submit`` itself with
``--dependency=afterany``: SLURM's own records (sacct Start/End) show collect starting after every training
job ended and report after collect; the zips and the report appear, and ``bad``'s report names its missing seed.
On this machine (``--cluster local``) the steps run in the foreground once the training has ended.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
from slurm_helpers import NEEDS_SLURM, accounting, sacct_state, sh, squeue_state, wait_done, wait_recorded_end

from launcher.runs import read_manifest

from helpers import TINY, launcher, wait_for

# Its sweeps fill both nodes: it runs on the worker of the multinode tests, which need both nodes free.
pytestmark = [pytest.mark.xdist_group("multinode")]
RUN = [*TINY, "train.steps=2", "eval.at_end=false"]
EXPS = ("resnet9-small", "unet-small")
SEEDS = (0, 1)
CHAIN_TIMEOUT = 600  # s: a hang guard for two waves of tiny jobs plus two steps, on a cluster CI may share


def submit_sweep(work: Path, name: str) -> dict:
    out = launcher("submit", "--exp", ",".join(EXPS), "--seeds", ",".join(map(str, SEEDS)), "--gpus", "1",
                   "--cluster", "testcluster", "--name", name, "--then", "collect,report", "--then-limit", "3",
                   "--set", *RUN, cwd=work, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    chain = re.search(r"^then: collect (\d+) \(queued, after (\d+)\), report (\d+) \(queued, after (\d+)\)$",
                      out.stdout, re.M)
    assert chain, out.stdout
    collect, after, report, after_collect = chain.groups()
    assert after_collect == collect
    runs = {(exp, seed): work / "runs" / exp / f"{name}-{exp}-s{seed}" for exp in EXPS for seed in SEEDS}
    training = sorted(read_manifest(d)["job"]["id"] for d in runs.values())
    assert {t.split("_")[0] for t in training} == {after}  # one job array; collect waits for all of it
    return {"name": name, "collect": collect, "report": report, "training": training, "runs": runs,
            "stdout": out.stdout}


@pytest.fixture(scope="module")
def sweeps(slurm_cluster, tmp_path_factory):
    work = tmp_path_factory.mktemp("sweep-chain")
    ok = submit_sweep(work, "ok")
    bad = submit_sweep(work, "bad")
    status = launcher("status", "--run-root", str(work / "runs"), cwd=work, timeout=120)  # while collect waits
    killed = next(j for j in bad["training"] if j.endswith("_1"))  # array index 1: resnet9-small seed 1
    wait_for(lambda: squeue_state(killed) == "RUNNING", f"array task {killed} to start", CHAIN_TIMEOUT)
    sh("scancel", killed)  # while it trains: SLURM records it CANCELLED (a task cancelled while pending has no record)
    for sweep in (ok, bad):
        wait_recorded_end(sweep["report"], f"the report job of sweep {sweep['name']}", CHAIN_TIMEOUT)
    return {"work": work, "ok": ok, "bad": bad, "killed": killed, "status": status}


def check_order(sweep: dict) -> None:
    """From SLURM's records: collect started once every training task had ended, report once collect had."""
    train = accounting(sweep["training"][0].split("_")[0])
    assert sorted(r[0] for r in train) == sweep["training"], train
    (collect,) = accounting(sweep["collect"])
    (report,) = accounting(sweep["report"])
    assert collect[3] == "COMPLETED" and report[3] == "COMPLETED", (collect, report)
    ends = [r[2] for r in train if r[2] not in ("Unknown", "None")]
    assert len(ends) == len(train), train
    assert max(ends) <= collect[1] <= collect[2] <= report[1], (train, collect, report)  # ISO times sort as text


@NEEDS_SLURM
def test_chain_runs_collect_then_report_after_the_sweep(sweeps):
    ok, work = sweeps["ok"], sweeps["work"]
    status = sweeps["status"]
    assert status.returncode == 0, status.stderr
    assert re.search(rf"^then: collect {ok['collect']} \(PENDING, after \d+\), report {ok['report']} \(PENDING, "
                     rf"after {ok['collect']}\)$", status.stdout, re.M), status.stdout
    check_order(ok)
    for (exp, seed), run_dir in ok["runs"].items():
        with zipfile.ZipFile(work / "submissions" / f"{exp}-{run_dir.name}.zip") as z:
            assert len(z.namelist()) == 3  # --then-limit 3
        manifest = read_manifest(run_dir)
        assert [(s["step"], s["job_id"]) for s in manifest["then"]] == [("collect", ok["collect"]),
                                                                        ("report", ok["report"])]
    folder = work / "reports" / "ok"
    text = (folder / "report.md").read_text()
    assert (folder / "report.html").is_file() and "missing:" not in text
    assert all(run_dir.name in text for run_dir in ok["runs"].values())
    after = launcher("status", "--run-root", str(work / "runs"), "ok-unet-small-s0", cwd=work, timeout=120)
    assert f"then: collect {ok['collect']} (COMPLETED" in after.stdout, after.stdout


@NEEDS_SLURM
def test_a_cancelled_seed_does_not_block_the_report(sweeps):
    bad, work = sweeps["bad"], sweeps["work"]
    assert sacct_state(sweeps["killed"]).startswith("CANCELLED")  # "CANCELLED by <uid>"
    check_order(bad)
    lost = bad["runs"][("resnet9-small", 1)]
    assert not (work / "submissions" / f"resnet9-small-{lost.name}.zip").exists()
    for key, run_dir in bad["runs"].items():
        if key != ("resnet9-small", 1):
            assert (work / "submissions" / f"{key[0]}-{run_dir.name}.zip").is_file()
    folder = work / "reports" / "bad"
    text = (folder / "report.md").read_text()
    # the job writes its "cancelled" event if SIGTERM came after its start; SLURM's word (CANCELLED) would do too,
    # but sacct does not answer inside the test cluster's nodes: then squeue's silence says ENDED (or LOST: it had
    # started and wrote no end)
    line = re.search(r"missing: resnet9-small seed 1 \((CANCELLED|ENDED|LOST)[^)]*\)", text)
    assert line, text
    assert line.group(0) in (folder / "report.html").read_text()
    assert not any(line.startswith(f"| {lost.name} ") for line in text.splitlines())  # not in the runs table
    assert all(any(line.startswith(f"| {d.name} ") for line in text.splitlines())
               for key, d in bad["runs"].items() if key != ("resnet9-small", 1))


@NEEDS_SLURM
def test_resume_then_queues_the_steps_after_the_new_job(slurm_cluster, tmp_path):
    """``launcher resume RUN --then collect,report``: the steps wait on the resumed job (not on the first one)."""
    out = launcher("submit", "--exp", "resnet9-small", "--gpus", "1", "--cluster", "testcluster", "--name", "res",
                   "--set", *RUN, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    run_dir = tmp_path / "runs" / "resnet9-small" / "res"
    first = wait_done(run_dir, CHAIN_TIMEOUT)["job"]["id"]
    out = launcher("resume", "res", "--cluster", "testcluster", "--then", "collect,report", "--then-limit", "2",
                   "--set", "train.steps=4", cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    new = read_manifest(run_dir)["job"]["id"]
    chain = re.search(r"^then: collect (\d+) \(queued, after (\d+)\), report (\d+) \(queued, after (\d+)\)$",
                      out.stdout, re.M)
    assert chain and new != first, out.stdout
    collect, after, report, after_collect = chain.groups()
    assert after == new and after_collect == collect
    assert [(s["step"], s["job_id"]) for s in read_manifest(run_dir)["then"]] == [("collect", collect),
                                                                                  ("report", report)]
    assert wait_recorded_end(report, "the report step of the resumed run", CHAIN_TIMEOUT) == "COMPLETED"
    (train,), (done,), (reported,) = accounting(new), accounting(collect), accounting(report)
    assert train[3] == "COMPLETED" and train[2] <= done[1] <= done[2] <= reported[1], (train, done, reported)
    assert (run_dir / "checkpoints" / "step-00000004" / "complete").is_file()
    with zipfile.ZipFile(tmp_path / "submissions" / "resnet9-small-res.zip") as z:
        assert len(z.namelist()) == 2
    text = (tmp_path / "reports" / "res" / "report.md").read_text()
    assert any(line.startswith("| res ") for line in text.splitlines()) and "missing:" not in text, text


def test_local_then_runs_the_steps_here_after_the_training(tmp_path):
    out = launcher("submit", "--exp", "resnet9-small", "--cluster", "local", "--gpus", "0", "--name", "loc",
                   "--then", "report,collect", "--then-limit", "2", "--set", *RUN, cwd=tmp_path,
                   env={"CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    done = text.index("step 2/2")  # the followed training log, then the steps in order: collect, report
    collect = text.index(f"then: python -m launcher collect --run-root {tmp_path / 'runs'} --run resnet9-small/loc")
    report = text.index("then: python -m launcher report ")
    assert done < collect < report, text
    with zipfile.ZipFile(tmp_path / "submissions" / "resnet9-small-loc.zip") as z:
        assert len(z.namelist()) == 2
    assert "| loc | resnet9-small |" in (tmp_path / "reports" / "loc" / "report.md").read_text()


def test_bad_then_one_error_line_nothing_submitted(tmp_path):
    base = ("submit", "--exp", "resnet9-small", "--cluster", "local", "--gpus", "0")
    cases = [((*base, "--then", "collect,bogus"), "error: --then: unknown step 'bogus'; the steps are collect, report"),
             ((*base, "--then", "collect,collect"), "error: --then lists a step twice"),
             ((*base, "--then", "report", "--then-limit", "3"), "error: --then-limit N: N >= 1, and only with --then "
              "collect"),
             ((*base, "--then", "collect", "--detach"), "error: --then on this machine runs the steps after the "
              "training, in the foreground: drop --detach")]
    for args, message in cases:
        out = launcher(*args, cwd=tmp_path, timeout=60)
        assert out.returncode == 2 and out.stderr.startswith(message) and out.stderr.count("\n") == 1, (args, out)
    assert not (tmp_path / "runs").exists()
