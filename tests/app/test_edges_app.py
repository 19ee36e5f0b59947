"""The web page at its edges: every request's work bounded, a request that ends early stops its generation and
frees its slot, the server's folder removed on a stop signal, one sentence for every wrong value through the API.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("gradio")  # the app extra

from fixtures import DEMO_MODEL, free_port
from flexip import FlexIPError
from flexip.app.page import CONCURRENCY, ONE, running
from flexip.app.service import MAX_PIXELS, Service, read_mask
from flexip.demo_subject import DEMO_PROMPT, DEMO_REFERENCE

LONG = 150  # denoising steps of a request that is ended early: far more than it runs


class CountingService(Service):
    """The real service, counting the generations running at once and the denoising steps each one runs."""

    def __init__(self, *args):
        super().__init__(*args)
        self.running = self.most = 0
        self.steps: list[list[int]] = []  # per generation, one entry per UNet call
        self._count = threading.Lock()
        self._current = threading.local()  # the generation this thread runs
        self.hook = self.loaded.pipe.unet.register_forward_hook(lambda *_: self._current.steps.append(1))

    def run(self, *args, **kwargs):
        with self._count:
            self.running += 1
            self.most = max(self.most, self.running)
            self._current.steps = []
            self.steps.append(self._current.steps)
        try:
            return super().run(*args, **kwargs)
        finally:
            with self._count:
                self.running -= 1


@pytest.fixture
def counting(demo_model, tmp_path):
    service = CountingService(demo_model, DEMO_MODEL, tmp_path / "results")
    yield service
    service.hook.remove()


def page_values(reference: dict, **changes) -> list:
    """The `generate` endpoint's 16 values, as the page sends them; `changes` by index."""
    values = [reference, DEMO_PROMPT, 0.5, ONE, 3, 0, False, 2, 7.5, "ddim", 1.0, "", "", None, "", None]
    for index, value in changes.items():
        values[int(index)] = value
    return values


