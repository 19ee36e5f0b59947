"""Measure how well the demo base model follows prompts: generate samples for random captions, let the judge
read them, report prompt match per attribute, and save a contact sheet.

    python -m recipes.demo.evaluate_base --model src/flexip/assets/demo --sheet docs/images/demo-base-samples.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from recipes.demo.base_model import DEFAULT_MODEL_DIR, load_pipeline
from recipes.demo.judge import DEFAULT_WEIGHTS, Judge
from recipes.demo.world import SCENE_ATTRIBUTES, caption, sample_scene


def random_captions(count: int, seed: int) -> list[str]:
    """Captions of random scenes (the world's scene distribution), fixed by `seed`."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    return [caption(sample_scene(rng)) for _ in range(count)]


@torch.no_grad()
def generate(pipeline, captions: list[str], steps: int, guidance: float, seed: int, batch_size: int = 50):
    """One image per caption; sample i depends only on (seed, i), not on the batch it falls in."""
    images = []
    for start in range(0, len(captions), batch_size):
        chunk = captions[start:start + batch_size]
        generators = [torch.Generator().manual_seed(seed * 100_003 + start + i) for i in range(len(chunk))]
        images += pipeline(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=generators).images
    return images


def contact_sheet(images: list[Image.Image], columns: int = 10, scale: int = 3) -> Image.Image:
    """Images in a grid, enlarged with nearest-neighbour so each pixel stays visible."""
    width, height = images[0].size
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (width + 1) - 1, rows * (height + 1) - 1), (255, 255, 255))
    for index, image in enumerate(images):
        sheet.paste(image, ((index % columns) * (width + 1), (index // columns) * (height + 1)))
    return sheet.resize((sheet.width * scale, sheet.height * scale), Image.Resampling.NEAREST)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m recipes.demo.evaluate_base", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="model set folder (with base/)")
    parser.add_argument("--judge", default=str(DEFAULT_WEIGHTS), help="judge weights (.safetensors)")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sheet", help="write a contact sheet of the samples to this PNG")
    parser.add_argument("--json", help="write the scores to this JSON file")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.steps < 1:
        raise SystemExit(f"--samples {args.samples} and --steps {args.steps} must each be at least 1")
    if args.guidance < 1:
        raise SystemExit(f"--guidance {args.guidance}: use 1 (no guidance) or more")
    try:
        pipeline = load_pipeline(args.model)
        judge = Judge.load(args.judge)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from e
    pipeline.set_progress_bar_config(disable=True)
    captions = random_captions(args.samples, args.seed)
    started = time.perf_counter()
    images = generate(pipeline, captions, args.steps, args.guidance, args.seed)
    seconds = time.perf_counter() - started
    scores = judge.prompt_match(images, captions)
    result = {
        "samples": args.samples, "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
        "generation_seconds": seconds,
        "prompt_match": {name: float(value.mean()) for name, value in scores.items()},
    }
    print("| attribute | prompt match |\n|---|---|")
    for name in (*SCENE_ATTRIBUTES, "mean"):
        print(f"| {name} | {result['prompt_match'][name]:.2f} |")
    print(f"{args.samples} samples, {args.steps} DDIM steps, guidance {args.guidance}: {seconds:.0f} s")
    if args.sheet:
        Path(args.sheet).parent.mkdir(parents=True, exist_ok=True)
        contact_sheet(images).save(args.sheet)
    if args.json:
        Path(args.json).write_text(json.dumps({**result, "captions": captions}, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
