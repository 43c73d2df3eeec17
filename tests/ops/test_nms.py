"""nms, batched_nms and batched_nms_padded against the reference (planted near-threshold
pairs, ties, bad values), torchvision, drawn inputs, class ids anywhere in int64, argument
checks, opcheck, the reference without the extension, the CUDA kernels on the CPU
(emulation) and on a GPU."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from nms_threshold_pairs import THRESHOLDS, expected_keep, threshold_pairs

from sfpn import _extension, ops
from sfpn.ops import _library, batched_nms, batched_nms_padded, nms, reference
from sfpn.ops.nms import batched_nms_reference, nms_reference

from cuda_emulation import SEEDS, run
from isolated_calls import run_isolated
from op_helpers import random_nms_inputs
from op_strategies import arrange, examples, float_dtypes, seeds, uniform

pytestmark = pytest.mark.nms


DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
needs_cpu_kernel = pytest.mark.skipif(_library.serving("batched_nms", "cpu") != "C++", reason="sfpn._C not built")


def random_detections(n, generator, num_classes=80, extent=400.0, dtype=torch.float32, planted_pairs=0, threshold=0.5):
    """(boxes (n, 4), distinct scores (n,), idxs (n,)) with `planted_pairs` pairs of same-class
    boxes whose IoU is threshold * (1 +- 2e-3), half above and half below the threshold."""
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * extent
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 60 + 4
    boxes = torch.cat([xy, xy + wh], 1)
    idxs = torch.randint(0, num_classes, (n,), generator=generator)
    for k in range(min(planted_pairs, n // 2)):
        a, b = 2 * k, 2 * k + 1
        target = threshold * (1 + (2e-3 if k % 2 else -2e-3))
        # Same height, shifted right by d: IoU = (w - d) / (w + d).
        width = boxes[a, 2] - boxes[a, 0]
        shift = width * (1 - target) / (1 + target)
        boxes[b] = boxes[a] + torch.stack([shift, 0 * shift, shift, 0 * shift])
        idxs[b] = idxs[a]
    scores = (torch.randperm(n, generator=generator, dtype=torch.float64) + 1) / (n + 1)
    return boxes.to(dtype), scores.to(dtype), idxs


def assert_score_order(kept, scores):
    """Decreasing score, equal scores by increasing index."""
    s = scores[kept].double()
    assert bool((s[1:] <= s[:-1]).all())
    same = s[1:] == s[:-1]
    assert bool((kept[1:][same] > kept[:-1][same]).all())


# ------------------------------------------------------------------------------------------------
# Against the reference


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_classes", [1, 7, 80])
def test_kernel_matches_reference(generator, dtype, num_classes):
    boxes, scores, idxs = random_detections(1500, generator, num_classes, dtype=dtype, planted_pairs=40)
    expected = batched_nms_reference(boxes, scores, idxs, 0.5)
    kept = batched_nms(boxes, scores, idxs, 0.5)
    assert kept.dtype == torch.int64
    assert torch.equal(kept, expected)
    assert_score_order(kept, scores)


def test_planted_pairs_straddle_threshold(generator):
    boxes, scores, _ = random_detections(64, generator, num_classes=1, dtype=torch.float64, planted_pairs=32)
    for k in range(32):  # pair k moved to x ~ 200 k: each pair only interacts with itself
        boxes[2 * k : 2 * k + 2, 0::2] += 200 * k - boxes[2 * k, 0]
    boxes, scores = boxes.float(), scores.float()
    kept = set(nms(boxes, scores, 0.5).tolist())
    for k in range(32):
        a, b = 2 * k, 2 * k + 1
        low, high = (a, b) if scores[a] < scores[b] else (b, a)
        assert high in kept
        assert (low in kept) == (k % 2 == 0), f"pair {k}: IoU {'above' if k % 2 else 'below'} the threshold"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_equal_scores_keep_index_order(generator, dtype):
    boxes, _, idxs = random_detections(600, generator, num_classes=3, dtype=dtype)
    scores = torch.randint(0, 5, (600,), generator=generator).to(dtype) / 4  # many ties
    kept = batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(kept, batched_nms_reference(boxes, scores, idxs, 0.5))
    assert_score_order(kept, scores)


def test_reference_is_greedy(generator):
    """The blocked reference equals the textbook one-box-at-a-time greedy loop."""
    boxes, scores, idxs = random_detections(700, generator, num_classes=2, extent=150, planted_pairs=30)
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept = []
    for i in order:
        lt = torch.maximum(boxes[i, :2], boxes[kept, :2])
        rb = torch.minimum(boxes[i, 2:], boxes[kept, 2:])
        wh = (rb - lt).clamp(min=0)
        inter = wh[:, 0] * wh[:, 1]
        iou = inter / ((area[kept] + area[i]) - inter)
        if not bool(((iou > 0.5) & (idxs[kept] == idxs[i])).any()):
            kept.append(i)
    assert batched_nms_reference(boxes, scores, idxs, 0.5).tolist() == kept


def test_half_boxes_do_not_lose_precision_across_classes():
    # Far-apart class ids with large coordinates: an offset trick in half precision would merge
    # or split these pairs; per-class suppression computes each IoU from the original boxes.
    boxes = torch.tensor([[1000, 1000, 1100, 1100], [1002, 1000, 1102, 1100], [1000, 1000, 1100, 1100]], dtype=torch.float16)
    scores = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float16)
    idxs = torch.tensor([0, 0, 1000])
    assert batched_nms(boxes, scores, idxs, 0.5).tolist() == [0, 2]


@pytest.mark.parametrize("op", ["nms", "batched_nms", "padded"])
def test_empty_and_single_box(op):
    for n in (0, 1):
        boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]])[:n]
        scores, idxs = torch.ones(n), torch.zeros(n, dtype=torch.int64)
        if op == "nms":
            kept = nms(boxes, scores, 0.5)
        elif op == "batched_nms":
            kept = batched_nms(boxes, scores, idxs, 0.5)
        else:
            kept, count = batched_nms_padded(boxes, scores, idxs, 0.5, 3)
            assert count.dtype == torch.int64 and count.shape == () and int(count) == n
            assert kept.tolist() == ([0, -1, -1] if n else [-1, -1, -1])
            continue
        assert kept.dtype == torch.int64 and kept.tolist() == list(range(n))


def test_padded_equals_plain(generator):
    boxes, scores, idxs = random_detections(800, generator, num_classes=5, extent=200)
    kept = batched_nms(boxes, scores, idxs, 0.5)
    for max_out in (0, len(kept) // 2, len(kept), 900):
        indices, count = batched_nms_padded(boxes, scores, idxs, 0.5, max_out)
        assert indices.shape == (max_out,) and indices.dtype == torch.int64
        assert int(count) == min(len(kept), max_out)
        assert torch.equal(indices[: int(count)], kept[:max_out])
        assert bool((indices[int(count):] == -1).all())


def test_idxs_of_any_integer_type_and_sparse_values(generator):
    boxes, scores, idxs = random_detections(500, generator, num_classes=4, extent=100)
    expected = batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(batched_nms(boxes, scores, idxs.to(torch.int32), 0.5), expected)
    # Huge, negative, sparse ids (not a dense range): same grouping.
    sparse = torch.tensor([-(2**62), -5, 10**12, 2**62])[idxs]
    assert torch.equal(batched_nms(boxes, scores, sparse, 0.5), expected)


def test_documented_bad_values(generator):
    """Non-finite and inverted boxes are kept and suppress nothing; NaN scores come first."""
    boxes, scores, idxs = random_detections(300, generator, num_classes=1, extent=60)
    nan = float("nan")
    bad = {0: [nan, 0, 10, 10], 1: [0, 0, float("inf"), 10], 2: [-float("inf"), 0, 10, 10], 3: [20, 20, 10, 10], 4: [5, 30, 25, 10]}
    for i, box in bad.items():
        boxes[i] = torch.tensor(box)
        scores[i] = 1.0 + i  # the highest scores: they would suppress if they could
    scores[5] = nan
    kept = batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(kept, batched_nms_reference(boxes, scores, idxs, 0.5))
    assert kept[0].item() == 5  # NaN score first
    assert set(bad) <= set(kept.tolist())
    clean = torch.tensor([i not in bad for i in range(300)])
    reference_without_bad = torch.nonzero(clean).flatten()[batched_nms_reference(boxes[clean], scores[clean], idxs[clean], 0.5)]
    assert set(kept.tolist()) - set(bad) == set(reference_without_bad.tolist())


# ------------------------------------------------------------------------------------------------
# Properties on drawn inputs


class_ids = st.one_of(
    st.lists(st.integers(0, 3), min_size=1, max_size=4),  # a few dense labels
    st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=6),  # anywhere in int64
    st.lists(st.sampled_from((-(2**63), -(2**63) + 1, -1, 0, 2**62, 2**63 - 1)), min_size=1, max_size=6),
)


@st.composite
def nms_inputs(draw):
    """(boxes (N, 4), scores (N,), idxs (N,), iou_threshold, dtype, layout) with overlapping
    clusters, exact duplicates, degenerate boxes and tied scores."""
    seed = draw(seeds)
    n = draw(st.integers(0, 60))
    dtype = draw(float_dtypes)
    g = torch.Generator().manual_seed(seed)
    centres = uniform(g, (draw(st.integers(1, 4)), 2), torch.float64, 0, 40)
    xy = centres[torch.randint(0, centres.shape[0], (n,), generator=g)] + uniform(g, (n, 2), torch.float64, -3, 3)
    wh = uniform(g, (n, 2), torch.float64, 0, 12)
    wh[torch.rand(n, generator=g) < 0.1] = 0  # degenerate boxes
    boxes = torch.cat([xy, xy + wh], 1)
    duplicates = torch.rand(n, generator=g) < 0.1
    if n > 1:
        boxes[duplicates] = boxes[0].clone()
    tie_levels = draw(st.sampled_from((2, 5, 1000)))  # few distinct scores: many ties
    scores = torch.randint(0, tie_levels, (n,), generator=g).double() / tie_levels
    palette = draw(class_ids)
    idxs = torch.tensor(palette, dtype=torch.int64)[torch.randint(0, len(palette), (n,), generator=g)]
    threshold = draw(st.one_of(st.sampled_from((0.0, 0.5, 1.0)), st.floats(0, 1)))
    layout = draw(st.sampled_from(("contiguous", "strided")))
    return boxes.to(dtype), scores.to(dtype), idxs, threshold, dtype, layout


@pytest.mark.usefixtures("single_thread")
@examples(1.0)
@given(inputs=nms_inputs())
def test_nms_on_drawn_inputs_matches_reference(inputs):
    boxes, scores, idxs, threshold, _, layout = inputs
    expected = reference.nms(boxes, scores, threshold)
    assert torch.equal(ops.nms(arrange(boxes, layout), arrange(scores, layout), threshold), expected)


@pytest.mark.usefixtures("single_thread")
@examples(1.0)
@given(inputs=nms_inputs(), max_out=st.integers(0, 70))
def test_batched_nms_on_drawn_inputs_matches_reference(inputs, max_out):
    boxes, scores, idxs, threshold, _, layout = inputs
    boxes, scores, idxs = arrange(boxes, layout), arrange(scores, layout), arrange(idxs, layout)
    expected = reference.batched_nms(boxes, scores, idxs, threshold)
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, threshold), expected)
    indices, count = ops.batched_nms_padded(boxes, scores, idxs, threshold, max_out)
    expected_indices, expected_count = reference.batched_nms_padded(boxes, scores, idxs, threshold, max_out)
    assert torch.equal(indices, expected_indices) and int(count) == int(expected_count)


# ------------------------------------------------------------------------------------------------
# Against torchvision


@pytest.mark.parametrize("num_classes", [1, 80])
def test_matches_torchvision(generator, num_classes):
    tv = pytest.importorskip("torchvision")
    # >= 1001 boxes: torchvision's CPU batched_nms then runs nms per class (its coordinate-offset
    # path would round planted near-threshold IoUs differently).
    boxes, scores, idxs = random_detections(2000, generator, num_classes, planted_pairs=200)
    for threshold in (0.3, 0.5, 0.7):
        expected = tv.ops.batched_nms(boxes, scores, idxs, threshold)
        assert torch.equal(batched_nms(boxes, scores, idxs, threshold), expected)
        assert torch.equal(batched_nms_reference(boxes, scores, idxs, threshold), expected)
    assert torch.equal(nms(boxes, scores, 0.5), tv.ops.nms(boxes, scores, 0.5))


@needs_cpu_kernel
def test_over_100k_boxes(generator):
    tv = pytest.importorskip("torchvision")
    boxes, scores, idxs = random_detections(120_000, generator, num_classes=1000, extent=1000)
    kept = batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(kept, tv.ops.batched_nms(boxes, scores, idxs, 0.5))
    # One class: the greedy scan over a single long run.
    sub = slice(0, 10_000)
    assert torch.equal(nms(boxes[sub], scores[sub], 0.5), tv.ops.nms(boxes[sub], scores[sub], 0.5))


# ------------------------------------------------------------------------------------------------
# torchvision's calling conventions


@pytest.mark.usefixtures("single_thread")
def test_batched_nms_of_no_boxes_is_empty_before_any_check():
    for device_boxes in (torch.empty(0, 4), torch.empty(0, 4, dtype=torch.float64)):
        kept = ops.batched_nms(device_boxes, None, None, None)
        assert kept.dtype == torch.int64 and kept.shape == (0,)


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("threshold", [torch.tensor(0.4), torch.tensor(0.4, dtype=torch.float64), np.float32(0.4),
                                       np.float64(0.4)])
def test_iou_threshold_as_tensor_or_numpy_scalar(generator, threshold):
    boxes, scores, idxs = random_nms_inputs(generator)
    assert torch.equal(ops.nms(boxes, scores, threshold), ops.nms(boxes, scores, float(threshold)))
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, threshold), ops.batched_nms(boxes, scores, idxs,
                                                                                         float(threshold)))
    with pytest.raises(TypeError, match="iou_threshold"):
        ops.nms(boxes, scores, torch.tensor([0.4, 0.5]))


# ------------------------------------------------------------------------------------------------
# Class ids anywhere in int64


# Class ids spanning the whole int64 range must not overflow the CPU kernel's class-range
# arithmetic (heap corruption). Each id set is checked against the reference (not torchvision,
# whose coordinate-offset trick cannot tell ids apart that round to one float, such as 2**63 - 1
# and 2**63 - 2).
EXTREME_IDS = {
    "int64-min-and-max": [-(2**63), 2**63 - 1],
    "max-and-max-minus-one": [2**63 - 1, 2**63 - 2, 2**63 - 1],
    "min-and-zero": [-(2**63), 0, -(2**63), 0],
    "spread": [-(2**63), -(2**40), -1, 0, 1, 2**40, 2**63 - 1, -(2**63)],
    "dense-negative": [-3, -1, -2, -3, -1, -2, -3, -1],
}


@pytest.fixture(scope="module")
def extreme_ids_runs():
    """For each id set of EXTREME_IDS: overlapping boxes (only the class split keeps several),
    random scores, and what the ops returned for them in a child process."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed: {seed}")
    generator = torch.Generator().manual_seed(seed)
    inputs, calls = {}, []
    for name, ids in EXTREME_IDS.items():
        xy = torch.rand(len(ids), 2, generator=generator) * 4
        boxes, scores = torch.cat([xy, xy + 10], 1), torch.rand(len(ids), generator=generator)
        inputs[name] = boxes, scores, torch.tensor(ids, dtype=torch.int64)
        args = f"torch.tensor({boxes.tolist()}), torch.tensor({scores.tolist()}), torch.tensor({ids}), 0.5"
        calls += [
            (f"{name}/op", f"sfpn.batched_nms({args})"),
            (f"{name}/padded", f"sfpn.batched_nms_padded({args}, {len(ids)})"),
            (f"{name}/public", f"public_ops.batched_nms({args})"),
        ]
    return inputs, run_isolated(calls)