class Api:
    """The page's HTTP API spoken directly, as any client may: JSON that gradio_client would not send (NaN),
    and a connection that is dropped mid-request."""

    def __init__(self, url: str):
        self.url = url
        self.host, self.port = url.split("//")[1].rstrip("/").split(":")
        with urllib.request.urlopen(f"{url}config", timeout=30) as answer:
            config = json.load(answer)
        self.fn_index = next(d["id"] for d in config["dependencies"] if d["api_name"] == "generate")
        self.reference = self.upload(DEMO_REFERENCE)

    def upload(self, path: Path) -> dict:
        body = (b'--b\r\nContent-Disposition: form-data; name="files"; filename="subject.png"\r\n'
                b"Content-Type: image/png\r\n\r\n" + path.read_bytes() + b"\r\n--b--\r\n")  # fmt: skip
        upload = urllib.request.Request(f"{self.url}gradio_api/upload", data=body, method="POST",
                                        headers={"Content-Type": "multipart/form-data; boundary=b"})  # fmt: skip
        with urllib.request.urlopen(upload, timeout=30) as answer:
            [server_path] = json.load(answer)
        return {"path": server_path, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def join(self, values: list) -> http.client.HTTPConnection:
        """Queue a request; returns the open connection of its stream of messages (`.stream`)."""
        session = uuid.uuid4().hex
        body = json.dumps({"data": values, "fn_index": self.fn_index, "session_hash": session,
                           "event_data": None, "trigger_id": None}).encode()  # fmt: skip
        join = urllib.request.Request(f"{self.url}gradio_api/queue/join", data=body, method="POST",
                                      headers={"Content-Type": "application/json"})  # fmt: skip
        urllib.request.urlopen(join, timeout=30).close()
        connection = http.client.HTTPConnection(self.host, int(self.port), timeout=60)
        connection.request("GET", f"/gradio_api/queue/data?session_hash={session}")
        connection.stream = connection.getresponse()
        return connection

    @staticmethod
    def messages(stream):
        for line in stream:
            if line.startswith(b"data: "):
                yield json.loads(line[6:])

    def call(self, values: list) -> list:
        """The outputs of one request: (status, image, sweep, contact sheet, command, seed)."""
        connection = self.join(values)
        with contextlib.closing(connection):
            for message in self.messages(connection.stream):
                if message["msg"] == "process_completed":
                    assert message["success"], message
                    return message["output"]["data"]
        raise AssertionError("the stream ended before the request completed")


def wait_for(condition, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def tall(tmp_path) -> Path:
    """A 400 x 12000 picture: 4.8 megapixels as sent, 36 if padded as it is to the 4:1 the encoders take."""
    path = tmp_path / "upload-tall.png"
    Image.new("1", (400, 12000), 1).save(path)
    return path


def ask(service, reference=DEMO_REFERENCE, **changes):
    values = {"prompt": DEMO_PROMPT, "preservation": 0.5, "sweep": None, "seed": 0, "randomize": False,
              "steps": 2, "guidance": 7.5, "scheduler": "ddim", "scale": 1.0, "negative_prompt": ""}  # fmt: skip
    values.update(changes)
    return service.request(str(reference), "subject.png", **values)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"reference": "tall"}, None),
        ({"more_references": "tall"}, None),
        (
            {"more_references": [(str(DEMO_REFERENCE), "subject.png")] * 8},
            "9 references and 0 masks; this page takes at most 8 references",
        ),
        ({"dial": ";".join(["0.5"] * 10), "sweep": 5}, "a sweep of 10 values; give at most 9"),
        ({"preservation": [0.5] * 12}, r"preservation=\[0.5, .* is not a number"),
        ({"steps": 151}, "steps=151: this page runs at most 150"),
        ({"prompt": "a dog " * 400}, "prompt is 2400 characters; give at most 2000"),
        ({"negative_prompt": "blurry " * 300}, "negative prompt is 2100 characters; give at most 2000"),
    ],
    ids=[
        "padded-reference",
        "padded-more-reference",
        "references",
        "dial-sweep",
        "preservation-list",
        "steps",
        "prompt",
        "negative-prompt",
    ],
)
def test_every_request_is_bounded_and_refused_before_work_beyond_the_bounds(
    demo_model, tmp_path, tall, changes, message
):
    service = Service(demo_model, DEMO_MODEL, tmp_path / "results")
    if changes.get("reference") == "tall":
        changes["reference"] = tall
    if changes.get("more_references") == "tall":
        changes["more_references"] = [(str(tall), "tall.png")]
    if message is None:  # taken, and computed with at a bounded size
        request = ask(service, **changes)
        for reference in (request.reference, *request.more_references):
            assert reference.width * reference.height <= MAX_PIXELS, reference.size
        return
    with pytest.raises(FlexIPError, match=message) as error:
        ask(service, **changes)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("ending", ["cancel", "disconnect"])
def test_a_request_that_ends_early_stops_its_generation_and_frees_its_slot(counting, tmp_path, ending):
    """However a request ends, its generation stops at the next step and no more than CONCURRENCY
    generations ever run at once (the slot is free only once the generation has stopped)."""
    from gradio_client import Client, handle_file

    service = counting
    with running(lambda results: service, port=free_port()) as url:
        if ending == "disconnect":
            api = Api(url)
            connection = api.join(page_values(api.reference, **{"7": LONG}))
        else:
            client = Client(url, verbose=False, download_files=str(tmp_path))
            job = client.submit(
                *page_values(handle_file(str(DEMO_REFERENCE)), **{"7": LONG}), api_name="/generate"
            )
        wait_for(lambda: service.steps and len(service.steps[0]) >= 2, "the long request to start")
        if ending == "cancel":
            job.cancel()
        else:
            connection.close()  # as a closed tab or a dropped connection
        # CONCURRENCY more requests at once: the ended one must not still run beside them
        client = Client(url, verbose=False, download_files=str(tmp_path))
        jobs = [client.submit(*page_values(handle_file(str(DEMO_REFERENCE))), api_name="/generate")
                for _ in range(CONCURRENCY)]  # fmt: skip
        for other in jobs:
            assert "Error" not in other.result(timeout=120)[0]
    wait_for(lambda: service.running == 0, "the generations to end")
    assert len(service.steps[0]) < 10, f"the ended request ran {len(service.steps[0])} of {LONG} steps"
    assert service.most <= CONCURRENCY, f"{service.most} generations ran at once"


