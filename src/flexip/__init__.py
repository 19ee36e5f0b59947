"""FlexIP: zero-shot subject-driven generation with a continuous preservation/personalization dial.

`__all__` is what users call: the pipelines and `load_flexip` for generation, `DialSchedule` (and
`FrameSchedule`) for the dial over the steps or a clip's frames, `FlexIPAdapter` and `ReferenceEncoder` (with its
`EncodedReference`) for training and for encoding references ahead, and `FlexIPError`, the one error users see.

The public names are imported on first use, so `flexip --help` and `import flexip.errors` stay fast (torch and
diffusers take seconds to import).
"""

import importlib

# Public name -> the module that defines it.
_EXPORTS = {
    "DialSchedule": ".settings.dial",
    "EncodedReference": ".references.encoded",
    "FlexIPAdapter": ".models.adapter",
    "FlexIPError": ".errors",
    "FlexIPFluxPipeline": ".pipeline.pipeline",
    "FlexIPPipeline": ".pipeline.pipeline",
    "FlexIPXLPipeline": ".pipeline.pipeline",
    "FrameSchedule": ".settings.dial",
    "ReferenceEncoder": ".references.encoder",
    "load_flexip": ".pipeline.stock",
    "unload_flexip": ".pipeline.stock",
}
__all__ = [
    "DialSchedule",
    "EncodedReference",
    "FlexIPAdapter",
    "FlexIPError",
    "FlexIPFluxPipeline",
    "FlexIPPipeline",
    "FlexIPXLPipeline",
    "FrameSchedule",
    "ReferenceEncoder",
    "load_flexip",
    "unload_flexip",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'flexip' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


def __dir__() -> list[str]:
    return [*globals(), *__all__]
