"""`flexip prep images|videos|views|caption|shards|cache|check`: turn folders of media into FlexIP training data."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from ..defaults import CAPTION_MODEL, MASK_MODEL
from ..errors import FlexIPError

SPLIT_HELP = (
    "Every command but check resumes: run it again after a crash or Ctrl-C and it continues where it stopped. "
    "To share the work, give each machine --rank R --world-size W (its --out is then that part's own file), or "
    "start it under `accelerate launch` / `torchrun`: each process writes <out>.part-R-of-W and rank 0 merges."
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prep",
        help="prepare training data: photos, clips and multi-view folders -> manifests, captions, shards",
        description="Prepare FlexIP training data from your own media (docs/formats.md). " + SPLIT_HELP,
        epilog="typical run:\n"
        "  flexip prep images photos/ --out data/images.jsonl --mask-model\n"
        "  flexip prep videos clips/ --out data/videos.jsonl --frames-dir data/frames/\n"
        "  flexip prep caption data/videos.jsonl --in-place\n"
        "  flexip prep shards data/images.jsonl data/videos.jsonl --out shards/\n"
        "  flexip prep cache --config configs/train/sd15.yaml shards/ --out cache/    # optional: frozen features\n"
        "  flexip prep check data/videos.jsonl shards/\n"
        "  cat data/images.jsonl data/videos.jsonl > data/all.jsonl    # same folder: the paths stay right\n"
        "  flexip train --config configs/train/sd15.yaml --set data.manifest=data/all.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="prep_command", metavar="STEP", required=True)
    _images(commands)
    _videos(commands)
    _views(commands)
    _caption(commands)
    _shards(commands)
    _cache(commands)
    _check(commands)


def _step(commands, name: str, help: str, description: str, examples: list[str]) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name, help=help, description=f"{description} {SPLIT_HELP if name != 'check' else ''}",
        epilog="examples:\n" + "\n".join(f"  {line}" for line in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    if name != "check":
        parser.add_argument("--rank", type=int, help="this part's number, 0 .. world size - 1 (with --world-size)")
        parser.add_argument("--world-size", type=int, help="how many parts the input is split into")
        parser.add_argument(
            "--overwrite", action="store_true",
            help="start over: discard an earlier run's progress and replace its outputs",
        )  # fmt: skip
    return parser


def _media_options(parser, pairs: bool) -> None:
    parser.add_argument("--out", type=Path, required=True, help="the manifest to write (JSONL, docs/formats.md)")
    parser.add_argument(
        "--min-size", type=int, default=256, help="skip media whose short side is under this many pixels (256)"
    )
    parser.add_argument(
        "--dedup-distance", type=int, default=4,
        help="pictures whose 64-bit difference hashes differ in at most this many bits count as the same "
        "(duplicates dropped, identical pairs skipped); -1 turns it off (default 4)",
    )  # fmt: skip
    if pairs:
        parser.add_argument("--max-pairs", type=int, default=8, help="at most this many pairs per clip or object (8)")


def _images(commands) -> None:
    parser = _step(
        commands, "images", "photos -> invariant pairs (reference = the subject of the same picture)",
        "Scan FOLDER recursively, decode every file once (unreadable, too small or too large files are skipped and "
        "listed in <out>.report.jsonl), apply EXIF rotation, drop near duplicates, and write one invariant pair "
        "per photo. Pictures that need converting are written as PNG under <out stem>-files/, and so are computed "
        "masks. A photo.txt beside photo.jpg is imported as its caption.",
        ["flexip prep images photos/ --out data/images.jsonl",
         "flexip prep images photos/ --out data/images.jsonl --masks masks/    # masks/a/b.png for photos/a/b.jpg",
         f"flexip prep images photos/ --out data/images.jsonl --mask-model    # {MASK_MODEL}"],
    )  # fmt: skip
    parser.add_argument("folder", type=Path, help="folder of photos (searched recursively)")
    _media_options(parser, pairs=False)
    masks = parser.add_mutually_exclusive_group()
    masks.add_argument("--masks", type=Path, help="folder of subject masks (white = subject) named like the photos")
    masks.add_argument(
        "--mask-model", nargs="?", const=MASK_MODEL, metavar="ID",
        help=f"compute masks with a SAM-style model: a hub id or folder (alone: {MASK_MODEL})",
    )  # fmt: skip
    parser.set_defaults(run=run_images)


def _videos(commands) -> None:
    parser = _step(
        commands, "videos", "clips -> variant pairs (two frames of one shot)",
        "Decode every clip under FOLDER with PyAV, find scene cuts, sample frames at least --min-gap seconds apart "
        "and pair frames of the same shot, farthest apart first, skipping near-identical pairs. Only paired frames "
        "are written (JPEG) under --frames-dir. clip.txt beside clip.mp4 is imported as the clip's caption.",
        ["flexip prep videos clips/ --out data/videos.jsonl --frames-dir data/frames/",
         "flexip prep videos clips/ --out data/videos.jsonl --frames-dir data/frames/ --min-gap 0.5 --max-pairs 16"],
    )  # fmt: skip
    parser.add_argument("folder", type=Path, help="folder of clips (searched recursively)")
    parser.add_argument("--frames-dir", type=Path, required=True, help="where the paired frames are written")
    _media_options(parser, pairs=True)
    parser.add_argument("--min-gap", type=float, default=1.0, help="seconds between sampled frames (default 1.0)")
    parser.add_argument(
        "--cut-threshold", type=float, default=0.5,
        help="a scene cut is a frame whose colour histogram shares less than 1 - this with the previous frame's "
        "(histogram intersection); lower finds more cuts (default 0.5)",
    )  # fmt: skip
    parser.set_defaults(run=run_videos)


def _views(commands) -> None:
    parser = _step(
        commands, "views", "multi-view folders -> variant pairs (two views of one object)",
        "Every folder under FOLDER that directly holds pictures is one object and its pictures are its views; "
        "pairs of different views become variant pairs (modality video: docs/decisions/data-preparation.md).",
        ["flexip prep views objects/ --out data/views.jsonl    # objects/<object>/<view>.jpg"],
    )  # fmt: skip
    parser.add_argument("folder", type=Path, help="folder of object folders")
    _media_options(parser, pairs=True)
    parser.set_defaults(run=run_views)


def _caption(commands) -> None:
    parser = _step(
        commands, "caption", "caption a manifest's targets with a vision-language model, or import captions",
        "Caption every row of MANIFEST whose caption is empty, with a Qwen2-VL-family model (on the GPU when there "
        "is one), in batches; rows already captioned are kept. Each caption records its model in caption_from.",
        ["flexip prep caption data/videos.jsonl --in-place",
         "flexip prep caption data/videos.jsonl --out data/videos.captioned.jsonl --batch-size 16",
         "flexip prep caption data/images.jsonl --in-place --from-column alt_text",
         "accelerate launch --num_processes 8 -m flexip prep caption data/videos.jsonl --in-place"],
    )  # fmt: skip
    parser.add_argument("manifest", type=Path, help="the manifest to caption")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="write the captioned manifest here")
    where.add_argument("--in-place", action="store_true", help="rewrite MANIFEST itself (atomically)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default=CAPTION_MODEL, help=f"hub id or folder (default {CAPTION_MODEL})")
    source.add_argument("--from-column", metavar="KEY", help="take captions from this field of the rows instead")
    parser.add_argument("--batch-size", type=int, default=8, help="images per generation batch (default 8)")
    parser.set_defaults(run=run_caption)


def _shards(commands) -> None:
    parser = _step(
        commands, "shards", "manifests -> webdataset tar shards",
        "Pack the pairs of the manifests (shuffled with a fixed seed) into tar shards of --shard-size samples "
        "in the folder --out, with shards.json describing them (docs/formats.md).",
        ["flexip prep shards data/images.jsonl data/videos.jsonl --out shards/ --shard-size 1000"],
    )  # fmt: skip
    parser.add_argument("manifests", type=Path, nargs="+", help="manifests to pack")
    parser.add_argument("--out", type=Path, required=True, help="folder of the shards")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    parser.set_defaults(run=run_shards)


def _cache(commands) -> None:
    parser = _step(
        commands, "cache", "shards -> a feature cache that trains without running the frozen encoders",
        "Run the config's frozen encoders (VAE, text encoders, CLIP and DINOv2) once over the shards and write "
        "their outputs, float16, into shards of the folder --out, with cache.json saying how they were made "
        "(docs/formats.md). `flexip train --set data.cache=DIR` then trains from it. An image pair's reference "
        "augmentation is fixed in advance: --variants keeps that many draws of it (pass k of training uses draw k "
        "mod V). Disk: about 0.7 TB per million samples at SD1.5's sizes (docs/performance.md).",
        ["flexip prep cache --config configs/train/sd15.yaml shards/ --out cache/",
         ("accelerate launch --num_processes 8 -m flexip prep cache --config configs/train/sd15.yaml "
          "'shards/{000000..000999}.tar' --out cache/ --variants 2")],
    )  # fmt: skip
    parser.add_argument("shards", help="the shards: their folder, a path, brace pattern, `::`-joined list or URL")
    parser.add_argument("--config", type=Path, required=True, help="the training config whose encoders and sizes to use")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    parser.add_argument("--out", type=Path, required=True, help="folder of the cache")
    parser.add_argument("--variants", type=int, default=1, help="augmentation draws kept per image pair (default 1)")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per encoder batch (default 16)")
    parser.set_defaults(run=run_cache)


def _check(commands) -> None:
    parser = _step(
        commands, "check", "count and validate manifests and shard folders",
        "For each manifest or shard folder: pairs per modality, kinds, captions, files and sizes; errors for "
        "malformed lines, missing files, unreadable or incomplete shards. Exits 1 if any input has errors.",
        ["flexip prep check data/images.jsonl data/videos.jsonl shards/"],
    )  # fmt: skip
    parser.add_argument("paths", type=Path, nargs="+", help="manifests (.jsonl), shard folders or .tar shards")
    parser.set_defaults(run=run_check)


def _need(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise FlexIPError(f"flexip prep needs {', '.join(missing)}: pip install 'flexip[prep]'")


def _part(args):
    from ..prep.split import Part

    return Part.resolve(args.rank, args.world_size)


def run_images(args) -> int:
    from ..prep.images import prepare_images

    summary = prepare_images(
        args.folder, args.out, masks=args.masks, mask_model=args.mask_model, min_size=args.min_size,
        dedup_distance=args.dedup_distance, part=_part(args), overwrite=args.overwrite,
    )  # fmt: skip
    print(summary.line("images", "photos", "image pairs"))
    return 0


def run_videos(args) -> int:
    _need("av")
    from ..prep.videos import prepare_videos

    summary = prepare_videos(
        args.folder, args.out, args.frames_dir, min_gap=args.min_gap, cut_threshold=args.cut_threshold,
        dedup_distance=args.dedup_distance, max_pairs=args.max_pairs, min_size=args.min_size, part=_part(args),
        overwrite=args.overwrite,
    )  # fmt: skip
    print(summary.line("videos", "clips", "video pairs"))
    return 0


def run_views(args) -> int:
    from ..prep.multiview import prepare_views

    summary = prepare_views(
        args.folder, args.out, min_size=args.min_size, dedup_distance=args.dedup_distance,
        max_pairs=args.max_pairs, part=_part(args), overwrite=args.overwrite,
    )  # fmt: skip
    print(summary.line("views", "objects", "view pairs"))
    return 0


def run_caption(args) -> int:
    from ..prep.captions import caption_manifest

    summary = caption_manifest(
        args.manifest, None if args.in_place else args.out, model=None if args.from_column else args.model,
        from_column=args.from_column, batch_size=args.batch_size, part=_part(args), overwrite=args.overwrite,
    )  # fmt: skip
    print(summary.line("caption", "rows", "rows"))
    return 0


def run_shards(args) -> int:
    _need("webdataset")
    from ..prep.shards import write_shards

    summary = write_shards(args.manifests, args.out, shard_size=args.shard_size, part=_part(args), overwrite=args.overwrite)
    print(summary.line("shards", "shards", "samples"))
    return 0


def run_cache(args) -> int:
    _need("webdataset")
    from ..training.config import load_config
    from ..training.feature_cache import write_cache

    config = load_config(args.config, args.set)
    part = _part(args)
    shards, done, samples, problems = write_cache(
        config, args.shards, args.out, part, variants=args.variants, batch_size=args.batch_size,
        overwrite=args.overwrite,
    )  # fmt: skip
    skipped = ", ".join(f"{count} {kind}" for kind, count in sorted(problems.items())) or "none"
    resumed = f" ({done} done by an earlier run)" if done else ""
    print(f"flexip prep cache{part.label}: {shards} shards{resumed} -> {samples} samples in {args.out}; skipped: {skipped}")
    return 0


def run_check(args) -> int:
    from ..prep.check import check

    results = check(args.paths)
    for result in results:
        print(f"{result.path}: {result.facts}" if result.facts else f"{result.path}:")
        for error in result.errors:
            print(f"  error: {error}")
    failed = sum(bool(r.errors) for r in results)
    print(f"flexip prep check: {len(results)} inputs, {failed} with errors")
    return 1 if failed else 0
