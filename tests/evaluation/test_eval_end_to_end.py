"""`flexip eval` end to end on 2 subjects x 2 prompts of the DreamBench copy, with tiny models: every method,
score, rank, curve; interrupting and resuming; one process and two processes giving the same files."""

from __future__ import annotations

import csv
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures import DREAMBENCH, pixels, rows, save_tiny_ip_adapter
from flexip.cli import main
from flexip.tiny import ModelSet

# The module itself: `flexip.evaluation` exports a function of the same name.
generate_module = importlib.import_module("flexip.evaluation.generate")

SUBJECTS = "bear_plushie,dog"  # an object and a live subject


pytestmark = pytest.mark.usefixtures("dreambench")



@pytest.fixture(scope="module")
def tiny_ip_adapter(tmp_path_factory) -> Path:
    return save_tiny_ip_adapter(tmp_path_factory.mktemp("ip-adapter"))


def generate(
    tiny_models, out: Path, *extra: str, subjects: str = SUBJECTS, prompts: str = "2", base: bool = True
) -> list[str]:
    return ["eval", "generate", "--data", str(DREAMBENCH), "--subjects", subjects, "--max-prompts", prompts,
            *(["--base", str(tiny_models.base)] if base else []), "--seeds", "1", "--steps", "2",
            "--out", str(out), *extra]  # fmt: skip


def score(models: ModelSet, *results: Path, identity: str = "reference") -> list[str]:
    """`flexip eval score` on the tiny kit's metric backbones."""
    clip = str(models.clip_model)
    return ["eval", "score", *map(str, results), "--clip-model", clip, "--iqa-model", clip,
            "--aesthetic-model", clip, "--dino-model", str(models.dino_model),
            "--aesthetic-head", str(models.aesthetic_head), "--identity", identity]  # fmt: skip


def summary(directory: Path) -> list[dict]:
    with (directory / "summary.csv").open() as f:
        return list(csv.DictReader(f))


