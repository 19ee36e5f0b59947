"""How each reference's branch outputs enter a layer: its weight, and its mask resized to the layer's grid."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(eq=False)
class Subject:
    """How one reference's branch outputs enter every layer: scaled by `weight`, and only inside `mask`.

    A layer's branch output is the sum over subjects of weight * mask * Attn(Q, K_i, V_i), each subject's
    keys and values from its own tokens (docs/design.md, "Several references"). The mask is area-resized to
    each layer's grid, so a grid cell with no mask pixel gets exactly zero and an all-ones mask exactly one.
    """

    weight: float = 1.0
    mask: torch.Tensor | None = None  # (height, width) in [0, 1] at any resolution of the image's aspect ratio
    _resized: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)  # positions -> (1, 1, N, 1)

    def share(self, positions: int, latent_size: tuple[int, int] | None, dtype: torch.dtype) -> torch.Tensor | float:
        """`weight`, times the mask at a layer of `positions` latent positions, shaped (1, 1, positions, 1)."""
        if self.mask is None:
            return self.weight
        if positions not in self._resized:
            height, width = layer_grid(positions, latent_size)
            resized = F.interpolate(self.mask[None, None], size=(height, width), mode="area")
            self._resized[positions] = (resized * self.weight).reshape(1, 1, positions, 1)
        return self._resized[positions].to(dtype)


def layer_grid(positions: int, latent_size: tuple[int, int] | None) -> tuple[int, int]:
    """The (height, width) of a UNet level with `positions` latent positions, from the latents' own size.

    Each down block halves the latents rounding up (a stride-2 convolution with padding 1), and the up blocks
    return to those sizes, so every level's grid is the latent grid halved a whole number of times.
    """
    if latent_size is None:
        raise ValueError("a masked reference needs the latents' size; FlexIPCondition.latent_size is not set")
    height, width = latent_size
    while height * width > positions and (height, width) != (1, 1):
        height, width = (height + 1) // 2, (width + 1) // 2
    if height * width != positions:
        raise ValueError(f"no UNet level of {latent_size[0]}x{latent_size[1]} latents has {positions} positions")
    return height, width


PLAIN = (Subject(),)  # one reference, weight 1, no mask: the branches are added as they come
