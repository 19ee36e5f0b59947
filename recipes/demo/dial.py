"""The preservation dial, measured by the demo world's judge (docs/demo-model.md, Part 2).

Each evaluation pair is a subject of the demo world drawn in a plain reference scene, and a prompt that keeps
its class but moves it to another background, position and size. For every pair, seed and dial value g the
pipeline generates one image; the judge scores identity match (does the image carry the reference's identity)
and prompt match (does it show the prompt's scene). The dial works when identity match rises with g and prompt
match falls, which the Spearman correlation of the mean scores with g and the differences between the ends
measure.

    python -m recipes.demo.dial --out runs/dial            # the shipped demo model
    python -m recipes.demo.dial --adapter runs/demo/adapter --out runs/dial-run
"""

from __future__ import annotations

import argparse
import io
import json
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from flexip.calibration.curve import largest_step_share
from flexip.evaluation.curve import largest_jump_share
from recipes.demo.world import (
    BACKGROUNDS,
    POSITIONS,
    SIZES,
    Identity,
    Scene,
    caption,
    render,
    sample_identity,
    sample_scene,
)

DEFAULT_VALUES = (0.0, 0.25, 0.5, 0.75, 1.0)
# The demo model's acceptance targets (docs/demo-model.md): (summary key, comparison, threshold).
TARGETS = (
    ("identity_spearman", ">=", 0.9),
    ("prompt_spearman", "<=", -0.9),
    ("identity_gain", ">=", 0.3),  # identity match at the largest g minus at the smallest
    ("prompt_gain", ">=", 0.2),  # prompt match at the smallest g minus at the largest
    # The largest step between neighbouring values along the trade-off curve (both scores scaled to their range),
    # as a share of the curve's length: 0.25 is perfectly even over five values.
    ("largest_step", "<=", 0.35),
)
REFERENCE_SIZE = 32  # px: the size the training references had


@dataclass(eq=False)
class DialPair:
    identity: Identity
    reference_scene: Scene
    prompt_scene: Scene
    reference: Image.Image = field(repr=False)

    @property
    def prompt(self) -> str:
        return caption(self.prompt_scene)


def _other(rng: np.random.Generator, values, current: str) -> str:
    return str(rng.choice([v for v in values if v != current]))


def dial_pairs(count: int, seed: int = 0) -> list[DialPair]:
    """`count` plain subjects, each with a prompt that moves it to another background, position and size.

    The class stays (training clips keep their subject) and the style stays plain (it shows the identity), so
    both scores can move: copying the reference costs prompt match, following the prompt costs nothing else.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    pairs = []
    for _ in range(count):
        identity = sample_identity(rng)
        scene = sample_scene(rng, style_probs=(1.0, 0.0, 0.0))
        prompt_scene = Scene(
            subject=scene.subject,
            background=_other(rng, BACKGROUNDS, scene.background),
            position=_other(rng, POSITIONS, scene.position),
            size=_other(rng, SIZES, scene.size),
        )
        image, _ = render(identity, scene, rng, REFERENCE_SIZE)
        pairs.append(DialPair(identity, scene, prompt_scene, image))
    return pairs


def spearman(x, y) -> float:
    """Spearman's rank correlation (ties get their average rank); NaN when either side is constant."""
    ranks = [_average_ranks(np.asarray(v, dtype=np.float64)) for v in (x, y)]
    centred = [r - r.mean() for r in ranks]
    norm = math.sqrt(float((centred[0] ** 2).sum() * (centred[1] ** 2).sum()))
    return float((centred[0] * centred[1]).sum() / norm) if norm > 0 else math.nan


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=np.float64)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


@dataclass
class DialScores:
    values: list[float]  # the dial values, one per column
    prompts: list[str]
    identity: np.ndarray  # (pairs, seeds, values) identity match in 0..1
    prompt: dict[str, np.ndarray]  # scene attribute or "mean" -> (pairs, seeds, values) prompt match
    images: list[list[Image.Image]]  # per pair: seed-major, then one image per value


