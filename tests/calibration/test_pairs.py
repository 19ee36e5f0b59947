"""The calibration set read from the data `flexip calibrate --data` names: a training manifest's reference and
caption, a benchmark's reference and prompt, each pair once, capped evenly; anything else refused in one line
naming the file."""

import json

import pytest

from flexip.calibration.pairs import evenly, read_pairs
from flexip.errors import FlexIPError


def test_a_manifest_gives_its_references_and_captions_each_pair_once(tiny_models):
    records = [json.loads(line) for line in tiny_models.manifest.read_text().splitlines()]
    unique = list(dict.fromkeys((record["reference"], record["caption"]) for record in records))
    assert len(unique) < len(records)  # a clip's first frame with each later frame, one caption: counted once

    pairs = read_pairs(tiny_models.manifest)

    assert [(pair.name, pair.prompt) for pair in pairs.pairs] == [
        (str(tiny_models.manifest.parent / reference), caption) for reference, caption in unique
    ]
    assert all(pair.reference.mode == "RGB" for pair in pairs.pairs)
    described = f"training manifest {tiny_models.manifest}: {len(unique)} of {len(unique)} pairs"
    assert pairs.description == described


def test_a_benchmark_gives_its_cases_and_a_cap_spreads_evenly(tiny_models):
    cases = [json.loads(line) for line in tiny_models.benchmark.read_text().splitlines()]

    pairs = read_pairs(tiny_models.benchmark, 2)

    assert [pair.prompt for pair in pairs.pairs] == [cases[0]["prompt"], cases[2]["prompt"]]  # both subjects
    assert "benchmark (jsonl)" in pairs.description and "2 of 4 pairs, evenly spaced" in pairs.description
    assert pairs.fingerprint() == read_pairs(tiny_models.benchmark, 2).fingerprint()
    assert pairs.fingerprint() != read_pairs(tiny_models.benchmark, 3).fingerprint()
    assert evenly(list(range(10)), 4) == [0, 2, 5, 7] and evenly([1, 2], 5) == [1, 2]


@pytest.mark.parametrize(
    "lines, named",
    [
        (['{"subject": "a", "picture": "a.png"}'], "no caption nor prompt"),
        (['{"reference": "a.png", "target": "a.png", "caption": "a", "modality": "photo"}'], "modality"),
        (['{"subject": "a", "reference": "none.png", "prompt": "a"}'], "none.png"),
        (['{"reference": "none.png", "target": "a.png", "caption": "a", "modality": "image"}'], "none.png"),
        (['{"reference": "a.png", "target": "a.png", "caption": " ", "modality": "image"}'], "no pair with"),
        (["not json"], "not valid JSON"),
    ],
)
def test_data_that_gives_no_pairs_is_refused_naming_the_file(tmp_path, lines, named):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines) + "\n")
    (tmp_path / "a.png").write_bytes((tmp_path / "data.jsonl").read_bytes())  # not an image: never read here

    with pytest.raises(FlexIPError, match=named) as error:
        read_pairs(data)

    assert "\n" not in str(error.value) and ("data.jsonl" in str(error.value) or "none.png" in str(error.value))


def test_missing_data_and_a_folder_of_no_benchmark_are_refused(tmp_path):
    with pytest.raises(FlexIPError, match="does not exist"):
        read_pairs(tmp_path / "none.jsonl")
    with pytest.raises(FlexIPError, match="no benchmark"):
        read_pairs(tmp_path)
