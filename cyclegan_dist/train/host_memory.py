"""CPU training: keep freed host memory for reuse instead of handing it back to the kernel at every step.

glibc serves a large block (from 128 KiB, the threshold growing with use to at most 32 MiB) with its own ``mmap``
and returns it with ``munmap`` when it is freed, and gives the top of the heap back once more than 128 KiB are
free there. A training step frees and allocates the same blocks at every step (activations, gradients: a U-Net
deconvolution's weight gradient is 32 MiB), so every step pays the kernel's page faults again, zeroing each page
on first touch. Measured on the 2-core VM (``benchmarks.profile_step``, U-Net 64 px, 2026-12-02): that
deconvolution's backward 340 ms per step with the defaults against 93 ms with the memory kept, and the whole
fp32 step 0.67 -> 1.26 img/s; which arm paid it depended on what the other had just freed (the reference's foreach
Adam allocates and frees temporaries that fused Adam does not), which was the U-Net's step "gap".

:func:`retain_freed_memory` raises glibc's mmap threshold to 1 GiB and its trim threshold to 2 GiB
(``mallopt``), so the blocks stay in the heap and are reused: the process keeps its peak footprint (that of one
step) instead of returning it. A user's own ``MALLOC_*`` / ``GLIBC_TUNABLES`` settings win, and
``CYCLEGAN_KEEP_FREED_MEMORY=0`` leaves glibc's defaults (to measure the difference); elsewhere than glibc it does
nothing. GPU training needs none of it (the CUDA caching allocator already keeps its blocks).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 2**30
TRIM_THRESHOLD_BYTES = 2**31 - 1  # a C int
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
OPT_OUT = "CYCLEGAN_KEEP_FREED_MEMORY"  # "0": glibc's defaults


def retain_freed_memory() -> bool:
    """Apply the settings above once per process; True when glibc took them."""
    if (not sys.platform.startswith("linux") or any(k in os.environ for k in USER_SETTINGS)
            or os.environ.get(OPT_OUT) == "0"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): its allocator, its behaviour
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD,
                                                                                  TRIM_THRESHOLD_BYTES))
    log.debug("host memory: freed blocks kept for reuse: %s", done)
    return done
