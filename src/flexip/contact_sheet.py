"""A labelled grid of images: one column per setting (e.g. the dial, left to right), one row per sample."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

MARGIN = 8  # pixels around tiles and text
TEXT_COLOR = (20, 20, 20)
BACKGROUND = (255, 255, 255)


def contact_sheet(
    rows: Sequence[Sequence[Image.Image]],
    labels: Sequence[str],
    title: str | None = None,
    tile_size: int = 192,
    row_labels: Sequence[str] | None = None,
) -> Image.Image:
    """Tiles scaled to `tile_size` px on their long side, `labels` above the columns, `title` on top, and
    `row_labels` (if given) on a line above each row.

    Small images are enlarged with nearest-neighbour sampling, so a 32 px picture shows its real pixels.
    """
    if not rows or any(len(row) != len(labels) for row in rows):
        raise ValueError(f"every row needs one image per label ({len(labels)})")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows")
    font = ImageFont.load_default(size=max(12, tile_size // 14))
    line_height = _text_height(font)
    title_height = line_height + MARGIN if title else 0
    label_height = line_height + MARGIN
    row_label_height = line_height + MARGIN if row_labels else 0
    row_height = row_label_height + tile_size + MARGIN
    width = MARGIN + len(labels) * (tile_size + MARGIN)
    height = MARGIN + title_height + label_height + len(rows) * row_height
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((MARGIN, MARGIN), _fit(draw, title, font, width - 2 * MARGIN), fill=TEXT_COLOR, font=font)
    top = MARGIN + title_height
    for column, label in enumerate(labels):
        left = MARGIN + column * (tile_size + MARGIN)
        draw.text((left, top), _fit(draw, label, font, tile_size), fill=TEXT_COLOR, font=font)
    for row_index, row in enumerate(rows):
        row_top = top + label_height + row_index * row_height
        if row_labels:
            draw.text((MARGIN, row_top), _fit(draw, row_labels[row_index], font, width - 2 * MARGIN),
                      fill=TEXT_COLOR, font=font)  # fmt: skip
        for column, image in enumerate(row):
            tile = _tile(image, tile_size)
            left = MARGIN + column * (tile_size + MARGIN) + (tile_size - tile.width) // 2
            upper = row_top + row_label_height + (tile_size - tile.height) // 2
            sheet.paste(tile, (left, upper))
    return sheet


def _tile(image: Image.Image, size: int) -> Image.Image:
    image = image.convert("RGB")
    factor = size / max(image.size)
    new_size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    resample = Image.Resampling.NEAREST if factor >= 1 else Image.Resampling.LANCZOS
    return image.resize(new_size, resample)


def _text_height(font: ImageFont.ImageFont) -> int:
    return font.getbbox("Ag")[3]  # (left, top, right, bottom)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """`text`, shortened with an ellipsis until it fits in `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."
