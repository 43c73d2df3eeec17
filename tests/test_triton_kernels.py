"""The semantic head's Triton kernels against their pure-PyTorch references.

Without a GPU the kernels run on the CPU under Triton's interpreter (conftest.py sets
TRITON_INTERPRET=1 before anything imports Triton, and the ``device`` fixture opts CPU tensors
into the kernels). The interpreter is slow, so shapes are tiny but awkward: odd sizes, single
pixels, levels larger and smaller than the target, K from 2 to 200, all-ignored labels.
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from sfpn import kernels, ops
from sfpn.ops import reference

pytestmark = pytest.mark.skipif(
    not kernels.AVAILABLE or not (torch.cuda.is_available() or kernels.INTERPRETING),
    reason="needs Triton and a GPU or TRITON_INTERPRET=1",
)

FP32 = dict(rtol=1e-5, atol=1e-5)
LOW = dict(rtol=2e-2, atol=2e-2)


@pytest.fixture
def launches(monkeypatch):
    """Counts the kernel launches per op, to prove the kernels (not the references) ran."""
    from sfpn.kernels import cross_entropy, group_norm_relu, resize_sum

    counts = {}
    for module, name in [
        (resize_sum, "resize_sum"),
        (resize_sum, "resize_sum_backward"),
        (group_norm_relu, "group_norm_relu"),
        (group_norm_relu, "group_norm_relu_backward"),
        (cross_entropy, "cross_entropy"),
    ]:
        launcher = getattr(module, name)

        def counted(*args, _launcher=launcher, _name=name, **kwargs):
            counts[_name] = counts.get(_name, 0) + 1
            return _launcher(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    return counts


def randn(generator, *shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)


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


# --------------------------------------------------------------------------------------------------
# resize_sum

RESIZE_CASES = [
    # (level sizes, target): FPN-like pyramid, odd sizes, a level larger than the target
    ([(10, 14), (5, 7), (3, 4), (2, 2)], (5, 7)),
    ([(9, 11), (5, 6), (3, 3), (2, 2), (1, 1)], (5, 6)),
    ([(4, 3)], (4, 3)),  # one level at the target size: identity
    ([(1, 1), (2, 3)], (3, 5)),  # single pixel broadcast
    ([(6, 5), (3, 3)], (1, 1)),  # single output pixel
]


@pytest.mark.parametrize("sizes, target", RESIZE_CASES)
def test_resize_sum_matches_reference(device, generator, launches, sizes, target):
    levels = [randn(generator, 2, 3, *s, device=device) for s in sizes]
    grad = randn(generator, 2, 3, *target, device=device)
    assert_grads_match(
        lambda *ls: ops.resize_sum(list(ls), target), lambda *ls: reference.resize_sum(list(ls), target),
        levels, grad, FP32,
    )
    assert launches == {"resize_sum": 1, "resize_sum_backward": 1}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_resize_sum_low_precision(device, generator, dtype):
    levels = [randn(generator, 1, 4, *s, dtype=dtype, device=device) for s in [(8, 10), (4, 5), (2, 3)]]
    grad = randn(generator, 1, 4, 4, 5, device=device)
    assert_grads_match(
        lambda *ls: ops.resize_sum(list(ls), (4, 5)),
        lambda *ls: reference.resize_sum([level.float() for level in ls], (4, 5)),
        levels, grad, LOW,
    )


def test_resize_sum_non_contiguous(device, generator):
    levels = [randn(generator, 1, 6, 3, s, device=device).transpose(-1, -2) for s in (4, 2)]  # (1, 6, s, 3)
    torch.testing.assert_close(ops.resize_sum(levels, (4, 3)), reference.resize_sum(levels, (4, 3)), **FP32)


def test_resize_sum_opcheck(device, generator):
    levels = [randn(generator, 1, 2, *s, device=device).requires_grad_() for s in [(6, 5), (3, 3), (2, 1)]]
    torch.library.opcheck(torch.ops.sfpn.resize_sum, (levels, 3, 4))


def test_resize_sum_bad_inputs(generator):
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


# --------------------------------------------------------------------------------------------------
# group_norm_relu

GN_CASES = [
    # (shape, groups): odd sizes, a single pixel, one group, a group spanning several kernel blocks
    ((2, 8, 5, 7), 4),
    ((1, 6, 1, 1), 3),
    ((3, 4, 3, 2), 1),
    ((1, 4, 33, 40), 2),
]


@pytest.mark.parametrize("shape, groups", GN_CASES)
def test_group_norm_relu_matches_reference(device, generator, launches, shape, groups):
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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_group_norm_relu_low_precision_with_float32_affine(device, generator, dtype):
    """Under AMP the activations are half precision while the GroupNorm parameters stay float32."""
    x = randn(generator, 2, 6, 5, 3, dtype=dtype, device=device)
    weight, bias = randn(generator, 6, device=device), randn(generator, 6, device=device)
    grad = randn(generator, 2, 6, 5, 3, device=device)
    assert_grads_match(
        lambda x, w, b: ops.group_norm_relu(x, 3, w, b),
        lambda x, w, b: reference.group_norm_relu(x.double(), 3, w, b),
        [x, weight, bias], grad, dict(rtol=2e-2, atol=5e-2),
    )


def test_group_norm_relu_channels_last_and_eps(device, generator):
    x = randn(generator, 2, 4, 3, 5, device=device).to(memory_format=torch.channels_last)
    weight, bias = randn(generator, 4, device=device), randn(generator, 4, device=device)
    torch.testing.assert_close(
        ops.group_norm_relu(x, 2, weight, bias, eps=0.5), reference.group_norm_relu(x, 2, weight, bias, eps=0.5), **FP32
    )


def test_group_norm_relu_opcheck(device, generator):
    x = randn(generator, 2, 4, 3, 5, device=device).requires_grad_()
    weight = randn(generator, 4, device=device).requires_grad_()
    bias = randn(generator, 4, device=device).requires_grad_()
    torch.library.opcheck(torch.ops.sfpn.group_norm_relu, (x, 2, weight, bias, 1e-5))


def test_group_norm_relu_bad_inputs(generator):
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


# --------------------------------------------------------------------------------------------------
# semantic_cross_entropy and upsample_cross_entropy


def assert_loss_and_grad(op, ref, logits, labels, tol=FP32, **kwargs):
    ours, theirs = leaf(logits), exact(logits)
    loss, expected = op(ours, labels, **kwargs), ref(theirs, labels, **kwargs)
    assert loss.dtype == torch.float32 and loss.shape == ()
    torch.testing.assert_close(loss, expected.float(), equal_nan=True, **tol)
    (loss * 0.75).backward()  # a non-unit incoming gradient must scale the fused gradient
    (expected * 0.75).backward()
    torch.testing.assert_close(ours.grad, theirs.grad.float(), **tol)


CE_CASES = [
    # (N, K, H, W): K from 2 to 200, odd sizes, a single pixel
    (2, 2, 5, 7),
    (1, 7, 3, 11),
    (2, 81, 4, 5),
    (1, 200, 3, 3),
    (1, 5, 1, 1),
]


@pytest.mark.parametrize("shape", CE_CASES)
@pytest.mark.parametrize("reduction, smoothing", [("mean", 0.0), ("sum", 0.1)])
def test_semantic_cross_entropy_matches_reference(device, generator, launches, shape, reduction, smoothing):
    n, k, h, w = shape
    logits = randn(generator, n, k, h, w, device=device) * 3
    labels = labels_for(generator, (n, h, w), k, device, ignored_fraction=0.0 if h * w == 1 else 0.2)
    assert_loss_and_grad(
        ops.semantic_cross_entropy, reference.semantic_cross_entropy, logits, labels,
        reduction=reduction, label_smoothing=smoothing,
    )
    assert launches == {"cross_entropy": 1}


UPSAMPLE_CASES = [
    # (N, K, h, w, H, W): x8 as in the detector, odd ratios, labels smaller than logits, 1x1 logits
    (1, 5, 2, 3, 16, 24),
    (2, 13, 3, 4, 11, 9),
    (1, 200, 2, 2, 5, 3),
    (1, 3, 5, 6, 2, 3),
    (2, 4, 1, 1, 3, 2),
]


@pytest.mark.parametrize("shape", UPSAMPLE_CASES)
def test_upsample_cross_entropy_matches_reference(device, generator, launches, shape):
    n, k, h, w, out_h, out_w = shape
    logits = randn(generator, n, k, h, w, device=device) * 3
    labels = labels_for(generator, (n, out_h, out_w), k, device, dtype=torch.uint8)
    assert_loss_and_grad(ops.upsample_cross_entropy, reference.upsample_cross_entropy, logits, labels)
    assert launches == {"cross_entropy": 1}


@pytest.mark.parametrize("upsample", [False, True])
def test_cross_entropy_chunked_classes(device, generator, upsample):
    """K wider than one class tile: the online log-sum-exp over chunks, then a gradient pass."""
    from sfpn.kernels import cross_entropy as launcher

    logits = randn(generator, 2, 37, 3, 5, device=device) * 3
    size = (7, 9) if upsample else (3, 5)
    labels = labels_for(generator, (2, *size), 37, device)
    loss, grad = launcher.cross_entropy(logits, labels, 255, "mean", 0.05, True, max_block_k=16)
    ref_fn = reference.upsample_cross_entropy if upsample else reference.semantic_cross_entropy
    theirs = leaf(logits)
    expected = ref_fn(theirs, labels, label_smoothing=0.05)
    expected.backward()
    torch.testing.assert_close(loss, expected, **FP32)
    torch.testing.assert_close(grad, theirs.grad, **FP32)


@pytest.mark.parametrize("op_name", ["semantic_cross_entropy", "upsample_cross_entropy"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_all_ignored(device, generator, op_name, reduction):
    """No labelled pixel: mean is NaN and sum is 0 (as F.cross_entropy); the gradient is zero."""
    logits = randn(generator, 1, 4, 3, 3, device=device)
    labels = torch.full((1, 3, 3), 255, dtype=torch.int64, device=device)
    assert_loss_and_grad(getattr(ops, op_name), getattr(reference, op_name), logits, labels, reduction=reduction)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op_name", ["semantic_cross_entropy", "upsample_cross_entropy"])
def test_cross_entropy_low_precision(device, generator, dtype, op_name):
    logits = randn(generator, 2, 9, 3, 4, dtype=dtype, device=device) * 3
    size = (3, 4) if op_name == "semantic_cross_entropy" else (10, 7)
    labels = labels_for(generator, (2, *size), 9, device)
    ours, theirs = leaf(logits), leaf(logits)
    loss = getattr(ops, op_name)(ours, labels)
    expected = getattr(reference, op_name)(theirs, labels)
    torch.testing.assert_close(loss, expected, rtol=1e-3, atol=1e-3)  # float32 math inside
    loss.backward()
    expected.backward()
    assert ours.grad.dtype == dtype
    torch.testing.assert_close(ours.grad.float(), theirs.grad.float(), rtol=2e-2, atol=2e-3)


def test_cross_entropy_invalid_label_gives_nan(device, generator):
    logits = randn(generator, 1, 3, 2, 2, device=device)
    labels = torch.tensor([[[0, 1], [3, 2]]], device=device)  # 3 is neither a class nor ignored
    assert torch.isnan(ops.semantic_cross_entropy(logits, labels))


def test_cross_entropy_without_grad_writes_none(device, generator, monkeypatch):
    logits = randn(generator, 1, 6, 3, 4, device=device)
    labels = labels_for(generator, (1, 3, 4), 6, device)
    from sfpn.kernels import cross_entropy as launcher

    seen = []
    launch = launcher.cross_entropy
    monkeypatch.setattr(launcher, "cross_entropy", lambda *args: seen.append(args[-1]) or launch(*args))
    with torch.no_grad():
        loss = ops.semantic_cross_entropy(leaf(logits), labels)
    torch.testing.assert_close(loss, reference.semantic_cross_entropy(logits, labels), **FP32)
    assert seen == [False]


@pytest.mark.parametrize("op_name", ["semantic_cross_entropy", "upsample_cross_entropy"])
def test_cross_entropy_opcheck(device, generator, op_name):
    logits = randn(generator, 2, 5, 3, 4, device=device).requires_grad_()
    size = (3, 4) if op_name == "semantic_cross_entropy" else (7, 6)
    labels = labels_for(generator, (2, *size), 5, device)
    op = getattr(torch.ops.sfpn, op_name)
    torch.library.opcheck(op, (logits, labels, 255, "mean", 0.1, True))
    torch.library.opcheck(op, (logits.detach(), labels, 255, "sum", 0.0, False))


def test_cross_entropy_bad_inputs(generator):
    logits, labels = randn(generator, 2, 3, 4, 5), torch.zeros(2, 4, 5, dtype=torch.int64)
    with pytest.raises(TypeError, match="labels must have dtype"):
        ops.semantic_cross_entropy(logits, labels.float())
    with pytest.raises(ValueError, match="labels must have 3 dimensions"):
        ops.semantic_cross_entropy(logits, labels[None])
    with pytest.raises(ValueError, match="spatial size.*upsample_cross_entropy"):
        ops.semantic_cross_entropy(logits, labels[:, :3])
    with pytest.raises(ValueError, match="batch size"):
        ops.upsample_cross_entropy(logits, labels[:1])
    with pytest.raises(ValueError, match="reduction"):
        ops.semantic_cross_entropy(logits, labels, reduction="none")
    with pytest.raises(ValueError, match="label_smoothing"):
        ops.upsample_cross_entropy(logits, labels, label_smoothing=1.5)
    with pytest.raises(TypeError, match="ignore_index"):
        ops.semantic_cross_entropy(logits, labels, ignore_index=255.0)
    with pytest.raises(ValueError, match="logits must have 4 dimensions"):
        ops.semantic_cross_entropy(logits[0], labels)


# --------------------------------------------------------------------------------------------------
# Dispatch, torch.compile, and the CPU path without the interpreter


def test_cpu_runs_the_reference_unless_opted_in(generator, launches):
    """Detector training on the CPU must never take the (slow) interpreter by accident."""
    levels = [randn(generator, 1, 2, 4, 4), randn(generator, 1, 2, 2, 2)]
    ops.resize_sum(levels, (4, 4))
    ops.semantic_cross_entropy(randn(generator, 1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.int64))
    assert launches == {}


def test_torch_compile_fullgraph(device, generator, launches):
    """The four ops trace into one graph (fake impls, autograd) and match the reference."""
    def branch(impl, p2, p3, weight, bias, labels_small, labels_full):
        x = impl.resize_sum([p2, p3], p3.shape[-2:])
        x = impl.group_norm_relu(x, 2, weight, bias)
        logits = x[:, :3]
        return impl.semantic_cross_entropy(logits, labels_small) + impl.upsample_cross_entropy(logits, labels_full)

    inputs = [
        randn(generator, 1, 4, 6, 8, device=device),
        randn(generator, 1, 4, 3, 4, device=device),
        randn(generator, 4, device=device),
        randn(generator, 4, device=device),
    ]
    labels = [labels_for(generator, (1, 3, 4), 3, device), labels_for(generator, (1, 12, 16), 3, device)]
    compiled = torch.compile(lambda *a: branch(ops, *a), fullgraph=True, backend="aot_eager")
    ours, theirs = [leaf(t) for t in inputs], [leaf(t) for t in inputs]
    loss, expected = compiled(*ours, *labels), branch(reference, *theirs, *labels)
    torch.testing.assert_close(loss, expected, **FP32)
    loss.backward()
    expected.backward()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, **FP32)
    assert launches["cross_entropy"] >= 2 and launches["group_norm_relu_backward"] >= 1


def test_without_interpreter_cpu_uses_reference_and_ops_say_why():
    """A CPU process without TRITON_INTERPRET: the public ops serve the reference, opting in is
    refused, and the Triton kernel's registration explains what it needs when called on the CPU."""
    code = """
import warnings; warnings.simplefilter("ignore")
import torch, sfpn
from sfpn import kernels, ops
x = torch.randn(1, 2, 3, 3)
print(float((ops.resize_sum([x], (3, 3)) - x).abs().max()))
try:
    with kernels.interpret_on_cpu():
        pass
except RuntimeError as e:
    print("refused:", "TRITON_INTERPRET" in str(e))
from sfpn.ops import _library
try:
    _library.OPS["resize_sum"].triton["resize_sum"]([x], 3, 3)
except RuntimeError as e:
    print("op:", "TRITON_INTERPRET=1" in str(e))
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["0.0", "refused: True", "op: True"]


def test_functional_reference_definitions(generator):
    """The references are the documented compositions (guards against a drifting definition)."""
    logits = randn(generator, 1, 4, 3, 5)
    labels = labels_for(generator, (1, 9, 10), 4, "cpu")
    up = F.interpolate(logits, (9, 10), mode="bilinear", align_corners=False)
    torch.testing.assert_close(
        reference.upsample_cross_entropy(logits, labels), F.cross_entropy(up, labels, ignore_index=255)
    )


# The interpreter forgives what the GPU compiler rejects (types, layouts, constexpr misuse). This
# compiles each kernel ahead of time for sm_90, down to a cubin with Triton's bundled ptxas, in a
# process without TRITON_INTERPRET: no GPU needed.
_COMPILE_FOR_SM90 = """
import warnings; warnings.simplefilter("ignore")
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sfpn.kernels import cross_entropy as ce, group_norm_relu as gn, resize_sum as rs