@pytest.mark.skipif(
    not _extension.STATUS.loaded,
    reason="the compiled extension is not loaded: no C++ op to check",
)
@pytest.mark.parametrize("name", EXTREME_IDS)
def test_batched_nms_any_int64_class_ids(extreme_ids_runs, name):
    inputs, outcomes = extreme_ids_runs
    expected = reference.batched_nms(*inputs[name], 0.5).tolist()
    for call in ("op", "padded", "public"):
        outcome = outcomes[f"{name}/{call}"]
        assert outcome["raised"] is None, f"{name}/{call}: {outcome['raised']}: {outcome['message']}"
    assert outcomes[f"{name}/op"]["value"] == expected
    assert outcomes[f"{name}/public"]["value"] == expected
    padded, count = outcomes[f"{name}/padded"]["value"]
    assert count == len(expected) and padded[:count] == expected and all(p == -1 for p in padded[count:])


# ------------------------------------------------------------------------------------------------
# Opcheck


@needs_cpu_kernel
def test_opcheck(generator):
    boxes, scores, idxs = random_detections(200, generator, num_classes=3, extent=100)
    torch.library.opcheck(torch.ops.sfpn.nms, (boxes, scores, 0.5))
    torch.library.opcheck(torch.ops.sfpn.batched_nms, (boxes, scores, idxs, 0.5))
    torch.library.opcheck(torch.ops.sfpn.batched_nms_padded, (boxes, scores, idxs, 0.5, 50))


