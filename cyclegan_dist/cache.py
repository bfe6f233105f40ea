"""Where derived, re-buildable data lives: the demo data set, FID statistics of real image sets.

``$CYCLEGAN_DIST_CACHE``, else ``$XDG_CACHE_HOME/cyclegan-dist``, else ``~/.cache/cyclegan-dist``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    explicit = os.environ.get("CYCLEGAN_DIST_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cyclegan-dist"


def fid_stats_dir() -> Path:
    return cache_root() / "fid-stats"
