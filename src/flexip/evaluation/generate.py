"""Generating a method's images for a benchmark: resumable, every setting recorded, shared across processes.

One unit of work is (case, seed): the images of every dial value for one prompt and starting noise, made in
one go so that they differ only in the dial. Units are split across processes with accelerate; each image is
written atomically and its content depends only on its unit, so any number of processes, and any number of
interruptions and restarts, give the same files.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import PartialState
from PIL import Image
from tqdm import tqdm

from .. import __version__
from ..atomic import atomic_write_bytes
from ..errors import FlexIPError
from .benchmarks import Benchmark, Case
from .methods import Method, Unit
from .results import (
    GENERATION_FILE,
    PlannedImage,
    read_settings,
    readable_image,
    write_json,
    write_manifest,
)


def _variant(method: Method, dial: float | None) -> str:
    return method.name if dial is None else f"{method.dial_name}-{dial:g}"


def plan(method: Method, benchmark: Benchmark) -> list[Unit]:
    """The units of work in a fixed order: for each case and sample (seed), one image per dial value."""
    units = []
    for case in benchmark.cases:
        for file in method.samples(case):
            images = tuple(
                _planned(
                    case,
                    f"images/{_variant(method, dial)}/{case.subject}/{case.prompt_index:02d}/{file}",
                    Path(file).stem,
                    dial,
                )
                for dial in method.dials
            )
            units.append(Unit(case, file, images))
    return units


def _planned(case: Case, image: str, sample: str, dial: float | None) -> PlannedImage:
    return PlannedImage(image=image, sample=sample, dial=dial, **asdict(case))


def _check_resume(out: Path, settings: dict) -> None:
    """Refuse to mix settings in one results directory: its images would not be comparable."""
    if not (out / GENERATION_FILE).is_file():
        return
    previous = read_settings(out)
    # A generation.json without "family" (an older flexip's) is compared on the rest: its base decides it.
    previous.setdefault("family", settings.get("family"))
    changed = sorted(
        key for key in settings.keys() | previous.keys() if settings.get(key) != previous.get(key)
    )
    if changed:
        details = "; ".join(
            f"{key}: {previous.get(key)!r} before, {settings.get(key)!r} now" for key in changed
        )
        raise FlexIPError(
            f"{out} holds results made with other settings ({details}); give a new --out, or the "
            "same settings to resume"
        )


def generate(method: Method, benchmark: Benchmark, out: str | os.PathLike) -> int:
    """Make (or finish making) every image of `method` on `benchmark` under `out`; returns how many this
    process made. Run it in every process of an accelerate launch: the work is shared between them."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FlexIPError(f"--out {out} is a file; give a results directory (new, or one to finish)")
    # accelerate spreads processes without a GPU (over gloo) only when told they are CPU processes.
    state = PartialState(cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1)
    # Every process does all that can fail (the settings, the plan, the resume check, loading the models)
    # before any process writes or waits: a mistake stops each of them alike, none waits for a peer that
    # failed, and the directory is left as it was, so that a corrected rerun is not refused for "other
    # settings".
    settings = {
        "format_version": 1,
        "label": out.resolve().name,
        **method.settings(),
        "benchmark": {"name": benchmark.name, **benchmark.protocol},
        "flexip_version": __version__,
    }
    units = plan(method, benchmark)
    _check_resume(out, settings)
    # A damaged image (a killed copy, a full disk) counts as not made, so that it is made again.
    todo = [unit for unit in units if not all(readable_image(out / image.image) for image in unit.images)]
    # Loaded in every process, even one the split below leaves idle, so that a model that does not load fails
    # them all before the first wait.
    make = method.load(state.device) if todo else None
    if state.is_main_process:  # only now: generation.json stands for a run that got as far as making images
        write_json(out / GENERATION_FILE, settings)
        write_manifest(out, [image for unit in units for image in unit.images])
    state.wait_for_everyone()  # every process has listed the work left (above) before any adds to it
    made = 0
    with state.split_between_processes(todo) as mine:
        for unit in tqdm(
            mine, desc=f"generating {out.name}", unit="prompt", disable=not state.is_local_main_process
        ):
            for image, picture in zip(unit.images, make(unit)):
                if not readable_image(out / image.image):  # whole images already there are kept as they are
                    _save(picture, out / image.image)
                    made += 1
    state.wait_for_everyone()
    return made


def _save(picture: Image.Image | bytes, path: Path) -> None:
    if isinstance(picture, Image.Image):
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        picture = buffer.getvalue()
    atomic_write_bytes(path, picture)
