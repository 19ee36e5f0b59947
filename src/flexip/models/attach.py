"""Installing FlexIP's processors in a diffusers UNet's cross-attention layers, and putting the originals back."""

from __future__ import annotations

from diffusers.models.attention_processor import Attention
from torch import nn

from .processor import FlexIPAttnProcessor
from .projections import BranchProjections


def cross_attention_layers(unet: nn.Module) -> dict[str, Attention]:
    """The UNet's cross-attention layers by processor name, found through diffusers' processor API."""
    layers = {}
    for name in unet.attn_processors:
        module = unet.get_submodule(name.removesuffix(".processor"))
        if isinstance(module, Attention) and module.is_cross_attention:
            layers[name] = module
    return layers


def attach(unet: nn.Module, projections: dict[str, BranchProjections]) -> None:
    """Install a FlexIP processor on every cross-attention layer named in `projections`."""
    if any(isinstance(p, FlexIPAttnProcessor) for p in unet.attn_processors.values()):
        raise RuntimeError("a FlexIP adapter is already attached to this UNet; detach it first")
    processors = {}
    for name, processor in unet.attn_processors.items():
        if name in projections:
            processors[name] = FlexIPAttnProcessor(projections[name], original=processor)
        else:
            processors[name] = processor
    unet.set_attn_processor(processors)


def detach(unet: nn.Module) -> None:
    """Put back the processors that `attach` replaced; the UNet is then exactly as before."""
    processors = {
        name: processor.original if isinstance(processor, FlexIPAttnProcessor) else processor
        for name, processor in unet.attn_processors.items()
    }
    unet.set_attn_processor(processors)
