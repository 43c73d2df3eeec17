"""Run a trained detector on an image: ``python -m sfpn.demo IMAGE CHECKPOINT``.

Writes a PNG with two panels: the image with the detections (boxes, class names and scores, and
instance masks: Mask R-CNN's, or for an SFPN detector the semantic map inside each box) and, for
SFPN, the predicted semantic map in the class colours.
"""
from __future__ import annotations

import argparse
import colorsys
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw


def class_colors(count: int) -> np.ndarray:
    """(count + 1, 3) uint8: dark grey for background (0), then evenly spaced hues."""
    colors = [(40, 40, 40)] + [
        tuple(int(255 * c) for c in colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.85, 0.95)) for k in range(count)
    ]
    return np.array(colors, dtype=np.uint8)


@torch.no_grad()
def predict_image(model, image: torch.Tensor, min_size: int, max_size: int) -> dict:
    """Detections for one (3, H, W) image in [0, 1], in its own (original) coordinates."""
    from .data.transforms import ResizeShortestEdge
    from .engine.evaluation import _masks_for

    height, width = image.shape[-2:]
    resized, _ = ResizeShortestEdge(min_size, max_size)(image, {}, None)
    device = next(model.parameters()).device
    output = {k: v.cpu() for k, v in model([resized.to(device)])[0].items()}
    in_h, in_w = resized.shape[-2:]
    masks = _masks_for(output)
    result = {
        "boxes": output["boxes"] * torch.tensor([width / in_w, height / in_h] * 2),
        "scores": output["scores"],
        "labels": output["labels"],
    }
    if masks is not None:
        result["masks"] = F.interpolate(masks[None].float(), size=(height, width), mode="nearest")[0].bool()
    if "semantic" in output:
        result["semantic"] = F.interpolate(output["semantic"][None, None].float(), size=(height, width), mode="nearest")[0, 0].long()
    return result


def render(image: np.ndarray, prediction: dict, class_names: list[str], score_threshold: float) -> Image.Image:
    """The drawing: (H, W, 3) uint8 image + prediction -> one PIL image (one or two panels)."""
    colors = class_colors(len(class_names))
    keep = prediction["scores"] >= score_threshold
    canvas = image.astype(np.float32)
    if "masks" in prediction:
        for mask, label in zip(prediction["masks"][keep], prediction["labels"][keep]):
            mask = mask.numpy()
            canvas[mask] = 0.55 * canvas[mask] + 0.45 * colors[int(label)]
    panel = Image.fromarray(canvas.round().astype(np.uint8))
    draw = ImageDraw.Draw(panel)
    for box, score, label in zip(prediction["boxes"][keep], prediction["scores"][keep], prediction["labels"][keep]):
        color = tuple(int(c) for c in colors[int(label)])
        x1, y1, x2, y2 = box.tolist()
        draw.rectangle((x1, y1, x2, y2), outline=color, width=2)
        text = f"{class_names[int(label) - 1]} {float(score):.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text)
        ty = max(0, y1 - (bottom - top) - 2)
        draw.rectangle((x1, ty, x1 + right - left + 2, ty + bottom - top + 2), fill=color)
        draw.text((x1 + 1, ty), text, fill=(0, 0, 0))
    if "semantic" not in prediction:
        return panel
    semantic = prediction["semantic"].clamp(0, len(class_names)).numpy()
    semantic_panel = Image.fromarray(colors[semantic])
    legend = ImageDraw.Draw(semantic_panel)
    for k, name in enumerate(["background"] + list(class_names)):
        legend.rectangle((4, 4 + 12 * k, 12, 12 + 12 * k), fill=tuple(int(c) for c in colors[k]), outline=(255, 255, 255))
        legend.text((16, 2 + 12 * k), name, fill=(255, 255, 255))
    combined = Image.new("RGB", (panel.width * 2 + 8, panel.height), (255, 255, 255))
    combined.paste(panel, (0, 0))
    combined.paste(semantic_panel, (panel.width + 8, 0))
    return combined


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(prog="python -m sfpn.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("image", help="an image file")
    parser.add_argument("checkpoint", help="a checkpoint file, or a training output folder (its last checkpoint)")
    parser.add_argument("--output", help="the PNG to write (default: <image name>_sfpn.png here)")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="draw detections scoring at least this")
    parser.add_argument("--min-size", type=int, help="shorter side the model sees (default: the training config's)")
    parser.add_argument("--max-size", type=int, help="cap on the longer side (default: the training config's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from .engine.checkpoint import model_from_checkpoint

    if not os.path.isfile(args.image):
        raise SystemExit(f"error: image not found: {args.image}")
    model, meta = model_from_checkpoint(args.checkpoint, args.device)
    data_config = meta.get("train_config", {}).get("data", {})
    with Image.open(args.image) as pil:
        pixels = np.asarray(pil.convert("RGB"))
    image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255)
    prediction = predict_image(
        model, image, args.min_size or data_config.get("test_min_size", 800), args.max_size or data_config.get("max_size", 1333)
    )
    output = args.output or f"{os.path.splitext(os.path.basename(args.image))[0]}_sfpn.png"
    render(pixels, prediction, meta["classes"], args.score_threshold).save(output)
    shown = int((prediction["scores"] >= args.score_threshold).sum())
    print(f"{shown} detections (score >= {args.score_threshold}) drawn to {output}")
    return output


if __name__ == "__main__":
    main()
