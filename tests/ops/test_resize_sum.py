"""resize_sum: the Triton kernel against the pure-PyTorch reference, drawn inputs, opcheck,
argument checks.

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
from sfpn.ops import reference

from op_helpers import FP32, LOW, assert_grads_match, needs_triton, randn
from op_strategies import TRITON_DTYPES, arrange, assert_matches, examples, layouts, seeds, uniform

pytestmark = [pytest.mark.resize_sum, needs_triton]


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


@pytest.mark.parametrize("sizes, target", RESIZE_CASES)
def test_matches_reference(device, generator, launches, sizes, target):
    levels = [randn(generator, 2, 3, *s, device=device) for s in sizes]
    grad = randn(generator, 2, 3, *target, device=device)
    assert_grads_match(
        lambda *ls: ops.resize_sum(list(ls), target), lambda *ls: reference.resize_sum(list(ls), target),
        levels, grad, FP32,
    )
    assert launches == {"resize_sum": 1, "resize_sum_backward": 1}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(device, generator, dtype):
    levels = [randn(generator, 1, 4, *s, dtype=dtype, device=device) for s in [(8, 10), (4, 5), (2, 3)]]
    grad = randn(generator, 1, 4, 4, 5, device=device)
    assert_grads_match(
        lambda *ls: ops.resize_sum(list(ls), (4, 5)),
        lambda *ls: reference.resize_sum([level.float() for level in ls], (4, 5)),
        levels, grad, LOW,
    )


def test_non_contiguous(device, generator):
    levels = [randn(generator, 1, 6, 3, s, device=device).transpose(-1, -2) for s in (4, 2)]  # (1, 6, s, 3)
    torch.testing.assert_close(ops.resize_sum(levels, (4, 3)), reference.resize_sum(levels, (4, 3)), **FP32)


# ------------------------------------------------------------------------------------------------
# Properties on drawn inputs


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


def test_opcheck(device, generator):
    levels = [randn(generator, 1, 2, *s, device=device).requires_grad_() for s in [(6, 5), (3, 3), (2, 1)]]
    torch.library.opcheck(torch.ops.sfpn.resize_sum, (levels, 3, 4))


# ------------------------------------------------------------------------------------------------
# Argument checks


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
