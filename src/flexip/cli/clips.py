"""The options that make a clip instead of an image (--motion-adapter, --frames, --fps, --dial-over), read and
checked before torch is imported: the frame count against the motion adapter's own limit in its config.json,
the adapter's family (AnimateDiff's motion adapters are Stable Diffusion 1.5's or SDXL's), and the dial's schedules
moved over the frames. The gate the adapter learned per modality is shown as a suggested starting point."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import FlexIPError
from ..model_paths import check_hub_model, refuse_pickled_weights, split_model_reference
from ..models.learned_gate import learned_points
from ..settings.dial import Dial
from .dial import adapter_config

DEFAULT_FRAMES = 16
DEFAULT_FPS = 8
EXAMPLE_MOTION_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-2"
# The base families AnimateDiff has motion adapters for.
CLIP_FAMILIES = ("sd15", "sdxl")
# MotionAdapter's own default, for a config.json that leaves it out.
MOTION_MAX_SEQ_LENGTH = 32

VIDEO_NOTE = """\
With --motion-adapter (an AnimateDiff motion adapter of the adapter's base family: Stable Diffusion 1.5, or SDXL
with e.g. guoyww/animatediff-motion-adapter-sdxl-beta) the output is a clip of --frames frames with one reference
for the whole clip; --dial-over frames runs a schedule START:END from the first frame
to the last. Video frames usually suit a lower preservation than still images: training learns one gate per
modality (its video pairs are two frames of a clip, the subject in another pose), and a clip's generation
starts by naming the g this adapter learned for each, as suggested starting points (with the preservation
value that stands for each on a calibrated adapter), and records them beside the clip (learned_gate)."""


@dataclass(frozen=True)
class Clip:
    """What a command makes when given --motion-adapter."""

    frames: int
    fps: int
    learned: dict | None  # the adapter's `learned_points` (None where they cannot be read)

    def note(self, command: str) -> None:
        """Name the adapter's learned gates as starting points, in one line on stderr (once the command is
        known good, so that a mistake stays the one line it prints)."""
        if self.learned is not None:
            print(f"flexip {command}: note: {starting_points_note(self.learned)}", file=sys.stderr)

    def record(self) -> dict:
        """What a clip's settings record of the adapter's learned gates (docs/formats.md)."""
        if self.learned is None:
            return {}
        record = {"learned_gate": {name: point["gate"] for name, point in self.learned.items()}}
        if all("preservation" in point for point in self.learned.values()):
            record["learned_preservation"] = {name: point["preservation"] for name, point in self.learned.items()}
        return record


def add_clip_options(parser: argparse.ArgumentParser):
    """The clip's options, in their own group of the help (returned, for a command's own clip options)."""
    group = parser.add_argument_group("clips (AnimateDiff)", VIDEO_NOTE)
    group.add_argument(
        "--motion-adapter", default=None,
        help=f"AnimateDiff motion adapter, a hub id or diffusers directory (e.g. {EXAMPLE_MOTION_ADAPTER}): "
        "make a clip; needs --adapter trained on Stable Diffusion 1.5 or SDXL, and a motion adapter of that family",
    )  # fmt: skip
    group.add_argument(
        "--frames", default=None,
        help=f"frames in the clip, from 1 to the motion adapter's motion_max_seq_length (default: {DEFAULT_FRAMES})",
    )  # fmt: skip
    group.add_argument("--fps", default=None, help=f"frames per second of an .mp4 or .gif (default: {DEFAULT_FPS})")
    group.add_argument(
        "--dial-over", default=None, choices=("steps", "frames"),
        help="what a schedule START:END in --preservation or --gate runs over: the denoising steps, or the "
        "clip's frames, first to last (default: steps)",
    )  # fmt: skip
    return group


def read_clip(args: argparse.Namespace) -> Clip | None:
    """The clip --motion-adapter asks for, checked; None for an image, where the clip's options are refused."""
    if args.motion_adapter is None:
        flags = (("--frames", args.frames), ("--fps", args.fps), ("--dial-over", args.dial_over),
                 ("--clip-format", getattr(args, "clip_format", None)))  # fmt: skip
        for flag, value in flags:
            if value is not None:
                raise FlexIPError(
                    f"{flag} {value} is for clips: add --motion-adapter (an AnimateDiff motion adapter, e.g. "
                    f"{EXAMPLE_MOTION_ADAPTER}) to make one"
                )
        return None
    if args.adapter is None:
        raise FlexIPError(
            f"--motion-adapter {args.motion_adapter} needs --adapter, a FlexIP adapter trained on Stable Diffusion "
            "1.5 or SDXL: the embedded demo model's base takes no motion adapter"
        )
    family = adapter_config(args.adapter).base_family
    if family not in CLIP_FAMILIES:
        raise FlexIPError(
            f"--adapter {args.adapter} is for {family}, but AnimateDiff's motion adapters run on Stable Diffusion "
            "1.5 and SDXL: give an adapter trained on one of those"
        )
    most = motion_max_frames(args.motion_adapter)
    frames = _whole_number("--frames", args.frames, DEFAULT_FRAMES, most,
                           f"{args.motion_adapter} runs at most {most} frames, its motion_max_seq_length")  # fmt: skip
    fps = _whole_number("--fps", args.fps, DEFAULT_FPS)
    return Clip(frames, fps, learned_points(args.adapter))


