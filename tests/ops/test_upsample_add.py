"""upsample_add: the C++ kernel against the pure-PyTorch reference (values, dtypes, layouts,
gradients), on drawn inputs, gradcheck and opcheck, argument checks, the CUDA kernel on the
CPU (emulation) and on a GPU."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sfpn import ops
from sfpn.ops import reference, semantic_fuse, upsample_add
from sfpn.ops.reference import upsample_add as upsample_add_reference

from cuda_emulation import assert_close, run
from op_helpers import randn
from op_strategies import arrange, assert_matches, examples, float_dtypes, layouts, resize_modes, seeds, sizes, uniform
from resize_helpers import MODES, MODE_IDS, RESIZE_MODES, TOLERANCE, assert_close_to_exact, requires_kernels

pytestmark = pytest.mark.upsample_add


# (top (Ht, Wt), lateral (H, W)): 2x (the FPN case), odd and uneven ratios, 1x1, identity, large
# ratios, and down-sampling (which semantic_fuse needs and upsample_add allows).
SIZES = [
    ((4, 6), (8, 12)),
    ((3, 5), (7, 11)),
    ((1, 1), (1, 1)),
    ((1, 1), (5, 7)),
    ((5, 5), (5, 5)),
    ((2, 3), (37, 29)),
    ((7, 9), (3, 4)),
    ((13, 6), (17, 1)),
    ((25, 42), (50, 84)),
    ((2, 2), (4, 4)),
]


# ------------------------------------------------------------------------------------------------
# Against the reference


@requires_kernels
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("top_size,lateral_size", SIZES, ids=str)
def test_matches_reference_float32(generator, mode, align_corners, top_size, lateral_size):
    top = randn(generator, 2, 3, *top_size)
    lateral = randn(generator, 2, 3, *lateral_size)
    out = upsample_add(top, lateral, mode, align_corners)
    expected = upsample_add_reference(top, lateral, mode, align_corners)
    assert out.shape == lateral.shape and out.dtype == lateral.dtype and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@requires_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
def test_dtypes(generator, dtype, mode, align_corners):
    top = randn(generator, 2, 5, 6, 9, dtype=dtype)
    lateral = randn(generator, 2, 5, 12, 17, dtype=dtype)  # 2x rows, uneven columns
    out = upsample_add(top, lateral, mode, align_corners)
    assert out.dtype == dtype
    exact = upsample_add_reference(top.double(), lateral.double(), mode, align_corners)
    assert_close_to_exact(out, exact, dtype)


@requires_kernels
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
def test_non_contiguous(generator, mode, align_corners):
    top = randn(generator, 2, 6, 9, 14)[:, ::2, :, 1:]  # strided channels, offset rows
    lateral = randn(generator, 2, 3, 19, 25).to(memory_format=torch.channels_last)
    lateral_t = randn(generator, 2, 3, 25, 19).transpose(2, 3)
    for lat in (lateral, lateral_t):
        out = upsample_add(top, lat, mode, align_corners)
        torch.testing.assert_close(out, upsample_add_reference(top, lat, mode, align_corners), rtol=1e-5, atol=1e-5)


@requires_kernels
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("top_size,lateral_size", SIZES, ids=str)
def test_gradients_match_reference(generator, mode, align_corners, top_size, lateral_size):
    top = randn(generator, 2, 3, *top_size).requires_grad_()
    lateral = randn(generator, 2, 3, *lateral_size).requires_grad_()
    grad = randn(generator, 2, 3, *lateral_size)
    got = torch.autograd.grad(upsample_add(top, lateral, mode, align_corners), (top, lateral), grad)
    expected = torch.autograd.grad(upsample_add_reference(top, lateral, mode, align_corners), (top, lateral), grad)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=0)


@requires_kernels
def test_training_steps_make_no_needless_buffers(generator):
    """Under autograd the lateral's gradient is the output's gradient itself (no copy), and the
    large output and gradient of a step reuse the memory that the previous step freed, already
    mapped (csrc/cpu/recycled_memory.h), yet hold the new step's values."""
    top = randn(generator, 1, 31, 166, 147).requires_grad_()  # sizes of their own: 3 MB and 12 MB
    lateral = randn(generator, 1, 31, 331, 293).requires_grad_()
    addresses = []
    for _ in range(2):
        grad = randn(generator, 1, 31, 331, 293)
        out = upsample_add(top, lateral)
        grad_top, grad_lateral = torch.autograd.grad(out, (top, lateral), grad)
        assert grad_lateral.data_ptr() == grad.data_ptr()
        expected_out, (expected_grad_top, _) = upsample_add_reference(top, lateral), torch.autograd.grad(
            upsample_add_reference(top, lateral), (top, lateral), grad)
        torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad_top, expected_grad_top, rtol=1e-5, atol=1e-5)
        addresses.append((out.data_ptr(), grad_top.data_ptr()))
        del out, grad_top, grad_lateral
    assert addresses[1] == addresses[0]


