"""FlexIP: zero-shot subject-driven generation with a continuous preservation/personalization dial.

The public names are imported on first use, so `flexip --help` and `import flexip.errors` stay fast (torch and
diffusers take seconds to import).
"""

import importlib

# Public name -> the module that defines it.
_EXPORTS = {
    "DialSchedule": ".pipeline",
    "EncodedReference": ".reference",
    "FlexIPAdapter": ".models",
    "FlexIPCondition": ".models",
    "FlexIPConfig": ".models",
    "FlexIPError": ".errors",
    "FlexIPPipeline": ".pipeline",
    "FlexIPXLPipeline": ".pipeline",
    "ReferenceEncoder": ".reference",
    "load_flexip": ".pipeline",
    "unload_flexip": ".pipeline",
}
__all__ = [
    "DialSchedule",
    "EncodedReference",
    "FlexIPAdapter",
    "FlexIPCondition",
    "FlexIPConfig",
    "FlexIPError",
    "FlexIPPipeline",
    "FlexIPXLPipeline",
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