# ------------------------------------------------------------------------------------------------
# Argument checks


def test_bad_inputs_raise():
    boxes, scores, idxs = torch.rand(5, 4), torch.rand(5), torch.zeros(5, dtype=torch.int64)
    cases = [
        (lambda: nms(boxes.tolist(), scores, 0.5), TypeError, "boxes"),
        (lambda: nms(boxes[:, :3], scores, 0.5), ValueError, "boxes"),
        (lambda: nms(boxes[None], scores, 0.5), ValueError, "boxes"),
        (lambda: nms(boxes, scores[:4], 0.5), ValueError, "scores"),
        (lambda: nms(boxes, scores.double(), 0.5), TypeError, "scores"),
        (lambda: nms(boxes.long(), scores.long(), 0.5), TypeError, "boxes"),
        (lambda: nms(boxes, scores, "0.5"), TypeError, "iou_threshold"),
        (lambda: nms(boxes, scores, float("nan")), ValueError, "iou_threshold"),
        (lambda: batched_nms(boxes, scores, idxs[:4], 0.5), ValueError, "idxs"),
        (lambda: batched_nms(boxes, scores, idxs.float(), 0.5), TypeError, "idxs"),
        (lambda: batched_nms(boxes, scores, idxs[:, None], 0.5), ValueError, "idxs"),
        (lambda: batched_nms_padded(boxes, scores, idxs, 0.5, -1), ValueError, "max_out"),
        (lambda: batched_nms_padded(boxes, scores, idxs, 0.5, 2.0), TypeError, "max_out"),
    ]
    for call, error, name in cases:
        with pytest.raises(error, match=name):
            call()


