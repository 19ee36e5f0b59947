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
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "flexip-demo" / "contact_sheet.png").is_file()
