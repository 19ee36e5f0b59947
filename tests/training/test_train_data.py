"""Training data: image/video mixing at the configured ratio, seeded order, augmentation, bad samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flexip.training.data import (
    MixedBatchSampler,
    MixedStream,
    PairDataset,
    augment_reference,
    collate,
    read_manifest,
)


def _write_pairs(root: Path, images: int, videos: int) -> Path:
    """A manifest of `images` image pairs and `videos` video pairs, each picture a distinct flat colour."""
    lines = []
    for index in range(images + videos):
        modality = "image" if index < images else "video"
        Image.new("RGB", (24, 16), (index * 7 % 256, 40, 200)).save(root / f"{index}.png")
        target = f"{index}.png" if modality == "image" else f"{(index + 1) % (images + videos)}.png"
        lines.append(
            {"reference": f"{index}.png", "target": target, "caption": f"pair {index}", "modality": modality}
        )
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def _loader(manifest: Path, batch_size: int, fraction: float, seed: int = 0, start: int = 0, rank: int = 0,
            world: int = 1, workers: int = 0, swap: float = 0.0, target_masks: bool = False):  # fmt: skip
    pairs = read_manifest(manifest)
    stream = MixedStream([p.modality for p in pairs], fraction, seed)
    sampler = MixedBatchSampler(stream, batch_size, start, rank, world)
    dataset = PairDataset(pairs, resolution=16, seed=seed, swap_captions=swap, target_masks=target_masks)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers
    )


def _take(loader, count: int) -> list[dict]:
    batches = iter(loader)
    return [next(batches) for _ in range(count)]


@pytest.mark.parametrize(
    ("fraction", "batch_size", "videos_per_batch"), [(0.5, 4, 2), (0.25, 8, 2), (0.0, 4, 0), (1.0, 2, 2)]
)
def test_every_batch_has_the_configured_image_video_ratio(tmp_path, fraction, batch_size, videos_per_batch):
    # 10 image pairs and 3 video pairs: the ratio holds whatever the sources' sizes.
    manifest = _write_pairs(tmp_path, images=10, videos=3)
    for batch in _take(_loader(manifest, batch_size, fraction), 12):
        assert int(batch["modality"].sum()) == videos_per_batch


def test_each_pass_over_a_modality_visits_every_pair_once(tmp_path):
    pairs = read_manifest(_write_pairs(tmp_path, images=10, videos=3))
    stream = MixedStream([p.modality for p in pairs], 0.5, seed=0)
    videos = [stream[p] for p in range(1, 2 * 3 * 4, 2)]  # odd positions hold the video pairs at 1:1
    for start in range(0, len(videos), 3):
        assert sorted(videos[start : start + 3]) == [10, 11, 12]
    images = [stream[p] for p in range(0, 40, 2)]
    assert sorted(images[:10]) == list(range(10)) and sorted(images[10:]) == list(range(10))
    assert images[:10] != images[10:]  # a fresh order each pass


def test_order_is_fixed_by_the_seed_and_independent_of_workers(tmp_path):
    manifest = _write_pairs(tmp_path, images=10, videos=3)

    def captions(**kwargs):
        return [b["captions"] for b in _take(_loader(manifest, 4, 0.5, **kwargs), 5)]

    assert captions(seed=0) == captions(seed=0, workers=2)
    assert captions(seed=0) != captions(seed=1)


def test_resuming_or_splitting_the_stream_yields_the_same_positions(tmp_path):
    manifest = _write_pairs(tmp_path, images=10, videos=3)
    single = _take(_loader(manifest, 2, 0.5), 6)
    resumed = _take(_loader(manifest, 2, 0.5, start=4), 4)  # after 2 batches of 2
    assert [b["positions"] for b in resumed] == [b["positions"] for b in single[2:]]
    assert all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(resumed, single[2:]))
    rank0 = _take(_loader(manifest, 2, 0.5, rank=0, world=2), 3)
    rank1 = _take(_loader(manifest, 2, 0.5, rank=1, world=2), 3)
    interleaved = [b["positions"] for pair in zip(rank0, rank1) for b in pair]
    assert interleaved == [b["positions"] for b in single]


def test_targets_are_square_in_range_and_image_references_are_augmented(tmp_path):
    manifest = _write_pairs(tmp_path, images=4, videos=0)
    batch = _take(_loader(manifest, 4, 0.0), 1)[0]
    assert batch["pixel_values"].shape == (4, 3, 16, 16)
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1
    # A random crop of at least half the area, sometimes flipped: never the untouched 24x16 picture's size twice in a row.
    sizes = [reference.size for reference in batch["references"]]
    assert all(w * h >= 0.45 * 24 * 16 for w, h in sizes) and len(set(sizes)) > 1


@pytest.mark.parametrize("swap", [0.0, 1.0])
def test_swapped_captions_come_from_other_image_pairs_only(tmp_path, swap):
    manifest = _write_pairs(tmp_path, images=4, videos=2)
    captions = {"image": [], "video": []}
    for batch in _take(_loader(manifest, 4, 0.5, swap=swap), 6):
        for reference, caption, modality in zip(batch["references"], batch["captions"], batch["modality"]):
            own = f"pair {reference.getpixel((0, 0))[0] // 7}"  # picture i is the flat colour (7 i, 40, 200)
            captions["image" if modality == 0 else "video"].append((own, caption))
    assert all(own == caption for own, caption in captions["video"])
    swapped = [caption for own, caption in captions["image"] if own != caption]
    assert set(swapped) <= {f"pair {i}" for i in range(4)}
    assert (len(swapped) >= len(captions["image"]) // 2) if swap else not swapped


@pytest.mark.parametrize("swap", [0.0, 1.0])
def test_a_swapped_caption_keeps_its_reference_scene_unflipped_and_uncut(tmp_path, swap):
    # With its caption swapped, the reference is the target scene's only record: cropped, never flipped or cut out.
    lines = []
    for index in range(4):
        picture = Image.new("RGB", (24, 16), (255, 0, 0))
        picture.paste((0, 0, 255), (12, 0, 24, 16))  # red left half, blue right half
        mask = Image.new("L", (24, 16), 0)
        for box in ((8, 4, 12, 8), (12, 8, 16, 12)):  # a cut-out of these two squares shows white
            mask.paste(255, box)
        picture.save(tmp_path / f"{index}.png")
        mask.save(tmp_path / f"{index}_mask.png")
        lines.append({"reference": f"{index}.png", "target": f"{index}.png", "caption": f"pair {index}",
                      "modality": "image", "mask": f"{index}_mask.png"})  # fmt: skip
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    references = [r for batch in _take(_loader(manifest, 4, 0.0, swap=swap), 6) for r in batch["references"]]
    flipped = [r.getpixel((0, r.height // 2)) == (0, 0, 255) for r in references]
    cut_out = [(255, 255, 255) in {pixel for _, pixel in r.getcolors()} for r in references]
    if swap:
        assert not any(flipped) and not any(cut_out)
    else:
        assert any(flipped) and any(cut_out)  # what the check above would catch


@pytest.mark.parametrize("swap", [0.0, 1.0])
def test_target_masks_cover_the_target_subject_of_image_pairs_only(tmp_path, swap):
    lines = []
    for index in range(4):
        Image.new("RGB", (32, 16), (index * 7, 40, 200)).save(tmp_path / f"{index}.png")
        mask = Image.new("L", (32, 16), 0)
        mask.paste(255, (12, 4, 20, 12))  # an 8x8 subject in the middle of the 16x16 centre square
        mask.save(tmp_path / f"{index}_mask.png")
        modality = "image" if index < 2 else "video"
        target = f"{index}.png" if modality == "image" else f"{(index + 1) % 4}.png"
        lines.append({"reference": f"{index}.png", "target": target, "caption": f"pair {index}",
                      "modality": modality, "mask": f"{index}_mask.png"})  # fmt: skip
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    expected = torch.zeros(1, 16, 16)
    expected[:, 4:12, 4:12] = 1.0  # the centre square's crop starts 8 px in: the subject lands at 4..12
    for batch in _take(_loader(manifest, 4, 0.5, swap=swap, target_masks=True), 3):
        assert batch["target_masks"].shape == (4, 1, 16, 16)
        for mask, modality in zip(batch["target_masks"], batch["modality"].tolist()):
            # A video pair's mask is its reference frame's, not its target's: it gets none.
            torch.testing.assert_close(mask, expected if modality == 0 else torch.zeros(1, 16, 16))
    assert "target_masks" not in _take(_loader(manifest, 4, 0.5, swap=swap), 1)[0]


def test_mask_cut_out_keeps_only_the_subject_on_white():
    image = Image.new("RGB", (20, 20), (0, 0, 255))
    mask = Image.new("L", (20, 20), 0)
    for box in ((5, 5, 10, 10), (10, 10, 15, 15)):  # two red squares touching at a corner: the subject
        image.paste((255, 0, 0), box)
        mask.paste(255, box)
    cut_outs = [augment_reference(image, mask, np.random.default_rng(seed)) for seed in range(8)]
    boxed = [np.asarray(c).reshape(-1, 3) for c in cut_outs if c.size == (10, 10)]
    assert boxed, "no cut-out in 8 draws"
    for pixels in boxed:
        assert {tuple(p) for p in pixels} == {(255, 0, 0), (255, 255, 255)}  # no blue background left


def test_bad_samples_are_replaced_and_reported_with_their_paths(tmp_path):
    manifest = _write_pairs(tmp_path, images=4, videos=2)
    (tmp_path / "1.png").unlink()  # missing
    (tmp_path / "2.png").write_bytes(b"not a png at all")  # corrupt
    png = (tmp_path / "3.png").read_bytes()
    (tmp_path / "3.png").write_bytes(png[: len(png) // 2])  # truncated
    batches = _take(_loader(manifest, 4, 0.5), 6)
    skipped = [message for b in batches for message in b["skipped"]]
    for name in ("1.png", "2.png", "3.png"):
        assert any(str(tmp_path / name) in message for message in skipped), name
    for batch in batches:
        assert len(batch["captions"]) == 4 and int(batch["modality"].sum()) == 2  # still full and mixed
        assert not {"pair 1", "pair 2", "pair 3"} & set(batch["captions"])
