"""`flexip prep caption`: captions for a manifest's targets, from a vision-language model or an existing column.

The paper captions its video frames with Qwen2-VL (docs/method.md §3) to improve instruction fidelity; image
pairs can be captioned the same way. Rows that already have a caption are kept as they are, so a re-run (or a run
over a manifest with sidecar captions) only captions what is missing. Each generated caption records its model
in `caption_from`.

The model is any Qwen2-VL-family checkpoint (Qwen2-VL, Qwen2.5-VL) that transformers loads with
`AutoModelForImageTextToText`. Its prompt is built here in the Qwen2-VL chat format rather than by
`Qwen2VLProcessor`, which insists on a video processor that needs torchvision (not a dependency).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..errors import FlexIPError
from ..manifest import PATH_FIELDS, read_manifest_records
from ..model_paths import check_hub_model
from .folders import relative
from .pictures import Unusable, open_picture
from .progress import Outcome, Summary, check_output, check_resume, problem, run_items
from .split import Part, process_device

PROMPT = "Describe this picture in one sentence: the main subject, what it looks like and does, and the setting."
# Qwen2-VL spends one token per 28x28 pixels; a caption gains nothing from more than ~450 px a side.
MAX_PIXELS = 448 * 448
# Targets are shrunk as they are opened to the most the processor could use (MAX_PIXELS at 4:1, the widest
# `to_rgb` leaves a picture), so a batch holds a few megapixels whatever the photos' size.
OPENED_SIDE = 2 * 448
MAX_NEW_TOKENS = 77  # the text encoder reads at most 77 tokens of it


class Captioner:
    """`captioner(images)` -> one caption per PIL image, in one batched greedy generation."""

    def __init__(self, model, tokenizer, image_processor, name: str):
        self.model, self.tokenizer, self.image_processor, self.name = model.eval(), tokenizer, image_processor, name
        self.tokenizer.padding_side = "left"  # generation continues every row from its last token

    @classmethod
    def from_pretrained(cls, name: str, device: str) -> Captioner:
        from transformers import AutoModelForImageTextToText, AutoTokenizer, Qwen2VLImageProcessorPil

        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        check_hub_model(name, "--model")
        try:
            model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(name)
            image_processor = Qwen2VLImageProcessorPil.from_pretrained(name, max_pixels=MAX_PIXELS)
        except (OSError, ValueError, KeyError) as e:
            raise FlexIPError(
                f"--model {name}: cannot load it as a Qwen2-VL-family captioner ({str(e).splitlines()[0]}); "
                "give a hub id or folder such as Qwen/Qwen2-VL-2B-Instruct"
            ) from e
        return cls(model.to(device), tokenizer, image_processor, name)

    @torch.no_grad()
    def __call__(self, images: list) -> list[str]:
        pixels = self.image_processor(images=images, return_tensors="pt")
        merge = self.image_processor.merge_size**2  # patches merged into one token
        prompts = [
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
            + "<|image_pad|>" * (int(grid.prod()) // merge)
            + f"<|vision_end|>{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
            for grid in pixels["image_grid_thw"]
        ]
        text = self.tokenizer(prompts, padding=True, return_tensors="pt")
        device = self.model.device
        generated = self.model.generate(
            input_ids=text["input_ids"].to(device),
            attention_mask=text["attention_mask"].to(device),
            pixel_values=pixels["pixel_values"].to(device, self.model.dtype),
            image_grid_thw=pixels["image_grid_thw"].to(device),
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
        )
        answers = self.tokenizer.batch_decode(generated[:, text["input_ids"].shape[1] :], skip_special_tokens=True)
        return [" ".join(answer.split()) for answer in answers]


def caption_manifest(
    manifest: Path,
    out: Path | None,
    *,
    model: str | None = None,
    from_column: str | None = None,
    batch_size: int = 8,
    part: Part = Part(),
    overwrite: bool = False,
) -> Summary:
    """Caption every uncaptioned row of `manifest` into `out` (None: rewrite `manifest` itself, atomically).

    Give exactly one of `model` (a Qwen2-VL-family hub id or folder) and `from_column` (a field of the rows
    holding existing captions).
    """
    if (model is None) == (from_column is None):
        raise FlexIPError("give a caption model or --from-column (one of them)")
    if batch_size < 1:
        raise FlexIPError(f"--batch-size {batch_size}: give 1 or more")
    manifest = Path(manifest)
    rows = read_manifest_records(manifest)
    in_place = out is None
    out = manifest if in_place else Path(out)
    check_output(out, part, overwrite or in_place)
    settings = {"MANIFEST": str(manifest.resolve()),
                "MANIFEST sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
                "--model": model, "--from-column": from_column}  # fmt: skip
    check_resume(out, part, overwrite, settings)
    captioner = Captioner.from_pretrained(model, process_device()) if model else None

    def work(keys: list[str]) -> list[Outcome]:
        outcomes = {key: Outcome(rows=[_rebased(rows[int(key)], manifest, out)]) for key in keys}
        todo = [key for key in keys if not rows[int(key)]["caption"].strip()]
        if from_column is not None:
            _copy_captions(outcomes, rows, todo, manifest, from_column)
        else:
            _generate_captions(outcomes, rows, todo, manifest, captioner)
        return list(outcomes.values())

    return run_items(
        out, [str(i) for i in range(len(rows))], work, part=part, restart=overwrite, batch_size=batch_size,
        settings=settings,
        desc=f"captions{part.label}", unit="row",
    )  # fmt: skip


def _rebased(row: dict, manifest: Path, out: Path) -> dict:
    """The row with its paths relative to `out`'s folder instead of the input manifest's."""
    moved = {name: relative(manifest.parent / row[name], out.parent) for name in PATH_FIELDS if name in row}
    return {**row, **moved}


def _copy_captions(
    outcomes: dict[str, Outcome], rows: list[dict], todo: list[str], manifest: Path, column: str
) -> None:
    """Caption the rows `todo` (keys: row numbers) from their text in `column`, or report it missing."""
    for key in todo:
        value = rows[int(key)].get(column)
        if isinstance(value, str) and value.strip():
            outcomes[key].rows[0].update(caption=value.strip(), caption_from=f"column:{column}")
        else:
            outcomes[key].problems.append(
                problem(manifest, "no-caption", f"line {int(key) + 1} has no text in {column!r}")
            )


def _generate_captions(
    outcomes: dict[str, Outcome], rows: list[dict], todo: list[str], manifest: Path, captioner: Captioner
) -> None:
    """Caption the rows `todo` (keys: row numbers) with `captioner`: one batch of their distinct targets."""
    images = {}  # target path -> image; rows sharing a target share one caption
    for key in todo:
        target = manifest.parent / rows[int(key)]["target"]
        if str(target) in images:
            continue
        try:
            image = open_picture(target, min_size=1).image
        except Unusable as e:
            outcomes[key].problems.append(problem(target, e.kind, f"{e}; left uncaptioned"))
            continue
        image.thumbnail((OPENED_SIDE, OPENED_SIDE))
        images[str(target)] = image
    captions = dict(zip(images, captioner(list(images.values())) if images else []))
    for key in todo:
        caption = captions.get(str(manifest.parent / rows[int(key)]["target"]))
        if caption is not None:
            outcomes[key].rows[0].update(caption=caption, caption_from=captioner.name)
