"""semantic_fuse: the C++ kernel against the pure-PyTorch reference (values, dtypes, layouts,
unused outputs, gradients), on drawn inputs, gradcheck and opcheck, argument checks, the CUDA
kernel on the CPU (emulation) and on a GPU."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sfpn import ops
from sfpn.ops import reference, semantic_fuse
from sfpn.ops.reference import semantic_fuse as semantic_fuse_reference

from cuda_emulation import assert_close, run
from op_helpers import randn
from op_strategies import arrange, assert_matches, examples, float_dtypes, layouts, resize_modes, seeds, sizes, uniform
from resize_helpers import MODES, MODE_IDS, RESIZE_MODES, assert_close_to_exact, requires_kernels

pytestmark = pytest.mark.semantic_fuse


# Semantic at stride 8 of a small image; levels P2..P5-like: up, same, down, down (odd sizes).
SEMANTIC_SIZES = [
    ((13, 21), [(25, 42), (13, 21), (7, 11), (4, 6)]),
    ((7, 5), [(1, 1), (30, 2), (7, 5)]),
    ((1, 1), [(3, 4), (1, 1)]),
    ((40, 40), [(3, 5)]),
]


# ------------------------------------------------------------------------------------------------
# Against the reference


@requires_kernels
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("semantic_size,level_sizes", SEMANTIC_SIZES, ids=str)
def test_matches_reference(generator, mode, align_corners, semantic_size, level_sizes):
    semantic = randn(generator, 2, 3, *semantic_size).requires_grad_()
    levels = [randn(generator, 2, 3, *size).requires_grad_() for size in level_sizes]
    grads = [randn(generator, 2, 3, *size) for size in level_sizes]
    outs = semantic_fuse(levels, semantic, mode, align_corners)
    expected = semantic_fuse_reference(levels, semantic, mode, align_corners)
    assert isinstance(outs, list) and len(outs) == len(levels)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    got = torch.autograd.grad(outs, [semantic, *levels], grads)
    want = torch.autograd.grad(expected, [semantic, *levels], grads)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    for g, w in zip(got[1:], want[1:]):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@requires_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(generator, dtype):
    semantic = randn(generator, 2, 4, 9, 11, dtype=dtype)
    levels = [randn(generator, 2, 4, *size, dtype=dtype) for size in [(18, 22), (9, 11), (5, 6)]]
    outs = semantic_fuse(levels, semantic)
    exact = semantic_fuse_reference([level.double() for level in levels], semantic.double())
    for out, ref in zip(outs, exact):
        assert out.dtype == dtype
        assert_close_to_exact(out, ref, dtype)


@requires_kernels
def test_non_contiguous_and_unused_outputs(generator):
    semantic = randn(generator, 2, 6, 8, 10)[:, ::2].requires_grad_()
    levels = [
        randn(generator, 2, 3, 16, 20).to(memory_format=torch.channels_last).requires_grad_(),
        randn(generator, 2, 3, 9, 4).transpose(2, 3).requires_grad_(),
    ]
    outs = semantic_fuse(levels, semantic)
    expected = semantic_fuse_reference(levels, semantic)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # Only the second output reaches the loss: the first level gets no gradient.
    grad = randn(generator, 2, 3, 4, 9)
    got = torch.autograd.grad(outs[1], [semantic, *levels], grad, allow_unused=True)
    want = torch.autograd.grad(expected[1], [semantic, *levels], grad, allow_unused=True)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    assert got[1] is None or not got[1].any()
    torch.testing.assert_close(got[2], want[2])


# ------------------------------------------------------------------------------------------------
# Properties on drawn inputs


@pytest.mark.usefixtures("single_thread")
@examples(0.75)
@given(
    seed=seeds,
    batch=st.integers(1, 2),
    channels=st.integers(1, 3),
    level_sizes=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12)), min_size=1, max_size=5),
    semantic_size=sizes,
    resize=resize_modes(),
    dtype=float_dtypes,
    layout=layouts,
)
def test_drawn_inputs_match_reference(seed, batch, channels, level_sizes, semantic_size, resize, dtype, layout):
    g = torch.Generator().manual_seed(seed)
    mode, align_corners = resize
    levels = [uniform(g, (batch, channels, *s), dtype) for s in level_sizes]
    semantic = uniform(g, (batch, channels, *semantic_size), dtype)
    grads = [uniform(g, level.shape, dtype) for level in levels]
    exact = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    expected_levels = [level.to(exact, copy=True).requires_grad_() for level in levels]
    expected_semantic = semantic.to(exact, copy=True).requires_grad_()
    expected = reference.semantic_fuse(expected_levels, expected_semantic, mode, align_corners)
    torch.autograd.backward(expected, [grad.to(exact) for grad in grads])
    got_levels = [arrange(level, layout).requires_grad_() for level in levels]
    got_semantic = arrange(semantic, layout).requires_grad_()
    outs = ops.semantic_fuse(got_levels, got_semantic, mode, align_corners)
    torch.autograd.backward(outs, [arrange(grad, layout) for grad in grads])
    assert_matches(outs, expected, [got_semantic, *got_levels], [expected_semantic, *expected_levels], dtype)


# ------------------------------------------------------------------------------------------------
# Autograd and opcheck


@requires_kernels
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
def test_gradcheck(generator, mode, align_corners):
    semantic = randn(generator, 1, 2, 3, 4, dtype=torch.float64).requires_grad_()
    levels = [randn(generator, 1, 2, *size, dtype=torch.float64).requires_grad_() for size in [(6, 7), (3, 4), (2, 1)]]
    assert torch.autograd.gradcheck(
        lambda s, *ls: tuple(semantic_fuse(list(ls), s, mode, align_corners)), (semantic, *levels)
    )


@requires_kernels
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
def test_opcheck(generator, mode, align_corners):
    semantic = randn(generator, 2, 3, 5, 6).requires_grad_()
    levels = [randn(generator, 2, 3, *size).requires_grad_() for size in [(10, 12), (5, 6), (3, 3)]]
    torch.library.opcheck(torch.ops.sfpn.semantic_fuse, (levels, semantic, mode, bool(align_corners)))
    grads = [randn(generator, 2, 3, *size) for size in [(10, 12), (5, 6), (3, 3)]]
    torch.library.opcheck(torch.ops.sfpn.semantic_fuse_backward, (grads, 5, 6, mode, bool(align_corners)))


# ------------------------------------------------------------------------------------------------
# Argument checks


@pytest.mark.parametrize(
    "levels,semantic,kwargs,error,match",
    [
        (torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 4, 4), {}, TypeError, "levels must be a list"),
        ([], torch.zeros(2, 3, 4, 4), {}, ValueError, "at least one tensor"),
        ([torch.zeros(2, 3, 8)], torch.zeros(2, 3, 4, 4), {}, ValueError, r"levels\[0\] must have 4 dimensions"),
        ([torch.zeros(2, 3, 8, 8)], torch.zeros(3, 4, 4), {}, ValueError, "semantic must have 4 dimensions"),
        ([torch.zeros(2, 3, 8, 8), torch.zeros(1, 3, 4, 4)], torch.zeros(2, 3, 4, 4), {}, ValueError,
         r"levels\[1\] must share batch and channels"),
        ([torch.zeros(2, 5, 8, 8)], torch.zeros(2, 3, 4, 4), {}, ValueError, r"levels\[0\] must share batch"),
        ([torch.zeros(2, 3, 8, 8, dtype=torch.float16)], torch.zeros(2, 3, 4, 4), {}, TypeError,
         r"levels\[0\] must have the same dtype"),
        ([torch.zeros(2, 3, 8, 8, dtype=torch.int32)], torch.zeros(2, 3, 4, 4, dtype=torch.int32), {}, TypeError,
         "semantic must have dtype"),
        ([torch.zeros(2, 3, 0, 8)], torch.zeros(2, 3, 4, 4), {}, ValueError, r"levels\[0\] must not be empty"),
        ([torch.zeros(2, 3, 8, 8)], torch.zeros(2, 3, 4, 0), {}, ValueError, "semantic must not be empty"),
        ([torch.zeros(2, 3, 8, 8)], torch.zeros(2, 3, 4, 4), {"mode": "area"}, ValueError, "mode must be one of"),
        ([torch.zeros(2, 3, 8, 8), "P3"], torch.zeros(2, 3, 4, 4), {}, TypeError, r"levels\[1\] must be a torch"),
    ],
)
def test_bad_input(levels, semantic, kwargs, error, match):
    with pytest.raises(error, match=match):
        semantic_fuse(levels, semantic, **kwargs)


# ------------------------------------------------------------------------------------------------
# CUDA kernels on the CPU (emulation)


# Up (P2), identity (P3), down (P4, P5, odd sizes); and more levels than one launch takes (8).
FUSE_LEVELS = [[(20, 28), (10, 14), (5, 7), (3, 4)], [(3 + k, 5 + 2 * k) for k in range(9)]]


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("mode,align_corners", RESIZE_MODES)
@pytest.mark.parametrize("sizes", FUSE_LEVELS, ids=["fpn", "nine-levels"])
def test_emulated_forward(emulated, generator, mode, align_corners, sizes):
    semantic = torch.randn(1, 3, 10, 14, generator=generator)
    levels = [torch.randn(1, 3, *size, generator=generator) for size in sizes]
    fused = run(emulated, "semantic_fuse", levels, semantic, mode, align_corners)
    expected = reference.semantic_fuse(levels, semantic, mode, align_corners)
    assert len(fused) == len(expected)
    for out, ref in zip(fused, expected):
        assert_close(out, ref)


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("mode,align_corners", RESIZE_MODES)
@pytest.mark.parametrize("sizes", FUSE_LEVELS, ids=["fpn", "nine-levels"])
def test_emulated_backward(emulated, generator, mode, align_corners, sizes):
    semantic = torch.randn(1, 3, 10, 14, generator=generator, dtype=torch.float64, requires_grad=True)
    levels = [torch.randn(1, 3, *size, generator=generator, dtype=torch.float64) for size in sizes]
    grads = [torch.randn_like(level) for level in levels]
    fused = reference.semantic_fuse(levels, semantic, mode, align_corners)
    torch.autograd.backward(fused, grads)
    grad_semantic = run(emulated, "semantic_fuse_backward", grads, 10, 14, mode, align_corners)
    assert_close(grad_semantic, semantic.grad, torch.float64)


# ------------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("semantic_size,level_sizes", SEMANTIC_SIZES, ids=str)
def test_cuda_matches_cpu(generator, mode, align_corners, semantic_size, level_sizes):
    semantic = randn(generator, 2, 3, *semantic_size)
    levels = [randn(generator, 2, 3, *size) for size in level_sizes]
    grads = [randn(generator, 2, 3, *size) for size in level_sizes]
    semantic_cuda = semantic.cuda().requires_grad_()
    levels_cuda = [level.cuda().requires_grad_() for level in levels]
    outs = semantic_fuse(levels_cuda, semantic_cuda, mode, align_corners)
    semantic_cpu = semantic.clone().requires_grad_()
    levels_cpu = [level.clone().requires_grad_() for level in levels]
    expected = semantic_fuse_reference(levels_cpu, semantic_cpu, mode, align_corners)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-5, atol=1e-5)
    got = torch.autograd.grad(outs, [semantic_cuda, *levels_cuda], [g.cuda() for g in grads])
    want = torch.autograd.grad(expected, [semantic_cpu, *levels_cpu], grads)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu(), w, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
def test_cuda_many_levels(generator):
    # More levels than one launch carries (8): the backward accumulates across launches.
    semantic = randn(generator, 1, 2, 6, 7, device="cuda").requires_grad_()
    levels = [randn(generator, 1, 2, 3 + k, 4 + 2 * k, device="cuda").requires_grad_() for k in range(11)]
    outs = semantic_fuse(levels, semantic)
    expected = semantic_fuse_reference(levels, semantic)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    got = torch.autograd.grad(sum(o.sum() for o in outs), semantic)
    want = torch.autograd.grad(sum(o.sum() for o in expected), semantic)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