# ------------------------------------------------------------------------------------------------
# Without the compiled extension


@needs_cpu_kernel
def test_reference_fallback_in_subprocess():
    """SFPN_DISABLE_EXTENSION=1 serves the same results through the reference."""
    script = (
        "import torch; from sfpn import _extension; from sfpn.ops import batched_nms;"
        "assert not _extension.STATUS.loaded; g = torch.Generator().manual_seed(0);"
        "b = torch.rand(400, 2, generator=g) * 100; b = torch.cat([b, b + 20], 1);"
        "s = torch.rand(400, generator=g); i = torch.randint(0, 3, (400,), generator=g);"
        "print(batched_nms(b, s, i, 0.5).tolist())"
    )
    env = dict(os.environ, SFPN_DISABLE_EXTENSION="1")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", script], env=env, capture_output=True, text=True, check=True)
    g = torch.Generator().manual_seed(0)
    b = torch.rand(400, 2, generator=g) * 100
    b = torch.cat([b, b + 20], 1)
    s, i = torch.rand(400, generator=g), torch.randint(0, 3, (400,), generator=g)
    assert eval(out.stdout) == batched_nms(b, s, i, 0.5).tolist()


# ------------------------------------------------------------------------------------------------
# CUDA kernels on the CPU (emulation)


