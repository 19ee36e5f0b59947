"""The controls on the demo model: a contact sheet for each form, and a schedule measured by the judge.

The sheets show two references of one subject, the dial per block, the dial over the steps, and two masked
subjects in one picture. The measurement generates the dial pairs of `recipes.demo.dial` at constant dials and
at linear schedules of the same mean g (a linear schedule over N steps visits progress i / (N - 1), so its mean
is (start + end) / 2 exactly) and compares the judge's identity and prompt match, pair by pair.

    python -m recipes.demo.control sheets --out runs/control
    python -m recipes.demo.control measure --pairs 60 --out runs/control

Files already in --out are replaced only with --overwrite (the README's sheets are docs/images/control-*.png).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flexip import DialSchedule
from flexip.settings.dial import Dial
from recipes.demo.dial import dial_pairs, measure
from recipes.demo.world import Scene, render, sample_identity

STEPS, GUIDANCE = 50, 7.5  # as `flexip demo` and the dial measurement
# Constant dials and the linear schedules of the same mean g, both ways.
MEASURED = [0.6, DialSchedule(0.9, 0.3), DialSchedule(0.3, 0.9), 0.5, DialSchedule(1.0, 0.0), DialSchedule(0.0, 1.0)]
SIZE = 32  # px: the demo model's pictures
# What each command writes into --out.
OUTPUTS = {"sheets": [f"control-{name}.png" for name in ("references", "blocks", "schedule", "masks")],
           "measure": ["control.json", "control.md"]}  # fmt: skip


def load_pipe():
    from flexip import FlexIPPipeline
    from flexip.pipeline.embedded import DEMO_MODEL_DIR

    pipe = FlexIPPipeline.from_pretrained(adapter=DEMO_MODEL_DIR / "adapter", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompt: str, seed: int, **kwargs) -> list[Image.Image]:
    generator = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=generator, **kwargs).images


def subject(seed: int, scenes: list[Scene]) -> list[Image.Image]:
    """One identity drawn in each of `scenes` (the same subject, several pictures)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 23]))
    identity = sample_identity(rng)
    return [render(identity, scene, rng, SIZE)[0] for scene in scenes]


