"""CPU training: keep freed host memory for reuse instead of handing it back to the kernel at every step.

glibc serves a large block (from 128 KiB, the threshold growing with use to at most 32 MiB) with its own ``mmap``
and returns it with ``munmap`` when it is freed, and gives the top of the heap back once more than 128 KiB are
free there. A training step frees and allocates the same blocks at every step (activations, gradients: a U-Net
deconvolution's weight gradient is 32 MiB), so every step pays the kernel's page faults again, zeroing each page
on first touch, which slows that deconvolution's backward down, and with it the whole CPU U-Net step.
Which arm of the step benchmark paid depended on what the other had just freed (the reference's foreach Adam
allocates and frees temporaries that fused Adam does not): that was the U-Net step's "gap". The figures and their
commands (``benchmarks.profile_step --shapes`` with and without ``CYCLEGAN_KEEP_FREED_MEMORY=0``):
``benchmarks/RESULTS.md``, "Reading (CPU, 2026-12-02, session 5)".

:func:`retain_freed_memory` raises glibc's mmap threshold to 1 GiB (where a glibc refuses that, it turns its
per-block mmap off instead) and its trim threshold to 2 GiB (``mallopt``), so the blocks stay in the heap and are
reused: the process keeps its peak footprint (that of one step) instead of returning it, for the rest of its life
(also for an evaluation or export that follows in the same process). A user's own ``MALLOC_*`` settings or
``glibc.malloc`` tunables win, and ``CYCLEGAN_KEEP_FREED_MEMORY=0`` leaves glibc's defaults (to measure the
difference); elsewhere than glibc it does nothing. GPU training needs none of it (the CUDA caching allocator
keeps its blocks).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 2**30
TRIM_THRESHOLD_BYTES = 2**31 - 1  # a C int
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                 "GLIBC_TUNABLES")
OPT_OUT = "CYCLEGAN_KEEP_FREED_MEMORY"  # "0": glibc's defaults


def _user_decides() -> bool:
    if os.environ.get(OPT_OUT) == "0":
        return True
    return any(k in os.environ for k in USER_SETTINGS if k != "GLIBC_TUNABLES") or \
        "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


@functools.cache
def retain_freed_memory() -> bool:
    """Apply the settings above, once per process; True when glibc took them."""
    if not sys.platform.startswith("linux") or _user_decides():
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): its allocator, its behaviour
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    no_mmap = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) or bool(mallopt(M_MMAP_MAX, 0))
    done = no_mmap and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    if not done:
        log.info("host memory: glibc refused to keep freed blocks (mallopt); CPU steps pay page faults again")
    return done
