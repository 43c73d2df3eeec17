"""Checks behind benchmarks/ACCURACY.md's diagnosis of the semantic head (no training).

    python benchmarks/semantic_diagnosis.py [--every 10] [--labels-png labels.png] [--checkpoint model_final.pth ...]

1. The label maps the head trains on, as the training transforms make them (resize, a forced
   horizontal flip), drawn beside their images with the boxes, and on the head's stride-8 grid.
2. The class shares of the labelled pixels, and the cross-entropy of the best constant prediction
   (the class prior's entropy): a head whose loss sits there has learnt nothing but the prior.
3. At initialisation, on one training batch of the small SFPN: which share of the semantic loss's
   gradient comes from foreground pixels, and each part's gradient norm over its weight norm.
4. For each trained checkpoint given: the confusion matrix of its class map on the validation
   split (at image size: rows the labelled class, columns the predicted one) and the norm and
   bias of each class's row of the logits conv, which show whether the head tells the object
   classes apart or only foreground from background.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

import sfpn
from sfpn.data import ShapesSpec, synthetic_dataset
from sfpn.data.coco import CocoDetection, collate
from sfpn.semantic_labels import semantic_labels
from sfpn.data.transforms import build_transforms
from sfpn.engine.checkpoint import model_from_checkpoint
from sfpn.engine.evaluation import labels_at_stride

PRESET = "faster_rcnn_r18_sfpn_small"
PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255]], dtype=np.uint8)


def draw_labels(dataset, indices, path: str) -> None:
    """Rows of (image, image with its label map and boxes, label map on the stride-8 grid)."""
    from PIL import Image, ImageDraw

    rows = []
    for index in indices:
        image, target = dataset[index]
        semantic = target["semantic"]
        grid = (-(-semantic.shape[0] // 8), -(-semantic.shape[1] // 8))
        coarse = labels_at_stride(semantic, 8, grid).repeat_interleave(8, 0).repeat_interleave(8, 1)[: semantic.shape[0], : semantic.shape[1]]
        pixels = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        colours = PALETTE[semantic.clamp(max=len(PALETTE) - 1).numpy()]
        overlay = Image.fromarray((0.5 * pixels + 0.5 * colours).astype(np.uint8))
        draw = ImageDraw.Draw(overlay)
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            draw.rectangle(box, outline=tuple(int(c) for c in PALETTE[label]))
        rows.append(np.concatenate([pixels, np.asarray(overlay), PALETTE[coarse.clamp(max=len(PALETTE) - 1).numpy()]], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows]
    Image.fromarray(np.concatenate(rows)).save(path)


def label_shares(dataset, every: int) -> torch.Tensor:
    counts = torch.zeros(256, dtype=torch.float64)
    for index in range(0, len(dataset), every):
        counts += torch.bincount(dataset[index][1]["semantic"].flatten(), minlength=256).double()
    labelled = counts[: dataset.num_classes + 1]
    return labelled / labelled.sum()


def gradient_probe(dataset) -> None:
    torch.manual_seed(0)
    images, targets = collate([dataset[i] for i in range(4)])
    model = sfpn.build_detector(PRESET, dataset.num_classes).train()
    batch, sizes = model.preprocess(images)
    _, logits, _ = model.neck(model.backbone(batch))
    labels = semantic_labels(targets, sizes, tuple(batch.shape[-2:]))
    upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    upsampled.retain_grad()
    F.cross_entropy(upsampled, labels, ignore_index=255).backward()
    magnitude = upsampled.grad.abs().sum(1)
    labelled, foreground = labels != 255, (labels > 0) & (labels != 255)
    print(f"foreground: {foreground.float().sum() / labelled.float().sum():.3f} of the labelled pixels, "
          f"{magnitude[foreground].sum() / magnitude[labelled].sum():.3f} of |dCE/dlogits|")
    model.zero_grad()
    losses = model(images, targets)
    sum(losses.values()).backward()
    norms: dict[str, list[float]] = {}
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            part = ".".join(name.split(".")[:3]) if name.startswith("neck.semantic_head") else name.split(".")[0]
            squares = norms.setdefault(part, [0.0, 0.0])
            squares[0] += float(parameter.grad.pow(2).sum())
            squares[1] += float(parameter.detach().pow(2).sum())
    print("|grad| / |weight| at initialisation, full loss (semantic term times alpha = 0.2):")
    for part, (grad, weight) in norms.items():
        print(f"  {part:34s} {grad ** 0.5 / weight ** 0.5:.2e}")


@torch.no_grad()
def trained_head_probe(path: str, every: int) -> None:
    model, meta = model_from_checkpoint(path, "cpu")
    model.eval()
    val = meta["data"]["val"]
    size = meta.get("train_config", {}).get("data", {}).get("test_min_size", 256)
    dataset = CocoDetection(val["image_root"], val["ann_file"], transforms=build_transforms(size, 320), semantic="masks")
    classes = dataset.num_classes + 1
    confusion = torch.zeros(classes, classes, dtype=torch.int64)
    for index in range(0, len(dataset), every):
        image, target = dataset[index]
        predicted, truth = model([image])[0]["semantic"], target["semantic"]
        labelled = truth != 255
        confusion += torch.bincount(truth[labelled] * classes + predicted[labelled], minlength=classes**2).view(classes, classes)
    names = ["background", *dataset.class_names]
    print(f"{path}: class map on every {every}th validation image; rows labelled, columns predicted (% of the row)")
    print(" " * 11 + "".join(f"{n[:8]:>9s}" for n in names))
    for name, row in zip(names, confusion.double()):
        print(f"{name[:10]:10s} " + "".join(f"{v:9.1f}" for v in (100 * row / row.sum().clamp(min=1)).tolist()))
    logits = model.neck.semantic_head.logits
    norms = logits.weight.flatten(1).norm(dim=1)
    print("logits conv per class: " + ", ".join(f"{n} |w| {w:.3f} b {b:+.3f}" for n, w, b in zip(names, norms.tolist(), logits.bias.tolist())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=int, default=10, help="class shares over every N-th training image")
    parser.add_argument("--labels-png", default="semantic_labels.png", help="where to draw the label maps")
    parser.add_argument("--checkpoint", nargs="*", default=[], help="trained SFPN checkpoints to probe (item 4)")
    args = parser.parse_args()
    split = synthetic_dataset(ShapesSpec())["train"]
    flipped = CocoDetection(split.image_root, split.ann_file, transforms=build_transforms((256,), 320, flip_prob=1.0), semantic="masks")
    draw_labels(flipped, range(4), args.labels_png)
    print(f"drew {args.labels_png}")
    dataset = CocoDetection(split.image_root, split.ann_file, transforms=build_transforms((256,), 320), semantic="masks")
    shares = label_shares(dataset, args.every)
    names = ["background", *dataset.class_names]
    print("labelled pixels: " + ", ".join(f"{n} {s:.3f}" for n, s in zip(names, shares.tolist())))
    print(f"CE of the best constant prediction (prior entropy): {float(-(shares * shares.clamp(min=1e-12).log()).sum()):.3f}")
    gradient_probe(dataset)
    for path in args.checkpoint:
        trained_head_probe(path, args.every)


if __name__ == "__main__":
    main()
