"""upsample_add and semantic_fuse: compiled kernels against the pure-PyTorch references."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from sfpn import _extension
from sfpn.ops import semantic_fuse, upsample_add
from sfpn.ops.reference import semantic_fuse as semantic_fuse_reference
from sfpn.ops.reference import upsample_add as upsample_add_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

requires_kernels = pytest.mark.skipif(not _extension.STATUS.loaded, reason="sfpn._C is not loaded")

# (mode, align_corners) as the public ops take them.
MODES = [("nearest", None), ("bilinear", False), ("bilinear", True)]
MODE_IDS = ["nearest", "bilinear", "bilinear-corners"]

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

TOLERANCE = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=1e-2, atol=1e-2),
}


def randn(generator, *shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)


def assert_close_to_exact(actual, exact, dtype):
    """`actual` (any dtype) against `exact` (computed in float64 from the same inputs)."""
    torch.testing.assert_close(actual.double(), exact, **TOLERANCE[dtype])


# --------------------------------------------------------------------------- upsample_add

@requires_kernels
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("top_size,lateral_size", SIZES, ids=str)
def test_upsample_add_matches_reference_float32(generator, mode, align_corners, top_size, lateral_size):
    top = randn(generator, 2, 3, *top_size)
    lateral = randn(generator, 2, 3, *lateral_size)
    out = upsample_add(top, lateral, mode, align_corners)
    expected = upsample_add_reference(top, lateral, mode, align_corners)
    assert out.shape == lateral.shape and out.dtype == lateral.dtype and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@requires_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
def test_upsample_add_dtypes(generator, dtype, mode, align_corners):
    top = randn(generator, 2, 5, 6, 9, dtype=dtype)
    lateral = randn(generator, 2, 5, 12, 17, dtype=dtype)  # 2x rows, uneven columns
    out = upsample_add(top, lateral, mode, align_corners)
    assert out.dtype == dtype
    exact = upsample_add_reference(top.double(), lateral.double(), mode, align_corners)
    assert_close_to_exact(out, exact, dtype)


@requires_kernels
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
def test_upsample_add_non_contiguous(generator, mode, align_corners):
    top = randn(generator, 2, 6, 9, 14)[:, ::2, :, 1:]  # strided channels, offset rows
    lateral = randn(generator, 2, 3, 19, 25).to(memory_format=torch.channels_last)
    lateral_t = randn(generator, 2, 3, 25, 19).transpose(2, 3)
    for lat in (lateral, lateral_t):
        out = upsample_add(top, lat, mode, align_corners)
        torch.testing.assert_close(out, upsample_add_reference(top, lat, mode, align_corners), rtol=1e-5, atol=1e-5)


@requires_kernels
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("top_size,lateral_size", SIZES, ids=str)
def test_upsample_add_gradients_match_reference(generator, mode, align_corners, top_size, lateral_size):
    top = randn(generator, 2, 3, *top_size).requires_grad_()
    lateral = randn(generator, 2, 3, *lateral_size).requires_grad_()
    grad = randn(generator, 2, 3, *lateral_size)
    got = torch.autograd.grad(upsample_add(top, lateral, mode, align_corners), (top, lateral), grad)
    expected = torch.autograd.grad(upsample_add_reference(top, lateral, mode, align_corners), (top, lateral), grad)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=0)


@requires_kernels
def test_upsample_add_training_steps_make_no_needless_buffers(generator):
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
def test_upsample_add_backward_low_precision(generator, dtype):
    top = randn(generator, 1, 4, 5, 7, dtype=dtype).requires_grad_()
    grad = randn(generator, 1, 4, 10, 13, dtype=dtype)
    lateral = torch.zeros(1, 4, 10, 13, dtype=dtype)
    (got,) = torch.autograd.grad(upsample_add(top, lateral, "bilinear"), top, grad)
    top64 = top.detach().double().requires_grad_()
    (exact,) = torch.autograd.grad(upsample_add_reference(top64, lateral.double(), "bilinear"), top64, grad.double())
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), exact, rtol=2e-2, atol=2e-2)


@requires_kernels
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("top_size,lateral_size", [((3, 4), (7, 9)), ((5, 3), (2, 4)), ((1, 2), (3, 3))], ids=str)
def test_upsample_add_gradcheck(generator, mode, align_corners, top_size, lateral_size):
    top = randn(generator, 1, 2, *top_size, dtype=torch.float64).requires_grad_()
    lateral = randn(generator, 1, 2, *lateral_size, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t, l: upsample_add(t, l, mode, align_corners), (top, lateral))


@requires_kernels
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
def test_upsample_add_opcheck(generator, mode, align_corners):
    top = randn(generator, 2, 3, 4, 5).requires_grad_()
    lateral = randn(generator, 2, 3, 9, 11).requires_grad_()
    torch.library.opcheck(torch.ops.sfpn.upsample_add, (top, lateral, mode, bool(align_corners)))
    grad = randn(generator, 2, 3, 9, 11)
    torch.library.opcheck(torch.ops.sfpn.upsample_add_backward, (grad, 4, 5, mode, bool(align_corners)))


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
def test_upsample_add_bad_input(top, lateral, kwargs, error, match):
    with pytest.raises(error, match=match):
        upsample_add(top, lateral, **kwargs)


# --------------------------------------------------------------------------- semantic_fuse

# Semantic at stride 8 of a small image; levels P2..P5-like: up, same, down, down (odd sizes).
SEMANTIC_SIZES = [
    ((13, 21), [(25, 42), (13, 21), (7, 11), (4, 6)]),
    ((7, 5), [(1, 1), (30, 2), (7, 5)]),
    ((1, 1), [(3, 4), (1, 1)]),
    ((40, 40), [(3, 5)]),
]


@requires_kernels
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("semantic_size,level_sizes", SEMANTIC_SIZES, ids=str)
def test_semantic_fuse_matches_reference(generator, mode, align_corners, semantic_size, level_sizes):
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
def test_semantic_fuse_low_precision(generator, dtype):
    semantic = randn(generator, 2, 4, 9, 11, dtype=dtype)
    levels = [randn(generator, 2, 4, *size, dtype=dtype) for size in [(18, 22), (9, 11), (5, 6)]]
    outs = semantic_fuse(levels, semantic)
    exact = semantic_fuse_reference([level.double() for level in levels], semantic.double())
    for out, ref in zip(outs, exact):
        assert out.dtype == dtype
        assert_close_to_exact(out, ref, dtype)


@requires_kernels
def test_semantic_fuse_non_contiguous_and_unused_outputs(generator):
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


@requires_kernels
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
def test_semantic_fuse_gradcheck(generator, mode, align_corners):
    semantic = randn(generator, 1, 2, 3, 4, dtype=torch.float64).requires_grad_()
    levels = [randn(generator, 1, 2, *size, dtype=torch.float64).requires_grad_() for size in [(6, 7), (3, 4), (2, 1)]]
    assert torch.autograd.gradcheck(
        lambda s, *ls: tuple(semantic_fuse(list(ls), s, mode, align_corners)), (semantic, *levels)
    )


@requires_kernels
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
def test_semantic_fuse_opcheck(generator, mode, align_corners):
    semantic = randn(generator, 2, 3, 5, 6).requires_grad_()
    levels = [randn(generator, 2, 3, *size).requires_grad_() for size in [(10, 12), (5, 6), (3, 3)]]
    torch.library.opcheck(torch.ops.sfpn.semantic_fuse, (levels, semantic, mode, bool(align_corners)))
    grads = [randn(generator, 2, 3, *size) for size in [(10, 12), (5, 6), (3, 3)]]
    torch.library.opcheck(torch.ops.sfpn.semantic_fuse_backward, (grads, 5, 6, mode, bool(align_corners)))


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
def test_semantic_fuse_bad_input(levels, semantic, kwargs, error, match):
    with pytest.raises(error, match=match):
        semantic_fuse(levels, semantic, **kwargs)


def test_mixed_devices_are_rejected():
    # The meta device stands in for a second device on machines without a GPU.
    other = "cuda" if torch.cuda.is_available() else "meta"
    with pytest.raises(ValueError, match="top must be on the same device as lateral"):
        upsample_add(torch.zeros(1, 2, 3, 3, device=other), torch.zeros(1, 2, 6, 6))
    with pytest.raises(ValueError, match=r"levels\[0\] must be on the same device as semantic"):
        semantic_fuse([torch.zeros(1, 2, 6, 6)], torch.zeros(1, 2, 3, 3, device=other))


# --------------------------------------------------------------------------- compile, fallback

@requires_kernels
def test_torch_compile_fullgraph(generator):
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


def test_cuda_resize_logic_on_host(tmp_path):
    """The CUDA kernels' per-element sample() and adjoint(), compiled for the host and checked
    against a dense-matrix model of the resize (tests/native/resize_logic.cpp)."""
    from torch.utils.cpp_extension import include_paths, library_paths

    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    executable = tmp_path / "resize_logic"
    torch_lib = library_paths()[0]
    command = [
        compiler, "-std=c++20", "-O1", f"-I{os.path.join(ROOT, 'csrc')}", *(f"-I{path}" for path in include_paths()),
        os.path.join(ROOT, "tests", "native", "resize_logic.cpp"), f"-L{torch_lib}", "-lc10",
        f"-Wl,-rpath,{torch_lib}", "-o", str(executable),
    ]
    built = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    result = subprocess.run([str(executable)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout
    assert " 0 failures" in result.stdout


# --------------------------------------------------------------------------- CUDA

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("top_size,lateral_size", SIZES, ids=str)
def test_upsample_add_cuda_matches_cpu(generator, dtype, mode, align_corners, top_size, lateral_size):
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
def test_upsample_add_cuda_large_and_non_contiguous(generator):
    # Rows whose width is not a multiple of the vector width, and a transposed lateral.
    top = randn(generator, 2, 8, 50, 83, device="cuda")
    lateral = randn(generator, 2, 8, 167, 100, device="cuda").transpose(2, 3)
    for mode, align_corners in MODES:
        out = upsample_add(top, lateral, mode, align_corners)
        torch.testing.assert_close(out, upsample_add_reference(top, lateral, mode, align_corners), rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("semantic_size,level_sizes", SEMANTIC_SIZES, ids=str)
def test_semantic_fuse_cuda_matches_cpu(generator, mode, align_corners, semantic_size, level_sizes):
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
def test_semantic_fuse_cuda_many_levels(generator):
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


@pytest.mark.cuda
def test_cuda_opcheck(generator):
    top = randn(generator, 2, 3, 4, 5, device="cuda").requires_grad_()
    lateral = randn(generator, 2, 3, 9, 11, device="cuda").requires_grad_()
    torch.library.opcheck(torch.ops.sfpn.upsample_add, (top, lateral, "bilinear", False))
    semantic = randn(generator, 2, 3, 5, 6, device="cuda").requires_grad_()
    torch.library.opcheck(torch.ops.sfpn.semantic_fuse, ([lateral, top], semantic, "bilinear", False))
