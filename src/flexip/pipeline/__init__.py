"""Generation with the preservation dial: `FlexIPPipeline` (SD1.5) and `FlexIPXLPipeline` (SDXL), and FlexIP on stock diffusers pipelines."""

from .dial import DialSchedule
from .injection import FlexIPInjection
from .pipeline import FlexIPPipeline, FlexIPXLPipeline, flexip_pipeline_for
from .stock import load_flexip, unload_flexip

__all__ = ["DialSchedule", "FlexIPInjection", "FlexIPPipeline", "FlexIPXLPipeline", "flexip_pipeline_for", "load_flexip", "unload_flexip"]
