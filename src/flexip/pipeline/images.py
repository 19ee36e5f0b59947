"""Reference images: read any picture a user may have and hand the encoders a plain RGB image.

Unreadable files (missing, a directory, empty, not an image, truncated, a decompression bomb) raise a
FlexIPError naming the file. Everything PIL can decode is converted: EXIF rotation applied, the first frame of
an animation, 16-bit and grayscale scaled to 8-bit RGB, transparency composited on white, and extreme aspect
ratios padded (see `MAX_ASPECT_RATIO`).
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import FlexIPError

# The encoders resize the short side to their input size and centre-crop. Beyond this ratio the crop would keep
# a sliver of the picture and the resize would make a huge intermediate image, so the short side is padded.
MAX_ASPECT_RATIO = 4.0
BACKGROUND = (255, 255, 255)  # fills transparency and padding


def load_reference_image(reference: str | os.PathLike | Image.Image) -> Image.Image:
    """A path or a PIL image -> an RGB PIL image ready for the reference encoders."""
    if isinstance(reference, Image.Image):
        return to_rgb(reference)
    if not isinstance(reference, (str, os.PathLike)):
        raise FlexIPError(
            f"reference of type {type(reference).__name__} is not supported: give a PIL image, an image path, "
            "or an EncodedReference"
        )
    path = Path(reference)
    if not path.exists():
        raise FlexIPError(f"reference image {path} does not exist; check the path")
    if path.is_dir():
        raise FlexIPError(
            f"reference image {path} is a directory; give one image file (PNG, JPEG, WebP, ...)"
        )
    if path.stat().st_size == 0:
        raise FlexIPError(f"reference image {path} is empty (0 bytes); give a valid image file")
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not inside the encoders
            return to_rgb(image, name=str(path))
    except Image.DecompressionBombError as e:
        raise FlexIPError(
            f"reference image {path} is too large to decode safely ({e}); downscale it first"
        ) from e
    except UnidentifiedImageError as e:
        raise FlexIPError(
            f"reference image {path} is not an image format PIL can read; give a PNG, JPEG or WebP"
        ) from e
    except (OSError, SyntaxError, ValueError) as e:  # PIL reports corrupt and truncated data with these
        raise FlexIPError(f"reference image {path} is damaged or truncated ({e}); re-export it") from e


def to_rgb(image: Image.Image, name: str = "reference image") -> Image.Image:
    """Orient, flatten and convert one (possibly animated, 16-bit, transparent or odd-shaped) image to RGB."""
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        image = image.convert("I")
    if image.mode == "I":
        # 16-bit grey: a plain convert("L") clips everything above 255 to white; scale 0..65535 to 0..255.
        image = image.point(lambda value: value * (1 / 256)).convert("L")
    if image.mode == "F":
        raise FlexIPError(f"{name} holds floating-point pixels; save it as an 8- or 16-bit image")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        image = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        image.alpha_composite(rgba)
    image = image.convert("RGB")
    return _pad_extreme_aspect_ratio(image)


def _pad_extreme_aspect_ratio(image: Image.Image) -> Image.Image:
    width, height = image.size
    if max(width, height) <= MAX_ASPECT_RATIO * min(width, height):
        return image
    long_side = max(width, height)
    short_side = -(-long_side // int(MAX_ASPECT_RATIO))  # ceil
    size = (long_side, short_side) if width >= height else (short_side, long_side)
    canvas = Image.new("RGB", size, BACKGROUND)
    canvas.paste(image, ((size[0] - width) // 2, (size[1] - height) // 2))
    return canvas
