"""An install without extras is enough to generate: plotting and TensorBoard are extras (`flexip[eval]`,
`flexip[train]`), and nothing `flexip demo` runs imports them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
EXTRAS_ONLY = ("matplotlib", "tensorboard")


def test_plotting_and_tensorboard_are_extras():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    required = " ".join(project["dependencies"])
    assert not any(name in required for name in EXTRAS_ONLY)
    assert "tensorboard" in " ".join(project["optional-dependencies"]["train"])
    assert "matplotlib" in " ".join(project["optional-dependencies"]["eval"])


def test_demo_runs_without_the_extras(tmp_path):
    """`flexip demo` in a fresh interpreter where importing matplotlib or tensorboard fails."""
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in EXTRAS_ONLY)
    code = f"import sys; {blocked}; from flexip.cli import main; sys.exit(main(['demo', '--steps', '2']))"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "flexip-demo" / "contact_sheet.png").is_file()


def test_training_from_a_manifest_needs_no_webdataset_and_shards_say_how_to_get_it(tmp_path):
    """webdataset streams shards (`flexip[train]`, `flexip[prep]`): a manifest trains without it, and shards
    without it fail in one line that says what to install."""
    assert "webdataset" in " ".join(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
                                    ["optional-dependencies"]["train"])  # fmt: skip
    config = REPO / "configs" / "train" / "tiny.yaml"
    args = ["train", "--config", str(config), "--max-steps", "1", "--set", "log_with=[]"]
    shards = [*args, "--output-dir", "runs/b", "--set", "data.shards=x"]
    code = (
        "import sys; sys.modules['webdataset'] = None; from flexip.cli import main; "
        f"assert main({args!r}) == 0; sys.exit(main({shards!r}))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2, result.stderr
    assert "streaming shards needs webdataset: pip install 'flexip[train]'" in result.stderr
    assert (tmp_path / "runs" / "tiny" / "adapter").is_dir()
