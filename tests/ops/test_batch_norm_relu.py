"""batch_norm_relu: the C++ CPU kernels (csrc/cpu/batch_norm_relu.cpp) against the float64
reference, in both layouts, every dtype, with and without the residual; the running statistics
against nn.BatchNorm2d's; gradcheck, opcheck, thread counts, NaN, argument checks. The reference
(every other device, and the CPU without the extension) is checked against F.batch_norm."""
import pytest
import torch
import torch.nn.functional as F

from sfpn import ops
from sfpn.ops import _library, reference

from op_helpers import CPU_KERNEL_TOLERANCES, FP32, assert_same_bits_at_thread_counts, randn

pytestmark = pytest.mark.batch_norm_relu

needs_cpu_kernel = pytest.mark.skipif(_library.serving("batch_norm_relu", "cpu") != "C++", reason="sfpn._C not built")
CASES = [
    # one pixel per image, 70 channels (a part vector and two blocks of a bf16 run's sums), a plane
    # of 257 values, an NHWC map of 600 pixels (several runs of the statistics' partial sums), three
    # images, a plane of 16900 values (more than one bf16 run of 256 rows of 64)
    (4, 8, 1, 1),
    (2, 70, 9, 11),
    (2, 4, 1, 257),
    (2, 32, 15, 20),
    (3, 6, 5, 7),
    (1, 2, 130, 130),
]


