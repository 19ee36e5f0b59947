"""What a kind of denoiser is to FlexIP: the few things a UNet with cross-attention, a joint-attention
transformer or a UNet with motion modules do differently when FlexIP joins their attention.

Everything else (the adapters, the attention processors' branch maths, the condition, the dial) is shared
code, sized from the layers the denoiser names. `Denoiser` is what generation needs; `TrainableDenoiser` adds
the training objective, and only a denoiser FlexIP trains on is one (training refuses the others). A denoiser
module fills in the class attributes and every abstract method; `flexip.denoisers.register` refuses one that
leaves any out (docs/decisions/denoisers.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from .blocks import BlockNames

# Class attributes every denoiser sets.
ATTRIBUTES = ("name", "model_class", "pipeline_attribute", "block_names")


class Denoiser(ABC):
    """One kind of denoiser, as generation needs it: an interface; `unet.py` is the UNet with cross-attention
    (SD1.5, SDXL), `flux.py` FLUX.1's transformer, `motion_unet.py` AnimateDiff's UNet."""

    name: ClassVar[str]  # for messages and the registry
    model_class: ClassVar[type]  # the diffusers model class
    pipeline_attribute: ClassVar[str]  # where a diffusers pipeline holds it ("unet", "transformer")
    block_names: ClassVar[BlockNames]  # the blocks a per-block dial addresses, in diffusers' form (`blocks.py`)

    def matches(self, model: nn.Module) -> bool:
        """Whether `model` is this kind of denoiser."""
        return isinstance(model, self.model_class)

    @abstractmethod
    def attention_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """The attention layers FlexIP joins, by their processor names, in the model's order."""

    @abstractmethod
    def layer_sizes(self, model: nn.Module, attention: nn.Module) -> tuple[int, int]:
        """(width of the text tokens a layer's branch keys/values read, width of its keys/values)."""

    @abstractmethod
    def text_keys(self, model: nn.Module, attention: nn.Module) -> torch.Tensor:
        """The weight (K/V width, text width) that maps the text tokens to a layer's keys: where a fresh
        adapter's branch keys start, so that each branch begins with the text's attention pattern
        (`BranchProjections.start_from`)."""

    @abstractmethod
    def layer_grid(self, positions: int, latent_size: tuple[int, int]) -> tuple[int, int]:
        """The (height, width) of a layer whose queries are `positions` image positions, for latents of
        `latent_size`: where a reference's mask is resized to."""

    def processors(self, model: nn.Module) -> dict[str, object]:
        """Every attention processor of `model` by name (diffusers' processor API, which its UNets and
        transformers share)."""
        return model.attn_processors

    def set_processors(self, model: nn.Module, processors: dict[str, object]) -> None:
        """Install `processors` (every attention processor of `model`, by name)."""
        model.set_attn_processor(dict(processors))  # diffusers empties the dict it is given

    @abstractmethod
    def with_condition(
        self, args: tuple, kwargs: dict, condition_for: Callable[[torch.Tensor, Callable], object]
    ) -> tuple[tuple, dict]:
        """A denoiser call's arguments (those a forward pre-hook sees) with the per-call condition joined to
        them so that it reaches the joined layers: `condition_for(text, latent_size)` builds it, `text` the
        call's text embeddings and `latent_size()` the (height, width) of the latents' grid (`layer_grid`'s
        second argument), asked for only when a condition is built. A denoiser whose layers see a clip's frames
        as rows (`frames` consecutive rows per sample, the text repeated per frame) passes
        `condition_for(text, latent_size, frames)`."""


class TrainableDenoiser(Denoiser):
    """A denoiser FlexIP trains on: `Denoiser` and the training objective (docs/method.md §3). `config` is the
    training config (`flexip.training.config.TrainConfig`), whose objective settings a denoiser reads."""

    @abstractmethod
    def scheduler_class(self) -> type:
        """The diffusers scheduler class of the training noise schedule, loaded from the base's `scheduler/`."""

    @abstractmethod
    def sampler(self, scheduler):
        """A fresh scheduler that samples validation images from a model trained on `scheduler`'s schedule."""

    @abstractmethod
    def check_schedule(self, scheduler, where: str) -> None:
        """Refuse, naming `where`, a base whose noise schedule the denoiser's objective does not train."""

    @abstractmethod
    def check_objective(self, config) -> None:
        """Refuse, naming the key, objective settings of `config` that this denoiser does not train with."""

    @abstractmethod
    def noisy_and_target(self, scheduler, latents, generator, config) -> tuple:
        """(noisy latents, timesteps, target) of a training batch of (batch, channels, height, width) latents,
        drawn from `generator`; the target is of the latents' shape."""

    @abstractmethod
    def predict(self, model: nn.Module, noisy, timesteps, text, condition, added: dict | None, config):
        """The model's prediction for a training batch, of the latents' shape, with the condition joined as
        `with_condition` joins it."""

    @abstractmethod
    def loss_weight(self, scheduler, timesteps, config):
        """Each sample's loss weight, or None where the objective weighs every sample alike."""

    @abstractmethod
    def activation_values(self, model: nn.Module, resolution: int) -> int:
        """About how many values one sample's activations keep for the backward pass at `resolution` px."""


def missing_pieces(cls: type) -> list[str]:
    """What the class `cls` lacks to be a denoiser: not a Denoiser, abstract methods left (the training
    objective's too, for a TrainableDenoiser), class attributes unset."""
    if not (isinstance(cls, type) and issubclass(cls, Denoiser)):
        return [f"a subclass of Denoiser (got {cls!r})"]
    return sorted(cls.__abstractmethods__) + [name for name in ATTRIBUTES if not hasattr(cls, name)]
