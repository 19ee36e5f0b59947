"""The typed-config loader (settings/typed_config.py), a table of mappings and what each builds or the one line
each is refused with; and the adapter's config, which reads flexip_config.json through it without torch."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from flexip.errors import FlexIPError
from flexip.models.config import FlexIPConfig, GateConfig, PreservationConfig
from flexip.settings.typed_config import from_mapping


@dataclass
class Part:
    width: int = 8
    share: float = 0.5


@dataclass
class Whole:
    name: str
    part: Part = field(default_factory=Part)
    rate: float | None = None
    switch: bool = False
    prompts: list[str] = field(default_factory=list)
    layers: dict[str, list[int]] = field(default_factory=dict)


BUILT = [
    ({"name": "a"}, Whole("a")),
    ({"name": "a", "part": {"share": 1}}, Whole("a", Part(share=1.0))),  # an int given for a float
    ({"name": "a", "rate": "1e-4"}, Whole("a", rate=1e-4)),  # PyYAML (YAML 1.1) reads 1e-4 as text
    ({"name": "a", "rate": "1.5E5"}, Whole("a", rate=1.5e5)),  # and 1.5E5
    ({"name": "a", "rate": None}, Whole("a")),
    (
        {"name": "a", "switch": True, "prompts": ["x"], "layers": {"l": [1, 2]}},
        Whole("a", switch=True, prompts=["x"], layers={"l": [1, 2]}),
    ),
]


@pytest.mark.parametrize("data, built", BUILT)
def test_a_mapping_builds_its_typed_config(data, built):
    config = from_mapping(Whole, data, "src")
    assert config == built
    assert all(type(value) is float for value in (config.part.share, config.rate) if value is not None)


REFUSED = [
    ([1], "src: the top level must be a mapping of keys, got [1]"),
    ({"nme": "a"}, "src: unknown key nme (did you mean name?)"),
    ({"name": "a", "part": {"widht": 1}}, "src: unknown key part.widht (did you mean part.width?)"),
    ({"name": "a", "zzz": 1}, "src: unknown key zzz (known keys: name, part, rate, switch, prompts, layers)"),
    ({}, "src: missing key(s) name, which have no default"),
    ({"name": 3}, "src: name must be a string, got 3"),
    ({"name": "a", "part": 3}, "src: part must be a mapping of keys, got 3"),
    ({"name": "a", "part": {"width": "8"}}, "src: part.width must be an integer, got '8'"),
    ({"name": "a", "part": {"width": True}}, "src: part.width must be an integer, got True"),
    ({"name": "a", "part": {"width": 8.0}}, "src: part.width must be an integer, got 8.0"),
    ({"name": "a", "part": {"share": True}}, "src: part.share must be a finite number, got True"),
    ({"name": "a", "part": {"share": float("nan")}}, "src: part.share must be a finite number, got nan"),
    ({"name": "a", "rate": "-inf"}, "src: rate must be a finite number, got '-inf'"),
    ({"name": "a", "rate": "fast"}, "src: rate must be a finite number, got 'fast'"),
    ({"name": "a", "rate": "0.5"}, "src: rate must be a finite number, got '0.5'"),  # quoted on purpose
    ({"name": "a", "rate": "1e999"}, "src: rate must be a finite number, got '1e999'"),
    ({"name": "a", "switch": "yes"}, "src: switch must be true or false, got 'yes'"),
    ({"name": "a", "prompts": "x"}, "src: prompts must be a list, got 'x'"),
    ({"name": "a", "prompts": ["x", 2]}, "src: prompts[1] must be a string, got 2"),
    ({"name": "a", "layers": [1]}, "src: layers must be a mapping of keys, got [1]"),
    ({"name": "a", "layers": {"l": [1, "2"]}}, "src: layers['l'][1] must be an integer, got '2'"),
    ({"name": "a", "layers": {3: [1]}}, "src: a key of layers must be a string, got 3"),
]


@pytest.mark.parametrize("data, message", REFUSED, ids=[message for _, message in REFUSED])
def test_a_wrong_key_or_value_is_refused_in_one_line_naming_it(data, message):
    with pytest.raises(FlexIPError) as error:
        from_mapping(Whole, data, "src")
    assert str(error.value) == message


def test_a_field_of_a_type_the_loader_does_not_check_is_a_programming_error():
    @dataclass
    class Odd:
        pair: tuple[int, int] = (1, 2)

    with pytest.raises(TypeError, match="pair: a typed config's field cannot be"):
        from_mapping(Odd, {"pair": [1, 2]}, "src")


ADAPTER = {
    "cross_attention_dim": 32,
    "clip_embed_dim": 32,
    "dino_hidden_dim": 32,
    "layers": {"up.attn2.processor": [32, 64]},
    "format_version": 1,
}

ADAPTER_REFUSED = [
    ({"format_version": 3}, "cfg: format_version 3 is not supported (this flexip reads 1 and 2)"),
    ({"dino_layr": -1}, "cfg: unknown key dino_layr (did you mean dino_layer?)"),
    (
        {"preservation": {"hedas": 2}},
        "cfg: unknown key preservation.hedas (did you mean preservation.heads?)",
    ),
    ({"layers": None}, "cfg: layers must be a mapping of keys, got None"),
    ({"preservation": {"heads": "2"}}, "cfg: preservation.heads must be an integer, got '2'"),
    ({"preservation": {"width": 10**9}}, "cfg: preservation.width=1000000000 must be between 1 and 65536"),
    ({"clip_embed_dim": 0}, "cfg: clip_embed_dim=0 must be between 1 and 65536"),
    ({"gate": {"image_init": 1.0}}, "cfg: gate.image_init=1.0 must be strictly between 0 and 1"),
    ({"gate": {"uniform_share": 2}}, "cfg: gate.uniform_share=2.0 is a share of the samples"),
    ({"base_family": "sd3"}, "cfg: base_family: unknown base family 'sd3'"),
    (
        {"layers": {"up.attn2.processor": [32]}},
        "cfg: layers['up.attn2.processor'] is [32]; each layer maps to",
    ),
]


@pytest.mark.parametrize("change, message", ADAPTER_REFUSED, ids=[message for _, message in ADAPTER_REFUSED])
def test_the_adapter_config_refuses_a_wrong_key_type_or_size_naming_it(change, message):
    assert FlexIPConfig.from_dict(ADAPTER, "cfg").preservation == PreservationConfig()
    with pytest.raises(FlexIPError) as error:
        FlexIPConfig.from_dict({**ADAPTER, **change}, "cfg")
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_an_adapter_config_written_is_read_back_the_same():
    config = FlexIPConfig.from_dict({**ADAPTER, "gate": {"image_init": 0.7}}, "cfg")
    assert config.gate == GateConfig(image_init=0.7)
    assert FlexIPConfig.from_dict(config.to_dict(), "cfg") == config


def test_the_command_line_reads_configs_without_importing_torch():
    code = (
        "import sys, flexip.models.config, flexip.settings.typed_config; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
