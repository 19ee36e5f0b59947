"""Where a command writes: checked before torch is imported, so that a name taken, a folder that cannot be
written or the reference itself is refused before any model loads."""

from __future__ import annotations

import os
from pathlib import Path

from ..atomic import check_writable
from ..errors import FlexIPError
from ..pipeline.clips import CLIP_FORMATS, frame_names, frames_in, mp4_codec
from ..pipeline.output import SAVE_FORMATS


def check_output(path: str, references: list[str], overwrite: bool) -> Path:
    """`--out` as an image file that can be written."""
    out = Path(path)
    if out.suffix.lower() in CLIP_FORMATS:
        raise FlexIPError(
            f"--out {path} names a clip: add --motion-adapter (an AnimateDiff motion adapter) to make one, or "
            "end the name in .png, .jpg or .webp"
        )
    if out.suffix.lower() not in SAVE_FORMATS:
        raise FlexIPError(
            f"--out {path}: unknown image type {out.suffix!r}; end the name in .png, .jpg or .webp"
        )
    return _check_file(out, "image.png", references, overwrite)


def check_clip_output(path: str, frames: int, references: list[str], overwrite: bool) -> tuple[Path, str]:
    """`--out` as a clip that can be written, and its format: .mp4 (PyAV installed), .gif, or a folder of
    `frames` PNGs (a name without a suffix)."""
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in CLIP_FORMATS:
        kind = "an image" if suffix in SAVE_FORMATS else f"an unknown type {out.suffix!r}"
        raise FlexIPError(
            f"--out {path} names {kind}, but --motion-adapter makes a clip: end the name in .mp4 or .gif, or give "
            "a folder (a name without a suffix) for its frames as PNGs"
        )
    clip_format = CLIP_FORMATS[suffix]
    if clip_format == "mp4":
        mp4_codec()
    if clip_format == "png":  # the frames it writes, and those of an earlier clip it would replace
        names = sorted({*frame_names(frames), *frames_in(out)})
        return check_output_directory(path, names, overwrite, references), clip_format
    return _check_file(out, "clip.mp4", references, overwrite), clip_format


def _check_file(out: Path, example: str, references: list[str], overwrite: bool) -> Path:
    """`out` as a file that can be written: not a folder, not a reference, not taken without `overwrite`."""
    if out.is_dir():
        raise FlexIPError(f"--out {out} is a directory; give a file name such as {out / example}")
    for reference in references:
        check_not_reference(out, reference)
    if out.exists() and not overwrite:
        raise FlexIPError(f"--out {out} already exists; pass --overwrite to replace it, or choose another name")
    return check_writable(out, "--out")


def check_output_directory(path: str, names: list[str], overwrite: bool, references: list[str] = ()) -> Path:
    """`--out` as a folder the files `names` can be written into."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise FlexIPError(f"--out {path} is a file; give a directory to write into")
    check_writable(out, "--out")
    for reference in references:
        for name in names:
            check_not_reference(out / name, reference)
    taken = [name for name in names if (out / name).exists()]
    if taken and not overwrite:
        raise FlexIPError(
            f"--out {path} already holds {taken[0]} ({len(taken)} of the files this command writes); pass "
            "--overwrite to replace them, or choose another --out"
        )
    return out


def check_not_reference(out: Path, reference: str) -> None:
    """Refuse to write over the reference image, whatever path (a link, another spelling) names it."""
    same = out.resolve() == Path(reference).resolve() or (
        out.exists() and Path(reference).exists() and os.path.samefile(out, reference)
    )
    if same:
        raise FlexIPError(f"--out {out} is the --reference image {reference}; write the result to another file")
