"""winograd_conv2d: the C++ CPU kernel (csrc/cpu/winograd.cpp) and the reference (the same
transforms in PyTorch) against F.conv2d in float64, the float32 rounding against its bound, the
gradients, gradcheck, opcheck, partial tiles and channel blocks, non-finite inputs, argument checks."""
import pytest
import torch
import torch.nn.functional as F

from sfpn import ops
from sfpn.ops import _library
from sfpn.ops.winograd import winograd_conv2d_reference, winograd_weight

from op_helpers import assert_same_bits_at_thread_counts, randn

pytestmark = pytest.mark.winograd_conv2d

needs_cpu_kernel = pytest.mark.skipif(_library.serving("winograd_conv2d", "cpu") != "C++", reason="sfpn._C not built")
IMPLEMENTATIONS = {"kernel": ops.winograd_conv2d, "reference": winograd_conv2d_reference}
CASES = [
    # (N, C, H, W, K): whole tiles; partial tiles on both axes with partial channel blocks (37, 20
    # channels against 16 float lanes); maps smaller than a tile; one pixel; 70 channels (4 blocks
    # and a part); a map of one tile row
    (2, 16, 8, 12, 16),
    (1, 37, 13, 17, 20),
    (3, 5, 3, 2, 7),
    (1, 3, 1, 1, 2),
    (2, 70, 9, 6, 33),
    (1, 24, 4, 29, 18),
    (2, 24, 130, 135, 20),  # 2 x 33 x 34 = 2244 tiles: the forward's blocks of 64, the last partial
]


def _inputs(generator, n, c, h, w, k, dtype, channels_last=True):
    x = randn(generator, n, c, h, w, dtype=dtype)
    weight = randn(generator, k, c, 3, 3, dtype=dtype) / (3 * c**0.5)
    bias = randn(generator, k, dtype=dtype)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), weight, bias


def _float64_conv(x, weight, bias):
    return F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=1)


def _requires(implementation):
    if implementation == "kernel" and _library.serving("winograd_conv2d", "cpu") != "C++":
        pytest.skip("sfpn._C not built")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", CASES)
def test_float64_matches_direct_convolution(generator, implementation, shape, with_bias, channels_last):
    """In float64 the algorithm's rounding is far below any tolerance: the convolution itself, in
    a channels_last output."""
    _requires(implementation)
    x, weight, bias = _inputs(generator, *shape, torch.float64, channels_last)
    bias = bias if with_bias else None
    got = IMPLEMENTATIONS[implementation](x, weight, bias)
    want = _float64_conv(x, weight, bias)
    assert got.dtype == torch.float64 and got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", CASES + [(2, 256, 13, 21, 256)])
def test_float32_rounding_within_its_bound(generator, implementation, shape):
    """float32: within 1e-4 of the outputs' largest magnitude of the float64 convolution (F(4x4,
    3x3) rounds ~50x more than a direct convolution: 1.4e-5 measured at 256 channels), and the
    kernel within 1e-5 of the reference, which rounds the same transforms in another order."""
    _requires(implementation)
    x, weight, bias = _inputs(generator, *shape, torch.float32)
    got = IMPLEMENTATIONS[implementation](x, weight, bias)
    want = _float64_conv(x, weight, bias)
    scale = want.abs().max().item()
    assert (got.double() - want).abs().max().item() <= 1e-4 * scale
    if implementation == "kernel":
        reference = winograd_conv2d_reference(x, weight, bias)
        assert (got - reference).abs().max().item() <= 1e-5 * scale


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", CASES)
def test_gradients_match_direct_convolution(generator, implementation, shape):
    """The gradients w.r.t. x, weight and bias, float64, against F.conv2d's; float32 within the
    same bound as the forward."""
    _requires(implementation)
    for dtype, bound in ((torch.float64, 1e-11), (torch.float32, 1e-4)):
        leaves = [t.requires_grad_() for t in _inputs(generator, *shape, dtype)]
        grad = randn(generator, shape[0], shape[4], shape[2], shape[3], dtype=dtype)
        got = torch.autograd.grad(IMPLEMENTATIONS[implementation](*leaves), leaves, grad)
        references = [t.detach().double().requires_grad_() for t in leaves]
        want = torch.autograd.grad(_float64_conv(*references), references, grad.double())
        for g, w in zip(got, want):
            assert g.dtype == dtype and g.shape == w.shape
            assert (g.double() - w).abs().max().item() <= bound * max(w.abs().max().item(), 1.0)


@needs_cpu_kernel
def test_backward_computes_only_the_gradients_asked_for(generator):
    x, weight, bias = _inputs(generator, 2, 8, 7, 9, 5, torch.float64)
    tiles = winograd_weight(weight)
    grad = randn(generator, 2, 5, 7, 9, dtype=torch.float64)
    full = torch.ops.sfpn.winograd_conv2d_backward(grad, x, tiles, [True, True, True])
    for mask in ([True, False, False], [False, True, False], [False, False, True], [False, False, False]):
        got = torch.ops.sfpn.winograd_conv2d_backward(grad, x, tiles, mask)
        for asked, g, f in zip(mask, got, full):
            assert torch.equal(g, f) if asked else g.numel() == 0


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_gradcheck(generator, implementation):
    _requires(implementation)
    leaves = [t.requires_grad_() for t in _inputs(generator, 2, 3, 5, 6, 4, torch.float64)]
    assert torch.autograd.gradcheck(IMPLEMENTATIONS[implementation], leaves)


