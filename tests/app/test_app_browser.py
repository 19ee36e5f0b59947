"""The web page in a real headless Chromium (Debian's `chromium`, driven by Playwright; `.ci/run` installs it):
upload, move the dial, generate, sweep, a broken upload, the downloaded PNG's settings, and the sizes a user
sees (each test leaves a screenshot of the page in its tmp_path)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("gradio")  # the app extra
playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")

from fixtures import DEMO_MODEL, free_port
from flexip.app.page import BOX_PX, running
from flexip.app.service import Service
from flexip.demo_subject import DEMO_PROMPT, DEMO_REFERENCE
from flexip.pipeline.output import SETTINGS_CHUNK

WAIT_MS = 60_000
# The demo model's pictures are 32 pixels: the page shows them at least this large, by nearest neighbour.
SHOWN_PX = 256
# A picture's shown size: its natural size scaled as its object-fit scales it into the element's box.
SHOWN = """(selector) => {
    const image = document.querySelector(selector);
    const style = getComputedStyle(image);
    const box = [image.clientWidth / image.naturalWidth, image.clientHeight / image.naturalHeight];
    let scale = Math.min(...box);
    if (style.objectFit === "scale-down") scale = Math.min(scale, 1);
    return {width: image.naturalWidth * scale, height: image.naturalHeight * scale,
            rendering: style.imageRendering};
}"""


@pytest.fixture(scope="module")
def url(demo_model):
    with running(lambda results: Service(demo_model, DEMO_MODEL, results), port=free_port()) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def blank(browser, url, tmp_path):
    """A fresh page; its screenshot is left in the test's tmp_path when the test ends."""
    page = browser.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    yield page
    page.screenshot(path=tmp_path / "page.png", full_page=True)
    page.close()


@pytest.fixture
def page(blank):
    """A fresh page with a reference uploaded, the demo prompt typed and 2 denoising steps."""
    page = blank
    upload(page, DEMO_REFERENCE)
    page.wait_for_function("document.querySelector('#status').innerText.includes('32 x 32 pixels')")
    page.fill("#prompt textarea", DEMO_PROMPT)
    page.click("text=Advanced")
    set_number(page, "#steps", 2)
    return page


def upload(page, path) -> None:
    page.set_input_files("#reference input[type=file]", str(path))


def set_number(page, slider: str, value) -> None:
    """Type into a slider's number box, as a user does to set it exactly, until the slider's bar shows the value.

    Just after the Advanced section opens, the page may render the box anew and drop what was typed (seen on a
    busy machine: a generation then ran with the old value), so typing is repeated until the value has taken.
    """
    box, bar = f"{slider} input[type=number]", json.dumps(f"{slider} input[type=range]")
    for _ in range(10):
        page.fill(box, str(value))
        page.press(box, "Enter")
        if page.evaluate(f"Number(document.querySelector({bar}).value) === {float(value)}"):
            return
        page.wait_for_timeout(200)
    raise AssertionError(f"{slider} did not take the value {value}")


def generate(page, expect: str) -> str:
    """Click Generate and wait for the status to say `expect`; returns the status."""
    page.click("#run")
    page.wait_for_function(f"document.querySelector('#status').innerText.includes({json.dumps(expect)})")
    return page.inner_text("#status")


def test_upload_move_the_dial_generate_and_see_the_image(page):
    # Results arrive late, as from a busy server: the page must be seen to wait for the picture itself.
    page.route(lambda url: "/gradio_api/file=" in url, lambda route: (time.sleep(0.3), route.continue_()))
    status = generate(page, "preservation 0.5")
    assert "reference encoded in" in status
    first = page.get_attribute("#result img", "src")
    set_number(page, "#preservation", 0.9)
    status = generate(page, "preservation 0.9")
    assert "reused, not encoded again" in status and "denoise" in status and "decode" in status
    # The element takes the new address before the browser has fetched and decoded it (naturalWidth is 0 till
    # then): wait for the new picture to have loaded.
    page.wait_for_function(f"""() => {{
        const image = document.querySelector('#result img');
        return image !== null && image.src != {json.dumps(first)} && image.complete && image.naturalWidth > 0;
    }}""")
    assert page.evaluate("document.querySelector('#result img').naturalWidth") == 32  # the picture itself
    assert "--preservation 0.9" in page.input_value("#command textarea")
    # Shown large enough to judge, its pixels as squares (the style is set when the picture has loaded).
    page.wait_for_function(f"({SHOWN})('#result img').rendering === 'pixelated'")
    shown = page.evaluate(SHOWN, "#result img")
    assert shown["width"] >= SHOWN_PX and shown["height"] >= SHOWN_PX, shown


