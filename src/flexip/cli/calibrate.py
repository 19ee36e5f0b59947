"""`flexip calibrate`: a copy of an adapter whose preservation dial moves evenly between identity and prompt."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..atomic import check_writable
from ..calibration.pairs import read_pairs
from ..calibration.plan import MOST_POINTS, START_GATES, CalibrationPlan
from ..calibration.work import work_folder
from ..errors import FlexIPError
from ..evaluation.score_config import ScoreConfig
from ..families.names import DEFAULT_GUIDANCE
from ..models.config_file import read_config

DEFAULTS, PLAN = ScoreConfig(aesthetic_head=""), CalibrationPlan()
DEFAULT_PAIRS = 32

EXAMPLES = f"""\
examples:
  flexip calibrate --adapter runs/a/adapter --data data/val.jsonl --out runs/a/calibrated
  accelerate launch --num_processes 8 -m flexip calibrate --adapter runs/a/adapter --data data/val.jsonl \\
      --out runs/a/calibrated --pairs 64
  flexip calibrate --adapter runs/tiny-models/adapter --data runs/tiny-models/benchmark/benchmark.jsonl \\
      --out runs/tiny-calibrated --clip-model runs/tiny-models/metrics/clip \\
      --dino-model runs/tiny-models/metrics/dino --steps 4 --seeds 0

what it does: the raw gate g weighs the two branches linearly, but what an image shows does not move evenly with
it (identity may arrive almost whole by g = 0.25). For each reference/prompt pair of --data and each seed it
generates images at several g, scores identity (DINO-I: the image against the reference) and prompt following
(CLIP-T), and fits a map from the dial u to g under which equal steps of u are equal steps along the measured
trade-off curve (both scores scaled to their range). --out is a new adapter: the same weights, and a config with
the map, the measurements, the scorers, the pairs and the seeds. With it, `--preservation u` (and Python's
preservation=) is the calibrated dial; u = 0 and u = 1 are the raw ends; the gate stays reachable as --gate
(Python's gate=).

cost: pairs x seeds x points images ({DEFAULT_PAIRS} x {len(PLAN.seeds)} x {PLAN.points} = \
{PLAN.images(DEFAULT_PAIRS)} by default), each a full generation of --steps steps.

resuming: measurements are written as they are made into OUT.partial/, beside --out, which this command
creates; run the same command again after an interruption and it continues from there (other settings are
refused, naming what differs). It is removed once --out is written. The adapter --adapter is never written;
an existing --out is refused."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="write a copy of an adapter whose dial moves evenly between identity and prompt (resumable)",
        description="Measure identity and prompt following along an adapter's raw gate on reference/prompt "
        "pairs, and write a new adapter folder whose preservation dial moves at constant speed along that "
        "trade-off.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--adapter", required=True, help="the FlexIP adapter folder to calibrate (only read)")
    parser.add_argument(
        "--data", required=True,
        help="the calibration pairs: a training manifest (JSONL: reference, caption) or a benchmark (`flexip "
        "eval generate`'s: a JSONL of subject, reference, prompt, or a DreamBench / DreamBench++ folder)",
    )  # fmt: skip
    parser.add_argument(
        "--out", required=True, help="the calibrated adapter folder to create (must not exist)"
    )
    parser.add_argument(
        "--base", default=None, help="base model to generate with (default: the one the adapter records)"
    )
    parser.add_argument(
        "--pairs", type=int, default=DEFAULT_PAIRS,
        help=f"use at most N pairs of --data, evenly spaced through it (default: {DEFAULT_PAIRS})",
    )  # fmt: skip
    seeds = ",".join(map(str, PLAN.seeds))
    parser.add_argument(
        "--seeds", default=seeds, help=f"comma-separated seeds; each pair is generated with each (default: {seeds})",
    )  # fmt: skip
    parser.add_argument(
        "--points", type=int, default=PLAN.points,
        help=f"gate values measured, {len(START_GATES)} to {MOST_POINTS}: the {len(START_GATES)} evenly spaced "
        "ones, then the rest where identity or prompt move fastest, which is where the map needs its knots "
        f"(default: {PLAN.points})",
    )  # fmt: skip
    parser.add_argument(
        "--steps", type=int, default=PLAN.steps, help=f"denoising steps per image (default: {PLAN.steps})"
    )
    parser.add_argument(
        "--guidance", default=None,
        help="classifier-free guidance scale (default: the adapter's family's, as `flexip generate`: 7.5; on "
        "FLUX.1 3.5)",
    )  # fmt: skip
    parser.add_argument(
        "--clip-model", default=DEFAULTS.clip_model,
        help="the CLIP that scores prompt following, CLIP-T, as `flexip eval score` (default: "
        f"{DEFAULTS.clip_model})",
    )  # fmt: skip
    parser.add_argument(
        "--dino-model", default=DEFAULTS.dino_model,
        help=f"the DINO that scores identity, DINO-I, as `flexip eval score` (default: {DEFAULTS.dino_model})",
    )  # fmt: skip
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    adapter, config = read_config(args.adapter)
    guidance = DEFAULT_GUIDANCE[config.base_family] if args.guidance is None else args.guidance
    plan = CalibrationPlan(_seeds(args.seeds), args.points, args.steps, guidance, prefix="--")
    if args.pairs < 1:
        raise FlexIPError(f"--pairs={args.pairs} must be at least 1")
    out = _new_folder(args.out, adapter)
    pairs = read_pairs(args.data, args.pairs)

    # torch: once the command is known good
    from ..calibration.calibrate import calibrate_adapter, processes
    from ..calibration.scorers import MetricScorer

    state = processes()
    scorer = MetricScorer.from_pretrained(args.clip_model, args.dino_model, state.device)
    done = calibrate_adapter(adapter, pairs, scorer, plan, out=out, base=args.base)
    calibration = done.calibration
    if state.is_main_process:
        print(
            f"wrote {out}: calibrated on {calibration.pairs} pairs x {len(calibration.seeds)} seeds x "
            f"{len(calibration.points)} gates = {calibration.images} images ({done.made} generated now by this "
            "process); its --preservation is the calibrated dial"
        )
    return 0


def _seeds(text: str) -> list[int]:
    try:
        return [int(seed) for seed in text.split(",")]
    except ValueError:
        raise FlexIPError(f"--seeds {text!r}: give comma-separated integers, e.g. 0,1") from None


def _new_folder(path: str, adapter: Path) -> Path:
    """--out as a folder to create, outside the adapter folder."""
    out = Path(path)
    if out.exists():
        raise FlexIPError(
            f"--out {path} already exists; give a new folder (the calibrated copy of --adapter is written there)"
        )
    if out.resolve().is_relative_to(adapter.resolve()):
        raise FlexIPError(
            f"--out {path} is inside --adapter {adapter}, which is never written; give a folder outside it"
        )
    check_writable(work_folder(out), "--out")
    return check_writable(out, "--out")
