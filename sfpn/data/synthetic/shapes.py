"""The default dataset, ``shapes``: shapes with instance masks on textured, cluttered stuff.

``python -m sfpn.train`` with no arguments trains on it, so the package works (and can be
checked end to end) without downloading anything. It is generated and cached as COCO by
:func:`~sfpn.data.synthetic.writer.synthetic_dataset`.

What makes it a detection problem rather than a colour lookup: objects take random colours and
shading, are rotated, overlap (the masks are the visible parts), and sit on a background of
stuff, regions of two to four of the materials sky, grass, water and sand (each a pattern and a
colour it tends to; the region borders bend and ignore the objects), with noise and clutter
(lines and small blobs that are not objects and are labelled as the stuff they lie on). Sizes
are mostly COCO "medium" (32^2..96^2 pixels of area), about a fifth small and a fifth large.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw

from .drawing import Pose, annotate, paint_stuff, place, random_pose, random_rgb, rotate, stuff_regions, to_pixels
from .writer import DatasetSpec, Rendering

CATEGORIES = ("circle", "square", "triangle", "star", "cross", "ring")
#: The stuff categories, each painted with the material of its name (``drawing.MATERIALS``).
STUFF_CATEGORIES = ("sky", "grass", "water", "sand")
#: (width, height) of the images: landscape, portrait and square, for aspect-ratio grouping.
IMAGE_SIZES = ((320, 256), (256, 320), (288, 288))


@dataclasses.dataclass(frozen=True)
class ShapesSpec(DatasetSpec):
    name = "shapes"
    version = 3
    categories = CATEGORIES
    stuff_categories = STUFF_CATEGORIES

    min_objects: int = 2
    max_objects: int = 6
    #: Object extent (bounding-circle diameter) range in pixels.
    min_extent: int = 24
    max_extent: int = 150
    #: A later object may hide less than this fraction of an earlier one, or of itself if smaller.
    max_overlap: float = 0.25
    #: Stuff regions per image.
    min_regions: int = 2
    max_regions: int = 4

    def render(self, rng: np.random.Generator) -> Rendering:
        return render_image(rng, self)


def render_image(rng: np.random.Generator, spec: ShapesSpec) -> Rendering:
    """One image of the shapes set."""
    width, height = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
    canvas, stuff = _background(rng, height, width, spec)
    full_masks: list[np.ndarray] = []
    labels: list[int] = []

    def candidate() -> tuple[np.ndarray, int]:
        label = int(rng.integers(len(CATEGORIES))) + 1
        pose = random_pose(rng, (spec.min_extent, spec.max_extent), width, height, margin=0.6)
        return _shape_mask(CATEGORIES[label - 1], pose, height, width), label

    for _ in range(int(rng.integers(spec.min_objects, spec.max_objects + 1))):
        placed = place(candidate, full_masks, spec.max_overlap)
        if placed is None:
            continue
        mask, label = placed
        _paint_object(rng, canvas, mask)
        full_masks.append(mask)
        labels.append(label)
    objects, categories = annotate(list(zip(labels, full_masks)), stuff, min_pixels=16)
    return Rendering(to_pixels(canvas), objects, categories)


def _background(rng: np.random.Generator, height: int, width: int, spec: ShapesSpec) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) float in [0, 1], stuff regions with noise and clutter, and (H, W) the stuff
    category id of each pixel."""
    regions = stuff_regions(rng, height, width, len(STUFF_CATEGORIES), int(rng.integers(spec.min_regions, spec.max_regions + 1)))
    canvas = paint_stuff(rng, regions, STUFF_CATEGORIES) + rng.normal(0, 0.03, (height, width, 3))
    clutter = Image.fromarray((canvas.clip(0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(clutter)
    for _ in range(int(rng.integers(4, 12))):
        points = [tuple(int(v) for v in rng.integers(0, (width, height))) for _ in range(2)]
        draw.line(points, fill=random_rgb(rng), width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(4, 12))):
        x, y = rng.integers(0, (width, height))
        r = int(rng.integers(2, 7))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=random_rgb(rng))
    return np.asarray(clutter, dtype=np.float64) / 255, regions + len(CATEGORIES) + 1


def _polygon(sides: int, radius: float, angle: float, inner: float | None = None) -> np.ndarray:
    """Vertices of a regular polygon (or a star, with ``inner`` radius) around the origin."""
    if inner is None:
        steps = [(radius, angle + 2 * math.pi * k / sides) for k in range(sides)]
    else:
        steps = [(radius if k % 2 == 0 else inner, angle + math.pi * k / sides) for k in range(2 * sides)]
    return np.array([(r * math.cos(t), r * math.sin(t)) for r, t in steps])


def _shape_mask(name: str, pose: Pose, height: int, width: int) -> np.ndarray:
    """The full (H, W) bool mask of shape ``name`` at ``pose``."""
    radius, cx, cy, angle = pose.radius, pose.cx, pose.cy, pose.angle
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
            vertices = rotate(np.concatenate([base, -base]), angle)
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
