"""sfpn: Semantic Feature Pyramid Network detectors with fused kernels."""
from . import _extension, ops
from .config import DetectorConfig, build_detector, list_presets

__version__ = "0.1.0"

__all__ = ["DetectorConfig", "build_detector", "list_presets", "ops", "__version__"]