def crowded_boxes(generator, count, extent=200.0, box_size=40.0):
    """(count, 4) boxes crowded enough that most overlap several others, and scores with ties."""
    corner = torch.rand(count, 2, generator=generator) * extent
    size = 4 + torch.rand(count, 2, generator=generator) * box_size
    scores = torch.randint(0, 50, (count,), generator=generator).float() / 50  # many ties
    return torch.cat([corner, corner + size], dim=1), scores


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("count", [1, 63, 1000])
def test_emulated_nms(emulated, generator, seed, count):
    boxes, scores = crowded_boxes(generator, count)
    kept = run(emulated, "nms", boxes, scores, 0.5, seed=seed)
    assert torch.equal(kept, reference.nms(boxes, scores, 0.5))


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("seed", SEEDS)
def test_emulated_one_class_beyond_64_by_64_boxes(emulated, generator, seed):
    """4200 boxes in one class: the scan walks 66 row blocks of mask words in one CTA."""
    boxes, scores = crowded_boxes(generator, 4200, extent=400.0)
    classes = torch.full((4200,), 3, dtype=torch.int64)
    kept = run(emulated, "batched_nms", boxes, scores, classes, 0.6, seed=seed)
    assert torch.equal(kept, reference.batched_nms(boxes, scores, classes, 0.6))


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("seed", SEEDS)
def test_emulated_batched_nms_many_classes(emulated, generator, seed):
    """1000 boxes over 37 of 80 class ids (the others empty), runs crossing 64-box blocks."""
    boxes, scores = crowded_boxes(generator, 1000, extent=120.0)
    present = torch.randperm(80, generator=generator)[:37]
    classes = present[torch.randint(0, 37, (1000,), generator=generator)]
    kept = run(emulated, "batched_nms", boxes, scores, classes, 0.5, seed=seed)
    assert torch.equal(kept, reference.batched_nms(boxes, scores, classes, 0.5))


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("max_out", [0, 50, 700])
def test_emulated_batched_nms_padded(emulated, generator, seed, max_out):
    """max_out below the kept count truncates, above it pads with -1."""
    boxes, scores = crowded_boxes(generator, 700, extent=150.0)
    classes = torch.randint(0, 5, (700,), generator=generator)
    indices, count = run(emulated, "batched_nms_padded", boxes, scores, classes, 0.5, max_out, seed=seed)
    expected_indices, expected_count = reference.batched_nms_padded(boxes, scores, classes, 0.5, max_out)
    assert 0 < expected_count < 700 or max_out == 0
    assert torch.equal(indices, expected_indices) and torch.equal(count, expected_count)


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_emulated_at_the_threshold(emulated, dtype):
    """IoUs at float32(threshold) and a float32 step either side: the kernel decides as torchvision's
    CPU kernel and the reference do (the IoU compared with the threshold as a float64)."""
    for threshold in THRESHOLDS:
        boxes, scores = threshold_pairs(threshold)
        if dtype == torch.float16:  # only the pairs half holds exactly, one per class (no offsets)
            boxes[:, [0, 2]] -= boxes[:, [0]]
            exact = (boxes.half().float() == boxes).all(1).view(-1, 2).all(1)
            boxes = boxes.view(-1, 2, 4)[exact].reshape(-1, 4)
            scores = torch.ones(boxes.shape[0])
        classes = torch.arange(boxes.shape[0]) // 2
        boxes, scores = boxes.to(dtype), scores.to(dtype)
        expected = expected_keep(boxes, threshold)
        assert torch.equal(reference.batched_nms(boxes, scores, classes, threshold), expected)
        assert torch.equal(run(emulated, "batched_nms", boxes, scores, classes, threshold), expected)
        if dtype != torch.float16:
            assert torch.equal(run(emulated, "nms", boxes, scores, threshold), expected)


