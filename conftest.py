"""pytest loads this before tests/conftest.py and benchmarks/conftest.py, which import torch.

It applies sfpn's OpenMP wait policy (sfpn/_threads.py) while torch is not yet loaded. ``import
sfpn`` would apply it too, but would also import torch and sfpn.kernels before tests/conftest.py
has set TRITON_INTERPRET (which needs torch to tell whether CUDA is there), so the module's file
runs on its own: it imports only the standard library.
"""
import importlib.util
import os
import runpy

_package = os.path.dirname(importlib.util.find_spec("sfpn").origin)
runpy.run_path(os.path.join(_package, "_threads.py"))["prefer_bounded_spinning"]()
