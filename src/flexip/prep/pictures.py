"""Opening a user's picture once: validate it, orient it, flatten it, and fingerprint it for deduplication.

A picture that cannot be used raises `Unusable` with a reason for the report; the run goes on without it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import FlexIPError
from ..pipeline.images import padded_size, to_rgb

# Decompression-bomb guard: the header's size, padded as `to_rgb` pads it, is checked before any pixel is
# decoded. 64 megapixels is above any camera's photo and far below what would exhaust a worker's memory
# (4 bytes x 64M per copy).
MAX_PIXELS = 64_000_000
# Modes the trainer's `convert("RGB")` reads correctly as they are; others are written as a flattened copy.
PLAIN_MODES = ("RGB", "L")


class Unusable(Exception):
    """A file that cannot be used as training data; `kind` names the problem for the summary."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True)
class Picture:
    image: Image.Image  # RGB, upright
    needs_copy: bool  # the file as it is would train differently: write `image` as a PNG and point there


def check_min_size(min_size: int) -> None:
    if min_size < 0:
        raise FlexIPError(f"--min-size {min_size}: give a short side in pixels, 0 or more")


def check_pixels(width: int, height: int) -> None:
    """Raise `Unusable` if a picture of this size would be over `MAX_PIXELS` once padded for the encoders."""
    padded = padded_size(width, height)
    if padded[0] * padded[1] > MAX_PIXELS:
        shown = f"{width}x{height}"
        if padded != (width, height):
            shown += f" (padded {padded[0]}x{padded[1]})"
        raise Unusable("too-large", f"{shown} is over {MAX_PIXELS} pixels (decompression-bomb guard)")


def open_picture(path: Path, min_size: int) -> Picture:
    """Decode `path` fully; raise `Unusable` if it is not an image, damaged, too small or too large."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower, limit follows
            with Image.open(path) as file:
                width, height = file.size
                check_pixels(width, height)
                orientation = file.getexif().get(0x0112, 1)  # EXIF Orientation; 1 = as stored
                mode, animated = file.mode, getattr(file, "is_animated", False)
                file.load()  # decode now: a truncated file fails here
                image = to_rgb(file, name=str(path))
    except Unusable:
        raise
    except Image.DecompressionBombError as e:
        raise Unusable("too-large", str(e)) from None
    except UnidentifiedImageError:
        raise Unusable("not-an-image", "not an image PIL can read") from None
    except Exception as e:  # PIL reports damaged data with many types (OSError, SyntaxError, struct.error...)
        raise Unusable("damaged", f"damaged or truncated ({type(e).__name__}: {e})") from None
    if min(image.size) < min_size:
        raise Unusable("too-small", f"{image.width}x{image.height} is under --min-size {min_size} on its short side")
    needs_copy = orientation != 1 or mode not in PLAIN_MODES or animated or image.size != (width, height)
    return Picture(image, needs_copy)


def open_mask(path: Path) -> tuple[Image.Image, bool]:
    """(the mask as an L image, upright, white = subject; whether the file as it is would read differently).

    A picture with transparency (a cut-out) gives its alpha channel.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower, limit follows
            with Image.open(path) as file:
                if file.width * file.height > MAX_PIXELS:
                    limit = f"over {MAX_PIXELS} pixels (decompression-bomb guard)"
                    raise Unusable("bad-mask", f"mask {path} is {file.width}x{file.height}, {limit}")
                orientation = file.getexif().get(0x0112, 1)
                mode = file.mode
                image = ImageOps.exif_transpose(file)
                mask = image.getchannel("A") if "A" in image.getbands() else image.convert("L")
    except Unusable:
        raise
    except Exception as e:
        raise Unusable("bad-mask", f"mask {path} is unreadable ({type(e).__name__}: {e})") from None
    return mask, orientation != 1 or mode not in ("L", "1")


def dhash(image: Image.Image) -> int:
    """64-bit difference hash (Krawetz, "Kind of Like That", 2013): brighter-than-right-neighbour bits of a
    9x8 grey thumbnail. Re-encoding, resizing and small colour changes flip few bits; other pictures ~32."""
    grey = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int("".join("1" if bit else "0" for bit in bits), 2)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
