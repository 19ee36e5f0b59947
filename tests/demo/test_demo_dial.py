"""The dial measurement: rank correlation, evaluation pairs, the summary maths, the command end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from recipes.demo.dial import DialScores, dial_pairs, main, spearman, summarize
from recipes.demo.judge import Judge
from recipes.demo.world import caption


def test_spearman_ranks_with_ties():
    assert spearman([0, 1, 2, 3], [0.1, 0.5, 0.6, 0.9]) == pytest.approx(1.0)
    assert spearman([0, 1, 2, 3], [5, 4, 3, -1]) == pytest.approx(-1.0)
    assert spearman([0, 1, 2, 3], [0.1, 0.9, 0.5, 0.6]) == pytest.approx(0.4)  # ranks 0 3 1 2: 1 - 6*6/60
    # Ties take their average rank: ranks (0.5, 0.5, 2, 3) against (0, 1, 2, 3) -> 0.9487 (as scipy gives).
    assert spearman([0, 1, 2, 3], [1, 1, 2, 3]) == pytest.approx(0.9486833)
    assert math.isnan(spearman([0, 1, 2], [0.5, 0.5, 0.5]))


def test_pairs_are_fixed_by_the_seed_and_every_prompt_moves_the_subject():
    pairs = dial_pairs(12, seed=3)
    again = dial_pairs(12, seed=3)
    assert [p.prompt for p in pairs] == [p.prompt for p in again]
    assert all(np.array_equal(np.asarray(a.reference), np.asarray(b.reference)) for a, b in zip(pairs, again))
    assert [p.prompt for p in dial_pairs(12, seed=4)] != [p.prompt for p in pairs]
    for pair in pairs:
        ref, prompt = pair.reference_scene, pair.prompt_scene
        assert ref.style == prompt.style == "plain" and ref.subject == prompt.subject
        assert (
            ref.background != prompt.background
            and ref.position != prompt.position
            and ref.size != prompt.size
        )
        assert pair.reference.size == (32, 32)
    # The references show what they are said to show: the judge reads them back.
    judge = Judge.load()
    scores = judge.prompt_match([p.reference for p in pairs], [caption(p.reference_scene) for p in pairs])
    assert scores["mean"].mean() > 0.95


def _scores(identity: list[float], prompt: list[float]) -> DialScores:
    """Two pairs x one seed with the given per-value means (the pairs straddle them by +-0.1)."""
    values = [0.0, 0.5, 1.0]
    spread = np.array([[-0.1], [0.1]])[:, :, None]  # (pairs, seeds, 1)
    return DialScores(
        values=values,
        prompts=["p0", "p1"],
        identity=np.array(identity)[None, None, :] + spread,
        prompt={"mean": np.array(prompt)[None, None, :] - spread, "background": np.ones((2, 1, 3))},
        images=[],
    )


def test_summary_means_correlations_gains_and_targets():
    summary = summarize(_scores(identity=[0.2, 0.5, 0.8], prompt=[0.9, 0.8, 0.6]))
    assert summary["identity_match"] == pytest.approx([0.2, 0.5, 0.8])
    assert summary["identity_spearman"] == pytest.approx(1.0) and summary["prompt_spearman"] == pytest.approx(
        -1.0
    )
    assert summary["identity_gain"] == pytest.approx(0.6) and summary["prompt_gain"] == pytest.approx(0.3)
    assert summary["identity_match_sem"] == pytest.approx([0.1] * 3)  # std 0.1414 over 2 pairs / sqrt(2)
    assert summary["prompt_match_by_attribute"] == {"background": [1.0, 1.0, 1.0]}
    # Evenly spaced means: each step is half the range, the smoothest three values can be.
    assert summary["identity_smoothness"] == pytest.approx(0.5) and summary["prompt_smoothness"] == pytest.approx(2 / 3)
    # Along the curve, both scaled to their range: steps (1/2, 1/3) and (1/2, 2/3) long.
    steps = [math.hypot(0.5, 1 / 3), math.hypot(0.5, 2 / 3)]
    assert summary["largest_step"] == pytest.approx(steps[1] / sum(steps))
    assert summary["targets"]["largest_step"]["met"] is False  # over three values 0.5 is the most even
    assert all(target["met"] for key, target in summary["targets"].items() if key != "largest_step")

    flat = summarize(_scores(identity=[0.2, 0.3, 0.4], prompt=[0.7, 0.8, 0.6]))
    met = {key: target["met"] for key, target in flat["targets"].items()}
    assert met == {
        "identity_spearman": True,
        "prompt_spearman": False,
        "identity_gain": False,
        "prompt_gain": False,
        "largest_step": False,  # identity moves by one, the prompt by a third of its range at the first step
    }


def test_command_writes_the_report(tiny_models, tmp_path, capsys):
    out = tmp_path / "dial"
    args = ["--adapter", str(tiny_models.adapter), "--out", str(out), "--pairs", "2", "--seeds", "2"]
    assert main([*args, "--values", "0,1", "--steps", "2", "--examples", "1"]) == 0
    record = json.loads((out / "dial.json").read_text())
    assert record["values"] == [0.0, 1.0] and record["pairs"] == 2 and record["seeds"] == 2
    assert len(record["pairs_scored"]) == 2 and set(record["targets"]) == {
        "identity_spearman", "prompt_spearman", "identity_gain", "prompt_gain", "largest_step",
    }  # fmt: skip
    assert all(0 <= s <= 1 for s in record["identity_match"] + record["prompt_match"])
    assert (out / "dial.md").read_text() in capsys.readouterr().out
    for name in ("dial.png", "examples.png"):
        assert (out / name).stat().st_size > 1000


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--values", "0,1.5"], "--values"),
        (["--values", "1,0"], "increasing"),
        (["--pairs", "0"], "--pairs 0"),
        (["--adapter", "missing-adapter"], "missing-adapter"),
    ],
)
def test_command_mistakes_exit_with_a_message(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "dial"), *extra])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