def _inputs(generator, shape, dtype, channels_last, residual):
    """x (shifted and scaled, so that the statistics matter), weight and bias (float32 under AMP,
    float64 for float64 x), and the residual or None, x's layout for the maps."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = ((randn(generator, *shape) * 3 + 1).to(dtype)).contiguous(memory_format=layout)
    parameter_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    weight = randn(generator, shape[1], dtype=parameter_dtype)
    bias = randn(generator, shape[1], dtype=parameter_dtype)
    added = _like(generator, x) if residual else None
    return x, weight, bias, added


def _like(generator, x):
    """A random map of x's shape, dtype and layout: a gradient for x's output."""
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return randn(generator, *x.shape).to(x.dtype).contiguous(memory_format=layout)


def _leaves(tensors, to=None):
    return [None if t is None else (t.double() if to else t).detach().requires_grad_() for t in tensors]


@needs_cpu_kernel
@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("dtype", list(CPU_KERNEL_TOLERANCES))
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", CASES)
def test_cpu_kernel_matches_float64_reference(generator, shape, channels_last, dtype, residual):
    """Output and statistics against the reference op on the float64 copy of the same inputs; the
    output keeps x's layout and dtype, the statistics are float32 (float64 for float64 x). The
    gradients of x, weight, bias and residual (the backward kernel fed the forward kernel's
    statistics) against float64 autograd of the reference."""
    x, weight, bias, added = _inputs(generator, shape, dtype, channels_last, residual)
    out, mean, rstd, variance = torch.ops.sfpn.batch_norm_relu(x, weight, bias, added, 1e-5)
    with _library.references(["batch_norm_relu"]):
        want = torch.ops.sfpn.batch_norm_relu(x.double(), weight, bias, None if added is None else added.double(), 1e-5)
    assert out.dtype == dtype and out.stride() == x.stride()
    stats_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert mean.dtype == rstd.dtype == variance.dtype == stats_dtype and mean.shape == (shape[1],)
    tol = CPU_KERNEL_TOLERANCES[dtype]
    torch.testing.assert_close(out.double(), want[0], **tol)
    for got, expected in zip((mean, rstd, variance), want[1:]):
        torch.testing.assert_close(got.double(), expected, **CPU_KERNEL_TOLERANCES[stats_dtype])

    grad = _like(generator, x)
    leaves = _leaves((x, weight, bias, added))
    got = torch.autograd.grad(ops.batch_norm_relu(leaves[0], *leaves[1:3], residual=leaves[3]),
                              [t for t in leaves if t is not None], grad)
    exact = _leaves((x, weight, bias, added), to=torch.float64)
    expected = torch.autograd.grad(reference.batch_norm_relu(exact[0], *exact[1:3], residual=exact[3]),
                                   [t for t in exact if t is not None], grad.double())
    assert got[0].dtype == dtype and got[0].stride() == x.stride()
    if residual:
        assert got[3].dtype == dtype and got[3].stride() == x.stride()
    # dx scales with 1 / std of the channel; the weight and bias gradients are sums over N*H*W terms.
    channel_std = x.double().transpose(0, 1).reshape(shape[1], -1).std(-1, unbiased=False).min().item()
    for g, w in zip(got, expected):
        scale = max(1.0, 1.0 / channel_std, float(w.abs().max()))
        torch.testing.assert_close(g.double(), w, rtol=tol["rtol"], atol=tol["atol"] * scale)


def test_reference_matches_batch_norm_training(generator):
    """The reference op, which serves every device without a kernel, is F.batch_norm in training
    mode, the sum and the ReLU; its variance is the unbiased one the running statistics take."""
    x, weight, bias, added = _inputs(generator, (3, 5, 4, 6), torch.float32, False, True)
    with _library.references(["batch_norm_relu"]):
        out, mean, rstd, variance = torch.ops.sfpn.batch_norm_relu(x, weight, bias, added, 1e-5)
    torch.testing.assert_close(out, F.relu(F.batch_norm(x, None, None, weight, bias, True, 0.0, 1e-5) + added), **FP32)
    torch.testing.assert_close(mean, x.mean((0, 2, 3)), **FP32)
    torch.testing.assert_close(variance, x.var((0, 2, 3), unbiased=True), **FP32)
    torch.testing.assert_close(rstd, (x.var((0, 2, 3), unbiased=False) + 1e-5).rsqrt(), **FP32)


@pytest.mark.parametrize("momentum", [0.1, 1.0])
@pytest.mark.parametrize("channels_last", [False, True])
def test_running_statistics_update_as_batch_norm(generator, channels_last, momentum):
    """Two calls update running_mean and running_var (the variance unbiased) as nn.BatchNorm2d's
    training forward does; the output and gradients match its with the sum and the ReLU."""
    bn = torch.nn.BatchNorm2d(6, momentum=momentum)
    bn.running_mean.normal_(generator=generator)
    bn.running_var.uniform_(0.5, 2, generator=generator)
    running_mean, running_var = bn.running_mean.clone(), bn.running_var.clone()
    for _ in range(2):
        x, _, _, added = _inputs(generator, (2, 6, 5, 4), torch.float32, channels_last, True)
        got_leaves, want_leaves = _leaves((x, bn.weight, bn.bias, added)), _leaves((x, bn.weight, bn.bias, added))
        got = ops.batch_norm_relu(got_leaves[0], got_leaves[1], got_leaves[2], running_mean, running_var,
                                  got_leaves[3], momentum=momentum)
        want = F.relu(F.batch_norm(want_leaves[0], bn.running_mean, bn.running_var, want_leaves[1], want_leaves[2],
                                   True, momentum, bn.eps) + want_leaves[3])
        torch.testing.assert_close(got, want, **FP32)
        torch.testing.assert_close(running_mean, bn.running_mean, **FP32)
        torch.testing.assert_close(running_var, bn.running_var, **FP32)
        grad = randn(generator, *x.shape)
        for g, w in zip(torch.autograd.grad(got, got_leaves, grad), torch.autograd.grad(want, want_leaves, grad)):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5 * max(1.0, float(w.abs().max())))
    assert not running_mean.requires_grad and not running_var.requires_grad


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_gradcheck(generator, channels_last, residual):
    """float64 through the kernels (the reference without the extension)."""
    x, weight, bias, added = _leaves(_inputs(generator, (3, 4, 3, 5), torch.float64, channels_last, residual))
    inputs = (x, weight, bias) + ((added,) if residual else ())
    assert torch.autograd.gradcheck(lambda *a: ops.batch_norm_relu(*a[:3], residual=a[3] if residual else None), inputs)


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_kernel_bits_do_not_depend_on_the_thread_count(generator, dtype, channels_last):
    """The sums add fixed runs of pixels (NHWC) or planes (NCHW) in a fixed order: 1, 2 and 3
    threads give the same bits, forward and backward."""
    x, weight, bias, added = _inputs(generator, (4, 48, 30, 40), dtype, channels_last, True)
    grad = _like(generator, x)

    def forward_and_backward():
        out, mean, rstd, variance = torch.ops.sfpn.batch_norm_relu(x, weight, bias, added, 1e-5)
        grads = torch.ops.sfpn.batch_norm_relu_backward(grad, out, x, mean, rstd, weight, True)
        return (out, mean, rstd, variance, *grads)

    assert_same_bits_at_thread_counts(forward_and_backward)


@needs_cpu_kernel
@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_kernel_nan_poisons_its_channel_and_the_relu_drops_gradients(generator, channels_last):
    """A NaN in x poisons its channel only, as the reference's; where the output is 0 the incoming
    gradient is dropped, a NaN one too, as the reference's threshold_backward drops it."""
    x, weight, bias, added = _inputs(generator, (2, 4, 3, 5), torch.bfloat16, channels_last, True)
    poisoned = x.clone()
    poisoned[1, 2, 1, 1] = float("nan")
    out = ops.batch_norm_relu(poisoned, weight, bias, residual=added)
    assert out[:, 2].isnan().all() and not out[:, [0, 1, 3]].isnan().any()
    torch.testing.assert_close(out[:, [0, 1, 3]], reference.batch_norm_relu(poisoned, weight, bias, residual=added)[
        :, [0, 1, 3]], rtol=1e-2, atol=3e-2)

    out, mean, rstd, _ = torch.ops.sfpn.batch_norm_relu(x, weight, bias, added, 1e-5)
    grad = torch.where(out > 0, randn(generator, *x.shape).to(x.dtype), torch.full_like(out, float("nan")))
    got = torch.ops.sfpn.batch_norm_relu_backward(grad, out, x, mean, rstd, weight, True)
    with _library.references(["batch_norm_relu"]):
        want = torch.ops.sfpn.batch_norm_relu_backward(grad, out, x, mean, rstd, weight, True)
    assert all(g.isfinite().all() for g in got)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-2, atol=3e-2)


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_opcheck(generator, channels_last, residual):
    x, weight, bias, added = _inputs(generator, (2, 4, 3, 5), torch.bfloat16, channels_last, residual)
    leaves = _leaves((x, weight, bias, added))
    torch.library.opcheck(torch.ops.sfpn.batch_norm_relu, (*leaves, 1e-5))
    out, mean, rstd, _ = torch.ops.sfpn.batch_norm_relu(x, weight, bias, added, 1e-5)
    torch.library.opcheck(torch.ops.sfpn.batch_norm_relu_backward,
                          (torch.randn_like(out), out, x, mean, rstd, weight, residual))


