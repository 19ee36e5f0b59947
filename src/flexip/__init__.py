"""FlexIP: zero-shot subject-driven generation with a continuous preservation/personalization dial."""

from .errors import FlexIPError
from .models import FlexIPAdapter, FlexIPCondition, FlexIPConfig
from .pipeline import FlexIPPipeline, load_flexip, unload_flexip
from .reference import EncodedReference, ReferenceEncoder

__all__ = [
    "EncodedReference",
    "FlexIPAdapter",
    "FlexIPCondition",
    "FlexIPConfig",
    "FlexIPError",
    "FlexIPPipeline",
    "ReferenceEncoder",
    "load_flexip",
    "unload_flexip",
]
__version__ = "0.1.0"
