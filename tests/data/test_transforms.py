"""Transforms (sfpn/data/transforms.py): flip and resize keep image, boxes, masks and the
semantic map aligned; the built pipeline is seeded."""
import pytest
import torch

from sfpn.data import RandomHorizontalFlip, ResizeShortestEdge, build_transforms
from sfpn.semantic_labels import semantic_from_masks


def _random_scene(generator, height=37, width=53, count=4):
    """An image whose colour encodes the label under each pixel, with masks, boxes, semantic."""
    masks = torch.zeros(count, height, width, dtype=torch.uint8)
    boxes = []
    for k in range(count):
        y0 = int(torch.randint(0, height - 12, (), generator=generator))
        x0 = int(torch.randint(0, width - 12, (), generator=generator))
        h, w = (int(v) for v in torch.randint(6, 12, (2,), generator=generator))
        masks[k, y0 : y0 + h, x0 : x0 + w] = 1
        boxes.append([x0, y0, x0 + w, y0 + h])
    labels = torch.arange(1, count + 1)
    semantic = semantic_from_masks(masks, labels)
    image = (semantic.float() / count)[None].expand(3, -1, -1).clone()
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": labels, "masks": masks, "semantic": semantic}
    return image, target


def test_flip_keeps_everything_aligned(generator):
    image, target = _random_scene(generator)
    flipped, out = RandomHorizontalFlip(1.0)(image, target, generator)
    assert torch.equal(flipped, image.flip(-1))
    assert torch.equal(out["semantic"], semantic_from_masks(out["masks"], out["labels"]))
    for box, mask in zip(out["boxes"], out["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    assert RandomHorizontalFlip(0.0)(image, target, generator)[0] is image


@pytest.mark.parametrize("min_size,max_size", [(74, 1000), (30, 1000), (50, 60)])
def test_resize_keeps_everything_aligned(generator, min_size, max_size):
    image, target = _random_scene(generator)
    resized, out = ResizeShortestEdge(min_size, max_size)(image, target, generator)
    height, width = resized.shape[-2:]
    assert min(height, width) == min_size or max(height, width) == max_size
    assert out["masks"].shape[-2:] == (height, width) and out["semantic"].shape == (height, width)
    # Masks and the semantic map go through the same nearest sampling, so they agree exactly.
    assert torch.equal(out["semantic"], semantic_from_masks(out["masks"], out["labels"]))
    for box, mask in zip(out["boxes"], out["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        tight = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert (box - tight).abs().max() <= 1 + 1e-4  # nearest sampling moves an edge by < 1 pixel
    # The image moved with them: away from region borders its colour still encodes the label.
    interior = torch.nn.functional.max_pool2d(out["semantic"][None, None].float(), 5, 1, 2)[0, 0] == -torch.nn.functional.max_pool2d(-out["semantic"][None, None].float(), 5, 1, 2)[0, 0]
    torch.testing.assert_close(resized[0][interior], out["semantic"][interior].float() / 4, atol=1e-4, rtol=0)


def test_build_transforms_are_seeded(generator):
    image, target = _random_scene(generator)
    transform = build_transforms((20, 30, 40), 1000, flip_prob=0.5)
    runs = [transform(image, target, torch.Generator().manual_seed(seed)) for seed in (1, 1, 2, 3, 4, 5, 6)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1]["boxes"], runs[1][1]["boxes"])
    assert len({tuple(r[0].shape) for r in runs}) > 1
