"""sfpn's ``roi_align``, ``nms``, ``batched_nms`` and the torchvision integration as drop-ins for
``torchvision.ops``: NMS decides an IoU at the threshold as torchvision does, the ops
and an SFPN torchvision detector script with TorchScript, and bad arguments raise errors that
handlers written for torchvision's errors catch.
"""
import inspect
import re
import warnings

import pytest
import torch

torchvision = pytest.importorskip("torchvision")

from torchvision.models.detection import FasterRCNN  # noqa: E402
from torchvision.models.detection import rpn as torchvision_rpn  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402

from sfpn import ops  # noqa: E402
from sfpn.integrations.torchvision import sfpn_resnet_backbone, use_sfpn_ops  # noqa: E402
from sfpn.modeling.neck import SFPN  # noqa: E402
from sfpn.ops import OpArgumentError, OpTypeError, OpValueError, RoIBoxesError, reference  # noqa: E402

from nms_threshold_pairs import THRESHOLDS, expected_keep, float32_neighbours, pair_iou, threshold_pairs  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def script():
    """``torch.jit.script`` without its deprecation warning (scripting is what is tested here)."""
    def compile(obj):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.script(obj)

    return compile


# ---- 1. NMS at an IoU exactly at the threshold ------------------------------------------------


def sfpn_nms_variants(boxes, scores, threshold):
    """Every sfpn path that decides NMS: the public functions (kernel) and the references."""
    one_class = torch.zeros(boxes.shape[0], dtype=torch.int64)
    yield "nms", ops.nms(boxes, scores, threshold)
    yield "batched_nms", ops.batched_nms(boxes, scores, one_class, threshold)
    indices, count = ops.batched_nms_padded(boxes, scores, one_class, threshold, boxes.shape[0])
    yield "batched_nms_padded", indices[:count]
    yield "reference.nms", reference.nms(boxes, scores, threshold)
    yield "reference.batched_nms", reference.batched_nms(boxes, scores, one_class, threshold)


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_nms_decides_at_the_threshold_as_torchvision(threshold):
    boxes, scores = threshold_pairs(threshold)
    iou = pair_iou(boxes)
    # The pairs are where they should be: torchvision computes the same IoUs, and they take the
    # value float32(threshold) and the float32 values either side of it.
    assert torch.equal(iou, torchvision.ops.box_iou(boxes[0::2], boxes[1::2]).diagonal())
    for value in float32_neighbours(threshold):
        assert bool((iou == value).any()), f"no pair has the IoU {value!r}"
    at_threshold = iou == float32_neighbours(threshold)[1]
    for dtype in (torch.float32, torch.float64):
        b, s = boxes.to(dtype), scores.to(dtype)
        expected = torchvision.ops.nms(b, s, threshold)
        # torchvision's rule: the IoU (float32 for float32 boxes) compared as a float64.
        assert torch.equal(expected, expected_keep(b, threshold))
        if dtype == torch.float32:  # the pairs at float32(threshold) go as float32(t) > t says
            kept = torch.isin(torch.arange(1, boxes.shape[0], 2), expected)
            assert bool((kept[at_threshold] != (float32_neighbours(threshold)[1] > threshold)).all())
        for name, kept in sfpn_nms_variants(b, s, threshold):
            assert torch.equal(kept, expected), f"{name} ({dtype}) differs from torchvision at {threshold}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_boxes_decide_at_the_threshold_as_their_float32_copies(dtype):
    """torchvision's CPU NMS takes no half types; sfpn computes their IoU in float32, so they decide
    as the float32 boxes they equal (torchvision's decisions, by the test above)."""
    for threshold in THRESHOLDS:
        boxes, _ = threshold_pairs(threshold)
        boxes = boxes.clone()
        boxes[:, [0, 2]] -= boxes[:, [0]]  # every pair at the origin: no offsets to round in half types
        exact = (boxes.to(dtype).float() == boxes).all(1).view(-1, 2).all(1)
        pairs = boxes.view(-1, 2, 4)[exact].reshape(-1, 4)
        assert bool((pair_iou(pairs) == float32_neighbours(threshold)[1]).any())  # the deciding case is there
        classes = torch.arange(pairs.shape[0]) // 2  # one pair per class, so that pairs cannot interact
        scores = torch.ones(pairs.shape[0])  # equal: A before B by index
        expected = expected_keep(pairs, threshold)
        assert torch.equal(ops.batched_nms(pairs, scores, classes, threshold), expected)
        low = pairs.to(dtype)
        for kept in (
            ops.batched_nms(low, scores.to(dtype), classes, threshold),
            reference.batched_nms(low, scores.to(dtype), classes, threshold),
        ):
            assert torch.equal(kept, expected)


