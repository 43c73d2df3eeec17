"""sfpn: Semantic Feature Pyramid Network detectors with fused kernels.

``sfpn.kernels`` is the top-level ``kernels/`` folder: the build maps it (pyproject.toml's
``package-dir``), for regular and editable installs alike.
"""
from ._threads import prefer_bounded_spinning

prefer_bounded_spinning()  # before anything below imports torch: see sfpn/_threads.py

from . import _extension, ops  # noqa: E402
from .config import DetectorConfig, list_presets  # noqa: E402, F401
from .modeling import build_detector  # noqa: E402, F401

__version__ = "0.1.0"

__all__ = ["ops", "__version__"]
