"""Benchmark layouts and the zero-shot protocol: DreamBench, DreamBench++, generic JSONL, subsets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from fixtures import DREAMBENCH
from flexip.errors import FlexIPError
from flexip.evaluation.benchmarks import load_benchmark

needs_dreambench = pytest.mark.usefixtures("dreambench")


@needs_dreambench
def test_dreambench_drops_the_unique_token_and_keeps_one_reference():
    benchmark = load_benchmark("dreambench", DREAMBENCH)
    assert len(benchmark.subjects) == 30 and len(benchmark.cases) == 30 * 25
    dog = [case for case in benchmark.cases if case.subject == "dog"]
    assert dog[0].prompt == "a dog in the jungle" and dog[0].category == "live"
    assert dog[20].prompt == "a red dog"  # "a red {unique_token} {class_token}"
    bear = next(case for case in benchmark.cases if case.subject == "bear_plushie")
    assert bear.prompt == "a stuffed animal in the jungle" and bear.category == "object"
    assert Path(bear.reference).resolve() == (DREAMBENCH / "images" / "bear_plushie" / "00.jpg").resolve()
    assert len(bear.real_images) == len(list((DREAMBENCH / "images" / "bear_plushie").glob("*.jpg")))
    assert benchmark.protocol["reference"] == "images/<subject>/00.jpg"
    assert "unique token dropped" in benchmark.protocol["prompts"]


@needs_dreambench
def test_dreambench_subsets_and_reference_choice():
    benchmark = load_benchmark(
        "dreambench", DREAMBENCH, subjects=["rc_car", "cat"], max_prompts=3, reference_image="01.jpg"
    )
    assert [(case.subject, case.prompt_index) for case in benchmark.cases] == [
        ("rc_car", 0),
        ("rc_car", 1),
        ("rc_car", 2),
        ("cat", 0),
        ("cat", 1),
        ("cat", 2),
    ]
    assert all(case.reference.endswith("01.jpg") for case in benchmark.cases)
    assert benchmark.protocol["subjects"] == ["rc_car", "cat"] and benchmark.protocol["max_prompts"] == 3
    with pytest.raises(FlexIPError, match="no subject unicorn"):
        load_benchmark("dreambench", DREAMBENCH, subjects=["unicorn"])
    with pytest.raises(FlexIPError, match="--reference-image"):
        load_benchmark("dreambench", DREAMBENCH, reference_image="99.jpg")


def test_dreambench_plus_layout(tmp_path):
    for category, number, lines in [
        ("animal", "00", ["corgi", "a corgi on the moon", "a corgi, oil painting"]),
        ("style", "03", ["ukiyo-e", "a cat in this style"]),
    ]:
        (tmp_path / "images" / category).mkdir(parents=True, exist_ok=True)
        (tmp_path / "captions" / category).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / category / f"{number}.jpg")
        (tmp_path / "captions" / category / f"{number}.txt").write_text("\n".join(lines) + "\n")
    benchmark = load_benchmark("dreambench++", tmp_path, max_prompts=1)
    assert [(c.subject, c.category, c.prompt) for c in benchmark.cases] == [
        ("animal_00", "animal", "a corgi on the moon"),
        ("style_03", "style", "a cat in this style"),
    ]
    (tmp_path / "captions" / "style" / "03.txt").unlink()
    with pytest.raises(FlexIPError, match="no caption file"):
        load_benchmark("dreambench++", tmp_path)


def test_jsonl_benchmark(tmp_path):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    rows = [
        {"subject": "mug", "reference": "a.png", "prompt": "a mug in snow", "category": "object"},
        {"subject": "mug", "reference": "b.png", "prompt": "a mug on a desk", "category": "object"},
        {"subject": "toy", "reference": "b.png", "prompt": "a toy"},
    ]
    (tmp_path / "bench.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    benchmark = load_benchmark("jsonl", tmp_path / "bench.jsonl")
    mug = [case for case in benchmark.cases if case.subject == "mug"]
    assert [case.prompt_index for case in mug] == [0, 1]
    assert [Path(p).name for p in mug[0].real_images] == ["a.png", "b.png"]  # every reference of the subject
    assert benchmark.cases[2].category == "all"

    (tmp_path / "bad.jsonl").write_text(json.dumps({"subject": "mug", "prompt": "x"}) + "\n")
    with pytest.raises(FlexIPError, match=r"bad.jsonl:1: missing \['reference'\]"):
        load_benchmark("jsonl", tmp_path / "bad.jsonl")
