"""The operator library (sfpn/ops/_library.py) and what every op gets from it: one definition,
the reference as the dispatcher's fallback, kernels per dispatch key (C++, Triton, and the
Triton kernels' temporary CPU registration), torch.compile, double backward, autocast,
TorchScript of the raw ops, the references when the extension is off or missing, and the
Triton kernels compiled for sm_90 without a GPU. The cases of test_double_backward carry
their op's marker."""
import contextlib
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from sfpn import _extension, info, kernels, ops
from sfpn.ops import _library, reference, semantic_fuse, upsample_add

from op_helpers import FP32, float64_leaf, labels_for, leaf, needs_triton, op_marker, randn, random_nms_inputs
from resize_helpers import requires_kernels

pytestmark = pytest.mark.usefixtures("single_thread")


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CPU_KERNEL_OPS = [name for name, op in _library.OPS.items() if op.cpu_kernel]
CPU_REFERENCE_OPS = [name for name, op in _library.OPS.items() if not op.cpu_kernel]
needs_interpreter = pytest.mark.skipif(
    not (kernels.AVAILABLE and kernels.INTERPRETING), reason="needs Triton and TRITON_INTERPRET=1"
)


def rois_for(generator, count, batch_size, height, width, dtype=torch.float32):
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * 0.8
    size = torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * 0.6 + 0.5
    batch = torch.randint(0, batch_size, (count, 1), generator=generator).float()
    return torch.cat([batch, corner, corner + size], 1).to(dtype)


# ------------------------------------------------------------------------------------------------
# The registry and dispatch


def test_registry_lists_every_public_op_once_with_its_definition():
    modules_and_errors = {"RoIAlign", "MultiLevelRoIAlign", "OpArgumentError", "OpValueError", "OpTypeError", "RoIBoxesError"}
    assert sorted(_library.OPS) == sorted(set(ops.__all__) - modules_and_errors)
    assert sorted(_library.OPS) == sorted(reference.__all__)
    assert set(info.backends()) == set(_library.OPS)
    for op in _library.OPS.values():
        for name in (op.name, *op.backward, *op.triton):
            qualified = f"sfpn::{name}"
            assert torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CompositeExplicitAutograd"), name
            assert name in _library.REFERENCES
            assert torch._library.simple_registry.singleton.find(qualified).fake_impl.kernel is not None, name
        assert bool(op.triton) == (op.backend == _library.TRITON)


def test_compiled_kernels_serve_the_cpu_when_the_extension_is_loaded():
    expected = "C++" if _extension.STATUS.loaded else "reference"
    assert {name: _library.serving(name, "cpu") for name in CPU_KERNEL_OPS} == dict.fromkeys(CPU_KERNEL_OPS, expected)
    assert {name: _library.serving(name, "cpu") for name in CPU_REFERENCE_OPS} == dict.fromkeys(CPU_REFERENCE_OPS, "reference")
    assert "upsample_cross_entropy" in CPU_KERNEL_OPS


