"""Scoring a results directory: per-image metrics (scores.jsonl) and their means (summary.csv, .md)."""

from __future__ import annotations

import csv
import io
import math
import os
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from ..atomic import atomic_write_bytes
from ..errors import FlexIPError
from ..text_files import read_text
from . import metrics
from .aesthetic import AestheticHead
from .extractors import ClipFeatures, DinoFeatures
from .results import (
    MANIFEST_FILE,
    REMAKE,
    SCORES_FILE,
    SUMMARY_FILE,
    PlannedImage,
    read_generation,
    readable_image,
    write_jsonl,
)
from .score_config import ScoreConfig
from .tables import markdown_table, write_csv

BATCH_SIZE = 16


def _open(path: str | os.PathLike) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as e:
        raise FlexIPError(f"cannot read image {path}: {e}") from e


class Scorer:
    """The extractors (each CLIP loaded once, however many metrics use it) and the real images' features."""

    def __init__(self, config: ScoreConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.aesthetic = AestheticHead.from_file(config.aesthetic_head)  # first: a small file, quick to check
        options: dict[str, list[str]] = {}  # each CLIP, loaded once, and the options that name it
        for option, name in (
            ("--clip-model", config.clip_model),
            ("--iqa-model", config.iqa_model),
            ("--aesthetic-model", config.aesthetic_model),
        ):
            options.setdefault(name, []).append(option)
        clips = {}
        for name, named in options.items():
            clips[name] = ClipFeatures.from_pretrained(name, device, "/".join(named))
        self.clip, self.iqa, self.aesthetic_clip = (
            clips[config.clip_model],
            clips[config.iqa_model],
            clips[config.aesthetic_model],
        )
        self.dino = DinoFeatures.from_pretrained(config.dino_model, device, "--dino-model")
        if self.aesthetic.embed_dim != self.aesthetic_clip.model.config.projection_dim:
            raise FlexIPError(
                f"the aesthetic head {config.aesthetic_head} reads {self.aesthetic.embed_dim}-d embeddings "
                f"but --aesthetic-model {config.aesthetic_model} gives "
                f"{self.aesthetic_clip.model.config.projection_dim}-d ones; give the CLIP the head was trained "
                "on (openai/clip-vit-large-patch14 for LAION's head)"
            )
        self.anchors = self.iqa.text_embeds(list(metrics.CLIP_IQA_PROMPTS))
        self._real: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # path -> (CLIP, DINO) features

    def _real_features(self, paths: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(len(paths), dim) CLIP and DINO features of real images, each computed once per run."""
        new = [path for path in dict.fromkeys(paths) if path not in self._real]
        if new:
            images = [_open(path) for path in new]
            for path, clip, dino in zip(new, self.clip.image_embeds(images), self.dino(images)):
                self._real[path] = (clip, dino)
        return torch.stack([self._real[p][0] for p in paths]), torch.stack([self._real[p][1] for p in paths])

    def score(self, images: list[Image.Image], planned: list[PlannedImage]) -> list[dict[str, float]]:
        """The five metrics of each generated image."""
        clip = self.clip.image_embeds(images)
        dino = self.dino(images)
        text = self.clip.text_embeds([item.prompt for item in planned])
        if self.config.identity == "reference":
            clip_real, dino_real = self._real_features([item.reference for item in planned])
            clip_i = metrics.cosine_similarity(clip, clip_real)
            dino_i = metrics.cosine_similarity(dino, dino_real)
        else:  # the DreamBooth convention: the mean over all of the subject's real images
            pairs = [self._real_features(list(item.real_images)) for item in planned]
            clip_i = torch.stack(
                [metrics.mean_cosine_similarity(c[None], real[None])[0] for c, (real, _) in zip(clip, pairs)]
            )
            dino_i = torch.stack(
                [metrics.mean_cosine_similarity(d[None], real[None])[0] for d, (_, real) in zip(dino, pairs)]
            )
        iqa = metrics.clip_iqa(clip if self.iqa is self.clip else self.iqa.image_embeds(images), self.anchors)
        aesthetic_embeds = (
            clip if self.aesthetic_clip is self.clip else self.aesthetic_clip.image_embeds(images)
        )
        with torch.no_grad():
            aesthetic = self.aesthetic(aesthetic_embeds)
        columns = {
            "CLIP-T": metrics.cosine_similarity(clip, text),
            "CLIP-I": clip_i,
            "DINO-I": dino_i,
            "CLIP-IQA": iqa,
            "Aesthetic": aesthetic,
        }
        return [{name: float(values[i]) for name, values in columns.items()} for i in range(len(images))]


def check_results(
    directory: str | os.PathLike, identity: str = "reference"
) -> tuple[dict, list[PlannedImage]]:
    """The settings and images of a complete results directory, with the real images the `identity` mode
    compares with (checked before any model is loaded)."""
    settings, planned = read_generation(directory)
    if not planned:
        raise FlexIPError(f"{directory}: {MANIFEST_FILE} lists no images; {REMAKE}")
    missing = [item.image for item in planned if not readable_image(Path(directory) / item.image)]
    if missing:
        raise FlexIPError(
            f"{directory}: {len(missing)} of {len(planned)} images are missing or damaged (first: {missing[0]}); "
            "run the same `flexip eval generate` again: it makes them again and keeps the others"
        )
    real = {item.reference: None for item in planned}
    if identity == "all":
        real.update(dict.fromkeys(path for item in planned for path in item.real_images))
    for path in real:
        if not readable_image(Path(path)):
            raise FlexIPError(
                f"{path} is not a whole image file (missing or damaged), and {directory} compares with it; "
                "put the benchmark's image back where it was generated from"
            )
    return settings, planned


def score_results(directory: str | os.PathLike, scorer: Scorer) -> list[dict]:
    """Score every image of a results directory; writes scores.jsonl and summary.csv / summary.md."""
    directory = Path(directory)
    settings, planned = check_results(directory, scorer.config.identity)
    record = {
        "label": settings["label"],
        "method": settings["method"],
        "family": settings.get("family"),  # the base's; None for imported images (and older results)
        "dial_name": settings["dial_name"],
        "benchmark": settings["benchmark"]["name"],
        **asdict(scorer.config),
    }
    rows = []
    for start in tqdm(range(0, len(planned), BATCH_SIZE), desc=f"scoring {directory.name}", unit="batch"):
        batch = planned[start : start + BATCH_SIZE]
        values = scorer.score([_open(directory / item.image) for item in batch], batch)
        rows += [
            {**asdict(item), "real_images": list(item.real_images), **record, **value}
            for item, value in zip(batch, values)
        ]
    write_jsonl(directory / SCORES_FILE, rows)
    write_summary(directory, rows, settings)
    return rows


# What every score row and summary row records about how it was measured.
PROVENANCE = (
    "benchmark",
    "identity",
    "clip_model",
    "dino_model",
    "iqa_model",
    "aesthetic_model",
    "aesthetic_head",
)
SUMMARY_HEADER = ["label", "dial_name", "dial", "category", "images", *metrics.METRICS, *PROVENANCE]


def summarize(rows: list[dict]) -> list[list]:
    """Metric means per dial value, over all subjects ("all") and per subject category."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["dial"], "all")].append(row)
        groups[(row["dial"], row["category"])].append(row)

    def order(key: tuple) -> tuple:  # by dial value, "all" before the categories
        dial, category = key
        return (dial or 0.0, category != "all", category)

    table = []
    for (dial, category), members in sorted(groups.items(), key=lambda item: order(item[0])):
        first = members[0]
        means = [sum(member[metric] for member in members) / len(members) for metric in metrics.METRICS]
        dial_cells = [first["dial_name"] or "", "" if dial is None else dial]
        provenance = [first[key] for key in PROVENANCE]
        table.append([first["label"], *dial_cells, category, len(members), *means, *provenance])
    return table


def write_summary(directory: Path, rows: list[dict], settings: dict) -> None:
    table = summarize(rows)
    write_csv(directory / f"{SUMMARY_FILE}.csv", SUMMARY_HEADER, table)
    first = rows[0]
    compared = "the reference used" if first["identity"] == "reference" else "all real images of the subject"
    lines = [
        f"# {settings['label']} ({_method(settings)}) on {settings['benchmark']['name']}\n",
        f"Identity compared with: {first['identity']} ({compared}).",
        (
            f"Backbones: CLIP-I/CLIP-T `{first['clip_model']}`, DINO-I `{first['dino_model']}`, CLIP-IQA "
            f"`{first['iqa_model']}`, Aesthetic `{first['aesthetic_model']}` + `{first['aesthetic_head']}`.\n"
        ),
        markdown_table(SUMMARY_HEADER[:10], [row[:10] for row in table]),
    ]
    atomic_write_bytes(directory / f"{SUMMARY_FILE}.md", "\n".join(lines).encode())


def _method(settings: dict) -> str:
    """The method as the summary's title names it, with its base's family where it ran on one."""
    family = settings.get("family")
    return settings["method"] if family is None else f"{settings['method']}, {family} base"


def read_summary(directory: str | os.PathLike) -> list[dict]:
    """The rows of summary.csv over all categories (`category` = `all`), one per dial value: dial values and
    metrics as floats (the dial None without one). A spreadsheet's re-save (a BOM, CRLF) reads as written."""
    path = Path(directory) / f"{SUMMARY_FILE}.csv"
    if Path(directory).is_file():
        raise FlexIPError(f"{directory} is a file; give a results directory scored by `flexip eval score`")
    if not path.is_file():
        raise FlexIPError(f"{path} does not exist; run `flexip eval score {directory}` first")
    rescore = f"run `flexip eval score {directory} --overwrite` to write it anew"
    reader = csv.DictReader(io.StringIO(read_text(path, rescore), newline=""))
    missing = [column for column in SUMMARY_HEADER if column not in (reader.fieldnames or [])]
    if missing:
        raise FlexIPError(f"{path}: missing columns {missing}; {rescore}")
    rows, dials = [], set()
    for row in reader:
        if row["category"] != "all":
            continue
        where = f"{path}:{reader.line_num}"
        dial = _number(row["dial"], "dial", where, rescore) if row["dial"] else None
        if dial in dials:
            raise FlexIPError(f"{where}: dial {dial} again; keep one row per dial value, or {rescore}")
        dials.add(dial)
        rows.append(
            {
                **row,
                "dial": dial,
                **{metric: _number(row[metric], metric, where, rescore) for metric in metrics.METRICS},
            }
        )
    if not rows:
        raise FlexIPError(f"{path} has no rows over all categories (category all); {rescore}")
    return rows


def _number(text: str, column: str, where: str, fix: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise FlexIPError(f"{where}: {column} {text!r} is not a finite number; {fix}")
    return value
