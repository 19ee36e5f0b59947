"""One run per folder: a fresh run never mixes with an earlier one, and a resume skips damaged checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

from accelerate.logging import get_logger

from ..errors import FlexIPError
from .checkpoint import move_aside, resolve_resume

logger = get_logger(__name__)

# What a run writes into its folder; a fresh run refuses a folder holding any of them unless told to delete them.
RUN_OUTPUTS = ("config.yaml", "metrics.jsonl", "logs", "samples", "checkpoints", "adapter", "adapter.partial")


def check_run_folder(run_dir: Path, resume: str | None, overwrite: bool) -> list[Path]:
    """The outputs of an earlier run to delete (with `overwrite`); refuses to mix two runs in one folder."""
    found = [run_dir / name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    if resume and overwrite:
        raise FlexIPError("--resume continues the run and --overwrite deletes it: give one of them")
    continuing = resume == "latest" or (
        resume is not None and Path(resume).resolve().parent == (run_dir / "checkpoints").resolve()
    )
    if found and not continuing and not overwrite:
        names = ", ".join(p.name for p in found)
        what = f"--resume {resume} would continue another run in it" if resume else "a fresh run would mix with it"
        raise FlexIPError(
            f"output_dir {run_dir} already holds a training run ({names}) and {what}: continue that run with "
            "--resume latest, start over with --overwrite (deletes those), or choose another --output-dir"
        )
    return found if overwrite else []


def delete_outputs(run_dir: Path, outputs: list[Path]) -> None:
    """`--overwrite`: delete the earlier run's outputs (only those: other files in the folder stay)."""
    for path in outputs:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    logger.info(f"--overwrite: deleted the earlier run's {', '.join(p.name for p in outputs)} in {run_dir}")


def resume_from_checkpoint(run_dir: Path, resume: str, main: bool) -> Path | None:
    """The checkpoint to continue from; the main process moves damaged newer ones aside and says why."""
    path, damaged = resolve_resume(resume, run_dir)
    for bad, reason in damaged:
        if main:
            logger.warning(f"skipped damaged checkpoint {bad} ({reason}); kept as {move_aside(bad)}")
    if path is None and damaged:
        raise FlexIPError(
            f"--resume latest: no whole checkpoint in {run_dir / 'checkpoints'} (the damaged ones are kept beside "
            "it as damaged-checkpoint-*); start over with --overwrite, or --resume one of them after repairing it"
        )
    return path
