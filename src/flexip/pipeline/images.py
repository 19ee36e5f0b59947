"""Reference images and masks: read any picture a user may have; hand the encoders a plain RGB image, and the
layers a grayscale mask.

Unreadable files (missing, a directory, empty, not an image, truncated, a decompression bomb) raise a
FlexIPError naming the file. Everything PIL can decode is converted: EXIF rotation applied, the first frame of
an animation, 16-bit and grayscale scaled to 8-bit, transparency composited (a reference on white, a mask on
black: a transparent pixel is not the subject), and a reference's extreme aspect ratio padded (see
`MAX_ASPECT_RATIO`) after scaling it to at most `MAX_PADDED_SIDE`, so the padding never makes a huge image.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import FlexIPError

# The encoders resize the short side to their input size and centre-crop. Beyond this ratio the crop would keep
# a sliver of the picture and the resize would make a huge intermediate image, so the short side is padded.
MAX_ASPECT_RATIO = 4.0
BACKGROUND = (255, 255, 255)  # fills transparency and padding
# The long side of a padded reference: the encoders take a few hundred pixels; without a bound, padding a
# 25000 x 1000 picture to 4:1 would make a 156-megapixel image.
MAX_PADDED_SIDE = 4096
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


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
    image = _upright_8_bit(image)
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


def _upright_8_bit(image: Image.Image) -> Image.Image:
    """The first frame, EXIF rotation applied, 16-bit grey scaled to 8-bit (floating point left as it is)."""
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT:
        image = image.convert("I")
    if image.mode == "I":
        # 16-bit grey: a plain convert("L") clips everything above 255 to white; scale 0..65535 to 0..255.
        image = image.point(lambda value: value * (1 / 256)).convert("L")
    return image


def padded_size(width: int, height: int) -> tuple[int, int]:
    """The (width, height) a picture of this size is handed to the encoders at: padded to `MAX_ASPECT_RATIO`."""
    if max(width, height) <= MAX_ASPECT_RATIO * min(width, height):
        return width, height
    long_side = max(width, height)
    short_side = -(-long_side // int(MAX_ASPECT_RATIO))  # ceil
    return (long_side, short_side) if width >= height else (short_side, long_side)


def _pad_extreme_aspect_ratio(image: Image.Image) -> Image.Image:
    if padded_size(*image.size) == image.size:
        return image
    if max(image.size) > MAX_PADDED_SIDE:  # scale first, so that the padded image is bounded
        image = image.copy()
        image.thumbnail((MAX_PADDED_SIDE, MAX_PADDED_SIDE), Image.Resampling.LANCZOS)
    width, height = image.size
    size = padded_size(width, height)
    canvas = Image.new("RGB", size, BACKGROUND)
    canvas.paste(image, ((size[0] - width) // 2, (size[1] - height) // 2))
    return canvas


def load_mask_image(mask: str | os.PathLike, name: str = "mask") -> Image.Image:
    """A mask file (white = the subject) -> a grayscale image as drawn (`mask_to_gray`); a FlexIPError naming
    `name` if it cannot be read or is a decompression bomb (over PIL's limit, where PIL only warns, too)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(mask) as image:
                image.load()
                return mask_to_gray(image, name)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise FlexIPError(f"{name} is too large to decode safely ({e}); give it at the image's size") from e
    except (OSError, SyntaxError, ValueError) as e:  # PIL reports unreadable, corrupt and truncated data so
        raise FlexIPError(f"{name}: cannot read the image ({e}); give a PNG or JPEG, white = subject") from e


def mask_to_gray(mask: Image.Image, name: str = "mask") -> Image.Image | np.ndarray:
    """A PIL mask of any mode, upright: 8-bit grayscale, or a float array of 0..1 for floating-point pixels (as
    a float array is read). Transparency is composited on black: a transparent pixel is not the subject."""
    mask = _upright_8_bit(mask)
    if mask.mode == "F":
        return np.asarray(mask, dtype=np.float32)
    if mask.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mask.mode == "P" and "transparency" in mask.info):
        rgba = mask.convert("RGBA")
        mask = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        mask.alpha_composite(rgba)
    return mask.convert("L")
