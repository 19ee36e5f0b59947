"""Benchmarks as lists of cases (subject, prompt, reference), under the zero-shot protocol of ecosystem.md.

The protocol, written into every result file:
- the reference is ONE image per subject (DreamBench: `00.jpg` unless told otherwise);
- DreamBench prompts are written for fine-tuned methods ("a {unique_token} {class_token} in the jungle");
  zero-shot methods get them with the unique token dropped ("a dog in the jungle");
- identity metrics compare each generated image with that reference (DreamBench++ convention), or, at scoring
  time and on request, average over all of the subject's real images (DreamBooth convention).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import FlexIPError

BENCHMARKS = ("dreambench", "dreambench++", "jsonl")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class Case:
    """One prompt for one subject: what every method generates images for."""

    subject: str
    category: str  # DreamBench: live | object; DreamBench++: animal | human | object | style
    prompt_index: int  # position in the subject's prompt list, stable across subsets
    prompt: str  # the prompt the methods are given
    reference: str  # absolute path of the reference image the methods see
    real_images: tuple[str, ...]  # absolute paths of all the subject's real images


@dataclass(frozen=True)
class Benchmark:
    name: str
    protocol: dict  # how references and prompts were chosen; recorded beside results
    cases: tuple[Case, ...]

    @property
    def subjects(self) -> list[str]:
        return list(dict.fromkeys(case.subject for case in self.cases))


def _images_in(directory: Path) -> list[Path]:
    return sorted(path for path in directory.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)


def load_dreambench(root: str | os.PathLike, reference_image: str = "00.jpg") -> Benchmark:
    """The DreamBooth dataset: images/<subject>/NN.jpg and prompts.json (classes, live_subjects, prompt
    lists)."""
    root = Path(root).resolve()
    prompts_file = root / "prompts.json"
    if not prompts_file.is_file():
        raise FlexIPError(
            f"{root} is not a DreamBench copy: {prompts_file.name} is missing "
            "(expected images/<subject>/NN.jpg and prompts.json)"
        )
    spec = json.loads(prompts_file.read_text())
    live = set(spec["live_subjects"])
    cases = []
    for subject, class_token in spec["classes"].items():
        real_images = _images_in(root / "images" / subject)
        reference = root / "images" / subject / reference_image
        if reference not in real_images:
            raise FlexIPError(
                f"{reference} does not exist; pick --reference-image among "
                f"{[path.name for path in real_images]}"
            )
        templates = spec["live_subject_prompts"] if subject in live else spec["object_prompts"]
        for index, template in enumerate(templates):
            # Zero-shot methods have no unique token: drop it and the space it leaves.
            prompt = re.sub(r"\s+", " ", template.format(unique_token="", class_token=class_token)).strip()
            cases.append(
                Case(
                    subject,
                    "live" if subject in live else "object",
                    index,
                    prompt,
                    str(reference),
                    tuple(str(path) for path in real_images),
                )
            )
    protocol = {
        "reference": f"images/<subject>/{reference_image}",
        "prompts": "DreamBench prompt lists with the unique token dropped: 'a {class_token} ...'",
    }
    return Benchmark("dreambench", {"data": str(root), **protocol}, tuple(cases))


def load_dreambench_plus(root: str | os.PathLike) -> Benchmark:
    """DreamBench++: images/<category>/NN.jpg and captions/<category>/NN.txt (line 1 the subject name, then
    one prompt per line). Subject ids are `<category>_<NN>`."""
    root = Path(root).resolve()
    if not (root / "images").is_dir() or not (root / "captions").is_dir():
        raise FlexIPError(
            f"{root} is not a DreamBench++ copy: expected images/<category>/NN.jpg and "
            "captions/<category>/NN.txt"
        )
    cases = []
    for category_dir in sorted(path for path in (root / "images").iterdir() if path.is_dir()):
        for image in _images_in(category_dir):
            caption_file = root / "captions" / category_dir.name / f"{image.stem}.txt"
            if not caption_file.is_file():
                raise FlexIPError(f"{image} has no caption file {caption_file}")
            lines = [line.strip() for line in caption_file.read_text().splitlines() if line.strip()]
            subject = f"{category_dir.name}_{image.stem}"
            for index, prompt in enumerate(lines[1:]):
                cases.append(Case(subject, category_dir.name, index, prompt, str(image), (str(image),)))
    protocol = {
        "reference": "images/<category>/<NN>.jpg (the only image)",
        "prompts": "captions lines 2.. as written",
    }
    return Benchmark("dreambench++", {"data": str(root), **protocol}, tuple(cases))


def load_jsonl(path: str | os.PathLike) -> Benchmark:
    """A generic benchmark: one JSON object per line with `subject`, `reference` (relative to the file) and
    `prompt`, optionally `category`. A subject's real images are all the references given for it."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FlexIPError(f"benchmark file {path} does not exist")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise FlexIPError(f"{path}:{number}: not valid JSON: {e}") from e
        missing = {"subject", "reference", "prompt"} - set(row)
        if missing:
            raise FlexIPError(
                f"{path}:{number}: missing {sorted(missing)}; each line needs subject, reference, prompt"
            )
        reference = (path.parent / row["reference"]).resolve()
        if not reference.is_file():
            raise FlexIPError(f"{path}:{number}: reference image {reference} does not exist")
        rows.append((row["subject"], row.get("category", "all"), row["prompt"], str(reference)))
    real_images: dict[str, dict[str, None]] = {}  # an ordered set per subject
    for subject, _, _, reference in rows:
        real_images.setdefault(subject, {})[reference] = None
    counts: dict[str, int] = {}
    cases = []
    for subject, category, prompt, reference in rows:
        index = counts[subject] = counts.get(subject, -1) + 1
        cases.append(Case(subject, category, index, prompt, reference, tuple(real_images[subject])))
    protocol = {"reference": "the line's reference", "prompts": "as written"}
    return Benchmark("jsonl", {"data": str(path), **protocol}, tuple(cases))


def load_benchmark(
    name: str,
    data: str | os.PathLike,
    subjects: list[str] | None = None,
    max_prompts: int | None = None,
    reference_image: str | None = None,
) -> Benchmark:
    """Load a benchmark and keep a subset: the subjects named (in their order) and the first prompts of
    each."""
    if name not in BENCHMARKS:
        raise FlexIPError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    if reference_image is not None and name != "dreambench":
        raise FlexIPError("--reference-image applies to --benchmark dreambench only")
    if name == "dreambench":
        benchmark = load_dreambench(data, reference_image or "00.jpg")
    elif name == "dreambench++":
        benchmark = load_dreambench_plus(data)
    else:
        benchmark = load_jsonl(data)
    if max_prompts is not None and max_prompts < 1:
        raise FlexIPError(f"--max-prompts must be at least 1, got {max_prompts}")
    known = benchmark.subjects
    if subjects:
        unknown = [subject for subject in subjects if subject not in known]
        if unknown:
            raise FlexIPError(
                f"{benchmark.name} has no subject {', '.join(unknown)}; it has: {', '.join(known)}"
            )
    else:
        subjects = known
    by_subject = {
        subject: [case for case in benchmark.cases if case.subject == subject] for subject in subjects
    }
    cases = tuple(case for subject in subjects for case in by_subject[subject][:max_prompts])
    protocol = {**benchmark.protocol, "subjects": subjects, "max_prompts": max_prompts}
    return Benchmark(benchmark.name, protocol, cases)


def case_to_dict(case: Case) -> dict:
    return {**asdict(case), "real_images": list(case.real_images)}
