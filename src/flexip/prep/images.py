"""`flexip prep images`: a folder of photos -> invariant pairs (docs/method.md §3: the paper's SAM/BrushData).

An invariant pair's reference is its own target, the subject taken from the same picture: the trainer cuts the
reference out by the pair's mask (or crops it) at load time. Every file is decoded once to validate it; near
duplicates are dropped (`dedup.py`); masks come from a folder matched by file name, or from a segmentation model.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..errors import FlexIPError
from .dedup import check_distance, drop_duplicates
from .folders import (
    check_input_folder,
    files_dir,
    no_files,
    relative,
    scan_files,
    sidecar_caption,
    with_caption,
    write_png,
)
from .masks import SubjectSegmenter
from .pictures import Unusable, check_min_size, dhash, open_mask, open_picture
from .progress import Outcome, Summary, check_output, check_resume, problem, run_items
from .split import Part, process_device


def prepare_images(
    folder: Path,
    out: Path,
    *,
    masks: Path | None = None,
    mask_model: str | None = None,
    min_size: int = 256,
    dedup_distance: int = 4,
    part: Part = Part(),
    overwrite: bool = False,
) -> Summary:
    """Write the invariant pairs of every usable photo under `folder` to the manifest `out`.

    Masks come from the folder `masks` (named like the photos) or are computed by `mask_model` (`masks.py`).
    """
    check_min_size(min_size)
    check_distance(dedup_distance)
    folder, out = check_input_folder(Path(folder), "photos"), Path(out)
    if masks is not None and Path(masks).resolve() == folder.resolve():
        raise FlexIPError(f"--masks {masks} is the photos folder itself; give the folder holding the masks")
    check_output(out, part, overwrite)
    written = files_dir(out)
    items = scan_files(folder, exclude=(written, *([masks] if masks else [])), out=out)
    if not items:
        raise no_files(folder, "photos")
    mask_files = _index_masks(check_input_folder(Path(masks), "masks")) if masks else {}
    settings = {"input folder": str(folder.resolve()),
                "--masks": str(Path(masks).resolve()) if masks else None, "--mask-model": mask_model,
                "--min-size": min_size, "--dedup-distance": dedup_distance}  # fmt: skip
    check_resume(out, part, overwrite, settings)
    segmenter = SubjectSegmenter.from_pretrained(mask_model, process_device()) if mask_model else None

    def one(rel: str) -> Outcome:
        mask_path = mask_files.get(str(Path(rel).with_suffix("")))
        return _photo_pair(folder, rel, out, min_size, mask_path, segmenter)

    return run_items(
        out, items, lambda keys: [one(key) for key in keys], part=part, restart=overwrite,
        settings=settings,
        desc=f"photos{part.label}", unit="photo", finish=lambda rows: _drop_duplicates(folder, rows, dedup_distance),
    )  # fmt: skip


def _photo_pair(
    folder: Path,
    rel: str,
    out: Path,
    min_size: int,
    mask_path: Path | None,
    segmenter: SubjectSegmenter | None,
) -> Outcome:
    """The invariant pair of the photo `folder / rel` (none if it is unusable), with its mask if any."""
    path = folder / rel
    try:
        picture = open_picture(path, min_size)
    except Unusable as e:
        return Outcome(problems=[problem(path, e.kind, str(e))])
    written = files_dir(out)
    target = write_png(picture.image, written / "upright" / f"{rel}.png") if picture.needs_copy else path
    row = {
        "reference": relative(target, out.parent),
        "target": relative(target, out.parent),
        "modality": "image",
        "source": rel,
        "kind": "photo",
        "dhash": f"{dhash(picture.image):016x}",
    }
    mask, problems = _mask_file(picture.image, written / "masks" / f"{rel}.png", mask_path, segmenter)
    if mask is not None:
        row["mask"] = relative(mask, out.parent)
    return Outcome(rows=[with_caption(row, sidecar_caption(path))], problems=problems)


def _mask_file(
    image: Image.Image, copy: Path, mask_path: Path | None, segmenter: SubjectSegmenter | None
) -> tuple[Path | None, list[dict]]:
    """The photo's mask file (None: no mask) and the problems of a given mask. A given mask readable as it is
    is used in place; another, or a computed one, is written to `copy`."""
    if mask_path is None:
        return (None if segmenter is None else write_png(segmenter(image), copy)), []
    try:
        mask, needs_copy = open_mask(mask_path)
    except Unusable as e:
        return None, [problem(mask_path, e.kind, f"{e}; the pair is kept without a mask")]
    if mask.size != image.size:
        reason = f"mask is {mask.width}x{mask.height}, its photo {image.width}x{image.height}"
        return None, [problem(mask_path, "bad-mask", f"{reason}; the pair is kept without a mask")]
    return (write_png(mask, copy) if needs_copy else mask_path), []


def _index_masks(folder: Path) -> dict[str, Path]:
    """Masks by their path without extension: `masks/a/b.png` is the mask of `photos/a/b.jpg`."""
    return {str(Path(rel).with_suffix("")): folder / rel for rel in scan_files(folder)}


def _drop_duplicates(folder: Path, rows: list[dict], distance: int) -> tuple[list[dict], list[dict]]:
    kept, dropped = drop_duplicates(rows, distance)
    return kept, [{**p, "file": str(folder / p["file"])} for p in dropped]  # rows name photos inside `folder`
