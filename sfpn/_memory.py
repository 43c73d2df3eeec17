"""glibc's malloc, tuned so that a training process reuses its large blocks instead of faulting
them in afresh at every step; applied by the command-line entry points, never by ``import sfpn``.

glibc serves every block over 32 MiB with its own ``mmap`` and unmaps it when freed. An R50 step
at 800x1344 allocates and frees dozens of such activations (a P2-level map is 69-137 MiB), so each
one's pages fault in again, zeroed by the kernel, at every step. On the 2-core AMD EPYC VM
(benchmarks/RESULTS.md, 2026-12-03 "night") three processes of SFPN steps and inferences spent
31-37 s in the kernel each; with the blocks kept, 5.6-6.6 s, and each row ran faster in every
pair: the fp32 step 1.17-1.34x, fp32 inference 1.25-1.41x, the bf16 step 1.01-1.26x, bf16
inference 1.03-1.14x. The price: freed memory stays in the process, whose peak RSS rose 18-21%
(4.0-4.1 GiB -> 4.7-4.9 GiB there).

:func:`keep_freed_memory` sets ``M_MMAP_MAX`` to 0 (large blocks come from the heap) and
``M_TRIM_THRESHOLD`` to 2 GiB (the heap's free top is kept) with ``mallopt``, as the environment
variables ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`` would. It leaves malloc alone
when the user set any ``MALLOC_*_`` tuning variable, preloaded another allocator (jemalloc,
tcmalloc), set ``SFPN_DEFAULT_MALLOC=1`` or runs without glibc.

``SFPN_DEFAULT_MALLOC=1`` is the way back to glibc's default. A ``MALLOC_*_`` variable is not:
setting any of the four (even ``MALLOC_MMAP_MAX_`` to its default, 65536) also turns off glibc's
dynamic mmap threshold, which otherwise rises to the size of each mapped block freed, so that
every block over 128 KiB is mapped, faulted in and unmapped anew (each 4 MiB block 1025 page
faults against none). On the 2-core Xeon (benchmarks/RESULTS.md, 2026-12-05 "morning") the
default run's bf16 inference took 1.4-2x as long with ``MALLOC_MMAP_MAX_=65536`` as with the tuning.
"""
from __future__ import annotations

import ctypes
import os
import sys

#: Any of these in the environment is the user's own malloc tuning: sfpn leaves malloc alone.
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")
#: Set (to anything but "" or "0") to keep glibc's default malloc.
OPT_OUT = "SFPN_DEFAULT_MALLOC"
#: ``mallopt``'s parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
#: Free memory at the heap's top beyond this goes back to the system (mallopt takes an int).
TRIM_THRESHOLD = 2**31 - 1

_state = "glibc's default (keep_freed_memory was not called)"


def keep_freed_memory() -> bool:
    """Applies the tuning above unless the user chose (see the module's docstring); returns
    whether it did. :func:`describe` says what this process runs with."""
    global _state
    preloaded = os.environ.get("LD_PRELOAD", "")
    if not has_glibc():
        _state = "the platform's default (not glibc)"
    elif any(name in os.environ for name in USER_SETTINGS):
        _state = "glibc with the user's MALLOC_* settings"
    elif os.environ.get(OPT_OUT, "0") not in ("", "0"):
        _state = f"glibc's default ({OPT_OUT} is set)"
    elif "jemalloc" in preloaded or "tcmalloc" in preloaded:
        _state = f"the preloaded allocator ({preloaded})"
    elif (libc := ctypes.CDLL(None)).mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1:
        _state = f"glibc, freed memory kept for reuse ({OPT_OUT}=1 for glibc's default)"
        return True
    else:
        _state = "glibc's default (mallopt refused the tuning)"
    return False


def describe() -> str:
    """How this process's malloc treats freed memory, for the entry points' first log line."""
    return _state


def has_glibc() -> bool:
    """Whether this process runs on Linux with glibc (whose malloc :func:`keep_freed_memory` tunes)."""
    if sys.platform != "linux":
        return False
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False
