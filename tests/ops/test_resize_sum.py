"""resize_sum: the Triton kernel against the pure-PyTorch reference, drawn inputs, opcheck,
argument checks; then the C++ CPU kernels (csrc/cpu/resize_sum.cpp) against the float64 reference.

Without a GPU the kernel runs on the CPU under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports Triton, and the ``device`` fixture opts CPU tensors
into the kernels). The interpreter is slow, so shapes are tiny but awkward: odd sizes, single
pixels, levels larger and smaller than the target.
"""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sfpn import ops
from sfpn.ops import _library, reference

from op_helpers import (
    CPU_KERNEL_TOLERANCES, FP32, LOW, assert_grads_match, assert_same_bits_at_thread_counts, needs_triton, randn,
)
from op_strategies import TRITON_DTYPES, arrange, assert_matches, examples, layouts, seeds, uniform

pytestmark = pytest.mark.resize_sum


# ------------------------------------------------------------------------------------------------
# Against the reference


RESIZE_CASES = [
    # (level sizes, target): FPN-like pyramid, odd sizes, a level larger than the target
    ([(10, 14), (5, 7), (3, 4), (2, 2)], (5, 7)),
    ([(9, 11), (5, 6), (3, 3), (2, 2), (1, 1)], (5, 6)),
    ([(4, 3)], (4, 3)),  # one level at the target size: identity
    ([(1, 1), (2, 3)], (3, 5)),  # single pixel broadcast
    ([(6, 5), (3, 3)], (1, 1)),  # single output pixel
]


@needs_triton
@pytest.mark.parametrize("sizes, target", RESIZE_CASES)
def test_matches_reference(device, generator, launches, sizes, target):
    levels = [randn(generator, 2, 3, *s, device=device) for s in sizes]
    grad = randn(generator, 2, 3, *target, device=device)
    assert_grads_match(
        lambda *ls: ops.resize_sum(list(ls), target), lambda *ls: reference.resize_sum(list(ls), target),
        levels, grad, FP32,
    )
    assert launches == {"resize_sum": 1, "resize_sum_backward": 1}


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(device, generator, dtype):
    levels = [randn(generator, 1, 4, *s, dtype=dtype, device=device) for s in [(8, 10), (4, 5), (2, 3)]]
    grad = randn(generator, 1, 4, 4, 5, device=device)
    assert_grads_match(
        lambda *ls: ops.resize_sum(list(ls), (4, 5)),
        lambda *ls: reference.resize_sum([level.float() for level in ls], (4, 5)),
        levels, grad, LOW,
    )


@needs_triton
def test_non_contiguous(device, generator):
    levels = [randn(generator, 1, 6, 3, s, device=device).transpose(-1, -2) for s in (4, 2)]  # (1, 6, s, 3)
    torch.testing.assert_close(ops.resize_sum(levels, (4, 3)), reference.resize_sum(levels, (4, 3)), **FP32)


# ------------------------------------------------------------------------------------------------
# Properties on drawn inputs


@needs_triton
@pytest.mark.usefixtures("single_thread")
@examples(0.1)
@given(
    seed=seeds,
    channels=st.integers(1, 4),
    level_sizes=st.lists(st.tuples(st.integers(1, 10), st.integers(1, 10)), min_size=1, max_size=4),
    size=st.tuples(st.integers(1, 10), st.integers(1, 10)),
    dtype=st.sampled_from(TRITON_DTYPES),
    layout=layouts,
)
@needs_triton
def test_drawn_inputs_match_reference(device, seed, channels, level_sizes, size, dtype, layout):
    g = torch.Generator().manual_seed(seed)
    levels = [uniform(g, (2, channels, *s), dtype) for s in level_sizes]
    grad = uniform(g, (2, channels, *size), dtype)
    expected_levels = [level.float().requires_grad_() for level in levels]
    expected = reference.resize_sum(expected_levels, size)
    expected.backward(grad.float())
    got_levels = [arrange(level, layout).to(device).requires_grad_() for level in levels]
    out = ops.resize_sum(got_levels, size)
    out.backward(grad.to(device))
    assert_matches([out], [expected], got_levels, expected_levels, dtype)


# ------------------------------------------------------------------------------------------------
# Opcheck


@needs_triton
def test_opcheck(device, generator):
    levels = [randn(generator, 1, 2, *s, device=device).requires_grad_() for s in [(6, 5), (3, 3), (2, 1)]]
    torch.library.opcheck(torch.ops.sfpn.resize_sum, (levels, 3, 4))


# ------------------------------------------------------------------------------------------------
# Argument checks


@needs_triton
def test_bad_inputs(generator):
    level = randn(generator, 1, 2, 4, 4)
    with pytest.raises(ValueError, match="levels"):
        ops.resize_sum([level] * 6, (4, 4))
    with pytest.raises(ValueError, match="levels"):
        ops.resize_sum(level, (4, 4))
    with pytest.raises(ValueError, match=r"levels\[1\].*channels"):
        ops.resize_sum([level, randn(generator, 1, 3, 2, 2)], (4, 4))
    with pytest.raises(TypeError, match=r"levels\[1\].*dtype"):
        ops.resize_sum([level, level.double()], (4, 4))
    with pytest.raises(ValueError, match=r"levels\[0\].*4 dimensions"):
        ops.resize_sum([level[0]], (4, 4))
    with pytest.raises(ValueError, match="size"):
        ops.resize_sum([level], (4, 0))
    with pytest.raises(ValueError, match="size"):
        ops.resize_sum([level], 4)