def test_the_reference_box_keeps_its_size_when_the_example_is_chosen(blank):
    page = blank
    page.wait_for_selector("#reference")
    before = page.locator("#reference").bounding_box()
    page.click(f"text={DEMO_PROMPT}")  # the built-in example's row
    page.wait_for_function("document.querySelector('#reference img') !== null")
    page.wait_for_function(f"({SHOWN})('#reference img').rendering === 'pixelated'")
    after = page.locator("#reference").bounding_box()
    assert (after["width"], after["height"]) == (before["width"], before["height"])
    assert after["height"] >= BOX_PX
    shown = page.evaluate(SHOWN, "#reference img")
    assert shown["width"] >= SHOWN_PX and shown["height"] >= SHOWN_PX, shown
    assert page.input_value("#prompt textarea") == DEMO_PROMPT


def test_a_sweep_shows_one_image_per_value_in_dial_order(page):
    page.click("text=a sweep along the dial")
    set_number(page, "#count", 3)
    generate(page, "3 images along the dial")
    page.wait_for_function("document.querySelectorAll('#gallery .caption-label').length == 3")
    # The embedded demo adapter is calibrated: each caption shows the raw gate its dial value stands for.
    assert captions(page) == ["0 (g 0)", "0.5 (g 0.27)", "1 (g 1)"]
    assert page.query_selector("#sheet a[download='contact_sheet.png']") is not None
    assert page.input_value("#command textarea").startswith("flexip sweep --reference")
    page.locator("#gallery").scroll_into_view_if_needed()  # its pictures load when seen
    page.wait_for_function(f"({SHOWN})('#gallery img').rendering === 'pixelated'")
    assert page.evaluate(SHOWN, "#gallery img")["width"] >= 64
    # The longest forms of the dial, per block and over the steps, are shown whole too, five to a row.
    page.fill("#dial textarea", "down=0.9,mid=0.6,up=0.3;0.9:0.3:cosine;0;0.5;1")
    generate(page, "5 images along the dial")
    page.wait_for_function("document.querySelectorAll('#gallery .caption-label').length == 5")
    assert captions(page) == [
        "down=0.9,mid=0.6,up=0.3 (g down=0.7,mid=0.34,up=0.13)", "0.9:0.3:cosine (g 0.7:0.13:cosine)", "0 (g 0)",
        "0.5 (g 0.27)", "1 (g 1)",
    ]  # fmt: skip


def captions(page) -> list[str]:
    """The sweep's captions, each checked to be shown whole (an ellipsis cuts the text but not its width)."""
    shown = page.evaluate("""[...document.querySelectorAll('#gallery .caption-label')].map(
        label => [label.innerText, label.scrollWidth <= label.clientWidth])""")
    assert all(whole for _, whole in shown), f"captions cut: {shown}"
    return [text for text, _ in shown]


def test_a_broken_upload_says_so_and_the_page_stays_usable(page, tmp_path):
    broken = tmp_path / "holiday.png"
    broken.write_bytes(b"not a picture at all")
    upload(page, broken)
    page.wait_for_function("document.querySelector('#status').innerText.includes('holiday.png')")
    assert "is not an image format" in page.inner_text("#status")
    status = generate(page, "Error")
    assert "holiday.png" in status and "Traceback" not in status
    upload(page, DEMO_REFERENCE)
    page.wait_for_function("document.querySelector('#status').innerText.includes('32 x 32 pixels')")
    generate(page, "1 image at preservation")
    page.wait_for_selector("#result img")  # rendered after the status line, in the same update or the next


def test_the_downloaded_png_carries_its_settings(page, tmp_path):
    set_number(page, "#preservation", 0.7)
    generate(page, "preservation 0.7")
    with page.expect_download() as download:
        page.click("#result button[aria-label='Download']")
    path = tmp_path / "download.png"
    download.value.save_as(path)
    # The file the service wrote, not the enlarged picture the page shows.
    written = Path(os.environ["GRADIO_TEMP_DIR"]).parent / "results"
    assert path.read_bytes() in {result.read_bytes() for result in written.glob("*/*.png")}
    with Image.open(path) as image:
        assert image.size == (32, 32)
        settings = json.loads(image.text[SETTINGS_CHUNK])
    assert settings["preservation"] == 0.7 and settings["prompt"] == DEMO_PROMPT and settings["steps"] == 2
    assert settings["reference"] == str(DEMO_REFERENCE)