@pytest.mark.usefixtures("single_thread")
def test_emulated_empty(emulated):
    boxes, scores = torch.zeros(0, 4), torch.zeros(0)
    assert run(emulated, "nms", boxes, scores, 0.5).shape == (0,)
    indices, count = run(emulated, "batched_nms_padded", boxes, scores, torch.zeros(0, dtype=torch.int64), 0.5, 4)
    assert indices.tolist() == [-1] * 4 and count.item() == 0


# ------------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_classes", [1, 80])
def test_cuda_matches_cpu(generator, dtype, num_classes):
    boxes, scores, idxs = random_detections(5000, generator, num_classes, dtype=dtype, planted_pairs=300)
    scores[::7] = scores[0]  # planted ties: the stable order must agree too
    expected = batched_nms_reference(boxes, scores, idxs, 0.5)
    assert torch.equal(batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5).cpu(), expected)
    assert torch.equal(nms(boxes.cuda(), scores.cuda(), 0.5).cpu(), nms_reference(boxes, scores, 0.5))


@pytest.mark.cuda
def test_cuda_matches_torchvision_over_100k(generator):
    tv = pytest.importorskip("torchvision")
    boxes, scores, idxs = random_detections(150_000, generator, num_classes=80, extent=2000, planted_pairs=1000)
    boxes, scores, idxs = boxes.cuda(), scores.cuda(), idxs.cuda()
    expected = tv.ops.batched_nms(boxes, scores, idxs, 0.5)  # > 100k boxes: its per-class path
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.5), expected)
    assert torch.equal(nms(boxes[:120_000], scores[:120_000], 0.5), tv.ops.nms(boxes[:120_000], scores[:120_000], 0.5))
    for n in (0, 1, 63, 64, 65):
        assert torch.equal(nms(boxes[:n], scores[:n], 0.5), tv.ops.nms(boxes[:n], scores[:n], 0.5))


