"""`flexip prep videos`: a folder of clips -> variant pairs, two frames of one shot (method.md §3).

Every frame is decoded (PyAV) to find scene cuts; frames at least `min_gap` seconds apart are sampled, and pairs
are drawn only inside a shot, never across a cut, farthest apart in time first, skipping pairs whose frames are
near-identical (nothing moved: the pair would teach copying), at most `max_pairs` per clip. Only frames that
end up in a pair are written, as JPEG (the clip is lossy already; PNG would be ~10x the disk).

Sampled frames are kept for the clip in hand as JPEG bytes, so memory grows with a clip's length / `min_gap`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes
from ..errors import FlexIPError
from .folders import check_input_folder, no_files, relative, scan_files, sidecar_caption, with_caption
from .pictures import Unusable, dhash, hamming
from .progress import Outcome, Summary, check_output, problem, progress_path, run_items
from .split import Part

THUMBNAIL = 32  # pixels: the scene-cut test compares colour histograms of frames shrunk to this size
HISTOGRAM_BITS = 3  # per channel: 8 x 8 x 8 = 512 colour bins
JPEG_QUALITY = 95
# A clip whose decoded frames stop this much before its declared duration is truncated.
TRUNCATED_SHARE = 0.9


@dataclass(frozen=True)
class Sample:
    time: float  # seconds
    shot: int  # scene-cut count before this frame
    jpeg: bytes  # encoded right away: a long clip's sampled frames would not fit in memory as pixels
    dhash: int


def colour_histogram(thumbnail: np.ndarray) -> np.ndarray:
    """The share of a (H, W, 3) uint8 thumbnail's pixels in each of 512 RGB bins."""
    bins = (thumbnail >> (8 - HISTOGRAM_BITS)).astype(np.int64)
    index = (bins[..., 0] << (2 * HISTOGRAM_BITS)) | (bins[..., 1] << HISTOGRAM_BITS) | bins[..., 2]
    return np.bincount(index.ravel(), minlength=1 << (3 * HISTOGRAM_BITS)) / index.size


def cut_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - histogram intersection (Swain & Ballard, 1991): the share of colour that changed bins, in [0, 1].

    Motion and camera pans keep a shot's colours, so they stay low; a cut to another scene moves most of them.
    """
    return float(1.0 - np.minimum(a, b).sum())


def sample_clip(path: Path, min_gap: float, cut_threshold: float, min_size: int) -> Iterator[Sample]:
    """Decode every frame of `path`'s first video stream; yield the sampled frames with their shot number."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        if _looks_like_a_container(path):
            raise Unusable("damaged", f"a video container that cannot be opened: truncated or damaged ({e})") from None
        raise Unusable("not-a-video", f"cannot open it as a video ({e})") from None
    with container:
        if not container.streams.video:
            raise Unusable("not-a-video", "holds no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        declared = float(stream.duration * stream.time_base) if stream.duration else None
        shot, last, previous, time = 0, None, None, None
        try:
            for frame in container.decode(stream):
                if min(frame.width, frame.height) < min_size:
                    raise Unusable("too-small", f"{frame.width}x{frame.height} is under --min-size {min_size}")
                time = float(frame.time) if frame.time is not None else 0.0
                thumb = frame.reformat(width=THUMBNAIL, height=THUMBNAIL, format="rgb24").to_ndarray()
                histogram = colour_histogram(thumb)
                cut = previous is not None and cut_distance(previous, histogram) > cut_threshold
                previous = histogram
                if cut:
                    shot += 1
                if cut or last is None or time - last >= min_gap:
                    last = time
                    image = frame.to_image()
                    buffer = io.BytesIO()
                    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
                    yield Sample(time, shot, buffer.getvalue(), dhash(image))
        except av.error.FFmpegError as e:
            raise Unusable("damaged", f"decoding failed at {time or 0:.2f} s ({e})") from None
        if time is None:
            raise Unusable("damaged", "no frame could be decoded")
        if declared and time < TRUNCATED_SHARE * declared - 1.0:
            raise Unusable("truncated", f"frames stop at {time:.2f} s of its {declared:.2f} s")


def _looks_like_a_container(path: Path) -> bool:
    """Whether the file starts like MP4/MOV (an `ftyp` box), Matroska/WebM (EBML) or AVI (RIFF)."""
    with open(path, "rb") as file:
        head = file.read(12)
    return head[4:8] == b"ftyp" or head[:4] == b"\x1a\x45\xdf\xa3" or head[:4] == b"RIFF"


def choose_pairs(samples: list[Sample], max_pairs: int, distance: int) -> list[tuple[int, int]]:
    """(reference, target) sample indices: same shot, not near-identical, the farthest apart in time first."""
    candidates = [
        (i, j)
        for i in range(len(samples))
        for j in range(i + 1, len(samples))
        if samples[i].shot == samples[j].shot and hamming(samples[i].dhash, samples[j].dhash) > distance
    ]
    candidates.sort(key=lambda pair: (samples[pair[0]].time - samples[pair[1]].time, pair))
    return candidates[:max_pairs]


def prepare_videos(
    folder: Path,
    out: Path,
    frames_dir: Path,
    *,
    min_gap: float = 1.0,
    cut_threshold: float = 0.5,
    dedup_distance: int = 4,
    max_pairs: int = 8,
    min_size: int = 256,
    part: Part = Part(),
    overwrite: bool = False,
) -> Summary:
    """Write the variant pairs of every clip under `folder` to `out`, their frames under `frames_dir`."""
    folder, out, frames_dir = check_input_folder(Path(folder), "clips"), Path(out), Path(frames_dir)
    check_output(out, part, overwrite)
    items = scan_files(folder, exclude=(frames_dir,))
    if not items:
        raise no_files(folder, "clips")
    if not overwrite and not progress_path(part.output(out)).exists():
        # A fresh run writes frames only where no earlier run (or anything else) put files.
        taken = [rel for rel in (items[i] for i in part.block(len(items))) if (frames_dir / rel).exists()]
        if taken:
            raise FlexIPError(
                f"--frames-dir {frames_dir} already holds frames of {taken[0]} (and {len(taken) - 1} more clips); "
                "give an empty folder, or pass --overwrite to replace them"
            )

    def one(rel: str) -> Outcome:
        path = folder / rel
        try:
            samples = list(sample_clip(path, min_gap, cut_threshold, min_size))
        except Unusable as e:
            return Outcome(problems=[problem(path, e.kind, str(e))])
        pairs = choose_pairs(samples, max_pairs, dedup_distance)
        if not pairs:
            shots = samples[-1].shot + 1
            return Outcome(problems=[problem(path, "no-pairs", f"{len(samples)} sampled frames in {shots} shot(s) "
                "give no pair of one shot that is not near-identical; lower --min-gap or --dedup-distance")])  # fmt: skip
        names = {}
        for index in sorted({i for pair in pairs for i in pair}):
            name = frames_dir / rel / f"{index:06d}.jpg"  # the clip's file name is its folder: a.mp4 and a.mov differ
            atomic_write_bytes(name, samples[index].jpeg)
            names[index] = relative(name, out.parent)
        caption = sidecar_caption(path)
        rows = [
            with_caption({"reference": names[i], "target": names[j], "modality": "video", "source": rel,
                          "kind": "frames", "times": [round(samples[i].time, 3), round(samples[j].time, 3)]},
                         caption)  # fmt: skip
            for i, j in pairs
        ]
        return Outcome(rows=rows)

    return run_items(
        out, items, lambda keys: [one(key) for key in keys], part=part, restart=overwrite,
        desc=f"clips{part.label}", unit="clip",
    )  # fmt: skip
