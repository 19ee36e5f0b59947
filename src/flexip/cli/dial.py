"""--preservation and --scale against the adapter they will meet: its block names, read from its config file
through the library's reader, before torch is imported."""

from __future__ import annotations

from pathlib import Path

from ..defaults import DEMO_MODEL_DIR
from ..denoisers.blocks import BLOCK_NAMES
from ..families.names import DENOISER_OF_FAMILY
from ..models.config_file import CONFIG_NAME, read_config
from ..settings.dial import Dial


def check_blocks(adapter: str | None, values: list[Dial], scale: Dial) -> None:
    """Resolve the dial's values and the scale for the adapter's layers, as the call will: a per-block dict's
    names are checked here. Without --adapter, the embedded model's adapter is the one met; a copy of flexip
    without it builds its stand-in on first use, and the call checks then."""
    if adapter is None:
        adapter = DEMO_MODEL_DIR / "adapter"
        if not (adapter / CONFIG_NAME).is_file():
            return
    _, config = read_config(Path(adapter))
    names = BLOCK_NAMES[DENOISER_OF_FAMILY[config.base_family]]
    layers = list(config.layers)
    for value in [*values, scale]:
        value.resolve(layers, names)
