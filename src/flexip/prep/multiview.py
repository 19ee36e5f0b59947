"""`flexip prep views`: folders of several views of one object -> variant pairs (the paper's MVImageNet, CO3D...).

Layout (docs/formats.md): every folder that directly holds pictures is one object, its pictures its views:
`views/<object>/<view>.jpg`. A pair is two different views; they carry the `video` modality, like frames of
a clip, because the target is not in the reference (another pose, another side): the gate's video end trains
the Personalization branch to re-render the subject, while an `image` label would ask the Preservation branch
to copy a layout the reference does not have (docs/decisions/data-preparation.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from ..errors import FlexIPError
from .dedup import NearDuplicates, check_distance
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
from .pictures import Unusable, check_min_size, dhash, open_picture
from .progress import Outcome, Summary, check_output, problem, run_items
from .split import Part


def spread_pairs(count: int) -> Iterator[tuple[int, int]]:
    """All ordered pairs of `count` views, in rounds: (i, i + 1) for every i, then (i, i + 2)...

    Each view is the reference once per round, so a cap keeps every view in use, not the first view's pairs.
    Lazily: a cap of `max_pairs` costs `max_pairs`, however many views an object has.
    """
    return ((i, (i + step) % count) for step in range(1, count) for i in range(count))


def prepare_views(
    folder: Path,
    out: Path,
    *,
    min_size: int = 256,
    dedup_distance: int = 4,
    max_pairs: int = 8,
    part: Part = Part(),
    overwrite: bool = False,
) -> Summary:
    """Write the variant pairs of every object folder under `folder` to `out`."""
    if max_pairs < 1:
        raise FlexIPError(f"--max-pairs {max_pairs}: give 1 or more")
    check_min_size(min_size)
    check_distance(dedup_distance)
    folder, out = check_input_folder(Path(folder), "object folders"), Path(out)
    check_output(out, part, overwrite)
    written = files_dir(out)
    files = scan_files(folder, exclude=(written,), out=out)
    if not files:
        raise no_files(folder, "object folders (one folder of views per object)")
    views: dict[str, list[str]] = {}
    for rel in files:
        views.setdefault(Path(rel).parent.as_posix(), []).append(rel)

    def one(name: str) -> Outcome:
        # Near-identical views count once (the first of them): every pair of the views kept then differs.
        usable, problems, seen = [], [], NearDuplicates(dedup_distance) if dedup_distance >= 0 else None
        for rel in views[name]:
            path = folder / rel
            try:
                picture = open_picture(path, min_size)
            except Unusable as e:
                problems.append(problem(path, e.kind, str(e)))
                continue
            fingerprint = dhash(picture.image)
            if seen is not None:
                if seen.match(fingerprint) is not None:
                    continue
                seen.add(fingerprint, rel)
            target = write_png(picture.image, written / "upright" / f"{rel}.png") if picture.needs_copy else path
            usable.append((path, relative(target, out.parent)))
        pairs = list(islice(spread_pairs(len(usable)), max_pairs))
        if not pairs:
            problems.append(problem(folder / name, "no-pairs", f"{len(usable)} usable view(s) that differ; "
                "an object needs two or more different views"))  # fmt: skip
        rows = [
            with_caption({"reference": usable[i][1], "target": usable[j][1], "modality": "video",
                          "source": name, "kind": "views"}, sidecar_caption(usable[j][0]))  # fmt: skip
            for i, j in pairs
        ]
        return Outcome(rows, problems)

    return run_items(
        out, sorted(views), lambda keys: [one(key) for key in keys], part=part, restart=overwrite,
        settings={"input folder": str(folder.resolve()), "--min-size": min_size,
                  "--dedup-distance": dedup_distance, "--max-pairs": max_pairs},
        desc=f"objects{part.label}", unit="object",
    )  # fmt: skip
