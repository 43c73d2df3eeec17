"""Inputs, comparisons and marks shared by the op tests (tests/ops/test_*.py)."""
import pytest
import torch

from sfpn import kernels, ops
from sfpn.ops import _library


def at_thread_count(threads: int, call):
    """``call()`` run with ``threads`` intra-op threads, the previous count restored after: how the
    tests check that a CPU kernel's bits do not depend on the thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return call()
    finally:
        torch.set_num_threads(previous)


def assert_same_bits_at_thread_counts(call, counts=(1, 2, 3)) -> None:
    """``call()``, a tuple of tensors, gives the same bits at each of ``counts`` intra-op threads."""
    results = [at_thread_count(threads, call) for threads in counts]
    for result in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(result, results[0]))


def randn(generator, *shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)


def random_nms_inputs(generator, count=60, classes=3, dtype=torch.float32):
    corner = torch.rand(count, 2, generator=generator) * 100
    boxes = torch.cat([corner, corner + 10 + torch.rand(count, 2, generator=generator) * 30], 1).to(dtype)
    scores = torch.rand(count, generator=generator).to(dtype)
    return boxes, scores, torch.randint(0, classes, (count,), generator=generator)


def float64_leaf(generator, *shape):
    return randn(generator, *shape, dtype=torch.float64).requires_grad_()


FP32 = dict(rtol=1e-5, atol=1e-5)
LOW = dict(rtol=2e-2, atol=2e-2)
#: A C++ CPU kernel's result against the float64 reference, by the dtype it computed in: float32
#: accumulation for the half types, so within a rounding or two of their outputs.
CPU_KERNEL_TOLERANCES = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: FP32,
                         torch.bfloat16: dict(rtol=1e-2, atol=3e-2), torch.float16: dict(rtol=1e-3, atol=3e-3)}


def labels_for(generator, shape, num_classes, device, ignored_fraction=0.2, dtype=torch.int64):
    labels = torch.randint(0, num_classes, shape, generator=generator)
    labels[torch.rand(shape, generator=generator) < ignored_fraction] = 255
    return labels.to(device=device, dtype=dtype)


def leaf(tensor):
    return tensor.detach().clone().requires_grad_(True)


def exact(tensor):
    """The reference's input: float32 promoted to float64, so the comparison measures the kernel's
    error, not the float32 reference's (PyTorch's GroupNorm backward loses digits on tiny groups)."""
    return leaf(tensor.double() if tensor.dtype == torch.float32 else tensor)


def assert_grads_match(kernel_fn, reference_fn, inputs, grad_out, tol):
    """Compare outputs and input gradients of ``kernel_fn`` with autograd through ``reference_fn``."""
    ours, theirs = [leaf(t) for t in inputs], [exact(t) for t in inputs]
    out, expected = kernel_fn(*ours), reference_fn(*theirs)
    torch.testing.assert_close(out, expected.to(out.dtype), **tol)
    (out.double() * grad_out.double()).sum().backward()
    (expected.double() * grad_out.double()).sum().backward()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad.to(a.grad.dtype), **tol)


# The Triton kernels run on a GPU, or on the CPU under Triton's interpreter (tests/conftest.py sets
# TRITON_INTERPRET=1 before anything imports Triton; the ``device`` fixture opts CPU tensors in).
needs_triton = pytest.mark.skipif(
    not kernels.AVAILABLE or not (torch.cuda.is_available() or kernels.INTERPRETING),
    reason="needs Triton and a GPU or TRITON_INTERPRET=1",
)


def op_marker(name: str):
    """The marker of the op module (sfpn/ops/<module>.py) whose public op ``name`` starts with:
    ``roi_align_backward-...`` gets ``pytest.mark.roi_align``, ``batched_nms_padded`` gets
    ``pytest.mark.nms``, so that ``pytest -m nms`` also selects the cases of the cross-op tables."""
    public = max((op for op in _library.OPS if name.startswith(op)), key=len)
    return getattr(pytest.mark, getattr(ops, public).__module__.rsplit(".", 1)[-1])
