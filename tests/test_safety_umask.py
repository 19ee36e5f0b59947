"""Outputs get the user's umask, as any other tool's, and an overwritten file keeps its mode."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from PIL import Image

from flexip import FlexIPAdapter
from flexip.atomic import atomic_directory, atomic_write_bytes
from flexip.cli import main


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_follow_the_umask(tmp_path, umask):
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    assert mode(tmp_path / "a.bin") == 0o666 & ~umask
    with atomic_directory(tmp_path / "folder") as tmp:
        (tmp / "inside.txt").write_text("y")
    assert mode(tmp_path / "folder") == 0o777 & ~umask

    os.chmod(tmp_path / "a.bin", 0o640)
    atomic_write_bytes(tmp_path / "a.bin", b"again")
    assert mode(tmp_path / "a.bin") == 0o640 and (tmp_path / "a.bin").read_bytes() == b"again"


def test_adapters_and_images_follow_the_umask(tmp_path, umask, tiny_models):
    FlexIPAdapter.from_pretrained(tiny_models.adapter).save_pretrained(tmp_path / "adapter")
    assert mode(tmp_path / "adapter") == 0o777 & ~umask
    assert {mode(p) for p in (tmp_path / "adapter").iterdir()} == {0o666 & ~umask}

    reference = tmp_path / "dog.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(reference)
    out = tmp_path / "new" / "image.png"
    argv = ["generate", "--reference", str(reference), "--prompt", "a dog", "--out", str(out),
            "--base", str(tiny_models.base), "--adapter", str(tiny_models.adapter), "--steps", "1"]  # fmt: skip
    assert main(argv) == 0
    assert mode(out) == 0o666 & ~umask and mode(out.parent) == 0o777 & ~umask
