"""``train.log_sample_keys``: which samples every step trained on, per rank (``sample_keys/rank-R.jsonl``, one line
per step: the step, the world size and this rank's keys of each domain). For checking the data order, e.g. that a run
resumed on another number of ranks consumes the same samples as one that never stopped; off by default."""

from __future__ import annotations

import json
from pathlib import Path

from cyclegan_dist.rundir import RunDir


def keys_dir(run: RunDir) -> Path:
    return run.path / "sample_keys"


def truncate(run: RunDir, step: int) -> None:
    """Drop the lines of steps >= ``step`` (an earlier attempt went past the checkpoint this one resumes from).
    Rank 0 does it for every rank's file before any rank writes."""
    for path in sorted(keys_dir(run).glob("rank-*.jsonl")):
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _step(line) < step]
        if len(kept) != len(lines):
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(kept))
            tmp.replace(path)


def _step(line: str) -> float:
    """The step of a line; a line cut short by a kill counts as past any step (dropped)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class SampleKeyLog:
    def __init__(self, run: RunDir, rank: int, world: int) -> None:
        keys_dir(run).mkdir(exist_ok=True)
        self.world = world
        self.file = open(keys_dir(run) / f"rank-{rank}.jsonl", "a", buffering=1)  # noqa: SIM115 - open for the run

    def write(self, step: int, batch: dict) -> None:
        """The keys of the batch that step ``step`` (0-based: the steps done before it) trains on."""
        record = {"step": step, "world": self.world, "A": list(batch["A_key"]), "B": list(batch["B_key"])}
        self.file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self.file.close()
