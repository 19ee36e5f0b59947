"""The registry of the kinds of denoiser FlexIP joins, and which kind a model is."""

from __future__ import annotations

from torch import nn

from ..errors import FlexIPError
from .denoiser import Denoiser, missing_pieces
from .flux import FluxDoubleStream
from .motion_unet import MotionUNet
from .unet import UNetCrossAttention

DENOISERS: dict[str, Denoiser] = {}


def register(cls: type) -> Denoiser:
    """Add a kind of denoiser; one that lacks a piece of the interface is refused here, not at its first call."""
    missing = missing_pieces(cls)
    if missing:
        raise TypeError(f"{getattr(cls, '__name__', cls)} is not a complete denoiser: it lacks {', '.join(missing)}")
    denoiser = cls()
    DENOISERS[denoiser.name] = denoiser
    return denoiser


UNET = register(UNetCrossAttention)
FLUX = register(FluxDoubleStream)
MOTION_UNET = register(MotionUNet)


def denoiser_of(model: nn.Module) -> Denoiser:
    """The kind of denoiser `model` is; a FlexIPError naming the kinds FlexIP joins otherwise."""
    for denoiser in DENOISERS.values():
        if denoiser.matches(model):
            return denoiser
    kinds = ", ".join(denoiser.model_class.__name__ for denoiser in DENOISERS.values())
    raise FlexIPError(f"FlexIP does not join a {type(model).__name__}; it joins a {kinds}")
