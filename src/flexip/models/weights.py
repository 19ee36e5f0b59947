"""The branches' per-sample weights s·g and s·(1−g) for one denoiser call, and the rows each branch computes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _active_rows(weight: torch.Tensor, frames: int = 1) -> torch.Tensor | None:
    """Rows whose weight is non-zero (with `frames`: samples of which some frame's is): None means all of
    them, an empty tensor none."""
    if frames > 1:
        weight = weight.view(-1, frames).ne(0).any(dim=1)
    rows = torch.nonzero(weight).flatten()
    return None if rows.numel() == weight.numel() else rows


def _factor(weight: torch.Tensor, rows: torch.Tensor | None, dtype: torch.dtype, frames: int = 1) -> torch.Tensor:
    """A branch's weight over its active rows, shaped to scale an attention output (rows, heads, tokens, dim);
    with `frames`, a clip's (rows, frames, heads, tokens, dim)."""
    if frames > 1:
        weight = weight.view(-1, frames)
        return (weight if rows is None else weight[rows]).to(dtype)[:, :, None, None, None]
    return (weight if rows is None else weight[rows]).to(dtype)[:, None, None, None]


@dataclass(eq=False)
class BranchWeights:
    """The two branches' weights in one layer for one UNet call: s·g and s·(1−g) per sample, the rows each
    branch computes (non-zero weight), and those rows' weights shaped to scale an attention output.

    For clips (a video denoiser's layers: `frames` rows per sample) the weights have a row per sample and
    frame, and a branch's rows are the samples in which some frame uses it: it is computed for all their
    frames, each scaled by its own weight (zero in the frames that do not use it)."""

    preservation_weight: torch.Tensor  # s * g: (batch,), for clips (batch * frames,)
    personalization_weight: torch.Tensor  # s * (1 - g): likewise
    preservation_rows: torch.Tensor | None
    personalization_rows: torch.Tensor | None
    # (rows, 1, 1, 1) in the tokens' dtype: shaped once per UNet call rather than in each layer.
    preservation_factor: torch.Tensor
    personalization_factor: torch.Tensor

    @classmethod
    def create(
        cls, preservation_weight: torch.Tensor, personalization_weight: torch.Tensor, dtype: torch.dtype,
        device: torch.device | None = None, frames: int = 1,
    ) -> BranchWeights:  # fmt: skip
        """Weights on any device (a clip's: `frames` consecutive rows per sample); the rows are found where the
        weights are (one host sync at most when they are on an accelerator), and everything is then moved to
        `device` when given."""
        preservation_rows = _active_rows(preservation_weight, frames)
        personalization_rows = _active_rows(personalization_weight, frames)
        parts = [
            preservation_weight, personalization_weight, preservation_rows, personalization_rows,
            _factor(preservation_weight, preservation_rows, dtype, frames),
            _factor(personalization_weight, personalization_rows, dtype, frames),
        ]  # fmt: skip
        if device is not None:
            parts = [None if part is None else part.to(device) for part in parts]
        return cls(*parts)

    def uses(self, branch: str) -> bool:
        """Whether any row computes `branch` ("preservation" or "personalization")."""
        rows = getattr(self, f"{branch}_rows")
        return rows is None or rows.numel() > 0


def branch_weights(
    preservation: torch.Tensor | float, scale: torch.Tensor | float, batch: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample weights (s·g, s·(1−g)) of the two branches, each of shape (batch,)."""
    g = torch.as_tensor(preservation, dtype=torch.float32, device=device).expand(batch)
    s = torch.as_tensor(scale, dtype=torch.float32, device=device).expand(batch)
    return s * g, s * (1 - g)
