"""`flexip generate`, `sweep` and `demo`, called in-process on the tiny model set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures import picture
from flexip.cli import main
from flexip.pipeline import embedded

STEPS = "2"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("reference") / "dog.png"
    picture(0).save(path)
    return path


@pytest.fixture
def model_args(tiny_models):
    return ["--base", str(tiny_models.base), "--adapter", str(tiny_models.adapter), "--steps", STEPS]


def generate(out, reference, model_args, *extra):
    argv = ["generate", "--reference", str(reference), "--prompt", "a dog on the beach", "--out", str(out)]
    return main([*argv, *model_args, *extra])


def test_generate_same_seed_same_bytes(tmp_path, reference, model_args, capsys):
    first, again, other = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    options = ["--preservation", "0.7", "--device", "cpu", "--dtype", "float32"]
    assert generate(first, reference, model_args, *options, "--seed", "3") == 0
    assert generate(again, reference, model_args, *options, "--seed", "3") == 0
    assert generate(other, reference, model_args, *options, "--seed", "4") == 0
    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    assert f"wrote {first}" in capsys.readouterr().out
    with Image.open(first) as image:
        settings = json.loads(image.text["flexip"])
    assert settings["seed"] == 3 and settings["preservation"] == 0.7 and settings["steps"] == 2


def test_sweep_writes_the_dial_left_to_right(tmp_path, reference, model_args, capsys):
    out = tmp_path / "sweep"
    options = [
        "--scheduler",
        "dpm++",
        "--negative-prompt",
        "blurry",
        "--scale",
        "0.8",
        "--guidance",
        "5",
        "--seed",
        "1",
    ]
    argv = ["sweep", "--reference", str(reference), "--prompt", "a dog on the beach", "--out", str(out)]
    # No --base: the adapter records its base model.
    assert (
        main([*argv, "--preservation", "0,0.5,1", "--adapter", model_args[3], "--steps", STEPS, *options])
        == 0
    )
    names = ["00_preservation-0.00.png", "01_preservation-0.50.png", "02_preservation-1.00.png"]
    assert sorted(path.name for path in out.iterdir()) == sorted(
        [*names, "contact_sheet.png", "settings.json"]
    )
    assert "contact_sheet.png" in capsys.readouterr().out
    settings = json.loads((out / "settings.json").read_text())
    assert settings["preservation"] == [0.0, 0.5, 1.0] and settings["scheduler"] == "dpm++"
    assert Path(settings["base"]).resolve() == Path(model_args[1]).resolve()
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.width > 4 * sheet.height / 2  # the reference and three values side by side

    # Each image is what `generate` gives for its value alone: the sweep shares the starting noise.
    single = tmp_path / "single.png"
    assert generate(single, reference, model_args, *options, "--preservation", "0.5") == 0
    swept = np.asarray(Image.open(out / names[1]), dtype=int)
    assert np.abs(swept - np.asarray(Image.open(single), dtype=int)).max() <= 1
    assert np.abs(swept - np.asarray(Image.open(out / names[0]), dtype=int)).max() > 1


def test_demo_needs_no_arguments(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(embedded, "DEMO_MODEL_DIR", tmp_path / "no-demo-model")
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--steps", STEPS]) == 0
    printed = capsys.readouterr().out
    assert "mean nothing" in printed and "flexip-demo/contact_sheet.png" in printed
    assert (tmp_path / "flexip-demo" / "contact_sheet.png").is_file()
    assert (tmp_path / "flexip-demo" / "reference.png").is_file()


def test_embedded_default_is_the_shipped_demo_model_once_it_exists(tmp_path, monkeypatch, tiny_models):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(embedded, "DEMO_MODEL_DIR", tmp_path / "demo")
    stand_in = embedded.embedded_model()
    assert not stand_in.trained and stand_in.models.root.is_relative_to(tmp_path / "cache")
    monkeypatch.setattr(embedded, "save_tiny_model_set", None)  # built once: a second call must not rebuild
    assert embedded.embedded_model() == stand_in

    (tmp_path / "demo").symlink_to(tiny_models.root)
    shipped = embedded.embedded_model()
    assert shipped.trained and shipped.models.adapter == tmp_path / "demo" / "adapter"


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--preservation", "1.5"], "--preservation=1.5"),
        (["--preservation", "0.5,nan"], "--preservation[1]=nan"),
        (["--preservation", "strong"], "--preservation strong: 'strong' is not a number"),
        (["--preservation", "0.3,0.5"], "flexip sweep --preservation 0.3,0.5"),  # one value: a list is a sweep
        (["--steps", "0"], "--steps=0"),
        (["--guidance", "inf"], "--guidance='inf'"),
        (["--scale", "-1"], "--scale=-1.0"),
        (["--device", "quantum"], "--device 'quantum'"),
    ],
)
def test_generate_mistakes_are_one_line(tmp_path, reference, model_args, capsys, extra, named):
    assert generate(tmp_path / "out.png", reference, model_args, *extra) == 2
    _assert_one_line_error(capsys, named)


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "not-an-image", "truncated"])
def test_bad_reference_files_are_one_line(tmp_path, model_args, capsys, kind):
    path = {"missing": tmp_path / "missing.jpg", "directory": tmp_path}.get(kind, tmp_path / f"{kind}.jpg")
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "not-an-image":
        path.write_text("hello")
    elif kind == "truncated":
        Image.new("RGB", (64, 64), (10, 200, 30)).save(path, quality=95)
        path.write_bytes(path.read_bytes()[:200])
    assert generate(tmp_path / "out.png", path, model_args) == 2
    _assert_one_line_error(capsys, str(path))


def test_bad_output_paths_are_one_line(tmp_path, reference, model_args, capsys):
    assert generate(tmp_path / "out.txt", reference, model_args) == 2
    _assert_one_line_error(capsys, "out.txt")
    (tmp_path / "taken").write_text("a file")
    sweep = ["sweep", "--reference", str(reference), "--prompt", "a dog", "--out", str(tmp_path / "taken")]
    assert main([*sweep, *model_args]) == 2
    _assert_one_line_error(capsys, "taken")


def _assert_one_line_error(capsys, named: str) -> None:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("flexip ") and named in lines[0]
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.parametrize("command", ["generate", "sweep", "demo"])
def test_help_teaches_by_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"flexip {command}" in text


def test_a_per_block_dial_is_resolved_once_per_command(tmp_path, reference, model_args, monkeypatch, capsys):
    """The command line resolves --preservation and --scale against the adapter's file before torch loads; the
    call finds them resolved and does not check the block names again."""
    import flexip.settings.dial

    calls = []
    resolve = flexip.settings.dial.block_values

    def counting(form, *args):
        calls.append(form)
        return resolve(form, *args)

    monkeypatch.setattr(flexip.settings.dial, "block_values", counting)
    extra = ["--preservation", "down=0.9,up=0.3", "--scale", "up=0.5"]
    assert generate(tmp_path / "out.png", reference, model_args, *extra) == 0, capsys.readouterr().err
    assert calls == [{"down": 0.9, "up": 0.3}, {"up": 0.5}]
