"""Installing FlexIP's processors in a denoiser's joined attention layers, and putting the originals back,
through the denoiser's own processor API (`flexip.denoisers`)."""

from __future__ import annotations

from torch import nn

from ..denoisers.registry import denoiser_of
from .processor import FlexIPAttnProcessor
from .projections import BranchProjections


def joined_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The attention layers FlexIP joins in `model` (a UNet's cross-attention layers), by processor name."""
    return denoiser_of(model).attention_layers(model)


def attach(model: nn.Module, projections: dict[str, BranchProjections]) -> None:
    """Install a FlexIP processor on every joined layer named in `projections`."""
    denoiser = denoiser_of(model)
    current = denoiser.processors(model)
    if any(isinstance(p, FlexIPAttnProcessor) for p in current.values()):
        raise RuntimeError("a FlexIP adapter is already attached to this model; detach it first")
    processors = {}
    for name, processor in current.items():
        if name in projections:
            processors[name] = FlexIPAttnProcessor(projections[name], original=processor)
        else:
            processors[name] = processor
    denoiser.set_processors(model, processors)


def detach(model: nn.Module) -> None:
    """Put back the processors that `attach` replaced; the model is then exactly as before."""
    denoiser = denoiser_of(model)
    processors = {
        name: processor.original if isinstance(processor, FlexIPAttnProcessor) else processor
        for name, processor in denoiser.processors(model).items()
    }
    denoiser.set_processors(model, processors)
