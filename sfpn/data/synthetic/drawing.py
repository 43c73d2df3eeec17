"""Drawing helpers the synthetic datasets share: the stuff regions of the background and their
materials, an object's size, position and rotation, its placement among the objects already
drawn, what stays visible of each, and the final pixels and category map."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from PIL import Image

#: Candidates drawn for one object before it is given up (each overlapped the others too much).
PLACEMENT_ATTEMPTS = 20
#: How far stuff region borders bend away from straight lines, as a fraction of the image's side.
REGION_BEND = 0.35

Extra = TypeVar("Extra")


@dataclasses.dataclass(frozen=True)
class Pose:
    """Where an object is drawn: its bounding-circle ``radius``, centre ``(cx, cy)`` in pixels and
    rotation ``angle`` in radians."""

    radius: float
    cx: float
    cy: float
    angle: float


def random_pose(rng: np.random.Generator, extent_range: tuple[float, float], width: int, height: int, margin: float) -> Pose:
    """A random pose: the extent (bounding-circle diameter) log-uniform in ``extent_range``, so
    that small, medium and large objects all occur; the centre uniform over the image but at
    least ``margin`` radii from each border; the angle uniform."""
    low, high = extent_range
    radius = math.exp(rng.uniform(math.log(low), math.log(high))) / 2
    cx = rng.uniform(radius * margin, width - radius * margin)
    cy = rng.uniform(radius * margin, height - radius * margin)
    return Pose(radius, cx, cy, rng.uniform(0, 2 * math.pi))


def rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """``(P, 2)`` points rotated by ``angle`` radians about the origin."""
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return points @ rotation.T


def place(
    draw_candidate: Callable[[], tuple[np.ndarray, Extra]], placed: Sequence[np.ndarray], max_overlap: float
) -> tuple[np.ndarray, Extra] | None:
    """The first of up to :data:`PLACEMENT_ATTEMPTS` candidates that is not empty and shares less
    than ``max_overlap`` of the smaller one's area with each mask in ``placed``, or None.

    ``draw_candidate()`` returns a candidate's full mask ``(H, W)`` bool and whatever else the
    caller draws with it (its label, its texture); objects may touch and partly hide each other,
    but each stays mostly visible.
    """
    for _ in range(PLACEMENT_ATTEMPTS):
        mask, extra = draw_candidate()
        area = mask.sum()
        if area > 0 and all((mask & m).sum() < max_overlap * min(area, m.sum()) for m in placed):
            return mask, extra
    return None


def annotate(drawn: list[tuple[int, np.ndarray]], stuff: np.ndarray, min_pixels: int) -> tuple[list[tuple[int, np.ndarray]], np.ndarray]:
    """The annotations of objects painted in order over stuff regions.

    Args:
        drawn: [(category id, full mask (H, W) bool)] in painting order (later ones hide earlier
            ones); category id 0 for a distractor, which hides what lies under it but is no
            object: its pixels keep the stuff category under it.
        stuff: (H, W) the stuff category id of each pixel.
        min_pixels: an object with fewer visible pixels is not annotated, and its pixels are
            unlabelled (0) in the category map, as a thing nobody could outline.

    Returns:
        ``objects``, [(category id, visible mask (H, W) uint8)] of the annotated objects in
        painting order, and ``categories``, (H, W) uint8: each pixel's category id (thing or
        stuff), 0 where unlabelled.
    """
    objects = []
    categories = stuff.astype(np.uint8)
    hidden = np.zeros(stuff.shape, dtype=bool)
    for label, mask in reversed(drawn):
        visible = mask & ~hidden
        hidden |= mask
        if not label:
            continue
        if visible.sum() >= min_pixels:
            objects.append((label, visible.astype(np.uint8)))
            categories[visible] = label
        else:
            categories[visible] = 0
    objects.reverse()
    return objects, categories


def random_rgb(rng: np.random.Generator) -> tuple[int, int, int]:
    """A uniformly random 8-bit colour, as Pillow's drawing functions take it."""
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def to_pixels(canvas: np.ndarray) -> np.ndarray:
    """A float canvas in [0, 1] as ``(H, W, 3)`` uint8 pixels (rounded, out-of-range values clipped)."""
    return (canvas * 255).round().clip(0, 255).astype(np.uint8)


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 in [0, 1]: uniform noise on a ``cells`` (rows, columns) grid, bicubic-upsampled."""
    grid = Image.fromarray((rng.random(cells) * 255).astype(np.uint8))
    return np.asarray(grid.resize((width, height), Image.BICUBIC), dtype=np.float32) / 255


def stuff_regions(rng: np.random.Generator, height: int, width: int, num_classes: int, count: int) -> np.ndarray:
    """(H, W) int64: the image cut into ``count`` regions, each of one stuff class in
    ``0..num_classes - 1`` (distinct classes while ``count <= num_classes``).

    The regions are the cells of ``count`` random centres, measured on a smoothly warped plane so
    that their borders bend; they are drawn before any object and do not follow objects' outlines.
    """
    centres = rng.uniform((0, 0), (width, height), (count, 2))
    classes = rng.choice(num_classes, size=count, replace=count > num_classes)
    bend = REGION_BEND * max(height, width)
    xs = np.arange(width, dtype=np.float32)[None] + bend * (smooth_noise(rng, height, width, (4, 4)) - 0.5)
    ys = np.arange(height, dtype=np.float32)[:, None] + bend * (smooth_noise(rng, height, width, (4, 4)) - 0.5)
    distances = (xs[None] - centres[:, 0, None, None]) ** 2 + (ys[None] - centres[:, 1, None, None]) ** 2
    return classes[distances.argmin(0)]


def paint_stuff(rng: np.random.Generator, regions: np.ndarray, materials: Sequence[str]) -> np.ndarray:
    """(H, W, 3) float in [0, 1]: each region of ``regions`` (H, W), indices into ``materials``,
    filled with its material (a key of :data:`MATERIALS`)."""
    height, width = regions.shape
    canvas = np.zeros((height, width, 3))
    for index in np.flatnonzero(np.bincount(regions.ravel(), minlength=len(materials))):
        ys, xs = np.nonzero(regions == index)
        canvas[ys, xs] = MATERIALS[materials[index]](rng, ys, xs, height, width)
    return canvas.clip(0, 1)


def _tinted(rng: np.random.Generator, colour: tuple[float, float, float], spread: float = 0.08) -> np.ndarray:
    """``colour`` with each channel moved by up to ``spread``: a material varies between images."""
    return (np.asarray(colour) + rng.uniform(-spread, spread, 3)).clip(0, 1)


# The materials of stuff regions. Each maps (rng, ys, xs, height, width) -> (P, 3) float colours
# of the P pixels (ys, xs) of an image of that size; a material is told apart by its pattern
# (and a colour it tends to), so the semantic branch has textures to learn.


def _sky(rng, ys, xs, height, width):
    """A smooth gradient from deep to pale blue, roughly top to bottom."""
    deep, pale = _tinted(rng, (0.35, 0.55, 0.85)), _tinted(rng, (0.75, 0.85, 0.95))
    angle = math.pi / 2 + rng.uniform(-0.4, 0.4)
    position = (xs * math.cos(angle) + ys * math.sin(angle)) / (width + height) + 0.5
    return deep + (pale - deep) * position[:, None]


def _grass(rng, ys, xs, height, width):
    """Green, in thin vertical blades."""
    blades = rng.random((height // 6 + 2, width))
    return _tinted(rng, (0.25, 0.5, 0.2)) + 0.25 * (blades[ys // 6, xs] - 0.5)[:, None]


def _water(rng, ys, xs, height, width):
    """Blue, in horizontal waves."""
    phase = 6 * smooth_noise(rng, height, width, (3, 5))[ys, xs]
    waves = np.sin(2 * math.pi * ys / rng.uniform(7, 12) + phase + 0.3 * np.sin(xs / 9))
    return _tinted(rng, (0.15, 0.35, 0.6)) + 0.12 * waves[:, None]


def _sand(rng, ys, xs, height, width):
    """Pale yellow-brown, finely speckled."""
    speckle = rng.random(len(ys)) - 0.5
    drift = smooth_noise(rng, height, width, (5, 5))[ys, xs] - 0.5
    return _tinted(rng, (0.8, 0.7, 0.5)) + (0.18 * speckle + 0.1 * drift)[:, None]


def _brick(rng, ys, xs, height, width):
    """Red-brown bricks in offset rows, with pale mortar joints."""
    mortar, clay = _tinted(rng, (0.8, 0.78, 0.72), 0.05), _tinted(rng, (0.6, 0.25, 0.18))
    course = int(rng.integers(8, 14))
    length = 2 * course + int(rng.integers(0, 6))
    row = ys // course
    along = xs + (row % 2) * (length // 2)
    shades = rng.uniform(-0.08, 0.08, (height // course + 1, (width + length) // length + 1))
    joint = (ys % course < 2) | (along % length < 2)
    return np.where(joint[:, None], mortar, clay + shades[row, along // length][:, None])


def _wood(rng, ys, xs, height, width):
    """Light brown with a wavy dark grain."""
    light, dark = _tinted(rng, (0.8, 0.62, 0.38)), _tinted(rng, (0.5, 0.33, 0.18))
    angle = rng.uniform(0, math.pi)
    warp = 25 * smooth_noise(rng, height, width, (3, 3))[ys, xs]
    grain = 0.5 + 0.5 * np.sin(2 * math.pi * (xs * math.cos(angle) + ys * math.sin(angle) + warp) / rng.uniform(6, 11))
    return dark + (light - dark) * (grain ** 2)[:, None]


def _gravel(rng, ys, xs, height, width):
    """Grey pebbles: the cells of points jittered on a grid, each cell its own shade."""
    size = int(rng.integers(6, 10))
    rows, cols = height // size + 2, width // size + 2
    points = (np.stack(np.mgrid[0:rows, 0:cols], -1) + rng.random((rows, cols, 2))) * size
    shades = rng.uniform(0.35, 0.75, rows * cols)
    cell_y, cell_x = ys // size, xs // size
    best = np.full(len(ys), np.inf)
    nearest = np.zeros(len(ys), dtype=np.int64)
    for dy in (-1, 0, 1):  # a pixel's nearest point lies in its grid cell or a neighbouring one
        for dx in (-1, 0, 1):
            y, x = np.clip(cell_y + dy, 0, rows - 1), np.clip(cell_x + dx, 0, cols - 1)
            distance = (points[y, x, 0] - ys) ** 2 + (points[y, x, 1] - xs) ** 2
            closer = distance < best
            best[closer], nearest[closer] = distance[closer], (y * cols + x)[closer]
    return shades[nearest][:, None] + _tinted(rng, (0.0, 0.0, 0.0), 0.05)


def _tiles(rng, ys, xs, height, width):
    """Square tiles of two alternating colours, with dark grout lines."""
    first, second = _tinted(rng, (0.85, 0.85, 0.8), 0.1), _tinted(rng, (0.3, 0.35, 0.45), 0.1)
    size = int(rng.integers(10, 18))
    colours = np.where(((ys // size + xs // size) % 2 == 0)[:, None], first, second)
    grout = (ys % size == 0) | (xs % size == 0)
    return np.where(grout[:, None], 0.15, colours)


#: Stuff materials by name: (rng, ys, xs, height, width) -> (P, 3) colours of those pixels.
MATERIALS: dict[str, Callable[..., np.ndarray]] = {
    "sky": _sky, "grass": _grass, "water": _water, "sand": _sand,
    "brick": _brick, "wood": _wood, "gravel": _gravel, "tiles": _tiles,
}
