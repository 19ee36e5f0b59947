"""What one request of the web page does, apart from the page: check its values, generate, write the results.

The page (`app/page.py`) hands `Service.run` the values of its controls; nothing here imports gradio, so a
test drives a request without a browser. The model is loaded once (`load_pipeline`); every request runs the
same library call as `flexip generate` (`front_end.generate`), so an image from the page equals the one its
"copy as command" line writes. The dial's controls become the library's `Dial`s, checked against the loaded
adapter's blocks as the command line and the Python call check them. Isolation between concurrent requests is
the library's: each pipeline call runs on its own copy of diffusers' per-call state (`pipeline/call.py`), and
`FlexIPInjection.encode_reference` keeps the features of the last few references, which is why moving only
the dial encodes nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import reprlib
import secrets
import shlex
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..contact_sheet import contact_sheet
from ..demo_subject import DEMO_REFERENCE
from ..errors import FlexIPError
from ..pipeline.front_end import (
    LoadedModel,
    dial_labels,
    dial_records,
    generate,
    note_demo_model,
    record,
    sweep_dial_record,
)
from ..pipeline.images import load_mask_image, load_reference_image
from ..pipeline.output import image_name, save_image
from ..pipeline.subjects import check_subjects
from ..schedulers import SCHEDULERS, make_scheduler
from ..settings.dial import Dial, dials, sweep_text
from ..settings.dial_text import parse_dials
from ..settings.generation import ModelSettings, SamplingSettings

MAX_UPLOAD_BYTES = 20 * 2**20  # the page refuses bigger files before they reach the server
MAX_PIXELS = 25_000_000  # a 5000 x 5000 picture; decoding more costs the server memory for no better subject
MAX_SWEEP = 9  # dial values in one sweep: one batch, so memory grows with it
MAX_STEPS = 150  # the steps slider's end: the schedulers allow 1000, each step a pass of the UNet per image
MAX_REFERENCES = 8  # each one encoded, and attended to in every layer at every step
MAX_TEXT = 2000  # characters in a text box; CLIP reads 77 tokens of a prompt, tokenizing more costs time
RESULTS_KEPT_SECONDS = 600  # the page's own copies (gradio's cache) outlive these; see Service.run
SHEET_NAME = "contact_sheet.png"


class Cancelled(Exception):
    """Raised inside a generation whose request was cancelled; the request ends at that step."""


@dataclass(frozen=True)
class Request:
    """One generation asked for by the page, checked."""

    reference: Image.Image  # RGB, as the encoders see it
    reference_name: str  # how the user knows the file: the command line and the settings name it
    prompt: str
    values: list[Dial]  # the dial: one value, or a sweep's values
    sampling: SamplingSettings
    scheduler: str
    # The advanced section: more images of the subject (or, with masks, more subjects), their weights, masks.
    more_references: tuple[Image.Image, ...] = ()
    more_names: tuple[str, ...] = ()
    reference_weights: list[float] | None = None
    masks: tuple[Image.Image, ...] | None = None
    mask_names: tuple[str, ...] | None = None

    def subjects(self) -> dict:
        """`reference` (one or a list), `reference_weights` and `reference_masks` of the library's call."""
        references = [self.reference, *self.more_references]
        return {"reference": references[0] if len(references) == 1 else references,
                "reference_weights": self.reference_weights,
                "reference_masks": None if self.masks is None else list(self.masks)}  # fmt: skip

    def record(self) -> dict:
        """The names `front_end.record` writes for the references and masks."""
        return {"reference": [self.reference_name, *self.more_names], "reference_weights": self.reference_weights,
                "reference_masks": None if self.mask_names is None else list(self.mask_names)}  # fmt: skip


@dataclass(frozen=True)
class Result:
    images: list[Path]  # one PNG per dial value, in dial order, each with its settings embedded
    values: list[Dial]
    labels: list[str]  # each value as the page shows it: with the raw g it stands for on a calibrated adapter
    sheet: Path | None  # a sweep's contact sheet
    command: str  # the `flexip generate` (or `sweep`) line that writes the same images
    report: str  # Markdown: what was reused and how long each part took


def read_reference(path: str | Path, name: str) -> Image.Image:
    """An uploaded file -> an RGB image; a FlexIPError naming the file as the user named it otherwise."""
    path = _checked_upload(path, name)
    try:
        return load_reference_image(path)
    except FlexIPError as e:  # its message names the server's temporary copy; the user knows the file name
        raise FlexIPError(str(e).replace(str(path), name)) from e


