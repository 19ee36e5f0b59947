"""Benchmarks as lists of cases (subject, prompt, reference), under the zero-shot protocol
(docs/method.md §5).

The protocol, written into every result file:
- the reference is ONE image per subject (DreamBench: `00.jpg` unless told otherwise);
- DreamBench prompts are written for fine-tuned methods ("a {unique_token} {class_token} in the jungle");
  zero-shot methods get them with the unique token dropped ("a dog in the jungle");
- identity metrics compare each generated image with that reference (DreamBench++ convention), or, at scoring
  time and on request, average over all of the subject's real images (DreamBooth convention).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import FlexIPError
from ..text_files import read_json_object, read_jsonl, read_text
from .results import readable_image

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


def _dreambench_spec(prompts_file: Path) -> dict:
    """prompts.json, checked: `classes` (subject -> class token), `live_subjects`, and the two prompt lists."""
    fix = "it holds classes, live_subjects, live_subject_prompts and object_prompts (DreamBench's own file)"
    spec = read_json_object(prompts_file, fix)
    kinds = {"classes": dict, "live_subjects": list, "live_subject_prompts": list, "object_prompts": list}
    for key, kind in kinds.items():
        if key not in spec:
            raise FlexIPError(f"{prompts_file} has no {key!r}; {fix}")
        values = spec[key].values() if isinstance(spec[key], dict) else spec[key]
        if not isinstance(spec[key], kind) or not all(isinstance(value, str) for value in values):
            raise FlexIPError(f"{prompts_file}: {key} must be a {kind.__name__} of text, got {spec[key]!r}")
    return spec


def _zero_shot(template: str, class_token: str, prompts_file: Path) -> str:
    """A DreamBench prompt with the unique token dropped (and the space it leaves)."""
    try:
        prompt = template.format(unique_token="", class_token=class_token)
    except (KeyError, IndexError, ValueError):
        raise FlexIPError(
            f"{prompts_file}: the prompt {template!r} has placeholders other than {{unique_token}} and "
            "{class_token}; use only those"
        ) from None
    return re.sub(r"\s+", " ", prompt).strip()


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
    spec = _dreambench_spec(prompts_file)
    live = set(spec["live_subjects"])
    cases = []
    for subject, class_token in spec["classes"].items():
        _check_subject(subject, prompts_file)
        folder = root / "images" / subject
        if not folder.is_dir():
            raise FlexIPError(f"{folder} does not exist; {prompts_file.name} names subject {subject!r}")
        real_images = _images_in(folder)
        reference = folder / reference_image
        if reference not in real_images:
            raise FlexIPError(
                f"{reference} does not exist; pick --reference-image among "
                f"{[path.name for path in real_images]}"
            )
        templates = spec["live_subject_prompts"] if subject in live else spec["object_prompts"]
        for index, template in enumerate(templates):
            cases.append(
                Case(
                    subject,
                    "live" if subject in live else "object",
                    index,
                    _zero_shot(template, class_token, prompts_file),
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
            fix = "line 1 is the subject's name, then one prompt per line"
            lines = [line.strip() for line in read_text(caption_file, fix).splitlines() if line.strip()]
            if len(lines) < 2:
                raise FlexIPError(f"{caption_file} has no prompts; {fix}")
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
    fix = "each line is an object with subject, reference and prompt (text), optionally category"
    rows = []
    for where, row in read_jsonl(path, fix):
        missing = {"subject", "reference", "prompt"} - set(row)
        if missing:
            raise FlexIPError(
                f"{where}: missing {sorted(missing)}; each line needs subject, reference, prompt"
            )
        for key in ("subject", "reference", "prompt", "category"):
            if key in row and not isinstance(row[key], str):
                raise FlexIPError(f"{where}: {key} is {row[key]!r}, not text; {fix}")
        reference = (path.parent / row["reference"]).resolve()
        if not reference.is_file():
            raise FlexIPError(f"{where}: reference image {reference} does not exist")
        rows.append((row["subject"], row.get("category", "all"), row["prompt"], str(reference), where))
    real_images: dict[str, dict[str, None]] = {}  # an ordered set per subject
    for subject, _, _, reference, where in rows:
        _check_subject(subject, where)
        real_images.setdefault(subject, {})[reference] = None
    counts: dict[str, int] = {}
    cases = []
    for subject, category, prompt, reference, where in rows:
        if not prompt.strip():
            raise FlexIPError(f"{where}: prompt {prompt!r} is empty; give the prompt to generate from")
        index = counts[subject] = counts.get(subject, -1) + 1
        cases.append(Case(subject, category, index, prompt, reference, tuple(real_images[subject])))
    protocol = {"reference": "the line's reference", "prompts": "as written"}
    return Benchmark("jsonl", {"data": str(path), **protocol}, tuple(cases))


def _check_subject(subject: str, where: str | os.PathLike) -> None:
    """A subject names a folder of every results directory (and of a folder of images made elsewhere)."""
    if not subject or subject in (".", "..") or "/" in subject or "\\" in subject:
        raise FlexIPError(f"{where}: subject {subject!r} is not a plain name; name it without / or \\")


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
    if not benchmark.cases:
        raise FlexIPError(f"{data} has no prompts for any subject; give a {name} benchmark with some")
    if subjects is not None and not subjects:
        raise FlexIPError("--subjects names no subject; give comma-separated names, or leave it out for all")
    twice = sorted({subject for subject in subjects or [] if subjects.count(subject) > 1})
    if twice:
        raise FlexIPError(f"--subjects names {', '.join(twice)} twice; name each subject once")
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
    for reference in dict.fromkeys(case.reference for case in cases):
        if not readable_image(Path(reference)):
            raise FlexIPError(
                f"{reference} is not a whole image file; replace it with the subject's reference"
            )
    protocol = {**benchmark.protocol, "subjects": subjects, "max_prompts": max_prompts}
    return Benchmark(benchmark.name, protocol, cases)


def case_to_dict(case: Case) -> dict:
    return {**asdict(case), "real_images": list(case.real_images)}
