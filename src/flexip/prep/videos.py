"""`flexip prep videos`: a folder of clips -> variant pairs, two frames of one shot (docs/method.md §3).

Every frame is decoded (PyAV) to find scene cuts; frames at least `min_gap` seconds apart are sampled, and pairs
are drawn only inside a shot, never across a cut, farthest apart in time first, skipping pairs whose frames are
near-identical (nothing moved: the pair would teach copying), at most `max_pairs` per clip. Only frames that
end up in a pair are written, as JPEG (the clip is lossy already; PNG would be ~10x the disk).

Memory and the work of pairing grow with `max_pairs`, not with a clip's length: a shot keeps only its first
and last `max_pairs` sampled frames (see `choose_pairs`), and a clip only the frames of its best pairs so far.
"""

from __future__ import annotations

import io
import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes, check_writable
from ..errors import FlexIPError
from .dedup import check_distance
from .folders import check_input_folder, no_files, relative, scan_files, sidecar_caption, with_caption
from .pictures import Unusable, check_min_size, check_pixels, dhash, hamming
from .progress import Outcome, Summary, check_output, problem, progress_path, run_items
from .split import Part

THUMBNAIL = 32  # pixels: the scene-cut test compares colour histograms of frames shrunk to this size
HISTOGRAM_BITS = 3  # per channel: 8 x 8 x 8 = 512 colour bins
JPEG_QUALITY = 95
# A clip whose decoded frames stop this much before its declared duration is truncated.
TRUNCATED_SHARE = 0.9


