"""sfpn's ops: fused kernels behind validated, documented, differentiable functions.

Each op runs a compiled kernel (``sfpn._C``) or a Triton kernel (``sfpn.kernels``) when one serves
the input's device, and its pure-PyTorch reference otherwise (``sfpn.ops.reference``).
``python -m sfpn.info`` says which backend serves each op.
"""
from .upsample import semantic_fuse, upsample_add

__all__ = ["semantic_fuse", "upsample_add"]
