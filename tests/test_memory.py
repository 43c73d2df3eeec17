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


def _probe(**env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environment.update(env)
    result = subprocess.run([sys.executable, "-c", PROBE], env=environment, capture_output=True, text=True, check=True)
    applied, heap_mib, state = result.stdout.strip().split("|")
    return applied == "True", int(heap_mib), state


def test_a_freed_large_block_stays_in_the_heap():
    applied, heap_mib, state = _probe()
    assert applied and "kept for reuse" in state
    assert heap_mib >= 256, f"the 256 MiB block did not come from the heap, or went back (heap {heap_mib} MiB)"


@pytest.mark.parametrize("setting", [{"MALLOC_MMAP_MAX_": "65536"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}])
def test_the_users_malloc_settings_win(setting):
    applied, heap_mib, state = _probe(**setting)
    assert not applied and "user's MALLOC_" in state
    if "MALLOC_MMAP_MAX_" in setting:  # glibc's default: the block was its own mapping, unmapped
        assert heap_mib < 256


def test_import_sfpn_leaves_malloc_alone():
    code = "import sfpn, sfpn._memory as m; print(m.describe())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "not called" in result.stdout


@pytest.mark.parametrize("entry, argv", [("sfpn.train", ["--list-keys"]), ("sfpn.eval", ["/nonexistent"])])
def test_the_entry_points_apply_it(entry, argv):
    code = (f"import runpy, sys\nsys.argv = ['{entry}', *{argv!r}]\n"
            f"try:\n    runpy.run_module('{entry}', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "import sfpn._memory as m\nprint(m.describe())")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True)
    assert "kept for reuse" in result.stdout.splitlines()[-1]
