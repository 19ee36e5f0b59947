"""How a model is named (a local folder, a hub id, or `owner/repo/sub/folder`) and loaded from that name safely:
weights from safetensors only, a folder of pickled weights refused with a line that says what to do.

Torch-free: every loader of a model path can use it, whatever it loads.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import FlexIPError

# Weight files that are Python pickles: loading one can run any code it holds.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def split_model_reference(reference: str | os.PathLike) -> tuple[str, str | None]:
    """A local directory, a hub id, or `owner/repo/sub/folder` -> (path or id, subfolder or None).

    Real encoders often sit in a repository's subfolder (IP-Adapter's CLIP-H is `h94/IP-Adapter/models/image_encoder`);
    one string names them everywhere (configs, adapter files, the command line).
    """
    reference = str(reference)
    if os.path.exists(reference):
        return reference, None
    parts = reference.split("/")
    if len(parts) > 2 and not reference.startswith((".", "/")):
        return "/".join(parts[:2]), "/".join(parts[2:])
    return reference, None


def load_pretrained(cls, reference: str | os.PathLike, **kwargs):
    """`cls.from_pretrained` on a model path (its subfolder passed as one), failing in one line that names it."""
    path, subfolder = split_model_reference(reference)
    extra = {"subfolder": subfolder} if subfolder else {}
    try:
        return cls.from_pretrained(path, **extra, **kwargs)
    except OSError as e:
        raise FlexIPError(
            f"cannot load {cls.__name__} from {reference!r} ({str(e).rstrip('.')}). Give a local directory, or a hub id "
            "(optionally owner/repo/subfolder) whose weights are downloaded or reachable"
        ) from e


def load_weights(cls, reference: str | os.PathLike, **kwargs):
    """A model with weights from a model path: from safetensors only, never unpickled."""
    path, subfolder = split_model_reference(reference)
    refuse_pickled_weights(Path(path, subfolder or ""), cls.__name__)
    return load_pretrained(cls, reference, use_safetensors=True, **kwargs)


def refuse_pickled_weights(folder: Path, what: str) -> None:
    """Refuse a local model folder whose weights are only pickles (`.bin`, `.pt`, ...), before a loader sees it.

    The loaders are also told to read safetensors only (`use_safetensors=True`); this check names the folder
    and says what to do, which their own error does not."""
    if not folder.is_dir():
        return
    files = [file for file in folder.iterdir() if file.is_file()]
    if any(file.suffix == ".safetensors" for file in files):
        return
    pickles = sorted(file.name for file in files if file.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise FlexIPError(
            f"{folder}: the {what} weights are only in pickle files ({', '.join(pickles)}), which flexip never opens "
            "(they can run code); convert them to safetensors (load the model and save_pretrained it)"
        )
