"""What every benchmark shares: CLI flags, interleaved timing, machine description, tables, JSON, RESULTS.md.

Timing discipline (the machines these run on are often shared):

* every figure is a ratio against a baseline measured in the same process, in the same run;
* baseline and candidate repetitions are interleaved, the order rotating each repetition
  (A B, B A, A B, ...), so slow drift in background load hits both alike;
* each repetition times a window of several steps after warm-up, with ``torch.cuda.synchronize()`` at the
  window's edges on a GPU; the reported figure is the median over repetitions and the ratio is the median of
  the per-repetition ratios of neighbouring windows (with its min..max, to show the noise).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from cyclegan_dist.tables import format_table
from cyclegan_dist.train import host_memory

ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # our names -> train.mixed_precision


def csv(kind: Callable[[str], Any]) -> Callable[[str], list]:
    """argparse type for comma-separated lists: ``--batch 1,4,8``."""

    def parse(text: str) -> list:
        return [kind(part) for part in str(text).split(",") if part.strip()]

    return parse


def add_common_args(parser: argparse.ArgumentParser, *, size: int, batch: str, reps: int,
                    precision: str = "fp32") -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (CI smoke)")
    parser.add_argument("--size", type=int, default=size, help=f"image side in pixels (default {size})")
    parser.add_argument("--batch", type=csv(int), default=csv(int)(batch),
                        help=f"batch size(s), comma-separated (default {batch})")
    parser.add_argument("--precision", type=csv(str), default=csv(str)(precision),
                        help=f"fp32 | bf16 | fp16, comma-separated (default {precision})")
    parser.add_argument("--reps", type=int, default=reps,
                        help=f"timed repetitions per arm, interleaved (default {reps})")
    parser.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice). On a shared, oversubscribed CPU use 1: "
                             "OpenMP threads then wait for each other at every op and times swing 10x")
    parser.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write the results as JSON here")
    parser.add_argument("--markdown", default=None, metavar="FILE",
                        help="append the table, machine, date and command as a section to this Markdown file")
    return parser


def parse_with_quick(parser: argparse.ArgumentParser, argv, quick_defaults: dict[str, Any]) -> argparse.Namespace:
    """Parse; with ``--quick``, ``quick_defaults`` replace the defaults of the flags not given explicitly."""
    pre, _ = parser.parse_known_args(argv)
    if pre.quick:
        parser.set_defaults(**quick_defaults)
    return parser.parse_args(argv)


def apply_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def check_precisions(values: Sequence[str]) -> None:
    for p in values:
        if p not in PRECISIONS:
            raise SystemExit(f"error: --precision {p!r} is not one of {', '.join(PRECISIONS)}")


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], n: int, device) -> float:
    """Seconds per call of ``fn`` over ``n`` calls, synchronised at both edges."""
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - start) / n


def interleaved(arms: dict[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
    """Call each arm's timing function ``reps`` times, rotating the order every repetition.

    ``arms[name]()`` times one window and returns seconds per unit. Returns the per-repetition values.
    """
    names = list(arms)
    out: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            out[name].append(arms[name]())
    return out


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


@dataclass
class Ratio:
    """Speed-up of a candidate over a baseline from per-repetition times (baseline_time / candidate_time)."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, baseline: Sequence[float], candidate: Sequence[float]) -> "Ratio":
        per_rep = [b / c for b, c in zip(baseline, candidate)]
        return cls(median(per_rep), min(per_rep), max(per_rep))

    def text(self, digits: int = 2) -> str:
        return f"{self.median:.{digits}f}"

    def spread(self, digits: int = 2) -> str:
        return f"{self.low:.{digits}f}–{self.high:.{digits}f}"


# ------------------------------------------------------------------------------------------- the machine


def _lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _lscpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)  # how busy the machine was when the run started
    except OSError:
        pass
    return info


def machine_line(info: dict[str, Any]) -> str:
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"
    load = f", load average {info['load_avg_1m']} at start" if "load_avg_1m" in info else ""
    return (f"{info['date']}; CPU {info['cpu']} ({info['cores']} logical cores, torch threads "
            f"{info['torch_threads']}){gpu}; torch {info['torch']}, Python {info['python']}{load}")


ENV_RECORDED = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "CYCLEGAN_PEAK_FLOPS",
                "CYCLEGAN_DIST_CACHE", *host_memory.USER_SETTINGS, host_memory.OPT_OUT, "LD_PRELOAD",
                "PYTORCH_CUDA_ALLOC_CONF")


def command_string(module: str) -> str:
    """The command as typed, with the environment variables that change the figures in front."""
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in ENV_RECORDED if os.environ.get(k)]
    return " ".join([*env, "python", "-m", module, *map(shlex.quote, sys.argv[1:])])


# ---------------------------------------------------------------------------------------------- reports


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return format_table(headers, [[str(c) for c in row] for row in rows], markdown=True)


@dataclass
class Report:
    """One benchmark's output: a title, a table (rows of dicts), notes; printed, and optionally saved."""

    benchmark: str
    title: str
    command: str
    headers: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=machine_info)

    def table(self) -> str:
        return markdown_table(self.headers, [[row.get(h, "") for h in self.headers] for row in self.rows])

    def text(self) -> str:
        parts = [f"## {self.title}", "", f"- machine: {machine_line(self.machine)}", f"- command: `{self.command}`",
                 "", self.table(), ""]
        parts += [f"- {note}" for note in self.notes]
        return "\n".join(parts).rstrip() + "\n"

    def emit(self, json_out: str | None = None, markdown: str | None = None) -> None:
        print(self.text(), flush=True)
        if json_out:
            Path(json_out).parent.mkdir(parents=True, exist_ok=True)
            payload = {"benchmark": self.benchmark, "title": self.title, "command": self.command,
                       "machine": self.machine, "headers": self.headers, "rows": self.rows,
                       "notes": self.notes, **self.extra}
            Path(json_out).write_text(json.dumps(payload, indent=1, default=str) + "\n")
        if markdown:
            path = Path(markdown)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write("\n" + self.text())


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    if value != 0 and abs(value) < 10 ** -digits:
        return f"{value:.{digits}g}"
    return f"{value:.{digits}f}"
