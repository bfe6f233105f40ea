"""The layout of docs/architecture.md holds: each layer imports only from the layers below it, the launcher never
imports torch at module level, and each concern is defined in one module."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cyclegan_dist"

# module (or package prefix) -> its layer; lower numbers are lower layers
LAYERS = {
    "cyclegan_dist": 0, "cyclegan_dist.errors": 0, "cyclegan_dist.config": 0, "cyclegan_dist.rundir": 0,
    "cyclegan_dist.images": 0,
    "cyclegan_dist.cache": 0, "cyclegan_dist.tables": 0, "cyclegan_dist.writer_lock": 0,
    "cyclegan_dist.data": 1, "cyclegan_dist.models": 1, "cyclegan_dist.eval": 1, "cyclegan_dist.checkpoint": 1,
    "cyclegan_dist.tracking": 1, "cyclegan_dist.losses": 1, "cyclegan_dist.image_pool": 1, "cyclegan_dist.augment": 1,
    "cyclegan_dist.summary": 1,
    "cyclegan_dist.train": 2,
    "cyclegan_dist.entry": 3,
    "cyclegan_dist.cli": 4, "cyclegan_dist.__main__": 4,
}
# within the components layer: models and data know nothing of evaluation
FORBIDDEN = {
    "cyclegan_dist.models": ("cyclegan_dist.eval", "cyclegan_dist.data", "cyclegan_dist.train"),
    "cyclegan_dist.data": ("cyclegan_dist.eval", "cyclegan_dist.models", "cyclegan_dist.train"),
    # training loads generator files only through models/io (init_from), never through evaluation, and writes no
    # submissions or reports
    "cyclegan_dist.train": ("cyclegan_dist.eval.export", "cyclegan_dist.eval.report", "cyclegan_dist.eval.submission"),
}


# docs/architecture.md, "Outside the package": what launcher/ and benchmarks/ may take from the package
LAUNCHER_MAY_IMPORT = (
    "cyclegan_dist", "cyclegan_dist.errors", "cyclegan_dist.config", "cyclegan_dist.rundir", "cyclegan_dist.tables",
    "cyclegan_dist.images", "cyclegan_dist.summary", "cyclegan_dist.entry", "cyclegan_dist.eval.export",
    "cyclegan_dist.eval.report", "cyclegan_dist.eval.report_html", "cyclegan_dist.eval.model_card",
    "cyclegan_dist.models.io", "cyclegan_dist.data.remote", "cyclegan_dist.data.demo", "cyclegan_dist.data",
)
BENCHMARKS_MAY_NOT_IMPORT = ("cyclegan_dist.cli", "launcher")


def layer(module: str) -> int | None:
    best = None
    for prefix, value in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, value)
    return best[1] if best else None


def imports(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) of every import in a file, lazy ones inside functions included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno))
    return out


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        found.append((name, path))
    return found


def test_each_layer_imports_only_from_below():
    problems = []
    for name, path in modules():
        mine = layer(name)
        assert mine is not None, f"{name} has no layer in tests/test_layout.py (and docs/architecture.md)"
        for imported, line in imports(path):
            if imported.startswith("launcher"):
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {imported}: "
                                "the package never imports the launcher")
            theirs = layer(imported)
            if theirs is not None and theirs > mine:
                problems.append(f"{path.relative_to(ROOT)}:{line} ({name}, layer {mine}) "
                                f"imports {imported} (layer {theirs})")
            for prefix, banned in FORBIDDEN.items():
                if (name == prefix or name.startswith(prefix + ".")) and imported.startswith(banned):
                    problems.append(f"{path.relative_to(ROOT)}:{line} ({name}) imports {imported}")
    assert not problems, "\n".join(problems)


def outside_problems(folder: str) -> list[str]:
    """Imports of the package by ``launcher/`` or ``benchmarks/`` that break the rule for that folder."""
    problems = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for imported, line in imports(path):
            where = f"{path.relative_to(ROOT)}:{line} imports {imported}"
            if folder == "launcher" and imported.startswith("cyclegan_dist") and imported not in LAUNCHER_MAY_IMPORT:
                problems.append(f"{where}: the launcher takes from the package only {', '.join(LAUNCHER_MAY_IMPORT)}")
            if folder == "benchmarks" and imported.startswith(BENCHMARKS_MAY_NOT_IMPORT):
                problems.append(f"{where}: benchmarks never import {' or '.join(BENCHMARKS_MAY_NOT_IMPORT)}")
    return problems


@pytest.mark.parametrize("folder", ["launcher", "benchmarks"])
def test_launcher_and_benchmarks_keep_to_their_rule(folder):
    problems = outside_problems(folder)
    assert not problems, "\n".join(problems)


def test_the_outside_rule_catches_a_wrong_import(tmp_path, monkeypatch):
    """Negative control: a launcher module importing training internals is reported."""
    fake = tmp_path / "launcher"
    fake.mkdir()
    (fake / "bad.py").write_text("def f():\n    from cyclegan_dist.train.loop import train\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert outside_problems("launcher") == [
        "launcher/bad.py:2 imports cyclegan_dist.train.loop: the launcher takes from the package only "
        + ", ".join(LAUNCHER_MAY_IMPORT)]


def test_the_checker_catches_a_wrong_import(tmp_path):
    """Negative control: an upward import is reported (so the test above can fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from cyclegan_dist.eval.export import export_zip\n")
    assert ("cyclegan_dist.eval.export", 2) in imports(bad)
    assert layer("cyclegan_dist.train.loop") > layer("cyclegan_dist.eval.export") is not None
    assert "cyclegan_dist.eval.export".startswith(FORBIDDEN["cyclegan_dist.train"])


@pytest.mark.parametrize("module", ["launcher.cli", "launcher.submit", "launcher.gather", "launcher.collect",
                                    "launcher.report", "launcher.job", "cyclegan_dist.cli", "cyclegan_dist.entry",
                                    "cyclegan_dist.rundir", "cyclegan_dist.config", "cyclegan_dist.images"])
def test_no_torch_at_import(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", f"importing {module} loads torch"


def test_each_fact_is_defined_once():
    """The facts the redesign gathered in one place are not redefined elsewhere."""
    defining = {
        r"^KAGGLE_MIN\s*[,=]": "cyclegan_dist/eval/submission.py",
        r"^IMAGE_EXTS\s*=": "cyclegan_dist/images.py",
        r"^def encode_jpeg\(": "cyclegan_dist/images.py",
        r"^def (decode|decode_image|decode_rgb)\(": "cyclegan_dist/images.py",
        r"^(METRICS|METRICS_FILE)\s*=": "cyclegan_dist/rundir.py",
        r"^def read_jsonl\(": "cyclegan_dist/rundir.py",
        r"^def resolve_checkpoint\(": "cyclegan_dist/rundir.py",
        r"^def (format_table|markdown_table|table)\(": None,  # checked below: one printer, thin adapters
        r"^def add_\w+_parser\(": None,  # no parsers outside cli.py
    }
    sources = {p.relative_to(ROOT).as_posix(): p.read_text()
               for p in [*PACKAGE.rglob("*.py"), *(ROOT / "launcher").rglob("*.py")]}
    for pattern, owner in defining.items():
        hits = sorted(f for f, text in sources.items() if re.search(pattern, text, re.M))
        if owner is not None:
            assert hits == [owner], (pattern, hits)
    assert not [f for f, t in sources.items() if re.search(r"^def add_\w+_parser\(", t, re.M)]
    printers = [f for f, t in sources.items() if re.search(r"\.join\(c\.ljust\(w\)", t)]
    assert printers == [], printers  # fixed-width formatting lives in tables.format_table only
