"""Training manifests of the demo world: a folder of PNGs and `manifest.jsonl`, one pair per line.

Each line is `{"reference", "target", "caption", "modality", "source", "mask"}`; paths are relative to the
manifest's folder. "image" pairs repeat one render as reference and target (the method's invariant pairs);
"video" pairs take the reference from the first frame of a clip and the target from a later frame of the same
subject in a different scene (the variant pairs). `mask` is the reference's subject mask (white = subject).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flexip.manifest import read_manifest_records
from recipes.demo.world import caption, render, sample_identity, sample_scene


@dataclass
class ManifestConfig:
    num_images: int = 1000  # invariant pairs
    num_clips: int = 250  # video clips; each gives frames_per_clip - 1 variant pairs
    frames_per_clip: int = 5
    size: int = 32  # px; the base model's resolution
    seed: int = 0


def _rng(seed: int, kind: int, index: int) -> np.random.Generator:
    # One independent stream per sample, so any sample can be regenerated alone and the set is seed-stable.
    return np.random.default_rng(np.random.SeedSequence([seed, kind, index]))


def _save(image, path: Path, root: Path) -> str:
    image.save(path)
    return path.relative_to(root).as_posix()


def write_manifest(out_dir: str | Path, config: ManifestConfig, progress: bool = False) -> Path:
    """Render `config`'s samples into `out_dir`; returns the path of `manifest.jsonl`."""
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for index in tqdm(range(config.num_images), desc="image pairs", disable=not progress):
        rng = _rng(config.seed, 0, index)
        identity, scene = sample_identity(rng), sample_scene(rng)
        image, mask = render(identity, scene, rng, config.size)
        path = _save(image, root / "images" / f"img{index:06d}.png", root)
        records.append({
            "reference": path, "target": path, "caption": caption(scene), "modality": "image",
            "source": f"img{index:06d}",
            "mask": _save(mask, root / "images" / f"img{index:06d}_mask.png", root),
        })
    for index in tqdm(range(config.num_clips), desc="video clips", disable=not progress):
        rng = _rng(config.seed, 1, index)
        identity = sample_identity(rng)
        first = sample_scene(rng, style_probs=(1.0, 0.0, 0.0))  # the reference shows the whole identity
        clip = f"clip{index:06d}"
        reference, mask = render(identity, first, rng, config.size)
        reference_path = _save(reference, root / "images" / f"{clip}_f0.png", root)
        mask_path = _save(mask, root / "images" / f"{clip}_f0_mask.png", root)
        for frame in range(1, config.frames_per_clip):
            scene = sample_scene(rng, subject=first.subject)  # the subject stays; its scene changes
            target, _ = render(identity, scene, rng, config.size)
            records.append({
                "reference": reference_path,
                "target": _save(target, root / "images" / f"{clip}_f{frame}.png", root),
                "caption": caption(scene), "modality": "video", "source": clip, "mask": mask_path,
            })
    manifest = root / "manifest.jsonl"
    tmp = manifest.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(manifest)  # a reader never sees a half-written manifest
    (root / "manifest_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    return manifest


def validate_manifest(path: str | Path) -> list[dict]:
    """Read a manifest and check every line and file; raises FlexIPError naming the file, line and problem."""
    return read_manifest_records(path, check_files=True)


def main(argv: list[str] | None = None) -> None:
    defaults = ManifestConfig()
    parser = argparse.ArgumentParser(
        prog="python -m recipes.demo.manifest", description="Render a demo-world training manifest."
    )
    parser.add_argument("--out", required=True, help="folder to write PNGs and manifest.jsonl into")
    parser.add_argument("--images", type=int, default=defaults.num_images, help="invariant (image) pairs")
    parser.add_argument("--clips", type=int, default=defaults.num_clips, help="video clips")
    parser.add_argument("--frames", type=int, default=defaults.frames_per_clip, help="frames per clip (>= 2)")
    parser.add_argument("--size", type=int, default=defaults.size, help="image size in px")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    if args.images < 0 or args.clips < 0 or args.images + args.clips == 0:
        raise SystemExit(f"--images {args.images} and --clips {args.clips}: need >= 0 each and one > 0")
    if args.frames < 2:
        raise SystemExit(f"--frames {args.frames}: a clip needs at least 2 frames (a reference and a target)")
    if not 8 <= args.size <= 256:
        raise SystemExit(f"--size {args.size}: choose a size between 8 and 256 px (the base model uses 32)")
    config = ManifestConfig(args.images, args.clips, args.frames, args.size, args.seed)
    manifest = write_manifest(args.out, config, progress=True)
    print(f"wrote {len(validate_manifest(manifest))} pairs to {manifest}")


if __name__ == "__main__":
    main()
