"""The command line's thread policy (flexip/cli/threads.py): the idle cores unless the user chose, decided before
torch is imported and applied directly when a caller already imported it; `import flexip` changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from flexip.cli import main
from flexip.cli.threads import THREAD_VARIABLES, chosen_threads, usable_cores
from flexip.errors import FlexIPError

CASES = [  # (flag, environment, cores, 1-minute load average, threads; None: torch reads the environment)
    (None, {}, 2, 0.0, 2),  # an idle machine: every core
    (None, {}, 2, 0.4, 2),  # the load of a shell and an editor: still every core
    (None, {}, 2, 1.0, 1),  # one core busy
    (None, {}, 2, 2.0, 1),  # every core busy
    (None, {}, 2, 5.3, 1),  # more work than cores
    (None, {}, 16, 0.2, 16),
    (None, {}, 16, 3.4, 13),
    (None, {}, 1, 0.0, 1),
    (None, {"OMP_NUM_THREADS": "3"}, 16, 0.0, None),
    (None, {"MKL_NUM_THREADS": "3"}, 2, 5.0, None),
    (None, {"OMP_NUM_THREADS": ""}, 2, 0.0, 2),  # set but empty: torch ignores it, so does the policy
    (4, {}, 2, 5.0, 4),  # the flag wins over the load
    (1, {"OMP_NUM_THREADS": "8"}, 16, 0.0, 1),  # and over the environment
]


@pytest.mark.parametrize(("flag", "environ", "cores", "load", "threads"), CASES)
def test_the_policy_uses_the_idle_cores_unless_the_user_chose(flag, environ, cores, load, threads):
    assert chosen_threads(flag, environ, cores, load) == threads


def test_a_thread_count_below_one_is_refused_naming_the_flag():
    with pytest.raises(FlexIPError, match="--threads 0: give a whole number of threads, at least 1"):
        chosen_threads(0, {}, 2, 0.0)


# A fresh Python with neither variable set, as a user's shell: `import flexip` sets nothing; main() sets the
# variables torch reads at import (keeping the user's), and torch takes them. Each main() call is a demo that
# ends in its one error line before torch is imported.
SCRIPT = """
import contextlib, io, json, os, sys
import flexip, flexip.cli
report = {"after import": {name: os.environ.get(name) for name in %(variables)r}}

def run(argv, **environ):
    for name in %(variables)r:
        os.environ.pop(name, None)
    os.environ.update(environ)
    with contextlib.redirect_stderr(io.StringIO()):
        code = flexip.cli.main([*argv, "demo", "--scale", "-1", "--out", %(out)r])
    return [code] + [os.environ.get(name) for name in %(variables)r]

report["user's OMP"] = run([], OMP_NUM_THREADS="3")
report["policy"] = run([])
report["flag"] = run(["--threads", "2"])
report["torch imported"] = "torch" in sys.modules
import torch
report["torch threads"] = torch.get_num_threads()
print(json.dumps(report))
"""


def test_main_sets_the_threads_before_torch_is_imported(tmp_path):
    environ = {name: value for name, value in os.environ.items() if name not in THREAD_VARIABLES}
    script = SCRIPT % {"variables": THREAD_VARIABLES, "out": str(tmp_path / "demo")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=environ, capture_output=True, text=True, check=True
    )
    report = json.loads(done.stdout)
    assert report["after import"] == {"OMP_NUM_THREADS": None, "MKL_NUM_THREADS": None}
    assert report["user's OMP"] == [2, "3", None]
    code, omp, mkl = report["policy"]
    assert code == 2 and omp == mkl and 1 <= int(omp) <= usable_cores()
    assert report["flag"] == [2, "2", "2"]
    assert not report["torch imported"] and report["torch threads"] == 2


@pytest.fixture
def restore_threads():
    yield
    torch.set_num_threads(1)  # the suite's one thread (tests/conftest.py)


def demo_mistake(tmp_path, *flags: str) -> list[str]:
    return [*flags, "demo", "--scale", "-1", "--out", str(tmp_path / "demo")]


def test_with_torch_imported_main_sets_its_threads_directly(tmp_path, monkeypatch, restore_threads):
    assert main(demo_mistake(tmp_path)) == 2
    assert torch.get_num_threads() == 1  # the suite's OMP_NUM_THREADS=1 is the user's choice: kept
    assert main(demo_mistake(tmp_path, "--threads", "2")) == 2
    assert torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "1"
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    torch.set_num_threads(1)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # an idle machine: every core
    assert main(demo_mistake(tmp_path)) == 2
    assert torch.get_num_threads() == usable_cores()
    assert not any(name in os.environ for name in THREAD_VARIABLES)


def test_threads_below_one_end_in_one_line(tmp_path, capsys):
    assert main(demo_mistake(tmp_path, "--threads", "0")) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "flexip demo: error: --threads 0: give a whole number of threads, at least 1"
    ]
