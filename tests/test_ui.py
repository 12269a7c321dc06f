"""`edge-emotion ui`: the JSON endpoint over real HTTP, and the page in a real headless Chromium (Selenium).

The browser tests skip, saying so, without Debian's chromium and chromium-driver (``.ci/run`` installs them).
Set ``UI_SCREENSHOT=docs/ui.png`` to save the page after detecting the astronaut (the README's picture).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import http.client
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from edge_app.commands import gradcam, ui
from edge_app.commands.ui import PreviewApp, PreviewServer
from edge_app.config import AppConfig
from edge_app.emotions import DESCRIPTIONS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def encode(rgb: np.ndarray, suffix: str) -> bytes:
    ok, encoded = cv2.imencode(suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


ASTRONAUT = data.astronaut()
FACE = ASTRONAUT[10:250, 110:350]  # the astronaut's head, 240 pixels square


@pytest.fixture(scope="module")
def app() -> PreviewApp:
    return PreviewApp.from_config(AppConfig())


@contextmanager
def serve(app: PreviewApp) -> Iterator[str]:
    """A PreviewServer for ``app`` on a free loopback port, in a thread; yields its base URL."""
    server = PreviewServer(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def url(app: PreviewApp) -> Iterator[str]:
    with serve(app) as base:
        yield base


def request(base: str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of one request."""
    connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        raw = response.read()
        payload = json.loads(raw) if response.getheader("Content-Type") == "application/json" else {}
        return response.status, dict(response.getheaders()), payload
    finally:
        connection.close()


def detect(base: str, body: bytes) -> tuple[int, dict]:
    status, _, payload = request(base, "POST", "/api/detect", body, {"Content-Type": "application/octet-stream"})
    return status, payload


def decode_data_url(url: str) -> np.ndarray:
    header, encoded = url.split(",", 1)
    assert header in ("data:image/png;base64", "data:image/jpeg;base64")
    return cv2.imdecode(np.frombuffer(base64.b64decode(encoded), np.uint8), cv2.IMREAD_COLOR)


# ---- the endpoint, without a browser ---------------------------------------------------------------------------

def test_page_is_self_contained_and_may_contact_only_its_server(url: str, app: PreviewApp) -> None:
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    connection.request("GET", "/")
    response = connection.getresponse()
    page = response.read().decode()
    connection.close()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/html")
    policy = response.getheader("Content-Security-Policy")
    assert "connect-src 'self'" in policy and "default-src 'none'" in policy
    assert f'data-max-bytes="{app.max_upload_bytes}"' in page
    assert "http://" not in page and "https://" not in page  # nothing loaded from elsewhere


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_astronaut_is_happy_with_every_class_and_a_heat_map(url: str, suffix: str) -> None:
    status, answer = detect(url, encode(ASTRONAUT, suffix))
    assert status == 200, answer
    (face,) = answer["faces"]
    assert face["emotion"] == "happy" and face["description"] == DESCRIPTIONS["happy"]
    assert list(face["probabilities"]) == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert abs(sum(face["probabilities"].values()) - 1) < 0.02
    x0, y0, x1, y1 = face["box"]
    assert 150 < x0 < x1 < 300 and 50 < y0 < y1 < 200
    annotated = decode_data_url(answer["image"])
    assert annotated.shape == ASTRONAUT.shape
    kind = "png" if suffix == ".png" else "jpeg"
    assert answer["image"].startswith(f"data:image/{kind};") and answer["download_name"] == "annotated" + (
        ".png" if kind == "png" else ".jpg")
    if gradcam.available():
        assert decode_data_url(face["heatmap"]).shape == (192, 192, 3)
    else:
        assert face["heatmap"] is None


def test_heat_map_is_hidden_without_the_float_model(app: PreviewApp) -> None:
    answer = dataclasses.replace(app, heatmaps=None).analyse(encode(ASTRONAUT, ".png"))
    assert answer["faces"][0]["heatmap"] is None and answer["faces"][0]["emotion"] == "happy"