def compile_for_sm90(kernel, types, constexprs):
    signature = {a: "constexpr" if a in constexprs else types[a] for a in kernel.arg_names}
    triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32))
    print("compiled", kernel.__name__, flush=True)

for backward in (False, True):
    types = {"out_ptr": "*bf16", "total": "i32", "out_height": "i32", "out_width": "i32"}
    for i in range(rs.MAX_LEVELS):
        types.update({f"p{i}": "*fp32" if backward else "*bf16", f"h{i}": "i32", f"w{i}": "i32",
                      f"sy{i}": "fp32", f"sx{i}": "fp32"})
    compile_for_sm90(rs._resize_sum_kernel, types, {"NUM_LEVELS": 4, "BACKWARD": backward, "BLOCK": 256})
types = {name: "*fp32" for name in ("mean_ptr", "m2_ptr", "rstd_ptr", "weight_ptr", "bias_ptr", "sum_dz_ptr",
                                     "sum_dz_xhat_ptr", "mean_dxhat_ptr", "mean_dxhat_xhat_ptr")}
types.update({name: "*bf16" for name in ("x_ptr", "out_ptr", "grad_ptr", "grad_x_ptr")})
types.update({"hw": "i32", "channels": "i32", "groups": "i32"})
for kernel in (gn._moments_kernel, gn._forward_kernel, gn._backward_sums_kernel, gn._backward_input_kernel):
    constexprs = {"BLOCK": 1024}
    if "CHANNELS_PER_GROUP" in kernel.arg_names:
        constexprs["CHANNELS_PER_GROUP"] = 8
    compile_for_sm90(kernel, types, constexprs)
for upsample, single_tile, block_k, block_p in ((True, True, 256, 16), (False, False, 64, 64)):
    types = {"logits_ptr": "*bf16", "labels_ptr": "*u8", "grad_ptr": "*fp32" if upsample else "*bf16",
             "partial_ptr": "*fp32", "scale_ptr": "*fp32", "num_classes": "i32", "in_height": "i32",
             "in_width": "i32", "out_height": "i32", "out_width": "i32", "scale_y": "fp32", "scale_x": "fp32",
             "ignore_index": "i32", "smoothing": "fp32"}
    compile_for_sm90(ce._cross_entropy_kernel, types, {"UPSAMPLE": upsample, "COMPUTE_GRAD": True,
                     "SINGLE_TILE": single_tile, "BLOCK_K": block_k, "BLOCK_P": block_p})
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu():
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_SM90], env=env, capture_output=True, text=True, timeout=300, cwd=root
    )
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert out.stdout.count("compiled") == 8
