"""sfpn._C shares the process's C++ runtime: it is linked against libstdc++.so.6 and carries no
copy of it. A copy (an extension linked with -static-libstdc++) has locale facets that are not
the process's, and the first TORCH_CHECK message with a number in it crashed the process on the
H200 image (setup.py's _link_args; benchmarks/RESULTS.md, 2026-12-04)."""
import shutil
import subprocess
import sys

import pytest

from sfpn import _extension

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _extension.STATUS.loaded,
    reason="the ELF check is for a loaded sfpn._C on Linux",
)


def test_extension_needs_the_shared_cxx_runtime():
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf (binutils) is not installed")
    dynamic = subprocess.run([readelf, "-d", _extension.STATUS.path], capture_output=True, text=True, check=True).stdout
    assert "[libstdc++.so.6]" in dynamic, (
        f"{_extension.STATUS.path} does not load libstdc++.so.6: it was linked with a static copy of "
        "the C++ runtime, which crashes on the first C++ error message (see setup.py's _link_args)"
    )
