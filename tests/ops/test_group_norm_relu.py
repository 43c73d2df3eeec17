"""group_norm_relu: the Triton kernel against the pure-PyTorch reference (also under AMP's
float32 affine parameters), drawn inputs, the reference's explicit backward, opcheck,
argument checks. The kernel runs as in tests/ops/test_resize_sum.py: on a GPU or under the
Triton interpreter, on tiny shapes. Then the C++ CPU kernel (csrc/cpu/group_norm_relu.cpp)
against the float64 reference, in both layouts and every dtype."""
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from sfpn import ops
from sfpn.ops import _library, reference

from op_helpers import (
    CPU_KERNEL_TOLERANCES, FP32, assert_grads_match, assert_same_bits_at_thread_counts, float64_leaf, needs_triton,
    randn,
)
from op_strategies import TRITON_DTYPES, arrange, assert_close, assert_matches, examples, layouts, seeds, uniform

pytestmark = pytest.mark.group_norm_relu


# ------------------------------------------------------------------------------------------------
# Against the reference


GN_CASES = [
    # (shape, groups): odd sizes, a single pixel, one group, a group spanning several kernel blocks
    ((2, 8, 5, 7), 4),
    ((1, 6, 1, 1), 3),
    ((3, 4, 3, 2), 1),
    ((1, 4, 33, 40), 2),
]


@needs_triton
@pytest.mark.parametrize("shape, groups", GN_CASES)
def test_matches_reference(device, generator, launches, shape, groups):
    channels = shape[1]
    x = randn(generator, *shape, device=device) * 3 + 1
    weight, bias = randn(generator, channels, device=device), randn(generator, channels, device=device)
    grad = randn(generator, *shape, device=device)
    # d x scales with 1 / std of the group: a tiny group of close values (two pixels here) is
    # ill-conditioned, and float32 rounding grows with it. Scale the absolute tolerance to match.
    group_std = x.double().reshape(shape[0], groups, -1).std(-1, unbiased=False).min().item()
    tol = dict(rtol=1e-5, atol=1e-5 * max(1.0, 1.0 / group_std))
    assert_grads_match(
        lambda x, w, b: ops.group_norm_relu(x, groups, w, b),
        lambda x, w, b: reference.group_norm_relu(x, groups, w, b),
        [x, weight, bias], grad, tol,
    )
    assert launches == {"group_norm_relu": 1, "group_norm_relu_backward": 1}


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_with_float32_affine(device, generator, dtype):
    """Under AMP the activations are half precision while the GroupNorm parameters stay float32."""
    x = randn(generator, 2, 6, 5, 3, dtype=dtype, device=device)
    weight, bias = randn(generator, 6, device=device), randn(generator, 6, device=device)
    grad = randn(generator, 2, 6, 5, 3, device=device)
    assert_grads_match(
        lambda x, w, b: ops.group_norm_relu(x, 3, w, b),
        lambda x, w, b: reference.group_norm_relu(x.double(), 3, w, b),
        [x, weight, bias], grad, dict(rtol=2e-2, atol=5e-2),
    )


@needs_triton
def test_channels_last_and_eps(device, generator):
    x = randn(generator, 2, 4, 3, 5, device=device).to(memory_format=torch.channels_last)
    weight, bias = randn(generator, 4, device=device), randn(generator, 4, device=device)
    torch.testing.assert_close(
        ops.group_norm_relu(x, 2, weight, bias, eps=0.5), reference.group_norm_relu(x, 2, weight, bias, eps=0.5), **FP32
    )