@pytest.mark.parametrize("threshold", [0.3, 0.7, 0.6, 0.45])
def test_nms_matches_torchvision_on_integer_boxes(generator, threshold):
    """Random boxes on an integer grid: many IoUs are ratios of small integers, among them exactly
    the threshold's fraction, whose float32 IoU is float32(threshold)."""
    corners = torch.randint(0, 40, (3000, 2), generator=generator)
    sizes = torch.randint(1, 20, (3000, 2), generator=generator)
    boxes = torch.cat([corners, corners + sizes], 1).float()
    scores = torch.randperm(3000, generator=generator).float() / 3000
    iou = torchvision.ops.box_iou(boxes, boxes)
    assert bool((iou == float32_neighbours(threshold)[1]).any())
    expected = torchvision.ops.nms(boxes, scores, threshold)
    assert torch.equal(ops.nms(boxes, scores, threshold), expected)
    assert torch.equal(reference.nms(boxes, scores, threshold), expected)
    assert torch.equal(ops.nms(boxes.double(), scores.double(), threshold),
                       torchvision.ops.nms(boxes.double(), scores.double(), threshold))


# ---- 2. TorchScript -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["roi_align", "nms", "batched_nms"])
def test_signatures_extend_torchvisions(name):
    """torchvision's parameters, in order, with its defaults; sfpn's additions come after them."""
    theirs = list(inspect.signature(getattr(torchvision.ops, name)).parameters.values())
    ours = list(inspect.signature(getattr(ops, name)).parameters.values())
    assert [(p.name, p.default, p.kind) for p in ours[: len(theirs)]] == [(p.name, p.default, p.kind) for p in theirs]
    assert all(p.default is not inspect.Parameter.empty for p in ours[len(theirs):])


def test_scripted_ops_equal_eager(generator, script):
    boxes = torch.rand(200, 2, generator=generator) * 100
    boxes = torch.cat([boxes, boxes + torch.rand(200, 2, generator=generator) * 50 + 1], 1)
    scores = torch.rand(200, generator=generator)
    classes = torch.randint(0, 5, (200,), generator=generator)
    assert torch.equal(script(ops.nms)(boxes, scores, 0.5), ops.nms(boxes, scores, 0.5))
    assert torch.equal(script(ops.batched_nms)(boxes, scores, classes, 0.5), ops.batched_nms(boxes, scores, classes, 0.5))
    assert script(ops.batched_nms)(boxes[:0], scores[:0], classes[:0], 0.5).shape == (0,)

    x = torch.rand(2, 3, 20, 24, generator=generator)
    per_image = [boxes[:7] / 6, boxes[7:10] / 6]
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(per_image)])
    scripted = script(ops.roi_align)
    for box_format in (rois, per_image):
        for output_size, args in ((5, ()), ((4, 3), (0.5, 2, True))):
            assert torch.equal(scripted(x, box_format, output_size, *args), ops.roi_align(x, box_format, output_size, *args))
    module = ops.RoIAlign((4, 3), 0.5, 2, aligned=True)
    assert torch.equal(script(module)(x, per_image), module(x, per_image))

    levels = {"0": x, "1": torch.rand(2, 3, 10, 12, generator=generator), "pool": x[..., ::4, ::4]}
    pooler = ops.MultiLevelRoIAlign(["0", "1"], 7, 2, canonical_scale=20, canonical_level=3)
    scripted_pooler = script(ops.MultiLevelRoIAlign(["0", "1"], 7, 2, canonical_scale=20, canonical_level=3))
    image_shapes = [(80, 96), (76, 90)]
    per_image_images = [b * 4 for b in per_image]
    assert torch.equal(scripted_pooler(levels, per_image_images, image_shapes), pooler(levels, per_image_images, image_shapes))
    assert scripted_pooler.scales == pooler.scales == [0.25, 0.125]  # inferred at the first call, as torchvision's