def halves() -> tuple[Image.Image, Image.Image]:
    left = Image.new("L", (SIZE, SIZE), 0)
    left.paste(255, (0, 0, SIZE // 2, SIZE))
    return left, Image.eval(left, lambda value: 255 - value)


def sheets(pipe, out: Path) -> dict[str, Path]:
    """The four contact sheets (three subjects each), written into `out`."""
    from flexip.atomic import atomic_write_bytes
    from flexip.contact_sheet import contact_sheet
    from flexip.training.validation import png_bytes

    prompts = ["a large square on the center with grass background", "a large circle on the right with sand background",
               "a large star on the left with rose background"]  # fmt: skip
    written = {}

    def write(name: str, rows, labels, title, row_labels):
        sheet = contact_sheet(rows, labels, title=title, tile_size=96, row_labels=row_labels)
        written[name] = out / f"control-{name}.png"
        atomic_write_bytes(written[name], png_bytes(sheet))

    # Two references of one subject: the same identity in two scenes, alone and mixed.
    rows = []
    for index, prompt in enumerate(prompts):
        shape = prompt.split()[2]
        first, second = subject(index, [Scene(shape, "sky", "left", "small", "plain"),
                                        Scene(shape, "night", "right", "large", "plain")])  # fmt: skip
        mixes = [([first], None), ([second], None), ([first, second], None), ([first, second], [0.8, 0.2])]
        images = [generate(pipe, prompt, index, reference=refs, reference_weights=weights, preservation=0.6)[0]
                  for refs, weights in mixes]  # fmt: skip
        rows.append([first, second, *images])
    write("references", rows, ["reference A", "reference B", "A", "B", "A + B", "0.8 A + 0.2 B"],
          "two references of one subject, g = 0.6", prompts)  # fmt: skip

    # Per block: the scalar, and dicts that keep identity in some blocks and edits in others.
    dials = [0.6, {"down": 0.9, "mid": 0.6, "up": 0.3}, {"down": 0.3, "mid": 0.6, "up": 0.9},
             {"down": 0.0, "mid": 0.0, "up": 1.0}, {"down": 1.0, "mid": 1.0, "up": 0.0}]  # fmt: skip
    rows = []
    for index, prompt in enumerate(prompts):
        (reference,) = subject(10 + index, [Scene(prompt.split()[2], "sky", "center", "small", "plain")])
        rows.append([reference, *generate(pipe, prompt, index, reference=reference, preservation=dials)])
    labels = [f"{dial:g}" if isinstance(dial, float) else "/".join(f"{dial[part]:g}" for part in ("down", "mid", "up"))
              for dial in dials]  # fmt: skip
    write("blocks", rows, ["reference", *labels], "the dial per UNet block (down/mid/up)", prompts)

    # Over the steps: constant dials, and schedules from identity to edits and back.
    dials = [0.9, 0.3, 0.6, DialSchedule(0.9, 0.3), DialSchedule(0.3, 0.9), DialSchedule(1.0, 0.0)]
    rows = []
    for index, prompt in enumerate(prompts):
        (reference,) = subject(20 + index, [Scene(prompt.split()[2], "sky", "center", "small", "plain")])
        rows.append([reference, *generate(pipe, prompt, index, reference=reference, preservation=dials)])
    write("schedule", rows, ["reference", *(Dial(dial).text() for dial in dials)],
          "the dial over the steps (start:end)", prompts)  # fmt: skip

    # Two masked subjects in one picture: each subject's branches act only in its half.
    left, right = halves()
    rows = []
    for index, prompt in enumerate(prompts):
        shape = prompt.split()[2]
        first, second = (subject(30 + index + 7 * k, [Scene(shape, "sky", "center", "small", "plain")])[0]
                         for k in range(2))  # fmt: skip
        pictures = [generate(pipe, prompt, index, reference=first, preservation=0.7)[0],
                    generate(pipe, prompt, index, reference=second, preservation=0.7)[0],
                    generate(pipe, prompt, index, reference=[first, second], reference_masks=[left, right],
                             preservation=0.7)[0],
                    generate(pipe, prompt, index, reference=[first, second], reference_masks=[right, left],
                             preservation=0.7)[0]]  # fmt: skip
        rows.append([first, second, *pictures])
    write("masks", rows, ["subject A", "subject B", "A alone", "B alone", "A left, B right", "B left, A right"],
          "two masked subjects, g = 0.7", prompts)  # fmt: skip
    return written


def mask_confinement(pipe, pairs: int) -> dict:
    """Mean absolute change (0..255) inside and outside a left-half mask against the base model (s = 0), and the
    same subject's change without the mask, over `pairs` dial pairs at g = 0.7."""
    left, _ = halves()
    changes = {"masked": [], "unmasked": []}
    for index, pair in enumerate(dial_pairs(pairs, seed=3)):
        base, masked, free = (np.asarray(generate(pipe, pair.prompt, index, reference=pair.reference, preservation=0.7,
                                                  **extra)[0], dtype=np.float64)
                              for extra in ({"scale": 0.0}, {"reference_masks": [left]}, {}))  # fmt: skip
        for name, image in (("masked", masked), ("unmasked", free)):
            change = np.abs(image - base).mean(axis=2)
            changes[name].append((change[:, : SIZE // 2].mean(), change[:, SIZE // 2 :].mean()))
    result = {"pairs": pairs}
    for name, values in changes.items():
        inside, outside = np.mean(values, axis=0)
        result[name] = {"inside": float(inside), "outside": float(outside)}
    return result


def schedule_against_constant(pipe, judge, pairs: int, seeds: int, seed: int) -> dict:
    """Judge scores of every value of MEASURED on the dial pairs, and each schedule minus the constant dial of
    its mean g, with standard errors over pairs (the differences are paired: same pair, seed and noise)."""
    scores = measure(pipe, judge, dial_pairs(pairs, seed), seeds, MEASURED, STEPS, GUIDANCE)
    identity = scores.identity.mean(axis=1)  # (pairs, values): mean over seeds
    prompt = scores.prompt["mean"].mean(axis=1)

    def mean_sem(values: np.ndarray) -> list[float]:
        return [float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))]

    rows = []
    for index, value in enumerate(MEASURED):
        row = {"dial": Dial(value).record(), "text": Dial(value).text(),
               "identity": mean_sem(identity[:, index]), "prompt": mean_sem(prompt[:, index])}  # fmt: skip
        if isinstance(value, DialSchedule):
            mean = (value.start + value.end) / 2
            constant = next(i for i, v in enumerate(MEASURED) if isinstance(v, float) and math.isclose(v, mean))
            row["identity_minus_constant"] = mean_sem(identity[:, index] - identity[:, constant])
            row["prompt_minus_constant"] = mean_sem(prompt[:, index] - prompt[:, constant])
        rows.append(row)
    return {"pairs": pairs, "seeds": seeds, "pair_seed": seed, "steps": STEPS, "guidance": GUIDANCE, "rows": rows}


def markdown(result: dict) -> str:
    lines = [(f"{result['pairs']} pairs (seed {result['pair_seed']}) x {result['seeds']} seeds, {result['steps']} DDIM "
              "steps, guidance 7.5; mean ± standard error over pairs."), "",
             "| dial | identity match | prompt match | identity − constant | prompt − constant |",
             "|---|---|---|---|---|"]  # fmt: skip
    for row in result["rows"]:
        cells = [f"{row[key][0]:.3f} ± {row[key][1]:.3f}" for key in ("identity", "prompt")]
        for key in ("identity_minus_constant", "prompt_minus_constant"):
            cells.append(f"{row[key][0]:+.3f} ± {row[key][1]:.3f}" if key in row else "")
        lines.append(f"| {row['text']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.demo.control", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["sheets", "measure"])
    parser.add_argument("--out", required=True, help="directory to write into")
    parser.add_argument("--pairs", type=int, default=20, help="dial pairs for `measure` (default: 20)")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per pair and value (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="which pairs are drawn (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run's files in --out")
    args = parser.parse_args(argv)
    out = Path(args.out)
    existing = [name for name in OUTPUTS[args.what] if (out / name).exists()]
    if existing and not args.overwrite:
        names = ", ".join(existing)
        parser.error(f"{out} holds {names} already: pass --overwrite to replace them, or give another --out")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    pipe = load_pipe()
    if args.what == "sheets":
        for path in sheets(pipe, out).values():
            print(f"wrote {path}")
        return 0
    from flexip.atomic import atomic_write_bytes
    from recipes.demo.judge import Judge

    result = schedule_against_constant(pipe, Judge.load(), args.pairs, args.seeds, args.seed)
    result["mask_confinement"] = mask_confinement(pipe, 20)
    atomic_write_bytes(out / "control.json", (json.dumps(result, indent=2) + "\n").encode())
    table = markdown(result)
    atomic_write_bytes(out / "control.md", table.encode())
    print(table + f"mask confinement (mean change inside and outside a left-half mask): {result['mask_confinement']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