# ------------------------------------------------------------------------------------------------
# The C++ CPU kernels


needs_cpu_kernel = pytest.mark.skipif(_library.serving("resize_sum", "cpu") != "C++", reason="sfpn._C not built")


@needs_cpu_kernel
@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("dtype", list(CPU_KERNEL_TOLERANCES))
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("sizes, target", RESIZE_CASES)
def test_cpu_kernels_match_float64_reference(generator, sizes, target, channels_last, dtype):
    """The sum and every level's gradient (through autograd) against the reference in float64;
    the sum and the gradients have the reference's dtype and layout (channels_last for
    channels_last maps, where a 1x1 map is both)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    levels = [randn(generator, 2, 5, *s).to(dtype).contiguous(memory_format=layout).requires_grad_() for s in sizes]
    grad = randn(generator, 2, 5, *target).to(dtype).contiguous(memory_format=layout)
    out = ops.resize_sum(levels, target)
    grads = torch.autograd.grad(out, levels, grad)
    exact = [level.detach().double().requires_grad_() for level in levels]
    expected = reference.resize_sum(exact, target)
    expected_grads = torch.autograd.grad(expected, exact, grad.double())
    with _library.references(["resize_sum"]):
        reference_out = ops.resize_sum(levels, target)
        reference_grads = torch.autograd.grad(reference_out, levels, grad)
    assert out.dtype == dtype and out.stride() == reference_out.stride()
    torch.testing.assert_close(out.double(), expected, **CPU_KERNEL_TOLERANCES[dtype])
    for got, want, layout_of in zip(grads, expected_grads, reference_grads):
        assert got.dtype == dtype and got.stride() == layout_of.stride()
        torch.testing.assert_close(got.double(), want, **CPU_KERNEL_TOLERANCES[dtype])


@needs_cpu_kernel
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_kernels_gradcheck(generator, channels_last):
    layout = torch.channels_last if channels_last else torch.contiguous_format
    levels = [randn(generator, 1, 3, *s, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
              for s in [(6, 7), (3, 4), (2, 2)]]
    assert torch.autograd.gradcheck(lambda *maps: ops.resize_sum(list(maps), (3, 4)), levels)


@needs_cpu_kernel
def test_cpu_kernels_bits_do_not_depend_on_the_thread_count(generator):
    """Each output row (forward) and each level's source row (backward) is one thread's: 1, 2 and
    3 threads give the same bits."""
    levels = [randn(generator, 2, 48, *s).bfloat16().contiguous(memory_format=torch.channels_last)
              for s in [(64, 80), (32, 40), (16, 20), (8, 10)]]
    grad = randn(generator, 2, 48, 32, 40).bfloat16().contiguous(memory_format=torch.channels_last)

    def forward_and_backward():
        return [torch.ops.sfpn.resize_sum(levels, 32, 40),
                *torch.ops.sfpn.resize_sum_backward(grad, [64, 32, 16, 8], [80, 40, 20, 10])]

    assert_same_bits_at_thread_counts(forward_and_backward)


@needs_cpu_kernel
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_kernels_opcheck(generator, channels_last):
    layout = torch.channels_last if channels_last else torch.contiguous_format
    levels = [randn(generator, 2, 3, *s).contiguous(memory_format=layout).requires_grad_() for s in [(6, 8), (3, 4)]]
    torch.library.opcheck(torch.ops.sfpn.resize_sum, (levels, 3, 4))
    grad = randn(generator, 2, 3, 3, 4).contiguous(memory_format=layout)
    torch.library.opcheck(torch.ops.sfpn.resize_sum_backward, (grad, [6, 3], [8, 4]))


@needs_cpu_kernel
def test_cpu_kernels_refuse_what_the_python_checks_refuse(generator):
    """A direct call (past the Python checks) gets the kernels' own errors, never a crash."""
    level = randn(generator, 1, 3, 4, 4)
    for args, message in [
        (([level] * 6, 2, 2), "levels must hold 1 to 5 maps, got 6"),
        (([level], 0, 2), "height and width must be positive"),
        (([level, level[:, :2]], 2, 2), r"levels\[1\] must have the batch size and channels"),
        (([level, level.double()], 2, 2), r"levels\[1\] must have the dtype of levels\[0\]"),
        (([level[:, :, :0]], 2, 2), r"levels\[0\] must not be empty"),
        (([level[0]], 2, 2), r"levels\[0\] must be \(N, C, H, W\)"),
    ]:
        with pytest.raises(RuntimeError, match="sfpn::resize_sum: " + message):
            torch.ops.sfpn.resize_sum(*args)
    grad = randn(generator, 1, 3, 2, 2)
    with pytest.raises(RuntimeError, match="sfpn::resize_sum_backward: heights and widths must name the same number"):
        torch.ops.sfpn.resize_sum_backward(grad, [4, 2], [4])
    with pytest.raises(RuntimeError, match="sfpn::resize_sum_backward: every level's height and width must be positive"):
        torch.ops.sfpn.resize_sum_backward(grad, [0], [4])