NECK_OPTIONS = [
    {},
    {"semantic": False},
    {"fusion_op": "concat", "downsample": "max_pool"},
    {"fusion_op": "gate", "fusion_point": "after"},
]


@pytest.mark.parametrize("options", NECK_OPTIONS)
def test_scripted_neck_equals_eager(generator, script, options):
    neck = SFPN([8, 16, 32, 64], 16, 5, semantic_channels=16, semantic_convs=1, num_groups=4, **options).eval()
    maps = [torch.rand(2, 8 * 2**i, 32 // 2**i, 40 // 2**i, generator=generator) for i in range(4)]
    scripted = script(neck)
    (pyramid, logits, losses), (expected, expected_logits, _) = scripted(maps), neck(maps)
    assert list(pyramid) == list(expected) == ["p2", "p3", "p4", "p5", "p6"]
    for name in expected:
        assert torch.equal(pyramid[name], expected[name])
    assert (logits is None) == (expected_logits is None) == (options.get("semantic") is False)
    if logits is not None:
        assert torch.equal(logits, expected_logits)
    assert losses == {}
    if neck.has_semantic_branch:  # the semantic loss trains; a scripted neck refuses labels
        with pytest.raises(torch.jit.Error, match="semantic loss"):
            scripted(maps, torch.zeros(2, 32, 40, dtype=torch.int64))


def small_faster_rcnn():
    backbone = sfpn_resnet_backbone("resnet18", num_semantic_classes=4, out_channels=32, semantic_channels=32,
                                    semantic_convs=1, num_groups=8)
    return FasterRCNN(backbone, num_classes=4, min_size=96, max_size=128, rpn_pre_nms_top_n_test=200,
                      rpn_post_nms_top_n_test=100, box_score_thresh=0.0).eval()


@pytest.mark.filterwarnings("ignore:RCNN always returns:UserWarning")
@pytest.mark.usefixtures("without_winograd")  # bit for bit: a script runs ATen's convolutions
def test_scripted_torchvision_faster_rcnn_with_sfpn_backbone_and_ops_equals_eager(generator, script):
    torch.manual_seed(0)  # the detector's initialisation
    model = small_faster_rcnn()
    images = [torch.rand(3, 96, 120, generator=generator), torch.rand(3, 90, 128, generator=generator)]
    with use_sfpn_ops(model):
        scripted = script(model)
        with torch.no_grad():
            expected = model(images)
            _, detections = scripted(images)  # a scripted R-CNN returns (losses, detections)
    # The scripted model runs sfpn's ops: its RPN and box head call sfpn's batched_nms, its pooler
    # is sfpn's module.
    assert "sfpn.ops.nms.batched_nms" in scripted.rpn.filter_proposals.code
    assert "sfpn.ops.nms.batched_nms" in scripted.roi_heads.postprocess_detections.code
    assert scripted.roi_heads.box_roi_pool.original_name == "MultiLevelRoIAlign"
    assert scripted.backbone.original_name == "SFPNBackbone"
    assert sum(len(d["boxes"]) for d in expected) > 0
    for ours, theirs in zip(detections, expected):
        assert ours.keys() == theirs.keys()
        for key in theirs:
            assert torch.equal(ours[key], theirs[key]), key
    assert scripted.backbone.semantic_logits is not None  # the neck ran its semantic branch


def test_scripting_follows_use_sfpn_ops(script):
    """TorchScript reuses the compiled methods of a module class across models: a torchvision RPN
    scripted during ``use_sfpn_ops`` calls sfpn's NMS even after one was scripted before it, and
    one scripted after the swap is removed calls torchvision's again."""
    def rpn():
        head = torchvision_rpn.RPNHead(8, 3)
        anchors = AnchorGenerator(((16,),), ((0.5, 1.0, 2.0),))
        return torchvision_rpn.RegionProposalNetwork(anchors, head, 0.7, 0.3, 256, 0.5, dict(training=100, testing=50),
                                                     dict(training=50, testing=20), 0.7)

    def calls_sfpn_nms(module):
        return "sfpn.ops.nms.batched_nms" in module.filter_proposals.code

    model = small_faster_rcnn()
    assert not calls_sfpn_nms(script(rpn()))
    with use_sfpn_ops(model):
        assert calls_sfpn_nms(script(rpn()))
    assert not calls_sfpn_nms(script(rpn()))


# ---- 3. Exception types -------------------------------------------------------------------------


def raised(call):
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the type is what is tested
        return error
    raise AssertionError("no error raised")


def test_error_classes_form_one_hierarchy():
    for error_type, bases in [
        (OpArgumentError, (RuntimeError,)),
        (OpValueError, (OpArgumentError, ValueError, RuntimeError)),
        (OpTypeError, (OpArgumentError, TypeError, RuntimeError)),
        (RoIBoxesError, (OpValueError, ValueError, RuntimeError, AssertionError)),
    ]:
        assert all(issubclass(error_type, base) for base in bases), error_type
    # every op's wrapper raises them, not only the torchvision drop-ins
    assert isinstance(raised(lambda: ops.upsample_add(torch.rand(1, 2, 3, 3), torch.rand(1, 3, 6, 6))), OpValueError)
    assert isinstance(raised(lambda: ops.resize_sum([torch.rand(1, 2, 3, 3).long()], (4, 4))), OpTypeError)


BOXES = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30.0]])
SCORES = torch.tensor([0.9, 0.8, 0.7])
CLASSES = torch.tensor([0, 0, 1])

