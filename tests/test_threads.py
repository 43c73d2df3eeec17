"""sfpn's OpenMP wait policy (sfpn/_threads.py) reaches libgomp, in fresh processes.

libgomp prints the settings it started with when OMP_DISPLAY_ENV is set; its spin count is what
the wait policy decides: sfpn's bounded 100000, 0 for PASSIVE, 300000 by default, 30000000000 for
ACTIVE.
"""
import os
import subprocess
import sys

import pytest

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
