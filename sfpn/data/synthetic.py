"""The embedded default dataset: shapes with instance masks on textured, cluttered backgrounds.

``python -m sfpn.train`` with no arguments trains on it, so the package works (and can be
checked end to end) without downloading anything. It is a regular COCO-format dataset (JSON +
PNG images) generated on first use into a cache folder, ``$SFPN_CACHE`` or ``~/.cache/sfpn``.
Generation is deterministic: each image is drawn from its own random stream seeded by
(seed, split, index), so the same seed gives byte-identical files on every machine.

What makes it a detection problem rather than a colour lookup: objects take random colours and
shading, are rotated, overlap (the masks are the visible parts), and sit on smooth colour fields
with stripes, noise and clutter (lines and small blobs that are not objects). Sizes are mostly
COCO "medium" (32^2..96^2 pixels of area), about a fifth small and a fifth large.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = ("circle", "square", "triangle", "star", "cross", "ring")
SPLITS = {"train": 0, "val": 1}
#: Bumped whenever the generator changes, so a stale cache is never reused.
VERSION = 2
#: (width, height) of the images: landscape, portrait and square, for aspect-ratio grouping.
IMAGE_SIZES = ((320, 256), (256, 320), (288, 288))


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    seed: int = 0
    num_train: int = 1200
    num_val: int = 200
    min_objects: int = 2
    max_objects: int = 6
    #: Object extent (bounding-circle diameter) range in pixels.
    min_extent: int = 24
    max_extent: int = 150

    def folder_name(self) -> str:
        return f"shapes-v{VERSION}-seed{self.seed}-{self.num_train}-{self.num_val}"

    @property
    def categories(self) -> tuple[str, ...]:
        return CATEGORIES

    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
        return render_image(rng, self)


@dataclasses.dataclass(frozen=True)
class SyntheticSplit:
    image_root: str
    ann_file: str


def cache_dir() -> str:
    return os.environ.get("SFPN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sfpn")


def synthetic_dataset(spec: SyntheticSpec = SyntheticSpec(), root: str | None = None, progress: bool = True) -> dict[str, SyntheticSplit]:
    """The paths of the synthetic train and val splits, generating them first if needed.

    ``spec`` says what to draw: this module's shapes (:class:`SyntheticSpec`) or any spec with
    ``seed``, ``num_train``, ``num_val``, ``folder_name()``, ``categories`` and ``render(rng) ->
    (pixels (H, W, 3) uint8, [(category id, visible mask (H, W) uint8)])``, such as
    :class:`sfpn.data.clutter.ClutterSpec`.

    Generation writes into a temporary folder beside the target and renames it into place, so
    an interrupted generation leaves nothing behind and concurrent processes (DDP ranks) are safe:
    the first rename wins and the others discard their copy.
    """
    root = root or cache_dir()
    folder = os.path.join(root, spec.folder_name())
    splits = {
        split: SyntheticSplit(os.path.join(folder, split), os.path.join(folder, "annotations", f"{split}.json"))
        for split in SPLITS
    }
    if all(os.path.isfile(s.ann_file) for s in splits.values()):
        return splits
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{spec.folder_name()}-", dir=root)
    try:
        _generate(spec, staging, progress)
        try:
            os.rename(staging, folder)
        except OSError:
            if not all(os.path.isfile(s.ann_file) for s in splits.values()):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return splits


def _generate(spec: SyntheticSpec, folder: str, progress: bool) -> None:
    from pycocotools import mask as mask_utils
    from tqdm import tqdm

    os.makedirs(os.path.join(folder, "annotations"))
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(spec.categories)]
    for split, split_id in SPLITS.items():
        count = spec.num_train if split == "train" else spec.num_val
        os.makedirs(os.path.join(folder, split))
        images, annotations = [], []
        for index in tqdm(range(count), desc=f"generating synthetic {split}", disable=not progress, leave=False):
            rng = np.random.default_rng([spec.seed, split_id, index])
            pixels, objects = spec.render(rng)
            file_name = f"{index:06d}.png"
            Image.fromarray(pixels).save(os.path.join(folder, split, file_name))
            image_id = index + 1
            images.append({"id": image_id, "file_name": file_name, "width": pixels.shape[1], "height": pixels.shape[0]})
            for label, mask in objects:
                rle = mask_utils.encode(np.asfortranarray(mask))
                x, y, w, h = mask_utils.toBbox(rle).tolist()
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": [x, y, w, h],
                    "area": float(mask_utils.area(rle)),
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                    "iscrowd": 0,
                })
        with open(os.path.join(folder, "annotations", f"{split}.json"), "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def render_image(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image: (H, W, 3) uint8 pixels and its objects as (category id, visible mask (H, W) uint8)."""
    width, height = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
    canvas = _background(rng, height, width)
    full_masks: list[np.ndarray] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(spec.min_objects, spec.max_objects + 1))):
        for _attempt in range(20):
            label = int(rng.integers(len(CATEGORIES))) + 1
            mask = _shape_mask(rng, CATEGORIES[label - 1], height, width, spec)
            area = mask.sum()
            # Objects may touch and partly hide each other, but each stays mostly visible.
            if area > 0 and all((mask & m).sum() < 0.25 * min(area, m.sum()) for m in full_masks):
                break
        else:
            continue
        _paint_object(rng, canvas, mask)
        full_masks.append(mask)
        labels.append(label)
    objects = visible_parts(list(zip(labels, full_masks)), min_pixels=16)
    return (canvas * 255).round().clip(0, 255).astype(np.uint8), objects