# (call with one bad argument, the argument sfpn's message names, sfpn's Python-style type)
NMS_ERRORS = [
    (lambda nms, batched: nms(BOXES[:, :3], SCORES, 0.5), "boxes", ValueError),
    (lambda nms, batched: nms(BOXES[0], SCORES, 0.5), "boxes", ValueError),
    (lambda nms, batched: nms(BOXES, SCORES[:2], 0.5), "scores", ValueError),
    (lambda nms, batched: nms(BOXES, SCORES[:, None], 0.5), "scores", ValueError),
    (lambda nms, batched: nms(BOXES, SCORES.double(), 0.5), "scores", TypeError),
    (lambda nms, batched: batched(BOXES, SCORES, CLASSES[:2], 0.5), "idxs", ValueError),
]


@pytest.mark.parametrize("call,argument,python_type", NMS_ERRORS)
def test_nms_input_errors_are_runtime_errors_as_torchvisions(call, argument, python_type):
    assert isinstance(raised(lambda: call(torchvision.ops.nms, torchvision.ops.batched_nms)), RuntimeError)
    error = raised(lambda: call(ops.nms, ops.batched_nms))
    assert isinstance(error, RuntimeError) and isinstance(error, python_type), type(error).__mro__
    assert str(error).startswith(argument), str(error)
    with pytest.raises(RuntimeError, match=argument):  # a handler written for torchvision
        call(ops.nms, ops.batched_nms)
    with pytest.raises(python_type, match=argument):  # and one written for Python's conventions
        call(ops.nms, ops.batched_nms)