@pytest.mark.skipif(not _extension.STATUS.loaded, reason="sfpn._C is not loaded")
def test_kernels_loaded_after_the_definitions_serve_too():
    """sfpn imports the extension before defining the ops; the other order works as well."""
    code = (
        "import warnings, torch; warnings.simplefilter('ignore');"
        "import sfpn; from sfpn.ops import _library;"
        "assert _library.serving('roi_align', 'cpu') == 'reference';"
        "x = torch.randn(2, 3, 9, 9); r = torch.tensor([[1, 1., 2, 7, 8]]);"
        "before = sfpn.ops.roi_align(x, r, 3);"
        f"torch.ops.load_library({_extension.STATUS.path!r});"
        "assert _library.serving('roi_align', 'cpu') == 'C++', _library.serving('roi_align', 'cpu');"
        "torch.testing.assert_close(sfpn.ops.roi_align(x, r, 3), before, rtol=1e-5, atol=1e-5);"
        "print('ok')"
    )
    env = dict(os.environ, SFPN_DISABLE_EXTENSION="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@requires_kernels
def test_references_serve_the_named_ops_and_their_backwards_for_the_block(generator, monkeypatch):
    """references(ops) swaps those ops (forward and backward) to their references and leaves the
    others on their kernels; a name that is no op is refused."""
    calls = []
    for name in ("upsample_add", "upsample_add_backward", "semantic_fuse"):
        function = _library.REFERENCES[name]
        monkeypatch.setitem(_library.REFERENCES, name, lambda *a, _f=function, _n=name: calls.append(_n) or _f(*a))
    top, lateral = leaf(randn(generator, 1, 2, 3, 4)), leaf(randn(generator, 1, 2, 6, 8))
    semantic = randn(generator, 1, 2, 3, 4)
    with _library.references(["upsample_add"]):
        upsample_add(top, lateral).sum().backward()
        semantic_fuse([lateral.detach()], semantic)
    assert calls == ["upsample_add", "upsample_add_backward"]
    upsample_add(top, lateral).sum().backward()
    assert calls == ["upsample_add", "upsample_add_backward"]
    with pytest.raises(ValueError, match="ops must name sfpn ops .* got upsample"):
        with _library.references(["upsample"]):
            pass
    with pytest.raises(TypeError, match="ops must be a list of op names, got the string 'upsample_add'"):
        with _library.references("upsample_add"):
            pass


@needs_interpreter
def test_interpret_on_cpu_registers_triton_for_the_block_only(generator, monkeypatch):
    from sfpn.kernels import resize_sum as launcher

    launches = []
    launch = launcher.resize_sum
    monkeypatch.setattr(launcher, "resize_sum", lambda *a: launches.append(1) or launch(*a))
    levels = [randn(generator, 1, 2, 4, 5), randn(generator, 1, 2, 2, 3)]
    expected = reference.resize_sum(levels, (4, 5))
    served_before = _library.serving("resize_sum", "cpu")  # the C++ kernel, or the reference without sfpn._C
    with kernels.interpret_on_cpu():
        with kernels.interpret_on_cpu():  # reentrant
            assert _library.serving("resize_sum", "cpu") == "Triton"
        torch.testing.assert_close(ops.resize_sum(levels, (4, 5)), expected, rtol=1e-5, atol=1e-5)
        assert launches == [1]
        with _library.references():  # the references override the kernels for a block
            torch.testing.assert_close(ops.resize_sum(levels, (4, 5)), expected, rtol=1e-5, atol=1e-5)
        assert launches == [1]
        ops.resize_sum(levels, (4, 5))
        assert launches == [1, 1]
    assert _library.serving("resize_sum", "cpu") == served_before
    torch.testing.assert_close(ops.resize_sum(levels, (4, 5)), expected, rtol=1e-5, atol=1e-5)
    assert launches == [1, 1]


@needs_triton
def test_cpu_runs_the_reference_unless_opted_in(generator, launches):
    """Detector training on the CPU must never take the (slow) interpreter by accident."""
    levels = [randn(generator, 1, 2, 4, 4), randn(generator, 1, 2, 2, 2)]
    ops.resize_sum(levels, (4, 4))
    ops.semantic_cross_entropy(randn(generator, 1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.int64))
    assert launches == {}


@needs_triton
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
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["0.0", "refused: True", "op: True"]


# ------------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True): the wrappers trace without a graph break or host sync


@requires_kernels
def test_neck_ops_compile_fullgraph(generator):
    def neck(c3, c4, c5, semantic):
        m4 = upsample_add(c5, c4)
        m3 = upsample_add(m4, c3, "bilinear")
        return semantic_fuse([m3, m4, c5], semantic)

    inputs = [randn(generator, 1, 4, *size).requires_grad_() for size in [(12, 18), (6, 9), (3, 5), (6, 9)]]
    compiled = torch.compile(neck, fullgraph=True, backend="aot_eager")
    got = compiled(*inputs)
    want = neck(*inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    loss_got = sum((o * o).sum() for o in got)
    loss_want = sum((o * o).sum() for o in want)
    for g, w in zip(torch.autograd.grad(loss_got, inputs), torch.autograd.grad(loss_want, inputs)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


# torch's config patch, not monkeypatch: monkeypatch's undo deletes the entry from torch's config
# (torch.export then fails for the rest of the process).
@torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True)
def test_compiled_ops_compile_fullgraph_and_match_eager(generator):
    x = randn(generator, 2, 3, 12, 16)
    pyramid = [x, randn(generator, 2, 3, 6, 8)]
    rois = rois_for(generator, 7, 2, 48, 64)
    boxes, scores, idxs = random_nms_inputs(generator)

    def program(x, top, rois, boxes, scores, idxs):
        fused = ops.semantic_fuse(pyramid, top)
        pooled = ops.roi_align(fused[0], rois, 3, 0.25, 2, True)
        pooled_levels = ops.multilevel_roi_align(fused, rois, (2, 3), [1 / 4, 1 / 8], -1)
        out = ops.upsample_add(top, x, "bilinear").square().sum() + pooled.sum() + pooled_levels.square().sum()
        return out, ops.nms(boxes, scores, 0.5), ops.batched_nms(boxes, scores, idxs, 0.3), ops.batched_nms_padded(
            boxes, scores, idxs, 0.3, 20
        )

    torch._dynamo.reset()
    compiled = torch.compile(program, fullgraph=True, backend="aot_eager")
    top = randn(generator, 2, 3, 5, 7)
    inputs = [top.clone().requires_grad_(), top.clone().requires_grad_()]
    got, want = compiled(x, inputs[0], rois, boxes, scores, idxs), program(x, inputs[1], rois, boxes, scores, idxs)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(got[1:3] + got[3], want[1:3] + want[3]):
        assert torch.equal(ours, theirs)
    got[0].backward()
    want[0].backward()
    torch.testing.assert_close(inputs[0].grad, inputs[1].grad, rtol=1e-5, atol=1e-5)


@needs_triton
def test_triton_ops_compile_fullgraph(device, generator, launches):
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


# ------------------------------------------------------------------------------------------------
# Double backward: the four linear ops, kernels and references, in float64


def _upsample_add_case(g, mode, align_corners):
    return (lambda top, lateral: ops.upsample_add(top, lateral, mode, align_corners),
            (float64_leaf(g, 1, 2, 3, 4), float64_leaf(g, 1, 2, 5, 7)))


def _semantic_fuse_case(g):
    return (lambda a, b, s: ops.semantic_fuse([a, b], s),
            (float64_leaf(g, 1, 2, 6, 5), float64_leaf(g, 1, 2, 2, 3), float64_leaf(g, 1, 2, 3, 4)))


def _roi_align_case(g):
    rois = rois_for(g, 4, 2, 7, 8, torch.float64)
    return lambda x: ops.roi_align(x, rois, 2, 1.0, 2, True), (float64_leaf(g, 2, 2, 7, 8),)


def _multilevel_case(g):
    rois = rois_for(g, 5, 1, 16, 16, torch.float64)
    return (lambda a, b: ops.multilevel_roi_align([a, b], rois, 2, [1 / 2, 1 / 4], 2, False, 8, 2),
            (float64_leaf(g, 1, 2, 8, 8), float64_leaf(g, 1, 2, 4, 4)))


DOUBLE_BACKWARD = {
    "upsample_add_bilinear": lambda g: _upsample_add_case(g, "bilinear", True),
    "upsample_add_nearest": lambda g: _upsample_add_case(g, "nearest", None),
    "semantic_fuse": _semantic_fuse_case,
    "roi_align": _roi_align_case,
    "multilevel_roi_align": _multilevel_case,
}


@pytest.mark.parametrize("serving", ["kernels", "references"])
@pytest.mark.parametrize("case", [pytest.param(case, marks=op_marker(case)) for case in sorted(DOUBLE_BACKWARD)])
def test_double_backward(generator, case, serving):
    """The backward of each linear op is differentiable again (its backward is the forward op)."""
    function, inputs = DOUBLE_BACKWARD[case](generator)
    with _library.references() if serving == "references" else contextlib.nullcontext():
        assert torch.autograd.gradcheck(function, inputs)
        assert torch.autograd.gradgradcheck(function, inputs)


# ------------------------------------------------------------------------------------------------
# Autocast: what dtype each op runs in


def test_autocast_box_ops_compute_in_float32(generator):
    """NMS runs on float32 boxes and scores; RoIAlign runs in the features' dtype, computing in
    float32, which gives torchvision's result (float32 in, the features' dtype out) without a
    float32 copy of the maps."""
    x = randn(generator, 2, 3, 10, 12)
    rois = rois_for(generator, 6, 2, 10, 12)
    pyramid = [x, randn(generator, 2, 3, 5, 6)]
    boxes, scores, idxs = random_nms_inputs(generator)
    half = torch.bfloat16
    with torch.autocast("cpu", dtype=half):
        pooled = ops.roi_align(x.to(half), rois.to(half), 3, 1.0, 2)
        pooled_levels = ops.multilevel_roi_align([p.to(half) for p in pyramid], rois.to(half), 2, [1, 0.5], 2)
        kept = ops.batched_nms(boxes.to(half), scores.to(half), idxs, 0.5)
        fused = ops.upsample_add(pyramid[1].to(half), x.to(half))
    assert pooled.dtype == half and pooled_levels.dtype == half and fused.dtype == half
    torch.testing.assert_close(pooled, ops.roi_align(x.to(half).float(), rois.to(half).float(), 3, 1.0, 2).to(half))
    torch.testing.assert_close(
        pooled_levels, ops.multilevel_roi_align([p.to(half).float() for p in pyramid], rois.to(half).float(), 2,
                                                [1, 0.5], 2).to(half)
    )
    assert torch.equal(kept, ops.batched_nms(boxes.to(half).float(), scores.to(half).float(), idxs, 0.5))


# ------------------------------------------------------------------------------------------------
# TorchScript


def test_raw_ops_are_scriptable(generator):
    """The Python wrappers are not scriptable (see sfpn/ops/roi_align.py); the ops they call are."""
    x, rois = randn(generator, 2, 3, 9, 9), rois_for(generator, 4, 2, 9, 9)
    boxes, scores, idxs = random_nms_inputs(generator)
    scripted = torch.jit.CompilationUnit(SCRIPT)
    pooled, kept, kept_per_class = scripted.run(x, rois, boxes, scores, idxs)
    torch.testing.assert_close(pooled, ops.roi_align(x, rois, 3, 0.5, 2, True))
    assert torch.equal(kept, ops.nms(boxes, scores, 0.5))
    assert torch.equal(kept_per_class, ops.batched_nms(boxes, scores, idxs, 0.5))


SCRIPT = """
def run(x: Tensor, rois: Tensor, boxes: Tensor, scores: Tensor, idxs: Tensor):
    pooled = torch.ops.sfpn.roi_align(x, rois, 0.5, 3, 3, 2, True, False)
    return pooled, torch.ops.sfpn.nms(boxes, scores, 0.5), torch.ops.sfpn.batched_nms(boxes, scores, idxs, 0.5)
"""


# ------------------------------------------------------------------------------------------------
# Without the compiled extension


FALLBACK_SCRIPT = textwrap.dedent(
    """
    import sys
    import warnings
    import torch
    import torch.nn.functional as F
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from sfpn import _extension
        from sfpn.ops import semantic_fuse, upsample_add
    assert not _extension.STATUS.loaded
    from sfpn.ops import _library
    assert _library.serving("upsample_add", "cpu") == "reference"
    warned = any("compiled kernels unavailable" in str(w.message) for w in caught)
    assert warned == (sys.argv[1] == "warns"), (sys.argv[1], [str(w.message) for w in caught])
    top = torch.randn(2, 3, 5, 7, requires_grad=True)
    lateral = torch.randn(2, 3, 9, 13)
    out = upsample_add(top, lateral, "bilinear")
    torch.testing.assert_close(out, lateral + F.interpolate(top, size=(9, 13), mode="bilinear"))
    out.sum().backward()
    assert top.grad.shape == top.shape
    coarse = torch.randn(2, 3, 3, 4)
    fused = semantic_fuse([lateral, coarse], top)
    torch.testing.assert_close(fused[0], out)
    torch.testing.assert_close(fused[1], coarse + F.interpolate(top, size=(3, 4), mode="bilinear"))
    print("fallback ok")
    """
)


@pytest.mark.parametrize("how", ["disabled", "missing"])
def test_fallback_without_extension(tmp_path, how):
    """The reference ops serve when the extension is switched off (quietly) or missing (with a warning)."""
    env = dict(os.environ)
    if how == "disabled":
        env.update(SFPN_DISABLE_EXTENSION="1", PYTHONPATH=ROOT)
        expectation = "quiet"
    else:  # a copy of the package without the compiled library, as after a pure-Python install
        no_build = shutil.ignore_patterns("_C*", "__pycache__")
        shutil.copytree(os.path.join(ROOT, "sfpn"), tmp_path / "sfpn", ignore=no_build)
        shutil.copytree(os.path.join(ROOT, "kernels"), tmp_path / "sfpn" / "kernels", ignore=no_build)
        env.pop("SFPN_DISABLE_EXTENSION", None)
        env.update(PYTHONPATH=str(tmp_path))
        expectation = "warns"
    result = subprocess.run(
        [sys.executable, "-c", FALLBACK_SCRIPT, expectation], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "fallback ok" in result.stdout


# ------------------------------------------------------------------------------------------------
# Triton kernels for sm_90


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
for upsample, single_tile, block_k, block_p, weighted in (
        (True, True, 256, 16, False), (True, True, 256, 16, True), (False, False, 64, 64, True)):
    types = {"logits_ptr": "*bf16", "labels_ptr": "*u8", "weight_ptr": "*fp32", "grad_ptr": "*fp32" if upsample else "*bf16",
             "partial_ptr": "*fp32", "scale_ptr": "*fp32", "num_classes": "i32", "in_height": "i32",
             "in_width": "i32", "out_height": "i32", "out_width": "i32", "scale_y": "fp32", "scale_x": "fp32",
             "ignore_index": "i32", "smoothing": "fp32"}
    compile_for_sm90(ce._cross_entropy_kernel, types, {"UPSAMPLE": upsample, "COMPUTE_GRAD": True,
                     "SINGLE_TILE": single_tile, "WEIGHTED": weighted, "BLOCK_K": block_k, "BLOCK_P": block_p})
"""


@needs_triton
@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu():
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_SM90], env=env, capture_output=True, text=True, timeout=300, cwd=root
    )
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert out.stdout.count("compiled") == 9
