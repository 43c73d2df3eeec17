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

A spin count only softens the collision: two processes that each run one thread per core still
leave each core two threads, and every parallel region waits for whichever sibling is descheduled
(the default run's bf16 step took 2.4-2.8x its idle time beside a second one, and in a later grid
a spin of 100000 collapsed in 3 rounds of 5, to 24-43x). :class:`SharedCoreThreads` removes the
collision: the trainer asks it every step, and every few seconds it measures how much of this
process's cores other processes used and fits the intra-op thread count to what they leave free,
up to the count the run started with. Two trainings on the 2 cores then ran one thread each, at
0.167 s a step against 0.102 s alone (1.64x; RESULTS.md 2026-12-04).
"""
import contextlib
import math
import os
import sys
import time
from typing import Callable, NamedTuple

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


class CoreUsage(NamedTuple):
    """Cumulative CPU seconds on the cores this process may run on (its affinity mask)."""

    #: How many cores that is.
    cores: int
    #: Busy seconds of those cores: everything but idle and I/O wait, including the time the
    #: hypervisor gave to another guest ("steal"), which a descheduled sibling waits for alike.
    busy_s: float
    #: Seconds this process and its children (DataLoader workers) ran, those that ended included.
    ours_s: float


_TICK_S = 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def _process_seconds(pid: str, ended_children: bool = False) -> float:
    """utime + stime of a process (all its threads) from ``/proc/<pid>/stat``; with
    ``ended_children`` also cutime + cstime, the time of its children that ended and were waited
    for (so that a worker's time does not vanish from the sum when it exits)."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name (field 2) may hold spaces; the fields after it are plain.
        fields = stat.read().rsplit(")", 1)[1].split()
    return sum(int(tick) for tick in fields[11:15 if ended_children else 13]) * _TICK_S


def core_usage() -> CoreUsage | None:
    """Reads :class:`CoreUsage` from ``/proc``; None where it cannot (not Linux, a ``/proc/stat``
    without a line for every core in the mask)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    try:
        with open("/proc/stat") as stat:
            lines = [line.split() for line in stat if line.startswith("cpu") and line[3].isdigit()]
        busy_ticks, seen = 0, 0
        for name, *ticks in lines:
            if int(name[3:]) in cpus:
                ticks = [int(t) for t in ticks[:8]]  # user nice system idle iowait irq softirq steal
                busy_ticks += sum(ticks) - ticks[3] - ticks[4]
                seen += 1
        if not cpus or seen != len(cpus):
            return None
        ours = _process_seconds("self", ended_children=True)
        children = set()
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/children") as listed:
                    children.update(listed.read().split())
            except OSError:  # a thread that just ended, or a kernel without the children file
                pass
        for child in children:
            try:
                ours += _process_seconds(child)
            except OSError:  # a worker that just exited
                pass
    except (OSError, ValueError, IndexError):
        return None
    return CoreUsage(len(cpus), busy_ticks * _TICK_S, ours)


class SharedCoreThreads:
    """Fits a process's intra-op thread count to the cores other processes leave free.

    Call :meth:`tick` once per step of the work (a training iteration, an evaluated batch). Each window of ``interval_s`` it reads
    :func:`core_usage`; the other processes' share of this process's cores is the cores' busy
    time less this process's, per second of the window. The thread count it aims at is the cores
    left, rounded, between 1 and ``threads``; it moves there when two windows in a row agree, so
    one burst of another process (a compiler, a shell) does not move it, and it comes back when the
    cores free up. Where ``/proc`` cannot be read it never changes anything.

    The thread count decides how some reductions split their sums, so runs whose count changed
    differ from each other in the last bits; a run that must be bitwise reproducible keeps a
    fixed count (the trainer's ``cpu_threads=fixed``).

    Args:
        threads: the most threads to use (the count the run starts with).
        set_threads: applies a thread count (``torch.set_num_threads``).
        interval_s: the length of a measuring window.
        usage: reads the counters (:func:`core_usage`; tests pass their own).
        clock: monotonic seconds (``time.monotonic``; tests pass their own).
    """

    def __init__(self, threads: int, set_threads: Callable[[int], None], interval_s: float = 2.0,
                 usage: Callable[[], CoreUsage | None] = core_usage, clock: Callable[[], float] = time.monotonic):
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.most = threads
        self.threads = threads
        self.set_threads = set_threads
        self.interval_s = interval_s
        self.usage = usage
        self.clock = clock
        #: The other processes' use of our cores in the last window, in cores (None before one).
        self.others: float | None = None
        self._start = (clock(), usage())
        self._previous_aim: int | None = None

    def tick(self) -> int | None:
        """Measures when a window has passed; returns the new thread count when it changed it."""
        now = self.clock()
        began, before = self._start
        if now - began < self.interval_s:
            return None
        after = self.usage()
        self._start = (now, after)
        if before is None or after is None or after.cores != before.cores:
            self._previous_aim = None
            return None
        others = (after.busy_s - before.busy_s) - (after.ours_s - before.ours_s)
        self.others = max(0.0, others / (now - began))
        aim = min(self.most, max(1, math.floor(after.cores - self.others + 0.5)))
        agreed = aim == self._previous_aim
        self._previous_aim = aim
        if not agreed or aim == self.threads:
            return None
        self.threads = aim
        self.set_threads(aim)
        return aim


@contextlib.contextmanager
def fitted_cpu_threads(device_type: str, policy: str):
    """For a block of work on ``device_type`` under the ``cpu_threads`` ``policy``: yields a
    :class:`SharedCoreThreads` over torch's intra-op thread count on the CPU with ``"adaptive"``
    (for the block to tick), else None; on exit torch's count is what it was before, whatever the
    ticks changed."""
    import torch  # here, not at the top: this module runs before torch is imported

    threads = torch.get_num_threads()
    try:
        yield SharedCoreThreads(threads, torch.set_num_threads) if device_type == "cpu" and policy == "adaptive" else None
    finally:
        torch.set_num_threads(threads)
