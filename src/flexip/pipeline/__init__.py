"""Generation with the preservation dial: `FlexIPPipeline`, and FlexIP on stock diffusers pipelines."""

from .injection import FlexIPInjection
from .pipeline import FlexIPPipeline
from .stock import load_flexip, unload_flexip

__all__ = ["FlexIPInjection", "FlexIPPipeline", "load_flexip", "unload_flexip"]
