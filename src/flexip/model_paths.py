"""How a model is named (a local folder, a hub id, or `owner/repo/sub/folder`) and loaded from that name safely:
weights from safetensors only, a folder of pickled weights refused with a line that says what to do, and a hub
id that can be neither found in the local cache nor downloaded refused at once with a line that says why.

Torch-free: every loader of a model path can use it, whatever it loads.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from huggingface_hub import constants, get_session, try_to_load_from_cache

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
    check_hub_model(reference, cls.__name__)
    path, subfolder = split_model_reference(reference)
    extra = {"subfolder": subfolder} if subfolder else {}
    try:
        return cls.from_pretrained(path, **extra, **kwargs)
    except OSError as e:
        raise FlexIPError(
            f"cannot load {cls.__name__} from {reference!r} ({str(e).rstrip('.')}). Give a local directory, or a hub id "
            "(optionally owner/repo/subfolder) whose weights are downloaded or reachable"
        ) from e


def check_hub_model(
    reference: str | os.PathLike, what: str, file: str = "config.json", revision: str | None = None
) -> None:
    """Refuse, in one line and at once, a hub id that is not in the local Hugging Face cache while the hub cannot
    be reached: the loaders would retry every file for about 20 s and then blame the file, not the network.

    `what` names the model for the user (a flag, a config key, a class); `file` is one the model always has, whose
    presence in the cache shows that the model was downloaded (a transformers or diffusers model's `config.json`,
    a pipeline's `model_index.json`, a weight file), relative to the reference's subfolder. A local path, a model
    in the cache and a hub that answers pass: the loader does the rest, as it would without this check.
    """
    reference = os.fspath(reference)
    repo, subfolder = split_model_reference(reference)
    if os.path.exists(repo) or repo.startswith((".", "/", "~")):
        return  # a local path: the loader says what is wrong with it
    file = posixpath.join(subfolder or "", file)
    try:
        cached = try_to_load_from_cache(repo, file, revision=revision)
    except ValueError:  # not a hub id either (huggingface_hub's validation error): the loader says so
        return
    if cached is not None:  # a path, or the cache's record that the file does not exist: the hub was asked
        return
    folder = posixpath.dirname(file)  # the model's own folder, where it is one folder of a larger repository
    download = f"hf download {repo}" + (f" --include '{folder}/*'" if folder else "")
    download += f" --revision {revision}" if revision else ""
    if constants.HF_HUB_OFFLINE:
        raise FlexIPError(
            f"{what} {reference!r} is neither a local path nor in the local Hugging Face cache, and HF_HUB_OFFLINE is "
            f"set: give a local path, or download it first with HF_HUB_OFFLINE unset (`{download}`)"
        )
    unreachable = _hub_unreachable()
    if unreachable:
        raise FlexIPError(
            f"{what} {reference!r} is neither a local path nor in the local Hugging Face cache, and the hub cannot be "
            f"reached ({unreachable}): give a local path, or download it first where the hub can be reached "
            f"(`{download}`)"
        )


def _hub_unreachable() -> str | None:
    """Why the hub gives no answer, or None when it answers (whatever it answers): one request, no retries, with
    the hub client's own session (its proxies and certificates) and metadata timeout (HF_HUB_ETAG_TIMEOUT)."""
    try:
        get_session().head(constants.ENDPOINT, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as e:  # noqa: BLE001 (the hub's HTTP library, and so its errors, differs across its versions)
        return f"{constants.ENDPOINT}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    return None


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