@pytest.mark.usefixtures("single_thread")
def test_reference_backward_is_exact(generator):
    x, weight, bias = float64_leaf(generator, 2, 4, 3, 5), float64_leaf(generator, 4), float64_leaf(generator, 4)
    assert torch.autograd.gradcheck(lambda *a: ops.group_norm_relu(a[0], 2, a[1], a[2]), (x, weight, bias))
    grad = randn(generator, 2, 4, 3, 5, dtype=torch.float64)
    ours = torch.autograd.grad(ops.group_norm_relu(x, 2, weight, bias), (x, weight, bias), grad)
    theirs = torch.autograd.grad(reference.group_norm_relu(x, 2, weight, bias), (x, weight, bias), grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------------
# Properties on drawn inputs


@pytest.mark.usefixtures("single_thread")
@examples(0.1)
@given(
    seed=seeds,
    batch=st.integers(1, 2),
    groups_and_width=st.tuples(st.integers(1, 4), st.integers(1, 3)),
    size=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    eps=st.sampled_from((1e-5, 1e-3)),
    dtype=st.sampled_from(TRITON_DTYPES),
    layout=layouts,
)
def test_drawn_inputs_match_reference(device, seed, batch, groups_and_width, size, eps, dtype, layout):
    g = torch.Generator().manual_seed(seed)
    groups, width = groups_and_width
    assume(width * size[0] * size[1] > 1)  # F.group_norm, the reference, needs two values per group
    channels = groups * width
    x = uniform(g, (batch, channels, *size), dtype, -3, 3)
    weight, bias = uniform(g, (channels,), torch.float32), uniform(g, (channels,), torch.float32)
    grad = uniform(g, x.shape, dtype)
    expected_args = [t.clone().requires_grad_() for t in (x, weight, bias)]
    expected = reference.group_norm_relu(expected_args[0], groups, *expected_args[1:], eps)
    expected.backward(grad)
    got_args = [arrange(x, layout).to(device).requires_grad_()] + [t.to(device).requires_grad_() for t in (weight, bias)]
    out = ops.group_norm_relu(got_args[0], groups, *got_args[1:], eps)
    out.backward(grad.to(device))
    assert_matches([out], [expected], [], [], dtype)
    # Gradients of a normalisation amplify rounding: half types get a looser bound there, and in
    # float32 the absolute bound scales with the gradient's largest entry (the weight and bias
    # gradients are sums over N*H*W terms; drawn inputs reached 1.05e-5 against a fixed 1e-5).
    for got, want in zip(got_args, expected_args):
        if dtype == torch.float32:
            scale = max(1.0, float(want.grad.abs().max()))
            torch.testing.assert_close(got.grad.double().cpu(), want.grad.double(), rtol=1e-5, atol=1e-5 * scale)
        else:
            torch.testing.assert_close(got.grad.double().cpu(), want.grad.double(), rtol=5e-2, atol=5e-2)


# ------------------------------------------------------------------------------------------------
# Opcheck


@needs_triton
def test_opcheck(device, generator):
    x = randn(generator, 2, 4, 3, 5, device=device).requires_grad_()
    weight = randn(generator, 4, device=device).requires_grad_()
    bias = randn(generator, 4, device=device).requires_grad_()
    torch.library.opcheck(torch.ops.sfpn.group_norm_relu, (x, 2, weight, bias, 1e-5))


# ------------------------------------------------------------------------------------------------
# Argument checks


@needs_triton
def test_bad_inputs(generator):
    x, weight = randn(generator, 1, 4, 3, 3), randn(generator, 4)
    with pytest.raises(ValueError, match="divisible by num_groups"):
        ops.group_norm_relu(x, 3, weight, weight)
    with pytest.raises(ValueError, match="num_groups"):
        ops.group_norm_relu(x, 0, weight, weight)
    with pytest.raises(ValueError, match="weight must have shape"):
        ops.group_norm_relu(x, 2, weight[:3], weight)
    with pytest.raises(ValueError, match="bias must have 1 dimensions"):
        ops.group_norm_relu(x, 2, weight, weight[None])
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        ops.group_norm_relu(x[0], 2, weight, weight)
    with pytest.raises(TypeError, match="x must have dtype"):
        ops.group_norm_relu(x.long(), 2, weight, weight)
    with pytest.raises(ValueError, match="eps"):
        ops.group_norm_relu(x, 2, weight, weight, eps=-1.0)


# ------------------------------------------------------------------------------------------------
# The C++ CPU kernel


needs_cpu_kernel = pytest.mark.skipif(_library.serving("group_norm_relu", "cpu") != "C++", reason="sfpn._C not built")
CPU_CASES = [
    # (shape, groups): a single pixel, one group, 70 channels (a part vector and two blocks of a
    # bf16 run's sums), a plane of 257 values, an NHWC map of 300 pixels (more than one run of the
    # statistics' partial sums) and a plane of 16900 values (more than one bf16 run of 256 rows)
    ((2, 8, 5, 7), 4),
    ((1, 6, 1, 1), 3),
    ((3, 4, 3, 2), 1),
    ((2, 70, 9, 11), 10),
    ((1, 4, 1, 257), 2),
    ((2, 32, 15, 20), 8),
    ((1, 2, 130, 130), 1),
]


@needs_cpu_kernel
@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("dtype", list(CPU_KERNEL_TOLERANCES))
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape, groups", CPU_CASES)
def test_cpu_kernel_matches_float64_reference(generator, shape, groups, channels_last, dtype):
    """Output, mean and rstd against the reference on the float64 copy of the same x; the output
    keeps x's layout and dtype, the statistics are float32 (float64 for float64 x). The backward
    kernel's gradients (fed the forward kernel's statistics) match the float64 reference's."""
    x = (randn(generator, *shape) * 3 + 1).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    parameter_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # float32 under AMP
    weight, bias = randn(generator, shape[1], dtype=parameter_dtype), randn(generator, shape[1], dtype=parameter_dtype)
    out, mean, rstd = torch.ops.sfpn.group_norm_relu(x, groups, weight, bias, 1e-5)
    with _library.references(["group_norm_relu"]):
        expected, expected_mean, expected_rstd = torch.ops.sfpn.group_norm_relu(x.double(), groups, weight, bias, 1e-5)
    assert out.dtype == dtype and out.stride() == x.stride()
    assert mean.dtype == rstd.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = CPU_KERNEL_TOLERANCES[dtype]
    torch.testing.assert_close(out.double(), expected, **tol)
    stats_tol = CPU_KERNEL_TOLERANCES[torch.float64 if dtype == torch.float64 else torch.float32]
    torch.testing.assert_close(mean.double(), expected_mean, **stats_tol)
    torch.testing.assert_close(rstd.double(), expected_rstd, **stats_tol)
    # The backward kernel, through autograd, against float64 autograd of the reference: dx scales
    # with 1 / std of the group, and the weight and bias gradients are sums over N * H * W terms.
    group_std = x.double().reshape(shape[0], groups, -1).std(-1, unbiased=False).min().item()
    grad = randn(generator, *shape).to(dtype)
    if channels_last:
        grad = grad.contiguous(memory_format=torch.channels_last)
    leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]
    got = torch.autograd.grad(ops.group_norm_relu(leaves[0], groups, *leaves[1:]), leaves, grad)
    exact = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    want = torch.autograd.grad(reference.group_norm_relu(exact[0], groups, *exact[1:]), exact, grad.double())
    assert got[0].dtype == dtype and got[0].stride() == x.stride()
    for g, w in zip(got, want):
        scale = max(1.0, 1.0 / group_std, float(w.abs().max()))
        torch.testing.assert_close(g.double(), w, rtol=tol["rtol"], atol=tol["atol"] * scale)


