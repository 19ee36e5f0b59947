"""The embedded demo model says once what it is when it is given a picture of the user's: on the command line
(`flexip generate`, `sweep`) and in the web page's server (`flexip serve`), never for the built-in subject and
never for an adapter the user names."""

from __future__ import annotations

import pytest

from fixtures import picture
from flexip.cli import main
from flexip.demo_subject import DEMO_PROMPT, DEMO_REFERENCE

NOTE = "note: the embedded model is a demo of the preservation dial"


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A picture of the user's: nothing like the demo world."""
    path = tmp_path_factory.mktemp("photo") / "dog.jpg"
    picture(5, (48, 64)).save(path)
    return path


def notes(text: str) -> list[str]:
    return [line for line in text.splitlines() if "note:" in line]


def test_a_photograph_on_the_demo_model_gets_one_line_once(photo, tmp_path, capsys):
    references = ["--reference", str(photo), "--reference", str(DEMO_REFERENCE)]
    argv = ["sweep", *references, "--prompt", "a dog", "--preservation", "0,1", "--steps", "1",
            "--out", str(tmp_path / "sweep")]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert notes(err) == [line for line in err.splitlines() if NOTE in line]
    assert len(notes(err)) == 1  # once for the command, whatever the number of images and references
    assert notes(err)[0].startswith("flexip sweep: note:") and "--adapter" in notes(err)[0]


def test_the_built_in_subject_and_a_named_adapter_get_no_note(photo, tiny_models, tmp_path, capsys):
    common = ["generate", "--prompt", "a dog", "--steps", "1"]
    assert main([*common, "--reference", str(DEMO_REFERENCE), "--out", str(tmp_path / "a.png")]) == 0
    assert main([*common, "--reference", str(photo), "--adapter", str(tiny_models.adapter),
                 "--out", str(tmp_path / "b.png")]) == 0  # fmt: skip
    assert notes(capsys.readouterr().err) == []


def test_the_server_says_it_once_at_the_first_photograph(service, photo, capsys):
    def ask(reference):
        values = {"prompt": DEMO_PROMPT, "preservation": 0.5, "sweep": None, "seed": 0, "randomize": False,
                  "steps": 1, "guidance": 7.5, "scheduler": "ddim", "scale": 1.0,
                  "negative_prompt": ""}  # fmt: skip
        return service.request(str(reference), reference.name, **values)

    service.run(ask(DEMO_REFERENCE))
    assert notes(capsys.readouterr().err) == []
    service.run(ask(photo))
    service.run(ask(photo))
    assert [line.split(":")[0] for line in notes(capsys.readouterr().err)] == ["flexip serve"]
