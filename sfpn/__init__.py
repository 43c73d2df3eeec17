"""sfpn: Semantic Feature Pyramid Network detectors with fused kernels."""
import importlib.abc
import importlib.util
import os
import sys


class _SourceTreeKernels(importlib.abc.MetaPathFinder):
    """Finds ``sfpn.kernels`` in a source checkout that was not installed.

    pyproject.toml installs the top-level ``kernels/`` folder as ``sfpn.kernels`` (package-dir);
    installed, editable or not, the normal finders resolve it and this one, consulted last, is
    never asked. Running from the checkout itself (``python -m pytest`` in the repository) has no
    such mapping, so this finder supplies it: ``<checkout>/kernels``, and nothing else.
    """

    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    directory = os.path.join(checkout, "kernels")

    def find_spec(self, fullname, path=None, target=None):
        init = os.path.join(self.directory, "__init__.py")
        is_checkout = os.path.isfile(os.path.join(self.checkout, "pyproject.toml"))
        if fullname != "sfpn.kernels" or not is_checkout or not os.path.isfile(init):
            return None
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[self.directory])


if not any(isinstance(finder, _SourceTreeKernels) for finder in sys.meta_path):
    sys.meta_path.append(_SourceTreeKernels())

from . import _extension, ops  # noqa: E402
from .config import DetectorConfig, build_detector, list_presets  # noqa: E402

__version__ = "0.1.0"

__all__ = ["ops", "__version__"]
