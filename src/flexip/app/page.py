"""The web page of `flexip serve`: its layout, its events, and a server that is safe by default.

The page only lays out controls and passes their values to `Service` (`app/service.py`), which does the
work. Safe by default: it listens on 127.0.0.1 unless told otherwise, never makes a share link, refuses
uploads over `MAX_UPLOAD_BYTES`, serves no file but its uploads and results (no `allowed_paths`), and writes
only into one temporary folder, removed when the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import gradio as gr
from gradio.context import LocalContext

from ..demo_subject import DEMO_PROMPT, DEMO_REFERENCE
from ..errors import FlexIPError
from ..families.names import DEFAULT_GUIDANCE
from ..schedulers import SCHEDULERS
from ..settings.dial import PRESERVATION, SCALE
from ..settings.generation import SamplingSettings
from .service import MAX_STEPS, MAX_SWEEP, MAX_UPLOAD_BYTES, Cancelled, Service, read_reference

CONCURRENCY = 2  # generations at once; the others wait in the queue (one model, one device)
QUEUE_SIZE = 64  # waiting requests beyond which a new one is refused with "queue full"
CACHE_CLEANUP = (600, 3600)  # every 10 minutes, gradio deletes its copies of results older than an hour
ONE, SWEEP = "one image", "a sweep along the dial"
DEFAULTS = SamplingSettings()  # the page starts where `flexip generate` does
# The `generate` endpoint's inputs, in the order its API takes them.
INPUTS = ("reference", "prompt", "preservation", "mode", "count", "seed", "randomize", "steps", "guidance",
          "scheduler", "scale", "negative", "dial", "more", "weights", "masks")  # fmt: skip

BOX_PX = 360  # the height of the reference's and the result's boxes: fixed, so the page keeps its shape
TINY_PX = 128  # a picture at most this many pixels a side is shown with its pixels as squares
# Pictures are fitted to their boxes, small ones enlarged. A tiny one (the demo model's are 32 pixels) is
# enlarged by nearest neighbour, where the browser's smoothing would blur it past judging; only the display
# changes, a download is the file itself. Sweep captions wrap rather than end in an ellipsis.
CSS = """
#reference img, #result img { width: 100%; height: 100%; object-fit: contain; }
#gallery .caption-label { white-space: normal; overflow-wrap: anywhere; }
"""
JS = f"""() => {{
    const show = (image) => {{
        if (image instanceof HTMLImageElement && image.closest("#reference, #result, #gallery")) {{
            const tiny = Math.max(image.naturalWidth, image.naturalHeight) <= {TINY_PX};
            image.style.imageRendering = tiny ? "pixelated" : "";
        }}
    }};
    document.addEventListener("load", (event) => show(event.target), true);
    // and the pictures that loaded before this ran
    document.querySelectorAll("img").forEach((image) => image.complete && show(image));
}}"""

INTRO = """# flexip: the preservation dial
Give a picture of a subject and a prompt. **Preservation** near 1 keeps the subject's identity and detail; near
0 the prompt restyles it freely. Move the dial and generate again: the reference is encoded once."""


def build_page(service: Service) -> gr.Blocks:
    """The page's layout and events; `generate` is its one public API endpoint."""
    with gr.Blocks(title="flexip", analytics_enabled=False, delete_cache=CACHE_CLEANUP) as page:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column():
                controls = _main_controls()
                with gr.Accordion("Advanced", open=False):
                    controls.update(_advanced_controls(service))
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="run")
                    stop = gr.Button("Stop", elem_id="stop")
            with gr.Column():
                views = _result_views()
        _connect(service, controls, views, run, stop)
    return page


def _main_controls() -> dict[str, gr.components.Component]:
    """The reference, the prompt (or the built-in example) and the dial: one value, or a sweep from 0 to 1."""
    reference = gr.Image(label="reference (the subject)", type="filepath", sources=["upload", "clipboard"],
                         height=BOX_PX, elem_id="reference")  # fmt: skip
    prompt = gr.Textbox(label="prompt", placeholder="a dog on the beach", elem_id="prompt")
    gr.Examples([[str(DEMO_REFERENCE), DEMO_PROMPT]], [reference, prompt], label="built-in example",
                cache_examples=False)  # fmt: skip
    preservation = gr.Slider(0, 1, value=PRESERVATION.default, step=0.01, label="preservation",
                             elem_id="preservation")  # fmt: skip
    with gr.Row():
        mode = gr.Radio([ONE, SWEEP], value=ONE, label="generate", elem_id="mode")
        count = gr.Slider(2, MAX_SWEEP, value=5, step=1, label="sweep: values from 0 to 1", elem_id="count")
    return {
        "reference": reference,
        "prompt": prompt,
        "preservation": preservation,
        "mode": mode,
        "count": count,
    }


