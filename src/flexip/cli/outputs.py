"""Where a command writes: checked before torch is imported, so that a name taken, a folder that cannot be
written or the reference itself is refused before any model loads."""

from __future__ import annotations

import os
from pathlib import Path

from ..atomic import check_writable
from ..errors import FlexIPError
from ..pipeline.output import SAVE_FORMATS


def check_output(path: str, references: list[str], overwrite: bool) -> Path:
    """`--out` as an image file that can be written."""
    out = Path(path)
    if out.suffix.lower() not in SAVE_FORMATS:
        raise FlexIPError(
            f"--out {path}: unknown image type {out.suffix!r}; end the name in .png, .jpg or .webp"
        )
    if out.is_dir():
        raise FlexIPError(f"--out {path} is a directory; give a file name such as {out / 'image.png'}")
    for reference in references:
        check_not_reference(out, reference)
    if out.exists() and not overwrite:
        raise FlexIPError(f"--out {path} already exists; pass --overwrite to replace it, or choose another name")
    return check_writable(out, "--out")


def check_output_directory(path: str, names: list[str], overwrite: bool, references: list[str] = ()) -> Path:
    """`--out` as a folder the files `names` can be written into."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise FlexIPError(f"--out {path} is a file; give a directory to write the sweep into")
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
