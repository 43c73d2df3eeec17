"""sfpn: Semantic Feature Pyramid Network detectors with fused kernels."""
from . import _extension, ops

__version__ = "0.1.0"

__all__ = ["ops", "__version__"]
