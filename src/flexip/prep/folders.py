"""Input folders and the files a preparation writes beside its manifest.

Manifest paths are relative to the manifest's folder (docs/formats.md). Pictures that cannot be used as they are
(EXIF-rotated, transparent, 16-bit...) and computed masks are written under `<out stem>-files/`, mirroring the
input folder, so two inputs never collide and a resumed run finds its own files again.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

from ..atomic import atomic_write_bytes
from ..errors import FlexIPError
from .progress import written_by

SIDECAR = ".txt"  # `photo.jpg` + `photo.txt`: an existing caption, imported instead of generated


def check_input_folder(folder: Path, what: str) -> Path:
    if not folder.exists():
        raise FlexIPError(f"input folder {folder} does not exist; give the folder holding your {what}")
    if not folder.is_dir():
        raise FlexIPError(f"input {folder} is a file, not a folder; give the folder holding your {what}")
    return folder


def scan_files(folder: Path, exclude: tuple[Path, ...] = (), out: Path | None = None) -> list[str]:
    """Every regular file under `folder` but hidden ones and caption sidecars, as sorted relative POSIX paths.

    Regular files only: opening a named pipe or a device found in the folder would wait forever or never end.
    Output folders inside the input (`exclude`) and the manifest `out` with the files written beside it (its
    report, progress and part files) are skipped: a re-run or a resumed run never takes its outputs as input.
    """
    skip = {p.resolve() for p in exclude}
    beside_out = out.resolve().parent if out is not None else None
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (Path(root) / d).resolve() not in skip)
        outputs_here = beside_out is not None and Path(root).resolve() == beside_out
        for name in files:
            if name.startswith(".") or name.endswith(SIDECAR) or (outputs_here and written_by(out, name)):
                continue
            if (path := Path(root) / name).is_file():
                found.append(path.relative_to(folder).as_posix())
    return sorted(found)


def no_files(folder: Path, what: str) -> FlexIPError:
    return FlexIPError(f"input folder {folder} holds no files; put your {what} in it (subfolders are searched)")


def sidecar_caption(path: Path) -> str | None:
    sidecar = path.with_suffix(SIDECAR)
    return sidecar.read_text(errors="replace").strip() if sidecar.is_file() else None


def files_dir(out: Path) -> Path:
    return out.with_name(f"{out.stem}-files")


def relative(path: Path, manifest_dir: Path) -> str:
    return Path(os.path.relpath(path, manifest_dir)).as_posix()


def write_png(image: Image.Image, path: Path) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def with_caption(row: dict, caption: str | None) -> dict:
    """`row` with the sidecar caption (and where it came from), or an empty caption for `prep caption`."""
    if caption:
        return {**row, "caption": caption, "caption_from": "sidecar"}
    return {**row, "caption": ""}