@requires_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_backward_low_precision(generator, dtype):
    top = randn(generator, 1, 4, 5, 7, dtype=dtype).requires_grad_()
    grad = randn(generator, 1, 4, 10, 13, dtype=dtype)
    lateral = torch.zeros(1, 4, 10, 13, dtype=dtype)
    (got,) = torch.autograd.grad(upsample_add(top, lateral, "bilinear"), top, grad)
    top64 = top.detach().double().requires_grad_()
    (exact,) = torch.autograd.grad(upsample_add_reference(top64, lateral.double(), "bilinear"), top64, grad.double())
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), exact, rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------------------------------------
# Properties on drawn inputs


@pytest.mark.usefixtures("single_thread")
@examples(1.0)
@given(
    seed=seeds,
    batch=st.integers(1, 2),
    channels=st.integers(1, 4),
    top_size=sizes,
    lateral_size=st.tuples(st.integers(1, 17), st.integers(1, 17)),
    resize=resize_modes(),
    dtype=float_dtypes,
    layout=layouts,
)
def test_drawn_inputs_match_reference(seed, batch, channels, top_size, lateral_size, resize, dtype, layout):
    g = torch.Generator().manual_seed(seed)
    mode, align_corners = resize
    top = uniform(g, (batch, channels, *top_size), dtype)
    lateral = uniform(g, (batch, channels, *lateral_size), dtype)
    grad = uniform(g, lateral.shape, dtype)
    # The reference computes in the inputs' dtype; half types are compared to it in float32.
    exact = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    expected_inputs = [t.to(exact, copy=True).requires_grad_() for t in (top, lateral)]
    expected = reference.upsample_add(*expected_inputs, mode, align_corners)
    expected.backward(grad.to(exact))
    inputs = [arrange(t, layout).requires_grad_() for t in (top, lateral)]
    out = ops.upsample_add(*inputs, mode, align_corners)
    out.backward(arrange(grad, layout))
    assert_matches([out], [expected], inputs, expected_inputs, dtype)


# ------------------------------------------------------------------------------------------------
# Autograd and opcheck


@requires_kernels
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("top_size,lateral_size", [((3, 4), (7, 9)), ((5, 3), (2, 4)), ((1, 2), (3, 3))], ids=str)
def test_gradcheck(generator, mode, align_corners, top_size, lateral_size):
    top = randn(generator, 1, 2, *top_size, dtype=torch.float64).requires_grad_()
    lateral = randn(generator, 1, 2, *lateral_size, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t, l: upsample_add(t, l, mode, align_corners), (top, lateral))


@requires_kernels
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
def test_opcheck(generator, mode, align_corners):
    top = randn(generator, 2, 3, 4, 5).requires_grad_()
    lateral = randn(generator, 2, 3, 9, 11).requires_grad_()
    torch.library.opcheck(torch.ops.sfpn.upsample_add, (top, lateral, mode, bool(align_corners)))
    grad = randn(generator, 2, 3, 9, 11)
    torch.library.opcheck(torch.ops.sfpn.upsample_add_backward, (grad, 4, 5, mode, bool(align_corners)))


# ------------------------------------------------------------------------------------------------
# Argument checks


@pytest.mark.parametrize(
    "top,lateral,kwargs,error,match",
    [
        (torch.zeros(2, 3, 4), torch.zeros(2, 3, 8, 8), {}, ValueError, "top must have 4 dimensions"),
        (torch.zeros(2, 3, 4, 4), torch.zeros(3, 8, 8), {}, ValueError, "lateral must have 4 dimensions"),
        (torch.zeros(2, 3, 4, 4), torch.zeros(1, 3, 8, 8), {}, ValueError, r"share batch and channels"),
        (torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 8, 8), {}, ValueError, r"share batch and channels"),
        (torch.zeros(2, 3, 4, 4, dtype=torch.float64), torch.zeros(2, 3, 8, 8), {}, TypeError, "same dtype"),
        (torch.zeros(2, 3, 4, 4, dtype=torch.int64), torch.zeros(2, 3, 8, 8, dtype=torch.int64), {}, TypeError,
         "lateral must have dtype"),
        (torch.zeros(2, 3, 0, 4), torch.zeros(2, 3, 8, 8), {}, ValueError, "top must not be empty"),
        (torch.zeros(2, 3, 4, 4), torch.zeros(0, 3, 8, 8), {}, ValueError, "lateral must not be empty"),
        (torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 8, 8), {"mode": "bicubic"}, ValueError, "mode must be one of"),
        (torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 8, 8), {"align_corners": True}, ValueError, "align_corners"),
        ([0.0], torch.zeros(2, 3, 8, 8), {}, TypeError, "top must be a torch.Tensor"),
    ],
)
def test_bad_input(top, lateral, kwargs, error, match):
    with pytest.raises(error, match=match):
        upsample_add(top, lateral, **kwargs)


