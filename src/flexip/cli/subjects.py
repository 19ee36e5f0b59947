"""The subject options every generating command takes (--reference, --reference-weights, --mask, --prompt),
added to a parser and read into checked values before torch is imported."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..errors import FlexIPError
from ..pipeline.images import load_mask_image, load_reference_image
from ..settings.numbers import check_reference_weights


def add_subject_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reference", required=True, action="append",
        help="image of the subject (PNG, JPEG, WebP, ...); repeat it for several images of the subject, or "
        "with --mask for several subjects",
    )  # fmt: skip
    parser.add_argument(
        "--reference-weights", default=None,
        help="comma-separated weights of the --reference images, e.g. 0.7,0.3 (default: equal; with masks, 1 each)",
    )  # fmt: skip
    parser.add_argument(
        "--mask", action="append", default=None,
        help="a mask (white = the subject) per --reference, in the same order: each subject acts only inside its "
        "mask; masks have the image's aspect ratio",
    )  # fmt: skip
    parser.add_argument("--prompt", required=True, help='what to generate, e.g. "a dog on the beach"')


@dataclass
class Subjects:
    """The subject options, read and checked: the reference pictures, their weights and masks."""

    images: list  # RGB PIL images
    names: list[str]  # as the user named them
    weights: list[float] | None = None
    masks: list | None = None  # PIL images
    mask_names: list[str] | None = None

    def call_arguments(self) -> dict:
        """`reference`, `reference_weights` and `reference_masks` of the library's call."""
        reference = self.images[0] if len(self.images) == 1 else self.images
        return {"reference": reference, "reference_weights": self.weights, "reference_masks": self.masks}

    def record(self) -> dict:
        """`reference`, `reference_weights` and `reference_masks` of `front_end.record`."""
        return {"reference": self.names, "reference_weights": self.weights, "reference_masks": self.mask_names}


def read_subjects(args: argparse.Namespace) -> Subjects:
    """--reference, --reference-weights and --mask, read and checked (the masks' contents are checked with the
    call's other inputs, before any model runs)."""
    weights = None
    if args.reference_weights is not None:
        try:
            weights = [float(weight) for weight in args.reference_weights.split(",")]
        except ValueError:
            raise FlexIPError(
                f"--reference-weights {args.reference_weights}: give comma-separated numbers, e.g. 0.7,0.3"
            ) from None
        if len(weights) != len(args.reference):
            raise FlexIPError(
                f"--reference-weights {args.reference_weights}: {len(weights)} weights for {len(args.reference)} "
                "--reference images; give one per image"
            )
        check_reference_weights(weights, len(args.reference), masked=args.mask is not None)
    masks = None
    if args.mask is not None:
        if len(args.mask) != len(args.reference):
            raise FlexIPError(f"{len(args.mask)} --mask for {len(args.reference)} --reference; give one mask per reference")
        masks = [load_mask_image(path, f"--mask {path}") for path in args.mask]
    images = [load_reference_image(path) for path in args.reference]
    return Subjects(images, [str(path) for path in args.reference], weights, masks, args.mask)
