"""Saving into a folder that holds other files keeps them: the adapter replaces only its own two files, and
`flexip tiny-models` keeps every part already there (a trained adapter too) unless --overwrite says otherwise.
A crash between the two renames of `atomic_directory` is repaired by the next write or read."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from flexip import FlexIPAdapter
from flexip.atomic import atomic_directory
from flexip.cli import main
from flexip.models.config_file import CONFIG_NAME, WEIGHTS_NAME


def _dead_pid() -> int:
    """The id of a process of this machine that has just ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_save_pretrained_keeps_the_folders_other_files(tmp_path, tiny_models):
    adapter = FlexIPAdapter.from_pretrained(tiny_models.adapter)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "README.md").write_text("what this adapter is")
    (folder / "sub").mkdir()
    (folder / "sub" / "data.bin").write_bytes(b"\x00\x01")
    with torch.no_grad():
        adapter.gate.logits.add_(1.0)
    adapter.save_pretrained(folder)
    assert (folder / "README.md").read_text() == "what this adapter is"
    assert (folder / "sub" / "data.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in folder.iterdir()) == sorted(["README.md", "sub", CONFIG_NAME, WEIGHTS_NAME])
    loaded = FlexIPAdapter.from_pretrained(folder)
    assert torch.equal(loaded.gate.logits, adapter.gate.logits)
    with pytest.raises(Exception, match="is a file"):
        adapter.save_pretrained(folder / "README.md")
    assert (folder / "README.md").read_text() == "what this adapter is"


def test_tiny_models_keeps_a_trained_adapter_unless_told(tmp_path, tiny_models, capsys):
    kit = tmp_path / "kit"
    shutil.copytree(tiny_models.adapter, kit / "adapter")
    trained = FlexIPAdapter.from_pretrained(kit / "adapter")
    with torch.no_grad():
        trained.gate.logits.fill_(2.0)  # stands for a trained adapter
    trained.save_pretrained(kit / "adapter")
    (kit / "adapter" / "notes.txt").write_text("run 7, best so far")

    assert main(["tiny-models", str(kit)]) == 0
    assert "adapter/" in capsys.readouterr().out and (kit / "base" / "model_index.json").is_file()
    assert (kit / "adapter" / "notes.txt").read_text() == "run 7, best so far"
    assert torch.equal(FlexIPAdapter.from_pretrained(kit / "adapter").gate.logits, torch.full((2,), 2.0))

    assert main(["tiny-models", str(kit), "--overwrite"]) == 0
    assert not (kit / "adapter" / "notes.txt").exists()
    assert not torch.equal(FlexIPAdapter.from_pretrained(kit / "adapter").gate.logits, torch.full((2,), 2.0))


def test_a_crash_between_the_renames_is_repaired(tmp_path, tiny_models):
    # What a process killed after moving the old folder aside, before moving the new one in, leaves behind.
    host, dead = socket.gethostname(), _dead_pid()
    old = shutil.copytree(tiny_models.adapter, tmp_path / f".old-adapter-{dead}-{host}-0a1b2c3d")
    unfinished = tmp_path / f".tmp-adapter-{dead}-{host}-4e5f6a7b"
    unfinished.mkdir()
    (unfinished / WEIGHTS_NAME).write_bytes(b"half")
    alive = tmp_path / f".tmp-adapter-{os.getpid()}-{host}-8c9d0e1f"  # a write in progress: left alone
    alive.mkdir()

    adapter = FlexIPAdapter.from_pretrained(tmp_path / "adapter")  # the old adapter is put back, then read
    assert not old.exists() and not unfinished.exists() and alive.is_dir()
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])

    # Killed while deleting the replaced folder: the next write removes what is left of it.
    stale = tmp_path / f".old-box-{dead}-{host}-11223344"
    stale.mkdir()
    with atomic_directory(tmp_path / "box") as tmp:
        (tmp / "a.txt").write_text("new")
    assert (tmp_path / "box" / "a.txt").read_text() == "new" and not stale.exists()
    assert adapter is not None
