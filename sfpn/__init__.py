"""sfpn: Semantic Feature Pyramid Network detectors with fused kernels.

``sfpn.kernels`` is the top-level ``kernels/`` folder: the build maps it (pyproject.toml's
``package-dir``), for regular and editable installs alike.
"""
from . import _extension, ops
from .config import DetectorConfig, build_detector, list_presets  # noqa: F401

__version__ = "0.1.0"

__all__ = ["ops", "__version__"]
