"""Anchor boxes over the feature pyramid."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..overrides import check_length, check_not_empty


class AnchorGenerator(nn.Module):
    """One anchor size per level (e.g. 32..512 over P2..P6) times ``aspect_ratios`` (height / width).

    Anchors of a level are centred on the grid points ``(x * stride, y * stride)`` and laid out in
    ``(y, x, anchor)`` order, matching a head output ``(N, A, H, W)`` permuted to ``(N, H, W, A)``.
    """

    def __init__(self, sizes: tuple[float, ...], aspect_ratios: tuple[float, ...], strides: tuple[int, ...]):
        super().__init__()
        check_length("sizes", tuple(sizes), len(strides), f"one per level of strides {tuple(strides)}")
        check_not_empty("aspect_ratios", tuple(aspect_ratios))
        self.strides = tuple(strides)
        self.num_anchors = len(aspect_ratios)
        self.cell_anchors = [self._cell_anchors(size, aspect_ratios) for size in sizes]
        self._cache: dict = {}

    @staticmethod
    def _cell_anchors(size: float, aspect_ratios: tuple[float, ...]) -> torch.Tensor:
        """``(A, 4)`` anchors of area ``size ** 2`` centred at the origin."""
        anchors = []
        for ratio in aspect_ratios:
            width = size / math.sqrt(ratio)
            height = size * math.sqrt(ratio)
            anchors.append((-width / 2, -height / 2, width / 2, height / 2))
        return torch.tensor(anchors, dtype=torch.float32)

    def forward(self, grid_sizes: list[tuple[int, int]], device: torch.device) -> list[torch.Tensor]:
        """``grid_sizes``: ``(H_l, W_l)`` per level -> anchors ``(H_l * W_l * A, 4)`` per level."""
        if torch.compiler.is_compiling():  # traced sizes may be symbolic, and traced tensors must not be cached
            return [self._grid_anchors(s, i, device) for i, s in enumerate(grid_sizes)]
        key = (tuple(tuple(s) for s in grid_sizes), str(device))
        if key not in self._cache:
            self._cache = {key: [self._grid_anchors(s, i, device) for i, s in enumerate(grid_sizes)]}
        return self._cache[key]

    def _grid_anchors(self, grid_size, level: int, device) -> torch.Tensor:
        height, width = grid_size
        stride = self.strides[level]
        ys = torch.arange(height, dtype=torch.float32, device=device) * stride
        xs = torch.arange(width, dtype=torch.float32, device=device) * stride
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack((x, y, x, y), dim=-1).reshape(-1, 1, 4)
        return (shifts + self.cell_anchors[level].to(device)[None]).reshape(-1, 4)
