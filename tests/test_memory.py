"""sfpn/_memory.py: the entry points' malloc tuning keeps a large freed block in the heap, and
leaves malloc alone when the user tuned it. Each case runs in a fresh process (mallopt is for good)."""
import os
import subprocess
import sys

import pytest

from sfpn._memory import has_glibc

pytestmark = pytest.mark.skipif(not has_glibc(), reason="glibc's malloc only")

# Allocates and frees a 256 MiB block, then reports whether keep_freed_memory applied, the heap's
# size and whether an anonymous mapping of the block's size is still there.
PROBE = r"""
import ctypes, re
from sfpn._memory import describe, keep_freed_memory
applied = keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
block = libc.malloc(256 << 20)
ctypes.memset(block, 1, 256 << 20)
libc.free(block)
heap = 0
for line in open("/proc/self/maps"):
    if line.rstrip().endswith("[heap]"):
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        heap += end - start
print(applied, heap >> 20, describe(), sep="|")
"""


def _environment(**env):
    """This process's environment without any malloc choice of the user's, plus ``env``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "SFPN_DEFAULT_MALLOC"}
    return {**environment, **env}


def _probe(**env):
    result = subprocess.run([sys.executable, "-c", PROBE], env=_environment(**env), capture_output=True, text=True,
                            check=True)
    applied, heap_mib, state = result.stdout.strip().split("|")
    return applied == "True", int(heap_mib), state


def test_a_freed_large_block_stays_in_the_heap():
    applied, heap_mib, state = _probe()
    assert applied and "kept for reuse" in state
    assert heap_mib >= 256, f"the 256 MiB block did not come from the heap, or went back (heap {heap_mib} MiB)"


@pytest.mark.parametrize("setting", [{"MALLOC_MMAP_MAX_": "65536"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}])
def test_the_users_malloc_settings_win(setting):
    applied, _, state = _probe(**setting)
    assert not applied and "user's MALLOC_" in state


def test_the_opt_out_keeps_glibcs_default():
    applied, heap_mib, state = _probe(SFPN_DEFAULT_MALLOC="1")
    assert not applied and "glibc's default (SFPN_DEFAULT_MALLOC is set)" in state
    assert heap_mib < 256, "glibc's default maps a block this large on its own and unmaps it when freed"
    assert _probe(SFPN_DEFAULT_MALLOC="0")[0], "0 is not an opt-out"


FAULTS = r"""
import ctypes, resource
from sfpn._memory import keep_freed_memory
keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 4 << 20
for _ in range(3):  # glibc's default raises its mmap threshold once a mapped block is freed
    block = libc.malloc(size); ctypes.memset(block, 1, size); libc.free(block)
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    block = libc.malloc(size); ctypes.memset(block, 1, size); libc.free(block)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) // 20)
"""


@pytest.mark.parametrize("env, faults_in_afresh", [({}, False), ({"SFPN_DEFAULT_MALLOC": "1"}, False),
                                                   ({"MALLOC_MMAP_MAX_": "65536"}, True)])
def test_which_settings_fault_a_reused_block_in_afresh(env, faults_in_afresh):
    """A 4 MiB block freed and allocated again: kept in the heap (the tuning) or under glibc's
    raised threshold (its default), no page faults; any MALLOC_*_ variable freezes the threshold at
    128 KiB, and the block's 1024 pages fault in at every allocation: why no MALLOC_*_ variable
    can serve as the way back to glibc's default."""
    result = subprocess.run([sys.executable, "-c", FAULTS], env=_environment(**env), capture_output=True, text=True,
                            check=True)
    faults = int(result.stdout.strip())
    assert (faults >= 1000) == faults_in_afresh, f"{faults} page faults per 4 MiB block with {env}"


def test_import_sfpn_leaves_malloc_alone():
    code = "import sfpn, sfpn._memory as m; print(m.describe())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "not called" in result.stdout


@pytest.mark.parametrize("entry, argv", [("sfpn.train", ["--list-keys"]), ("sfpn.eval", ["/nonexistent"])])
def test_the_entry_points_apply_it(entry, argv):
    code = (f"import runpy, sys\nsys.argv = ['{entry}', *{argv!r}]\n"
            f"try:\n    runpy.run_module('{entry}', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "import sfpn._memory as m\nprint(m.describe())")
    result = subprocess.run([sys.executable, "-c", code], env=_environment(), capture_output=True, text=True, check=True)
    assert "kept for reuse" in result.stdout.splitlines()[-1]
