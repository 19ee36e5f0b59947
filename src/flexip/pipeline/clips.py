"""Writing generated clips, each carrying the settings that made it: an `.mp4` (PyAV, the `prep` extra), a
`.gif`, or a folder of PNG frames; every file written atomically.

An mp4 is H.264 where the PyAV build has an H.264 encoder (MPEG-4 part 2 otherwise) in yuv420p, whose
chroma needs an even width and height: an odd side gains one copy of its last row or column. The settings
travel as JSON in the mp4's `comment` tag, the GIF's comment, and each PNG's `flexip` chunk, with the
clip's `frames` and `fps` (and each PNG its own `frame`, from 0). A folder holds one clip: writing one
replaces every frame an earlier clip left there.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_write_bytes
from ..errors import FlexIPError
from .output import save_image

# A clip's formats by the suffix that names them: "png" is a folder of PNG frames, a name without a suffix.
CLIP_FORMATS = {".mp4": "mp4", ".gif": "gif", "": "png"}
FRAME_NAME = "frame_{:03d}.png"
FRAME_FILE = re.compile(r"frame_\d{3,}\.png")
# Encoders by preference: H.264 plays everywhere; MPEG-4 part 2 is in every FFmpeg build.
MP4_CODECS = ("h264", "mpeg4")


def frame_names(count: int) -> list[str]:
    """The files of a clip of `count` frames written as a folder."""
    return [FRAME_NAME.format(index) for index in range(count)]


def frames_in(folder: Path) -> list[str]:
    """The names of the frames a clip written into `folder` left there (none for a folder that is not there)."""
    if not folder.is_dir():
        return []
    return sorted(path.name for path in folder.iterdir() if FRAME_FILE.fullmatch(path.name))


def clip_name(image_name: str, clip_format: str) -> str:
    """A sweep's clip named as its image would be (`output.image_name`), in `clip_format`."""
    suffix = next(suffix for suffix, named in CLIP_FORMATS.items() if named == clip_format)
    return image_name.removesuffix(".png") + suffix


def save_clip(frames: list[Image.Image], path: Path, settings: dict, fps: int, clip_format: str) -> None:
    """Write `frames` to `path` in `clip_format` ("mp4", "gif", or "png": a folder of PNGs), with `settings`."""
    settings = {**settings, "frames": len(frames), "fps": fps}
    if clip_format == "png":
        names = frame_names(len(frames))
        for index, (frame, name) in enumerate(zip(frames, names)):
            save_image(frame, path / name, {**settings, "frame": index})
        for stale in set(frames_in(path)) - set(names):  # a longer clip's, replaced: the folder holds one clip
            (path / stale).unlink()
        return
    comment = json.dumps(settings, sort_keys=True)
    data = _mp4_bytes(frames, fps, comment) if clip_format == "mp4" else _gif_bytes(frames, fps, comment)
    atomic_write_bytes(path, data)


def _gif_bytes(frames: list[Image.Image], fps: int, comment: str) -> bytes:
    """A GIF that loops forever. Pillow shows identical consecutive frames as one, for their total time."""
    buffer = io.BytesIO()
    first, *rest = (frame.convert("RGB") for frame in frames)
    first.save(buffer, format="GIF", save_all=True, append_images=rest, duration=round(1000 / fps), loop=0,
               comment=comment)  # fmt: skip
    return buffer.getvalue()


def mp4_codec() -> str:
    """The encoder an .mp4 is written with; one line saying what to install where PyAV or an encoder is
    missing (the command line asks before it starts)."""
    if importlib.util.find_spec("av") is None:
        raise FlexIPError(
            "writing an .mp4 needs PyAV: pip install 'flexip[prep]' (or write a .gif, or a folder of PNGs)"
        )
    import av

    for name in MP4_CODECS:
        if _has_encoder(av, name):
            return name
    raise FlexIPError(
        f"this PyAV build has none of the encoders {', '.join(MP4_CODECS)}: pip install 'flexip[prep]' "
        "(PyPI's PyAV wheels carry them), or write a .gif or a folder of PNGs"
    )


def _has_encoder(av, name: str) -> bool:
    try:
        av.Codec(name, "w")
    except ValueError:  # PyAV's UnknownCodecError
        return False
    return True


def _mp4_bytes(frames: list[Image.Image], fps: int, comment: str) -> bytes:
    codec = mp4_codec()
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        container.metadata["comment"] = comment
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = (side + side % 2 for side in frames[0].size)
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            pixels = _even(np.asarray(frame.convert("RGB")))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder's delayed frames
    return buffer.getvalue()


def _even(pixels: np.ndarray) -> np.ndarray:
    """(height, width, 3) pixels with an odd side grown by a copy of its last row or column."""
    height, width = pixels.shape[:2]
    return np.pad(pixels, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
