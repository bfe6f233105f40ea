"""A run goes on by itself after a requeue the job cannot do (no scontrol) and after a lost node, on the real 2-node
test SLURM (slurm/testcluster/start.sh --nodes 2; one task per job, on the CPU). Real sbatch, real submitit, real
`python -m launcher submit`, no mocks; the resubmissions come from the jobs' own batch scripts (launcher/recovery.py).
  ref   uninterrupted, 1 task
  nos   the same run with scontrol hidden from the job's PATH (a profile `setup` line), USR2 mid-run -> checkpoint
        -> `requeue_wanted` -> the batch script queues a new job -> it resumes and ends bit-equal to ref; its
        `--then collect,report` steps cannot be moved without scontrol: a `chain_not_moved` event says so
  nl    the same run with `--then collect,report`; its node dies mid-run (link down + SIGKILL of everything on it,
        as in test_multinode.py): SLURM requeues it, the restarted attempt finds the failed node, queues a new job
        with --exclude=<node>, which resumes on the other node and ends bit-equal to ref; events and `status` name
        the node and attempt; the collect step waits on the new job (sacct: it starts after the new job's end) and
        the report names the run
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cluster_nodes import kill_node, our_namespace, revive_nodes, slurm_nodes, two_nodes
from slurm_helpers import (
    accounting,
    job_ended,
    job_nodes,
    last_step,
    sh,
    wait_done,
    wait_recorded_end,
)

from cyclegan_dist.rundir import RunDir
from launcher import clusters
from launcher.runs import read_manifest

from helpers import TINY, assert_same_generator_files, launcher, wait_for

STEPS = 60
LONG = [f"train.steps={STEPS}", "train.checkpoint_every=10", "train.log_every=2", *TINY]
THEN = ["--then", "collect,report", "--then-limit", "2"]
FINAL = f"step-{STEPS:08d}"
JOB_TIMEOUT = 400  # s: a hang guard on a loaded 2-core machine, not a speed requirement
pytestmark = [pytest.mark.xdist_group("multinode")]  # takes a node down: never beside test_multinode's jobs


def all_events(run_dir: Path) -> list[dict]:
    return RunDir(run_dir).events()


def named(run_dir: Path, name: str) -> list[dict]:
    return [e for e in all_events(run_dir) if e.get("event") == name]


def path_without_scontrol(bin_dir: Path) -> str:
    """A directory with every command of this PATH but scontrol (links), as in a container without SLURM's tools
    (sbatch stays: the batch script, outside the container, has it)."""
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        for entry in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
            target = bin_dir / entry.name
            if entry.name != "scontrol" and not target.exists() and os.access(entry, os.X_OK):
                target.symlink_to(entry)
    return str(bin_dir)


# ------------------------------------------------------------------------------------ no cluster needed


def test_every_training_job_script_carries_the_recovery_lines(tmp_path):
    """The batch script (dry run: submitit's own generator) checks a restarted attempt before srun and acts on a
    requeue marker after it; nothing else runs when neither applies."""
    out = launcher("submit", "--run-root", str(tmp_path / "runs"), "--cluster", "testcluster", "--exp", "smoke",
                   "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    script = out.stdout[out.stdout.index("#!/bin/bash"):]
    setup, command = script.split("# command")
    folder = re.search(r"export CYCLEGAN_SUBMITIT_FOLDER=(\S+)", setup).group(1)
    assert 'if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then' in setup
    assert f"-m launcher.recovery restarted {folder}; if [ $? -eq 75 ]; then exit 0; fi; fi" in setup
    srun, teardown = command.split("# teardown")
    assert "srun " in srun and "recovery" not in srun
    assert f'if [ -f {folder}/requeue-"$SLURM_JOB_ID".json ]; then' in teardown
    assert "-m launcher.recovery requeue-wanted" in teardown


def test_status_names_the_failed_node_and_the_attempt():
    from launcher.gather import recovery_line

    events = [{"event": "start", "job_id": "7"}, {"event": "node_failed", "node": "n2", "attempt": 1, "job_id": "7"},
              {"event": "resubmitted", "job": "9", "exclude": ["n1", "n2"], "attempt": 1, "job_id": "7"}]
    assert recovery_line(events[-1], events) == "node n2 failed (attempt 1): job 9 --exclude=n1,n2"
    refused = {"event": "not_resubmitted", "attempt": 2, "job_id": "7", "reason": "too few nodes"}
    assert recovery_line(refused, events) == "node n2 failed (attempt 2): not resubmitted (too few nodes)"
    wanted = {"event": "resubmitted", "job": "8", "exclude": [], "attempt": 1, "job_id": "6"}
    assert recovery_line(wanted, events) == "requeue without scontrol (attempt 1): job 8"


def test_the_steps_that_wait_on_a_resubmitted_job_are_found_and_kept_when_scontrol_is_missing(tmp_path, monkeypatch):
    """An array task's steps wait on the whole array; without scontrol nothing is changed, and an event says what
    to run by hand once the new job has ended."""
    from launcher.chain import follow_resubmission, waiting_on
    from launcher.runs import write_manifest

    chain = [{"step": "collect", "job_id": "12", "after": ["10"], "argv": ["collect", "--run", "e/r", "--here"]},
             {"step": "report", "job_id": "13", "after": ["12"], "argv": ["report", "--run", "e/r"]}]
    assert [s["job_id"] for s in waiting_on(chain, "10_3")] == ["12"] == [s["job_id"] for s in waiting_on(chain, "10")]
    assert waiting_on(chain, "11") == [] and waiting_on(chain, "1") == []
    run_dir = tmp_path / "runs" / "e" / "r"
    write_manifest(run_dir, {"run": "r", "experiment": "e", "run_root": str(tmp_path / "runs"), "then": chain})
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert follow_resubmission(run_dir, "11", "14") == []  # no step waits on job 11: nothing to say
    (event,) = follow_resubmission(run_dir, "10_3", "14")
    assert event == {**event, "event": "chain_not_moved", "jobs": ["12"], "old_job": "10_3", "new_job": "14"}
    assert event["reason"] == ("no scontrol on the batch host: the step(s) may start as soon as job 10_3 ends; run "
                               "`python -m launcher collect --run e/r --here` then `python -m launcher report --run "
                               "e/r` once job 14 has ended")
    assert named(run_dir, "chain_not_moved") == [event] and read_manifest(run_dir)["then"] == chain


# ------------------------------------------------------------------------------------ on the 2-node test SLURM


@pytest.fixture(scope="module")
def nodes(request) -> list[str]:
    return two_nodes(request)


@pytest.fixture(scope="module")
def jobs(nodes, tmp_path_factory):
    """Queue ref and nos at once (one node each); nl is submitted by its test."""
    work = tmp_path_factory.mktemp("recovery")
    root = work / "runs"
    profile = work / "noscontrol.yaml"
    hidden = path_without_scontrol(work / "bin")
    profile.write_text(clusters.known_profiles()["testcluster"].read_text().replace(
        "setup: []", f"setup: [\"export PATH={hidden}\"]"))
    submitted: dict = {"work": work, "root": root, "ids": []}

    def submit(key: str, *args: str, cluster: str = "testcluster") -> Path:
        out = launcher("submit", "--run-root", str(root), "--cluster", cluster, "--exp", "smoke", "--gpus", "1",
                       "--name", key, *args, "--set", *LONG, cwd=work)
        assert out.returncode == 0, out.stdout + out.stderr
        submitted[key] = root / "smoke" / key
        return submitted[key]

    submitted["submit"] = submit
    submit("ref")
    submit("nos", *THEN, cluster=str(profile))
    yield submitted
    ids = {i for d in root.glob("smoke/*") if (d / "manifest.json").is_file()
           for i in [*read_manifest(d).get("job_ids", []), *chain_ids(read_manifest(d))]}
    if ids:
        subprocess.run(["scancel", *sorted(ids)], check=False, capture_output=True, timeout=60)


def chain_ids(manifest: dict) -> list[str]:
    return [step["job_id"] for step in manifest.get("then", [])]


def new_job_of(run_dir: Path, old: str) -> str:
    wait_for(lambda: read_manifest(run_dir)["job"]["id"] != old, "the run's manifest to name the new job", 60)
    return read_manifest(run_dir)["job"]["id"]


def test_usr2_without_scontrol_resubmits_and_ends_bit_exact(jobs):
    run_dir, ref = jobs["nos"], jobs["ref"]
    job = read_manifest(run_dir)["job"]["id"]
    wait_for(lambda: last_step(run_dir) >= 6, "the run to pass step 6", JOB_TIMEOUT)
    sh("scancel", "--signal=USR2", job)
    wait_for(lambda: named(run_dir, "resubmitted"), "the batch script to resubmit the run", 180)
    collect, report = chain_ids(read_manifest(run_dir))
    wait_for(lambda: named(run_dir, "chain_not_moved"), "the batch script to record the chain it could not move", 60)
    (stuck,) = named(run_dir, "chain_not_moved")  # no scontrol on the batch host either: said, with what to run
    assert stuck["jobs"] == [collect] and stuck["old_job"] == job, stuck
    assert stuck["reason"].startswith("no scontrol on the batch host") and "python -m launcher collect" in \
        stuck["reason"] and "python -m launcher report" in stuck["reason"], stuck
    sh("scancel", collect, report)  # they would run beside the new job, to no use here
    (wanted,) = named(run_dir, "requeue_wanted")
    assert wanted["reason"] == "no scontrol in the job's PATH" and not named(run_dir, "requeued")
    assert (run_dir / "checkpoints" / f"step-{wanted['step']:08d}" / "complete").is_file()
    (again,) = named(run_dir, "resubmitted")
    assert again["reason"] == "requeue_wanted" and again["exclude"] == [] and again["job_id"] == job
    new = new_job_of(run_dir, job)
    assert new == again["job"] and new != job
    m = wait_done(run_dir, JOB_TIMEOUT)
    assert m["job_ids"] == [job, new]
    starts = named(run_dir, "start")
    assert [s["job_id"] for s in starts] == [job, new] and starts[1]["restart_count"] == 1  # counts toward the budget
    log = Path(m["job"]["log"]).read_text()
    assert re.findall(r"resumed from \S+/step-(\d{8}) at step", log) == [f"{wanted['step']:08d}"]
    wait_done(ref, JOB_TIMEOUT)
    assert_same_generator_files(ref / "checkpoints" / FINAL, run_dir / "checkpoints" / FINAL)


def test_a_lost_node_is_excluded_and_the_run_ends_bit_exact(jobs, nodes):
    if os.geteuid() != 0 or not all(our_namespace(n) for n in nodes[:2]) or shutil.which("ip") is None:
        pytest.skip("needs root and nodes in slurm/testcluster's network namespaces (start.sh --nodes 2)")
    ref = jobs["ref"]
    wait_done(ref, JOB_TIMEOUT)  # nothing else of ours runs on the node that will die
    wait_for(lambda: job_ended(read_manifest(jobs["nos"])["job"]["id"]), "nos to end", JOB_TIMEOUT)
    all_nodes = slurm_nodes(ready_only=False)
    run_dir = jobs["submit"]("nl", *THEN)
    job = read_manifest(run_dir)["job"]["id"]
    collect, report = chain_ids(read_manifest(run_dir))
    try:
        first = run_dir / "checkpoints" / "step-00000010" / "complete"
        wait_for(lambda: last_step(run_dir) >= 12 and first.is_file(), "the run to pass its checkpoint at step 10",
                 JOB_TIMEOUT)
        (victim,) = job_nodes(job)
        assert kill_node(victim), f"nothing ran on {victim}"
        # SLURM notices (SlurmdTimeout), requeues the job; its restarted attempt excludes the node and resubmits
        wait_for(lambda: named(run_dir, "resubmitted"), "the restarted attempt to resubmit the run", 240, 1)
        new = new_job_of(run_dir, job)
        assert f"ExcNodeList={victim}" in sh("scontrol", "show", "job", new)
    finally:
        revive_nodes(len(all_nodes))
    (failed,) = named(run_dir, "node_failed")
    assert failed["node"] == victim and failed["attempt"] == 1 and failed["job_id"] == job
    (again,) = named(run_dir, "resubmitted")
    assert again == {**again, "job": new, "exclude": [victim], "attempt": 1, "reason": "node_failed"}
    m = wait_done(run_dir, JOB_TIMEOUT)
    assert m["exclude"] == [victim] and m["job_ids"] == [job, new]
    hosts = [(e["job_id"], e["host"]) for e in named(run_dir, "start")]
    assert hosts[0] == (job, victim) and [h for j, h in hosts if j == new] and all(
        h != victim for j, h in hosts if j == new), hosts
    log = Path(m["job"]["log"]).read_text()
    resumed = [int(s) for s in re.findall(r"resumed from \S+/step-(\d{8}) at step", log)]
    assert len(resumed) == 1 and resumed[0] >= 10 and resumed[0] % 10 == 0, resumed  # the last periodic checkpoint
    assert_same_generator_files(ref / "checkpoints" / FINAL, run_dir / "checkpoints" / FINAL)
    status = launcher("status", "--run-root", str(jobs["root"]), "--json", cwd=jobs["work"])
    row = next(r for r in json.loads(status.stdout) if r["run"] == "nl")
    assert row["state"] == "COMPLETED", row
    assert row["last_problem"] == f"node {victim} failed (attempt 1): job {new} --exclude={victim}", row
    # the chain followed the run onto the new job before the old one ended
    (moved,) = named(run_dir, "chain_moved")
    assert moved == {**moved, "step": "collect", "job": collect, "old_job": job, "new_job": new}, moved
    assert moved["dependency"].split(",") == [f"afterany:{job}", f"afterany:{new}"], moved
    assert [s["after"] for s in m["then"]] == [[job, new], [collect]], m["then"]
    assert wait_recorded_end(report, "the report step", JOB_TIMEOUT) == "COMPLETED"
    (old_rec,), (new_rec,) = accounting(job), accounting(new)
    (collect_rec,), (report_rec,) = accounting(collect), accounting(report)
    assert collect_rec[3] == "COMPLETED", collect_rec
    assert old_rec[2] <= new_rec[2] <= collect_rec[1] <= collect_rec[2] <= report_rec[1], (
        old_rec, new_rec, collect_rec, report_rec)  # ISO times sort as text
    text = (jobs["work"] / "reports" / "nl" / "report.md").read_text()
    assert any(line.startswith("| nl ") for line in text.splitlines()) and "missing:" not in text, text
    assert f"then: collect {collect} (COMPLETED, after {job},{new})" in launcher(
        "status", "--run-root", str(jobs["root"]), "nl", cwd=jobs["work"]).stdout
