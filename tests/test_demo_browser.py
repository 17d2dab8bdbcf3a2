"""The demo in a real browser: `sam-prompt-learner demo` served on 127.0.0.1 in a subprocess, driven by Debian's
headless Chromium through Selenium (no browser download). `.ci/run` installs `chromium` and `chromium-driver`.

To photograph another model (e.g. for the README's screenshot), set SAM_PROMPT_LEARNER_DEMO_MODEL to its directory;
the screenshot is `demo.png` in the test's temporary directory (`pytest --basetemp DIR` to choose where).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from PIL import Image

from sam_prompt_learner import SamPromptLearnerModel, embedded_model_path, save_trained_parts
from sam_prompt_learner.data.synthetic import generate_scene
from sam_prompt_learner.interactive import DisplayFrame

# Debian's package, other distributions' name, or Chrome (GitHub's Ubuntu images); never downloaded by the test.
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no Chromium and chromedriver: apt-get install chromium chromium-driver (.ci/run installs them)",
)
webdriver = pytest.importorskip("selenium.webdriver", reason="the test extra installs selenium")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

STARTUP_TIMEOUT = 300  # seconds the app may take to answer: a limit for a stuck start, generous for a busy machine
WAIT = 60  # seconds for any one thing to appear on the page (a limit, not a measurement)
# Chromium as root in a container: no sandbox, no GPU, and nothing that opens connections of its own (without these
# flags the background requests hang with no network).
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1700",
)  # fmt: skip


@pytest.fixture(scope="module")
def adapted_model(tmp_path_factory):
    """Trained parts over the embedded tiny SAM, with a prompt learner moved off the identity (as training does),
    so the two panels show different models; the directory records its base, which the demo then compares with."""
    model = SamPromptLearnerModel.from_pretrained(embedded_model_path())
    torch.manual_seed(0)
    with torch.no_grad():
        model.prompt_learner.out_proj.weight.normal_(0.0, 0.05)
    return save_trained_parts(model, tmp_path_factory.mktemp("adapted") / "trained_parts", ["prompt_learner"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def demo_url(adapted_model, tmp_path_factory):
    model = os.environ.get("SAM_PROMPT_LEARNER_DEMO_MODEL", str(adapted_model))
    port = free_port()
    log = (tmp_path_factory.mktemp("demo-log") / "demo.log").open("w+")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}  # fmt: skip
    command = [sys.executable, "-m", "sam_prompt_learner.cli", "demo", "--model", model, "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    try:
        while True:
            if server.poll() is not None:
                log.seek(0)
                pytest.fail(f"the demo exited with {server.returncode}:\n{log.read()[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"the demo did not answer on {url} within {STARTUP_TIMEOUT} s:\n{log.read()[-4000:]}")
                time.sleep(0.5)  # polling interval, not an assertion
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


def text_of(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def click_image_pixel(driver, image_element, x: float, y: float) -> None:
    """Click the displayed image where its pixel `(x, y)` (of the image as served, i.e. display pixels) is shown,
    wherever the page scaled and letterboxed it (`object-fit: contain`)."""
    left, top, width, height, natural_width, natural_height = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return [r.left, r.top, r.width, r.height, arguments[0].naturalWidth, arguments[0].naturalHeight];",
        image_element,
    )
    scale = min(width / natural_width, height / natural_height)
    pad_x, pad_y = (width - natural_width * scale) / 2, (height - natural_height * scale) / 2
    offset_x = pad_x + (x + 0.5) * scale - width / 2  # Selenium offsets are from the element's centre
    offset_y = pad_y + (y + 0.5) * scale - height / 2
    webdriver.ActionChains(driver).move_to_element_with_offset(image_element, offset_x, offset_y).click().perform()


def requested_hosts(driver) -> set[str]:
    hosts = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = urlparse(message["params"]["request"]["url"])
            if url.scheme in ("http", "https", "ws", "wss"):
                hosts.add(url.hostname)
    return hosts


def test_click_segments_with_both_models_offline(demo_url, browser, tmp_path):
    wait = WebDriverWait(browser, WAIT)
    browser.get(demo_url)
    assert "adapted" in wait.until(lambda d: text_of(d, "models")) and "base SAM" in text_of(browser, "models")

    # Load the first example (face_parts-0) from the gallery.
    thumbnail = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#examples button img, #examples img"))[0]
    thumbnail.click()
    wait.until(lambda d: "face_parts-0.png" in text_of(d, "status"))
    panels = [wait.until(lambda d, i=i: d.find_element(By.CSS_SELECTOR, f"#panel-{i} img")) for i in range(2)]
    before = [panel.get_attribute("src") for panel in panels]

    # Click inside the face: the object pixel nearest to the object's centroid, in display pixels.
    scene = generate_scene("face_parts", split="validation", index=0)
    ys, xs = np.nonzero(scene.objects[0].mask)
    nearest = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)
    frame = DisplayFrame.for_image(Image.fromarray(scene.image))
    click_image_pixel(browser, panels[0], *frame.to_display(xs[nearest], ys[nearest]))

    # Both panels answer: a new picture and a score line naming the predicted IoU and a non-empty mask.
    def both_scored(driver):
        texts = [text_of(driver, f"score-{index}") for index in range(2)]
        return texts if all("predicted IoU" in text for text in texts) else False

    scores = wait.until(both_scored)
    for score in scores:
        area = int(score.split("mask ")[1].split(" px")[0].replace(",", ""))
        assert area > 0, score
    after = [browser.find_element(By.CSS_SELECTOR, f"#panel-{i} img").get_attribute("src") for i in range(2)]
    assert all(new != old for new, old in zip(after, before, strict=True))
    assert "ms per prompt" in text_of(browser, "status")

    # On request, the base's three candidates, each with its predicted IoU, one marked as its choice.
    browser.find_element(By.CSS_SELECTOR, "#show-candidates input").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#candidates img")) == 3)
    captions = browser.find_element(By.ID, "candidates").text
    assert captions.count("predicted IoU") == 3 and captions.count("its choice") == 1

    screenshot = tmp_path / "demo.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000

    # A broken upload is named and explained on the page; the loaded image stays.
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(broken))
    wait.until(lambda d: "broken.png: not a readable image" in text_of(d, "status"))
    assert "predicted IoU" in text_of(browser, "score-0")

    # Nothing was fetched from anywhere but the app itself.
    assert requested_hosts(browser) <= {"127.0.0.1"}
