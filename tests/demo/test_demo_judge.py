"""The committed demo judge reads renders it has never seen, and its scores mean what they say."""

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from recipes.demo.judge import Judge
from recipes.demo.train_judge import HELD_OUT_SEED, degrade, evaluate, main, render_set
from recipes.demo.world import Identity, Scene, caption, render

# Beyond both the training seeds and the seeds of the accuracy table in docs/demo-model.md.
UNSEEN_SEED = HELD_OUT_SEED + 10_000_000


@pytest.fixture(scope="module")
def judge():
    return Judge.load()


def test_judge_reads_unseen_blurred_noisy_renders(judge):
    images, labels = render_set(UNSEEN_SEED, 300)
    noisy = degrade(images, torch.Generator().manual_seed(0), max_blur=0.8, max_noise=0.08)
    accuracy = evaluate(judge, noisy, labels)
    assert set(accuracy) >= {"subject", "background", "position", "size", "style", "color", "pattern"}
    assert min(accuracy.values()) >= 0.95, accuracy


def test_prompt_match_follows_the_caption(judge):
    rng = np.random.default_rng(3)
    identity = Identity("blue", "stripes", "white")
    scene = Scene("star", "sand", "left", "large")
    image, _ = render(identity, scene, rng)
    right = judge.prompt_match([image], [caption(scene)])
    assert right["mean"].item() == 1.0
    wrong = judge.prompt_match([image], [caption(Scene("circle", "night", "right", "large"))])
    assert wrong["subject"].item() == 0 and wrong["background"].item() == 0 and wrong["position"].item() == 0
    assert wrong["size"].item() == 1 and wrong["style"].item() == 1


def test_identity_match_compares_only_what_the_style_shows(judge):
    rng = np.random.default_rng(4)
    reference, _ = render(Identity("red", "dots", "black"), Scene("square", "sky", "center", "large"), rng)
    same = Scene("circle", "grass", "right", "large")
    gray = Scene("circle", "grass", "right", "large", "gray")
    outline = Scene("circle", "grass", "right", "large", "outline")
    images = [
        render(Identity("red", "dots", "black"), same, rng)[0],
        render(Identity("green", "plain", "white"), same, rng)[0],
        render(Identity("purple", "dots", "black"), gray, rng)[0],  # colour hidden by gray: still a match
        render(Identity("red", "dots", "black"), outline, rng)[0],
    ]
    captions = [caption(same), caption(same), caption(gray), caption(outline)]
    scores = judge.identity_match(images, [reference] * 4, captions).tolist()
    assert scores[0] == 1.0 and scores[1] == 0.0 and scores[2] == 1.0 and math.isnan(scores[3])


def test_prompt_match_rejects_a_caption_outside_the_world(judge):
    image, _ = render(Identity("red", "plain", "white"), Scene("star", "sand", "left", "large"), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown subject 'dragon'"):
        judge.prompt_match([image], ["a large dragon on the left with sand background"])


def test_train_judge_main_writes_loadable_weights(tmp_path, capsys):
    out = tmp_path / "judge.safetensors"
    main(["--out", str(out), "--samples", "64", "--steps", "3", "--eval-samples", "16"])
    assert len(Judge.load(out).read(render_set(0, 2)[0])) == 2
    assert "| subject |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="safetensors"):
        main(["--out", str(tmp_path / "judge.pt")])
