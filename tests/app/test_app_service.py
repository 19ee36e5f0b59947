"""The web page's requests without a browser: checked values, the same images as `flexip generate`, bad uploads
in one readable line, the reference encoded once, cancel."""

from __future__ import annotations

import shlex
import sys
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")  # the app extra

from fixtures import settings_of
from flexip import FlexIPError
from flexip.app.service import MAX_PIXELS, MAX_UPLOAD_BYTES, Cancelled, read_reference, sweep_values
from flexip.cli import main
from flexip.demo_subject import DEMO_PROMPT, DEMO_REFERENCE


def ask(service, reference=DEMO_REFERENCE, name="subject.png", **changes):
    """A request as the page sends it, with few steps; `changes` override the page's values by name."""
    values = {"prompt": DEMO_PROMPT, "preservation": 0.5, "sweep": None, "seed": 0, "randomize": False, "steps": 3,
              "guidance": 7.5, "scheduler": "ddim", "scale": 1.0, "negative_prompt": ""}  # fmt: skip
    values.update(changes)
    return service.request(str(reference), name, **values)


def test_a_result_is_what_its_command_line_writes(service, tmp_path):
    request = ask(service, preservation=0.8, seed=7, steps=4, guidance=3.0, scheduler="dpm++", scale=0.8,
                  negative_prompt="blurry")  # fmt: skip
    result = service.run(request)
    words = shlex.split(result.command)
    assert words[:2] == ["flexip", "generate"] and words[words.index("--reference") + 1] == str(
        DEMO_REFERENCE
    )
    words[words.index("--out") + 1] = str(tmp_path / "cli.png")
    assert main(words[1:]) == 0
    page_png, cli_png = Image.open(result.images[0]), Image.open(tmp_path / "cli.png")
    np.testing.assert_array_equal(np.asarray(page_png), np.asarray(cli_png))
    assert settings_of(result.images[0]) == settings_of(tmp_path / "cli.png")  # the same settings embedded


def test_a_sweep_runs_along_the_dial_with_a_contact_sheet(service):
    result = service.run(ask(service, sweep=4))
    values = [0.0, 0.3333, 0.6667, 1.0]
    assert [value.form for value in result.values] == values
    assert [settings_of(path)["preservation"] for path in result.images] == values
    assert settings_of(result.sheet)["preservation"] == values
    assert shlex.split(result.command)[:2] == ["flexip", "sweep"]
    with pytest.raises(FlexIPError, match="from 2 to 9"):
        sweep_values(10)


def test_moving_the_dial_does_not_encode_the_reference_again(service, tmp_path):
    picture = tmp_path / "new.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(picture)
    runs = []
    encoder = service.loaded.pipe.flexip.reference_encoder
    hooks = [
        model.register_forward_hook(lambda *_: runs.append(1))
        for model in (encoder.clip_model, encoder.dino_model)
    ]
    first = service.run(ask(service, picture, preservation=0.2))
    second = service.run(ask(service, picture, preservation=0.9, scheduler="euler"))
    for hook in hooks:
        hook.remove()
    assert len(runs) == 2  # CLIP and DINOv2 once, for the first request only
    assert "reference encoded in" in first.report and "reused, not encoded again" in second.report
    for part in ("denoise", "decode"):
        assert part in second.report


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"this is a text file, not a picture\n", "is not an image format"),
        ("truncated", "damaged or truncated"),
        ("large", f"more than the {MAX_PIXELS / 1e6:g} megapixels"),
        ("bomb", f"more than the {MAX_PIXELS / 1e6:g} megapixels"),
        ("huge", f"larger than {MAX_UPLOAD_BYTES // 2**20} MB"),
    ],
)
def test_a_bad_upload_gets_one_line_naming_the_file(service, tmp_path, content, message):
    path = tmp_path / "upload-1234.png"  # the server's copy; the user knows the file as dog.png
    if content == "truncated":
        Image.new("RGB", (64, 64), (200, 30, 30)).save(path)
        path.write_bytes(path.read_bytes()[:-40])
    elif content == "large":
        Image.new("L", (6000, 6000)).save(path)
    elif content == "bomb":
        Image.new("1", (14000, 14000)).save(path)  # 24 kB that would decode to 196 megapixels
    elif content == "huge":
        path.write_bytes(np.random.default_rng(0).bytes(MAX_UPLOAD_BYTES + 1))
    else:
        path.write_bytes(content)
    with pytest.raises(FlexIPError, match=message) as error:
        read_reference(path, "dog.png")
    assert "dog.png" in str(error.value) and str(path) not in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_values_name_the_setting(service):
    for changes, message in [
        ({"prompt": "  "}, "prompt is empty"),
        ({"preservation": 1.5}, r"preservation=1.5 is outside \[0, 1\]"),
        ({"steps": 2.5}, "steps=2.5 must be a whole number"),
        ({"scheduler": "fast"}, "scheduler 'fast'"),
        ({"seed": -1}, "seed=-1"),
    ]:
        with pytest.raises(FlexIPError, match=message):
            ask(service, **changes)
    with pytest.raises(FlexIPError, match="no reference"):
        service.request(None, "", DEMO_PROMPT, 0.5, None, 0, False, 3, 7.5, "ddim", 1.0, "")


def test_stop_ends_a_request_at_the_next_step(service):
    steps_seen, stop = [], threading.Event()

    def on_step(done, total):
        steps_seen.append(done)
        stop.set()  # as the page does when its request is cancelled or its client has gone

    with pytest.raises(Cancelled, match="after 2 of 3 steps"):
        service.run(ask(service), stop=stop, on_step=on_step)
    assert steps_seen == [1]
    assert len(service.run(ask(service)).images) == 1  # and the service goes on


def test_a_random_seed_is_drawn_and_reported(service):
    request = ask(service, randomize=True)
    result = service.run(request)
    assert (
        f"--seed {request.sampling.seed} " in result.command
        and settings_of(result.images[0])["seed"] == request.sampling.seed
    )


def test_serve_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed
    assert main(["serve"]) == 2
    assert capsys.readouterr().err.strip() == (
        'flexip serve: error: the web page needs gradio, which is not installed: pip install "flexip[app]"'
    )
