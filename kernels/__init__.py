"""Triton kernels of the semantic segmentation head, installed as ``sfpn.kernels``."""