def test_bad_inputs(generator):
    x, weight = randn(generator, 2, 4, 3, 3), randn(generator, 4)
    running = torch.zeros(4)
    for kwargs, error, message in [
        (dict(x=x[0]), ValueError, "x must have 4 dimensions"),
        (dict(x=x.long()), TypeError, "x must have dtype"),
        (dict(x=x[:1, :, :1, :1]), ValueError, "x must hold more than one value per channel"),
        (dict(weight=weight[:3]), ValueError, r"weight must have shape \(4,\)"),
        (dict(bias=weight.double()), TypeError, "bias must have the same dtype as weight"),
        (dict(running_mean=running), ValueError, "running_mean and running_var must be given together"),
        (dict(running_mean=running[:2], running_var=running), ValueError, r"running_mean must have shape \(4,\)"),
        (dict(residual=x[:, :, :2]), ValueError, "residual must have x's shape"),
        (dict(residual=x.double()), TypeError, "residual must have the same dtype as x"),
        (dict(momentum=1.5), ValueError, r"momentum must be a number in \[0, 1\]"),
        (dict(eps=-1.0), ValueError, "eps must be a non-negative number"),
    ]:
        arguments = dict(x=x, weight=weight, bias=weight) | kwargs
        with pytest.raises(error, match=message):
            ops.batch_norm_relu(**arguments)


@needs_cpu_kernel
def test_cpu_kernel_refuses_what_the_python_checks_refuse(generator):
    """A direct call (past the Python checks) gets the kernel's own errors, never a crash."""
    x, weight = randn(generator, 1, 4, 3, 3).to(torch.bfloat16), randn(generator, 4)
    out, mean, rstd, _ = torch.ops.sfpn.batch_norm_relu(x, weight, weight, None, 1e-5)
    for args, message in [
        ((x[0], weight, weight, None, 1e-5), r"x must be \(N, C, H, W\)"),
        ((x[:0], weight, weight, None, 1e-5), "x must hold at least one value per channel"),
        ((x.int(), weight, weight, None, 1e-5), "x must be float16, bfloat16, float32 or float64"),
        ((x, weight[:3], weight, None, 1e-5), r"weight must have shape \(4,\)"),
        ((x, weight, weight[None], None, 1e-5), r"bias must be \(C,\)"),
        ((x, weight, weight, x.float(), 1e-5), "residual must have the dtype of x"),
        ((x, weight, weight, x[..., :2], 1e-5), "residual must have x's shape"),
        ((x, weight, weight, None, -1.0), "eps must be non-negative"),
    ]:
        with pytest.raises(RuntimeError, match="sfpn::batch_norm_relu: " + message):
            torch.ops.sfpn.batch_norm_relu(*args)
    for args, message in [
        ((out[:, :2], out, x, mean, rstd, weight, False), "grad must have the batch size and channels"),
        ((out, out[..., :2], x, mean, rstd, weight, False), "out must have x's shape"),
        ((out, out, x, mean.double(), rstd, weight, False), "mean must be Float for BFloat16 x"),
        ((out, out, x, mean, rstd[:2], weight, False), r"rstd must have shape \(4,\)"),
        ((out, out, x, mean, rstd, weight[:2], False), r"weight must have shape \(4,\)"),
    ]:
        with pytest.raises(RuntimeError, match="sfpn::batch_norm_relu_backward: " + message):
            torch.ops.sfpn.batch_norm_relu_backward(*args)