@needs_cpu_kernel
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_kernel_gradcheck(generator, channels_last):
    """float64 through both kernels (the forward's NCHW float64 is ATen's GroupNorm)."""
    x, weight, bias = float64_leaf(generator, 2, 6, 4, 5), float64_leaf(generator, 6), float64_leaf(generator, 6)
    if channels_last:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: ops.group_norm_relu(a[0], 3, a[1], a[2]), (x, weight, bias))


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_kernel_bits_do_not_depend_on_the_thread_count(generator, dtype):
    """The NHWC sums of the forward and the backward add fixed runs of pixels in run order: 1, 2
    and 3 threads give the same bits."""
    x = randn(generator, 2, 64, 40, 50).to(dtype).contiguous(memory_format=torch.channels_last)
    grad = randn(generator, 2, 64, 40, 50).to(dtype).contiguous(memory_format=torch.channels_last)
    weight, bias = randn(generator, 64), randn(generator, 64)

    def forward_and_backward():
        out, mean, rstd = torch.ops.sfpn.group_norm_relu(x, 16, weight, bias, 1e-5)
        return (out, mean, rstd, *torch.ops.sfpn.group_norm_relu_backward(grad, out, x, mean, rstd, weight, bias))

    assert_same_bits_at_thread_counts(forward_and_backward)


@needs_cpu_kernel
@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_kernel_nan_and_empty_batch(generator, channels_last):
    """A NaN poisons its group only, as the reference's; an empty batch gives empty outputs."""
    x = randn(generator, 1, 4, 3, 3).to(torch.bfloat16)
    x[0, 0, 1, 1] = float("nan")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = randn(generator, 4), randn(generator, 4)
    out = ops.group_norm_relu(x, 2, weight, bias)
    assert out[:, :2].isnan().all() and not out[:, 2:].isnan().any()
    torch.testing.assert_close(out[:, 2:], reference.group_norm_relu(x, 2, weight, bias)[:, 2:], rtol=1e-2, atol=2e-2)
    empty = x[:0]
    out, mean, rstd = torch.ops.sfpn.group_norm_relu(empty, 2, weight, bias, 1e-5)
    assert out.shape == (0, 4, 3, 3) and mean.shape == rstd.shape == (0, 2)
    grads = torch.ops.sfpn.group_norm_relu_backward(out, out, empty, mean, rstd, weight, bias)
    assert grads[0].shape == (0, 4, 3, 3) and not grads[1].any() and not grads[2].any()


