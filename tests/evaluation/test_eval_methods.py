"""The evaluation methods as objects: the dial each has and the settings each records in generation.json."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flexip.defaults import BASE_MODEL
from flexip.errors import FlexIPError
from flexip.evaluation.generate_config import Sampling
from flexip.evaluation.methods import METHODS, build_method

SHARED = {"seeds": 2, "steps": 3, "guidance": 7.5, "dtype": "float32", "scheduler": "DDIMScheduler",
          "safety_checker": False}  # fmt: skip


def test_each_method_reports_its_dial_and_the_settings_it_records(tiny_models):
    assert list(METHODS) == ["flexip", "ip-adapter", "base", "sd", "folder"]
    sampling = Sampling(seeds=2, steps=3)
    # Options of other methods are ignored, as the command line ignores their flags.
    options = {"adapter": str(tiny_models.adapter), "preservation": (0.2, 0.8), "scale": (1.0,)}
    options["images"] = "elsewhere"
    flexip = build_method("flexip", sampling, **options)
    assert (flexip.dial_name, flexip.dials) == ("preservation", (0.2, 0.8))
    # Without --base, FlexIP runs on the base its adapter records (the tiny set's ../base, from the adapter).
    assert flexip.settings() == {
        "method": "flexip", "base": str(tiny_models.base.resolve()), "family": "sd15",
        "adapter": str(tiny_models.adapter), "preservation": [0.2, 0.8], "scale": [1.0], **SHARED,
        "dial_name": "preservation", "gate": [0.2, 0.8],
    }  # fmt: skip
    given = build_method("flexip", Sampling(base="elsewhere", seeds=2, steps=3), **options)
    assert given.settings()["base"] == "elsewhere"

    ip_adapter = build_method("ip-adapter", sampling, ip_adapter="h94/IP-Adapter", scale=(0.0, 1.0))
    assert (ip_adapter.dial_name, ip_adapter.dials) == ("scale", (0.0, 1.0))
    assert ip_adapter.settings() == {
        "method": "ip-adapter", "base": BASE_MODEL, "family": "sd15", "scale": [0.0, 1.0],
        "ip_adapter": "h94/IP-Adapter", "ip_adapter_subfolder": "models",
        "ip_adapter_weight": "ip-adapter_sd15.safetensors", **SHARED,
        "dial_name": "scale",
    }  # fmt: skip

    # `sd` is the base method under its own name, which its results record.
    for name in ("base", "sd"):
        plain = build_method(name, sampling, scale=(0.5,))
        assert (plain.dial_name, plain.dials) == (None, (None,))
        expected = {"method": name, "base": BASE_MODEL, "family": "sd15", **SHARED, "dial_name": None}
        assert plain.settings() == expected

    folder = build_method("folder", sampling, images="elsewhere")
    assert (folder.dial_name, folder.dials) == (None, (None,))
    assert folder.settings() == {"method": "folder", "images": "elsewhere", "dial_name": None}


def test_the_sampler_and_guidance_are_the_base_familys_unless_guidance_is_given():
    flux = Sampling(seeds=2, steps=3).settings("flux")
    assert (flux["guidance"], flux["scheduler"]) == (3.5, "FlowMatchEulerDiscreteScheduler")
    assert Sampling(seeds=2, steps=3).settings("sdxl") == SHARED
    given = Sampling(guidance=2.0)
    assert given.settings("flux")["guidance"] == given.settings("sd15")["guidance"] == 2.0


def test_each_method_checks_its_own_options():
    sampling = Sampling()
    for name, flag in (("flexip", "--adapter"), ("ip-adapter", "--ip-adapter"), ("folder", "--images")):
        with pytest.raises(FlexIPError, match=f"--method {name} needs {flag}"):
            build_method(name, sampling)
    with pytest.raises(FlexIPError, match="--preservation values must lie in"):
        build_method("flexip", sampling, adapter="a", preservation=(1.5,))
    with pytest.raises(FlexIPError, match=r"--scale=-1.0 is outside \[0, 10\]"):
        build_method("ip-adapter", sampling, ip_adapter="a", scale=(-1.0,))
    with pytest.raises(FlexIPError, match="unknown --method"):
        build_method("dreambooth", sampling)
    with pytest.raises(FlexIPError, match="--dtype must be one of"):
        Sampling(dtype="int8")


def test_the_command_line_lists_the_methods_without_importing_torch():
    code = "import sys, flexip.evaluation.methods; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