def _advanced_controls(service: Service) -> dict[str, gr.components.Component]:
    """Sampling settings, the dial's text forms, more references with their weights and masks."""
    with gr.Row():
        seed = gr.Number(DEFAULTS.seed, label="seed", precision=0, minimum=0, elem_id="seed")
        randomize = gr.Checkbox(False, label="random seed", elem_id="randomize")
    controls = {"seed": seed, "randomize": randomize}
    controls["steps"] = gr.Slider(1, MAX_STEPS, value=DEFAULTS.steps, step=1, label="steps", elem_id="steps")
    guidance = DEFAULT_GUIDANCE[service.loaded.pipe.flexip.family.name]  # the family's, as `flexip generate`
    controls["guidance"] = gr.Slider(0, 20, value=guidance, step=0.1, label="guidance (<= 1 turns it off)",
                                     elem_id="guidance")  # fmt: skip
    controls["scheduler"] = gr.Dropdown(sorted(SCHEDULERS), value=service.models.scheduler, label="scheduler",
                                        elem_id="scheduler")  # fmt: skip
    controls["scale"] = gr.Slider(0, 2, value=SCALE.default, step=0.05, label="adapter strength s (0 is the base model)",
                                  elem_id="scale")  # fmt: skip
    controls["negative"] = gr.Textbox("", label="negative prompt", elem_id="negative")
    controls["dial"] = gr.Textbox("", label="dial per block or over the steps, replacing the slider: "
                                  "down=0.9,mid=0.6,up=0.3 or 0.9:0.3 (a sweep: values between ';')",
                                  elem_id="dial")  # fmt: skip
    controls["more"] = gr.File(label="more references: the same subject, or with masks one subject each",
                               file_count="multiple", file_types=["image"], elem_id="more-references")  # fmt: skip
    controls["weights"] = gr.Textbox("", label="reference weights, the first reference first (e.g. 0.7,0.3)",
                                     elem_id="reference-weights")  # fmt: skip
    controls["masks"] = gr.File(label="masks, one per reference in order (white = the subject)",
                                file_count="multiple", file_types=["image"], elem_id="masks")  # fmt: skip
    return controls


def _result_views() -> dict[str, gr.components.Component]:
    """The status line, one image or a sweep with its contact sheet, and the same as a command: the `generate`
    endpoint's outputs, in its order."""
    return {
        "status": gr.Markdown(label="status", elem_id="status"),
        "image": gr.Image(label="result (PNG with its settings)", type="filepath", format="png", interactive=False,
                          height=BOX_PX, buttons=["download", "fullscreen"], elem_id="result"),
        "gallery": gr.Gallery(label="sweep: each image's preservation in its corner", columns=5, format="png",
                              object_fit="contain", height=BOX_PX, visible=False, elem_id="gallery"),
        "sheet": gr.File(label="contact sheet (PNG)", visible=False, elem_id="sheet"),
        "command": gr.Textbox(label="the same as a command", interactive=False, buttons=["copy"], elem_id="command"),
    }  # fmt: skip


def _connect(service: Service, controls: dict, views: dict, run: gr.Button, stop: gr.Button) -> None:
    """The page's events: generate (the API endpoint), stop it, check an upload, show the mode's outputs."""
    inputs = [controls[name] for name in INPUTS]
    outputs = [*views.values(), controls["seed"]]  # a random seed drawn shows in the seed box
    # No preprocessing: the image arrives as its upload record (gradio still checks that it is an upload),
    # so a broken file reaches read_reference, which says what is wrong, instead of failing inside gradio.
    generating = run.click(_generate(service), inputs, outputs, api_name="generate", preprocess=False,
                           show_progress_on=[views["image"], views["gallery"]])  # fmt: skip
    controls["reference"].upload(_check_upload, controls["reference"], views["status"], preprocess=False,
                                 api_visibility="private")  # fmt: skip
    controls["mode"].change(_show_mode, controls["mode"], [views["image"], views["gallery"], views["sheet"]],
                            api_visibility="private", queue=False)  # fmt: skip
    stop.click(lambda: "Stopped.", None, views["status"], cancels=[generating], queue=False,
               api_visibility="private")  # fmt: skip


def _generate(service: Service):
    """The `generate` endpoint: the controls' values in, (status, image, sweep, contact sheet, command, seed) out.

    The generation runs in a worker thread and stops at its next step however the request ends early: the Stop
    button, the API's cancel and the server stopping cancel this coroutine, which holds the request's place
    among the `CONCURRENCY` until the generation has stopped; a client that went away is seen at each step.
    """

    async def generate(reference, prompt, preservation, mode, sweep_count, seed, random_seed, steps, guidance,
                       scheduler, scale, negative_prompt, dial="", more=None, weights="", masks=None,
                       progress=gr.Progress()):  # noqa: B008 (gradio's way to ask for progress)  # fmt: skip
        stop = threading.Event()
        connected = _connection()

        def on_step(done: int, total: int) -> None:
            if not connected():
                stop.set()  # no one is waiting for the rest
            progress((done, total), desc="denoising")

        values = (reference, prompt, preservation, mode, sweep_count, seed, random_seed, steps, guidance, scheduler,
                  scale, negative_prompt, dial, more, weights, masks)  # fmt: skip
        work = asyncio.ensure_future(anyio.to_thread.run_sync(_answer, service, values, stop, on_step))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            stop.set()
            await asyncio.wait([work])
            raise

    return generate


