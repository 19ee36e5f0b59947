"""Checkpoints: the full training state, written atomically, the newest K kept, resumed exactly.

    <run>/checkpoints/checkpoint-00001000/
        adapter/                the adapter directory (`flexip generate --adapter` loads it; resume reads its weights)
        optimizer.bin, ...      accelerate's `save_state`: optimizer, grad scaler, RNG states
        training_state.json     step, stream position, skipped samples, each process's parameter hash

Under FSDP2 and DeepSpeed, sharded.py writes the state (DeepSpeed's engine adds pytorch_model/, its own
optimizer partitions), `parameter_hashes` holds the one gathered adapter's hash, and `strategy` says which wrote
it: a checkpoint resumes under the strategy that wrote it.

Every process writes into `.tmp-checkpoint-N`, and the main process renames it only when all are done: a
crash leaves at most a `.tmp-*` folder, which `--resume latest` never picks. `training_state.json` lists every
file's size, so a checkpoint damaged later (a full disk, a truncating copy, a file deleted) is recognised:
`--resume latest` moves it aside as `damaged-checkpoint-N` (never deleted, never rotated) and continues from the
newest whole one. The frozen models are not saved: a checkpoint is the adapter plus the optimizer, not a copy
of Stable Diffusion.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import gather_object
from safetensors.torch import load_file
from torch import nn

from ..atomic import atomic_write_bytes
from ..errors import FlexIPError
from ..models.adapter import FlexIPAdapter
from ..models.config_file import WEIGHTS_NAME
from .sharded import adapter_state, load_state, save_state, strategy, write_adapter

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
STATE_NAME = "training_state.json"
OPTIMIZER_NAME = "optimizer.bin"  # accelerate's name for the first optimizer's state
ADAPTER_DIR = "adapter"

logger = get_logger(__name__)


@dataclass
class TrainingState:
    """What, besides accelerate's state, a resumed run needs to continue exactly."""

    step: int = 0  # optimizer steps done
    samples: int = 0  # stream positions consumed by all processes together (data.MixedBatchSampler's start)
    skipped: int = 0  # unreadable samples skipped so far, all processes
    # Streaming (data.shards, data.cache): {"lanes": L, "places": {lane: {modality: place}}}, where each lane's
    # readers stand after the batches consumed (stream.py); empty for a manifest.
    stream: dict = field(default_factory=dict)


def parameter_hash(adapter: FlexIPAdapter) -> str:
    """SHA-256 of every adapter tensor: equal on all processes when DDP keeps them in sync."""
    digest = hashlib.sha256()
    for name, tensor in sorted(adapter.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def register_hooks(accelerator: Accelerator, adapter: FlexIPAdapter) -> None:
    """Make `save_state`/`load_state` store the adapter directory instead of the whole wrapped model (one process
    or DDP: sharded.py saves the sharded strategies' adapter itself)."""
    if strategy(accelerator) != "ddp":
        return

    def save(models, weights, output_dir):
        weights.clear()  # the wrapped model's state dict holds the frozen UNet too
        if accelerator.is_main_process:
            adapter.save_pretrained(Path(output_dir) / ADAPTER_DIR)

    def load(models, input_dir):
        models.clear()  # nothing for accelerate to load: the adapter is loaded here
        weights = Path(input_dir) / ADAPTER_DIR / WEIGHTS_NAME
        try:
            adapter.load_state_dict(load_file(weights))
        except (OSError, RuntimeError) as e:
            reason = str(e).strip().splitlines()[0]
            raise FlexIPError(
                f"checkpoint {input_dir}: its adapter does not fit the configured one ({reason}); resume with the "
                "config it was trained with"
            ) from e

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    directory = Path(run_dir) / "checkpoints"
    if not directory.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in directory.iterdir()
        if (m := CHECKPOINT_NAME.match(p.name)) and p.is_dir()
    ]
    return [path for _, path in sorted(found)]