@torch.no_grad()
def measure(pipe, judge, pairs: list[DialPair], seeds: int, values: list[float], steps: int, guidance: float,
            progress: bool = True, dial: str = "preservation") -> DialScores:  # fmt: skip
    """Generate every (pair, seed, value) with `pipe` (a FlexIPPipeline) and score each image with `judge`;
    `dial` is the call argument the values are ("preservation", calibrated on a calibrated adapter, or "gate")."""
    identity, prompt, images = [], {}, []
    for pair in tqdm(pairs, desc="dial pairs", disable=not progress):
        # Image i of a pair starts from seed i's noise at every value, so the values differ by the dial alone.
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in range(seeds)]
        out = pipe(
            pair.prompt, reference=pair.reference, **{dial: values}, num_images_per_prompt=seeds,
            num_inference_steps=steps, guidance_scale=guidance, generator=generators,
        ).images  # fmt: skip
        captions = [pair.prompt] * len(out)
        identity.append(
            judge.identity_match(out, [pair.reference] * len(out), captions).view(seeds, len(values))
        )
        for name, score in judge.prompt_match(out, captions).items():
            prompt.setdefault(name, []).append(score.view(seeds, len(values)))
        images.append(out)
    return DialScores(
        values=list(values),
        prompts=[pair.prompt for pair in pairs],
        identity=torch.stack(identity).numpy(),
        prompt={name: torch.stack(scores).numpy() for name, scores in prompt.items()},
        images=images,
    )


def summarize(scores: DialScores) -> dict:
    """Mean scores per value, their Spearman correlation with g, the gains between the ends, the targets."""
    identity = scores.identity.mean(axis=(0, 1))
    prompt = {name: s.mean(axis=(0, 1)) for name, s in scores.prompt.items()}
    # Standard error over pairs (a pair's seeds are not independent of each other's scene).
    pairs = scores.identity.shape[0]
    summary = {
        "pairs": pairs,
        "seeds": scores.identity.shape[1],
        "values": scores.values,
        "identity_match": identity.tolist(),
        "identity_match_sem": (scores.identity.mean(axis=1).std(axis=0, ddof=1) / math.sqrt(pairs)).tolist()
        if pairs > 1
        else None,
        "prompt_match": prompt["mean"].tolist(),
        "prompt_match_sem": (
            scores.prompt["mean"].mean(axis=1).std(axis=0, ddof=1) / math.sqrt(pairs)
        ).tolist()
        if pairs > 1
        else None,
        "prompt_match_by_attribute": {
            name: value.tolist() for name, value in prompt.items() if name != "mean"
        },
        "identity_spearman": spearman(scores.values, identity),
        "prompt_spearman": spearman(scores.values, prompt["mean"]),
        "identity_gain": float(identity[-1] - identity[0]),
        "prompt_gain": float(prompt["mean"][0] - prompt["mean"][-1]),
        "largest_step": largest_step_share(identity, prompt["mean"]),
        # The eval curve's smoothness: the largest change between neighbouring values as a share of the range.
        "identity_smoothness": largest_jump_share(identity.tolist()),
        "prompt_smoothness": largest_jump_share(prompt["mean"].tolist()),
    }
    summary["targets"] = {
        key: {"target": f"{op} {threshold:g}", "met": _met(summary[key], op, threshold)}
        for key, op, threshold in TARGETS
    }
    return summary


def _met(value: float, op: str, threshold: float) -> bool:
    return bool(value >= threshold if op == ">=" else value <= threshold)  # NaN meets nothing


def per_pair(pairs: list[DialPair], scores: DialScores) -> list[dict]:
    """Each pair's scene, identity and mean scores per value (over seeds), for the JSON report."""
    return [
        {
            "prompt": pair.prompt,
            "reference_scene": caption(pair.reference_scene),
            "identity": vars(pair.identity),
            "identity_match": scores.identity[index].mean(axis=0).tolist(),
            "prompt_match": scores.prompt["mean"][index].mean(axis=0).tolist(),
        }
        for index, pair in enumerate(pairs)
    ]


def markdown(summary: dict) -> str:
    """The summary as Markdown: a row per dial value, then the correlations and gains against the targets."""
    attributes = list(summary["prompt_match_by_attribute"])
    lines = [
        f"{summary['pairs']} subject/prompt pairs x {summary['seeds']} seeds per dial value.",
        "",
        "| dial | identity match | prompt match | " + " | ".join(attributes) + " |",
        "|---|---|---|" + "---|" * len(attributes),
    ]
    for index, g in enumerate(summary["values"]):
        by_attribute = " | ".join(f"{summary['prompt_match_by_attribute'][a][index]:.2f}" for a in attributes)
        identity, prompt = summary["identity_match"][index], summary["prompt_match"][index]
        lines.append(f"| {g:g} | {identity:.3f} | {prompt:.3f} | {by_attribute} |")
    lines += ["", "| measure | value | target | met |", "|---|---|---|---|"]
    for key, target in summary["targets"].items():
        lines.append(
            f"| {key} | {summary[key]:+.3f} | {target['target']} | {'yes' if target['met'] else 'no'} |"
        )
    for key in ("identity_smoothness", "prompt_smoothness"):
        lines.append(f"| {key} | {summary[key]:.3f} | (smaller is smoother) | |")
    return "\n".join(lines) + "\n"