def read_mask(path: str | Path, name: str) -> Image.Image:
    """An uploaded mask -> a grayscale image as `flexip generate --mask` reads it (upright, white = the subject);
    a FlexIPError naming the file as the user named it otherwise."""
    path = _checked_upload(path, name)
    if path.stat().st_size == 0:
        raise FlexIPError(f"{name} is empty (0 bytes); upload the mask again")
    try:
        return load_mask_image(path, name)
    except FlexIPError as e:  # PIL's part of the message may name the server's temporary copy
        raise FlexIPError(str(e).replace(str(path), name)) from e


def _checked_upload(path: str | Path, name: str) -> Path:
    """Refuse an upload over the page's size limits before decoding it. The picture decoded is what is
    computed with: a reference of an extreme aspect ratio is scaled down before it is padded
    (`pipeline/images.py`), so padding stays within the limit."""
    path = Path(path)
    if path.stat().st_size > MAX_UPLOAD_BYTES:
        raise FlexIPError(f"{name} is larger than {MAX_UPLOAD_BYTES // 2**20} MB; upload a smaller picture")
    too_large = f"more than the {MAX_PIXELS / 1e6:g} megapixels this page takes; downscale it and try again"
    try:
        with Image.open(path) as image:  # the header only: the size before any decoding
            width, height = image.size
    except Image.DecompressionBombError:  # PIL refuses even to read the size of one this large
        raise FlexIPError(f"{name} is {too_large}") from None
    except (OSError, ValueError, SyntaxError):
        width = height = 0  # the reader says what is wrong with it
    if width * height > MAX_PIXELS:
        raise FlexIPError(f"{name} is {width} x {height} pixels, {too_large}")
    return path


def sweep_values(count: int) -> list[Dial]:
    """`count` dial values spread evenly from 0 to 1."""
    if isinstance(count, float) and count.is_integer():
        count = int(count)
    if isinstance(count, bool) or not isinstance(count, int) or not 2 <= count <= MAX_SWEEP:
        raise FlexIPError(f"sweep of {count!r} values: give a whole number from 2 to {MAX_SWEEP}")
    return dials([round(index / (count - 1), 4) for index in range(count)])


