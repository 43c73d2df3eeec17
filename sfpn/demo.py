"""Run a trained detector on an image: ``python -m sfpn.demo IMAGE CHECKPOINT``.

Writes a PNG with two panels: the image with the detections (boxes, class names and scores, and
instance masks: Mask R-CNN's, or for an SFPN detector the semantic map inside each box) and, for
SFPN, the predicted semantic map: each class's colour over the image in dimmed grey, with a legend
of the colours and the share of the pixels predicted as each class. With ``--panoptic``, a third
panel shows the panoptic result (the detector config's ``panoptic`` merge): each segment in its
category's colour, the thing segments outlined.
"""
from __future__ import annotations

import argparse
import colorsys
import os

import numpy as np
import torch
from PIL import Image, ImageDraw


#: Pixels between the detection panel and the semantic panel.
PANEL_GAP = 8
#: How strongly a class colour covers the (dimmed, grey) image in the semantic panel.
SEMANTIC_OPACITY = 0.6
#: Brightness of the grey image under the semantic colours, so that the colours stand out.
SEMANTIC_DIMMING = 0.6
#: Colour of the thing segments' outlines in the panoptic panel.
OUTLINE_COLOR = (255, 255, 255)


def class_colors(count: int) -> np.ndarray:
    """(count + 1, 3) uint8: dark grey for background (0), then evenly spaced hues."""
    colors = [(40, 40, 40)] + [
        tuple(int(255 * c) for c in colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.85, 0.95)) for k in range(count)
    ]
    return np.array(colors, dtype=np.uint8)


@torch.no_grad()
def predict_image(model, image: torch.Tensor, min_size: int, max_size: int, num_things: int | None = None,
                  panoptic: bool = False) -> dict:
    """Detections for one (3, H, W) image in [0, 1], in its own (original) coordinates;
    ``num_things``: the semantic map's thing classes (see ``sfpn.modeling.postprocess``). With
    ``panoptic``, also ``panoptic``: the ``(segment_ids, segments)`` of
    :func:`~sfpn.modeling.postprocess.panoptic_at_original_size`, each segment's ``category_id``
    its semantic class (the demo knows no dataset: the detector's classes are the things, the
    semantic classes after them the stuff)."""
    from .data.panoptic import panoptic_label_space
    from .data.transforms import ResizeShortestEdge
    from .modeling.postprocess import detections_at_original_size, panoptic_at_original_size

    resized, _ = ResizeShortestEdge(min_size, max_size)(image, {}, None)
    device = next(model.parameters()).device
    output = model([resized.to(device)])[0]
    sizes = tuple(resized.shape[-2:]), tuple(image.shape[-2:])
    # Masks as evaluation makes them (an SFPN detector's from its semantic map), so that the
    # picture shows what COCOeval scores.
    prediction = detections_at_original_size(output, *sizes, num_things=num_things)
    if panoptic:
        config = model.config
        labels = list(range(config.num_classes + 1))
        semantic = list(range(1 + config.num_classes + config.num_stuff_classes))
        categories = [{"id": k, "isthing": int(k <= config.num_classes)} for k in semantic[1:]]
        space = panoptic_label_space(labels, semantic, categories)
        prediction["panoptic"] = panoptic_at_original_size(output, *sizes, space, config.panoptic)
    return prediction


def render(
    image: np.ndarray, prediction: dict, class_names: list[str], score_threshold: float, semantic_class_names: list[str] | None = None
) -> Image.Image:
    """The drawing: (H, W, 3) uint8 image + prediction -> one PIL image (one or two panels).

    ``class_names`` name the detector's classes; ``semantic_class_names`` the semantic map's
    (the things, then any stuff; default: ``class_names``). A class has one colour in both panels.
    """
    from .modeling.postprocess import instance_masks

    semantic_class_names = class_names if semantic_class_names is None else semantic_class_names
    colors = class_colors(len(semantic_class_names))
    keep = prediction["scores"] >= score_threshold
    canvas = image.astype(np.float32)
    masks = prediction["masks"][keep] if "masks" in prediction else None
    if masks is None and "semantic" in prediction:  # a prediction without masks: the map inside each drawn box
        masks = instance_masks({"semantic": prediction["semantic"], "boxes": prediction["boxes"][keep]}, num_things=len(class_names))
    if masks is not None:
        for mask, label in zip(masks, prediction["labels"][keep]):
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
    semantic = prediction["semantic"].clamp(0, len(semantic_class_names)).numpy()
    panels = [panel, Image.fromarray(semantic_overlay(image, semantic, colors))]
    if "panoptic" in prediction:
        panels.append(Image.fromarray(panoptic_overlay(image, *prediction["panoptic"], colors)))
    names = ["background"] + list(semantic_class_names)
    key = legend(names, colors, class_fractions(semantic, len(names)), len(panels) * (panel.width + PANEL_GAP) - PANEL_GAP)
    combined = Image.new("RGB", (key.width, panel.height + key.height), (255, 255, 255))
    for index, drawn in enumerate(panels):
        combined.paste(drawn, (index * (panel.width + PANEL_GAP), 0))
    combined.paste(key, (0, panel.height))
    return combined