def visible_parts(drawn: list[tuple[int, np.ndarray]], min_pixels: int) -> list[tuple[int, np.ndarray]]:
    """The annotations of objects painted in order: ``drawn`` is [(label, full mask (H, W) bool)]
    in painting order, label 0 for a distractor (it hides what lies under it, but is no object).
    Returns [(label, visible mask (H, W) uint8)] of the objects with ``min_pixels`` or more visible."""
    objects = []
    hidden = None
    for label, mask in reversed(drawn):
        visible = mask if hidden is None else mask & ~hidden
        hidden = mask.copy() if hidden is None else hidden | mask
        if label and visible.sum() >= min_pixels:
            objects.append((label, visible.astype(np.uint8)))
    objects.reverse()
    return objects


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float in [0, 1]: a smooth colour field with stripes, noise and clutter."""
    coarse = Image.fromarray((rng.random((3, 4, 3)) * 255).astype(np.uint8))
    canvas = np.asarray(coarse.resize((width, height), Image.BILINEAR), dtype=np.float64) / 255
    canvas = 0.2 + 0.6 * canvas
    ys, xs = np.mgrid[0:height, 0:width]
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(6, 24)
    stripes = np.sin(2 * math.pi * (xs * math.cos(angle) + ys * math.sin(angle)) / period)
    canvas += rng.uniform(0.02, 0.08) * stripes[..., None]
    canvas += rng.normal(0, 0.03, canvas.shape)
    clutter = Image.fromarray((canvas.clip(0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(clutter)
    for _ in range(int(rng.integers(4, 12))):
        points = [tuple(int(v) for v in rng.integers(0, (width, height))) for _ in range(2)]
        draw.line(points, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(4, 12))):
        x, y = rng.integers(0, (width, height))
        r = int(rng.integers(2, 7))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return np.asarray(clutter, dtype=np.float64) / 255


def _polygon(sides: int, radius: float, angle: float, inner: float | None = None) -> np.ndarray:
    """Vertices of a regular polygon (or a star, with ``inner`` radius) around the origin."""
    if inner is None:
        steps = [(radius, angle + 2 * math.pi * k / sides) for k in range(sides)]
    else:
        steps = [(radius if k % 2 == 0 else inner, angle + math.pi * k / sides) for k in range(2 * sides)]
    return np.array([(r * math.cos(t), r * math.sin(t)) for r, t in steps])


def _shape_mask(rng, name: str, height: int, width: int, spec: SyntheticSpec) -> np.ndarray:
    # Extents are drawn log-uniformly so small, medium and large objects all occur, mostly medium.
    extent = math.exp(rng.uniform(math.log(spec.min_extent), math.log(spec.max_extent)))
    radius = extent / 2
    cx = rng.uniform(radius * 0.6, width - radius * 0.6)
    cy = rng.uniform(radius * 0.6, height - radius * 0.6)
    angle = rng.uniform(0, 2 * math.pi)
    image = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(image)
    if name in ("circle", "ring"):
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=1)
        if name == "ring":
            hole = radius * 0.55
            draw.ellipse((cx - hole, cy - hole, cx + hole, cy + hole), fill=0)
    else:
        if name == "square":
            vertices = _polygon(4, radius, angle)
        elif name == "triangle":
            vertices = _polygon(3, radius, angle)
        elif name == "star":
            vertices = _polygon(5, radius, angle, inner=radius * 0.45)
        elif name == "cross":
            arm = radius * 0.35
            base = np.array([(arm, radius), (arm, arm), (radius, arm), (radius, -arm), (arm, -arm), (arm, -radius)])
            half = np.concatenate([base, -base])
            rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
            vertices = half @ rotation.T
        else:
            raise ValueError(f"unknown shape {name!r}")
        draw.polygon([(cx + x, cy + y) for x, y in vertices], fill=1)
    return np.asarray(image, dtype=bool)


def _paint_object(rng, canvas: np.ndarray, mask: np.ndarray) -> None:
    """Fills ``mask`` with a colour that stands out from the background under it, shaded."""
    under = canvas[mask].mean(axis=0)
    for _ in range(20):
        color = rng.random(3)
        if np.abs(color - under).sum() > 0.6:
            break
    ys, xs = np.nonzero(mask)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (xs - xs.mean()) * math.cos(angle) + (ys - ys.mean()) * math.sin(angle)
    ramp = ramp / max(1.0, np.abs(ramp).max())
    shade = rng.uniform(0.0, 0.15) * ramp[:, None]
    canvas[ys, xs] = (color + shade + rng.normal(0, 0.03, (len(ys), 3))).clip(0, 1)
