"""A batch's RPN proposals and box-head detections (sfpn/modeling/rpn.py, roi_heads.py), filtered
together with one NMS call for the batch: checked against each image processed alone, step by
step as the docstrings define them, on random inputs with images of different sizes, an image
without boxes, ties, non-finite scores and empty boxes."""
import pytest
import torch

from sfpn.modeling import BoxCoder
from sfpn.modeling.anchors import AnchorGenerator
from sfpn.modeling.boxes import clip_boxes_, nms_per_image, nonempty_boxes
from sfpn.modeling.roi_heads import RoIHeads
from sfpn.modeling.rpn import RPN
from sfpn.ops import batched_nms

pytestmark = pytest.mark.usefixtures("single_thread")


def random_boxes(count, generator, extent=64.0):
    """``(count, 4)`` xyxy boxes reaching past ``[0, extent)``, some empty or inverted."""
    corner = torch.rand(count, 2, generator=generator) * (extent + 10) - 5
    return torch.cat((corner, corner + torch.rand(count, 2, generator=generator) * 30 - 2), dim=1)


def test_clip_boxes_in_place():
    boxes = torch.tensor([[-3.0, 2.0, 50.0, 45.0], [10.0, -1.0, 12.0, 30.0], [float("nan"), 1.0, 2.0, 3.0]])
    assert clip_boxes_(boxes, (40, 48)) is boxes
    expected = torch.tensor([[0.0, 2.0, 48.0, 40.0], [10.0, 0.0, 12.0, 30.0], [float("nan"), 1.0, 2.0, 3.0]])
    torch.testing.assert_close(boxes, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("max_per_image", [1000, 7])
def test_nms_per_image_is_nms_of_each_image_alone(generator, max_per_image):
    num_images, num_classes, counts = 4, 3, [50, 0, 80, 1]
    total = sum(counts)
    boxes = random_boxes(total, generator)
    scores = torch.rand(total, generator=generator)
    scores[::9] = 0.5  # ties, broken by index
    classes = torch.randint(0, num_classes, (total,), generator=generator)
    images = torch.repeat_interleave(torch.arange(num_images), torch.tensor(counts))
    shuffle = torch.randperm(total, generator=generator)  # the images' boxes interleaved
    boxes, scores, classes, images = boxes[shuffle], scores[shuffle], classes[shuffle], images[shuffle]

    kept = nms_per_image(boxes, scores, images * num_classes + classes, images, num_images, 0.5, max_per_image)

    assert len(kept) == num_images
    for image, image_kept in enumerate(kept):
        own = torch.nonzero(images == image).squeeze(1)  # increasing, so ties keep their order
        alone = batched_nms(boxes[own], scores[own], classes[own], 0.5)[:max_per_image]
        assert torch.equal(image_kept, own[alone])
    assert sum(len(k) for k in kept) > num_images, "the draw should keep several boxes per image"


def test_rpn_proposals_are_each_image_alone(generator):
    """Per image and level the k best anchors, decoded, clipped to the image, non-empty and finite,
    NMS within the level, then the image's best."""
    strides, grids, num_images, pre, post = (4, 8, 16), [(8, 10), (4, 5), (2, 3)], 3, 40, 25
    rpn = RPN(8, AnchorGenerator((8.0, 16.0, 32.0), (0.5, 1.0, 2.0), strides), pre_nms_topk=(pre, pre),
              post_nms_topk=(post, post), nms_threshold=0.6, min_size=1.0).eval()
    anchors = rpn.anchor_generator(grids, torch.device("cpu"))
    objectness = [torch.randn(num_images, a.shape[0], generator=generator) for a in anchors]
    deltas = [torch.randn(num_images, a.shape[0], 4, generator=generator) for a in anchors]
    objectness[0][1, :5] = float("nan")
    objectness[1][2, :3] = float("-inf")
    objectness[2][0, :4] = objectness[2][0, 4]  # ties
    image_sizes = [(32, 40), (20, 40), (32, 24)]

    proposals = rpn._proposals(anchors, objectness, deltas, image_sizes)

    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    for image, (height, width) in enumerate(image_sizes):
        boxes, scores, levels = [], [], []
        for level, (level_anchors, level_scores, level_deltas) in enumerate(zip(anchors, objectness, deltas)):
            top_scores, top_index = level_scores[image].topk(min(pre, level_anchors.shape[0]))
            boxes.append(coder.decode(level_deltas[image, top_index], level_anchors[top_index]))
            scores.append(top_scores)
            levels.append(torch.full_like(top_index, level))
        boxes, scores, levels = clip_boxes_(torch.cat(boxes), (height, width)), torch.cat(scores), torch.cat(levels)
        valid = nonempty_boxes(boxes, 1.0) & torch.isfinite(scores)
        boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        expected = boxes[batched_nms(boxes, scores, levels, 0.6)[:post]]
        assert torch.equal(proposals[image], expected), f"image {image}"
        assert 0 < len(expected)
        assert (expected[:, 2] <= width).all() and (expected[:, 3] <= height).all()
    assert len(proposals[0]) == post, "the draw should fill the first image's quota"


@pytest.mark.parametrize("class_agnostic", [False, True])
def test_box_head_detections_are_each_image_alone(generator, class_agnostic):
    """Per image: boxes decoded per class and clipped to the image, the classes scoring above the
    threshold, non-empty, NMS within each class, then the image's best."""
    num_classes, per_image = 3, 6
    heads = RoIHeads(8, num_classes, class_agnostic=class_agnostic, score_threshold=0.2, nms_threshold=0.5,
                     detections_per_image=per_image).eval()
    counts, image_sizes = [30, 0, 25, 2], [(40, 48), (40, 48), (40, 48), (24, 20)]
    proposals = [random_boxes(count, generator, extent=40.0) for count in counts]
    probabilities = torch.softmax(3 * torch.randn(sum(counts), num_classes + 1, generator=generator), dim=1)
    probabilities[3, 1:] = probabilities[4, 1:]  # ties
    deltas = torch.randn(sum(counts), 4 * (1 if class_agnostic else num_classes), generator=generator) * 0.3
    # Image 2 is image 0's first 25 RoIs again: none may suppress the other image's twin.
    proposals[2], probabilities[30:55], deltas[30:55] = proposals[0][:25].clone(), probabilities[:25], deltas[:25]

    detections = heads.postprocess(probabilities, deltas, proposals, image_sizes)

    assert len(detections) == len(counts)
    starts = [sum(counts[:i]) for i in range(len(counts))]
    for image, (start, count, size) in enumerate(zip(starts, counts, image_sizes)):
        rows = slice(start, start + count)
        boxes = heads.box_coder.decode(deltas[rows], proposals[image]).reshape(count, deltas.shape[1] // 4, 4)
        boxes = clip_boxes_(boxes, size).expand(count, num_classes, 4)
        roi, cls = torch.nonzero(probabilities[rows, 1:] > 0.2, as_tuple=True)
        boxes, scores = boxes[roi, cls], probabilities[rows, 1:][roi, cls]
        valid = nonempty_boxes(boxes)
        boxes, scores, cls = boxes[valid], scores[valid], cls[valid]
        keep = batched_nms(boxes, scores, cls, 0.5)[:per_image]
        assert torch.equal(detections[image]["boxes"], boxes[keep]), f"image {image}"
        assert torch.equal(detections[image]["scores"], scores[keep])
        assert torch.equal(detections[image]["labels"], cls[keep] + 1)
    assert len(detections[1]["boxes"]) == 0
    assert len(detections[2]["boxes"]) > 0
    assert len(detections[0]["boxes"]) == per_image, "the draw should fill the first image's quota"
