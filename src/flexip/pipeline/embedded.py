"""The embedded default model: what `flexip demo`, `generate` and `sweep` use when no model is named.

The package ships the trained demo model in `flexip/assets/demo/` (a model set, docs/formats.md; how it was
trained and how well its dial works: docs/demo-model.md), and that is the default. A copy of the package
without its data files falls back to the tiny random model set, built on first use into the user's cache
directory (`$XDG_CACHE_HOME/flexip/tiny-<version>`, else `~/.cache/flexip/...`): it runs everything, but its
pictures are noise, and `flexip demo` says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..atomic import atomic_directory
from ..defaults import DEMO_MODEL_DIR
from ..models.config_file import CONFIG_NAME
from ..tiny import ModelSet, save_tiny_model_set


@dataclass(frozen=True)
class EmbeddedModel:
    models: ModelSet
    trained: bool  # False: the tiny random stand-in, whose pictures mean nothing


def embedded_model() -> EmbeddedModel:
    """The trained demo model if the package holds one, else the tiny random model set (built once, cached)."""
    demo = ModelSet(DEMO_MODEL_DIR)
    if (demo.adapter / CONFIG_NAME).is_file():
        return EmbeddedModel(demo, trained=True)
    cache = (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flexip" / f"tiny-{__version__}"
    )
    tiny = ModelSet(cache)
    if not (tiny.adapter / CONFIG_NAME).is_file():  # written atomically: present means complete
        with atomic_directory(cache) as tmp:
            save_tiny_model_set(tmp)
    return EmbeddedModel(tiny, trained=False)