@pytest.mark.semantic_fuse
def test_mixed_devices_are_rejected():
    # The meta device stands in for a second device on machines without a GPU.
    other = "cuda" if torch.cuda.is_available() else "meta"
    with pytest.raises(ValueError, match="top must be on the same device as lateral"):
        upsample_add(torch.zeros(1, 2, 3, 3, device=other), torch.zeros(1, 2, 6, 6))
    with pytest.raises(ValueError, match=r"levels\[0\] must be on the same device as semantic"):
        semantic_fuse([torch.zeros(1, 2, 6, 6)], torch.zeros(1, 2, 3, 3, device=other))


# ------------------------------------------------------------------------------------------------
# CUDA kernels on the CPU (emulation)


# (top, lateral) sizes: odd up-sampling, a W that takes the 16-byte vector path, down-sampling.
UPSAMPLE_SIZES = [((5, 7), (11, 13)), ((5, 8), (10, 16)), ((9, 11), (4, 6))]


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("mode,align_corners", RESIZE_MODES)
@pytest.mark.parametrize("top_size,lateral_size", UPSAMPLE_SIZES)
def test_emulated_forward(emulated, generator, mode, align_corners, top_size, lateral_size):
    top = torch.randn(2, 4, *top_size, generator=generator)
    lateral = torch.randn(2, 4, *lateral_size, generator=generator)
    out = run(emulated, "upsample_add", top, lateral, mode, align_corners)
    assert_close(out, reference.upsample_add(top, lateral, mode, align_corners))


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("mode,align_corners", RESIZE_MODES)
@pytest.mark.parametrize("top_size,lateral_size", UPSAMPLE_SIZES)
def test_emulated_backward(emulated, generator, mode, align_corners, top_size, lateral_size):
    top = torch.randn(2, 4, *top_size, generator=generator, dtype=torch.float64, requires_grad=True)
    lateral = torch.randn(2, 4, *lateral_size, generator=generator, dtype=torch.float64)
    grad = torch.randn_like(lateral)
    reference.upsample_add(top, lateral, mode, align_corners).backward(grad)
    grad_top = run(emulated, "upsample_add_backward", grad, top_size[0], top_size[1], mode, align_corners)
    assert_close(grad_top, top.grad, torch.float64)


@pytest.mark.usefixtures("single_thread")
def test_emulated_half(emulated, generator):
    top = torch.randn(2, 4, 5, 8, generator=generator).half()
    lateral = torch.randn(2, 4, 10, 16, generator=generator).half()
    out = run(emulated, "upsample_add", top, lateral, "bilinear", False)
    expected = reference.upsample_add(top.float(), lateral.float(), "bilinear", False)
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)


# ------------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("top_size,lateral_size", SIZES, ids=str)
def test_cuda_matches_cpu(generator, dtype, mode, align_corners, top_size, lateral_size):
    top = randn(generator, 2, 3, *top_size, dtype=dtype)
    lateral = randn(generator, 2, 3, *lateral_size, dtype=dtype)
    grad = randn(generator, 2, 3, *lateral_size, dtype=dtype)
    top_cuda, lateral_cuda = top.cuda().requires_grad_(), lateral.cuda().requires_grad_()
    out = upsample_add(top_cuda, lateral_cuda, mode, align_corners)
    exact = upsample_add_reference(top.double(), lateral.double(), mode, align_corners)
    assert_close_to_exact(out.cpu(), exact, dtype)
    (grad_top,) = torch.autograd.grad(out, top_cuda, grad.cuda())
    top64 = top.double().requires_grad_()
    (exact_grad,) = torch.autograd.grad(upsample_add_reference(top64, lateral.double(), mode, align_corners), top64,
                                        grad.double())
    tolerance = TOLERANCE[dtype] if dtype in (torch.float32, torch.float64) else dict(rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(grad_top.cpu().double(), exact_grad, **tolerance)


@pytest.mark.cuda
def test_cuda_large_and_non_contiguous(generator):
    # Rows whose width is not a multiple of the vector width, and a transposed lateral.
    top = randn(generator, 2, 8, 50, 83, device="cuda")
    lateral = randn(generator, 2, 8, 167, 100, device="cuda").transpose(2, 3)
    for mode, align_corners in MODES:
        out = upsample_add(top, lateral, mode, align_corners)
        torch.testing.assert_close(out, upsample_add_reference(top, lateral, mode, align_corners), rtol=1e-5, atol=1e-5)


@pytest.mark.semantic_fuse
@pytest.mark.cuda
def test_cuda_opcheck(generator):
    top = randn(generator, 2, 3, 4, 5, device="cuda").requires_grad_()
    lateral = randn(generator, 2, 3, 9, 11, device="cuda").requires_grad_()
    torch.library.opcheck(torch.ops.sfpn.upsample_add, (top, lateral, "bilinear", False))
    semantic = randn(generator, 2, 3, 5, 6, device="cuda").requires_grad_()
    torch.library.opcheck(torch.ops.sfpn.semantic_fuse, ([lateral, top], semantic, "bilinear", False))