def semantic_overlay(image: np.ndarray, semantic: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 image and (H, W) class map -> (H, W, 3) uint8: the image in dimmed grey, each
    foreground class painted over it in its colour at SEMANTIC_OPACITY (background stays grey), so
    the map can be read against the objects it should cover."""
    grey = image.astype(np.float32).mean(axis=2, keepdims=True).repeat(3, axis=2) * SEMANTIC_DIMMING
    foreground = semantic > 0
    grey[foreground] = (1 - SEMANTIC_OPACITY) * grey[foreground] + SEMANTIC_OPACITY * colors[semantic[foreground]]
    return grey.round().astype(np.uint8)


def panoptic_overlay(image: np.ndarray, segment_ids: torch.Tensor, segments: list[dict], colors: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 image, (H, W) panoptic segment ids and their segments (``id``,
    ``category_id`` indexing ``colors``, ``isthing``) -> (H, W, 3) uint8: as
    :func:`semantic_overlay`, each segment in its category's colour (void stays grey), and each
    thing segment's border pixels (those with a 4-neighbour outside the segment or the image) in
    OUTLINE_COLOR, so that touching instances of one class stay apart."""
    ids = segment_ids.numpy()
    categories = np.zeros(int(ids.max(initial=0)) + 1, dtype=np.int64)
    for segment in segments:
        categories[segment["id"]] = segment["category_id"]
    drawn = semantic_overlay(image, categories[ids], colors)
    padded = np.pad(ids, 1, constant_values=-1)
    border = ((padded[:-2, 1:-1] != ids) | (padded[2:, 1:-1] != ids) | (padded[1:-1, :-2] != ids) | (padded[1:-1, 2:] != ids))
    things = np.isin(ids, [segment["id"] for segment in segments if segment["isthing"]])
    drawn[border & things] = OUTLINE_COLOR
    return drawn


def class_fractions(semantic: np.ndarray, count: int) -> np.ndarray:
    """(count,) float: the share of the (H, W) map's pixels predicted as each class."""
    return np.bincount(semantic.ravel(), minlength=count)[:count] / max(semantic.size, 1)


def legend(names: list[str], colors: np.ndarray, fractions: np.ndarray, width: int) -> Image.Image:
    """A white strip ``width`` wide: a swatch, the name and the share of the map's pixels of each
    class, in rows that wrap."""
    row_height, pad = 18, 6
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries = [f"{name} {100 * fraction:.1f}%" for name, fraction in zip(names, fractions)]
    sizes = [draw.textbbox((0, 0), text)[2] + 14 + 3 * pad for text in entries]
    places, x, y = [], pad, pad
    for size in sizes:
        if x + size > width and x > pad:
            x, y = pad, y + row_height
        places.append((x, y))
        x += size
    strip = Image.new("RGB", (width, y + row_height + pad), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for (x, y), text, color in zip(places, entries, colors):
        draw.rectangle((x, y + 2, x + 12, y + 14), fill=tuple(int(c) for c in color), outline=(0, 0, 0))
        draw.text((x + 12 + pad, y + 2), text, fill=(0, 0, 0))
    return strip


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(prog="python -m sfpn.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("image", help="an image file")
    parser.add_argument("checkpoint", help="a checkpoint file, or a training output folder (its last checkpoint)")
    parser.add_argument("--output", help="the PNG to write (default: <image name>_sfpn.png here)")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="draw detections scoring at least this")
    parser.add_argument("--min-size", type=int, help="shorter side the model sees (default: the training config's)")
    parser.add_argument("--max-size", type=int, help="cap on the longer side (default: the training config's)")
    parser.add_argument("--panoptic", action="store_true",
                        help="add a panel of the panoptic result (SFPN detectors; the checkpoint config's panoptic thresholds)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from .engine.checkpoint import model_from_checkpoint

    if not os.path.isfile(args.image):
        raise SystemExit(f"error: image not found: {args.image}")
    model, meta = model_from_checkpoint(args.checkpoint, args.device)
    if args.panoptic and not getattr(model.neck, "has_semantic_branch", False):
        raise SystemExit("error: --panoptic needs a detector with the semantic branch (an SFPN checkpoint)")
    data_config = meta.get("train_config", {}).get("data", {})
    with Image.open(args.image) as pil:
        pixels = np.asarray(pil.convert("RGB"))
    image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255)
    prediction = predict_image(
        model, image, args.min_size or data_config.get("test_min_size", 800), args.max_size or data_config.get("max_size", 1333),
        num_things=len(meta["classes"]), panoptic=args.panoptic,
    )
    output = args.output or f"{os.path.splitext(os.path.basename(args.image))[0]}_sfpn.png"
    render(pixels, prediction, meta["classes"], args.score_threshold, meta.get("semantic_classes")).save(output)
    shown = int((prediction["scores"] >= args.score_threshold).sum())
    print(f"{shown} detections (score >= {args.score_threshold}) drawn to {output}")
    return output


if __name__ == "__main__":
    main()
