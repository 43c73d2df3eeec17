"""max_pool2d: the C++ CPU kernel (csrc/cpu/max_pool2d.cpp) against F.max_pool2d, bit for bit, in
every dtype and both layouts; NaN, the gradient (ATen's, from recomputed indices), gradcheck,
opcheck, argument checks."""
import pytest
import torch
import torch.nn.functional as F

from sfpn import ops
from sfpn.ops import _library

from op_helpers import randn

pytestmark = pytest.mark.max_pool2d

needs_cpu_kernel = pytest.mark.skipif(_library.serving("max_pool2d", "cpu") != "C++", reason="sfpn._C not built")
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
CASES = [
    # (shape, kernel_size, stride, padding): the ResNet stem's, odd sizes, a rectangular window,
    # stride 1, no padding, a window as large as the map, 70 channels (a part vector)
    ((2, 8, 13, 17), 3, 2, 1),
    ((1, 5, 7, 6), (3, 2), (1, 2), (1, 0)),
    ((2, 70, 6, 9), 2, 2, 0),
    ((1, 3, 4, 4), 4, 1, 2),
    ((3, 16, 1, 1), 1, 1, 0),
]


def _arrange(x, channels_last):
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape, kernel_size, stride, padding", CASES)
def test_cpu_kernel_matches_aten_bit_for_bit(generator, shape, kernel_size, stride, padding, channels_last, dtype):
    """The maxima are values of x: the same bits as F.max_pool2d, in x's layout and dtype; a NaN
    wins its windows."""
    x = _arrange(randn(generator, *shape).to(dtype), channels_last)
    x[-1, -1, shape[2] // 2, shape[3] // 2] = float("nan")
    got = ops.max_pool2d(x, kernel_size, stride, padding)
    want = F.max_pool2d(x, kernel_size, stride, padding)
    assert got.dtype == dtype and got.shape == want.shape and got.stride() == want.stride()
    assert got.isnan().any() and torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(), want.nan_to_num())


@pytest.mark.parametrize("channels_last", [False, True])
def test_gradient_is_atens(generator, channels_last):
    """The backward recomputes ATen's indices: the same gradient as F.max_pool2d's, ties included
    (a map of few distinct values)."""
    x = _arrange(torch.randint(0, 3, (2, 6, 9, 11), generator=generator).float(), channels_last)
    grad = randn(generator, 2, 6, 5, 6)
    leaves = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    got = torch.autograd.grad(ops.max_pool2d(leaves[0], 3, 2, 1), leaves[0], grad)[0]
    want = torch.autograd.grad(F.max_pool2d(leaves[1], 3, 2, 1), leaves[1], grad)[0]
    assert torch.equal(got, want)


def test_gradcheck(generator):
    x = randn(generator, 2, 3, 7, 8, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    assert torch.autograd.gradcheck(lambda t: ops.max_pool2d(t, 3, 2, 1), (x.requires_grad_(),))


@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(generator, channels_last):
    x = _arrange(randn(generator, 2, 4, 9, 7).to(torch.bfloat16), channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.sfpn.max_pool2d, (x, [3, 3], [2, 2], [1, 1]))


@needs_cpu_kernel
def test_empty_batch(generator):
    x = randn(generator, 0, 4, 9, 7).contiguous(memory_format=torch.channels_last)
    assert ops.max_pool2d(x, 3, 2, 1).shape == (0, 4, 5, 4)


def test_bad_inputs(generator):
    x = randn(generator, 1, 4, 5, 5)
    for kwargs, error, message in [
        (dict(x=x[0]), ValueError, "x must have 4 dimensions"),
        (dict(x=x.long()), TypeError, "x must have dtype"),
        (dict(kernel_size=0), ValueError, r"kernel_size must be an int >= 1 or two of them \(h, w\), got 0"),
        (dict(kernel_size=(3, 3, 3)), ValueError, "kernel_size must be an int >= 1 or two of them"),
        (dict(stride=(2, 0)), ValueError, "stride must be an int >= 1"),
        (dict(padding=-1), ValueError, "padding must be an int >= 0"),
        (dict(padding=2), ValueError, r"padding must be at most half of kernel_size \[3, 3\], got \[2, 2\]"),
        (dict(x=x[..., :1, :1], padding=0), ValueError, r"x's H, W \(1, 1\) are too small for kernel_size"),
    ]:
        arguments = dict(x=x, kernel_size=3, stride=2, padding=1) | kwargs
        with pytest.raises(error, match=message):
            ops.max_pool2d(**arguments)


@needs_cpu_kernel
def test_cpu_kernel_refuses_what_the_python_checks_refuse(generator):
    """A direct call (past the Python checks) gets the kernel's own errors, never a crash."""
    x = randn(generator, 1, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    for args, message in [
        ((x[0], [3, 3], [2, 2], [1, 1]), r"x must be \(N, C, H, W\)"),
        ((x.int(), [3, 3], [2, 2], [1, 1]), "x must be float16, bfloat16, float32 or float64"),
        ((x, [3, 0], [2, 2], [1, 1]), "kernel_size and stride must be positive"),
        ((x, [3, 3], [2, 2], [2, 1]), "padding must be non-negative and at most half of kernel_size"),
        ((x[..., :1, :1], [3, 3], [2, 2], [0, 0]), r"x's H, W \[1, 1\] are too small for kernel_size"),
    ]:
        with pytest.raises(RuntimeError, match="sfpn::max_pool2d: " + message):
            torch.ops.sfpn.max_pool2d(*args)
