"""The web page's server through its API (gradio_client): concurrent requests isolated, bounded memory, safe
defaults (loopback only, no file route outside its uploads and results, one temporary folder)."""

from __future__ import annotations

import os
import resource
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")  # the app extra
from gradio_client import Client, handle_file

from fixtures import DEMO_MODEL, free_port
from flexip.app.page import ONE, SWEEP, running
from flexip.app.service import MAX_UPLOAD_BYTES, Service
from flexip.demo_subject import DEMO_PROMPT, DEMO_REFERENCE


@pytest.fixture(scope="module")
def server(demo_model):
    """(url, the server's temporary folder) while a server runs in this process."""
    with running(lambda results: Service(demo_model, DEMO_MODEL, results), port=free_port()) as url:
        yield url, Path(os.environ["GRADIO_TEMP_DIR"]).parent


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return Client(server[0], download_files=str(tmp_path_factory.mktemp("downloads")), verbose=False)


def settings(index: int) -> tuple:
    """The page's values for request `index`: every setting varies; neighbours (run together by the queue)
    share a scheduler but not its number of steps."""
    schedulers = ["ddim", "dpm++", "euler", "euler-a", "unipc"]
    return (
        handle_file(str(DEMO_REFERENCE)), DEMO_PROMPT, round(index / 19, 3), SWEEP if index % 5 == 4 else ONE, 3,
        index, False, 2 + index % 3, [7.5, 1.0, 3.0][index % 3], schedulers[index // 4], [1.0, 0.5][index % 2],
        "" if index % 2 else "blurry",
    )  # fmt: skip


def pixels(result: tuple) -> list[np.ndarray]:
    status, image, sweep, *_ = result
    assert "Error" not in status, status
    paths = [image] if image else [item["image"] for item in sweep]
    return [np.asarray(Image.open(path)) for path in paths]


def test_concurrent_requests_are_each_what_they_are_alone(client):
    alone = [pixels(client.predict(*settings(index), api_name="/generate")) for index in range(20)]
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with ThreadPoolExecutor(20) as pool:  # 20 requests at once: the queue runs them CONCURRENCY at a time
        jobs = [pool.submit(client.predict, *settings(index), api_name="/generate") for index in range(20)]
        together = [pixels(job.result(timeout=300)) for job in jobs]
    for index, (one, other) in enumerate(zip(alone, together)):
        assert len(one) == len(other)
        for a, b in zip(one, other):
            np.testing.assert_array_equal(a, b, err_msg=f"request {index} differs when run with the others")
    assert len({image.tobytes() for images in alone for image in images}) > 15  # the settings did differ
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mb < 300, f"peak memory grew by {grown_mb:.0f} MB under 20 concurrent requests"


def test_the_server_listens_on_loopback_only(server):
    port = int(server[0].rstrip("/").rsplit(":", 1)[1])
    others = {"127.0.0.2"}  # routed to the loopback interface, but not the address it listens on
    try:
        with socket.socket(
            socket.AF_INET, socket.SOCK_DGRAM
        ) as probe:  # sends nothing: finds the LAN address
            probe.connect(("192.0.2.1", 9))
            others.add(probe.getsockname()[0])
    except OSError:
        pass  # no network interface besides loopback
    for address in others:
        with socket.socket() as connection, pytest.raises(ConnectionRefusedError):
            connection.settimeout(5)
            connection.connect((address, port))


def test_the_server_serves_no_other_file(server):
    url, folder = server
    for path in ["/etc/passwd", str(DEMO_REFERENCE), str(Path(__file__))]:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10)
        assert refused.value.code == 403
    assert not (Path.cwd() / ".gradio").exists()
    assert folder.name.startswith("flexip-serve-") and folder.is_dir()


def test_an_upload_over_the_limit_is_refused(server):
    url, _ = server
    boundary = "flexip"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + bytes(MAX_UPLOAD_BYTES + 1) + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
    upload = urllib.request.Request(f"{url}gradio_api/upload", data=body, method="POST",
                                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(upload, timeout=30)
    assert refused.value.code == 413


def test_the_temporary_folder_is_removed_when_the_server_stops(demo_model, tmp_path):
    with running(lambda results: Service(demo_model, DEMO_MODEL, results), port=free_port()) as url:
        folder = Path(os.environ["GRADIO_TEMP_DIR"]).parent
        result = Client(url, download_files=str(tmp_path), verbose=False).predict(
            *settings(0), api_name="/generate"
        )
        assert pixels(result)
        assert any((folder / "results").iterdir())
    assert not folder.exists()