X = torch.rand(2, 3, 8, 8)
ROIS = torch.tensor([[0, 1.0, 1.0, 6.0, 5.0], [1, 0.0, 2.0, 7.5, 7.0]])
# (boxes of the wrong shape, the argument sfpn's message names)
ROI_SHAPE_ERRORS = [
    (ROIS[:, 1:], "boxes"),
    (ROIS[:, :3], "boxes"),
    ([ROIS], r"boxes\[0\]"),
    ([ROIS[:1, 1:], ROIS[:, :3]], r"boxes\[1\]"),
]


@pytest.mark.parametrize("boxes,argument", ROI_SHAPE_ERRORS)
def test_roi_boxes_of_the_wrong_shape_are_assertion_errors_as_torchvisions(boxes, argument):
    assert isinstance(raised(lambda: torchvision.ops.roi_align(X, boxes, 2)), AssertionError)
    for handler in (AssertionError, ValueError, RuntimeError):
        with pytest.raises(handler, match=argument):
            ops.roi_align(X, boxes, 2)
    with pytest.raises(AssertionError, match=argument):
        ops.RoIAlign(2, 1.0, -1)(X, boxes)


def quantized(tensor, scale):
    with warnings.catch_warnings():  # quantized tensors are deprecated in PyTorch, not yet gone
        warnings.simplefilter("ignore", UserWarning)
        return torch.quantize_per_tensor(tensor, scale, 0, torch.quint8)


def test_quantized_tensors_get_one_line_errors_naming_the_dtype(script):
    """torchvision takes quint8 in roi_align and nms on the CPU; sfpn says in one line that it does
    not, whether called eagerly, scripted or through the op itself."""
    qx, qrois = quantized(X, 0.1), quantized(ROIS, 0.1)
    qboxes, qscores = quantized(BOXES, 0.1), quantized(SCORES, 0.01)
    assert torchvision.ops.roi_align(qx[:1], qrois[:1], 2).dtype == torch.quint8  # one image a batch there
    assert torchvision.ops.nms(qboxes, qscores, 0.5).dtype == torch.int64
    # (call, the message's start: the argument it names)
    calls = [
        (lambda: ops.roi_align(qx, ROIS, 2), "input"),
        (lambda: ops.roi_align(X, qrois, 2), "boxes"),
        (lambda: ops.MultiLevelRoIAlign(["0"], 2, 2)({"0": qx}, [ROIS[:1, 1:]], [(8, 8)]), r"levels\[0\]"),
        (lambda: ops.nms(qboxes, SCORES, 0.5), "boxes"),
        (lambda: ops.nms(BOXES, qscores, 0.5), "scores"),
        (lambda: torch.ops.sfpn.nms(qboxes, qscores, 0.5), "boxes"),
        (lambda: script(ops.roi_align)(qx, ROIS, 2), "input"),
        (lambda: script(ops.roi_align)(X, qrois, 2), "rois"),
        (lambda: script(ops.MultiLevelRoIAlign(["0"], 2, 2))({"0": qx}, [ROIS[:1, 1:]], [(8, 8)]), "levels"),
        (lambda: script(ops.nms)(qboxes, qscores, 0.5), "boxes"),
        (lambda: script(ops.batched_nms)(BOXES, qscores, CLASSES, 0.5), "scores"),
    ]
    for call, argument in calls:
        error = raised(call)
        # A scripted call's error is TorchScript's RuntimeError, which quotes sfpn's in one line.
        assert isinstance(error, (TypeError, RuntimeError)), type(error)
        lines = [line for line in str(error).splitlines() if "quint8" in line]
        assert len(lines) == 1, str(error)
        assert re.search(rf"(^|OpTypeError: ){argument} must .*got quint8", lines[0]), lines[0]