def damage(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be resumed from, or None when it is whole."""
    try:
        record = json.loads((path / STATE_NAME).read_text())
        TrainingState(step=record["step"], samples=record["samples"], skipped=record["skipped"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{STATE_NAME} is missing or unreadable ({e})"
    # Checkpoints older than the size record are checked for the two files a resume cannot do without.
    files = record.get("files") or {f"{ADAPTER_DIR}/{WEIGHTS_NAME}": None, OPTIMIZER_NAME: None}
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if size is not None and file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes of the {size} written"
    return None


def resolve_resume(resume: str, run_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The checkpoint `resume` names and the damaged ones skipped for it, each with its reason.

    `latest` is the newest whole checkpoint of the run (None if there is none yet); a path must be whole.
    """
    if resume == "latest":
        damaged = []
        for path in reversed(list_checkpoints(run_dir)):
            reason = damage(path)
            if reason is None:
                return path, damaged
            damaged.append((path, reason))
        return None, damaged
    path = Path(resume)
    if not (path / STATE_NAME).is_file():
        raise FlexIPError(
            f"--resume {resume}: not a checkpoint (needs {STATE_NAME} and {ADAPTER_DIR}/); give a "
            "<run>/checkpoints/checkpoint-N folder or `latest`"
        )
    reason = damage(path)
    if reason is not None:
        raise FlexIPError(f"--resume {resume}: the checkpoint is damaged ({reason}); resume from an older one")
    return path, []


def recorded_lanes(path: Path) -> int | None:
    """The lanes the stream of the (whole) checkpoint at `path` was cut into; None for a run from a manifest."""
    return json.loads((path / STATE_NAME).read_text()).get("stream", {}).get("lanes")


def move_aside(path: Path) -> Path:
    """Rename a damaged checkpoint out of rotation (`damaged-checkpoint-N`, numbered if taken); returns it."""
    target, number = path.with_name(f"damaged-{path.name}"), 1
    while target.exists():
        number += 1
        target = path.with_name(f"damaged-{path.name}-{number}")
    os.replace(path, target)
    return target


def save_checkpoint(
    accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer, adapter: FlexIPAdapter,
    state: TrainingState, run_dir: Path, keep: int,
) -> Path:  # fmt: skip
    """Write the full state at `state.step` on every process; returns the checkpoint folder.

    `model` and `optimizer` are the ones `accelerator.prepare` returned.
    """
    directory = Path(run_dir) / "checkpoints"
    final = directory / f"checkpoint-{state.step:08d}"
    if final.is_dir():
        return final  # this step is already saved (a run interrupted right after it resumed)
    tmp = directory / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash during this step's save
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    sharded = strategy(accelerator) != "ddp"
    if not sharded:
        accelerator.save_state(str(tmp))
        hashes = gather_object([parameter_hash(adapter)])
    else:
        save_state(accelerator, model, optimizer, tmp)
        weights, hashes = adapter_state(accelerator, model, adapter), []
        if accelerator.is_main_process:
            hashes = [parameter_hash(write_adapter(adapter.config, weights, tmp / ADAPTER_DIR))]
        accelerator.wait_for_everyone()  # every process's files are written before the main one lists them
    if accelerator.is_main_process:
        if len(set(hashes)) > 1:
            logger.warning(
                f"the processes' adapter weights differ at step {state.step} (hashes {hashes}): DDP is out of sync"
            )
        files = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
        record = {
            **asdict(state), "num_processes": accelerator.num_processes, "parameter_hashes": hashes, "files": files
        }  # fmt: skip
        if sharded:
            record["strategy"] = strategy(accelerator)
        atomic_write_bytes(tmp / STATE_NAME, (json.dumps(record, indent=2) + "\n").encode())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)
        for stale in directory.glob(".tmp-checkpoint-*"):  # saves a killed run never finished
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def export_adapter(accelerator: Accelerator, adapter: FlexIPAdapter, checkpoint: Path, directory: Path) -> None:
    """Write the adapter `flexip generate --adapter` loads (main process): under a sharded strategy, a copy of
    the one gathered into `checkpoint`, as the processes each hold only a part (FSDP2) or low-precision
    weights (DeepSpeed)."""
    if strategy(accelerator) == "ddp":
        adapter.save_pretrained(directory)
    else:
        FlexIPAdapter.from_pretrained(checkpoint / ADAPTER_DIR).save_pretrained(directory)


def load_checkpoint(
    accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer, adapter: FlexIPAdapter, path: Path
) -> TrainingState:
    """Restore accelerate's state and the adapter (through the hooks, or sharded.py's `load_state`) and return the
    training state."""
    try:
        record = json.loads((path / STATE_NAME).read_text())
        state = TrainingState(
            step=record["step"], samples=record["samples"], skipped=record["skipped"], stream=record.get("stream", {})
        )
    except (OSError, ValueError, KeyError) as e:
        raise FlexIPError(
            f"checkpoint {path}: {STATE_NAME} is unreadable ({e}); resume from another checkpoint"
        ) from e
    written, running = record.get("strategy", "ddp"), strategy(accelerator)
    if written != running:
        raise FlexIPError(
            f"checkpoint {path} was written under {written} and this run is under {running}: resume it with the "
            "accelerate config that wrote it (configs/accelerate/)"
        )
    try:
        if running == "ddp":
            accelerator.load_state(str(path))
        else:
            load_state(accelerator, model, optimizer, adapter, path)
    except FlexIPError:
        raise
    except Exception as e:  # torch and accelerate raise many types for a corrupt file of the right size
        raise FlexIPError(
            f"checkpoint {path} cannot be loaded ({str(e).strip().splitlines()[0]}); move it aside and resume "
            "from an older one with --resume <run>/checkpoints/checkpoint-N"
        ) from e
    return state
