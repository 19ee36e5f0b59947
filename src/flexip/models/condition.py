"""What one denoiser call needs to add the two branches: the tokens P and S, the subjects, the weights, and
the cache of each layer's branch keys/values."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .masks import PLAIN, Subject
from .weights import BranchWeights


@dataclass(eq=False)
class FlexIPCondition:
    """What one UNet call needs to add the two branches: tokens P and S, the subjects, and the branch weights.

    Built by `FlexIPAdapter.condition` (training and generation alike). With `cache=True` each layer keeps its branch keys/values after
    the first call, so a generation computes them once rather than once per denoising step; a condition
    with a cache must therefore only be reused with the same tokens (the pipeline makes one per call). The
    weights never enter the cache: they scale each branch's attention output, so they may change between
    calls that share the keys/values (`reweighted`: a dial over the steps), and per layer (`layer_weights`).
    """

    # P and S, each subject's tokens in turn: (batch, subjects * n_p, cross_attention_dim), likewise n_s.
    preservation_tokens: torch.Tensor
    personalization_tokens: torch.Tensor
    weights: BranchWeights  # every layer's, except those in `layer_weights`
    layer_weights: dict[nn.Module, BranchWeights] = field(default_factory=dict)  # by the layer's BranchProjections
    subjects: tuple[Subject, ...] = PLAIN
    latent_size: tuple[int, int] | None = None  # (height, width) of the latents: where masks are resized from
    # The denoiser's grid of a layer (`Denoiser.layer_grid`): (positions, latent size) -> (height, width).
    grid: Callable[[int, tuple[int, int]], tuple[int, int]] | None = None
    # True when the weights change between calls (a schedule): the cache then holds every row's keys/values
    # and each call takes its active rows from them, since the active rows may change from step to step.
    kv_all_rows: bool = False
    # Branch keys/values (one (key, value) per subject) by the branch's key projection (one per layer and
    # branch): the module itself, not its id, so a processor built later for another layer can never find
    # this one's values.
    kv_cache: dict[nn.Linear, list[tuple[torch.Tensor, torch.Tensor]]] | None = field(default=None)
    # The frames of each sample's clip: a video denoiser's layers see `frames` consecutive rows per sample (one
    # per frame), which read that sample's tokens and keys/values; the weights then have a row per sample and
    # frame (`BranchWeights`). 1 for images.
    frames: int = 1
    # Whether the subjects are mixed (several, or a weight or mask) rather than added as they come; a plain
    # bool, which torch.compile reads as a constant.
    mixed: bool = field(init=False)

    def __post_init__(self):
        self.mixed = self.subjects is not PLAIN

    def reweighted(self, weights: BranchWeights, layer_weights: dict[nn.Module, BranchWeights]) -> FlexIPCondition:
        """This condition with other weights, sharing its tokens, subjects and key/value cache."""
        return dataclasses.replace(self, weights=weights, layer_weights=layer_weights)

    def layer_grid(self, positions: int) -> tuple[int, int]:
        """The (height, width) of a layer with `positions` image positions: where a mask is resized to."""
        if self.latent_size is None or self.grid is None:
            raise ValueError("a masked reference needs the latents' size and the denoiser's grid; set both")
        return self.grid(positions, self.latent_size)

    def weights_for(self, projections: nn.Module) -> BranchWeights:
        return self.layer_weights.get(projections, self.weights)

    @property
    def preservation_weight(self) -> torch.Tensor:
        return self.weights.preservation_weight

    @property
    def personalization_weight(self) -> torch.Tensor:
        return self.weights.personalization_weight
