"""A tiny batch the detector tests (test_detector.py, test_mask_cascade.py) train on."""
import torch


NUM_CLASSES = 2


def synthetic_batch(size: int = 96):
    """Two images with two coloured rectangles each (class = colour channel), their semantic maps,
    and deterministic texture."""
    generator = torch.Generator().manual_seed(0)
    images, targets = [], []
    for i in range(2):
        image = torch.rand(3, size, size - 16 * i, generator=generator) * 0.3
        boxes = torch.tensor([[8.0, 10.0, 44.0, 52.0], [50.0, 40.0, 78.0, 90.0]]) - 4 * i
        labels = torch.tensor([1, 2])
        semantic = torch.zeros(image.shape[-2:], dtype=torch.int64)
        for (x1, y1, x2, y2), label in zip(boxes.long().tolist(), labels.tolist()):
            semantic[y1:y2, x1:x2] = label
            image[label - 1, y1:y2, x1:x2] = 1.0
        images.append(image)
        targets.append({"boxes": boxes, "labels": labels, "semantic": semantic})
    return images, targets
