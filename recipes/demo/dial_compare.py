"""Two dial measurements of one adapter side by side (`recipes.demo.dial`'s reports): the raw gate and the
calibrated dial, as the points each puts on the trade-off curve, and the calibration's map.

    python -m recipes.demo.dial_compare runs/dial-raw runs/dial-calibrated \
        --adapter runs/demo-calibrated/adapter --out docs/images/demo-dial-calibrated.png
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path


def comparison_png(raw: dict, calibrated: dict, calibration) -> bytes:
    """Left: prompt match against identity match at each dial value, raw and calibrated (even steps along the
    curve are even spacing of the points). Right: the map u -> g, with the gates the calibration measured."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    from matplotlib import pyplot as plt

    figure, (curve, mapping) = plt.subplots(1, 2, figsize=(9, 3.8), dpi=120)
    for summary, label, style in ((raw, "raw gate g", "o--"), (calibrated, "calibrated dial u", "s-")):
        step = summary["largest_step"]
        curve.plot(summary["identity_match"], summary["prompt_match"], style,
                   label=f"{label} (largest step {step:.2f} of the curve)")  # fmt: skip
        for value, x, y in zip(summary["values"], summary["identity_match"], summary["prompt_match"]):
            curve.annotate(f"{value:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    curve.set(xlabel="identity match", ylabel="prompt match",
              title=f"{raw['pairs']} pairs x {raw['seeds']} seeds at 0, .25, .5, .75, 1")  # fmt: skip
    curve.grid(alpha=0.3)
    curve.legend(loc="lower left", fontsize=8)
    mapping.plot(calibration.dial, calibration.gate, "k-", label="the map u -> g")
    mapping.plot([0, 1], [0, 1], ":", color="gray", label="uncalibrated (g = u)")
    points = calibration.points
    mapping.plot([0] * len(points), [point.gate for point in points], "k_", markersize=10,
                 label=f"the {len(points)} gates measured")  # fmt: skip
    mapping.set(xlabel="preservation u (calibrated)", ylabel="raw gate g", xlim=(-0.03, 1.02), ylim=(0, 1.02),
                title=f"calibrated on {calibration.pairs} other pairs")  # fmt: skip
    mapping.grid(alpha=0.3)
    mapping.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.demo.dial_compare",
                                     description=__doc__.split("\n\n")[0].replace("\n", " "))  # fmt: skip
    parser.add_argument("raw", help="the raw gate's report folder (recipes.demo.dial --out)")
    parser.add_argument("calibrated", help="the calibrated dial's report folder")
    parser.add_argument("--adapter", required=True, help="the calibrated adapter folder (its calibration)")
    parser.add_argument("--out", required=True, help="the PNG to write")
    args = parser.parse_args(argv)

    from flexip.atomic import atomic_write_bytes
    from flexip.errors import FlexIPError
    from flexip.models.config_file import read_config

    try:
        summaries = [json.loads((Path(folder) / "dial.json").read_text()) for folder in (args.raw, args.calibrated)]
        calibration = read_config(args.adapter)[1].calibration
        if calibration is None:
            raise FlexIPError(f"{args.adapter} has no calibration; give the calibrated adapter")
    except (OSError, json.JSONDecodeError, FlexIPError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    atomic_write_bytes(args.out, comparison_png(*summaries, calibration))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