def _png_claiming(width: int, height: int) -> bytes:
    """A real PNG whose header claims another size (a decompression bomb's header, without the bomb)."""
    png = bytearray(encode(FACE, ".png"))
    png[16:24] = struct.pack(">II", width, height)
    return bytes(png)


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"", 400, "empty"),
    (b"Dear diary, today I renamed this text file to photo.jpg.\n", 415, "not a JPEG or PNG"),
    (b"GIF89a" + bytes(200), 415, "not a JPEG or PNG"),
    (encode(ASTRONAUT, ".jpg")[:3000], 422, "damaged or cut short"),
    (encode(ASTRONAUT, ".png")[:3000], 422, "damaged or cut short"),
    (encode(ASTRONAUT, ".jpg")[:-5000], 422, "damaged or cut short"),  # cut inside the picture, past the header
    (_png_claiming(20000, 20000), 413, "megapixels"),
    (encode(data.coffee(), ".jpg"), 422, "No face found"),
], ids=["empty", "text", "gif", "truncated-jpeg", "truncated-png", "jpeg-cut-in-its-picture", "pixel-bomb",
                           "no-face"])
def test_unusable_uploads_get_a_clear_message(url: str, body: bytes, status: int, message: str) -> None:
    got, answer = detect(url, body)
    assert got == status and message in answer["error"] and set(answer) == {"error"}


def test_more_faces_than_the_limit_are_refused(app: PreviewApp) -> None:
    two = np.ascontiguousarray(np.hstack([FACE, FACE]))
    with serve(dataclasses.replace(app, max_faces=1)) as base:
        status, answer = detect(base, encode(two, ".jpg"))
        assert status == 422 and "more than 1 faces" in answer["error"]
    with serve(dataclasses.replace(app, max_faces=2)) as base:
        status, answer = detect(base, encode(two, ".jpg"))
        assert status == 200 and len(answer["faces"]) == 2


def test_oversized_upload_is_refused_before_its_body_is_read(url: str, app: PreviewApp) -> None:
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    connection.putrequest("POST", "/api/detect")
    connection.putheader("Content-Length", str(app.max_upload_bytes + 1))
    connection.endheaders()  # no body is sent: the answer must come anyway
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    assert response.status == 413 and "largest accepted upload is 10 MB" in answer["error"]


def test_upload_without_a_length_and_unknown_paths(url: str) -> None:
    status, _, answer = request(url, "POST", "/api/detect", headers={"Transfer-Encoding": "chunked"})
    assert status == 411 and "length" in answer["error"]
    assert request(url, "GET", "/secrets")[0] == 404
    assert request(url, "POST", "/upload", b"x")[0] == 404


def test_a_failure_inside_is_a_json_error_not_a_dropped_connection(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: PreviewApp, data: bytes) -> dict:
        raise RuntimeError("a bug")

    monkeypatch.setattr(PreviewApp, "analyse", broken)
    status, answer = detect(url, encode(FACE, ".png"))
    assert status == 500 and "could not be analysed" in answer["error"]


def test_importing_the_page_does_not_import_tensorflow() -> None:
    """The device install has no TensorFlow: only making a GradCam may import it."""
    code = "import sys, edge_app.commands.ui; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_main_listens_on_loopback_by_default_and_warns_elsewhere(
        app: PreviewApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(PreviewApp, "from_config", classmethod(lambda cls, config: app))
    bound = []
    monkeypatch.setattr(PreviewServer, "serve_forever", lambda self: bound.append(self.server_address[0]))
    caplog.set_level(logging.INFO, logger="edge_app.commands.ui")
    assert ui.main(argparse.Namespace(host=None, port=0), AppConfig()) == 0
    assert bound == ["127.0.0.1"] and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert ui.main(argparse.Namespace(host="0.0.0.0", port=0), AppConfig()) == 0
    assert bound[-1] == "0.0.0.0"
    assert any(r.levelno == logging.WARNING and "anyone who can reach" in r.getMessage() for r in caplog.records)
    assert ui.is_loopback("localhost") and ui.is_loopback("::1") and not ui.is_loopback("192.168.1.2")


