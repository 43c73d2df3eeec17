"""Drawing helpers the synthetic datasets share: an object's size, position and rotation, its
placement among the objects already drawn, what stays visible of each, and the final pixels."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

#: Candidates drawn for one object before it is given up (each overlapped the others too much).
PLACEMENT_ATTEMPTS = 20

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


def random_rgb(rng: np.random.Generator) -> tuple[int, int, int]:
    """A uniformly random 8-bit colour, as Pillow's drawing functions take it."""
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def to_pixels(canvas: np.ndarray) -> np.ndarray:
    """A float canvas in [0, 1] as ``(H, W, 3)`` uint8 pixels (rounded, out-of-range values clipped)."""
    return (canvas * 255).round().clip(0, 255).astype(np.uint8)
