"""A model named by hub id that is not in the local cache, without the hub: every loader fails at once, in one
line that names the model, the cause (HF_HUB_OFFLINE set, or the hub not answering) and the fix (a local path,
or `hf download` first), where the hub client would retry every file for about 20 s and then blame the file.
Every loader of a hub id goes through `flexip.model_paths.check_hub_model`; one test per kind of loader."""

from __future__ import annotations

import socketserver
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

import pytest
from huggingface_hub import constants

from fixtures import DREAMBENCH, TINY_CONFIG
from flexip import FlexIPError, FlexIPPipeline
from flexip.cli import main
from flexip.evaluation.extractors import ClipFeatures, DinoFeatures
from flexip.families.registry import SD15, load_base
from flexip.model_paths import check_hub_model

MISSING = "flexip-tests/not-downloaded"  # a hub id no cache holds


@dataclass
class Hub:
    cause: str  # the cause the error names
    requests: list  # one entry per connection the endpoint received
    checks: int  # the requests one refused look-up makes: the check's one without the network, none offline


@contextmanager
def endpoint(handler: type[socketserver.BaseRequestHandler]):
    """A local server on a free port whose address the hub client takes as its endpoint; yields the list of
    requests it received."""
    requests = []

    class Counting(handler):
        def setup(self):
            requests.append(self.client_address)
            super().setup()

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Counting) as server:
        thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}", requests
        finally:
            server.shutdown()


class HangUp(socketserver.BaseRequestHandler):
    def handle(self):  # no answer: the connection closes unanswered
        pass


class NotFound(BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(params=["offline", "no network"])
def hub(request, monkeypatch, tmp_path):
    """An empty Hugging Face cache, and either HF_HUB_OFFLINE set (conftest sets it) or no network: an endpoint
    that hangs up on every request and counts them."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    if request.param == "offline":
        assert constants.HF_HUB_OFFLINE
        yield Hub("HF_HUB_OFFLINE is set", [], checks=0)
        return
    with endpoint(HangUp) as (url, requests):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", url)
        yield Hub(f"the hub cannot be reached ({url}", requests, checks=1)


def assert_refused(hub: Hub, error: str, name: str, download: str) -> None:
    """One line naming the model, the cause and the fix, with no request but the check's: no retries."""
    assert len(error.strip().splitlines()) == 1, error
    assert f"{name!r} is neither a local path nor in the local Hugging Face cache" in error, error
    assert hub.cause in error and "give a local path, or download it first" in error, error
    assert f"(`hf download {download}`)" in error, error
    assert len(hub.requests) == hub.checks, hub.requests


def test_a_base_model(hub, tiny_models, tmp_path, capsys):
    args = ["generate", "--adapter", str(tiny_models.adapter), "--base", MISSING, "--prompt", "a dog",
            "--reference", str(tiny_models.data / "image0.png"), "--out", str(tmp_path / "a.png")]  # fmt: skip
    assert main(args) == 2
    assert_refused(hub, capsys.readouterr().err, MISSING, MISSING)


def test_a_single_file_bases_config(hub, tiny_models):
    # Any .safetensors file: the check comes before the file is read.
    checkpoint = tiny_models.base / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(FlexIPError) as error:
        load_base(SD15, checkpoint, base_config=MISSING)
    assert_refused(hub, str(error.value), MISSING, MISSING)


def test_a_reference_encoder_in_a_repository_folder(hub, tiny_models):
    encoder = f"{MISSING}/models/image_encoder"
    with pytest.raises(FlexIPError) as error:
        FlexIPPipeline.from_pretrained(tiny_models.base, adapter=tiny_models.adapter, image_encoder=encoder)
    assert_refused(hub, str(error.value), encoder, f"{MISSING} --include 'models/image_encoder/*'")


def test_the_training_base(hub, tiny_models, tmp_path, capsys):
    settings = ["model.tiny_models=''", f"model.base={MISSING}", f"model.image_encoder={tiny_models.image_encoder}",
                f"model.dino_encoder={tiny_models.dinov2}", f"data.manifest={tiny_models.manifest}", "log_with=[]"]  # fmt: skip
    args = ["train", "--config", str(TINY_CONFIG), "--output-dir", str(tmp_path / "run")]
    assert main([*args, *[a for s in settings for a in ("--set", s)]]) == 2
    assert_refused(hub, capsys.readouterr().err, MISSING, MISSING)


def test_ip_adapter(hub, tiny_models, dreambench, tmp_path, capsys):
    args = ["eval", "generate", "--data", str(DREAMBENCH), "--subjects", "dog", "--max-prompts", "1", "--seeds", "1",
            "--base", str(tiny_models.base), "--out", str(tmp_path / "out"), "--method", "ip-adapter",
            "--ip-adapter", MISSING]  # fmt: skip
    assert main(args) == 2
    assert_refused(hub, capsys.readouterr().err, MISSING, f"{MISSING} --include 'models/*'")


@pytest.mark.parametrize("features", [ClipFeatures, DinoFeatures])
def test_a_metric_backbone(hub, features):
    with pytest.raises(FlexIPError) as error:
        features.from_pretrained(MISSING)
    assert_refused(hub, str(error.value), MISSING, MISSING)


def test_the_mask_model(hub, tiny_models, tmp_path, capsys):
    args = ["prep", "images", str(tiny_models.data), "--out", str(tmp_path / "m.jsonl"), "--mask-model", MISSING]  # fmt: skip
    assert main(args) == 2
    assert_refused(hub, capsys.readouterr().err, MISSING, MISSING)


def test_the_caption_model(hub, tiny_models, tmp_path, capsys):
    args = ["prep", "caption", str(tiny_models.manifest), "--out", str(tmp_path / "c.jsonl"), "--model", MISSING]  # fmt: skip
    assert main(args) == 2
    assert_refused(hub, capsys.readouterr().err, MISSING, MISSING)


def test_a_model_in_the_cache_or_a_hub_that_answers_goes_to_its_loader(monkeypatch, tmp_path):
    """The check stops only what would fail: a cached model loads offline, and online the loader does the rest."""
    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    repo = cache / f"models--{MISSING.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40) / "image_encoder").mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "image_encoder" / "config.json").write_text("{}")
    check_hub_model(f"{MISSING}/image_encoder", "the encoder")  # offline, in the cache
    with pytest.raises(FlexIPError, match="HF_HUB_OFFLINE is set"):
        check_hub_model(MISSING, "the model")  # its root's config.json is not
    check_hub_model(tmp_path, "a folder")  # a local path: never the hub's
    with endpoint(NotFound) as (url, requests):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", url)
        check_hub_model(MISSING, "the model")  # the hub answers (whatever it answers): the loader goes on
    assert len(requests) == 1