def test_generate_score_rank_curve_for_every_method(tmp_path, tiny_models, tiny_ip_adapter, capsys):
    flexip, ip_adapter, sd, folder = (tmp_path / name for name in ("flexip", "ip-adapter", "sd", "folder"))
    flexip_args = [
        "--method",
        "flexip",
        "--adapter",
        str(tiny_models.adapter),
        "--preservation",
        "0.2,0.5,0.8",
    ]
    assert main(generate(tiny_models, flexip, *flexip_args)) == 0
    ip_adapter_args = ["--method", "ip-adapter", "--ip-adapter", str(tiny_ip_adapter), "--scale", "0,1"]
    assert main(generate(tiny_models, ip_adapter, *ip_adapter_args)) == 0
    assert main(generate(tiny_models, sd, "--method", "sd")) == 0

    # Every setting and the zero-shot protocol are recorded; every image is listed and present.
    settings = json.loads((flexip / "generation.json").read_text())
    assert settings["preservation"] == [0.2, 0.5, 0.8] and settings["steps"] == 2
    assert settings["label"] == "flexip" and settings["method"] == "flexip"
    assert settings["benchmark"]["subjects"] == ["bear_plushie", "dog"]
    assert settings["benchmark"]["max_prompts"] == 2
    assert settings["benchmark"]["reference"] == "images/<subject>/00.jpg"
    manifest = rows(flexip / "manifest.jsonl")
    assert len(manifest) == 2 * 2 * 3 and all((flexip / item["image"]).is_file() for item in manifest)
    assert manifest[0]["prompt"] == "a stuffed animal in the jungle"

    # IP-Adapter goes through diffusers' own load_ip_adapter: at scale 0 it is plain Stable Diffusion.
    for image in (Path("bear_plushie/00/0.png"), Path("dog/01/0.png")):
        plain = pixels(sd / "images" / "sd" / image)
        assert np.array_equal(pixels(ip_adapter / "images" / "scale-0" / image), plain)
        assert not np.array_equal(pixels(ip_adapter / "images" / "scale-1" / image), plain)

    # Images made elsewhere, in a <subject>/<NN>/<name> folder, are taken in as a method of their own.
    for path in (sd / "images" / "sd").rglob("*.png"):
        target = tmp_path / "elsewhere" / path.relative_to(sd / "images" / "sd").with_name("sample.png")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    assert (
        main(generate(tiny_models, folder, "--method", "folder", "--images", str(tmp_path / "elsewhere")))
        == 0
    )
    imported = (folder / "images" / "folder" / "dog" / "01" / "sample.png").read_bytes()
    assert imported == (sd / "images" / "sd" / "dog" / "01" / "0.png").read_bytes()

    assert main(score(tiny_models, flexip, ip_adapter, sd, folder)) == 0
    scores = rows(flexip / "scores.jsonl")
    assert len(scores) == len(manifest)
    assert scores[0]["clip_model"] == str(tiny_models.clip_model)
    assert scores[0]["dino_model"] == str(tiny_models.dino_model)
    assert scores[0]["identity"] == "reference"
    for row in scores:
        assert all(np.isfinite(row[m]) for m in ("CLIP-T", "CLIP-I", "DINO-I", "CLIP-IQA", "Aesthetic"))
    table = summary(flexip)
    assert {(row["dial"], row["category"]) for row in table} == {
        (dial, category) for dial in ("0.2", "0.5", "0.8") for category in ("all", "live", "object")
    }
    assert all(row["images"] == "2" for row in table if row["category"] != "all")
    assert all(row["aesthetic_head"] == str(tiny_models.aesthetic_head) for row in table)
    assert "Backbones" in (flexip / "summary.md").read_text()
    # The same images score the same, whichever method directory they sit in.
    assert [row["CLIP-T"] for row in summary(sd)] == [row["CLIP-T"] for row in summary(folder)]

    published = tmp_path / "published.csv"
    published.write_text(
        "method,CLIP-T,CLIP-I,DINO-I,CLIP-IQA,Aesthetic\nIP-Adapter,0.209,0.855,0.728,0.581,5.594\n"
    )
    report = tmp_path / "report"
    inputs = [str(path) for path in (flexip, ip_adapter, sd, folder, published)]
    assert main(["eval", "rank", *inputs, "--out", str(report)]) == 0
    with (report / "mrank.csv").open() as f:
        ranked = list(csv.DictReader(f))
    flexip_entries = {f"flexip preservation={dial}" for dial in (0.2, 0.5, 0.8)}
    others = {"ip-adapter scale=0", "ip-adapter scale=1", "sd", "folder", "IP-Adapter"}
    assert {row["method"] for row in ranked} == flexip_entries | others
    mranks = [float(row["mRank"]) for row in ranked]
    assert mranks == sorted(mranks) and 1 <= mranks[0] and mranks[-1] <= len(ranked)
    assert "| method | mRank |" in capsys.readouterr().out
    # A second rank into the same folder would replace the first one's table: refused, unless asked for.
    before = (report / "mrank.csv").read_bytes()
    assert main(["eval", "rank", *inputs, "--out", str(report)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (report / "mrank.csv").read_bytes() == before
    assert main(["eval", "rank", *inputs, "--out", str(report), "--overwrite"]) == 0

    assert main(["eval", "curve", str(flexip), str(ip_adapter), str(sd), "--out", str(report)]) == 0
    for name in ("tradeoff.png", "smoothness.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("tradeoff.svg", "smoothness.svg"):
        assert b"<svg" in (report / name).read_bytes()[:1000]
    assert len((report / "tradeoff.csv").read_text().splitlines()) == 1 + 3 + 2 + 1
    assert "flexip | 2 |" in capsys.readouterr().out  # only flexip has 3+ dial values

    # Identity against all real images is another protocol: recorded, and never ranked against the first.
    shutil.copytree(sd, tmp_path / "sd-all")
    assert main(score(tiny_models, tmp_path / "sd-all", identity="all")) == 2  # the copy holds sd's scores
    assert main([*score(tiny_models, tmp_path / "sd-all", identity="all"), "--overwrite"]) == 0
    assert summary(tmp_path / "sd-all")[0]["CLIP-I"] != summary(sd)[0]["CLIP-I"]
    assert main(["eval", "rank", str(sd), str(tmp_path / "sd-all"), "--out", str(report), "--overwrite"]) == 2
    assert "scored differently" in capsys.readouterr().err


def test_interrupt_resume_and_two_processes_give_the_same_files(
    tmp_path, tiny_models, monkeypatch, capsys
):
    args = ["--method", "flexip", "--adapter", str(tiny_models.adapter), "--preservation", "0.2,0.8"]
    one = tmp_path / "one" / "flexip"
    saved = []
    save = generate_module._save

    def interrupted_save(picture, path):
        if len(saved) == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the fourth image
        save(picture, path)
        saved.append(path)

    monkeypatch.setattr(generate_module, "_save", interrupted_save)
    assert main(generate(tiny_models, one, *args)) == 130
    assert sorted(one.rglob("*.png")) == sorted(saved)
    before = {path: path.stat().st_mtime_ns for path in saved}
    assert main(score(tiny_models, one)) == 2
    assert "5 of 8 images are missing" in capsys.readouterr().err
    monkeypatch.setattr(generate_module, "_save", save)
    assert main(generate(tiny_models, one, *args)) == 0
    assert "made 5 images" in capsys.readouterr().out
    assert len(list(one.rglob("*.png"))) == 2 * 2 * 2
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in before.items())  # kept, not redone
    assert not list(one.rglob(".tmp-*"))

    # A results directory never mixes settings.
    assert main(generate(tiny_models, one, *args[:-1], "0.3,0.8")) == 2
    assert "preservation: [0.2, 0.8] before, [0.3, 0.8] now" in capsys.readouterr().err

    two = tmp_path / "two" / "flexip"
    # torchrun gives each worker one thread only when OMP_NUM_THREADS is unset; the comparison needs one.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--module", "flexip"]
    command = [*torchrun, *generate(tiny_models, two, *args)]
    run = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("made 4 images in this process") == 2  # the work was shared
    files = sorted(path.relative_to(one) for path in one.rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(two) for path in two.rglob("*") if path.is_file())
    for name in files:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_dtype_is_used_and_recorded(tmp_path, tiny_models):
    one_prompt = {"subjects": "dog", "prompts": "1"}
    assert main(generate(tiny_models, tmp_path / "fp32", "--method", "sd", **one_prompt)) == 0
    assert (
        main(generate(tiny_models, tmp_path / "bf16", "--method", "sd", "--dtype", "bfloat16", **one_prompt))
        == 0
    )
    assert json.loads((tmp_path / "bf16" / "generation.json").read_text())["dtype"] == "bfloat16"
    image = Path("images/sd/dog/00/0.png")
    assert not np.array_equal(pixels(tmp_path / "fp32" / image), pixels(tmp_path / "bf16" / image))


def test_user_mistakes_are_one_line_errors(tmp_path, tiny_models, capsys):
    assert main(generate(tiny_models, tmp_path / "a", "--method", "flexip")) == 2
    assert "--method flexip needs --adapter" in capsys.readouterr().err
    assert (
        main(generate(tiny_models, tmp_path / "a", "--method", "flexip", "--adapter", "x", "--scale", "1,2"))
        == 2
    )
    assert "one --scale" in capsys.readouterr().err
    assert main(generate(tiny_models, tmp_path / "a", "--method", "folder", "--images", str(tmp_path))) == 2
    assert "no images for subject bear_plushie" in capsys.readouterr().err
    assert main(["eval", "score", str(tmp_path), "--aesthetic-head", str(tiny_models.aesthetic_head)]) == 2
    assert "not a results directory" in capsys.readouterr().err


def test_flexip_runs_on_the_base_its_adapter_records(tmp_path, tiny_models):
    """As `flexip generate --adapter` does: the tiny and demo model sets need no --base."""
    args = ["--method", "flexip", "--adapter", str(tiny_models.adapter)]
    one_prompt = {"subjects": "dog", "prompts": "1"}
    assert main(generate(tiny_models, tmp_path / "recorded", *args, **one_prompt, base=False)) == 0
    settings = json.loads((tmp_path / "recorded" / "generation.json").read_text())
    assert settings["base"] == str(tiny_models.base.resolve())  # the base actually used
    assert main(generate(tiny_models, tmp_path / "given", *args, **one_prompt)) == 0
    image = Path("images/preservation-0.5/dog/00/0.png")
    assert (tmp_path / "recorded" / image).read_bytes() == (tmp_path / "given" / image).read_bytes()


def test_a_run_whose_models_do_not_load_leaves_nothing_to_refuse_a_rerun(
    tmp_path, tiny_models, tiny_ip_adapter, capsys
):
    one_prompt = {"subjects": "dog", "prompts": "1"}
    runs = [  # (method, its model's flag, the right path, the error for a wrong one)
        ("ip-adapter", "--ip-adapter", tiny_ip_adapter, "cannot load the IP-Adapter"),
        ("flexip", "--adapter", tiny_models.adapter, "flexip_config.json not found"),
    ]
    for method, flag, good, error in runs:
        out = tmp_path / method
        wrong = generate(tiny_models, out, "--method", method, flag, str(tmp_path / "missing"), **one_prompt)
        assert main(wrong) == 2
        assert error in capsys.readouterr().err
        assert not (out / "generation.json").exists() and not (out / "manifest.jsonl").exists()
        corrected = generate(tiny_models, out, "--method", method, flag, str(good), **one_prompt)
        assert main(corrected) == 0
        assert "made 1 images" in capsys.readouterr().out
        assert json.loads((out / "generation.json").read_text())[flag[2:].replace("-", "_")] == str(good)
