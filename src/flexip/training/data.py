"""Training data: the JSONL manifest, image/video mixing at a fixed ratio, augmentation, bad-sample skipping.

Every random choice is a function of (seed, stream position), never of a worker's or process's RNG state, so
the data order is the same with any number of workers and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import FlexIPError
from ..manifest import read_manifest_records
from ..models.config import MODALITIES

MAX_CONSECUTIVE_BAD = 32  # more bad samples in a row than this means the data itself is broken


@dataclass(frozen=True)
class Pair:
    """One training pair: a manifest line (its paths resolved against the manifest's folder) or a shard's sample
    (its files' bytes)."""

    reference: Path | bytes
    target: Path | bytes
    caption: str
    modality: int  # index into MODALITIES
    mask: Path | bytes | None


def read_manifest(path: str | os.PathLike) -> list[Pair]:
    """The manifest's pairs, paths resolved (docs/formats.md); image files are checked only when loaded."""
    root = Path(path).parent
    return [
        Pair(
            reference=root / record["reference"],
            target=root / record["target"],
            caption=record["caption"],
            modality=MODALITIES.index(record["modality"]),
            mask=root / record["mask"] if record.get("mask") else None,
        )
        for record in read_manifest_records(path)
    ]


def modality_at(position: int, video_fraction: Fraction) -> tuple[int, int]:
    """(modality, rank) of stream `position`: its modality's index in MODALITIES, and how many positions of that
    modality come before it.

    Position p holds a video pair iff floor((p + 1) f) > floor(p f): every window of n positions holds
    floor(n f) or ceil(n f) video pairs, so each batch has the configured ratio whatever the sources' sizes.
    """
    videos_before = math.floor(position * video_fraction)
    if math.floor((position + 1) * video_fraction) > videos_before:
        return 1, videos_before
    return 0, position - videos_before


class MixedStream:
    """An endless stream of pair indices in which a fixed share of positions are video pairs (`modality_at`).

    Each modality's pairs are visited in a fresh seeded permutation per pass.
    """

    def __init__(self, modalities: list[int], video_fraction: float, seed: int):
        self.fraction = Fraction(str(video_fraction))
        self.seed = seed
        self.members = [
            [i for i, m in enumerate(modalities) if m == index] for index in range(len(MODALITIES))
        ]
        for index, share in ((0, 1 - self.fraction), (1, self.fraction)):
            if share > 0 and not self.members[index]:
                name = MODALITIES[index]
                raise FlexIPError(
                    f"the manifest has no {name} pairs but data.video_fraction is {video_fraction}: add {name} "
                    f"pairs or set data.video_fraction to {1 if index == 0 else 0}"
                )
        self._permutations: dict[int, tuple[int, np.ndarray]] = {}  # modality -> (pass, its permutation)

    def __getitem__(self, position: int) -> int:
        modality, rank = modality_at(position, self.fraction)
        members = self.members[modality]
        epoch, offset = divmod(rank, len(members))
        if self._permutations.get(modality, (None,))[0] != epoch:
            order = np.random.default_rng([self.seed, modality, epoch]).permutation(len(members))
            self._permutations[modality] = (epoch, order)
        return members[self._permutations[modality][1][offset]]


class MixedBatchSampler(torch.utils.data.Sampler):
    """Batches of (pair index, stream position) for one process, starting at stream position `start`.

    Global batch b covers positions start + b * batch_size ...; process r takes batches r, r + W, r + 2W...
    so a run resumed at `start` sees exactly the positions it would have seen.
    """

    def __init__(self, stream: MixedStream, batch_size: int, start: int, rank: int, world_size: int):
        self.stream, self.batch_size, self.start = stream, batch_size, start
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batch = self.rank
        while True:
            first = self.start + batch * self.batch_size
            yield [(self.stream[p], p) for p in range(first, first + self.batch_size)]
            batch += self.world_size


def open_image(source: Path | bytes, mode: str) -> Image.Image:
    """The image at a path or in a file's bytes, decoded whole in `mode` (a truncated file fails here, not later)."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        return image.convert(mode)


def load_rgb(source: Path | bytes) -> Image.Image:
    return open_image(source, "RGB")


def _centre_square(image: Image.Image, size: int) -> Image.Image:
    width, height, left, top = _square_crop(image, size)
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    return image.crop((left, top, left + size, top + size))


def _square_crop(image: Image.Image, size: int) -> tuple[int, int, int, int]:
    """(width, height) of `image` resized so its short side is `size`, and the (left, top) of its centre square."""
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    return width, height, (width - size) // 2, (height - size) // 2


def size_conditioning(image: Image.Image, size: int) -> torch.Tensor:
    """SDXL's micro-conditioning of a target cut by `_centre_square`: (original height, original width, crop
    top, crop left, target height, target width), the crop in the resized image's pixels as SDXL was trained."""
    _, _, left, top = _square_crop(image, size)
    return torch.tensor([image.height, image.width, top, left, size, size])


def augment_reference(
    image: Image.Image, mask: Image.Image | None, rng: np.random.Generator, flip: bool = True
) -> Image.Image:
    """An invariant pair's reference: the subject cut out by its mask, or a random crop; flipped half the time.

    Without it the adapters could copy the target pixel for pixel (docs/method.md §3: reference = target).
    """
    if mask is not None and rng.random() < 0.5:
        # Subject on white, cropped to its box: what a user's cut-out reference looks like.
        white = Image.new("RGB", image.size, (255, 255, 255))
        image = Image.composite(image, white, mask.point(lambda v: 255 if v >= 128 else 0))
        box = mask.getbbox()
        if box is not None:
            image = image.crop(box)
    else:
        area = rng.uniform(0.5, 1.0) * image.width * image.height
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        width = min(image.width, round(math.sqrt(area * aspect)))
        height = min(image.height, round(math.sqrt(area / aspect)))
        left = int(rng.integers(0, image.width - width + 1))
        top = int(rng.integers(0, image.height - height + 1))
        image = image.crop((left, top, left + width, top + height))
    if flip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def load_pair(
    pair: Pair, rng: np.random.Generator, resolution: int, target_masks: bool = False,
    swap_caption: Callable[[np.random.Generator], str | None] | None = None,
) -> dict:  # fmt: skip
    """One training sample of `pair`: its reference (augmented if an image pair), target pixels and size
    conditioning, caption and modality; with `target_masks`, the target's subject mask.

    `swap_caption`, for image pairs, returns another pair's caption to use instead (or None to keep this one).
    Raises OSError or ValueError for an unreadable pair.
    """
    caption = pair.caption
    reference = load_rgb(pair.reference)
    target = reference if pair.target == pair.reference else load_rgb(pair.target)
    image_pair = pair.modality == MODALITIES.index("image")
    swapped = image_pair and swap_caption is not None and (other := swap_caption(rng)) is not None
    if swapped:
        caption = other
    mask = None
    if image_pair and pair.mask is not None and (target_masks or not swapped):
        mask = open_image(pair.mask, "L")
        if mask.size != reference.size:
            raise ValueError(f"the mask is {mask.size}, its reference {reference.size}")
    if image_pair:
        # With its caption swapped, the reference is the only record of the target's scene: it is cropped,
        # but not cut out or flipped, or the loss would teach a blur of the scenes it could have been.
        reference = augment_reference(reference, None if swapped else mask, rng, flip=not swapped)
    pixels = np.asarray(_centre_square(target, resolution), dtype=np.float32)
    sample = {
        "reference": reference,
        "pixel_values": torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1.0,  # (3, H, W) in [-1, 1]
        "sizes": size_conditioning(target, resolution),
        "caption": caption,
        "modality": pair.modality,
    }
    if target_masks:  # (1, H, W) in [0, 1], all 0 without a mask; an image pair's target is its reference
        target_mask = torch.zeros(1, resolution, resolution)
        if mask is not None:
            square = np.asarray(_centre_square(mask, resolution), dtype=np.float32) / 255.0
            target_mask = torch.from_numpy(square)[None]
        sample["target_mask"] = target_mask
    return sample


UNREADABLE = (OSError, ValueError, Image.DecompressionBombError)  # what an unreadable pair raises in load_pair


class PairDataset(torch.utils.data.Dataset):
    """Loads the pair at (index, position); an unreadable pair is replaced by the next pair of its modality.

    Replacing rather than dropping keeps every batch full and its image:video ratio exact, and keeps the
    processes of a distributed run in step. What was skipped travels with the sample for the trainer to log.
    """

    def __init__(
        self, pairs: list[Pair], resolution: int, seed: int, swap_captions: float = 0.0, target_masks: bool = False
    ):  # fmt: skip
        self.pairs, self.resolution, self.seed = pairs, resolution, seed
        self.swap_captions = swap_captions  # share of image pairs captioned with another image pair's caption
        self.target_masks = target_masks  # add each target's subject mask (for `subject_loss_weight`)
        self.members = {
            m: [i for i, p in enumerate(pairs) if p.modality == m] for m in range(len(MODALITIES))
        }
        self.slot = np.zeros(len(pairs), dtype=np.int64)  # index -> its place in its modality's list
        for members in self.members.values():
            self.slot[members] = np.arange(len(members))

    def __len__(self) -> int:
        return len(self.pairs)

    def swap_caption(self, rng: np.random.Generator) -> str | None:
        """Another image pair's caption for `swap_captions` of the image pairs, else None."""
        if rng.random() >= self.swap_captions:
            return None
        members = self.members[MODALITIES.index("image")]
        return self.pairs[members[rng.integers(len(members))]].caption

    def load(self, index: int, rng: np.random.Generator) -> dict:
        swap = self.swap_caption if self.swap_captions > 0 else None
        return load_pair(self.pairs[index], rng, self.resolution, self.target_masks, swap)

    def draws(self, position: int) -> np.random.Generator:
        """The augmentation and caption-swap draws of stream `position` (shards draw per key and pass instead)."""
        return np.random.default_rng([self.seed, position])

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, position = item
        rng = self.draws(position)
        members = self.members[self.pairs[index].modality]
        start = int(self.slot[index])
        skipped = []
        for attempt in range(min(len(members), MAX_CONSECUTIVE_BAD)):
            candidate = members[(start + attempt) % len(members)]
            try:
                return {**self.load(candidate, rng), "position": position, "skipped": skipped}
            except UNREADABLE as e:
                pair = self.pairs[candidate]
                skipped.append(f"reference {pair.reference}, target {pair.target}: {e}")
        raise FlexIPError(
            f"{len(skipped)} training pairs in a row are unreadable, e.g. {skipped[0]}; check the manifest's files"
        )


def collate(samples: list[dict]) -> dict:
    batch = {
        "references": [s["reference"] for s in samples],
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        "sizes": torch.stack([s["sizes"] for s in samples]),  # (batch, 6): size_conditioning
        "captions": [s["caption"] for s in samples],
        "modality": torch.tensor([s["modality"] for s in samples]),
        "positions": [s["position"] for s in samples],
        "skipped": [message for s in samples for message in s.get("skipped", ())],
    }
    if "target_mask" in samples[0]:
        batch["target_masks"] = torch.stack([s["target_mask"] for s in samples])
    return batch