def test_serve_removes_its_folder_on_a_stop_signal(tmp_path):
    """SIGTERM and SIGHUP stop `flexip serve` as Ctrl-C does: its folder of uploads and results is removed
    and it exits without a traceback. Both servers start at once to keep the test short."""
    servers = {}
    for stop in (signal.SIGTERM, signal.SIGHUP):
        folder = tmp_path / stop.name
        folder.mkdir()
        env = {**os.environ, "TMPDIR": str(folder)}
        servers[stop] = subprocess.Popen(
            [sys.executable, "-m", "flexip", "serve", "--port", str(free_port()), "--device", "cpu"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
    for stop, server in servers.items():
        assert "open http://127.0.0.1:" in server.stdout.readline()  # listening
        assert [path.name for path in (tmp_path / stop.name).glob("flexip-serve-*")]
        server.send_signal(stop)
    for stop, server in servers.items():
        _, err = server.communicate(timeout=60)
        assert server.returncode == 0, (stop.name, server.returncode, err)
        assert "Traceback" not in err
        assert not list((tmp_path / stop.name).glob("flexip-serve-*")), f"{stop.name} left the folder behind"


@pytest.fixture(scope="module")
def api(demo_model):
    with running(lambda results: Service(demo_model, DEMO_MODEL, results), port=free_port()) as url:
        yield Api(url)


@pytest.mark.parametrize(
    "index, value, named",
    [
        (1, 5, "prompt"),
        (1, ["a dog"], "prompt"),
        (2, [0.1, 0.9], "preservation"),
        (2, float("nan"), "preservation"),
        (3, "three", "generate"),
        (6, "false", "random seed"),
        (7, "many", "steps"),
        (7, 10**12, "steps"),
        (8, "7.5", "guidance"),
        (8, float("nan"), "guidance"),
        (8, None, "guidance"),
        (9, ["ddim"], "scheduler"),
        (10, {"up": 0.5}, "scale"),
        (10, float("inf"), "scale"),
        (10, "1", "scale"),
        (11, 7, "negative prompt"),
        (12, 5, "dial"),
        (14, 0.5, "reference weights"),
    ],
)
def test_a_wrong_value_through_the_api_gets_one_sentence(api, index, value, named):
    status, image, *_ = api.call(page_values(api.reference, **{str(index): value}))
    assert status.startswith("**Error:**") and named in status, status
    assert "\n" not in status and "Traceback" not in status and image is None


def _mask(path: Path, content) -> None:
    if content == "exif-rotated":  # stored 32 wide, 16 high; shown (orientation 6) 16 wide, 32 high
        mask = Image.new("L", (32, 16), 0)
        mask.paste(255, (0, 0, 16, 16))
        exif = Image.Exif()
        exif[0x0112] = 6
        mask.save(path, exif=exif)
    elif content == "bomb":
        Image.new("1", (14000, 14000)).save(path)  # 24 kB that would decode to 196 megapixels
    elif content == "truncated":
        Image.new("L", (64, 64), 255).save(path)
        path.write_bytes(path.read_bytes()[:-40])
    else:
        path.write_bytes(content)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"not a picture\n", "cannot read the image"),
        ("truncated", "cannot read the image"),
        ("bomb", f"more than the {MAX_PIXELS / 1e6:g} megapixels"),
        ("exif-rotated", None),
    ],
)
def test_a_mask_upload_is_read_as_shown_or_refused_in_one_sentence(tmp_path, content, message):
    path = tmp_path / "upload-5678.png"  # the server's copy; the user knows it as left.png
    _mask(path, content)
    if message is None:
        mask = read_mask(path, "left.png")
        upright = (mask.getpixel((8, 8)), mask.getpixel((8, 24)))
        assert mask.size == (16, 32) and upright == (255, 0)  # as a viewer shows it
        return
    with pytest.raises(FlexIPError, match=message) as error:
        read_mask(path, "left.png")
    assert (
        "left.png" in str(error.value) and str(path) not in str(error.value) and "\n" not in str(error.value)
    )