class Service:
    """The loaded model and the folder results are written to; `run` serves one request, from any thread."""

    def __init__(self, loaded: LoadedModel, models: ModelSettings, results: Path):
        self.loaded = loaded
        self.models = models
        self.results = results
        self._by_scheduler = {models.scheduler: loaded}
        self._lock = threading.Lock()

    def request(
        self, reference_path: str | None, reference_name: str, prompt: str, preservation: float,
        sweep: int | None, seed: int, randomize: bool, steps: int, guidance: float, scheduler: str,
        scale: float, negative_prompt: str, dial: str = "", more_references: list[tuple[str, str]] = (),
        reference_weights: str = "", masks: list[tuple[str, str]] = (),
    ) -> Request:  # fmt: skip
        """The page's values as a checked `Request` (a FlexIPError names the first bad one).

        The advanced section: `dial` in the command line's text forms (per block, a schedule; values between
        ';' for a sweep) replaces the slider; `more_references` and `masks` are (path, name) uploads,
        `reference_weights` comma-separated."""
        if not reference_path:
            raise FlexIPError("no reference: upload a picture of the subject, or pick the built-in example")
        if not _text(prompt, "prompt").strip():
            raise FlexIPError("the prompt is empty: say what to generate, e.g. 'a dog on the beach'")
        if _text(scheduler, "scheduler") not in SCHEDULERS:
            raise FlexIPError(f"scheduler {_shown(scheduler)} is not one of {', '.join(sorted(SCHEDULERS))}")
        values = self._dials(preservation, sweep, dial)
        sampling = _sampling(seed, randomize, steps, guidance, scale, negative_prompt)
        count = 1 + len(more_references)
        if max(count, len(masks)) > MAX_REFERENCES:  # before any is decoded
            raise FlexIPError(f"{count} references and {len(masks)} masks; this page takes at most {MAX_REFERENCES} "
                              "references, with one mask each or none")  # fmt: skip
        if _same_bytes(Path(reference_path), DEMO_REFERENCE):
            # the built-in example: the command line can name the real file
            reference_name = str(DEMO_REFERENCE)
        reference = read_reference(reference_path, reference_name)
        more = tuple(read_reference(path, name) for path, name in more_references)
        mask_images = tuple(read_mask(path, name) for path, name in masks) or None
        weights = _weights(reference_weights)
        check_subjects(1 + len(more), weights, mask_images, None)
        return Request(reference, reference_name, prompt, values, sampling, scheduler, more,
                       tuple(name for _, name in more_references), weights, mask_images,
                       tuple(name for _, name in masks) or None)  # fmt: skip

    def _dials(self, preservation, sweep: int | None, dial: str) -> list[Dial]:
        """The dial's value, or a sweep's values: the advanced text's forms (values between ';' for a sweep)
        when given, else `sweep` values from 0 to 1, else the slider's number; each checked against the loaded
        adapter's blocks, as its call checks them."""
        text = _text(dial, "dial").strip()
        if text:
            values = parse_dials(text, "dial")
            if len(values) > MAX_SWEEP:
                raise FlexIPError(f"dial: a sweep of {len(values)} values; give at most {MAX_SWEEP}")
        elif sweep:
            values = sweep_values(sweep)
        else:
            values = dials(_number(preservation, "preservation"))
        injection = self.loaded.pipe.flexip
        layers, names = list(injection.adapter.config.layers), injection.denoiser.block_names
        for value in values:
            value.resolve(layers, names)
        if text and bool(sweep) != (len(values) > 1):
            raise FlexIPError(
                f"dial {text}: " + ("a sweep needs several values, separated by ';' (or ',' between numbers "
                                    "and schedules)" if sweep else "one image takes one value; choose the sweep")
            )  # fmt: skip
        return values

    def run(self, request: Request, stop: threading.Event | None = None, on_step=None) -> Result:
        """Generate and write the results. Setting `stop`, from any thread, ends the generation at its next
        step (raises Cancelled); `on_step(done, total)` hears of each step."""
        stop = stop or threading.Event()
        loaded = self._loaded(request.scheduler)
        note_demo_model(loaded, [request.reference, *request.more_references], "flexip serve")
        injection = loaded.pipe.flexip
        reused = injection.is_encoded(request.reference)
        start = time.perf_counter()
        encoded = injection.encode_reference(request.reference)
        encoded_at = last_step_at = time.perf_counter()

        def step(done: int) -> None:
            nonlocal last_step_at
            last_step_at = time.perf_counter()
            if stop.is_set():
                raise Cancelled(f"after {done} of {request.sampling.steps} steps")
            if on_step is not None:
                on_step(done, request.sampling.steps)

        subjects = {**request.subjects(), "reference": encoded if not request.more_references
                    else [encoded, *request.more_references]}  # fmt: skip
        images = generate(loaded, request.prompt, values=request.values, sampling=request.sampling, on_step=step,
                          **subjects)  # fmt: skip
        done_at = time.perf_counter()
        paths, sheet = self._write(request, loaded, images)
        timings = (encoded_at - start, last_step_at - encoded_at, done_at - last_step_at)
        labels = dial_labels(loaded, request.values)
        return Result(paths, request.values, labels, sheet, self.command(request),
                      _report(request, labels, reused, timings))  # fmt: skip

    def _write(self, request: Request, loaded: LoadedModel, images: list) -> tuple[list[Path], Path | None]:
        """Each image as a PNG with its settings, and a sweep's contact sheet, in a fresh folder."""
        models = dataclasses.replace(self.models, scheduler=request.scheduler)
        settings = record(
            request.prompt, models=models, sampling=request.sampling, loaded=loaded, **request.record()
        )
        folder = self._new_folder()
        paths = []
        records = dial_records(loaded, request.values)
        for index, (value, image, recorded) in enumerate(zip(request.values, images, records)):
            paths.append(folder / image_name(index, value))
            save_image(image, paths[-1], {**settings, **recorded})
        if len(request.values) == 1:
            return paths, None
        labels = ["reference"] + [f"preservation {label}" for label in dial_labels(loaded, request.values)]
        title = f'"{request.prompt}"  (seed {request.sampling.seed})'
        sheet = folder / SHEET_NAME
        save_image(contact_sheet([[request.reference, *images]], labels, title=title), sheet,
                   {**settings, **sweep_dial_record(loaded, request.values)})  # fmt: skip
        return paths, sheet

    def _loaded(self, scheduler: str) -> LoadedModel:
        """The model with `scheduler`: one pipeline object per scheduler, all sharing the loaded models."""
        with self._lock:
            if scheduler not in self._by_scheduler:
                pipe = copy.copy(self.loaded.pipe)  # shallow: the UNet, VAE, encoders and adapter are shared
                pipe.scheduler = make_scheduler(scheduler, self.loaded.pipe.scheduler)
                self._by_scheduler[scheduler] = dataclasses.replace(self.loaded, pipe=pipe)
            return self._by_scheduler[scheduler]

    def _new_folder(self) -> Path:
        """A fresh folder for one request's files, removing those of requests long done.

        The page serves gradio's copies of the files (its cache, cleaned on its own schedule), so these are
        only needed until the request's answer is sent; the age keeps this folder from growing.
        """
        self.results.mkdir(parents=True, exist_ok=True)
        for old in self.results.iterdir():
            if time.time() - old.stat().st_mtime > RESULTS_KEPT_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        folder = self.results / uuid.uuid4().hex
        folder.mkdir()
        return folder

    def command(self, request: Request) -> str:
        """The command line that writes the same images."""
        sampling, models = request.sampling, self.models
        sweep = len(request.values) > 1
        words = ["flexip", "sweep" if sweep else "generate"]
        for name in (request.reference_name, *request.more_names):
            words += ["--reference", name]
        for name in request.mask_names or ():  # the n-th --mask belongs to the n-th --reference
            words += ["--mask", name]
        if request.reference_weights is not None:
            words += ["--reference-weights", ",".join(f"{w:g}" for w in request.reference_weights)]
        words += ["--prompt", request.prompt, "--preservation", sweep_text(request.values),
                  "--seed", str(sampling.seed), "--steps", str(sampling.steps), "--guidance", f"{sampling.guidance:g}",
                  "--scale", sampling.scale.text(), "--scheduler", request.scheduler]  # fmt: skip
        if sampling.negative_prompt:
            words += ["--negative-prompt", sampling.negative_prompt]
        for flag, value in [("--adapter", models.adapter), ("--base", models.base), ("--base-config", models.base_config),
                            ("--device", models.device), ("--dtype", models.dtype)]:  # fmt: skip
            if value is not None:
                words += [flag, value]
        words += ["--out", "sweep/" if sweep else "flexip.png"]
        return shlex.join(words)


