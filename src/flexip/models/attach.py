"""Installing FlexIP's processors in a denoiser's joined attention layers, and putting the originals back,
through the denoiser's own processor API (`flexip.denoisers`)."""

from __future__ import annotations

from torch import nn

from ..denoisers.registry import denoiser_of
from .flux_processor import FlexIPFluxAttnProcessor
from .processor import FlexIPAttnProcessor
from .projections import BranchProjections

# A denoiser's name -> the processor FlexIP installs in its joined layers.
PROCESSORS = {"unet": FlexIPAttnProcessor, "flux": FlexIPFluxAttnProcessor, "motion_unet": FlexIPAttnProcessor}


def is_flexip(processor: object) -> bool:
    """Whether `processor` is one of FlexIP's."""
    return isinstance(processor, tuple(PROCESSORS.values()))


def joined_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The attention layers FlexIP joins in `model` (a UNet's cross-attention layers, FLUX's double-stream
    blocks' attention), by processor name."""
    return denoiser_of(model).attention_layers(model)


def attach(model: nn.Module, projections: dict[str, BranchProjections]) -> None:
    """Install a FlexIP processor on every joined layer named in `projections`."""
    denoiser = denoiser_of(model)
    current = denoiser.processors(model)
    if any(map(is_flexip, current.values())):
        raise RuntimeError("a FlexIP adapter is already attached to this model; detach it first")
    processor_class = PROCESSORS[denoiser.name]
    processors = {}
    for name, processor in current.items():
        if name in projections:
            processors[name] = processor_class(projections[name], original=processor)
        else:
            processors[name] = processor
    denoiser.set_processors(model, processors)


def detach(model: nn.Module) -> None:
    """Put back the processors that `attach` replaced; the model is then exactly as before."""
    denoiser = denoiser_of(model)
    processors = {
        name: processor.original if is_flexip(processor) else processor
        for name, processor in denoiser.processors(model).items()
    }
    denoiser.set_processors(model, processors)
