"""OpenMP's wait policy for processes that share CPU cores; applied before torch is imported.

PyTorch's CPU ops run on libgomp's thread pool, which reads its settings from the environment once,
when ``import torch`` loads it. By default a pool thread that finishes its share of a parallel
region spins for about 3 ms (``GOMP_SPINCOUNT=300000``) waiting for its siblings before it
sleeps. When another busy process shares the cores, the sibling it waits for is often descheduled,
so the spinning thread burns the core that the late sibling needs, at every one of the thousands
of parallel regions in a training step: on a 2-core machine beside one other training process a
step of the default detector took 4-40x its idle time. ``OMP_WAIT_POLICY=PASSIVE`` (sleep at
once) cured that but made every idle step ~20% slower, paying a wake-up at each region.

sfpn sets ``GOMP_SPINCOUNT=1000`` instead: a waiting thread spins ~10 us, long enough for a
sibling that is running to arrive, then sleeps. On the 2-core EPYC dev machine
(``benchmarks/wait_policy.py``, benchmarks/RESULTS.md 2026-12-03) the default run's step took
1.02x libgomp's own default alone and 2.4x its idle time beside a second training (PASSIVE: 1.20x
and 2.0x; libgomp's default: 4.3x, up to 40x). 1000 is also what libgomp itself spins when it
knows the cores are oversubscribed.

``sfpn/__init__.py`` calls :func:`prefer_bounded_spinning` before anything imports torch, so every
entry point (``python -m sfpn.train``, ``sfpn.eval``, ``sfpn.demo``, a script that imports sfpn
before torch) gets it; ``conftest.py`` at the repository root does the same for the tests and
benchmarks. This file imports nothing but the standard library, so it can run before torch.
"""
import os
import sys

#: Set either of these (``OMP_WAIT_POLICY=PASSIVE`` or ``ACTIVE``, ``GOMP_SPINCOUNT=300000`` for
#: libgomp's own default) and sfpn leaves the wait policy to you.
USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

#: Spins of a waiting thread before it sleeps (libgomp's unit: one spin is a few nanoseconds).
SPIN_COUNT = "1000"


def prefer_bounded_spinning() -> bool:
    """Sets ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT` unless the user chose a policy or torch is
    already loaded (its OpenMP runtime has then read the environment: changing it would do
    nothing). Returns whether it set it."""
    if "torch" in sys.modules or any(name in os.environ for name in USER_SETTINGS):
        return False
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return True
