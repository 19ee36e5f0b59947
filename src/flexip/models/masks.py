"""How each reference's branch outputs enter a layer: its weight, and its mask resized to the layer's grid."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(eq=False)
class Subject:
    """How one reference's branch outputs enter every layer: scaled by `weight`, and only inside `mask`.

    A layer's branch output is the sum over subjects of weight * mask * Attn(Q, K_i, V_i), each subject's
    keys and values from its own tokens (docs/decisions/control.md, "Several references"). The mask is
    area-resized to each layer's grid, so a grid cell with no mask pixel gets exactly zero and an all-ones mask exactly one.
    """

    weight: float = 1.0
    mask: torch.Tensor | None = None  # (height, width) in [0, 1] at any resolution of the image's aspect ratio
    _resized: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)  # positions -> (1, 1, N, 1)

    def share(self, positions: int, layer_grid: Callable[[int], tuple[int, int]], dtype: torch.dtype) -> torch.Tensor | float:
        """`weight`, times the mask at a layer of `positions` image positions whose (height, width) grid is
        `layer_grid(positions)`, shaped (1, 1, positions, 1)."""
        if self.mask is None:
            return self.weight
        if positions not in self._resized:
            height, width = layer_grid(positions)
            resized = F.interpolate(self.mask[None, None], size=(height, width), mode="area")
            self._resized[positions] = (resized * self.weight).reshape(1, 1, positions, 1)
        return self._resized[positions].to(dtype)


PLAIN = (Subject(),)  # one reference, weight 1, no mask: the branches are added as they come
