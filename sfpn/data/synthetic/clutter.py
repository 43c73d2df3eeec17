"""The second synthetic dataset, ``clutter``, unlike the shapes set in kind: ``ClutterSpec``.

Where the shapes set has flat-coloured geometric shapes, mostly of medium size, on sky, grass,
water and sand with thin clutter, this one has:

* object types told apart by **texture as well as outline**: two of the six classes are ellipses
  that differ only in their fill (checkerboard or stripes), one is a thick-stroked letter "H",
  and the others are arrows, crescents and hollow frames;
* **distractors** that look like objects and are not: plain or noisy ellipses and polygons of
  the same sizes and colours (hard negatives), labelled as the stuff they lie on;
* **stuff of man-made materials**: regions of brick, wood, gravel and tiles (three to six
  regions, their borders bending), under uneven lighting; tiles are a checkerboard, as the
  checker_ellipse things are;
* a **scale range down to ~10 px** (extents log-uniform in 10..120 px, so most objects are small);
* **heavy occlusion** (objects may hide up to 60% of a smaller one; the masks are the visible
  parts);
* **JPEG artefacts** (each image goes through JPEG at quality 25..75 before it is stored);
* **images of varied size**, each side drawn in 192..416 px.

It is generated, cached and written as COCO exactly as the shapes set:
``synthetic_dataset(ClutterSpec())``. Its parameters were fixed before any detector was trained
on it and are not tuned to favour one.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import math

import numpy as np
from PIL import Image, ImageDraw

from .drawing import Pose, annotate, paint_stuff, place, random_pose, rotate, smooth_noise, stuff_regions, to_pixels
from .writer import DatasetSpec, Rendering

CATEGORIES = ("arrow", "crescent", "letter_h", "checker_ellipse", "striped_ellipse", "frame")
#: The stuff categories, each painted with the material of its name (``drawing.MATERIALS``).
STUFF_CATEGORIES = ("brick", "wood", "gravel", "tiles")


@dataclasses.dataclass(frozen=True)
class ClutterSpec(DatasetSpec):
    name = "clutter"
    version = 3
    categories = CATEGORIES
    stuff_categories = STUFF_CATEGORIES

    min_objects: int = 3
    max_objects: int = 12
    min_distractors: int = 2
    max_distractors: int = 8
    #: Object extent (bounding-circle diameter) range in pixels, drawn log-uniformly.
    min_extent: int = 10
    max_extent: int = 120
    #: Each image side is drawn uniformly in this range.
    min_side: int = 192
    max_side: int = 416
    #: A later object may hide less than this fraction of an earlier one, or of itself if smaller.
    max_overlap: float = 0.6
    jpeg_quality: tuple[int, int] = (25, 75)
    #: Stuff regions per image (past the four materials, some repeat).
    min_regions: int = 3
    max_regions: int = 6

    def render(self, rng: np.random.Generator) -> Rendering:
        return render_image(rng, self)


def render_image(rng: np.random.Generator, spec: ClutterSpec) -> Rendering:
    """One image of the clutter set."""
    width, height = (int(v) for v in rng.integers(spec.min_side, spec.max_side + 1, 2))
    canvas, stuff = _background(rng, height, width, spec)
    # Objects and distractors are drawn in one shuffled order, so distractors occlude objects too.
    items = [int(rng.integers(len(CATEGORIES))) + 1 for _ in range(int(rng.integers(spec.min_objects, spec.max_objects + 1)))]
    items += [0] * int(rng.integers(spec.min_distractors, spec.max_distractors + 1))
    rng.shuffle(items)

    def candidate(label: int) -> tuple[np.ndarray, str]:
        pose = random_pose(rng, (spec.min_extent, spec.max_extent), width, height, margin=0.5)
        return _object(rng, CATEGORIES[label - 1] if label else "distractor", pose, height, width)

    drawn: list[tuple[int, np.ndarray]] = []
    for label in items:
        placed = place(functools.partial(candidate, label), [m for _, m in drawn], spec.max_overlap)
        if placed is None:
            continue
        mask, texture = placed
        _paint(rng, canvas, mask, texture)
        drawn.append((label, mask))
    objects, categories = annotate(drawn, stuff, min_pixels=12)
    pixels = _jpeg(to_pixels(canvas), int(rng.integers(spec.jpeg_quality[0], spec.jpeg_quality[1] + 1)))
    return Rendering(pixels, objects, categories)


def _jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    """The pixels after a JPEG round trip (block and ringing artefacts, chroma subsampling)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return np.asarray(image.convert("RGB")).copy()