@pytest.mark.cuda
def test_cuda_padded_makes_no_host_sync(generator):
    boxes, scores, idxs = (t.cuda() for t in random_detections(20_000, generator, 80, extent=1000))
    expected = batched_nms(boxes, scores, idxs, 0.5)
    batched_nms_padded(boxes, scores, idxs, 0.5, 1000)  # warm up (allocator, sort workspaces)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        indices, count = batched_nms_padded(boxes, scores, idxs, 0.5, 1000)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(count) == min(len(expected), 1000)
    assert torch.equal(indices[: int(count)], expected[:1000])


@pytest.mark.cuda
def test_cuda_padded_in_cuda_graph(generator):
    boxes, scores, idxs = (t.cuda() for t in random_detections(20_000, generator, 80, extent=1000))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up on a side stream, as torch.cuda.graphs asks
        batched_nms_padded(boxes, scores, idxs, 0.5, 2000)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        indices, count = batched_nms_padded(boxes, scores, idxs, 0.5, 2000)
    for _ in range(2):  # replay on new data written into the captured inputs
        fresh = random_detections(20_000, generator, 80, extent=1000)
        for static, new in zip((boxes, scores, idxs), fresh):
            static.copy_(new)
        graph.replay()
        expected = batched_nms(boxes, scores, idxs, 0.5)[:2000]
        assert int(count) == len(expected)
        assert torch.equal(indices[: len(expected)], expected)
