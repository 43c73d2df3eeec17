"""sfpn/_threads.py: the OpenMP wait policy reaches libgomp (in fresh processes), and the thread
count follows the cores that other processes leave free.

libgomp prints the settings it started with when OMP_DISPLAY_ENV is set; its spin count is what
the wait policy decides: sfpn's bounded 100000, 0 for PASSIVE, 300000 by default, 30000000000 for
ACTIVE.
"""
import os
import subprocess
import sys
import time

import pytest

from sfpn._threads import CoreUsage, SharedCoreThreads, core_usage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def libgomp_spin_count(code: list[str], **env) -> str:
    """The GOMP_SPINCOUNT that libgomp reports in a fresh ``python`` running ``code`` (argv after
    the interpreter), with no OpenMP settings inherited but ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    clean.update(OMP_DISPLAY_ENV="VERBOSE", OMP_NUM_THREADS="1", **env)
    run = subprocess.run([sys.executable, *code], env=clean, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    reported = [line.split("=")[1].strip(" '") for line in run.stderr.splitlines() if line.strip().startswith("GOMP_SPINCOUNT")]
    assert reported, f"libgomp printed no settings:\n{run.stderr}"
    return reported[0]


def test_importing_sfpn_first_bounds_the_spinning():
    assert libgomp_spin_count(["-c", "import sfpn, torch; torch.ones(4).sum()"]) == "100000"


@pytest.mark.parametrize("setting", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "300000"}], ids=str)
def test_a_users_own_setting_wins(setting):
    expected = {"ACTIVE": "30000000000", "PASSIVE": "0", "300000": "300000"}[next(iter(setting.values()))]
    assert libgomp_spin_count(["-c", "import sfpn"], **setting) == expected


def test_torch_imported_first_is_left_alone():
    code = "import torch, sfpn, os; from sfpn._threads import prefer_bounded_spinning as p; assert not p(); assert 'GOMP_SPINCOUNT' not in os.environ"
    assert libgomp_spin_count(["-c", code]) == "300000"


def test_pytest_runs_get_bounded_spinning():
    """The root conftest.py applies it before tests/conftest.py imports torch."""
    here = os.path.relpath(__file__, ROOT)
    assert libgomp_spin_count(["-m", "pytest", "-q", "--collect-only", "-s", "-p", "no:cacheprovider", here]) == "100000"


# -- the thread count on shared cores ---------------------------------------------------------------

SPIN = [sys.executable, "-c", "while True: pass"]


def usage_over(seconds: float) -> tuple[float, float]:
    """(other processes', ours) CPU seconds per second over a window of ``seconds``."""
    before, began = core_usage(), time.monotonic()
    time.sleep(seconds)
    after, elapsed = core_usage(), time.monotonic() - began
    ours = (after.ours_s - before.ours_s) / elapsed
    return (after.busy_s - before.busy_s) / elapsed - ours, ours


@pytest.mark.skipif(core_usage() is None, reason="needs Linux's /proc")
def test_core_usage_tells_our_children_from_other_processes():
    assert core_usage().cores == len(os.sched_getaffinity(0))
    child = subprocess.Popen(SPIN)  # a DataLoader worker's place: ours
    try:
        time.sleep(0.3)
        others, ours = usage_over(1.0)
    finally:
        child.kill()
        child.wait()
    assert ours > 0.5, (others, ours)
    # The same loop, orphaned by a shell that exits at once, belongs to someone else.
    shell = subprocess.run(["sh", "-c", f"{' '.join(SPIN[:2])} '{SPIN[2]}' >/dev/null 2>&1 & echo $!"], capture_output=True, text=True, check=True)
    orphan = int(shell.stdout)
    try:
        time.sleep(0.3)
        others, ours = usage_over(1.0)
    finally:
        os.kill(orphan, 9)
    assert others > 0.5 and ours < 0.3, (others, ours)


@pytest.mark.skipif(core_usage() is None, reason="needs Linux's /proc")
def test_a_child_that_ends_keeps_its_time_in_ours():
    """A worker's time moves to its parent's count of ended children when it exits: the sum of
    ours never drops, or the exit would read as another process's use of the cores."""
    worker = subprocess.Popen([sys.executable, "-c", "import time\nwhile time.process_time() < 0.6: pass"])
    time.sleep(0.3)
    before = core_usage()
    worker.wait()
    after = core_usage()
    assert after.ours_s - before.ours_s > 0.25, (before, after)  # the worker's last 0.3 s or more


class Counters:
    """Fake counters for :class:`SharedCoreThreads`: a clock that moves only when told, and other
    processes using ``others`` cores of ``cores`` (while this process uses the rest)."""

    def __init__(self, cores: int = 2, others: float = 0.0):
        self.cores, self.others = cores, others
        self.now, self.busy, self.ours = 0.0, 0.0, 0.0

    def clock(self) -> float:
        return self.now

    def usage(self) -> CoreUsage:
        return CoreUsage(self.cores, self.busy, self.ours)

    def run(self, seconds: float) -> None:
        self.now += seconds
        self.busy += self.cores * seconds  # every core busy
        self.ours += (self.cores - self.others) * seconds


def governed(counters: Counters, threads: int = 2):
    applied = []
    governor = SharedCoreThreads(threads, applied.append, interval_s=2.0, usage=counters.usage, clock=counters.clock)
    return governor, applied


def windows(governor, counters, count: int, seconds: float = 2.0) -> list:
    """What ``tick`` returned after each of ``count`` windows (a step every 0.5 s)."""
    returned = []
    for _ in range(count):
        for _ in range(round(seconds / 0.5)):
            counters.run(0.5)
            changed = governor.tick()
            if changed is not None:
                returned.append(changed)
    return returned


def test_alone_it_keeps_every_thread():
    counters = Counters(others=0.0)
    governor, applied = governed(counters)
    assert windows(governor, counters, 5) == [] and applied == [] and governor.threads == 2
    assert governor.others == pytest.approx(0.0)


def test_another_training_takes_a_core_then_leaves():
    counters = Counters(others=1.0)
    governor, applied = governed(counters)
    # The first window aims at one thread; the second agrees, so it moves.
    assert windows(governor, counters, 1) == []
    assert windows(governor, counters, 1) == [1] and applied == [1]
    assert governor.others == pytest.approx(1.0)
    assert windows(governor, counters, 3) == []  # it stays while the other process runs
    counters.others = 0.0
    assert windows(governor, counters, 2) == [2] and applied == [1, 2]


def test_a_burst_of_one_window_moves_nothing():
    counters = Counters(others=0.0)
    governor, applied = governed(counters)
    windows(governor, counters, 1)
    counters.others = 1.5
    windows(governor, counters, 1)
    counters.others = 0.0
    assert windows(governor, counters, 3) == [] and applied == []


@pytest.mark.parametrize("others, expected", [(0.4, 8), (0.6, 7), (5.0, 3), (7.9, 1), (8.0, 1)])
def test_it_rounds_the_free_cores_within_one_and_the_start(others, expected):
    counters = Counters(cores=8, others=others)
    governor, _ = governed(counters, threads=8)
    windows(governor, counters, 2)
    assert governor.threads == expected
    # Never more than the count it started with, however many cores are free.
    counters = Counters(cores=8, others=0.0)
    governor, applied = governed(counters, threads=4)
    assert windows(governor, counters, 3) == [] and governor.threads == 4


def test_unreadable_counters_change_nothing():
    applied = []
    clock = iter(range(0, 100, 3))
    governor = SharedCoreThreads(2, applied.append, usage=lambda: None, clock=lambda: next(clock))
    assert [governor.tick() for _ in range(10)] == [None] * 10 and applied == [] and governor.others is None


@pytest.mark.parametrize("threads, interval_s, message", [(0, 2.0, "threads must be at least 1"), (2, 0.0, "interval_s must be positive")])
def test_bad_arguments_are_named(threads, interval_s, message):
    with pytest.raises(ValueError, match=message):
        SharedCoreThreads(threads, print, interval_s=interval_s)
