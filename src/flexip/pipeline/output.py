"""Writing generated images: atomically, and a PNG carries the settings that made it."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..atomic import atomic_write_bytes
from ..settings.dial import Dial

# Image formats by file suffix.
SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
SETTINGS_CHUNK = "flexip"  # the PNG text chunk holding the settings as JSON


def save_image(image: Image.Image, path: Path, settings: dict) -> None:
    """Write atomically in the format the suffix names; a PNG carries `settings` as JSON in its `flexip` chunk."""
    buffer = io.BytesIO()
    image_format = SAVE_FORMATS[path.suffix.lower()]
    if image_format == "PNG":
        info = PngInfo()
        info.add_text(SETTINGS_CHUNK, json.dumps(settings, sort_keys=True))
        image.save(buffer, format="PNG", pnginfo=info)
    else:
        image.save(buffer, format=image_format, quality=95)
    atomic_write_bytes(path, buffer.getvalue())


def image_name(index: int, value: Dial, dial: str = "preservation") -> str:
    """The file of a sweep's `index`-th image: the dial's name ("preservation", or "gate" for the raw g) and
    its value (a number, a per-block or a schedule form)."""
    if isinstance(value.form, float):
        return f"{index:02d}_{dial}-{value.form:.2f}.png"
    return f"{index:02d}_{dial}-{re.sub(r'[^0-9a-z.]+', '-', value.text()).strip('-')}.png"
