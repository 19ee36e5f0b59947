"""Media for the data-preparation tests, made in the test: photos in odd modes and broken files, PyAV clips
(one with a scene cut, one truncated), a multi-view folder. Every picture is seeded noise at a low resolution
(noise gives each picture its own difference hash; its blocks survive JPEG)."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
from PIL import Image


def noise(seed: int, width: int = 64, height: int = 48) -> Image.Image:
    """Blocky seeded noise: 8 px blocks, so JPEG and resizing keep its structure."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (-(-height // 8), -(-width // 8), 3), dtype=np.uint8)
    return Image.fromarray(blocks.repeat(8, 0).repeat(8, 1)[:height, :width])


def write_photos(root: Path) -> Path:
    """A photo folder with every kind of file `prep images` must handle (see the names)."""
    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    noise(0).save(photos / "plain.png")
    (photos / "plain.txt").write_text("a photo with its own caption\n")
    noise(1).save(photos / "sub" / "original.jpg", quality=95)
    noise(1).save(photos / "sub" / "recompressed.jpg", quality=60)  # a near duplicate of original.jpg
    (photos / "sub" / "exact-copy.jpg").write_bytes((photos / "sub" / "original.jpg").read_bytes())
    rotated = noise(2, 64, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: upright it is 40 x 64
    rotated.save(photos / "rotated.jpg", exif=exif, quality=95)
    rgba = noise(3).convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.save(photos / "transparent.png")
    grey16 = np.asarray(noise(4).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey16).save(photos / "grey16.png")
    noise(5).convert("CMYK").save(photos / "cmyk.jpg")
    noise(6).convert("P").save(photos / "palette.gif")
    buffer = io.BytesIO()
    noise(7).save(buffer, format="JPEG")
    (photos / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (photos / "notes.md").write_text("not a picture")
    (photos / "empty.png").write_bytes(b"")
    noise(8, 12, 12).save(photos / "tiny.png")
    return photos


def write_masks(root: Path) -> Path:
    masks = root / "masks"
    masks.mkdir()
    Image.new("L", (64, 48), 0).save(masks / "plain.png")  # fits plain.png
    Image.new("L", (10, 10), 255).save(masks / "cmyk.png")  # wrong size
    cutout = Image.new("RGBA", (40, 64), (0, 0, 0, 0))
    cutout.paste((255, 0, 0, 255), (10, 10, 30, 50))
    cutout.save(masks / "rotated.png")  # a cut-out in the upright photo's size: its alpha is the mask
    return masks


def encode_clip(path: Path, seconds: float, fps: int = 10, size: int = 64, cut_at: float | None = None, seed: int = 0):
    """An MPEG-4 clip of a square sliding over a noise background; at `cut_at` the scene changes entirely."""
    rng = np.random.default_rng(seed)
    # Two scenes of other colours: a cold speckled ground, then a warm one.
    scenes = [np.asarray(noise(seed * 10 + i, size, size)) // 4 + np.array(tint, dtype=np.uint8)
              for i, tint in enumerate(((0, 60, 150), (150, 60, 0)))]  # fmt: skip
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(int(seconds * fps)):
            time = index / fps
            scene = 1 if cut_at is not None and time >= cut_at else 0
            frame = scenes[scene].copy()
            x = int((size - 16) * (index % (fps * 2)) / (fps * 2))
            frame[20:36, x : x + 16] = (255, 255, 255) if scene == 0 else (255, 40, 40)
            frame = np.clip(frame.astype(int) + rng.integers(-2, 3, frame.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_clips(root: Path) -> Path:
    clips = root / "clips"
    clips.mkdir()
    encode_clip(clips / "steady.mp4", 4.0, seed=1)
    (clips / "steady.txt").write_text("a white square slides over a speckled ground")
    encode_clip(clips / "cut.mp4", 4.0, cut_at=2.0, seed=2)
    encode_clip(clips / "whole.mp4", 4.0, seed=3)
    data = (clips / "whole.mp4").read_bytes()
    (clips / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (clips / "whole.mp4").unlink()
    (clips / "readme.mp4").write_text("not a video")
    return clips


def write_views(root: Path) -> Path:
    views = root / "objects"
    for name, count in (("mug", 3), ("lamp", 2), ("single", 1)):
        (views / name).mkdir(parents=True)
        for index in range(count):
            noise(100 + 10 * len(name) + index).save(views / name / f"view{index}.png")
    (views / "lamp" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (views / "mug" / "view1.txt").write_text("a mug seen from its side")
    return views
