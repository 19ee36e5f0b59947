"""The README's Python examples run as written, offline, on the tiny models.

Every ```python block of README.md runs in order in one namespace, as a reader pasting them into one Python
session runs them (a later block may use the `pipe` an earlier one made), in a working folder where the
relative paths they name exist: each image file a block names is a small picture, and each `.../adapter`
folder is the tiny adapter beside its encoders. The hub ids they load resolve offline to the tiny base of
their family, laid out in a Hugging Face cache of the test's own (`HUB_BASES`). A block that cannot run here
says why in the README, on the line above it: `<!-- not run by the tests: needs a GPU -->`; it is reported
as skipped with that reason.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
from PIL import Image

from fixtures import REPO, TINY_MODELS
from flexip.tiny import ModelSet

README = REPO / "README.md"
NOT_RUN = re.compile(r"<!-- not run by the tests: (.+) -->")
# The hub ids the README loads -> the family of the tiny base that stands in for them.
HUB_BASES = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd15",
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
}
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SIZE = 32  # px, square: the tiny models' images, so that any mask has the generated image's aspect ratio


@dataclass(frozen=True)
class Block:
    line: int  # of the block's first code line in README.md
    code: str
    not_run: str | None  # why the tests do not run it, as the README says


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown text, each with the reason given on the line above it, if any."""
    lines, blocks = text.splitlines(), []
    for index, line in enumerate(lines):
        if line.strip() != "```python":
            continue
        end = next(end for end in range(index + 1, len(lines)) if lines[end].strip() == "```")
        above = NOT_RUN.fullmatch(lines[index - 1].strip()) if index else None
        blocks.append(Block(index + 2, "\n".join(lines[index + 1 : end]), above and above.group(1)))
    return blocks


BLOCKS = python_blocks(README.read_text())


def named_strings(blocks: list[Block]) -> set[str]:
    """Every string constant in the blocks' code: the paths and hub ids among them are what they load."""
    return {
        node.value
        for block in blocks
        for node in ast.walk(ast.parse(block.code))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


@dataclass(frozen=True)
class Workspace:
    folder: Path  # the working folder the blocks run in
    hub_cache: Path


def save_picture(path: Path, seed: int) -> None:
    """A SIZE x SIZE picture of random pixels at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def lay_out_adapter(path: Path, models: ModelSet) -> None:
    """The tiny adapter at `path`, beside the encoders and base its config names relative to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for part in models.root.iterdir():
        (path.parent / part.name).symlink_to(part, target_is_directory=part.is_dir())


def lay_out_hub_model(cache: Path, hub_id: str, snapshot: Path) -> None:
    """`hub_id` in the Hugging Face cache at `cache`, its main revision being the folder `snapshot`."""
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    revision = "0" * 40
    (repo / "snapshots").mkdir(parents=True)
    (repo / "snapshots" / revision).symlink_to(snapshot, target_is_directory=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


@pytest.fixture(scope="module")
def workspace(request, tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("readme")
    workspace = Workspace(root / "work", root / "hub")
    workspace.folder.mkdir()
    for seed, name in enumerate(sorted(named_strings([block for block in BLOCKS if not block.not_run]))):
        if name.lower().endswith(IMAGE_SUFFIXES):
            save_picture(workspace.folder / name, seed)
        elif name.endswith("/adapter") and not name.startswith("/"):
            lay_out_adapter(workspace.folder / name, request.getfixturevalue(TINY_MODELS["sd15"]))
        elif HUB_ID.fullmatch(name):
            assert name in HUB_BASES, (
                f"README.md loads {name!r}: name the tiny base standing in for it in HUB_BASES"
            )
            models = request.getfixturevalue(TINY_MODELS[HUB_BASES[name]])
            lay_out_hub_model(workspace.hub_cache, name, models.base)
    return workspace


@pytest.fixture(scope="module")
def namespace() -> dict:
    """The one namespace all blocks run in, in order."""
    return {"__name__": "__readme__"}


def test_blocks_are_read_with_their_lines_and_marks():
    text = (
        "# Title\n\n```python\nx = 1\n```\n\n<!-- not run by the tests: needs a GPU -->\n```python\n"
        "pipe.to('cuda')\n```\n```bash\nls\n```\n"
    )
    assert python_blocks(text) == [Block(4, "x = 1", None), Block(9, "pipe.to('cuda')", "needs a GPU")]


def test_the_readme_has_python_examples():
    assert BLOCKS, "README.md has no ```python block: its examples, or how this test finds them, changed"
    assert all(block.code.strip() for block in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: f"README.md:{block.line}")
def test_a_readme_python_example_runs_as_written(block, workspace, namespace, monkeypatch):
    if block.not_run:
        pytest.skip(f"README.md:{block.line} says it is not run by the tests: {block.not_run}")
    monkeypatch.chdir(workspace.folder)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(workspace.hub_cache))
    # Blank lines before the code: a traceback names the README's own line numbers.
    code = compile("\n" * (block.line - 1) + block.code, str(README), "exec")
    exec(code, namespace)  # noqa: S102 (the README's own code, which this test exists to run)