def plot_png(summary: dict, title: str) -> bytes:
    """Mean identity and prompt match against g, with standard errors over pairs."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.4), dpi=120)
    for key, label in (("identity_match", "identity match"), ("prompt_match", "prompt match")):
        axes.errorbar(
            summary["values"], summary[key], yerr=summary[f"{key}_sem"], marker="o", capsize=3, label=label
        )
    axes.set(xlabel="dial value", ylabel="judge score (mean)", ylim=(0, 1.02), title=title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower center")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def examples_sheet(pairs: list[DialPair], scores: DialScores, rows: int) -> Image.Image:
    """The first `rows` pairs at seed 0: the reference, then the dial from left to right."""
    from flexip.contact_sheet import contact_sheet

    n = len(scores.values)
    return contact_sheet(
        [[pair.reference, *images[:n]] for pair, images in zip(pairs[:rows], scores.images)],
        ["reference", *(f"g = {g:g}" for g in scores.values)],
        tile_size=96,
        row_labels=[pair.prompt for pair in pairs[:rows]],
    )


def _values(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if len(values) < 2 or any(not 0 <= v <= 1 for v in values) or values != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"{text!r}: give at least two increasing values in [0, 1]")
    return values


def main(argv: list[str] | None = None) -> int:
    from flexip.pipeline.embedded import DEMO_MODEL_DIR

    parser = argparse.ArgumentParser(
        prog="python -m recipes.demo.dial", description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog="writes into --out: dial.json (the summary and every pair's scores), dial.md (the tables), "
        "dial.png (the curves) and examples.png (the first pairs at seed 0).",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="directory for the report (created if missing)")
    parser.add_argument("--adapter", default=str(DEMO_MODEL_DIR / "adapter"),
                        help="FlexIP adapter directory (default: the shipped demo adapter)")  # fmt: skip
    parser.add_argument(
        "--base", default=None, help="base model directory (default: the one the adapter records)"
    )
    parser.add_argument("--pairs", type=int, default=20, help="subject/prompt pairs (default: 20)")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per pair and value (default: 4)")
    parser.add_argument("--values", type=_values, default=list(DEFAULT_VALUES),
                        help="comma-separated dial values (default: 0,0.25,0.5,0.75,1)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default: 50, as flexip demo)")
    parser.add_argument(
        "--guidance", type=float, default=7.5, help="guidance scale (default: 7.5, as flexip demo)"
    )
    parser.add_argument("--seed", type=int, default=0, help="which pairs are drawn (default: 0)")
    parser.add_argument(
        "--gate", action="store_true",
        help="measure the raw gate g at --values (the same as the dial on an uncalibrated adapter)",
    )  # fmt: skip
    parser.add_argument("--examples", type=int, default=8, help="pairs shown in examples.png (default: 8)")
    args = parser.parse_args(argv)
    for name in ("pairs", "seeds", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)}: must be at least 1")
    if args.guidance < 0 or args.examples < 0:
        parser.error(f"--guidance {args.guidance} and --examples {args.examples} must not be negative")

    from pathlib import Path

    from flexip.atomic import atomic_write_bytes
    from flexip.errors import FlexIPError
    from flexip.pipeline.pipeline import FlexIPPipeline
    from flexip.training.validation import png_bytes
    from recipes.demo.judge import Judge

    try:
        pipe = FlexIPPipeline.from_pretrained(args.base, adapter=args.adapter, torch_dtype=torch.float32)
    except FlexIPError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    pipe.set_progress_bar_config(disable=True)
    pairs = dial_pairs(args.pairs, args.seed)
    dial = "gate" if args.gate else "preservation"
    scores = measure(pipe, Judge.load(), pairs, args.seeds, args.values, args.steps, args.guidance, dial=dial)
    summary = summarize(scores)
    settings = {"adapter": args.adapter, "base": pipe.config._name_or_path, "steps": args.steps,
                "guidance": args.guidance, "pair_seed": args.seed, "dial": dial}  # fmt: skip
    record = {**settings, **summary, "pairs_scored": per_pair(pairs, scores)}
    out = Path(args.out)
    table = markdown(summary)
    atomic_write_bytes(out / "dial.json", (json.dumps(record, indent=2) + "\n").encode())
    atomic_write_bytes(out / "dial.md", table.encode())
    atomic_write_bytes(
        out / "dial.png", plot_png(summary, f"{summary['pairs']} pairs x {summary['seeds']} seeds")
    )
    if args.examples:
        atomic_write_bytes(out / "examples.png", png_bytes(examples_sheet(pairs, scores, args.examples)))
    print(
        table + f"wrote {out / 'dial.json'}, dial.md, dial.png" + (", examples.png" if args.examples else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