@dataclass(frozen=True)
class Sample:
    index: int  # among the clip's sampled frames
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
        # A damaged tag is no reason to refuse the frames: its undecodable bytes are replaced.
        container = av.open(str(path), metadata_errors="replace")
    except (av.error.FFmpegError, OSError) as e:
        if _looks_like_a_container(path):
            raise Unusable("damaged", f"a video container that cannot be opened: truncated or damaged ({e})") from None
        raise Unusable("not-a-video", f"cannot open it as a video ({e})") from None
    with container:
        if not container.streams.video:
            raise Unusable("not-a-video", "holds no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if stream.codec_context is not None:  # none for a codec FFmpeg lacks: decoding then fails below
            check_pixels(stream.codec_context.width, stream.codec_context.height)  # before a frame is decoded
        declared = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
        shot, last, previous, time, index = 0, None, None, None, 0
        try:
            for frame in container.decode(stream):
                if min(frame.width, frame.height) < min_size:
                    raise Unusable("too-small", f"{frame.width}x{frame.height} is under --min-size {min_size}")
                check_pixels(frame.width, frame.height)
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
                    yield Sample(index, time, shot, buffer.getvalue(), dhash(image))
                    index += 1
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


Pair = tuple[Sample, Sample]


def choose_pairs(samples: Iterable[Sample], max_pairs: int, distance: int) -> tuple[list[Pair], int]:
    """((reference, target) samples, how many samples there were): pairs of one shot, not near-identical, the
    farthest apart in time first.

    A shot's `max_pairs` farthest pairs all lie among its first and last `max_pairs` samples: a pair with
    another frame has `max_pairs` pairs at least as far apart beside it. So each shot keeps only those samples
    and pairs are drawn among them (where near-identical pairs are skipped, that may give fewer pairs than all
    of the shot's frames would): the work is bounded by `max_pairs`, whatever the clip's length.
    """
    chosen: list[Pair] = []
    first: list[Sample] = []
    last: deque[Sample] = deque(maxlen=max_pairs)

    def close_shot() -> list[Pair]:
        shot = [*first, *last]
        pairs = [
            (a, b) for i, a in enumerate(shot) for b in shot[i + 1 :] if hamming(a.dhash, b.dhash) > distance
        ]  # fmt: skip
        pairs += chosen
        pairs.sort(key=lambda pair: (pair[0].time - pair[1].time, pair[0].index, pair[1].index))
        return pairs[:max_pairs]

    count = 0
    for sample in samples:
        count += 1
        if first and sample.shot != first[0].shot:
            chosen = close_shot()
            first, last = [], deque(maxlen=max_pairs)
        (first if len(first) < max_pairs else last).append(sample)
    return close_shot(), count


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
    _check_sampling(min_gap, cut_threshold, max_pairs)
    check_min_size(min_size)
    check_distance(dedup_distance)
    folder, out, frames_dir = check_input_folder(Path(folder), "clips"), Path(out), Path(frames_dir)
    check_output(out, part, overwrite)
    _check_frames_dir(frames_dir, folder)
    items = scan_files(folder, exclude=(frames_dir,), out=out)
    if not items:
        raise no_files(folder, "clips")
    if not overwrite and not progress_path(part.output(out)).exists():
        _refuse_taken_frames(frames_dir, [items[i] for i in part.block(len(items))])

    def one(rel: str) -> Outcome:
        path = folder / rel
        try:
            samples = sample_clip(path, min_gap, cut_threshold, min_size)
            pairs, sampled = choose_pairs(samples, max_pairs, dedup_distance)
        except Unusable as e:
            return Outcome(problems=[problem(path, e.kind, str(e))])
        if not pairs:
            return Outcome(problems=[problem(path, "no-pairs", f"{sampled} sampled frames give no pair of "
                "one shot that is not near-identical; lower --min-gap or --dedup-distance")])  # fmt: skip
        names = _write_frames(pairs, frames_dir / rel, out.parent)
        return Outcome(rows=_pair_rows(pairs, names, rel, sidecar_caption(path)))

    return run_items(
        out, items, lambda keys: [one(key) for key in keys], part=part, restart=overwrite,
        settings={"input folder": str(folder.resolve()), "--frames-dir": str(frames_dir.resolve()),
                  "--min-size": min_size, "--dedup-distance": dedup_distance, "--max-pairs": max_pairs,
                  "--min-gap": min_gap, "--cut-threshold": cut_threshold},
        desc=f"clips{part.label}", unit="clip",
    )  # fmt: skip


def _check_sampling(min_gap: float, cut_threshold: float, max_pairs: int) -> None:
    if not (math.isfinite(min_gap) and min_gap >= 0):
        raise FlexIPError(f"--min-gap {min_gap}: give the seconds between sampled frames, 0 or more")
    if not 0 <= cut_threshold <= 1:
        raise FlexIPError(f"--cut-threshold {cut_threshold}: give a share of colour between 0 and 1")
    if max_pairs < 1:
        raise FlexIPError(f"--max-pairs {max_pairs}: give 1 or more")


def _check_frames_dir(frames_dir: Path, folder: Path) -> None:
    if frames_dir.exists() and not frames_dir.is_dir():
        raise FlexIPError(f"--frames-dir {frames_dir} is a file; give a folder for the frames")
    if frames_dir.resolve() == folder.resolve():
        raise FlexIPError(f"--frames-dir {frames_dir} is the clips folder itself; give another folder")
    check_writable(frames_dir, "--frames-dir")


def _refuse_taken_frames(frames_dir: Path, clips: list[str]) -> None:
    """A fresh run writes frames only where no earlier run (or anything else) put files."""
    taken = [rel for rel in clips if (frames_dir / rel).exists()]
    if taken:
        raise FlexIPError(
            f"--frames-dir {frames_dir} already holds frames of {taken[0]} (and {len(taken) - 1} more "
            "clips); give an empty folder, or pass --overwrite to replace them"
        )


def _write_frames(pairs: list[Pair], clip_dir: Path, manifest_dir: Path) -> dict[int, str]:
    """Write each frame of `pairs` once, into the clip's own folder; their paths relative to the manifest, by
    sample index."""
    names = {}
    for sample in {sample.index: sample for pair in pairs for sample in pair}.values():
        # The clip's file name is its folder: a.mp4 and a.mov differ.
        name = clip_dir / f"{sample.index:06d}.jpg"
        atomic_write_bytes(name, sample.jpeg)
        names[sample.index] = relative(name, manifest_dir)
    return names


def _pair_rows(pairs: list[Pair], names: dict[int, str], rel: str, caption: str | None) -> list[dict]:
    """The manifest rows of the clip `rel`'s pairs, whose frames are at `names` (by sample index)."""
    return [
        with_caption(
            {
                "reference": names[a.index],
                "target": names[b.index],
                "modality": "video",
                "source": rel,
                "kind": "frames",
                "times": [round(a.time, 3), round(b.time, 3)],
            },
            caption,
        )
        for a, b in pairs
    ]