def _background(rng: np.random.Generator, height: int, width: int, spec: ClutterSpec) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) float in [0, 1], stuff regions under uneven lighting with noise, and (H, W) the
    stuff category id of each pixel."""
    regions = stuff_regions(rng, height, width, len(STUFF_CATEGORIES), int(rng.integers(spec.min_regions, spec.max_regions + 1)))
    lighting = 0.7 + 0.6 * smooth_noise(rng, height, width, (3, 3))
    canvas = paint_stuff(rng, regions, STUFF_CATEGORIES) * lighting[..., None] + rng.normal(0, 0.04, (height, width, 3))
    return canvas.clip(0, 1), regions + len(CATEGORIES) + 1


def _object(rng, name: str, pose: Pose, height: int, width: int) -> tuple[np.ndarray, str]:
    """The full (H, W) bool mask of one object or distractor at ``pose``, and how to fill it."""
    radius, cx, cy, angle = pose.radius, pose.cx, pose.cy, pose.angle
    image = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(image)

    def polygon(points):
        draw.polygon([(cx + x, cy + y) for x, y in rotate(np.asarray(points, dtype=np.float64) * radius, angle)], fill=1)

    def ellipse(aspect):
        # An ellipse of axes (radius, radius * aspect), rotated: as a 36-gon.
        t = np.linspace(0, 2 * math.pi, 36, endpoint=False)
        polygon(np.stack([np.cos(t), aspect * np.sin(t)], 1))

    texture = "plain"
    if name == "arrow":
        polygon([(-1, -0.22), (0.2, -0.22), (0.2, -0.55), (1, 0), (0.2, 0.55), (0.2, 0.22), (-1, 0.22)])
    elif name == "crescent":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=1)
        dx, dy = 0.45 * radius * math.cos(angle), 0.45 * radius * math.sin(angle)
        inner = 0.85 * radius
        draw.ellipse((cx + dx - inner, cy + dy - inner, cx + dx + inner, cy + dy + inner), fill=0)
    elif name == "letter_h":
        polygon([(-0.8, -1), (-0.4, -1), (-0.4, -0.2), (0.4, -0.2), (0.4, -1), (0.8, -1), (0.8, 1), (0.4, 1), (0.4, 0.2), (-0.4, 0.2), (-0.4, 1), (-0.8, 1)])
    elif name in ("checker_ellipse", "striped_ellipse"):
        ellipse(rng.uniform(0.55, 0.9))
        texture = "checker" if name == "checker_ellipse" else "stripes"
    elif name == "frame":
        # A hollow rectangle: the outer one filled, then the inner one cut out.
        polygon([(-1, -0.7), (1, -0.7), (1, 0.7), (-1, 0.7)])
        draw = ImageDraw.Draw(image)
        corners = rotate(np.array([(-0.65, -0.38), (0.65, -0.38), (0.65, 0.38), (-0.65, 0.38)]) * radius, angle)
        draw.polygon([(cx + x, cy + y) for x, y in corners], fill=0)
    elif name == "distractor":
        if rng.random() < 0.5:
            ellipse(rng.uniform(0.4, 1.0))
            texture = "noise"
        else:
            sides = int(rng.integers(3, 8))
            t = np.sort(rng.uniform(0, 2 * math.pi, sides))
            r = rng.uniform(0.5, 1.0, sides)
            polygon(np.stack([r * np.cos(t), r * np.sin(t)], 1))
    else:
        raise ValueError(f"unknown object type {name!r}")
    return np.asarray(image, dtype=bool), texture


def _paint(rng, canvas: np.ndarray, mask: np.ndarray, texture: str) -> None:
    """Fills ``mask``: one colour, two in a checkerboard or stripes, or colour noise."""
    ys, xs = np.nonzero(mask)
    first, second = rng.random(3), rng.random(3)
    if texture == "plain":
        colors = np.broadcast_to(first, (len(ys), 3))
    elif texture == "noise":
        colors = first + rng.normal(0, 0.15, (len(ys), 3))
    else:
        extent = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
        period = max(3.0, extent / rng.uniform(3, 6))
        angle = rng.uniform(0, math.pi)
        u = xs * math.cos(angle) + ys * math.sin(angle)
        v = -xs * math.sin(angle) + ys * math.cos(angle)
        if texture == "checker":
            pick = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
        else:
            pick = np.floor(u / period) % 2 == 0
        colors = np.where(pick[:, None], first, second)
    canvas[ys, xs] = (colors + rng.normal(0, 0.03, (len(ys), 3))).clip(0, 1)
