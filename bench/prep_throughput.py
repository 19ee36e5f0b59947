"""Data-preparation throughput on this machine: photos/s, video seconds/s (with and without writing frames),
captions/s on a tiny random Qwen2-VL. Media are generated; run from the repository root:

    OMP_NUM_THREADS=1 python bench/prep_throughput.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import av
import numpy as np
from test_prep_models import save_tiny_qwen2_vl

from flexip.prep.captions import Captioner
from flexip.prep.images import prepare_images
from flexip.prep.videos import prepare_videos, sample_clip
from prep_media import noise

PHOTOS, PHOTO_SIZE = 200, (768, 512)
CLIPS, CLIP_SECONDS, CLIP_SIZE, FPS = 3, 10, 480, 30


def clip(path: Path, seed: int) -> None:
    ground = np.asarray(noise(seed, CLIP_SIZE, CLIP_SIZE))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width = stream.height = CLIP_SIZE
        stream.pix_fmt = "yuv420p"
        for index in range(CLIP_SECONDS * FPS):
            frame = np.roll(ground, index * 3, axis=1)  # a pan
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> None:
    root = Path(tempfile.mkdtemp())
    photos = root / "photos"
    photos.mkdir()
    for index in range(PHOTOS):
        noise(index, *PHOTO_SIZE).save(photos / f"{index}.jpg", quality=90)
    start = time.perf_counter()
    prepare_images(photos, root / "images.jsonl")
    elapsed = time.perf_counter() - start
    print(
        f"images: {PHOTOS / elapsed:.0f} photos/s ({PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG, decode + hash + dedup)"
    )

    clips = root / "clips"
    clips.mkdir()
    for index in range(CLIPS):
        clip(clips / f"{index}.mp4", index)
    seconds = CLIPS * CLIP_SECONDS
    start = time.perf_counter()
    for path in sorted(clips.iterdir()):
        list(sample_clip(path, min_gap=1.0, cut_threshold=0.5, min_size=256))
    decode = time.perf_counter() - start
    start = time.perf_counter()
    prepare_videos(clips, root / "videos.jsonl", root / "frames")
    full = time.perf_counter() - start
    print(f"videos ({CLIP_SIZE}x{CLIP_SIZE} MPEG-4, {FPS} fps): {seconds / decode:.1f} video s/s without writing "
          f"frames, {seconds / full:.1f} with")  # fmt: skip

    captioner = Captioner.from_pretrained(str(save_tiny_qwen2_vl(root / "qwen")), "cpu")
    images = [noise(i, 448, 448) for i in range(32)]
    captioner(images[:8])  # warm-up
    start = time.perf_counter()
    for batch in range(0, len(images), 8):
        captioner(images[batch : batch + 8])
    print(
        f"captions: {len(images) / (time.perf_counter() - start):.1f} captions/s (tiny Qwen2-VL, batch 8, CPU)"
    )


if __name__ == "__main__":
    main()