def test_cli_serves_the_page(tmp_path: Path) -> None:
    """``edge-emotion ui --port N`` end to end: loads the models, says where the page is, serves it."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "edge_app", "ui", "--port", str(port)], cwd=tmp_path,
                               stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            lines.append(process.stderr.readline())
            if "preview page at" in lines[-1]:
                break
        assert f"preview page at http://127.0.0.1:{port}/" in lines[-1], "".join(lines)
        status, _, _ = request(f"http://127.0.0.1:{port}", "GET", "/")
        assert status == 200
        assert list(tmp_path.iterdir()) == []
    finally:
        process.terminate()
        process.wait(10)
        process.stderr.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- the page in a real browser --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[object]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("browser tests need Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="browser tests need selenium (pip install selenium)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1240,960", "--hide-scrollbars"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def _upload(browser: object, base: str, path: Path) -> None:
    """Open the page, choose ``path`` and press Detect; waits until the page shows a result or an error."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(base + "/")
    browser.find_element(By.ID, "file").send_keys(str(path))
    browser.find_element(By.ID, "detect").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "results").is_displayed()
                                     or d.find_element(By.ID, "error").is_displayed())


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_browser_shows_happy_bars_heat_map_and_downloads(browser: object, url: str, tmp_path: Path,
                                                         downloads: Path, suffix: str) -> None:
    from selenium.webdriver.common.by import By

    photo = tmp_path / f"astronaut{suffix}"
    photo.write_bytes(encode(ASTRONAUT, suffix))
    _upload(browser, url, photo)
    assert not browser.find_element(By.ID, "error").is_displayed()
    (card,) = browser.find_elements(By.CSS_SELECTOR, "#faces .face")
    assert card.find_element(By.CSS_SELECTOR, "h2 .emotion").text == "happy"
    assert card.find_element(By.CSS_SELECTOR, ".description").text == DESCRIPTIONS["happy"]
    bars = card.find_elements(By.CSS_SELECTOR, ".bar")
    assert [bar.get_attribute("data-class") for bar in bars] == [
        "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    widths = {bar.get_attribute("data-class"): bar.find_element(By.CSS_SELECTOR, ".fill").size["width"]
              for bar in bars}
    assert max(widths, key=widths.get) == "happy" and widths["happy"] > 5 * widths["neutral"]
    image = browser.find_element(By.ID, "annotated")
    assert browser.execute_script("return arguments[0].naturalWidth", image) == ASTRONAUT.shape[1]
    heat_maps = card.find_elements(By.CSS_SELECTOR, ".gradcam img")
    assert len(heat_maps) == (1 if gradcam.available() else 0)
    if heat_maps:
        assert browser.execute_script("return arguments[0].naturalWidth", heat_maps[0]) == 192
    if suffix == ".png" and os.environ.get("UI_SCREENSHOT"):
        browser.save_screenshot(os.environ["UI_SCREENSHOT"])

    name = "annotated.png" if suffix == ".png" else "annotated.jpg"
    (downloads / name).unlink(missing_ok=True)
    browser.find_element(By.ID, "download").click()
    deadline = time.monotonic() + 20
    while not (downloads / name).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    annotated, uploaded = cv2.imread(str(downloads / name)), cv2.imread(str(photo))
    assert annotated is not None and annotated.shape == uploaded.shape
    changed = np.abs(annotated.astype(int) - uploaded.astype(int)).sum(2) > 60
    assert changed[50:260, 150:320].any() and not changed[:, :100].any()  # drawn around the face only


@pytest.mark.parametrize(("name", "content", "message"), [
    ("notes.jpg", b"This is a text file renamed to .jpg\n", "not a JPEG or PNG"),
    ("coffee.jpg", encode(data.coffee(), ".jpg"), "No face found"),
], ids=["text-renamed-jpg", "no-face"])
def test_browser_shows_the_error(browser: object, url: str, tmp_path: Path, name: str, content: bytes,
                                 message: str) -> None:
    from selenium.webdriver.common.by import By

    path = tmp_path / name
    path.write_bytes(content)
    _upload(browser, url, path)
    assert message in browser.find_element(By.ID, "error").text
    assert not browser.find_element(By.ID, "results").is_displayed()


def test_browser_refuses_an_oversized_upload(browser: object, app: PreviewApp, tmp_path: Path) -> None:
    """The page refuses a file over the limit before sending it, and the server refuses one sent anyway."""
    from selenium.webdriver.common.by import By

    photo = tmp_path / "astronaut.png"
    photo.write_bytes(encode(ASTRONAUT, ".png"))
    small = dataclasses.replace(app, max_upload_bytes=photo.stat().st_size - 1)
    with serve(small) as base:
        _upload(browser, base, photo)
        assert "the largest accepted upload is" in browser.find_element(By.ID, "error").text
        status, error = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/api/detect', {method: 'POST', body: new Uint8Array(arguments[0])})"
            ".then(r => r.json().then(j => done([r.status, j.error])));", small.max_upload_bytes + 1)
    assert status == 413 and "largest accepted upload" in error
