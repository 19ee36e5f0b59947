"""The labelled contact sheet: tiles in place and unaltered, labels drawn above their columns."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from flexip.contact_sheet import MARGIN, contact_sheet


def _tiles(count: int, size=(16, 16)):
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)
    ]


def test_tiles_are_placed_left_to_right_and_enlarged_pixel_for_pixel():
    rows = [_tiles(3), _tiles(3)]
    sheet = contact_sheet(
        rows, ["reference", "preservation 0", "preservation 1"], title="a dog", tile_size=64
    )
    assert sheet.width == MARGIN + 3 * (64 + MARGIN)
    pixels = np.asarray(sheet)
    label_bottom = sheet.height - 2 * (64 + MARGIN)  # the rows fill the bottom of the sheet
    for row_index, row in enumerate(rows):
        for column, tile in enumerate(row):
            left = MARGIN + column * (64 + MARGIN)
            top = label_bottom + row_index * (64 + MARGIN)
            expected = np.asarray(tile.resize((64, 64), Image.Resampling.NEAREST))
            np.testing.assert_array_equal(pixels[top : top + 64, left : left + 64], expected)
    assert (pixels[:label_bottom] < 128).any(), "title and labels are drawn above the tiles"


def test_long_labels_are_shortened_and_odd_shapes_fit():
    tall, wide = Image.new("RGB", (10, 40), "red"), Image.new("RGB", (300, 30), "blue")
    sheet = contact_sheet([[tall, wide]], ["x" * 200, "y"], tile_size=48)
    assert sheet.width == MARGIN + 2 * (48 + MARGIN)


def test_every_row_needs_one_image_per_label():
    with pytest.raises(ValueError, match="one image per label"):
        contact_sheet([_tiles(2)], ["only one"])


def test_row_labels_sit_above_their_rows():
    rows = [_tiles(2), _tiles(2)]
    plain = contact_sheet(rows, ["a", "b"], tile_size=32)
    labelled = contact_sheet(rows, ["a", "b"], tile_size=32, row_labels=["prompt one", "prompt two"])
    assert labelled.height > plain.height
    pixels = np.asarray(labelled)
    bottom_tile = np.asarray(rows[1][0].resize((32, 32), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(pixels[-(32 + MARGIN) : -MARGIN, MARGIN : MARGIN + 32], bottom_tile)
    with pytest.raises(ValueError, match="2 row labels for 1 rows"):
        contact_sheet([_tiles(2)], ["a", "b"], row_labels=["x", "y"])
