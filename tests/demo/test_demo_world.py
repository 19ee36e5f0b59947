"""The demo world: deterministic by seed, captions that round-trip, manifests that validate."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from recipes.demo import manifest as manifest_module
from recipes.demo.world import (
    CLASSES,
    Identity,
    Scene,
    caption,
    parse_caption,
    render,
    render_seeded,
    vocabulary,
)


def test_render_is_deterministic_by_seed():
    first, first_mask, identity, scene = render_seeded(7)
    again, again_mask, identity_again, scene_again = render_seeded(7)
    other = render_seeded(8)[0]
    assert (identity, scene) == (identity_again, scene_again)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert np.array_equal(np.asarray(first_mask), np.asarray(again_mask))
    assert not np.array_equal(np.asarray(first), np.asarray(other))


def test_captions_name_the_scene_and_never_the_identity():
    for seed in range(50):
        _, _, identity, scene = render_seeded(seed)
        text = caption(scene)
        assert parse_caption(text) == scene
        words = set(text.split())
        assert words <= set(vocabulary())
        assert not words & {identity.color, identity.pattern_color, "stripes", "dots"}


def test_parse_caption_names_the_bad_caption():
    with pytest.raises(ValueError, match="a huge circle"):
        parse_caption("a huge circle on the left with sky background")
    with pytest.raises(ValueError, match="template"):
        parse_caption("circle")


def test_styles_override_the_identity():
    scene = Scene("circle", "mint", "center", "large")
    red, blue = Identity("red", "plain", "white"), Identity("blue", "plain", "white")

    def draw(identity, style):
        # At the render size nothing is downscaled, so the mask is exact and edges do not blend.
        image, mask = render(identity, Scene(**{**scene.__dict__, "style": style}), np.random.default_rng(0), 64)
        return np.asarray(image).astype(int), np.asarray(mask) > 0

    assert not np.array_equal(draw(red, "plain")[0], draw(blue, "plain")[0])
    gray, mask = draw(red, "gray")
    assert mask.sum() > 100
    assert np.abs(gray[mask][:, 0] - gray[mask][:, 2]).max() <= 1
    assert np.array_equal(draw(red, "outline")[0], draw(blue, "outline")[0])


def test_manifest_lines_have_the_fields_and_existing_files(tmp_path):
    manifest_module.main(["--out", str(tmp_path), "--images", "6", "--clips", "3", "--frames", "3", "--seed", "1"])
    records = manifest_module.validate_manifest(tmp_path / "manifest.jsonl")
    assert len(records) == 6 + 3 * 2
    assert {r["modality"] for r in records} == {"image", "video"}
    assert all("source" in r and "mask" in r for r in records)
    for record in records:
        assert parse_caption(record["caption"]).subject in CLASSES
        if record["modality"] == "image":
            assert record["reference"] == record["target"]
        else:
            assert record["reference"] != record["target"]
    clips = {}
    for record in records:
        if record["modality"] == "video":
            clips.setdefault(record["source"], set()).add(parse_caption(record["caption"]).subject)
    assert all(len(subjects) == 1 for subjects in clips.values())  # a clip keeps its subject


def test_manifest_is_deterministic_by_seed(tmp_path):
    config = manifest_module.ManifestConfig(num_images=3, num_clips=1, frames_per_clip=2, seed=5)
    first = manifest_module.write_manifest(tmp_path / "a", config).read_text()
    second = manifest_module.write_manifest(tmp_path / "b", config).read_text()
    assert first == second
    assert (tmp_path / "a/images/img000002.png").read_bytes() == (tmp_path / "b/images/img000002.png").read_bytes()


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", "not valid JSON"),
        (json.dumps({"reference": "x.png"}), "missing field"),
        (json.dumps({"reference": "a.png", "target": "a.png", "caption": "c", "modality": "audio",
                     "source": "s"}), "modality 'audio'"),
        (json.dumps({"reference": "gone.png", "target": "a.png", "caption": "c", "modality": "image",
                     "source": "s"}), "gone.png"),
        (json.dumps({"reference": "/abs/a.png", "target": "a.png", "caption": "c", "modality": "image"}),
         "absolute"),
        (json.dumps({"reference": "a.png", "target": "a.png", "caption": 3, "modality": "image"}),
         "'caption' must be a string"),
    ],
)
def test_validate_manifest_rejects_bad_lines(tmp_path, line, message):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "manifest.jsonl").write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        manifest_module.validate_manifest(tmp_path / "manifest.jsonl")


def test_manifest_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit, match="--frames 1"):
        manifest_module.main(["--out", str(tmp_path), "--frames", "1"])