@needs_cpu_kernel
@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_backward_drops_what_the_relu_dropped(generator, channels_last):
    """Where the output is 0 the incoming gradient is dropped, a NaN one too, as the reference's
    threshold_backward drops it: the gradients are finite and match the reference's."""
    x, weight, bias = randn(generator, 2, 4, 5, 6), randn(generator, 4), randn(generator, 4)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out, mean, rstd = torch.ops.sfpn.group_norm_relu(x, 2, weight, bias, 1e-5)
    grad = torch.where(out > 0, randn(generator, *x.shape), torch.full_like(out, float("nan")))
    got = torch.ops.sfpn.group_norm_relu_backward(grad, out, x, mean, rstd, weight, bias)
    with _library.references(["group_norm_relu"]):
        want = torch.ops.sfpn.group_norm_relu_backward(grad, out, x, mean, rstd, weight, bias)
    assert all(g.isfinite().all() for g in got)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@needs_cpu_kernel
@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_kernel_opcheck(generator, channels_last):
    x = randn(generator, 2, 4, 3, 5).to(torch.bfloat16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = randn(generator, 4).requires_grad_(), randn(generator, 4).requires_grad_()
    torch.library.opcheck(torch.ops.sfpn.group_norm_relu, (x.requires_grad_(), 2, weight, bias, 1e-5))
    out, mean, rstd = torch.ops.sfpn.group_norm_relu(x.detach(), 2, weight.detach(), bias.detach(), 1e-5)
    torch.library.opcheck(torch.ops.sfpn.group_norm_relu_backward,
                          (torch.randn_like(out), out, x.detach(), mean, rstd, weight.detach(), bias.detach()))


@needs_cpu_kernel
def test_cpu_kernel_refuses_what_the_python_checks_refuse(generator):
    """A direct call (past the Python checks) gets the kernel's own errors, never a crash."""
    x, weight = randn(generator, 1, 4, 3, 3).to(torch.bfloat16), randn(generator, 4)
    op = torch.ops.sfpn.group_norm_relu
    out, mean, rstd = torch.ops.sfpn.group_norm_relu(x, 2, weight, weight, 1e-5)
    backward = torch.ops.sfpn.group_norm_relu_backward
    for args, message in [
        ((out[:, :2], out, x, mean, rstd, weight, weight), r"_backward: grad must have the batch size and channels"),
        ((out, out[..., :2], x, mean, rstd, weight, weight), r"_backward: out must have x's shape"),
        ((out, out, x, mean.double(), rstd, weight, weight), r"_backward: mean must be Float for BFloat16 x"),
        ((out, out, x, mean, rstd[:, :1], weight, weight), r"_backward: rstd must have mean's shape"),
        ((out, out, x, mean[:, :1].expand(1, 3), rstd, weight, weight), r"_backward: mean must be \(N, G\) with G dividing"),
        ((out, out, x, mean, rstd, weight, weight[:2]), r"_backward: bias must have shape \(4,\)"),
    ]:
        with pytest.raises(RuntimeError, match="sfpn::group_norm_relu" + message):
            backward(*args)
    for args, message in [
        ((x, 3, weight, weight, 1e-5), r"x's channels \(4\) must be a positive multiple of num_groups \(3\)"),
        ((x, 0, weight, weight, 1e-5), "num_groups must be positive"),
        ((x, 2, weight[:3], weight, 1e-5), r"weight must have shape \(4,\)"),
        ((x, 2, weight, weight[None], 1e-5), r"bias must be \(C,\)"),
        ((x[0], 2, weight, weight, 1e-5), r"x must be \(N, C, H, W\)"),
        ((x[:, :, :0], 2, weight, weight, 1e-5), "x must have at least one pixel"),
        ((x, 2, weight, weight, -1.0), "eps must be non-negative"),
        ((x.int(), 2, weight, weight, 1e-5), "x must be float16, bfloat16, float32 or float64"),
    ]:
        with pytest.raises(RuntimeError, match="sfpn::group_norm_relu: " + message):
            op(*args)