def _answer(service: Service, values: tuple, stop: threading.Event, on_step) -> tuple:
    """One request, checked and run: the `generate` endpoint's outputs; a mistake is the status line's sentence."""
    (reference, prompt, preservation, mode, sweep_count, seed, random_seed, steps, guidance, scheduler, scale,
     negative_prompt, dial, more, weights, masks) = values  # fmt: skip
    upload = reference or {}
    try:
        if mode not in (ONE, SWEEP):
            raise FlexIPError(f"generate={mode!r:.40}: choose {ONE!r} or {SWEEP!r}")
        checked = service.request(
            upload.get("path"), upload.get("orig_name") or "the upload", prompt, preservation,
            sweep_count if mode == SWEEP else None, seed, random_seed, steps, guidance, scheduler, scale,
            negative_prompt, dial, _uploads(more), weights, _uploads(masks),
        )  # fmt: skip
        result = service.run(checked, stop, on_step)
    except FlexIPError as e:  # the seed box keeps what it had: the value sent may not be a number
        return f"**Error:** {e}", None, [], None, "", gr.skip()
    except Cancelled as e:
        return f"Stopped {e}.", None, [], None, "", gr.skip()
    images = [(str(path), label) for path, label in zip(result.images, result.labels)]
    if len(images) == 1:
        return result.report, images[0][0], [], None, result.command, checked.sampling.seed
    return result.report, None, images, str(result.sheet), result.command, checked.sampling.seed


def _connection():
    """Whether the client of the request being run is still there, as a function to ask at each step.

    gradio marks the event of a client whose stream closed (a closed tab, a dropped connection) as no longer
    alive, but lets a running function finish; the event is gradio's own, found through its request context.
    """
    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue = getattr(blocks, "_queue", None)
    event = queue.event_ids_to_events.get(event_id) if queue is not None and event_id else None
    return (lambda: True) if event is None else (lambda: event.alive)


def _uploads(files) -> list[tuple[str, str]]:
    """A multiple-file control's upload records as (server path, the user's file name)."""
    return [(item["path"], item.get("orig_name") or "the upload") for item in files or []]


def _check_upload(reference) -> str:
    """Say at once whether an upload can serve as a reference."""
    if not reference:
        return ""
    name = reference.get("orig_name") or "the upload"
    try:
        picture = read_reference(reference["path"], name)
    except FlexIPError as e:
        return f"**Error:** {e}"
    return f"Reference {name}: {picture.width} x {picture.height} pixels."


def _show_mode(mode: str):
    """One image shows in the image box; a sweep in the gallery, with its contact sheet."""
    sweep = mode == SWEEP
    return gr.update(visible=not sweep), gr.update(visible=sweep), gr.update(visible=sweep)


@contextlib.contextmanager
def running(service_factory, host: str = "127.0.0.1", port: int = 7860) -> Iterator[str]:
    """Serve the page in a background thread while inside; yields its URL.

    `service_factory(results_folder)` builds the `Service`. Everything the server writes (uploads, gradio's
    cache, results) goes into one temporary folder, removed on exit.
    """
    with tempfile.TemporaryDirectory(prefix="flexip-serve-") as folder:
        saved = {name: os.environ.get(name) for name in ("GRADIO_TEMP_DIR", "GRADIO_EXAMPLES_CACHE")}
        # gradio reads its folders from the environment when the page is built and when it launches, and
        # one of them when it is imported: the server makes a folder there at launch.
        os.environ["GRADIO_TEMP_DIR"] = str(Path(folder) / "gradio")
        os.environ["GRADIO_EXAMPLES_CACHE"] = str(Path(folder) / "examples")
        gr.routes.DEFAULT_TEMP_DIR = os.environ["GRADIO_TEMP_DIR"]
        page = build_page(service_factory(Path(folder) / "results"))
        page.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
        try:
            page.launch(
                server_name=host, server_port=port, share=False, prevent_thread_lock=True, quiet=True,
                show_error=False, max_file_size=MAX_UPLOAD_BYTES, allowed_paths=[], enable_monitoring=False,
                mcp_server=False, ssr_mode=False, pwa=False, footer_links=["api"], css=CSS, js=JS,
            )  # fmt: skip
        except OSError as e:
            raise FlexIPError(f"cannot listen on {host}:{port} ({e}); choose another --port or --host") from e
        try:
            yield page.local_url
        finally:
            page.close()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
