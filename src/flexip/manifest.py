"""The training manifest (docs/formats.md): one JSON object per line, a reference/target pair with its caption.

One reader for everyone who takes manifests: training, data preparation and the demo world.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import FlexIPError
from .models.config import MODALITIES
from .text_files import read_jsonl

REQUIRED_FIELDS = ("reference", "target", "caption", "modality")
PATH_FIELDS = ("reference", "target", "mask")  # relative to the manifest's folder
STRING_FIELDS = (*REQUIRED_FIELDS, "mask", "source")
REMAKE = "give a training manifest: one JSON object per line (docs/formats.md)"


def read_manifest_records(path: str | os.PathLike, check_files: bool = False) -> list[dict]:
    """Every line of the manifest, checked against the format; `check_files` also requires every file to exist.

    Training leaves `check_files` off: a missing image there is skipped and counted when it is loaded, not a
    reason to refuse millions of good pairs.
    """
    path = Path(path)
    records = []
    for where, record in read_jsonl(path, REMAKE, what="manifest"):
        missing = [name for name in REQUIRED_FIELDS if name not in record]
        if missing:
            raise FlexIPError(
                f"{where}: missing field(s) {', '.join(missing)}; every line needs {', '.join(REQUIRED_FIELDS)}"
            )
        for name in STRING_FIELDS:
            if name in record and not isinstance(record[name], str):
                raise FlexIPError(f"{where}: field {name!r} must be a string, got {record[name]!r}")
        if record["modality"] not in MODALITIES:
            raise FlexIPError(
                f"{where}: modality {record['modality']!r} is not one of {', '.join(MODALITIES)}"
            )
        for name in PATH_FIELDS:
            if name not in record:
                continue
            if os.path.isabs(record[name]):
                raise FlexIPError(
                    f"{where}: {name} {record[name]!r} is absolute; paths are relative to the manifest"
                )
            if check_files and not (path.parent / record[name]).is_file():
                raise FlexIPError(f"{where}: {name} file {record[name]!r} not found in {path.parent}")
        records.append(record)
    if not records:
        raise FlexIPError(
            f"manifest {path} has no training pairs; each line is one JSON object (docs/formats.md)"
        )
    return records
