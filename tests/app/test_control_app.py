"""The web page's advanced section: the dial's forms, more references, masks; requests without a browser."""

from __future__ import annotations

import shlex

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")  # the app extra

from fixtures import DEMO_MODEL, free_port, settings_of
from flexip import FlexIPError
from flexip.app.service import Service
from flexip.cli import main
from flexip.demo_subject import DEMO_PROMPT, DEMO_REFERENCE


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uploads")
    other = folder / "upload-other.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(other)
    left, right = folder / "upload-left.png", folder / "upload-right.png"
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    mask.save(left)
    Image.eval(mask, lambda value: 255 - value).save(right)
    return {
        "other": (str(other), "cat.png"),
        "left": (str(left), "left.png"),
        "right": (str(right), "right.png"),
    }


def ask(service, **changes):
    values = {"prompt": DEMO_PROMPT, "preservation": 0.5, "sweep": None, "seed": 0, "randomize": False, "steps": 2,
                  "guidance": 7.5, "scheduler": "ddim", "scale": 1.0, "negative_prompt": ""}  # fmt: skip
    values.update(changes)
    return service.request(str(DEMO_REFERENCE), "subject.png", **values)


@pytest.mark.parametrize(
    "changes, recorded",
    [
        ({"dial": "down=0.9,mid=0.6,up=0.3"}, {"down": 0.9, "mid": 0.6, "up": 0.3}),
        ({"dial": "0.9:0.3", "reference_weights": "0.7,0.3"}, {"start": 0.9, "end": 0.3, "shape": "linear"}),
        ({"preservation": 0.7}, 0.7),
    ],
    ids=["blocks", "schedule-two-references", "masks"],
)
def test_an_advanced_result_is_what_its_command_line_writes(service, uploads, tmp_path, changes, recorded):
    if "reference_weights" in changes:
        changes["more_references"] = [uploads["other"]]
    if changes == {"preservation": 0.7}:
        changes.update(more_references=[uploads["other"]], masks=[uploads["left"], uploads["right"]])
    result = service.run(ask(service, **changes))
    settings = settings_of(result.images[0])
    assert settings["preservation"] == recorded
    words = shlex.split(result.command)
    # the command line names the files as the user knows them; here they are the server's copies
    names = {name: path for path, name in uploads.values()}
    words = [names.get(word, word) for word in words]
    words[words.index("--out") + 1] = str(tmp_path / "cli.png")
    assert main(words[1:]) == 0
    np.testing.assert_array_equal(
        np.asarray(Image.open(result.images[0])), np.asarray(Image.open(tmp_path / "cli.png"))
    )


def test_an_advanced_sweep_takes_the_dials_values(service):
    result = service.run(ask(service, sweep=5, dial="0.9:0.3;down=1,up=0;0.5"))
    assert len(result.images) == 3 and result.sheet is not None
    assert [settings_of(path)["preservation"] for path in result.images] == [
        {"start": 0.9, "end": 0.3, "shape": "linear"}, {"down": 1.0, "up": 0.0}, 0.5]  # fmt: skip


def test_advanced_mistakes_name_the_setting(service, uploads):
    for changes, message in [
        ({"dial": "dwn=0.5"}, "dial: unknown block 'dwn'"),
        ({"dial": "up.block_9=0.5"}, "'block_9' is not a block"),
        ({"dial": "0.3;0.5"}, "one image takes one value"),
        ({"dial": "0.9:0.3", "sweep": 3}, "a sweep needs several values"),
        ({"reference_weights": "0"}, "give weights that sum to a positive number"),
        ({"reference_weights": "a,b", "more_references": [uploads["other"]]}, "give comma-separated numbers"),
        (
            {"masks": [uploads["left"]], "more_references": [uploads["other"]]},
            "give one mask per reference (2)",
        ),
    ]:
        with pytest.raises(FlexIPError, match=message.replace("(", r"\(").replace(")", r"\)")):
            ask(service, **changes)


def test_the_page_takes_the_advanced_inputs_through_its_api(demo_model, uploads, tmp_path):
    """The `generate` endpoint with the Advanced section filled: a dial form, another reference, weights and
    masks arrive as gradio's upload records and reach the request."""
    from gradio_client import Client, handle_file

    from flexip.app.page import ONE, running

    with running(lambda results: Service(demo_model, DEMO_MODEL, results), port=free_port()) as url:
        client = Client(url, download_files=str(tmp_path), verbose=False)
        status, image, _, _, command, _ = client.predict(
            handle_file(str(DEMO_REFERENCE)), DEMO_PROMPT, 0.5, ONE, 3, 0, False, 2, 7.5, "ddim", 1.0, "",
            "down=0.9,mid=0.6,up=0.3", [handle_file(uploads["other"][0])], "0.7,0.3",
            [handle_file(uploads["left"][0]), handle_file(uploads["right"][0])], api_name="/generate",
        )  # fmt: skip
    assert "Error" not in status, status
    settings = settings_of(image)
    assert settings["preservation"] == {"down": 0.9, "mid": 0.6, "up": 0.3}
    assert settings["reference_weights"] == [0.7, 0.3] and len(settings["reference_masks"]) == 2
    words = shlex.split(command)
    assert words.count("--reference") == 2 and words.count("--mask") == 2
