"""OpenMP's wait policy for processes that share CPU cores; applied before torch is imported.

PyTorch's CPU ops run on libgomp's thread pool, which reads its settings from the environment once,
when ``import torch`` loads it. By default a pool thread that finishes its share of a parallel
region spins for about 3 ms (``GOMP_SPINCOUNT=300000``) waiting for its siblings before it
sleeps. When another busy process shares the cores, the sibling it waits for is often descheduled,
so the spinning thread burns the core that the late sibling needs, at every one of the thousands
of parallel regions in a training step: on a 2-core machine beside one other training process a
step of the default detector took 4-40x its idle time. ``OMP_WAIT_POLICY=PASSIVE`` (sleep at
once) cured that but made every idle step ~20% slower, paying a wake-up at each region.

sfpn sets ``GOMP_SPINCOUNT=100000`` instead: a waiting thread spins ~1 ms, long enough for a
sibling that is running to arrive, then sleeps. On the 2-core EPYC dev machine
(``benchmarks/wait_policy.py``, benchmarks/RESULTS.md 2026-12-03) it was the fastest setting or
within 3% of libgomp's default alone in three grids (1.14x in the fourth), and the fastest beside a
second training in all four: with the default run's step as it trains (bf16, channels_last; two
grids of 5 rounds, pooled) 0.97x libgomp's default alone and 0.44 s shared, against PASSIVE's
0.68 s and libgomp's default's 0.73 s; in fp32 1.03x alone and 2.3x its idle time shared. It never
collapsed there, where 10000, 30000 and libgomp's default did (5-12x, up to 40x) in some or every
round.

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
SPIN_COUNT = "100000"


def prefer_bounded_spinning() -> bool:
    """Sets ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT` unless the user chose a policy or torch is
    already loaded (its OpenMP runtime has then read the environment: changing it would do
    nothing). Returns whether it set it."""
    if "torch" in sys.modules or any(name in os.environ for name in USER_SETTINGS):
        return False
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return True