@pytest.mark.parametrize("with_bias", [True, False])
def test_opcheck(generator, with_bias):
    x, weight, bias = _inputs(generator, 2, 6, 7, 5, 3, torch.float32)
    tiles = winograd_weight(weight)
    torch.library.opcheck(torch.ops.sfpn.winograd_conv2d,
                          (x.requires_grad_(), tiles.requires_grad_(), bias.requires_grad_() if with_bias else None))


@needs_cpu_kernel
def test_same_bits_at_any_thread_count(generator):
    """Tiles are transformed independently (and a block of tiles' products computed by one thread),
    the weight gradient summed over tiles by the matrix product alone: the outputs and gradients
    do not depend on the thread count."""
    leaves = [t.requires_grad_() for t in _inputs(generator, 2, 40, 130, 67, 24, torch.float32)]  # blocks
    grad = randn(generator, 2, 24, 130, 67)

    def call():
        y = ops.winograd_conv2d(*leaves)
        return (y, *torch.autograd.grad(y, leaves, grad))

    assert_same_bits_at_thread_counts(call)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_nan_spreads_over_the_tiles_that_read_it(generator, implementation):
    """A NaN input makes NaN every output the direct convolution makes NaN, and at most the 4x4
    tiles whose 6x6 windows read it; every other output is the convolution's."""
    _requires(implementation)
    x, weight, bias = _inputs(generator, 1, 4, 12, 12, 3, torch.float64)
    x[0, 1, 5, 8] = float("nan")  # read by the windows of tile rows 1 (rows 3..8) and columns 1, 2 (3..12)
    got = IMPLEMENTATIONS[implementation](x, weight, bias)
    want = _float64_conv(x, weight, bias)
    nan = got.isnan()
    assert nan[want.isnan()].all()
    assert not nan[:, :, :4].any() and not nan[:, :, 8:].any() and not nan[:, :, :, :4].any()
    torch.testing.assert_close(got[~nan], want[~nan], rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", [(0, 4, 5, 5, 3), (2, 4, 0, 5, 3), (2, 4, 5, 6, 0), (2, 0, 5, 6, 3)])
def test_empty(generator, implementation, shape):
    """An empty batch, map or output channels give an empty output; no input channels, the bias
    everywhere (ATen's conv2d refuses no output channels and returns an input of no channels)."""
    _requires(implementation)
    x, weight, bias = _inputs(generator, *shape, torch.float32)
    n, c, h, w, k = shape
    got = IMPLEMENTATIONS[implementation](x, weight, bias)
    assert got.shape == (n, k, h, w)
    if c == 0:
        torch.testing.assert_close(got, bias.view(1, k, 1, 1).expand(n, k, h, w), rtol=0, atol=0)


def test_bad_inputs(generator):
    x, weight, bias = _inputs(generator, 1, 4, 5, 5, 3, torch.float32)
    for args, error, message in [
        ((x[0], weight, bias), ValueError, "x must have 4 dimensions"),
        ((x, weight[..., :2], bias), ValueError, r"weight must be \(K, C, 3, 3\) with x's C = 4"),
        ((x, weight[:, :3], bias), ValueError, r"weight must be \(K, C, 3, 3\) with x's C = 4"),
        ((x, weight.double(), bias), TypeError, "weight must have the same dtype as x"),
        ((x, weight, bias[:2]), ValueError, r"bias must be \(K\) = \(3,\)"),
        ((x, weight, bias.double()), TypeError, "bias must have the same dtype as x"),
        ((x.int(), weight, bias), TypeError, "x must have dtype in"),
        ((x.bfloat16(), weight.bfloat16(), bias.bfloat16()), TypeError, r"x must have dtype in \(float32, float64\)"),
    ]:
        with pytest.raises(error, match=message):
            ops.winograd_conv2d(*args)


@needs_cpu_kernel
def test_kernel_checks_direct_calls(generator):
    """The op called directly (no Python checks) says what is wrong instead of reading out of
    bounds."""
    x, weight, bias = _inputs(generator, 1, 4, 5, 5, 3, torch.float32)
    tiles = winograd_weight(weight)
    for args, message in [
        ((x, tiles[:, :3], bias), r"weight must be \(36, C, K\) with x's C = 4"),
        ((x, tiles[:35], bias), r"weight must be \(36, C, K\)"),
        ((x, tiles.double(), bias), "weight must have x's dtype"),
        ((x, tiles, bias[:2]), r"bias must be \(K\) = \(3\)"),
        ((x.half(), tiles.half(), bias.half()), "x must be float32 or float64"),
    ]:
        with pytest.raises(RuntimeError, match=message):
            torch.ops.sfpn.winograd_conv2d(*args)
    grad = randn(generator, 1, 3, 5, 4)
    with pytest.raises(RuntimeError, match=r"grad must be \(N, K, H, W\) = \(1, 3, 5, 5\)"):
        torch.ops.sfpn.winograd_conv2d_backward(grad, x, tiles, [True, True, True])
