"""What the fused-convolution tests (test_layers.py, test_backbone.py) look for: the oneDNN call,
and the ops a forward called."""
import pytest
import torch

#: torch.profiler's name of oneDNN's fused convolution (both overloads).
FUSED = "mkldnn::_convolution_pointwise"
#: ATen's separate ReLU and sum, which the fused call replaces.
SEPARATE = {"aten::relu", "aten::relu_", "aten::clamp_min_", "aten::add_"}
needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs a torch built with oneDNN")


def ops_called(forward) -> tuple[object, set[str]]:
    """``forward()``'s result and the names of the ops it called (torch.profiler's event names)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        out = forward()
    return out, {event.key for event in profiler.key_averages()}
