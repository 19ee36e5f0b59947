"""`flexip generate`: one image of a reference's subject following a prompt, at one preservation value."""

from __future__ import annotations

import argparse

from ..errors import FlexIPError
from .clips import add_clip_options, over_frames, read_clip
from .dial import add_dial_options, check_blocks, read_dials
from .options import add_model_options, add_overwrite_option, model_settings, sampling_settings
from .outputs import check_clip_output, check_output
from .subjects import add_subject_options, read_subjects

EXAMPLES = """\
examples:
  flexip generate --reference dog.jpg --prompt "a dog on the beach" --preservation 0.7 --out dog_beach.png
  flexip generate --reference dog.jpg --prompt "a dog, oil painting" --preservation 0.3 --out dog_oil.png \\
      --base stable-diffusion-v1-5/stable-diffusion-v1-5 --adapter path/to/flexip --scheduler dpm++ --steps 25
  flexip generate --reference front.jpg --reference side.jpg --reference-weights 0.7,0.3 --prompt "a dog" --out a.png
  flexip generate --reference dog.jpg --prompt "a dog" --preservation down=0.9,mid=0.6,up=0.3 --out blocks.png
  flexip generate --reference dog.jpg --prompt "a dog" --preservation 0.9:0.3 --out schedule.png
  flexip generate --reference dog.jpg --prompt "a dog" --gate 0.3 --out raw.png
  flexip generate --reference dog.jpg --mask left.png --reference cat.jpg --mask right.png \\
      --prompt "a dog and a cat" --preservation 0.7 --out two.png
  flexip generate --adapter runs/a/adapter --motion-adapter guoyww/animatediff-motion-adapter-v1-5-2 \\
      --reference dog.jpg --prompt "a dog running on the beach" --frames 16 --out dog.mp4   # or .gif, or a folder
  flexip generate --adapter runs/a/adapter --motion-adapter guoyww/animatediff-motion-adapter-v1-5-2 \\
      --reference dog.jpg --prompt "a dog running" --preservation 0.9:0.4 --dial-over frames --out dog.gif

preservation: 1 keeps the subject's identity and fine detail, 0 lets the prompt restyle it freely; per UNet
block as down=0.9,mid=0.6,up=0.3 (finer: up.block_0=0.5; unnamed blocks keep 0.5), or over the steps as
START:END (0.9:0.3, or 0.9:0.3:cosine). On an adapter calibrated by `flexip calibrate`, equal steps of
preservation are equal steps between identity and prompt, and --gate sets the raw g instead. Several
--reference are one subject's images, mixed by --reference-weights (equal by default); with one --mask each
(white = the subject), one subject per mask.
Without --adapter the embedded demo model is used: it knows only its own procedural world of small shapes
(on a photograph it says so). For several values, use `flexip sweep`."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate one image of the reference's subject following a prompt",
        description="Generate an image of the subject in --reference, following --prompt, with the "
        "preservation dial set to one value.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_subject_options(parser)
    forms = "the dial in [0, 1], per block (down=0.9,mid=0.6,up=0.3) or a schedule (0.9:0.3)"
    add_dial_options(parser, "0.5", forms)
    parser.add_argument(
        "--out", required=True,
        help="image file to write (.png, .jpg or .webp); with --motion-adapter a clip: .mp4, .gif, or a folder "
        "(a name without a suffix) of frame_000.png, ...",
    )  # fmt: skip
    add_overwrite_option(parser, "an existing --out file (a clip's frames in an existing folder)")
    add_model_options(parser)
    add_clip_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    values, dial = read_dials(args)
    if len(values) != 1:
        text = getattr(args, dial)
        raise FlexIPError(
            f"--{dial} {text}: generate makes one image at one value; for several values use `flexip sweep "
            f"--{dial} {text} --out DIR`"
        )
    clip = read_clip(args)
    values = over_frames(values, args)
    models, sampling = model_settings(args), sampling_settings(args, None if clip is None else clip.frames)
    check_blocks(args.adapter, values, sampling.scale)
    references = [*args.reference, *(args.mask or [])]
    if clip is None:
        out = check_output(args.out, references, args.overwrite)
    else:
        out, clip_format = check_clip_output(args.out, clip.frames, references, args.overwrite)
    subjects = read_subjects(args)
    if clip is not None:
        clip.note("generate")

    # torch: once the command is known good
    from ..pipeline.clips import save_clip
    from ..pipeline.front_end import dial_records, generate, load_pipeline, note_demo_model, record
    from ..pipeline.output import save_image

    loaded = load_pipeline(models)
    note_demo_model(loaded, subjects.images, "flexip generate")
    outputs = generate(loaded, args.prompt, values=values, sampling=sampling, dial=dial,
                       **subjects.call_arguments())  # fmt: skip
    settings = record(args.prompt, models=models, sampling=sampling, loaded=loaded, **subjects.record())
    settings.update(dial_records(loaded, values, dial)[0])
    if clip is None:
        save_image(outputs[0], out, settings)
    else:
        save_clip(outputs[0], out, {**settings, **clip.record()}, clip.fps, clip_format)
    print(f"wrote {out}")
    return 0