def _sampling(seed, randomize, steps, guidance, scale, negative_prompt) -> SamplingSettings:
    """The sampling controls as settings, with a seed drawn when `randomize`; the slider's `scale` becomes
    the settings' dial."""
    if not isinstance(randomize, bool):
        raise FlexIPError(f"random seed={_shown(randomize)} must be true or false")
    if randomize:
        seed = secrets.randbelow(2**32)
    steps = _whole(steps, "steps")
    if steps > MAX_STEPS:
        raise FlexIPError(f"steps={steps}: this page runs at most {MAX_STEPS}; give fewer (50 is usual)")
    return SamplingSettings(
        steps=steps, guidance=_number(guidance, "guidance"), scale=_number(scale, "scale"),
        seed=_whole(seed, "seed"), negative_prompt=_text(negative_prompt, "negative prompt") or None,
    )  # fmt: skip


def _weights(text: str) -> list[float] | None:
    """The reference weights' text box: comma-separated numbers, or empty for equal weights."""
    if not _text(text, "reference weights").strip():
        return None
    try:
        return [float(weight) for weight in text.split(",")]
    except ValueError:
        raise FlexIPError(f"reference weights {text!r}: give comma-separated numbers, e.g. 0.7,0.3") from None


def _same_bytes(path: Path, other: Path) -> bool:
    return path.stat().st_size == other.stat().st_size and path.read_bytes() == other.read_bytes()


def _whole(value, name: str) -> int:
    """A whole number from the page (its number boxes send floats such as 3.0)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FlexIPError(f"{name}={_shown(value)} must be a whole number")
    return value


def _number(value, name: str) -> float:
    """A number from the page: its API takes JSON, so text, lists and objects arrive here as they were sent."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FlexIPError(f"{name}={_shown(value)} is not a number")
    return float(value)


def _text(value, name: str) -> str:
    """A text box's value (None as empty), bounded by `MAX_TEXT`."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FlexIPError(f"{name}={_shown(value)} is not text; give a string")
    if len(value) > MAX_TEXT:
        raise FlexIPError(f"{name} is {len(value)} characters; give at most {MAX_TEXT}")
    return value


def _shown(value) -> str:
    """A value as an error message shows it: short, whatever was sent."""
    return reprlib.repr(value)


def _report(request: Request, labels: list[str], reused: bool, timings: tuple[float, float, float]) -> str:
    encode, denoise, decode = timings
    count = len(request.values)
    what = f"{count} images along the dial" if count > 1 else f"1 image at preservation {labels[0]}"
    reference = (
        f"reference features reused, not encoded again ({_ms(encode)})"
        if reused
        else f"reference encoded in {_ms(encode)} (kept: moving the dial will not encode it again)"
    )
    return (
        f"{what}, seed {request.sampling.seed}: {reference}; denoise {_ms(denoise)} "
        f"({request.sampling.steps} steps); decode {_ms(decode)}"
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"
