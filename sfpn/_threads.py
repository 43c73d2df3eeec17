"""OpenMP's wait policy for processes that share CPU cores; applied before torch is imported.

PyTorch's CPU ops run on libgomp's thread pool, which reads its settings from the environment once,
when ``import torch`` loads it. By default a pool thread that finishes its share of a parallel
region spins for about 3 ms (``GOMP_SPINCOUNT=300000``) waiting for its siblings before it
sleeps. When another busy process shares the cores, the sibling it waits for is often descheduled,
so the spinning thread burns the core that the late sibling needs, at every one of the thousands
of parallel regions in a training step: on a 2-core machine beside one other training process a
step of the default detector took 10-35x its idle time. With ``OMP_WAIT_POLICY=PASSIVE`` a waiting
thread sleeps at once and gives the core away.

``sfpn/__init__.py`` calls :func:`prefer_passive_waiting` before anything imports torch, so every
entry point (``python -m sfpn.train``, ``sfpn.eval``, ``sfpn.demo``, a script that imports sfpn
before torch) gets it; ``conftest.py`` at the repository root does the same for the tests and
benchmarks. This file imports nothing but the standard library, so it can run before torch.
"""
import os
import sys

#: Set either of these (``OMP_WAIT_POLICY=ACTIVE``, ``GOMP_SPINCOUNT=300000`` for libgomp's own
#: default) and sfpn leaves the wait policy to you.
USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def prefer_passive_waiting() -> bool:
    """Sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy or torch is already loaded
    (its OpenMP runtime has then read the environment: changing it would do nothing). Returns
    whether it set it."""
    if "torch" in sys.modules or any(name in os.environ for name in USER_SETTINGS):
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
