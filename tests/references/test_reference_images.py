"""Reference images: unreadable files fail with a message naming them; every decodable form is converted."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from flexip import FlexIPError, ReferenceEncoder
from flexip.pipeline.images import MAX_ASPECT_RATIO, load_reference_image


def _gradient(width: int = 48, height: int = 40) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    y = np.linspace(0, 255, height, dtype=np.uint8)
    rgb = np.stack(
        [np.tile(x, (height, 1)), np.tile(y[:, None], (1, width)), np.full((height, width), 90, np.uint8)], -1
    )
    return Image.fromarray(rgb)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels but holds almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: tmp / "missing.png", "does not exist"),
        (lambda tmp: tmp, "is a directory"),
        (lambda tmp: _write(tmp / "empty.png", b""), "is empty"),
        (lambda tmp: _write(tmp / "notes.png", b"not a picture\n"), "not an image"),
        (lambda tmp: _write(tmp / "bomb.png", _png_header_only(30000, 30000)), "too large"),
    ],
    ids=["missing", "directory", "empty", "not-an-image", "decompression-bomb"],
)
def test_unreadable_reference_names_the_file(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(FlexIPError, match=message) as error:
        load_reference_image(path)
    assert str(path) in str(error.value)


def test_truncated_image_names_the_file(tmp_path):
    path = tmp_path / "cut.jpg"
    _gradient(64, 64).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FlexIPError, match="damaged or truncated") as error:
        load_reference_image(path)
    assert str(path) in str(error.value)


def test_unsupported_object_is_refused():
    with pytest.raises(FlexIPError, match="not supported"):
        load_reference_image(np.zeros((4, 4, 3)))


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def _sixteen_bit(tmp):
    values = np.linspace(0, 65535, 40 * 48).reshape(40, 48).astype(np.uint16)
    return _save(Image.fromarray(values), tmp / "deep.png")


def _animated(tmp):
    frames = [Image.new("RGB", (40, 30), color) for color in ((250, 0, 0), (0, 0, 250))]
    return _save(frames[0], tmp / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _exif_rotated(tmp):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return _save(_gradient(48, 24), tmp / "rotated.jpg", exif=exif)


CONVERTED = {
    "cmyk": lambda tmp: _save(_gradient().convert("CMYK"), tmp / "cmyk.jpg"),
    "rgba": lambda tmp: _save(_gradient().convert("RGBA"), tmp / "rgba.png"),
    "palette": lambda tmp: _save(_gradient().convert("P"), tmp / "palette.png"),
    "palette-transparent": lambda tmp: _save(_gradient().convert("P"), tmp / "palette.gif", transparency=0),
    "16-bit": _sixteen_bit,
    "grayscale": lambda tmp: _save(_gradient().convert("L"), tmp / "gray.png"),
    "grayscale-alpha": lambda tmp: _save(_gradient().convert("LA"), tmp / "gray_alpha.png"),
    "one-bit": lambda tmp: _save(_gradient().convert("1"), tmp / "bits.png"),
    "animated": _animated,
    "exif-rotated": _exif_rotated,
    "very-wide": lambda tmp: _save(_gradient(400, 3), tmp / "wide.png"),
    "very-tall": lambda tmp: _save(_gradient(2, 300), tmp / "tall.webp"),
}


@pytest.fixture(scope="module")
def encoder(tiny_models):
    return ReferenceEncoder.from_pretrained(tiny_models.image_encoder, tiny_models.dinov2)


@pytest.mark.parametrize("kind", list(CONVERTED))
def test_unusual_images_are_converted_and_encode(tmp_path, encoder, kind):
    image = load_reference_image(CONVERTED[kind](tmp_path))
    assert image.mode == "RGB"
    assert max(image.size) <= MAX_ASPECT_RATIO * min(image.size)
    encoded = encoder([image])
    assert encoded.clip_embeds.isfinite().all() and encoded.dino_tokens.isfinite().all()


def test_sixteen_bit_keeps_its_range(tmp_path):
    """A plain convert() would clip 16-bit values to white; the ramp must stay a ramp."""
    pixels = np.asarray(load_reference_image(_sixteen_bit(tmp_path)))
    assert pixels.min() == 0 and pixels.max() >= 250 and 100 < pixels.mean() < 155


def test_exif_rotation_is_applied(tmp_path):
    assert load_reference_image(_exif_rotated(tmp_path)).size == (24, 48)


def test_animation_gives_its_first_frame(tmp_path):
    red, _, blue = np.asarray(load_reference_image(_animated(tmp_path))).reshape(-1, 3).mean(0)
    assert red > 200 and blue < 50


def test_transparency_becomes_white(tmp_path):
    image = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    image.paste((0, 0, 255, 255), (5, 5, 15, 15))
    pixels = np.asarray(load_reference_image(_save(image, tmp_path / "cutout.png")))
    assert (pixels[0, 0] == 255).all() and tuple(pixels[10, 10]) == (0, 0, 255)


def test_pil_images_are_converted_too():
    image = load_reference_image(_gradient().convert("CMYK"))
    assert image.mode == "RGB" and image.size == (48, 40)
