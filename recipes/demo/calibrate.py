"""Calibrate a demo adapter's dial with the demo world's judge as the scorer (docs/demo-model.md, "The
calibrated dial").

The pairs are `recipes.demo.dial`'s (a plain subject, a prompt that moves it to another scene) drawn with their
own seed, so the dial measurement's pairs (seeds 0 and 1) never take part in the calibration that is then measured
on them. The judge scores identity match and prompt match as the measurement does; `flexip.calibration` measures
them along the raw gate, fits the map and writes a new adapter folder. Ship it with `recipes.demo.ship`.

    python -m recipes.demo.calibrate --out runs/demo-calibrated/adapter --seed 2 --pairs 60
"""

from __future__ import annotations

import argparse

from recipes.demo.dial import dial_pairs

# Every calibration pair's prompt is in plain style (`dial_pairs`), where the whole identity shows: the judge
# reads the identity attributes that style shows.
PLAIN_CAPTION = "a small circle on the left with sky background"


class JudgeScorer:
    """The demo world's judge as a calibration scorer (`flexip.calibration.scorers.Scorer`)."""

    identity_name = "demo judge identity match"
    prompt_name = "demo judge prompt match (mean over background, class, position, size, style)"

    def __init__(self, judge):
        self.judge = judge

    def identity(self, images, references) -> list[float]:
        return self.judge.identity_match(images, references, [PLAIN_CAPTION] * len(images)).tolist()

    def prompt(self, images, prompts) -> list[float]:
        return self.judge.prompt_match(images, prompts)["mean"].tolist()


def main(argv: list[str] | None = None) -> int:
    from flexip.pipeline.embedded import DEMO_MODEL_DIR

    parser = argparse.ArgumentParser(
        prog="python -m recipes.demo.calibrate", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument("--out", required=True, help="the calibrated adapter folder to write (must not exist)")
    parser.add_argument(
        "--adapter", default=str(DEMO_MODEL_DIR / "adapter"),
        help="the adapter to calibrate (default: the shipped demo adapter; never written)",
    )  # fmt: skip
    parser.add_argument("--pairs", type=int, default=60, help="subject/prompt pairs (default: 60)")
    parser.add_argument("--seed", type=int, default=2,
                        help="which pairs are drawn (default: 2; 0 and 1 are the dial measurement's)")  # fmt: skip
    parser.add_argument("--seeds", default="0,1", help="image seeds per pair and gate (default: 0,1)")
    parser.add_argument("--points", type=int, default=9, help="gates measured (default: 9)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default: 50, as flexip demo)")
    parser.add_argument("--guidance", type=float, default=7.5, help="guidance scale (default: 7.5)")
    args = parser.parse_args(argv)
    if args.pairs < 2:
        parser.error(f"--pairs {args.pairs}: give at least 2")

    from flexip.calibration.calibrate import calibrate_adapter
    from flexip.calibration.pairs import Pair, PairSet
    from flexip.calibration.plan import CalibrationPlan
    from flexip.errors import FlexIPError
    from recipes.demo.judge import Judge

    try:
        plan = CalibrationPlan(seeds=tuple(int(s) for s in args.seeds.split(",")), points=args.points,
                               steps=args.steps, guidance=args.guidance, prefix="--")  # fmt: skip
        drawn = dial_pairs(args.pairs, args.seed)
        pairs = PairSet(
            tuple(Pair(pair.reference, pair.prompt, f"dial pair {index}") for index, pair in enumerate(drawn)),
            f"recipes.demo.dial pairs, --seed {args.seed}",
        )
        result = calibrate_adapter(args.adapter, pairs, JudgeScorer(Judge.load()), plan, out=args.out)
    except (FlexIPError, ValueError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    calibration = result.calibration
    print("gate     identity  prompt")
    for point in calibration.points:
        print(f"{point.gate:<8.4f} {point.identity:.3f}     {point.prompt:.3f}")
    print("map u -> g: " + ", ".join(f"{u:.3f}->{g:.4f}" for u, g in zip(calibration.dial, calibration.gate)))
    print(f"{calibration.images} images; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