def over_frames(values: list[Dial], args: argparse.Namespace) -> list[Dial]:
    """The dial's values with their schedules over the clip's frames, when --dial-over frames says so."""
    if args.dial_over != "frames":
        return values
    try:
        return [value.over("frames") for value in values]
    except FlexIPError as e:
        raise FlexIPError(f"--dial-over frames: {e}") from e


def motion_max_frames(reference: str) -> int:
    """The most frames a motion adapter (hub id or directory) runs: its config.json's motion_max_seq_length."""
    check_hub_model(reference, "--motion-adapter")
    path, subfolder = split_model_reference(reference)
    folder = Path(path, subfolder or "")
    if os.path.isdir(path):
        refuse_pickled_weights(folder, "--motion-adapter")
        config = folder / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        try:
            config = Path(hf_hub_download(path, "config.json", subfolder=subfolder))
        except Exception as e:  # the hub client's errors differ across its versions
            raise FlexIPError(
                f"--motion-adapter {reference}: cannot read its config.json ({str(e).splitlines()[0]}); give a "
                f"MotionAdapter directory or hub id, e.g. {EXAMPLE_MOTION_ADAPTER}"
            ) from e
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as e:
        raise FlexIPError(
            f"--motion-adapter {reference}: cannot read {config} ({e}); give a MotionAdapter directory (config.json "
            f"and diffusion_pytorch_model.safetensors) or hub id, e.g. {EXAMPLE_MOTION_ADAPTER}"
        ) from e
    if not isinstance(data, dict) or data.get("_class_name") != "MotionAdapter":
        raise FlexIPError(
            f"--motion-adapter {reference}: {config} is not a MotionAdapter's config; give an AnimateDiff motion "
            f"adapter, e.g. {EXAMPLE_MOTION_ADAPTER}"
        )
    return int(data.get("motion_max_seq_length", MOTION_MAX_SEQ_LENGTH))


def starting_points_note(points: dict[str, dict[str, float]]) -> str:
    """One line naming the gate the adapter learned on video frames and on still images, as dial values."""
    video, image = points["video"], points["image"]
    learned = f"this adapter learned g = {video['gate']:.2f} on video frames and {image['gate']:.2f} on still images"
    if "preservation" in video:
        return (
            f"{learned} (preservation {video['preservation']:.2f} and {image['preservation']:.2f} on its "
            "calibrated dial): suggested starting points for --preservation"
        )
    return f"{learned}: suggested starting points for --preservation"


def _whole_number(flag: str, text: str | None, default: int, most: int | None = None, why: str = "") -> int:
    """`text` (`default` when None) as a whole number from 1 to `most`; one line naming `flag` otherwise."""
    if text is None:
        number = default
    else:
        try:
            number = int(text)
        except ValueError:
            number = None
    if number is None or number < 1 or (most is not None and number > most):
        bounds = "1 or more" if most is None else f"from 1 to {most}"
        shown = text if text is not None else f"{default} (the default)"
        raise FlexIPError(f"{flag} {shown}: give a whole number {bounds}" + (f" ({why})" if why else ""))
    return number
